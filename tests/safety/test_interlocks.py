"""Interlocks: MooN voting, fail-safe on unknown inputs (C03), latch + reset, bypass."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.safety.alarms import AlarmEngine, LimitSpec, TagAlarmConfig, gas_preset
from gateway.safety.interlocks import (InterlockActionError, InterlockEngine, InterlockInput, InterlockSpec, OutputAction,
                                parse_vote)
from gateway.model import Quality, Reading

WALL = 1_700_000_000.0
GDS = ("GD1.gas", "GD2.gas", "GD3.gas")


def good(tag, v):
    return Reading(tag, v, "%LEL", Quality.GOOD, WALL)


def bad(tag, reason="nan"):
    return Reading.bad(tag, "%LEL", reason, ts=WALL)


def gas_farm(vote="2oo3", on_fault="trip", latch=True, n=3):
    alarms = AlarmEngine([TagAlarmConfig(t, gas_preset("combustible"), gas="combustible", stale_after_s=5)
                          for t in GDS[:n]], clock=lambda: WALL)
    spec = InterlockSpec("gas_esd", [InterlockInput(t, "HH") for t in GDS[:n]], vote, on_fault,
                         [OutputAction("XV100", 0), OutputAction("BEACON", 1, reset_value=0)], latch=latch)
    return alarms, InterlockEngine([spec], clock=lambda: WALL)


def feed(alarms, values, now):
    """values: per detector a number (good reading) or None (bad reading)."""
    for t, v in zip(GDS, values):
        alarms.update(bad(t) if v is None else good(t, v), now)


# ---------------------------------------------------------------- C03

def test_C03_nan_never_passes_alarm():
    """C03: a BAD (NaN / sentinel) reading on a tag with H 100 driving a 1oo1 interlock trips it with
    cause "fault" and raises a quality alarm; it is never taken as "within limits"."""
    alarms = AlarmEngine([TagAlarmConfig("T101.level", [LimitSpec("H", 100.0)])], clock=lambda: WALL)
    il = InterlockEngine([InterlockSpec("overfill", [InterlockInput("T101.level", "H")], "1oo1",
                                        actions=[OutputAction("XV101", 0)])], clock=lambda: WALL)
    alarms.update(good("T101.level", 50.0), 0.0)
    assert il.evaluate(alarms, 0.0) == ([], [])
    evs = alarms.update(Reading.bad("T101.level", "m", "nan", ts=WALL, raw=[0x7FC0, 0x0000]), 1.0)
    assert [(e.kind, e.to_state, e.reason) for e in evs] == [("QUALITY", "unacked", "nan")]
    assert alarms.condition("T101.level", "H") is None
    cmds, events = il.evaluate(alarms, 1.0)
    assert [(c.tag, c.value, c.cause) for c in cmds] == [("XV101", 0, "fault")]
    trip = [e for e in events if e.event == "trip"][0]
    assert trip.cause == "fault" and trip.votes == {"process": 0, "fault": 1, "needed": 1, "of": 1}
    assert any(e.event == "input_fault" for e in events)
    assert il.status()[0]["state"] == "tripped"


@pytest.mark.parametrize("reason", ["sentinel", "nan", "inf", "exception 02 illegal data address", "timeout"])
def test_C03_every_bad_kind_trips_fail_safe(reason):
    alarms, il = gas_farm(vote="1oo1", n=1)
    alarms.update(good("GD1.gas", 0), 0)
    il.evaluate(alarms, 0)
    alarms.update(bad("GD1.gas", reason), 1)
    cmds, _ = il.evaluate(alarms, 1)
    assert {(c.tag, c.value, c.cause) for c in cmds} == {("XV100", 0, "fault"), ("BEACON", 1, "fault")}


# ---------------------------------------------------------------- voting table

# (process votes, failed inputs, on_fault) -> (tripped, cause)
VOTE_TABLE = []
for p, f, mode in itertools.product(range(4), range(3), ("trip", "hold")):
    if p + f > 3:
        continue
    votes = p + (f if mode == "trip" else 0)
    VOTE_TABLE.append((p, f, mode, votes >= 2, ("process" if p >= 2 else "fault") if votes >= 2 else None))


@pytest.mark.parametrize("process,failed,on_fault,tripped,cause", VOTE_TABLE)
def test_2oo3_voting(process, failed, on_fault, tripped, cause):
    alarms, il = gas_farm("2oo3", on_fault)
    values = [60.0] * process + [None] * failed + [0.0] * (3 - process - failed)
    feed(alarms, values, 1.0)
    cmds, events = il.evaluate(alarms, 1.0)
    assert il.is_tripped("gas_esd") is tripped
    if tripped:
        assert {c.cause for c in cmds} == {cause}
        assert {(c.tag, c.value) for c in cmds} == {("XV100", 0), ("BEACON", 1)}
    else:
        assert cmds == []
    assert il.status()[0]["votes"] == {"process": process, "fault": failed, "needed": 2, "of": 3}
    assert il.status()[0]["degraded"] is (3 - failed < 2)


@settings(max_examples=200, deadline=None)
@given(m=st.integers(1, 4), extra=st.integers(0, 2), data=st.data())
def test_moon_property(m, extra, data):
    """For any MooN and any mix of good/high/bad inputs, trip <=> votes >= M (trip mode counts faults)."""
    n = m + extra
    tags = [f"X{i}" for i in range(n)]
    alarms = AlarmEngine([TagAlarmConfig(t, [LimitSpec("HH", 10)]) for t in tags], clock=lambda: WALL)
    mode = data.draw(st.sampled_from(["trip", "hold"]))
    il = InterlockEngine([InterlockSpec("i", [InterlockInput(t, "HH") for t in tags], f"{m}oo{n}", mode,
                                        [OutputAction("Y", 0)])])
    states = data.draw(st.lists(st.sampled_from(["low", "high", "bad"]), min_size=n, max_size=n))
    for t, s in zip(tags, states):
        alarms.update(bad(t) if s == "bad" else good(t, 20 if s == "high" else 0), 0)
    cmds, _ = il.evaluate(alarms, 0)
    votes = states.count("high") + (states.count("bad") if mode == "trip" else 0)
    assert bool(cmds) is (votes >= m) is il.is_tripped("i")


def test_2oo3_real_gas_sequence_and_missing_limit_is_fault():
    alarms, il = gas_farm()
    feed(alarms, [60, 10, 10], 0)
    assert il.evaluate(alarms, 0)[0] == []           # one detector only: not confirmed (GB 16808-2025 5.5.1.8)
    feed(alarms, [60, 55, 10], 1)
    cmds, events = il.evaluate(alarms, 1)
    assert [e.cause for e in events if e.event == "trip"] == ["process"] and len(cmds) == 2
    il2 = InterlockEngine([InterlockSpec("x", [InterlockInput("GD1.gas", "LL")], actions=[OutputAction("Y", 0)])])
    assert il2.check(alarms) == ["interlock x: input GD1.gas has no LL limit"]
    assert il2.evaluate(alarms, 2)[0][0].cause == "fault"


# ---------------------------------------------------------------- latch and reset

def test_latch_until_reset_after_clear():
    alarms, il = gas_farm()
    feed(alarms, [60, 60, 0], 0)
    cmds, _ = il.evaluate(alarms, 0)
    assert len(cmds) == 2
    with pytest.raises(InterlockActionError, match="condition persists"):
        il.reset("gas_esd", "op1", "test", alarms=alarms, now_mono=0.5)
    # gas clears: no commands, still tripped, a clear event
    feed(alarms, [0, 0, 0], 1)
    cmds, events = il.evaluate(alarms, 1)
    assert cmds == [] and [e.event for e in events] == ["clear"]
    assert il.is_tripped("gas_esd") and il.status()[0]["state"] == "tripped_cleared"
    assert il.evaluate(alarms, 2) == ([], [])           # stays tripped, no repeated events
    cmds, events = il.reset("gas_esd", "op1", "area checked", alarms=alarms, now_mono=3)
    assert [(c.tag, c.value, c.kind) for c in cmds] == [("BEACON", 0, "reset")]   # XV100 never re-opened
    assert [(e.event, e.user, e.reason) for e in events] == [("reset", "op1", "area checked")]
    assert not il.is_tripped("gas_esd") and il.status()[0]["state"] == "normal"
    with pytest.raises(InterlockActionError, match="not tripped"):
        il.reset("gas_esd", "op1", now_mono=4)


def test_reset_refused_while_inputs_unknown_could_still_vote():
    alarms, il = gas_farm()
    feed(alarms, [60, 60, 0], 0)
    il.evaluate(alarms, 0)
    feed(alarms, [0, None, 0], 1)                       # one unknown: 0 + 1 < 2, cleared
    il.evaluate(alarms, 1)
    feed(alarms, [None, None, 0], 2)                    # two unknown: could be 2 votes
    il.evaluate(alarms, 2)
    with pytest.raises(InterlockActionError, match="0 in alarm \\+ 2 unknown of 3"):
        il.reset("gas_esd", "op1")


def test_hold_mode_keeps_state():
    alarms, il = gas_farm(on_fault="hold")
    feed(alarms, [0, 0, 0], 0)
    il.evaluate(alarms, 0)
    feed(alarms, [None, None, None], 1)
    cmds, events = il.evaluate(alarms, 1)
    assert cmds == [] and not il.is_tripped("gas_esd")
    assert [e.event for e in events] == ["input_fault"] and il.status()[0]["degraded"]
    feed(alarms, [60, 60, 0], 2)
    il.evaluate(alarms, 2)
    feed(alarms, [None, None, None], 3)
    il.evaluate(alarms, 3)
    assert il.is_tripped("gas_esd")                     # hold: stays tripped, cannot confirm clear
    with pytest.raises(InterlockActionError):
        il.reset("gas_esd", "op1")


def test_non_latching_clears_itself():
    alarms, il = gas_farm(latch=False)
    feed(alarms, [60, 60, 0], 0)
    il.evaluate(alarms, 0)
    feed(alarms, [0, 0, 0], 1)
    cmds, events = il.evaluate(alarms, 1)
    assert [(c.tag, c.value) for c in cmds] == [("BEACON", 0)]
    assert [e.event for e in events] == ["clear", "reset"] and not il.is_tripped("gas_esd")


def test_stale_inputs_trip():
    alarms, il = gas_farm()
    feed(alarms, [0, 0, 0], 0)
    alarms.tick(0)
    assert il.evaluate(alarms, 0)[0] == []
    alarms.update(good("GD1.gas", 0), 4)                # GD2, GD3 stop answering
    alarms.tick(5)
    cmds, events = il.evaluate(alarms, 5)
    assert {c.cause for c in cmds} == {"fault"}
    fault = [e for e in events if e.event == "input_fault"][0]
    assert fault.reason == "unknown: GD2.gas.HH, GD3.gas.HH"


def test_startup_grace_then_never_answering_input_trips():
    alarms, il = gas_farm()
    assert il.evaluate(alarms, 100.0) == ([], [])             # first poll still under way
    assert il.status()[0]["votes"]["pending"] == 3
    alarms.update(good("GD1.gas", 0), 101)
    alarms.update(good("GD2.gas", 0), 101)
    assert il.evaluate(alarms, 109.9)[0] == []
    cmds, events = il.evaluate(alarms, 110.0)                 # GD3 still silent after the grace: 1 fault < 2
    assert cmds == [] and [e.event for e in events] == ["input_fault"]
    alarms.update(bad("GD2.gas", "timeout"), 111)
    cmds, events = il.evaluate(alarms, 111)
    assert {c.cause for c in cmds} == {"fault"}


# ---------------------------------------------------------------- bypass

def test_bypass_blocks_trip_until_expiry():
    alarms, il = gas_farm()
    ev = il.bypass("gas_esd", "eng1", "detector replacement", 60, now_mono=0)
    assert (ev.event, ev.user) == ("bypass", "eng1")
    assert il.status()[0]["state"] == "bypassed" and il.status()[0]["bypass"]["user"] == "eng1"
    feed(alarms, [60, 60, 0], 1)
    cmds, events = il.evaluate(alarms, 1)
    assert cmds == [] and [e.event for e in events] == ["demand_bypassed"]
    assert il.evaluate(alarms, 30) == ([], [])
    cmds, events = il.evaluate(alarms, 60)
    assert [e.event for e in events] == ["bypass_end", "trip"] and len(cmds) == 2


def test_bypass_does_not_untrip_and_needs_reason_and_limit():
    alarms, il = gas_farm()
    feed(alarms, [60, 60, 0], 0)
    il.evaluate(alarms, 0)
    il.bypass("gas_esd", "eng1", "maintenance", 10, now_mono=1)
    assert il.is_tripped("gas_esd")
    with pytest.raises(InterlockActionError, match="reason"):
        il.bypass("gas_esd", "eng1", " ", 10)
    with pytest.raises(InterlockActionError, match="bypass of 540 min must be > 0 and <= 480 min"):
        il.bypass("gas_esd", "eng1", "why", 9 * 3600)
    ev = il.end_bypass("gas_esd", "eng1", "done", now_mono=2)
    assert ev.event == "bypass_end"
    with pytest.raises(InterlockActionError):
        il.end_bypass("gas_esd", "eng1")


# ---------------------------------------------------------------- config

@pytest.mark.parametrize("vote,n,ok", [("1oo1", 1, True), ("2oo3", 3, True), ("2oo4", 4, True), ("3oo2", 2, False),
                                       ("0oo1", 1, False), ("2of3", 3, False), ("2oo3", 2, False)])
def test_parse_vote(vote, n, ok):
    if ok:
        assert parse_vote(vote, n) == (int(vote[0]), int(vote[-1]))
    else:
        with pytest.raises(ValueError):
            parse_vote(vote, n)


def test_spec_validation():
    with pytest.raises(ValueError, match="on_fault"):
        InterlockSpec("a", [InterlockInput("t", "H")], "1oo1", "ignore", [OutputAction("y", 0)])
    with pytest.raises(ValueError, match="needs 3 inputs"):
        InterlockSpec("a", [InterlockInput("t", "H")], "2oo3", "trip", [OutputAction("y", 0)])
    with pytest.raises(ValueError, match="no actions"):
        InterlockSpec("a", [InterlockInput("t", "H")])


def test_event_records_are_json():
    import json
    alarms, il = gas_farm()
    feed(alarms, [60, None, 0], 0)
    _, events = il.evaluate(alarms, 0)
    recs = [json.loads(json.dumps(e.to_record())) for e in events]
    assert {r["event"] for r in recs} == {"trip", "input_fault"}
    assert recs[-1]["ts"] == "2023-11-14T22:13:20.000Z" and recs[-1]["type"] == "interlock"
    json.dumps(il.status())


def test_reset_value_is_not_written_while_another_tripped_interlock_holds_the_output():
    """A2: two interlocks drive BEACON (safe 1, reset 0). Resetting one must not switch the beacon off
    while the other is still tripped; the last reset releases it."""
    alarms = AlarmEngine([TagAlarmConfig(t, gas_preset("combustible"), gas="combustible") for t in GDS[:2]],
                         clock=lambda: WALL)
    specs = [InterlockSpec(f"il{i}", [InterlockInput(t, "HH")], "1oo1", "trip",
                           [OutputAction("BEACON", 1, reset_value=0)]) for i, t in enumerate(GDS[:2])]
    il = InterlockEngine(specs, clock=lambda: WALL)
    feed(alarms, [60, 60], 0)
    cmds, _ = il.evaluate(alarms, 0)
    assert [(c.interlock, c.tag, c.value) for c in cmds] == [("il0", "BEACON", 1), ("il1", "BEACON", 1)]
    feed(alarms, [0, 60], 1)
    il.evaluate(alarms, 1)
    cmds, events = il.reset("il0", "op1", "GD1 clear", alarms=alarms, now_mono=2)
    assert cmds == [] and [e.event for e in events] == ["reset"]     # il1 still holds the beacon on
    feed(alarms, [0, 0], 3)
    il.evaluate(alarms, 3)
    cmds, _ = il.reset("il1", "op1", "GD2 clear", alarms=alarms, now_mono=4)
    assert [(c.interlock, c.tag, c.value, c.kind) for c in cmds] == [("il1", "BEACON", 0, "reset")]
