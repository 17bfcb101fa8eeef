"""Modbus TCP / RTU devices against real peers on 127.0.0.1 and pty pairs.

Peers: pymodbus ModbusTcpServer / ModbusSerialServer (SimDevice datastores,
with ``action`` hooks to record requests and inject exception responses), and
small scripted raw responders (TCP socket or pty master) where exact bytes or
misbehaviour matter (C04 echo, C06 byte count, C08 foreign frames, C09 silent
slave, black-holed / reset TCP connections).
"""

from __future__ import annotations

import asyncio
import os
import select
import struct
import threading
import time
import tty
from pathlib import Path
from typing import Callable

import pytest
from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import SimData, SimDevice
from pymodbus.simulator.simutils import DataType

from drivers.codec import Scaling, encode
from drivers.modbus import (ModbusDevice, ModbusLinks, ModbusPoint, TcpLink, crc16, parse_reference,
                            with_crc)
from gateway.model import Quality, WriteError
from raw_rtu import RawRtu
from conftest import free_port

pytestmark = pytest.mark.timeout(30)

REG, BITS = DataType.REGISTERS, DataType.BITS


# --------------------------------------------------------------------------- peers
class Recorder:
    """An async SimDevice action: records (fc, address, count, set_values); optional fault script."""

    def __init__(self, script: Callable[[int, int, int, list | None], ExcCodes | None] | None = None):
        self.calls: list[tuple[int, int, int, list | None]] = []
        self.script = script

    async def act(self, function_code, start_address, address, count, current_registers, set_values):
        self.calls.append((function_code, address, count, list(set_values) if set_values is not None else None))
        return self.script(function_code, address, count, set_values) if self.script else None

    def reads(self, fc: int | None = None):
        return [(a, c) for f, a, c, v in self.calls if v is None and (fc is None or f == fc)]


def dev(unit: int, hr=(), ir=(), co=(), di=(), action=None) -> SimDevice:
    blocks = []
    for spec, kind in ((co, BITS), (di, BITS), (hr, REG), (ir, REG)):
        blocks.append([SimData(a, values=list(v), datatype=kind) for a, v in spec] or
                      [SimData(60000, values=[0], datatype=kind)])
    return SimDevice(id=unit, simdata=tuple(blocks), action=action.act if action else None)


class TcpServer:
    def __init__(self, devices, port: int = 0):
        self.connects = 0
        self.server = ModbusTcpServer(devices, address=("127.0.0.1", port), trace_connect=self._on_conn)

    def _on_conn(self, up: bool) -> None:
        self.connects += bool(up)

    async def __aenter__(self):
        await self.server.serve_forever(background=True)
        self.port = self.server.transport.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc):
        await self.server.shutdown()


class RawTcp:
    """Scripted Modbus TCP responder: handler(unit, pdu) -> reply pdu bytes | None (silence) | 'reset'."""

    def __init__(self, handler):
        self.handler = handler
        self.connects = 0
        self.requests: list[bytes] = []

    async def _client(self, reader, writer):
        self.connects += 1
        try:
            while True:
                hdr = await reader.readexactly(7)
                tid, _pid, length, unit = struct.unpack(">HHHB", hdr)
                pdu = await reader.readexactly(length - 1)
                self.requests.append(pdu)
                rsp = self.handler(unit, pdu)
                if rsp == "reset":
                    writer.transport.abort()
                    return
                if rsp is not None:
                    writer.write(struct.pack(">HHHB", tid, 0, len(rsp) + 1, unit) + rsp)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def __aenter__(self):
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc):
        self.server.close()


class PtyBridge:
    """Two pty pairs bridged master<->master in a thread: a virtual null-modem cable."""

    def __init__(self):
        self.m1, self.s1 = os.openpty()
        self.m2, self.s2 = os.openpty()
        for fd in (self.s1, self.s2):
            tty.setraw(fd)
        self.path_a, self.path_b = os.ttyname(self.s1), os.ttyname(self.s2)
        self._stop = False
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        peer = {self.m1: self.m2, self.m2: self.m1}
        while not self._stop:
            r, _, _ = select.select(list(peer), [], [], 0.05)
            for fd in r:
                try:
                    os.write(peer[fd], os.read(fd, 4096))
                except OSError:
                    pass

    def close(self):
        self._stop = True
        self._t.join(1)
        for fd in (self.m1, self.s1, self.m2, self.s2):
            os.close(fd)


def reply(unit: int, pdu: bytes) -> bytes:
    return with_crc(bytes([unit]) + pdu)


def regs_pdu(fc: int, regs) -> bytes:
    return struct.pack(f">BB{len(regs)}H", fc, 2 * len(regs), *regs)


# --------------------------------------------------------------------------- C05
@pytest.mark.parametrize("ref,expected", [
    ("40001", ("holding_register", 0)), (40001, ("holding_register", 0)), ("400002", ("holding_register", 1)),
    ("30001", ("input_register", 0)), ("10001", ("discrete_input", 0)), ("00001", ("coil", 0)),
    ("000017", ("coil", 16)), ("465536", ("holding_register", 65535)), ("49999", ("holding_register", 9998)),
])
def test_C05_parse_reference(ref, expected):
    assert parse_reference(ref) == expected


@pytest.mark.parametrize("ref,msg", [
    (1, "ambiguous"), ("100", "ambiguous"), (1234, "ambiguous"), ("40000", "1-based"), ("400000", "1-based"),
    ("465537", "outside"), ("20001", "names no table"), ("4x0001", "not a number"), (True, "number"),
])
def test_C05_ambiguous_references_rejected(ref, msg):
    with pytest.raises(ValueError, match=msg) as e:
        parse_reference(ref)
    assert "\n" not in str(e.value)


@pytest.mark.e2e
async def test_C05_reads_reference_notation_tcp():
    rec = Recorder()
    async with TcpServer([dev(1, hr=[(0, [0x1111, 0x2222])], ir=[(0, [0x3333])], action=rec)]) as srv:
        links = ModbusLinks()
        pts = []
        for tag, ref in (("a", "40001"), ("b", "400002"), ("c", "30001")):
            table, addr = parse_reference(ref)
            pts.append(ModbusPoint(tag, 1, table, addr))
        pts.append(ModbusPoint("d", 1, "holding_register", 0))
        d = ModbusDevice("plc", links.tcp("127.0.0.1", srv.port), 1, pts, "modbus_tcp")
        rs = {r.tag: r for r in await d.read()}
        assert [rs[t].value for t in "abcd"] == [4369, 8738, 13107, 4369]
        assert all(r.quality is Quality.GOOD for r in rs.values())
        assert sorted(rec.reads(3)) == [(0, 2)] and rec.reads(4) == [(0, 1)]
        assert "unit 1 FC4 input_register @0 x1" in d.last_requests
        await links.close_all()


async def test_C05_rtu_frame_for_30001():
    bus = RawRtu(lambda f: reply(1, regs_pdu(4, [0x3333])))
    links = ModbusLinks()
    try:
        table, addr = parse_reference("30001")
        d = ModbusDevice("det", links.rtu(bus.path, timeout_s=0.3), 1, [ModbusPoint("c", 1, table, addr)],
                         "modbus_rtu")
        (r,) = await d.read()
        assert r.value == 13107
        assert bus.frames[0][1] == bytes.fromhex("01 04 00 00 00 01 31 CA")
    finally:
        await links.close_all()
        bus.close()


# --------------------------------------------------------------------------- TCP reads
@pytest.mark.e2e
async def test_tcp_read_types_and_shared_link():
    f_cdab = encode(12.5, "float32", "CDAB")
    hr = [(0, [0xFFEC, 0xFF38, 0x1234, 0xFFFF] + f_cdab + [0x7FC0, 0x0000, 0x8000, 0x4348, 0x3400, 0b0100])]
    async with TcpServer([dev(1, hr=hr, co=[(0, [True, False, True])], di=[(0, [False, True])]),
                          dev(2, hr=[(0, [42])])]) as srv:
        links = ModbusLinks()
        link = links.tcp("127.0.0.1", srv.port)
        assert links.tcp("127.0.0.1", srv.port) is link
        d1 = ModbusDevice("plc", link, 1, [
            ModbusPoint("t_int16", 1, "holding_register", 0, "int16", unit="degC"),
            ModbusPoint("t_scaled", 1, "holding_register", 1, "int16", scaling=Scaling(scale=0.1)),
            ModbusPoint("t_sf", 1, "holding_register", 2, "uint16", scale_factor_address=3),
            ModbusPoint("t_f", 1, "holding_register", 4, "float32", "CDAB", unit="%LEL"),
            ModbusPoint("t_nan", 1, "holding_register", 6, "float32"),
            ModbusPoint("t_na", 1, "holding_register", 8, "int16", sentinels=(0x8000,)),
            ModbusPoint("t_str", 1, "holding_register", 9, "string", str_len=3),
            ModbusPoint("t_bit", 1, "holding_register", 11, "bit", bit=2),
            ModbusPoint("t_coils", 1, "coil", 0, "bool", length=3),
            ModbusPoint("t_di", 1, "discrete_input", 1, "bool"),
        ], "modbus_tcp")
        d2 = ModbusDevice("plc2", link, 2, [ModbusPoint("x", 2, "holding_register", 0)], "modbus_tcp")
        await d1.start()
        rs = {r.tag: r for r in await d1.read()}
        assert rs["t_int16"].value == -20 and rs["t_int16"].unit == "degC"
        assert rs["t_scaled"].value == pytest.approx(-20.0)
        assert rs["t_sf"].value == 466.0
        assert rs["t_f"].value == 12.5 and rs["t_f"].raw == f_cdab
        assert rs["t_nan"].quality is Quality.BAD and rs["t_nan"].value is None and rs["t_nan"].reason == "nan"
        assert rs["t_na"].quality is Quality.BAD and rs["t_na"].reason.startswith("sentinel")
        assert rs["t_str"].value == "CH4"
        assert rs["t_bit"].value is True
        assert rs["t_coils"].value == [True, False, True]
        assert rs["t_di"].value is True
        assert d1.last_requests == ["unit 1 FC1 coil @0 x3", "unit 1 FC2 discrete_input @1 x1",
                                    "unit 1 FC3 holding_register @0 x12"]
        (x,) = await d2.read()
        assert x.value == 42
        assert srv.connects == 1 and link.connects == 1  # one connection shared by both unit ids
        await links.close_all()


async def test_bad_point_config_one_line():
    link = TcpLink("127.0.0.1", 1)
    cases = [
        (ModbusPoint("a", 1, "coil", 0, "uint16"), "dtype must be bool"),
        (ModbusPoint("a", 1, "holding_register", 0, "float32", "ABDC"), "unknown register order"),
        (ModbusPoint("a", 1, "input_register", 0, writable=True), "read-only"),
        (ModbusPoint("a", 1, "holding_register", 65535, "float32"), "outside"),
        (ModbusPoint("a", 1, "holding_register", 0, "bit"), "bit 0..15"),
        (ModbusPoint("a", 300, "holding_register", 0), "unit id"),
        (ModbusPoint("a", 1, "holding_register", 0, "float32", length=70), "exceed"),
    ]
    for p, msg in cases:
        with pytest.raises(ValueError, match=msg) as e:
            ModbusDevice("plc", link, 1, [p], "modbus_tcp")
        assert str(e.value).startswith("plc") and "\n" not in str(e.value)
    with pytest.raises(ValueError, match="defined twice"):
        ModbusDevice("plc", link, 1, [ModbusPoint("a", 1, "coil", 0, "bool")] * 2, "modbus_tcp")


# --------------------------------------------------------------------------- C06
@pytest.mark.e2e
async def test_C06_300_tags_and_device_limit():
    rec = Recorder()
    async with TcpServer([dev(1, hr=[(0, list(range(300)))], action=rec)]) as srv:
        links = ModbusLinks()
        pts = [ModbusPoint(f"t{i}", 1, "holding_register", i) for i in range(300)]
        d = ModbusDevice("plc", links.tcp("127.0.0.1", srv.port), 1, pts, "modbus_tcp")
        rs = await d.read()
        assert [r.value for r in rs] == list(range(300))
        assert rec.reads(3) == [(0, 125), (125, 125), (250, 50)]
        rec.calls.clear()
        d50 = ModbusDevice("plc50", links.tcp("127.0.0.1", srv.port), 1, pts, "modbus_tcp",
                           max_registers_per_read=50)
        assert all(r.quality is Quality.GOOD for r in await d50.read())
        assert max(c for _, c in rec.reads(3)) == 50 and len(rec.reads(3)) == 6
        await links.close_all()


@pytest.mark.e2e
async def test_C06_hole_split_and_remembered():
    rec = Recorder()
    async with TcpServer([dev(1, hr=[(11174, [1]), (11176, [2, 3])], action=rec)]) as srv:
        links = ModbusLinks()
        pts = [ModbusPoint(f"t{a}", 1, "holding_register", a) for a in (11174, 11176, 11177)]
        d = ModbusDevice("plc", links.tcp("127.0.0.1", srv.port), 1, pts, "modbus_tcp", max_gap=1)
        rs = await d.read()
        assert [(r.value, r.quality) for r in rs] == [(1, Quality.GOOD), (2, Quality.GOOD), (3, Quality.GOOD)]
        assert d.last_requests == ["unit 1 FC3 holding_register @11174 x4", "unit 1 FC3 holding_register @11174 x1",
                                   "unit 1 FC3 holding_register @11176 x2"]
        assert rec.reads(3) == [(11174, 1), (11176, 2)]  # the x4 read was refused (02) by the server
        rec.calls.clear()
        assert [r.value for r in await d.read()] == [1, 2, 3]
        assert d.last_requests == ["unit 1 FC3 holding_register @11174 x1", "unit 1 FC3 holding_register @11176 x2"]
        assert rec.reads(3) == [(11174, 1), (11176, 2)]  # the split plan is kept
        await links.close_all()


@pytest.mark.e2e
async def test_C06_wrong_byte_count_is_malformed():
    def handler(unit, pdu):
        fc, addr, count = struct.unpack(">BHH", pdu[:5])
        return bytes([3, 3, 0, 1, 0])  # 3 bytes for 2 registers
    async with RawTcp(handler) as srv:
        links = ModbusLinks()
        d = ModbusDevice("plc", links.tcp("127.0.0.1", srv.port, timeout_s=0.5), 1,
                         [ModbusPoint("a", 1, "holding_register", 0), ModbusPoint("b", 1, "holding_register", 1)],
                         "modbus_tcp")
        rs = await d.read()
        assert all(r.quality is Quality.BAD and r.value is None for r in rs)
        assert rs[0].reason.startswith("malformed reply"), rs[0].reason
        await links.close_all()


# --------------------------------------------------------------------------- C07
@pytest.mark.e2e
async def test_C07_exceptions_per_unit_on_one_connection():
    busy = {"n": 0}

    def unit3(fc, addr, count, values):
        if values is None and busy["n"] < 2:
            busy["n"] += 1
            return ExcCodes.DEVICE_BUSY
        return None

    rec1 = Recorder()
    rec2 = Recorder(lambda *a: ExcCodes.GATEWAY_NO_RESPONSE)
    rec3 = Recorder(unit3)
    async with TcpServer([dev(1, hr=[(0, [7]), (5, [0])], action=rec1), dev(2, hr=[(0, [8])], action=rec2),
                          dev(3, hr=[(0, [9])], action=rec3)]) as srv:
        links = ModbusLinks()
        link = links.tcp("127.0.0.1", srv.port)
        d1 = ModbusDevice("u1", link, 1, [ModbusPoint("good", 1, "holding_register", 0),
                                          ModbusPoint("wrong", 1, "holding_register", 3)], "modbus_tcp")
        d2 = ModbusDevice("u2", link, 2, [ModbusPoint("gw", 2, "holding_register", 0)], "modbus_tcp",
                          slow_poll_s=60)
        d3 = ModbusDevice("u3", link, 3, [ModbusPoint("busy", 3, "holding_register", 0)], "modbus_tcp")
        requests_1 = []
        for cycle in range(4):
            r1, r2, r3 = await asyncio.gather(d1.read(), d2.read(), d3.read())
            requests_1 += d1.last_requests
            assert r1[0].value == 7 and r1[0].quality is Quality.GOOD
            assert r1[1].quality is Quality.BAD and r1[1].value is None
            assert r1[1].reason == "exception 02 illegal data address"
            assert r2[0].quality is Quality.BAD and r2[0].value is None
            if cycle < 3:
                assert r2[0].reason == "exception 0B gateway target device failed to respond"
            else:  # offline after 3 consecutive 0B: slow schedule, no request
                assert r2[0].reason.startswith("comm fault: unit 2 offline")
            assert r3[0].value == 9 and r3[0].quality is Quality.GOOD  # 06 twice, then data
        assert d2.unit_offline() and not d1.unit_offline() and not d3.unit_offline()
        assert len(rec2.calls) == 3  # offline after 3 failures: no storm
        assert requests_1.count("unit 1 FC3 holding_register @3 x1") == 1  # config fault: retried slowly
        assert srv.connects == 1 and link.connects == 1  # no exception closed the socket
        await links.close_all()


# --------------------------------------------------------------------------- C04 (TCP)
@pytest.mark.e2e
async def test_C04_writes_encode_verify_and_read_back():
    reject_fc6 = Recorder(lambda fc, a, c, v: ExcCodes.ILLEGAL_FUNCTION if fc == 6 else None)
    rec = Recorder()
    async with TcpServer([dev(1, hr=[(0, [0] * 20)], co=[(0, [False] * 32)], action=rec),
                          dev(2, hr=[(0, [0] * 4)], action=reject_fc6)]) as srv:
        links = ModbusLinks()
        link = links.tcp("127.0.0.1", srv.port)
        d = ModbusDevice("plc", link, 1, [
            ModbusPoint("sp", 1, "holding_register", 10, "float32", "CDAB", writable=True),
            ModbusPoint("neg", 1, "holding_register", 0, "int16", writable=True),
            ModbusPoint("pct", 1, "holding_register", 1, "uint16", scaling=Scaling(scale=0.01), writable=True),
            ModbusPoint("relay", 1, "coil", 16, "bool", writable=True),
            ModbusPoint("ro", 1, "holding_register", 2),
        ], "modbus_tcp")
        r = await d.write("sp", 12.5)
        assert r.value == 12.5 and r.quality is Quality.GOOD
        assert (16, 10, 2, [0x0000, 0x4148]) in rec.calls
        await d.write("neg", -10)
        assert (6, 0, 1, [0xFFF6]) in rec.calls
        r = await d.write("pct", 0.29)
        assert (6, 1, 1, [29]) in rec.calls and r.value == pytest.approx(0.29)
        r = await d.write("relay", True)
        assert (5, 16, 1, [True]) in rec.calls and r.value is True
        with pytest.raises(WriteError, match="not writable"):
            await d.write("ro", 1)
        with pytest.raises(WriteError, match="out of range") as e:
            await d.write("neg", 40000)
        assert "unit 1 holding_register 0" in str(e.value)

        p = ModbusPoint("x", 2, "holding_register", 0, writable=True)
        d2 = ModbusDevice("dev2", link, 2, [p], "modbus_tcp")
        with pytest.raises(WriteError, match="exception 01 illegal function") as e:
            await d2.write("x", 5)
        assert str(e.value).startswith("dev2: write x (unit 2 holding_register 0)")
        d2b = ModbusDevice("dev2", link, 2, [ModbusPoint("x", 2, "holding_register", 0, writable=True,
                                                         write_single_as_fc16=True)], "modbus_tcp")
        assert (await d2b.write("x", 5)).value == 5
        assert (16, 0, 1, [5]) in reject_fc6.calls
        await links.close_all()


@pytest.mark.e2e
async def test_C04_read_back_mismatch_is_a_failure():
    store = {"clamp": False}

    async def act(function_code, start_address, address, count, current_registers, set_values):
        if function_code == 3 and store["clamp"]:  # the device silently clamps after the write
            current_registers[address - start_address] = min(current_registers[address - start_address], 100)
        return None
    rec = Recorder()
    rec.act = act
    async with TcpServer([dev(1, hr=[(0, [0])], action=rec)]) as srv:
        links = ModbusLinks()
        d = ModbusDevice("plc", links.tcp("127.0.0.1", srv.port), 1,
                         [ModbusPoint("sp", 1, "holding_register", 0, writable=True)], "modbus_tcp")
        assert (await d.write("sp", 50)).value == 50
        store["clamp"] = True
        with pytest.raises(WriteError, match="read-back mismatch: wrote 00C8, read 0064"):
            await d.write("sp", 200)
        await links.close_all()


# --------------------------------------------------------------------------- C10/C11 link behaviour
@pytest.mark.e2e
async def test_tcp_backoff_then_connects():
    port = free_port()
    links = ModbusLinks()
    link = links.tcp("127.0.0.1", port, timeout_s=0.3)
    link.backoff.initial_s = 0.2
    d = ModbusDevice("plc", link, 1, [ModbusPoint("a", 1, "holding_register", 0)], "modbus_tcp")
    await d.start()  # must not raise: connection refused, backoff ~0.2 s
    assert link.backoff.failures == 1
    async with TcpServer([dev(1, hr=[(0, [5])])], port=port) as srv:
        t0 = time.monotonic()
        (r,) = await d.read()  # still backing off: no connect attempt, fails fast
        assert r.quality is Quality.BAD and r.reason.startswith("comm fault") and "next attempt" in r.reason
        assert time.monotonic() - t0 < 0.1 and srv.connects == 0
        await asyncio.sleep(0.25)
        (r,) = await d.read()
        assert r.value == 5 and srv.connects == 1
        assert link.backoff.failures == 0  # reset on success
    await links.close_all()


def test_backoff_sequence():
    import random
    from drivers.modbus import Backoff
    b = Backoff(rng=random.Random(1))
    delays = [b.failed(now=0.0) for _ in range(9)]
    for d, base in zip(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]):
        assert base * 0.9 <= d <= base * 1.1
    b.succeeded()
    assert 0.9 <= b.failed(now=0.0) <= 1.1


@pytest.mark.e2e
async def test_tcp_black_hole_reconnects_and_reset_is_a_fault():
    mode = {"m": "silent"}

    def handler(unit, pdu):
        if mode["m"] == "silent":
            return None
        if mode["m"] == "reset":
            return "reset"
        return regs_pdu(3, [77])
    async with RawTcp(handler) as srv:
        links = ModbusLinks()
        link = links.tcp("127.0.0.1", srv.port, timeout_s=0.15)
        d = ModbusDevice("plc", link, 1, [ModbusPoint("a", 1, "holding_register", 0)], "modbus_tcp", retries=0,
                         offline_after=10)
        for _ in range(3):
            (r,) = await d.read()
            assert r.reason == "timeout"
        mode["m"] = "ok"
        (r,) = await d.read()
        assert r.value == 77
        assert srv.connects == 2  # closed and reopened after 3 consecutive timeouts
        mode["m"] = "reset"
        (r,) = await d.read()  # no ConnectionResetError escapes
        assert r.quality is Quality.BAD
        await links.close_all()


# --------------------------------------------------------------------------- RTU
async def test_rtu_three_detectors_pymodbus_server():
    bridge = PtyBridge()
    devices = [dev(u, ir=[(0, encode(10.0 * u, "float32", "CDAB") + [u])]) for u in (1, 2, 3)]
    server = ModbusSerialServer(devices, port=bridge.path_b, baudrate=19200, parity="N", timeout=0.1)
    await server.serve_forever(background=True)
    links = ModbusLinks()
    try:
        link = links.rtu(bridge.path_a, baudrate=19200, timeout_s=0.5)
        assert links.rtu(bridge.path_a, baudrate=19200) is link
        with pytest.raises(ValueError, match="already used at 19200 8N1"):
            links.rtu(bridge.path_a, baudrate=9600)
        dets = [ModbusDevice(f"gd{u}", link, u, [
            ModbusPoint(f"gd{u}.gas", u, "input_register", 0, "float32", "CDAB", unit="%LEL"),
            ModbusPoint(f"gd{u}.status", u, "input_register", 2)], "modbus_rtu") for u in (1, 2, 3)]
        for d in dets:
            await d.start()
        for _ in range(3):
            results = await asyncio.gather(*(d.read() for d in dets))
            for u, (gas, status) in zip((1, 2, 3), results):
                assert gas.value == 10.0 * u and gas.quality is Quality.GOOD and status.value == u
        assert link.opens == 1 and link.requests_sent == 9
        assert min(link.gaps_before_request[1:]) >= link.t35_s - 0.0005
    finally:
        await links.close_all()
        await server.shutdown()
        bridge.close()


def _rtu_read_req(frame: bytes) -> tuple[int, int, int, int]:
    return frame[0], frame[1], *struct.unpack(">HH", frame[2:6])


async def test_C08_foreign_slave_frame_is_never_taken():
    foreign = bytes.fromhex("02 03 04 41 48 00 00 5D 19")
    real = bytes.fromhex("01 03 04 41 20 00 00 EF C5")
    script = {"out": [foreign, real]}
    bus = RawRtu(lambda f: script["out"])
    links = ModbusLinks()
    try:
        link = links.rtu(bus.path, timeout_s=0.3)
        d = ModbusDevice("gd1", link, 1, [ModbusPoint("gas", 1, "holding_register", 0, "float32")], "modbus_rtu",
                         retries=0)
        (r,) = await d.read()
        assert bus.frames[-1][1] == bytes.fromhex("01 03 00 00 00 02 C4 0B")
        assert r.value == 10.0 and link.discarded_frames == 1
        # in one chunk, with a stray byte in front (pymodbus 3.16.1 loses this reply)
        script["out"] = [b"\x00" + foreign + real]
        (r,) = await d.read()
        assert r.value == 10.0
        # a corrupted frame, then the good one
        script["out"] = [real[:-1] + b"\x00", real]
        (r,) = await d.read()
        assert r.value == 10.0
        # only the foreign frame: no reply of slave 1, 12.5 is never assigned to it; the reason says
        # what came instead, so a mis-addressed slave is told apart from a dead one
        script["out"] = [foreign]
        (r,) = await d.read()
        assert r.quality is Quality.BAD and r.value is None and r.reason == "reply from unit 2, expected 1"
    finally:
        await links.close_all()
        bus.close()


async def test_C08_late_reply_to_earlier_poll_is_discarded():
    late = reply(1, regs_pdu(3, [0x4148, 0x0000]))  # answer to the timed-out 2-register poll
    state = {"n": 0}

    def handler(frame):
        state["n"] += 1
        unit, fc, addr, count = _rtu_read_req(frame)
        if count == 2:
            return None  # first poll: no answer in time
        out = [late]
        if state["n"] == 3:
            out.append(reply(1, regs_pdu(3, [1234])))
        return out
    bus = RawRtu(handler)
    links = ModbusLinks()
    try:
        link = links.rtu(bus.path, timeout_s=0.2)
        d2 = ModbusDevice("a", link, 1, [ModbusPoint("f", 1, "holding_register", 0, "float32")], "modbus_rtu",
                          retries=0)
        d1 = ModbusDevice("b", link, 1, [ModbusPoint("u", 1, "holding_register", 0)], "modbus_rtu", retries=0)
        assert (await d2.read())[0].reason == "timeout"
        (r,) = await d1.read()  # only the late 2-register reply arrives: byte count 4 != 2
        assert r.quality is Quality.BAD and r.reason == "timeout"
        (r,) = await d1.read()  # late reply then the real one
        assert r.value == 1234
        assert link.discarded_frames >= 2
    finally:
        await links.close_all()
        bus.close()


async def test_C04_coil_frame_and_wrong_echo_rtu():
    script = {"echo": None}

    def handler(frame):
        if frame[1] == 5:
            return script["echo"] or frame  # a correct device echoes the request
        if frame[1] == 1:
            return reply(1, bytes([1, 1, 1]))
        return None
    bus = RawRtu(handler)
    links = ModbusLinks()
    try:
        d = ModbusDevice("io", links.rtu(bus.path, timeout_s=0.2), 1,
                         [ModbusPoint("relay", 1, "coil", 16, "bool", writable=True)], "modbus_rtu")
        r = await d.write("relay", True)
        assert r.value is True
        assert bus.frames[0][1] == bytes.fromhex("01 05 00 10 FF 00 8D FF")
        script["echo"] = with_crc(bytes.fromhex("01 05 00 10 00 01"))
        with pytest.raises(WriteError, match="echo mismatch: sent 0010 FF00, device answered 0010 0001") as e:
            await d.write("relay", True)
        assert str(e.value).startswith("io: write relay (unit 1 coil 16)") and "2 attempts" in str(e.value)
        assert sum(1 for _, f in bus.frames if f[1] == 5) == 3  # bounded retry, then failure
    finally:
        await links.close_all()
        bus.close()


@pytest.mark.e2e
async def test_C09_silent_slave_does_not_stall_the_bus():
    def handler(frame):
        unit, fc, addr, count = _rtu_read_req(frame)
        if unit == 2:
            return None
        return reply(unit, regs_pdu(3, [100 + unit]))
    bus = RawRtu(handler)
    links = ModbusLinks()
    try:
        link = links.rtu(bus.path, baudrate=9600, timeout_s=0.1)
        assert link.t35_s == pytest.approx(0.003646, abs=1e-5)
        dets = [ModbusDevice(f"gd{u}", link, u, [ModbusPoint(f"g{u}", u, "holding_register", 0)], "modbus_rtu",
                             retries=1, offline_after=3, slow_poll_s=0.6) for u in (1, 2, 3)]

        async def cycle():
            t0 = time.monotonic()
            rs = await asyncio.gather(*(d.read() for d in dets))
            return [r[0] for r in rs], time.monotonic() - t0

        for _ in range(3):
            (r1, r2, r3), _dt = await cycle()
            assert (r1.value, r3.value) == (101, 103) and r2.quality is Quality.BAD and r2.reason == "timeout"
        assert dets[1].unit_offline(2)
        polls_2 = sum(1 for _, f in bus.frames if f[0] == 2)
        assert polls_2 == 6  # 3 cycles x (1 try + 1 retry)
        (r1, r2, r3), dt = await cycle()
        assert (r1.value, r3.value) == (101, 103) and r2.reason.startswith("comm fault")
        assert dt < 0.08  # the cycle is back to normal: no wait on slave 2
        assert sum(1 for _, f in bus.frames if f[0] == 2) == polls_2
        await asyncio.sleep(0.65)
        (r1, r2, r3), _ = await cycle()  # the slow retry is due: one try, no retry
        assert sum(1 for _, f in bus.frames if f[0] == 2) == polls_2 + 1
        assert link.opens == 1  # the port was never closed because of slave 2
        starts = [t for t, _ in bus.frames]
        assert min(link.gaps_before_request[1:]) >= link.t35_s - 0.0005
        assert all(b - a >= link.t35_s - 0.0005 for a, b in zip(starts, starts[1:]))
    finally:
        await links.close_all()
        bus.close()


async def test_rtu_port_missing_is_comm_fault():
    links = ModbusLinks()
    link = links.rtu("/dev/does-not-exist-hg", timeout_s=0.1)
    d = ModbusDevice("gd", link, 1, [ModbusPoint("g", 1, "holding_register", 0)], "modbus_rtu")
    await d.start()
    (r,) = await d.read()
    assert r.quality is Quality.BAD and r.reason.startswith("comm fault") and "\n" not in r.reason
    await links.close_all()


def test_crc_reference_frames():
    assert crc16(bytes.fromhex("01 03 00 00 00 02")) == 0x0BC4
    # frames of the public-domain sigrok capture (wizmodbus, 9600 8N1)
    tsv = Path(__file__).parents[1] / "data" / "real" / "wizmodbus.rtu.tsv"  # attribution: tests/data/real/ATTRIBUTION.md
    frames = [bytes.fromhex(line.split("\t")[4]) for line in tsv.read_text().splitlines() if not line.startswith("#")]
    from drivers.modbus import crc_ok, scan_rtu_reply
    assert frames and all(crc_ok(f) for f in frames)
    req, rsp = frames[0], frames[1]
    got, _, _ = scan_rtu_reply(b"\xff" + req + rsp, rsp[0], rsp[1], len(rsp))
    assert got == rsp  # our own echoed request and a noise byte are skipped


async def test_rtu_stale_input_is_flushed_before_a_request():
    state = {"n": 0}
    bus_ref = {}

    def handler(frame):
        state["n"] += 1
        if state["n"] == 1:  # answer too late, after the gateway gave up
            threading.Timer(0.15, lambda: os.write(bus_ref["bus"].master, reply(1, regs_pdu(3, [111])))).start()
            return None
        return reply(1, regs_pdu(3, [222]))
    bus = bus_ref["bus"] = RawRtu(handler)
    links = ModbusLinks()
    try:
        link = links.rtu(bus.path, timeout_s=0.1)
        d = ModbusDevice("gd", link, 1, [ModbusPoint("g", 1, "holding_register", 0)], "modbus_rtu", retries=0)
        assert (await d.read())[0].reason == "timeout"
        await asyncio.sleep(0.2)  # the late reply (same shape as the next one!) is now in the input
        (r,) = await d.read()
        assert r.value == 222 and link.flushed_bytes == 7
    finally:
        await links.close_all()
        bus.close()
