"""Typed points (``point:`` on a tag) and point codes in `check` (gateway.config): each refusal is one
FILE:LINE:COL line at the key or value it is about; the shipped configs use typed points and pass."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config, point_places

ROOT = Path(__file__).resolve().parents[2]

BASE = """gateway: {id: site-1, enterprise_code: "330100000001", major_hazard_code: "H01"}
keys: {private_key: k.pem}
devices:
  - name: plc
    protocol: modbus_tcp
    host: 127.0.0.1
    poll_interval_ms: 2000
    tags:
      - {name: T1.level, address: 30001, type: float32, unit: m, alarms: {H: 9.0, HH: 9.5},
         point: {measure: level, vessel: T1, range: [0.0, 10.0]}}
      - {name: T1.temp, address: 30003, type: float32, unit: degC, point: {measure: temperature, vessel: T1}}
      - {name: GD1.gas, address: 30005, type: float32, unit: "%LEL", alarms: {gas: combustible},
         point: {measure: gas_concentration, installation: dike-1, medium: {name: 苯, cas: "71-43-2"},
                 range: [0.0, 100.0]}}
      - {name: XV1, address: {table: coil, address: 0}, type: bool, writable: true,
         point: {measure: valve_position, vessel: T1}}
hazard:
  units:
    - name: dike-1
      people_500m: 10
      tanks:
        - {name: T1, tag_level: T1.level, tag_temperature: T1.temp, substance: 苯, density_t_m3: 0.88,
           geometry: {type: vertical_cylinder, diameter_m: 5.0, height_m: 10.0}}
"""


def write(tmp_path: Path, old: str | tuple = "", new: str | tuple = "", *more: tuple) -> Path:
    """BASE with ``old`` replaced by ``new`` (each once); given tuples, each is one (old, new) pair."""
    text = BASE
    for o, n in ((old, new),) if isinstance(old, str) else (old, new, *more):
        assert not o or text.count(o) == 1, o
        text = text.replace(o, n) if o else text
    f = tmp_path / "site.yaml"
    f.write_text(text)
    return f


def line_col_of(f: Path, needle: str) -> tuple[int, int]:
    for i, line in enumerate(f.read_text().splitlines(), 1):
        if needle in line:
            return i, line.index(needle) + 1
    raise AssertionError(needle)


def test_the_base_config_passes_and_places_every_point(tmp_path):
    cfg = load_config(write(tmp_path))
    assert cfg.warnings == []
    places = point_places(cfg)
    assert places["T1.level"].vessel == "T1" and places["T1.level"].installation == "dike-1"
    assert places["GD1.gas"].vessel is None and places["GD1.gas"].installation == "dike-1"
    assert {p.major_hazard_code for p in places.values()} == {"H01"}


@pytest.mark.parametrize("old, new, needle, text", [
    # what it measures, and a unit that fits
    ("measure: level, vessel: T1, range", "measure: depth, vessel: T1, range", "depth",
     "Input should be 'level', 'temperature', 'pressure', 'flow', 'gas_concentration'"),
    ("unit: degC, point: {measure: temperature", "unit: degC, point: {measure: level", "degC",
     "unit 'degC' does not fit measure level: use one of '%', 'cm', 'm', 'mm'"),
    ("type: bool, writable: true,\n", "type: bool, writable: true, unit: kPa,\n", "kPa",
     "unit 'kPa' does not fit measure valve_position"),
    # the medium's CAS check digit
    ('cas: "71-43-2"', 'cas: "71-43-3"', "71-43-3", "CAS number '71-43-3' is not NNNNNNN-NN-N with a correct check"),
    # the range, and the alarm limits within it (explicit, and a gas preset's)
    ("range: [0.0, 10.0]", "range: [10.0, 0.0]", "[10.0, 0.0]", "range [10, 0] must be [lo, hi] with lo < hi"),
    ("range: [0.0, 10.0]", "range: [0.0, 9.2]", "9.5", "alarm limit HH 9.5 is outside the point's range [0, 9.2]"),
    ("range: [0.0, 100.0]", "range: [0.0, 40.0]", "gas: combustible",
     "alarm limit HH 50 is outside the point's range [0, 40]"),
    # the vessel and the installation
    ("measure: level, vessel: T1,", "measure: level, vessel: T9,", "T9",
     "vessel 'T9' is declared by no hazard unit"),
    ("installation: dike-1", "installation: dike-9", "dike-9", "installation 'dike-9' is not a hazard unit"),
    # (a list: several (old, new) pairs) a tag the hazard units place in T1 cannot say it is T2's
    ([("unit: degC, point: {measure: temperature, vessel: T1}", "unit: degC, point: {measure: temperature, vessel: T2}"),
      ("    tags:\n", "    tags:\n      - {name: T2.level, address: 30007, type: float32, unit: m}\n"),
      ("height_m: 10.0}}\n", "height_m: 10.0}}\n        - {name: T2, tag_level: T2.level, substance: 苯, density_t_m3: 0.88,\n"
                            "           geometry: {type: vertical_cylinder, diameter_m: 5.0, height_m: 10.0}}\n"
                            "      alarm_tags: []\n")], None,
     "vessel: T2}", "tag 'T1.temp' is an instrument of vessel 'T1' in the hazard units, not of 'T2'"),
    ("point: {measure: valve_position, vessel: T1}", "point: {measure: valve_position, vessel: T1, installation: d2}",
     "d2", "installation 'd2' is not a hazard unit"),
    # point codes: parts that contain each other
    ('major_hazard_code: "H01"', 'major_hazard_code: "330100000001-01"', '"330100000001-01"',
     "the major-hazard code '330100000001-01' repeats the enterprise code '330100000001'"),
    ('major_hazard_code: "H01"', 'major_hazard_code: "0001"', '"0001"',
     "the major-hazard code '0001' occurs inside the enterprise code '330100000001'"),
    ("people_500m: 10\n", 'people_500m: 10\n      major_hazard_code: "330100000001A"\n', '"330100000001A"',
     "repeats the enterprise code"),
    ("point: {measure: valve_position, vessel: T1}", "point: {measure: valve_position, vessel: T1, code: XH01}",
     "XH01", "the tag code 'XH01' contains the major-hazard code 'H01'"),
    ("{name: XV1,", "{name: V330100000001,", "V330100000001",
     "the tag code 'V330100000001' contains the enterprise code '330100000001'"),
    ('enterprise_code: "330100000001"', 'enterprise_code: "3301 0001"', '"3301 0001"',
     "enterprise code '3301 0001' must be letters, digits"),
    # a point names its vessel: names are unique across the units
    (("    tags:\n", "    tags:\n      - {name: T2.level, address: 30007, type: float32, unit: m}\n"),
     ("height_m: 10.0}}\n", "height_m: 10.0}}\n        - {name: T1, tag_level: T2.level, substance: 苯, density_t_m3: 0.88,\n"
                            "           geometry: {type: vertical_cylinder, diameter_m: 5.0, height_m: 10.0}}\n"),
     "name: T1, tag_level: T2.level", "vessel name 'T1' also used by hazard.units[0].tanks[0]"),
])
def test_each_refusal_is_one_line_at_its_key(tmp_path, old, new, needle, text):
    f = write(tmp_path, *old) if isinstance(old, list) else write(tmp_path, old, new)
    with pytest.raises(ConfigError) as ei:
        load_config(f)
    errors = [p for p in ei.value.problems if not p.warning]
    hits = [p for p in errors if text in p.message]
    assert hits, str(ei.value)
    assert len(errors) == 1, str(ei.value)
    line, col = line_col_of(f, needle)
    assert hits[0].line == line, (str(hits[0]), line)
    assert "\n" not in str(hits[0]) and str(hits[0]).startswith(f"{f}:{line}:")


def test_unit_spellings_map_onto_the_record_s_units():
    from gateway.chain.basic_data import MEASURE_UNITS
    from gateway.config import point_unit

    assert point_unit("temperature", "°C") == point_unit("temperature", "℃") == "degC"
    assert point_unit("gas_concentration", "% lel") == "%LEL" and point_unit("gas_concentration", "mg/m³") == "mg/m3"
    assert point_unit("flow", "m³/h") == "m3/h" and point_unit("level", "%") == "%"
    assert point_unit("level", "degC") is None and point_unit("switch_state", "%") is None
    for measure, units in MEASURE_UNITS.items():   # every canonical unit maps onto itself
        assert all(point_unit(measure, u) == u for u in units), measure


@pytest.mark.e2e
def test_check_refuses_a_typed_point_with_file_line_col_and_exit_2(tmp_path):
    f = write(tmp_path, 'cas: "71-43-2"', 'cas: "71-43-3"')
    r = subprocess.run([sys.executable, "-m", "gateway.cli", "check", str(f)], capture_output=True, text=True,
                       cwd=ROOT, timeout=60)
    line, col = line_col_of(f, "71-43-3")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    errors = [x for x in r.stderr.splitlines() if ": warning: " not in x and "secret file" not in x]
    assert errors == [f"{f}:{line}:{col - 1}: devices[0].tags[2].point.medium.cas: CAS number '71-43-3' is not "
                      "NNNNNNN-NN-N with a correct check digit (the digits weighted 1, 2, 3 ... from the right, "
                      "summed, modulo 10)"], r.stderr


def test_demo_config_types_every_tag_and_passes(tmp_path):
    cfg = load_config(ROOT / "config" / "demo.yaml")
    assert cfg.warnings == []
    untyped = [t.name for d in cfg.model.devices for t in d.tags if t.point is None]
    assert untyped == []
    assert cfg.model.gateway.major_hazard_code == "H01"


@pytest.mark.e2e
def test_example_site_template_uses_typed_points_and_passes_check(tmp_path):
    from site_secrets import make_site_secrets

    site = tmp_path / "gateway.yaml"
    site.write_text((ROOT / "config" / "example-site.yaml").read_text())
    make_site_secrets(tmp_path / "keys")
    r = subprocess.run([sys.executable, "-m", "gateway.cli", "check", str(site)], capture_output=True, text=True,
                       cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr
    cfg = load_config(site)
    typed = {t.name: t.point.measure for d in cfg.model.devices for t in d.tags if t.point is not None}
    assert set(typed.values()) == {"level", "temperature", "pressure", "gas_concentration", "valve_position",
                                   "switch_state"}
    places = point_places(cfg)
    assert places["T101.level"].major_hazard_code == "H01" and "330100000001" not in places["T101.level"].major_hazard_code


def test_places_read_a_unit_with_a_relative_strapping_table(tmp_path):
    """A unit's own major-hazard code reaches its tags' point codes also when its tank's strapping table is a CSV
    next to the config (read against the config's directory, not the working directory)."""
    from gateway.runtime.build import point_codes

    (tmp_path / "tables").mkdir()
    (tmp_path / "tables" / "t1.csv").write_text("level_m,volume_m3\n0,0\n10,196\n")
    f = write(tmp_path, ("people_500m: 10\n", 'people_500m: 10\n      major_hazard_code: "H02"\n'),
              ("geometry: {type: vertical_cylinder, diameter_m: 5.0, height_m: 10.0}",
               "geometry: {type: strapping_table, csv: tables/t1.csv}"))
    cfg = load_config(f)
    assert point_places(cfg)["T1.level"].major_hazard_code == "H02"
    assert point_codes(cfg)["T1.level"] == "330100000001H02T1.level"
    assert point_codes(cfg)["GD1.gas"] == "330100000001H02GD1.gas"   # its point's installation is the unit
