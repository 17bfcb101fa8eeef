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
ROOT = Path(__file__).resolve().parents[2]


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
    # table 2 Q values are confirmed by two sources (S1, S2): no longer flagged as unverified
    assert t.find("W5.3").unverified == [] and t.find("W4").Q_t == 50
    # named substance not in table 3: beta through its category; several categories: the highest beta
    assert find("LPG").beta == 1.5 and find("LPG").category == "W2"
    assert find("styrene").beta == 1.0 and find("propylene oxide").beta == 2.0
    # category entries grade like substances
    r = evaluate(1, [(t.find("W2"), 20)])
    assert r.S == pytest.approx(2.0) and r.R == pytest.approx(3.0) and r.unverified == []


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
    # the seven Q values once recalled are confirmed by S1 and S2: no longer marked
    assert find("HCl").unverified == [] and find("methyl isocyanate").unverified == []


def test_shipped_data_cas_numbers_valid():
    t = default_table()
    named = [s for s in t.substances.values() if s.table == "1"]
    assert len(named) == 85
    for s in named:
        # the table-1 row of ammonium nitrate fertilizer gives no CAS number
        assert (s.cas or s.id == "ammonium-nitrate-fertilizer") and all(cas_valid(c) for c in s.cas), s.id
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


def design_q(density):  # one full 1.6 m x 5 m bullet (max_fill 1.0) at ``density`` t/m3
    return math.pi * 0.8 ** 2 * 5 * density


def test_engine_inventory_from_level_and_temperature_beside_the_design_grade():
    eng = HazardEngine([chlorine_unit()])
    assert set(eng.tags) == {"TK1.LT", "TK1.TT", "TK2.LT"}
    s = eng.status()[0]
    assert s["inventory_uncertain"] and all(t["inventory_basis"] == "upper_bound" for t in s["tanks"])
    # the grade: design maximum quantity (GB 18218-2018 4.2.2), TK1 full at the table's highest density
    D = (design_q(1.47) + design_q(1.41)) / 5
    assert s["basis"].startswith("design maximum quantity") and s["S"] == pytest.approx(D)
    assert s["R"] == pytest.approx(1.2 * 4 * D) and s["grade"] == grade_of(1.2 * 4 * D) == 3
    eng.update(rd("TK1.TT", 10.0, "degC"))
    eng.update(rd("TK1.LT", 800.0, "mm"))           # half full
    eng.update(rd("TK2.LT", 100.0, "%"))            # full
    s = eng.status()[0]
    half = math.pi * 0.8 ** 2 * 5 / 2
    q1, q2 = half * 1.44, 2 * half * 1.41
    assert [t["inventory_q_t"] for t in s["tanks"]] == [pytest.approx(q1), pytest.approx(q2)]
    assert not s["inventory_uncertain"] and s["reasons"] == []
    assert s["S_live"] == pytest.approx((q1 + q2) / 5)
    assert s["R_live"] == pytest.approx(1.2 * 4 * (q1 + q2) / 5)
    # the levels moved the inventory, not the grade
    assert s["S"] == pytest.approx(D) and s["grade"] == 3
    assert [t["design_q_t"] for t in s["tanks"]] == [pytest.approx(design_q(1.47)), pytest.approx(design_q(1.41))]


def test_bad_quality_counts_tank_full_and_flags_the_inventory_uncertain():
    eng = HazardEngine([chlorine_unit()])
    eng.update(rd("TK1.TT", 10.0, "degC"))
    eng.update(rd("TK1.LT", 0.1))
    eng.update(rd("TK2.LT", 0.1))
    low = eng.status()[0]
    assert not low["inventory_uncertain"]
    ev = eng.update(rd("TK2.LT", None, quality=Quality.BAD, reason="timeout"))
    s = eng.status()[0]
    assert s["inventory_uncertain"] and any("TK2.LT: timeout" in r for r in s["reasons"])
    tk2 = s["tanks"][1]
    assert tk2["inventory_basis"] == "upper_bound"
    assert tk2["inventory_q_t"] == pytest.approx(design_q(1.41))   # full, never lower
    assert s["R_live"] > low["R_live"] and s["R"] == low["R"] and s["grade"] == low["grade"]
    assert ev == []   # the inventory is no grade: no grade event for it
    eng.update(rd("TK2.LT", 0.1))
    assert eng.status()[0]["R_live"] == pytest.approx(low["R_live"]) and not eng.status()[0]["inventory_uncertain"]


def redundant_unit():
    geo = VerticalCylinder(diameter_m=10.0, height_m=10.0)
    return UnitSpec("dike", 10, tanks=[TankSpec(["T1.LT1", "T1.LT2"], "苯", geo, 0.88, name="T1")])


def test_redundant_level_instruments_take_the_higher_and_a_bad_one_never_lowers():
    eng = HazardEngine([redundant_unit()])
    area = math.pi * 25
    assert set(eng.tags) == {"T1.LT1", "T1.LT2"}
    eng.update_many([rd("T1.LT1", 6.0), rd("T1.LT2", 6.4)])
    t = eng.status()[0]["tanks"][0]
    assert t["inventory_q_t"] == pytest.approx(area * 6.4 * 0.88) and not t["inventory_uncertain"]
    assert t["tags"] == ["T1.LT1", "T1.LT2"]
    eng.update(rd("T1.LT2", None, quality=Quality.BAD, reason="sensor fault"))   # the higher one fails
    s = eng.status()[0]
    t = s["tanks"][0]
    # the remaining instrument counts, flagged: the figure is uncertain
    assert t["inventory_q_t"] == pytest.approx(area * 6.0 * 0.88) and t["inventory_uncertain"]
    assert s["inventory_uncertain"] and any("T1.LT2: sensor fault" in r for r in s["reasons"])
    eng.update(rd("T1.LT1", None, quality=Quality.BAD))                          # both: upper bound
    t = eng.status()[0]["tanks"][0]
    assert t["inventory_basis"] == "upper_bound" and t["inventory_q_t"] == pytest.approx(area * 10 * 0.88)
    eng.update_many([rd("T1.LT1", 3.0), rd("T1.LT2", 2.0)])
    assert eng.status()[0]["tanks"][0]["inventory_q_t"] == pytest.approx(area * 3.0 * 0.88)


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
    assert t["inventory_basis"] == "upper_bound" and t["inventory_uncertain"]
    assert any(why in r for r in eng.status()[0]["reasons"])


def test_uncertain_quality_used_but_flagged_and_temperature_fallback():
    eng = HazardEngine([chlorine_unit()])
    eng.update(rd("TK2.LT", 0.8, quality=Quality.UNCERTAIN, reason="status UncertainLastUsableValue"))
    eng.update(rd("TK1.LT", 0.8))
    eng.update(rd("TK1.TT", None, quality=Quality.BAD))
    s = eng.status()[0]
    half = math.pi * 0.8 ** 2 * 5 / 2
    assert s["tanks"][1]["inventory_basis"] == "measured"
    assert s["tanks"][1]["inventory_q_t"] == pytest.approx(half * 1.41)
    assert s["tanks"][0]["inventory_q_t"] == pytest.approx(half * 1.47)   # highest density of the table
    assert s["inventory_uncertain"] and len(s["reasons"]) == 2
    eng.update(rd("TK1.TT", 40.0, "degC"))                       # above the table -> nearest row, uncertain
    s = eng.status()[0]
    assert s["tanks"][0]["inventory_q_t"] == pytest.approx(half * 1.41)
    assert any("outside the density table" in r for r in s["reasons"])


def test_stale_reading_becomes_upper_bound():
    eng = HazardEngine([chlorine_unit()], stale_after_s=10)
    for tag, v, u in (("TK1.LT", 0.1, "m"), ("TK1.TT", 5.0, "degC"), ("TK2.LT", 0.1, "m")):
        eng.update(rd(tag, v, u, mono=100.0))
    assert not eng.status()[0]["inventory_uncertain"]
    assert eng.tick(105.0) == []
    assert eng.tick(111.0) == []     # the inventory goes up, the grade does not move
    s = eng.status()[0]
    assert s["inventory_uncertain"] and {t["inventory_basis"] for t in s["tanks"]} == {"upper_bound"}


def test_grade_is_the_design_grade_whatever_the_levels_do():
    # 0 people (alpha 0.5): design = both bullets full: S = (14.77 + 14.17) / 5 = 5.79, R = 0.5 x 4 x 5.79
    # = 11.6 -> grade 3, even while the tanks are almost empty (S_live < 1)
    eng = HazardEngine([chlorine_unit(people=0)], clock=lambda: T0 + 5)
    D = (design_q(1.47) + design_q(1.41)) / 5
    events = []
    for lt in (0.0, 0.05, 0.8, 1.6, 0.05):
        events += eng.update_many([rd("TK1.TT", 10.0, "degC"), rd("TK1.LT", lt), rd("TK2.LT", lt)])
        s = eng.status()[0]
        assert s["grade"] == 3 and s["S"] == pytest.approx(D) and s["R"] == pytest.approx(0.5 * 4 * D)
        assert s["major_hazard"] and s["colour"] == "yellow"
    assert events == []                     # a level change is never a grade change
    assert eng.status()[0]["S_live"] < 1    # the inventory is shown beside it
    json.dumps(eng.status())


def test_design_basis_change_is_an_event():
    from gateway.hazard.engine import basis_events

    old = HazardEngine([chlorine_unit(people=0)])
    new = HazardEngine([chlorine_unit(people=100)])                  # the population study changed
    ev = basis_events(old, new, T0)
    D = (design_q(1.47) + design_q(1.41)) / 5
    assert len(ev) == 1 and ev[0]["event"] == "design_basis_changed" and ev[0]["unit"] == "chlorine-store"
    assert (ev[0]["from_grade"], ev[0]["to_grade"]) == (3, 3) and set(ev[0]["changes"]) == {"R"}
    assert ev[0]["R"] == pytest.approx(2.0 * 4 * D, abs=1e-5) and ev[0]["ts"] == "2026-05-28T20:26:40.000Z"
    assert basis_events(new, HazardEngine([chlorine_unit(people=100)]), T0) == []    # same basis: none
    assert basis_events(None, new, T0) == []
    gone = basis_events(new, HazardEngine([redundant_unit()]), T0)
    assert sorted((e["unit"], e["changes"][0]) for e in gone) == [("chlorine-store", "removed"), ("dike", "added")]


def test_alarm_state_raises_colour_and_emits_event():
    eng = HazardEngine([chlorine_unit(people=35)], clock=lambda: T0)
    for tag, v, u in (("TK1.LT", 0.2, "m"), ("TK1.TT", 5.0, "degC"), ("TK2.LT", 0.2, "m")):
        eng.update(rd(tag, v, u))
    s = eng.status()[0]
    # design: S = 5.79, R = 1.2 x 4 x 5.79 = 27.8 -> grade 3 (yellow)
    assert s["R"] == pytest.approx(1.2 * 4 * (design_q(1.47) + design_q(1.41)) / 5)
    assert s["grade"] == 3 and s["colour"] == "yellow" and s["colour_source"] == "gateway-derived"
    ev = eng.update_alarm_state("chlorine-store", level2_active=True)
    assert ev and ev[0]["from_colour"] == "yellow" and ev[0]["to_colour"] == "orange"
    assert ev[0]["changes"] == ["colour"] and ev[0]["grade"] == 3 and ev[0]["event"] == "colour_changed"
    assert ev[0]["colour_source"] == "gateway-derived" and ev[0]["R_live"] < ev[0]["R"]
    assert eng.update_alarm_state("chlorine-store", tripped=True) == []   # effects do not stack
    ev = eng.update_alarm_state("chlorine-store", level2_active=False, tripped=False)
    assert ev[0]["to_colour"] == "yellow"
    with pytest.raises(KeyError, match="unknown unit"):
        eng.update_alarm_state("nope", True)


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
    # design: 2.5 MPa gauge at the coldest design temperature (-40 degC)
    q_h2_design = (2601.325 * 10 * 2.016) / (8.314462618 * 233.15) / 1000
    assert s["tanks"][0]["inventory_q_t"] == pytest.approx(q_h2, rel=1e-6)
    assert s["S_live"] == pytest.approx(q_h2 / 5 + 30 / 50 + 500 / 1000)
    assert s["R_live"] == pytest.approx(1.0 * (1.5 * q_h2 / 5 + 2.0 * 30 / 50 + 1 * 500 / 1000))
    assert s["S"] == pytest.approx(q_h2_design / 5 + 30 / 50 + 500 / 1000)
    assert s["R"] == pytest.approx(1.0 * (1.5 * q_h2_design / 5 + 2.0 * 30 / 50 + 1 * 500 / 1000))
    eng.update(rd("V1.PT", 2000.0, "kPa"))            # the reading's own unit wins
    assert eng.status()[0]["tanks"][0]["inventory_q_t"] == pytest.approx(q_h2, rel=1e-6)
    json.dumps(eng.status())
    eng.update(rd("V1.PT", None, quality=Quality.BAD))
    t = eng.status()[0]["tanks"][0]
    assert t["inventory_basis"] == "upper_bound"
    assert t["inventory_q_t"] == pytest.approx(q_h2_design, rel=1e-6)


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
    (UnitSpec("u", 5, tanks=[TankSpec(["a", "a"], "chlorine", Sphere(5), 1.4)]), "distinct tag names"),
    (UnitSpec("u", 5, tanks=[TankSpec("a", "氨", Sphere(5), 0.9, mixture="similar")]), "mixture must be one of"),
    (UnitSpec("u", 5, tanks=[TankSpec("a", "氨", Sphere(5), 0.9, mixture="own_class")]), "needs categories"),
    (UnitSpec("u", 5, tanks=[TankSpec("a", "氨", Sphere(5), 0.9, categories=("J3",))]), "not both"),
])
def test_config_errors_are_one_line(unit, match):
    with pytest.raises(ValueError, match=match) as e:
        HazardEngine([unit])
    assert "\n" not in str(e.value)


def test_several_hazards_take_the_lowest_Q_and_the_mixture_rule():
    geo = VerticalCylinder(diameter_m=4.0, height_m=5.0)
    vol = math.pi * 4 * 5
    # not in table 1, flammable gas W2 (Q 10) and acute toxic gas J3 (Q 50): Q = 10 (GB 18218-2018 4.2)
    multi = UnitSpec("m", 10, tanks=[TankSpec("M.LT", "", geo, 0.6, categories=("W2", "J3"))])
    s = HazardEngine([multi]).status()[0]
    assert s["S"] == pytest.approx(vol * 0.6 / 10, abs=1e-6)
    # a mixture of the same hazard class as ammonia counts as ammonia, on the whole mass (Q 10)
    same = UnitSpec("s", 10, tanks=[TankSpec("S.LT", "氨", geo, 0.9, mixture="same_class")])
    assert HazardEngine([same]).status()[0]["S"] == pytest.approx(vol * 0.9 / 10, abs=1e-6)
    # ammonia solution (氨水) is not of ammonia's class: its own class, e.g. acute toxicity J5 (Q 500)
    own = UnitSpec("o", 10, tanks=[TankSpec("O.LT", "氨", geo, 0.9, mixture="own_class", categories=("J5",))])
    assert HazardEngine([own]).status()[0]["S"] == pytest.approx(vol * 0.9 / 500, abs=1e-6)


def test_reading_of_other_tag_ignored():
    eng = HazardEngine([chlorine_unit()])
    assert eng.update(rd("GT-101", 12.0, "%LEL")) == []


# ---------------------------------------------------------------- grade command

def run_grade(*args):
    env = dict(os.environ, PYTHONIOENCODING="utf-8")
    return subprocess.run([PY, "-m", "gateway.hazard", *args], capture_output=True, text=True, encoding="utf-8",
                          cwd=ROOT, env=env, timeout=30)


@pytest.mark.e2e
@pytest.mark.parametrize("names", [("氯", "液化石油气"), ("Chlorine", "LPG"), ("7782-50-5", "68476-85-7")])
def test_grade_command_subprocess(names):
    p = run_grade("grade", "--people", "35", "--substance", f"{names[0]}=20", "--substance", f"{names[1]}=100")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["S"] == 6 and out["R"] == 22.8 and out["grade"] == 3 and out["major_hazard"] is True
    assert {s["id"] for s in out["substances"]} == {"chlorine", "lpg"}


@pytest.mark.e2e
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
    # HCl and W2 are confirmed (S1, S2); gasoline's beta rests on an uncertain classification
    assert grade_command(10, ["HCl=40", "W2=5", "汽油=100"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["unverified"] == ["gasoline"]
    # S = 40/20 + 5/10 + 100/200 = 3; R = 1.0 x (3 x 2 + 1.5 x 0.5 + 1.5 x 0.5) = 7.5
    assert out["S"] == pytest.approx(3.0) and out["R"] == pytest.approx(7.5) and out["grade"] == 4


def test_temperature_in_kelvin_and_unknown_unit():
    eng = HazardEngine([chlorine_unit()])
    eng.update(rd("TK1.LT", 0.8))
    eng.update(rd("TK1.TT", 283.15, "K"))               # 10 degC
    half = math.pi * 0.8 ** 2 * 5 / 2
    assert eng.status()[0]["tanks"][0]["inventory_q_t"] == pytest.approx(half * 1.44)
    eng.update(rd("TK1.TT", 50.0, "degF"))
    s = eng.status()[0]
    assert s["tanks"][0]["inventory_q_t"] == pytest.approx(half * 1.47)  # unknown unit -> highest density, uncertain
    assert any("degF" in r for r in s["reasons"])


def test_shared_temperature_tag_updates_every_unit():
    geo = VerticalCylinder(diameter_m=20, height_m=15)
    dens = DensityTable(((0.0, 0.890), (40.0, 0.855)))
    u1 = UnitSpec("dike-A", 60, tanks=[TankSpec("A1.LT", "苯", geo, dens, tag_temperature="AMB.TT")])
    u2 = UnitSpec("dike-B", 60, tanks=[TankSpec("B1.LT", "toluene", geo, dens, tag_temperature="AMB.TT")])
    eng = HazardEngine([u1, u2])
    eng.update(rd("A1.LT", 10.0))
    eng.update(rd("B1.LT", 10.0))
    eng.update(rd("AMB.TT", 20.0, "degC"))
    q = math.pi * 100 * 10 * 0.8725
    a, b = eng.status()
    assert a["tanks"][0]["inventory_q_t"] == pytest.approx(q) and b["tanks"][0]["inventory_q_t"] == pytest.approx(q)
    assert not a["inventory_uncertain"] and not b["inventory_uncertain"]   # both units took the temperature
    # inventory: benzene Q 50: S_live = 54.8, R_live = 1.5 x 54.8 = 82; toluene Q 500: R_live = 8.2
    assert a["R_live"] == pytest.approx(1.5 * q / 50) and b["R_live"] == pytest.approx(1.5 * q / 500)
    # grade: design full (4712 m3 x 0.89 t/m3): benzene R = 126 -> grade 1; toluene R = 12.6 -> grade 3
    assert (a["grade"], a["colour"]) == (1, "red") and (b["grade"], b["colour"]) == (3, "yellow")


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
      - {tag_level: [TK4.LT1, TK4.LT2], categories: [W2, J3], density_t_m3: 0.6, name: TK4,
         geometry: {type: vertical_cylinder, diameter_m: 4, height_m: 5}}
    vessels:
      - {tag_pressure: V1.PT, substance: hydrogen, volume_m3: 10, molar_mass_kg_kmol: 2.016, design_pressure: 2.5}
""")
    unit = unit_from_dict(doc["units"][0], "gateway.yaml: hazard.units[0]", base_dir=tmp_path)
    eng = HazardEngine([unit])
    eng.update(rd("TK3.LT", 5.0))
    s = eng.status()[0]
    assert [t["tag"] for t in s["tanks"]] == ["TK1.LT", "TK2.LT", "TK3.LT", "TK4.LT1", "V1.PT"]
    assert s["tanks"][3]["tags"] == ["TK4.LT1", "TK4.LT2"] and s["tanks"][3]["substance"] == "W2+J3"
    assert s["tanks"][2]["inventory_q_t"] == pytest.approx(500 * 0.79)
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
                        "diameter_m must be a number"),
                       ({"name": "x", "people_500m": 3, "colour_basis": "live"}, r"colour_basis: removed.*4\.2\.2"),
                       ({"name": "x", "people_500m": 3, "tanks": [{"tag_level": "a", "density_t_m3": 0.88,
                         "geometry": {"type": "sphere", "diameter_m": 3}}]}, "give substance .* or categories"),
                       ({"name": "x", "people_500m": 3, "tanks": [{"tag_level": [], "substance": "苯",
                         "density_t_m3": 0.88, "geometry": {"type": "sphere", "diameter_m": 3}}]}, "tag_level"),
                       ({"name": "x", "people_500m": 3, "tanks": [{"tag_level": "a", "categories": "W2",
                         "density_t_m3": 0.88, "geometry": {"type": "sphere", "diameter_m": 3}}]}, "categories")]:
        with pytest.raises(ValueError, match=match) as e:
            unit_from_dict(bad, "hazard.units[0]", base_dir=tmp_path)
        assert "\n" not in str(e.value) and str(e.value).startswith("hazard.units[0]")


def test_enterprise_assessed_risk_replaces_the_derived_colour_and_alarms_still_raise_it():
    unit = chlorine_unit(people=35, assessed_risk={"colour": "orange", "source": "2026 风险分级评估报告"})
    eng = HazardEngine([unit], clock=lambda: T0)
    s = eng.status()[0]
    assert s["grade"] == 3 and s["colour"] == "orange"          # grade 3 alone would be yellow
    assert s["colour_source"] == "enterprise assessment: 2026 风险分级评估报告"
    ev = eng.update_alarm_state("chlorine-store", tripped=True)
    assert ev[0]["to_colour"] == "red" and ev[0]["colour_source"].startswith("enterprise assessment")
    for bad in ({"colour": "pink", "source": "x"}, {"colour": "red"}, {"colour": "red", "source": " "}):
        with pytest.raises(ValueError, match="assessed_risk needs colour"):
            HazardEngine([chlorine_unit(assessed_risk=bad)])
