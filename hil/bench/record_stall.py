"""Benchmark (not a test): trip latency while the record path is stalled (docs/design.md, "Two paths").

The safety path must not wait on the disk: a record path that stalls for a minute (an fsync that
hangs on a failing SD card, a backup holding the database) must not slow a trip. This fault run
measures it on a real Gateway (the rig of :mod:`hil.bench.safety_latency`: real Modbus TCP driver,
alarm and interlock engines, output manager with read-back, pymodbus PLC simulator in the same
process) in two phases of the same run:

1. ``baseline``: trip cycles (hil.bench.safety_latency.trip_cycle) for ``baseline_s``, record path free;
2. ``during_stall``: another process takes SQLite's write lock on the store (``BEGIN EXCLUSIVE``) and
   holds it for ``stall_s``; the store's busy timeout is longer than the stall, so the writer thread
   waits inside SQLite for the whole stall, as it would on a hanging fsync. Trip cycles go on
   throughout (at least two trips). The lock is then released and the record path catches up.

Reported: ``change_to_confirmed_ms`` {n, p50, p99, max, min} of each phase, ``p99_delta_ms`` (stall
minus baseline; target: within 20 ms), ``store_alarm_raised`` (system.STORE was raised during the
stall), and the record: ``readings_offered`` (handed to the store by the gateway), ``readings_committed``
(rows in the database after the catch-up), ``readings_lost`` (offered - committed; a drop counts), ``readings_dropped``, ``gaps``.

``run(tags=50, poll_ms=100, baseline_s=60, stall_s=60, interlocks=2) -> dict`` is what ``make bench``
(:mod:`hil.bench.run`) calls; ``python -m hil.bench.record_stall --json FILE`` runs it alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from hil.bench import machine_info, versions
from hil.bench.safety_latency import LatencyPlc, arrival_hook, latency_stats, rig_config, trip_cycles

#: target: the p99 trip latency during the stall is within this of the baseline's (ms)
P99_DELTA_TARGET_MS = 20.0

#: holds SQLite's write lock on the database argv[1] until stdin closes
LOCK_HOLDER = """
import sqlite3, sys
c = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
c.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()
c.execute("ROLLBACK")
"""


async def _run(tags: int, poll_ms: int, baseline_s: float, stall_s: float, interlocks: int,
               seed: int) -> dict[str, Any]:
    from gateway.config import load_config
    from gateway.runtime.gateway import Gateway

    logging.getLogger("hazard_gateway").setLevel(logging.CRITICAL)
    rng = random.Random(seed)
    interlocks = max(1, min(interlocks, tags, 64))
    step = tags // interlocks
    plc = LatencyPlc(tags)
    await plc.start()
    arrivals: dict[str, float] = {}
    errors: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-stall-") as td:
        state = Path(td) / "state"
        cfgp = Path(td) / "gw.yaml"
        # the writer waits inside SQLite's busy handler for the whole stall (never SQLITE_BUSY)
        cfgp.write_text(rig_config(plc.port, tags, poll_ms, interlocks, state,
                                   busy_timeout_ms=int((stall_s + 60) * 1000)))
        gw = Gateway(load_config(cfgp))
        arrival_hook(gw, tags, interlocks, arrivals)
        offered = [0]
        put = gw.store.put_reading

        def counting_put(rec):   # every reading the gateway hands to the record path
            offered[0] += 1
            return put(rec)
        gw.store.put_reading = counting_put
        stop = asyncio.Event()
        ready = asyncio.Event()
        task = asyncio.create_task(gw.run(stop, ready=ready.set))
        holder = None
        store_alarm = False
        try:
            await asyncio.wait_for(ready.wait(), 30)
            t_end = time.monotonic() + 60
            while len(gw.values) < tags and time.monotonic() < t_end:
                await asyncio.sleep(0.05)
            await asyncio.sleep(2 * poll_ms / 1000)
            base, k = await trip_cycles(gw, plc, baseline_s, 2, interlocks, step, poll_ms, rng, arrivals, 0, errors)

            holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(gw.store.path)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            if (await asyncio.to_thread(holder.stdout.readline)).strip() != "locked":
                raise RuntimeError("the lock holder did not take the write lock")
            t_stall = time.monotonic()
            stalled, k = await trip_cycles(gw, plc, stall_s, 2, interlocks, step, poll_ms, rng, arrivals, k, errors)
            while time.monotonic() - t_stall < stall_s:
                await asyncio.sleep(0.1)
            store_alarm = gw.alarms.condition("system", "STORE") is True
            stall_held_s = time.monotonic() - t_stall
            holder.stdin.close()
            await asyncio.to_thread(holder.wait, 30)
            holder = None
            if not await asyncio.to_thread(gw.store.flush, 120.0):
                errors.append("the record path did not catch up within 120 s after the stall")
            dropped = (await asyncio.to_thread(gw.store.stats)).get("dropped", 0)
        finally:
            if holder is not None:
                holder.kill()
            stop.set()
            await asyncio.wait_for(task, 60)
            await plc.stop()
        db = sqlite3.connect(state / "store.sqlite")
        try:
            committed = db.execute("SELECT count(*) FROM readings").fetchone()[0]
            gaps = db.execute("SELECT count(*) FROM gaps").fetchone()[0]
        finally:
            db.close()
    b, s = ([x.confirm_ms for x in p if x.confirm_ms is not None] for p in (base, stalled))
    b, s = latency_stats(b), latency_stats(s)
    delta = None if b["p99"] is None or s["p99"] is None else round(s["p99"] - b["p99"], 2)
    return {
        "tags": tags, "poll_ms": poll_ms, "interlocks": interlocks, "baseline_s": baseline_s, "stall_s": stall_s,
        "stall_held_s": round(stall_held_s, 1),
        "baseline": {"change_to_confirmed_ms": b}, "during_stall": {"change_to_confirmed_ms": s},
        "p99_delta_ms": delta, "p99_delta_target_ms": P99_DELTA_TARGET_MS,
        "store_alarm_raised": store_alarm,
        "readings_offered": offered[0], "readings_committed": committed, "readings_dropped": dropped,
        "readings_lost": offered[0] - committed, "gaps": gaps,
        "errors": errors,
        "note": "change_to_confirmed includes the wait for the next poll (0..poll_ms, random phase)",
    }


def run(tags: int = 50, poll_ms: int = 100, baseline_s: float = 60.0, stall_s: float = 60.0, interlocks: int = 2,
        seed: int = 1) -> dict[str, Any]:
    """The two phases (module docstring); returns the JSON-able dict described there. Runs its own event loop."""
    return asyncio.run(_run(tags, poll_ms, baseline_s, stall_s, interlocks, seed))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hil.bench.record_stall", description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", required=True, metavar="FILE", help="write the results here")
    ap.add_argument("--tags", type=int, default=50)
    ap.add_argument("--poll-ms", type=int, default=100)
    ap.add_argument("--baseline-s", type=float, default=60.0)
    ap.add_argument("--stall-s", type=float, default=60.0)
    args = ap.parse_args(argv)
    if args.tags < 2 or args.poll_ms < 20 or args.baseline_s <= 0 or args.stall_s <= 0:
        print("record_stall: --tags >= 2, --poll-ms >= 20, --baseline-s and --stall-s > 0", file=sys.stderr)
        return 2
    res = run(args.tags, args.poll_ms, args.baseline_s, args.stall_s)
    out = {"benchmark": "record_stall", "machine": machine_info(), "versions": versions(), **res}
    Path(args.json).write_text(json.dumps(out, indent=1))
    b, s = res["baseline"]["change_to_confirmed_ms"], res["during_stall"]["change_to_confirmed_ms"]
    print(f"record stall {res['stall_held_s']} s, poll {res['poll_ms']} ms: trip p99 {b['p99']} ms without, "
          f"{s['p99']} ms during ({s['n']} trips; delta {res['p99_delta_ms']} ms, target {P99_DELTA_TARGET_MS:g}); "
          f"readings lost {res['readings_lost']}, gaps {res['gaps']}, system.STORE raised {res['store_alarm_raised']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
