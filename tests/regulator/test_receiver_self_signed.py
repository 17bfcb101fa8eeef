"""`hazard-gateway receiver --self-signed DIR`: a real child process over HTTPS, pinned by the CA file it names."""

from __future__ import annotations

import os
import re
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from hil.rig import free_port, make_keys, stop_process, wait_port

ROOT = Path(__file__).resolve().parents[2]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "gateway.cli", "receiver", *args]


@pytest.mark.e2e
def test_self_signed_receiver_is_reachable_with_the_printed_ca_file_and_reuses_it(tmp_path):
    _, trust = make_keys(tmp_path)
    tls = tmp_path / "tls"
    log = tmp_path / "rx.log"

    def start() -> tuple[subprocess.Popen, int]:
        port = free_port()
        with open(log, "ab") as fh:
            proc = subprocess.Popen(_cli("--listen", f"127.0.0.1:{port}", "--store", str(tmp_path / "rx.sqlite"),
                                         "--trust", str(trust), "--self-signed", str(tls)),
                                    cwd=ROOT, stdout=fh, stderr=fh, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        wait_port(port, proc)
        return proc, port

    proc, port = start()
    try:
        text = log.read_text()
        m = re.search(r"uplink\.ca_file: (\S+)", text)
        assert m, text
        ca = Path(m.group(1))
        assert ca == (tls / "server.crt").resolve() and ca.is_file()
        with httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=ssl.create_default_context(cafile=str(ca)), timeout=10) as c:
            r = c.get("/v1/health")
            assert r.status_code == 200 and r.json()["ok"] is True and r.json()["store"] == "ok"
            assert 400 <= c.post("/v1/batches", content=b"not a jws").status_code < 500
        with httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=True, timeout=10) as c:
            with pytest.raises(httpx.ConnectError):  # it really is TLS, and not trusted without the pin
                c.get("/v1/health")
    finally:
        assert stop_process(proc) == 0
    first = ca.read_bytes()
    proc, port = start()  # a second start reuses the pair in DIR: the gateway's pinned file stays valid
    try:
        assert ca.read_bytes() == first
        with httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=ssl.create_default_context(cafile=str(ca)), timeout=10) as c:
            assert c.get("/v1/health").status_code == 200
    finally:
        stop_process(proc)


def test_self_signed_and_cert_together_are_refused(tmp_path):
    for extra in (["--cert", str(tmp_path / "c.pem")], ["--key", str(tmp_path / "k.pem")]):
        r = subprocess.run(_cli("--listen", "127.0.0.1:0", "--store", str(tmp_path / "rx.sqlite"), "--trust",
                                str(tmp_path), "--self-signed", str(tmp_path / "tls"), *extra),
                           cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert r.returncode == 2
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("hazard-gateway: ") and "--self-signed" in lines[0], r.stderr
        assert not (tmp_path / "tls").exists()
