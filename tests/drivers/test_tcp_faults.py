"""Cases C10 and C11 over a real TCP path: the tank PLC (pymodbus server) behind hil.tcp_proxy.

The proxy breaks the path the ways field networks do (RST, idle close, black
hole, refusal); the gateway's ModbusDevice / TcpLink must notice and heal.
Times are compressed (poll intervals and timeouts in tenths of a second,
backoff capped low); the ratios between them are the cases' ratios.
"""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from drivers.modbus import Backoff, ModbusDevice, ModbusLinks, ModbusPoint
from drivers.opcua import OpcUaDevice, OpcUaPoint
from gateway.model import Quality
from hil.opcua_plant import OpcUaPlant
from hil.tank_plc import TankPlc
from hil.tcp_proxy import TcpFaultProxy

# e2e: TCP servers behind a fault-injecting proxy, reconnects for seconds
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]


def level_point(tag: str = "T101.level", address: int = 0) -> ModbusPoint:
    return ModbusPoint(tag, 1, "input_register", address, dtype="float32", unit="m")


@pytest.fixture
async def rig():
    plc = TankPlc(seed=1)
    await plc.start()
    proxy = TcpFaultProxy(("127.0.0.1", plc.port))
    await proxy.start()
    links = ModbusLinks()
    yield plc, proxy, links
    await links.close_all()
    await proxy.stop()
    await plc.stop()


async def test_proxy_modes_validate_and_latency_delays(rig):
    plc, proxy, links = rig
    with pytest.raises(ValueError, match="unknown proxy mode"):
        await proxy.set_mode("flaky")
    with pytest.raises(ValueError, match="ms > 0"):
        await proxy.set_mode("latency")
    link = links.tcp("127.0.0.1", proxy.port, timeout_s=0.5)
    d = ModbusDevice("plc", link, 1, [level_point()], "modbus_tcp")
    (r,) = await d.read()
    assert r.quality is Quality.GOOD
    await proxy.set_mode("latency", ms=150)
    t0 = time.monotonic()
    (r,) = await d.read()
    took = time.monotonic() - t0
    assert r.quality is Quality.GOOD and 0.3 <= took < 0.5  # 150 ms each way
    await proxy.set_mode("latency", ms=600)  # longer than the 0.5 s timeout: a timeout, never a value
    (r,) = await d.read()
    assert r.quality is Quality.BAD and r.reason == "timeout" and r.value is None


async def test_C10a_reset_after_three_answers_value_in_same_or_next_cycle(rig):
    """(a) The device answers 3 requests, then resets the connection, then accepts new connections:
    the next poll fails, the gateway reconnects, the value arrives in the same or the next cycle."""
    plc, proxy, links = rig
    poll_s = 0.3
    link = links.tcp("127.0.0.1", proxy.port, timeout_s=0.2)
    link.backoff = Backoff(initial_s=poll_s, max_s=10 * poll_s)  # the default 1 s backoff, at poll_s = 1 s scale
    d = ModbusDevice("plc", link, 1, [level_point()], "modbus_tcp")
    for _ in range(3):
        (r,) = await d.read()
        assert r.quality is Quality.GOOD
        await asyncio.sleep(poll_s)
    assert proxy.downstream_chunks == 3 and proxy.accepts == 1
    await proxy.set_mode("reset")  # RST on the next request, then accept new connections again
    qualities = []
    for _ in range(2):
        (r,) = await d.read()
        qualities.append(r.quality)
        if r.quality is Quality.GOOD:
            break
        assert r.value is None and "comm fault" in r.reason
        await asyncio.sleep(poll_s)
    assert proxy.resets == 1
    assert qualities[-1] is Quality.GOOD, "no value in the same or the next cycle after the reset"
    assert proxy.accepts == 2


async def test_C10b_idle_close_shorter_than_poll_interval_no_bad_sample(rig):
    """(b) The device closes connections idle for 10 s, the poll interval is 15 s (here 0.2 / 0.3 s):
    the gateway reconnects transparently and records no bad sample."""
    plc, proxy, links = rig
    await proxy.set_mode("idle_close", s=0.2)
    link = links.tcp("127.0.0.1", proxy.port, timeout_s=0.3)
    d = ModbusDevice("plc", link, 1, [level_point()], "modbus_tcp")
    readings = []
    for _ in range(5):
        (r,) = await d.read()
        readings.append(r)
        await asyncio.sleep(0.3)
    assert [r.quality for r in readings] == [Quality.GOOD] * 5, [r.reason for r in readings]
    assert proxy.idle_closes >= 4 and proxy.accepts == 5  # closed while idle, reopened on every poll


async def test_C10c_black_hole_times_out_reconnects_and_resumes(rig):
    """(c) The path goes silent with both sockets open, then recovers: each request times out at its
    configured timeout; after 3 consecutive timeouts the socket is closed and reopened; readings in
    the gap are BAD with no value (never the last value re-stamped); data resumes soon after recovery
    (compressed: 0.2 s timeout, 0.25 s poll, 1.5 s gap; 'within about 10 s' -> within 1 s)."""
    plc, proxy, links = rig
    timeout_s, poll_s = 0.2, 0.25
    link = links.tcp("127.0.0.1", proxy.port, timeout_s=timeout_s)
    link.backoff = Backoff(initial_s=0.1, max_s=0.4)
    d = ModbusDevice("plc", link, 1, [level_point()], "modbus_tcp", retries=0, offline_after=1000)
    (r,) = await d.read()
    assert r.quality is Quality.GOOD
    last_good = r
    await proxy.set_mode("black_hole")
    gap_start = time.monotonic()
    gap: list = []
    durations = []
    accepts = []  # proxy accepts after each poll in the gap
    while time.monotonic() - gap_start < 1.5:
        t0 = time.monotonic()
        (r,) = await d.read()
        durations.append(time.monotonic() - t0)
        gap.append(r)
        accepts.append(proxy.accepts)
        await asyncio.sleep(max(0.0, poll_s - durations[-1]))
    await proxy.set_mode("pass")
    recovered = time.monotonic()
    assert all(r.quality is Quality.BAD and r.value is None for r in gap), [(r.value, r.reason) for r in gap]
    assert all(r.ts > last_good.ts for r in gap)
    timeouts = [dur for r, dur in zip(gap, durations) if r.reason == "timeout"]
    assert len(timeouts) >= 4
    assert all(timeout_s * 0.9 <= dur <= timeout_s + 0.15 for dur in timeouts), durations
    # closed after every 3rd consecutive timeout and reopened at the next poll (into the same black hole);
    # pymodbus on its own would only give up after retries + 3 = 4 silent requests
    assert accepts == [1 + i // 3 for i in range(len(gap))], accepts
    while True:
        (r,) = await d.read()
        if r.quality is Quality.GOOD:
            break
        assert r.value is None
        assert time.monotonic() - recovered < 1.0, "data did not resume within 1 s of recovery"
        await asyncio.sleep(poll_s)
    assert r.value == pytest.approx(plc.level("T101"), abs=0.01)


async def test_C11_three_poll_groups_share_one_socket(rig):
    """One device, three poll groups (compressed 1 s / 5 s / 60 s -> 20 / 100 / 600 ms), three
    ModbusDevice objects on one ModbusLinks.tcp: exactly one TCP connection, every request answered."""
    plc, proxy, links = rig
    link = links.tcp("127.0.0.1", proxy.port, timeout_s=0.5)
    groups = [
        (ModbusDevice("fast", links.tcp("127.0.0.1", proxy.port), 1, [level_point()], "modbus_tcp"), 0.02),
        (ModbusDevice("mid", links.tcp("127.0.0.1", proxy.port), 1,
                      [level_point("T102.level", 6), level_point("T101.temperature", 2)], "modbus_tcp"), 0.1),
        (ModbusDevice("slow", links.tcp("127.0.0.1", proxy.port), 1,
                      [ModbusPoint("XV101", 1, "coil", 0, dtype="bool")], "modbus_tcp"), 0.6),
    ]
    assert all(dev.link is link for dev, _ in groups)
    bad: list = []
    counts = [0, 0, 0]

    async def poll(i: int, dev: ModbusDevice, every: float) -> None:
        end = time.monotonic() + 1.8
        while time.monotonic() < end:
            for r in await dev.read():
                if r.quality is not Quality.GOOD:
                    bad.append(r)
            counts[i] += 1
            await asyncio.sleep(every)

    await asyncio.gather(*(poll(i, dev, every) for i, (dev, every) in enumerate(groups)))
    assert bad == []
    assert counts[0] >= 30 and counts[2] >= 3
    assert proxy.accepts == 1 and link.connects == 1


async def test_C11_refusing_device_backs_off_exponentially_with_jitter_and_resets(rig, caplog):
    """The device refuses connections for a while: attempts back off 1, 2, 4 ... capped (compressed:
    50 ms doubling to a 400 ms cap), with jitter; a successful connect resets the backoff."""
    plc, proxy, links = rig
    caplog.set_level(logging.WARNING, logger="drivers.modbus")
    link = links.tcp("127.0.0.1", proxy.port, timeout_s=0.3)
    link.backoff = Backoff(initial_s=0.05, max_s=0.4, jitter=0.1)
    d = ModbusDevice("plc", link, 1, [level_point()], "modbus_tcp", retries=0)
    (r,) = await d.read()
    assert r.quality is Quality.GOOD
    await proxy.set_mode("refuse")
    start = time.monotonic()
    attempts: list[float] = []
    polls = 0
    delays: list[float] = []  # the backoff delay chosen after each failed attempt (jitter included)
    seen = link.backoff.failures
    while time.monotonic() - start < 2.6:
        t0 = time.monotonic()
        (r,) = await d.read()  # the poll loop keeps running at 10 ms; the link decides when to connect
        t1 = time.monotonic()
        polls += 1
        assert r.quality is Quality.BAD and r.value is None
        if link.backoff.failures != seen:
            seen = link.backoff.failures
            attempts.append(t1)
            delays.append(link.backoff.next_attempt - (t0 + t1) / 2)
        await asyncio.sleep(0.01)
    logged = [rec for rec in caplog.records if "connect failed" in rec.getMessage()]
    # the proxy reset the open connection; every failure after that is one refused connect attempt
    assert len(logged) == len(attempts)
    assert polls > 150 and 7 <= len(attempts) <= 11, (polls, len(attempts))  # not one attempt per poll
    gaps = [b - a for a, b in zip(attempts, attempts[1:])]
    bases = [min(0.4, 0.05 * 2 ** i) for i in range(len(gaps))]
    for g, base in zip(gaps, bases):
        assert base * 0.88 <= g <= base * 1.12 + 0.03, (gaps, bases)
    # jitter: each chosen delay is within +-10 % of its base, and they are not all on the base
    ratios = [dl / min(0.4, 0.05 * 2 ** i) - 1 for i, dl in enumerate(delays)]
    assert all(abs(x) <= 0.1 + 0.03 for x in ratios), ratios
    capped = [x for i, x in enumerate(ratios) if 0.05 * 2 ** i >= 0.4]
    assert len(capped) >= 3 and max(abs(x) for x in capped) > 0.01, capped
    assert proxy.accepts == 1  # nothing got through while refusing
    await proxy.set_mode("pass")
    t0 = time.monotonic()
    while True:
        (r,) = await d.read()
        if r.quality is Quality.GOOD:
            break
        await asyncio.sleep(0.01)
    assert time.monotonic() - t0 < 0.5
    assert link.backoff.failures == 0 and proxy.accepts == 2  # reset after the successful connect
    await proxy.set_mode("refuse")
    await asyncio.sleep(0.05)  # let the client see the RST of its open connection
    (r,) = await d.read()  # the first refused attempt
    assert r.quality is Quality.BAD and link.backoff.failures == 1
    t1 = time.monotonic()
    while link.backoff.failures < 2:
        await d.read()
        await asyncio.sleep(0.005)
    assert time.monotonic() - t1 < 0.05 * 1.1 + 0.03  # back to the initial delay, not the cap


async def test_opcua_through_proxy_reset_and_black_hole_recover():
    """The same proxy in front of the OPC UA plant: a reset connection and a black-holed path both
    end in BAD readings and, once the path heals, a new session with values (C12 over a broken path)."""
    plant = OpcUaPlant(port=0)
    await plant.start()
    proxy = TcpFaultProxy(("127.0.0.1", plant.port))
    await proxy.start()
    dev = OpcUaDevice("plant", f"opc.tcp://127.0.0.1:{proxy.port}/hazard/", [
        OpcUaPoint("H2S", "nsu=urn:hazard-gateway:hil:plant;s=GasDetector.AT301.H2S", unit="mg/m3",
                   subscribe=False)],
        timeout_s=0.5, watchdog_s=0.3, backoff_initial_s=0.1, backoff_max_s=0.5)
    try:
        await dev.start()
        (r,) = await dev.read()
        assert r.quality is Quality.GOOD
        sessions = dev.sessions
        for mode in ("reset", "black_hole"):
            await proxy.set_mode(mode, sticky=True)
            deadline = time.monotonic() + 5
            while dev.connected and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            (r,) = await dev.read()
            assert r.quality is Quality.BAD and r.value is None
            await proxy.set_mode("pass")
            deadline = time.monotonic() + 8
            while not (dev.connected and dev.sessions > sessions) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            (r,) = await dev.read()
            assert r.quality is Quality.GOOD, f"{mode}: {r.reason}"
            sessions = dev.sessions
    finally:
        await dev.close()
        await proxy.stop()
        await plant.stop()
