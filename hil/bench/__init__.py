"""Benchmarks of the gateway (``make bench``; runner: :mod:`hil.bench.run`).

Each benchmark module has ``run(**sizes) -> dict`` (plain JSON-able data) and
measures a figure side by side with its reference in the same run, so the
ratios hold on a noisy 2-core machine. Benchmarks are measurements, not timed
tests (docs/design.md); tests/hil/test_bench_smoke.py only proves each one runs.

Shared pieces here:

* :class:`TagSim`: a pymodbus Modbus TCP server (unit id 1) holding ``tags``
  float32 values (IEEE 754, word order ABCD, 2 input registers each, tag i at
  PDU address 2*i, FC4; the same values mirrored in holding registers for
  FC3), counting requests and registers served. Values are ``i + 0.5``
  (``vary=True``: plus 0.01 per elapsed second, modulo 1, so every 1 s poll
  sees a new value and the record path stores every reading).
  Run in-process (``await sim.start()``) or as a subprocess with
  :func:`sim_subprocess` (``python -m hil.bench.tcp_poll --serve N``) when the
  client side is what is measured.
* :class:`ProcStat`: CPU seconds (user + system, from /proc/PID/stat, clock
  ticks) and resident set size (VmRSS, /proc/PID/status) of a process;
  proc(5).
* :func:`machine_info`, :func:`versions`, :func:`percentile`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import struct
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

from hil.rig import free_port  # noqa: F401  (the benches take it from here)

REPO = Path(__file__).resolve().parent.parent.parent
UNIT_ID = 1
MAX_REGISTERS = 2 * 4000  # TagSim holds at most 4000 float32 tags


def machine_info() -> dict[str, Any]:
    """CPU model and count, memory, kernel, Python: where the figures were measured."""
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_mb = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_mb = int(line.split()[1]) // 1024
    load = None
    with contextlib.suppress(OSError):
        load = [round(x, 2) for x in os.getloadavg()]
    return {"cpu": cpu, "cpus": os.cpu_count(), "mem_mb": mem_mb, "kernel": platform.release(),
            "machine": platform.machine(), "python": platform.python_version(), "loadavg_at_start": load}


def versions(*names: str) -> dict[str, str | None]:
    """Installed versions of the given distributions (None when not installed)."""
    names = names or ("hazard-gateway", "pymodbus", "asyncua", "pyserial", "matplotlib")
    out: dict[str, str | None] = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = None
    return out


def percentile(samples: list[float], p: float) -> float | None:
    """p-th percentile (0..100) by linear interpolation between closest ranks; None for no samples."""
    if not samples:
        return None
    s = sorted(samples)
    k = (len(s) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


# ------------------------------------------------------------------------------------------ /proc
_CLK_TCK = os.sysconf("SC_CLK_TCK")


class ProcStat:
    """CPU and memory of one process (Linux /proc; proc(5)).

    ``cpu_s()``: utime + stime of the process (plus its waited-for children's
    cutime + cstime when ``children``), seconds. ``rss_mb()``: VmRSS in MiB.
    Raises ProcessLookupError when the process is gone.
    """

    def __init__(self, pid: int, children: bool = False) -> None:
        self.pid = pid
        self.children = children

    def cpu_s(self) -> float:
        try:
            raw = Path(f"/proc/{self.pid}/stat").read_text()
        except FileNotFoundError:
            raise ProcessLookupError(f"process {self.pid} is gone") from None
        fields = raw.rsplit(")", 1)[1].split()
        # after the ")" field 3 (state) is index 0: utime=14, stime=15, cutime=16, cstime=17 (1-based)
        ticks = int(fields[11]) + int(fields[12])
        if self.children:
            ticks += int(fields[13]) + int(fields[14])
        return ticks / _CLK_TCK

    def rss_mb(self) -> float:
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
        except FileNotFoundError:
            raise ProcessLookupError(f"process {self.pid} is gone") from None
        return 0.0


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of ``pid`` and every live descendant (a peer that forks workers)."""
    total = 0.0
    for p in [pid, *descendants(pid)]:
        with contextlib.suppress(ProcessLookupError, ValueError, IndexError):
            total += ProcStat(p, children=True).cpu_s()
    return total


def tree_rss_mb(pid: int) -> float:
    total = 0.0
    for p in [pid, *descendants(pid)]:
        with contextlib.suppress(ProcessLookupError, ValueError):
            total += ProcStat(p).rss_mb()
    return total


def descendants(pid: int) -> list[int]:
    """Live descendant pids of ``pid`` (from /proc/*/stat ppid)."""
    parent: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            parent[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
    out, frontier = [], [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out += kids
        frontier += kids
    return out


# ------------------------------------------------------------------------------------------ simulator
def float32_abcd(value: float) -> list[int]:
    hi, lo = struct.unpack(">HH", struct.pack(">f", value))
    return [hi, lo]


def tag_value(i: int) -> float:
    """The value TagSim serves for tag i."""
    return i + 0.5


class TagSim:
    """Modbus TCP simulator with ``tags`` float32 tags (see module doc). host/port: where to listen (0 = free port).

    Counters: ``requests`` (read requests answered), ``registers`` (registers served).
    Raises ValueError for tags outside 1..4000, OSError when the port cannot be bound.
    """

    def __init__(self, tags: int, host: str = "127.0.0.1", port: int = 0, vary: bool = False) -> None:
        if not 1 <= tags <= MAX_REGISTERS // 2:
            raise ValueError(f"TagSim: tags must be within 1..{MAX_REGISTERS // 2}, got {tags}")
        self.tags = tags
        self.host = host
        self._req_port = port or free_port(host)
        self.port = self._req_port
        self.vary = vary
        self.requests = 0
        self.registers = 0
        self._server: Any = None

    async def start(self) -> int:
        """Listen; returns the port."""
        import logging

        from pymodbus.server import ModbusTcpServer
        from pymodbus.simulator import DataType, SimData, SimDevice

        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)  # its per-frame debug trace is not wanted here
        regs: list[int] = []
        for i in range(self.tags):
            regs += float32_abcd(tag_value(i))
        device = SimDevice(
            id=UNIT_ID,
            simdata=(
                [SimData(0, values=[False] * 16, datatype=DataType.BITS)],
                [SimData(0, values=[False] * 16, datatype=DataType.BITS)],
                [SimData(0, count=len(regs), values=regs, datatype=DataType.REGISTERS)],
                [SimData(0, count=len(regs), values=regs, datatype=DataType.REGISTERS)],
            ),
            action=self._action,
        )
        self._server = ModbusTcpServer(device, address=(self.host, self._req_port), ignore_missing_devices=True)
        await self._server.serve_forever(background=True)
        if not getattr(self._server.transport, "sockets", None):
            raise OSError(f"TagSim: could not listen on {self.host}:{self._req_port}")
        self.port = self._server.transport.sockets[0].getsockname()[1]
        return self.port

    async def _action(self, function_code: int, start_address: int, address: int, count: int,
                      registers: list[int], set_values: Any) -> None:
        self.requests += 1
        self.registers += count
        if self.vary and set_values is None and function_code in (3, 4):
            step = int(time.monotonic()) % 100 * 0.01
            lo = address - address % 2
            for a in range(lo, min(address + count, 2 * self.tags), 2):
                hi_lo = float32_abcd(tag_value(a // 2) + step)
                for k in (0, 1):
                    j = a + k - start_address
                    if 0 <= j < len(registers):
                        registers[j] = hi_lo[k]
        return None

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.shutdown()
            self._server = None


@contextlib.contextmanager
def sim_subprocess(tags: int, timeout_s: float = 20.0) -> Iterator[tuple[int, subprocess.Popen]]:
    """Run a TagSim in its own process (``python -m hil.bench.tcp_poll --serve TAGS``); yields (port, process).

    Raises RuntimeError when it does not report its port within ``timeout_s``.
    """
    proc = subprocess.Popen([sys.executable, "-m", "hil.bench.tcp_poll", "--serve", str(tags)], cwd=str(REPO),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        port = None
        deadline = time.monotonic() + timeout_s
        import select

        while time.monotonic() < deadline and port is None:
            r, _, _ = select.select([proc.stdout], [], [], 0.2)
            if r:
                line = proc.stdout.readline()
                if line.startswith("PORT "):
                    port = int(line.split()[1])
                elif not line and proc.poll() is not None:
                    break
        if port is None:
            err = proc.stderr.read() if proc.poll() is not None else ""
            raise RuntimeError(f"simulator subprocess did not start: {err.strip().splitlines()[-1:] or 'timeout'}")
        yield port, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for f in (proc.stdout, proc.stderr):
            if f:
                f.close()


async def serve_forever(tags: int, port: int = 0) -> None:
    """Subprocess body of :func:`sim_subprocess`: print ``PORT n`` once listening; stop on SIGTERM."""
    import signal

    sim = TagSim(tags, port=port)
    p = await sim.start()
    print(f"PORT {p}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await sim.stop()
