"""The basic-data record (gateway.chain.basic_data): the point-code rule, the CAS check digit, the document's schema
(validate: one line per refusal), and the edge's builder (gateway.runtime.basic_data) on the shipped configs."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from gateway.chain.basic_data import MEASURE_UNITS, VERSION, cas_valid, code_clash, point_code, validate
from gateway.config import load_config
from gateway.runtime.basic_data import build_document, record
from gateway.runtime.build import build_hazard, build_plant, point_codes

ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------------- point codes, CAS

def test_point_code_is_enterprise_major_hazard_tag():
    assert point_code("330100000001", "h01", "T101.level") == "330100000001H01T101.level"
    assert point_code(" 330100000001 ", "H01", "LT101", sep="-") == "330100000001-H01-LT101"
    # the gateway.hazard name is the same function (one place)
    from gateway.hazard import point_code as hazard_point_code
    assert hazard_point_code is point_code


@pytest.mark.parametrize("ent, mh, tag, needle", [
    ("330100000001", "330100000001-01", "T101", "repeats the enterprise code"),   # the old template's values
    ("330100000001", "01", "T101", "occurs inside the enterprise code"),
    ("330100000001", "h01", "TH01.level", "contains the major-hazard code 'H01'"),   # case-insensitive
    ("ABC", "H01", "abc.level", "contains the enterprise code 'ABC'"),
    ("", "H01", "T", "enterprise code '' must be letters"),
    ("3301", "H 01", "T", "major-hazard code 'H 01' must be letters"),
])
def test_point_code_refuses_parts_that_cannot_be_told_apart(ent, mh, tag, needle):
    with pytest.raises(ValueError) as ei:
        point_code(ent, mh, tag)
    assert needle in str(ei.value) and str(ei.value).startswith("point code: ") and "\n" not in str(ei.value)


def test_code_clash_is_none_for_distinct_parts():
    assert code_clash("330100000001", "H01", "T101.level") is None
    assert code_clash("330100000001", "H01") is None


def test_cas_check_digit():
    assert cas_valid("71-43-2") and cas_valid("7783-06-4") and cas_valid("7732-18-5")   # benzene, H2S, water
    assert not cas_valid("71-43-3") and not cas_valid("7143-2") and not cas_valid("71-43-22") and not cas_valid(None)


# ------------------------------------------------------------------------------------------- the builder

@pytest.fixture(scope="module")
def demo():
    cfg = load_config(ROOT / "config" / "demo.yaml")
    plant = build_plant(cfg)
    return cfg, plant, build_document(cfg, plant.hazard, plant.points, now=1.75e9)


def test_demo_document_validates_and_names_every_tag_with_its_code(demo):
    cfg, plant, doc = demo
    assert validate(doc) is doc
    json.dumps(doc, allow_nan=False)   # JSON as it is signed
    assert doc["type"] == "basic_data" and doc["version"] == VERSION and doc["gateway_id"] == "demo-tank-farm"
    assert doc["config_hash"] == cfg.config_hash and doc["ts"] == "2025-06-15T15:06:40.000Z"
    assert doc["enterprise"]["code"] == "330100000001"
    tags = {t for d in cfg.model.devices for t in (x.name for x in d.tags)}
    points = {p["tag"]: p for p in doc["points"]}
    assert set(points) == tags == set(plant.points)
    for tag, p in points.items():
        assert p["code"] == plant.points[tag] == f"330100000001H01{tag}"
        assert p["measure"] in MEASURE_UNITS and p["unit"] in MEASURE_UNITS[p["measure"]], p   # every tag typed
    lvl = points["T101.level"]
    assert (lvl["measure"], lvl["unit"], lvl["range"], lvl["vessel"], lvl["installation"]) == \
        ("level", "m", [0.0, 12.0], "T101", "tank-group-T100")
    assert lvl["limits"] == {"L": 1.0, "H": 10.5, "HH": 11.0}
    assert lvl["medium"] == {"name": "苯", "name_en": "benzene", "cas": "71-43-2"}   # the tank's medium
    gas = points["GD1.gas"]
    assert gas["limits"] == {"H": 25.0, "HH": 50.0} and gas["unit"] == "%LEL"   # GB/T 50493-2019 5.5.2 preset
    assert points["AT301.H2S"]["medium"]["cas"] == "7783-06-4" and points["AT301.H2S"]["limits"] == \
        {"H": 10.0, "HH": 20.0}
    assert points["BEACON"]["measure"] == "switch_state" and points["BEACON"]["writable"] is True


def test_demo_document_carries_the_design_grade_and_the_vessels(demo):
    _, plant, doc = demo
    (u,) = doc["installations"]
    (st,) = plant.hazard.status()
    assert u["name"] == "tank-group-T100" and u["major_hazard_code"] == "H01" and u["people_500m"] == 120
    assert (u["grade"], u["colour"], u["major_hazard"]) == (2, "orange", True)   # docs: grade 2, orange
    assert u["S"] == st["S"] == pytest.approx(36.415, abs=1e-3) and u["R"] == pytest.approx(2 * u["S"])
    assert [v["name"] for v in doc["vessels"]] == ["T101", "T102"]
    for v in doc["vessels"]:
        assert v["kind"] == "tank" and v["capacity_m3"] == pytest.approx(3.14159265 * 5.5 ** 2 * 12, rel=1e-6)
        assert v["design_q_t"] == pytest.approx(v["capacity_m3"] * 0.9 * 0.887, rel=1e-6)
        assert v["medium"]["cas"] == "71-43-2" and f"{v['name']}.level" in v["tags"]


def test_design_colour_ignores_the_live_alarm_state(demo):
    """The record carries the design colour: a trip raises the live colour (orange -> red), not the record's."""
    cfg, _, _ = demo
    plant = build_plant(cfg)
    (unit,) = plant.hazard.units
    plant.hazard.update_alarm_state(unit, tripped=True)
    assert plant.hazard.status()[0]["colour"] == "red"
    assert build_document(cfg, plant.hazard, plant.points)["installations"][0]["colour"] == "orange"


def test_record_puts_the_document_through_log_event_and_refuses_to_send_an_invalid_one(demo, caplog):
    cfg, plant, _ = demo
    sent: list[dict] = []
    assert record(plant, sent.append) is True
    assert [e["type"] for e in sent] == ["basic_data"] and validate(sent[0])
    # a plant whose points disagree with the config (a bug): no invalid record goes out, an event says why
    broken = type("P", (), {"cfg": cfg, "hazard": plant.hazard, "points": {**plant.points, "T101.level": "X"}})()
    sent.clear()
    assert record(broken, sent.append) is False
    (ev,) = sent
    assert ev["type"] == "gateway" and ev["event"] == "basic_data_invalid" and "T101.level" in ev["error"]
    assert any("basic data not recorded" in r.getMessage() for r in caplog.records)


def test_example_site_document_validates(tmp_path):
    site = tmp_path / "gateway.yaml"
    site.write_text((ROOT / "config" / "example-site.yaml").read_text())
    cfg = load_config(site)
    hazard = build_hazard(cfg)   # the parts the record is built from (no drivers: the template's files are absent)
    doc = validate(build_document(cfg, hazard, point_codes(cfg, hazard)))
    assert doc["enterprise"] == {"code": "330100000001", "name": "示例化工有限公司"}
    points = {p["tag"]: p for p in doc["points"]}
    assert points["T101.level"]["code"] == "330100000001H01T101.level"   # not <enterprise><enterprise>-01...
    assert points["T101.ai1"]["range"] == [0.0, 250.0] and points["T101.ai1"]["vessel"] == "T101"
    assert points["GD1.gas"]["installation"] == "tank-group-T100"
    assert doc["vessels"][0]["tags"] == ["T101.level", "T101.tms.tank1.level", "T101.temperature"]


# ------------------------------------------------------------------------------------------- validate

def _bad(doc: dict, change) -> str:
    d = copy.deepcopy(doc)
    change(d)
    with pytest.raises(ValueError) as ei:
        validate(d)
    msg = str(ei.value)
    assert msg.startswith("basic_data: ") and "\n" not in msg, msg
    return msg


def _point(d: dict, tag: str) -> dict:
    return next(p for p in d["points"] if p["tag"] == tag)


@pytest.mark.parametrize("change, needle", [
    (lambda d: d.update(version=2), "version 2 is not 1"),
    (lambda d: d.pop("points"), "points: Field required"),
    (lambda d: d.update(extra=1), "extra: Extra inputs are not permitted"),
    (lambda d: d.update(type="alarm"), "type: Input should be 'basic_data'"),
    (lambda d: d.update(ts="yesterday"), "ts: String should match pattern"),
    (lambda d: _point(d, "T101.level").update(unit="degC"), "unit 'degC' does not fit measure level"),
    (lambda d: _point(d, "T101.level").update(measure="viscosity"), "points.0.measure: Input should be"),
    (lambda d: _point(d, "T101.level").update(range=[12.0, 0.0]), "range [12.0, 0.0] is not [lo, hi]"),
    (lambda d: _point(d, "T101.level").update(range=[0.0, 10.0]), "limit H 10.5 is outside its range"),
    (lambda d: _point(d, "T101.level").update(limits={"H": "10"}), "points.0.limits.H: Input should be a valid number"),
    (lambda d: _point(d, "GD1.gas").update(medium={"name": "苯", "name_en": None, "cas": "71-43-3"}),
     "CAS number '71-43-3'"),
    (lambda d: _point(d, "T101.level").update(code="330100000001H01T102.level"), "is not '330100000001H01T101.level'"),
    (lambda d: _point(d, "T101.level").update(vessel="T999"), "vessel 'T999' is not in vessels"),
    (lambda d: _point(d, "T101.level").update(installation="elsewhere"), "installation 'elsewhere'"),
    (lambda d: d["vessels"][1].update(name="T101"), "vessel 'T101' appears twice"),
    (lambda d: d["points"].append(copy.deepcopy(d["points"][0])), "point 'T101.level' appears twice"),
    (lambda d: d["installations"][0].update(grade=None), "grade None with major_hazard True"),
    (lambda d: d["installations"][0].update(colour="pink"), "installations.0.colour: Input should be"),
    (lambda d: d["installations"][0].update(S=-1), "installations.0.S: Input should be greater than or equal to 0"),
    (lambda d: d["vessels"][0].update(capacity_m3=0), "vessels.0.capacity_m3: Input should be greater than 0"),
    (lambda d: d["enterprise"].update(code=None), "without an enterprise and a major-hazard code"),
    (lambda d: d.update(gateway_id="bad id"), "gateway_id: String should match pattern"),
    (lambda d: _point(d, "BEACON").update(writable=1), "writable: Input should be a valid boolean"),
])
def test_validate_refuses_with_one_line(demo, change, needle):
    assert needle in _bad(demo[2], change)


def test_validate_refuses_what_is_not_a_document():
    for doc in (None, [], "basic_data", {"version": 1}):
        with pytest.raises(ValueError) as ei:
            validate(doc)
        assert str(ei.value).startswith("basic_data: ")
