"""Live major-hazard identification and grading per unit (GB 18218-2018), fed by readings.

:class:`HazardEngine` keeps, per unit (a diked tank group or a production unit), the online quantity q of
every tank and vessel, recomputes S, R, the grade and the risk colour whenever a reading of one of its
tags arrives, and returns change events as dicts for the record path. It is pure, in memory, and never
touches the disk or the network (docs/design.md "two paths").

Quantities:

- liquid tank (:class:`TankSpec`): level -> volume (gateway.hazard.volume geometry or strapping table)
  x density (constant, or a temperature table fed by ``tag_temperature``);
- gas pressure vessel (:class:`VesselSpec`): ideal gas with a compressibility factor,
  q = P_abs V M / (Z R T), R = 8.314462618 kJ/(kmol K) (P in kPa, V in m3, M in kg/kmol, T in K -> kg);
- fixed quantities (:attr:`UnitSpec.fixed`, tonnes): warehouses, pipework, what has no live tag.

Conservative rule for doubtful inputs (documented choice): a tank or vessel whose level / pressure is
missing (no reading yet), BAD, not numeric, outside the geometry's range, stale (older than
``stale_after_s``) or in an unknown engineering unit counts at its UPPER BOUND (tank full at the
highest density; vessel at design pressure and the coldest design temperature), and the unit's result
is flagged ``uncertain``. It is never silently lower than the truth. A reading of quality UNCERTAIN is
used as it is and also flags the result uncertain. An unknown temperature for a density table uses the
table's highest density (uncertain); a temperature outside the table uses the nearest row (uncertain).

Two grades per unit: ``grade`` from the live quantities, and ``design_grade`` from the design maximum
quantities (capacity x max_fill x highest density, vessels at design pressure and coldest temperature,
plus fixed quantities) - GB 18218-2018 practice identifies installations by their maximum quantity.
The colour follows ``UnitSpec.colour_basis``: "worst" (default: the higher of the two grades),
"design" or "live", then the unit's :class:`~gateway.hazard.grading.ColourMap` with the live alarm state
from :meth:`HazardEngine.update_alarm_state`.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Callable

from gateway.hazard import substances as subs
from gateway.hazard.grading import ColourMap, Result, evaluate
from gateway.hazard.volume import DensityTable, Geometry, HorizontalCylinder, Sphere, StrappingTable, \
    VerticalCylinder, level_to_m
from gateway.model import Quality, Reading, rfc3339

R_KJ_KMOL_K = 8.314462618
P_ATM_KPA = 101.325
_PRESSURE_KPA = {"Pa": 0.001, "kPa": 1.0, "MPa": 1000.0, "bar": 100.0}
_TEMP_UNITS = {"", "C", "degC", "°C", "℃", "K"}
_GEOMETRIES = (VerticalCylinder, HorizontalCylinder, Sphere, StrappingTable)


@dataclass
class TankSpec:
    """A liquid (or liquefied-gas) tank in a unit.

    tag_level: level tag (Reading unit "m", "cm", "mm" or "%" of the geometry's max level).
    substance: Chinese name, English name, CAS or category code (GB 18218-2018 tables 1/2).
    geometry: VerticalCylinder | HorizontalCylinder | Sphere | StrappingTable.
    density_t_m3: constant density (t/m3) or a DensityTable (needs tag_temperature, degC or K).
    tag_temperature: liquid temperature tag, or None. name: display name (default: tag_level).
    max_fill: the design fill limit as a fraction of capacity (e.g. 0.85 for LPG), for the design quantity.
    """

    tag_level: str
    substance: str
    geometry: Geometry
    density_t_m3: float | DensityTable
    tag_temperature: str | None = None
    name: str | None = None
    max_fill: float = 1.0


@dataclass
class VesselSpec:
    """A gas pressure vessel in a unit (ideal gas with compressibility factor z).

    tag_pressure: pressure tag in ``pressure_unit`` (Pa, kPa, MPa, bar; a Reading's own unit wins when it is
    one of those), gauge unless ``absolute``. volume_m3: internal volume. molar_mass_kg_kmol: e.g. 2.016
    hydrogen. design_pressure: maximum allowable pressure in pressure_unit (upper bound and design quantity).
    temperature_c: gas temperature when there is no tag. tag_temperature: gas temperature tag (degC or K).
    min_temperature_c: coldest design temperature (upper bound when the temperature is unknown).
    """

    tag_pressure: str
    substance: str
    volume_m3: float
    molar_mass_kg_kmol: float
    design_pressure: float
    pressure_unit: str = "MPa"
    absolute: bool = False
    temperature_c: float = 20.0
    tag_temperature: str | None = None
    min_temperature_c: float = -40.0
    z: float = 1.0
    name: str | None = None


@dataclass
class UnitSpec:
    """A GB 18218-2018 unit: a production unit or a storage unit (each diked tank group is its own unit).

    name: unit name. people_500m: people within 500 m outside the boundary (-> alpha).
    tanks / vessels: live inventories. fixed: {substance name: tonnes} without a live tag.
    overrides: {substance name: {"Q_t": t, "beta": b}} from the plant's hazard study.
    colour_map: ColourMap (or its config dict). colour_basis: "worst" | "design" | "live".
    major_hazard_code: the regulator's code of this installation (for point codes), optional.
    alarm_tags: further tags located in the unit (gas detectors in the dike, ...) whose level-2 alarms and
    interlock trips count for the unit's live alarm state (see :meth:`HazardEngine.unit_tags`).
    """

    name: str
    people_500m: int
    tanks: list[TankSpec] = field(default_factory=list)
    fixed: dict[str, float] = field(default_factory=dict)
    colour_map: ColourMap | dict | None = None
    vessels: list[VesselSpec] = field(default_factory=list)
    overrides: dict[str, dict] = field(default_factory=dict)
    colour_basis: str = "worst"
    major_hazard_code: str | None = None
    alarm_tags: list[str] = field(default_factory=list)


@dataclass
class _Input:
    """Last reading of one tag: value (engineering), unit, quality, reason, mono, ts."""

    value: float | None = None
    unit: str = ""
    quality: Quality | None = None
    reason: str | None = "no reading yet"
    mono: float = 0.0
    ts: float = 0.0


def _num(r: Reading) -> float | None:
    v = r.value
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def _temp_c(inp: _Input) -> float | None:
    if inp.value is None or inp.unit.strip() not in _TEMP_UNITS:
        return None
    return inp.value - 273.15 if inp.unit.strip() == "K" else inp.value


class _Item:
    """One tank or vessel of a unit at run time."""

    def __init__(self, unit: str, spec: TankSpec | VesselSpec, sub: subs.Substance):
        self.spec = spec
        self.sub = sub
        self.is_tank = isinstance(spec, TankSpec)
        self.name = spec.name or (spec.tag_level if self.is_tank else spec.tag_pressure)
        where = f"unit {unit}, {'tank' if self.is_tank else 'vessel'} {self.name}"
        if self.is_tank:
            if not isinstance(spec.geometry, _GEOMETRIES):
                raise ValueError(f"{where}: geometry must be a VerticalCylinder, HorizontalCylinder, Sphere or "
                                 f"StrappingTable")
            if isinstance(spec.density_t_m3, DensityTable):
                if not spec.tag_temperature:
                    raise ValueError(f"{where}: a density table needs tag_temperature")
            elif not (isinstance(spec.density_t_m3, (int, float)) and spec.density_t_m3 > 0):
                raise ValueError(f"{where}: density_t_m3 must be > 0 t/m3 or a DensityTable")
            if isinstance(spec.max_fill, bool) or not isinstance(spec.max_fill, (int, float)) \
                    or not 0 < spec.max_fill <= 1:
                raise ValueError(f"{where}: max_fill must be within (0, 1], got {spec.max_fill}")
        else:
            if spec.pressure_unit not in _PRESSURE_KPA:
                raise ValueError(f"{where}: pressure_unit must be one of {', '.join(_PRESSURE_KPA)}")
            for k in ("volume_m3", "molar_mass_kg_kmol", "design_pressure", "z", "temperature_c", "min_temperature_c"):
                v = getattr(spec, k)
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                    raise ValueError(f"{where}: {k} must be a number, got {v!r}")
            for k in ("volume_m3", "molar_mass_kg_kmol", "design_pressure", "z"):
                if not getattr(spec, k) > 0:
                    raise ValueError(f"{where}: {k} must be > 0")
            if min(spec.min_temperature_c, spec.temperature_c) <= -273.15:
                raise ValueError(f"{where}: min_temperature_c below absolute zero")
        self.where = where

    @property
    def tags(self) -> list[tuple[str, str]]:
        s = self.spec
        main = ("level", s.tag_level) if self.is_tank else ("pressure", s.tag_pressure)
        return [main] + ([("temperature", s.tag_temperature)] if s.tag_temperature else [])

    # -- tanks
    def _max_density(self) -> float:
        d = self.spec.density_t_m3
        return d.max_density_t_m3 if isinstance(d, DensityTable) else float(d)

    def design_q(self) -> float:
        """Design maximum quantity (t)."""
        if self.is_tank:
            return self.spec.geometry.capacity_m3 * self.spec.max_fill * self._max_density()
        return self._gas_t(self.spec.design_pressure, self.spec.pressure_unit, self.spec.min_temperature_c)

    def upper_q(self) -> float:
        """Upper bound (t) when the live input is unknown: tank full, vessel at design conditions."""
        if self.is_tank:
            return self.spec.geometry.capacity_m3 * self._max_density()
        return self.design_q()

    def _gas_t(self, p: float, unit: str, t_c: float) -> float:
        s = self.spec
        p_kpa = p * _PRESSURE_KPA[unit] + (0.0 if s.absolute else P_ATM_KPA)
        if p_kpa <= 0:
            return 0.0
        kg = p_kpa * s.volume_m3 * s.molar_mass_kg_kmol / (s.z * R_KJ_KMOL_K * (t_c + 273.15))
        return kg / 1000.0

    def live_q(self, inputs: dict[str, _Input], stale: Callable[[_Input], bool]) -> tuple[float, str, list[str]]:
        """(q tonnes, basis "measured" | "upper_bound", reasons why uncertain)."""
        s = self.spec
        kind, tag = self.tags[0]
        inp = inputs[tag]
        reasons: list[str] = []
        if inp.value is None:
            return self.upper_q(), "upper_bound", [f"{tag}: {inp.reason or 'bad'}"]
        if stale(inp):
            return self.upper_q(), "upper_bound", [f"{tag}: stale"]
        if inp.quality is Quality.UNCERTAIN:
            reasons.append(f"{tag}: quality uncertain ({inp.reason or 'no reason'})")
        t_c: float | None = None
        if s.tag_temperature:
            ti = inputs[s.tag_temperature]
            if ti.value is None:
                why = ti.reason or "bad"
            elif stale(ti):
                why = "stale"
            else:
                t_c = _temp_c(ti)
                why = None if t_c is not None else f"temperature unit {ti.unit!r} unknown"
            if why is not None:
                reasons.append(f"{s.tag_temperature}: temperature unknown ({why})")
            elif ti.quality is Quality.UNCERTAIN:
                reasons.append(f"{s.tag_temperature}: quality uncertain")
        if self.is_tank:
            geo = s.geometry
            try:
                level = level_to_m(inp.value, inp.unit, geo.max_level_m)
                vol = geo.volume_m3(level)
            except ValueError as e:
                return self.upper_q(), "upper_bound", reasons + [f"{tag}: {e}"]
            d = s.density_t_m3
            if isinstance(d, DensityTable):
                if t_c is None:
                    rho = d.max_density_t_m3
                else:
                    rho, ok = d.density_t_m3(t_c)
                    if not ok:
                        reasons.append(f"{s.tag_temperature}: {t_c} degC outside the density table")
            else:
                rho = float(d)
            return vol * rho, "measured", reasons
        unit = inp.unit.strip() if inp.unit.strip() in _PRESSURE_KPA else s.pressure_unit
        if inp.unit.strip() and inp.unit.strip() not in _PRESSURE_KPA:
            return self.upper_q(), "upper_bound", reasons + [f"{tag}: pressure unit {inp.unit!r} unknown"]
        if t_c is None:
            t_c = s.min_temperature_c if s.tag_temperature else s.temperature_c
        return self._gas_t(inp.value, unit, t_c), "measured", reasons


class _Unit:
    def __init__(self, spec: UnitSpec, table: subs.SubstanceTable):
        self.spec = spec
        self.name = spec.name
        if spec.colour_basis not in ("worst", "design", "live"):
            raise ValueError(f"unit {spec.name}: colour_basis must be worst, design or live")
        try:
            self.colour_map = spec.colour_map if isinstance(spec.colour_map, ColourMap) \
                else ColourMap.from_dict(spec.colour_map)
        except (TypeError, ValueError) as e:
            raise ValueError(f"unit {spec.name}: {e}") from None
        over: dict[str, dict] = {}
        for name, o in (spec.overrides or {}).items():
            try:
                base = table.find(name)
                over[base.id] = dict(o)
                subs.custom(base, Q_t=o.get("Q_t"), beta=o.get("beta"))
            except (LookupError, ValueError) as e:
                raise ValueError(f"unit {spec.name}, override {name}: {e}") from None

        def resolve(name: str, where: str) -> subs.Substance:
            try:
                base = table.find(name)
            except LookupError as e:
                raise ValueError(f"{where}: {e}") from None
            o = over.get(base.id)
            return subs.custom(base, Q_t=o.get("Q_t"), beta=o.get("beta")) if o else base

        self.items = [_Item(spec.name, t, resolve(t.substance, f"unit {spec.name}, tank {t.name or t.tag_level}"))
                      for t in spec.tanks]
        self.items += [_Item(spec.name, v, resolve(v.substance, f"unit {spec.name}, vessel {v.name or v.tag_pressure}"))
                       for v in spec.vessels]
        self.fixed: list[tuple[subs.Substance, float]] = []
        for name, q in (spec.fixed or {}).items():
            if not (isinstance(q, (int, float)) and math.isfinite(q) and q >= 0):
                raise ValueError(f"unit {spec.name}, fixed {name}: quantity must be tonnes >= 0, got {q!r}")
            self.fixed.append((resolve(name, f"unit {spec.name}, fixed {name}"), float(q)))
        # alpha check, one line
        try:
            self.design: Result = evaluate(spec.people_500m, [(i.sub, i.design_q()) for i in self.items] + self.fixed)
        except ValueError as e:
            raise ValueError(f"unit {spec.name}: {e}") from None
        self.level2_active = False
        self.tripped = False
        self.result: Result | None = None
        self.uncertain = True
        self.reasons: list[str] = []
        self.tank_status: list[dict] = []
        self.colour = ""

    def evaluate(self, inputs: dict[str, _Input], stale: Callable[[_Input], bool]) -> None:
        pairs = list(self.fixed)
        reasons: list[str] = []
        self.tank_status = []
        for it in self.items:
            q, basis, why = it.live_q(inputs, stale)
            pairs.append((it.sub, q))
            reasons += why
            self.tank_status.append({"name": it.name, "tag": it.tags[0][1], "substance": it.sub.id,
                                     "q_t": q, "basis": basis, "uncertain": bool(why),
                                     "design_q_t": it.design_q()})
        self.result = evaluate(self.spec.people_500m, pairs)
        self.uncertain = bool(reasons)
        self.reasons = reasons
        self.colour = self.colour_map.colour(self.colour_grade, self.level2_active, self.tripped)

    @property
    def colour_grade(self) -> int | None:
        live, design = self.result.grade, self.design.grade
        if self.spec.colour_basis == "live":
            return live
        if self.spec.colour_basis == "design":
            return design
        known = [g for g in (live, design) if g is not None]
        return min(known) if known else None

    def status(self) -> dict[str, Any]:
        r = self.result
        return {"unit": self.name, "S": round(r.S, 6), "R": round(r.R, 6), "alpha": r.alpha,
                "major_hazard": r.major_hazard, "grade": r.grade, "design_grade": self.design.grade,
                "design_S": round(self.design.S, 6), "design_R": round(self.design.R, 6),
                "colour": self.colour, "uncertain": self.uncertain, "reasons": list(self.reasons),
                "level2_active": self.level2_active, "tripped": self.tripped,
                "unverified": r.unverified, "tanks": [dict(t) for t in self.tank_status],
                "fixed": {s.id: q for s, q in self.fixed}}


class HazardEngine:
    """Live S / R / grade / colour of every configured unit.

    units: list of UnitSpec. stale_after_s: a level / pressure / temperature reading older than this
    (monotonic seconds, from Reading.mono) counts as unknown (None: never stale). clock: wall clock for
    event timestamps of alarm-state changes (UTC epoch seconds). table: the substance table (default:
    the shipped GB 18218-2018 data).

    Raises ValueError (one line naming unit and tank) for a bad configuration: unknown substance (with
    close matches), bad geometry or density, duplicate unit name, a negative people count.
    The initial state (no readings yet) counts every tank full and is uncertain; it emits no event.
    """

    def __init__(self, units: list[UnitSpec], *, stale_after_s: float | None = None,
                 clock: Callable[[], float] = time.time, table: subs.SubstanceTable | None = None):
        table = table or subs.default_table()
        self._clock = clock
        self.stale_after_s = stale_after_s
        self._now_mono: float | None = None
        self._units: dict[str, _Unit] = {}
        self._by_tag: dict[str, set[str]] = {}
        self._inputs: dict[str, _Input] = {}
        for spec in units:
            if spec.name in self._units:
                raise ValueError(f"unit {spec.name}: duplicate unit name")
            u = _Unit(spec, table)
            self._units[spec.name] = u
            for it in u.items:
                for _, tag in it.tags:
                    self._by_tag.setdefault(tag, set()).add(spec.name)
                    self._inputs.setdefault(tag, _Input())
        for u in self._units.values():
            u.evaluate(self._inputs, self._stale)

    @property
    def tags(self) -> list[str]:
        """Every tag the engine listens to (levels, pressures, temperatures)."""
        return sorted(self._by_tag)

    @property
    def units(self) -> list[str]:
        return list(self._units)

    def unit_tags(self, unit: str) -> set[str]:
        """The tags "in" ``unit``: every level / pressure / temperature tag of its tanks and vessels plus
        its ``alarm_tags``. A caller maps the live alarm state onto the unit through this set (the
        gateway: a level-2 alarm on one of these tags, or a tripped interlock with one of them as an
        input). Raises KeyError for an unknown unit."""
        u = self._units.get(unit)
        if u is None:
            raise KeyError(f"hazard: unknown unit {unit!r}")
        return {tag for it in u.items for _, tag in it.tags} | set(u.spec.alarm_tags or ())

    def major_hazard_code(self, unit: str) -> str | None:
        """The unit's configured major-hazard code, or None. Raises KeyError for an unknown unit."""
        u = self._units.get(unit)
        if u is None:
            raise KeyError(f"hazard: unknown unit {unit!r}")
        return u.spec.major_hazard_code

    def _stale(self, inp: _Input) -> bool:
        if self.stale_after_s is None or self._now_mono is None or inp.value is None:
            return False
        return self._now_mono - inp.mono > self.stale_after_s

    def update(self, reading: Reading) -> list[dict]:
        """Take one reading; return the hazard events it causes (empty for a tag of no unit).

        An event is emitted when a unit's live grade, colour or uncertain flag changes (see
        :meth:`_event` for the dict shape). ts of the event: the reading's sample time.
        """
        return self.update_many([reading])

    def update_many(self, readings: list[Reading]) -> list[dict]:
        """Take the readings of one poll (one consistent snapshot of a device) and re-evaluate each
        affected unit once, so that a level and its temperature read together do not produce an
        intermediate event. Events as :meth:`update`; ts: the latest sample time of the unit's readings.
        Readings of tags of no unit are ignored."""
        touched: dict[str, float] = {}
        for reading in readings:
            names = self._by_tag.get(reading.tag)
            if not names:
                continue
            v = _num(reading) if reading.usable else None
            reason = reading.reason or ("bad quality" if reading.quality is Quality.BAD else
                                        None if v is not None else f"not a number ({reading.value!r})")
            self._inputs[reading.tag] = _Input(value=v, unit=reading.unit or "", quality=reading.quality,
                                               reason=reason, mono=reading.mono, ts=reading.ts)
            if self._now_mono is None or reading.mono > self._now_mono:
                self._now_mono = reading.mono
            for n in names:
                touched[n] = max(touched.get(n, reading.ts), reading.ts)
        events: list[dict] = []
        for n in sorted(touched):
            events += self._reevaluate([self._units[n]], touched[n])
        return events

    def tick(self, now_mono: float) -> list[dict]:
        """Re-check staleness at ``now_mono`` (time.monotonic()); returns events like update()."""
        self._now_mono = now_mono
        return self._reevaluate(list(self._units.values()), self._clock())

    def update_alarm_state(self, unit: str, level2_active: bool | None = None,
                           tripped: bool | None = None) -> list[dict]:
        """Set the live alarm state of ``unit``: an active level-2 gas alarm (GB/T 50493-2019 5.5.2) and/or
        an active interlock trip in it (None leaves a flag as it is). Returns colour-change events.

        Raises KeyError (one line) for an unknown unit.
        """
        u = self._units.get(unit)
        if u is None:
            raise KeyError(f"hazard: unknown unit {unit!r}")
        if level2_active is not None:
            u.level2_active = bool(level2_active)
        if tripped is not None:
            u.tripped = bool(tripped)
        return self._reevaluate([u], self._clock())

    def _reevaluate(self, units: list[_Unit], ts: float) -> list[dict]:
        events = []
        for u in units:
            before = (u.result.grade, u.colour, u.uncertain, u.result.major_hazard)
            u.evaluate(self._inputs, self._stale)
            after = (u.result.grade, u.colour, u.uncertain, u.result.major_hazard)
            if before != after:
                events.append(self._event(u, before, ts))
        return events

    @staticmethod
    def _event(u: _Unit, before: tuple, ts: float) -> dict:
        """{"type": "hazard", "unit", "from_grade", "to_grade", "from_colour", "to_colour", "S", "R",
        "major_hazard", "design_grade", "uncertain", "reasons", "changes" (list of "grade", "colour",
        "uncertain", "major_hazard"), "level2_active", "tripped", "ts" (RFC 3339 UTC)}."""
        r = u.result
        changes = [k for k, a, b in zip(("grade", "colour", "uncertain", "major_hazard"), before,
                                        (r.grade, u.colour, u.uncertain, r.major_hazard)) if a != b]
        return {"type": "hazard", "unit": u.name, "from_grade": before[0], "to_grade": r.grade,
                "from_colour": before[1], "to_colour": u.colour, "S": round(r.S, 6), "R": round(r.R, 6),
                "major_hazard": r.major_hazard, "design_grade": u.design.grade, "uncertain": u.uncertain,
                "reasons": list(u.reasons), "changes": changes, "level2_active": u.level2_active,
                "tripped": u.tripped, "ts": rfc3339(ts)}

    def status(self) -> list[dict]:
        """Per unit: unit, S, R, alpha, major_hazard, grade (live), design_grade, design_S, design_R, colour,
        uncertain, reasons, level2_active, tripped, unverified (substance ids with unconfirmed Q/beta),
        tanks (name, tag, substance, q_t, basis, uncertain, design_q_t), fixed {substance: t}."""
        return [u.status() for u in self._units.values()]


_GEOMETRY_TYPES = {"vertical_cylinder": VerticalCylinder, "horizontal_cylinder": HorizontalCylinder,
                   "sphere": Sphere}


def _keys(where: str, d: Any, allowed: set[str], required: set[str]) -> dict:
    if not isinstance(d, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(d).__name__}")
    unknown = set(d) - allowed
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}")
    missing = required - set(d)
    if missing:
        raise ValueError(f"{where}: missing key(s) {', '.join(sorted(missing))}")
    return d


def _geometry_from_dict(where: str, g: Any, base_dir: Path | None) -> Geometry:
    g = dict(_keys(where, g, {"type", "diameter_m", "height_m", "length_m", "head_depth_m", "points", "csv"},
                   {"type"}))
    kind = g.pop("type")
    try:
        if kind == "strapping_table":
            if ("csv" in g) == ("points" in g):
                raise ValueError("give exactly one of csv or points")
            if "csv" in g:
                path = Path(g["csv"])
                return StrappingTable.from_csv(path if path.is_absolute() or base_dir is None else base_dir / path)
            return StrappingTable(tuple(tuple(p) for p in g["points"]))
        if kind not in _GEOMETRY_TYPES:
            raise ValueError(f"type {kind!r} not one of {', '.join([*_GEOMETRY_TYPES, 'strapping_table'])}")
        return _GEOMETRY_TYPES[kind](**g)
    except (TypeError, ValueError, OSError) as e:
        raise ValueError(f"{where}: {e}") from None


def unit_from_dict(d: dict, where: str = "hazard.units[0]", base_dir: Path | str | None = None) -> UnitSpec:
    """Build a :class:`UnitSpec` from its config mapping (YAML), e.g.::

        name: chlorine-store            # required
        people_500m: 35                 # required, people within 500 m outside the boundary
        major_hazard_code: H01          # optional, for point codes
        colour_basis: worst             # worst | design | live
        colour_map: {grades: {1: red, 2: orange, 3: yellow, 4: blue}, not_major: blue,
                     level2_alarm: raise, trip: raise}      # none | raise | red
        fixed: {苯: 30}                 # tonnes without a live tag
        alarm_tags: [GD1.gas, GD2.gas]  # detectors in the unit: their level-2 alarms / trips count
        overrides: {benzene: {Q_t: 50, beta: 2}}           # plant hazard study
        tanks:
          - tag_level: TK1.LT
            substance: 液氯
            geometry: {type: horizontal_cylinder, diameter_m: 1.6, length_m: 5, head_depth_m: 0.4}
            #  {type: vertical_cylinder, diameter_m, height_m} | {type: sphere, diameter_m}
            #  {type: strapping_table, csv: tables/tk1.csv} | {type: strapping_table, points: [[0, 0], [1, 80]]}
            density_t_m3: 1.41          # or density_table: [[0, 1.47], [20, 1.41]]  (degC, t/m3)
            tag_temperature: TK1.TT
            max_fill: 0.85
        vessels:
          - {tag_pressure: V1.PT, substance: hydrogen, volume_m3: 10, molar_mass_kg_kmol: 2.016,
             design_pressure: 2.5, pressure_unit: MPa}

    where: the config path used in error messages; base_dir: directory a relative strapping-table csv
    path is resolved against. Raises ValueError "where: problem" (one line). Substance names are checked
    when the HazardEngine is built.
    """
    base = Path(base_dir) if base_dir is not None else None
    d = _keys(where, d, {"name", "people_500m", "major_hazard_code", "colour_basis", "colour_map", "fixed",
                         "overrides", "tanks", "vessels", "alarm_tags"}, {"name", "people_500m"})
    tanks = []
    for i, t in enumerate(d.get("tanks") or []):
        w = f"{where}.tanks[{i}]"
        t = _keys(w, t, {"tag_level", "substance", "geometry", "density_t_m3", "density_table", "tag_temperature",
                         "name", "max_fill"}, {"tag_level", "substance", "geometry"})
        if ("density_t_m3" in t) == ("density_table" in t):
            raise ValueError(f"{w}: give exactly one of density_t_m3 or density_table")
        try:
            dens = DensityTable(tuple(tuple(p) for p in t["density_table"])) if "density_table" in t \
                else float(t["density_t_m3"])
        except (TypeError, ValueError) as e:
            raise ValueError(f"{w}: density: {e}") from None
        tanks.append(TankSpec(tag_level=str(t["tag_level"]), substance=str(t["substance"]),
                              geometry=_geometry_from_dict(f"{w}.geometry", t["geometry"], base),
                              density_t_m3=dens, tag_temperature=t.get("tag_temperature"), name=t.get("name"),
                              max_fill=t.get("max_fill", 1.0)))
    vessels = []
    vkeys = {f.name for f in VesselSpec.__dataclass_fields__.values()}
    for i, v in enumerate(d.get("vessels") or []):
        w = f"{where}.vessels[{i}]"
        v = _keys(w, v, vkeys, {"tag_pressure", "substance", "volume_m3", "molar_mass_kg_kmol", "design_pressure"})
        vessels.append(VesselSpec(**v))
        if not isinstance(v.get("tag_pressure"), str) or not isinstance(v.get("substance"), str):
            raise ValueError(f"{w}: tag_pressure and substance must be text")
    people = d["people_500m"]
    if isinstance(people, bool) or not isinstance(people, int) or people < 0:
        raise ValueError(f"{where}.people_500m: must be a whole number >= 0, got {people!r}")
    alarm_tags = d.get("alarm_tags") or []
    if not isinstance(alarm_tags, list) or not all(isinstance(t, str) and t for t in alarm_tags):
        raise ValueError(f"{where}.alarm_tags: must be a list of tag names")
    return UnitSpec(name=str(d["name"]), people_500m=people, tanks=tanks, vessels=vessels,
                    fixed=dict(d.get("fixed") or {}), overrides=dict(d.get("overrides") or {}),
                    colour_map=d.get("colour_map"), colour_basis=d.get("colour_basis", "worst"),
                    major_hazard_code=d.get("major_hazard_code"), alarm_tags=list(alarm_tags))


__all__ = ["HazardEngine", "TankSpec", "UnitSpec", "VesselSpec", "unit_from_dict"]
