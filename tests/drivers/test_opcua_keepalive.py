"""Session keep-alive from the server's RevisedSessionTimeout (OPC UA Part 4 5.6.2), against a real
asyncua server on 127.0.0.1 (hil/opcua_plant.py) that caps every session at 3 s.

A server closes a session that sends no request for its revised session timeout. The driver's
watchdog read of ServerStatus/CurrentTime is the keep-alive; it must run every
min(watchdog_s, revised / 3), not every watchdog_s. The plant here is quiet (a gas detector reading
a steady value), so nothing else (no data-change Publish traffic, no direct reads) keeps the session
alive: with watchdog_s 20 and a 3 s cap, a driver that keeps 20 s loses its session after 3 s and
new values never arrive.
"""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from drivers.opcua import MIN_KEEPALIVE_S, OpcUaDevice, OpcUaPoint, keepalive_interval
from gateway.model import Quality
from hil.opcua_plant import H2S, NAMESPACE_URI, OpcUaPlant

pytestmark = pytest.mark.timeout(60)

CAP_MS = 3000  # the server's session timeout cap
POINT = OpcUaPoint("AT301_H2S", f"nsu={NAMESPACE_URI};s={H2S}", unit="mg/m3", subscribe=True)


def server_sessions(plant: OpcUaPlant) -> set[str]:
    """Server side: the authentication tokens of the open client sessions (asyncua internals)."""
    return {tok.to_string() for tok in plant.server.iserver._external_sessions}  # noqa: SLF001


async def fresh_good(dev: OpcUaDevice, value: float, within_s: float) -> float:
    """Wait until a read gives ``value`` GOOD; return how long it took. Fail after within_s."""
    t0 = time.monotonic()
    while True:
        [r] = await dev.read()
        if r.quality is Quality.GOOD and r.value == value:
            return time.monotonic() - t0
        if time.monotonic() - t0 > within_s:
            raise AssertionError(f"{value} not read within {within_s} s: {r.quality} {r.value} {r.reason}; "
                                 f"last_error {dev.last_error}")
        await asyncio.sleep(0.05)


def test_keepalive_interval_rule():
    """min(watchdog_s, revised / 3); an unknown / zero / non-finite revised timeout keeps watchdog_s; a floor."""
    assert keepalive_interval(20.0, 3.0) == 1.0
    assert keepalive_interval(5.0, 10.0) == pytest.approx(10.0 / 3)
    assert keepalive_interval(5.0, 3600.0) == 5.0
    assert keepalive_interval(5.0, None) == 5.0
    assert keepalive_interval(5.0, 0.0) == 5.0
    assert keepalive_interval(5.0, float("nan")) == 5.0
    assert keepalive_interval(5.0, 0.001) == MIN_KEEPALIVE_S


@pytest.mark.e2e
async def test_session_survives_a_server_capped_session_timeout(caplog):
    """watchdog_s 20 (accepted by `check`), server caps the session at 3 s: over 10 s (more than three
    session timeouts) of a quiet plant the one session stays open on the server, every poll is GOOD
    and each new value arrives. The keep-alive used is <= revised / 3 and the lowering is logged once."""
    caplog.set_level(logging.WARNING, logger="drivers.opcua")
    async with OpcUaPlant(max_session_timeout_ms=CAP_MS) as plant:
        await plant.set_h2s(0.0)
        dev = OpcUaDevice("capped_ua", plant.endpoint, [POINT], timeout_s=1.0, publishing_interval_ms=250,
                          watchdog_s=20.0)
        try:
            await dev.start()
            assert dev.connected, dev.last_error
            assert dev.revised_session_timeout_s == CAP_MS / 1000
            assert dev.keepalive_interval_s <= dev.revised_session_timeout_s / 3
            (session,) = server_sessions(plant)
            await fresh_good(dev, 0.0, 3.0)

            t_start = time.monotonic()
            value = 0.0
            while time.monotonic() - t_start < 10.5:  # > 3 x 3 s
                # the plant stays quiet for longer than one session timeout ...
                t_quiet = time.monotonic()
                while time.monotonic() - t_quiet < 3.5:
                    [r] = await dev.read()
                    assert r.quality is Quality.GOOD and r.value == value, (r.reason, dev.last_error)
                    await asyncio.sleep(0.5)
                # ... and still the session is the one from the start, and a change arrives
                assert server_sessions(plant) == {session}
                value += 1.5
                await plant.set_h2s(value)
                await fresh_good(dev, value, 2.0)
            assert dev.sessions == 1 and dev.connected and dev.last_error is None
        finally:
            await dev.close()
    lines = [r.getMessage() for r in caplog.records
             if r.name == "drivers.opcua" and "session timeout" in r.getMessage()]
    assert len(lines) == 1, lines
    assert "capped_ua" in lines[0] and "3 s" in lines[0] and "watchdog_s 20" in lines[0] and "\n" not in lines[0]


@pytest.mark.e2e
async def test_no_lowering_no_log_when_the_server_grants_enough(caplog):
    """A server that grants a long session: keep-alive stays watchdog_s, nothing logged about it."""
    caplog.set_level(logging.WARNING, logger="drivers.opcua")
    async with OpcUaPlant() as plant:  # asyncua's default cap: 600 s
        dev = OpcUaDevice("roomy_ua", plant.endpoint, [POINT], timeout_s=1.0, watchdog_s=2.0)
        try:
            await dev.start()
            assert dev.connected, dev.last_error
            assert dev.revised_session_timeout_s == 30.0  # the driver asks max(30 s, 4 x watchdog_s)
            assert dev.keepalive_interval_s == 2.0
        finally:
            await dev.close()
    assert not [r for r in caplog.records if r.name == "drivers.opcua" and "session timeout" in r.getMessage()]
