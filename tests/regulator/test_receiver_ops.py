"""Receiver operations over real HTTPS: Prometheus metrics (parsed by prometheus-client's own parser), the health
answer (silent gateways, a store that does not answer), and the receiver's systemd unit."""

from __future__ import annotations

import gc
import re
import shutil
import socket as so
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.chain.signing import chain_hash
from gateway.cli import build_parser
from gateway.regulator.receiver import BackgroundReceiver

from conftest import gateway_signers
from test_receiver import JOSE, chain, flip

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "hazard-gateway-receiver.service"


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of a text exposition, parsed by prometheus-client."""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.fixture()
def two_gateways(tmp_path):
    return gateway_signers(tmp_path, ("gw-a", "gw-b"))


def test_metrics_count_decisions_by_outcome_and_reason_and_name_silent_gateways(tmp_path, two_gateways):
    trust, signers = two_gateways
    with BackgroundReceiver(tmp_path / "rx", trust, silent_after_s=1.0) as rx, \
            httpx.Client(base_url=rx.url, verify=rx.ssl_context(), timeout=10) as c:
        a = chain(signers["gw-a"], "gw-a", 1, 3)
        for jws in a:
            assert c.post("/v1/batches", content=jws, headers=JOSE).json()["status"] == "accepted"
        assert c.post("/v1/batches", content=a[0], headers=JOSE).json()["status"] == "duplicate"
        assert c.post("/v1/batches", content=flip(a[1], 2), headers=JOSE).status_code == 401   # bad signature
        b = chain(signers["gw-b"], "gw-b", 1, 2)
        assert c.post("/v1/batches", content=b[1], headers=JOSE).status_code == 409            # gap: seq 1 missing
        time.sleep(1.2)            # gw-a's last batch is now older than the silent threshold
        assert c.post("/v1/batches", content=b[0], headers=JOSE).status_code == 200

        r = c.get("/metrics")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        m = samples(r.text)
        assert m[("hazard_receiver_batches_total", (("outcome", "accepted"),))] == 4
        assert m[("hazard_receiver_batches_total", (("outcome", "duplicate"),))] == 1
        assert m[("hazard_receiver_rejected_total", (("reason", "signature"),))] == 1
        assert m[("hazard_receiver_rejected_total", (("reason", "gap"),))] == 1
        assert m[("hazard_receiver_gateways", ())] == 2
        assert m[("hazard_receiver_gateway_last_seq", (("gateway_id", "gw-a"),))] == 3
        assert m[("hazard_receiver_gateway_last_seq", (("gateway_id", "gw-b"),))] == 1
        assert m[("hazard_receiver_gateways_silent", ())] == 1
        assert m[("hazard_receiver_gateway_last_batch_age_seconds", (("gateway_id", "gw-a"),))] > 1.0
        assert m[("hazard_receiver_gateway_last_batch_age_seconds", (("gateway_id", "gw-b"),))] < 1.0
        assert m[("hazard_receiver_gateway_chain_gaps", (("gateway_id", "gw-a"),))] == 0
        assert m[("hazard_receiver_stored_readings", ())] == 4 * 3   # gw-a 1..3, gw-b 1
        assert m[("hazard_receiver_store_up", ())] == 1

        h = c.get("/v1/health")
        assert h.status_code == 200
        doc = h.json()
        assert doc["ok"] is True and doc["gateways"] == 2 and doc["silent"] == ["gw-a"] and doc["silent_count"] == 1
        assert doc["chain_gaps"] == []


def test_health_is_503_and_store_down_when_the_store_does_not_answer(tmp_path, two_gateways):
    trust, signers = two_gateways
    with BackgroundReceiver(tmp_path / "rx", trust) as rx, \
            httpx.Client(base_url=rx.url, verify=rx.ssl_context(), timeout=10) as c:
        assert c.post("/v1/batches", content=chain(signers["gw-a"], "gw-a", 1, 1)[0], headers=JOSE).status_code == 200
        assert c.get("/v1/health").json()["ok"] is True
        rx.receiver.store.close()          # the database went away under the running receiver
        h = c.get("/v1/health")
        assert h.status_code == 503 and h.json()["ok"] is False and h.json()["store"] != "ok"
        assert samples(c.get("/metrics").text)[("hazard_receiver_store_up", ())] == 0


def test_silent_after_is_given_in_minutes_on_the_command_line():
    r = subprocess.run([sys.executable, "-m", "gateway.cli", "receiver", "--listen", "127.0.0.1:1", "--store", "x",
                        "--trust", "t", "--silent-after", "-3"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--silent-after" in r.stderr and "Traceback" not in r.stderr


def _unit_with_this_venv(tmp_path: Path) -> Path:
    exe = Path(sys.executable).parent / "hazard-gateway"
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/hazard-gateway", str(exe)))
    return unit


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze missing: .ci/run installs the Debian package systemd")
def test_receiver_unit_verifies_clean_and_stays_hardened(tmp_path):
    unit = _unit_with_this_venv(tmp_path)
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60,
                       cwd=tmp_path)
    assert r.returncode == 0 and r.stderr.strip() == "", r.stderr
    r = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)],
                       capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", r.stdout + r.stderr)
    assert m and float(m.group(1)) <= 2.5, r.stdout[-2000:]
    exec_start = next(line for line in UNIT.read_text().splitlines() if line.startswith("ExecStart="))
    args = exec_start.split()[1:]
    assert args[0] == "receiver" and "--require-bound-keys" in args and "--signing-key" in args
    ns = build_parser().parse_args(args)   # the unit's command line is one the real parser takes
    assert ns.listen == "0.0.0.0:8443" and ns.store.endswith("receiver.sqlite")


def test_bad_input_is_refused_with_its_reason_counted_and_never_stored(tmp_path, two_gateways):
    """Each kind of bad input a platform sees: a key nobody trusts, a key of another gateway, a replay of a seq with
    another body, a gap, a replayed status request. Each is answered with its reason, shows in /metrics under that
    reason, and leaves the store exactly as it was."""
    from gateway.regulator.receiver import signed_request_headers

    trust, signers = two_gateways
    stranger = gateway_signers(tmp_path, (), untrusted=("stranger",))[1]["stranger"]
    with BackgroundReceiver(tmp_path / "rx", trust) as rx, \
            httpx.Client(base_url=rx.url, verify=rx.ssl_context(), timeout=10) as c:
        good = chain(signers["gw-a"], "gw-a", 1, 2)
        assert c.post("/v1/batches", content=good[0], headers=JOSE).status_code == 200
        before = rx.receiver.store.batches()
        h1 = chain_hash(good[0])
        bad = {
            "kid": (chain(stranger, "gw-a", 2, 2, h1)[0], 401),                      # a key nobody trusts
            "key_binding": (chain(signers["gw-b"], "gw-a", 2, 2, h1)[0], 401),       # gw-b's key signs for gw-a
            "conflict": (chain(signers["gw-a"], "gw-a", 1, 1, per=5)[0], 409),       # seq 1 again, another body
            "gap": (chain(signers["gw-a"], "gw-a", 5, 5, h1)[0], 409),               # seq 5 after 1
        }
        for reason, (body, status) in bad.items():
            r = c.post("/v1/batches", content=body, headers=JOSE)
            assert r.status_code == status and r.json()["error"].startswith(reason.split("_")[0]), (reason, r.text)
        path = "/v1/gateways/gw-a/status"
        headers = signed_request_headers(signers["gw-a"], "gw-a", path)
        assert c.get(path, headers=headers).status_code == 200
        replay = c.get(path, headers=headers)
        assert replay.status_code == 401 and "replayed" in replay.json()["error"]
        assert rx.receiver.store.batches() == before
        m = samples(c.get("/metrics").text)
        for reason in (*bad, "status_auth"):
            assert m[("hazard_receiver_rejected_total", (("reason", reason),))] == 1, reason
        assert m[("hazard_receiver_batches_total", (("outcome", "accepted"),))] == 1


def test_connections_are_accepted_with_nagle_off(tmp_path, two_gateways):
    """Every accepted connection has TCP_NODELAY: asyncio sets it only for a socket whose proto is IPPROTO_TCP, and
    without it each keep-alive answer after the first waited ~40 ms (Nagle meets delayed ACK), capping one
    gateway's connection at ~22 batches/s. Read on the server's side of a live connection."""
    trust, signers = two_gateways
    with BackgroundReceiver(tmp_path / "rx", trust) as rx, \
            httpx.Client(base_url=rx.url, verify=rx.ssl_context(), timeout=10) as c:
        assert c.get("/v1/health").status_code == 200
        served = [s for s in gc.get_objects() if isinstance(s, so.socket) and s.fileno() >= 0
                  and s.type == so.SOCK_STREAM and s.family == so.AF_INET and s.getsockname()[1] == rx._port
                  and _peer(s) is not None]
        assert served, "no accepted connection found"
        assert all(s.getsockopt(so.IPPROTO_TCP, so.TCP_NODELAY) for s in served)


def _peer(s):
    try:
        return s.getpeername()
    except OSError:
        return None
