"""Shared test helpers and fixtures, and the ``e2e`` marker for the files that cannot carry it themselves.

Helpers (plain functions; a test module imports them: ``from conftest import wait_for, free_port``):

* :func:`free_port` -- a TCP port on 127.0.0.1 that was free a moment ago (nobody listens there);
* :func:`wait_for` -- poll a condition until it holds, for every test that waits on a real peer;
* :func:`run_cli` -- ``python -m gateway.cli ...`` as a child process: (exit code, stdout, stderr);
* :func:`wait_exit` -- until a child process exits, without blocking the event loop;
* :func:`sql_rows` -- the rows of one query on an SQLite file, the connection closed again;
* :func:`b64url` -- unpadded base64url (RFC 7515 s.2), for hand-made JWS parts;
* :func:`open_fds` -- the number of file descriptors this process holds;
* :func:`interlock_status` -- one interlock's status dict from a running Gateway;
* :func:`tank_overfill_config` -- the gateway YAML for one HIL tank PLC with the T101 overfill interlock;
* :func:`run_forwarder` -- run a Forwarder until a condition holds, then stop it.

* :func:`hazard_section` -- a ``hazard:`` section with one benzene tank T101 on the tag T101.level;
* :func:`gateway_signers` -- fresh Ed25519 keys, one per gateway, in a receiver's trust directory (bound or flat).

Fixtures: ``signing_keys`` -- (Signer, trust directory) of a fresh Ed25519 key in tmp_path.

The fast lane: ``make test-fast`` runs ``-m "not e2e"`` (under 30 s on two cores). ``e2e`` is a test that starts
the daemon, a server (any listening socket on an IP address, 127.0.0.1 too) or a broker, runs the command line
(``python -m gateway.cli``, ``hil.farm``, an installed wheel) as a child process, or takes a second or more. A
short run of a system tool (systemd-analyze, ldconfig) or a ``python -c`` probe is not. A test that uses a
module-scoped fixture which starts a server is e2e too. A test module marks itself (``pytestmark =
pytest.mark.e2e``, or ``@pytest.mark.e2e`` per test).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from hil.rig import free_port, make_keys

ROOT = Path(__file__).resolve().parent.parent

# The tests read English, the msgids (gateway/i18n.py), whatever the machine's locale: LANGUAGE is read first, by
# this process and by every child process a test starts (the daemon, the command line). tests/ops/test_i18n.py gives
# its Chinese children an environment of their own.
os.environ["LANGUAGE"] = "en"

__all__ = ["ROOT", "b64url", "free_port", "gateway_signers", "hazard_section", "interlock_status", "open_fds", "read_status", "run_cli", "run_forwarder",
           "sql_rows", "tank_overfill_config", "until_daemon", "wait_exit", "wait_for"]


# ------------------------------------------------------------------------------------------------ waiting

async def wait_for(pred: Callable[[], Any], timeout_s: float, what: str = "condition", *, step_s: float = 0.02,
                   proc: subprocess.Popen | None = None, log: Path | None = None,
                   detail: Callable[[], str] | None = None, in_thread: bool = False) -> Any:
    """Poll ``pred()`` every ``step_s`` until it returns a truthy value, and return that value.

    ``pred`` may return an awaitable (an async predicate): it is awaited. ``in_thread``: call ``pred`` in a worker
    thread (it blocks, e.g. reads SQLite). Raises AssertionError once ``timeout_s`` has passed, or as soon as
    ``proc`` (a daemon child process) has exited; the message names ``what``, the last value, ``detail()`` if
    given, and the last 3000 characters of ``log`` if given.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        v = await asyncio.to_thread(pred) if in_thread else pred()
        if inspect.isawaitable(v):
            v = await v
        if v:
            return v
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"daemon exited ({proc.returncode}) while waiting for {what}" + _more(detail, log))
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what} (last: {v!r})"
                                 + _more(detail, log))
        await asyncio.sleep(step_s)


async def until_daemon(pred: Callable[[], Any], timeout_s: float, what: str, proc: subprocess.Popen | None = None,
                       log: Path | None = None) -> Any:
    """:func:`wait_for` on a daemon child process ``proc``: fails at once if it exits, with the tail of its
    ``log`` in the message."""
    return await wait_for(pred, timeout_s, what, step_s=0.05, proc=proc, log=log)


def read_status(state_dir: Path) -> dict:
    """``state_dir``/status.json of a running daemon (the status snapshot, gateway.runtime.gateway.Gateway.snapshot),
    or {} while it is missing or being replaced."""
    try:
        return json.loads((Path(state_dir) / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def _more(detail: Callable[[], str] | None, log: Path | None) -> str:
    text = f"; {detail()}" if detail is not None else ""
    if log is not None:
        text += "\n" + (log.read_text(errors="replace")[-3000:] if log.exists() else f"({log} not written)")
    return text


async def wait_exit(proc: subprocess.Popen, timeout_s: float) -> int | None:
    """Until ``proc`` exits or ``timeout_s`` passes; its exit code, or None while it still runs."""
    deadline = time.monotonic() + timeout_s
    while proc.poll() is None and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return proc.poll()


# ------------------------------------------------------------------------------------------------ processes, files

async def run_cli(*args: str, timeout_s: float = 30) -> tuple[int, str, str]:
    """``python -m gateway.cli *args`` from the repository root: (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway.cli", *args, cwd=str(ROOT),
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    return proc.returncode, out.decode(), err.decode()


def sql_rows(db: Path, sql: str, args: tuple = ()) -> list[tuple]:
    """The rows of one query on the SQLite file ``db`` (the connection is closed again)."""
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def b64url(data: bytes) -> str:
    """Unpadded base64url (RFC 7515 s.2)."""
    import base64

    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def open_fds() -> int:
    """How many file descriptors this process holds (Linux)."""
    return len(os.listdir("/proc/self/fd"))


# ------------------------------------------------------------------------------------------------ the gateway

def interlock_status(gw: Any, name: str) -> dict:
    """The status dict of interlock ``name`` of a running Gateway."""
    return next(i for i in gw.interlocks.status() if i["name"] == name)


async def run_forwarder(fwd: Any, until: Callable[[], Any], timeout_s: float) -> None:
    """Run ``fwd`` (a gateway.record.uplink.Forwarder) until ``until()`` (called in a thread: it may read SQLite)
    holds, then stop it and wait for it to end."""
    task = asyncio.create_task(fwd.run())
    try:
        await wait_for(until, timeout_s, "the forwarder's goal", step_s=0.05, in_thread=True)
    finally:
        fwd.stop()
        await asyncio.wait_for(task, 5)


def tank_overfill_config(port: int, *, gateway_id: str, store: str | None = None, store_at_end: bool = False,
                         extra: str | None = None, poll_interval_ms: int = 100, timeout_ms: int | None = None,
                         heartbeat: str | None = None, alarms: str = "{HH: 11.0}", vote: str | None = None) -> str:
    """Gateway YAML for the HIL tank PLC (hil.tank_plc.TankPlc) on 127.0.0.1:``port``: T101.level with
    ``alarms`` and the coil XV101, and the interlock T101_overfill (T101.level HH -> XV101 := 0).

    ``store``: the store mapping (``{max_bytes: ...}``), on the line after ``keys:``, or last (``store_at_end``);
    ``extra``: one more top-level line after the store line (written even when empty, as a blank line);
    ``heartbeat``: a device line such as ``heartbeat: {address: 40101}``; ``vote``: e.g. ``1oo1``.
    The T101 tag breaks after ``unit: m,`` when it would be longer than 100 characters. The text is fixed line
    by line: tests assert FILE:LINE of errors in it.
    """
    tag = f"      - {{name: T101.level, address: 30001, type: float32, unit: m, alarms: {alarms}}}"
    if len(tag) > 100:
        tag = f"      - {{name: T101.level, address: 30001, type: float32, unit: m,\n         alarms: {alarms}}}"
    lines = [f"gateway: {{id: {gateway_id}, state_dir: state}}", "keys: {private_key: keys/private.pem}"]
    if store is not None and not store_at_end:
        lines.append(f"store: {store}")
    if extra is not None:
        lines.append(extra)
    lines += ["devices:", "  - name: tank_plc", "    protocol: modbus_tcp", "    host: 127.0.0.1", f"    port: {port}",
              f"    poll_interval_ms: {poll_interval_ms}"]
    if timeout_ms is not None:
        lines.append(f"    timeout_ms: {timeout_ms}")
    if heartbeat:
        lines.append(f"    {heartbeat}")
    lines += ["    tags:", tag,
              "      - {name: XV101, address: {table: coil, address: 0}, type: bool, writable: true}",
              "interlocks:", "  - name: T101_overfill", "    inputs: [{tag: T101.level, condition: HH}]"]
    if vote:
        lines.append(f"    vote: {vote}")
    lines.append("    actions: [{output: XV101, value: 0}]")
    if store is not None and store_at_end:
        lines.append(f"store: {store}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ fixtures

def gateway_signers(tmp_path: Path, names: Any, *, bound: bool = True, untrusted: Any = (),
                    trust: Path | None = None) -> tuple[Path, dict[str, Any]]:
    """(trust directory, {name: Signer}): a fresh Ed25519 key per name in tmp_path/key-<name>/, its public JWK in
    the trust directory (default tmp_path/trust) as DIR/<name>/<kid>.jwk (``bound``: the key signs for gateway
    <name> only) or DIR/<kid>.jwk (flat: bound to the first gateway it signs for). The names in ``untrusted`` get a
    key that the trust directory does not hold."""
    from gateway.chain.signing import Signer, keygen

    trust = trust or tmp_path / "trust"
    trust.mkdir(parents=True, exist_ok=True)
    signers = {}
    for name in [*names, *untrusted]:
        kdir = tmp_path / f"key-{name}"
        kid = keygen(kdir)
        signers[name] = Signer.from_file(kdir / "private.pem")
        if name in untrusted:
            continue
        dest = trust / name if bound else trust
        dest.mkdir(exist_ok=True)
        shutil.copy(kdir / f"{kid}.jwk", dest)
    return trust, signers


def hazard_section(people: int) -> str:
    """A config's ``hazard:`` section (GB 18218-2018): one unit, dike-T100, whose tank T101 (benzene, a vertical
    cylinder 11 m x 12 m) is measured by the tag T101.level; ``people`` within 500 m (alpha, so R and the grade)."""
    return f"""hazard:
  units:
    - name: dike-T100
      people_500m: {people}
      tanks:
        - {{name: T101, tag_level: T101.level, substance: 苯, density_t_m3: 0.88,
           geometry: {{type: vertical_cylinder, diameter_m: 11.0, height_m: 12.0}}}}
"""


@pytest.fixture()
def signing_keys(tmp_path: Path):
    """(Signer of a fresh key in tmp_path/keys, tmp_path/trust holding its public JWK)."""
    from gateway.chain.signing import Signer

    private, trust = make_keys(tmp_path)
    return Signer.from_file(private), trust

