"""Heartbeat to the PLC watchdog register (gateway.safety.heartbeat) against the HIL tank PLC (pymodbus TCP).

The tank PLC keeps holding register 100 (40101) for the heartbeat and reports ``heartbeat_age_s``,
the time since the register last changed: what a PLC watchdog would trip on.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest

from drivers.modbus import HeartbeatPoint, ModbusDevice, ModbusPoint, TcpLink
from gateway.config import ConfigError, load_config
from gateway.runtime.gateway import Gateway
from gateway.safety.heartbeat import Heartbeat
from hil.tank_plc import TankPlc
from conftest import tank_overfill_config

pytestmark = pytest.mark.timeout(60)
ROOT = Path(__file__).resolve().parents[2]


def cfg_text(port: int, heartbeat: str | None = "heartbeat: {address: 40101, interval_ms: 100}") -> str:
    """``heartbeat`` is line 9 (left out when None); the device starts at line 4."""
    return tank_overfill_config(port, gateway_id="hb-test", store="{max_bytes: 1099511627776}", store_at_end=True,
                                heartbeat=heartbeat)


@pytest.fixture
async def plc():
    p = TankPlc()
    await p.start()
    yield p
    await p.stop()


@pytest.mark.e2e
async def test_count_heartbeat_advances_in_the_plc_and_stops_with_the_gateway(tmp_path, plc):
    (tmp_path / "gw.yaml").write_text(cfg_text(plc.port))
    gw = Gateway(load_config(tmp_path / "gw.yaml"))
    stop = asyncio.Event()
    task = asyncio.create_task(gw.run(stop))
    try:
        deadline = time.monotonic() + 5
        while plc.heartbeat < 5 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert plc.heartbeat >= 5, "the counter did not advance in the PLC"
        assert plc.heartbeat_age_s is not None and plc.heartbeat_age_s < 0.5
        st = gw.heartbeats[0].status()
        assert st["state"] == "ok" and st["mode"] == "count" and st["address"] == "40101"
        assert st["value"] in (plc.heartbeat, plc.heartbeat - 1, plc.heartbeat + 1)
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
    last = plc.heartbeat
    await asyncio.sleep(0.6)
    assert plc.heartbeat == last and plc.heartbeat_age_s > 0.5  # stopped: a PLC watchdog would now trip


@pytest.mark.e2e
async def test_heartbeat_stops_when_the_safety_path_stalls(tmp_path, plc):
    (tmp_path / "gw.yaml").write_text(cfg_text(plc.port))
    gw = Gateway(load_config(tmp_path / "gw.yaml"))
    stop = asyncio.Event()
    task = asyncio.create_task(gw.run(stop))
    try:
        deadline = time.monotonic() + 5
        while plc.heartbeat < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert plc.heartbeat >= 3
        # Simulate a stuck safety path: the safety step no longer runs.
        gw.tick.step = lambda events, now: None
        gw.tick.last_mono = time.monotonic() - 10
        await asyncio.sleep(0.5)
        last = plc.heartbeat
        await asyncio.sleep(0.5)
        assert plc.heartbeat == last and gw.heartbeats[0].status()["state"] == "held"
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


def _plc(link, address: int, table: str = "holding_register", mode: str = "count", ref: str | None = None,
         name: str = "tank_plc") -> ModbusDevice:
    """A ModbusDevice on ``link`` whose heartbeat point is ``table`` ``address`` (what gateway.runtime.build makes
    of a ``heartbeat:`` section)."""
    point = ModbusPoint(tag=f"{name}.x", unit_id=1, table="holding_register", address=0, dtype="uint16")
    return ModbusDevice(name, link, 1, [point], "modbus_tcp", heartbeat=HeartbeatPoint(table, address, mode, ref))


@pytest.mark.e2e
async def test_toggle_mode_and_a_failed_write_is_a_missed_beat(plc):
    link = TcpLink("127.0.0.1", plc.port, timeout_s=1.0)
    try:
        hb = Heartbeat("tank_plc", _plc(link, 100, mode="toggle", ref="40101"), 0.1, "toggle")
        assert hb.reference == "40101"
        seen = []
        for _ in range(4):
            assert await hb.beat()
            seen.append(plc.heartbeat)
        assert seen == [1, 0, 1, 0]
        bad = Heartbeat("tank_plc", _plc(link, 101, ref="40102"), 0.1, "count")
        assert not await bad.beat()  # the PLC has no register 101: exception 02
        st = bad.status()
        assert st["state"] == "failing" and st["errors"] == 1 and "02" in st["last_error"]
        held = Heartbeat("tank_plc", _plc(link, 100), 0.1, alive=lambda: False)
        before = plc.heartbeat
        assert not await held.beat() and plc.heartbeat == before and held.status()["state"] == "held"
    finally:
        await link.close()


async def test_a_beat_is_the_devices_fc5_fc6_write_and_its_echo_is_checked():
    """ModbusDevice.beat: FC6 on a holding register, FC5 (FF00 / 0000) on a coil; an echo that differs
    from the request is a failed beat."""
    class Link:
        name = "h:502"

        def __init__(self, echo=None):
            self.calls, self.echo = [], echo

        async def write_register(self, unit, address, value):
            self.calls.append(("fc6", unit, address, value))
            return self.echo or (address, value)

        async def write_coil(self, unit, address, on):
            self.calls.append(("fc5", unit, address, on))
            return self.echo or (address, 0xFF00 if on else 0x0000)

    reg = Link()
    hb = Heartbeat("d", _plc(reg, 100, name="d"), 1.0, "count")
    assert await hb.beat() and await hb.beat()
    assert reg.calls == [("fc6", 1, 100, 1), ("fc6", 1, 100, 2)] and hb.reference == "holding_register 100"
    coil = Link()
    hb = Heartbeat("d", _plc(coil, 8, table="coil", mode="toggle", name="d"), 1.0, "toggle")
    assert await hb.beat() and await hb.beat()
    assert coil.calls == [("fc5", 1, 8, True), ("fc5", 1, 8, False)]
    wrong = Link(echo=(100, 7))
    hb = Heartbeat("d", _plc(wrong, 100, name="d"), 1.0, "count")
    assert not await hb.beat()
    assert hb.status()["state"] == "failing" and "differs from (100, 1)" in hb.status()["last_error"]


async def test_a_protocol_without_heartbeats_is_refused():
    """The base Device has no heartbeat point: beat() raises NotImplementedError (a missed beat)."""
    from drivers.base import Device

    class NoBeat(Device):
        name, protocol = "ua", "opcua"
        tags = []

        async def start(self): ...
        async def read(self): return []
        async def write(self, tag, value): ...
        async def close(self): ...

    hb = Heartbeat("ua", NoBeat(), 1.0, "toggle")
    assert not await hb.beat() and "no heartbeat" in hb.status()["last_error"]
    with pytest.raises(NotImplementedError, match="no heartbeat"):
        await NoBeat().beat(1)


def test_count_wraps_and_bad_combinations_are_refused():
    hb = Heartbeat("d", None, 1.0, "count")
    hb.value = 65535
    assert hb.next_value() == 0
    with pytest.raises(ValueError, match="needs a holding register"):
        _plc(None, 0, table="coil", mode="count", name="d")
    with pytest.raises(ValueError, match="holding register or a coil"):
        _plc(None, 0, table="input_register", mode="toggle", name="d")
    with pytest.raises(ValueError, match="count or toggle"):
        Heartbeat("d", None, 1.0, "sawtooth")
    with pytest.raises(ValueError, match="interval must be > 0"):
        Heartbeat("d", None, 0, "count")


@pytest.mark.e2e
def test_check_warns_when_an_interlock_output_has_no_heartbeat(tmp_path):
    from gateway.chain.signing import keygen

    keygen(tmp_path / "keys")  # `check` also checks the key file
    (tmp_path / "gw.yaml").write_text(cfg_text(502, heartbeat=None))
    proc = subprocess.run([sys.executable, "-m", "gateway.cli", "check", str(tmp_path / "gw.yaml")], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    assert "gw.yaml:4:5: warning: devices[0].name: device 'tank_plc' carries interlock output XV101 but has no " \
           "heartbeat" in proc.stderr, proc.stderr
    (tmp_path / "ok.yaml").write_text(cfg_text(502))
    assert not [w for w in load_config(tmp_path / "ok.yaml").warnings if "heartbeat" in w.message]


@pytest.mark.parametrize("hb, message", [
    ("heartbeat: {address: {table: coil, address: 5}, mode: count}", "mode count needs a holding register"),
    ("heartbeat: {address: 30101}", "must be a holding register or a coil"),
    ("heartbeat: {address: 40101, interval_ms: 10}", "greater than or equal to 50"),
    ("heartbeat: {address: 40101, mode: blink}", "count"),
])
def test_heartbeat_config_errors_point_at_the_line(tmp_path, hb, message):
    (tmp_path / "gw.yaml").write_text(cfg_text(502, heartbeat=hb))
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path / "gw.yaml")
    text = str(e.value)
    assert text.startswith(f"{tmp_path / 'gw.yaml'}:9:") and "heartbeat" in text and message in text, text
