"""Hidden-danger records (gateway.safety.hidden_danger): the pure tracker over the real alarm and interlock engines,
with a fake wall clock and fake monotonic times; who and why come from the engines' own audit events (note)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config
from gateway.model import rfc3339
from gateway.safety.alarms import AlarmEngine, LimitSpec, TagAlarmConfig, gas_preset
from gateway.safety.hidden_danger import (DEFAULT_AFTER_MINUTES, HiddenDangerTracker, Protections,
                                          current_defeats, hidden_danger_id)
from gateway.safety.interlocks import InterlockEngine, InterlockInput, InterlockSpec, OutputAction

WALL = 1_700_000_000.0
AFTER_S = 120.0


class Clock:
    def __init__(self, t: float = WALL) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Plant:
    """The engines of a small tank farm: a combustible gas detector GD101 (gas preset), the tank level T101.level
    feeding the overfill interlock, and a plain temperature without any protection role."""

    def __init__(self, clock: Clock, *, with_gas: bool = True, with_interlock: bool = True) -> None:
        self.clock = clock
        cfgs = [TagAlarmConfig("T101.level", [LimitSpec("HH", 11.0, latching=True)]),
                TagAlarmConfig("T101.temp", [LimitSpec("H", 60.0)])]
        if with_gas:
            cfgs.append(TagAlarmConfig("GD101", gas_preset("combustible"), gas="combustible", group="gas"))
        self.alarms = AlarmEngine(cfgs, clock=clock)
        self.specs = [InterlockSpec("T101_overfill", [InterlockInput("T101.level", "HH")], "1oo1",
                                    actions=[OutputAction("XV101", 0)], max_bypass_s=3600)] if with_interlock else []
        self.interlocks = InterlockEngine(self.specs, clock=clock, startup_grace_s=0.0)
        self.tracker = HiddenDangerTracker()

    def note(self, events) -> None:
        for e in events if isinstance(events, list) else [events]:
            self.tracker.note(json.loads(json.dumps(e.to_record())))  # as the record holds it

    def step(self, after_s: float = AFTER_S) -> list[dict]:
        defeats, targets = current_defeats(self.alarms, self.interlocks, Protections(self.alarms, self.specs))
        return json.loads(json.dumps(self.tracker.step(defeats, targets, self.clock.t, after_s, "gw-1")))


def test_a_shelved_gas_alarm_opens_after_the_configured_time_and_closes_with_the_same_id_when_unshelved():
    clock = Clock()
    p = Plant(clock)
    p.note(p.alarms.shelve("GD101.HH", "zhang", "detector calibration", 3600, 8 * 3600, now_mono=0.0))
    shelved_at = clock.t
    clock.t += 1
    assert p.step() == []                            # tracked, not yet a hidden danger
    clock.t = shelved_at + AFTER_S - 1
    assert p.step() == [] and p.tracker.status() == []
    clock.t = shelved_at + AFTER_S
    [opened] = p.step()
    assert opened["type"] == "hidden_danger" and opened["event"] == "opened"
    assert (opened["kind"], opened["target"], opened["by"], opened["reason"]) == (
        "shelve", "GD101.HH", "zhang", "detector calibration")
    assert opened["since"] == rfc3339(shelved_at) and opened["opened_at"] == rfc3339(clock.t)
    assert opened["until"] == rfc3339(shelved_at + 3600)
    assert opened["feeds"] == {"gas_alarms": ["GD101.HH"], "interlocks": []}
    assert opened["inputs"] == [{"tag": "GD101", "condition": "HH"}]
    assert opened["id"] == hidden_danger_id("gw-1", "shelve", "GD101.HH", shelved_at)
    [shown] = p.tracker.status()
    assert shown["id"] == opened["id"] and shown["by"] == "zhang"
    clock.t += 5
    assert p.step() == []                            # opened once, not again
    clock.t += 100
    p.note(p.alarms.unshelve("GD101.HH", "li", "calibrated", now_mono=300.0))
    ended_at = clock.t
    clock.t += 0.5
    [closed] = p.step()
    assert (closed["event"], closed["id"], closed["ended_by"], closed["end_user"]) == (
        "closed", opened["id"], "operator", "li")
    assert closed["closed_at"] == rfc3339(ended_at)
    assert closed["duration_s"] == pytest.approx(ended_at - shelved_at)
    assert closed["since"] == opened["since"] and closed["by"] == "zhang"
    assert p.tracker.status() == [] and p.tracker.saved() == []
    clock.t += 10
    assert p.step() == []


def test_a_shelve_of_an_alarm_that_protects_nothing_is_no_hidden_danger():
    clock = Clock()
    p = Plant(clock)
    p.note(p.alarms.shelve("T101.temp.H", "zhang", "sensor swap", 3600, 8 * 3600, now_mono=0.0))
    clock.t += 3 * AFTER_S
    assert p.step(after_s=0.0) == [] and p.tracker.saved() == []


def test_zero_minutes_opens_at_the_first_step():
    clock = Clock()
    p = Plant(clock)
    p.note(p.alarms.set_out_of_service("GD101.QUALITY", "wang", "detector removed", now_mono=0.0))
    [opened] = p.step(after_s=0.0)
    assert (opened["kind"], opened["target"], opened["until"]) == ("out_of_service", "GD101.QUALITY", None)
    clock.t += 30
    p.note(p.alarms.set_out_of_service("GD101.QUALITY", "wang", "detector back", on=False, now_mono=30.0))
    [closed] = p.step(after_s=0.0)
    assert (closed["ended_by"], closed["end_user"], closed["duration_s"]) == ("operator", "wang", 30.0)


def test_an_interlock_bypass_is_a_hidden_danger_and_its_expiry_closes_it_at_the_planned_end():
    clock = Clock()
    p = Plant(clock)
    p.note(p.interlocks.bypass("T101_overfill", "zhang", "LT101 proof test", 600.0, now_mono=0.0))
    clock.t += AFTER_S
    [opened] = p.step()
    assert (opened["kind"], opened["target"], opened["by"]) == ("bypass", "T101_overfill", "zhang")
    assert opened["reason"] == "LT101 proof test"   # as the operator gave it (the engine keeps it)
    assert opened["feeds"] == {"gas_alarms": [], "interlocks": ["T101_overfill"]}
    assert opened["inputs"] == [{"tag": "T101.level", "condition": "HH"}]
    assert opened["since"] == rfc3339(WALL) and opened["until"] == rfc3339(WALL + 600)
    clock.t = WALL + 600.2
    _, events = p.interlocks.evaluate(p.alarms, 600.2)   # the engine ends it: "bypass expired"
    p.note(events)
    [closed] = p.step()
    assert (closed["ended_by"], closed["end_user"], closed["id"]) == ("expiry", None, opened["id"])
    assert closed["closed_at"] == rfc3339(WALL + 600) and closed["duration_s"] == 600.0


def test_a_bypass_ended_by_the_operator_is_closed_by_the_operator():
    clock = Clock()
    p = Plant(clock)
    p.note(p.interlocks.bypass("T101_overfill", "zhang", "LT101 proof test", 600.0, now_mono=0.0))
    clock.t += AFTER_S
    [opened] = p.step()
    clock.t += 10
    p.note(p.interlocks.end_bypass("T101_overfill", "li", "test done", now_mono=130.0))
    [closed] = p.step()
    assert (closed["ended_by"], closed["end_user"], closed["duration_s"]) == ("operator", "li", AFTER_S + 10)


def test_a_shelved_interlock_input_feeds_the_interlock():
    clock = Clock()
    p = Plant(clock)
    p.note(p.alarms.shelve("T101.level.HH", "zhang", "LT101 replaced", 600, 8 * 3600, now_mono=0.0))
    [opened] = p.step(after_s=0.0)
    assert opened["feeds"] == {"gas_alarms": [], "interlocks": ["T101_overfill"]}
    assert opened["inputs"] == [{"tag": "T101.level", "condition": "HH"}]


def test_an_unshelve_and_a_new_shelve_between_two_steps_close_one_record_and_start_another():
    clock = Clock()
    p = Plant(clock)
    p.note(p.alarms.shelve("GD101.H", "zhang", "first", 3600, 8 * 3600, now_mono=0.0))
    [first] = p.step(after_s=0.0)
    clock.t += 50
    p.note(p.alarms.unshelve("GD101.H", "zhang", now_mono=50.0))
    clock.t += 0.2
    p.note(p.alarms.shelve("GD101.H", "li", "second", 3600, 8 * 3600, now_mono=50.2))
    closed, opened = p.step(after_s=0.0)
    assert (closed["event"], closed["id"], closed["duration_s"]) == ("closed", first["id"], 50.0)
    assert (opened["event"], opened["by"], opened["reason"]) == ("opened", "li", "second")
    assert opened["id"] != first["id"] and opened["since"] == rfc3339(WALL + 50.2)


def restart(p: Plant, clock: Clock, **kw) -> Plant:
    """A new process: fresh engines that restore the saved engine state and tracker records, as
    gateway.runtime.gateway.Gateway._restore_safety_state does (the file's JSON round trip included)."""
    saved = json.loads(json.dumps({"interlocks": p.interlocks.export_state(), "alarms": p.alarms.export_state(),
                                   "hidden_dangers": p.tracker.saved()}))
    q = Plant(clock, **kw)
    q.tracker.restore(saved["hidden_dangers"])
    _cmds, il_events, _ = q.interlocks.restore_state(saved["interlocks"], now_mono=0.0)
    al_events, _ = q.alarms.restore_state(saved["alarms"], now_mono=0.0)
    q.note([*al_events, *il_events])
    return q


def test_a_restart_neither_opens_a_record_twice_nor_loses_its_close():
    clock = Clock()
    p = Plant(clock)
    p.note(p.interlocks.bypass("T101_overfill", "zhang", "LT101 proof test", 3000.0, now_mono=0.0))
    clock.t += AFTER_S
    [opened] = p.step()
    clock.t += 30                                    # down for 30 s
    q = restart(p, clock)
    assert q.step() == []                            # still bypassed: no second "opened"
    assert [h["id"] for h in q.tracker.status()] == [opened["id"]]
    clock.t += 60
    q.note(q.interlocks.end_bypass("T101_overfill", "li", "done", now_mono=60.0))
    [closed] = q.step()
    assert (closed["id"], closed["ended_by"], closed["by"]) == (opened["id"], "operator", "zhang")
    assert closed["duration_s"] == AFTER_S + 90


def test_a_pending_record_keeps_its_start_across_a_restart():
    clock = Clock()
    p = Plant(clock)
    p.note(p.interlocks.bypass("T101_overfill", "zhang", "test", 3000.0, now_mono=0.0))
    clock.t += 60
    assert p.step() == []
    q = restart(p, clock)
    clock.t = WALL + AFTER_S
    [opened] = q.step()
    assert opened["since"] == rfc3339(WALL) and opened["by"] == "zhang"


def test_what_ended_while_the_gateway_was_down_is_closed_at_the_first_step():
    clock = Clock()
    p = Plant(clock)
    p.note(p.interlocks.bypass("T101_overfill", "zhang", "test", 600.0, now_mono=0.0))
    p.note(p.alarms.shelve("GD101.HH", "li", "calibration", 3600, 8 * 3600, now_mono=0.0))
    clock.t += AFTER_S
    opened = {e["kind"]: e for e in p.step()}
    assert set(opened) == {"bypass", "shelve"}
    clock.t = WALL + 900                             # down past the bypass's end
    q = restart(p, clock)
    closed = {e["kind"]: e for e in q.step()}
    assert closed["bypass"]["ended_by"] == "expiry" and closed["bypass"]["closed_at"] == rfc3339(WALL + 600)
    assert closed["bypass"]["id"] == opened["bypass"]["id"]
    # a shelve does not survive a restart (gateway.safety.safety_state): closed as ended by the restart
    assert closed["shelve"]["ended_by"] == "restart" and closed["shelve"]["id"] == opened["shelve"]["id"]
    assert closed["shelve"]["closed_at"] == rfc3339(WALL + 900)
    assert q.tracker.status() == [] and q.step() == []


def test_a_config_without_the_target_closes_the_record():
    clock = Clock()
    p = Plant(clock)
    p.note(p.alarms.shelve("GD101.HH", "li", "calibration", 3600, 8 * 3600, now_mono=0.0))
    [opened] = p.step(after_s=0.0)
    # a reload: the new engines have no GD101 (the tracker lives on in the SafetyTick)
    q = Plant(clock, with_gas=False)
    q.alarms.adopt(p.alarms.snapshot())
    q.tracker = p.tracker
    clock.t += 5
    [closed] = q.step(after_s=0.0)
    assert (closed["id"], closed["ended_by"]) == (opened["id"], "config")


def test_restore_skips_entries_it_cannot_use():
    t = HiddenDangerTracker()
    assert t.restore([{"kind": "nonsense", "target": "x", "since_ts": 1.0, "by": None, "reason": None,
                       "until_ts": None}, {"unexpected": 1}, "text"]) == 0
    assert t.restore(None) == 0 and t.saved() == []


def test_the_id_is_stable_and_names_the_defeat():
    a = hidden_danger_id("gw-1", "bypass", "T101_overfill", WALL)
    assert a == hidden_danger_id("gw-1", "bypass", "T101_overfill", WALL + 0.0001)
    assert len({a, hidden_danger_id("gw-2", "bypass", "T101_overfill", WALL),
                hidden_danger_id("gw-1", "shelve", "T101_overfill", WALL),
                hidden_danger_id("gw-1", "bypass", "T101_overfill", WALL + 1)}) == 4


# ------------------------------------------------------------------------------------ config

def config(tmp_path: Path, section: str) -> Path:
    f = tmp_path / "gw.yaml"
    f.write_text("gateway: {id: s}\nkeys: {private_key: k}\n" + section + "\ndevices:\n"
                 "  - name: p\n    protocol: modbus_tcp\n    host: h\n"
                 "    tags: [{name: a, address: 40001, unit: '%LEL', alarms: {gas: combustible}}]\n")
    return f


def test_config_default_and_fractional_minutes(tmp_path: Path):
    assert load_config(config(tmp_path, "")).model.hidden_danger.after_minutes == DEFAULT_AFTER_MINUTES == 30.0
    assert load_config(config(tmp_path, "hidden_danger: {after_minutes: 0.05}")).model.hidden_danger.after_minutes \
        == 0.05


@pytest.mark.parametrize("value", ["-1", ".nan", ".inf", "soon"])
def test_check_refuses_a_bad_after_minutes_with_its_line(tmp_path: Path, value: str):
    with pytest.raises(ConfigError) as ei:
        load_config(config(tmp_path, f"hidden_danger: {{after_minutes: {value}}}"))
    [problem] = ei.value.problems
    assert problem.line == 3 and "after_minutes" in str(problem)


def test_check_warns_when_a_shelve_can_never_last_long_enough(tmp_path: Path):
    cfg = load_config(config(tmp_path, "hidden_danger: {after_minutes: 480}\ncontrol: {max_shelve_minutes: 240}"))
    [w] = [w for w in cfg.warnings if "hidden_danger" in str(w)]
    assert w.line == 3 and "240" in w.message and "480" in w.message


def test_status_text_lists_the_open_records_with_who_why_and_since():
    from gateway.ops.control import render_status

    clock = Clock()
    p = Plant(clock)
    p.note(p.interlocks.bypass("T101_overfill", "zhang", "LT101 proof test", 600.0, now_mono=0.0))
    assert "HIDDEN DANGERS" not in render_status({"hidden_dangers": p.tracker.status()})
    [opened] = p.step(after_s=0.0)
    text = render_status({"hidden_dangers": p.tracker.status()})
    assert "HIDDEN DANGERS (隐患) 1 open" in text
    assert f"T101_overfill by zhang since {rfc3339(WALL)}: LT101 proof test" in text and opened["id"] in text


def test_the_safety_tick_steps_the_records_on_its_own_time_and_survives_a_fault(caplog):
    from types import SimpleNamespace

    from gateway.safety.tick import SafetyTick

    clock = Clock()
    p = Plant(clock)
    model = SimpleNamespace(interlocks=p.specs, hidden_danger=SimpleNamespace(after_minutes=1.0),
                            gateway=SimpleNamespace(id="gw-1", enterprise_code="110000000001",
                                                    major_hazard_code="MH01"))
    plant = SimpleNamespace(alarms=p.alarms, interlocks=p.interlocks, cfg=SimpleNamespace(model=model))
    logged: list[dict] = []
    tick = SafetyTick(lambda: plant, outputs=None, log_event=logged.append, wall=clock)
    ev = p.interlocks.bypass("T101_overfill", "zhang", "test", 600.0, now_mono=0.0)
    tick.hidden.note(ev.to_record())
    tick.step_hidden_dangers(plant)
    clock.t += 60
    tick.step_hidden_dangers(plant)
    [opened] = logged
    assert (opened["event"], opened["since"], opened["after_minutes"]) == ("opened", rfc3339(WALL), 1.0)
    assert (opened["enterprise_code"], opened["major_hazard_code"]) == ("110000000001", "MH01")
    broken = SimpleNamespace(alarms=None, interlocks=None, cfg=SimpleNamespace(model=model))
    tick.step_hidden_dangers(broken)              # logged once, never raised into the ticker
    tick.step_hidden_dangers(broken)
    assert [r.getMessage().split(":")[0] for r in caplog.records if r.name == "hazard_gateway.safety"] == [
        "hidden-danger records"]
    assert len(logged) == 1


def test_the_safety_state_file_carries_the_records(tmp_path: Path):
    from gateway.safety.safety_state import SafetyStateError, export, load, write_atomic

    clock = Clock()
    p = Plant(clock)
    p.note(p.interlocks.bypass("T101_overfill", "zhang", "test", 600.0, now_mono=0.0))
    [opened] = p.step(after_s=0.0)
    f = tmp_path / "safety-state.json"
    write_atomic(f, {"format": 1, **export(p.alarms, p.interlocks, p.tracker)})
    assert [h["id"] for h in load(f)["hidden_dangers"]] == [opened["id"]]
    write_atomic(f, {"format": 1, "interlocks": {}, "alarms": {}})          # an older file: none
    assert load(f)["hidden_dangers"] == []
    write_atomic(f, {"format": 1, "hidden_dangers": {"not": "a list"}})
    with pytest.raises(SafetyStateError, match="format-1"):
        load(f)
