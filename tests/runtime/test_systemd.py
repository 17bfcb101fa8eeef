"""systemd integration: the sd_notify protocol on a real unix datagram socket, the watchdog, the unit
files (systemd-analyze verify / security, systemd-sysusers, systemd-tmpfiles) and install-service.

The daemon runs as a child process (`python -m gateway.cli run`) with NOTIFY_SOCKET pointing at a
datagram socket this test binds, and WATCHDOG_USEC set as systemd sets it. Its peer is the HIL tank
PLC (pymodbus server) behind a TCP relay in this process that can go silent: it keeps accepting
connections and reading requests, and answers nothing.

The hang: with the drivers' own timeouts a silent peer never hangs a poll loop (the read ends in a
timeout and the tags go BAD; test_silent_device_keeps_the_watchdog_alive). A hung loop is a driver
whose timeout does not fire; the test launches the daemon through HANG_LAUNCHER, which gives the
Modbus TCP link an (impossible in a config, le=60000 ms) timeout of 10**6 s before running the
normal CLI, so the read waits on the silent real peer for ever. Nothing in the package can do this.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.record.supervisor import store_writer_check
from gateway.runtime.health import Health, poll_limits, status_line, watchdog_interval_s
from gateway.chain.signing import keygen
from gateway.record.store import Store
from hil.tank_plc import TankPlc
from notify_socket import NotifySocket
from conftest import wait_exit as _wait_exit

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "hazard-gateway.service"

HANG_LAUNCHER = """
import sys
import drivers.modbus as m
_init = m.TcpLink.__init__
def _init_no_timeout(self, host, port=502, timeout_s=1.0, **kw):
    _init(self, host, port, 1e6, **kw)   # test hook: a driver whose timeout never fires
m.TcpLink.__init__ = _init_no_timeout
from gateway.cli import main
sys.exit(main(sys.argv[1:]))
"""


# ---------------------------------------------------------------------------- pure parts

def test_watchdog_interval_follows_sd_watchdog_enabled_rules():
    assert watchdog_interval_s({}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000"}) == 30.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "123"}, pid=123) == 2.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "124"}, pid=123) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "soon"}) is None


def test_health_heartbeats_go_stale_after_their_limit():
    now = [100.0]
    h = Health(clock=lambda: now[0])
    h.watch("poll:a", 2.0)
    h.watch("safety", 5.0)
    now[0] = 101.9
    assert h.stale() == []
    now[0] = 102.5
    assert [s.split(":")[0] + ":" + s.split(":")[1] for s in h.stale()] == ["poll:a"]
    h.beat("poll:a")
    assert h.stale() == []
    h.add_check("store", lambda t: "stuck" if t > 110 else None)
    now[0] = 111.0
    stale = h.stale()
    assert any(s.startswith("poll:a") for s in stale) and any(s.startswith("safety") for s in stale)
    assert "store: stuck" in stale
    h.forget("poll:")
    assert not any(s.startswith("poll:") for s in h.stale())
    h.add_check("broken", lambda t: 1 / 0)
    assert any(s.startswith("broken: check failed") for s in h.stale())  # fails towards "not healthy"


def test_poll_limits_cover_the_worst_case_of_a_silent_link():
    from types import SimpleNamespace as NS

    tags3 = [object()] * 3
    devs = [NS(name="plc", protocol="modbus_tcp", host="h", port=502, enabled=True, poll_interval_ms=500,
               timeout_ms=1000, tags=tags3),
            NS(name="gd1", protocol="modbus_rtu", port="/dev/ttyUSB0", enabled=True, poll_interval_ms=1000,
               timeout_ms=300, tags=[1]),
            NS(name="gd2", protocol="modbus_rtu", port="/dev/ttyUSB0", enabled=True, poll_interval_ms=1000,
               timeout_ms=300, tags=[1]),
            NS(name="off", protocol="modbus_tcp", host="x", port=502, enabled=False, poll_interval_ms=1, timeout_ms=1,
               tags=[1])]
    lim = poll_limits(devs, floor_s=10.0)
    assert lim["plc"] == pytest.approx(0.5 + 3 * 3 * 2.0)        # 3 tags x 3 x (1 s + 1 s) = 18 s > floor
    assert lim["gd1"] == lim["gd2"] == pytest.approx(1.0 + 10.0)  # shared bus 2 x 3 x 1.3 s = 7.8 s < floor
    assert "off" not in lim


def test_store_writer_check_stale_only_when_queued_records_are_not_committed(tmp_path):
    store = Store(tmp_path / "s.sqlite", commit_interval_s=0.05)
    check = store_writer_check(store, stall_s=0.5)
    assert check(0.0) is None                     # not opened
    store.open()
    try:
        store.put_reading({"tag": "a", "value": 1, "unit": "", "quality": "good", "reason": None,
                           "ts": "2026-01-01T00:00:00Z"})
        assert store.flush(5)
        assert check(time.monotonic()) is None
        # a writer that commits nothing while records wait: block it with an exclusive lock held by another
        # connection, and make it look error-free (a hung SQLite call rather than a reported failure)
        import sqlite3

        other = sqlite3.connect(tmp_path / "s.sqlite", timeout=0.1)
        other.execute("BEGIN EXCLUSIVE")
        store.put_reading({"tag": "a", "value": 2, "unit": "", "quality": "good", "reason": None,
                           "ts": "2026-01-01T00:00:01Z"})
        t0 = time.monotonic()
        assert check(t0) is None
        time.sleep(0.3)
        if store._writer_error:      # the writer reports "database is locked": alive, retrying
            assert check(t0 + 5) is None
        store._writer_error = None                  # the same stall without a reported error is a hang
        assert check(t0 + 0.6) and "nothing committed" in check(t0 + 0.6)
        other.rollback()
        other.close()
        assert store.flush(10)
        assert check(time.monotonic()) is None
    finally:
        store.close()


def test_status_line_summarises_devices_alarms_and_the_store():
    """The STATUS= line is read off the status snapshot (Gateway.status): a device is ok when every one of its
    tags was delivered usable; a store that did not answer leaves its part out."""
    snap = {"devices": {"plc": {"tags": 1}, "gas": {"tags": 1}, "slow": {"tags": 2}},
            "tags": {"a": {"quality": "good", "value": 1.0, "device": "plc"},
                     "b": {"quality": "bad", "value": None, "device": "gas"},
                     "c": {"quality": "uncertain", "value": 3.0, "device": "slow"}},   # its second tag: not yet
            "alarms": [{"id": "a.H"}, {"id": "c.L"}],
            "store": {"readings_unsent": 120, "last_acked_seq": 45, "writer_error": None},
            "record_path": {"store": None, "uplink": None}}
    line = status_line(snap)
    assert line == "devices 1/3 ok, 2 alarms active, 120 readings unsent, last acked seq 45"
    assert "\n" not in line
    snap["store"] = {"error": "store busy (no answer within 2 s)"}
    snap["record_path"] = {"store": "写入停滞 (记录存储故障)", "uplink": None}
    assert status_line(snap) == "devices 1/3 ok, 2 alarms active, store fault: 写入停滞 (记录存储故障)"


# ---------------------------------------------------------------------------- the unit files

def _verify(unit: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60,
                          cwd=unit.parent)


def _executable_unit(tmp_path: Path) -> Path:
    """The shipped unit with ExecStart pointing at this venv's hazard-gateway (verify checks that the
    binary exists; /usr/local/bin/hazard-gateway only exists on an installed host)."""
    exe = Path(sys.executable).parent / "hazard-gateway"
    assert exe.exists(), f"{exe}: console script missing (pip install -e .)"
    d = tmp_path / "units"
    d.mkdir()
    unit = d / "hazard-gateway.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/hazard-gateway", str(exe)))
    return unit


needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                   reason="systemd-analyze missing: .ci/run installs the Debian package systemd")


@needs_analyze
def test_unit_passes_systemd_analyze_verify_without_warnings(tmp_path):
    r = _verify(_executable_unit(tmp_path))
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip() == "", f"systemd-analyze verify warnings:\n{r.stderr}"


@needs_analyze
def test_verify_catches_a_broken_unit(tmp_path):
    """The check above can fail: a misspelt key and a wrong Type= are reported."""
    unit = _executable_unit(tmp_path)
    unit.write_text(unit.read_text().replace("NoNewPrivileges=yes", "NoNewPrivilege=yes")
                    .replace("Type=notify", "Type=notifyy"))
    r = _verify(unit)
    assert "NoNewPrivilege" in r.stderr and "notifyy" in r.stderr


def test_unit_declares_the_required_service_contract():
    text = UNIT.read_text()
    keys: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";")):
            k, v = line.split("=", 1)
            keys.setdefault(k.strip(), []).append(v.strip())
    one = {k: v[-1] for k, v in keys.items()}
    assert one["Type"] == "notify" and one["NotifyAccess"] == "main"
    assert one["Restart"] == "on-failure" and int(one["StartLimitBurst"]) >= 1 and one["StartLimitIntervalSec"]
    assert one["WatchdogSec"] and one["ExecReload"].endswith("-HUP $MAINPID")
    assert one["User"] == "hazard-gateway" and set(one["SupplementaryGroups"].split()) == {"dialout", "gpio"}
    assert one["ProtectSystem"] == "strict" and one["ProtectHome"] == "yes" and one["PrivateTmp"] == "yes"
    assert one["NoNewPrivileges"] == "yes" and one["CapabilityBoundingSet"] == ""
    assert set(one["RestrictAddressFamilies"].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    for d in ("StateDirectory", "ConfigurationDirectory", "RuntimeDirectory"):
        assert one[d] == "hazard-gateway"
    assert "/etc/hazard-gateway/gateway.yaml" in one["ExecStart"] and one["ExecStart"].split()[1] == "run"


@needs_analyze
def test_unit_security_exposure_stays_low(tmp_path):
    r = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager",
                        str(_executable_unit(tmp_path))], capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", r.stdout + r.stderr)
    assert m, r.stdout + r.stderr
    assert float(m.group(1)) <= 2.5, r.stdout[-3000:]


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None or shutil.which("systemd-tmpfiles") is None,
                    reason="systemd-sysusers/systemd-tmpfiles missing: .ci/run installs the Debian package systemd")
def test_sysusers_and_tmpfiles_apply_to_an_empty_root(tmp_path):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    r = subprocess.run(["systemd-sysusers", "--root", str(root), str(REPO / "systemd/hazard-gateway.sysusers.conf")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    passwd = (root / "etc/passwd").read_text()
    group = (root / "etc/group").read_text()
    assert re.search(r"^hazard-gateway:x:\d+:\d+:.*:/var/lib/hazard-gateway:", passwd, re.M)
    for g in ("dialout", "gpio"):
        assert re.search(rf"^{g}:x:\d+:.*hazard-gateway", group, re.M), group
    r = subprocess.run(["systemd-tmpfiles", "--root", str(root), "--create",
                        str(REPO / "systemd/hazard-gateway.tmpfiles.conf")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert oct((root / "etc/hazard-gateway/keys").stat().st_mode & 0o777) == "0o700"
    assert oct((root / "var/lib/hazard-gateway").stat().st_mode & 0o777) == "0o750"


# ---------------------------------------------------------------------------- install-service

def _install(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway.cli", "install-service", *args], capture_output=True,
                          text=True, timeout=120, cwd=REPO)


def _tree(root: Path) -> dict[str, tuple]:
    return {str(p.relative_to(root)): (p.stat().st_mode, p.stat().st_uid, p.stat().st_mtime_ns,
                                       p.read_bytes() if p.is_file() else None)
            for p in sorted(root.rglob("*"))}


@pytest.mark.e2e
def test_install_service_dry_run_changes_nothing(tmp_path):
    r = _install("--prefix", str(tmp_path), "--dry-run")
    assert r.returncode == 0, r.stderr
    assert list(tmp_path.iterdir()) == []
    assert "would create" in r.stdout and "hazard-gateway.service" in r.stdout


@pytest.mark.e2e
def test_install_service_lays_everything_and_is_idempotent(tmp_path):
    exe = Path(sys.executable).parent / "hazard-gateway"
    r = _install("--prefix", str(tmp_path), "--exec", str(exe))
    assert r.returncode == 0, r.stderr
    unit = tmp_path / "etc/systemd/system/hazard-gateway.service"
    text = unit.read_text()
    assert f"ExecStart={exe} run --config /etc/hazard-gateway/gateway.yaml" in text
    for f in ("etc/sysusers.d/hazard-gateway.conf", "etc/tmpfiles.d/hazard-gateway.conf",
              "etc/hazard-gateway/gateway.yaml"):
        assert (tmp_path / f).is_file(), f
    assert (tmp_path / "etc/hazard-gateway/keys").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "var/lib/hazard-gateway").is_dir()
    if shutil.which("systemd-sysusers"):
        assert "hazard-gateway:" in (tmp_path / "etc/passwd").read_text()
    before = _tree(tmp_path)
    r2 = _install("--prefix", str(tmp_path), "--exec", str(exe))
    assert r2.returncode == 0, r2.stderr
    assert _tree(tmp_path) == before, "second run changed files"
    assert not re.search(r"^(create|update)", r2.stdout, re.M), r2.stdout
    assert "kept" in r2.stdout and "unchanged" in r2.stdout
    # an edited config survives, a tampered unit is put back
    cfg = tmp_path / "etc/hazard-gateway/gateway.yaml"
    cfg.write_text(cfg.read_text() + "\n# site edit\n")
    unit.write_text(text.replace("WatchdogSec=30s", "WatchdogSec=0"))
    r3 = _install("--prefix", str(tmp_path), "--exec", str(exe))
    assert r3.returncode == 0 and cfg.read_text().endswith("# site edit\n")
    assert unit.read_text() == text and re.search(r"^update .*hazard-gateway.service", r3.stdout, re.M)
    if shutil.which("systemd-analyze"):
        v = _verify(unit)
        assert v.returncode == 0 and v.stderr.strip() == "", v.stderr


def test_install_service_custom_config_dir_and_starter_config_passes_check(tmp_path):
    """The one-device starter passes `check` once keygen has made its key, with schema.json beside it (the
    config's JSON Schema, named by the starter's first line for editors)."""
    import gateway.ops.install as inst
    from gateway.schema import schema_text

    lines = inst.install_service(str(tmp_path), "/srv/hg", exec_path="/opt/hazard-gateway/bin/hazard-gateway")
    assert any("one-device starter config" in ln for ln in lines)
    unit = (tmp_path / "etc/systemd/system/hazard-gateway.service").read_text()
    assert "--config /srv/hg/gateway.yaml" in unit and "/etc/hazard-gateway" not in unit
    assert "/srv/hg/keys" in (tmp_path / "etc/tmpfiles.d/hazard-gateway.conf").read_text()
    cfg = tmp_path / "srv/hg/gateway.yaml"
    assert cfg.read_text().startswith("# yaml-language-server: $schema=schema.json\n")
    assert (tmp_path / "srv/hg/schema.json").read_text() == schema_text()
    keygen(tmp_path / "srv/hg/keys")
    from gateway.config import load_config

    loaded = load_config(cfg)
    assert loaded.model.gateway.state_dir == "/var/lib/hazard-gateway"
    assert [d.name for d in loaded.model.devices] == ["tank_plc"]
    r = subprocess.run([sys.executable, "-m", "gateway.cli", "check", "--json", str(cfg)], capture_output=True,
                       text=True, cwd=Path(__file__).resolve().parents[2], timeout=60)
    verdict = json.loads(r.stdout)
    assert r.returncode == 0 and verdict["ok"] and verdict["devices"] == 1, (r.stdout, r.stderr)
    assert not [p for p in verdict["problems"] if p["warning"]], verdict["problems"]   # not even a warning
    with pytest.raises(ValueError):
        inst.install_service(str(tmp_path), "relative/dir")


@pytest.mark.e2e
def test_install_service_refuses_a_prefix_it_cannot_write(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = _install("--prefix", str(blocker), "--exec", "/bin/true")
    assert r.returncode == 1 and r.stderr.startswith("hazard-gateway: install-service: ")
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------------------- the notify protocol, live

class Relay:
    """TCP relay 127.0.0.1:port -> the PLC. silent=True: keep accepting and reading, answer nothing."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.silent = False
        self.server: asyncio.AbstractServer | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _client(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            ur, uw = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            w.close()
            return

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, upstream: bool) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(4096):
                    if self.silent:
                        continue  # swallow: the peer hangs
                    dst.write(data)
                    await dst.drain()
            with contextlib.suppress(OSError):
                dst.close()

        await asyncio.gather(pump(r, uw, True), pump(ur, w, False))

    async def stop(self) -> None:
        if self.server:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)


CONFIG = """\
gateway: {{id: notify-test, state_dir: state}}
keys: {{private_key: keys/private.pem}}
store: {{commit_interval_ms: 100, max_bytes: 1099511627776}}
devices:
  - name: plc
    protocol: modbus_tcp
    host: 127.0.0.1
    port: {port}
    unit_id: 1
    poll_interval_ms: 200
    timeout_ms: 300
    tags:
      - {{name: T101.level, address: 30001, type: float32, order: ABCD, unit: m, alarms: {{H: 10.5, HH: 11.0}}}}
"""


@contextlib.asynccontextmanager
async def live(tmp_path: Path, watchdog_usec: int, hang_hook: bool = False):
    plc = TankPlc("127.0.0.1", 0)
    await plc.start()
    relay = Relay(plc.port)
    await relay.start()
    ns = NotifySocket()
    ns.start()
    keygen(tmp_path / "keys")
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(CONFIG.format(port=relay.port))
    env = dict(os.environ, NOTIFY_SOCKET=ns.path, WATCHDOG_USEC=str(watchdog_usec), PYTHONUNBUFFERED="1")
    argv = [sys.executable, "-c", HANG_LAUNCHER] if hang_hook else [sys.executable, "-m", "gateway.cli"]
    log = open(tmp_path / "gateway.log", "wb")
    proc = subprocess.Popen([*argv, "run", "--config", str(cfg)], env=env, stdout=log, stderr=log, cwd=REPO)
    try:
        await ns.wait_for(lambda: ns.times("READY=1"), 30, proc, "READY=1")
        yield proc, ns, relay, plc, tmp_path / "gateway.log"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log.close()
        await ns.close()
        await relay.stop()
        await plc.stop()


@pytest.mark.e2e
@pytest.mark.timeout(60)
async def test_notify_ready_status_watchdog_and_stopping(tmp_path):
    async with live(tmp_path, watchdog_usec=1_000_000) as (proc, ns, relay, plc, logf):
        ready_t = ns.times("READY=1")[0]
        await ns.wait_for(lambda: any("devices 1/1 ok" in s for s in ns.lines("STATUS=")), 15, proc, "STATUS ok")
        await asyncio.sleep(3.0)
        pings = [t for t in ns.times("WATCHDOG=1") if t >= ready_t]
        assert len(pings) >= 4, ns.messages
        gaps = [b - a for a, b in zip(pings, pings[1:])]
        assert max(gaps) < 0.9, gaps                # every WatchdogSec/2 = 0.5 s
        status = ns.lines("STATUS=")[-1]
        assert re.fullmatch(r"STATUS=devices 1/1 ok, \d+ alarms? active, \d+ readings unsent, last acked seq -",
                            status), status
        # the silent peer: the device goes bad, the STATUS line says so
        relay.silent = True
        await ns.wait_for(lambda: "devices 0/1 ok" in ns.lines("STATUS=")[-1], 15, proc, "STATUS 0/1")
        proc.send_signal(signal.SIGTERM)
        assert await _wait_exit(proc, 20) == 0, logf.read_text()[-3000:]
        assert "STOPPING=1" in [m for _, m in ns.messages]


@pytest.mark.e2e
@pytest.mark.timeout(60)
async def test_silent_device_keeps_the_watchdog_alive(tmp_path):
    """A peer that stops answering is a device fault, not a hang: the poll loop completes with BAD
    readings within its timeouts, so WATCHDOG=1 keeps coming (a restart would not help the device)."""
    async with live(tmp_path, watchdog_usec=2_000_000) as (proc, ns, relay, plc, logf):
        await asyncio.sleep(1.5)
        relay.silent = True
        t0 = time.monotonic()
        await asyncio.sleep(9.0)
        pings = [t for t in ns.times("WATCHDOG=1") if t >= t0]
        gaps = [b - a for a, b in zip([t0, *pings], [*pings, time.monotonic()])]
        assert len(pings) >= 7 and max(gaps) < 1.6, (gaps, logf.read_text()[-2000:])
        assert "withholding" not in logf.read_text()
        proc.send_signal(signal.SIGTERM)
        assert await _wait_exit(proc, 20) == 0


@pytest.mark.e2e
@pytest.mark.timeout(90)
async def test_watchdog_withheld_when_the_poll_loop_hangs(tmp_path):
    """WATCHDOG_USEC=2 s: pings every 1 s. The peer goes silent and the read has no working timeout
    (HANG_LAUNCHER): the poll loop's heartbeat goes stale after its limit (0.2 s interval +
    max(2 s, 1 tag x 3 x (0.3 + 1) s) = 4.1 s) and WATCHDOG=1 stops, so systemd would restart us.
    The safety ticker and the store keep running: only poll:plc is named."""
    async with live(tmp_path, watchdog_usec=2_000_000, hang_hook=True) as (proc, ns, relay, plc, logf):
        await asyncio.sleep(2.5)
        assert len(ns.times("WATCHDOG=1")) >= 2
        relay.silent = True
        t_hang = time.monotonic()
        await asyncio.sleep(11.0)
        after = [t - t_hang for t in ns.times("WATCHDOG=1") if t >= t_hang]
        assert after == [] or max(after) < 4.1 + 1.0 + 0.5, after     # pings stop within limit + one period
        assert not [a for a in after if a > 5.6], after
        assert proc.poll() is None                                      # alive: the manager decides
        text = logf.read_text()
        m = re.search(r"watchdog: withholding WATCHDOG=1.*", text)
        assert m and "poll:plc" in m.group(0) and "safety" not in m.group(0) and "store" not in m.group(0), text[-3000:]
        proc.send_signal(signal.SIGTERM)                                # a hung loop does not block the stop
        assert await _wait_exit(proc, 30) == 0, logf.read_text()[-3000:]
