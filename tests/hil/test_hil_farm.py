"""HIL rig: serial-line emulator, tank PLC, gas bus, scenarios and the farm, over real stacks on loopback.

Every peer here is real: pymodbus TCP / RTU servers and clients, Linux ptys
bridged by the paced SerialLine, an asyncua server and client.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import serial
from asyncua import Client as UaClient, ua
from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ModbusIOException

from hil.farm import TankFarm
from hil.gas_detectors import GasBus
from hil.opcua_plant import NAMESPACE_URI, XV100_POSITION, XV100_TRIP
from hil.scenario import ScenarioError, load_scenario, parse_scenario
from hil.serial_line import TO_DEVICE, TO_GATEWAY, SerialLine
from hil.tank_plc import TankPlc
from conftest import open_fds

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(60)


def f32(regs: list[int]) -> float:
    """Two registers, word order ABCD -> float."""
    return struct.unpack(">f", struct.pack(">HH", *regs))[0]


async def rtu_client(path: str, baudrate: int = 19200, timeout: float = 0.3) -> AsyncModbusSerialClient:
    client = AsyncModbusSerialClient(path, framer=FramerType.RTU, baudrate=baudrate, bytesize=8, parity="N",
                                     stopbits=1, timeout=timeout, retries=0)
    assert await client.connect()
    return client


# ---------------------------------------------------------------------------- serial line
def test_serial_line_is_raw_and_bidirectional(tmp_path):
    line = SerialLine(baudrate=115200)
    dev, gw = line.start(device_link=str(tmp_path / "dev"), gateway_link=str(tmp_path / "gw"))
    try:
        assert os.path.realpath(tmp_path / "gw") == gw and os.path.realpath(tmp_path / "dev") == dev
        a = serial.Serial(str(tmp_path / "dev"), 115200, timeout=1)
        b = serial.Serial(str(tmp_path / "gw"), 115200, timeout=1)
        every_byte = bytes(range(256))  # CR, XON/XOFF, DEL, ^C, ^D ... must all pass untranslated
        a.write(every_byte)
        assert b.read(256) == every_byte
        b.write(every_byte[::-1])
        assert a.read(256) == every_byte[::-1]
        # the bridge thread counts a chunk just after writing it: the reader may see the bytes first
        deadline = time.monotonic() + 2.0
        while (line.bytes_to_gateway, line.bytes_to_device) != (256, 256) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert line.bytes_to_gateway == 256 and line.bytes_to_device == 256
        a.close()
        b.close()
    finally:
        line.stop()
    assert not (tmp_path / "gw").exists() and not (tmp_path / "dev").exists()


@pytest.mark.parametrize("bits_per_char", [10, 11])
def test_serial_line_paces_at_the_baud_rate(bits_per_char):
    n, baud = 120, 9600
    line = SerialLine(baudrate=baud, bits_per_char=bits_per_char)
    dev, gw = line.start()
    try:
        a, b = serial.Serial(dev, baud, timeout=2), serial.Serial(gw, baud, timeout=2)
        t0 = time.monotonic()
        a.write(b"\x55" * n)
        got = b.read(n)
        elapsed = time.monotonic() - t0
        a.close()
        b.close()
    finally:
        line.stop()
    wire = n * bits_per_char / baud  # 125 ms (8N1) / 137.5 ms (8N2, 8E1)
    assert got == b"\x55" * n
    assert wire <= elapsed < wire + 0.1


def test_serial_line_fault_injection():
    line = SerialLine(baudrate=115200)
    dev, gw = line.start()
    try:
        a, b = serial.Serial(dev, 115200, timeout=0.3), serial.Serial(gw, 115200, timeout=0.3)
        line.corrupt_next(TO_GATEWAY)
        a.write(b"\x01\x02")
        assert b.read(2) == b"\xfe\x02"
        line.drop_next(TO_DEVICE, 1)
        b.write(b"\x10\x11")
        assert a.read(2) == b"\x11"
        line.inject(TO_GATEWAY, b"\xaa\xbb")
        assert b.read(2) == b"\xaa\xbb"
        line.delay_next(TO_GATEWAY, 0.2)
        t0 = time.monotonic()
        a.write(b"\x42")
        b.timeout = 1
        assert b.read(1) == b"\x42" and time.monotonic() - t0 >= 0.2
        a.close()
        b.close()
    finally:
        line.stop()


def test_serial_line_stop_leaks_no_fds(tmp_path):
    before = open_fds()
    for _ in range(3):
        line = SerialLine(19200)
        dev, gw = line.start(gateway_link=str(tmp_path / "tty"))
        with serial.Serial(gw, 19200, timeout=0.1) as s:
            s.write(b"x")
        line.stop()
        line.stop()  # idempotent
    assert open_fds() == before
    assert not (tmp_path / "tty").exists()


# ---------------------------------------------------------------------------- tank PLC
@pytest.mark.e2e
async def test_plc_register_map_float32_abcd_and_coils():
    plc = TankPlc(seed=1)
    await plc.start()
    client = AsyncModbusTcpClient("127.0.0.1", port=plc.port)
    try:
        assert await client.connect()
        rr = await client.read_input_registers(0, count=12, device_id=1)
        assert not rr.isError()
        values = [f32(rr.registers[i:i + 2]) for i in range(0, 12, 2)]
        t101_level, t101_temp, t101_p, t102_level, t102_temp, t102_p = values
        assert t101_level == pytest.approx(8.0, abs=0.05) and t102_level == pytest.approx(6.0, abs=0.05)
        assert 19.0 <= t101_temp <= 21.0 and 19.0 <= t102_temp <= 21.0
        assert t101_p > t102_p > 0  # pressure follows level
        # a single 2-register read of T102 level decodes the same way
        rr = await client.read_input_registers(6, count=2, device_id=1)
        assert f32(rr.registers) == pytest.approx(plc.level("T102"), abs=0.01)
        rc = await client.read_coils(0, count=4, device_id=1)
        assert rc.bits[:4] == [True, True, True, False]  # XV101, XV102, XV100 open, beacon off
        # outside the map: exception 02 ILLEGAL DATA ADDRESS
        for bad in (await client.read_input_registers(12, count=1, device_id=1),
                    await client.read_holding_registers(0, count=1, device_id=1),
                    await client.write_coil(4, True, device_id=1)):
            assert bad.isError() and bad.exception_code == 2
        # heartbeat: holding register 100
        assert plc.heartbeat_age_s is None
        await client.write_register(100, 7, device_id=1)
        assert plc.heartbeat == 7 and plc.heartbeat_age_s < 0.5
        rh = await client.read_holding_registers(100, count=1, device_id=1)
        assert rh.registers == [7]
    finally:
        client.close()
        await plc.stop()


@pytest.mark.e2e
async def test_plc_closing_the_inlet_stops_the_level():
    plc = TankPlc()
    await plc.start()
    plc.set_inflow("T101", 30.0)  # 0.5 m/s
    plc.watch("T101.level", 8.1)
    client = AsyncModbusTcpClient("127.0.0.1", port=plc.port)
    try:
        assert await client.connect()

        async def level() -> float:
            return f32((await client.read_input_registers(0, count=2, device_id=1)).registers)

        l0 = await level()
        await asyncio.sleep(0.4)
        l1 = await level()
        assert l1 > l0 + 0.1  # rising while XV101 is open
        crossing = plc.first_crossing("T101.level", 8.1)
        assert crossing is not None and abs(crossing - time.time()) < 1.0
        t_write = time.time()
        wr = await client.write_coil(0, False, device_id=1)  # XV101 closed (trip)
        assert not wr.isError()
        assert plc.coil("XV101") is False
        ev = [e for e in plc.events if e.get("kind") == "coil_write"]
        assert ev[-1]["coil"] == "XV101" and ev[-1]["value"] == 0 and ev[-1]["changed"]
        assert ev[-1]["t"] >= t_write - 0.01
        await asyncio.sleep(0.1)
        l2 = await level()
        await asyncio.sleep(0.5)
        l3 = await level()
        assert l3 <= l2  # no longer rising (the small outflow drains it)
        # the ESD valve on the common feed stops T102 too
        plc.set_inflow("T102", 30.0)
        await client.write_coil(2, False, device_id=1)
        l102 = plc.level("T102")
        await asyncio.sleep(0.3)
        assert plc.level("T102") <= l102
    finally:
        client.close()
        await plc.stop()


@pytest.mark.e2e
async def test_plc_level_saturates_at_the_tank_top():
    plc = TankPlc(height_m=12.0)
    await plc.start()
    try:
        plc.set_level("T101", 11.9)
        plc.set_inflow("T101", 120.0)
        await asyncio.sleep(0.3)
        assert plc.level("T101") == 12.0
        with pytest.raises(ValueError):
            plc.set_level("T101", 13.0)
    finally:
        await plc.stop()


# ---------------------------------------------------------------------------- gas bus
async def test_gas_bus_answers_three_slaves_over_the_serial_line(tmp_path):
    bus = GasBus(baudrate=19200, link_dir=str(tmp_path))
    gw = await bus.start()
    assert os.path.realpath(tmp_path / "tty-gas-gw") == gw
    client = await rtu_client(str(tmp_path / "tty-gas-gw"))
    try:
        bus.set_lel(1, 12.5)
        bus.set_lel(2, 55.0)
        bus.set_fault(3, True)
        regs = {}
        for slave in (1, 2, 3):
            rr = await client.read_holding_registers(0, count=7, device_id=slave)
            assert not rr.isError(), f"slave {slave}: {rr}"
            assert rr.dev_id == slave
            regs[slave] = rr.registers
        assert regs[1][:2] == [125, 0x0200]  # 12.5 %LEL x10; LEL sensor, no alarm
        assert regs[2][:2] == [550, 0x0203]  # alarm1 (>= 25 %LEL) and alarm2 (>= 50 %LEL)
        assert regs[3][:2] == [0xFFFF, 0x0280]  # not available + sensor malfunction bit7
        assert regs[1][2] == 250 and regs[1][4] == 500  # set points x10
        # set point write (FC6) is echoed and applied; concentration is read-only
        assert not (await client.write_register(2, 100, device_id=1)).isError()
        rr = await client.read_holding_registers(1, count=1, device_id=1)
        assert rr.registers == [0x0201]  # 12.5 >= 10.0 -> alarm1
        bad = await client.write_register(0, 1, device_id=1)
        assert bad.isError() and bad.exception_code == 2
        bad = await client.read_holding_registers(0, count=8, device_id=1)
        assert bad.isError() and bad.exception_code == 2
        # latching alarm stays until reset (register 6)
        await client.write_register(5, 1, device_id=2)
        bus.set_lel(2, 10.0)
        assert (await client.read_holding_registers(1, count=1, device_id=2)).registers == [0x0202]
        await client.write_register(6, 1, device_id=2)
        assert (await client.read_holding_registers(1, count=1, device_id=2)).registers == [0x0200]
    finally:
        client.close()
        await bus.stop()
    assert not (tmp_path / "tty-gas-gw").exists()


async def test_gas_bus_absent_and_silent_slaves_do_not_answer():
    bus = GasBus(baudrate=38400)
    gw = await bus.start()
    client = await rtu_client(gw, 38400, timeout=0.2)
    try:
        for slave in (4, 2):
            if slave == 2:
                bus.set_silent(2, True)
            with pytest.raises(ModbusIOException):
                await client.read_holding_registers(0, count=2, device_id=slave)
        rr = await client.read_holding_registers(0, count=2, device_id=3)  # the bus is not stalled
        assert not rr.isError() and rr.dev_id == 3
    finally:
        client.close()
        await bus.stop()


async def test_rtu_read_takes_the_real_line_time_at_9600():
    bus = GasBus(baudrate=9600)
    gw = await bus.start()
    client = await rtu_client(gw, 9600, timeout=1.0)
    try:
        await client.read_holding_registers(0, count=2, device_id=1)  # warm up
        times = []
        for _ in range(3):
            t0 = time.monotonic()
            rr = await client.read_holding_registers(0, count=2, device_id=1)
            times.append(time.monotonic() - t0)
            assert not rr.isError()
        # request 8 bytes + reply 9 bytes (id, fc, count, 2 x 2 data, CRC) at 10 bits per char
        line_time = (8 + 9) * 10 / 9600  # 17.7 ms
        assert min(times) >= line_time
        assert max(times) < line_time + 0.1
    finally:
        client.close()
        await bus.stop()


async def test_gas_ramp_and_first_crossing():
    bus = GasBus()
    await bus.start()
    try:
        bus.set_lel(1, 10.0)
        bus.watch("LEL.1", 50)
        t0 = time.time()
        bus.ramp_lel([1], 60.0, 0.5)
        await asyncio.sleep(0.7)
        assert bus.lel(1) == 60.0
        crossing = bus.first_crossing("LEL.1", 50)
        assert crossing is not None
        assert t0 + 0.3 <= crossing <= t0 + 0.5  # 50 %LEL is 80 % of the ramp: 0.4 s, interpolated
        with pytest.raises(KeyError):
            bus.watch("LEL.4", 50)
    finally:
        await bus.stop()


# ---------------------------------------------------------------------------- scenarios
@pytest.mark.parametrize("name", ["demo", "overfill", "gas_leak"])
def test_shipped_scenarios_are_valid(name):
    sc = load_scenario(name)
    assert sc.name == name and sc.steps
    assert sc.duration_s <= 40
    assert [s.at_s for s in sc.steps] == sorted(s.at_s for s in sc.steps)


def test_demo_scenario_watches_the_required_thresholds():
    watches = {(s.args["tag"], s.args["threshold"], s.args["direction"])
               for s in load_scenario("demo").steps if s.action == "watch"}
    assert {("T101.level", 11.0, "up"), ("LEL.1", 50, "up"), ("LEL.2", 50, "up"), ("LEL.3", 50, "up"),
            ("H2S", 20, "up")} <= watches


@pytest.mark.parametrize("body,line,fragment", [
    ("steps:\n  - {at_s: 1, set_inflow: {tank: T101, m_per_min: 3}}\n  - {at_s: 2, explode: {}}\n", 3,
     "unknown action 'explode'"),
    ("steps:\n  - at_s: 1\n    set_lel:\n      slave: 7\n      pct: 12\n", 4, "set_lel.slave"),
    ("steps:\n  - at_s: 1\n    set_lel:\n      slave: 1\n      pct: 120\n", 5, "above the allowed range"),
    ("steps:\n  - {set_lel: {slave: 1, pct: 12}}\n", 2, "missing 'at_s'"),
    ("steps:\n  - {at_s: -1, set_lel: {slave: 1, pct: 12}}\n", 2, "at_s"),
    ("steps:\n  - {at_s: 1e999, set_lel: {slave: 1, pct: 12}}\n", 2, "at_s: expected a finite number, got inf"),
    ("steps:\n  - {at_s: .nan, set_lel: {slave: 1, pct: 12}}\n", 2, "at_s: expected a finite number, got nan"),
    ("steps:\n  - {at_s: 1e12, set_lel: {slave: 1, pct: 12}}\n", 2, "above the allowed range (<= 86400.0)"),
    ("steps:\n  - {at_s: 1, set_lel: {slave: 1, pct: .inf}}\n", 2, "expected a finite number"),
    ("steps:\n  - {at_s: 1, ramp_lel: {slaves: [1, 2], to_pct: 60}}\n", 2, "missing argument 'over_s'"),
    ("steps:\n  - {at_s: 1, set_inflow: {tank: T101, m_per_min: 3, colour: red}}\n", 2, "unknown argument 'colour'"),
    ("steps:\n  - {at_s: 1, set_lel: {slave: 1, pct: 12}, set_h2s: {mg_m3: 3}}\n", 2, "exactly one action"),
    ("name: x\nsteps:\n  - {at_s: 1, set_lel: {slave: 1, pct: 12}\n  - {at_s: 2}\n", 4, "YAML syntax error"),
    ("name: x\n", 1, "missing 'steps'"),
])
def test_scenario_loader_rejects_a_malformed_file_with_file_and_line(tmp_path, body, line, fragment):
    path = tmp_path / "bad.yaml"
    path.write_text(body)
    with pytest.raises(ScenarioError) as err:
        load_scenario(path)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"{path}:{line}: "), msg
    assert fragment in msg


def test_scenario_missing_file_is_one_line(tmp_path):
    with pytest.raises(ScenarioError, match=r"nope\.yaml:0: cannot read"):
        load_scenario(tmp_path / "nope.yaml")



def test_a_folder_named_like_a_scenario_does_not_shadow_it(tmp_path, monkeypatch):
    """`hazard-gateway demo --workdir demo` makes ./demo; the built-in scenario "demo" must still load."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").mkdir()
    assert load_scenario("demo").name == "demo"
    (tmp_path / "mine.yaml").write_text("name: mine\nsteps:\n  - {at_s: 1, set_lel: {slave: 1, pct: 12}}\n")
    assert load_scenario("mine.yaml").name == "mine"  # a path is still a path

# ---------------------------------------------------------------------------- the farm
@pytest.mark.e2e
async def test_farm_end_to_end_scenario_esd_coupling_and_events(tmp_path):
    farm = TankFarm(esd_stroke_s=0.3)
    ep = await farm.start(tmp_path, events_path=tmp_path / "farm-events.jsonl")
    tcp = ua_client = rtu = None
    try:
        assert set(ep) >= {"modbus_tcp", "serial", "opcua"}
        assert os.path.realpath(tmp_path / "tty-gas") == ep["serial"]
        sc = parse_scenario(
            "name: quick\nsteps:\n"
            "  - {at_s: 0, watch: {tag: T101.level, threshold: 8.2}}\n"
            "  - {at_s: 0, watch: {tag: LEL.1, threshold: 50, direction: up}}\n"
            "  - {at_s: 0, watch: {tag: H2S, threshold: 20, direction: up}}\n"
            "  - {at_s: 0, set_inflow: {tank: T101, m_per_min: 60}}\n"
            "  - {at_s: 0.1, ramp_lel: {slaves: [1], to_pct: 60, over_s: 0.4}}\n"
            "  - {at_s: 0.1, ramp_h2s: {to_mg_m3: 30, over_s: 0.4}}\n"
            "  - {at_s: 0.8, log: {message: done}}\n", "quick.yaml")
        await farm.run_scenario(sc)
        for tag, thr in (("T101.level", 8.2), ("LEL.1", 50), ("H2S", 20)):
            assert farm.first_crossing(tag, thr) is not None, tag

        # the gas detectors answer through WORKDIR/tty-gas
        rtu = await rtu_client(str(tmp_path / "tty-gas"))
        rr = await rtu.read_holding_registers(0, count=2, device_id=1)
        assert rr.registers == [600, 0x0203]

        # OPC UA: H2S published; ESD position follows PLC coil 2
        ua_client = UaClient(ep["opcua"])
        await ua_client.connect()
        ns = await ua_client.get_namespace_index(NAMESPACE_URI)
        h2s = await ua_client.get_node(ua.NodeId("GasDetector.AT301.H2S", ns)).read_value()
        assert h2s == pytest.approx(30.0)
        pos_node = ua_client.get_node(ua.NodeId(XV100_POSITION, ns))
        assert await pos_node.read_value() == 100.0
        tcp = AsyncModbusTcpClient(ep["modbus_tcp"][0], port=ep["modbus_tcp"][1])
        assert await tcp.connect()
        await tcp.write_coil(2, False, device_id=1)  # trip: de-energise XV100
        deadline = time.monotonic() + 3
        while await pos_node.read_value() != 0.0:
            assert time.monotonic() < deadline, "XV100 position did not follow coil 2"
            await asyncio.sleep(0.05)
        # an OPC UA trip command re-energising path: False -> coil 2 back to 1
        trip = ua_client.get_node(ua.NodeId(XV100_TRIP, ns))
        await trip.write_value(ua.DataValue(ua.Variant(True, ua.VariantType.Boolean)))
        await asyncio.sleep(0.3)
        assert farm.plc.coil("XV100") is False
        await trip.write_value(ua.DataValue(ua.Variant(False, ua.VariantType.Boolean)))
        deadline = time.monotonic() + 3
        while await pos_node.read_value() != 100.0:
            assert time.monotonic() < deadline, "XV100 did not reopen after TripCommand=False"
            await asyncio.sleep(0.05)
        assert farm.plc.coil("XV100") is True
    finally:
        if tcp:
            tcp.close()
        if rtu:
            rtu.close()
        if ua_client:
            await ua_client.disconnect()
        await farm.stop()
    lines = [json.loads(x) for x in (tmp_path / "farm-events.jsonl").read_text().splitlines()]
    kinds = [e["kind"] for e in lines]
    assert kinds[0] == "farm_started" and kinds[-1] == "farm_stopped"
    assert {"crossing", "step", "coil_write", "esd_position", "scenario_end"} <= set(kinds)
    coil = next(e for e in lines if e["kind"] == "coil_write")
    assert coil["coil"] == "XV100" and coil["value"] == 0 and coil["ts"].endswith("Z")
    assert not (tmp_path / "tty-gas").exists()


@pytest.mark.e2e
def test_farm_cli_runs_writes_farm_json_and_stops_on_sigterm(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "hil.farm", "--workdir", str(tmp_path), "--scenario", "demo"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while not (tmp_path / "farm.json").exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "farm.json never appeared"
            time.sleep(0.05)
        info = json.loads((tmp_path / "farm.json").read_text())
        host, port = info["modbus_tcp"]

        async def probe():
            c = AsyncModbusTcpClient(host, port=port)
            assert await c.connect()
            rr = await c.read_input_registers(0, count=2, device_id=1)
            c.close()
            return f32(rr.registers)

        assert 7.9 < asyncio.run(probe()) < 12.0
        assert info["opcua"].startswith("opc.tcp://127.0.0.1:")
        assert os.path.realpath(tmp_path / "tty-gas") == info["serial"]
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert not (tmp_path / "farm.json").exists() and not (tmp_path / "tty-gas").exists()
    kinds = [json.loads(x)["kind"] for x in (tmp_path / "farm-events.jsonl").read_text().splitlines()]
    assert "scenario_start" in kinds and kinds[-1] == "farm_stopped"


@pytest.mark.e2e
def test_farm_cli_reports_a_bad_scenario_as_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps:\n  - {at_s: 1, set_lel: {slave: 9, pct: 12}}\n")
    proc = subprocess.run([sys.executable, "-m", "hil.farm", "--workdir", str(tmp_path / "w"), "--scenario", str(bad)],
                          cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert f"{bad}:2: " in proc.stderr and "slave" in proc.stderr
