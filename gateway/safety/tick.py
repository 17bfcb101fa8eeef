"""The safety tick: from a device's readings to output commands, in memory, never waiting on disk or network.

One step (docs/design.md, "Two paths", "Fail safe"): valid ranges (gateway.safety.validity) turn an impossible
value BAD; the alarm engine updates (ISA-18.2 states, GB/T 50493-2019 levels); the interlock engine votes on the
alarms (a BAD input votes to trip where the interlock says so); the output manager starts confirmed writes as
tasks; the hazard engine (GB 18218-2018, pure) follows the levels and the alarm / trip state of each unit. Every
event goes to ``log_event``, which only enqueues (the runtime shell puts it on the log and the store's queue).

The timer step (``on_timer``, every ALARM_TICK_S) runs what depends on time alone: on/off delays, stale inputs,
re-alarm, shelve and bypass expiry, hazard staleness, and about once a second the hidden-danger records of
protections defeated too long (gateway.safety.hidden_danger).

This module imports the safety path and the model only (tests/test_architecture.py, rule b): the record path
(report-by-exception, the store) is the runtime shell's business, after the step.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Callable, Mapping, Protocol

from gateway.model import Reading
from gateway.safety.hidden_danger import (STEP_EVERY_S as HIDDEN_DANGER_TICK_S, HiddenDangerTracker, Protections,
                                          current_defeats)
from gateway.safety.outputs import OutputManager
from gateway.safety.validity import check_valid_range

ALARM_TICK_S = 0.1
HAZARD_TICK_S = 1.0   # re-check stale hazard inputs and the unit alarm state this often

log = logging.getLogger("hazard_gateway.safety")


class SafetyPlant(Protocol):
    """What the tick reads of a Plant (gateway.runtime.build.Plant, built from the config)."""

    valid_range: Mapping[str, tuple[float, float]]
    alarms: Any                      # gateway.safety.alarms.AlarmEngine
    interlocks: Any                  # gateway.safety.interlocks.InterlockEngine
    hazard: Any                      # gateway.hazard.engine.HazardEngine, or None
    interlock_inputs: Mapping[str, set[str]]
    hazard_unit_tags: Mapping[str, set[str]]
    cfg: Any                         # gateway.config.LoadedConfig (enterprise code of hazard events)


class SafetyTick:
    """The safety step of the running plant.

    plant: returns the plant the gateway runs now (a reload swaps it; the tick reads it once per step).
    outputs: the output manager (live across reloads). log_event: put one event dict on the record, must not
    block. wall: the wall clock of the hidden-danger records (time.time). Holds the last reading per tag
    (``values``), when the step last ran (``last_mono``, time.monotonic seconds; None before the first step),
    which the watchdog asks about, and the hidden-danger tracker (``hidden``, live across reloads).
    """

    def __init__(self, plant: Callable[[], SafetyPlant], outputs: OutputManager,
                 log_event: Callable[[dict[str, Any]], None], wall: Callable[[], float] = time.time) -> None:
        self._plant = plant
        self.outputs = outputs
        self.log_event = log_event
        self.values: dict[str, Reading] = {}
        self.last_mono: float | None = None
        self._hazard_tick_mono = 0.0
        self.hidden = HiddenDangerTracker()
        self._wall = wall
        self._hidden_tick_mono = -math.inf
        self._hidden_error: str | None = None
        self._protections: tuple[Any, Protections] | None = None   # (plant, what can be a hidden danger in it)

    def on_readings(self, readings: list[Reading], now: float) -> tuple[list[Reading], list[Any]]:
        """One poll's readings through the safety path (``now``: time.monotonic seconds). Returns the readings
        as judged (out of range: BAD) and the alarm events they caused, for the record path."""
        plant = self._plant()
        readings = check_valid_range(readings, plant.valid_range)
        events: list[Any] = []
        for r in readings:
            self.values[r.tag] = r
            if r.tag in plant.alarms.tags:
                events += plant.alarms.update(r, now)
        self.step(events, now)
        if plant.hazard is not None:  # pure and in memory (GB 18218-2018 quantities), after the safety step
            for ev in plant.hazard.update_many(readings):
                self.log_hazard_event(ev)
        return readings, events

    def on_timer(self, plant: SafetyPlant, now: float) -> None:
        """The time-based step of ``plant``: AlarmEngine.tick, then the interlock vote; hazard staleness every
        HAZARD_TICK_S; the hidden-danger records every HIDDEN_DANGER_TICK_S (:meth:`step_hidden_dangers`)."""
        self.step(plant.alarms.tick(now), now)
        if plant.hazard is not None and now - self._hazard_tick_mono >= HAZARD_TICK_S:
            self._hazard_tick_mono = now
            for ev in plant.hazard.tick(now):  # staleness of levels / temperatures
                self.log_hazard_event(ev)
            self.sync_hazard_alarm_state()
        if now - self._hidden_tick_mono >= HIDDEN_DANGER_TICK_S:
            self._hidden_tick_mono = now
            self.step_hidden_dangers(plant)

    def step_hidden_dangers(self, plant: SafetyPlant) -> None:
        """Open and close the hidden-danger records of ``plant`` (gateway.safety.hidden_danger): the defeats
        of its engines, ``hidden_danger.after_minutes`` of its config, the wall clock now; each event on the
        record with the enterprise and major-hazard codes of the gateway. A fault here is logged (once per
        distinct message) and never stops the safety ticker."""
        try:
            m = plant.cfg.model
            if self._protections is None or self._protections[0] is not plant:   # once per plant (a reload)
                self._protections = (plant, Protections(plant.alarms, m.interlocks))
            defeats, targets = current_defeats(plant.alarms, plant.interlocks, self._protections[1])
            events = self.hidden.step(defeats, targets, self._wall(), m.hidden_danger.after_minutes * 60.0,
                                      m.gateway.id)
        except Exception as exc:  # a bug in the records must not stop the interlocks' timers
            msg = f"hidden-danger records: {type(exc).__name__}: {exc}"
            if msg != self._hidden_error:
                log.error("%s", msg)
            self._hidden_error = msg
            return
        self._hidden_error = None
        for ev in events:
            ev["enterprise_code"] = m.gateway.enterprise_code
            ev["major_hazard_code"] = m.gateway.major_hazard_code
            self.log_event(ev)

    def step(self, alarm_events: list[Any], now: float) -> None:
        """Vote the interlocks on the alarm state, command the outputs, record the events."""
        plant = self._plant()
        self.last_mono = now
        commands, il_events = plant.interlocks.evaluate(plant.alarms, now)
        if commands:
            self.outputs.apply(commands)
        for e in alarm_events:
            self.log_event(e.to_record())
        for e in il_events:
            self.log_event(e.to_record())
        if plant.hazard is not None and (alarm_events or il_events):
            self.sync_hazard_alarm_state()

    def age_s(self, now: float | None = None) -> float | None:
        """Seconds since the step last ran (time.monotonic), None before the first step."""
        if self.last_mono is None:
            return None
        return (time.monotonic() if now is None else now) - self.last_mono

    def sync_hazard_alarm_state(self) -> None:
        """Map the live alarm state onto each hazard unit (HazardEngine.update_alarm_state):

        * level2_active: an alarm of GB/T 50493-2019 5.5.2 level 2 (the gas presets' HH, oxygen L) is in
          alarm (active, or latched awaiting reset; shelved or suppressed ones count too: hiding an
          alarm from the operator does not lower the risk) on a tag of the unit;
        * tripped: an interlock holds its outputs in the safe state (tripped, cleared or not, until
          reset) and at least one of its inputs is a tag of the unit.

        Tags of a unit: HazardEngine.unit_tags (its level / temperature / pressure tags and alarm_tags).
        """
        plant = self._plant()
        level2 = {a.tag for a in plant.alarms.active(include_hidden=True) if a.level == 2 and (a.active or a.latched)}
        tripped: set[str] = set()
        for name, inputs in plant.interlock_inputs.items():
            if plant.interlocks.is_tripped(name):
                tripped |= inputs
        for unit, tags in plant.hazard_unit_tags.items():
            for ev in plant.hazard.update_alarm_state(unit, level2_active=bool(tags & level2),
                                                     tripped=bool(tags & tripped)):
                self.log_hazard_event(ev)

    def log_hazard_event(self, ev: dict[str, Any]) -> None:
        """A hazard event (a colour change, or a design-basis change at a reload): on the record with the
        enterprise code and the unit's major-hazard code (the gateway's when the unit has none)."""
        plant = self._plant()
        g = plant.cfg.model.gateway
        ev = dict(ev)
        ev["enterprise_code"] = g.enterprise_code
        ev["major_hazard_code"] = plant.hazard.major_hazard_code(ev["unit"]) or g.major_hazard_code
        self.log_event(ev)
