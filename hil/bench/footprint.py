"""What a running process costs at rest: what wakes it and how often, and what its resident memory is made of.

Used by :mod:`hil.bench.idle` on the daemon at 500 tags / 1 s (the idle figure's process), after its CPU
measurement so that tracing does not inflate it.

* :func:`wakeups`: context switches per second of every thread of a process over a window, by thread name
  (``voluntary_ctxt_switches`` + ``nonvoluntary_ctxt_switches`` of ``/proc/PID/task/TID/status``, proc(5)):
  a voluntary switch is a sleep that a wake-up ends, so their rate is the wake-up rate; no tracer needed.
* :func:`strace_summary`: ``strace -c -f -p PID`` for a window (strace(1): ``-c`` counts calls, errors and
  time per syscall, ``-f`` every thread), parsed into calls per second per syscall; the blocking ones
  (epoll_wait, poll, select, futex, clock_nanosleep, ...) are what the process waits in, each return a
  wake-up. strace is not a Python package: ``apt-get install strace`` (Debian/Ubuntu); without it the
  result says so and the rest runs. ptrace needs the same user (or root) and ``kernel.yama.ptrace_scope``
  <= 1 for a child of ours.
* :func:`import_rss`: the modules the process imported, from its ``-X importtime`` trace (Python docs,
  "-X importtime": one ``import time:`` line per module, in completion order), imported again in the same
  order by a fresh child (``python -c``) that reads its own VmRSS after each module; the growth is charged
  to the module's top-level package. So each package's figure is what it adds once what the daemon
  imported before it is loaded (shared dependencies go to the first importer). ``interpreter`` is the
  child's RSS before any import, ``data`` the daemon's RSS less everything the imports explain: tags,
  buffers, SQLite page cache, TLS sessions.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BLOCKING = ("epoll_wait", "epoll_pwait", "epoll_pwait2", "poll", "ppoll", "select", "pselect6", "futex",
            "clock_nanosleep", "nanosleep", "wait4", "read", "recvfrom", "accept4")


def _thread_switches(pid: int) -> dict[int, tuple[str, int, int]]:
    """{tid: (thread name, voluntary, nonvoluntary)} of every live thread of ``pid``."""
    out: dict[int, tuple[str, int, int]] = {}
    with contextlib.suppress(FileNotFoundError):
        for t in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, ValueError):
                name = (t / "comm").read_text().strip()
                vol = nvol = 0
                for line in (t / "status").read_text().splitlines():
                    if line.startswith("voluntary_ctxt_switches:"):
                        vol = int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches:"):
                        nvol = int(line.split()[1])
                tid = int(t.name)
                out[tid] = ("main" if tid == pid else f"{name} (tid {tid})", vol, nvol)
    return out


def wakeups(pid: int, seconds: float) -> dict[str, Any]:
    """Context switches per second of ``pid``'s threads over ``seconds`` (module doc). Returns
    {"seconds", "threads", "wakeups_per_s" (voluntary, all threads), "involuntary_per_s", "by_thread":
    {name: {"threads", "wakeups_per_s", "involuntary_per_s"}}}. Raises ProcessLookupError when pid is gone."""
    a = _thread_switches(pid)
    if not a:
        raise ProcessLookupError(f"process {pid} is gone")
    t0 = time.monotonic()
    time.sleep(seconds)
    b = _thread_switches(pid)
    wall = time.monotonic() - t0
    by: dict[str, dict[str, float]] = {}
    for tid, (name, vol, nvol) in b.items():
        _, vol0, nvol0 = a.get(tid, (name, 0, 0))
        e = by.setdefault(name, {"threads": 0, "wakeups_per_s": 0.0, "involuntary_per_s": 0.0})
        e["threads"] += 1
        e["wakeups_per_s"] += (vol - vol0) / wall
        e["involuntary_per_s"] += (nvol - nvol0) / wall
    by = {k: {"threads": v["threads"], "wakeups_per_s": round(v["wakeups_per_s"], 1),
              "involuntary_per_s": round(v["involuntary_per_s"], 1)}
          for k, v in sorted(by.items(), key=lambda kv: -kv[1]["wakeups_per_s"])}
    return {"seconds": round(wall, 1), "threads": len(b),
            "wakeups_per_s": round(sum(v["wakeups_per_s"] for v in by.values()), 1),
            "involuntary_per_s": round(sum(v["involuntary_per_s"] for v in by.values()), 1), "by_thread": by}


def parse_strace_c(text: str, seconds: float) -> dict[str, Any]:
    """The ``strace -c`` table (``% time  seconds  usecs/call  calls  errors  syscall``; errors blank when 0) as
    {"syscalls_per_s", "blocking_per_s", "by_syscall": {name: {"calls", "per_s", "errors", "seconds"}}}; the
    totals are summed from the rows (the total row's columns vary between strace versions)."""
    by: dict[str, dict[str, Any]] = {}
    for line in text.splitlines():
        tok = line.split()
        if len(tok) not in (5, 6) or tok[-1] == "total" or not all(_num(t) for t in tok[:-1]):
            continue
        secs, calls = float(tok[1]), int(tok[3])
        errors = int(tok[4]) if len(tok) == 6 else 0
        by[tok[-1]] = {"calls": calls, "per_s": round(calls / seconds, 1), "errors": errors, "seconds": secs}
    calls = sum(r["calls"] for r in by.values())
    blocking = sum(r["calls"] for n, r in by.items() if n in BLOCKING)
    return {"syscalls_per_s": round(calls / seconds, 1), "blocking_per_s": round(blocking / seconds, 1),
            "by_syscall": dict(sorted(by.items(), key=lambda kv: -kv[1]["calls"]))}


def _num(t: str) -> bool:
    try:
        float(t)
    except ValueError:
        return False
    return True


def strace_summary(pid: int, seconds: float, out_file: Path) -> dict[str, Any]:
    """``strace -c -f -p pid`` for ``seconds`` (module doc); {"available": False, "reason"} without strace
    or when it cannot attach."""
    exe = shutil.which("strace")
    if not exe:
        return {"available": False, "reason": "strace not installed (apt-get install strace)"}
    out_file.parent.mkdir(parents=True, exist_ok=True)
    p = subprocess.Popen([exe, "-c", "-f", "-p", str(pid), "-o", str(out_file)], stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)   # attached to every thread
    t0 = time.monotonic()
    time.sleep(seconds)
    if p.poll() is not None:
        err = (p.stderr.read() if p.stderr else "").strip().splitlines()
        return {"available": False, "reason": f"strace exited early: {err[-1] if err else p.returncode}"}
    p.send_signal(signal.SIGINT)   # detach and write the summary
    wall = time.monotonic() - t0
    try:
        p.wait(20)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        return {"available": False, "reason": "strace did not detach within 20 s"}
    finally:
        if p.stderr:
            p.stderr.close()
    text = out_file.read_text(errors="replace") if out_file.exists() else ""
    res = parse_strace_c(text, wall)
    return {"available": True, "seconds": round(wall, 1), "command": f"strace -c -f -p PID ({seconds:g} s)", **res}


def modules_from_importtime(text: str) -> list[str]:
    """Module names of a ``-X importtime`` trace in completion order (first occurrence), deduplicated."""
    seen: dict[str, None] = {}
    for line in text.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        name = line.rsplit("|", 1)[1].strip()
        if name and name != "imported package":
            seen.setdefault(name, None)
    return list(seen)


_CHILD = r"""
import importlib, json, sys
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0
mods = json.loads(sys.stdin.read())
base = rss()
by = {}
failed = []
for m in mods:
    before = rss()
    try:
        importlib.import_module(m)
    except BaseException as exc:
        failed.append(m)
    top = m.split(".")[0]
    by[top] = by.get(top, 0) + rss() - before
print(json.dumps({"base_kb": base, "total_kb": rss(), "by_kb": by, "failed": failed}))
"""


def import_rss(modules: list[str], daemon_rss_mb: float | None = None, top: int = 12,
               python: str = sys.executable, cwd: str | None = None) -> dict[str, Any]:
    """Re-import ``modules`` in order in a fresh child and charge its RSS growth to top-level packages
    (module doc). Returns {"interpreter_mb", "imports_mb", "child_total_mb", "data_mb", "by_package_mb"
    (the ``top`` largest), "other_packages_mb", "packages", "modules", "failed"}. Raises RuntimeError when the
    child fails."""
    r = subprocess.run([python, "-c", _CHILD], input=json.dumps(modules), capture_output=True, text=True,
                       timeout=120, cwd=cwd, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    if r.returncode != 0:
        raise RuntimeError(f"import child failed: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
    d = json.loads(r.stdout.strip().splitlines()[-1])
    by = sorted(((k, v / 1024) for k, v in d["by_kb"].items()), key=lambda kv: -kv[1])
    total = d["total_kb"] / 1024
    out = {"interpreter_mb": round(d["base_kb"] / 1024, 1), "imports_mb": round(total - d["base_kb"] / 1024, 1),
           "child_total_mb": round(total, 1),
           "by_package_mb": {k: round(v, 1) for k, v in by[:top]},
           "other_packages_mb": round(sum(v for _, v in by[top:]), 1), "packages": len(by),
           "modules": len(modules), "failed": d["failed"][:20],
           "method": "the daemon's -X importtime modules re-imported in order by a fresh child, VmRSS after each "
                     "charged to its top-level package"}
    if daemon_rss_mb is not None:
        out["daemon_rss_mb"] = round(daemon_rss_mb, 1)
        out["data_mb"] = round(daemon_rss_mb - total, 1)
    return out
