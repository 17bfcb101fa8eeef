"""C12 as the case states it: the OPC UA server is a separate process, killed with SIGKILL.

``python -m hil.opcua_plant --port N --ramp --ramp-ms 500 --report`` publishes AT-301 H2S changing
every 500 ms and prints, from the server side, every value it sets ("H2S v") and every change of
its sessions / subscriptions / monitored items per node ("SUBSCRIPTIONS {json}"). The gateway's
drivers.opcua.OpcUaDevice subscribes with a 500 ms publishing interval. The server process is
killed with SIGKILL (no CloseSession, no goodbye: the kernel just closes the socket) and a new
process starts on the same port ~3 s later (the case's 10 s / 15 s, compressed).

Asserted (C12 "Right outcome"): the gap reads BAD (a GOOD reading after the kill is only ever the
last value with its own old timestamp, during detection, and never a sample stamped in the gap);
values from the new process resume within 10 s of its start; the new server holds exactly one
session, one subscription and one monitored item per tag; after the restart at most one
notification per change (duplicate monitored items would double them) and none for the unchanged
tag; the driver's supervisor is still running and logged no traceback.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from drivers.opcua import OpcUaDevice, OpcUaPoint
from gateway.model import Quality
from hil.opcua_plant import H2S, NAMESPACE_URI, XV100_POSITION, free_port

# e2e: an OPC UA server as a child process, SIGKILLed and restarted
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

ROOT = Path(__file__).resolve().parents[2]
RAMP_MS = 500


class PlantProc:
    """hil.opcua_plant as a child process; stdout lines collected with their monotonic arrival time."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.lines: list[tuple[float, str]] = []
        self.proc: subprocess.Popen | None = None
        self.started_wall = 0.0
        self._ready = threading.Event()

    def start(self, timeout_s: float = 20.0) -> "PlantProc":
        self.started_wall = time.time()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hil.opcua_plant", "--port", str(self.port), "--ramp", "--ramp-ms",
             str(RAMP_MS), "--report"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            env=dict(os.environ, PYTHONUNBUFFERED="1"))
        threading.Thread(target=self._pump, daemon=True).start()
        if not self._ready.wait(timeout_s):
            raise RuntimeError(f"opcua_plant on port {self.port} did not come up: {self.lines}")
        return self

    def _pump(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append((time.monotonic(), line.strip()))
            if line.startswith("OPC UA plant on"):
                self._ready.set()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait()

    def changes_between(self, t0: float, t1: float) -> int:
        return sum(1 for t, line in self.lines if line.startswith("H2S ") and t0 <= t < t1)

    def reports(self) -> list[dict]:
        return [json.loads(line.split(" ", 1)[1]) for _, line in self.lines if line.startswith("SUBSCRIPTIONS ")]


async def test_C12_sigkill_server_process_restart(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="drivers")
    port = free_port()
    p1 = PlantProc(port)
    await asyncio.to_thread(p1.start)
    p2: PlantProc | None = None
    points = [OpcUaPoint("AT301_H2S", f"nsu={NAMESPACE_URI};s={H2S}", unit="mg/m3"),
              OpcUaPoint("XV100_POS", f"nsu={NAMESPACE_URI};s={XV100_POSITION}", unit="%")]
    dev = OpcUaDevice("plant", f"opc.tcp://127.0.0.1:{port}/hazard/", points, timeout_s=1.0,
                      publishing_interval_ms=RAMP_MS, watchdog_s=1.0, backoff_initial_s=0.5, backoff_max_s=2.0)
    samples: list[tuple[float, float, dict]] = []          # (mono, wall, {tag: Reading}) every 100 ms

    async def sampler() -> None:                            # the poll loop, running throughout
        while True:
            rs = {r.tag: r for r in await dev.read()}
            samples.append((time.monotonic(), time.time(), rs))
            await asyncio.sleep(0.1)

    async def until(predicate, timeout_s: float) -> tuple[float, dict]:
        """(mono, readings) of the first sample from now on that satisfies predicate."""
        deadline, i = time.monotonic() + timeout_s, len(samples)
        while True:
            while i < len(samples):
                mono, _, rs = samples[i]
                i += 1
                if predicate(rs):
                    return mono, rs
            assert time.monotonic() < deadline, f"not within {timeout_s} s; last {samples[-1][2] if samples else None}"
            await asyncio.sleep(0.05)

    def good(rs: dict) -> bool:
        return all(r.quality is Quality.GOOD for r in rs.values())

    await dev.start()
    poller = asyncio.create_task(sampler())
    try:
        # 1. first server: values arrive and change
        _, first = await until(good, 10.0)
        await until(lambda rs: good(rs) and rs["AT301_H2S"].ts != first["AT301_H2S"].ts, 3.0)
        await asyncio.sleep(3.0)

        # 2. SIGKILL the server process
        last_p1 = samples[-1][2]["AT301_H2S"]
        assert last_p1.quality is Quality.GOOD
        t_kill, wall_kill = time.monotonic(), time.time()
        await asyncio.to_thread(p1.kill)
        t_bad, _ = await until(lambda rs: all(r.quality is Quality.BAD for r in rs.values()), 3.0)
        assert t_bad - t_kill < 3.0, "the dead server was not noticed within 3 s"
        await asyncio.sleep(max(0.0, 3.0 - (time.monotonic() - t_kill)))

        # 3. a new process on the same port (~3 s after the kill)
        p2 = PlantProc(port)
        await asyncio.to_thread(p2.start)
        t_restart, wall_restart = time.monotonic(), p2.started_wall
        t_resumed, resumed = await until(lambda rs: good(rs) and rs["AT301_H2S"].ts >= wall_restart, 10.0)
        assert t_resumed - t_restart < 10.0
        assert resumed["XV100_POS"].value == 100.0

        # the gap: from detection until the new server's first sample every tag reads BAD "comm fault";
        # before detection a GOOD reading may only be the old server's last value with its own old
        # timestamp: never a value stamped inside the gap, never the last value with a new time
        gap = [(mono, rs) for mono, _, rs in samples if t_kill <= mono < t_resumed]
        assert len(gap) > 30
        for mono, rs in gap:
            for tag, r in rs.items():
                if mono >= t_bad or r.quality is Quality.BAD:
                    assert r.quality is Quality.BAD and r.value is None and r.reason == "comm fault", r
                    continue
                assert r.ts <= wall_kill, f"{tag}: sample stamped in the gap (re-stamped old value?): {r}"

        # 4. one notification per change after the restart, none for the unchanged valve position
        await asyncio.sleep(1.0)
        n0, t_a = dict(dev.notifications), time.monotonic()
        i_a = len(samples)
        await asyncio.sleep(4.0)
        n1, t_b = dict(dev.notifications), time.monotonic()
        assert all(good(rs) for _, _, rs in samples[i_a:]), samples[i_a:]
        # a change is notified up to one publishing interval after the plant printed it
        changes = p2.changes_between(t_a - RAMP_MS / 1000, t_b)
        delta = n1["AT301_H2S"] - n0["AT301_H2S"]
        print(f"C12 sigkill: BAD {t_bad - t_kill:.2f} s after kill, resumed {t_resumed - t_restart:.2f} s after "
              f"restart; {delta} notifications for {changes} changes; server side {p2.reports()}")
        assert changes >= 6
        assert changes - 3 <= delta <= changes, f"{delta} notifications for {changes} changes"
        assert n1["XV100_POS"] == n0["XV100_POS"]

        # server side: one session, one subscription, one monitored item per tag; never more
        reps = p2.reports()
        assert reps, p2.lines[-20:]
        final = reps[-1]
        ns_h2s, ns_xv = (f"ns=2;s={H2S}", f"ns=2;s={XV100_POSITION}")
        assert final == {"sessions": 1, "subscriptions": 1, "monitored_items": {ns_h2s: 1, ns_xv: 1}}, reps
        assert max(r["subscriptions"] for r in reps) == 1, reps
        assert max(r["sessions"] for r in reps) == 1, reps
        assert all(n <= 1 for r in reps for n in r["monitored_items"].values()), reps

        # no crash: the supervisor still runs, the driver logged no traceback
        assert dev._task is not None and not dev._task.done()
        assert dev.connected and dev.sessions == 2
        text = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("drivers"))
        assert "Traceback" not in text and not any(r.exc_info for r in caplog.records
                                                   if r.name.startswith("drivers"))
    finally:
        poller.cancel()
        await asyncio.gather(poller, return_exceptions=True)
        await dev.close()
        await asyncio.to_thread(p1.kill)
        if p2 is not None:
            await asyncio.to_thread(p2.kill)
