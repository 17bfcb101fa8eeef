"""Modbus RTU bus utilisation: achieved line time against the theoretical line time of the same requests.

A slave (pymodbus ModbusSerialServer, unit 1, ``2 * tags`` holding
registers of float32 ABCD values) sits behind the pacing serial-line
emulator :class:`hil.serial_line.SerialLine` (8N1, 10 bits per character),
both in their own process (``python -m hil.bench.rtu_util --serve BAUD
--tags N``), so the paced bridge thread does not compete with the client's
event loop for the GIL. The gateway's :class:`drivers.modbus.ModbusDevice`
on a :class:`drivers.modbus.RtuLink` polls back to back for ``duration_s``.

Theoretical line time of one transaction (Modbus over Serial Line v1.02,
2.5.1 and 2.5.1.1): (request characters + reply characters) * 10 / baud
plus the one silent interval t3.5 the master must keep before each request
(3.5 character times, fixed 1.75 ms above 19200 baud). The slave's
turnaround is not counted: it is the slave's, and this emulated slave
answers as soon as the request's last character has arrived (a real one
takes a few ms, which would only lower the achievable figure).
``utilisation`` = sum of theoretical line times / wall time (target >= 0.9,
hil/bench/README.md, Targets); ``char_utilisation`` counts the characters alone.
"""

from __future__ import annotations

import argparse
import asyncio
import select
import subprocess
import sys
import time
from typing import Any

from hil.bench import REPO, UNIT_ID, float32_abcd, tag_value

TARGET = 0.9
BITS_PER_CHAR = 10  # 8N1


def t35_s(baud: int) -> float:
    """Silent interval t3.5 (Modbus over Serial Line v1.02 2.5.1.1: fixed 1.75 ms above 19200 baud)."""
    return 0.00175 if baud > 19200 else 3.5 * BITS_PER_CHAR / baud


async def _serve(baud: int, tags: int) -> None:
    import signal

    from pymodbus.server import ModbusSerialServer
    from pymodbus.simulator import DataType, SimData, SimDevice

    from hil.serial_line import SerialLine

    line = SerialLine(baudrate=baud, bits_per_char=BITS_PER_CHAR)
    dev_path, gw_path = line.start()
    regs: list[int] = []
    for i in range(tags):
        regs += float32_abcd(tag_value(i))
    device = SimDevice(id=UNIT_ID, simdata=(
        [SimData(0, values=[False] * 16, datatype=DataType.BITS)],
        [SimData(0, values=[False] * 16, datatype=DataType.BITS)],
        [SimData(0, count=len(regs), values=regs, datatype=DataType.REGISTERS)],
        [SimData(0, count=len(regs), values=regs, datatype=DataType.REGISTERS)]))
    server = ModbusSerialServer([device], port=dev_path, baudrate=baud, bytesize=8, parity="N", stopbits=1)
    await server.serve_forever(background=True)
    print(f"PATH {gw_path}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.shutdown()
    line.stop()


async def measure(path: str, baud: int, tags: int, duration_s: float) -> dict[str, Any]:
    """Poll ``tags`` float32 holding registers over ``path`` for ``duration_s``; returns the figures."""
    from drivers.modbus import ModbusDevice, ModbusLinks, ModbusPoint

    links = ModbusLinks()
    link = links.rtu(path, baud, "N", 1, 8, timeout_s=1.0)
    points = [ModbusPoint(tag=f"R{i:03d}", unit_id=UNIT_ID, table="holding_register", address=2 * i,
                          dtype="float32", order="ABCD") for i in range(tags)]
    dev = ModbusDevice("bench-rtu", link, UNIT_ID, points, "modbus_rtu", max_registers_per_read=125)
    ct = BITS_PER_CHAR / baud
    try:
        await dev.start()
        first = await dev.read()  # warm-up + value check
        bad = [r for r in first if not r.usable]
        if bad:
            raise RuntimeError(f"RTU read failed at {baud} baud: {bad[0].tag} {bad[0].reason}")
        theo = chars = 0.0
        tx = cycles = errors = 0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < duration_s:
            readings = await dev.read()
            cycles += 1
            errors += sum(1 for r in readings if not r.usable)
            for b in dev.planner.blocks:
                n = 8 + 5 + 2 * b.count  # request FC3 (8) + reply (addr, fc, byte count, data, CRC)
                chars += n
                theo += n * ct + t35_s(baud)
                tx += 1
        wall = time.perf_counter() - t0
    finally:
        await dev.close()
        await links.close_all()
    per_tx = theo / tx if tx else None
    return {"baud": baud, "tags": tags, "transactions": tx, "cycles": cycles, "bad_readings": errors,
            "wall_s": round(wall, 3), "theoretical_line_s": round(theo, 3),
            "theoretical_ms_per_transaction": round(per_tx * 1000, 3) if per_tx else None,
            "achieved_ms_per_transaction": round(wall / tx * 1000, 3) if tx else None,
            "utilisation": round(theo / wall, 3) if wall else None,
            "char_utilisation": round(chars * ct / wall, 3) if wall else None}


def _start_slave(baud: int, tags: int) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "hil.bench.rtu_util", "--serve", str(baud), "--tags", str(tags)],
                            cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        r, _, _ = select.select([proc.stdout], [], [], 0.2)
        if r:
            line = proc.stdout.readline()
            if line.startswith("PATH "):
                return proc, line.split()[1]
            if not line and proc.poll() is not None:
                break
    proc.kill()
    err = proc.stderr.read().strip().splitlines()[-1:] if proc.stderr else []
    raise RuntimeError(f"RTU slave at {baud} baud did not start: {err or 'timeout'}")


def run(bauds: tuple[int, ...] | list[int] = (9600, 115200), tags: int = 30, duration_s: float = 6.0) -> dict:
    """Utilisation per baud rate. Returns {"params", "by_baud": [...], "rtu_bus_utilisation": {baud: u}}."""
    by_baud = []
    for baud in bauds:
        proc, path = _start_slave(baud, tags)
        try:
            by_baud.append(asyncio.run(measure(path, baud, tags, duration_s)))
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            proc.stdout.close()
            proc.stderr.close()
    return {"params": {"bauds": list(bauds), "tags": tags, "type": "float32 ABCD holding registers, FC3",
                       "framing": "8N1 (10 bits per character)", "duration_s": duration_s,
                       "line": "hil.serial_line.SerialLine (pty pair, paced), slave in its own process"},
            "by_baud": by_baud,
            "rtu_bus_utilisation": {str(b["baud"]): b["utilisation"] for b in by_baud}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hil.bench.rtu_util")
    ap.add_argument("--serve", type=int, metavar="BAUD", help="run the paced line + slave only (prints PATH tty)")
    ap.add_argument("--tags", type=int, default=30)
    ap.add_argument("--bauds", type=int, nargs="*", default=[9600, 115200])
    ap.add_argument("--duration", type=float, default=6.0)
    args = ap.parse_args(argv)
    if args.serve:
        import logging

        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
        asyncio.run(_serve(args.serve, args.tags))
        return 0
    import json

    print(json.dumps(run(args.bauds, args.tags, args.duration), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
