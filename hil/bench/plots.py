"""PNG plots of a benchmark run (matplotlib, Agg backend; the ``bench`` extra).

* ``latency-STAMP.png``: the safety latency distribution. When the safety
  benchmark returns raw samples (any list of numbers under a key containing
  ``samples``, in ms) a histogram per poll interval with p50/p99 marked;
  otherwise a bar chart of p50/p99/max per poll interval.
* ``throughput-STAMP.png``: Modbus TCP tags/s against tag count, gateway and
  bare-client ceiling (log-x), with the ratio printed at each point.

:func:`draw` returns {"latency": path, "throughput": path} for what it drew;
raises ImportError when matplotlib is not installed (the runner records it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _samples(d: Any) -> list[float] | None:
    if isinstance(d, dict):
        for k, v in d.items():
            if "samples" in k and isinstance(v, list) and v and all(isinstance(x, (int, float)) for x in v):
                return [float(x) for x in v]
        for v in d.values():
            s = _samples(v)
            if s:
                return s
    return None


def draw(doc: dict[str, Any], out: Path, stamp: str) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hil.bench import percentile

    drawn: dict[str, str] = {}
    res = doc.get("results", {})
    saf = (res.get("safety_latency") or {}).get("by_poll_ms") or {}
    series = {p: r for p, r in saf.items() if isinstance(r, dict) and not r.get("error") and r.get("available", True)}
    if series:
        fig, ax = plt.subplots(figsize=(7, 4))
        with_samples = {p: _samples(r) for p, r in series.items()}
        if any(with_samples.values()):
            for p, s in with_samples.items():
                if s:
                    ax.hist(s, bins=50, alpha=0.6, label=f"poll {p} ms (n={len(s)})")
                    for q, ls in ((50, "--"), (99, ":")):
                        ax.axvline(percentile(s, q), linestyle=ls, color="k", linewidth=0.8)
            ax.set_xlabel("latency, ms (dashed p50, dotted p99)")
            ax.set_ylabel("count")
        else:
            from hil.bench.run import latency_summary

            polls = list(series)
            for i, k in enumerate(("p50", "p99", "max")):
                vals = [(latency_summary(series[p]) or {}).get(k) or 0 for p in polls]
                ax.bar([j + i * 0.27 for j in range(len(polls))], vals, width=0.27, label=k)
            ax.set_xticks([j + 0.27 for j in range(len(polls))], [f"poll {p} ms" for p in polls])
            ax.set_ylabel("latency, ms")
        ax.set_title("Safety latency: change in the simulator -> output confirmed")
        ax.legend()
        fig.tight_layout()
        path = out / f"latency-{stamp}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        drawn["latency"] = str(path)
    tcp = (res.get("tcp_poll") or {}).get("by_tags") or []
    if tcp:
        fig, ax = plt.subplots(figsize=(7, 4))
        xs = [x["tags"] for x in tcp]
        gw = [x["gateway"]["tags_per_s"] for x in tcp]
        ce = [x["ceiling"]["tags_per_s"] for x in tcp]
        ax.plot(xs, ce, "o-", label="bare pymodbus client (ceiling)")
        ax.plot(xs, gw, "s-", label="gateway driver (ModbusDevice)")
        for x, y, r in zip(xs, gw, (t["ratio"] for t in tcp)):
            ax.annotate(f"{r:.2f}", (x, y), textcoords="offset points", xytext=(0, -14), ha="center", fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel("tags (float32) per poll")
        ax.set_ylabel("tags/s")
        ax.set_ylim(bottom=0)
        ax.set_title("Modbus TCP polling throughput (labels: gateway / ceiling)")
        ax.legend()
        fig.tight_layout()
        path = out / f"throughput-{stamp}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        drawn["throughput"] = str(path)
    return drawn
