"""Gas detector set points (GB/T 50493-2019 clause 5.5.2): units, the OEL / IDLH basis, ppm conversion.

Pure functions and constants; no state. :func:`gas_setpoints` turns a tag's gas kind, unit and the
substance data of its config into the level 1 / level 2 set points **in the tag's own unit**, or
refuses (:class:`GasPresetError`, one line, naming the config key the problem is about). The alarm
engine's :func:`gateway.safety.alarms.gas_preset` wraps the result as LimitSpecs; ``check`` and the running
gateway use the same translation (gateway.config.tag_alarm_config). docs/alarm-presets.md explains
every preset with its clause and a worked example.

Rules and their sources (docs/domain.md, GB/T 50493-2019 and Units):

- ``combustible``, point detector (点型): level 1 25 %LEL, level 2 50 %LEL (5.5.2 items 1, 2). The
  set points are defined in %LEL, so the preset is refused on a tag in any other unit: on a %VOL
  tag, 25/50 %VOL is about 500-1000 %LEL of methane.
- ``combustible_open_path``, open-path (线型) detector: level 1 1 LEL·m, level 2 2 LEL·m (5.5.2 item 5);
  the tag must be in LEL·m.
- ``toxic``: level 1 100 %OEL, level 2 200 %OEL (5.5.2 item 3); where the detector's measuring range
  cannot reach 200 %OEL, level 1 5 %IDLH and level 2 10 %IDLH (5.5.2). The OEL (MAC, else PC-TWA,
  GBZ 2.1) and the IDLH are given in mg/m³. A tag in mg/m³ takes them as they are; a tag in ppm
  needs the gas's molar mass M: ppm = mg/m³ × 24.04 / M at 20 °C and 101.325 kPa (docs/domain.md,
  Units); a tag in %OEL or %IDLH takes 100/200 or 5/10 directly.
- ``oxygen`` (%VOL): over-oxygen 23.5 %VOL, under-oxygen 19.5 %VOL (5.5.2 item 4, "宜"). The standard
  does not call them level 1 / level 2; which limit kind, level and priority each one gets is the
  project's choice (:data:`DEFAULT_OXYGEN_OVER`, :data:`DEFAULT_OXYGEN_UNDER`), configurable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gateway.i18n import gettext as _

GAS_KINDS = ("combustible", "combustible_open_path", "toxic", "oxygen")
TOXIC_BASES = ("oel", "idlh")

#: GB/T 50493-2019 5.5.2 set points, each in the unit it is defined in
COMBUSTIBLE_L1_LEL = 25.0
COMBUSTIBLE_L2_LEL = 50.0
OPEN_PATH_L1_LELM = 1.0
OPEN_PATH_L2_LELM = 2.0
TOXIC_L1_OEL_PCT = 100.0
TOXIC_L2_OEL_PCT = 200.0
TOXIC_L1_IDLH_PCT = 5.0
TOXIC_L2_IDLH_PCT = 10.0
OXYGEN_HIGH_VOL = 23.5
OXYGEN_LOW_VOL = 19.5

#: molar volume of an ideal gas at 20 °C and 101.325 kPa, L/mol, as docs/domain.md (Units) uses it
#: (the exact ideal-gas figure is 24.06; the 0.1 % difference does not matter for set points)
MOLAR_VOLUME_L_MOL = 24.04

#: molar masses (g/mol) of common toxic gases, from the IUPAC standard atomic weights
#: (H 1.008, C 12.011, N 14.007, O 15.999, F 18.998, P 30.974, S 32.06, Cl 35.45, Br 79.904)
MOLAR_MASS_G_MOL: dict[str, float] = {
    "H2S": 34.08,     # hydrogen sulphide 硫化氢
    "NH3": 17.03,     # ammonia 氨
    "Cl2": 70.90,     # chlorine 氯
    "CO": 28.01,      # carbon monoxide 一氧化碳
    "SO2": 64.07,     # sulphur dioxide 二氧化硫 (S 32.065, the older atomic weight; 64.058 with 32.06)
    "HCN": 27.03,     # hydrogen cyanide 氰化氢
    "NO2": 46.01,     # nitrogen dioxide 二氧化氮
    "HCl": 36.46,     # hydrogen chloride 氯化氢
    "HF": 20.01,      # hydrogen fluoride 氟化氢
    "COCl2": 98.92,   # phosgene 光气 (碳酰氯)
    "PH3": 34.00,     # phosphine 磷化氢
    "C2H4O": 44.05,   # ethylene oxide 环氧乙烷
    "CH3Br": 94.94,   # methyl bromide 溴甲烷
    "C6H6": 78.11,    # benzene 苯
}
#: other names accepted for gas_name (matched case-insensitively, as the formulas are)
GAS_NAME_ALIASES: dict[str, str] = {
    "hydrogen sulphide": "H2S", "hydrogen sulfide": "H2S", "硫化氢": "H2S",
    "ammonia": "NH3", "氨": "NH3", "氨气": "NH3",
    "chlorine": "Cl2", "氯": "Cl2", "氯气": "Cl2",
    "carbon monoxide": "CO", "一氧化碳": "CO",
    "sulphur dioxide": "SO2", "sulfur dioxide": "SO2", "二氧化硫": "SO2",
    "hydrogen cyanide": "HCN", "氰化氢": "HCN",
    "nitrogen dioxide": "NO2", "二氧化氮": "NO2",
    "hydrogen chloride": "HCl", "氯化氢": "HCl",
    "hydrogen fluoride": "HF", "氟化氢": "HF",
    "phosgene": "COCl2", "光气": "COCl2", "碳酰氯": "COCl2",
    "phosphine": "PH3", "磷化氢": "PH3",
    "ethylene oxide": "C2H4O", "EO": "C2H4O", "环氧乙烷": "C2H4O", "氧化乙烯": "C2H4O",
    "methyl bromide": "CH3Br", "溴甲烷": "CH3Br",
    "benzene": "C6H6", "苯": "C6H6",
}

#: canonical unit names (what :func:`canonical_unit` returns)
LEL_PCT, LEL_M, OEL_PCT, IDLH_PCT, VOL_PCT, PPM, MG_M3 = "%LEL", "LEL·m", "%OEL", "%IDLH", "%VOL", "ppm", "mg/m3"
_UNIT_SPELLINGS = {
    "%lel": LEL_PCT, "lel%": LEL_PCT, "%lfl": LEL_PCT,
    "lel·m": LEL_M, "lel.m": LEL_M, "lel*m": LEL_M, "lelm": LEL_M, "lel-m": LEL_M, "lel×m": LEL_M,
    "%oel": OEL_PCT, "oel%": OEL_PCT,
    "%idlh": IDLH_PCT, "idlh%": IDLH_PCT,
    "%vol": VOL_PCT, "vol%": VOL_PCT, "%v/v": VOL_PCT, "%(v/v)": VOL_PCT,
    "ppm": PPM, "ppmv": PPM,
    "mg/m3": MG_M3, "mg/m^3": MG_M3, "mg/m³": MG_M3, "mg·m-3": MG_M3, "mg.m-3": MG_M3,
}


def canonical_unit(unit: str | None) -> str | None:
    """The canonical name of a gas concentration unit, or None when it is not one.

    Spaces and case do not matter, and both orders of the percent sign are accepted: "%LEL", "% LEL",
    "%lel", "LEL%" -> "%LEL"; "LEL.m", "LEL*m", "LEL·m", "LELm" -> "LEL·m"; "%VOL", "%vol", "% VOL",
    "vol%" -> "%VOL"; "mg/m3", "mg/m³" -> "mg/m3"; also "%OEL", "%IDLH", "ppm" (docs/domain.md, Units)."""
    if unit is None:
        return None
    key = "".join(str(unit).split()).lower()
    return _UNIT_SPELLINGS.get(key)


def molar_mass(gas_name: str) -> float:
    """Molar mass (g/mol) of a gas named by its formula (H2S, NH3 ...) or an alias (ammonia, 硫化氢 ...),
    case-insensitive. Raises ValueError (one line listing the known formulas) for another name."""
    name = str(gas_name).strip()
    by_lower = {k.lower(): k for k in MOLAR_MASS_G_MOL} | {k.lower(): v for k, v in GAS_NAME_ALIASES.items()}
    formula = by_lower.get(name.lower())
    if formula is None:
        raise ValueError(_("gas_name {name} is not in the built-in table ({known}); give molar_mass_g_mol instead")
                         .format(name=repr(gas_name), known=", ".join(MOLAR_MASS_G_MOL)))
    return MOLAR_MASS_G_MOL[formula]


def mg_m3_to_ppm(mg_m3: float, molar_mass_g_mol: float) -> float:
    """ppm = mg/m³ × 24.04 / M at 20 °C and 101.325 kPa (docs/domain.md, Units)."""
    return mg_m3 * MOLAR_VOLUME_L_MOL / molar_mass_g_mol


def ppm_to_mg_m3(ppm: float, molar_mass_g_mol: float) -> float:
    """mg/m³ = ppm × M / 24.04 at 20 °C and 101.325 kPa (docs/domain.md, Units)."""
    return ppm * molar_mass_g_mol / MOLAR_VOLUME_L_MOL


class GasPresetError(ValueError):
    """A gas preset that cannot be applied to a tag. str() is one line; ``key`` is the ``alarms:`` key the
    problem is about ("gas", "oel", "oel_mg_m3", "idlh_mg_m3", "toxic_basis", "gas_name",
    "molar_mass_g_mol"), so ``check`` can point at it."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class OxygenLimit:
    """How one of the two oxygen set points of GB/T 50493-2019 5.5.2 item 4 is raised: the limit kind
    (H or HH for over-oxygen, L or LL for under-oxygen), the gas alarm level (1, 2 or None) and the
    priority (1 highest .. 4). Raises ValueError (one line) otherwise."""

    kind: str
    level: int | None
    priority: int

    def check(self, which: str) -> None:
        kinds = ("H", "HH") if which == "over" else ("L", "LL")
        if self.kind not in kinds:
            raise ValueError(_("oxygen {which}: kind must be {kinds}, not {kind}").format(
                which=which, kinds=" or ".join(kinds), kind=repr(self.kind)))
        if self.level not in (None, 1, 2):
            raise ValueError(_("oxygen {which}: level must be 1, 2 or null, not {level}").format(
                which=which, level=repr(self.level)))
        if self.priority not in (1, 2, 3, 4):
            raise ValueError(_("oxygen {which}: priority must be 1 (highest) .. 4, not {priority}").format(
                which=which, priority=repr(self.priority)))


#: The project's choice (GB/T 50493-2019 5.5.2 item 4 names no levels; docs/alarm-presets.md, Oxygen):
#: under-oxygen (19.5 %VOL, an asphyxiation hazard, usually an inert-gas leak) is a level 2 alarm of
#: priority 1; over-oxygen (23.5 %VOL, enrichment raising the fire hazard) a level 1 alarm of priority 2.
DEFAULT_OXYGEN_OVER = OxygenLimit("H", 1, 2)
DEFAULT_OXYGEN_UNDER = OxygenLimit("L", 2, 1)


@dataclass(frozen=True)
class PresetLimit:
    """One preset set point in the tag's unit: kind (H/HH/L/LL), setpoint, gas level (1/2/None),
    priority, and ``basis`` saying what it is in the standard's terms (e.g. "100 %OEL")."""

    kind: str
    setpoint: float
    level: int | None
    priority: int
    basis: str


@dataclass(frozen=True)
class GasPreset:
    """The GB/T 50493-2019 5.5.2 set points of one tag: gas kind, the tag's canonical unit, the limits,
    the basis ("LEL", "LEL·m", "OEL", "IDLH", "oxygen") and ``notes``: one-line facts ``check`` shows as
    warnings (for example that the IDLH fallback was used, and why)."""

    gas: str
    unit: str
    basis: str
    limits: tuple[PresetLimit, ...]
    notes: tuple[str, ...] = ()


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def _unit_hint(raw: str) -> str:
    return _("unit '{unit}'").format(unit=raw) if raw.strip() else _("no unit")


def gas_setpoints(gas: str, unit: str | None, *, oel_mg_m3: float | None = None, idlh_mg_m3: float | None = None,
                  molar_mass_g_mol: float | None = None, gas_name: str | None = None,
                  toxic_basis: str | None = None, range_hi: float | None = None,
                  oxygen_over: OxygenLimit = DEFAULT_OXYGEN_OVER,
                  oxygen_under: OxygenLimit = DEFAULT_OXYGEN_UNDER) -> GasPreset:
    """The GB/T 50493-2019 5.5.2 set points of a ``gas`` detector tag in ``unit`` (see the module docstring).

    Level 2 limits get priority 1 and level 1 limits priority 2 (GB/T 50493: level 2 comes first),
    except oxygen, whose kinds, levels and priorities are ``oxygen_over`` / ``oxygen_under``.

    toxic: ``oel_mg_m3`` (MAC, else PC-TWA) and ``idlh_mg_m3`` in mg/m³; ``molar_mass_g_mol`` or
    ``gas_name`` (:func:`molar_mass`) for a ppm tag; ``toxic_basis`` "oel", "idlh" or None (automatic:
    the OEL basis, unless ``range_hi``, the upper end of the tag's measuring range in its unit, is below
    200 %OEL: then the IDLH basis when the IDLH is known, else refused).

    Raises GasPresetError (one line, with the config key it is about) when the preset does not fit the
    tag: another unit than the one the set points are defined in, a toxic gas without the data to
    convert its OEL to the tag's unit, an unknown gas name, or a range that cannot reach level 2.
    """
    raw = "" if unit is None else str(unit)
    u = canonical_unit(raw)
    if gas == "combustible":
        if u != LEL_PCT:
            hint = {VOL_PCT: _(" (25 %VOL is about 500 %LEL of methane, whose LEL is 5 %VOL)"),
                    LEL_M: _(": an open-path detector takes gas: combustible_open_path (1 / 2 LEL·m)")}.get(u or "", "")
            raise GasPresetError("gas", _("gas: combustible sets 25 / 50 %LEL (GB/T 50493-2019 5.5.2) and needs a "
                                          "tag in %LEL; this tag has {unit}{hint}").format(unit=_unit_hint(raw),
                                                                                           hint=hint))
        return GasPreset(gas, u, "LEL", (
            PresetLimit("H", COMBUSTIBLE_L1_LEL, 1, 2, f"{_fmt(COMBUSTIBLE_L1_LEL)} %LEL"),
            PresetLimit("HH", COMBUSTIBLE_L2_LEL, 2, 1, f"{_fmt(COMBUSTIBLE_L2_LEL)} %LEL")))
    if gas == "combustible_open_path":
        if u != LEL_M:
            hint = _(" (a point detector in %LEL takes gas: combustible)") if u == LEL_PCT else ""
            raise GasPresetError("gas", _("gas: combustible_open_path sets 1 / 2 LEL·m (GB/T 50493-2019 5.5.2, "
                                          "open-path detectors) and needs a tag in LEL·m; this tag has {unit}{hint}")
                                 .format(unit=_unit_hint(raw), hint=hint))
        return GasPreset(gas, u, "LEL·m", (
            PresetLimit("H", OPEN_PATH_L1_LELM, 1, 2, f"{_fmt(OPEN_PATH_L1_LELM)} LEL·m"),
            PresetLimit("HH", OPEN_PATH_L2_LELM, 2, 1, f"{_fmt(OPEN_PATH_L2_LELM)} LEL·m")))
    if gas == "oxygen":
        if u != VOL_PCT:
            raise GasPresetError("gas", _("gas: oxygen sets 23.5 / 19.5 %VOL (GB/T 50493-2019 5.5.2) and needs a "
                                          "tag in %VOL; this tag has {unit}").format(unit=_unit_hint(raw)))
        oxygen_over.check("over")
        oxygen_under.check("under")
        return GasPreset(gas, u, "oxygen", (
            PresetLimit(oxygen_over.kind, OXYGEN_HIGH_VOL, oxygen_over.level, oxygen_over.priority,
                        f"over-oxygen {_fmt(OXYGEN_HIGH_VOL)} %VOL"),
            PresetLimit(oxygen_under.kind, OXYGEN_LOW_VOL, oxygen_under.level, oxygen_under.priority,
                        f"under-oxygen {_fmt(OXYGEN_LOW_VOL)} %VOL")))
    if gas == "toxic":
        return _toxic(u, raw, oel_mg_m3, idlh_mg_m3, molar_mass_g_mol, gas_name, toxic_basis, range_hi)
    raise GasPresetError("gas", _("gas {gas} is not one of {kinds}").format(gas=repr(gas), kinds=", ".join(GAS_KINDS)))


def _toxic(u: str | None, raw: str, oel: float | None, idlh: float | None, m: float | None, gas_name: str | None,
           basis: str | None, range_hi: float | None) -> GasPreset:
    if u not in (OEL_PCT, IDLH_PCT, MG_M3, PPM):
        raise GasPresetError("gas", _("gas: toxic sets 100 / 200 %OEL (GB/T 50493-2019 5.5.2) and needs a tag in "
                                      "%OEL, %IDLH, mg/m3 or ppm; this tag has {unit}").format(unit=_unit_hint(raw)))
    if basis not in (None, *TOXIC_BASES):
        raise GasPresetError("toxic_basis", _("toxic_basis must be oel or idlh, not {basis}").format(basis=repr(basis)))
    for key, v in (("oel_mg_m3", oel), ("idlh_mg_m3", idlh), ("molar_mass_g_mol", m)):
        if v is not None and not (math.isfinite(v) and v > 0):
            raise GasPresetError(key, _("{key} must be a number > 0, got {value}").format(key=key, value=repr(v)))
    if gas_name is not None:
        if m is not None:
            raise GasPresetError("molar_mass_g_mol", _("give gas_name or molar_mass_g_mol, not both"))
        try:
            m = molar_mass(gas_name)
        except ValueError as exc:
            raise GasPresetError("gas_name", str(exc)) from None

    def in_unit(pct: float, ref_unit: str, ref_mg: float | None, key: str) -> float:
        """pct % of the OEL (ref_unit %OEL) or of the IDLH (%IDLH), in the tag's unit."""
        if u == ref_unit:
            return pct
        name = "OEL" if ref_unit == OEL_PCT else "IDLH"
        if ref_mg is None:
            raise GasPresetError(key, _("gas: toxic on a tag in {unit} needs the {name} in mg/m³ ({key}:)").format(
                unit=u, name=name, key=key))
        mg = ref_mg * pct / 100.0
        if u == MG_M3:
            return mg
        if u == PPM:
            if m is None:
                raise GasPresetError("gas", _("gas: toxic on a ppm tag needs the gas's molar mass to convert the "
                                              "{name} from mg/m³ (ppm = mg/m³ × {volume} / M at 20 °C, 101.325 kPa): "
                                              "add gas_name: (H2S, NH3 ...) or molar_mass_g_mol:").format(
                    name=name, volume=f"{MOLAR_VOLUME_L_MOL:g}"))
            return mg_m3_to_ppm(mg, m)
        # the tag is in the other percentage: %OEL <-> %IDLH through both values in mg/m³
        other_mg, other = (oel, "oel_mg_m3") if u == OEL_PCT else (idlh, "idlh_mg_m3")
        if other_mg is None:
            raise GasPresetError(other, _("gas: toxic on the {name} basis on a tag in {unit} needs {key}: as well")
                                 .format(name=name, unit=u, key=other))
        return mg / other_mg * 100.0

    def limits(which: str) -> tuple[PresetLimit, ...]:
        if which == "oel":
            p1, p2, ref_unit, ref, key = TOXIC_L1_OEL_PCT, TOXIC_L2_OEL_PCT, OEL_PCT, oel, "oel_mg_m3"
        else:
            p1, p2, ref_unit, ref, key = TOXIC_L1_IDLH_PCT, TOXIC_L2_IDLH_PCT, IDLH_PCT, idlh, "idlh_mg_m3"
        return (PresetLimit("H", in_unit(p1, ref_unit, ref, key), 1, 2, f"{_fmt(p1)} {ref_unit}"),
                PresetLimit("HH", in_unit(p2, ref_unit, ref, key), 2, 1, f"{_fmt(p2)} {ref_unit}"))

    def described(lims: tuple[PresetLimit, ...]) -> str:
        return ", ".join(f"level {x.level} {_fmt(x.setpoint)} {u} ({x.basis})" for x in lims)

    notes: list[str] = []
    chosen = basis or ("idlh" if u == IDLH_PCT else "oel")
    if chosen == "oel":
        lims = limits("oel")
        hh = lims[1].setpoint
        if range_hi is not None and range_hi < hh:
            if basis == "oel":
                notes.append(f"level 2 {_fmt(hh)} {u} (200 %OEL) is above the measuring range ({_fmt(range_hi)} "
                             f"{u}): it can never be reached; GB/T 50493-2019 5.5.2 then takes 5 / 10 %IDLH "
                             "(toxic_basis: idlh, idlh_mg_m3:)")
            elif idlh is None:
                raise GasPresetError("gas", _("gas: toxic: the measuring range ends at {range} {unit}, below level 2 "
                                              "at 200 %OEL ({hh} {unit}): give idlh_mg_m3: for the 5 / 10 %IDLH set "
                                              "points (GB/T 50493-2019 5.5.2) or use a detector whose range reaches "
                                              "200 %OEL").format(range=_fmt(range_hi), unit=u, hh=_fmt(hh)))
            else:
                chosen = "idlh"
                lims = limits("idlh")
                notes.append(f"toxic preset on the IDLH basis (GB/T 50493-2019 5.5.2): the measuring range ends at "
                             f"{_fmt(range_hi)} {u}, below 200 %OEL ({_fmt(hh)} {u}); {described(lims)}")
    else:
        lims = limits("idlh")
        if basis is None:  # the tag itself is in %IDLH
            notes.append(f"toxic preset on the IDLH basis (the tag is in %IDLH): {described(lims)}")
        else:
            why = "toxic_basis: idlh"
            try:
                oel_hh = limits("oel")[1].setpoint
            except GasPresetError:
                oel_hh = None
            if range_hi is not None and oel_hh is not None and range_hi >= oel_hh:
                why += (f", although the measuring range ({_fmt(range_hi)} {u}) reaches 200 %OEL ({_fmt(oel_hh)} "
                        f"{u}), where GB/T 50493-2019 5.5.2 takes 100 / 200 %OEL")
            notes.append(f"toxic preset on the IDLH basis ({why}): {described(lims)}")
    if chosen == "idlh" and range_hi is not None and range_hi < lims[1].setpoint:
        notes.append(f"level 2 {_fmt(lims[1].setpoint)} {u} is above the measuring range ({_fmt(range_hi)} {u}): "
                     "it can never be reached")
    return GasPreset("toxic", u, chosen.upper(), lims, tuple(notes))
