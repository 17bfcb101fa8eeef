"""Engine-owned state that carries over: AlarmEngine / InterlockEngine snapshot() and adopt().

A SIGHUP reload (gateway.runtime.reload) and a restart (gateway.safety.safety_state) carry the alarm and interlock state
by one mechanism: the running engine's snapshot, adopted by the engine built from the (new) config. The
snapshots are ALLOW-LISTS (gateway.safety.alarms.AlarmState / TagState, gateway.safety.interlocks.InterlockState): a field
carries only when it is named there. So that a new field can never silently keep (or lose) its value,
every field of the engines' per-alarm, per-tag and per-interlock records is classified here, by
introspection, as carried or rebuilt from the config; an unclassified field fails the test.

Then behaviour: a reload that changes a set point takes the new set point and keeps the acknowledgement,
the latch and the trip; a restart keeps what it kept before (latched alarms, trips, bypasses, on the
unchanged safety-state.json format) and nothing more.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from pathlib import Path

import pytest

from gateway.safety.alarms import (AlarmEngine, AlarmSnapshot, AlarmState, GroupState, LimitSpec, TagAlarmConfig, TagState,
                            _Alarm, _TagState)
from gateway.safety.interlocks import (InterlockEngine, InterlockInput, InterlockSnapshot, InterlockSpec, InterlockState,
                                OutputAction, _State)
from gateway.model import Quality, Reading
from gateway.safety.safety_state import export, load, write_atomic
from conftest import wait_for

WALL = 1_700_000_000.0

# ------------------------------------------------------------------------ the classification
#
# CARRIED: the fields of the allow-listed state dataclasses (read by introspection below).
# REBUILT: identity and configuration, built from the config by the new engine; never carried.
# A new field of _Alarm / _TagState / _State must go into the state dataclass (gateway/safety/alarms.py,
# gateway/safety/interlocks.py) or into the REBUILT set here, with a reason.

ALARM_REBUILT = {"id", "tag", "kind", "spec", "cfg"}
TAG_REBUILT = {"cfg"}
INTERLOCK_REBUILT = {"spec", "m", "n",   # the spec and the M / N derived from its vote
                     "vote"}             # the last vote: recomputed by the next evaluate(), never carried

# The engines' own attributes: carried through the snapshot, containers of the records classified above,
# or rebuilt.
ALARM_ENGINE = {"carried": {"_first_out", "_sequence", "_sequence_count", "_start_mono"},
                "records": {"_tags", "_alarms"},
                "rebuilt": {"_clock", "_cap", "_by_tag", "_dependents"}}
INTERLOCK_ENGINE = {"carried": set(),
                    "records": {"_s"},
                    "rebuilt": {"_clock", "_grace_s",
                                "_start_mono"}}  # the start-up grace starts again with the new engine


class Clock:
    def __init__(self, t: float = WALL) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def good(tag: str, v: float) -> Reading:
    return Reading(tag, v, "m", Quality.GOOD, WALL)


def alarm_engine(hh: float = 11.0, clock=None, extra: bool = False) -> AlarmEngine:
    cfgs = [TagAlarmConfig("T101.level", [LimitSpec("HH", hh, deadband=0.1, latching=True),
                                          LimitSpec("H", 10.5, deadband=0.1, on_delay_s=2.0)],
                           group="tank", stale_after_s=30.0)]
    if extra:
        cfgs.append(TagAlarmConfig("T102.level", [LimitSpec("HH", 11.0, latching=True)], group="tank"))
    return AlarmEngine(cfgs, clock=clock or Clock())


def interlock_engine(clock=None, name: str = "T101_overfill") -> InterlockEngine:
    return InterlockEngine([InterlockSpec(name, [InterlockInput("T101.level", "HH")], "1oo1",
                                          actions=[OutputAction("XV101", 0)], max_bypass_s=3600)],
                           clock=clock or Clock())


def fresh_records():
    a = alarm_engine()
    il = interlock_engine()
    return a._alarms["T101.level.HH"], a._tags["T101.level"], il._s["T101_overfill"], a, il


def attributes(obj) -> set[str]:
    """Every attribute of a fresh instance: its dataclass fields and whatever else it sets."""
    names = set(vars(obj))
    if dataclasses.is_dataclass(obj):
        names |= {f.name for f in dataclasses.fields(obj)}
    return names


@pytest.mark.parametrize("record, state_cls, rebuilt, where", [
    (0, AlarmState, ALARM_REBUILT, "gateway.safety.alarms._Alarm"),
    (1, TagState, TAG_REBUILT, "gateway.safety.alarms._TagState"),
    (2, InterlockState, INTERLOCK_REBUILT, "gateway.safety.interlocks._State"),
], ids=["alarm", "tag", "interlock"])
def test_every_field_of_the_engine_records_is_carried_or_rebuilt(record, state_cls, rebuilt, where):
    obj = fresh_records()[record]
    have = attributes(obj)
    carried = {f.name for f in dataclasses.fields(state_cls)}
    unclassified = have - carried - rebuilt
    assert not unclassified, (f"{where}: classify {sorted(unclassified)}: carried (a field of "
                              f"{state_cls.__name__}) or rebuilt from the config (tests/safety/test_engine_state.py)")
    assert not carried & rebuilt, sorted(carried & rebuilt)
    assert carried <= have, f"{state_cls.__name__} names fields {where} does not have: {sorted(carried - have)}"
    assert rebuilt <= have, f"stale names in the rebuilt list of {where}: {sorted(rebuilt - have)}"
    # a fresh record's carried state is the state class's default (what "a fresh alarm" means on adopt)
    assert state_cls(*[getattr(obj, n) for n in (f.name for f in dataclasses.fields(state_cls))]) == state_cls()


def test_the_record_classes_are_the_ones_the_engines_use():
    alarm, tag, interlock, *_ = fresh_records()
    assert type(alarm) is _Alarm and type(tag) is _TagState and type(interlock) is _State


@pytest.mark.parametrize("which", ["alarms", "interlocks"])
def test_every_attribute_of_the_engines_is_classified(which):
    _, _, _, a, il = fresh_records()
    engine, table = (a, ALARM_ENGINE) if which == "alarms" else (il, INTERLOCK_ENGINE)
    known = table["carried"] | table["records"] | table["rebuilt"]
    assert not set(vars(engine)) - known, f"classify in tests/safety/test_engine_state.py: {sorted(set(vars(engine)) - known)}"
    assert known <= set(vars(engine)), sorted(known - set(vars(engine)))


def test_the_snapshots_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        alarm_engine().snapshot().alarms = {}  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        interlock_engine().snapshot().interlocks = {}  # type: ignore[misc]


# ------------------------------------------------------------------------ snapshot / adopt

def drive(a: AlarmEngine, il: InterlockEngine, clock: Clock) -> None:
    """A latched, acknowledged HH that returned; an H waiting in its on-delay; a shelved H; a trip."""
    a.update(good("T101.level", 11.5), 1.0)
    il.evaluate(a, 1.0)
    a.ack("T101.level.HH", "op", now_mono=1.5)
    a.update(good("T101.level", 10.8), 2.0)   # HH returned (latched, acked); H still in its on-delay
    il.evaluate(a, 2.0)
    clock.t += 3


def test_a_snapshot_adopted_by_an_engine_of_the_same_config_is_the_same_state():
    clock = Clock()
    a, il = alarm_engine(clock=clock, extra=True), interlock_engine(clock)
    drive(a, il, clock)
    a.update(good("T102.level", 12.0), 2.5)
    a.shelve("T102.level.HH", "op", "sensor swap", 600, 3600, now_mono=2.6)
    il.bypass("T101_overfill", "op", "proof test", 600, now_mono=2.7)
    a2, il2 = alarm_engine(clock=clock, extra=True), interlock_engine(clock)
    assert a2.adopt(a.snapshot()) == [] and il2.adopt(il.snapshot()) == []
    assert a2.snapshot() == a.snapshot() and il2.snapshot() == il.snapshot()
    assert a2.first_out_sequence() == a.first_out_sequence()
    assert [s.to_record() for s in a2.active(include_hidden=True)] == \
        [s.to_record() for s in a.active(include_hidden=True)]


def test_the_snapshot_is_a_copy():
    clock = Clock()
    a, il = alarm_engine(clock=clock), interlock_engine(clock)
    snap, isnap = a.snapshot(), il.snapshot()
    drive(a, il, clock)
    assert snap.alarms["T101.level.HH"] == AlarmState() and snap.tags["T101.level"] == TagState()
    assert isnap.interlocks["T101_overfill"] == InterlockState()
    assert a.snapshot().alarms["T101.level.HH"].latched and il.snapshot().interlocks["T101_overfill"].tripped


def test_adopt_names_what_is_no_longer_configured():
    clock = Clock()
    a, il = alarm_engine(clock=clock, extra=True), interlock_engine(clock)
    a.update(good("T102.level", 12.0), 1.0)
    il2 = interlock_engine(clock, name="renamed")
    notes = alarm_engine(clock=clock).adopt(a.snapshot())
    assert sorted(notes) == ["alarm T102.level.HH: not configured; its state was not adopted",
                             "alarm T102.level.QUALITY: not configured; its state was not adopted",
                             "tag T102.level: not configured; its last value was not adopted"]
    assert il2.adopt(il.snapshot()) == ["interlock T101_overfill: not configured; its state was not adopted"]


def test_a_reload_that_changes_a_set_point_keeps_ack_latch_and_trip_and_takes_the_new_set_point():
    clock = Clock()
    a, il = alarm_engine(hh=11.0, clock=clock), interlock_engine(clock)
    a.update(good("T101.level", 11.5), 1.0)
    il.evaluate(a, 1.0)
    a.ack("T101.level.HH", "op", now_mono=1.5)
    a.update(good("T101.level", 9.0), 2.0)          # returned: latched, acknowledged
    _, events = il.evaluate(a, 2.0)
    assert [e.event for e in events] == ["clear"]
    before = {s.id: s for s in a.active()}["T101.level.HH"]
    assert (before.state, before.latched, before.limit) == ("acked", True, 11.0)

    a2, il2 = alarm_engine(hh=10.0, clock=clock), interlock_engine(clock)   # HH 11.0 -> 10.0
    assert a2.adopt(a.snapshot()) == [] and il2.adopt(il.snapshot()) == []
    after = {s.id: s for s in a2.active()}["T101.level.HH"]
    assert (after.state, after.latched, after.since_ts, after.first_out) == \
        ("acked", True, before.since_ts, before.first_out)
    assert after.limit == 10.0                       # the new set point
    st = il2.status()[0]
    assert st["state"] == "tripped_cleared" and st["tripped_at"] == il.status()[0]["tripped_at"]
    # the last value carried: known, within the new limit too; the next evaluate does not re-trip or clear
    assert a2.condition("T101.level", "HH") is False
    cmds, events = il2.evaluate(a2, 2.5)
    assert cmds == [] and events == []
    # 10.5 is below the old 11.0 and above the new 10.0: the new set point alarms (a new activation)
    events = a2.update(good("T101.level", 10.5), 3.0)
    assert [(e.id, e.to_state) for e in events] == [("T101.level.HH", "unacked")]
    assert a2.condition("T101.level", "HH") is True
    # and a reset is refused while it is in alarm: the reload reset nothing
    with pytest.raises(ValueError, match="still active"):
        a2.reset("T101.level.HH", "op", now_mono=3.1)


def test_a_reload_keeps_what_a_restart_does_not():
    """Reload: everything in the snapshot (shelve, the pending on-delay, the tag's value, fault counts).
    Restart: only the restart form (latched alarms, trips, bypasses); the rest starts fresh."""
    clock = Clock()
    a, il = alarm_engine(clock=clock), interlock_engine(clock)
    a.update(good("T101.level", 10.6), 1.0)          # H raw, waiting in its 2 s on-delay
    a.shelve("T101.level.H", "op", "radar cleaning", 600, 3600, now_mono=1.1)
    il.evaluate(a, 1.2)
    snap = a.snapshot()
    assert snap.alarms["T101.level.H"].pending_since == 1.0 and snap.alarms["T101.level.H"].hide == "shelved"

    reloaded = alarm_engine(clock=clock)
    reloaded.adopt(snap)
    assert reloaded.snapshot() == snap
    assert reloaded.value("T101.level") == 10.6
    assert reloaded.tick(3.1) and reloaded.state("T101.level.H") == "shelved"  # on-delay ran out: active, hidden

    restarted = alarm_engine(clock=clock)
    restarted.restore_state(json.loads(json.dumps(a.export_state())), now_mono=50.0)
    assert restarted.snapshot() == alarm_engine(clock=clock).snapshot()   # nothing latched: nothing kept
    assert restarted.value("T101.level") is None and restarted.state("T101.level.H") == "normal"


# ------------------------------------------------------------------------ restart: what it kept before

OLD_FILE = {  # a safety-state.json as the gateway wrote it before snapshot / adopt (format 1)
    "format": 1, "gateway_id": "restart-gw", "written_at": "2023-11-14T22:13:20.000Z",
    "interlocks": {
        "T101_overfill": {"tripped": True, "cause": "process", "tripped_ts": WALL - 100, "cleared": True,
                          "bypass": {"user": "op", "reason": "proof test", "until_ts": WALL + 900}},
        "gone": {"tripped": True, "cause": "fault", "tripped_ts": WALL - 5, "cleared": False, "bypass": None}},
    "alarms": {
        "T101.level.HH": {"active": False, "acked": True, "since_ts": WALL - 100, "first_out": True},
        "T101.level.QUALITY": {"active": True, "acked": False, "since_ts": WALL, "first_out": False},
        "T999.HH": {"active": True, "acked": False, "since_ts": WALL, "first_out": False}},
}


def test_an_old_state_file_restores_as_before(tmp_path):
    p = tmp_path / "safety-state.json"
    p.write_text(json.dumps(OLD_FILE))
    saved = load(p)
    clock = Clock(WALL + 100)
    a, il = alarm_engine(clock=clock), interlock_engine(clock)
    cmds, il_events, il_unknown = il.restore_state(saved["interlocks"], now_mono=7.0)
    al_events, al_unknown = a.restore_state(saved["alarms"], now_mono=7.0)
    assert il_unknown == ["gone"] and al_unknown == ["T101.level.QUALITY", "T999.HH"]

    assert [(c.tag, c.value, c.kind, c.cause, c.detected_mono, c.detected_ts) for c in cmds] == \
        [("XV101", 0, "restore", "process", 7.0, WALL + 100)]
    assert [(e.event, e.cause, e.user) for e in il_events] == [("restored", "process", None),
                                                              ("restored", None, "op")]
    assert "(cleared before the restart)" in il_events[0].reason
    st = il.snapshot().interlocks["T101_overfill"]
    # tripped again, NOT cleared (fresh readings must show it), the trip time kept, monotonic times afresh;
    # the bypass with its remaining 800 s of wall-clock time
    assert st == InterlockState(tripped=True, cause="process", tripped_mono=7.0, tripped_ts=WALL - 100,
                                cleared=False, bypass_user="op", bypass_reason="proof test",
                                bypass_until_mono=807.0, bypass_until_ts=WALL + 900)

    assert [(e.id, e.action, e.from_state, e.to_state, e.first_out) for e in al_events] == \
        [("T101.level.HH", "restored", "normal", "acked", True)]
    hh = a.snapshot().alarms["T101.level.HH"]
    assert hh == AlarmState(latched=True, active=False, raw=False, known=False, acked=True, acked_mono=7.0,
                            since_ts=WALL - 100, since_mono=7.0, first_out=True)
    assert a.first_out_sequence()[0]["first_out"] == "T101.level.HH"

    # what it writes back is the same format, with the same entries for what it restored
    doc = export(a, il)
    assert doc == {"interlocks": {"T101_overfill": {"tripped": True, "cause": "process", "tripped_ts": WALL - 100,
                                                    "cleared": False,
                                                    "bypass": {"user": "op", "reason": "proof test",
                                                               "until_ts": WALL + 900}}},
                   "alarms": {"T101.level.HH": {"active": False, "acked": True, "since_ts": WALL - 100,
                                                "first_out": True}}}
    write_atomic(p, {"format": 1, "gateway_id": "restart-gw", "written_at": "x", **doc})
    assert set(json.loads(p.read_text())) == {"format", "gateway_id", "written_at", "interlocks", "alarms"}


def test_the_restart_form_is_the_snapshot_less_what_a_restart_cannot_keep():
    clock = Clock()
    a, il = alarm_engine(clock=clock), interlock_engine(clock)
    drive(a, il, clock)
    il.bypass("T101_overfill", "op", "proof test", 600, now_mono=4.0)
    assert a.export_state() == a.snapshot().saved() == {
        "T101.level.HH": {"active": False, "acked": True, "since_ts": WALL, "first_out": True}}
    assert il.export_state() == il.snapshot().saved() == {
        "T101_overfill": {"tripped": True, "cause": "process", "tripped_ts": WALL, "cleared": True,
                          "bypass": {"user": "op", "reason": "proof test", "until_ts": WALL + 3 + 600}}}
    # the snapshots of the restored engines adopt straight back (one mechanism, two transports)
    a2, il2 = alarm_engine(clock=clock), interlock_engine(clock)
    snap, unknown = a2.snapshot_from_saved(a.export_state(), now_mono=9.0)
    isnap, iunknown = il2.snapshot_from_saved(il.export_state(), now_mono=9.0)
    assert unknown == [] and iunknown == [] and isinstance(snap, AlarmSnapshot) and isinstance(isnap, InterlockSnapshot)
    assert snap.tags == {} and snap.groups == {}
    a2.adopt(snap)
    il2.adopt(isnap)
    assert a2.export_state() == a.export_state()
    # the trip and the bypass as saved; "cleared" starts False again (fresh readings must show it)
    assert il2.export_state() == {"T101_overfill": {**il.export_state()["T101_overfill"], "cleared": False}}
    assert a2.snapshot().groups == {"tank": GroupState("T101.level.HH", (("T101.level.HH", WALL, 9.0),), 1)}


# ------------------------------------------------------------------------ the gateway: a reload swaps the plant

def config_text(plc_port: int, hh: float) -> str:
    return f"""gateway: {{id: engine-state-gw, state_dir: state}}
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
         alarms: {{HH: {{setpoint: {hh}, deadband: 0.1, latching: true}}}}}}
      - {{name: XV101, address: {{table: coil, address: 0}}, type: bool, writable: true}}
interlocks:
  - {{name: T101_overfill, inputs: [{{tag: T101.level, condition: HH}}], vote: 1oo1,
     actions: [{{output: XV101, value: 0}}]}}
"""


def test_a_gateway_holds_its_plant_and_its_live_parts_only(tmp_path):
    from gateway.runtime.build import Plant
    from gateway.config import load_config
    from gateway.runtime.gateway import LIVE, Gateway

    from gateway.chain.signing import keygen

    keygen(tmp_path / "keys")
    path = tmp_path / "gw.yaml"
    path.write_text(config_text(1502, 11.0))
    gw = Gateway(load_config(path))
    assert set(vars(gw)) == {"plant"} | LIVE
    plant_fields = {f.name for f in dataclasses.fields(Plant)}
    assert not LIVE & plant_fields
    for name in ("cfg", "signer", "links", "devices", "device_of", "protocol_of", "alarms", "interlocks", "hazard",
                 "points", "polls", "report", "heartbeats", "annunciators"):
        assert getattr(gw, name) is getattr(gw.plant, name), name
    with pytest.raises(dataclasses.FrozenInstanceError):
        gw.plant.alarms = None  # type: ignore[misc]


@pytest.mark.e2e
@pytest.mark.timeout(60)
async def test_a_reload_swaps_the_plant_keeps_ack_latch_and_trip_and_applies_the_new_set_point(tmp_path: Path):
    from gateway.config import load_config
    from gateway.runtime.gateway import Gateway
    from gateway.runtime.reload import reload_from_file
    from gateway.chain.signing import keygen
    from hil.tank_plc import TankPlc

    plc = TankPlc()
    await plc.start()
    plc.set_inflow("T101", 0.0)
    plc.set_outflow("T101", 0.0)
    keygen(tmp_path / "keys")
    path = tmp_path / "gw.yaml"
    path.write_text(config_text(plc.port, 11.0))
    gw = Gateway(load_config(path))
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(gw.run(stop, ready=ready.set))
    try:
        await asyncio.wait_for(ready.wait(), 10)
        plc.set_level("T101", 11.5)
        await wait_for(lambda: gw.interlocks.is_tripped("T101_overfill"), 5, "trip")
        gw.alarms.ack("T101.level.HH", "op")
        plc.set_level("T101", 9.0)
        await wait_for(lambda: gw.interlocks.status()[0]["state"] == "tripped_cleared", 5, "clear")
        hh = next(a for a in gw.alarms.active() if a.id == "T101.level.HH")
        assert (hh.state, hh.latched, hh.limit) == ("acked", True, 11.0)
        tripped_at = gw.interlocks.status()[0]["tripped_at"]
        old_plant, old_tasks = gw.plant, [*gw._poll_tasks, gw._ticker_task]

        path.write_text(config_text(plc.port, 10.0))   # HH 11.0 -> 10.0
        assert await reload_from_file(gw) is True
        assert gw.plant is not old_plant and gw.alarms is gw.plant.alarms and gw.cfg is gw.plant.cfg
        assert all(t.done() for t in old_tasks)          # the old plant's poll loop and ticker ended
        hh2 = next(a for a in gw.alarms.active() if a.id == "T101.level.HH")
        assert (hh2.state, hh2.latched, hh2.since_ts, hh2.limit) == ("acked", True, hh.since_ts, 10.0)
        st = gw.interlocks.status()[0]
        assert st["state"] == "tripped_cleared" and st["tripped_at"] == tripped_at
        await asyncio.sleep(0.5)                         # new polls: 9.0 is within both limits
        assert gw.alarms.state("T101.level.HH") == "acked" and gw.interlocks.is_tripped("T101_overfill")

        plc.set_level("T101", 10.5)   # below the old set point, above the new one
        await wait_for(lambda: gw.alarms.condition("T101.level", "HH") is True, 5, "HH on the new set point")
        assert gw.alarms.state("T101.level.HH") == "unacked"
        assert gw.interlocks.status()[0]["state"] == "tripped" and gw.interlocks.status()[0]["tripped_at"] == tripped_at
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 20)
        await plc.stop()
