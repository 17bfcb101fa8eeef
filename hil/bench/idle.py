"""Idle cost: CPU seconds per hour and memory of the gateway daemon in steady polling.

The real daemon (``hazard-gateway run``, a subprocess) polls ``tags`` float32
tags of a :class:`hil.bench.TagSim` (in this process, values changing every
second so every reading is recorded) every ``poll_ms``, with its whole
record path on: SQLite store, signed batches, HTTPS uplink to the reference
receiver (another subprocess). After a warm-up its CPU time (utime + stime,
/proc/PID/stat) and RSS (VmRSS) are sampled once a second for ``duration_s``;
CPU seconds per hour are extrapolated linearly. Keeping up: polls counted by
the daemon (status.json ``devices.*.polls``) against ``duration_s / poll``, and
tags/s served by the simulator. Memory flatness: RSS slope in MB per hour by
least squares over the samples (after the warm-up). Every tag carries H/HH limits (evaluated on every
poll, never raised), so the alarm engine's cost is in the figure.

After the 1 s measurement, the breakdown (:mod:`hil.bench.footprint`): wake-ups per second by thread
(context switches, /proc), syscalls per second (``strace -c -f``, when strace is installed) and what the
RSS is made of (the daemon runs under ``-X importtime``; its modules are re-imported by a child that
charges each top-level package its RSS growth). :class:`SimGroup` serves more than 4000 tags with one
simulator (and one device in the daemon's config) per 4000 tags; :mod:`hil.bench.scale` uses it.

:func:`measure_process` is shared with the peer benchmark (same harness for
both sides).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from hil.bench import REPO, TagSim, free_port, tree_cpu_s, tree_rss_mb
from hil.rig import stop_process


def _slope_per_h(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (t_s, value) in value per hour."""
    if len(points) < 3:
        return None
    n = len(points)
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    den = sum((t - mt) ** 2 for t, _ in points)
    return None if den == 0 else sum((t - mt) * (v - mv) for t, v in points) / den * 3600


async def measure_process(proc: subprocess.Popen, sim: TagSim, *, warmup_s: float, duration_s: float,
                          ready: Callable[[], bool] | None = None, ready_timeout_s: float = 60.0,
                          expected_tags_per_s: float | None = None) -> dict[str, Any]:
    """Sample CPU and RSS of ``proc`` (and its descendants) and the simulator's counters.

    Waits until ``ready()`` is true (or the simulator has answered a request), then ``warmup_s``, then
    measures for ``duration_s``. Raises RuntimeError when the process exits or never gets ready.
    """
    deadline = time.monotonic() + ready_timeout_s
    while not ((ready() if ready else False) or sim.requests > 0):
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with code {proc.returncode} before polling")
        if time.monotonic() > deadline:
            raise RuntimeError(f"no poll reached the simulator within {ready_timeout_s:.0f} s")
        await asyncio.sleep(0.2)
    await asyncio.sleep(warmup_s)
    cpu0, reg0, req0, t0 = tree_cpu_s(proc.pid), sim.registers, sim.requests, time.monotonic()
    rss: list[tuple[float, float]] = []
    while time.monotonic() - t0 < duration_s:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with code {proc.returncode} during the measurement")
        rss.append((time.monotonic() - t0, tree_rss_mb(proc.pid)))
        await asyncio.sleep(min(1.0, max(0.05, duration_s - (time.monotonic() - t0))))
    wall = time.monotonic() - t0
    cpu = tree_cpu_s(proc.pid) - cpu0
    tags_per_s = (sim.registers - reg0) / 2 / wall
    out = {
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 3),
        "cpu_s_per_h": round(cpu / wall * 3600, 1),
        "cpu_pct": round(100 * cpu / wall, 2),
        "tags_per_s": round(tags_per_s, 1),
        "requests_per_s": round((sim.requests - req0) / wall, 1),
        "tags_per_cpu_s": round(tags_per_s * wall / cpu, 1) if cpu > 0 else None,
        "cpu_s_per_1000_tags": round(1000 * cpu / max(tags_per_s * wall, 1), 4),
        "rss_mb_start": round(rss[0][1], 1) if rss else None,
        "rss_mb_end": round(rss[-1][1], 1) if rss else None,
        "rss_mb_max": round(max(v for _, v in rss), 1) if rss else None,
        "rss_slope_mb_per_h": None if (s := _slope_per_h(rss)) is None else round(s, 1),
    }
    if expected_tags_per_s:
        out["keep_up"] = round(tags_per_s / expected_tags_per_s, 3)
    return out


INLINE_MAX_TAGS = 8000   # above this the config would pass the 1 MiB input-file limit: tags go to profile files


def daemon_config(tags: int, poll_ms: int, port: int | list[int], wd: Path, receiver_url: str, ca: Path,
                  key: Path, alarms: bool = True) -> str:
    """The daemon's config: ``tags`` float32 tags split evenly over one device per simulator port (tag names
    unique across devices), each with H/HH limits far above its value (evaluated every poll, never raised),
    SQLite store, signed batches over HTTPS. Up to :data:`INLINE_MAX_TAGS` the tags are inline (T00000...);
    above it the devices take them from a register-map profile written to ``wd/profiles/bench_N.yaml``
    (gateway.device_profiles; one per device size, shared; tags named ``simK.T0000``), since a gateway input file is at most 1 MiB."""
    ports = [port] if isinstance(port, int) else list(port)
    per = [tags // len(ports) + (1 if k < tags % len(ports) else 0) for k in range(len(ports))]
    lim = " alarms: {H: 500000.0, HH: 1000000.0}," if alarms else ""
    lines = [
        "gateway: {id: bench-idle, state_dir: state}",
        f"keys: {{private_key: {key}}}",
        "store: {path: store.sqlite, commit_interval_ms: 500,",
        "        retention_floor: {waive: true, reason: 'benchmark rig (hil.bench), not a site''s records'}}",
        f"uplink: {{url: '{receiver_url}', ca_file: {ca}, batch_max_readings: {max(5000, min(tags, 100_000))},"
        " interval_ms: 1000}",
        "devices:",
    ]
    n = 0
    for k, (p, count) in enumerate(zip(ports, per)):
        name = "sim" if k == 0 else f"sim{k}"
        # above INLINE_MAX_TAGS the daemon's first cycles (5 devices x 64 requests) are long: 1 s timeouts would
        # take every device offline for 30 s (drivers.modbus) before the steady state this measures
        head = (f"  - {{name: {name}, protocol: modbus_tcp, host: 127.0.0.1, port: {p}, unit_id: 1,\n"
                f"     poll_interval_ms: {poll_ms}, timeout_ms: {3000 if tags > INLINE_MAX_TAGS else 1000},")
        if tags > INLINE_MAX_TAGS:
            prof = wd / "profiles" / f"bench_{count}.yaml"   # shared by the devices of this size (at most 2 sizes)
            if not prof.exists():
                prof.parent.mkdir(parents=True, exist_ok=True)
                prof.write_text("\n".join(
                    [f"profile: {{name: bench_{count}, description: 'hil.bench TagSim, {count} float32 tags'}}",
                     "tags:"]
                    + [f"  - {{key: T{i:04d}, address: {30001 + 2 * i}, type: float32, order: ABCD, unit: m,{lim}}}"
                       for i in range(count)]) + "\n")
            lines += [head, f"     profile: {prof}}}"]
            continue
        lines += [head, "     tags: ["]
        lines += [f"       {{name: T{n + i:05d}, address: {30001 + 2 * i}, type: float32, order: ABCD, unit: m,{lim}}},"
                  for i in range(count)]
        lines += ["     ]}"]
        n += count
    return "\n".join(lines) + "\n"


class SimGroup:
    """Several :class:`TagSim` (at most 4000 tags each) counted as one: ``requests``, ``registers``, ``ports``."""

    def __init__(self, tags: int, per_sim: int = 4000) -> None:
        n = -(-tags // per_sim)
        self.sims = [TagSim(tags // n + (1 if k < tags % n else 0), vary=True) for k in range(n)]

    async def start(self) -> list[int]:
        for s in self.sims:
            await s.start()
        return self.ports

    @property
    def ports(self) -> list[int]:
        return [s.port for s in self.sims]

    @property
    def requests(self) -> int:
        return sum(s.requests for s in self.sims)

    @property
    def registers(self) -> int:
        return sum(s.registers for s in self.sims)

    async def stop(self) -> None:
        for s in self.sims:
            await s.stop()


async def run_one(tags: int, poll_ms: int, duration_s: float, warmup_s: float, wd: Path,
                   breakdown_s: float = 0.0, ready_timeout_s: float = 120.0) -> dict[str, Any]:
    """One daemon at ``tags`` / ``poll_ms`` (one simulator per 4000 tags, in this process), measured for
    ``duration_s`` after ``warmup_s``; with ``breakdown_s`` > 0 then also its wake-ups, syscalls (strace) and
    import RSS (:mod:`hil.bench.footprint`), each over ``breakdown_s``, in ``res["breakdown"]``."""
    from gateway.chain.signing import keygen
    from gateway.tlsutil import make_self_signed

    from hil.bench import footprint

    keygen(wd / "keys")
    trust = wd / "trust"
    trust.mkdir(exist_ok=True)
    for jwk in (wd / "keys").glob("*.jwk"):
        (trust / jwk.name).write_bytes(jwk.read_bytes())
    cert, tkey = make_self_signed(wd / "tls")
    sim = SimGroup(tags)
    await sim.start()
    rport = free_port()
    cli = [sys.executable, "-m", "gateway.cli"]
    env = dict(os.environ, HG_LOG_LEVEL="WARNING")
    logs = open(wd / "processes.log", "ab")
    receiver = subprocess.Popen(cli + ["receiver", "--listen", f"127.0.0.1:{rport}", "--store",
                                       str(wd / "receiver.sqlite"), "--trust", str(trust), "--cert", str(cert),
                                       "--key", str(tkey)], stdout=logs, stderr=logs, cwd=str(REPO), env=env)
    cfg = wd / "gateway.yaml"
    cfg.write_text(daemon_config(tags, poll_ms, sim.ports, wd, f"https://127.0.0.1:{rport}/v1/batches", cert,
                           wd / "keys" / "private.pem"))
    status = wd / "state" / "status.json"

    def polls() -> int:
        try:
            return sum(int(d["polls"]) for d in json.loads(status.read_text())["devices"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return 0

    gw_err = open(wd / "daemon-stderr.log", "ab") if breakdown_s > 0 else logs
    py = [sys.executable, "-X", "importtime"] if breakdown_s > 0 else [sys.executable]
    t_start = time.monotonic()
    gw = subprocess.Popen(py + ["-m", "gateway.cli", "run", "--config", str(cfg)], stdout=logs, stderr=gw_err,
                          cwd=str(REPO), env=env)
    n_dev = len(sim.sims)
    try:
        res = await measure_process(gw, sim, warmup_s=warmup_s, duration_s=0.0, ready=lambda: polls() > 0,
                                    expected_tags_per_s=tags * 1000 / poll_ms, ready_timeout_s=ready_timeout_s)
        p0, t0, c0 = polls(), time.monotonic(), time.process_time()
        res = await measure_process(gw, sim, warmup_s=0.0, duration_s=duration_s,
                                    expected_tags_per_s=tags * 1000 / poll_ms)
        p1 = polls()
        # the simulators run in this process: near 100 % here means they, not the daemon, set the pace
        res["simulator_cpu_pct"] = round(100 * (time.process_time() - c0) / max(time.monotonic() - t0, 1e-9), 1)
        res["polls"] = p1 - p0
        res["polls_expected"] = round((time.monotonic() - t0) * 1000 / poll_ms * n_dev, 1)
        res["devices"] = n_dev
        res["start_to_measure_s"] = round(t0 - t_start, 1)
        st = json.loads(status.read_text()) if status.exists() else {}
        res["uplink_sent_batches"] = (st.get("uplink") or {}).get("sent")
        res["store_unsent"] = (st.get("store") or {}).get("readings_unsent")
        if breakdown_s > 0:
            bd: dict[str, Any] = {}
            try:
                bd["wakeups"] = await asyncio.to_thread(footprint.wakeups, gw.pid, breakdown_s)
            except ProcessLookupError as exc:
                bd["wakeups"] = {"available": False, "reason": str(exc)}
            bd["strace"] = await asyncio.to_thread(footprint.strace_summary, gw.pid, breakdown_s,
                                                   wd / "strace-c.txt")
            rss_now = tree_rss_mb(gw.pid)
            gw_err.flush()
            mods = footprint.modules_from_importtime((wd / "daemon-stderr.log").read_text(errors="replace"))
            try:
                bd["rss"] = await asyncio.to_thread(footprint.import_rss, mods, rss_now, 12, sys.executable,
                                                    str(REPO))
            except (RuntimeError, subprocess.TimeoutExpired, ValueError) as exc:
                bd["rss"] = {"available": False, "reason": str(exc), "daemon_rss_mb": round(rss_now, 1)}
            res["breakdown"] = bd
    finally:
        stop_process(gw)
        stop_process(receiver)
        logs.close()
        if gw_err is not logs:
            gw_err.close()
        await sim.stop()
    if gw.returncode not in (0, None):
        res["exit_code"] = gw.returncode
    return {"tags": tags, "poll_ms": poll_ms, **res}


def run(tags: int = 500, poll_ms: int | list[int] = (1000, 100), duration_s: float = 60.0, warmup_s: float = 8.0,
        workdir: str | None = None, breakdown_s: float = 0.0) -> dict[str, Any]:
    """Measure the daemon at each poll interval (ms). Returns {"params", "runs": [...], "idle_cpu_s_per_h",
    "idle_rss_mb", "tags_per_cpu_s", "idle_breakdown"} where the headline figures come from the first interval
    (1000 ms by default) and ``idle_breakdown`` (wake-ups, strace, import RSS; :mod:`hil.bench.footprint`) is
    taken on that run after its measurement, ``breakdown_s`` per part (0: none).
    The 100 ms run (if any) is measured for a third of ``duration_s`` (at least 10 s): keeping up and flat memory.
    Raises RuntimeError when the daemon does not start.
    """
    intervals = [poll_ms] if isinstance(poll_ms, int) else list(poll_ms)
    base = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="bench-idle-"))
    runs = []
    for i, ms in enumerate(intervals):
        wd = base / f"poll-{ms}ms"
        wd.mkdir(parents=True, exist_ok=True)
        d = duration_s if i == 0 else max(10.0, duration_s / 3)
        runs.append(asyncio.run(run_one(tags, ms, d, warmup_s, wd, breakdown_s=breakdown_s if i == 0 else 0.0)))
    first = runs[0]
    bd = first.pop("breakdown", None) or {}
    return {"params": {"tags": tags, "poll_ms": intervals, "duration_s": duration_s, "warmup_s": warmup_s,
                       "alarms": "H and HH on every tag (never raised)", "breakdown_s": breakdown_s,
                       "record_path": "SQLite store + signed batches over HTTPS to the reference receiver",
                       "workdir": str(base)},
            "runs": runs, "idle_cpu_s_per_h": first["cpu_s_per_h"], "idle_rss_mb": first["rss_mb_max"],
            "tags_per_cpu_s": first["tags_per_cpu_s"],
            "idle_wakeups_per_s": (bd.get("wakeups") or {}).get("wakeups_per_s"),
            "idle_syscalls_per_s": (bd.get("strace") or {}).get("syscalls_per_s"),
            "idle_breakdown": bd or None}


if __name__ == "__main__":
    print(json.dumps(run(duration_s=float(sys.argv[1]) if len(sys.argv) > 1 else 20.0), indent=2))
