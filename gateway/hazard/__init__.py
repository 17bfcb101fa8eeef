"""Major hazard installations (重大危险源): identification, R-value grading and risk colours (GB 18218-2018).

Modules: :mod:`~gateway.hazard.substances` (tables 1-4 as shipped data), :mod:`~gateway.hazard.volume`
(level -> volume -> tonnes), :mod:`~gateway.hazard.grading` (S, R, alpha, grade, colour map, point codes,
pure functions) and :mod:`~gateway.hazard.engine` (live per-unit state fed by readings).

:func:`grade_command` is the ``hazard-gateway grade`` command.
"""

from __future__ import annotations

import json
import math
import sys

from gateway.i18n import gettext as _
from gateway.hazard.engine import HazardEngine, TankSpec, UnitSpec, VesselSpec, unit_from_dict
from gateway.hazard.grading import ColourMap, Result, alpha, evaluate, grade_of, point_code
from gateway.hazard.substances import Substance, SubstanceTable, UnknownSubstance, default_table, find
from gateway.hazard.volume import DensityTable, HorizontalCylinder, Sphere, StrappingTable, VerticalCylinder


def _err(msg: str) -> None:
    print(f"hazard-gateway: grade: {msg}", file=sys.stderr)


def grade_summary(res: Result) -> str:
    """One line a person reads, in their language (gateway.i18n): "grade 3 major hazard installation, yellow
    (R = 22.8, S = 6)" (三级重大危险源，黄色（R = 22.8，S = 6）), with the grade's risk colour of the default
    colour map (docs/domain.md "Risk colours"); or "not a major hazard installation (S = 0.2 < 1)"
    (GB 18218-2018 4.2: S >= 1 is a major hazard installation)."""
    def num(x: float) -> str:
        return f"{round(x, 6):g}"

    if not res.major_hazard or res.grade is None:
        return _("not a major hazard installation (S = {S} < 1)").format(S=num(res.S))
    grades = {1: _("grade 1"), 2: _("grade 2"), 3: _("grade 3"), 4: _("grade 4")}
    colours = {"red": _("red"), "orange": _("orange"), "yellow": _("yellow"), "blue": _("blue")}
    colour = ColourMap().colour(res.grade)
    return _("{grade} major hazard installation, {colour} (R = {R}, S = {S})").format(
        grade=grades[res.grade], colour=colours.get(colour, colour), R=num(res.R), S=num(res.S))


def grade_command(people: int, substances: list[str]) -> int:
    """``hazard-gateway grade --people N --substance NAME=TONNES [--substance ...]``.

    NAME: Chinese name, English name, alias, CAS number or category code (case-insensitive), or several
    table-2 codes joined by "+" ("W2+J3") for a chemical not in table 1 with several hazards (the lowest
    Q, GB 18218-2018 4.2). TONNES: the quantity q in tonnes, the DESIGN maximum quantity of the tanks,
    vessels and stores (GB 18218-2018 4.2.2), not the current inventory. The same substance may repeat
    (quantities add up). Prints JSON to stdout:
    S, R, alpha, people_500m, major_hazard, grade (1..4, or null when S < 1), substances (per substance:
    id, name_zh, name_en, q_t, Q_t, beta, q_over_Q, Q_src, beta_src) and unverified (substances whose Q
    or beta is not confirmed, see gateway/hazard/data/gb18218_2018.yaml), and summary (one line in the
    reader's language, :func:`grade_summary`: e.g. 三级重大危险源，黄色（R = 22.8，S = 6）).

    Returns 0, or 2 after one line on stderr for a usage error (unknown name with close matches, bad
    tonnes, negative people, no substance).
    """
    if isinstance(people, bool) or not isinstance(people, int) or people < 0:
        _err(_("--people must be a whole number >= 0, got {people}").format(people=repr(people)))
        return 2
    if not substances:
        _err(_("give at least one --substance NAME=TONNES"))
        return 2
    pairs: list[tuple[Substance, float]] = []
    for arg in substances:
        name, eq, tonnes = arg.rpartition("=")
        if not eq or not name.strip():
            _err(_("--substance {arg}: expected NAME=TONNES").format(arg=repr(arg)))
            return 2
        try:
            q = float(tonnes)
        except ValueError:
            q = math.nan
        if not math.isfinite(q) or q < 0:
            _err(_("--substance {arg}: TONNES must be a number >= 0").format(arg=repr(arg)))
            return 2
        try:
            name = name.strip()
            codes = [c.strip() for c in name.split("+")]
            pairs.append((default_table().by_categories(codes) if len(codes) > 1 else find(name), q))
        except UnknownSubstance as e:
            _err(str(e))
            return 2
    res = evaluate(people, pairs)
    subs_out = []
    for sid, t in res.terms.items():
        s = next(p[0] for p in pairs if p[0].id == sid)
        subs_out.append({"id": sid, "name_zh": s.zh, "name_en": s.en, "cas": list(s.cas), "q_t": t["q_t"],
                         "Q_t": t["Q_t"], "beta": t["beta"], "q_over_Q": round(t["q_over_Q"], 6),
                         "Q_src": s.Q_src, "beta_src": s.beta_src})
    out = {"standard": "GB 18218-2018", "people_500m": people, "alpha": res.alpha, "S": round(res.S, 6),
           "R": round(res.R, 6), "major_hazard": res.major_hazard, "grade": res.grade,
           "substances": subs_out, "unverified": res.unverified, "summary": grade_summary(res)}
    print(json.dumps(out, ensure_ascii=False, indent=2))
    return 0


__all__ = ["ColourMap", "DensityTable", "HazardEngine", "HorizontalCylinder", "Result", "Sphere", "StrappingTable",
           "Substance", "SubstanceTable", "TankSpec", "UnitSpec", "UnknownSubstance", "VerticalCylinder",
           "VesselSpec", "alpha", "default_table", "evaluate", "find", "grade_command", "grade_of", "point_code",
           "unit_from_dict"]
