"""Every reply is matched to its own request, over real peers on loopback and pty lines.

Modbus TCP: a raw asyncio server written here answers the gateway's requests
with crafted MBAP ADUs (wrong transaction id, transaction id 0, another unit
id, late replies, another function code, wrong byte counts, wrong echoes).
Modbus Messaging on TCP/IP Implementation Guide V1.0b, section 3.1.3: the
server copies the transaction identifier and the unit identifier of the
request into its response; Modbus Application Protocol V1.1b3, sections
6.1-6.6, 6.11, 6.12: the response PDU of each function code; section 7: an
exception response carries function code + 0x80.

Modbus RTU: the hil SerialLine with ``local_echo=True`` is a 2-wire adapter
that hears the gateway's own transmission, run with ``local_echo: false`` in
the gateway (a configuration fault); a raw pty bus answers from another unit.
Modbus over Serial Line V1.02, section 2.5.1.1 (RTU framing), section 3.3
(two-wire bus).
"""

from __future__ import annotations

import asyncio
import struct
import threading

import pytest
import serial

from drivers.modbus import LinkTimeout, ModbusDevice, ModbusLinks, ModbusPoint, crc_ok, with_crc
from gateway.model import Quality, WriteError
from hil.serial_line import SerialLine
from raw_rtu import RawRtu

pytestmark = pytest.mark.timeout(30)

ECHO_FAULT = "link fault: echo seen, local_echo is off"


# --------------------------------------------------------------------------- TCP peer
def adu(tid: int, unit: int, pdu: bytes) -> bytes:
    """One MBAP ADU: transaction id, protocol id 0, length, unit id, PDU."""
    return struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit) + pdu


class CraftedTcp:
    """Modbus TCP peer: handler(tid, unit, pdu) -> list of raw ADUs to send (may be empty)."""

    def __init__(self, handler):
        self.handler = handler
        self.requests: list[tuple[int, int, bytes]] = []
        self.connects = 0

    async def _client(self, reader, writer):
        self.connects += 1
        try:
            while True:
                tid, _pid, length, unit = struct.unpack(">HHHB", await reader.readexactly(7))
                pdu = await reader.readexactly(length - 1)
                self.requests.append((tid, unit, pdu))
                for raw in self.handler(tid, unit, pdu) or []:
                    writer.write(raw)
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


def regs_reply(fc: int, regs) -> bytes:
    return struct.pack(f">BB{len(regs)}H", fc, 2 * len(regs), *regs)


def tcp_device(port: int, points, unit: int = 1, timeout_s: float = 0.2, links: ModbusLinks | None = None):
    links = links or ModbusLinks()
    return links, ModbusDevice("plc", links.tcp("127.0.0.1", port, timeout_s=timeout_s), unit, points,
                               "modbus_tcp", retries=0, offline_after=100)


def hr(tag: str = "a", address: int = 0, unit: int = 1) -> ModbusPoint:
    return ModbusPoint(tag, unit, "holding_register", address)


# --------------------------------------------------------------------------- (b) transaction ids
@pytest.mark.e2e
async def test_tcp_reply_with_transaction_id_0_is_never_taken():
    """pymodbus 3.16.1 skips its transaction-id check when the reply carries id 0 (transaction.py,
    ``if response.transaction_id and ...``): a peer answering with id 0 had its value taken as GOOD."""
    async with CraftedTcp(lambda tid, unit, pdu: [adu(0, unit, regs_reply(3, [1234]))]) as srv:
        links, d = tcp_device(srv.port, [hr()])
        try:
            (r,) = await d.read()
            sent_tid = srv.requests[-1][0]
            assert sent_tid != 0
            assert r.quality is Quality.BAD and r.value is None
            assert r.reason == f"reply with transaction id 0, expected {sent_tid}"
            assert d.link.late_replies == 1
        finally:
            await links.close_all()


@pytest.mark.e2e
@pytest.mark.parametrize("late_tid", ["own", 0])
async def test_tcp_late_reply_is_discarded_and_counted_never_the_next_value(late_tid):
    """Request 1 (register 0 = 111) gets no answer in time; its reply arrives while request 2
    (register 5 = 222, same shape) waits, just before request 2's own reply. The late reply is
    discarded and counted; request 2 reads 222. Before: a late reply with id 0 became request 2's
    value (111 as GOOD), and one with its own id made request 2 fail although its reply came."""
    state: dict = {}

    def handler(tid, unit, pdu):
        _fc, address, _count = struct.unpack(">BHH", pdu)
        if address == 0:
            state["tid1"] = tid
            return []  # too late: answered below
        return [adu(state["tid1"] if late_tid == "own" else 0, unit, regs_reply(3, [111])),
                adu(tid, unit, regs_reply(3, [222]))]
    async with CraftedTcp(handler) as srv:
        links = ModbusLinks()
        _, first = tcp_device(srv.port, [hr("first", 0)], links=links, timeout_s=0.15)
        _, second = tcp_device(srv.port, [hr("second", 5)], links=links)
        try:
            (r,) = await first.read()
            assert r.quality is Quality.BAD and r.reason == "timeout"
            (r,) = await second.read()
            assert r.quality is Quality.GOOD and r.value == 222, (r.value, r.reason)
            assert second.link.late_replies == 1
        finally:
            await links.close_all()


# --------------------------------------------------------------------------- (c) say what it is
@pytest.mark.e2e
async def test_tcp_reply_with_another_transaction_id_is_reported_as_such():
    async with CraftedTcp(lambda tid, unit, pdu: [adu((tid + 100) & 0xFFFF, unit, regs_reply(3, [5]))]) as srv:
        links, d = tcp_device(srv.port, [hr()])
        try:
            (r,) = await d.read()
            tid = srv.requests[-1][0]
            assert r.quality is Quality.BAD and r.value is None
            assert r.reason == f"reply with transaction id {tid + 100}, expected {tid}"
        finally:
            await links.close_all()


@pytest.mark.e2e
@pytest.mark.parametrize("asked,answering", [(3, 7), (0, 5)])
async def test_tcp_reply_from_another_unit_is_reported_as_such(asked, answering):
    """A reply with the right transaction id from another unit id: a mis-addressed unit behind a
    TCP-to-RTU gateway, not a dead one. Before: unit 3 read "timeout"; unit 0 took unit 5's value."""
    async with CraftedTcp(lambda tid, unit, pdu: [adu(tid, answering, regs_reply(3, [5]))]) as srv:
        links, d = tcp_device(srv.port, [hr(unit=asked)], unit=asked)
        try:
            (r,) = await d.read()
            assert r.quality is Quality.BAD and r.value is None
            assert r.reason == f"reply from unit {answering}, expected {asked}"
        finally:
            await links.close_all()


@pytest.mark.e2e
async def test_tcp_stream_out_of_step_is_malformed_and_the_connection_reopened():
    """An MBAP header with protocol id 1 (Implementation Guide V1.0b, section 3.1.3: always 0): the
    byte stream cannot be trusted any more. pymodbus waited for more data (a "timeout"); now the
    reply is malformed at once and the next request gets a fresh connection."""
    mode = {"bad": True}

    def handler(tid, unit, pdu):
        body = regs_reply(3, [9])
        if mode["bad"]:
            return [struct.pack(">HHHB", tid, 1, len(body) + 1, unit) + body]
        return [adu(tid, unit, body)]
    async with CraftedTcp(handler) as srv:
        links, d = tcp_device(srv.port, [hr()])
        try:
            (r,) = await d.read()
            assert r.quality is Quality.BAD and r.value is None
            assert r.reason.startswith("malformed reply: MBAP header") and "protocol id 1" in r.reason, r.reason
            mode["bad"] = False
            (r,) = await d.read()
            assert r.quality is Quality.GOOD and r.value == 9 and srv.connects == 2
        finally:
            await links.close_all()


# --------------------------------------------------------------------------- (d) function code, byte count
READS = {  # table -> (function code, quantity, correct reply PDU)
    "coil": (1, 3, bytes([1, 1, 0b101])),
    "discrete_input": (2, 3, bytes([2, 1, 0b010])),
    "holding_register": (3, 2, regs_reply(3, [1, 2])),
    "input_register": (4, 2, regs_reply(4, [3, 4])),
}


def read_point(table: str) -> ModbusPoint:
    _fc, qty, _ = READS[table]
    return ModbusPoint("v", 1, table, 0, "bool" if table in ("coil", "discrete_input") else "uint16", length=qty)


@pytest.mark.e2e
@pytest.mark.parametrize("table,wrong_fc", [("coil", 2), ("discrete_input", 1), ("holding_register", 4),
                                            ("input_register", 3)])
async def test_tcp_read_reply_with_another_function_code_is_bad(table, wrong_fc):
    fc, _qty, good = READS[table]
    async with CraftedTcp(lambda tid, unit, pdu: [adu(tid, unit, bytes([wrong_fc]) + good[1:])]) as srv:
        links, d = tcp_device(srv.port, [read_point(table)])
        try:
            (r,) = await d.read()
            assert r.quality is Quality.BAD and r.value is None
            assert r.reason == f"malformed reply: function code 0x{wrong_fc:02X}, expected 0x{fc:02X}"
        finally:
            await links.close_all()


@pytest.mark.e2e
async def test_tcp_exception_reply_for_another_function_is_bad():
    """0x84 (an FC4 exception) in reply to FC3 is no answer to FC3."""
    async with CraftedTcp(lambda tid, unit, pdu: [adu(tid, unit, bytes([0x84, 0x02]))]) as srv:
        links, d = tcp_device(srv.port, [hr()])
        try:
            (r,) = await d.read()
            assert r.quality is Quality.BAD and r.reason == "malformed reply: function code 0x84, expected 0x03"
        finally:
            await links.close_all()


@pytest.mark.e2e
@pytest.mark.parametrize("table,pdu,why", [
    # byte count 5 for a 3-coil read, one data byte: pymodbus ignores the byte count field
    ("coil", bytes([1, 5, 0b101]), "byte count 5, expected 1 for 3 coils"),
    ("discrete_input", bytes([2, 2, 0b010]), "byte count 2, expected 1 for 3 discrete inputs"),
    # the right byte count, more data than it says
    ("coil", bytes([1, 1, 0b101, 0xFF]), "2 data bytes after byte count 1"),
    ("holding_register", bytes([3, 4, 0, 1, 0, 2, 0, 3]), "6 data bytes after byte count 4"),
])
async def test_tcp_read_reply_byte_count_is_checked(table, pdu, why):
    async with CraftedTcp(lambda tid, unit, _pdu: [adu(tid, unit, pdu)]) as srv:
        links, d = tcp_device(srv.port, [read_point(table)])
        try:
            (r,) = await d.read()
            assert r.quality is Quality.BAD and r.value is None
            assert r.reason == f"malformed reply: {why}", r.reason
        finally:
            await links.close_all()


class WritePeer:
    """Answers reads with ``store`` and writes with ``write_reply(pdu)`` (a correct echo by default)."""

    def __init__(self, write_reply=None):
        self.store = {"coil": [0] * 16, "holding_register": [0] * 16}
        self.write_reply = write_reply

    def __call__(self, tid, unit, pdu):
        fc = pdu[0]
        if fc in (1, 3):
            _, address, count = struct.unpack(">BHH", pdu)
            if fc == 1:
                bits = self.store["coil"][address:address + count]
                packed = bytearray((count + 7) // 8)
                for i, b in enumerate(bits):
                    packed[i // 8] |= b << (i % 8)
                return [adu(tid, unit, bytes([1, len(packed)]) + bytes(packed))]
            return [adu(tid, unit, regs_reply(3, self.store["holding_register"][address:address + count]))]
        address = struct.unpack(">H", pdu[1:3])[0]
        if fc == 5:
            self.store["coil"][address] = 1 if pdu[3:5] == b"\xff\x00" else 0
        elif fc == 6:
            self.store["holding_register"][address] = struct.unpack(">H", pdu[3:5])[0]
        elif fc == 15:
            n = struct.unpack(">H", pdu[3:5])[0]
            for i in range(n):
                self.store["coil"][address + i] = (pdu[6 + i // 8] >> (i % 8)) & 1
        elif fc == 16:
            n = struct.unpack(">H", pdu[3:5])[0]
            self.store["holding_register"][address:address + n] = struct.unpack(f">{n}H", pdu[6:6 + 2 * n])
        rsp = self.write_reply(pdu) if self.write_reply else pdu[:5]
        return [adu(tid, unit, rsp)]


WRITES = {  # function code -> (point, value written)
    5: (ModbusPoint("relay", 1, "coil", 2, "bool", writable=True), True),
    6: (ModbusPoint("sp", 1, "holding_register", 2, writable=True), 7),
    15: (ModbusPoint("relays", 1, "coil", 2, "bool", length=2, writable=True), [True, False]),
    16: (ModbusPoint("sp32", 1, "holding_register", 2, "uint32", writable=True), 70000),
}


@pytest.mark.e2e
@pytest.mark.parametrize("fc,reply,why", [
    # FC5 echo value 0x0001 is no coil state (section 6.5: FF00 or 0000); pymodbus read it as "on"
    (5, lambda p: p[:3] + b"\x00\x01", "echo mismatch: sent 0002 FF00, device answered 0002 0001"),
    # another function code in reply to a write
    (5, lambda p: bytes([6]) + p[1:5], "malformed reply: function code 0x06, expected 0x05"),
    (6, lambda p: bytes([5]) + p[1:5], "malformed reply: function code 0x05, expected 0x06"),
    (15, lambda p: bytes([16]) + p[1:5], "malformed reply: function code 0x10, expected 0x0F"),
    (16, lambda p: bytes([15]) + p[1:5], "malformed reply: function code 0x0F, expected 0x10"),
    # an echo with a byte missing
    (6, lambda p: p[:4], "malformed reply: 3 bytes after function code 0x06, expected 4"),
])
async def test_tcp_write_reply_is_checked(fc, reply, why):
    point, value = WRITES[fc]
    peer = WritePeer(reply)
    async with CraftedTcp(peer) as srv:
        links, d = tcp_device(srv.port, [point])
        try:
            with pytest.raises(WriteError) as e:
                await d.write(point.tag, value)
            assert why in str(e.value), str(e.value)
        finally:
            await links.close_all()


# --------------------------------------------------------------------------- (a) RTU echo, local_echo off
class EchoLineSlave:
    """Unit 1 on the device side of a SerialLine: FC1 coils and FC3 holding registers from ``coils`` /
    ``regs``; FC6 written into ``regs`` and echoed."""

    def __init__(self, path: str, coils=(), regs=()):
        self.ser = serial.Serial(path, 19200, timeout=0.02)
        self.coils = dict(coils)
        self.regs = dict(regs)
        self.requests: list[bytes] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        buf = b""
        while not self._stop.is_set():
            buf += self.ser.read(64)
            while len(buf) >= 8:
                frame, buf = buf[:8], buf[8:]
                if not crc_ok(frame):
                    buf = frame[1:] + buf
                    continue
                self.requests.append(frame)
                unit, fc, address, count = frame[0], frame[1], *struct.unpack(">HH", frame[2:6])
                if unit != 1:
                    continue
                if fc == 1:
                    packed = bytearray((count + 7) // 8)
                    for i in range(count):
                        packed[i // 8] |= self.coils.get(address + i, 0) << (i % 8)
                    self.ser.write(with_crc(bytes([1, 1, len(packed)]) + bytes(packed)))
                elif fc == 3:
                    vals = [self.regs.get(address + i, 0) for i in range(count)]
                    self.ser.write(with_crc(bytes([1, 3, 2 * count]) + struct.pack(f">{count}H", *vals)))
                elif fc == 6:
                    self.regs[address] = count
                    self.ser.write(frame)

    def close(self):
        self._stop.set()
        self._t.join(2)
        self.ser.close()


@pytest.fixture
def echo_line():
    line = SerialLine(19200, local_echo=True)
    dev_path, gw_path = line.start()
    holder: dict = {}
    yield line, dev_path, gw_path, holder
    if "slave" in holder:
        holder["slave"].close()
    line.stop()


async def test_rtu_read_echo_of_the_same_shape_is_never_the_reply(echo_line):
    """FC1 at 0x0300 x20: the echoed request (01 01 03 00 00 14 CRC) is itself a CRC-valid 8-byte
    reply of unit 1, FC1, byte count 3: the gateway took the request's own bytes as coil values.
    Now a frame byte-identical to the request just sent is the echo; the real reply follows."""
    line, dev_path, gw_path, holder = echo_line
    pattern = [1, 0, 1, 1, 0, 0, 0, 1, 1, 1, 1, 0, 0, 1, 0, 1, 0, 0, 1, 1]
    holder["slave"] = EchoLineSlave(dev_path, coils={0x300 + i: b for i, b in enumerate(pattern)})
    links = ModbusLinks()
    try:
        link = links.rtu(gw_path, 19200, timeout_s=0.3)
        d = ModbusDevice("io", link, 1, [ModbusPoint("c", 1, "coil", 0x300, "bool", length=20)], "modbus_rtu",
                         retries=0)
        (r,) = await d.read()
        assert r.value == [bool(b) for b in pattern], r.value
        assert holder["slave"].requests[-1][:6] == bytes.fromhex("01 01 03 00 00 14")
        assert r.quality is Quality.UNCERTAIN and r.reason == ECHO_FAULT
        assert link.echoes_seen == 1 and link.last_error == "echo seen, local_echo is off"
    finally:
        await links.close_all()


async def test_rtu_echo_with_local_echo_off_is_reported_and_clears_when_the_echo_stops(echo_line):
    """FC3: the echo (8 bytes) cannot pass for a 7-byte reply, so the value was right, but nothing
    told the technician that the adapter echoes while local_echo is off. The fault is reported on
    every reading of the link until a read completes without an echo."""
    line, dev_path, gw_path, holder = echo_line
    holder["slave"] = EchoLineSlave(dev_path, regs={0: 1234})
    links = ModbusLinks()
    try:
        link = links.rtu(gw_path, 19200, timeout_s=0.3)
        d = ModbusDevice("gd", link, 1, [ModbusPoint("g", 1, "holding_register", 0)], "modbus_rtu", retries=0)
        for _ in range(2):
            (r,) = await d.read()
            assert r.value == 1234 and r.quality is Quality.UNCERTAIN and r.reason == ECHO_FAULT
        assert link.echoes_seen == 2 and link.last_error == "echo seen, local_echo is off"
        line.local_echo = False  # the adapter is replaced by one that does not echo
        (r,) = await d.read()
        assert r.value == 1234 and r.quality is Quality.GOOD and r.reason is None
        assert link.last_error is None and link.echoes_seen == 2
    finally:
        await links.close_all()


async def test_rtu_echo_fault_marks_a_silent_units_timeout(echo_line):
    """Only the echo comes back (the slave is absent): BAD, and the reason names the link fault too."""
    line, dev_path, gw_path, holder = echo_line
    holder["slave"] = EchoLineSlave(dev_path)
    links = ModbusLinks()
    try:
        link = links.rtu(gw_path, 19200, timeout_s=0.1)
        d = ModbusDevice("gd9", link, 9, [ModbusPoint("g", 9, "holding_register", 0)], "modbus_rtu", retries=0)
        (r,) = await d.read()
        assert r.quality is Quality.BAD and r.value is None
        assert r.reason == f"timeout; {ECHO_FAULT}"
    finally:
        await links.close_all()


# --------------------------------------------------------------------------- (c) RTU unit mismatch
async def test_rtu_reply_from_another_unit_is_reported_as_such():
    """A slave set to address 7 that answers a poll of unit 3 (same function, same length)."""
    bus = RawRtu(lambda f: with_crc(bytes([7, 3, 2, 0x12, 0x34])))
    links = ModbusLinks()
    try:
        link = links.rtu(bus.path, timeout_s=0.15)
        d = ModbusDevice("gd3", link, 3, [ModbusPoint("g", 3, "holding_register", 0)], "modbus_rtu", retries=0)
        (r,) = await d.read()
        assert r.quality is Quality.BAD and r.value is None
        assert r.reason == "reply from unit 7, expected 3"
        with pytest.raises(LinkTimeout, match="reply from unit 7, expected 3"):
            await link.read(3, "holding_register", 0, 1)
    finally:
        await links.close_all()
        bus.close()
