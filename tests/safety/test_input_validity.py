"""Input validity on the safety path: NAMUR NE 43 on 4-20 mA loops, valid_range, stale inputs (S2, S6).

A reading that is not a measurement (a broken loop, a value outside what the instrument can measure, a
value a hung poll loop left behind) must never vote "within limits". The peer is a real pymodbus TCP
server (an analogue input card whose registers the test sets) or the HIL tank PLC; a Gateway is built
from YAML and runs on the same loop.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from gateway.config import load_config
from gateway.runtime.build import alarm_configs, fresh_windows
from gateway.runtime.gateway import Gateway
from gateway.model import Quality
from gateway.ops.probe import probe
from hil.tank_plc import TankPlc
from conftest import interlock_status as interlock, tank_overfill_config, wait_for

pytestmark = pytest.mark.timeout(60)


class AnalogCard:
    """A Modbus TCP analogue input card: input register 0 = loop current in uA (4000..20000 = 4..20 mA),
    input register 1 = a %LEL value x10; coil 0 = a valve (1 = open)."""

    def __init__(self) -> None:
        self.ir = [8000, 100]  # 8 mA = 25 %LEL; 10.0 %LEL
        self.server: ModbusTcpServer | None = None
        self.port = 0

    async def _action(self, function_code, start_address, address, count, registers, set_values):
        if function_code == 4:
            registers[:len(self.ir)] = self.ir
        return None

    async def __aenter__(self) -> "AnalogCard":
        dev = SimDevice(id=1, simdata=([SimData(0, values=[True] * 4, datatype=DataType.BITS)],
                                       [SimData(0, values=[False] * 16, datatype=DataType.BITS)],
                                       [SimData(0, values=[0] * 4, datatype=DataType.REGISTERS)],
                                       [SimData(0, values=[0] * 2, datatype=DataType.REGISTERS)]),
                        action=self._action)
        self.server = ModbusTcpServer(dev, address=("127.0.0.1", 0))
        await self.server.serve_forever(background=True)
        self.port = self.server.transport.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        await self.server.shutdown()


def card_config(port: int, *, valid_range: str = "") -> str:
    vr = f", valid_range: {valid_range}" if valid_range else ""
    return f"""gateway: {{id: s2-test, state_dir: state}}
keys: {{private_key: keys/private.pem}}
devices:
  - name: ai_card
    protocol: modbus_tcp
    host: 127.0.0.1
    port: {port}
    poll_interval_ms: 100
    timeout_ms: 500
    tags:
      - {{name: GD9.loop, address: 30001, type: uint16, raw_range: [4000, 20000], eng_range: [0, 100],
         unit: "%LEL", alarms: {{gas: combustible}}}}
      - {{name: GD8.gas, address: 30002, type: uint16, scale: 0.1, unit: "%LEL"{vr},
         alarms: {{gas: combustible}}}}
      - {{name: XV1, address: {{table: coil, address: 0}}, type: bool, writable: true}}
      - {{name: XV2, address: {{table: coil, address: 1}}, type: bool, writable: true}}
interlocks:
  - name: loop_esd
    inputs: [{{tag: GD9.loop, condition: HH}}]
    vote: 1oo1
    actions: [{{output: XV1, value: 0}}]
  - name: range_esd
    inputs: [{{tag: GD8.gas, condition: HH}}]
    vote: 1oo1
    actions: [{{output: XV2, value: 0}}]
store: {{max_bytes: 1099511627776}}
"""


async def run_gateway(tmp_path: Path, text: str):
    (tmp_path / "gw.yaml").write_text(text)
    gw = Gateway(load_config(tmp_path / "gw.yaml"))
    stop = asyncio.Event()
    task = asyncio.create_task(gw.run(stop))
    return gw, stop, task


@pytest.mark.e2e
async def test_broken_4_20ma_loop_is_bad_and_trips_a_1oo1_interlock_on_fault(tmp_path):
    """S2: 0 mA on a 4-20 mA input was -25 %LEL, GOOD, "within limits". NAMUR NE 43: <= 3.6 mA is a
    failure signal: the reading is BAD, the QUALITY alarm rises, and the 1oo1 interlock trips, cause fault."""
    async with AnalogCard() as card:
        gw, stop, task = await run_gateway(tmp_path, card_config(card.port))
        try:
            await wait_for(lambda: "GD9.loop" in gw.values and gw.values["GD9.loop"].value == 25.0, 10, "25 %LEL")
            await asyncio.sleep(0.3)
            assert interlock(gw, "loop_esd")["state"] == "normal"
            card.ir[0] = 0                                    # the loop breaks: 0 mA
            await wait_for(lambda: interlock(gw, "loop_esd")["state"] == "tripped", 5, "loop_esd trip")
            r = gw.values["GD9.loop"]
            assert r.quality is Quality.BAD and r.value is None and "NAMUR NE 43" in r.reason
            assert interlock(gw, "loop_esd")["cause"] == "fault"
            q = {a.id: a for a in gw.alarms.active()}["GD9.loop.QUALITY"]
            assert "out of range: NAMUR NE 43" in q.reason
            await wait_for(lambda: gw.outputs.state("XV1").confirmed, 5, "XV1 closed and confirmed")
            assert gw.outputs.state("XV1").commanded == 0
        finally:
            stop.set()
            await asyncio.wait_for(task, 20)


@pytest.mark.e2e
async def test_valid_range_makes_an_implausible_value_bad_and_trips_on_fault(tmp_path):
    """S2: valid_range [lo, hi] (engineering units): a reading outside it is BAD "out of range", applied
    in the safety tick (gateway.safety.tick) before the alarms; the probe judges it the same way."""
    async with AnalogCard() as card:
        text = card_config(card.port, valid_range="[-5, 105]")
        gw, stop, task = await run_gateway(tmp_path, text)
        try:
            await wait_for(lambda: "GD8.gas" in gw.values and gw.values["GD8.gas"].value == 10.0, 10, "10 %LEL")
            card.ir[1] = 2000                                 # 200 %LEL: not a measurement
            await wait_for(lambda: interlock(gw, "range_esd")["state"] == "tripped", 5, "range_esd trip")
            r = gw.values["GD8.gas"]
            assert r.quality is Quality.BAD and r.reason == "out of range: 200 outside valid_range [-5, 105]"
            assert interlock(gw, "range_esd")["cause"] == "fault"
        finally:
            stop.set()
            await asyncio.wait_for(task, 20)
        rows = {r.tag: r for r in await probe(load_config(tmp_path / "gw.yaml"))}
        assert not rows["GD8.gas"].good and "out of range" in rows["GD8.gas"].quality


def test_valid_range_config_errors(tmp_path):
    from gateway.config import ConfigError

    (tmp_path / "gw.yaml").write_text(card_config(5020, valid_range="[105, -5]"))
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path / "gw.yaml")
    assert "valid_range [105.0, -5.0] must be two finite numbers [lo, hi] with lo < hi" in str(e.value)
    assert str(e.value).startswith(f"{tmp_path / 'gw.yaml'}:")


# --------------------------------------------------------------------------- S6: stale inputs

STALE_CFG = """gateway: {id: s6, state_dir: state}
keys: {private_key: k}
devices:
  - name: plc
    protocol: modbus_tcp
    host: 10.0.0.1
    poll_interval_ms: 1000
    timeout_ms: 500
    tags:
      - {name: L1, address: 30001, alarms: {HH: 10}}
      - {name: L2, address: 30002, alarms: {HH: 10, stale_after_s: 7.5}}
      - {name: L3, address: 30003}
      - {name: V1, address: 40001, writable: true}
  - name: io
    protocol: modbus_tcp
    host: 10.0.0.1
    poll_interval_ms: 200
    timeout_ms: 1000
    tags: [{name: L4, address: 30001}]
  - name: slow_gas
    protocol: modbus_rtu
    port: /dev/ttyS1
    unit_id: 1
    poll_interval_ms: 20000
    timeout_ms: 1000
    tags: [{name: G1, address: 40001, unit: "%LEL", alarms: {gas: combustible}}]
  - name: fast_gas
    protocol: modbus_rtu
    port: /dev/ttyS2
    unit_id: 1
    poll_interval_ms: 1000
    timeout_ms: 300
    tags: [{name: G2, address: 40001, unit: "%LEL", alarms: {gas: combustible}}]
store: {max_bytes: 1099511627776}
"""


def test_stale_after_s_is_derived_from_the_device_when_not_set(tmp_path):
    """S6: 3 poll periods + 3 timeouts of every device on the link (plc and io share 10.0.0.1:502);
    an explicit stale_after_s wins; gas tags are capped at 30 s; output tags get no alarm config."""
    (tmp_path / "gw.yaml").write_text(STALE_CFG)
    cfg = load_config(tmp_path / "gw.yaml")
    link_wait = 3 * (0.5 + 1.0)
    assert fresh_windows(cfg)["plc"] == pytest.approx(3 * 1.0 + link_wait)
    stale = {c.tag: c.stale_after_s for c in alarm_configs(cfg)}
    assert stale == {"L1": pytest.approx(7.5), "L2": 7.5, "L3": pytest.approx(7.5),
                     "L4": pytest.approx(3 * 0.2 + link_wait), "G1": 30.0, "G2": pytest.approx(3 * 1.0 + 3 * 0.3)}
    assert all(v is not None for v in stale.values())


def test_check_warns_when_a_gas_detector_cannot_meet_the_30_s_budget(tmp_path):
    text = STALE_CFG.replace("poll_interval_ms: 20000", "poll_interval_ms: 40000").replace(
        "{gas: combustible}}]\n  - name: fast_gas", "{gas: combustible, stale_after_s: 45}}]\n  - name: fast_gas")
    (tmp_path / "gw.yaml").write_text(text)
    ws = [w.message for w in load_config(tmp_path / "gw.yaml").warnings]
    assert any("polled every 40 s" in w and "30 s detection budget" in w for w in ws), ws
    assert any("stale_after_s 45 s is longer than the 30 s detection budget" in w for w in ws), ws


def plc_config(port: int) -> str:
    return tank_overfill_config(port, gateway_id="s6-plc", store="{max_bytes: 1099511627776}", store_at_end=True,
                                timeout_ms=200, heartbeat="heartbeat: {address: 40101, interval_ms: 100}")


@pytest.mark.e2e
async def test_hung_poll_loop_makes_the_input_stale_trips_and_withholds_the_plc_heartbeat(tmp_path):
    """S6: a poll loop that stops delivering (a driver read that never returns) used to leave T101.level
    "known" forever. Now the tag goes stale within its derived window (3 x 0.1 s + 3 x 0.2 s), the
    interlock trips on fault, and the PLC heartbeat is withheld although the safety ticker runs."""
    plc = TankPlc()
    await plc.start()
    try:
        gw, stop, task = await run_gateway(tmp_path, plc_config(plc.port))
        try:
            await wait_for(lambda: plc.heartbeat >= 3 and "T101.level" in gw.values, 10, "heartbeats and a reading")
            assert interlock(gw, "T101_overfill")["state"] == "normal"
            dev = gw.devices[0]
            hang = asyncio.Event()

            async def hung_read():                             # a driver bug: the read never returns
                await hang.wait()
                return []
            dev.read = hung_read
            t0 = time.monotonic()
            await wait_for(lambda: interlock(gw, "T101_overfill")["state"] == "tripped", 5, "trip on stale input")
            assert interlock(gw, "T101_overfill")["cause"] == "fault"
            assert time.monotonic() - t0 < 0.9 + 1.0           # the 0.9 s window (+ alarm tick, slack)
            q = {a.id: a for a in gw.alarms.active()}["T101.level.QUALITY"]
            assert q.reason == "stale"
            await wait_for(lambda: gw.heartbeats[0].status()["state"] == "held", 5, "heartbeat withheld")
            assert "poll loop of tank_plc" in gw.heartbeats[0].status()["held_reason"]
            held_at = plc.heartbeat
            await asyncio.sleep(0.5)
            assert plc.heartbeat == held_at                    # the PLC's watchdog now runs down
            assert gw.tick.age_s() is not None and gw.tick.age_s() < 0.5  # ticker runs
            hang.set()
        finally:
            stop.set()
            await asyncio.wait_for(task, 20)
    finally:
        await plc.stop()
