"""Process rig for record-path tests and benchmarks: the gateway daemon and the receiver as
child processes, the way they run in the field, plus readers of both SQLite stores.

* :func:`make_keys` -- an Ed25519 key pair and a trust directory holding its public JWK;
* :func:`tank_plc_config` -- a gateway YAML polling the :class:`hil.tank_plc.TankPlc`
  (10 tags: levels, temperatures, pressures as float32 input registers, four coils);
* :class:`ReceiverProc` -- ``python -m gateway.cli receiver`` over HTTPS (self-signed
  certificate), started, bounced (SIGTERM + start on the same port) and stopped;
* :class:`GatewayProc` -- ``python -m gateway.cli run --config``; SIGTERM or SIGKILL;
* :func:`store_readings` / :func:`receiver_readings` -- (tag, ts, value JSON) in store order
  (id) and in receiver order (seq, then position in the batch).

Everything listens on 127.0.0.1; nothing is mocked.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

TANK_TAGS = [
    "{name: T101.level, address: 30001, type: float32, unit: m}",
    "{name: T101.temperature, address: 30003, type: float32, unit: degC}",
    "{name: T101.pressure, address: 30005, type: float32, unit: kPa}",
    "{name: T102.level, address: 30007, type: float32, unit: m}",
    "{name: T102.temperature, address: 30009, type: float32, unit: degC}",
    "{name: T102.pressure, address: 30011, type: float32, unit: kPa}",
    "{name: XV101, address: {table: coil, address: 0}, type: bool}",
    "{name: XV102, address: {table: coil, address: 1}, type: bool}",
    "{name: XV100, address: {table: coil, address: 2}, type: bool}",
    "{name: BEACON, address: {table: coil, address: 3}, type: bool}",
]

def stop_process(proc: subprocess.Popen, timeout_s: float = 15.0) -> int | None:
    """SIGTERM a child, wait up to timeout_s, then SIGKILL; returns its exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode



def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that was free a moment ago (bound to port 0, read, closed): the one helper of the
    rigs, the benches, the demo and the tests."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen | None = None, timeout_s: float = 15.0) -> None:
    """Until 127.0.0.1:port accepts; RuntimeError when proc exits or the timeout passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}") from None
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout_s:g} s") from None
            time.sleep(0.05)


def make_keys(directory: Path) -> tuple[Path, Path]:
    """(private key PEM, trust directory with the public JWK) under ``directory``."""
    from gateway.chain.signing import keygen

    kid = keygen(directory / "keys")
    trust = directory / "trust"
    trust.mkdir(parents=True, exist_ok=True)
    shutil.copy(directory / "keys" / f"{kid}.jwk", trust / f"{kid}.jwk")
    return directory / "keys" / "private.pem", trust


def tank_plc_config(path: Path, *, gateway_id: str, plc_port: int, state_dir: Path, key_file: Path,
                    receiver_url: str | None = None, ca_file: Path | None = None, poll_ms: int = 100,
                    commit_interval_ms: int = 100, batch_max_readings: int = 200, interval_ms: int = 100,
                    comment: str = "", max_bytes: int = 1 << 40) -> Path:
    """Write a gateway config polling the tank PLC at ``poll_ms``; uplink when receiver_url is given.
    ``max_bytes`` must hold 30 days at ``poll_ms`` (`check` refuses less, C16): 1 TiB does down to 10 ms."""
    lines = [f"# {comment}" if comment else "# record-path rig",
             f"gateway: {{id: {gateway_id}, state_dir: '{state_dir}'}}",
             f"keys: {{private_key: '{key_file}'}}",
             f"store: {{commit_interval_ms: {commit_interval_ms}, max_bytes: {max_bytes}}}"]
    if receiver_url:
        lines.append(f"uplink: {{url: '{receiver_url}', ca_file: '{ca_file}', batch_max_readings: "
                     f"{batch_max_readings}, interval_ms: {interval_ms}, timeout_ms: 3000}}")
    lines += ["devices:", "  - name: tank_plc", "    protocol: modbus_tcp", "    host: 127.0.0.1",
              f"    port: {plc_port}", f"    poll_interval_ms: {poll_ms}", "    timeout_ms: 500", "    tags:"]
    lines += [f"      - {t}" for t in TANK_TAGS]
    path.write_text("\n".join(lines) + "\n")
    return path


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "gateway.cli", *args]


class ReceiverProc:
    """The reference receiver as a child process over HTTPS on a fixed free port (survives bounces)."""

    def __init__(self, workdir: Path, trust: Path) -> None:
        from gateway.tlsutil import make_self_signed

        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.trust = trust
        self.port = free_port()
        self.cert, self.key = make_self_signed(self.dir / "tls", ["127.0.0.1"])
        self.store = self.dir / "receiver.sqlite"
        self.url = f"https://127.0.0.1:{self.port}/v1/batches"
        self.proc: subprocess.Popen | None = None
        self._log = open(self.dir / "receiver.log", "ab")
        self.starts = 0

    def start(self) -> "ReceiverProc":
        self.proc = subprocess.Popen(_cli("receiver", "--listen", f"127.0.0.1:{self.port}", "--store",
                                          str(self.store), "--trust", str(self.trust), "--cert", str(self.cert),
                                          "--key", str(self.key)), stdout=self._log, stderr=self._log)
        wait_port(self.port, self.proc)
        self.starts += 1
        return self

    def stop(self) -> int | None:
        """SIGTERM and wait (kill after 10 s); the exit code, None when it was not running."""
        p, self.proc = self.proc, None
        if p is None:
            return None
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        return p.returncode

    def bounce(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        self._log.close()


class GatewayProc:
    """``hazard-gateway run --config`` as a child process; logs appended to ``log``."""

    def __init__(self, config: Path, log: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.log_path = log
        self.env = env
        self.proc: subprocess.Popen | None = None

    def start(self) -> "GatewayProc":
        with open(self.log_path, "ab") as f:
            f.write(f"--- start {time.time():.3f}\n".encode())
        log = open(self.log_path, "ab")
        env = dict(os.environ, **(self.env or {}))
        self.proc = subprocess.Popen(_cli("run", "--config", str(self.config)), stdout=log, stderr=log, env=env)
        log.close()
        return self

    def kill(self) -> None:
        """SIGKILL (no cleanup at all), then reap."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait()
        self.proc = None

    def term(self, timeout_s: float = 30.0) -> int:
        """SIGTERM and wait for the clean exit; its code (killed after timeout_s: -9)."""
        p, self.proc = self.proc, None
        assert p is not None
        p.send_signal(signal.SIGTERM)
        try:
            return p.wait(timeout_s)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            return -9

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def _ro(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)


def integrity(db: Path) -> str:
    """PRAGMA integrity_check of a database file ("ok" when sound)."""
    c = sqlite3.connect(db, timeout=10)
    try:
        return "; ".join(r[0] for r in c.execute("PRAGMA integrity_check"))
    finally:
        c.close()


def store_readings(db: Path) -> list[tuple[str, str, str]]:
    """(tag, ts, value as canonical JSON) of every reading in the gateway store, in id order."""
    c = _ro(db)
    try:
        return [(t, ts, json.dumps(json.loads(v) if v is not None else None))
                for t, ts, v in c.execute("SELECT tag, ts, value FROM readings ORDER BY id")]
    finally:
        c.close()


def payload(jws: str) -> dict[str, Any]:
    return json.loads(base64.urlsafe_b64decode(jws.split(".")[1] + "=="))


def receiver_batches(db: Path) -> list[str]:
    """Every accepted compact JWS in seq order."""
    c = _ro(db)
    try:
        return [r[0] for r in c.execute("SELECT jws FROM batches ORDER BY gateway_id, seq")]
    finally:
        c.close()


def receiver_readings(db: Path) -> list[tuple[str, str, str]]:
    """(tag, ts, value JSON) of every reading the receiver holds, in seq then batch order."""
    out = []
    for jws in receiver_batches(db):
        for r in payload(jws)["readings"]:
            out.append((r["tag"], r["ts"], json.dumps(r["value"])))
    return out


def read_status(state_dir: Path) -> dict[str, Any] | None:
    """The daemon's state_dir/status.json (None while absent or half-written)."""
    try:
        return json.loads((state_dir / "status.json").read_text())
    except (OSError, ValueError):
        return None


def drained(state_dir: Path) -> bool:
    """True when the running daemon's status says nothing is unsent or unacknowledged."""
    st = read_status(state_dir)
    store = (st or {}).get("store") or {}
    return bool(store) and store.get("readings_total", 0) > 0 and store.get("readings_unsent") == 0 \
        and store.get("batches_unacked") == 0
