"""OutputManager: confirmed writes by read-back, bounded retry, output-fault, non-blocking apply (C04).

The writer here is a small in-memory async function standing in for Device.write (a coil table with a
read-back), not a protocol layer: the protocol write/read-back is tested with the drivers.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.safety.interlocks import TripCommand
from gateway.model import Quality, Reading, WriteError
from gateway.safety.outputs import OutputManager, values_match


class Coils:
    """In-memory outputs: write(tag, value) stores the value and returns the read-back Reading.

    fail: tag -> number of next writes that raise WriteError. disagree: tag -> value the read-back
    reports instead (a stuck relay). delay_s: per-write latency. block: an Event writes wait on."""

    def __init__(self) -> None:
        self.values: dict[str, object] = {}
        self.fail: dict[str, int] = {}
        self.disagree: dict[str, object] = {}
        self.delay_s = 0.0
        self.block: asyncio.Event | None = None
        self.calls: list[tuple[str, object, float]] = []

    async def write(self, tag: str, value):
        self.calls.append((tag, value, time.monotonic()))
        if self.block is not None:
            await self.block.wait()
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail.get(tag, 0) > 0:
            self.fail[tag] -= 1
            raise WriteError(f"tank_plc unit 1 coil {tag}: exception 04 slave device failure")
        self.values[tag] = value
        rb = self.disagree.get(tag, value)
        return Reading(tag, rb, "", Quality.GOOD, time.time())


def cmd(tag="XV100", value=0, kind="trip"):
    return TripCommand("gas_esd", tag, value, "process", time.monotonic(), time.time(), kind=kind)


def manager(coils: Coils, events: list, **kw) -> OutputManager:
    kw.setdefault("backoff_s", 0.01)
    kw.setdefault("confirm_timeout_s", 1.0)
    return OutputManager(coils.write, events.append, **kw)


async def test_write_confirmed_by_readback_and_trip_record():
    coils, events = Coils(), []
    om = manager(coils, events)
    c = cmd()
    om.apply([c])
    assert om.state("XV100").confirmed is False            # never applied before the read-back
    await om.wait_idle(2)
    s = om.state("XV100")
    assert (s.commanded, s.confirmed, s.attempts, s.last_error, s.fault) == (0, True, 1, None, False)
    assert s.confirmed_at is not None and coils.values == {"XV100": 0}
    assert [e["type"] for e in events] == ["output_write", "output_confirmed"]
    rec = om.trip_records()[0]
    assert rec.detected_mono <= rec.issued_mono <= rec.confirmed_mono
    assert 0 <= rec.latency_issue_ms <= rec.latency_confirm_ms < 1000
    assert rec.to_record()["confirmed"].endswith("Z")
    await om.close()


async def test_apply_does_not_wait_for_the_device():
    coils, events = Coils(), []
    coils.block = asyncio.Event()
    om = manager(coils, events, confirm_timeout_s=5)
    t0 = time.perf_counter()
    tasks = om.apply([cmd("XV100", 0), cmd("BEACON", 1)])
    assert time.perf_counter() - t0 < 0.05 and len(tasks) == 2
    await asyncio.sleep(0.01)
    assert om.state("XV100").busy and not om.state("XV100").confirmed
    coils.block.set()
    await om.wait_idle(2)
    assert om.state("XV100").confirmed and om.state("BEACON").confirmed
    await om.close()


async def test_retry_after_failures_then_confirmed():
    coils, events = Coils(), []
    coils.fail["XV100"] = 2
    om = manager(coils, events, attempts=3)
    om.apply([cmd()])
    await om.wait_idle(2)
    s = om.state("XV100")
    assert s.confirmed and s.attempts == 3 and not s.fault
    writes = [e for e in events if e["type"] == "output_write"]
    assert [w["ok"] for w in writes] == [False, False, True]
    assert "exception 04" in writes[0]["error"]
    gaps = [b[2] - a[2] for a, b in zip(coils.calls, coils.calls[1:])]
    assert gaps[0] >= 0.009 and gaps[1] >= 0.019            # exponential backoff


async def test_failures_exhaust_attempts_raise_output_fault():
    coils, events = Coils(), []
    coils.fail["XV100"] = 10
    om = manager(coils, events, attempts=3)
    om.apply([cmd()])
    await om.wait_idle(2)
    s = om.state("XV100")
    assert not s.confirmed and s.fault and s.attempts == 3 and len(coils.calls) == 3
    faults = [e for e in events if e["type"] == "output_fault"]
    assert len(faults) == 1 and "failed after 3 attempts" in faults[0]["error"]
    assert not any(e["type"] == "output_confirmed" for e in events)
    assert om.trip_records()[0].confirmed_mono is None and om.trip_records()[0].error
    await om.close()


async def test_C04_disagreeing_readback_is_never_applied():
    coils, events = Coils(), []
    coils.disagree["XV100"] = 1                                 # valve reports still open
    om = manager(coils, events, attempts=2)
    om.apply([cmd("XV100", 0)])
    await om.wait_idle(2)
    s = om.state("XV100")
    assert not s.confirmed and s.fault and "read-back 1 differs from commanded 0" in s.last_error
    assert [e["type"] for e in events].count("output_fault") == 1


async def test_bad_readback_is_not_confirmation():
    async def write(tag, value):
        return Reading.bad(tag, "", "timeout")
    events = []
    om = OutputManager(write, events.append, attempts=1, confirm_timeout_s=1)
    om.apply([cmd()])
    await om.wait_idle(2)
    assert not om.state("XV100").confirmed and "unusable" in om.state("XV100").last_error


async def test_uncertain_readback_is_not_confirmation():
    """S7: only a GOOD read-back confirms. An UNCERTAIN one (OPC UA UncertainLastUsableValue: the server's
    cached value, not the valve's present state) is a failed attempt, even when its value matches."""
    async def write(tag, value):
        return Reading(tag, value, "", Quality.UNCERTAIN, time.time(), reason="status UncertainLastUsableValue")
    events = []
    om = OutputManager(write, events.append, attempts=2, backoff_s=0.01, confirm_timeout_s=1)
    om.apply([cmd("XV100", 0)])
    await om.wait_idle(2)
    s = om.state("XV100")
    assert not s.confirmed and s.fault and "uncertain" in s.last_error
    assert "output_confirmed" not in [e["type"] for e in events]
    assert [e["type"] for e in events].count("output_fault") == 1


def test_readback_problem_only_good_and_matching_confirms():
    from gateway.safety.outputs import readback_problem
    good = Reading("XV100", 0, "", Quality.GOOD, time.time())
    assert readback_problem("XV100", good, 0) is None
    assert "differs" in readback_problem("XV100", good, 1)
    assert "uncertain" in readback_problem("XV100", Reading("XV100", 0, "", Quality.UNCERTAIN, time.time()), 0)
    assert "bad" in readback_problem("XV100", Reading.bad("XV100", "", "timeout"), 0)
    assert "unusable" in readback_problem("XV100", None, 0)


async def test_confirm_timeout_raises_fault_before_attempts_end_then_late_confirm():
    coils, events = Coils(), []
    coils.delay_s = 0.15
    om = manager(coils, events, attempts=3, attempt_timeout_s=1.0, confirm_timeout_s=0.05)
    om.apply([cmd()])
    await asyncio.sleep(0.1)
    assert [e["type"] for e in events] == ["output_fault"]
    assert "not confirmed within 0.05 s" in events[0]["error"] and om.state("XV100").fault
    await om.wait_idle(2)
    assert om.state("XV100").confirmed and not om.state("XV100").fault
    assert events[-1]["type"] == "output_confirmed" and events[-1]["late"] is True


async def test_attempt_timeout_is_a_failed_attempt():
    coils, events = Coils(), []
    coils.delay_s = 0.2
    om = manager(coils, events, attempts=2, attempt_timeout_s=0.05, confirm_timeout_s=5)
    om.apply([cmd()])
    await om.wait_idle(2)
    assert not om.state("XV100").confirmed and "no answer to the write within 0.05 s" in om.state("XV100").last_error


async def test_newer_command_supersedes_and_same_command_joins():
    coils, events = Coils(), []
    coils.fail["BEACON"] = 1
    om = manager(coils, events, attempts=3, backoff_s=0.05)
    om.apply([cmd("BEACON", 1)])
    om.apply([cmd("BEACON", 1)])                                # joins, no second write
    await asyncio.sleep(0.02)                                   # first attempt failed, in backoff
    om.apply([cmd("BEACON", 0, kind="reset")])
    await om.wait_idle(2)
    s = om.state("BEACON")
    assert s.commanded == 0 and s.confirmed and coils.values["BEACON"] == 0
    assert [c[1] for c in coils.calls] == [1, 0]
    recs = om.trip_records()
    assert [r.superseded for r in recs] == [True, True, False]


async def test_event_callback_error_does_not_stop_writes():
    coils = Coils()

    def broken(ev):
        raise RuntimeError("queue full")
    om = OutputManager(coils.write, broken, backoff_s=0.01)
    om.apply([cmd()])
    await om.wait_idle(2)
    assert om.state("XV100").confirmed


@pytest.mark.e2e
async def test_close_cancels_and_refuses():
    coils, events = Coils(), []
    coils.block = asyncio.Event()
    om = manager(coils, events)
    om.apply([cmd()])
    await asyncio.sleep(0)
    await om.close()
    assert not om.state("XV100").confirmed
    with pytest.raises(RuntimeError):
        om.apply([cmd()])
    await asyncio.sleep(1.1)                                    # watchdog was cancelled too
    assert not any(e["type"] == "output_fault" for e in events)


@pytest.mark.parametrize("rb,cmd_v,ok", [(True, 1, True), (False, 0, True), (0.29000000000000004, 0.29, True),
                                         (12.5, 12.5, True), (1, 0, False), (None, 0, False), ("ON", "ON", True),
                                         (12.499, 12.5, False)])
def test_values_match(rb, cmd_v, ok):
    assert values_match(rb, cmd_v) is ok


async def test_safety_path_end_to_end_reading_to_confirmed_trip():
    """Reading -> AlarmEngine -> InterlockEngine (2oo3) -> OutputManager -> confirmed read-back, with latency."""
    from gateway.safety.alarms import AlarmEngine, TagAlarmConfig, gas_preset
    from gateway.safety.interlocks import InterlockEngine, InterlockInput, InterlockSpec, OutputAction

    tags = ["GD1.gas", "GD2.gas", "GD3.gas"]
    alarms = AlarmEngine([TagAlarmConfig(t, gas_preset("combustible"), gas="combustible", group="area1") for t in tags])
    il = InterlockEngine([InterlockSpec("gas_esd", [InterlockInput(t, "HH") for t in tags], "2oo3",
                                        actions=[OutputAction("XV100", 0), OutputAction("BEACON", 1)])])
    coils, events = Coils(), []
    coils.values.update({"XV100": 1, "BEACON": 0})
    om = manager(coils, events)
    for step, values in enumerate([(5, 5, 5), (55, 5, 5), (58, 52, 5)]):
        now = time.monotonic()
        for t, v in zip(tags, values):
            alarms.update(Reading(t, float(v), "%LEL", Quality.GOOD, time.time()), now)
        alarms.tick(now)
        cmds, _ = il.evaluate(alarms, now)
        om.apply(cmds)
        assert bool(cmds) is (step == 2)
    await om.wait_idle(2)
    assert coils.values == {"XV100": 0, "BEACON": 1}
    assert all(om.state(t).confirmed for t in ("XV100", "BEACON"))
    assert [a.id for a in alarms.active() if a.first_out] == ["GD1.gas.H"]
    assert all(r.latency_confirm_ms is not None and r.latency_confirm_ms < 500 for r in om.trip_records())
    await om.close()
