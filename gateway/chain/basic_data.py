"""The basic-data record (基础数据): what the regulator knows of a gateway's plant, signed in its chain.

Provincial platforms register an enterprise's basic data beside its readings: the enterprise, its major
hazard installations (重大危险源) with their grade, the tanks and vessels (储罐) with capacity and medium,
and every monitoring point (监测点位) with its type, unit, range and thresholds (docs/domain.md, "Regulator
platforms": P1, a DB11 draft). The gateway puts this document into its chain as an event at every start
and after every applied reload (``{"type": "basic_data", ...}``, gateway.runtime.basic_data), so it is
signed and uploaded like any event; the receiver validates each one with :func:`validate`, binds the
enterprise code to the gateway and keeps the latest (gateway.regulator.receiver).

Shared by both ends of the wire (imports only pydantic, the standard library and gateway.model). Also the
one place of two rules both ends apply: the regulator point code (:func:`point_code`) and the CAS Registry
Number check digit (:func:`cas_valid`).

Document, version 1 (:data:`VERSION`; every field is present, null where unknown)::

    {"type": "basic_data", "version": 1, "gateway_id": str, "config_hash": str (sha256 hex of the config
     that made it), "ts": RFC 3339 UTC,
     "enterprise": {"code": str | null, "name": str | null}, "point_separator": str,
     "installations": [{"name", "major_hazard_code": str | null, "people_500m": int, "alpha", "S", "R",
                        "major_hazard": bool, "grade": 1..4 | null (null exactly when not a major hazard),
                        "colour": red|orange|yellow|blue, "colour_source", "basis"}],
     "vessels": [{"name", "installation" (an installation's name), "kind": "tank" | "vessel",
                  "capacity_m3" (> 0), "design_q_t" (>= 0), "medium": MEDIUM, "tags": [str]}],
     "points": [{"tag", "tag_code", "code": str | null, "major_hazard_code": str | null,
                 "measure": MEASURE | null, "unit": str, "range": [lo, hi] | null,
                 "limits": {"HH"|"H"|"L"|"LL": float}, "vessel": str | null, "installation": str | null,
                 "medium": MEDIUM | null, "writable": bool, "description": str | null}]}
    MEDIUM = {"name": str, "name_en": str | null, "cas": str | null}

S, R, grade and colour are the design figures (GB 18218-2018 4.2.2: the design maximum quantity), never
the live inventory. Units are the canonical spellings of :data:`MEASURE_UNITS` (the edge maps its tags'
spellings onto them).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gateway.model import Explained

TYPE = "basic_data"
#: version of the document's schema; a new field or a changed meaning is a new version
VERSION = 1

#: what a point measures -> the canonical engineering units it may carry (docs/domain.md, "Regulator
#: platforms": level, temperature, pressure, flow, concentration, valve position, switch). A valve position
#: or switch state in "" is a two-state signal (1 = open / on).
MEASURE_UNITS: dict[str, frozenset[str]] = {
    "level": frozenset({"m", "cm", "mm", "%"}),
    "temperature": frozenset({"degC", "K"}),
    "pressure": frozenset({"Pa", "kPa", "MPa", "bar"}),
    "flow": frozenset({"m3/h", "m3/s", "Nm3/h", "L/min", "L/h", "L/s", "t/h", "kg/h", "kg/s"}),
    "gas_concentration": frozenset({"%LEL", "LEL·m", "%VOL", "%OEL", "%IDLH", "ppm", "mg/m3"}),
    "valve_position": frozenset({"%", ""}),
    "switch_state": frozenset({""}),
}
MEASURES = tuple(MEASURE_UNITS)
COLOURS = ("red", "orange", "yellow", "blue")
LIMIT_KINDS = ("LL", "L", "H", "HH")   # rising (ISA-18.2 / IEC 62682)

_CAS_RE = re.compile(r"^(\d{2,7})-(\d{2})-(\d)$")
CODE_PART_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_GATEWAY_ID_RE = r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$"   # gateway.chain.signing.GATEWAY_ID_RE


def cas_valid(cas: str) -> bool:
    """True when ``cas`` has the CAS Registry Number form NNNNNNN-NN-N (2-7, 2 and 1 digits) with a correct
    check digit: the sum of the other digits weighted 1, 2, 3 ... from the right, modulo 10 (CAS, "CAS
    Registry Number" check digit rule; 71-43-2: 3x1 + 4x2 + 1x3 + 7x4 = 42 -> 2)."""
    m = _CAS_RE.match(cas) if isinstance(cas, str) else None
    if not m:
        return False
    digits = (m.group(1) + m.group(2))[::-1]
    return sum((i + 1) * int(d) for i, d in enumerate(digits)) % 10 == int(m.group(3))


def code_clash(enterprise_code: str, major_hazard_code: str, tag_code: str | None = None) -> str | None:
    """Why the parts of a point code cannot be told apart, or None: the enterprise code inside the
    major-hazard code or the other way round, or a tag code part that contains either (case-insensitive,
    as the codes are upper-cased). A platform splits a code without separators by field lengths and a
    person reads it by eye; a part that repeats another (``330100000001`` + ``330100000001-01``) makes
    both wrong (docs/domain.md, "Regulator platforms")."""
    e, m = str(enterprise_code).strip().upper(), str(major_hazard_code).strip().upper()
    if e and m and e in m:
        return Explained("the major-hazard code {mh} repeats the enterprise code {ent}: give the installation's own "
                         "code without it (e.g. H01)", mh=repr(m), ent=repr(e))
    if e and m and m in e:
        return Explained("the major-hazard code {mh} occurs inside the enterprise code {ent}: choose one that does "
                         "not (e.g. H01)", mh=repr(m), ent=repr(e))
    t = str(tag_code or "").strip().upper()
    for what, part in (("enterprise code", e), ("major-hazard code", m)):
        if t and part and part in t:
            return Explained("the tag code {tag} contains the {what} {part}", tag=repr(str(tag_code).strip()),
                             what=what, part=repr(part))
    return None


def code_part(name: str, value: Any, sep: str = "") -> str:
    """One part of a point code (``name``: "enterprise code", "major-hazard code", "tag"), stripped: letters,
    digits, '_', '.', '-', not empty, without ``sep``. Raises ValueError (one line, a gateway.model.Explained)."""
    v = "" if value is None else str(value).strip()
    if not CODE_PART_RE.match(v):
        raise ValueError(Explained("{name} {value} must be letters, digits, '_', '.', '-' and not empty", name=name,
                                   value=repr(v)))
    if sep and sep in v:
        raise ValueError(Explained("{name} {value} contains the separator {sep}", name=name, value=repr(v),
                                   sep=repr(sep)))
    return v


def _prefixed(msg: Any) -> Explained:
    if isinstance(msg, Explained):
        return Explained("point code: " + msg.template, **msg.fields)
    return Explained("point code: {what}", what=str(msg))


def point_code(enterprise_code: str, major_hazard_code: str, tag: str, *, sep: str = "") -> str:
    """The regulator point code: ``<enterprise code><sep><major-hazard code><sep><tag code>``.

    - enterprise code: the regulator's code of the enterprise (12 digits on the platforms seen),
      ``gateway.enterprise_code``;
    - major-hazard code: the installation's own code within the enterprise (e.g. ``H01``): the hazard
      unit's ``major_hazard_code``, else ``gateway.major_hazard_code``; never the enterprise code again
      (where a platform issues a full code that begins with the enterprise code, give the part after it);
    - tag code: the tag's ``point.code``, else the tag name;
    - ``sep``: ``gateway.point_separator``, default none (each province profile fixes the field lengths).

    Letters are upper-cased in the enterprise and major-hazard codes. No public copy of the national
    data-access specification exists (docs/domain.md, "Regulator platforms", "Point codes"); this is
    the format the provinces seen use. E.g. ``point_code("330100000001", "h01", "T101.level")`` ->
    ``"330100000001H01T101.level"``.

    Raises ValueError (one line, a gateway.model.Explained) for an empty part, a part with characters other
    than letters, digits, '_', '.', '-', a part that contains ``sep``, or parts that contain each other
    (:func:`code_clash`).
    """
    parts = []
    for name, v in (("enterprise code", enterprise_code), ("major-hazard code", major_hazard_code), ("tag", tag)):
        try:
            parts.append(code_part(name, v, sep))
        except ValueError as e:
            raise ValueError(_prefixed(e.args[0])) from None
    clash = code_clash(*parts)
    if clash is not None:
        raise ValueError(_prefixed(clash))
    parts[0], parts[1] = parts[0].upper(), parts[1].upper()
    return sep.join(parts)


# --- the document's schema ------------------------------------------------------------------------------

class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, strict=True)


Text = Annotated[str, Field(min_length=1)]
Number = float   # strict mode takes an int for a float too (JSON has one number type), never a bool or text


class Medium(_Strict):
    name: Text
    name_en: Text | None
    cas: str | None

    @field_validator("cas")
    @classmethod
    def _cas(cls, v: str | None) -> str | None:
        if v is not None and not cas_valid(v):
            raise ValueError(f"CAS number {v!r} is not NNNNNNN-NN-N with a correct check digit")
        return v


class Enterprise(_Strict):
    code: Text | None
    name: Text | None


class Installation(_Strict):
    name: Text
    major_hazard_code: Text | None
    people_500m: Annotated[int, Field(ge=0)]
    alpha: Number
    S: Annotated[float, Field(ge=0)]
    R: Annotated[float, Field(ge=0)]
    major_hazard: bool
    grade: Annotated[int, Field(ge=1, le=4)] | None
    colour: Literal["red", "orange", "yellow", "blue"]
    colour_source: Text
    basis: Text

    @model_validator(mode="after")
    def _graded(self) -> "Installation":
        if (self.grade is None) == self.major_hazard:
            raise ValueError(f"installation {self.name}: grade {self.grade} with major_hazard {self.major_hazard} "
                             "(a major hazard installation has a grade 1..4, any other none; GB 18218-2018 4.2)")
        return self


class Vessel(_Strict):
    name: Text
    installation: Text
    kind: Literal["tank", "vessel"]
    capacity_m3: Annotated[float, Field(gt=0)]
    design_q_t: Annotated[float, Field(ge=0)]
    medium: Medium
    tags: list[Text]


class Point(_Strict):
    tag: Text
    tag_code: Text
    code: Text | None
    major_hazard_code: Text | None
    measure: Literal[MEASURES] | None   # type: ignore[valid-type]
    unit: str
    range: Annotated[list[Number], Field(min_length=2, max_length=2)] | None
    limits: dict[Literal["LL", "L", "H", "HH"], Number]
    vessel: Text | None
    installation: Text | None
    medium: Medium | None
    writable: bool
    description: str | None

    @model_validator(mode="after")
    def _fits(self) -> "Point":
        if self.measure is not None and self.unit not in MEASURE_UNITS[self.measure]:
            raise ValueError(f"point {self.tag}: unit {self.unit!r} does not fit measure {self.measure} (one of "
                             f"{', '.join(repr(u) for u in sorted(MEASURE_UNITS[self.measure]))})")
        if self.range is not None and not self.range[0] < self.range[1]:
            raise ValueError(f"point {self.tag}: range {list(self.range)} is not [lo, hi] with lo < hi")
        if self.range is not None:
            for k, x in self.limits.items():
                if not self.range[0] <= x <= self.range[1]:
                    raise ValueError(f"point {self.tag}: limit {k} {x:g} is outside its range {list(self.range)}")
        return self


class BasicData(_Strict):
    """The basic-data document, version 1 (module docstring)."""

    type: Literal["basic_data"]
    version: Literal[1]
    gateway_id: Annotated[str, Field(pattern=_GATEWAY_ID_RE)]
    config_hash: Text
    ts: Annotated[str, Field(pattern=r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z$")]
    enterprise: Enterprise
    point_separator: Annotated[str, Field(max_length=3)]
    installations: list[Installation]
    vessels: list[Vessel]
    points: list[Point]

    @model_validator(mode="after")
    def _references(self) -> "BasicData":
        units = _unique("installation", [u.name for u in self.installations])
        vessels = _unique("vessel", [v.name for v in self.vessels])
        _unique("point", [p.tag for p in self.points])
        for v in self.vessels:
            if v.installation not in units:
                raise ValueError(f"vessel {v.name}: installation {v.installation!r} is not in installations")
        ent, sep = self.enterprise.code, self.point_separator
        for p in self.points:
            if p.vessel is not None and p.vessel not in vessels:
                raise ValueError(f"point {p.tag}: vessel {p.vessel!r} is not in vessels")
            if p.installation is not None and p.installation not in units:
                raise ValueError(f"point {p.tag}: installation {p.installation!r} is not in installations")
            if ent is None or p.major_hazard_code is None:
                if p.code is not None:
                    raise ValueError(f"point {p.tag}: code {p.code!r} without an enterprise and a major-hazard "
                                     "code to build it from")
                continue
            try:
                want = point_code(ent, p.major_hazard_code, p.tag_code, sep=sep)
            except ValueError as e:
                raise ValueError(f"point {p.tag}: {e}") from None
            if p.code != want:
                raise ValueError(f"point {p.tag}: code {p.code!r} is not {want!r} (enterprise code, major-hazard "
                                 "code, tag code)")
        return self


def _unique(what: str, names: list[str]) -> set[str]:
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise ValueError(f"{what} {n!r} appears twice")
        seen.add(n)
    return seen


def validate(doc: Any) -> dict[str, Any]:
    """Check a basic-data document (module docstring) and return it unchanged.

    Raises ValueError with one line ``basic_data: <where>: <what>`` for anything else: not an object, a
    missing or unknown field, a version other than :data:`VERSION`, a wrong type, a unit that does not fit
    its measure, a CAS number with a bad check digit, a range with lo >= hi, a limit outside the range, a reference to an installation or vessel the document does not list, a name listed twice, or
    a point code that is not :func:`point_code` of its parts."""
    if not isinstance(doc, dict):
        raise ValueError(f"basic_data: not a JSON object ({type(doc).__name__})")
    if doc.get("version") != VERSION:
        raise ValueError(f"basic_data: version {doc.get('version')!r} is not {VERSION}")
    try:
        BasicData.model_validate(doc)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        where = ".".join(str(x) for x in err["loc"]) or "document"
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        raise ValueError(f"basic_data: {where}: {msg}".replace("\n", " ")[:400]) from None
    return doc


__all__ = ["BasicData", "COLOURS", "CODE_PART_RE", "LIMIT_KINDS", "MEASURES", "MEASURE_UNITS", "TYPE", "VERSION",
           "cas_valid", "code_clash", "code_part", "point_code", "validate"]
