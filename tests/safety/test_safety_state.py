"""Safety state across restarts (gateway.safety.safety_state): a restart is not a reset.

Unit tests of InterlockEngine / AlarmEngine export_state() / restore_state() and of the state file;
then a real daemon process over the HIL tank PLC: trip on HH, SIGKILL, restart -> still tripped (the
same trip), reset refused while the condition persists, outputs commanded safe again.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.safety.alarms import AlarmActionError, AlarmEngine, LimitSpec, TagAlarmConfig
from gateway.safety.interlocks import InterlockActionError, InterlockEngine, InterlockInput, InterlockSpec, OutputAction
from gateway.model import Quality, Reading
from gateway.safety.safety_state import SafetyStateError, SafetyStatePersister, load, write_atomic
from conftest import read_status, until_daemon, wait_exit

ROOT = Path(__file__).resolve().parents[2]
WALL = 1_700_000_000.0


class Clock:
    def __init__(self, t: float = WALL) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def level(v: float) -> Reading:
    return Reading("T101.level", v, "m", Quality.GOOD, WALL)


def engines(clock: Clock, latch: bool = True) -> tuple[AlarmEngine, InterlockEngine]:
    alarms = AlarmEngine([TagAlarmConfig("T101.level", [LimitSpec("HH", 11.0, deadband=0.1, latching=True)],
                                         group="tank")], clock=clock)
    il = InterlockEngine([InterlockSpec("T101_overfill", [InterlockInput("T101.level", "HH")], "1oo1",
                                        actions=[OutputAction("XV101", 0), OutputAction("BEACON", 1, reset_value=0)],
                                        latch=latch, max_bypass_s=3600)], clock=clock, startup_grace_s=10.0)
    return alarms, il


def roundtrip(d: dict) -> dict:
    return json.loads(json.dumps(d))  # what the file holds


# ------------------------------------------------------------------------------------ engines

def test_a_tripped_interlock_is_restored_tripped_and_commands_its_outputs_safe_again():
    clock = Clock()
    alarms, il = engines(clock)
    alarms.update(level(11.5), 0.0)
    cmds, _ = il.evaluate(alarms, 0.0)
    assert [c.kind for c in cmds] == ["trip", "trip"]
    saved = roundtrip(il.export_state())
    assert saved == {"T101_overfill": {"tripped": True, "cause": "process", "tripped_ts": WALL, "cleared": False,
                                       "bypass": None}}
    tripped_at = il.status()[0]["tripped_at"]

    clock.t += 60  # the restart
    alarms2, il2 = engines(clock)
    cmds, events, unknown = il2.restore_state(saved, now_mono=1000.0)
    assert unknown == []
    assert il2.is_tripped("T101_overfill")
    st = il2.status()[0]
    assert st["state"] == "tripped" and st["cause"] == "process" and st["tripped_at"] == tripped_at
    assert [(e.event, e.cause) for e in events] == [("restored", "process")]
    assert "awaiting reset" in events[0].reason and events[0].to_record()["event"] == "restored"
    assert [(c.tag, c.value, c.kind, c.cause) for c in cmds] == [("XV101", 0, "restore", "process"),
                                                                 ("BEACON", 1, "restore", "process")]
    # no reading yet: the input is pending/unknown, a reset is refused
    with pytest.raises(InterlockActionError, match="condition persists"):
        il2.reset("T101_overfill", "op", alarms=alarms2, now_mono=1000.1)
    # the condition persists after the restart: still refused, and no second trip
    alarms2.update(level(11.6), 1000.2)
    cmds, events = il2.evaluate(alarms2, 1000.2)
    assert cmds == [] and not any(e.event == "trip" for e in events)
    with pytest.raises(InterlockActionError, match="condition persists"):
        il2.reset("T101_overfill", "op", alarms=alarms2, now_mono=1000.3)
    # cleared by fresh readings, then a person resets
    alarms2.update(level(9.0), 1000.4)
    _, events = il2.evaluate(alarms2, 1000.4)
    assert [e.event for e in events] == ["clear"] and il2.status()[0]["state"] == "tripped_cleared"
    cmds, events = il2.reset("T101_overfill", "op", alarms=alarms2, now_mono=1000.5)
    assert not il2.is_tripped("T101_overfill") and [(c.tag, c.value) for c in cmds] == [("BEACON", 0)]
    assert il2.export_state() == {}


def test_a_non_latching_restored_trip_needs_fresh_readings_to_clear():
    clock = Clock()
    alarms, il = engines(clock, latch=False)
    alarms.update(level(11.5), 0.0)
    il.evaluate(alarms, 0.0)
    alarms2, il2 = engines(clock, latch=False)
    il2.restore_state(roundtrip(il.export_state()), now_mono=5.0)
    _, events = il2.evaluate(alarms2, 5.0)  # input pending in the start-up grace: not clear
    assert events == [] and il2.is_tripped("T101_overfill")
    alarms2.update(level(9.0), 5.1)
    _, events = il2.evaluate(alarms2, 5.1)
    assert [e.event for e in events] == ["clear", "reset"]


def test_a_bypass_is_restored_with_its_wall_clock_expiry_or_ends_when_it_expired_meanwhile():
    clock = Clock()
    _, il = engines(clock)
    il.bypass("T101_overfill", "op", "transmitter test", 600.0, now_mono=0.0)
    saved = roundtrip(il.export_state())
    assert saved["T101_overfill"]["bypass"] == {"user": "op", "reason": "transmitter test", "until_ts": WALL + 600}
    assert saved["T101_overfill"]["tripped"] is False

    clock.t = WALL + 200  # down for 200 s: 400 s left
    alarms2, il2 = engines(clock)
    cmds, events, _ = il2.restore_state(saved, now_mono=50.0)
    assert cmds == [] and [e.event for e in events] == ["restored"]
    st = il2.status()[0]
    assert st["state"] == "bypassed" and st["bypass"]["user"] == "op"
    alarms2.update(level(11.5), 50.0)
    _, events = il2.evaluate(alarms2, 50.0)
    assert [e.event for e in events] == ["demand_bypassed"]
    _, events = il2.evaluate(alarms2, 50.0 + 401)  # the remaining 400 s, on the new monotonic clock
    assert [e.event for e in events][:2] == ["bypass_end", "trip"]

    clock.t = WALL + 700  # down for longer than the bypass
    _, il3 = engines(clock)
    cmds, events, _ = il3.restore_state(saved, now_mono=1.0)
    assert [(e.event, e.reason) for e in events] == [("bypass_end", "bypass expired while the gateway was down")]
    assert il3.status()[0]["state"] == "normal"


def test_state_of_an_interlock_no_longer_configured_is_reported():
    _, il = engines(Clock())
    cmds, events, unknown = il.restore_state({"old_name": {"tripped": True, "cause": "process",
                                                           "tripped_ts": WALL, "cleared": False, "bypass": None}})
    assert (cmds, events, unknown) == ([], [], ["old_name"])


def test_a_latched_alarm_is_restored_latched_and_reset_needs_a_fresh_reading():
    clock = Clock()
    alarms, _ = engines(clock)
    alarms.update(level(11.5), 0.0)
    alarms.update(level(9.0), 1.0)  # returned, still latched (unacked)
    saved = roundtrip(alarms.export_state())
    assert saved == {"T101.level.HH": {"active": False, "acked": False, "since_ts": WALL, "first_out": True}}
    since = alarms.active()[0].since_ts

    alarms2, _ = engines(Clock(WALL + 100))
    events, unknown = alarms2.restore_state(saved, now_mono=500.0)
    assert unknown == []
    assert [(e.id, e.action, e.to_state) for e in events] == [("T101.level.HH", "restored", "unacked")]
    act = alarms2.active()
    assert [(a.id, a.latched, a.since_ts, a.first_out) for a in act] == [("T101.level.HH", True, since, True)]
    with pytest.raises(AlarmActionError, match="value unknown"):
        alarms2.reset("T101.level.HH", "op", now_mono=500.1)
    alarms2.update(level(9.0), 500.2)
    alarms2.reset("T101.level.HH", "op", now_mono=500.3)
    assert alarms2.export_state() == {}


def test_a_restored_active_latched_alarm_that_is_still_active_is_no_new_activation():
    clock = Clock()
    alarms, _ = engines(clock)
    alarms.update(level(11.5), 0.0)
    alarms.ack("T101.level.HH", "op", now_mono=0.5)
    saved = roundtrip(alarms.export_state())
    assert saved["T101.level.HH"]["active"] is True and saved["T101.level.HH"]["acked"] is True
    alarms2, _ = engines(Clock(WALL + 100))
    alarms2.restore_state(saved, now_mono=10.0)
    assert alarms2.update(level(11.4), 10.1) == []  # still in alarm: no transition, activation time kept
    a = alarms2.active()[0]
    assert (a.state, a.since_ts) == ("acked", WALL)
    with pytest.raises(AlarmActionError, match="still active"):
        alarms2.reset("T101.level.HH", "op", now_mono=10.2)


# ------------------------------------------------------------------------------------ the file

def test_write_atomic_and_load(tmp_path):
    p = tmp_path / "safety-state.json"
    assert load(p) is None
    write_atomic(p, {"format": 1, "interlocks": {"a": {"tripped": True}}, "alarms": {}})
    assert load(p)["interlocks"] == {"a": {"tripped": True}}
    assert [f.name for f in tmp_path.iterdir()] == ["safety-state.json"]  # no temporary left behind
    p.write_text("{not json")
    with pytest.raises(SafetyStateError, match="not JSON"):
        load(p)
    p.write_text('{"format": 99}')
    with pytest.raises(SafetyStateError, match="format-1"):
        load(p)


async def test_a_poke_writes_at_once_not_at_the_next_periodic_check(tmp_path):
    """A trip must not wait for the periodic check (a power loss in between would lose it): with the check
    every 30 s, a poke writes within a fraction of a second."""
    state = {"interlocks": {}, "alarms": {}}
    p = SafetyStatePersister(tmp_path / "s.json", lambda: json.loads(json.dumps(state)), "gw", every_s=30.0)
    stop = False
    task = asyncio.create_task(p.run(lambda: stop))
    try:
        for _ in range(100):
            if p.writes:
                break
            await asyncio.sleep(0.01)
        assert p.writes == 1                       # the first snapshot at start
        state["interlocks"]["T101_overfill"] = {"tripped": True}
        t0 = time.monotonic()
        p.poke()
        while p.writes < 2:
            assert time.monotonic() - t0 < 2.0, "the poke did not wake the persister"
            await asyncio.sleep(0.005)
        assert load(tmp_path / "s.json")["interlocks"] == {"T101_overfill": {"tripped": True}}
    finally:
        stop = True
        p.poke()
        await asyncio.wait_for(task, 5)


async def test_the_persister_writes_only_when_the_state_changed(tmp_path):
    state = {"interlocks": {}, "alarms": {}}
    p = SafetyStatePersister(tmp_path / "s.json", lambda: json.loads(json.dumps(state)), "gw")
    assert await p.write_if_changed() and p.writes == 1
    assert not await p.write_if_changed() and p.writes == 1
    state["interlocks"]["x"] = {"tripped": True}
    assert await p.write_if_changed() and p.writes == 2
    assert load(tmp_path / "s.json")["interlocks"] == {"x": {"tripped": True}}
    os.chmod(tmp_path, 0o500)  # a write failure is logged and retried, never raised
    try:
        state["alarms"]["y"] = {}
        if os.geteuid() != 0:
            assert not await p.write_if_changed() and p.last_error
    finally:
        os.chmod(tmp_path, 0o700)
    assert await p.write_if_changed() and p.last_error is None


# ------------------------------------------------------------------------------------ real daemon

def daemon_config(path: Path, plc_port: int) -> Path:
    path.write_text(f"""gateway: {{id: restart-gw, state_dir: state}}
keys: {{private_key: keys/private.pem}}
store: {{path: store.sqlite, commit_interval_ms: 50, max_bytes: 1099511627776}}
devices:
  - name: tank_plc
    protocol: modbus_tcp
    host: 127.0.0.1
    port: {plc_port}
    poll_interval_ms: 100
    timeout_ms: 500
    tags:
      - {{name: T101.level, address: 30001, type: float32, unit: m,
         alarms: {{HH: {{setpoint: 11.0, deadband: 0.1, latching: true}}}}}}
      - {{name: XV101, address: {{table: coil, address: 0}}, type: bool, writable: true}}
interlocks:
  - name: T101_overfill
    inputs: [{{tag: T101.level, condition: HH}}]
    vote: 1oo1
    actions: [{{output: XV101, value: 0}}]
""")
    return path






def _interlock(state: Path) -> dict:
    return next((i for i in read_status(state).get("interlocks", []) if i["name"] == "T101_overfill"), {})


async def _cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway.cli", *args, cwd=str(ROOT),
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.timeout(120)
def _epoch(rfc3339_ts: str) -> float:
    from datetime import datetime
    return datetime.fromisoformat(rfc3339_ts.replace("Z", "+00:00")).timestamp()


@pytest.mark.e2e
async def test_a_trip_survives_sigkill_of_the_daemon(tmp_path):
    from gateway.chain.signing import keygen
    from hil.tank_plc import TankPlc

    plc = TankPlc()
    await plc.start()
    plc.set_inflow("T101", 0.0)
    plc.set_outflow("T101", 0.0)
    keygen(tmp_path / "keys")
    cfg = daemon_config(tmp_path / "gw.yaml", plc.port)
    state = tmp_path / "state"
    sock = str(state / "control.sock")
    log = tmp_path / "gateway.log"
    logf = open(log, "ab")
    procs: list[subprocess.Popen] = []

    def start() -> subprocess.Popen:
        (state / "status.json").unlink(missing_ok=True)
        p = subprocess.Popen([sys.executable, "-m", "gateway.cli", "run", "--config", str(cfg)], cwd=ROOT,
                             stdout=logf, stderr=logf)
        procs.append(p)
        return p

    def kill(p: subprocess.Popen) -> None:
        p.send_signal(signal.SIGKILL)
        p.wait(10)

    try:
        gw = start()
        await until_daemon(lambda: read_status(state).get("devices", {}).get("tank_plc", {}).get("polls"), 30, "polling",
                     gw, log)
        plc.set_level("T101", 11.5)
        await until_daemon(lambda: plc.coil("XV101") is False, 10, "XV101 closed by the trip", gw, log)
        trip = await until_daemon(lambda: _interlock(state).get("tripped_at") and _interlock(state), 10, "trip", gw, log)
        saved = await until_daemon(lambda: (load(state / "safety-state.json") or {}).get("interlocks", {}).get("T101_overfill")
                             and load(state / "safety-state.json"), 5, "the trip in safety-state.json", gw, log)
        # the trip is persisted as soon as it happens (the persister is poked by the trip event), not behind
        # the periodic 0.5 s check: the power-loss window is one atomic write
        window_s = _epoch(saved["written_at"]) - saved["interlocks"]["T101_overfill"]["tripped_ts"]
        assert -0.001 <= window_s < 0.5, window_s   # written_at has ms resolution; the poke test bounds it tighter
        kill(gw)

        # -- restart while the level is still above HH: the same trip, not a new one; reset refused
        writes_before = sum(1 for e in plc.events if e.get("kind") == "coil_write")
        gw = start()
        await until_daemon(lambda: read_status(state).get("devices", {}).get("tank_plc", {}).get("polls"), 30,
                     "polling after the restart", gw, log)
        il = _interlock(state)
        assert il["state"] == "tripped" and il["tripped_at"] == trip["tripped_at"] and il["cause"] == "process", il
        # the outputs were commanded to the safe state again, confirmed by read-back
        await until_daemon(lambda: any(o["tag"] == "XV101" and o["commanded"] in (0, False) and o["confirmed"]
                                 for o in read_status(state).get("outputs", [])), 10, "XV101 re-commanded", gw, log)
        assert sum(1 for e in plc.events if e.get("kind") == "coil_write") > writes_before
        rc, out, err = await _cli("reset", "T101_overfill", "--socket", sock, "--reason", "after restart")
        assert rc == 1 and "condition persists" in err, (rc, out, err)
        assert any(a["id"] == "T101.level.HH" and a["latched"] for a in read_status(state)["alarms"])
        kill(gw)

        # -- while the gateway is down the level drops and someone opens the inlet in the field: after the
        #    restart the interlock is still tripped (awaiting reset) and the inlet is closed again
        plc.set_level("T101", 9.0)
        plc.set_coil("XV101", True)
        gw = start()
        await until_daemon(lambda: plc.coil("XV101") is False, 15, "XV101 closed again after the restart", gw, log)
        await until_daemon(lambda: _interlock(state).get("state") == "tripped_cleared", 15, "cleared, awaiting reset",
                     gw, log)
        assert _interlock(state)["tripped_at"] == trip["tripped_at"]
        rc, out, err = await _cli("reset", "T101_overfill", "--socket", sock, "--reason", "level back to 9 m")
        assert rc == 0, (out, err)
        await until_daemon(lambda: not (load(state / "safety-state.json") or {}).get("interlocks"), 5,
                     "the reset in safety-state.json", gw, log)
        gw.send_signal(signal.SIGTERM)
        assert await wait_exit(gw, 30) == 0   # off the loop's back: it serves the simulated PLC
        events = [json.loads(d) for (d,) in __import__("sqlite3").connect(state / "store.sqlite").execute(
            "SELECT data FROM events ORDER BY id")]
        kinds = [(e.get("event"), e.get("interlock")) for e in events if e.get("type") == "interlock"]
        assert kinds.count(("trip", "T101_overfill")) == 1, kinds  # one trip, restored twice, one reset
        assert kinds.count(("restored", "T101_overfill")) == 2 and kinds[-1] == ("reset", "T101_overfill"), kinds
    finally:
        for p in procs:
            if p.poll() is None:
                kill(p)
        logf.close()
        await plc.stop()
