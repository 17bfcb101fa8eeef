"""C18: wall-clock steps neither stall nor burst polling (gateway.record.clock + the Gateway's timers).

The wall clock is injected by replacing ``time.time`` for the whole process with the real
clock plus an offset that the test steps by -1 h, +1 h and +30 days (as libfaketime or an
NTP step would); ``time.monotonic`` is untouched. A real Gateway polls a real Modbus TCP
tank PLC (hil.tank_plc) at 1 Hz and uploads to the reference receiver over HTTPS.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from datetime import datetime
from pathlib import Path

import pytest

from gateway.record.clock import ClockMonitor, kernel_synchronised
from gateway.config import load_config
from gateway.runtime.gateway import Gateway
from gateway.regulator.receiver import BackgroundReceiver
from gateway.chain.signing import Signer
from hil.rig import make_keys, payload, receiver_batches, tank_plc_config
from hil.tank_plc import TankPlc

pytestmark = pytest.mark.timeout(60)

HOUR, DAY = 3600.0, 86400.0


def test_monitor_detects_steps_both_ways_and_ignores_jitter() -> None:
    t = {"wall": 1_760_000_000.0, "mono": 100.0}
    m = ClockMonitor(wall=lambda: t["wall"], mono=lambda: t["mono"], sync_fn=lambda: True)
    assert m.tick() is None and m.state() == {"synchronised": True, "last_step_s": None}
    for dw, dm, expect in ((1.0, 1.0, None), (1.4, 1.0, None), (0.6, 1.0, None),   # jitter < 1 s
                           (1.0 - HOUR, 1.0, -HOUR), (1.0 + HOUR, 1.0, HOUR), (0.1 + 30 * DAY, 0.1, 30 * DAY)):
        t["wall"] += dw
        t["mono"] += dm
        assert m.tick() == expect
    assert m.steps == 3 and m.last_step_s == 30 * DAY
    ev = m.step_event(m.last_step_s)
    assert ev["kind"] == "clock_step" and ev["step_s"] == 30 * DAY and ev["ts"].endswith("Z")
    assert kernel_synchronised() in (True, False, None)


@pytest.mark.e2e
async def test_C18_cadence_stays_on_the_monotonic_clock_through_wall_steps(tmp_path: Path, monkeypatch) -> None:
    real_time = time.time
    offset = [0.0]
    monkeypatch.setattr(time, "time", lambda: real_time() + offset[0])

    requests: list[float] = []
    plc = TankPlc()
    original = plc._action

    async def spy(function_code, *args):   # request times at the PLC, by the monotonic clock
        if function_code == 4:
            requests.append(time.monotonic())
        return await original(function_code, *args)

    plc._action = spy
    await plc.start()
    key, trust = make_keys(tmp_path)
    try:
        with BackgroundReceiver(tmp_path / "rx", trust) as rx:
            cfg_path = tank_plc_config(tmp_path / "gw.yaml", gateway_id="clock-gw", plc_port=plc.port,
                                       state_dir=tmp_path / "state", key_file=key,
                                       receiver_url=rx.url + "/v1/batches", ca_file=rx.cafile, poll_ms=1000,
                                       interval_ms=200)
            gw = Gateway(load_config(cfg_path), Signer.from_file(key))
            stop = asyncio.Event()
            run = asyncio.create_task(gw.run(stop))
            steps = [(-HOUR, 2.5), (HOUR, 5.0), (30 * DAY, 7.5)]
            t0 = time.monotonic()
            marks = []   # (monotonic time of the step, offset after it)
            for step, at in steps:
                await asyncio.sleep(t0 + at - time.monotonic())
                offset[0] += step
                marks.append((time.monotonic(), offset[0]))
            await asyncio.sleep(2.6)
            # let the last batches go
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                st = await asyncio.to_thread(gw.store.stats)
                if st["readings_unsent"] == 0 and st["batches_unacked"] == 0 and st["readings_total"] > 0:
                    break
                await asyncio.sleep(0.1)
            stop.set()
            await asyncio.wait_for(run, 30)
            tokens = receiver_batches(rx.store_path)
    finally:
        await plc.stop()

    # 1. cadence: 1 s +- 100 ms between requests, before, across and after every step
    gaps = [b - a for a, b in zip(requests, requests[1:])]
    assert len(gaps) >= 9, requests
    # (the first read may leave late while the connection is made on a loaded machine; the schedule is
    # anchored at the loop start, so only the first gap can be short then: it is never long)
    assert gaps[0] <= 1.1 and all(0.9 <= g <= 1.1 for g in gaps[1:]), [round(g, 3) for g in gaps]
    # 2. sample timestamps follow the new wall clock (RFC 3339 UTC, 'Z')
    db = sqlite3.connect(tmp_path / "state" / "store.sqlite")
    ts = [(datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp(), q) for t, q in db.execute(
        "SELECT ts, quality FROM readings WHERE tag='T101.level' ORDER BY id")]
    events = [json.loads(d) for d, in db.execute("SELECT data FROM events WHERE kind='clock_step' ORDER BY id")]
    db.close()
    assert all(q == "good" for _, q in ts)                   # no timeout fired because of a step
    assert ts[-1][0] - real_time() > 30 * DAY - 60           # the last samples carry the +30 d clock
    # sample to sample: 1 s apart, except across each step, where the wall clock's jump shows
    jumps = [b[0] - a[0] for a, b in zip(ts, ts[1:]) if not 0.8 <= b[0] - a[0] <= 1.2]
    assert len(jumps) == 3 and [round(j / HOUR) for j in jumps] == [-1, 1, 30 * 24], jumps
    assert all(abs(j - round(j / HOUR) * HOUR) < 1.2 for j in jumps), jumps
    # 3. one clock_step event per step, with its size
    assert [round(e["step_s"]) for e in events] == [-3600, 3600, 30 * 86400]
    # 4. upload and order unaffected: seq 1..n with the chain (the receiver enforces both), clock state
    seqs = [payload(t)["seq"] for t in tokens]
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) >= 3
    assert payload(tokens[-1])["clock"]["last_step_s"] == pytest.approx(30 * DAY, abs=1)
    assert "synchronised" in payload(tokens[-1])["clock"]


# ------------------------------------------------------------------- the CLOCK alarm (系统时钟未同步)

def test_clock_alarm_grace_defaults_to_60_s() -> None:
    from gateway.record.clock import DEFAULT_UNSYNC_GRACE_S
    from gateway.config import AlarmPolicySection
    assert DEFAULT_UNSYNC_GRACE_S == 60.0 and AlarmPolicySection().clock_unsync_grace_s == 60.0
    t = {"mono": 0.0}
    m = ClockMonitor(mono=lambda: t["mono"], sync_fn=lambda: False, sync_check_s=1.0)
    m.sync_alarm()
    t["mono"] = 59.0
    assert m.sync_alarm() is None
    t["mono"] = 61.0
    assert m.sync_alarm() is not None


def test_sync_alarm_after_the_grace_only_and_never_when_unknown() -> None:
    t = {"mono": 100.0}
    state = {"sync": False}
    m = ClockMonitor(mono=lambda: t["mono"], sync_fn=lambda: state["sync"], sync_check_s=1.0)
    assert m.sync_alarm(30.0) is None and m.unsynchronised_s() == 0.0
    t["mono"] += 29.5
    assert m.sync_alarm(30.0) is None
    t["mono"] += 1.0
    reason = m.sync_alarm(30.0)
    assert reason is not None and reason.startswith("系统时钟未同步 / system clock not synchronised")
    assert "30 s" in reason and "\n" not in reason
    t["mono"] += 5.0
    assert m.sync_alarm(30.0) == reason          # stable while it lasts: one alarm, no event per tick
    state["sync"] = True
    t["mono"] += 1.0
    assert m.sync_alarm(30.0) is None and m.unsynchronised_s() is None
    state["sync"] = False                        # a new loss starts a new grace
    t["mono"] += 1.0
    assert m.sync_alarm(30.0) is None
    state["sync"] = None                         # unknown (not Linux, adjtimex failed): nothing is raised
    t["mono"] += 100.0
    assert m.sync_alarm(30.0) is None and m.sync_alarm(0.0) is None


@pytest.mark.e2e
async def test_gateway_raises_and_clears_system_clock_alarm(tmp_path: Path) -> None:
    """A running Gateway with an injected kernel answer: system.CLOCK goes unacked after the configured grace,
    shows in the status, and returns to normal (rtn_unacked) when the clock is synchronised again; both
    transitions are stored as alarm events."""
    plc = TankPlc()
    await plc.start()
    state = {"sync": False}
    try:
        cfg = tmp_path / "gw.yaml"
        cfg.write_text(f"""gateway: {{id: clock-alarm, state_dir: state}}
keys: {{private_key: keys/private.pem}}
store: {{commit_interval_ms: 50, max_bytes: 1099511627776}}
alarm_policy: {{clock_unsync_grace_s: 0.5}}
devices:
  - {{name: tank_plc, protocol: modbus_tcp, host: 127.0.0.1, port: {plc.port}, poll_interval_ms: 200,
     tags: [{{name: T101.level, address: 30001, type: float32, unit: m}}]}}
""")
        gw = Gateway(load_config(cfg))
        gw.clock = ClockMonitor(sync_fn=lambda: state["sync"], sync_check_s=0.05)
        stop = asyncio.Event()
        run = asyncio.create_task(gw.run(stop))
        try:
            await asyncio.sleep(0.3)
            assert gw.alarms.state("system.CLOCK") == "normal"          # within the grace
            deadline = time.monotonic() + 5
            while gw.alarms.state("system.CLOCK") != "unacked" and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            st = gw.status()
            [a] = [a for a in st["alarms"] if a["id"] == "system.CLOCK"]
            assert a["kind"] == "CLOCK" and a["state"] == "unacked" and a["reason"].startswith("系统时钟未同步")
            state["sync"] = True
            deadline = time.monotonic() + 5
            while gw.alarms.state("system.CLOCK") != "rtn_unacked" and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert gw.alarms.state("system.CLOCK") == "rtn_unacked"
        finally:
            stop.set()
            await asyncio.wait_for(run, 30)
    finally:
        await plc.stop()
    db = sqlite3.connect(tmp_path / "state" / "store.sqlite")
    events = [json.loads(d) for d, in db.execute("SELECT data FROM events ORDER BY id")]
    db.close()
    clock = [(e["from_state"], e["to_state"]) for e in events if e.get("id") == "system.CLOCK"]
    assert clock == [("normal", "unacked"), ("unacked", "rtn_unacked")], clock
