"""Major-hazard identification and grading per unit (GB 18218-2018), with the live inventory beside it.

:class:`HazardEngine` keeps, per unit (a diked tank group or a production unit, GB 18218-2018 3.x "unit";
docs/domain.md, Installation units):

- the **grade**: S, R, major_hazard and grade 1..4 from the DESIGN maximum quantity of every tank,
  vessel and store. GB 18218-2018 4.2.2: "危险化学品储罐以及其他容器、设备或仓储区的危险化学品的实际存在量
  按设计最大量确定" (docs/domain.md, Quantity q: the design maximum). The design quantity comes from the
  configuration alone (tank capacity x max_fill x highest density; vessel at design pressure and the
  coldest design temperature; fixed quantities), so the grade is constant while the gateway runs. It
  changes only when the design basis (the config) changes: :func:`basis_events` compares two engines,
  and the gateway records each difference as an event at a reload. A level change is never a grade
  change;
- the **current inventory** (S_live, R_live): the same formulas on the live quantities (level ->
  volume -> tonnes), shown beside the grade and never called a grade;
- the risk **colour**: from the design grade through the unit's :class:`~gateway.hazard.grading.ColourMap`,
  raised by the live alarm state (:meth:`HazardEngine.update_alarm_state`). The mapping is the
  project's convention, not a standard (docs/domain.md, Risk colours): every status and event says
  ``colour_source: "gateway-derived"``, unless the unit carries the enterprise's own assessed risk
  colour (``assessed_risk``), which then replaces it and is named as the source;

It is pure, in memory, and never touches the disk or the network (docs/design.md "two paths").

Live quantities:

- liquid tank (:class:`TankSpec`): level -> volume (gateway.hazard.volume geometry or strapping table)
  x density (constant, or a temperature table fed by ``tag_temperature``). A tank with redundant level
  instruments (``tag_level`` a list) counts the HIGHER of the usable levels; a bad or stale one makes
  the figure uncertain and never lowers it; all bad: the upper bound;
- gas pressure vessel (:class:`VesselSpec`): ideal gas with a compressibility factor,
  q = P_abs V M / (Z R T), R = 8.314462618 kJ/(kmol K) (P in kPa, V in m3, M in kg/kmol, T in K -> kg);
- fixed quantities (:attr:`UnitSpec.fixed`, tonnes): warehouses, pipework, what has no live tag.

Conservative rule for doubtful inputs (documented choice): a tank or vessel whose level / pressure is
missing (no reading yet), BAD, not numeric, outside the geometry's range, stale (older than
``stale_after_s``) or in an unknown engineering unit counts at its UPPER BOUND (tank full at the
highest density; vessel at design pressure and the coldest design temperature), and the inventory is
flagged ``inventory_uncertain``. It is never silently lower than the truth. A reading of quality
UNCERTAIN is used as it is and also flags it. An unknown temperature for a density table uses the
table's highest density (uncertain); a temperature outside the table uses the nearest row (uncertain).

Substances (GB 18218-2018 4.2; docs/domain.md, Critical quantity Q): a tank names a table-1 substance
or a table-2 category (``substance:``), or lists several table-2 categories (``categories:``) for a
chemical with several hazards, which takes the LOWEST Q among them. A mixture (``mixture:``) of the same
hazard class as its pure substance counts as that substance, on the whole mixture mass
(``same_class``); otherwise it is classified by its own class (``own_class``, with ``categories:``).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Callable

from gateway.hazard import substances as subs
from gateway.hazard.grading import COLOURS, ColourMap, Result, evaluate
from gateway.hazard.volume import DensityTable, Geometry, HorizontalCylinder, Sphere, StrappingTable, \
    VerticalCylinder, level_to_m
from gateway.model import Quality, Reading, rfc3339

#: what the reported S, R and grade are computed on
BASIS = "design maximum quantity (GB 18218-2018 4.2.2)"
#: the risk colour is the project's mapping, not a standard's (docs/domain.md, Risk colours)
COLOUR_SOURCE = "gateway-derived"


R_KJ_KMOL_K = 8.314462618
P_ATM_KPA = 101.325
#: pressure units a hazard input may carry, and their factor to kPa (gateway.config checks tag units against it)
PRESSURE_KPA = {"Pa": 0.001, "kPa": 1.0, "MPa": 1000.0, "bar": 100.0}
#: temperature units a hazard input may carry (degrees Celsius; K is converted)
TEMP_UNITS = {"", "C", "degC", "°C", "℃", "K"}
_GEOMETRIES = (VerticalCylinder, HorizontalCylinder, Sphere, StrappingTable)


@dataclass
class TankSpec:
    """A liquid (or liquefied-gas) tank in a unit.

    tag_level: level tag (Reading unit "m", "cm", "mm" or "%" of the geometry's max level), or a list of
    the tags of redundant level instruments on the same tank (the higher usable one counts).
    substance: Chinese name, English name, CAS or category code (GB 18218-2018 tables 1/2); "" when
    ``categories`` is given. categories: table-2 codes of a chemical not in table 1 with several hazards
    (lowest Q, GB 18218-2018 4.2). mixture: None, "same_class" (counts as ``substance``, whole mass) or
    "own_class" (classified by ``categories``), GB 18218-2018 mixture rule.
    geometry: VerticalCylinder | HorizontalCylinder | Sphere | StrappingTable.
    density_t_m3: constant density (t/m3) or a DensityTable (needs tag_temperature, degC or K).
    tag_temperature: liquid temperature tag, or None. name: display name (default: tag_level).
    max_fill: the design fill limit as a fraction of capacity (e.g. 0.85 for LPG), for the design quantity.
    """

    tag_level: str | list[str]
    substance: str
    geometry: Geometry
    density_t_m3: float | DensityTable
    tag_temperature: str | None = None
    name: str | None = None
    max_fill: float = 1.0
    categories: tuple[str, ...] = ()
    mixture: str | None = None

    @property
    def level_tags(self) -> list[str]:
        """The level tags of this tank (one, or the redundant instruments)."""
        return [self.tag_level] if isinstance(self.tag_level, str) else list(self.tag_level)


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
    categories: tuple[str, ...] = ()
    mixture: str | None = None


@dataclass
class UnitSpec:
    """A GB 18218-2018 unit: a production unit or a storage unit (each diked tank group is its own unit).

    name: unit name. people_500m: people within 500 m outside the boundary (-> alpha).
    tanks / vessels: live inventories. fixed: {substance name: tonnes} without a live tag.
    overrides: {substance name: {"Q_t": t, "beta": b}} from the plant's hazard study.
    colour_map: ColourMap (or its config dict), applied to the design grade.
    assessed_risk: {"colour": red|orange|yellow|blue, "source": "the assessment it comes from"}: the
    enterprise's own risk grading (风险分级), which replaces the grade's colour (docs/domain.md, Risk
    colours); the live alarm state still raises it. None: the gateway-derived colour.
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
    assessed_risk: dict | None = None
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
    if inp.value is None or inp.unit.strip() not in TEMP_UNITS:
        return None
    return inp.value - 273.15 if inp.unit.strip() == "K" else inp.value


class _Item:
    """One tank or vessel of a unit at run time."""

    def __init__(self, unit: str, spec: TankSpec | VesselSpec, sub: subs.Substance):
        self.spec = spec
        self.sub = sub
        self.is_tank = isinstance(spec, TankSpec)
        self.name = spec.name or (spec.level_tags[0] if self.is_tank else spec.tag_pressure)
        where = f"unit {unit}, {'tank' if self.is_tank else 'vessel'} {self.name}"
        if self.is_tank:
            lt = spec.level_tags
            if not lt or not all(isinstance(x, str) and x for x in lt) or len(set(lt)) != len(lt):
                raise ValueError(f"{where}: tag_level must be a tag name or a list of distinct tag names")
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
            if spec.pressure_unit not in PRESSURE_KPA:
                raise ValueError(f"{where}: pressure_unit must be one of {', '.join(PRESSURE_KPA)}")
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
    def main_tags(self) -> list[str]:
        """The level tag(s) of a tank, the pressure tag of a vessel."""
        return self.spec.level_tags if self.is_tank else [self.spec.tag_pressure]

    @property
    def tags(self) -> list[tuple[str, str]]:
        s = self.spec
        kind = "level" if self.is_tank else "pressure"
        return [(kind, tag) for tag in self.main_tags] + \
            ([("temperature", s.tag_temperature)] if s.tag_temperature else [])

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
        p_kpa = p * PRESSURE_KPA[unit] + (0.0 if s.absolute else P_ATM_KPA)
        if p_kpa <= 0:
            return 0.0
        kg = p_kpa * s.volume_m3 * s.molar_mass_kg_kmol / (s.z * R_KJ_KMOL_K * (t_c + 273.15))
        return kg / 1000.0

    def live_q(self, inputs: dict[str, _Input], stale: Callable[[_Input], bool]) -> tuple[float, str, list[str]]:
        """(q tonnes, basis "measured" | "upper_bound", reasons why uncertain).

        Redundant level instruments: each usable level gives a quantity and the HIGHER counts; an
        unusable one adds its reason (uncertain) but never lowers the figure; none usable: the upper
        bound (tank full at the highest density)."""
        s = self.spec
        reasons: list[str] = []
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
        measured: list[float] = []
        for tag in self.main_tags:
            q, why = self._q_of(tag, inputs[tag], stale, t_c, reasons)
            if q is None:
                reasons.append(why)
            else:
                measured.append(q)
        if not measured:
            return self.upper_q(), "upper_bound", reasons
        return max(measured), "measured", reasons

    def _q_of(self, tag: str, inp: _Input, stale: Callable[[_Input], bool], t_c: float | None,
              reasons: list[str]) -> tuple[float | None, str]:
        """(tonnes from one level / pressure input, or None and why it is unusable)."""
        s = self.spec
        if inp.value is None:
            return None, f"{tag}: {inp.reason or 'bad'}"
        if stale(inp):
            return None, f"{tag}: stale"
        if inp.quality is Quality.UNCERTAIN:
            reasons.append(f"{tag}: quality uncertain ({inp.reason or 'no reason'})")
        if self.is_tank:
            geo = s.geometry
            try:
                level = level_to_m(inp.value, inp.unit, geo.max_level_m)
                vol = geo.volume_m3(level)
            except ValueError as e:
                return None, f"{tag}: {e}"
            d = s.density_t_m3
            if isinstance(d, DensityTable):
                if t_c is None:
                    rho = d.max_density_t_m3
                else:
                    rho, ok = d.density_t_m3(t_c)
                    if not ok and not any("outside the density table" in r for r in reasons):
                        reasons.append(f"{s.tag_temperature}: {t_c} degC outside the density table")
            else:
                rho = float(d)
            return vol * rho, ""
        unit = inp.unit.strip() if inp.unit.strip() in PRESSURE_KPA else s.pressure_unit
        if inp.unit.strip() and inp.unit.strip() not in PRESSURE_KPA:
            return None, f"{tag}: pressure unit {inp.unit!r} unknown"
        if t_c is None:
            t_c = s.min_temperature_c if s.tag_temperature else s.temperature_c
        return self._gas_t(inp.value, unit, t_c), ""


MIXTURE_RULES = ("same_class", "own_class")


def resolve_substance(table: subs.SubstanceTable, name: str, categories: tuple[str, ...] = (), mixture: str | None = None, *,
                      where: str) -> subs.Substance:
    """The substance a tank, vessel or fixed quantity counts as (GB 18218-2018 4.2; docs/domain.md,
    Critical quantity Q).

    - ``name`` alone: the table-1 substance or table-2 category it names;
    - ``categories`` (table-2 codes) without a table-1 name: a chemical with several hazards takes the
      lowest Q among them (SubstanceTable.by_categories);
    - ``mixture="same_class"``: a mixture of the same hazard class as its pure substance ``name`` counts
      as that substance, computed on the whole mixture mass;
    - ``mixture="own_class"``: a mixture of another class is classified by its own ``categories``.

    Raises ValueError "where: problem" (one line) for an unknown name or code, a mixture rule other
    than same_class / own_class, or a combination the rule does not allow."""
    if mixture is not None and mixture not in MIXTURE_RULES:
        raise ValueError(f"{where}: mixture must be one of {', '.join(MIXTURE_RULES)}, got {mixture!r}")
    try:
        if mixture == "own_class" or (categories and not name):
            if not categories:
                raise ValueError("a mixture of its own hazard class needs categories: [table-2 codes]")
            return table.by_categories(list(categories))
        if categories:
            raise ValueError("give either substance (a table-1 name or one category) or categories, not both")
        if not name:
            raise ValueError("give substance or categories")
        return table.find(name)
    except LookupError as e:
        raise ValueError(f"{where}: {e}") from None
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


class _Unit:
    def __init__(self, spec: UnitSpec, table: subs.SubstanceTable):
        self.spec = spec
        self.name = spec.name
        try:
            self.colour_map = spec.colour_map if isinstance(spec.colour_map, ColourMap) \
                else ColourMap.from_dict(spec.colour_map)
        except (TypeError, ValueError) as e:
            raise ValueError(f"unit {spec.name}: {e}") from None
        self.assessed: str | None = None
        self.colour_source = COLOUR_SOURCE
        if spec.assessed_risk is not None:
            a = spec.assessed_risk
            if not isinstance(a, dict) or set(a) != {"colour", "source"} or a["colour"] not in COLOURS \
                    or not isinstance(a["source"], str) or not a["source"].strip():
                raise ValueError(f"unit {spec.name}: assessed_risk needs colour (one of {', '.join(COLOURS)}) and "
                                 f"source (the risk assessment it comes from)")
            self.assessed = a["colour"]
            self.colour_source = f"enterprise assessment: {a['source'].strip()}"
        over: dict[str, dict] = {}
        for name, o in (spec.overrides or {}).items():
            try:
                base = table.find(name)
                over[base.id] = dict(o)
                subs.custom(base, Q_t=o.get("Q_t"), beta=o.get("beta"))
            except (LookupError, ValueError) as e:
                raise ValueError(f"unit {spec.name}, override {name}: {e}") from None

        def resolve(s: TankSpec | VesselSpec | None, name: str, where: str) -> subs.Substance:
            base = resolve_substance(table, name, tuple(getattr(s, "categories", ()) or ()),
                                     getattr(s, "mixture", None), where=where)
            o = over.get(base.id)
            return subs.custom(base, Q_t=o.get("Q_t"), beta=o.get("beta")) if o else base

        self.items = [_Item(spec.name, t, resolve(t, t.substance, f"unit {spec.name}, tank {t.name or t.level_tags[0]}"))
                      for t in spec.tanks]
        self.items += [_Item(spec.name, v, resolve(v, v.substance, f"unit {spec.name}, vessel {v.name or v.tag_pressure}"))
                       for v in spec.vessels]
        self.fixed: list[tuple[subs.Substance, float]] = []
        for name, q in (spec.fixed or {}).items():
            if not (isinstance(q, (int, float)) and math.isfinite(q) and q >= 0):
                raise ValueError(f"unit {spec.name}, fixed {name}: quantity must be tonnes >= 0, got {q!r}")
            self.fixed.append((resolve(None, name, f"unit {spec.name}, fixed {name}"), float(q)))
        try:  # the grade: design maximum quantities (GB 18218-2018 4.2.2); alpha checked here, one line
            self.design: Result = evaluate(spec.people_500m, [(i.sub, i.design_q()) for i in self.items] + self.fixed)
        except ValueError as e:
            raise ValueError(f"unit {spec.name}: {e}") from None
        self.level2_active = False
        self.tripped = False
        self.inventory: Result | None = None
        self.inventory_uncertain = True
        self.reasons: list[str] = []
        self.tank_status: list[dict] = []
        self.colour = ""

    def evaluate(self, inputs: dict[str, _Input], stale: Callable[[_Input], bool]) -> None:
        """Recompute the current inventory (S_live, R_live) and the colour; the grade does not move."""
        pairs = list(self.fixed)
        reasons: list[str] = []
        self.tank_status = []
        for it in self.items:
            q, basis, why = it.live_q(inputs, stale)
            pairs.append((it.sub, q))
            reasons += why
            self.tank_status.append({"name": it.name, "tag": it.main_tags[0], "tags": list(it.main_tags),
                                     "substance": it.sub.id, "design_q_t": it.design_q(),
                                     "inventory_q_t": q, "inventory_basis": basis, "inventory_uncertain": bool(why)})
        self.inventory = evaluate(self.spec.people_500m, pairs)
        self.inventory_uncertain = bool(reasons)
        self.reasons = reasons
        self.colour = self.colour_map.colour(self.design.grade, self.level2_active, self.tripped, base=self.assessed)

    def status(self) -> dict[str, Any]:
        d, live = self.design, self.inventory
        return {"unit": self.name, "basis": BASIS, "S": round(d.S, 6), "R": round(d.R, 6), "alpha": d.alpha,
                "major_hazard": d.major_hazard, "grade": d.grade,
                "colour": self.colour, "colour_source": self.colour_source,
                "S_live": round(live.S, 6), "R_live": round(live.R, 6),
                "inventory_uncertain": self.inventory_uncertain, "reasons": list(self.reasons),
                "level2_active": self.level2_active, "tripped": self.tripped,
                "unverified": d.unverified, "tanks": [dict(t) for t in self.tank_status],
                "fixed": {s.id: q for s, q in self.fixed}}


def basis_events(old: "HazardEngine | None", new: "HazardEngine", ts: float) -> list[dict]:
    """Events for a change of the design basis between two engines (a config reload): one per unit whose
    design S, R, grade or major_hazard differs, or that was added or removed. Shape: {"type": "hazard",
    "event": "design_basis_changed", "unit", "from_grade", "to_grade", "from_S", "S", "from_R", "R",
    "major_hazard", "colour", "colour_source", "changes" (of "grade", "S", "R", "major_hazard", "added",
    "removed"), "ts" (RFC 3339 UTC)}. ``old`` None: nothing to compare, no events."""
    if old is None:
        return []
    before = {u["unit"]: u for u in old.status()}
    after = {u["unit"]: u for u in new.status()}
    out = []
    for name in sorted(before.keys() | after.keys()):
        a, b = before.get(name), after.get(name)
        if a is None or b is None:
            changes = ["added" if a is None else "removed"]
        else:
            changes = [k for k in ("grade", "S", "R", "major_hazard") if a[k] != b[k]]
            if not changes:
                continue
        ref = b or {}
        out.append({"type": "hazard", "event": "design_basis_changed", "unit": name,
                    "from_grade": (a or {}).get("grade"), "to_grade": ref.get("grade"),
                    "from_S": (a or {}).get("S"), "S": ref.get("S"), "from_R": (a or {}).get("R"),
                    "R": ref.get("R"), "major_hazard": ref.get("major_hazard"), "colour": ref.get("colour"),
                    "colour_source": ref.get("colour_source", COLOUR_SOURCE), "changes": changes, "ts": rfc3339(ts)})
    return out


class HazardEngine:
    """Design S / R / grade, risk colour and current inventory (S_live / R_live) of every configured unit.

    units: list of UnitSpec. stale_after_s: a level / pressure / temperature reading older than this
    (monotonic seconds, from Reading.mono) counts as unknown (None: never stale). clock: wall clock for
    event timestamps of alarm-state changes (UTC epoch seconds). table: the substance table (default:
    the shipped GB 18218-2018 data).

    Raises ValueError (one line naming unit and tank) for a bad configuration: unknown substance (with
    close matches), bad geometry or density, duplicate unit name, a negative people count.
    The initial state (no readings yet) counts every tank full in the inventory (uncertain); it emits no
    event. Readings move only the inventory; the grade is the design grade (see the module docstring).
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

        A reading moves the inventory, never the grade, so it causes an event only when the colour
        changes (see :meth:`_event`); in practice that is the alarm state's doing. ts of the event: the
        reading's sample time.
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
            before = u.colour
            u.evaluate(self._inputs, self._stale)
            if before != u.colour:
                events.append(self._event(u, before, ts))
        return events

    @staticmethod
    def _event(u: _Unit, from_colour: str, ts: float) -> dict:
        """{"type": "hazard", "event": "colour_changed", "unit", "grade", "S", "R", "major_hazard" (the
        design figures, unchanged), "from_colour", "to_colour", "colour_source", "level2_active", "tripped",
        "S_live", "R_live", "inventory_uncertain", "changes": ["colour"], "ts" (RFC 3339 UTC)}."""
        d, live = u.design, u.inventory
        return {"type": "hazard", "event": "colour_changed", "unit": u.name, "grade": d.grade,
                "S": round(d.S, 6), "R": round(d.R, 6), "major_hazard": d.major_hazard,
                "from_colour": from_colour, "to_colour": u.colour, "colour_source": u.colour_source,
                "level2_active": u.level2_active, "tripped": u.tripped, "S_live": round(live.S, 6),
                "R_live": round(live.R, 6), "inventory_uncertain": u.inventory_uncertain,
                "changes": ["colour"], "ts": rfc3339(ts)}

    def status(self) -> list[dict]:
        """Per unit: unit, basis, S, R, alpha, major_hazard, grade (all on the design maximum quantity,
        GB 18218-2018 4.2.2), colour, colour_source ("gateway-derived"), S_live, R_live (current
        inventory, not a grade), inventory_uncertain, reasons, level2_active, tripped, unverified (substance
        ids with unconfirmed Q/beta), tanks (name, tag, tags, substance, design_q_t, inventory_q_t,
        inventory_basis "measured" | "upper_bound", inventory_uncertain), fixed {substance: t}."""
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


def _categories(where: str, d: dict) -> tuple[str, ...]:
    cats = d.get("categories") or []
    if not isinstance(cats, list) or not all(isinstance(c, str) and c for c in cats):
        raise ValueError(f"{where}.categories: must be a list of table-2 codes, e.g. [W2, J3]")
    if not cats and not d.get("substance"):
        raise ValueError(f"{where}: give substance (table-1 name or category code) or categories")
    return tuple(cats)


def unit_from_dict(d: dict, where: str = "hazard.units[0]", base_dir: Path | str | None = None) -> UnitSpec:
    """Build a :class:`UnitSpec` from its config mapping (YAML), e.g.::

        name: chlorine-store            # required
        people_500m: 35                 # required, people within 500 m outside the boundary
        major_hazard_code: H01          # optional, for point codes
        colour_map: {grades: {1: red, 2: orange, 3: yellow, 4: blue}, not_major: blue,
                     level2_alarm: raise, trip: raise}      # none | raise | red
        assessed_risk: {colour: orange, source: "2026 风险分级评估报告"}   # optional: replaces the derived colour
        fixed: {苯: 30}                 # tonnes without a live tag
        alarm_tags: [GD1.gas, GD2.gas]  # detectors in the unit: their level-2 alarms / trips count
        overrides: {benzene: {Q_t: 50, beta: 2}}           # plant hazard study
        tanks:
          - tag_level: TK1.LT           # or [TK1.LT1, TK1.LT2]: redundant instruments, the higher counts
            substance: 液氯              # or categories: [W2, J3] (not in table 1, several hazards: lowest Q)
            # mixture: same_class       # counts as the substance (whole mass) | own_class (with categories)
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
    if "colour_basis" in d:
        raise ValueError(f"{where}.colour_basis: removed: the grade and the colour are those of the design maximum "
                         f"quantity (GB 18218-2018 4.2.2); delete the key")
    d = _keys(where, d, {"name", "people_500m", "major_hazard_code", "colour_map", "assessed_risk", "fixed",
                         "overrides", "tanks", "vessels", "alarm_tags"}, {"name", "people_500m"})
    tanks = []
    for i, t in enumerate(d.get("tanks") or []):
        w = f"{where}.tanks[{i}]"
        t = _keys(w, t, {"tag_level", "substance", "categories", "mixture", "geometry", "density_t_m3",
                         "density_table", "tag_temperature", "name", "max_fill"}, {"tag_level", "geometry"})
        level = t["tag_level"]
        if not (isinstance(level, str) and level) and not (isinstance(level, list) and level
                                                            and all(isinstance(x, str) and x for x in level)):
            raise ValueError(f"{w}.tag_level: must be a tag name or a list of tag names")
        cats = _categories(w, t)
        if ("density_t_m3" in t) == ("density_table" in t):
            raise ValueError(f"{w}: give exactly one of density_t_m3 or density_table")
        try:
            dens = DensityTable(tuple(tuple(p) for p in t["density_table"])) if "density_table" in t \
                else float(t["density_t_m3"])
        except (TypeError, ValueError) as e:
            raise ValueError(f"{w}: density: {e}") from None
        tanks.append(TankSpec(tag_level=level if isinstance(level, str) else list(level),
                              substance=str(t.get("substance") or ""), categories=cats, mixture=t.get("mixture"),
                              geometry=_geometry_from_dict(f"{w}.geometry", t["geometry"], base),
                              density_t_m3=dens, tag_temperature=t.get("tag_temperature"), name=t.get("name"),
                              max_fill=t.get("max_fill", 1.0)))
    vessels = []
    vkeys = {f.name for f in VesselSpec.__dataclass_fields__.values()}
    for i, v in enumerate(d.get("vessels") or []):
        w = f"{where}.vessels[{i}]"
        v = dict(_keys(w, v, vkeys, {"tag_pressure", "volume_m3", "molar_mass_kg_kmol", "design_pressure"}))
        v["categories"] = _categories(w, v)
        v.setdefault("substance", "")
        if not isinstance(v.get("tag_pressure"), str) or not isinstance(v.get("substance"), str):
            raise ValueError(f"{w}: tag_pressure and substance must be text")
        vessels.append(VesselSpec(**v))
    people = d["people_500m"]
    if isinstance(people, bool) or not isinstance(people, int) or people < 0:
        raise ValueError(f"{where}.people_500m: must be a whole number >= 0, got {people!r}")
    alarm_tags = d.get("alarm_tags") or []
    if not isinstance(alarm_tags, list) or not all(isinstance(t, str) and t for t in alarm_tags):
        raise ValueError(f"{where}.alarm_tags: must be a list of tag names")
    return UnitSpec(name=str(d["name"]), people_500m=people, tanks=tanks, vessels=vessels,
                    fixed=dict(d.get("fixed") or {}), overrides=dict(d.get("overrides") or {}),
                    colour_map=d.get("colour_map"), assessed_risk=d.get("assessed_risk"), major_hazard_code=d.get("major_hazard_code"), alarm_tags=list(alarm_tags))


__all__ = ["BASIS", "COLOUR_SOURCE", "HazardEngine", "MIXTURE_RULES", "TankSpec", "UnitSpec", "VesselSpec",
           "basis_events", "resolve_substance", "unit_from_dict"]
