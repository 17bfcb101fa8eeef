"""`hazard-gateway probe`: read every configured tag once and print a table, for commissioning.

The devices are built exactly as the daemon builds them
(:func:`gateway.runtime.build.build_devices`, shared Modbus links included), read
once each (all devices at the same time; requests on one link are still
serialised by the link), and closed. Nothing is stored, no alarm or
interlock runs, nothing is written.

Output, one line per tag (plain text, columns aligned)::

    device    tag         address                 raw        value   unit  quality
    tank_plc  T101.level  input 0 (30001)         4100 0000  8       m     good
    GD1       GD1.gas     holding 0 (40001)       00FA       25      %LEL  good
    plant_ua  AT301.H2S   nsu=urn:...;s=...H2S    Good       0       mg/m3 good
    far_plc   P1          holding 9 (40010)       -          -       bar   bad (comm fault: cannot connect ...)

address: where the point lives, as the device's driver describes it
(``Device.describe``): the Modbus table and 0-based protocol (PDU) address
with the 1-based reference in brackets (Modicon convention, Modbus
Application Protocol v1.1b3 section 4.4: "register 1 is addressed as 0";
5-digit references up to 9999, 6-digit beyond), or the OPC UA node id as
configured. raw: what the device sent (``Device.format_raw``): the registers
(hex words) or bits as read, for OPC UA the status code name; "-" when
nothing was read.
value: the engineering value rounded to the tag's ``precision`` (6 significant
digits without one). quality: good / uncertain / bad, with the reason of a
non-good reading (timeout, exception NN name, sentinel, nan, comm fault, out of
range: NAMUR NE 43 or a tag's valid_range ...); a value the device sent as good
that cannot be a measurement (subnormal float, a magnitude of 1e12 or more or
below 1e-12, outside the tag's eng_range: :func:`implausible`) is shown uncertain with the
reason, never as good. Column heads and quality words in the reader's language
(gateway.i18n). ``--json``: a list of rows {device, tag, address, raw, value
(number / bool / string / null), shown, unit, quality (good / uncertain / bad), reason, shown_quality, good,
implausible}, the same in every locale but for the shown texts.

Exit codes: 0 every tag good; 1 any tag uncertain, bad or implausible (an unreachable
device gives one "comm fault" line per tag); 2 a config error or an
unknown ``--device`` (one line, from the CLI).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from dataclasses import dataclass
from typing import Any, TextIO

from drivers import codec
from drivers.registry import Links
from gateway.config import LoadedConfig
from gateway.i18n import display_width, gettext as _, ljust_display
from gateway.model import Quality, Reading, Value, format_value
from gateway.runtime.build import build_devices, precisions, valid_ranges
from gateway.safety.validity import check_valid_range

__all__ = ["ProbeRow", "implausible", "probe", "format_table", "run_probe"]


#: a reading at or above this magnitude, or not 0 and below its inverse, is implausible for any tank-farm
#: measurement (a totaliser in litres would need a billion cubic metres; no transmitter resolves 1e-12 of its
#: unit); a float32 read in the wrong word order gives such values, or subnormal ones
IMPLAUSIBLE_MAGNITUDE = 1e12


@dataclass
class ProbeRow:
    """One line of the probe table. ``value`` is the engineering value (number, bool, string, list or None);
    ``shown`` is it as printed (the tag's ``precision``, gateway.model.format_value); ``implausible`` says why a
    value that the device sent as good cannot be a measurement (None: plausible)."""

    device: str
    tag: str
    address: str
    raw: str
    value: Value
    shown: str
    unit: str
    quality: str
    good: bool
    implausible: str | None = None
    quality_class: str = "good"
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The JSON row, the same in every locale: numbers stay numbers (``value``), ``quality`` is the class
        (good / uncertain / bad; uncertain for an implausible value), ``reason`` the device's reason; ``shown``
        and ``shown_quality`` are the printed texts (in the reader's language)."""
        d = dict(self.__dict__)
        d["shown_quality"], d["quality"] = d.pop("quality"), d.pop("quality_class")
        return d


def implausible(value: Value, eng_range: tuple[float, float] | None) -> str | None:
    """Why ``value`` (a good reading's engineering value) cannot be a real measurement, or None: a subnormal
    float (IEEE 754-2019 3.4; drivers.codec.is_subnormal), a magnitude of IMPLAUSIBLE_MAGNITUDE or more or
    (not 0) below 1 / IMPLAUSIBLE_MAGNITUDE (all the marks of a wrong word order), or a value outside the tag's ``eng_range`` [lo, hi] (the span its 4-20 mA
    map covers: a transmitter reading beyond it is over/under range)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if codec.is_subnormal(float(value)):
        return _("implausible: subnormal float (wrong word order?)")
    if abs(value) >= IMPLAUSIBLE_MAGNITUDE or 0 < abs(value) < 1 / IMPLAUSIBLE_MAGNITUDE:
        return _("implausible: magnitude {value} (wrong word order?)").format(value=f"{float(value):.3g}")
    if eng_range is not None and not min(eng_range) <= value <= max(eng_range):
        return _("implausible: outside eng_range [{lo}, {hi}]").format(lo=min(eng_range), hi=max(eng_range))
    return None


def _quality(r: Reading) -> str:
    q = _word(r.quality.value if isinstance(r.quality, Quality) else str(r.quality))
    return q if r.quality is Quality.GOOD or not r.reason else f"{q} ({r.reason})"


def _word(quality: str) -> str:
    return {"good": _("good"), "uncertain": _("uncertain"), "bad": _("bad")}.get(quality, quality)


async def probe(cfg: LoadedConfig, device: str | None = None) -> list[ProbeRow]:
    """Read every tag of every enabled device (or of ``device`` only) once; rows in config order.

    Raises ValueError (one line) when ``device`` names no enabled device. Never raises for a
    device fault: an unreachable device gives BAD rows."""
    links = Links()
    devices = build_devices(cfg, links)
    names = [d.name for d in devices]
    if device is not None:
        if device not in names:
            for d in devices:
                await d.close()
            raise ValueError(f"no enabled device {device!r} in {cfg.path} (devices: {', '.join(names)})")
        devices = [d for d in devices if d.name == device]

    async def one(dev: Any) -> list[Reading]:
        try:
            await dev.start()
            return await dev.read()
        finally:
            await dev.close()

    try:
        results = await asyncio.gather(*(one(d) for d in devices))
    finally:
        await links.close_all()
    rows = []
    ranges, digits = valid_ranges(cfg), precisions(cfg)
    spans = {t.name: tuple(t.eng_range) for d in cfg.model.devices for t in d.tags
             if getattr(t, "eng_range", None) is not None}
    for dev, readings in zip(devices, results):
        for r in check_valid_range(readings, ranges):  # as the daemon judges them (valid_range)
            why = implausible(r.value, spans.get(r.tag)) if r.quality is Quality.GOOD else None
            quality = _quality(r) if why is None else f"{_word(Quality.UNCERTAIN.value)} ({why})"
            rows.append(ProbeRow(dev.name, r.tag, dev.describe(r.tag), dev.format_raw(r), r.value,
                                 format_value(r.value, digits.get(r.tag)), r.unit or "", quality,
                                 r.quality is Quality.GOOD and why is None, why,
                                 Quality.UNCERTAIN.value if why else r.quality.value, r.reason))
    return rows


def format_table(rows: list[ProbeRow]) -> str:
    """Aligned plain-text table with a header line."""
    head = (_("device"), _("tag"), _("address"), _("raw"), _("value"), _("unit"), _("quality"))
    cells = [head] + [(r.device, r.tag, r.address, r.raw, r.shown, r.unit, r.quality) for r in rows]
    widths = [max(display_width(c[i]) for c in cells) for i in range(len(head) - 1)]
    lines = []
    for c in cells:
        lines.append("  ".join(ljust_display(x, w) for x, w in zip(c, widths)) + "  " + c[-1])
    return "\n".join(line.rstrip() for line in lines)


def run_probe(cfg: LoadedConfig, device: str | None = None, *, as_json: bool = False,
              out: TextIO | None = None, verbose: bool = False) -> int:
    """The CLI entry: probe, print, return the exit code (0 all good, 1 any tag not good)."""
    out = out or sys.stdout
    if not verbose:  # the table says what failed; the drivers' reconnect warnings are noise here
        logging.getLogger("drivers").setLevel(logging.ERROR)
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
        logging.getLogger("asyncua").setLevel(logging.CRITICAL)
    rows = asyncio.run(probe(cfg, device))
    if as_json:
        print(json.dumps([r.as_dict() for r in rows], indent=1), file=out)
    else:
        print(format_table(rows), file=out)
    return 0 if all(r.good for r in rows) else 1
