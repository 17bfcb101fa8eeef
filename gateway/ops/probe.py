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
quality: good / uncertain / bad, with the reason of a non-good reading
(timeout, exception NN name, sentinel, nan, comm fault, out of range: NAMUR NE 43
or a tag's valid_range ...).

Exit codes: 0 every tag good; 1 any tag uncertain or bad (an unreachable
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

from drivers.registry import Links
from gateway.runtime.build import build_devices, valid_ranges
from gateway.config import LoadedConfig
from gateway.safety.validity import check_valid_range
from gateway.model import Quality, Reading

__all__ = ["ProbeRow", "probe", "format_table", "run_probe"]


@dataclass
class ProbeRow:
    """One line of the probe table."""

    device: str
    tag: str
    address: str
    raw: str
    value: str
    unit: str
    quality: str
    good: bool

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _value(r: Reading) -> str:
    v = r.value
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (list, tuple)):
        return json.dumps(list(v))
    return str(v)


def _quality(r: Reading) -> str:
    q = r.quality.value if isinstance(r.quality, Quality) else str(r.quality)
    return q if r.quality is Quality.GOOD or not r.reason else f"{q} ({r.reason})"


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
    ranges = valid_ranges(cfg)
    for dev, readings in zip(devices, results):
        for r in check_valid_range(readings, ranges):  # as the daemon judges them (valid_range)
            rows.append(ProbeRow(dev.name, r.tag, dev.describe(r.tag), dev.format_raw(r), _value(r), r.unit or "",
                                 _quality(r), r.quality is Quality.GOOD))
    return rows


def format_table(rows: list[ProbeRow]) -> str:
    """Aligned plain-text table with a header line."""
    head = ("device", "tag", "address", "raw", "value", "unit", "quality")
    cells = [head] + [(r.device, r.tag, r.address, r.raw, r.value, r.unit, r.quality) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head) - 1)]
    lines = []
    for c in cells:
        lines.append("  ".join(x.ljust(w) for x, w in zip(c, widths)) + "  " + c[-1])
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
