"""Input validity on the safety path: a value outside what the instrument can measure is a fault.

check_valid_range is the one place ``valid_range`` is applied (the safety tick, before the alarms, for every
protocol; ``probe`` judges readings the same way). Staleness is judged by the alarm engine (stale_after_s) and the
hazard engine; NAMUR NE 43 for 4-20 mA loops by the codec (drivers.codec).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from gateway.model import Quality, Reading


def check_valid_range(readings: list[Reading], ranges: dict[str, tuple[float, float]]) -> list[Reading]:
    """``readings`` with every usable reading whose value (or any element of a list value) lies outside
    its tag's valid range turned BAD, reason "out of range: V outside valid_range [lo, hi]" (time,
    time source and raw kept). ``ranges``: tag -> (lo, hi) in engineering units. A value outside what the
    instrument can measure is a fault, never a reading "within limits" (docs/design.md, Fail safe).
    Booleans and strings are not ranged."""
    if not ranges:
        return readings
    out = []
    for r in readings:
        rng = ranges.get(r.tag)
        if rng is not None and r.usable:
            vals = r.value if isinstance(r.value, list) else [r.value]
            bad = next((v for v in vals if isinstance(v, (int, float)) and not isinstance(v, bool)
                        and not rng[0] <= v <= rng[1]), None)
            if bad is not None:
                r = dataclasses.replace(r, value=None, quality=Quality.BAD,
                                        reason=f"out of range: {bad:g} outside valid_range [{rng[0]:g}, {rng[1]:g}]")
        out.append(r)
    return out


def points_disabled(alarms: Any) -> dict[str, Any]:
    """The 屏蔽 indication (GB 16808: disabled points are shown and counted; docs/domain.md, Alarm management):
    ``{"active": bool, "count": gas points (tags) with a disabled alarm, "points": their tag names, "alarms":
    the disabled alarms as AlarmStatus records}`` from AlarmEngine.disabled_points (``alarms``: a
    gateway.safety.alarms.AlarmEngine). Active while any gas point is shelved, suppressed or out of service."""
    disabled = alarms.disabled_points()
    tags = sorted({a.tag for a in disabled})
    return {"active": bool(disabled), "count": len(tags), "points": tags,
            "alarms": [a.to_record() for a in disabled]}
