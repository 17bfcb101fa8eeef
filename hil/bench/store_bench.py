"""Record-path benchmark: store ingest, backlog drain end to end, and the daemon's peak RSS.

``run(...) -> dict`` (for :mod:`hil.bench.run`) or
``python -m hil.bench.store_bench [--json FILE] [--backlog N] [--quick]``.

Figures (docs/design.md, Record path):

* ``store_ingest_per_s``: readings/s through ``Store.put_reading`` (the poll tick's call)
  until committed by the writer thread (WAL, synchronous=FULL, one transaction per commit
  interval), ``ingest_n`` readings;
* ``drain_per_s``: readings/s of a backlog drained end to end: the real daemon
  (``hazard-gateway run``) builds, signs (Ed25519 JWS) and stores each batch, POSTs it over
  HTTPS to the reference receiver (``hazard-gateway receiver``, child process), which
  verifies signature and chain and commits it before its ack; the daemon marks it acked.
  Timed from the daemon's start to the receiver holding every backlog reading;
* ``drain_peak_rss_mb``: peak resident set of the daemon while the backlog drains
  (VmHWM, proc(5)), measured for two backlog sizes (default 1 million and 10 million) to
  show that memory does not grow with the backlog (``rss_growth_mb``) and the rate does not
  fall (``drain_flat``, ``drain_per_s_by_backlog``).

The backlog is written straight into the daemon's store file (same schema, readings of 10
tags at 10 Hz, oldest first) in bulk by SQLite itself (:func:`prefill`, about 4 s per
million rows) before the daemon starts, as if the uplink had been down; the daemon
meanwhile polls the HIL tank PLC (10 tags at 1 s) as in the field. From each backlog the
same window (default 500 000 readings) is drained and timed, so the 10-million run costs
the prefill (under a minute, about 0.8 GB) plus the same drain time as the 1-million one;
``quick`` drains all of 5 000 / 50 000.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from gateway.model import Quality, Reading, rfc3339
from gateway.record.store import Store

TAGS = [f"T{i:03d}.value" for i in range(10)]


def bench_ingest(workdir: Path, n: int) -> dict[str, Any]:
    """Readings/s from put_reading to committed (queue sized so nothing is dropped)."""
    st = Store(workdir / "ingest.sqlite", commit_interval_s=0.5, queue_max=max(n, 1)).open()
    t0 = time.time()
    recs = [Reading(tag=TAGS[i % 10], value=20.0 + (i % 1000) / 100, unit="degC", quality=Quality.GOOD,
                    ts=t0 + i / 100).to_record() for i in range(n)]
    start = time.perf_counter()
    for r in recs:
        st.put_reading(r)
    ok = st.flush(600)
    secs = time.perf_counter() - start
    stats = st.stats()
    st.close()
    return {"readings": n, "seconds": round(secs, 3), "store_ingest_per_s": round(n / secs),
            "committed": stats["readings_total"], "complete": ok and stats["readings_total"] == n,
            "bytes_per_reading": round(stats["used_bytes"] / max(n, 1), 1)}


def prefill(db: Path, n: int, t0: float, chunk: int = 1_000_000) -> float:
    """Write n unsent readings (10 tags at 10 Hz from ``t0``, oldest first) into a fresh store file in bulk;
    seconds taken. The schema is the daemon's own (``Store.open``); the rows are generated inside SQLite by a
    recursive CTE (SQLite docs, "The WITH Clause"), one transaction per ``chunk``, synchronous OFF: 10 million
    rows in well under a minute, where going through the daemon would take hours."""
    Store(db).open().close()   # the schema, exactly as the daemon makes it
    start = time.perf_counter()
    c = sqlite3.connect(db, isolation_level=None)
    c.execute("PRAGMA synchronous=OFF")
    c.execute("PRAGMA cache_size=-65536")
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk) - 1
        c.execute("BEGIN")
        c.execute("WITH RECURSIVE k(i) AS (SELECT ? UNION ALL SELECT i + 1 FROM k WHERE i < ?) "
                  "INSERT INTO readings(tag, value, unit, quality, reason, ts, ts_source) "
                  "SELECT printf('T%03d.value', i % 10), CAST(20.0 + (i % 1000) / 100.0 AS TEXT), 'degC', 'good', "
                  "NULL, strftime('%Y-%m-%dT%H:%M:%fZ', ? + (i / 10) / 10.0, 'unixepoch'), 'local' FROM k",
                  (lo, hi, t0))
        c.execute("COMMIT")
    c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    c.close()
    return time.perf_counter() - start


def _rss_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) in kB of a live process (proc(5)); (0, 0) when gone."""
    rss = hwm = 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    except (OSError, ValueError):
        pass
    return rss, hwm


async def _drain(workdir: Path, n: int, batch: int, timeout_s: float, window: int | None = None) -> dict[str, Any]:
    """Drain a prefilled backlog of ``n`` readings until the receiver holds ``window`` of them (all when None or
    larger than n) or ``timeout_s`` passed. ``drain_per_s`` is the steady rate: readings received between the
    first sample that saw an acknowledged batch and the last, over that time (the daemon's start and its first
    batch are reported apart, ``first_ack_s``); ``drain_per_s_from_start`` counts from the daemon's start."""
    from hil.rig import GatewayProc, ReceiverProc, make_keys, tank_plc_config
    from hil.tank_plc import TankPlc

    workdir.mkdir(parents=True, exist_ok=True)
    key, trust = make_keys(workdir)
    state = workdir / "state"
    state.mkdir()
    t0 = time.time() - n / 100
    prefill_s = await asyncio.to_thread(prefill, state / "store.sqlite", n, t0)
    plc = TankPlc(seed=1)
    await plc.start()
    rx = ReceiverProc(workdir / "rx", trust)
    await asyncio.to_thread(rx.start)
    cfg = tank_plc_config(workdir / "gw.yaml", gateway_id="bench-gw", plc_port=plc.port, state_dir=state,
                          key_file=key, receiver_url=rx.url, ca_file=rx.cert, poll_ms=1000,
                          commit_interval_ms=500, batch_max_readings=batch, interval_ms=200,
                          comment="store_bench drain", max_bytes=max(1 << 32, n * 400))   # 4 GiB: 30 days at 1 s (C16)
    gw = GatewayProc(cfg, workdir / "gateway.log")
    peak_rss = peak_hwm = 0
    rss_samples: list[tuple[float, int]] = []
    done = False
    goal = n if window is None else min(n, window)
    first: tuple[float, int] | None = None
    last: tuple[float, int] | None = None
    try:
        start = time.perf_counter()
        await asyncio.to_thread(gw.start)
        pid = gw.proc.pid
        received = 0
        while time.perf_counter() - start < timeout_s:
            await asyncio.sleep(0.5)
            rss, hwm = _rss_kb(pid)
            peak_rss, peak_hwm = max(peak_rss, rss), max(peak_hwm, hwm)
            rss_samples.append((round(time.perf_counter() - start, 1), rss))
            if not gw.alive():
                break
            received = await asyncio.to_thread(_received, rx.store)
            now = time.perf_counter() - start
            if received > 0:
                first = first or (now, received)
                last = (now, received)
            if received >= goal:
                done = True
                break
        secs = time.perf_counter() - start
        rss, hwm = _rss_kb(pid)
        peak_hwm = max(peak_hwm, hwm)
        if gw.alive():
            await asyncio.to_thread(gw.term)
    finally:
        if gw.alive():
            gw.kill()
        rx.close()
        await plc.stop()
    steady = None
    if first and last and last[0] > first[0]:
        steady = round((last[1] - first[1]) / (last[0] - first[0]))
    return {"backlog": n, "window": goal, "batch_max_readings": batch, "prefill_s": round(prefill_s, 1),
            "drained": received, "complete": done, "seconds": round(secs, 2),
            "first_ack_s": None if first is None else first[0],
            "drain_per_s": steady if steady is not None else (round(received / secs) if secs else None),
            "drain_per_s_from_start": round(received / secs) if secs else None,
            "peak_rss_mb": round(max(peak_hwm, peak_rss) / 1024, 1),
            "rss_samples_mb": [(t, round(r / 1024, 1)) for t, r in rss_samples[:: max(1, len(rss_samples) // 20)]]}


def _received(db: Path) -> int:
    """Readings the receiver holds (sum of n_readings over accepted batches)."""
    if not db.exists():
        return 0
    c = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return c.execute("SELECT coalesce(sum(n_readings), 0) FROM batches").fetchone()[0]
    except sqlite3.Error:
        return 0
    finally:
        c.close()


def run(quick: bool = False, backlog: int | None = None, ingest_n: int | None = None, batch: int = 2000,
        timeout_s: float = 7200.0, workdir: str | None = None, backlogs: list[int] | None = None,
        window: int | None = None) -> dict[str, Any]:
    """All figures as a JSON-able dict; see the module docstring.

    backlogs: the backlog sizes drained (default 1 million and 10 million; quick 5 000 and 50 000); ``backlog``
    alone means [backlog / 10, backlog]. window: readings drained (acknowledged) from each backlog before the
    rate is taken (default 500 000; quick: all); the same window at every size makes the rates comparable,
    and ``drain_flat`` = rate at the largest backlog / rate at the smallest (1.0 = flat). timeout_s caps each
    drain."""
    if backlogs:
        sizes = sorted(backlogs)
    elif backlog:
        sizes = [max(1000, backlog // 10), backlog]
    else:
        sizes = [5_000, 50_000] if quick else [1_000_000, 10_000_000]
    win = window if window is not None else (None if quick else 500_000)
    n_ingest = ingest_n or (20_000 if quick else 500_000)
    with tempfile.TemporaryDirectory(prefix="store-bench-", dir=workdir) as tmp:
        wd = Path(tmp)
        ingest = bench_ingest(wd, n_ingest)
        drains = []
        for n in sizes:
            drains.append(asyncio.run(_drain(wd / f"drain-{n}", n, batch, timeout_s, win)))
            shutil.rmtree(wd / f"drain-{n}", ignore_errors=True)   # 10 million rows: about 1 GB each side
    peak = [d["peak_rss_mb"] for d in drains]
    rates = [d["drain_per_s"] for d in drains]
    return {
        "store_ingest_per_s": ingest["store_ingest_per_s"],
        "drain_per_s": min((r for r in rates if r is not None), default=None),
        "drain_per_s_by_backlog": {str(d["backlog"]): d["drain_per_s"] for d in drains},
        "drain_flat": round(rates[-1] / rates[0], 3) if len(rates) > 1 and rates[0] and rates[-1] else None,
        "drain_complete": all(d["complete"] for d in drains),
        "drain_peak_rss_mb": max(peak),
        "rss_growth_mb": round(peak[-1] - peak[0], 1),
        "rss_by_backlog_mb": {str(d["backlog"]): d["peak_rss_mb"] for d in drains},
        "ingest": ingest,
        "drains": drains,
        "note": "drain: hazard-gateway run -> HTTPS -> hazard-gateway receiver (verify + commit before ack); "
                "the same window of readings acknowledged from each backlog; drain_per_s is the slowest size's; "
                "RSS = VmHWM of the daemon; flat RSS means rss_growth_mb stays near 0 while the backlog grows 10x",
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hil.bench.store_bench", description=__doc__.splitlines()[0])
    ap.add_argument("--json", metavar="FILE", help="write the result here")
    ap.add_argument("--backlog", type=int, default=None, help="larger backlog size (the smaller: a tenth)")
    ap.add_argument("--backlogs", type=int, nargs="+", help="backlog sizes (default 1000000 10000000)")
    ap.add_argument("--window", type=int, default=None, help="readings drained from each (default 500000)")
    ap.add_argument("--ingest", type=int, default=None, help="readings for the ingest figure")
    ap.add_argument("--batch", type=int, default=2000, help="batch_max_readings of the daemon")
    ap.add_argument("--quick", action="store_true", help="small sizes (about a minute)")
    args = ap.parse_args(argv)
    if (args.backlog is not None and args.backlog < 1000) or any(n < 1000 for n in args.backlogs or []) \
            or (args.window is not None and args.window < 1000):
        print("store_bench: --backlog, --backlogs and --window must be >= 1000", file=sys.stderr)
        return 2
    res = run(quick=args.quick, backlog=args.backlog, ingest_n=args.ingest, batch=args.batch,
              backlogs=args.backlogs, window=args.window)
    text = json.dumps(res, indent=1)
    if args.json:
        Path(args.json).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
