"""Shared value types: the one module drivers/ may import from gateway/.

Besides the values of a reading, two pieces of the config's grammar that the protocols' config sections
(drivers/*_section.py) share with gateway.config: :data:`STRICT` (the pydantic settings of every config
section: unknown keys, infinities and NaN are errors, sections are frozen) and :data:`SecretPath` (a secret is a
file path, never inline).

A :class:`Reading` is what every driver hands the core: a tag's value with its
quality, the reason when it is not good, and when and by whose clock it was
sampled. A value is never fabricated: bad quality means ``value is None``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from enum import Enum
from typing import Annotated, Any, Sequence

from pydantic import AfterValidator, ConfigDict

class Explained(str):
    """A message a person reads, made where gettext is not at hand (drivers/ import nothing from gateway/ but this
    module): the English text (str itself, what logs and tests see) that also keeps its msgid ``template`` and the
    ``fields`` that fill it, so the code that shows it (gateway.config's problems) translates it with
    :meth:`localized`. ``Explained("port {port} is shared", port="/dev/ttyUSB0")``; the Makefile's catalog
    extraction takes the first argument of every ``Explained(...)`` as a msgid."""

    template: str
    fields: dict[str, Any]

    def __new__(cls, template: str, **fields: Any) -> "Explained":
        self = super().__new__(cls, template.format(**fields))
        self.template, self.fields = template, fields
        return self

    def localized(self, gettext: Any) -> str:
        """The message in ``gettext``'s language (the English when the catalog has no entry)."""
        return gettext(self.template).format(**self.fields)


#: the pydantic settings of every config section (gateway.config.Strict, drivers' sections): an unknown key is an
#: error (a typo cannot disable an alarm); allow_inf_nan=False refuses .inf / .nan (and 1e999) where they are
#: written, for every float of the config (none has a meaning there); a validated section is frozen
STRICT = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _secret_path(v: Any) -> Any:
    """A secret is given as a file path, never inline (docs/design.md, Secrets): refuse PEM / multi-line key material."""
    if isinstance(v, str) and ("-----BEGIN" in v or "\n" in v.strip()):
        raise ValueError(Explained("key material must not be inline: put it in a file (chmod 600) and give the file's "
                                   "path"))
    return v


#: a config value naming a secret file (a private key, a password file); gateway.config.check_secrets checks
#: that the file exists and is readable by its owner only
SecretPath = Annotated[str, AfterValidator(_secret_path)]


class Quality(str, Enum):
    """OPC UA Part 4 7.34 / Part 8 quality classes, used for every protocol.

    GOOD: value usable. UNCERTAIN: value kept but doubtful (e.g. OPC UA
    UncertainLastUsableValue). BAD: no usable value; ``Reading.value`` is None.
    """

    GOOD = "good"
    UNCERTAIN = "uncertain"
    BAD = "bad"


#: Quality.BAD once: an Enum member looked up on its class costs more than the whole check it is in (Reading.usable)
_BAD = Quality.BAD


class TimeSource(str, Enum):
    """Which clock stamped a reading (C13): the device, the OPC UA server, or us."""

    SOURCE = "source"
    SERVER = "server"
    LOCAL = "local"


Value = float | int | bool | str | list | None

#: significant digits shown for a float of a tag without ``precision`` (gateway.config TagBase.precision)
DEFAULT_SIGNIFICANT = 6


def format_value(value: Value, precision: int | None = None) -> str:
    """A value as a person reads it: None -> "-", a bool -> "1"/"0", a float rounded to ``precision`` decimal
    places (the tag's ``precision``; None: DEFAULT_SIGNIFICANT significant digits, so 51.800000000000004 reads
    51.8), a list as JSON, anything else as str. Display only: never used for what is stored or compared."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.{precision}f}" if precision is not None else f"{value:.{DEFAULT_SIGNIFICANT}g}"
    if isinstance(value, (list, tuple)):
        return json.dumps(list(value))
    return str(value)


@dataclass(frozen=True, slots=True)
class Reading:
    """One sample of one tag.

    tag: tag name from the config. value: engineering value (after scaling),
    or None when quality is BAD. unit: engineering unit ("%LEL", "mg/m3", "m").
    quality: good / uncertain / bad. reason: why not good ("timeout",
    "exception 02 illegal data address", "status BadSensorFailure",
    "sentinel", "nan", "stale", "comm fault") or None. ts: sample time as
    UTC epoch seconds. ts_source: which clock gave ts. mono: time.monotonic()
    when the reading reached the core (for latency and staleness; never stored).
    raw: raw registers / raw value for diagnostics (probe), optional.
    """

    tag: str
    value: Value
    unit: str
    quality: Quality
    ts: float
    reason: str | None = None
    ts_source: TimeSource = TimeSource.LOCAL
    mono: float = field(default_factory=time.monotonic)
    raw: Any = None

    def __post_init__(self) -> None:
        if self.quality is _BAD and self.value is not None:
            raise ValueError(f"{self.tag}: a bad reading carries no value")
        if isinstance(self.value, float) and not math.isfinite(self.value):
            raise ValueError(f"{self.tag}: NaN/infinity is not a value; use quality BAD")

    @property
    def usable(self) -> bool:
        """True when the value may be compared with a limit (good or uncertain)."""
        return self.quality is not _BAD and self.value is not None

    @classmethod
    def bad(cls, tag: str, unit: str, reason: str, ts: float | None = None, raw: Any = None) -> "Reading":
        """A bad reading: no value, with the reason (timeout, exception, sentinel ...)."""
        return cls(tag=tag, value=None, unit=unit, quality=Quality.BAD, ts=time.time() if ts is None else ts,
                   reason=reason, raw=raw)

    @classmethod
    def good(cls, tag: str, value: Value, unit: str, ts: float, mono: float, raw: Any = None) -> "Reading":
        """``Reading(tag, value, unit, Quality.GOOD, ts, None, TimeSource.LOCAL, mono, raw)`` at a fraction of
        its cost; see :meth:`good_many`. Raises ValueError for a NaN or infinite float value, as ``__init__``."""
        return cls.good_many((tag,), (value,), (unit,), (raw,), ts, mono)[0]

    @staticmethod
    def good_many(tags: Sequence[str], values: Sequence[Value], units: Sequence[str], raws: Sequence[Any],
                  ts: float, mono: float) -> list["Reading"]:
        """GOOD readings with the local clock, one per (tag, value, unit, raw) of the parallel sequences (they
        must be of one length), sharing ts (UTC epoch seconds) and mono (time.monotonic()): what a driver makes
        thousands of per second. Each equals ``Reading(tag, value, unit, Quality.GOOD, ts, None,
        TimeSource.LOCAL, mono, raw)`` and is a frozen Reading like it, at about a third of the cost: the
        fields are stored into a :class:`_ReadingSlots` (the same slots, without the frozen ``__setattr__``)
        which then becomes a Reading (``__class__`` assignment, which CPython allows between classes of the
        same slot layout). The check of ``__init__`` stays: ValueError for a NaN or infinite float value."""
        out: list[Reading] = []
        append = out.append
        for tag, value, unit, raw in zip(tags, values, units, raws):
            if value.__class__ is float and not _isfinite(value):
                raise ValueError(f"{tag}: NaN/infinity is not a value; use quality BAD")
            r = _new(_ReadingSlots)
            r.tag = tag
            r.value = value
            r.unit = unit
            r.quality = _GOOD
            r.ts = ts
            r.reason = None
            r.ts_source = _LOCAL
            r.mono = mono
            r.raw = raw
            _set_class(r, Reading)
            append(r)  # type: ignore[arg-type]
        return out

    def to_record(self) -> dict[str, Any]:
        """The stored / uploaded form: tag, value, unit, quality, reason, ts (RFC 3339 UTC), ts_source."""
        return {
            "tag": self.tag,
            "value": self.value,
            "unit": self.unit,
            "quality": self.quality.value,
            "reason": self.reason,
            "ts": rfc3339(self.ts),
            "ts_source": self.ts_source.value,
        }


class _ReadingSlots:
    """The slots of Reading in its order and nothing else (Reading.good_many fills one, then makes it a Reading)."""

    __slots__ = tuple(f.name for f in fields(Reading))


_new, _isfinite, _GOOD, _LOCAL = object.__new__, math.isfinite, Quality.GOOD, TimeSource.LOCAL
_set_class = object.__dict__["__class__"].__set__
if _ReadingSlots.__slots__ != Reading.__slots__:  # dataclass(slots=True) makes __slots__ the fields, in order
    raise RuntimeError("Reading.good_many needs a twin with the slots of Reading")


def rfc3339(epoch_s: float) -> str:
    """UTC epoch seconds -> RFC 3339 string with millisecond precision and 'Z'."""
    return datetime.fromtimestamp(epoch_s, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class DeviceError(Exception):
    """A device fault a person can act on; str() is one line naming device and address."""


class WriteError(DeviceError):
    """An output write that was rejected, not echoed correctly, or not confirmed by read-back."""
