"""Cost against tag count: CPU seconds per hour and RSS of the daemon at 100 .. 20,000 tags polled every second.

Each size is the setup of :mod:`hil.bench.idle` (the real ``hazard-gateway run``, H/HH alarms on every tag,
SQLite store, signed batches over HTTPS to the reference receiver in another process, simulator values
changing every second so every reading is recorded), with one :class:`hil.bench.TagSim` and one device in
the daemon's config per 4000 tags (:class:`hil.bench.idle.SimGroup`; 20,000 tags = 5 devices). After a
warm-up the daemon's CPU (utime + stime, /proc) and its peak RSS are taken over ``duration_s``.

The line: ordinary least squares of CPU-s per hour (and of RSS) on tags over the sizes measured
(:func:`fit`): ``intercept`` is the fixed cost (what the daemon costs with no tags), ``slope`` the cost per
tag, ``r2`` how well a straight line explains the points, ``max_residual_pct`` the worst point's distance
from the line (% of its value). A point that did not keep up (``keep_up`` < 0.95: the machine's 2 cores were
full) is marked and bends the line: that is a finding, not a fitting error.

``run(sizes=(100, 500, 2000, 5000, 20000), poll_ms=1000, duration_s=20.0, warmup_s=8.0) -> dict``;
``python -m hil.bench.scale [--sizes ...] [--seconds S]`` prints the table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

SIZES = (100, 500, 2000, 5000, 20000)


def fit(xs: list[float], ys: list[float]) -> dict[str, float | None]:
    """Least-squares line y = intercept + slope * x: {"intercept", "slope", "r2", "max_residual_pct"}
    (None values for fewer than 2 distinct x)."""
    n = len(xs)
    if n < 2 or len(set(xs)) < 2:
        return {"intercept": None, "slope": None, "r2": None, "max_residual_pct": None}
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    icpt = my - slope * mx
    ss_res = sum((y - (icpt + slope * x)) ** 2 for x, y in zip(xs, ys))
    ss_tot = sum((y - my) ** 2 for y in ys)
    worst = max((abs(y - (icpt + slope * x)) / abs(y) * 100 for x, y in zip(xs, ys) if y), default=0.0)
    return {"intercept": icpt, "slope": slope, "r2": 1 - ss_res / ss_tot if ss_tot else 1.0,
            "max_residual_pct": worst}


def _rounded(f: dict[str, float | None], digits: dict[str, int]) -> dict[str, float | None]:
    return {k: (None if v is None else round(v, digits.get(k, 3))) for k, v in f.items()}


def run(sizes: tuple[int, ...] | list[int] = SIZES, poll_ms: int = 1000, duration_s: float = 20.0,
        warmup_s: float = 8.0, workdir: str | None = None) -> dict[str, Any]:
    """Measure the daemon at each size (module doc). Returns {"params", "by_tags": [{tags, devices,
    cpu_s_per_h, cpu_pct, rss_mb_max, tags_per_cpu_s, keep_up, ...}], "fit_cpu_s_per_h", "fit_rss_mb",
    "scale_fixed_cpu_s_per_h", "scale_cpu_s_per_h_per_1000_tags", "scale_fixed_rss_mb",
    "scale_rss_mb_per_1000_tags", "scale_r2_cpu", "table"}. A size whose daemon fails is recorded with its
    error and left out of the fit."""
    from hil.bench.idle import run_one

    base = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="bench-scale-"))
    rows: list[dict[str, Any]] = []
    for n in sizes:
        wd = base / f"tags-{n}"
        wd.mkdir(parents=True, exist_ok=True)
        try:
            r = asyncio.run(run_one(n, poll_ms, duration_s, warmup_s, wd, ready_timeout_s=180.0))
        except (RuntimeError, OSError) as exc:
            rows.append({"tags": n, "error": str(exc).splitlines()[0] if str(exc) else type(exc).__name__})
            continue
        rows.append(r)
    ok = [r for r in rows if "error" not in r]
    xs = [float(r["tags"]) for r in ok]
    f_cpu = fit(xs, [r["cpu_s_per_h"] for r in ok])
    f_rss = fit(xs, [r["rss_mb_max"] for r in ok])
    per_k = (lambda v: None if v is None else round(v * 1000, 3))
    table = [{"tags": r["tags"], "devices": r.get("devices"), "cpu_s_per_h": r.get("cpu_s_per_h"),
              "cpu_pct": r.get("cpu_pct"), "rss_mb": r.get("rss_mb_max"), "tags_per_cpu_s": r.get("tags_per_cpu_s"),
              "keep_up": r.get("keep_up"), "store_unsent": r.get("store_unsent"),
              **({"error": r["error"]} if "error" in r else {})} for r in rows]
    return {
        "params": {"sizes": list(sizes), "poll_ms": poll_ms, "duration_s": duration_s, "warmup_s": warmup_s,
                   "tags_per_simulator": 4000, "workdir": str(base),
                   "setup": "hil.bench.idle: alarms, store, signing, HTTPS upload on"},
        "by_tags": rows, "table": table,
        "fit_cpu_s_per_h": _rounded(f_cpu, {"intercept": 1, "slope": 4, "r2": 4, "max_residual_pct": 1}),
        "fit_rss_mb": _rounded(f_rss, {"intercept": 1, "slope": 6, "r2": 4, "max_residual_pct": 1}),
        "scale_fixed_cpu_s_per_h": None if f_cpu["intercept"] is None else round(f_cpu["intercept"], 1),
        "scale_cpu_s_per_h_per_1000_tags": per_k(f_cpu["slope"]),
        "scale_fixed_rss_mb": None if f_rss["intercept"] is None else round(f_rss["intercept"], 1),
        "scale_rss_mb_per_1000_tags": per_k(f_rss["slope"]),
        "scale_r2_cpu": None if f_cpu["r2"] is None else round(f_cpu["r2"], 4),
        "all_kept_up": all((r.get("keep_up") or 0) >= 0.95 for r in ok) if ok else None,
    }


def format_table(res: dict[str, Any]) -> str:
    """The per-size table and the fitted line as text."""
    lines = [f"{'tags':>6} {'dev':>3} {'CPU-s/h':>9} {'CPU %':>6} {'RSS MB':>7} {'tags/CPU-s':>11} {'keep_up':>7}"]
    for r in res["table"]:
        if "error" in r:
            lines.append(f"{r['tags']:>6}  error: {r['error']}")
            continue
        lines.append(f"{r['tags']:>6} {r['devices']:>3} {r['cpu_s_per_h']:>9.1f} {r['cpu_pct']:>6.2f} "
                     f"{r['rss_mb']:>7.1f} {r['tags_per_cpu_s'] or 0:>11,.0f} {r['keep_up'] or 0:>7.3f}")
    fc, fr = res["fit_cpu_s_per_h"], res["fit_rss_mb"]
    lines.append(f"fixed cost {res['scale_fixed_cpu_s_per_h']} CPU-s/h + {res['scale_cpu_s_per_h_per_1000_tags']} "
                 f"CPU-s/h per 1000 tags (r2 {fc['r2']}, worst point {fc['max_residual_pct']} % off); "
                 f"RSS {res['scale_fixed_rss_mb']} MB + {res['scale_rss_mb_per_1000_tags']} MB per 1000 tags "
                 f"(r2 {fr['r2']})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hil.bench.scale", description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="tag counts (1..100000)")
    ap.add_argument("--seconds", type=float, default=20.0, help="measurement per size")
    ap.add_argument("--warmup", type=float, default=8.0, help="seconds after the first poll before measuring")
    ap.add_argument("--json", metavar="FILE", help="write the result here")
    args = ap.parse_args(argv)
    if any(not 1 <= n <= 100_000 for n in args.sizes) or args.seconds <= 0 or args.warmup < 0:
        print("hil.bench.scale: --sizes within 1..100000, --seconds > 0, --warmup >= 0", file=sys.stderr)
        return 2
    res = run(args.sizes, duration_s=args.seconds, warmup_s=args.warmup)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    print(format_table(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
