"""Identification (S), grading (R, grade 1..4), risk colour and regulator point codes. Pure functions.

:func:`point_code` is gateway.chain.basic_data.point_code (its docstring and docs/domain.md, "Regulator
platforms", give the format: enterprise code + major-hazard code + tag code, parts that never contain each
other), re-exported here where the hazard units' codes are used.

Rules (GB 18218-2018, via docs/domain.md [2]):

- Identification: a unit (production unit, or storage unit; each diked tank group is its own unit) is a
  major hazard installation when S = sum(q_i / Q_i) >= 1 (q: the design maximum quantity in tonnes,
  4.2.2 "实际存在量按设计最大量确定"; Q: critical quantity, tonnes, table 1 or table 2).
- Grading: R = alpha * sum(beta_i * q_i / Q_i). Grade 1: R >= 100; grade 2: 50 <= R < 100;
  grade 3: 10 <= R < 50; grade 4: R < 10. A unit with S < 1 is not graded (grade None).
- alpha by the number of people within 500 m outside the boundary: >= 100 -> 2.0; 50..99 -> 1.5;
  30..49 -> 1.2; 1..29 -> 1.0; 0 -> 0.5.

S and R are rounded to 9 decimal places before they are compared with 1, 10, 50 and 100, so that a
value that is exactly on a boundary in decimal (e.g. R = 1.5 x 4 x q/5 = 50) is not pushed under it by
binary floating point.

Risk colour (platform practice, docs/domain.md "Risk colours"): red / orange / yellow / blue = major / large /
general / low risk. :class:`ColourMap` keeps the mapping explicit and configurable; its default is
documented there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable

from gateway.chain.basic_data import point_code  # the one point-code rule, shared with the regulator side
from gateway.hazard.substances import Substance

#: alpha bands (lower bound of people within 500 m, alpha), highest first. GB 18218-2018 grading, alpha table.
ALPHA_BANDS: tuple[tuple[int, float], ...] = ((100, 2.0), (50, 1.5), (30, 1.2), (1, 1.0), (0, 0.5))
#: grade lower bounds of R, grade 1 first.
GRADE_BOUNDS: tuple[tuple[float, int], ...] = ((100.0, 1), (50.0, 2), (10.0, 3))
COLOURS: tuple[str, ...] = ("red", "orange", "yellow", "blue")  # highest risk first
_DIGITS = 9


def alpha(people_500m: int) -> float:
    """Correction factor alpha for ``people_500m`` people within 500 m outside the unit boundary.

    >= 100 -> 2.0; 50..99 -> 1.5; 30..49 -> 1.2; 1..29 -> 1.0; 0 -> 0.5 (GB 18218-2018, alpha table).
    Raises ValueError for a negative or non-integer count.
    """
    if isinstance(people_500m, bool) or not isinstance(people_500m, int) or people_500m < 0:
        raise ValueError(f"people within 500 m must be a whole number >= 0, got {people_500m!r}")
    for lower, a in ALPHA_BANDS:
        if people_500m >= lower:
            return a
    raise AssertionError("unreachable")


def grade_of(r: float) -> int:
    """Grade 1..4 for an R value (grade 1: R >= 100; 2: 50 <= R < 100; 3: 10 <= R < 50; 4: R < 10)."""
    r = round(r, _DIGITS)
    for lower, g in GRADE_BOUNDS:
        if r >= lower:
            return g
    return 4


@dataclass(frozen=True)
class Result:
    """Identification and grading of one unit.

    S: sum q/Q. R: alpha * sum beta q/Q (computed even when S < 1, for information). alpha: the factor
    used. major_hazard: S >= 1. grade: 1..4, or None when not a major hazard. terms: per substance id,
    {"q_t", "Q_t", "beta", "q_over_Q"}. unverified: substance ids whose Q or beta is not confirmed.
    """

    S: float
    R: float
    alpha: float
    major_hazard: bool
    grade: int | None
    terms: dict[str, dict[str, float]] = field(default_factory=dict)
    unverified: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-able dict (S and R rounded to 6 decimal places)."""
        return {"S": round(self.S, 6), "R": round(self.R, 6), "alpha": self.alpha,
                "major_hazard": self.major_hazard, "grade": self.grade, "terms": self.terms,
                "unverified": self.unverified}


def evaluate(people_500m: int, quantities: Iterable[tuple[Substance, float]]) -> Result:
    """S, R and grade of one unit from (substance, q tonnes) pairs; the same substance may repeat
    (its quantities add up, e.g. several tanks of one product).

    Raises ValueError for a negative or non-finite quantity or a bad people count.
    """
    a = alpha(people_500m)
    by_id: dict[str, tuple[Substance, float]] = {}
    for sub, q in quantities:
        q = float(q)
        if not math.isfinite(q) or q < 0:
            raise ValueError(f"{sub.id}: quantity must be a finite number of tonnes >= 0, got {q}")
        prev = by_id.get(sub.id)
        by_id[sub.id] = (sub, q + (prev[1] if prev else 0.0))
    terms = {}
    s_terms, r_terms = [], []
    for sid, (sub, q) in by_id.items():
        ratio = q / sub.Q_t
        s_terms.append(ratio)
        r_terms.append(sub.beta * ratio)
        terms[sid] = {"q_t": q, "Q_t": sub.Q_t, "beta": sub.beta, "q_over_Q": ratio}
    s = math.fsum(s_terms)
    r = a * math.fsum(r_terms)
    major = round(s, _DIGITS) >= 1.0
    unverified = sorted(sid for sid, (sub, _) in by_id.items() if sub.unverified)
    return Result(S=s, R=r, alpha=a, major_hazard=major, grade=grade_of(r) if major else None,
                  terms=terms, unverified=unverified)


@dataclass(frozen=True)
class ColourMap:
    """Explicit mapping from the grade and the live alarm state to a risk colour.

    grades: colour per grade 1..4. not_major: colour of a unit with S < 1 (grade None).
    level2_alarm / trip: what an active level-2 gas alarm (GB/T 50493-2019 5.5.2) / an active interlock
    trip in the unit does to the colour: "none", "raise" (one step towards red) or "red".
    The two effects do not add up: the stronger one applies.

    Default (documented choice of this project, not a standard): grade 1 red, 2 orange, 3 yellow,
    4 blue; not a major hazard blue; a level-2 gas alarm raises one step; an interlock trip raises
    one step. Raises ValueError (one line) for an unknown colour or effect.
    """

    grades: dict[int, str] = field(default_factory=lambda: {1: "red", 2: "orange", 3: "yellow", 4: "blue"})
    not_major: str = "blue"
    level2_alarm: str = "raise"
    trip: str = "raise"

    def __post_init__(self) -> None:
        if set(self.grades) != {1, 2, 3, 4}:
            raise ValueError(f"colour map: grades must map exactly 1, 2, 3, 4, got {sorted(self.grades)}")
        for c in [*self.grades.values(), self.not_major]:
            if c not in COLOURS:
                raise ValueError(f"colour map: unknown colour {c!r}; use one of {', '.join(COLOURS)}")
        for name in ("level2_alarm", "trip"):
            if getattr(self, name) not in ("none", "raise", "red"):
                raise ValueError(f"colour map: {name} must be none, raise or red, got {getattr(self, name)!r}")

    @classmethod
    def from_dict(cls, d: dict | None) -> "ColourMap":
        """From config keys grades (int or str keys), not_major, level2_alarm, trip; missing keys default."""
        d = dict(d or {})
        unknown = set(d) - {"grades", "not_major", "level2_alarm", "trip"}
        if unknown:
            raise ValueError(f"colour map: unknown key(s) {', '.join(sorted(unknown))}")
        if "grades" in d:
            try:
                d["grades"] = {int(k): v for k, v in d["grades"].items()}
            except (AttributeError, ValueError):
                raise ValueError("colour map: grades must map 1..4 to a colour") from None
        return cls(**d)

    def colour(self, grade: int | None, level2_active: bool = False, tripped: bool = False,
               base: str | None = None) -> str:
        """Risk colour for ``grade`` (1..4 or None) and the live alarm state. ``base``: the enterprise's
        assessed risk colour (风险分级, docs/domain.md "Risk colours"), which replaces the grade's colour
        when given; the alarm state raises it the same way."""
        if base is None:
            base = self.not_major if grade is None else self.grades[grade]
        elif base not in COLOURS:
            raise ValueError(f"colour map: unknown colour {base!r}; use one of {', '.join(COLOURS)}")
        i = COLOURS.index(base)
        for on, effect in ((level2_active, self.level2_alarm), (tripped, self.trip)):
            if not on or effect == "none":
                continue
            i = min(i, 0 if effect == "red" else max(0, COLOURS.index(base) - 1))
        return COLOURS[i]


__all__ = ["ALPHA_BANDS", "COLOURS", "ColourMap", "GRADE_BOUNDS", "Result", "alpha", "evaluate", "grade_of",
           "point_code"]
