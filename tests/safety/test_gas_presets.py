"""Gas presets in the tag's unit (gateway.safety.gas; GB/T 50493-2019 5.5.2; docs/alarm-presets.md).

Pure tables over gateway.safety.gas, then `check` (gateway.config.load_config and the CLI) on small config files:
a preset that does not fit the tag's unit is refused at the ``alarms.gas`` value with FILE:LINE:COL, and what
`check` accepts is what the running gateway's alarm engine gets (gateway.runtime.gateway.alarm_configs).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.safety.alarms import gas_preset, setpoint_warnings
from gateway.config import ConfigError, load_config
from gateway.safety.gas import (MOLAR_MASS_G_MOL, GasPresetError, OxygenLimit, canonical_unit, gas_setpoints, mg_m3_to_ppm,
                         molar_mass, ppm_to_mg_m3)
from gateway.runtime.build import alarm_configs
from gateway.runtime.gateway import Gateway
from gateway.model import Quality, Reading

ROOT = Path(__file__).resolve().parents[2]


def setpoints(preset) -> dict[str, tuple[float, int | None, int]]:
    return {x.kind: (round(x.setpoint, 3), x.level, x.priority) for x in preset.limits}


# ------------------------------------------------------------------------------------- units and conversion

@pytest.mark.parametrize("raw, canon", [
    ("%LEL", "%LEL"), ("% LEL", "%LEL"), ("%lel", "%LEL"), ("LEL%", "%LEL"), (" %LEL ", "%LEL"),
    ("LEL·m", "LEL·m"), ("LEL.m", "LEL·m"), ("LEL*m", "LEL·m"), ("LELm", "LEL·m"), ("lel.m", "LEL·m"),
    ("%VOL", "%VOL"), ("%vol", "%VOL"), ("% VOL", "%VOL"), ("vol%", "%VOL"),
    ("mg/m3", "mg/m3"), ("mg/m³", "mg/m3"), ("ppm", "ppm"), ("%OEL", "%OEL"), ("%IDLH", "%IDLH"),
    ("", None), ("m", None), ("LEL", None), ("ppb", None), (None, None),
])
def test_unit_spellings(raw, canon):
    assert canonical_unit(raw) == canon


# IUPAC standard atomic weights (abridged), and each gas's formula as atom counts
ATOMIC = {"H": 1.008, "C": 12.011, "N": 14.007, "O": 15.999, "F": 18.998, "P": 30.974, "S": 32.06, "Cl": 35.45,
          "Br": 79.904}
FORMULA = {"H2S": {"H": 2, "S": 1}, "NH3": {"N": 1, "H": 3}, "Cl2": {"Cl": 2}, "CO": {"C": 1, "O": 1},
           "SO2": {"S": 1, "O": 2}, "HCN": {"H": 1, "C": 1, "N": 1}, "NO2": {"N": 1, "O": 2}, "HCl": {"H": 1, "Cl": 1},
           "HF": {"H": 1, "F": 1}, "COCl2": {"C": 1, "O": 1, "Cl": 2}, "PH3": {"P": 1, "H": 3},
           "C2H4O": {"C": 2, "H": 4, "O": 1}, "CH3Br": {"C": 1, "H": 3, "Br": 1}, "C6H6": {"C": 6, "H": 6}}


def test_molar_mass_table_matches_the_formulas():
    assert set(MOLAR_MASS_G_MOL) == set(FORMULA)
    for gas, atoms in FORMULA.items():
        m = sum(ATOMIC[a] * n for a, n in atoms.items())
        # 0.015 g/mol: SO2 is listed as 64.07 (S 32.065, the older atomic weight), 64.058 with S 32.06
        assert MOLAR_MASS_G_MOL[gas] == pytest.approx(m, abs=0.015), gas


@pytest.mark.parametrize("name, formula", [("H2S", "H2S"), ("h2s", "H2S"), ("硫化氢", "H2S"), ("ammonia", "NH3"),
                                           ("phosgene", "COCl2"), ("ethylene oxide", "C2H4O"), ("苯", "C6H6")])
def test_gas_names(name, formula):
    assert molar_mass(name) == MOLAR_MASS_G_MOL[formula]


def test_unknown_gas_name_is_one_line():
    with pytest.raises(ValueError, match="not in the built-in table") as ei:
        molar_mass("unobtainium")
    assert "\n" not in str(ei.value)


def test_ppm_conversion_at_20_degC_the_worked_H2S_example():
    """docs/domain.md, Units: 10 mg/m³ of H2S is about 7.1 ppm; 10 ppm is about 14.2 mg/m³."""
    assert mg_m3_to_ppm(10.0, 34.08) == pytest.approx(7.054, abs=0.001)
    assert ppm_to_mg_m3(10.0, 34.08) == pytest.approx(14.18, abs=0.01)
    assert ppm_to_mg_m3(mg_m3_to_ppm(3.0, 70.90), 70.90) == pytest.approx(3.0)


# ------------------------------------------------------------------------------------- presets by gas and unit

def test_combustible_point_preset_needs_LEL():
    assert setpoints(gas_setpoints("combustible", "% LEL")) == {"H": (25.0, 1, 2), "HH": (50.0, 2, 1)}
    for unit, hint in (("%VOL", "500 %LEL of methane"), ("LEL·m", "combustible_open_path"), ("ppm", ""),
                       ("", "no unit")):
        with pytest.raises(GasPresetError) as ei:
            gas_setpoints("combustible", unit)
        assert ei.value.key == "gas" and "needs a tag in %LEL" in str(ei.value) and hint in str(ei.value)


def test_open_path_preset_is_1_and_2_LEL_m():
    for unit in ("LEL·m", "LEL.m", "LEL*m", "LELm"):
        assert setpoints(gas_setpoints("combustible_open_path", unit)) == {"H": (1.0, 1, 2), "HH": (2.0, 2, 1)}
    with pytest.raises(GasPresetError, match="point detector in %LEL takes gas: combustible"):
        gas_setpoints("combustible_open_path", "%LEL")


@pytest.mark.parametrize("unit, kw, expect", [
    ("%OEL", {}, {"H": (100.0, 1, 2), "HH": (200.0, 2, 1)}),
    ("mg/m3", {"oel_mg_m3": 10.0}, {"H": (10.0, 1, 2), "HH": (20.0, 2, 1)}),
    ("ppm", {"oel_mg_m3": 10.0, "gas_name": "H2S"}, {"H": (7.054, 1, 2), "HH": (14.108, 2, 1)}),
    ("ppm", {"oel_mg_m3": 10.0, "molar_mass_g_mol": 34.08}, {"H": (7.054, 1, 2), "HH": (14.108, 2, 1)}),
    ("ppm", {"oel_mg_m3": 1.0, "gas_name": "Cl2"}, {"H": (0.339, 1, 2), "HH": (0.678, 2, 1)}),
    ("%IDLH", {}, {"H": (5.0, 1, 2), "HH": (10.0, 2, 1)}),
])
def test_toxic_preset_in_the_tags_unit(unit, kw, expect):
    assert setpoints(gas_setpoints("toxic", unit, **kw)) == expect


@pytest.mark.parametrize("unit, kw, key, fragment", [
    ("ppm", {"oel_mg_m3": 10.0}, "gas", "needs the gas's molar mass"),
    ("ppm", {"oel_mg_m3": 10.0, "gas_name": "XYZ"}, "gas_name", "not in the built-in table"),
    ("ppm", {"oel_mg_m3": 10.0, "gas_name": "H2S", "molar_mass_g_mol": 34.08}, "molar_mass_g_mol", "not both"),
    ("mg/m3", {}, "oel_mg_m3", "needs the OEL in mg/m³"),
    ("%LEL", {"oel_mg_m3": 10.0}, "gas", "%OEL, %IDLH, mg/m3 or ppm"),
    ("mg/m3", {"oel_mg_m3": 10.0, "toxic_basis": "idlh"}, "idlh_mg_m3", "needs the IDLH"),
])
def test_toxic_preset_refusals(unit, kw, key, fragment):
    with pytest.raises(GasPresetError) as ei:
        gas_setpoints("toxic", unit, **kw)
    assert ei.value.key == key and fragment in str(ei.value) and "\n" not in str(ei.value)


def test_idlh_fallback_when_the_range_cannot_reach_200_pct_oel():
    """GB/T 50493-2019 5.5.2: level 1 <= 5 %IDLH, level 2 <= 10 %IDLH where the range cannot reach 200 %OEL."""
    # range 0-50 mg/m3 reaches 20 (200 %OEL): the OEL basis, no note
    p = gas_setpoints("toxic", "mg/m3", oel_mg_m3=10.0, idlh_mg_m3=140.0, range_hi=50.0)
    assert p.basis == "OEL" and p.notes == () and setpoints(p)["HH"][0] == 20.0
    # range 0-15 mg/m3 does not: the IDLH basis, said in a note
    p = gas_setpoints("toxic", "mg/m3", oel_mg_m3=10.0, idlh_mg_m3=140.0, range_hi=15.0)
    assert p.basis == "IDLH" and setpoints(p) == {"H": (7.0, 1, 2), "HH": (14.0, 2, 1)}
    assert len(p.notes) == 1 and "IDLH basis" in p.notes[0] and "below 200 %OEL" in p.notes[0]
    # without an IDLH the range problem is refused: level 2 could never be reached
    with pytest.raises(GasPresetError, match="give idlh_mg_m3") as ei:
        gas_setpoints("toxic", "mg/m3", oel_mg_m3=10.0, range_hi=15.0)
    assert ei.value.key == "gas"
    # an explicit basis is kept, with what it implies in a note
    p = gas_setpoints("toxic", "mg/m3", oel_mg_m3=10.0, idlh_mg_m3=140.0, toxic_basis="idlh", range_hi=50.0)
    assert p.basis == "IDLH" and "although the measuring range" in p.notes[0]
    p = gas_setpoints("toxic", "mg/m3", oel_mg_m3=10.0, toxic_basis="oel", range_hi=15.0)
    assert p.basis == "OEL" and "can never be reached" in p.notes[0]
    # IDLH on a ppm tag goes through the molar mass like the OEL
    p = gas_setpoints("toxic", "ppm", oel_mg_m3=10.0, idlh_mg_m3=141.8, gas_name="H2S", toxic_basis="idlh")
    assert setpoints(p)["HH"][0] == pytest.approx(10.0, abs=0.01)  # 10 %IDLH of 100 ppm


def test_oxygen_mapping_is_configurable():
    p = gas_setpoints("oxygen", "vol%")
    assert setpoints(p) == {"H": (23.5, 1, 2), "L": (19.5, 2, 1)}   # the default: under-oxygen is level 2
    p = gas_setpoints("oxygen", "%VOL", oxygen_over=OxygenLimit("HH", 2, 1), oxygen_under=OxygenLimit("LL", 2, 1))
    assert setpoints(p) == {"HH": (23.5, 2, 1), "LL": (19.5, 2, 1)}
    with pytest.raises(ValueError, match="oxygen over: kind must be H or HH"):
        gas_setpoints("oxygen", "%VOL", oxygen_over=OxygenLimit("L", 1, 2))
    with pytest.raises(GasPresetError, match="needs a tag in %VOL"):
        gas_setpoints("oxygen", "ppm")


def test_alarms_gas_preset_wraps_it_and_warnings_use_the_ceilings_in_the_tags_unit():
    lims = gas_preset("toxic", unit="ppm", oel_mg_m3=10.0, gas_name="H2S")
    assert [(x.kind, round(x.setpoint, 3), x.latching) for x in lims] == [("H", 7.054, True), ("HH", 14.108, True)]
    from gateway.safety.alarms import LimitSpec, TagAlarmConfig
    cfg = TagAlarmConfig("AT1", [LimitSpec("H", 10.0, level=1, latching=True)], gas="toxic",
                         ceilings={"H": 7.054, "HH": 14.108})
    assert any("H set point 10 is looser than the GB/T 50493-2019 5.5.2 limit 7.054" in w
               for w in setpoint_warnings(cfg))


# ------------------------------------------------------------------------------------- check

HEAD = ("gateway: {id: s}\nkeys: {private_key: k}\ndevices:\n"
        "  - name: p\n    protocol: modbus_tcp\n    host: h\n    tags:\n")


def write(tmp_path: Path, tags: str, tail: str = "") -> Path:
    f = tmp_path / "gw.yaml"
    f.write_text(HEAD + tags + tail)
    return f


@pytest.mark.e2e
def test_check_refuses_a_combustible_preset_on_a_vol_tag_at_the_gas_value(tmp_path: Path):
    f = write(tmp_path, "      - {name: CH4, address: 30001, unit: '%VOL', alarms: {gas: combustible}}\n")
    with pytest.raises(ConfigError) as ei:
        load_config(f)
    [p] = ei.value.problems
    assert (p.line, p.col, p.path) == (8, 65, "devices[0].tags[0].alarms.gas") and not p.warning
    assert "needs a tag in %LEL" in p.message and "'%VOL'" in p.message
    r = subprocess.run([sys.executable, "-m", "gateway.cli", "check", str(f)], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith(f"{f}:8:65: ") and len(r.stderr.splitlines()) == 1


@pytest.mark.parametrize("unit", ["'%LEL'", "'% LEL'", "'%lel'", "'LEL%'"])
def test_check_accepts_the_usual_spellings_of_LEL(tmp_path: Path, unit: str):
    cfg = load_config(write(tmp_path, f"      - {{name: G, address: 30001, unit: {unit}, alarms: {{gas: combustible}}}}\n"))
    [c] = [c for c in alarm_configs(cfg) if c.tag == "G"]
    assert {s.kind: s.setpoint for s in c.limits} == {"H": 25.0, "HH": 50.0} and cfg.warnings == []


def test_running_gateway_gets_the_converted_ppm_set_points(tmp_path: Path):
    """What check accepts is what runs: an H2S tag in ppm with OEL 10 mg/m³ alarms at 7.05 / 14.1 ppm."""
    cfg = load_config(write(tmp_path, "      - {name: H2S, address: 30001, unit: ppm,\n"
                                      "         alarms: {gas: toxic, gas_name: H2S, oel_mg_m3: 10}}\n"))
    assert cfg.warnings == []
    gw = Gateway(cfg)
    now = 100.0
    gw.alarms.update(Reading("H2S", 7.0, "ppm", Quality.GOOD, 1.7e9), now)
    assert gw.alarms.condition("H2S", "H") is False
    gw.alarms.update(Reading("H2S", 7.1, "ppm", Quality.GOOD, 1.7e9), now + 1)
    assert gw.alarms.condition("H2S", "H") is True and gw.alarms.condition("H2S", "HH") is False
    gw.alarms.update(Reading("H2S", 14.2, "ppm", Quality.GOOD, 1.7e9), now + 2)
    assert gw.alarms.condition("H2S", "HH") is True


@pytest.mark.parametrize("tag, key, fragment", [
    # the old oel: on a ppm tag (10 "ppm" of H2S is 142 %OEL): refused at its value
    ("{name: A, address: 30001, unit: ppm, alarms: {gas: toxic, oel: 10}}", "oel", "as oel_mg_m3 with gas_name"),
    ("{name: A, address: 30001, unit: '%OEL', alarms: {gas: toxic, oel: 10}}", "oel", "level 1 at 10 %OEL"),
    ("{name: A, address: 30001, unit: mg/m3, alarms: {gas: toxic, oel: 10, oel_mg_m3: 10}}", "oel", "give the OEL once"),
    ("{name: A, address: 30001, unit: ppm, alarms: {gas: toxic, oel_mg_m3: 10}}", "gas", "molar mass"),
    ("{name: A, address: 30001, unit: ppm, alarms: {gas: toxic, oel_mg_m3: 10, gas_name: H2X}}", "gas_name",
     "built-in table"),
    ("{name: A, address: 30001, unit: '%LEL', alarms: {gas: combustible, oel_mg_m3: 10}}", "oel_mg_m3",
     "only for gas: toxic"),
    ("{name: A, address: 30001, unit: mg/m3, valid_range: [0, 15], alarms: {gas: toxic, oel_mg_m3: 10}}", "gas",
     "give idlh_mg_m3"),
    ("{name: A, address: 30001, unit: ppm, alarms: {gas: oxygen}}", "gas", "needs a tag in %VOL"),
    ("{name: A, address: 30001, unit: '%LEL', alarms: {gas: combustible_open_path}}", "gas", "needs a tag in LEL·m"),
])
def test_check_refuses_presets_that_do_not_fit_at_the_key(tmp_path: Path, tag: str, key: str, fragment: str):
    line = f"      - {tag}\n"
    with pytest.raises(ConfigError) as ei:
        load_config(write(tmp_path, line))
    [p] = ei.value.problems
    assert p.path == f"devices[0].tags[0].alarms.{key}" and fragment in p.message, str(p)
    # the column is that of the key's value in the line
    assert (p.line, p.col) == (8, line.index(f"{key}: ") + len(key) + 3), str(p)


@pytest.mark.parametrize("tag", [
    "{name: A, address: 30001, unit: mg/m3, alarms: {gas: toxic, oel: 10}}",           # old name, same meaning
    "{name: A, address: 30001, unit: '%OEL', alarms: {gas: toxic}}",                    # 100 / 200 %OEL
    "{name: A, address: 30001, unit: '%OEL', alarms: {gas: toxic, oel: 100}}",
    "{name: A, address: 30001, unit: ppm, alarms: {gas: toxic, H: 5}}",                 # explicit limits only
    "{name: A, address: 30001, unit: 'LEL.m', alarms: {gas: combustible_open_path}}",
    "{name: A, address: 30001, unit: '% VOL', alarms: {gas: oxygen}}",
])
def test_check_accepts(tmp_path: Path, tag: str):
    assert load_config(write(tmp_path, f"      - {tag}\n")).warnings == []


def test_check_warns_which_toxic_basis_when_it_is_the_idlh(tmp_path: Path):
    cfg = load_config(write(tmp_path, "      - {name: A, address: 30001, unit: mg/m3, valid_range: [0, 15],\n"
                                      "         alarms: {gas: toxic, oel_mg_m3: 10, idlh_mg_m3: 140}}\n"))
    [w] = cfg.warnings
    assert w.path == "devices[0].tags[0].alarms" and "IDLH basis" in w.message and "level 2 14 mg/m3" in w.message
    [c] = alarm_configs(cfg)
    assert {s.kind: s.setpoint for s in c.limits} == {"H": 7.0, "HH": 14.0}


def test_alarm_policy_oxygen_mapping_reaches_the_engine(tmp_path: Path):
    cfg = load_config(write(tmp_path, "      - {name: O2, address: 30001, unit: '%VOL', alarms: {gas: oxygen}}\n",
                            "alarm_policy:\n  oxygen:\n    over: {kind: HH, level: 2, priority: 1}\n"
                            "    under: {kind: LL, level: 2, priority: 1}\n"))
    [c] = alarm_configs(cfg)
    assert {(s.kind, s.setpoint, s.level, s.priority) for s in c.limits} == {("HH", 23.5, 2, 1), ("LL", 19.5, 2, 1)}
    with pytest.raises(ConfigError, match="alarm_policy.oxygen.over.kind"):
        load_config(write(tmp_path, "      - {name: O2, address: 30001, unit: '%VOL', alarms: {gas: oxygen}}\n",
                          "alarm_policy: {oxygen: {over: {kind: L}}}\n"))


def test_alarm_policy_on_delay_cap_is_used_and_warned_above_5_s(tmp_path: Path):
    tags = "      - {name: G, address: 30001, unit: '%LEL', alarms: {gas: combustible, HH: {setpoint: 50, on_delay_s: 9}}}\n"
    cfg = load_config(write(tmp_path, tags))  # default cap 5 s: the 9 s delay is capped, and check says so
    assert any("HH on-delay 9 s exceeds the 5 s gas on-delay cap" in w.message for w in cfg.warnings)
    e = Gateway(cfg).alarms
    e.update(Reading("G", 60.0, "%LEL", Quality.GOOD, 1.7e9), 0.0)
    assert not any(x.id == "G.HH" for x in e.tick(4.9)) and any(x.id == "G.HH" for x in e.tick(5.0))
    cfg = load_config(write(tmp_path, tags, "alarm_policy: {gas_on_delay_cap_s: 10}\n"))
    assert [(w.line, w.path) for w in cfg.warnings] == [(9, "alarm_policy.gas_on_delay_cap_s")]
    assert "longer than the default 5 s cap" in cfg.warnings[0].message
    e = Gateway(cfg).alarms
    e.update(Reading("G", 60.0, "%LEL", Quality.GOOD, 1.7e9), 0.0)
    assert not any(x.id == "G.HH" for x in e.tick(8.9)) and any(x.id == "G.HH" for x in e.tick(9.0))
    with pytest.raises(ConfigError, match="gas_on_delay_cap_s"):
        load_config(write(tmp_path, tags, "alarm_policy: {gas_on_delay_cap_s: 60}\n"))


def test_an_interlock_on_a_refused_preset_reports_the_preset_not_a_missing_limit(tmp_path: Path):
    f = write(tmp_path, "      - {name: G, address: 30001, unit: '%VOL', alarms: {gas: combustible}}\n"
                        "      - {name: XV, address: 40001, writable: true}\n",
              "interlocks:\n  - name: il\n    inputs: [{tag: G, condition: HH}]\n    actions: [{output: XV, value: 0}]\n")
    with pytest.raises(ConfigError) as ei:
        load_config(f)
    [p] = ei.value.problems  # one mistake, one line: not also "tag 'G' has no HH limit"
    assert p.path == "devices[0].tags[0].alarms.gas" and "needs a tag in %LEL" in p.message
