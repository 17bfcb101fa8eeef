"""Modbus TCP polling throughput: the gateway's driver against the bare pymodbus client (the ceiling).

Both sides poll the same :class:`hil.bench.TagSim` (a pymodbus TCP server in
its own process, so its CPU is not charged to the client) back to back, as
fast as each can, for the same time, in alternating slices (A B A B) so that
machine noise hits both alike:

* gateway: :class:`drivers.modbus.ModbusDevice` on a :class:`TcpLink`, as
  gateway.runtime.gateway.build_devices makes it (block planner, 125 registers per
  request, float32 ABCD decode, one :class:`Reading` per tag, quality);
* ceiling: ``AsyncModbusTcpClient.read_input_registers`` over exactly the
  blocks the planner chose, results discarded (no decode): the cost of the
  pymodbus stack and the loopback socket alone.

Figures per tag count: tags/s, requests/s, client CPU seconds per 1000 tags and
tags per CPU-second (``time.process_time`` of this process: the simulator is another), and
``ratio`` = gateway tags/s / ceiling tags/s (target >= 0.9, hil/bench/README.md, Targets). The
ceiling's tags per CPU-second is also the reference of the daemon's (:func:`bare_tags_per_cpu_s`).
Sources: Modbus Application Protocol v1.1b3 6.4 (FC4, at most 125 registers
per request), Modbus Messaging on TCP/IP v1.0b.

Standalone simulator: ``python -m hil.bench.tcp_poll --serve N`` prints
``PORT p`` and serves N float32 tags until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from hil.bench import UNIT_ID, sim_subprocess, tag_value

TARGET_RATIO = 0.9


def make_device(host: str, port: int, tags: int, timeout_s: float = 2.0):
    """The gateway's driver objects for ``tags`` float32 input registers: (links, ModbusDevice)."""
    from drivers.modbus import ModbusDevice, ModbusLinks, ModbusPoint

    links = ModbusLinks()
    link = links.tcp(host, port, timeout_s)
    points = [ModbusPoint(tag=f"T{i:04d}", unit_id=UNIT_ID, table="input_register", address=2 * i,
                          dtype="float32", order="ABCD", unit="m") for i in range(tags)]
    return links, ModbusDevice("bench", link, UNIT_ID, points, "modbus_tcp", max_registers_per_read=125)


async def _gateway_slice(dev: Any, seconds: float) -> dict[str, float]:
    cycles = tags = reqs = bad = 0
    cpu0, t0 = time.process_time(), time.perf_counter()
    end = t0 + seconds
    while time.perf_counter() < end:
        readings = await dev.read()
        cycles += 1
        reqs += len(dev.last_requests)
        for r in readings:
            if r.usable:
                tags += 1
            else:
                bad += 1
    return {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - cpu0, "cycles": cycles,
            "tags": tags, "requests": reqs, "bad": bad}


async def _bare_slice(client: Any, blocks: list, seconds: float) -> dict[str, float]:
    cycles = tags = reqs = 0
    per_cycle = sum(len(b.spans) for b in blocks)
    cpu0, t0 = time.process_time(), time.perf_counter()
    end = t0 + seconds
    while time.perf_counter() < end:
        for b in blocks:
            rsp = await client.read_input_registers(b.address, count=b.count, device_id=UNIT_ID)
            if rsp.isError():
                raise RuntimeError(f"ceiling client: {rsp}")
        cycles += 1
        reqs += len(blocks)
        tags += per_cycle
    return {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - cpu0, "cycles": cycles,
            "tags": tags, "requests": reqs, "bad": 0}


def _sum(slices: list[dict[str, float]]) -> dict[str, float]:
    tot = {k: sum(s[k] for s in slices) for k in slices[0]}
    wall, cpu = tot["wall_s"] or 1e-9, tot["cpu_s"] or 1e-9
    return {"tags_per_s": round(tot["tags"] / wall, 1), "requests_per_s": round(tot["requests"] / wall, 1),
            "cycles": int(tot["cycles"]), "bad_readings": int(tot["bad"]), "wall_s": round(wall, 2),
            "cpu_s": round(tot["cpu_s"], 3), "cpu_s_per_1000_tags": round(1000 * cpu / max(tot["tags"], 1), 5),
            "tags_per_cpu_s": round(tot["tags"] / cpu, 1)}


async def measure(port: int, tags: int, duration_s: float, slices: int = 4, host: str = "127.0.0.1") -> dict:
    """Poll ``tags`` tags on host:port for ``duration_s`` per side; returns the figures for this tag count."""
    from pymodbus.client import AsyncModbusTcpClient

    links, dev = make_device(host, port, tags)
    client = AsyncModbusTcpClient(host, port=port, timeout=2.0, retries=0, reconnect_delay=0)
    try:
        await dev.start()
        if not await client.connect():
            raise RuntimeError(f"ceiling client cannot connect to {host}:{port}")
        blocks = list(dev.planner.blocks)
        # warm-up and a value check: the gateway decodes what the simulator serves
        first = await dev.read()
        wrong = [r.tag for i, r in enumerate(first) if not r.usable or abs(r.value - tag_value(i)) > 1e-3]
        if wrong:
            raise RuntimeError(f"gateway read wrong values for {len(wrong)} tags (first {wrong[0]}: "
                               f"{first[int(wrong[0][1:])]})")
        await _bare_slice(client, blocks, 0.05)
        gw, bare = [], []
        per = duration_s / slices
        for i in range(slices):
            order = (("gw", "bare") if i % 2 == 0 else ("bare", "gw"))
            for side in order:
                if side == "gw":
                    gw.append(await _gateway_slice(dev, per))
                else:
                    bare.append(await _bare_slice(client, blocks, per))
    finally:
        client.close()
        await dev.close()
        await links.close_all()
    g, b = _sum(gw), _sum(bare)
    return {"tags": tags, "requests_per_cycle": len(blocks), "gateway": g, "ceiling": b,
            "ratio": round(g["tags_per_s"] / b["tags_per_s"], 3) if b["tags_per_s"] else None}


def run(tag_counts: tuple[int, ...] | list[int] = (100, 500, 2000), duration_s: float = 8.0) -> dict:
    """Throughput against tag count. duration_s: polling time per side per tag count.

    Returns {"params", "by_tags": [per tag count], "tcp_ratio_to_ceiling": ratio at the largest count,
    "ratio_min"}. Raises RuntimeError when the simulator cannot start.
    """
    by_tags = []
    for n in tag_counts:
        with sim_subprocess(n) as (port, _proc):
            by_tags.append(asyncio.run(measure(port, n, duration_s)))
    ratios = [x["ratio"] for x in by_tags if x["ratio"] is not None]
    return {"params": {"tag_counts": list(tag_counts), "duration_s_per_side": duration_s, "type": "float32 ABCD",
                       "max_registers_per_request": 125, "simulator": "pymodbus ModbusTcpServer, own process"},
            "by_tags": by_tags,
            "tcp_ratio_to_ceiling": by_tags[-1]["ratio"] if by_tags else None,
            "ratio_min": min(ratios) if ratios else None,
            "bare_tags_per_cpu_s": {str(x["tags"]): x["ceiling"]["tags_per_cpu_s"] for x in by_tags}}


def bare_tags_per_cpu_s(res: dict, tags: int) -> tuple[int, float] | None:
    """(tag count, tags per CPU-second of the bare client) of a :func:`run` result at the count nearest to
    ``tags`` (the daemon's count, for the per-CPU-second ratio); None without figures."""
    by = [x for x in res.get("by_tags") or [] if (x.get("ceiling") or {}).get("tags_per_cpu_s")]
    if not by:
        return None
    x = min(by, key=lambda x: (abs(x["tags"] - tags), -x["tags"]))
    return x["tags"], x["ceiling"]["tags_per_cpu_s"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hil.bench.tcp_poll")
    ap.add_argument("--serve", type=int, metavar="TAGS", help="run the simulator only (prints PORT p)")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--tags", type=int, nargs="*", default=[100, 500, 2000])
    ap.add_argument("--duration", type=float, default=8.0)
    args = ap.parse_args(argv)
    if args.serve:
        import logging

        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
        from hil.bench import serve_forever

        asyncio.run(serve_forever(args.serve, args.port))
        return 0
    import json

    print(json.dumps(run(args.tags, args.duration), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
