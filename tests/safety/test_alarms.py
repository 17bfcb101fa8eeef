"""Alarm engine: ISA-18.2 state machine, deadband, delays, latching, shelve, stale, quality, ordering."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.safety.alarms import (AlarmActionError, AlarmEngine, LimitSpec, STATES, TagAlarmConfig, gas_preset,
                            setpoint_warnings)
from gateway.model import Quality, Reading

WALL = 1_700_000_000.0


def good(tag: str, v, unit: str = "") -> Reading:
    return Reading(tag, v, unit, Quality.GOOD, WALL)


def bad(tag: str, reason: str = "nan") -> Reading:
    return Reading.bad(tag, "", reason, ts=WALL)


def engine(*cfgs: TagAlarmConfig) -> AlarmEngine:
    return AlarmEngine(list(cfgs), clock=lambda: WALL)


def one(kind="H", sp=100.0, **kw) -> AlarmEngine:
    return engine(TagAlarmConfig("T", [LimitSpec(kind, sp, **kw)]))


# ---------------------------------------------------------------- transition table (ISA-18.2)

# Each row: steps, expected displayed state of T.H after the last step.
# steps: ("v", value) good reading, ("bad",) bad reading, ("ack",), ("reset",), ("shelve",), ("unshelve",)
TABLE = [
    # non-latching
    ("normal stays normal", False, [("v", 50)], "normal"),
    ("normal -> unacked", False, [("v", 100)], "unacked"),
    ("unacked -> acked", False, [("v", 120), ("ack",)], "acked"),
    ("unacked -> rtn_unacked", False, [("v", 120), ("v", 10)], "rtn_unacked"),
    ("rtn_unacked -> normal on ack", False, [("v", 120), ("v", 10), ("ack",)], "normal"),
    ("rtn_unacked -> unacked on return", False, [("v", 120), ("v", 10), ("v", 130)], "unacked"),
    ("acked -> normal on return", False, [("v", 120), ("ack",), ("v", 10)], "normal"),
    ("acked stays acked while active", False, [("v", 120), ("ack",), ("v", 150)], "acked"),
    ("normal -> acked? never: new alarm annunciates", False, [("v", 120), ("ack",), ("v", 10), ("v", 120)],
     "unacked"),
    ("bad reading keeps unacked", False, [("v", 120), ("bad",)], "unacked"),
    ("bad reading keeps normal", False, [("v", 10), ("bad",)], "normal"),
    ("shelved hides", False, [("v", 120), ("shelve",)], "shelved"),
    ("unshelve active -> unacked", False, [("v", 120), ("ack",), ("shelve",), ("unshelve",)], "unacked"),
    ("unshelve cleared -> normal", False, [("v", 120), ("shelve",), ("v", 0), ("unshelve",)], "normal"),
    ("suppressed", False, [("v", 120), ("suppress",)], "suppressed"),
    ("out of service", False, [("v", 120), ("oos",)], "out_of_service"),
    # latching
    ("latched stays unacked after return", True, [("v", 120), ("v", 10)], "unacked"),
    ("latched acked stays acked after return", True, [("v", 120), ("ack",), ("v", 10)], "acked"),
    ("latched reset after return -> normal", True, [("v", 120), ("v", 10), ("reset",)], "normal"),
    ("latched reset acked -> normal", True, [("v", 120), ("ack",), ("v", 10), ("reset",)], "normal"),
]


def run_steps(e: AlarmEngine, steps, now0: float = 0.0):
    now = now0
    for s in steps:
        now += 1
        match s[0]:
            case "v":
                e.update(good("T", s[1]), now)
            case "bad":
                e.update(bad("T"), now)
            case "ack":
                e.ack("T.H", "op1", now_mono=now)
            case "reset":
                e.reset("T.H", "op1", "gas cleared", now_mono=now)
            case "shelve":
                e.shelve("T.H", "op1", "sensor recalibration", 600, 3600, now_mono=now)
            case "unshelve":
                e.unshelve("T.H", "op1", now_mono=now)
            case "suppress":
                e.suppress("T.H", "op1", "pump stopped", now_mono=now)
            case "oos":
                e.set_out_of_service("T.H", "op1", "detector removed", now_mono=now)
        e.tick(now)
    return now


@pytest.mark.parametrize("name,latching,steps,expected", TABLE, ids=[r[0] for r in TABLE])
def test_transition_table(name, latching, steps, expected):
    e = one(latching=latching)
    run_steps(e, steps)
    assert e.state("T.H") == expected


def test_events_name_from_and_to_states():
    e = one()
    evs = e.update(good("T", 150), 1)
    assert [(x.id, x.from_state, x.to_state, x.value, x.limit) for x in evs] == [
        ("T.H", "normal", "unacked", 150.0, 100.0)]
    ack = e.ack("T.H", "op1", "seen", now_mono=2)[0]
    assert (ack.from_state, ack.to_state, ack.user, ack.reason, ack.action) == (
        "unacked", "acked", "op1", "seen", "ack")
    rec = ack.to_record()
    assert rec["ts"] == "2023-11-14T22:13:20.000Z" and "mono" not in rec and rec["type"] == "alarm"


# ---------------------------------------------------------------- property: model-based over the whole table

op = st.one_of(
    st.tuples(st.just("v"), st.floats(min_value=0, max_value=200, allow_nan=False)),
    st.tuples(st.just("bad")),
    st.tuples(st.just("ack")),
    st.tuples(st.just("reset")),
)


@settings(max_examples=300, deadline=None)
@given(latching=st.booleans(), deadband=st.sampled_from([0.0, 5.0]), ops=st.lists(op, max_size=25))
def test_state_machine_matches_reference_model(latching, deadband, ops):
    """A reference model of ISA-18.2 (active / acked / latched) predicts every state and refusal."""
    sp = 100.0
    e = one(sp=sp, deadband=deadband, latching=latching)
    active = latched = False
    acked = True
    known = False
    for now, o in enumerate(ops, start=1):
        if o[0] == "v":
            v = o[1]
            e.update(good("T", v), now)
            known = True
            if not active and v >= sp:
                active, acked, latched = True, False, latching
            elif active and v < sp - deadband:
                active = False
        elif o[0] == "bad":
            e.update(bad("T"), now)
            known = False
        elif o[0] == "ack":
            if acked:
                with pytest.raises(AlarmActionError):
                    e.ack("T.H", "op", now_mono=now)
            else:
                e.ack("T.H", "op", now_mono=now)
                acked = True
        elif o[0] == "reset":
            if not latched or active or not known:
                with pytest.raises(AlarmActionError):
                    e.reset("T.H", "op", now_mono=now)
            else:
                e.reset("T.H", "op", now_mono=now)
                latched, acked = False, True
        e.tick(now)
        in_alarm = active or latched
        expected = ("acked" if acked else "unacked") if in_alarm else ("normal" if acked else "rtn_unacked")
        assert e.state("T.H") == expected
        assert e.condition("T", "H") == (active if known else None)
        assert e.condition("T", "QUALITY") is (not known and any(x[0] == "bad" for x in ops[:now]))
        assert all(s.state in STATES and s.base_state != "normal" for s in e.active())


@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.one_of(st.none(), st.floats(0, 200)), min_size=1, max_size=30))
def test_bad_reading_is_never_within_limits(values):
    """C03 as a property: after a bad reading condition() is None, never False, and the QUALITY alarm is on."""
    e = one(sp=100.0)
    for i, v in enumerate(values):
        e.update(bad("T") if v is None else good("T", v), i)
        if v is None:
            assert e.condition("T", "H") is None
            assert e.condition("T", "QUALITY") is True
        else:
            assert e.condition("T", "H") is (v >= 100.0)
            assert e.condition("T", "QUALITY") is False


# ---------------------------------------------------------------- deadband, delays

@pytest.mark.parametrize("kind,sp,db,seq,expected", [
    ("H", 100, 5, [100, 96, 95.01], True),        # H clears only below setpoint - deadband
    ("H", 100, 5, [100, 94.99], False),
    ("H", 100, 0, [100, 99.99], False),
    ("H", 100, 5, [99.9, 96], False),             # deadband does not lower the activation point
    ("L", 10, 2, [10, 11.9, 12.0], True),          # L clears only above setpoint + deadband
    ("L", 10, 2, [10, 12.01], False),
    ("LL", 5, 0, [5], True),
    ("HH", 11, 0.1, [11.0, 10.95], True),
    ("HH", 11, 0.1, [11.0, 10.89], False),
])
def test_deadband(kind, sp, db, seq, expected):
    e = one(kind, sp, deadband=db)
    for i, v in enumerate(seq):
        e.update(good("T", v), i)
    assert e.condition("T", kind) is expected


def test_on_delay_and_off_delay_with_injected_clock():
    e = one(on_delay_s=5, off_delay_s=3)
    e.update(good("T", 120), 0.0)
    assert e.tick(4.9) == [] and e.condition("T", "H") is False
    evs = e.tick(5.0)
    assert [(x.to_state, x.mono) for x in evs] == [("unacked", 5.0)] and e.condition("T", "H") is True
    e.update(good("T", 10), 6.0)
    assert e.tick(8.9) == [] and e.condition("T", "H") is True
    assert [x.to_state for x in e.tick(9.0)] == ["rtn_unacked"]


def test_on_delay_restarts_on_chatter():
    e = one(on_delay_s=5)
    e.update(good("T", 120), 0)
    e.update(good("T", 50), 2)
    e.update(good("T", 120), 3)
    assert e.tick(7.9) == []
    assert [x.to_state for x in e.tick(8.0)] == ["unacked"]


def test_gas_on_delay_capped_at_5_s_by_default():
    """The gateway's on-delay adds to the detector's own response (docs/domain.md, Response times): 5 s cap."""
    cfg = TagAlarmConfig("GD1.gas", gas_preset("combustible", on_delay_s=120), gas="combustible")
    e = engine(cfg)
    e.update(good("GD1.gas", 60), 0)
    assert e.tick(4.9) == []
    assert {x.id for x in e.tick(5.0)} == {"GD1.gas.H", "GD1.gas.HH"}
    ws = setpoint_warnings(cfg)
    assert any("on-delay 120 s exceeds the 5 s gas on-delay cap" in w and "capped at 5 s" in w for w in ws), ws
    # a configured cap (alarm_policy.gas_on_delay_cap_s) is what the engine and the warning use
    e = AlarmEngine([cfg], clock=lambda: WALL, gas_on_delay_cap_s=8.0)
    e.update(good("GD1.gas", 60), 0)
    assert e.tick(7.9) == [] and len(e.tick(8.0)) == 2
    assert any("exceeds the 8 s gas on-delay cap" in w for w in setpoint_warnings(cfg, 8.0))
    # a non-gas tag's on-delay is not capped
    e = one(on_delay_s=60)
    e.update(good("T", 120), 0)
    assert e.tick(59.9) == [] and len(e.tick(60.0)) == 1


def test_bad_reading_cancels_pending_return():
    e = one(off_delay_s=3)
    e.update(good("T", 120), 0)
    e.update(good("T", 10), 1)      # return pending
    e.update(bad("T"), 2)           # unknown: cannot confirm the return
    e.tick(10)
    assert e.state("T.H") == "unacked"
    e.update(good("T", 10), 11)
    e.tick(14)
    assert e.state("T.H") == "rtn_unacked"


# ---------------------------------------------------------------- latching, reset

def test_latching_reset_refused_while_active_or_unknown():
    e = one(latching=True)
    e.update(good("T", 120), 1)
    with pytest.raises(AlarmActionError, match="condition still active"):
        e.reset("T.H", "op1", now_mono=2)
    e.update(bad("T", "timeout"), 3)
    with pytest.raises(AlarmActionError, match="value unknown"):
        e.reset("T.H", "op1", now_mono=4)
    e.update(good("T", 0), 5)
    assert e.state("T.H") == "unacked"
    ev = e.reset("T.H", "op1", "cleared", now_mono=6)[0]
    assert (ev.from_state, ev.to_state, ev.action) == ("unacked", "normal", "reset")
    with pytest.raises(AlarmActionError, match="not latched"):
        e.reset("T.H", "op1", now_mono=7)


def test_ack_refused_when_nothing_to_ack():
    e = one()
    with pytest.raises(AlarmActionError, match="nothing to acknowledge"):
        e.ack("T.H", "op1")
    with pytest.raises(KeyError):
        e.ack("T.XX", "op1")


def test_re_alarm():
    e = one(re_alarm_s=60)
    e.update(good("T", 120), 0)
    e.ack("T.H", "op1", now_mono=1)
    assert e.tick(60.9) == []
    evs = e.tick(61)
    assert [(x.from_state, x.to_state, x.action) for x in evs] == [("acked", "unacked", "re-alarm")]


# ---------------------------------------------------------------- shelve

def test_shelve_expiry_and_condition_unaffected():
    e = one()
    e.update(good("T", 120), 0)
    ev = e.shelve("T.H", "op1", "detector calibration", 30, 3600, now_mono=1)[0]
    assert (ev.to_state, ev.user, ev.reason) == ("shelved", "op1", "detector calibration")
    assert e.active() == [] and e.condition("T", "H") is True
    assert [s.id for s in e.active(include_hidden=True)] == ["T.H"]
    e.update(good("T", 10), 5)              # hidden transition still recorded
    e.update(good("T", 130), 6)
    assert e.tick(30.9) == []
    evs = e.tick(31)
    assert [(x.from_state, x.to_state, x.action) for x in evs] == [("shelved", "unacked", "shelve_expired")]


def test_shelve_needs_reason_and_bounded_duration():
    e = one()
    with pytest.raises(AlarmActionError, match="reason"):
        e.shelve("T.H", "op1", "", 10, 60)
    with pytest.raises(AlarmActionError, match=r"shelve of 1\.01667 min must be > 0 and <= 1 min"):
        e.shelve("T.H", "op1", "why", 61, 60)
    with pytest.raises(AlarmActionError):
        e.shelve("T.H", "op1", "why", 0, 60)


def test_hidden_transitions_are_marked():
    e = one()
    e.update(good("T", 120), 0)
    e.shelve("T.H", "op1", "why", 100, 100, now_mono=1)
    evs = e.update(good("T", 0), 2)
    assert [(x.from_state, x.to_state, x.hidden) for x in evs] == [("unacked", "rtn_unacked", "shelved")]


# ---------------------------------------------------------------- stale, quality

def test_stale_detection_raises_quality_alarm_and_unknown_condition():
    e = engine(TagAlarmConfig("T", [LimitSpec("H", 100)], stale_after_s=5))
    e.update(good("T", 10), 0)
    assert e.tick(4.9) == [] and e.condition("T", "H") is False
    evs = e.tick(5.0)
    assert [(x.id, x.to_state, x.reason) for x in evs] == [("T.QUALITY", "unacked", "stale")]
    assert e.condition("T", "H") is None
    evs = e.update(good("T", 10), 6)
    assert [(x.id, x.to_state) for x in evs] == [("T.QUALITY", "rtn_unacked")]
    assert e.condition("T", "H") is False


def test_stale_without_any_reading():
    e = engine(TagAlarmConfig("T", [LimitSpec("H", 100)], stale_after_s=5))
    e.tick(100.0)
    assert e.condition("T", "H") is None and e.tick(104.9) == []
    assert [x.reason for x in e.tick(105)] == ["stale"]


@pytest.mark.parametrize("reading,reason", [
    (bad("T", "sentinel"), "sentinel"),
    (bad("T", "exception 02 illegal data address"), "exception 02 illegal data address"),
    (Reading("T", "n/a", "", Quality.GOOD, WALL), "value is not a number"),
])
def test_bad_quality_is_quality_alarm_distinct_from_process(reading, reason):
    e = one()
    evs = e.update(reading, 1)
    assert [(x.kind, x.to_state, x.reason, x.limit) for x in evs] == [("QUALITY", "unacked", reason, None)]
    assert e.condition("T", "H") is None and e.state("T.H") == "normal"


def test_uncertain_value_is_used():
    e = one()
    e.update(Reading("T", 150.0, "", Quality.UNCERTAIN, WALL, reason="last usable"), 1)
    assert e.condition("T", "H") is True and e.condition("T", "QUALITY") is False


# ---------------------------------------------------------------- ROC, DEV

def test_rate_of_change():
    e = one("ROC", 2.0)             # alarm on a rise >= 2 units/s
    e.update(good("T", 10), 0)
    assert e.condition("T", "ROC") is None        # one sample: rate unknown
    e.update(good("T", 11), 1)
    assert e.condition("T", "ROC") is False
    e.update(good("T", 15), 2)
    assert e.condition("T", "ROC") is True
    e.update(good("T", 15.5), 3)
    assert e.condition("T", "ROC") is False
    f = one("ROC", -1.0)            # alarm on a fall
    f.update(good("T", 10), 0)
    f.update(good("T", 8), 1)
    assert f.condition("T", "ROC") is True


def test_deviation_between_redundant_transmitters():
    e = engine(TagAlarmConfig("LT1", [LimitSpec("DEV", 0.5, other_tag="LT2")]), TagAlarmConfig("LT2", []))
    e.update(good("LT1", 10.0), 0)
    assert e.condition("LT1", "DEV") is None
    e.update(good("LT2", 10.2), 0)
    assert e.condition("LT1", "DEV") is False
    e.update(good("LT2", 10.6), 1)                 # reevaluated when the reference moves
    assert e.condition("LT1", "DEV") is True
    e.update(bad("LT2"), 2)
    assert e.condition("LT1", "DEV") is None
    with pytest.raises(ValueError, match="reference tag"):
        engine(TagAlarmConfig("LT1", [LimitSpec("DEV", 0.5, other_tag="NOPE")]))


# ---------------------------------------------------------------- ordering and first-out

def test_active_order_level_gas_time_and_first_out():
    e = engine(
        TagAlarmConfig("CO", gas_preset("combustible"), gas="combustible", group="A"),
        TagAlarmConfig("H2S", gas_preset("toxic", oel=10.0), gas="toxic", group="A"),
        TagAlarmConfig("CO2", gas_preset("combustible"), gas="combustible", group="A"),
        TagAlarmConfig("LT", [LimitSpec("H", 10, priority=3)]),
    )
    e.update(good("CO", 30), 1)      # combustible level 1, first in group A
    e.update(good("LT", 11), 2)
    e.update(good("H2S", 25), 3)     # toxic level 1 and level 2
    e.update(good("CO2", 60), 4)     # combustible level 1 and 2
    order = [s.id for s in e.active()]
    assert order == ["H2S.HH", "CO2.HH", "H2S.H", "CO.H", "CO2.H", "LT.H"]
    assert [s.id for s in e.active() if s.first_out] == ["CO.H"]


def test_first_out_rearms_after_group_clears():
    e = engine(TagAlarmConfig("A", [LimitSpec("H", 1)], group="g"), TagAlarmConfig("B", [LimitSpec("H", 1)], group="g"))
    assert e.update(good("A", 2), 1)[0].first_out
    assert not e.update(good("B", 2), 2)[0].first_out
    for t in "AB":
        e.update(good(t, 0), 3)
        e.ack(f"{t}.H", "op", now_mono=4)
    assert e.update(good("B", 2), 5)[0].first_out


# ---------------------------------------------------------------- presets and validation

def test_gas_presets():
    c = gas_preset("combustible")
    assert [(x.kind, x.setpoint, x.level, x.latching) for x in c] == [("H", 25, 1, True), ("HH", 50, 2, True)]
    t = gas_preset("toxic", oel=10.0)
    assert [(x.kind, x.setpoint, x.level) for x in t] == [("H", 10.0, 1), ("HH", 20.0, 2)]
    o = gas_preset("oxygen")
    assert sorted((x.kind, x.setpoint) for x in o) == [("H", 23.5), ("L", 19.5)]
    with pytest.raises(ValueError):
        gas_preset("toxic")
    with pytest.raises(ValueError):
        gas_preset("steam")


@pytest.mark.parametrize("gas,limits,oel,fragment", [
    ("combustible", [LimitSpec("H", 30, level=1, latching=True)], None, "H set point 30 is looser"),
    ("combustible", [LimitSpec("HH", 55, level=2, latching=True)], None, "HH set point 55"),
    ("toxic", [LimitSpec("HH", 25, level=2, latching=True)], 10.0, "HH set point 25"),
    ("oxygen", [LimitSpec("L", 18, level=2, latching=True)], None, "L set point 18"),
    ("combustible", [LimitSpec("H", 20, level=1)], None, "not latching"),
    ("combustible", [LimitSpec("H", 20, level=1, priority=1, latching=True),
                     LimitSpec("HH", 40, level=2, priority=2, latching=True)], None, "lower priority"),
])
def test_setpoint_warnings(gas, limits, oel, fragment):
    ws = setpoint_warnings(TagAlarmConfig("GD", limits, gas=gas, oel=oel))
    assert any(fragment in w for w in ws), ws


def test_presets_raise_no_warnings():
    for gas, oel in (("combustible", None), ("toxic", 10.0), ("oxygen", None)):
        assert setpoint_warnings(TagAlarmConfig("GD", gas_preset(gas, oel), gas=gas, oel=oel)) == []


@pytest.mark.parametrize("kw,msg", [
    (dict(kind="HX", setpoint=1), "limit kind"),
    (dict(kind="H", setpoint=1, priority=5), "priority"),
    (dict(kind="H", setpoint=1, deadband=-1), "deadband"),
    (dict(kind="H", setpoint=1, level=3), "level"),
    (dict(kind="DEV", setpoint=1), "other_tag"),
    (dict(kind="H", setpoint=float("nan")), "finite"),
])
def test_limit_validation(kw, msg):
    with pytest.raises(ValueError, match=msg):
        LimitSpec(**kw)


def test_duplicate_limits_and_tags_rejected():
    with pytest.raises(ValueError, match="more than one H"):
        TagAlarmConfig("T", [LimitSpec("H", 1), LimitSpec("H", 2)])
    with pytest.raises(ValueError, match="configured twice"):
        engine(TagAlarmConfig("T"), TagAlarmConfig("T"))
    with pytest.raises(KeyError, match="no HH limit"):
        one().condition("T", "HH")


# ---------------------------------------------------------------- first alarm, later alarms in time order (GB 16808)

def test_first_out_sequence_lists_later_alarms_in_activation_order_with_their_times():
    t = {"wall": WALL}
    e = AlarmEngine([TagAlarmConfig(g, gas_preset("combustible"), gas="combustible", group="gas")
                     for g in ("GD1", "GD2", "GD3")] + [TagAlarmConfig("H2S", gas_preset("toxic", 10.0), gas="toxic",
                                                                       group="gas")],
                    clock=lambda: t["wall"])

    def feed(tag, v, mono):
        t["wall"] = WALL + mono
        e.update(good(tag, v), mono)

    assert e.first_out_sequence() == []
    feed("GD2", 30, 1)        # GD2 level 1: the first alarm
    feed("H2S", 25, 2)        # toxic level 1 and 2 at once
    feed("GD1", 60, 3)        # GD1 level 1 and 2
    feed("GD2", 0, 4)         # GD2 returns (latched: still in alarm)
    [g] = e.first_out_sequence()
    assert g["group"] == "gas" and g["first_out"] == "GD2.H" and g["count"] == 5
    assert [(a["id"], a["since"], a["first_out"]) for a in g["alarms"]] == [
        ("GD2.H", "2023-11-14T22:13:21.000Z", True),
        ("H2S.H", "2023-11-14T22:13:22.000Z", False), ("H2S.HH", "2023-11-14T22:13:22.000Z", False),
        ("GD1.H", "2023-11-14T22:13:23.000Z", False), ("GD1.HH", "2023-11-14T22:13:23.000Z", False)]
    # beside it, the priority-ordered list puts level 2 and toxic first: a different order on purpose
    assert [a.id for a in e.active()][:3] == ["H2S.HH", "GD1.HH", "H2S.H"]
    # the episode ends when every alarm of the group is back to normal; the next one starts a new sequence
    for tag in ("GD1", "H2S"):
        feed(tag, 0, 5)
    for a in ("GD2.H", "H2S.H", "H2S.HH", "GD1.H", "GD1.HH"):
        e.reset(a, "op", "gas cleared", now_mono=6)
    assert e.first_out_sequence() == []
    feed("GD3", 30, 7)
    [g] = e.first_out_sequence()
    assert [a["id"] for a in g["alarms"]] == ["GD3.H"] and g["first_out"] == "GD3.H"


def test_first_out_sequence_keeps_each_activation_and_survives_a_restart():
    e = engine(TagAlarmConfig("A", [LimitSpec("H", 1)], group="g"), TagAlarmConfig("B", [LimitSpec("H", 1)], group="g"))
    e.update(good("A", 2), 1)
    e.update(good("B", 2), 2)
    e.update(good("B", 0), 3)     # B returns (rtn_unacked) ...
    e.update(good("B", 2), 4)     # ... and comes again: a second activation, listed again
    [g] = e.first_out_sequence()
    assert [(a["id"], a["state"]) for a in g["alarms"]] == [("A.H", "unacked"), ("B.H", "unacked"), ("B.H", "unacked")]
    # a chattering alarm: the first alarm and the latest SEQUENCE_MAX - 1 stay listed, all are counted
    from gateway.safety.alarms import SEQUENCE_MAX
    for i in range(SEQUENCE_MAX + 10):
        e.update(good("B", 0), 5 + 2 * i)
        e.update(good("B", 2), 6 + 2 * i)
    [g] = e.first_out_sequence()
    assert len(g["alarms"]) == SEQUENCE_MAX and g["alarms"][0]["id"] == "A.H" and g["count"] == 3 + SEQUENCE_MAX + 10
    # latched alarms restored after a restart come back in their order, the first-out first
    e2 = engine(TagAlarmConfig("A", [LimitSpec("H", 1, latching=True)], group="g"),
                TagAlarmConfig("B", [LimitSpec("H", 1, latching=True)], group="g"))
    saved = {"B.H": {"active": True, "acked": False, "since_ts": WALL + 5, "first_out": False},
             "A.H": {"active": True, "acked": True, "since_ts": WALL + 1, "first_out": True}}
    e2.restore_state(saved, now_mono=10)
    [g] = e2.first_out_sequence()
    assert [a["id"] for a in g["alarms"]] == ["A.H", "B.H"] and g["alarms"][0]["first_out"]


def test_reload_carries_the_sequence():
    def make():
        return engine(TagAlarmConfig("A", [LimitSpec("H", 1)], group="g"),
                      TagAlarmConfig("B", [LimitSpec("H", 1)], group="g"),
                      TagAlarmConfig("C", [LimitSpec("H", 1)], group="g"))
    old, new = make(), make()
    old.update(good("A", 2), 1)
    old.update(good("B", 2), 2)
    assert new.adopt(old.snapshot()) == []  # the reload carries the alarms, the first-out and the sequence
    assert [a["id"] for a in new.first_out_sequence()[0]["alarms"]] == ["A.H", "B.H"]
    new.update(good("C", 2), 3)     # a later alarm after the reload comes after them
    seq = new.first_out_sequence()[0]
    assert [a["id"] for a in seq["alarms"]] == ["A.H", "B.H", "C.H"] and seq["count"] == 3
    assert [a["first_out"] for a in seq["alarms"]] == [True, False, False]


# ---------------------------------------------------------------- points disabled (屏蔽) and system alarms

def test_disabled_points_are_the_hidden_alarms_of_gas_points():
    e = engine(TagAlarmConfig("GD1", gas_preset("combustible"), gas="combustible", group="gas"),
               TagAlarmConfig("AT1", gas_preset("toxic", 10.0), gas="toxic", group="toxic_area"),
               TagAlarmConfig("X", [LimitSpec("H", 1)], group="gas"),     # in the gas group: a gas point too
               TagAlarmConfig("LT", [LimitSpec("H", 10)]))                # a level: not a gas point
    assert e.disabled_points() == []
    e.shelve("LT.H", "op", "radar cleaning", 600, 3600, now_mono=1)
    assert e.disabled_points() == []
    e.shelve("GD1.H", "op", "calibration", 600, 3600, now_mono=1)
    e.suppress("AT1.QUALITY", "op", "analyser off for maintenance", now_mono=1)
    e.set_out_of_service("X.H", "op", "replaced", now_mono=1)
    assert {(p.id, p.state) for p in e.disabled_points()} == {
        ("GD1.H", "shelved"), ("AT1.QUALITY", "suppressed"), ("X.H", "out_of_service")}
    e.unshelve("GD1.H", "op", now_mono=2)
    e.suppress("AT1.QUALITY", "op", "back", on=False, now_mono=2)
    e.set_out_of_service("X.H", "op", "back", on=False, now_mono=2)
    assert e.disabled_points() == []
    e.shelve("GD1.HH", "op", "calibration", 10, 3600, now_mono=3)
    assert [p.id for p in e.disabled_points()] == ["GD1.HH"]
    e.tick(13)                                    # the shelve expires: the indication clears by itself
    assert e.disabled_points() == []


def test_system_alarm_raise_clear_and_stable_reason():
    e = engine(TagAlarmConfig("T", [LimitSpec("H", 1)]))
    aid = e.add_system_alarm("system", "CLOCK", priority=3)
    assert aid == "system.CLOCK" and e.state(aid) == "normal"
    [ev] = e.set_system_alarm("system", "CLOCK", True, "系统时钟未同步: test", now_mono=1)
    assert (ev.id, ev.kind, ev.to_state, ev.priority, ev.reason) == (aid, "CLOCK", "unacked", 3, "系统时钟未同步: test")
    assert e.set_system_alarm("system", "CLOCK", True, "系统时钟未同步: test", now_mono=2) == []   # no repeat
    [ev] = e.set_system_alarm("system", "CLOCK", False, clear_reason="resynchronised", now_mono=3)
    assert (ev.to_state, ev.reason) == ("rtn_unacked", "resynchronised")
    e.ack(aid, "op", now_mono=4)
    assert e.state(aid) == "normal"
    with pytest.raises(ValueError, match="already an alarm"):
        e.add_system_alarm("T", "H")
