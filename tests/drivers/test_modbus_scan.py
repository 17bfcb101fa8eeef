"""`hazard-gateway scan` (drivers/modbus_scan.py) against real pymodbus servers on 127.0.0.1: a Modbus TCP server
holding several unit ids, and an RTU server on a paced pty pair (hil.serial_line.SerialLine, as the gas bus of
the HIL rig). Units not configured stay silent, as a dead node on RS-485 does. Every request the servers
receive is recorded: only FC3/FC4, FC17 and FC43 may reach them (nothing written)."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from pathlib import Path

import pytest
from pymodbus.constants import ExcCodes
from pymodbus.pdu.device import ModbusDeviceIdentification
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from drivers.modbus import silent_interval_s
from drivers.modbus_scan import Scanner, ScanTarget, parse_host, parse_units
from hil.rig import free_port
from hil.serial_line import SerialLine
from conftest import run_cli

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parents[2]
READ_ONLY = {3, 4, 17, 43}
WRITES = {5, 6, 15, 16, 22, 23}


def device(unit: int, first: int = 0, value: int = 0) -> SimDevice:
    """A unit with holding registers first..first+3 (= value + unit); an address outside them answers 02."""
    return SimDevice(id=unit, simdata=(
        [SimData(0, values=[False] * 8, datatype=DataType.BITS)],
        [SimData(0, values=[False] * 8, datatype=DataType.BITS)],
        [SimData(first, count=4, values=value + unit, datatype=DataType.REGISTERS)],
        [SimData(0, values=0, datatype=DataType.REGISTERS)]))


async def _gateway_no_response(*_args) -> ExcCodes:
    return ExcCodes.GATEWAY_NO_RESPONSE


class Bus:
    """The server side: the units that answer, the ones a TCP gateway answers 0B for, what was received."""

    def __init__(self, units: dict[int, SimDevice], gateway_0b: tuple[int, ...] = (), unit_byte: int = 6) -> None:
        self.answering = set(units)
        self.gateway_0b = set(gateway_0b)
        self.unit_byte = unit_byte          # MBAP: byte 6; RTU: byte 0
        self.received: list[tuple[float, int, int]] = []   # (monotonic, unit, function code)
        # a catch-all id 0: pymodbus answers an unknown id itself; its reply is dropped below (silent node)
        catch_all = SimDevice(id=0, simdata=[SimData(0, values=0, datatype=DataType.REGISTERS)],
                              action=_gateway_no_response)
        self.devices = [*units.values(), catch_all]
        self.identity = ModbusDeviceIdentification(info_name={"VendorName": "Acme", "ProductCode": "GD-7",
                                                              "MajorMinorRevision": "2.1"})

    def trace_pdu(self, sending: bool, pdu):
        """Every request the server decoded (a whole frame), with the time it was complete."""
        if not sending:
            self.received.append((time.monotonic(), pdu.dev_id, pdu.function_code))
        return pdu

    def trace_packet(self, sending: bool, data: bytes) -> bytes:
        if not sending or not data or len(data) <= self.unit_byte:
            return data
        unit = data[self.unit_byte]
        if unit in self.answering or unit in self.gateway_0b:
            return data
        return b""  # not on the bus: no reply at all

    @property
    def functions(self) -> set[int]:
        return {fc & 0x7F for _, _, fc in self.received}


async def tcp_bus(units: dict[int, SimDevice], gateway_0b: tuple[int, ...] = ()) -> tuple[ModbusTcpServer, Bus, int]:
    bus = Bus(units, gateway_0b)
    port = free_port("127.0.0.1")
    server = ModbusTcpServer(bus.devices, address=("127.0.0.1", port), identity=bus.identity,
                             trace_packet=bus.trace_packet, trace_pdu=bus.trace_pdu)
    await server.serve_forever(background=True)
    return server, bus, port


# --------------------------------------------------------------------------------------------- unit ranges

def test_unit_ranges_and_hosts():
    assert parse_units("1-247", serial=True) == list(range(1, 248))
    assert parse_units("1-3, 7,10-11", serial=True) == [1, 2, 3, 7, 10, 11]
    assert parse_units("0-2", serial=False) == [0, 1, 2]
    for bad, serial in (("0-5", True), ("1-248", True), ("5-1", True), ("x", True), ("1-256", False), ("", True)):
        with pytest.raises(ValueError):
            parse_units(bad, serial)
    with pytest.raises(ValueError, match="broadcast"):
        parse_units("0", serial=True)
    assert parse_host("10.0.0.5") == ("10.0.0.5", 502)
    assert parse_host("plc:1502") == ("plc", 1502)
    assert parse_host("[::1]:5020") == ("::1", 5020)
    with pytest.raises(ValueError):
        parse_host("plc:99999")


def test_pacing_and_bound_follow_the_serial_line():
    """t3.5 (Modbus over Serial Line V1.02 2.5.1.1) between frames; --gap-ms only lengthens it; the bound is
    units x (timeout + pacing)."""
    s = Scanner(ScanTarget(serial="/dev/null", baudrate=9600), list(range(1, 248)), timeout_s=0.3)
    assert s.pace_s == pytest.approx(silent_interval_s(9600)) == pytest.approx(3.5 * 10 / 9600)
    assert s.bound_s() == pytest.approx(247 * (0.3 + 3.5 * 10 / 9600))
    e = Scanner(ScanTarget(serial="/dev/null", baudrate=19200, parity="E"), [1], timeout_s=0.3)
    assert e.pace_s == pytest.approx(3.5 * 11 / 19200)
    assert Scanner(ScanTarget(serial="/dev/null", baudrate=115200), [1]).pace_s == pytest.approx(0.00175)
    assert Scanner(ScanTarget(serial="/dev/null"), [1], gap_s=0.05).pace_s == pytest.approx(0.05)
    with pytest.raises(ValueError):
        Scanner(ScanTarget(serial="/dev/null"), [0])          # broadcast
    with pytest.raises(ValueError):
        Scanner(ScanTarget(host="h"), [1], function=6)        # never a write


# --------------------------------------------------------------------------------------------- Modbus TCP

async def test_tcp_finds_exactly_the_configured_units_and_writes_nothing():
    # 9 has its registers at 100..103: a read of 0 answers 02 ILLEGAL DATA ADDRESS, and still counts
    server, bus, port = await tcp_bus({1: device(1, value=100), 5: device(5, value=100),
                                       9: device(9, first=100)}, gateway_0b=(7,))
    try:
        seen = []
        scanner = Scanner(ScanTarget(host="127.0.0.1", port=port), parse_units("1-12", serial=False),
                          timeout_s=0.2, on_found=seen.append)
        found = await scanner.run()
    finally:
        await server.shutdown()
    assert [h.unit for h in found] == [1, 5, 9] and seen == found
    by = {h.unit: h for h in found}
    assert by[1].registers == [101] and by[5].registers == [105] and by[1].exception is None
    assert by[9].registers is None and (by[9].exception, by[9].exception_name) == (2, "ILLEGAL DATA ADDRESS")
    assert (by[1].vendor, by[1].product, by[1].revision) == ("Acme", "GD-7", "2.1")       # FC43/14
    assert by[9].server_id                                                                # FC17
    assert scanner.gateway_silent == [7]          # 0B from a gateway: nobody behind it, not present
    assert scanner.done and scanner.last_unit == 12
    assert {u for _, u, _ in bus.received} == set(range(1, 13))
    assert bus.functions <= READ_ONLY and not bus.functions & WRITES, bus.functions
    assert {fc for _, u, fc in bus.received if u not in (1, 5, 9)} == {3}   # ident only for units found


async def test_cli_scan_tcp_json_and_lines():
    server, bus, port = await tcp_bus({2: device(2), 3: device(3, first=50)})
    try:
        rc, out, err = await run_cli("scan", "--tcp", f"127.0.0.1:{port}", "--units", "1-4", "--timeout", "0.2",
                                     "--json")
        assert rc == 0, err
        data = json.loads(out)
        assert [h["unit"] for h in data["found"]] == [2, 3] and data["found"][1]["exception"] == 2
        assert data["stopped"] is False and data["count"] == 4 and data["bound_s"] == pytest.approx(4 * 0.2)
        rc, out, err = await run_cli("scan", "--tcp", f"127.0.0.1:{port}", "--units", "2-3", "--timeout", "0.2",
                                     "--function", "4", "--no-ident")
        assert rc == 0, err
        lines = out.splitlines()
        assert len(lines) == 2 and lines[0].startswith("unit 2  FC4 input 0: 0x0000 (0)"), out
        assert lines[1].startswith("unit 3  FC4 input 0: "), out
        assert "at most" in err.splitlines()[0] and "2 of 2 unit ids answered" in err
    finally:
        await server.shutdown()
    assert bus.functions <= READ_ONLY


async def test_cli_scan_errors_are_one_line():
    port = free_port("127.0.0.1")
    rc, out, err = await run_cli("scan", "--tcp", f"127.0.0.1:{port}", "--units", "1")
    assert rc == 1 and err.splitlines()[-1] == f"hazard-gateway: scan 127.0.0.1:{port}: cannot connect", err
    rc, out, err = await run_cli("scan", "--serial", "/dev/tty-no-such-port", "--units", "1")
    assert rc == 1 and "cannot open the serial port" in err and "Traceback" not in err
    for args in (("--units", "0-3", "--serial", "/dev/null"), ("--tcp", "h:0"), ()):
        rc, out, err = await run_cli("scan", *args)
        assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, (args, err)


@pytest.mark.e2e
async def test_ctrl_c_stops_cleanly_and_keeps_what_was_found():
    server, bus, port = await tcp_bus({1: device(1)})
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.cli", "scan", "--tcp", f"127.0.0.1:{port}", "--units", "1-200",
            "--timeout", "0.3", cwd=str(ROOT), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        first = await asyncio.wait_for(proc.stdout.readline(), 20)
        assert first.decode().startswith("unit 1  FC3 holding 0"), first
        await asyncio.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(proc.communicate(), 20)
    finally:
        await server.shutdown()
    assert proc.returncode == 130, err
    assert "stopped (Ctrl-C) after unit" in err.decode() and "1 found so far" in err.decode()
    assert "Traceback" not in err.decode()
    assert max(u for _, u, _ in bus.received) < 30     # it did stop, long before unit 200


# --------------------------------------------------------------------------------------------- Modbus RTU

@pytest.mark.e2e
async def test_rtu_over_a_pty_pair_finds_the_units_paced():
    line = SerialLine(baudrate=19200)
    dev_path, gw_path = line.start()
    bus = Bus({2: device(2, value=40), 3: device(3, first=10), 6: device(6)}, unit_byte=0)
    server = ModbusSerialServer(bus.devices, port=dev_path, baudrate=19200, bytesize=8, parity="N", stopbits=1,
                                identity=bus.identity, trace_packet=bus.trace_packet,
                                trace_pdu=bus.trace_pdu)
    await server.serve_forever(background=True)
    try:
        scanner = Scanner(ScanTarget(serial=gw_path, baudrate=19200), parse_units("1-8", serial=True),
                          timeout_s=0.2)
        t0 = time.monotonic()
        found = await scanner.run()
        took = time.monotonic() - t0
    finally:
        await server.shutdown()
        line.stop()
    assert [h.unit for h in found] == [2, 3, 6]
    by = {h.unit: h for h in found}
    assert by[2].registers == [42] and by[3].exception == 2 and by[6].registers == [6]
    assert by[2].vendor == "Acme"
    assert bus.functions <= READ_ONLY and not bus.functions & WRITES, bus.functions
    assert {u for _, u, fc in bus.received if fc == 3} == set(range(1, 9))
    # paced: consecutive requests at least t3.5 apart on the line; bounded by the printed bound
    starts = [t for t, _, _ in bus.received]
    assert min(b - a for a, b in zip(starts, starts[1:])) >= silent_interval_s(19200) * 0.9
    assert took <= scanner.bound_s() + len(found) * scanner.ident_bound_s() + 1.0
