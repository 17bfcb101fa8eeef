"""Alarm engine: limit alarms with deadband, on/off delay, latching, acknowledge, shelve and first-out.

Pure, in-memory state machine that runs in the poll tick (docs/design.md "two paths"): it never
touches the disk or the network. The caller feeds :meth:`AlarmEngine.update` with every
:class:`gateway.model.Reading` and calls :meth:`AlarmEngine.tick` at least once per poll tick;
both return :class:`AlarmEvent` lists that the caller queues to the record path.

Sources of the rules:

- Alarm states, deadband, on-/off-delay, latching, re-alarm, shelve, suppress by design, out of
  service: ISA-18.2 / IEC 62682, as carried into OPC UA Part 9 (AlarmConditionType, ShelvedStateMachine,
  AcknowledgeableConditionType, LatchedState / Reset).
- Gas set points: GB/T 50493-2019 clause 5.5.2 (combustible point detector level 1 <= 25 %LEL, level 2
  <= 50 %LEL; open-path detector 1 / 2 LEL·m; toxic level 1 <= 100 %OEL, level 2 <= 200 %OEL, or 5 / 10 %IDLH
  where the range cannot reach 200 %OEL; oxygen over 23.5 %VOL / under 19.5 %VOL), in the tag's unit:
  gateway.safety.gas (units, ppm conversion, the OEL / IDLH basis, the oxygen mapping; docs/alarm-presets.md).
- Alarm order: level 2 before level 1, toxic before combustible at the same level, then time
  (GB/T 50493-2009 3.0.2; the 2019 edition is unconfirmed, see docs/domain.md).
- Latching until a manual reset after the gas has cleared, first-out identification, fault distinct
  from gas alarm: alarm-controller behaviour of GB 16808 (test methods; docs/domain.md marks it [?]).
- Gas on-delay cap (docs/domain.md, Response times; GB/T 50493-2019 commissioning budget, GB 16808): an
  on-delay in the gateway is *added* to the detector's own response (<= 30 s) and to the poll time, so
  the detector's 30 s cannot justify a 30 s on-delay. Gas alarms cap the on-delay at
  ``gas_on_delay_cap_s`` (GAS_ON_DELAY_CAP_S, 5 s by default; configurable as
  ``alarm_policy.gas_on_delay_cap_s``, and `check` warns above the default).
- First alarm and later alarms in time order (GB 16808-2008 5.3 alarm-function test; docs/domain.md,
  GB 16808): :meth:`AlarmEngine.first_out_sequence` lists, per first-out group, the first alarm and then
  every later activation in the order it came, with its time.
- Points disabled (屏蔽, GB 16808; docs/domain.md, Alarm management): :meth:`AlarmEngine.disabled_points`
  lists the shelved, suppressed and out-of-service alarms of gas points, which must still be shown
  ("points disabled") and counted.
- System alarms: :meth:`AlarmEngine.set_system_alarm` raises and clears condition alarms that are not a
  tag's limit, e.g. CLOCK (the system clock is not synchronised, gateway.record.clock) on the tag "system".
- Output faults (docs/design.md, Fail safe): an output write not confirmed by read-back raises an OUTPUT alarm of the
  output tag (:meth:`AlarmEngine.set_output_fault`), shown in the active list like any other alarm.
- C03: a NaN / sentinel reading arrives as quality BAD with value None. A bad or stale reading is never
  "within limits": it raises a QUALITY alarm of its own kind, it never clears a process alarm, and
  :meth:`AlarmEngine.condition` answers None (unknown) for it.

Reload and restart: the state that carries over to the next engine is :meth:`AlarmEngine.snapshot` (the
allow-lists :class:`AlarmState`, :class:`TagState`, :class:`GroupState`), taken over by
:meth:`AlarmEngine.adopt`: in memory at a SIGHUP reload (gateway.runtime.reload), through its restart form
(latched alarms, wall-clock times; :meth:`AlarmEngine.export_state` / :meth:`AlarmEngine.restore_state`)
across a restart (gateway.safety.safety_state).

ISA-18.2 states used in events and status: ``normal``, ``unacked`` (active, unacknowledged), ``acked``
(active, acknowledged), ``rtn_unacked`` (returned to normal, unacknowledged), ``shelved``,
``suppressed`` (by design), ``out_of_service``.
"""

from __future__ import annotations

import math
import operator
import time
from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable, KeysView

from gateway.safety.gas import (COMBUSTIBLE_L1_LEL, COMBUSTIBLE_L2_LEL, GAS_KINDS, OPEN_PATH_L1_LELM, OPEN_PATH_L2_LELM,
                         OXYGEN_HIGH_VOL, OXYGEN_LOW_VOL, TOXIC_L1_OEL_PCT, TOXIC_L2_OEL_PCT, GasPreset, gas_setpoints)
from gateway.i18n import gettext as _
from gateway.model import Reading, rfc3339

LIMIT_KINDS = ("HH", "H", "L", "LL", "ROC", "DEV")
QUALITY = "QUALITY"
OUTPUT = "OUTPUT"
#: system alarm: the system clock is not synchronised (gateway.record.clock.ClockMonitor.sync_alarm)
CLOCK = "CLOCK"
#: the tag name of system alarms (f"{SYSTEM_TAG}.{CLOCK}" = "system.CLOCK")
SYSTEM_TAG = "system"
STATES = ("normal", "unacked", "acked", "rtn_unacked", "shelved", "suppressed", "out_of_service")
HIDDEN_STATES = ("shelved", "suppressed", "out_of_service")
GASES = GAS_KINDS
#: Cap of a gas alarm's on-delay, seconds (docs/domain.md, Response times): the gateway's delay adds to the
#: detector's own response (<= 30 s, GB/T 50493-2019 commissioning practice) and to the poll time, so it is
#: kept to a few seconds (GB 16808 controllers alarm without a long delay; their figure is not confirmed).
GAS_ON_DELAY_CAP_S = 5.0
#: Detection budget of a gas detector, seconds (commissioning practice: a detector responds within 30 s;
#: docs/domain.md, Response times): a gas reading is at most this old (derived stale_after_s), and `check`
#: warns when a detector's poll cycle or stale_after_s exceeds it. Not an on-delay (see GAS_ON_DELAY_CAP_S).
GAS_DETECTION_BUDGET_S = 30.0
#: most activations kept per first-out group for first_out_sequence (the first one is always kept)
SEQUENCE_MAX = 200
_GAS_RANK = {"toxic": 0, "combustible": 1, "combustible_open_path": 1, "oxygen": 2}


def _state_word(state: str | None) -> str:
    """An ISA-18.2 alarm state in the reader's language (gateway.i18n), for a refusal's text; the state itself in
    records."""
    words = {"normal": _("normal"), "unacked": _("unacked"), "acked": _("acked"), "rtn_unacked": _("rtn_unacked"),
             "shelved": _("shelved"), "suppressed": _("suppressed"), "out_of_service": _("out_of_service")}
    return words.get(state or "", str(state))


class AlarmActionError(ValueError):
    """An operator action (ack, reset, shelve ...) that is refused; str() is one line naming the alarm."""


@dataclass
class LimitSpec:
    """One limit of one tag (ISA-18.2 / IEC 62682 alarm definition).

    kind: "HH", "H" (alarm at value >= setpoint), "L", "LL" (alarm at value <= setpoint),
    "ROC" (rate of change in engineering units per second between consecutive usable readings;
    setpoint > 0 alarms on a rise >= setpoint, setpoint < 0 on a fall <= setpoint),
    "DEV" (|value - value of other_tag| >= setpoint).
    deadband: engineering units, applied on return (H clears when value < setpoint - deadband,
    L clears when value > setpoint + deadband).
    on_delay_s / off_delay_s: the condition must persist this long before the alarm
    activates / returns (seconds, monotonic clock). Gas alarms cap the on-delay (GAS_ON_DELAY_CAP_S).
    priority: 1 (highest) .. 4. latching: stays in alarm after the return until reset.
    level: gas alarm level 1 or 2 (GB/T 50493-2019 5.5.2), None otherwise.
    other_tag: the reference tag for DEV.
    re_alarm_s: an acknowledged alarm that is still active re-annunciates (back to unacked)
    after this many seconds; None = never.

    Raises ValueError (one line) for an unknown kind, priority outside 1..4, negative deadband or
    delay, a level other than 1/2, or DEV without other_tag.
    """

    kind: str
    setpoint: float
    deadband: float = 0.0
    on_delay_s: float = 0.0
    off_delay_s: float = 0.0
    priority: int = 3
    latching: bool = False
    level: int | None = None
    other_tag: str | None = None
    re_alarm_s: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in LIMIT_KINDS:
            raise ValueError(f"limit kind {self.kind!r} is not one of {', '.join(LIMIT_KINDS)}")
        if not isinstance(self.setpoint, (int, float)) or not math.isfinite(self.setpoint):
            raise ValueError(f"{self.kind}: set point must be a finite number, got {self.setpoint!r}")
        if self.deadband < 0 or self.on_delay_s < 0 or self.off_delay_s < 0:
            raise ValueError(f"{self.kind}: deadband and delays must be >= 0")
        if self.priority not in (1, 2, 3, 4):
            raise ValueError(f"{self.kind}: priority must be 1 (highest) .. 4, got {self.priority!r}")
        if self.level not in (None, 1, 2):
            raise ValueError(f"{self.kind}: gas alarm level must be 1 or 2, got {self.level!r}")
        if self.kind == "DEV" and not self.other_tag:
            raise ValueError("DEV limit needs other_tag (the reference tag)")
        if self.kind == "ROC" and self.setpoint == 0:
            raise ValueError("ROC set point must be non-zero (units per second; negative for a fall)")
        if self.re_alarm_s is not None and self.re_alarm_s <= 0:
            raise ValueError(f"{self.kind}: re_alarm_s must be > 0")


@dataclass
class TagAlarmConfig:
    """The alarms of one tag.

    tag: tag name. limits: its LimitSpecs (at most one per kind). gas: one of GASES ("combustible",
    "combustible_open_path", "toxic", "oxygen") or None (sets the GB/T 50493-2019 ordering, the on-delay
    cap and the 屏蔽 indication of disabled gas points). oel: occupational exposure limit of a toxic gas,
    in the tag's unit (only used for set-point warnings when ``ceilings`` is not given). ceilings: kind ->
    the GB/T 50493-2019 5.5.2 set point in the tag's unit (the resolved gateway.safety.gas preset), which
    setpoint_warnings compares the configured limits with. stale_after_s: no reading at all for this
    long raises a QUALITY alarm "stale" (None = off). group: first-out group name (GB 16808 first alarm
    identification). quality_priority: priority of the tag's QUALITY (comm fault / bad quality / stale)
    alarm.
    """

    tag: str
    limits: list[LimitSpec] = field(default_factory=list)
    gas: str | None = None
    stale_after_s: float | None = None
    group: str | None = None
    oel: float | None = None
    quality_priority: int = 2
    ceilings: dict[str, float] | None = None

    def __post_init__(self) -> None:
        if self.gas not in (None, *GASES):
            raise ValueError(f"{self.tag}: gas must be one of {', '.join(GASES)}, got {self.gas!r}")
        kinds = [lim.kind for lim in self.limits]
        dup = {k for k in kinds if kinds.count(k) > 1}
        if dup:
            raise ValueError(f"{self.tag}: more than one {sorted(dup)[0]} limit")
        if self.stale_after_s is not None and self.stale_after_s <= 0:
            raise ValueError(f"{self.tag}: stale_after_s must be > 0")
        if self.quality_priority not in (1, 2, 3, 4):
            raise ValueError(f"{self.tag}: quality_priority must be 1..4")


#: the unit each preset is defined in (gas_preset without a unit); toxic: the OEL is taken in the tag's unit
_NATIVE_UNIT = {"combustible": "%LEL", "combustible_open_path": "LEL·m", "toxic": "mg/m3", "oxygen": "%VOL"}


def preset_limits(preset: GasPreset, *, deadband: float = 0.0, on_delay_s: float = 0.0,
                  latching: bool = True) -> list[LimitSpec]:
    """The LimitSpecs of a gateway.safety.gas.GasPreset (set points in the tag's unit, levels and priorities as
    resolved there); latching by default (GB 16808 controllers latch until a manual reset after the gas
    clears)."""
    return [LimitSpec(x.kind, x.setpoint, priority=x.priority, level=x.level, deadband=deadband,
                      on_delay_s=on_delay_s, latching=latching) for x in preset.limits]


def gas_preset(gas: str, oel: float | None = None, *, deadband: float = 0.0, on_delay_s: float = 0.0,
               latching: bool = True, unit: str | None = None, **substance: Any) -> list[LimitSpec]:
    """The GB/T 50493-2019 clause 5.5.2 set points for a gas detector, as LimitSpecs (gateway.safety.gas.gas_setpoints).

    combustible (point detector, %LEL): level 1 H at 25, level 2 HH at 50.
    combustible_open_path (LEL·m): level 1 H at 1, level 2 HH at 2.
    toxic: level 1 H at 100 %OEL, level 2 HH at 200 %OEL (or 5 / 10 %IDLH), converted to ``unit``.
    oxygen (%VOL): over-oxygen H 23.5 (level 1), under-oxygen L 19.5 (level 2) unless ``oxygen_over`` /
    ``oxygen_under`` (gateway.safety.gas.OxygenLimit) say otherwise: the level mapping is the project's choice.
    Level 2 gets priority 1, level 1 priority 2; latching by default (GB 16808 controllers latch
    until a manual reset after the gas clears).

    unit: the tag's unit; None = the unit the preset is defined in (%LEL, LEL·m, %VOL), and for toxic
    ``oel`` is then the OEL in the tag's own unit. substance: the other keyword arguments of
    gateway.safety.gas.gas_setpoints (oel_mg_m3, idlh_mg_m3, molar_mass_g_mol, gas_name, toxic_basis, range_hi,
    oxygen_over, oxygen_under).

    Raises ValueError (gateway.safety.gas.GasPresetError, one line) for an unknown gas, a preset that does not fit
    the unit, or toxic without an OEL.
    """
    if unit is None:
        unit = _NATIVE_UNIT.get(gas, "")
        if gas == "toxic" and oel is not None:
            substance.setdefault("oel_mg_m3", oel)
    elif oel is not None:
        substance.setdefault("oel_mg_m3", oel)
    preset = gas_setpoints(gas, unit, **substance)
    return preset_limits(preset, deadband=deadband, on_delay_s=on_delay_s, latching=latching)


def _ceilings(cfg: TagAlarmConfig) -> dict[str, float]:
    """kind -> the GB/T 50493-2019 5.5.2 set point a configured limit must not be looser than."""
    if cfg.ceilings is not None:
        return dict(cfg.ceilings)
    if cfg.gas == "combustible":
        return {"H": COMBUSTIBLE_L1_LEL, "HH": COMBUSTIBLE_L2_LEL}
    if cfg.gas == "combustible_open_path":
        return {"H": OPEN_PATH_L1_LELM, "HH": OPEN_PATH_L2_LELM}
    if cfg.gas == "toxic" and cfg.oel:
        return {"H": cfg.oel * TOXIC_L1_OEL_PCT / 100, "HH": cfg.oel * TOXIC_L2_OEL_PCT / 100}
    if cfg.gas == "oxygen":
        return {"H": OXYGEN_HIGH_VOL, "L": OXYGEN_LOW_VOL}
    return {}


def setpoint_warnings(cfg: TagAlarmConfig, gas_on_delay_cap_s: float = GAS_ON_DELAY_CAP_S) -> list[str]:
    """Warnings (one line each, prefixed with the tag) where a gas tag's config is looser than the standards.

    - set point looser than the GB/T 50493-2019 5.5.2 ceiling in the tag's unit (``cfg.ceilings``, the
      resolved preset; without it: combustible H > 25 %LEL or HH > 50 %LEL, open path H > 1 or HH > 2 LEL·m,
      toxic H > 100 %OEL or HH > 200 %OEL when ``cfg.oel`` is known, oxygen H > 23.5 or L < 19.5 %VOL);
      a high limit (H, HH) is looser above its ceiling, a low limit (L, LL) below it;
    - an on-delay above ``gas_on_delay_cap_s`` (it is capped there at run time: the delay adds to the
      detector's response; docs/domain.md, Response times);
    - a level-2 limit with a lower priority than a level-1 limit (GB/T 50493 ordering);
    - a non-latching gas alarm (GB 16808 controllers latch until reset).
    Returns [] for a tag without ``gas``.
    """
    if cfg.gas is None:
        return []
    out: list[str] = []
    by_kind = {lim.kind: lim for lim in cfg.limits}
    for kind, ceiling in _ceilings(cfg).items():
        lim = by_kind.get(kind)
        if lim is None:
            continue
        high = kind in ("H", "HH")
        if (high and lim.setpoint > ceiling) or (not high and lim.setpoint < ceiling):
            out.append(f"{cfg.tag}: {kind} set point {lim.setpoint:g} is looser than the "
                       f"GB/T 50493-2019 5.5.2 limit {ceiling:.4g}")
    for lim in cfg.limits:
        if lim.on_delay_s > gas_on_delay_cap_s:
            out.append(f"{cfg.tag}: {lim.kind} on-delay {lim.on_delay_s:g} s exceeds the {gas_on_delay_cap_s:g} s "
                       f"gas on-delay cap (it adds to the detector's response); capped at {gas_on_delay_cap_s:g} s")
        if not lim.latching and lim.level is not None:
            out.append(f"{cfg.tag}: {lim.kind} gas alarm is not latching (GB 16808 controllers latch until reset)")
    l1 = [lim.priority for lim in cfg.limits if lim.level == 1]
    l2 = [lim.priority for lim in cfg.limits if lim.level == 2]
    if l1 and l2 and max(l2) > min(l1):
        out.append(f"{cfg.tag}: a level-2 alarm has a lower priority than a level-1 alarm "
                   f"(GB/T 50493: level 2 comes first)")
    return out


@dataclass
class AlarmEvent:
    """One alarm state transition or operator action (ISA-18.2 / IEC 62682 alarm journal entry).

    id: f"{tag}.{kind}". kind: a limit kind or "QUALITY". from_state / to_state: one of STATES.
    value: the tag value at the transition (None when unknown; for ROC the rate per second).
    limit: the set point (None for QUALITY). priority 1..4, level 1/2/None. ts: UTC epoch seconds (wall clock); mono:
    time.monotonic() value (never stored). user / reason: who and why for operator actions;
    for QUALITY transitions ``reason`` is the quality reason ("nan", "timeout", "stale" ...).
    action: "ack", "reset", "shelve", "unshelve", "suppress", "unsuppress", "out_of_service",
    "in_service", "re-alarm", "shelve_expired", "restored" (a latch restored after a restart) or None for a
    process transition. first_out: this
    activation was the first in its first-out group. hidden: the transition happened while the
    alarm was shelved / suppressed / out of service (not annunciated); from/to are then the
    underlying states.
    """

    id: str
    tag: str
    kind: str
    from_state: str
    to_state: str
    value: Any
    limit: float | None
    priority: int
    level: int | None
    ts: float
    mono: float
    user: str | None = None
    reason: str | None = None
    first_out: bool = False
    action: str | None = None
    hidden: str | None = None

    def to_record(self) -> dict[str, Any]:
        """JSON-able dict for the store / uplink: ts as RFC 3339 UTC, no monotonic time."""
        return {"type": "alarm", "id": self.id, "tag": self.tag, "kind": self.kind,
                "from_state": self.from_state, "to_state": self.to_state, "value": self.value,
                "limit": self.limit, "priority": self.priority, "level": self.level, "ts": rfc3339(self.ts),
                "user": self.user, "reason": self.reason, "first_out": self.first_out,
                "action": self.action, "hidden": self.hidden}


@dataclass
class AlarmStatus:
    """A snapshot of one alarm for ``status`` and the alarm list (see AlarmEngine.active)."""

    id: str
    tag: str
    kind: str
    state: str
    base_state: str
    value: Any
    limit: float | None
    priority: int
    level: int | None
    gas: str | None
    group: str | None
    active: bool
    latched: bool
    since_ts: float | None
    first_out: bool
    reason: str | None
    shelved_until_ts: float | None

    def to_record(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["since"] = rfc3339(self.since_ts) if self.since_ts is not None else None
        d["shelved_until"] = rfc3339(self.shelved_until_ts) if self.shelved_until_ts is not None else None
        del d["since_ts"], d["shelved_until_ts"]
        return d


@dataclass
class _TagState:
    cfg: TagAlarmConfig
    value: float | None = None        # last usable value (None: unknown)
    value_mono: float | None = None   # when that value arrived
    prev_value: float | None = None   # the usable value before (for ROC)
    prev_mono: float | None = None
    last_mono: float | None = None    # last reading of any quality
    bad_reason: str | None = None     # reason of the last bad reading
    stale: bool = False

    @property
    def known(self) -> bool:
        return self.value is not None and self.bad_reason is None and not self.stale


@dataclass
class _Alarm:
    id: str
    tag: str
    kind: str
    spec: LimitSpec | None
    cfg: TagAlarmConfig
    raw: bool = False                 # deadband-filtered condition (last known)
    known: bool = False               # raw reflects a known value
    active: bool = False              # condition after on/off delay
    pending_since: float | None = None
    latched: bool = False
    acked: bool = True
    acked_mono: float | None = None
    value: Any = None
    since_mono: float | None = None
    since_ts: float | None = None
    hide: str | None = None           # shelved / suppressed / out_of_service
    hide_until_mono: float | None = None
    hide_until_ts: float | None = None
    first_out: bool = False
    reason: str | None = None         # quality reason (QUALITY alarms)

    @property
    def limit(self) -> float | None:
        return None if self.spec is None else float(self.spec.setpoint)

    @property
    def priority(self) -> int:
        return self.cfg.quality_priority if self.spec is None else self.spec.priority

    @property
    def level(self) -> int | None:
        return None if self.spec is None else self.spec.level

    @property
    def in_alarm(self) -> bool:
        return self.active or self.latched

    def base_state(self) -> str:
        if self.in_alarm:
            return "acked" if self.acked else "unacked"
        return "normal" if self.acked else "rtn_unacked"

    def state(self) -> str:
        return self.hide or self.base_state()


# ---------------------------------------------------------------------- state that carries over
#
# ALLOW-LISTS: the runtime state of an alarm, of a tag and of a first-out group that a SIGHUP reload
# (gateway.runtime.reload) and a restart (gateway.safety.safety_state) carry from one AlarmEngine to the next. Each class
# names exactly the fields that carry; every other field of _Alarm / _TagState (identity and configuration)
# comes from the config the new engine was built from. A field added to _Alarm or _TagState must be put here
# or be config-derived: tests/safety/test_engine_state.py fails until it is classified.


@dataclass(slots=True)
class AlarmState:
    """The carried state of one alarm (defaults: a fresh alarm); a copy, read-only by convention (not
    frozen: the safety-state persister builds these on the event loop, and a frozen init costs 5x).
    Times ending in ``_mono`` are time.monotonic() of this process; ``_ts`` are UTC epoch seconds.

    raw: deadband-filtered condition (last known); known: raw reflects a known value; active: condition
    after the on/off delay; pending_since: when a pending on/off-delay started (mono); latched: awaiting a
    manual reset; acked / acked_mono: acknowledged, and when; value: last value shown with the alarm;
    since_mono / since_ts: activation time; hide: "shelved" / "suppressed" / "out_of_service" / None, with
    hide_until_mono / hide_until_ts (shelve expiry); first_out: first alarm of its group; reason: quality
    or system-alarm reason. (The engine keeps no user or reason for a shelve: those are in its event.)"""

    raw: bool = False
    known: bool = False
    active: bool = False
    pending_since: float | None = None
    latched: bool = False
    acked: bool = True
    acked_mono: float | None = None
    value: Any = None
    since_mono: float | None = None
    since_ts: float | None = None
    hide: str | None = None
    hide_until_mono: float | None = None
    hide_until_ts: float | None = None
    first_out: bool = False
    reason: str | None = None


@dataclass(slots=True)
class TagState:
    """The carried input state of one tag (defaults: no reading yet): last usable value and when it came
    (mono), the value before it (ROC), the last reading of any quality (mono), the reason of the last bad
    reading, stale."""

    value: float | None = None
    value_mono: float | None = None
    prev_value: float | None = None
    prev_mono: float | None = None
    last_mono: float | None = None
    bad_reason: str | None = None
    stale: bool = False


@dataclass(slots=True)
class GroupState:
    """One first-out group's episode: its first alarm (id), the activations in order ((alarm id, since_ts,
    since_mono), see AlarmEngine.first_out_sequence; None: rebuilt from the alarms' activation times) and
    how many activations the episode had."""

    first_out: str
    sequence: tuple[tuple[str, float, float], ...] | None = None
    count: int = 0


_ALARM_STATE = tuple(f.name for f in fields(AlarmState))
_TAG_STATE = tuple(f.name for f in fields(TagState))


def adopt_fields(states: dict[str, Any], targets: dict[str, Any], names: tuple[str, ...], what: str,
                 lost: str) -> list[str]:
    """Copy the allow-listed fields ``names`` of each ``states[key]`` onto ``targets[key]`` (the adopt
    step of AlarmEngine and InterlockEngine). Returns one line ``"<what> <key>: not configured; <lost>"``
    per key that has no target (its state is dropped)."""
    notes: list[str] = []
    for key, state in states.items():
        target = targets.get(key)
        if target is None:
            notes.append(f"{what} {key}: not configured; {lost}")
            continue
        for n in names:
            setattr(target, n, getattr(state, n))
    return notes
_alarm_state = operator.attrgetter(*_ALARM_STATE)   # _Alarm -> the AlarmState field values, in order
_tag_state = operator.attrgetter(*_TAG_STATE)


@dataclass(frozen=True)
class AlarmSnapshot:
    """What an AlarmEngine hands to the next one (:meth:`AlarmEngine.snapshot`, :meth:`AlarmEngine.adopt`).

    alarms: alarm id -> AlarmState; tags: tag -> TagState; groups: first-out group -> GroupState;
    start_mono: when the engine saw its first reading or tick (mono; the start of stale detection).
    Frozen; its mappings and records are copies, read-only by convention."""

    alarms: dict[str, AlarmState]
    tags: dict[str, TagState] = field(default_factory=dict)
    groups: dict[str, GroupState] = field(default_factory=dict)
    start_mono: float | None = None

    def saved(self) -> dict[str, dict[str, Any]]:
        """The restart form (gateway.safety.safety_state, ``alarms`` of safety-state.json), JSON-able, keyed by
        alarm id: only latched alarms (awaiting a manual reset, GB 16808; OPC UA Part 9 LatchedState),
        ``{"active": bool, "acked": bool, "since_ts": UTC epoch s | None, "first_out": bool}``. Wall-clock
        only (the monotonic clock restarts with the process); values are left out on purpose (the form
        changes only at state transitions). Pure."""
        return {aid: {"active": s.active, "acked": s.acked, "since_ts": s.since_ts, "first_out": s.first_out}
                for aid, s in self.alarms.items() if s.latched}


def _numeric(v: Any) -> float | None:
    if isinstance(v, bool):
        return 1.0 if v else 0.0
    if isinstance(v, (int, float)) and math.isfinite(v):
        return float(v)
    return None


class AlarmEngine:
    """All alarms of the configured tags (ISA-18.2 / IEC 62682 state machine, OPC UA Part 9 model).

    configs: one TagAlarmConfig per tag (ValueError on a duplicate tag or a DEV limit whose
    other_tag is not configured). clock: wall clock for event timestamps (time.time).
    gas_on_delay_cap_s: on-delays of gas alarms are capped at this (GAS_ON_DELAY_CAP_S: the delay adds to
    the detector's response; docs/domain.md, Response times).
    Every tag gets a QUALITY alarm (bad reading, non-numeric value, stale) besides its limits.

    Operator actions (ack, reset, shelve, ...) return the events they create and raise
    AlarmActionError (one line) when refused, or KeyError for an unknown alarm id.
    """

    def __init__(self, configs: list[TagAlarmConfig], clock: Callable[[], float] = time.time,
                 gas_on_delay_cap_s: float = GAS_ON_DELAY_CAP_S) -> None:
        self._clock = clock
        self._cap = gas_on_delay_cap_s
        self._tags: dict[str, _TagState] = {}
        self._alarms: dict[str, _Alarm] = {}
        self._by_tag: dict[str, list[_Alarm]] = {}
        self._dependents: dict[str, list[_Alarm]] = {}  # other_tag -> DEV alarms that reference it
        self._first_out: dict[str, str] = {}  # group -> alarm id
        # group -> activations of the group's current episode, in order: (alarm id, since_ts, since_mono)
        self._sequence: dict[str, list[tuple[str, float, float]]] = {}
        self._sequence_count: dict[str, int] = {}  # group -> activations of the current episode (all of them)
        self._start_mono: float | None = None
        for cfg in configs:
            if cfg.tag in self._tags:
                raise ValueError(f"{cfg.tag}: alarms configured twice")
            self._tags[cfg.tag] = _TagState(cfg)
            alarms = [_Alarm(f"{cfg.tag}.{s.kind}", cfg.tag, s.kind, s, cfg) for s in cfg.limits]
            alarms.append(_Alarm(f"{cfg.tag}.{QUALITY}", cfg.tag, QUALITY, None, cfg))
            self._by_tag[cfg.tag] = alarms
            for a in alarms:
                self._alarms[a.id] = a
        for a in self._alarms.values():
            if a.spec is not None and a.spec.kind == "DEV":
                if a.spec.other_tag not in self._tags:
                    raise ValueError(f"{a.id}: DEV reference tag {a.spec.other_tag!r} has no alarm config")
                self._dependents.setdefault(a.spec.other_tag, []).append(a)

    # ------------------------------------------------------------------ feeding

    @property
    def tags(self) -> "KeysView[str]":
        """Configured tag names (a live view: ``tag in engine.tags`` is O(1); the poll tick asks it per reading)."""
        return self._tags.keys()

    def alarm_ids(self) -> list[str]:
        """Every alarm id (f"{tag}.{kind}", including the QUALITY alarms)."""
        return list(self._alarms)

    def update(self, reading: Reading, now_mono: float) -> list[AlarmEvent]:
        """Feed one reading; returns the transitions it caused (ignores tags without alarm config).

        A BAD reading, or a value that is not a finite number, makes the tag's value unknown: the
        QUALITY alarm activates (reason from the reading), process alarms keep their state (a bad
        reading never clears them, C03) and ``condition`` answers None. UNCERTAIN values are used.
        """
        ts = self._tags.get(reading.tag)
        if ts is None:
            return []
        self._started(now_mono)
        events: list[AlarmEvent] = []
        ts.last_mono = now_mono
        ts.stale = False
        v = _numeric(reading.value) if reading.usable else None
        if v is None:
            ts.bad_reason = (reading.reason or "bad quality") if not reading.usable else "value is not a number"
            ts.value = ts.prev_value = ts.prev_mono = None
        else:
            ts.bad_reason = None
            if ts.value is not None:
                ts.prev_value, ts.prev_mono = ts.value, ts.value_mono
            ts.value, ts.value_mono = v, now_mono
        self._eval_tag(reading.tag, now_mono, events)
        return [e for e in events if e is not None]

    def tick(self, now_mono: float) -> list[AlarmEvent]:
        """Advance timers: on/off delays, stale detection, re-alarm and shelve expiry. Call every poll tick."""
        self._started(now_mono)
        events: list[AlarmEvent] = []
        for name, ts in self._tags.items():
            limit = ts.cfg.stale_after_s
            if limit is not None and not ts.stale:
                since = ts.last_mono if ts.last_mono is not None else self._start_mono
                if now_mono - since >= limit:
                    ts.stale = True
                    self._eval_tag(name, now_mono, events)
        for a in self._alarms.values():
            self._advance(a, now_mono, events)
            if a.hide == "shelved" and a.hide_until_mono is not None and now_mono >= a.hide_until_mono:
                events.extend(self._unhide(a, None, "shelve expired", "shelve_expired", now_mono))
            if (a.spec is not None and a.spec.re_alarm_s is not None and a.active and a.acked and a.hide is None
                    and a.acked_mono is not None and now_mono - a.acked_mono >= a.spec.re_alarm_s):
                events.append(self._transition(a, now_mono, lambda: setattr(a, "acked", False),
                                               action="re-alarm", force=True))
        self._refresh_groups()
        return [e for e in events if e is not None]

    def _started(self, now_mono: float) -> None:
        if self._start_mono is None:
            self._start_mono = now_mono

    # ------------------------------------------------------------------ output faults and system alarms

    def add_system_alarm(self, tag: str, kind: str, priority: int = 3, group: str | None = None) -> str:
        """Register a condition alarm ``kind`` of ``tag`` that is not a limit (OUTPUT, CLOCK ...); returns its
        id f"{tag}.{kind}". It shows in :meth:`active`, is acknowledged like any other alarm and is driven
        only by :meth:`set_system_alarm`. Idempotent (the first registration's priority and group stay).
        Raises ValueError when the id is already a limit or QUALITY alarm."""
        aid = f"{tag}.{kind}"
        a = self._alarms.get(aid)
        if a is None:
            cfg = TagAlarmConfig(tag=tag, group=group, quality_priority=priority)
            self._alarms[aid] = _Alarm(aid, tag, kind, None, cfg)
        elif a.spec is not None or a.kind == QUALITY:
            raise ValueError(f"{aid}: already an alarm of a configured tag")
        return aid

    def set_system_alarm(self, tag: str, kind: str, active: bool, reason: str | None = None,
                         now_mono: float | None = None, *, clear_reason: str | None = None,
                         priority: int = 3) -> list[AlarmEvent]:
        """Raise (active=True, with a one-line reason) or clear the condition alarm ``kind`` of ``tag``.

        Registers the alarm on first use (with ``priority``). Returns the transition events ([] when nothing
        changed; a new reason while active is a transition too, so keep the reason stable while the
        condition lasts). The event of a clear carries ``clear_reason``. Clearing leaves the alarm
        rtn_unacked until acknowledged (ISA-18.2)."""
        a = self._alarms[self.add_system_alarm(tag, kind, priority)]
        now = time.monotonic() if now_mono is None else now_mono
        if active == a.active and (not active or reason == a.reason):
            return []

        def change() -> None:
            self._set_active(a, active, now)
            a.reason = reason if active else None
        ev = self._transition(a, now, change, force=active)
        if ev is not None:
            ev.reason = reason if active else clear_reason
        return [ev] if ev is not None else []

    def add_output_alarm(self, tag: str, priority: int = 1, group: str | None = None) -> str:
        """Register the OUTPUT (output-fault) alarm of output tag ``tag``; returns its id f"{tag}.OUTPUT".

        An output fault (a write not confirmed by read-back in time; docs/design.md, Fail safe) is an alarm of its own kind,
        distinct from process and QUALITY alarms: it shows in :meth:`active` and is acknowledged like any
        other. It is driven only by :meth:`set_output_fault`. Idempotent.
        """
        return self.add_system_alarm(tag, OUTPUT, priority, group)

    def set_output_fault(self, tag: str, fault: bool, reason: str | None = None,
                         now_mono: float | None = None) -> list[AlarmEvent]:
        """Raise (fault=True, with a one-line reason) or clear the OUTPUT alarm of ``tag``.

        Registers the alarm on first use. Returns the transition events ([] when nothing changed; a new
        reason while active is a transition too). Clearing leaves it rtn_unacked until acknowledged (ISA-18.2).
        """
        self.add_output_alarm(tag)
        return self.set_system_alarm(tag, OUTPUT, fault, reason, now_mono, clear_reason="confirmed")

    # ------------------------------------------------------------------ evaluation

    def _eval_tag(self, tag: str, now: float, events: list) -> None:
        ts = self._tags[tag]
        for a in self._by_tag[tag]:
            if a.spec is None:
                self._eval_quality(a, ts, now, events)
            else:
                self._eval_limit(a, now)
                self._advance(a, now, events)
        for a in self._dependents.get(tag, []):
            self._eval_limit(a, now)
            self._advance(a, now, events)
        self._refresh_groups()

    def _eval_quality(self, a: _Alarm, ts: _TagState, now: float, events: list) -> None:
        reason = "stale" if ts.stale else ts.bad_reason
        bad = reason is not None
        a.known = True
        if bad != a.active or (bad and reason != a.reason):
            def change() -> None:
                self._set_active(a, bad, now)
                a.reason = reason
            ev = self._transition(a, now, change)
            if ev is not None:
                ev.reason = reason
            events.append(ev)

    def _eval_limit(self, a: _Alarm, now: float) -> None:
        spec = a.spec
        assert spec is not None
        ts = self._tags[a.tag]
        x: float | None = None
        if ts.known:
            if spec.kind == "ROC":
                if ts.prev_value is not None and ts.value_mono is not None and ts.value_mono > ts.prev_mono:
                    x = (ts.value - ts.prev_value) / (ts.value_mono - ts.prev_mono)
            elif spec.kind == "DEV":
                other = self._tags[spec.other_tag]
                if other.known:
                    x = abs(ts.value - other.value)
            else:
                x = ts.value
        if x is None:
            # Unknown: hold the last known condition; never clear (C03), cancel a pending return.
            a.known = False
            a.value = None
            if a.pending_since is not None and not a.raw:
                a.raw = True
                a.pending_since = None
            return
        a.known = True
        a.value = ts.value if spec.kind != "ROC" else round(x, 9)
        sp, db = float(spec.setpoint), float(spec.deadband)
        high = spec.kind in ("HH", "H", "DEV") or (spec.kind == "ROC" and sp > 0)
        if high:
            raw = (x >= sp - db) if a.raw else (x >= sp)
        else:
            raw = (x <= sp + db) if a.raw else (x <= sp)
        a.raw = raw
        if raw == a.active:
            a.pending_since = None
        elif a.pending_since is None:
            a.pending_since = now

    def _on_delay(self, a: _Alarm) -> float:
        d = a.spec.on_delay_s if a.spec is not None else 0.0
        return min(d, self._cap) if a.cfg.gas is not None else d

    def _advance(self, a: _Alarm, now: float, events: list) -> None:
        if a.spec is None or a.pending_since is None:
            return
        delay = self._on_delay(a) if a.raw else a.spec.off_delay_s
        if now - a.pending_since >= delay:
            target = a.raw
            a.pending_since = None
            events.append(self._transition(a, now, lambda: self._set_active(a, target, now)))

    def _set_active(self, a: _Alarm, on: bool, now: float) -> None:
        if on == a.active:
            return
        a.active = on
        if on:
            a.acked = False
            a.acked_mono = None
            a.latched = bool(a.spec is not None and a.spec.latching)
            a.since_mono, a.since_ts = now, self._clock()
            grp = a.cfg.group
            if grp is not None and a.spec is not None:
                if grp not in self._first_out:
                    self._first_out[grp] = a.id
                    a.first_out = True
                    self._sequence[grp] = []
                    self._sequence_count[grp] = 0
                self._record_activation(grp, a.id, a.since_ts, now)
        elif not a.latched:
            a.since_mono = a.since_ts = None

    def _transition(self, a: _Alarm, now: float, change: Callable[[], None], *, user: str | None = None,
                    reason: str | None = None, action: str | None = None, force: bool = False) -> AlarmEvent | None:
        """Apply ``change`` and return the event when the state changed (or ``force``)."""
        hidden_before = a.hide
        before = a.base_state() if hidden_before and action is None else a.state()
        was_first = a.first_out
        change()
        after = a.base_state() if hidden_before and action is None else a.state()
        if before == after and not force:
            return None
        return self._event(a, now, before, after, was_first, user=user, reason=reason, action=action,
                           hidden=hidden_before if action is None else None)

    def _event(self, a: _Alarm, now: float, before: str, after: str, was_first: bool, *, user: str | None = None,
               reason: str | None = None, action: str | None = None, hidden: str | None = None) -> AlarmEvent:
        return AlarmEvent(id=a.id, tag=a.tag, kind=a.kind, from_state=before, to_state=after, value=a.value,
                          limit=a.limit, priority=a.priority, level=a.level, ts=self._clock(), mono=now,
                          user=user, reason=reason, first_out=a.first_out and not was_first, action=action,
                          hidden=hidden)

    def _group_sequence(self, grp: str) -> list[tuple[str, float, float]]:
        """The group's activations of this episode; rebuilt from the alarms' activation times when the group has
        a first-out but no recorded sequence (restored after a restart, or carried over a reload): the
        first-out first, then the group's other alarms that are not normal, by activation time."""
        seq = self._sequence.get(grp)
        if seq is None:
            first = self._alarms.get(self._first_out.get(grp, ""))
            later = sorted((x for x in self._alarms.values() if x.cfg.group == grp and x.spec is not None
                            and x is not first and x.base_state() != "normal" and x.since_ts is not None),
                           key=lambda x: (x.since_ts, x.id))
            head = [first] if first is not None and first.since_ts is not None else []
            seq = self._sequence[grp] = [(x.id, x.since_ts, x.since_mono or 0.0) for x in (*head, *later)]
            self._sequence_count[grp] = len(seq)
        return seq

    def _record_activation(self, grp: str, aid: str, since_ts: float, since_mono: float) -> None:
        seq = self._group_sequence(grp)
        seq.append((aid, since_ts, since_mono))
        self._sequence_count[grp] = self._sequence_count.get(grp, 0) + 1
        if len(seq) > SEQUENCE_MAX:  # keep the first alarm and the latest ones
            del seq[1:len(seq) - SEQUENCE_MAX + 1]

    def _refresh_groups(self) -> None:
        for grp, aid in list(self._first_out.items()):
            members = [a for a in self._alarms.values() if a.cfg.group == grp and a.spec is not None]
            if all(m.base_state() == "normal" for m in members):
                del self._first_out[grp]
                self._sequence.pop(grp, None)
                self._sequence_count.pop(grp, None)
                self._alarms[aid].first_out = False

    # ------------------------------------------------------------------ queries

    def condition(self, tag: str, kind: str) -> bool | None:
        """The alarm condition of ``tag``'s ``kind`` limit for an interlock input.

        True: the limit is exceeded (after on-delay / deadband / off-delay). False: within limits.
        None: unknown (bad quality, stale, comm fault, no reading yet, ROC without two readings, DEV
        whose reference is unknown). For kind "QUALITY": True while the quality alarm is active.
        Shelving / suppression / out of service hide an alarm from the operator; they do NOT change
        the condition (an interlock is defeated only by its own audited bypass). Latching is not
        reflected either (the interlock keeps its own latch).
        Raises KeyError("<tag>: no <kind> limit") when the tag or limit is not configured.
        """
        a = self._alarms.get(f"{tag}.{kind}")
        if a is None:
            raise KeyError(f"{tag}: no {kind} limit configured")
        if a.spec is None:
            return a.active
        if not self._tags[tag].known or not a.known:
            return None
        return a.active

    def seen(self, tag: str) -> bool:
        """True once any reading (good or bad) of ``tag`` has arrived (KeyError for an unknown tag)."""
        return self._tags[tag].last_mono is not None

    def value(self, tag: str) -> float | None:
        """Last usable value of ``tag`` (None when unknown)."""
        ts = self._tags[tag]
        return ts.value if ts.known else None

    def state(self, alarm_id: str) -> str:
        """Displayed ISA-18.2 state of one alarm (KeyError for an unknown id)."""
        return self._get(alarm_id).state()

    def _status(self, a: _Alarm) -> AlarmStatus:
        return AlarmStatus(id=a.id, tag=a.tag, kind=a.kind, state=a.state(), base_state=a.base_state(),
                           value=a.value, limit=a.limit, priority=a.priority, level=a.level, gas=a.cfg.gas,
                           group=a.cfg.group, active=a.active, latched=a.latched, since_ts=a.since_ts,
                           first_out=a.first_out, reason=a.reason,
                           shelved_until_ts=a.hide_until_ts if a.hide == "shelved" else None)

    def _order(self, a: _Alarm) -> tuple:
        return (a.priority, -(a.level or 0), _GAS_RANK.get(a.cfg.gas or "", 9),
                a.since_mono if a.since_mono is not None else math.inf, a.id)

    def active(self, include_hidden: bool = False) -> list[AlarmStatus]:
        """Alarms not in "normal" (unacked, acked, rtn_unacked), in priority order.

        Order: priority (1 first), then gas level (2 before 1), then toxic before combustible before
        oxygen (GB/T 50493 ordering), then activation time (first first). ``first_out`` marks the
        first alarm of each first-out group. include_hidden adds shelved / suppressed / out-of-service
        alarms whose underlying state is not normal.
        """
        out = [a for a in self._alarms.values()
               if a.base_state() != "normal" and (a.hide is None or include_hidden)]
        return [self._status(a) for a in sorted(out, key=self._order)]

    def all_status(self) -> list[AlarmStatus]:
        """Every alarm, normal ones included, in the same order as :meth:`active`."""
        return [self._status(a) for a in sorted(self._alarms.values(), key=self._order)]

    def first_out_sequence(self) -> list[dict[str, Any]]:
        """The first alarm and the later alarms in time order, per first-out group (GB 16808-2008 5.3: the
        first alarm is identified and later alarms are shown in the order they came; docs/domain.md,
        GB 16808), beside the priority-ordered :meth:`active` list.

        One dict per group that has a first-out now, by group name: ``{"group", "first_out": alarm id,
        "count": activations in this episode, "alarms": [...]}``; ``alarms`` holds every activation of a
        limit alarm of the group since its first-out, the first-out first, then in activation order:
        ``{"id", "tag", "kind", "level", "priority", "since": RFC 3339 UTC, "state": displayed state now,
        "first_out": bool}``. An alarm that returned, or activated twice, keeps each activation (at most
        SEQUENCE_MAX per group: the first and the latest). The episode ends, and the group leaves the list,
        when every alarm of the group is back to normal (acknowledged and reset)."""
        out = []
        for grp in sorted(self._first_out):
            seq = self._group_sequence(grp)
            total = max(self._sequence_count.get(grp, 0), len(seq))
            rows = []
            for aid, ts, _mono in seq:
                a = self._alarms.get(aid)
                if a is None:
                    continue
                rows.append({"id": aid, "tag": a.tag, "kind": a.kind, "level": a.level, "priority": a.priority,
                             "since": rfc3339(ts), "state": a.state(),
                             "first_out": not rows and aid == self._first_out[grp]})
            out.append({"group": grp, "first_out": self._first_out[grp], "count": total, "alarms": rows})
        return out

    def disabled_points(self) -> list[AlarmStatus]:
        """The alarms of gas points that are shelved, suppressed or out of service, whatever their underlying
        state (GB 16808: a controller with 屏蔽 must show the disabled points and count them; docs/domain.md,
        Alarm management: "points disabled"). A gas point is a tag with a gas preset (``gas``) or in the
        first-out group "gas". In the order of :meth:`active`; [] when no gas point is disabled."""
        out = [a for a in self._alarms.values()
               if a.hide is not None and (a.cfg.gas is not None or a.cfg.group == "gas")]
        return [self._status(a) for a in sorted(out, key=self._order)]

    # ------------------------------------------------------------------ operator actions

    def _get(self, alarm_id: str) -> _Alarm:
        a = self._alarms.get(alarm_id)
        if a is None:
            raise KeyError(_("no alarm {id}").format(id=repr(alarm_id)))
        return a

    @staticmethod
    def _who(alarm_id: str, user: str, reason: str | None, need_reason: bool) -> None:
        if not user or not str(user).strip():
            raise AlarmActionError(_("{id}: a user is required").format(id=alarm_id))
        if need_reason and (not reason or not str(reason).strip()):
            raise AlarmActionError(_("{id}: a reason is required").format(id=alarm_id))

    def ack(self, alarm_id: str, user: str, reason: str | None = None,
            now_mono: float | None = None) -> list[AlarmEvent]:
        """Acknowledge (silence) an alarm: unacked -> acked, rtn_unacked -> normal (ISA-18.2).

        A new activation annunciates again. Raises AlarmActionError when there is nothing to acknowledge.
        """
        a = self._get(alarm_id)
        self._who(alarm_id, user, reason, False)
        if a.acked:
            raise AlarmActionError(_("{id}: nothing to acknowledge (state {state})").format(
                id=alarm_id, state=_state_word(a.state())))
        now = time.monotonic() if now_mono is None else now_mono

        def change() -> None:
            a.acked, a.acked_mono = True, now
            if not a.in_alarm:
                a.since_mono = a.since_ts = None
        ev = self._transition(a, now, change, user=user, reason=reason, action="ack", force=True)
        self._refresh_groups()
        return [ev]

    def reset(self, alarm_id: str, user: str, reason: str | None = None,
              now_mono: float | None = None) -> list[AlarmEvent]:
        """Reset a latched alarm after its condition has returned (GB 16808; OPC UA Part 9 Reset).

        Reset also acknowledges. Refused (AlarmActionError) while the condition is still active or
        unknown (a bad or stale value cannot prove the gas has cleared), or when nothing is latched.
        """
        a = self._get(alarm_id)
        self._who(alarm_id, user, reason, False)
        if not a.latched:
            raise AlarmActionError(_("{id}: not latched, nothing to reset (state {state})").format(
                id=alarm_id, state=_state_word(a.state())))
        if not a.known or not self._tags[a.tag].known:
            raise AlarmActionError(_("{id}: reset refused, value unknown ({why})").format(
                id=alarm_id, why=self._tags[a.tag].bad_reason or _("stale or no reading")))
        if a.active or a.raw:
            raise AlarmActionError(_("{id}: reset refused, condition still active (value {value}, limit {limit})")
                                   .format(id=alarm_id, value=repr(a.value), limit=repr(a.limit)))
        now = time.monotonic() if now_mono is None else now_mono

        def change() -> None:
            a.latched = False
            a.acked, a.acked_mono = True, now
            a.since_mono = a.since_ts = None
        ev = self._transition(a, now, change, user=user, reason=reason, action="reset", force=True)
        self._refresh_groups()
        return [ev]

    def shelve(self, alarm_id: str, user: str, reason: str, duration_s: float, max_s: float,
               now_mono: float | None = None) -> list[AlarmEvent]:
        """Shelve an alarm for ``duration_s`` seconds (ISA-18.2 shelving; OPC UA Part 9 TimedShelve).

        Requires user and reason; duration_s must be > 0 and <= max_s (the site's maximum shelve time).
        The alarm is hidden from the alarm list but still evaluated; ``condition`` is unaffected.
        On expiry (tick) or unshelve it returns to unacked if in alarm, else normal.
        """
        a = self._get(alarm_id)
        self._who(alarm_id, user, reason, True)
        if not 0 < duration_s <= max_s:
            # stated in minutes, the unit the operator gives (`shelve --minutes`)
            raise AlarmActionError(_("{id}: shelve of {minutes} min must be > 0 and <= {max} min").format(
                id=alarm_id, minutes=f"{duration_s / 60:g}", max=f"{max_s / 60:g}"))
        if a.hide not in (None, "shelved"):
            raise AlarmActionError(_("{id}: cannot shelve, alarm is {state}").format(
                id=alarm_id, state=_state_word(a.hide)))
        now = time.monotonic() if now_mono is None else now_mono

        def change() -> None:
            a.hide = "shelved"
            a.hide_until_mono = now + duration_s
            a.hide_until_ts = self._clock() + duration_s
        return [self._transition(a, now, change, user=user, reason=reason, action="shelve", force=True)]

    def unshelve(self, alarm_id: str, user: str, reason: str | None = None,
                 now_mono: float | None = None) -> list[AlarmEvent]:
        """End a shelve early. Raises AlarmActionError when the alarm is not shelved."""
        a = self._get(alarm_id)
        self._who(alarm_id, user, reason, False)
        if a.hide != "shelved":
            raise AlarmActionError(_("{id}: not shelved").format(id=alarm_id))
        return self._unhide(a, user, reason, "unshelve", time.monotonic() if now_mono is None else now_mono)

    def suppress(self, alarm_id: str, user: str, reason: str, on: bool = True,
                 now_mono: float | None = None) -> list[AlarmEvent]:
        """Suppress by design (on=True) or release it (on=False), e.g. while the equipment is stopped."""
        return self._set_hide(alarm_id, "suppressed", user, reason, on, now_mono)

    def set_out_of_service(self, alarm_id: str, user: str, reason: str, on: bool = True,
                           now_mono: float | None = None) -> list[AlarmEvent]:
        """Take an alarm out of service (on=True, e.g. instrument under maintenance) or return it."""
        return self._set_hide(alarm_id, "out_of_service", user, reason, on, now_mono)

    def _set_hide(self, alarm_id: str, mode: str, user: str, reason: str, on: bool,
                  now_mono: float | None) -> list[AlarmEvent]:
        a = self._get(alarm_id)
        self._who(alarm_id, user, reason, True)
        now = time.monotonic() if now_mono is None else now_mono
        if on:
            if a.hide is not None:
                raise AlarmActionError(_("{id}: already {state}").format(id=alarm_id, state=_state_word(a.hide)))

            def change() -> None:
                a.hide = mode
                a.hide_until_mono = a.hide_until_ts = None
            action = "suppress" if mode == "suppressed" else "out_of_service"
            return [self._transition(a, now, change, user=user, reason=reason, action=action, force=True)]
        if a.hide != mode:
            raise AlarmActionError(_("{id}: not {state}").format(id=alarm_id, state=_state_word(mode)))
        return self._unhide(a, user, reason, "unsuppress" if mode == "suppressed" else "in_service", now)

    def _unhide(self, a: _Alarm, user: str | None, reason: str | None, action: str, now: float) -> list[AlarmEvent]:
        def change() -> None:
            a.hide = None
            a.hide_until_mono = a.hide_until_ts = None
            a.acked = not a.in_alarm       # ISA-18.2: unshelved -> unacked if in alarm, else normal
            a.acked_mono = now if a.acked else None
            if not a.in_alarm:
                a.since_mono = a.since_ts = None
        ev = self._transition(a, now, change, user=user, reason=reason, action=action, force=True)
        self._refresh_groups()
        return [ev]

    # ------------------------------------------------------------------ state that carries over

    def snapshot(self, *, restart_only: bool = False) -> AlarmSnapshot:
        """The runtime state that carries over to another engine (AlarmSnapshot: every alarm's AlarmState,
        every tag's TagState, the first-out groups, the start time). Pure, in memory, O(alarms + tags);
        a copy: later changes of this engine do not show in it.

        restart_only: only the part a restart keeps (the latched alarms; no tags, no groups), which is all
        :meth:`AlarmSnapshot.saved` reads: cheap enough for the safety-state persister's every call."""
        if restart_only:
            return AlarmSnapshot(alarms={aid: AlarmState(*_alarm_state(a)) for aid, a in self._alarms.items()
                                         if a.latched}, start_mono=self._start_mono)
        return AlarmSnapshot(
            alarms={aid: AlarmState(*_alarm_state(a)) for aid, a in self._alarms.items()},
            tags={tag: TagState(*_tag_state(ts)) for tag, ts in self._tags.items()},
            groups={grp: GroupState(aid, tuple(self._sequence.get(grp, ())), self._sequence_count.get(grp, 0))
                    for grp, aid in self._first_out.items()},
            start_mono=self._start_mono)

    def adopt(self, snapshot: AlarmSnapshot) -> list[str]:
        """Take over the state in ``snapshot`` (from :meth:`snapshot` of the engine this one replaces, or a
        restart's :meth:`snapshot_from_saved`). Call it on an engine that has not been fed yet.

        Per alarm id and per tag that this engine has: every AlarmState / TagState field is set (identity
        and configuration stay this engine's, so a changed set point applies from the next reading while
        latch, acknowledgement, shelve and activation time are kept; a reload never resets a latch).
        A first-out group is taken when its first alarm exists here, with its activations of alarms that
        exist here. An alarm marked first_out whose group the snapshot does not carry (a restored latch)
        takes its configured group when that has no first-out yet, else loses the mark; groups without a
        recorded sequence get it rebuilt from the activation times. start_mono is taken as it is.

        Returns one line per alarm or tag of ``snapshot`` that is not configured here (its state is
        dropped); [] when everything was adopted. Raises nothing."""
        notes = [*adopt_fields(snapshot.tags, self._tags, _TAG_STATE, "tag", "its last value was not adopted"),
                 *adopt_fields(snapshot.alarms, self._alarms, _ALARM_STATE, "alarm", "its state was not adopted")]
        for grp, g in snapshot.groups.items():
            if g.first_out not in self._alarms:
                continue
            self._first_out[grp] = g.first_out
            if g.sequence is not None:
                # the group's first alarm and later alarms in time order (first_out_sequence)
                self._sequence[grp] = [x for x in g.sequence if x[0] in self._alarms]
            self._sequence_count[grp] = g.count
        heads = {g.first_out for g in snapshot.groups.values()}
        for aid, st in snapshot.alarms.items():
            a = self._alarms.get(aid)
            if a is None or not st.first_out or aid in heads:
                continue
            grp = a.cfg.group
            if grp is not None and grp not in self._first_out:
                self._first_out[grp] = aid
            elif grp is None or self._first_out.get(grp) != aid:
                a.first_out = False
        self._start_mono = snapshot.start_mono
        for grp in list(self._first_out):  # a group taken without its sequence: the first-out, then by time
            self._group_sequence(grp)
        return notes

    def snapshot_from_saved(self, saved: dict[str, dict[str, Any]],
                            now_mono: float | None = None) -> tuple[AlarmSnapshot, list[str]]:
        """The snapshot a restart adopts from the restart form (:meth:`AlarmSnapshot.saved`, read back from
        safety-state.json): per saved alarm id that is a limit alarm here, this engine's state with the alarm
        latched again, its condition as last known (``active``; the value unknown: ``known`` False until the
        tag's next reading), its acknowledgement (acked_mono now), its activation time (``since_ts``; the
        wall clock now when missing; since_mono now) and its first-out mark. Monotonic times are taken
        afresh (``now_mono``, default time.monotonic()) because the monotonic clock restarted. No tag values
        and no group sequences (rebuilt). Returns (snapshot, ids in ``saved`` that are not configured as a
        limit alarm any more). Pure."""
        now = time.monotonic() if now_mono is None else now_mono
        alarms: dict[str, AlarmState] = {}
        unknown: list[str] = []
        for aid, d in saved.items():
            a = self._alarms.get(aid)
            if a is None or a.spec is None:
                unknown.append(aid)
                continue
            since = d.get("since_ts")
            active, acked = bool(d.get("active")), bool(d.get("acked"))
            alarms[aid] = replace(AlarmState(*_alarm_state(a)),
                                  latched=True, active=active, raw=active, known=False, pending_since=None,
                                  acked=acked, acked_mono=now if acked else None,
                                  since_ts=float(since) if isinstance(since, (int, float)) else self._clock(),
                                  since_mono=now, first_out=a.first_out or bool(d.get("first_out")))
        return AlarmSnapshot(alarms=alarms, start_mono=self._start_mono), unknown

    # ------------------------------------------------------------------ restart persistence

    def export_state(self) -> dict[str, dict[str, Any]]:
        """The alarm state that must survive a restart (gateway.safety.safety_state), JSON-able, keyed by alarm id:
        ``self.snapshot(restart_only=True).saved()`` (see :meth:`AlarmSnapshot.saved`: latched alarms only, ``{"active",
        "acked", "since_ts", "first_out"}``). Pure and in memory.
        """
        return self.snapshot(restart_only=True).saved()

    def restore_state(self, saved: dict[str, dict[str, Any]],
                      now_mono: float | None = None) -> tuple[list[AlarmEvent], list[str]]:
        """Restore the latched alarms :meth:`export_state` saved before a restart; call before the first reading.

        A restart is not a reset: each saved alarm that still exists is latched again with its activation
        time, acknowledgement and first-out mark (:meth:`snapshot_from_saved`, then :meth:`adopt`). Its
        condition is restored as last known (``active``) but the value is unknown until the tag's next
        reading: :meth:`reset` is refused until a fresh reading shows the condition has returned, and a
        still-active condition is no new activation (no second event, the activation time stays). Event per
        alarm: action "restored" (from_state "normal"). Returns (events, ids in ``saved`` that are not
        configured any more).
        """
        now = time.monotonic() if now_mono is None else now_mono
        snap, unknown = self.snapshot_from_saved(saved, now)
        before = {aid: (self._alarms[aid].state(), self._alarms[aid].first_out) for aid in snap.alarms}
        self.adopt(snap)
        events: list[AlarmEvent] = []
        for aid, (from_state, was_first) in before.items():
            a = self._alarms[aid]
            ev = self._event(a, now, from_state, a.state(), was_first, action="restored")
            ev.reason = f"latched since {rfc3339(a.since_ts)}; restored after a restart, awaiting reset"
            events.append(ev)
        return events, unknown
