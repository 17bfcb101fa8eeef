"""Benchmark (not a test): safety-path latency at 500 tags (docs/design.md, Fail safe).

Two figures, measured on a real Gateway (real Modbus TCP driver, alarm engine, interlock engine,
OutputManager with read-back) against a pymodbus Modbus TCP PLC simulator in the same process:

* ``arrival_to_write_issued_ms``: from the moment the reading that crosses the limit arrives from the
  driver (``Reading.mono``) to the moment the output write is issued (TripRecord.issued_mono). This
  is the gateway's own processing time in the poll tick: alarms of all tags, voting, command.
* ``change_to_confirmed_ms`` (also reported as ``safety_latency_ms``): from the value changing in the
  simulator to the output write confirmed by read-back. It includes the wait for the next poll
  (uniform between 0 and one poll period: the change is made at a random phase), the read of all
  tags, processing, the write (FC5), its echo and the read-back (FC1).

Set-up: ``tags`` float32 tags (input registers, word order ABCD, tag i at PDU address 2*i), all with
an HH alarm at 100.0 (values at 10.0); ``interlocks`` 1oo1 interlocks, interlock k on tag
k * (tags // interlocks), closing coil k (value 0). Each sample: wait a random fraction of a poll
period, step one interlock's tag to 150.0, wait for the confirmed trip, step it back, reset the
interlock through the engine (as an operator would) and re-open the coil at the simulator. Samples
rotate over the interlocks until ``duration_s`` is spent (at least one sample).

``run(tags=500, poll_ms=1000, duration_s=60.0) -> dict`` (JSON-able) is what ``make bench``
(:mod:`hil.bench.run`) calls; ``python -m hil.bench.safety_latency --json FILE`` runs 1 s and
100 ms polling and writes both.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import random
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hil.bench import free_port, machine_info, percentile, versions

if TYPE_CHECKING:
    from gateway.runtime.gateway import Gateway

UNIT_ID = 1
NORMAL = 10.0
HIGH = 150.0
HH = 100.0


def _f32(value: float) -> list[int]:
    hi, lo = struct.unpack(">HH", struct.pack(">f", value))
    return [hi, lo]


class LatencyPlc:
    """Modbus TCP simulator: ``tags`` float32 input registers (settable) and 64 coils (all 1 = open)."""

    def __init__(self, tags: int, host: str = "127.0.0.1") -> None:
        self.tags = tags
        self.host = host
        self.port = free_port(host)
        self.values = [NORMAL] * tags
        self.coils = [True] * 64
        self.changed_mono: dict[int, float] = {}
        self._server: Any = None

    def set_value(self, i: int, v: float) -> float:
        """Set tag i; returns time.monotonic() of the change."""
        self.values[i] = float(v)
        t = time.monotonic()
        self.changed_mono[i] = t
        return t

    async def start(self) -> None:
        from pymodbus.server import ModbusTcpServer
        from pymodbus.simulator import DataType, SimData, SimDevice

        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
        n = 2 * self.tags
        device = SimDevice(id=UNIT_ID, simdata=(
            [SimData(0, values=[True] * 64, datatype=DataType.BITS)],
            [SimData(0, values=[False] * 16, datatype=DataType.BITS)],
            [SimData(0, values=0, datatype=DataType.REGISTERS)],
            [SimData(0, count=n, values=0, datatype=DataType.REGISTERS)],
        ), action=self._action)
        self._server = ModbusTcpServer(device, address=(self.host, self.port), ignore_missing_devices=True)
        await self._server.serve_forever(background=True)
        if not getattr(self._server.transport, "sockets", None):
            raise OSError(f"LatencyPlc: could not listen on {self.host}:{self.port}")

    async def _action(self, function_code: int, start_address: int, address: int, count: int,
                      registers: list[int], set_values: Any) -> None:
        if function_code == 4:
            lo = address - address % 2
            for a in range(lo, min(address + count, 2 * self.tags), 2):
                words = _f32(self.values[a // 2])
                for k in (0, 1):
                    j = a + k - start_address
                    if 0 <= j < len(registers):
                        registers[j] = words[k]
        elif function_code in (1, 5, 15):
            if set_values is not None:
                for k, v in enumerate(set_values):
                    self.coils[address + k] = bool(v)
            bits = self.coils[start_address:start_address + 16 * len(registers)]
            for r in range(len(registers)):
                word = 0
                for b in range(16):
                    if r * 16 + b < len(bits) and bits[r * 16 + b]:
                        word |= 1 << b
                registers[r] = word
        return None

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.shutdown()
            self._server = None


def rig_config(port: int, tags: int, poll_ms: int, interlocks: int, state_dir: Path, busy_timeout_ms: int = 2000) -> str:
    lines = [f"gateway: {{id: bench-safety, state_dir: {state_dir}}}",
             "keys: {private_key: unused.pem}",
             f"store: {{commit_interval_ms: 500, busy_timeout_ms: {busy_timeout_ms},",
             "        retention_floor: {waive: true, reason: 'benchmark rig (hil.bench), not a site''s records'}}",
             "devices:",
             "  - name: plc", "    protocol: modbus_tcp", "    host: 127.0.0.1", f"    port: {port}",
             f"    poll_interval_ms: {poll_ms}", "    timeout_ms: 1000", "    tags:"]
    for i in range(tags):
        lines.append(f"      - {{name: T{i:04d}, address: {30001 + 2 * i}, type: float32, alarms: {{HH: {HH}}}}}")
    for k in range(interlocks):
        lines.append(f"      - {{name: XV{k:02d}, address: {{table: coil, address: {k}}}, type: bool, writable: true}}")
    lines.append("interlocks:")
    step = tags // interlocks
    for k in range(interlocks):
        lines.append(f"  - {{name: IL{k:02d}, inputs: [{{tag: T{k * step:04d}, condition: HH}}], "
                     f"actions: [{{output: XV{k:02d}, value: 0}}]}}")
    return "\n".join(lines) + "\n"


@dataclasses.dataclass
class TripSample:
    """One trip cycle: ms from the change in the PLC to the confirmed write, from the crossing reading's
    arrival to the write issued (None when not measured), and an error line or None."""
    confirm_ms: float | None
    issue_ms: float | None
    error: str | None


async def trip_cycle(gw: Gateway, plc: LatencyPlc, idx: int, step: int, poll_ms: int, rng: random.Random,
                     arrivals: dict[str, float]) -> TripSample:
    """Trip interlock ``idx`` once through the PLC simulator and bring it back (the module docstring's
    sample): random phase, tag to HIGH, wait for the confirmed trip, tag back to NORMAL, operator reset
    through the engine, valve re-opened at the simulator. ``arrivals`` is filled by the caller's
    on_readings hook ({tag: Reading.mono of the first crossing reading})."""
    il, out, tag_i = f"IL{idx:02d}", f"XV{idx:02d}", idx * step
    tag = f"T{tag_i:04d}"
    await asyncio.sleep(rng.random() * poll_ms / 1000)  # random phase against the poll
    arrivals.pop(tag, None)
    n_before = len(gw.outputs.trip_records())
    t_change = plc.set_value(tag_i, HIGH)
    rec = None
    limit = time.monotonic() + 5 + 3 * poll_ms / 1000
    while time.monotonic() < limit:
        recs = [r for r in gw.outputs.trip_records()[n_before:] if r.interlock == il and r.tag == out]
        if recs and recs[0].confirmed_mono is not None:
            rec = recs[0]
            break
        await asyncio.sleep(0.002)
    sample = TripSample(None, None, None)
    if rec is None:
        sample.error = f"{il}: trip not confirmed"
    else:
        sample.confirm_ms = (rec.confirmed_mono - t_change) * 1000
        if tag in arrivals and rec.issued_mono is not None:
            sample.issue_ms = (rec.issued_mono - arrivals[tag]) * 1000
    # back to normal: value down, wait for the return, operator reset, re-open the valve
    plc.set_value(tag_i, NORMAL)
    limit = time.monotonic() + 5 + 3 * poll_ms / 1000
    while time.monotonic() < limit and gw.alarms.condition(tag, "HH") is not False:
        await asyncio.sleep(0.01)
    try:
        gw.interlocks.reset(il, "bench", "benchmark cycle", alarms=gw.alarms)
    except Exception as exc:  # noqa: BLE001 - a finding, not a crash
        sample.error = f"{il}: reset: {exc}"
    plc.coils[idx] = True
    return sample


async def trip_cycles(gw: Gateway, plc: LatencyPlc, seconds: float, min_trips: int, interlocks: int, step: int,
                      poll_ms: int, rng: random.Random, arrivals: dict[str, float], k0: int,
                      errors: list[str]) -> tuple[list[TripSample], int]:
    """trip_cycle() over the interlocks in turn (from cycle ``k0``) for ``seconds`` and until ``min_trips``
    trips were confirmed (giving up 30 s past ``seconds``: an error line); returns (samples, next cycle
    index). Error lines go to ``errors``."""
    out: list[TripSample] = []
    k = k0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline or sum(x.confirm_ms is not None for x in out) < min_trips:
        if time.monotonic() > deadline + 30:
            errors.append(f"fewer than {min_trips} trips confirmed within 30 s past the phase")
            break
        sample = await trip_cycle(gw, plc, k % interlocks, step, poll_ms, rng, arrivals)
        k += 1
        if sample.error:
            errors.append(sample.error)
        out.append(sample)
    return out, k


def arrival_hook(gw: Gateway, tags: int, interlocks: int, arrivals: dict[str, float]) -> None:
    """Wrap ``gw.on_readings`` to note when the crossing reading of an interlock input arrived."""
    step = tags // interlocks
    inputs = {f"T{k * step:04d}" for k in range(interlocks)}
    orig = gw.on_readings

    def on_readings(readings):
        for r in readings:
            if r.tag in inputs and r.tag not in arrivals and r.usable and r.value is not None and r.value >= HH:
                arrivals[r.tag] = r.mono
        orig(readings)
    gw.on_readings = on_readings


def latency_stats(xs: list[float]) -> dict[str, Any]:
    return {"n": len(xs), "p50": _r(percentile(xs, 50)), "p99": _r(percentile(xs, 99)), "max": _r(max(xs) if xs else None),
            "min": _r(min(xs) if xs else None)}


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


async def _run(tags: int, poll_ms: int, duration_s: float, interlocks: int, seed: int) -> dict[str, Any]:
    from gateway.config import load_config
    from gateway.runtime.gateway import Gateway

    logging.getLogger("hazard_gateway").setLevel(logging.WARNING)
    rng = random.Random(seed)
    interlocks = max(1, min(interlocks, tags, 64))
    plc = LatencyPlc(tags)
    await plc.start()
    arrivals: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-safety-") as td:
        cfgp = Path(td) / "gw.yaml"
        cfgp.write_text(rig_config(plc.port, tags, poll_ms, interlocks, Path(td) / "state"))
        gw = Gateway(load_config(cfgp))
        step = tags // interlocks
        arrival_hook(gw, tags, interlocks, arrivals)
        stop = asyncio.Event()
        ready = asyncio.Event()
        task = asyncio.create_task(gw.run(stop, ready=ready.set))
        issue_ms: list[float] = []
        confirm_ms: list[float] = []
        errors: list[str] = []
        try:
            await asyncio.wait_for(ready.wait(), 30)
            t_end = time.monotonic() + 60
            while len(gw.values) < tags and time.monotonic() < t_end:
                await asyncio.sleep(0.05)
            await asyncio.sleep(2 * poll_ms / 1000)  # let the first polls settle
            samples, _ = await trip_cycles(gw, plc, duration_s, 1, interlocks, step, poll_ms, rng, arrivals, 0, errors)
            confirm_ms = [x.confirm_ms for x in samples if x.confirm_ms is not None]
            issue_ms = [x.issue_ms for x in samples if x.issue_ms is not None]
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)
            await plc.stop()
    return {
        "tags": tags, "poll_ms": poll_ms, "interlocks": interlocks, "duration_s": duration_s,
        "samples": len(confirm_ms),
        "arrival_to_write_issued_ms": latency_stats(issue_ms),
        "change_to_confirmed_ms": latency_stats(confirm_ms),
        "safety_latency_ms": latency_stats(confirm_ms),
        "errors": errors,
        "note": "change_to_confirmed includes the wait for the next poll (0..poll_ms, random phase)",
    }


def run(tags: int = 500, poll_ms: int = 1000, duration_s: float = 60.0, interlocks: int = 10,
        seed: int = 1) -> dict[str, Any]:
    """Measure at one polling period; returns {"tags", "poll_ms", "samples", "arrival_to_write_issued_ms",
    "change_to_confirmed_ms" (= "safety_latency_ms"), each {n, p50, p99, max, min} in ms, "errors"}.
    Runs its own event loop (call it from synchronous code)."""
    return asyncio.run(_run(tags, poll_ms, duration_s, interlocks, seed))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hil.bench.safety_latency", description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", required=True, metavar="FILE", help="write the results here")
    ap.add_argument("--tags", type=int, default=500)
    ap.add_argument("--poll-ms", type=int, nargs="+", default=[1000, 100])
    ap.add_argument("--duration-s", type=float, default=60.0, help="per polling period")
    args = ap.parse_args(argv)
    if args.tags < 1 or any(p < 20 for p in args.poll_ms) or args.duration_s <= 0:
        print("safety_latency: --tags >= 1, --poll-ms >= 20, --duration-s > 0", file=sys.stderr)
        return 2
    out = {"benchmark": "safety_latency", "machine": machine_info(), "versions": versions(),
           "by_poll_ms": {str(p): run(args.tags, p, args.duration_s) for p in args.poll_ms}}
    Path(args.json).write_text(json.dumps(out, indent=1))
    for p, r in out["by_poll_ms"].items():
        a, c = r["arrival_to_write_issued_ms"], r["change_to_confirmed_ms"]
        print(f"poll {p} ms, {r['tags']} tags, {r['samples']} samples: reading -> write issued p50 {a['p50']} "
              f"p99 {a['p99']} max {a['max']} ms; change -> confirmed p50 {c['p50']} p99 {c['p99']} max {c['max']} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
