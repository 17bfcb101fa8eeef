"""Report by exception on the record path: store a tag's reading only when it says something new.

Per tag (config ``report: {deadband, max_silence_s}`` on a tag; docs/design.md, Record path), a reading
is recorded when any of these holds, else it is left out of the store (the safety path has
already seen it: alarms and interlocks are evaluated on every reading, and alarm and trip
events are stored unconditionally):

* it is the first reading of the tag since start;
* its quality or reason differs from the last recorded one (good -> bad, a new fault ...);
* the value is not a number (bool, string, list) and differs from the last recorded one;
* the value is a number and ``|value - last recorded value| > deadband`` (the tag's unit;
  deadband 0 records every change), the "absolute deadband" of OPC UA Part 4 s.7.22.2;
* ``max_silence_s`` or more passed (monotonic clock) since the last recorded reading, so a
  steady value still shows the tag alive (an integrity report);
* the caller forces it (the tag had an alarm transition in this tick: the value that
  raised or cleared the alarm is kept with the event).

Tags without a ``report`` setting are recorded on every poll, as before. The filter is a
small pure state object (no I/O); ``mono`` times come from ``time.monotonic()``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.model import Reading


@dataclass(frozen=True, slots=True)
class ReportRule:
    """deadband: in the tag's engineering unit (>= 0). max_silence_s: seconds (> 0)."""

    deadband: float = 0.0
    max_silence_s: float = 60.0


class ReportFilter:
    """Decides per reading whether the record path stores it. rules: tag -> ReportRule."""

    def __init__(self, rules: dict[str, ReportRule]) -> None:
        self.rules = dict(rules)
        self._last: dict[str, tuple[Any, str, str | None, float]] = {}   # value, quality, reason, mono
        #: readings left out since start, per tag (for status)
        self.suppressed: dict[str, int] = {}

    def keep(self, r: Reading, mono: float, force: bool = False) -> bool:
        """True when ``r`` goes to the store (and becomes the tag's last recorded reading)."""
        rule = self.rules.get(r.tag)
        if rule is None:
            return True
        last = self._last.get(r.tag)
        q = r.quality.value
        if force or last is None or self._differs(rule, last, r, q) or mono - last[3] >= rule.max_silence_s:
            self._last[r.tag] = (r.value, q, r.reason, mono)
            return True
        self.suppressed[r.tag] = self.suppressed.get(r.tag, 0) + 1
        return False

    @staticmethod
    def _differs(rule: ReportRule, last: tuple[Any, str, str | None, float], r: Reading, q: str) -> bool:
        value, quality, reason, _ = last
        if q != quality or r.reason != reason:
            return True
        if _number(r.value) and _number(value):
            return abs(float(r.value) - float(value)) > rule.deadband
        return r.value != value


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def rules_from_config(cfg: Any) -> dict[str, ReportRule]:
    """tag -> ReportRule for every tag of an enabled device with a ``report:`` setting (a LoadedConfig)."""
    return {t.name: ReportRule(deadband=t.report.deadband, max_silence_s=t.report.max_silence_s)
            for d in cfg.model.devices if d.enabled for t in d.tags if getattr(t, "report", None) is not None}
