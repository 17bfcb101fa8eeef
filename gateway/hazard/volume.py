"""Level -> volume -> mass of a tank: its capacity for the design maximum quantity, its level for the inventory.

GB 18218-2018 4.2.2 grades on the design maximum quantity (capacity x max fill x highest density); the
level gives the current inventory shown beside the grade (gateway.hazard.engine).

Geometries (all lengths in metres, volumes in m3, level measured from the lowest inside point):

- :class:`VerticalCylinder`: V = pi r^2 h (flat bottom).
- :class:`HorizontalCylinder`: liquid cross-section is a circular segment,
  A(h) = r^2 acos((r - h)/r) - (r - h) sqrt(2 r h - h^2), V = A(h) L; optional heads of depth a
  (0 = flat, r = hemispherical, r/2 = 2:1 semi-ellipsoidal) add the two head pieces, which together form
  an ellipsoid (r, r, a): V_heads = (a / r) pi h^2 (3r - h) / 3.
- :class:`Sphere`: spherical cap, V = pi h^2 (3r - h) / 3.
- :class:`StrappingTable`: the tank's calibration table (API MPMS ch. 2 / GB/T 13894 practice), level ->
  volume by linear interpolation between rows; :meth:`StrappingTable.from_csv` loads one.

Density: a constant in t/m3, or a :class:`DensityTable` (temperature in degC -> t/m3, interpolated).
q (tonnes) = V (m3) x density (t/m3).

Every geometry offers ``max_level_m``, ``capacity_m3`` and ``volume_m3(level_m)``; the latter raises
ValueError outside 0..max_level_m (the engine clamps and flags the result uncertain).
"""

from __future__ import annotations

import bisect
import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

from gateway.yamlload import read_text

#: Level engineering units accepted from a Reading, with their factor to metres ("%" is special).
LEVEL_UNITS = {"m": 1.0, "cm": 0.01, "mm": 0.001}


def _pos(name: str, v: float) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"{name} must be a number, got {v!r}")
    if not (v > 0 and math.isfinite(v)):
        raise ValueError(f"{name} must be a finite number > 0, got {v}")
    return v


def _check_level(level_m: float, max_level_m: float) -> float:
    if not math.isfinite(level_m) or level_m < 0 or level_m > max_level_m:
        raise ValueError(f"level {level_m} m outside 0..{max_level_m} m")
    return float(level_m)


@dataclass(frozen=True)
class VerticalCylinder:
    """Upright cylindrical tank with a flat bottom. diameter_m, height_m: inside dimensions (m).

    volume_m3(h) = pi (d/2)^2 h. Raises ValueError for a non-positive dimension.
    """

    diameter_m: float
    height_m: float

    def __post_init__(self) -> None:
        _pos("diameter_m", self.diameter_m)
        _pos("height_m", self.height_m)

    @property
    def max_level_m(self) -> float:
        return float(self.height_m)

    @property
    def capacity_m3(self) -> float:
        return self.volume_m3(self.height_m)

    def volume_m3(self, level_m: float) -> float:
        """Liquid volume (m3) at ``level_m`` (0..height_m); ValueError outside."""
        h = _check_level(level_m, self.max_level_m)
        r = self.diameter_m / 2
        return math.pi * r * r * h


def _segment_area(r: float, h: float) -> float:
    """Circular segment area of depth h in a circle of radius r (0 <= h <= 2r).

    Same value as r^2 acos((r-h)/r) - (r-h) sqrt(2rh - h^2), written as r^2 (t - sin t)/2 with the
    central angle t = 4 asin(sqrt(h/2r)) and a series for small t, so that a level near 0 or near full
    does not lose its digits to cancellation (the textbook form gives negative volumes at h ~ 1e-18 m).
    Above half height the filled area is the circle minus the empty segment (exactly symmetric).
    """
    if h > r:
        return math.pi * r * r - _segment_area(r, 2 * r - h)
    t = 4 * math.asin(math.sqrt(max(0.0, h) / (2 * r)))
    if t < 1e-2:
        t3 = t ** 3
        d = t3 / 6 - t3 * t * t / 120 + t3 * t ** 4 / 5040
    else:
        d = t - math.sin(t)
    return r * r * d / 2


@dataclass(frozen=True)
class HorizontalCylinder:
    """Horizontal cylindrical tank (bullet). diameter_m: inside diameter; length_m: cylindrical shell
    length, tangent line to tangent line; head_depth_m: depth of each head (0 flat, r hemispherical,
    r/2 2:1 semi-ellipsoidal; at most r).

    volume_m3(h) = L [r^2 acos((r-h)/r) - (r-h) sqrt(2rh - h^2)] + (a/r) pi h^2 (3r - h)/3.
    """

    diameter_m: float
    length_m: float
    head_depth_m: float = 0.0

    def __post_init__(self) -> None:
        _pos("diameter_m", self.diameter_m)
        _pos("length_m", self.length_m)
        if isinstance(self.head_depth_m, bool) or not isinstance(self.head_depth_m, (int, float)) \
                or not (0 <= self.head_depth_m <= self.diameter_m / 2):
            raise ValueError(f"head_depth_m must be within 0..{self.diameter_m / 2} m, got {self.head_depth_m}")

    @property
    def max_level_m(self) -> float:
        return float(self.diameter_m)

    @property
    def capacity_m3(self) -> float:
        return self.volume_m3(self.diameter_m)

    def volume_m3(self, level_m: float) -> float:
        """Liquid volume (m3) at ``level_m`` (0..diameter_m); ValueError outside."""
        h = _check_level(level_m, self.max_level_m)
        r = self.diameter_m / 2
        heads = (self.head_depth_m / r) * math.pi * h * h * (3 * r - h) / 3
        return _segment_area(r, h) * self.length_m + heads


@dataclass(frozen=True)
class Sphere:
    """Spherical tank. diameter_m: inside diameter. volume_m3(h) = pi h^2 (3r - h) / 3 (spherical cap)."""

    diameter_m: float

    def __post_init__(self) -> None:
        _pos("diameter_m", self.diameter_m)

    @property
    def max_level_m(self) -> float:
        return float(self.diameter_m)

    @property
    def capacity_m3(self) -> float:
        return self.volume_m3(self.diameter_m)

    def volume_m3(self, level_m: float) -> float:
        """Liquid volume (m3) at ``level_m`` (0..diameter_m); ValueError outside."""
        h = _check_level(level_m, self.max_level_m)
        r = self.diameter_m / 2
        return math.pi * h * h * (3 * r - h) / 3


def _interp(xs: list[float], ys: list[float], x: float) -> float:
    """Linear interpolation in a sorted table; x must lie within xs[0]..xs[-1]."""
    i = bisect.bisect_left(xs, x)
    if i < len(xs) and xs[i] == x:
        return ys[i]
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


def _rows(name: str, rows, where: list[str] | None = None) -> tuple[list[float], list[float]]:
    pts = [(float(a), float(b)) for a, b in rows]
    if len(pts) < 2:
        raise ValueError(f"{name}: needs at least 2 rows, got {len(pts)}")
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    for i, (x, y) in enumerate(pts):
        loc = where[i] if where else f"row {i + 1}"
        if not (math.isfinite(x) and math.isfinite(y)):
            raise ValueError(f"{name} {loc}: not a finite number")
        if i and x <= xs[i - 1]:
            raise ValueError(f"{name} {loc}: {x} does not increase (previous {xs[i - 1]})")
    return xs, ys


@dataclass(frozen=True)
class StrappingTable:
    """A tank calibration (strapping) table: rows of (level_m, volume_m3), level strictly increasing,
    volume non-decreasing and >= 0. Volumes between rows are interpolated linearly.

    max_level_m is the last row's level. Raises ValueError (one line naming the row) for a bad table.
    """

    points: tuple[tuple[float, float], ...]
    source: str = "strapping table"

    def __post_init__(self) -> None:
        xs, ys = _rows(self.source, self.points)
        if xs[0] < 0:
            raise ValueError(f"{self.source} row 1: level {xs[0]} m below 0")
        for i in range(len(ys)):
            if ys[i] < 0 or (i and ys[i] < ys[i - 1]):
                raise ValueError(f"{self.source} row {i + 1}: volume {ys[i]} m3 negative or decreasing")
        object.__setattr__(self, "points", tuple(zip(xs, ys)))

    @classmethod
    def from_csv(cls, path: str | Path) -> "StrappingTable":
        """Load ``level_m,volume_m3`` rows from a CSV file (a header line and '#' comments allowed).

        Raises ValueError naming file:line for a malformed row, and (gateway.yamlload.YamlError, a
        ValueError) for a file that is missing, not UTF-8 or larger than the input file limit (1 MiB).
        """
        path = Path(path)
        rows: list[tuple[float, float]] = []
        where: list[str] = []
        text = read_text(path)  # bounded like every input file (gateway.yamlload)
        reader = csv.reader(io.StringIO(text, newline=""))
        while True:
            try:
                rec = next(reader, None)
            except csv.Error as e:  # a field past csv's size limit, a NUL byte
                raise ValueError(f"{path}:{reader.line_num}: {e}") from None
            if rec is None:
                break
            lineno = reader.line_num
            if not rec or not "".join(rec).strip() or rec[0].lstrip().startswith("#"):
                continue
            try:
                if len(rec) != 2:
                    raise ValueError(f"expected 2 columns level_m,volume_m3, got {len(rec)}")
                rows.append((float(rec[0]), float(rec[1])))
                where.append(f"{path}:{lineno}")
            except ValueError as e:
                if not rows and lineno == 1 and "could not convert" in str(e):
                    continue  # header line
                raise ValueError(f"{path}:{lineno}: {e}") from None
        if len(rows) < 2:
            raise ValueError(f"{path}: a strapping table needs at least 2 rows")
        _rows(str(path), rows, where)
        for i in range(1, len(rows)):
            if rows[i][1] < rows[i - 1][1]:
                raise ValueError(f"{where[i]}: volume {rows[i][1]} m3 decreases")
        return cls(tuple(rows), source=str(path))

    @property
    def max_level_m(self) -> float:
        return self.points[-1][0]

    @property
    def capacity_m3(self) -> float:
        return self.points[-1][1]

    def volume_m3(self, level_m: float) -> float:
        """Interpolated volume (m3) at ``level_m``; levels below the first row (down to 0) take the
        first row's volume. ValueError outside 0..max_level_m."""
        h = _check_level(level_m, self.max_level_m)
        xs = [p[0] for p in self.points]
        ys = [p[1] for p in self.points]
        if h <= xs[0]:
            return ys[0]
        return _interp(xs, ys, h)


@dataclass(frozen=True)
class DensityTable:
    """Liquid density against temperature: rows of (temperature_c, density_t_m3), temperature strictly
    increasing, density > 0; interpolated linearly.

    density_t_m3(t) returns (density, in_range); outside the table it returns the nearest end row's
    density with in_range False (the engine then flags the quantity uncertain).
    """

    points: tuple[tuple[float, float], ...]

    def __post_init__(self) -> None:
        xs, ys = _rows("density table", self.points)
        for i, d in enumerate(ys):
            if not d > 0:
                raise ValueError(f"density table row {i + 1}: density {d} t/m3 must be > 0")
        object.__setattr__(self, "points", tuple(zip(xs, ys)))

    @property
    def max_density_t_m3(self) -> float:
        """The highest density in the table (the conservative value when the temperature is unknown)."""
        return max(p[1] for p in self.points)

    def density_t_m3(self, temperature_c: float) -> tuple[float, bool]:
        """(density t/m3, in_range) at ``temperature_c`` (degC)."""
        xs = [p[0] for p in self.points]
        ys = [p[1] for p in self.points]
        if temperature_c < xs[0]:
            return ys[0], False
        if temperature_c > xs[-1]:
            return ys[-1], False
        return _interp(xs, ys, temperature_c), True


Geometry = VerticalCylinder | HorizontalCylinder | Sphere | StrappingTable


def level_to_m(value: float, unit: str, max_level_m: float) -> float:
    """A level reading in ``unit`` ("m", "cm", "mm", or "%" of max_level_m) -> metres.

    Raises ValueError for another unit.
    """
    u = (unit or "m").strip()
    if u == "%":
        return float(value) / 100.0 * max_level_m
    if u not in LEVEL_UNITS:
        raise ValueError(f"level unit {unit!r} not one of m, cm, mm, %")
    return float(value) * LEVEL_UNITS[u]


__all__ = ["VerticalCylinder", "HorizontalCylinder", "Sphere", "StrappingTable", "DensityTable", "Geometry",
           "level_to_m", "LEVEL_UNITS"]
