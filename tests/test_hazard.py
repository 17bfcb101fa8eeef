"""GB 18218-2018 identification / grading, volume models, live engine and the grade command."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.hazard import (ColourMap, DensityTable, HazardEngine, HorizontalCylinder, Sphere, StrappingTable,
                            TankSpec, UnitSpec, UnknownSubstance, VerticalCylinder, VesselSpec, alpha, evaluate,
                            find, grade_command, grade_of, point_code)
from gateway.hazard.substances import SubstanceTable, cas_valid, default_table
from gateway.model import Quality, Reading

PY = sys.executable
ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- identification and grading

def test_worked_check_from_domain_md():
    r = evaluate(35, [(find("chlorine"), 20)])
    assert r.alpha == 1.2 and r.S == pytest.approx(4.0) and r.R == pytest.approx(19.2)
    assert r.major_hazard and r.grade == 3
    r = evaluate(35, [(find("氯"), 20), (find("液化石油气"), 100)])
    assert r.S == pytest.approx(6.0) and r.R == pytest.approx(22.8) and r.grade == 3


@pytest.mark.parametrize("name,q,people,S,R,grade", [
    ("ammonia", 10, 0, 1.0, 0.5 * 2 * 1, 4),            # S exactly 1 -> major hazard
    ("ammonia", 9.99, 100, 0.999, 2.0 * 2 * 0.999, None),  # S < 1 -> not graded
    ("hydrogen sulfide", 50, 100, 10.0, 2.0 * 5 * 10, 1),
    ("phosgene", 0.6, 29, 2.0, 1.0 * 20 * 2, 3),
    ("hydrogen cyanide", 6, 50, 6.0, 1.5 * 10 * 6, 2),
    ("methanol", 5000, 49, 10.0, 1.2 * 1 * 10, 3),       # beta from table 4 via W5.3
    ("gasoline", 400, 1, 2.0, 1.0 * 1.5 * 2, 4),         # beta 1.5 via W5.1
])
def test_single_substance(name, q, people, S, R, grade):
    r = evaluate(people, [(find(name), q)])
    assert r.S == pytest.approx(S) and r.R == pytest.approx(R) and r.grade == grade
    assert r.major_hazard is (grade is not None)


def test_mixture_sums_terms_and_repeats_add_up():
    # 2 t H2S (5/5 -> 0.4*5), 3 t NH3 (beta 2, Q 10), 25 t benzene (beta 1, Q 50): S = 0.4+0.3+0.5 = 1.2
    r = evaluate(120, [(find("H2S"), 2), (find("NH3"), 3), (find("benzene"), 25)])
    assert r.S == pytest.approx(1.2)
    assert r.R == pytest.approx(2.0 * (5 * 0.4 + 2 * 0.3 + 1 * 0.5))
    assert r.grade == 4
    # the same substance in two tanks adds up
    r2 = evaluate(120, [(find("benzene"), 10), (find("71-43-2"), 15), (find("H2S"), 2), (find("ammonia"), 3)])
    assert r2.S == pytest.approx(r.S) and r2.R == pytest.approx(r.R)
    assert r2.terms["benzene"]["q_t"] == 25
    # each substance below its Q, together a major hazard
    r3 = evaluate(0, [(find("chlorine"), 3), (find("ammonia"), 5)])
    assert r3.S == pytest.approx(1.1) and r3.major_hazard


def test_categories_tables_2_and_4():
    t = default_table()
    assert t.find("w2").beta == 1.5 and t.find("J1").beta == 4 and t.find("J2").beta == 1
    assert t.find("J3").beta == 2 and t.find("J4").beta == 2 and t.find("J5").beta == 1
    assert t.find("W5.1").beta == 1.5 and {t.find(c).beta for c in ("W5.2", "W5.3", "W5.4")} == {1.0}
    assert {t.find(c).beta for c in ("W1.1", "W1.2", "W1.3")} == {2.0}
    # table 2 Q values are not in docs/domain.md: they must be flagged as unverified
    assert "Q" in t.find("W5.3").unverified
    # named substance not in table 3: beta through its category
    assert find("LPG").beta == 1.5 and find("LPG").category == "W2"
    assert find("styrene").beta == 1.0 and find("propylene oxide").beta == 1.5
    # category entries grade like substances
    r = evaluate(1, [(t.find("W2"), 20)])
    assert r.S == pytest.approx(2.0) and r.R == pytest.approx(3.0) and "W2" in r.unverified


def test_table3_betas_and_domain_q_values_match_domain_md():
    beta = {"carbon monoxide": 2, "SO2": 2, "NH3": 2, "ethylene oxide": 2, "HCl": 3, "methyl bromide": 3,
            "chlorine": 4, "H2S": 5, "HF": 5, "NO2": 10, "HCN": 10, "phosgene": 20, "PH3": 20,
            "methyl isocyanate": 20}
    for n, b in beta.items():
        assert find(n).beta == b, n
        assert find(n).beta_src.startswith("table 3")
    q = {"LPG": 50, "methanol": 500, "benzene": 50, "chlorine": 5, "ammonia": 10, "hydrogen": 5, "gasoline": 200,
         "H2S": 5, "methane": 50, "natural gas": 50, "ethylene": 50, "acetylene": 1, "1,3-butadiene": 5,
         "vinyl chloride": 50, "ethylene oxide": 10, "propylene oxide": 10, "toluene": 500, "ethanol": 500,
         "acetone": 500, "styrene": 500, "ethyl acetate": 500, "acrylonitrile": 50, "SO2": 20, "HCN": 1,
         "phosgene": 0.3}
    for n, v in q.items():
        assert find(n).Q_t == v, n
        assert "Q" not in find(n).unverified, n
    # values that docs/domain.md does not give are marked
    assert "Q" in find("HCl").unverified and "Q" in find("methyl isocyanate").unverified


def test_shipped_data_cas_numbers_valid():
    t = default_table()
    named = [s for s in t.substances.values() if s.table == "1"]
    assert len(named) >= 31
    for s in named:
        assert s.cas and all(cas_valid(c) for c in s.cas), s.id
        assert s.zh and s.en
    assert cas_valid("7782-50-5") and not cas_valid("7782-50-4") and not cas_valid("7782505")


def test_lookup_case_insensitive_and_close_matches():
    assert find("CHLORINE").id == find("氯").id == find("7782-50-5").id == find(" Cl2 ").id == "chlorine"
    assert find("Ｃｈｌｏｒｉｎｅ").id == "chlorine"  # full-width input
    with pytest.raises(UnknownSubstance) as e:
        find("chlorin")
    msg = str(e.value)
    assert "\n" not in msg and "chlorine" in msg and "close matches" in msg


def test_bad_data_file_names_entry(tmp_path):
    p = tmp_path / "t.yaml"
    p.write_text("categories: []\nnamed:\n  - {id: x, zh: 甲, en: x, cas: [7782-50-4], Q_t: 5, Q_src: s, "
                 "beta: 1, beta_src: s}\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"named\[0\].*check digit"):
        SubstanceTable(p)
    p.write_text("categories: []\nnamed:\n  - {id: x, zh: 甲, en: x, Q_t: 0, Q_src: s, beta: 1, beta_src: s}\n",
                 encoding="utf-8")
    with pytest.raises(ValueError, match=r"named\[0\].*> 0"):
        SubstanceTable(p)


@pytest.mark.parametrize("people,a", [(0, 0.5), (1, 1.0), (29, 1.0), (30, 1.2), (49, 1.2), (50, 1.5), (99, 1.5),
                                      (100, 2.0), (5000, 2.0)])
def test_alpha_boundaries(people, a):
    assert alpha(people) == a


@pytest.mark.parametrize("bad", [-1, 1.5, True, "10"])
def test_alpha_rejects_bad_counts(bad):
    with pytest.raises(ValueError):
        alpha(bad)


@pytest.mark.parametrize("q,grade", [(12.5, 3), (12.4999, 4), (62.5, 2), (62.4999, 3), (125, 1), (124.9999, 2)])
def test_grade_boundaries_exact(q, grade):
    # alpha 1 (1 person), chlorine beta 4, Q 5: R = 0.8 q -> 10 / 50 / 100 exactly at 12.5 / 62.5 / 125 t
    r = evaluate(1, [(find("chlorine"), q)])
    assert r.grade == grade


def test_grade_of_boundaries_and_float_noise():
    assert [grade_of(x) for x in (9.999, 10, 49.99, 50, 99.99, 100, 0)] == [4, 3, 3, 2, 2, 1, 4]
    assert grade_of(0.1 + 0.2 + 9.7) == 3          # 9.999999999999998 in binary
    assert grade_of(100 - 1e-12) == 1


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0, 1e4), min_size=1, max_size=4), st.integers(0, 300), st.floats(0.01, 100))
def test_r_grows_with_quantity(qs, people, extra):
    names = ["chlorine", "lpg", "methanol", "ammonia"]
    pairs = [(find(names[i]), q) for i, q in enumerate(qs)]
    r1 = evaluate(people, pairs)
    r2 = evaluate(people, pairs + [(find("benzene"), extra)])
    assert r2.R > r1.R and r2.S > r1.S
    if r1.grade is not None:
        assert r2.grade is not None and r2.grade <= r1.grade


def test_evaluate_rejects_negative_quantity():
    with pytest.raises(ValueError, match="chlorine"):
        evaluate(1, [(find("chlorine"), -1)])


# ---------------------------------------------------------------- colours and point codes

def test_colour_map_default_and_configured():
    cm = ColourMap()
    assert [cm.colour(g) for g in (1, 2, 3, 4, None)] == ["red", "orange", "yellow", "blue", "blue"]
    assert cm.colour(3, level2_active=True) == "orange"
    assert cm.colour(3, tripped=True) == "orange"
    assert cm.colour(3, True, True) == "orange"        # effects do not add up
    assert cm.colour(1, True, True) == "red"
    cm2 = ColourMap.from_dict({"grades": {"1": "red", "2": "red", "3": "orange", "4": "yellow"},
                               "trip": "red", "level2_alarm": "none", "not_major": "blue"})
    assert cm2.colour(4) == "yellow" and cm2.colour(4, tripped=True) == "red" and cm2.colour(4, True) == "yellow"
    with pytest.raises(ValueError, match="colour"):
        ColourMap.from_dict({"grades": {1: "green", 2: "red", 3: "red", 4: "red"}})
    with pytest.raises(ValueError, match="unknown key"):
        ColourMap.from_dict({"grade": {}})


def test_point_code():
    assert point_code("330100123456", "h01", "TK101_LT") == "330100123456H01TK101_LT"
    assert point_code("330100123456", "H01", "TK101.LT", sep="-") == "330100123456-H01-TK101.LT"
    for bad in [("", "H01", "t"), ("3301", "H 01", "t"), ("3301", "H01", "t/x")]:
        with pytest.raises(ValueError, match="point code"):
            point_code(*bad)
    with pytest.raises(ValueError, match="separator"):
        point_code("3301", "H-01", "t", sep="-")


# ---------------------------------------------------------------- volume models

def test_vertical_cylinder():
    v = VerticalCylinder(diameter_m=10, height_m=12)
    assert v.volume_m3(6) == pytest.approx(math.pi * 25 * 6)
    assert v.capacity_m3 == pytest.approx(math.pi * 25 * 12)
    assert v.volume_m3(0) == 0
    with pytest.raises(ValueError):
        v.volume_m3(12.01)
    with pytest.raises(ValueError):
        VerticalCylinder(0, 1)


def test_horizontal_cylinder_segment():
    h = HorizontalCylinder(diameter_m=3, length_m=10)
    r = 1.5
    assert h.volume_m3(r) == pytest.approx(math.pi * r * r * 10 / 2)      # half
    assert h.volume_m3(2 * r) == pytest.approx(math.pi * r * r * 10)      # full
    assert h.volume_m3(0) == pytest.approx(0, abs=1e-12)
    # a quarter-height point by hand: h = r/2 -> A = r^2 acos(1/2) - (r/2) sqrt(r^2 - r^2/4)
    a = r * r * math.pi / 3 - (r / 2) * math.sqrt(3 * r * r / 4)
    assert h.volume_m3(r / 2) == pytest.approx(a * 10)
    # hemispherical heads add a sphere; 2:1 heads half a sphere
    hh = HorizontalCylinder(diameter_m=3, length_m=10, head_depth_m=1.5)
    assert hh.capacity_m3 == pytest.approx(math.pi * r * r * 10 + 4 / 3 * math.pi * r ** 3)
    he = HorizontalCylinder(diameter_m=3, length_m=10, head_depth_m=0.75)
    assert he.volume_m3(r) == pytest.approx(math.pi * r * r * 10 / 2 + 2 / 3 * math.pi * r ** 3 / 2)
    with pytest.raises(ValueError):
        HorizontalCylinder(3, 10, head_depth_m=2)


def test_sphere_cap():
    s = Sphere(diameter_m=12)
    r = 6
    assert s.volume_m3(r) == pytest.approx(math.pi * r * r * (3 * r - r) / 3) == pytest.approx(2 / 3 * math.pi * r ** 3)
    assert s.volume_m3(2 * r) == pytest.approx(4 / 3 * math.pi * r ** 3)
    assert s.volume_m3(2) == pytest.approx(math.pi * 4 * (18 - 2) / 3)


@settings(max_examples=50, deadline=None)
@given(st.floats(0.5, 20), st.floats(0, 1), st.floats(0, 1))
def test_round_geometries_symmetric_and_monotone(d, f1, f2):
    lo, hi = sorted((f1 * d, f2 * d))
    for g in (HorizontalCylinder(d, 7.0, head_depth_m=d / 4), Sphere(d)):
        assert g.volume_m3(lo) <= g.volume_m3(hi) + 1e-9
        # V(h) + V(D - h) = full
        assert g.volume_m3(lo) + g.volume_m3(d - lo) == pytest.approx(g.capacity_m3, rel=1e-9, abs=1e-9)


def test_strapping_table_interpolation(tmp_path):
    t = StrappingTable(((0.0, 0.0), (1.0, 80.0), (2.0, 170.0), (10.0, 900.0)))
    assert t.volume_m3(0.5) == pytest.approx(40.0)
    assert t.volume_m3(1.0) == 80.0
    assert t.volume_m3(1.25) == pytest.approx(80 + 0.25 * 90)
    assert t.volume_m3(6.0) == pytest.approx(170 + 4 / 8 * 730)
    assert t.capacity_m3 == 900 and t.max_level_m == 10
    with pytest.raises(ValueError):
        t.volume_m3(10.5)
    with pytest.raises(ValueError, match="row 3"):
        StrappingTable(((0, 0), (1, 5), (1, 6)))
    p = tmp_path / "tk.csv"
    p.write_text("level_m,volume_m3\n# calibrated 2024\n0,0\n1,80\n2,170\n", encoding="utf-8")
    assert StrappingTable.from_csv(p).volume_m3(1.5) == pytest.approx(125)
    p.write_text("level_m,volume_m3\n0,0\n1,80\n2,7O\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"tk.csv:4"):
        StrappingTable.from_csv(p)
    p.write_text("0,0\n1,80\n2,70\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"tk.csv:3: .*decreases"):
        StrappingTable.from_csv(p)


def test_density_table():
    d = DensityTable(((-20.0, 0.60), (20.0, 0.55), (50.0, 0.50)))
    assert d.density_t_m3(0.0) == (pytest.approx(0.575), True)
    assert d.density_t_m3(60.0) == (0.50, False)
    assert d.max_density_t_m3 == 0.60


# ---------------------------------------------------------------- live engine

T0 = 1_780_000_000.0


def rd(tag, value, unit="m", quality=Quality.GOOD, mono=0.0, reason=None):
    if quality is Quality.BAD:
        return Reading(tag=tag, value=None, unit=unit, quality=quality, ts=T0, reason=reason or "timeout", mono=mono)
    return Reading(tag=tag, value=value, unit=unit, quality=quality, ts=T0, reason=reason, mono=mono)


def chlorine_unit(people=35, **kw):
    # two 1.6 m x 5 m horizontal chlorine bullets (flat heads), liquid chlorine 1.47 t/m3 at 0..20 degC.
    geo = HorizontalCylinder(diameter_m=1.6, length_m=5.0)
    tanks = [TankSpec("TK1.LT", "液氯", geo, DensityTable(((0.0, 1.47), (20.0, 1.41))), tag_temperature="TK1.TT"),
             TankSpec("TK2.LT", "chlorine", geo, 1.41, name="TK2")]
    return UnitSpec(name="chlorine-store", people_500m=people, tanks=tanks, **kw)


def test_engine_quantities_from_level_and_temperature():
    eng = HazardEngine([chlorine_unit()])
    assert set(eng.tags) == {"TK1.LT", "TK1.TT", "TK2.LT"}
    s = eng.status()[0]
    assert s["uncertain"] and all(t["basis"] == "upper_bound" for t in s["tanks"])  # nothing read yet
    eng.update(rd("TK1.TT", 10.0, "degC"))
    eng.update(rd("TK1.LT", 800.0, "mm"))           # half full
    eng.update(rd("TK2.LT", 100.0, "%"))            # full
    s = eng.status()[0]
    half = math.pi * 0.8 ** 2 * 5 / 2
    q1, q2 = half * 1.44, 2 * half * 1.41
    assert [t["q_t"] for t in s["tanks"]] == [pytest.approx(q1), pytest.approx(q2)]
    assert not s["uncertain"] and s["reasons"] == []
    assert s["S"] == pytest.approx((q1 + q2) / 5)
    assert s["R"] == pytest.approx(1.2 * 4 * (q1 + q2) / 5)
    assert s["grade"] == grade_of(1.2 * 4 * (q1 + q2) / 5)
    # design maximum: both full at the highest density of each tank
    assert s["design_S"] == pytest.approx((2 * half * 1.47 + 2 * half * 1.41) / 5)


def test_bad_quality_counts_tank_full_and_flags_uncertain():
    eng = HazardEngine([chlorine_unit()])
    eng.update(rd("TK1.TT", 10.0, "degC"))
    eng.update(rd("TK1.LT", 0.1))
    eng.update(rd("TK2.LT", 0.1))
    low = eng.status()[0]
    assert not low["uncertain"]
    ev = eng.update(rd("TK2.LT", None, quality=Quality.BAD, reason="timeout"))
    s = eng.status()[0]
    assert s["uncertain"] and any("TK2.LT: timeout" in r for r in s["reasons"])
    tk2 = s["tanks"][1]
    assert tk2["basis"] == "upper_bound"
    assert tk2["q_t"] == pytest.approx(math.pi * 0.8 ** 2 * 5 * 1.41)   # full, never lower
    assert s["R"] > low["R"]
    assert ev and ev[0]["uncertain"] and "uncertain" in ev[0]["changes"]
    # good again -> certain, an event says so
    ev = eng.update(rd("TK2.LT", 0.1))
    assert ev and ev[0]["uncertain"] is False and eng.status()[0]["R"] == pytest.approx(low["R"])


@pytest.mark.parametrize("reading,why", [
    (("TK2.LT", 1.7), "outside"),                        # above the diameter
    (("TK2.LT", -0.02), "outside"),
    (("TK2.LT", 0.5, "ft"), "unit"),
    (("TK2.LT", "n/a"), "not a number"),
])
def test_out_of_range_or_unknown_unit_is_upper_bound(reading, why):
    eng = HazardEngine([chlorine_unit()])
    eng.update(rd(*reading))
    t = eng.status()[0]["tanks"][1]
    assert t["basis"] == "upper_bound" and t["uncertain"]
    assert any(why in r for r in eng.status()[0]["reasons"])


def test_uncertain_quality_used_but_flagged_and_temperature_fallback():
    eng = HazardEngine([chlorine_unit()])
    eng.update(rd("TK2.LT", 0.8, quality=Quality.UNCERTAIN, reason="status UncertainLastUsableValue"))
    eng.update(rd("TK1.LT", 0.8))
    eng.update(rd("TK1.TT", None, quality=Quality.BAD))
    s = eng.status()[0]
    half = math.pi * 0.8 ** 2 * 5 / 2
    assert s["tanks"][1]["basis"] == "measured" and s["tanks"][1]["q_t"] == pytest.approx(half * 1.41)
    assert s["tanks"][0]["q_t"] == pytest.approx(half * 1.47)   # highest density of the table
    assert s["uncertain"] and len(s["reasons"]) == 2
    eng.update(rd("TK1.TT", 40.0, "degC"))                       # above the table -> nearest row, uncertain
    s = eng.status()[0]
    assert s["tanks"][0]["q_t"] == pytest.approx(half * 1.41)
    assert any("outside the density table" in r for r in s["reasons"])


def test_stale_reading_becomes_upper_bound():
    eng = HazardEngine([chlorine_unit()], stale_after_s=10)
    for tag, v, u in (("TK1.LT", 0.1, "m"), ("TK1.TT", 5.0, "degC"), ("TK2.LT", 0.1, "m")):
        eng.update(rd(tag, v, u, mono=100.0))
    assert not eng.status()[0]["uncertain"]
    assert eng.tick(105.0) == []
    ev = eng.tick(111.0)
    s = eng.status()[0]
    assert s["uncertain"] and {t["basis"] for t in s["tanks"]} == {"upper_bound"}
    assert ev and ev[0]["uncertain"]


def test_grade_change_event_and_not_major():
    eng = HazardEngine([chlorine_unit(people=0, colour_basis="live")], clock=lambda: T0 + 5)
    eng.update(rd("TK1.TT", 10.0, "degC"))
    eng.update(rd("TK1.LT", 0.0))
    ev = eng.update(rd("TK2.LT", 0.05))   # almost empty: S < 1
    assert ev and ev[-1]["to_grade"] is None and ev[-1]["major_hazard"] is False
    s = eng.status()[0]
    assert s["S"] < 1 and s["grade"] is None and s["colour"] == "blue"
    ev = eng.update(rd("TK2.LT", 1.6))    # full: q = 14.17 t, S = 2.83, R = 0.5 x 4 x 2.83 = 5.7 -> grade 4
    assert len(ev) == 1
    e = ev[0]
    assert e["type"] == "hazard" and e["unit"] == "chlorine-store"
    assert e["from_grade"] is None and e["to_grade"] == 4 and e["major_hazard"]
    assert "grade" in e["changes"] and e["uncertain"] is False
    assert e["S"] == pytest.approx(math.pi * 0.64 * 5 * 1.41 / 5, rel=1e-6)
    assert e["ts"] == "2026-05-28T20:26:40.000Z"
    assert eng.update(rd("TK2.LT", 1.6)) == []   # no change, no event
    json.dumps(e)


def test_alarm_state_raises_colour_and_emits_event():
    eng = HazardEngine([chlorine_unit(people=35)], clock=lambda: T0)
    for tag, v, u in (("TK1.LT", 1.6, "m"), ("TK1.TT", 5.0, "degC"), ("TK2.LT", 1.6, "m")):
        eng.update(rd(tag, v, u))
    s = eng.status()[0]
    # both full: q = 10.05 m3 x (1.455 + 1.41) t/m3 = 28.8 t, S = 5.76, R = 1.2 x 4 x 5.76 = 27.6 -> grade 3
    assert s["R"] == pytest.approx(1.2 * 4 * math.pi * 0.64 * 5 * (1.455 + 1.41) / 5)
    assert s["grade"] == 3 and s["colour"] == "yellow"
    ev = eng.update_alarm_state("chlorine-store", level2_active=True)
    assert ev and ev[0]["from_colour"] == "yellow" and ev[0]["to_colour"] == "orange"
    assert ev[0]["changes"] == ["colour"] and ev[0]["from_grade"] == ev[0]["to_grade"] == 3
    assert eng.update_alarm_state("chlorine-store", tripped=True) == []   # effects do not stack
    ev = eng.update_alarm_state("chlorine-store", level2_active=False, tripped=False)
    assert ev[0]["to_colour"] == "yellow"
    with pytest.raises(KeyError, match="unknown unit"):
        eng.update_alarm_state("nope", True)


def test_colour_basis_worst_uses_design_grade():
    # 100 people: live 0.3 m in each -> S = 0.76, not major;
    # design full -> R = 2 x 4 x (14.77 + 14.17)/5 = 46 -> grade 3
    eng = HazardEngine([chlorine_unit(people=100)])
    for tag, v, u in (("TK1.LT", 0.3, "m"), ("TK1.TT", 5.0, "degC"), ("TK2.LT", 0.3, "m")):
        eng.update(rd(tag, v, u))
    s = eng.status()[0]
    assert s["design_grade"] == 3 and s["grade"] is None and s["colour"] == "yellow"


def test_fixed_quantities_overrides_and_vessel():
    # hydrogen vessel 10 m3 at 2.0 MPa gauge, 20 degC: q = P V M / (R T)
    vessel = VesselSpec("V1.PT", "hydrogen", volume_m3=10, molar_mass_kg_kmol=2.016, design_pressure=2.5,
                        temperature_c=20.0)
    unit = UnitSpec("mix", people_500m=10, vessels=[vessel], fixed={"苯": 30.0, "W5.3": 500},
                    overrides={"benzene": {"beta": 2.0}})
    eng = HazardEngine([unit])
    eng.update(rd("V1.PT", 2.0, "MPa"))
    s = eng.status()[0]
    q_h2 = (2101.325 * 10 * 2.016) / (8.314462618 * 293.15) / 1000
    assert s["tanks"][0]["q_t"] == pytest.approx(q_h2, rel=1e-6)
    assert s["S"] == pytest.approx(q_h2 / 5 + 30 / 50 + 500 / 1000)
    assert s["R"] == pytest.approx(1.0 * (1.5 * q_h2 / 5 + 2.0 * 30 / 50 + 1 * 500 / 1000))
    eng.update(rd("V1.PT", 2000.0, "kPa"))            # the reading's own unit wins
    assert eng.status()[0]["tanks"][0]["q_t"] == pytest.approx(q_h2, rel=1e-6)
    json.dumps(eng.status())
    eng.update(rd("V1.PT", None, quality=Quality.BAD))
    t = eng.status()[0]["tanks"][0]
    assert t["basis"] == "upper_bound"
    assert t["q_t"] == pytest.approx((2601.325 * 10 * 2.016) / (8.314462618 * 233.15) / 1000, rel=1e-6)


@pytest.mark.parametrize("unit,match", [
    (UnitSpec("u", 5, tanks=[TankSpec("a", "chlorin", Sphere(5), 1.4)]),
     r"unit u, tank a: unknown substance .*chlorine"),
    (UnitSpec("u", 5, tanks=[TankSpec("a", "chlorine", Sphere(5), DensityTable(((0, 1), (1, 1))))]),
     "tag_temperature"),
    (UnitSpec("u", 5, tanks=[TankSpec("a", "chlorine", Sphere(5), -1)]), "density"),
    (UnitSpec("u", -5), "people"),
    (UnitSpec("u", 5, fixed={"benzene": -3}), "fixed benzene"),
    (UnitSpec("u", 5, colour_map={"grades": {1: "pink", 2: "red", 3: "red", 4: "red"}}), "unit u: colour map"),
    (UnitSpec("u", 5, overrides={"benzene": {"Q_t": 0}}), "override benzene"),
])
def test_config_errors_are_one_line(unit, match):
    with pytest.raises(ValueError, match=match) as e:
        HazardEngine([unit])
    assert "\n" not in str(e.value)


def test_reading_of_other_tag_ignored():
    eng = HazardEngine([chlorine_unit()])
    assert eng.update(rd("GT-101", 12.0, "%LEL")) == []


# ---------------------------------------------------------------- grade command

def run_grade(*args):
    env = dict(os.environ, PYTHONIOENCODING="utf-8")
    return subprocess.run([PY, "-m", "gateway.hazard", *args], capture_output=True, text=True, encoding="utf-8",
                          cwd=ROOT, env=env, timeout=30)


@pytest.mark.parametrize("names", [("氯", "液化石油气"), ("Chlorine", "LPG"), ("7782-50-5", "68476-85-7")])
def test_grade_command_subprocess(names):
    p = run_grade("grade", "--people", "35", "--substance", f"{names[0]}=20", "--substance", f"{names[1]}=100")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["S"] == 6 and out["R"] == 22.8 and out["grade"] == 3 and out["major_hazard"] is True
    assert {s["id"] for s in out["substances"]} == {"chlorine", "lpg"}


def test_grade_command_not_major_and_unknown():
    p = run_grade("--people", "0", "--substance", "benzene=10")
    assert p.returncode == 0
    out = json.loads(p.stdout)
    assert out["major_hazard"] is False and out["grade"] is None and out["S"] == 0.2
    p = run_grade("--people", "3", "--substance", "bezene=10")
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.count("\n") == 1 and "benzene" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.parametrize("people,subs,msg", [(-1, ["benzene=1"], "--people"), (1, [], "at least one"),
                                             (1, ["benzene"], "NAME=TONNES"), (1, ["benzene=-2"], "TONNES"),
                                             (1, ["benzene=x"], "TONNES")])
def test_grade_command_usage_errors(capsys, people, subs, msg):
    assert grade_command(people, subs) == 2
    err = capsys.readouterr().err
    assert msg in err and err.count("\n") == 1


def test_grade_command_reports_unverified(capsys):
    assert grade_command(10, ["HCl=40", "W2=5"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["unverified"] == ["W2", "hydrogen-chloride"]
    assert out["S"] == pytest.approx(2.5) and out["grade"] == 4


def test_temperature_in_kelvin_and_unknown_unit():
    eng = HazardEngine([chlorine_unit()])
    eng.update(rd("TK1.LT", 0.8))
    eng.update(rd("TK1.TT", 283.15, "K"))               # 10 degC
    half = math.pi * 0.8 ** 2 * 5 / 2
    assert eng.status()[0]["tanks"][0]["q_t"] == pytest.approx(half * 1.44)
    eng.update(rd("TK1.TT", 50.0, "degF"))
    s = eng.status()[0]
    assert s["tanks"][0]["q_t"] == pytest.approx(half * 1.47)  # unknown unit -> highest density, uncertain
    assert any("degF" in r for r in s["reasons"])


def test_shared_temperature_tag_updates_every_unit():
    geo = VerticalCylinder(diameter_m=20, height_m=15)
    dens = DensityTable(((0.0, 0.890), (40.0, 0.855)))
    u1 = UnitSpec("dike-A", 60, tanks=[TankSpec("A1.LT", "苯", geo, dens, tag_temperature="AMB.TT")])
    u2 = UnitSpec("dike-B", 60, tanks=[TankSpec("B1.LT", "toluene", geo, dens, tag_temperature="AMB.TT")])
    eng = HazardEngine([u1, u2])
    eng.update(rd("A1.LT", 10.0))
    eng.update(rd("B1.LT", 10.0))
    ev = eng.update(rd("AMB.TT", 20.0, "degC"))
    assert {e["unit"] for e in ev} == {"dike-A", "dike-B"}      # both become certain
    q = math.pi * 100 * 10 * 0.8725
    a, b = eng.status()
    assert a["tanks"][0]["q_t"] == pytest.approx(q) and b["tanks"][0]["q_t"] == pytest.approx(q)
    # benzene Q 50: S = 54.8, R = 1.5 x 54.8 = 82 -> grade 2; toluene Q 500: S = 5.48, R = 8.2 -> grade 4
    assert a["grade"] == 2 and b["grade"] == 4
    # colour basis "worst": design full (4712 m3 x 0.89 t/m3): benzene R = 126 -> grade 1; toluene R = 12.6 -> 3
    assert (a["design_grade"], a["colour"]) == (1, "red") and (b["design_grade"], b["colour"]) == (3, "yellow")


def test_unit_from_yaml_config(tmp_path):
    from ruamel.yaml import YAML

    from gateway.hazard import unit_from_dict
    (tmp_path / "tables").mkdir()
    (tmp_path / "tables" / "tk3.csv").write_text("level_m,volume_m3\n0,0\n10,1000\n", encoding="utf-8")
    doc = YAML(typ="safe").load("""
units:
  - name: dike-1
    people_500m: 35
    major_hazard_code: H01
    colour_map: {trip: red}
    fixed: {甲醇: 100}
    tanks:
      - {tag_level: TK1.LT, substance: 液氯, density_t_m3: 1.41,
         geometry: {type: horizontal_cylinder, diameter_m: 1.6, length_m: 5}}
      - {tag_level: TK2.LT, substance: LPG, max_fill: 0.85, density_table: [[-20, 0.58], [40, 0.50]],
         tag_temperature: TK2.TT, geometry: {type: sphere, diameter_m: 12.3}}
      - {tag_level: TK3.LT, substance: methanol, density_t_m3: 0.79,
         geometry: {type: strapping_table, csv: tables/tk3.csv}}
    vessels:
      - {tag_pressure: V1.PT, substance: hydrogen, volume_m3: 10, molar_mass_kg_kmol: 2.016, design_pressure: 2.5}
""")
    unit = unit_from_dict(doc["units"][0], "gateway.yaml: hazard.units[0]", base_dir=tmp_path)
    eng = HazardEngine([unit])
    eng.update(rd("TK3.LT", 5.0))
    s = eng.status()[0]
    assert [t["tag"] for t in s["tanks"]] == ["TK1.LT", "TK2.LT", "TK3.LT", "V1.PT"]
    assert s["tanks"][2]["q_t"] == pytest.approx(500 * 0.79)
    assert s["fixed"] == {"methanol": 100.0}
    assert eng.update_alarm_state("dike-1", tripped=True)[0]["to_colour"] == "red"
    for bad, match in [({"name": "x"}, "missing key.*people_500m"),
                       ({"name": "x", "people_500m": 3, "tank": []}, "unknown key.*tank"),
                       ({"name": "x", "people_500m": 3, "tanks": [{"tag_level": "a", "substance": "苯",
                         "density_t_m3": 0.88, "geometry": {"type": "cone", "diameter_m": 3}}]},
                        r"tanks\[0\]\.geometry: type 'cone'"),
                       ({"name": "x", "people_500m": 3, "tanks": [{"tag_level": "a", "substance": "苯",
                         "geometry": {"type": "sphere", "diameter_m": 3}}]}, "density"),
                       ({"name": "x", "people_500m": 3, "tanks": [{"tag_level": "a", "substance": "苯",
                         "density_t_m3": 0.88, "geometry": {"type": "strapping_table", "csv": "nope.csv"}}]},
                        "nope.csv"),
                       ({"name": "x", "people_500m": 3, "tanks": [{"tag_level": "a", "substance": "苯",
                         "density_t_m3": 0.88, "geometry": {"type": "sphere", "diameter_m": "3"}}]},
                        "diameter_m must be a number")]:
        with pytest.raises(ValueError, match=match) as e:
            unit_from_dict(bad, "hazard.units[0]", base_dir=tmp_path)
        assert "\n" not in str(e.value) and str(e.value).startswith("hazard.units[0]")
