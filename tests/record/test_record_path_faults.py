"""Faults of the record path never stop the safety path (docs/design.md, "Two paths, never coupled"), are
alarmed (system.STORE), and lose nothing, or leave a signed gap record for what they lose.

The daemon runs as a child process (`python -m gateway.cli run`) under a fake systemd manager: NOTIFY_SOCKET is
a datagram socket this test binds and WATCHDOG_USEC is set, as systemd sets them. Its peer is the HIL tank PLC
(pymodbus server) with an overfill interlock on T101.level HH -> XV101 closed.

A stalled writer. The stall is real: a second process takes SQLite's write lock on the gateway's store (BEGIN EXCLUSIVE) and
holds it, as a backup tool or a stuck reader on a failing card would. With ``store.busy_timeout_ms`` at 60 s
the writer's commit waits inside SQLite's busy handler without an error: nothing is committed while the
readings pile up in memory, which is what an fsync hanging on a failing SD card looks like to the gateway.
Before the record path was supervised in process, the systemd watchdog was fed only while the store writer
made progress: WATCHDOG=1 stopped after ~10 s and systemd would have killed the process that runs the
interlocks.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.chain.signing import keygen
from hil.bench.record_stall import LOCK_HOLDER
from hil.tank_plc import TankPlc
from conftest import read_status, tank_overfill_config, until_daemon, wait_exit
from hil.rig import make_keys
from notify_socket import NotifySocket

# e2e: a daemon, a server or a child process, or seconds of waiting (make test-fast leaves it out)
pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]

def config_text(plc_port: int, busy_ms: int = 2000) -> str:
    """The tank PLC site (conftest.tank_overfill_config) with a 100 ms commit interval and ``busy_ms``
    SQLite busy timeout."""
    return tank_overfill_config(plc_port, gateway_id="stall-gw", timeout_ms=500, vote="1oo1",
                                store=f"{{path: store.sqlite, commit_interval_ms: 100, busy_timeout_ms: {busy_ms}, "
                                      "max_bytes: 8589934592}",
                                alarms="{HH: {setpoint: 11.0, deadband: 0.1, latching: true}}")





def write_config(tmp_path: Path, plc_port: int, busy_ms: int = 2000, extra: str = "") -> Path:
    """tmp_path/gw.yaml: config_text() + ``extra``; the signing key made on first use."""
    if not (tmp_path / "keys").exists():
        keygen(tmp_path / "keys")
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(config_text(plc_port, busy_ms) + extra)
    return cfg


def start_daemon(tmp_path: Path, plc_port: int, busy_ms: int = 2000, env: dict | None = None,
                 log_name: str = "gateway.log", extra: str = "") -> tuple[subprocess.Popen, Path]:
    """Start `hazard-gateway run` on config_text() + ``extra`` (more top-level YAML, e.g. an uplink), keys
    made on first use; returns (process, log path)."""
    cfg = write_config(tmp_path, plc_port, busy_ms, extra)
    log = tmp_path / log_name
    with open(log, "ab") as logf:
        proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "run", "--config", str(cfg)],
                                env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})),
                                stdout=logf, stderr=logf, cwd=REPO)
    return proc, log


async def quiet_plc() -> TankPlc:
    plc = TankPlc("127.0.0.1", 0)
    await plc.start()
    plc.set_inflow("T101", 0.0)
    plc.set_outflow("T101", 0.0)
    plc.set_level("T101", 8.0)
    return plc


def _system_alarm(state: Path, kind: str) -> dict | None:
    """system.<kind> (STORE, UPLINK) from the daemon's status.json, or None."""
    return next((a for a in read_status(state).get("alarms", []) if a.get("id") == f"system.{kind}"), None)


def _store_alarm(state: Path) -> dict | None:
    return _system_alarm(state, "STORE")


@pytest.mark.timeout(150)
async def test_a_store_stall_raises_store_alarm_keeps_the_watchdog_fed_and_trips_on_time(tmp_path):
    plc = await quiet_plc()
    ns = NotifySocket()
    ns.start()
    state = tmp_path / "state"
    proc, log = start_daemon(tmp_path, plc.port, busy_ms=60000,
                             env={"NOTIFY_SOCKET": ns.path, "WATCHDOG_USEC": "3000000"})
    locker = None
    try:
        await ns.wait_for(lambda: ns.times("READY=1"), 30, proc, "READY=1")
        await until_daemon(lambda: (read_status(state).get("store") or {}).get("readings_committed"), 20, "committing",
                     proc, log)

        # -- the stall: another process holds the write lock; the writer waits in SQLite's busy handler
        locker = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(state / "store.sqlite")],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        # off the loop: this loop also serves the simulated PLC, which must not stall with the test
        assert (await asyncio.to_thread(locker.stdout.readline)).strip() == "locked"
        stall_t0 = time.monotonic()
        committed_at_stall = read_status(state)["store"]["readings_committed"]

        alarm = await until_daemon(lambda: (a := _store_alarm(state)) and a.get("active") and a, 30,
                             "system.STORE raised", proc, log)
        assert "写入停滞" in alarm["reason"] and "记录存储故障" in alarm["reason"], alarm
        rec = read_status(state)["record_path"]["store"]
        assert rec and "stalled" in rec, rec
        assert read_status(state)["store"]["readings_committed"] <= committed_at_stall + 50   # one commit in flight

        # -- a trip condition arrives during the stall: the interlock trips within its usual latency
        t_demand = time.monotonic()
        plc.set_level("T101", 11.5)
        await until_daemon(lambda: plc.coil("XV101") is False, 5, "XV101 closed by the trip during the stall", proc, log)
        latency = time.monotonic() - t_demand
        assert latency < 1.5, latency   # poll 100 ms + tick 100 ms + one write: well under a second here

        # hold the stall past 4 watchdog intervals beyond the writer's stall limit
        while time.monotonic() - stall_t0 < 22:
            assert proc.poll() is None
            await asyncio.sleep(0.2)
        pings = [t for t in ns.times("WATCHDOG=1") if t >= stall_t0 - 2]
        gaps = [b - a for a, b in zip(pings, pings[1:])]
        assert pings and pings[-1] > time.monotonic() - 2.5, "WATCHDOG=1 stopped during the store stall"
        assert max(gaps) < 2.5, gaps   # every WatchdogSec/2 = 1.5 s, never withheld
        assert any("store fault:" in s for s in ns.lines("STATUS=")), ns.lines("STATUS=")[-3:]

        # -- the fault ends: the record path catches up, the alarm clears, nothing was lost
        locker.stdin.close()
        await asyncio.to_thread(locker.wait, 10)
        locker = None
        await until_daemon(lambda: (a := _store_alarm(state)) and not a.get("active"), 20, "system.STORE cleared",
                     proc, log)
        assert proc.poll() is None
        proc.terminate()
        assert await wait_exit(proc, 30) == 0   # the loop keeps serving the PLC while it stops
        proc = None
        db = sqlite3.connect(state / "store.sqlite")
        assert db.execute("SELECT count(*) FROM gaps").fetchone()[0] == 0, db.execute("SELECT * FROM gaps").fetchall()
        # polling at 10 Hz went on all through the stall: about 10 readings/s per tag were taken and committed
        stamps = [r[0] for r in db.execute("SELECT ts FROM readings WHERE tag='T101.level' ORDER BY id")]
        from datetime import datetime
        epochs = [datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp() for t in stamps]
        holes = [b - a for a, b in zip(epochs, epochs[1:])]
        assert max(holes) < 1.0, max(holes)   # no hole in the record across the 22 s stall
        events = [json.loads(d) for (d,) in db.execute("SELECT data FROM events ORDER BY id")]
        assert any(e.get("type") == "interlock" and e.get("event") == "trip" for e in events), events[-5:]
        # the alarm's raise and clear are in the record too (committed once the lock was gone)
        store_alarm = [(e["from_state"], e["to_state"]) for e in events
                       if e.get("type") == "alarm" and e.get("id") == "system.STORE"]
        assert store_alarm[:2] == [("normal", "unacked"), ("unacked", "rtn_unacked")], store_alarm
        starts = [e for e in events if e.get("event") == "start"]
        assert len(starts) == 1   # never restarted
    finally:
        if locker is not None:
            locker.kill()
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)
        await ns.close()
        await plc.stop()


def epoch_of(ts: str) -> float:
    from datetime import datetime
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def _rows(state: Path, sql: str) -> list:
    db = sqlite3.connect(state / "store.sqlite")
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


#: holds a SQLite database in locking_mode=EXCLUSIVE (no other process may open it) until stdin closes
EXCLUSIVE_HOLDER = """
import sqlite3, sys
c = sqlite3.connect(sys.argv[1], isolation_level=None)
c.execute("PRAGMA locking_mode=EXCLUSIVE")
c.execute("BEGIN EXCLUSIVE")
c.execute("CREATE TABLE IF NOT EXISTS held(x)")
c.execute("COMMIT")
print("held", flush=True)
sys.stdin.read()
"""


@pytest.mark.timeout(120)
async def test_a_store_that_cannot_be_opened_at_start_does_not_stop_polling_or_trips(tmp_path):
    """Another process holds the store in exclusive locking mode when the gateway starts: `run` used to
    exit 2 (no polling, no trips; systemd's start limit made it final). Now the safety path runs without
    the store, system.STORE says why, the store is retried, and once it opens what was taken meanwhile is
    committed: nothing lost, no gap."""
    plc = await quiet_plc()
    state = tmp_path / "state"
    state.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", EXCLUSIVE_HOLDER, str(state / "store.sqlite")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    proc = None
    try:
        assert (await asyncio.to_thread(holder.stdout.readline)).strip() == "held"
        proc, log = start_daemon(tmp_path, plc.port)
        await until_daemon(lambda: read_status(state).get("devices", {}).get("tank_plc", {}).get("polls"), 30, "polling",
                     proc, log)
        alarm = await until_daemon(lambda: (a := _store_alarm(state)) and a.get("active") and a, 20,
                             "system.STORE raised", proc, log)
        assert "无法打开" in alarm["reason"] and "locked" in read_status(state)["record_path"]["store"], alarm
        plc.set_level("T101", 11.5)
        await until_daemon(lambda: plc.coil("XV101") is False, 5, "the trip without a store", proc, log)
        await asyncio.sleep(3)
        holder.stdin.close()
        await asyncio.to_thread(holder.wait, 10)
        holder = None
        await until_daemon(lambda: (a := _store_alarm(state)) and not a.get("active"), 60, "the store opened", proc, log)
        proc.terminate()
        assert await wait_exit(proc, 30) == 0   # the loop keeps serving the PLC while it stops
        proc = None
        assert _rows(state, "SELECT count(*) FROM gaps") == [(0,)], _rows(state, "SELECT * FROM gaps")
        first = _rows(state, "SELECT min(ts) FROM readings WHERE tag='T101.level'")[0][0]
        from datetime import datetime
        events = [json.loads(d) for (d,) in _rows(state, "SELECT data FROM events ORDER BY id")]
        opened = [e for e in events if e.get("event") == "store_opened"]
        assert opened and opened[0]["waited_s"] > 3, events[:5]
        # what was polled while the store could not be opened waited in memory and was committed after
        epoch = lambda ts: datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()  # noqa: E731
        assert epoch(first) < epoch(opened[0]["ts"]) - 2, (first, opened[0])
        assert any(e.get("type") == "interlock" and e.get("event") == "trip" for e in events)
        assert [e.get("to_state") for e in events if e.get("id") == "system.STORE"][:1] == ["unacked"]
    finally:
        if holder is not None:
            holder.kill()
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)
        await plc.stop()


@pytest.mark.timeout(120)
async def test_recording_that_cannot_commit_is_alarmed_and_a_power_loss_leaves_a_gap_record(tmp_path):
    """The disk fills under the running gateway (RLIMIT_FSIZE set on the daemon with prlimit(2): every write
    past the limit fails with EFBIG, as SQLite sees a full disk): system.STORE is raised while the writer
    cannot commit, the readings wait in bounded memory, and when the fault ends they are committed. A
    SIGKILL (a power loss) during a second such fault loses what waited, and the next start records that
    interval as a gap row (uploaded in the next signed batch) with a records_lost alarm event."""
    import resource

    plc = await quiet_plc()
    state = tmp_path / "state"
    proc, log = start_daemon(tmp_path, plc.port)
    # only the soft limit is lowered and raised again: raising a hard limit needs CAP_SYS_RESOURCE
    hard = resource.prlimit(proc.pid, resource.RLIMIT_FSIZE)[1]
    full, unlimited = (16384, hard), (hard, hard)
    try:
        await until_daemon(lambda: (read_status(state).get("store") or {}).get("readings_committed"), 20, "committing",
                     proc, log)
        # -- fault 1: the disk is full; the alarm is raised; the fault ends; everything is committed
        resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, full)
        alarm = await until_daemon(lambda: (a := _store_alarm(state)) and a.get("active") and a, 20,
                             "system.STORE raised", proc, log)
        assert "无法写入" in alarm["reason"], alarm
        plc.set_level("T101", 11.5)   # the safety path does not care
        await until_daemon(lambda: plc.coil("XV101") is False, 5, "the trip with a full disk", proc, log)
        await asyncio.sleep(2)
        resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, unlimited)
        await until_daemon(lambda: (a := _store_alarm(state)) and not a.get("active"), 20, "system.STORE cleared",
                     proc, log)
        assert _rows(state, "SELECT count(*) FROM gaps") == [(0,)]

        # -- fault 2: full again, then the power goes
        resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, full)
        await until_daemon(lambda: (a := _store_alarm(state)) and a.get("active"), 20, "system.STORE raised again",
                     proc, log)
        t_fault = time.time()
        await asyncio.sleep(2)
        proc.kill()
        proc.wait(10)
        t_kill = time.time()
        committed_last = _rows(state, "SELECT max(ts) FROM readings WHERE tag='T101.level'")[0][0]

        (state / "status.json").unlink()   # the killed run's: wait for the new run's own
        proc, log = start_daemon(tmp_path, plc.port, log_name="gateway2.log")
        await until_daemon(lambda: read_status(state).get("devices", {}).get("tank_plc", {}).get("polls"), 30,
                     "polling after the restart", proc, log)
        await until_daemon(lambda: _rows(state, "SELECT count(*) FROM gaps")[0][0] == 1, 10, "the gap committed",
                     proc, log)
        # -- fault 3: full again, then a SIGTERM (a systemctl stop): the stop does not hang on commits that
        # cannot succeed, and what could not be committed is a gap at the next start
        resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (16384, resource.prlimit(proc.pid, resource.RLIMIT_FSIZE)[1]))
        await until_daemon(lambda: (a := _store_alarm(state)) and a.get("active"), 20, "system.STORE raised (3)", proc, log)
        t_term = time.monotonic()
        proc.terminate()
        assert await asyncio.to_thread(proc.wait, 30) == 0
        assert time.monotonic() - t_term < 15, "the stop waited on commits that cannot succeed"
        (state / "status.json").unlink()
        proc, log = start_daemon(tmp_path, plc.port, log_name="gateway3.log")
        await until_daemon(lambda: read_status(state).get("devices", {}).get("tank_plc", {}).get("polls"), 30,
                     "polling after the second restart", proc, log)
        proc.terminate()
        assert await wait_exit(proc, 30) == 0   # the loop keeps serving the PLC while it stops
        proc = None
        gaps = _rows(state, "SELECT reason, tags, first_ts, last_ts, count FROM gaps ORDER BY id")
        assert [g[0] for g in gaps] == ["uncommitted_at_stop"] * 2, gaps
        assert gaps[1][4] > 0 and epoch_of(gaps[1][2]) > epoch_of(gaps[0][3]), gaps
        reason, tags, first_ts, last_ts, count = gaps[0]
        from datetime import datetime

        def epoch(ts: str) -> float:
            return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
        assert "T101.level" in json.loads(tags)
        # the gap starts right after the last committed reading and ends at the kill (the journal is
        # rewritten every second while commits fail)
        assert epoch(committed_last) <= epoch(first_ts) < t_fault, (committed_last, first_ts, t_fault)
        assert t_kill - 2.5 < epoch(last_ts) <= t_kill, (last_ts, t_kill)
        assert count >= 20, count   # 2 tags at 10 Hz for >= 2 s
        events = [json.loads(d) for (d,) in _rows(state, "SELECT data FROM events ORDER BY id")]
        lost = [e for e in events if e.get("kind") == "records_lost"]
        assert len(lost) == 2 and lost[0]["count"] == count, lost
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)
        await plc.stop()


@pytest.mark.timeout(120)
async def test_a_batch_refused_without_a_signed_rejection_is_held_under_the_uplink_alarm(tmp_path):
    """A receiver that refuses a batch's content (here: a body cap below the batch, as a proxy's 413 would)
    without a rejection signed by uplink.receiver_key: the daemon holds the batch (nothing set aside, no
    tombstone), raises system.UPLINK 数据上传故障 with the reason, and once the receiver accepts the same
    batch the alarm clears and the stored bytes are delivered."""
    from gateway.regulator.receiver import BackgroundReceiver, ReceiverLimits

    plc = await quiet_plc()
    key, trust = make_keys(tmp_path)
    rx_kid = keygen(tmp_path / "rxkeys")        # the receiver's own key: the gateway trusts its rejections only
    rx = BackgroundReceiver(tmp_path / "rx", trust, limits=ReceiverLimits(max_body=600))
    rx.start()
    state = tmp_path / "state"
    uplink = f"""\
uplink:
  url: {rx.url}/v1/batches
  ca_file: {rx.cafile}
  receiver_key: {tmp_path / 'rxkeys' / f'{rx_kid}.jwk'}
  batch_max_readings: 50
  interval_ms: 100
"""
    from gateway.config import load_config
    from gateway.runtime.gateway import Gateway
    from gateway.chain.signing import Signer
    gw = Gateway(load_config(write_config(tmp_path, plc.port, extra=uplink)), Signer.from_file(key))
    assert set(gw.build_forwarder().receiver_key) == {rx_kid}   # the one key whose rejections count
    proc = None
    try:
        proc, log = start_daemon(tmp_path, plc.port, extra=uplink)
        uplink_alarm = lambda: _system_alarm(state, "UPLINK")  # noqa: E731
        alarm = await until_daemon(lambda: (a := uplink_alarm()) and a.get("active") and a, 30, "system.UPLINK raised",
                             proc, log)
        assert "数据上传故障" in alarm["reason"] and "平台拒收数据" in alarm["reason"], alarm
        assert "held" in (read_status(state).get("record_path") or {}).get("uplink", ""), read_status(state)
        assert rx.receiver.stats().get("rejected_body_too_large", 0) >= 1
        assert _rows(state, "SELECT count(*) FROM dead_letters") == [(0,)]
        # the cause is removed: the receiver takes bodies of any size again; the held batch goes through
        await asyncio.to_thread(rx.stop)
        rx.limits = ReceiverLimits()
        await asyncio.to_thread(rx.start)
        await until_daemon(lambda: (a := uplink_alarm()) and not a.get("active"), 30, "system.UPLINK cleared", proc, log)
        await until_daemon(lambda: rx.receiver.store.get("stall-gw", 1) is not None, 20, "batch 1 delivered", proc, log)
        proc.terminate()
        assert await wait_exit(proc, 30) == 0   # the loop keeps serving the PLC while it stops
        proc = None
        assert _rows(state, "SELECT count(*) FROM dead_letters") == [(0,)]
        assert "Traceback" not in log.read_text(errors="replace")
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)
        rx.stop()
        await plc.stop()


@pytest.mark.timeout(90)
async def test_a_store_file_deleted_while_running_raises_the_store_alarm(tmp_path):
    """A person deletes store.sqlite (and its -wal/-shm) under the running daemon: nothing fails (the open
    connections keep the unlinked file), so the loss would be silent until the next start. system.STORE is
    raised with the reason, polling and trips go on, and the daemon is not restarted."""
    plc = await quiet_plc()
    state = tmp_path / "state"
    proc, log = start_daemon(tmp_path, plc.port)
    try:
        await until_daemon(lambda: (read_status(state).get("store") or {}).get("readings_committed"), 20, "committing",
                     proc, log)
        for suffix in ("", "-wal", "-shm"):
            (state / f"store.sqlite{suffix}").unlink(missing_ok=True)
        alarm = await until_daemon(lambda: (a := _store_alarm(state)) and a.get("active") and a, 15,
                             "system.STORE raised", proc, log)
        assert "缓存数据库文件被删除或替换" in alarm["reason"], alarm
        assert "deleted while open" in read_status(state)["record_path"]["store"]
        plc.set_level("T101", 11.5)
        await until_daemon(lambda: plc.coil("XV101") is False, 5, "the trip after the deletion", proc, log)
        proc.terminate()
        assert await wait_exit(proc, 30) == 0   # the loop keeps serving the PLC while it stops
        proc = None
        text = log.read_text(errors="replace")
        assert "Traceback" not in text
        # the event line an operator reads in journalctl carries the Chinese text itself, not \uXXXX escapes
        assert '"reason": "记录存储故障 / buffer database file deleted or replaced' in text
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)
        await plc.stop()


@pytest.mark.timeout(120)
async def test_a_chain_conflict_at_the_receiver_raises_the_uplink_alarm(tmp_path):
    """The gateway's state directory is lost (a replaced SD card) and the gateway starts a fresh chain under
    the same gateway id: the receiver answers 409 (seq 1 is stored with other bytes). Uploads are held -
    nothing is overwritten or dropped - and system.UPLINK (平台数据链冲突) tells the operator, where before
    only the log did."""
    import shutil

    from gateway.regulator.receiver import BackgroundReceiver

    plc = await quiet_plc()
    _, trust = make_keys(tmp_path)
    rx = BackgroundReceiver(tmp_path / "rx", trust)
    rx.start()
    state = tmp_path / "state"
    uplink = f"uplink: {{url: '{rx.url}/v1/batches', ca_file: '{rx.cafile}', interval_ms: 100}}\n"
    proc = None
    try:
        proc, log = start_daemon(tmp_path, plc.port, extra=uplink)
        await until_daemon(lambda: rx.receiver.store.last_seq("stall-gw") >= 2, 30, "batches accepted", proc, log)
        proc.terminate()
        assert await wait_exit(proc, 30) == 0   # the loop keeps serving the PLC while it stops
        shutil.rmtree(state)              # the SD card is replaced: store, chain position, safety state gone
        proc, log = start_daemon(tmp_path, plc.port, extra=uplink, log_name="gateway2.log")
        alarm = await until_daemon(lambda: (a := _system_alarm(state, "UPLINK")) and a.get("active") and a, 30,
                             "system.UPLINK raised", proc, log)
        assert "平台数据链冲突" in alarm["reason"] and "409" in alarm["reason"], alarm
        proc.terminate()
        assert await wait_exit(proc, 30) == 0   # the loop keeps serving the PLC while it stops
        proc = None
        assert _rows(state, "SELECT count(*) FROM dead_letters") == [(0,)]   # held, never set aside
        assert _rows(state, "SELECT count(*) FROM batches WHERE acked_at IS NULL")[0][0] >= 1
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)
        rx.stop()
        await plc.stop()
