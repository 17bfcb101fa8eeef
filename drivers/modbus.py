"""Modbus TCP and RTU devices: shared links, block reads, verified writes.

Sources: Modbus Application Protocol Specification v1.1b3 (function codes
1-6, 15, 16 in section 6; exception codes in section 7), Modbus over Serial
Line v1.02 (RTU framing, CRC-16 and the 3.5 character silent interval,
section 2.5.1.1), Modbus Messaging on TCP/IP v1.0b (MBAP, unit id).

Design choices
--------------
* One link per physical path, shared by every device and unit id on it
  (:class:`ModbusLinks`): a TCP connection per (host, port) (case C11), one
  owner per serial port. Every request on a link is serialised by an
  asyncio.Lock; a Modbus TCP-to-RTU gateway and an RS-485 bus both answer one
  request at a time.
* TCP does its own MBAP framing over an asyncio transport (:class:`TcpLink`),
  as RTU does its own RTU framing. pymodbus 3.16.1's client accepts a reply
  with transaction id 0 for any request (TransactionManager.execute and
  FramerBase.handleFrame skip the check when the id is 0, and the unit id
  check when the request's unit id is 0), so a late reply could become the
  value of the next request; it skips a reply from another unit id in
  silence (seen only as a timeout); it accepts a reply with another function
  code; and it ignores the byte count of a coil / discrete-input reply. Here
  every reply is matched to its own transaction id (Modbus Messaging on
  TCP/IP Implementation Guide V1.0b, section 3.1.3) and unit id, anything
  else is discarded and counted (``late_replies``), and the PDU is checked
  against its request (function code, exception, byte count, length; Modbus
  Application Protocol V1.1b3, sections 6 and 7). The link reconnects with
  exponential backoff 1, 2, 4 .. 60 s with +-10 % jitter (reset on success),
  never blocks a poll while the peer is down (requests fail fast with
  "comm fault" until the next attempt is due), closes and reopens after 3
  consecutive timeouts (a black-holed connection), and turns a connection
  reset or closed by the peer into a link fault; the next request reconnects.
* RTU does NOT use pymodbus's serial client: after a CRC mismatch it drops
  its whole receive buffer, and a foreign slave's frame arriving together
  with the real reply can hide that reply (docs/design.md, Known dependency faults; case
  C08). :class:`RtuLink` owns the port through pyserial (non-blocking fd +
  ``loop.add_reader``) and does its own framing: requests are built with
  struct, CRC-16/MODBUS appended; before each request it waits the silent
  interval (3.5 character times, fixed 1.75 ms above 19200 baud) after the
  last byte seen on the line and flushes the input; the reply is found by a
  resynchronising scanner (:func:`scan_rtu_reply`) that keeps scanning the
  buffer for a CRC-valid frame from the polled slave, with the requested
  function and byte count, discarding anything else (foreign slaves, late
  replies to an earlier poll, noise, our own echo). A frame byte-identical
  to the request just sent is our echo, never the reply, for every function
  whose correct reply differs from the request (1-4, 15, 16); seen while
  ``local_echo`` is off it is a link fault "echo seen, local_echo is off"
  (Modbus over Serial Line V1.02, section 3.3: a two-wire adapter hears
  itself), reported with every reading of the link until it clears.
* A reply that is not ours is reported as what it is, not as a timeout
  (:class:`ReplyMismatch`): "reply from unit 7, expected 3", "reply with
  transaction id 12, expected 13".
* Exceptions never become values (case C07): each read block failing with an
  exception turns its points BAD with "exception NN name"; 05/06 are retried
  briefly; 01/02/03 are configuration faults of those tags, logged once and
  retried slowly; 0A/0B (and timeouts) count towards marking that unit
  offline; no exception closes the socket.
* A unit that failed ``offline_after`` consecutive times is polled on a slow
  schedule (``slow_poll_s``); meanwhile its points are BAD "comm fault"
  without any I/O, so a silent slave cannot stall the bus (case C09).
* The poll's hot path is decided once per planned block (:class:`_BlockPlan`): a
  :class:`drivers.codec.BlockDecoder` unpacks every point of a reply with a few precompiled
  structs and applies the same checks as decode_value (sentinel, NaN / infinity, NAMUR band,
  scaling), and the GOOD Readings of a block are made as a column (Reading.good_many); a point
  with a scale-factor register, and any block that failed, go the per-point way
  (:meth:`ModbusDevice._make_reading`). A TCP request waits on one future with a timer
  handle, not on asyncio.wait_for (a task per request).
"""

from __future__ import annotations

import asyncio
import collections
import gc
import logging
import os
import random
import re
import socket
import struct
import termios
import time
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Sequence

from drivers.base import Device
from drivers.codec import (BlockDecoder, CodecError, Scaling, decode, decode_value, encode_value, normalise_order,
                           register_count)
from drivers.modbus_planner import (BIT_TABLES, READ_FUNCTION, REGISTER_TABLES, Block, MalformedReply, ReadPlanner,
                                    Span, check_byte_count)
from gateway.model import Explained, Quality, Reading, WriteError

__all__ = [
    "ModbusPoint",
    "parse_reference",
    "normalise_table",
    "ModbusLinks",
    "TcpLink",
    "RtuLink",
    "ModbusDevice",
    "ModbusLinkError",
    "LinkTimeout",
    "LinkDown",
    "ReplyMismatch",
    "ModbusExceptionReply",
    "MalformedReply",
    "EXCEPTION_NAMES",
    "crc16",
    "scan_rtu_reply",
    "silent_interval_s",
]

log = logging.getLogger("drivers.modbus")

#: Modbus Application Protocol v1.1b3 section 7.
EXCEPTION_NAMES = {
    0x01: "illegal function",
    0x02: "illegal data address",
    0x03: "illegal data value",
    0x04: "server device failure",
    0x05: "acknowledge",
    0x06: "server device busy",
    0x08: "memory parity error",
    0x0A: "gateway path unavailable",
    0x0B: "gateway target device failed to respond",
}
#: RtuLink.link_fault when the adapter echoes our requests but the port is configured without local_echo
ECHO_OFF_FAULT = "echo seen, local_echo is off"
CONFIG_FAULT_CODES = frozenset({0x01, 0x02, 0x03})
BUSY_CODES = frozenset({0x05, 0x06})
GATEWAY_CODES = frozenset({0x0A, 0x0B})
TABLES = ("coil", "discrete_input", "input_register", "holding_register")


# --------------------------------------------------------------------------- errors
class ModbusLinkError(Exception):
    """A request that got no usable reply; str() is one line."""


class LinkTimeout(ModbusLinkError):
    """No (matching) reply within the response timeout."""


class ReplyMismatch(LinkTimeout):
    """No reply of our own: what came back belongs to another request or unit; str() says which,
    e.g. "reply from unit 7, expected 3" or "reply with transaction id 12, expected 13".

    A :class:`LinkTimeout` (the polled unit did not answer its request, so it counts towards the unit
    being offline and is retried like a timeout), told apart so that a technician can tell a
    mis-addressed unit or a late peer from a dead one."""


class LinkDown(ModbusLinkError):
    """The link is not connected / the port cannot be opened (reconnect is backing off)."""


class ModbusExceptionReply(ModbusLinkError):
    """The device answered with an exception response (function code | 0x80)."""

    def __init__(self, code: int, function: int) -> None:
        self.code = code
        self.function = function
        super().__init__(exception_reason(code))


def exception_reason(code: int) -> str:
    """'exception 02 illegal data address' (the Reading.reason text)."""
    return f"exception {code:02X} {EXCEPTION_NAMES.get(code, 'unknown')}"


# --------------------------------------------------------------------------- points
_TABLE_ALIASES = {
    "coil": "coil", "coils": "coil", "co": "coil",
    "discrete_input": "discrete_input", "discrete_inputs": "discrete_input", "discrete": "discrete_input",
    "di": "discrete_input",
    "input_register": "input_register", "input_registers": "input_register", "input": "input_register",
    "ir": "input_register",
    "holding_register": "holding_register", "holding_registers": "holding_register", "holding": "holding_register",
    "hr": "holding_register",
}
_REF_TABLE = {"0": "coil", "1": "discrete_input", "3": "input_register", "4": "holding_register"}


def normalise_table(table: str) -> str:
    """'holding' / 'hr' / 'holding_register' -> 'holding_register' (etc.); ValueError otherwise."""
    t = str(table).strip().lower().replace(" ", "_").replace("-", "_")
    if t not in _TABLE_ALIASES:
        raise ValueError(f"unknown Modbus table {table!r} (expected coil, discrete_input, input_register "
                         "or holding_register)")
    return _TABLE_ALIASES[t]


def parse_reference(ref: int | str) -> tuple[str, int]:
    """1-based Modbus reference number -> (table, 0-based PDU address) (case C05).

    5 digits: leading table digit + 0001..9999 (40001 -> holding 0, 30001 ->
    input 0, 10001 -> discrete input 0, 00001 -> coil 0). 6 digits: leading
    table digit + 00001..65536 (400002 -> holding 1). Leading digit 0 = coil,
    1 = discrete input, 3 = input register, 4 = holding register (Modicon
    convention). A coil must be written with its leading zeros ("00001" or
    "000001"), so it is necessarily a string. Anything else (a bare number
    such as 1 or 100, a reference 0 such as 40000, a leading 2/5-9) is
    ambiguous or invalid and raises ValueError with a one-line message; give
    the table and the 0-based address instead.
    """
    if isinstance(ref, bool) or not isinstance(ref, (int, str)):
        raise ValueError(Explained("Modbus reference {ref} must be a number such as 40001", ref=repr(ref)))
    s = str(ref).strip()
    if not re.fullmatch(r"\d+", s):
        raise ValueError(Explained("Modbus reference {ref} is not a number such as 40001 or 400002", ref=repr(ref)))
    if len(s) not in (5, 6):
        raise ValueError(Explained("Modbus reference {ref} is ambiguous: use a 5/6-digit reference (40001, 400002) "
                                   "or give table and 0-based address", ref=repr(ref)))
    table = _REF_TABLE.get(s[0])
    if table is None:
        raise ValueError(Explained("Modbus reference {ref}: leading digit {digit} names no table (0 coil, 1 discrete "
                                   "input, 3 input register, 4 holding register)", ref=repr(ref), digit=s[0]))
    n = int(s[1:])
    limit = 9999 if len(s) == 5 else 65536
    if not 1 <= n <= limit:
        raise ValueError(Explained("Modbus reference {ref}: register number {n} outside 1..{limit} (references are "
                                   "1-based)", ref=repr(ref), n=n, limit=limit))
    return table, n - 1


_TABLE_WORD = {"coil": "coil", "discrete_input": "discrete", "input_register": "input",
               "holding_register": "holding"}
_TABLE_DIGIT = {"coil": "0", "discrete_input": "1", "input_register": "3", "holding_register": "4"}


def reference(table: str, address: int) -> str:
    """0-based table address -> 1-based reference notation: holding 0 -> '40001', coil 16 -> '00017',
    holding 9999 -> '410000' (6 digits once the 4-digit register number would overflow); the inverse of
    :func:`parse_reference`."""
    n = address + 1
    return f"{_TABLE_DIGIT[table]}{n:04d}" if n <= 9999 else f"{_TABLE_DIGIT[table]}{n:05d}"


@dataclass(frozen=True)
class ModbusPoint:
    """One configured Modbus tag.

    unit_id: slave / unit id (RTU 1..247, TCP 0..255). table: "coil",
    "discrete_input", "input_register" or "holding_register". address:
    0-based PDU address (use :func:`parse_reference` for 40001-style
    numbers). dtype/order/length/bit/str_len: see drivers.codec. scaling:
    raw -> engineering. sentinels: raw values meaning "not available" (C03).
    unit: engineering unit. writable: may be written by :meth:`ModbusDevice.write`.
    write_single_as_fc16: send single-register writes as FC16 (devices that
    reject FC6 with exception 01, C04). scale_factor_address: optional
    address (same unit and table) of an int16 power-of-ten exponent register
    (value = raw * 10**sf, C02).
    """

    tag: str
    unit_id: int
    table: str
    address: int
    dtype: str = "uint16"
    order: str = "ABCD"
    length: int = 1
    bit: int | None = None
    str_len: int | None = None
    scaling: Scaling = field(default_factory=Scaling)
    sentinels: tuple[int, ...] = ()
    unit: str = ""
    writable: bool = False
    write_single_as_fc16: bool = False
    scale_factor_address: int | None = None

    @property
    def count(self) -> int:
        """Number of registers (or bits) the point occupies."""
        return register_count(self.dtype, self.length, self.str_len)

    def where(self) -> str:
        """'unit 1 holding_register 10' for messages."""
        return f"unit {self.unit_id} {self.table} {self.address}"


def _validate_point(dev: str, p: ModbusPoint, protocol: str) -> None:
    """Raise ValueError (one line naming device and tag) for an inconsistent point."""
    pre = f"{dev}: tag {p.tag!r}"
    if p.table not in TABLES:
        raise ValueError(f"{pre}: unknown table {p.table!r}")
    lo, hi = (1, 247) if protocol == "modbus_rtu" else (0, 255)
    if not isinstance(p.unit_id, int) or not lo <= p.unit_id <= hi:
        raise ValueError(f"{pre}: unit id {p.unit_id!r} outside {lo}..{hi}")
    try:
        n = register_count(p.dtype, p.length, p.str_len)
        normalise_order(p.order, p.dtype)
    except ValueError as e:
        raise ValueError(f"{pre}: {e}") from None
    if p.table in BIT_TABLES and p.dtype != "bool":
        raise ValueError(f"{pre}: a {p.table} holds bits; dtype must be bool, not {p.dtype}")
    if p.table in REGISTER_TABLES and p.dtype == "bool":
        raise ValueError(f"{pre}: dtype bool needs a coil or discrete_input; use dtype bit for a bit of a register")
    if p.dtype == "bit" and (p.bit is None or not 0 <= p.bit <= 15 or p.bit + p.length > 16):
        raise ValueError(f"{pre}: dtype bit needs bit 0..15 (and bit+length <= 16), got {p.bit!r}")
    if not isinstance(p.address, int) or p.address < 0 or p.address + n > 65536:
        raise ValueError(f"{pre}: address {p.address!r} (+{n}) outside 0..65535")
    if p.writable and p.table not in ("coil", "holding_register"):
        raise ValueError(f"{pre}: a {p.table} is read-only; only coils and holding registers are writable")
    if p.scale_factor_address is not None:
        if p.table not in REGISTER_TABLES or not 0 <= p.scale_factor_address <= 65535:
            raise ValueError(f"{pre}: scale_factor_address {p.scale_factor_address!r} invalid")
        if p.dtype in ("bool", "bit", "string"):
            raise ValueError(f"{pre}: a {p.dtype} point takes no scale factor")


# --------------------------------------------------------------------------- backoff
class Backoff:
    """Exponential backoff 1, 2, 4 .. max seconds with +-jitter, reset on success (case C11)."""

    def __init__(self, initial_s: float = 1.0, max_s: float = 60.0, jitter: float = 0.1,
                 rng: random.Random | None = None) -> None:
        self.initial_s, self.max_s, self.jitter = initial_s, max_s, jitter
        self._rng = rng or random.Random()
        self.failures = 0
        self.next_attempt = 0.0  # time.monotonic() when the next attempt is allowed

    def due(self, now: float | None = None) -> bool:
        return (time.monotonic() if now is None else now) >= self.next_attempt

    def failed(self, now: float | None = None) -> float:
        """Record a failure; return the delay (s) before the next attempt."""
        base = min(self.max_s, self.initial_s * (2 ** self.failures))
        self.failures += 1
        delay = base * (1.0 + self._rng.uniform(-self.jitter, self.jitter))
        self.next_attempt = (time.monotonic() if now is None else now) + delay
        return delay

    def succeeded(self) -> None:
        self.failures = 0
        self.next_attempt = 0.0


# --------------------------------------------------------------------------- link API
class _Link:
    """Common request API of TcpLink and RtuLink. Every method raises
    LinkTimeout, LinkDown, ModbusExceptionReply or MalformedReply."""

    name = "link"
    #: a standing fault of the link's configuration (one line), reported with every reading of the
    #: link until it clears; None when there is none (RtuLink: an echo heard with local_echo off)
    link_fault: str | None = None

    async def read(self, unit_id: int, table: str, address: int, count: int) -> list[int]:
        raise NotImplementedError

    async def write_coil(self, unit_id: int, address: int, on: bool) -> tuple[int, int]:
        """FC5; returns the echo (address, raw value 0xFF00 / 0x0000)."""
        raise NotImplementedError

    async def write_coils(self, unit_id: int, address: int, bits: Sequence[int]) -> tuple[int, int]:
        """FC15; returns the echo (address, quantity)."""
        raise NotImplementedError

    async def write_register(self, unit_id: int, address: int, value: int) -> tuple[int, int]:
        """FC6; returns the echo (address, value)."""
        raise NotImplementedError

    async def write_registers(self, unit_id: int, address: int, values: Sequence[int]) -> tuple[int, int]:
        """FC16; returns the echo (address, quantity)."""
        raise NotImplementedError

    async def open(self) -> None:
        """Try to connect / open now; never raises (failures back off)."""

    async def close(self) -> None:
        raise NotImplementedError


# --------------------------------------------------------------------------- TCP
class _MbapProtocol(asyncio.Protocol):
    """One TCP connection's receive side: splits the byte stream into MBAP ADUs.

    Modbus Messaging on TCP/IP Implementation Guide V1.0b, section 3.1.3: the
    MBAP header is transaction id (2 bytes), protocol id (2, always 0),
    length (2: the bytes that follow, unit id included) and unit id (1). A
    PDU is at most 253 bytes (Modbus Application Protocol V1.1b3, section
    4.1), so a length outside 2..254 or a protocol id other than 0 means the
    stream is out of step; it cannot be resynchronised, the connection is
    closed (``framing_error``).
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.adus: collections.deque[tuple[int, int, bytes]] = collections.deque()  # (tid, unit, pdu)
        #: the future a request in flight waits on (TcpLink._transact); set when ADUs arrive or the connection ends
        self.waiter: asyncio.Future | None = None
        self.lost: str | None = None  # why the connection ended, once it has
        self.framing_error: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def _wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self.framing_error:
            return
        if self.buf:  # the rest of an ADU split across reads
            self.buf += data
            buf: bytes | bytearray = self.buf
        else:  # the usual case: whole ADUs in one read, parsed in place
            buf = data
        pos, n = 0, len(buf)
        while n - pos >= 7:
            tid, pid, length, unit = _MBAP.unpack_from(buf, pos)
            if pid != 0 or not 2 <= length <= 254:
                self.framing_error = (f"MBAP header {bytes(buf[pos:pos + 7]).hex(' ')}: protocol id {pid}, "
                                      f"length {length}")
                self.buf.clear()
                pos = n = 0
                if self.transport is not None:
                    self.transport.abort()
                break
            end = pos + 6 + length
            if n < end:
                break
            self.adus.append((tid, unit, bytes(buf[pos + 7:end])))
            pos = end
        if buf is self.buf:
            del self.buf[:pos]
        elif pos < n:
            self.buf += buf[pos:]
        self._wake()

    def eof_received(self) -> bool:
        return False  # the peer closed its side (idle close): close ours too

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = type(exc).__name__ if exc is not None else "connection closed by peer"
        self.transport = None
        self._wake()


_MBAP = struct.Struct(">HHHB")  # MBAP header: transaction id, protocol id, length, unit id


def _wake_at_deadline(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)


class TcpLink(_Link):
    """One Modbus TCP connection to (host, port), shared by every unit id on it.

    Own MBAP framing over an asyncio transport (Modbus Messaging on TCP/IP
    Implementation Guide V1.0b, sections 3.1.2 and 3.1.3): one request in
    flight; each request gets the next transaction id (1..65535, never 0).
    A reply is the ADU that carries that transaction id: an ADU with any
    other id (a late reply to a request that already timed out, or a peer
    that answers with id 0) is discarded and counted in ``late_replies``,
    and the wait goes on. The reply's unit id must equal the request's
    (section 3.1.3: the server copies it), else :class:`ReplyMismatch`
    "reply from unit 7, expected 3". The reply PDU is then checked against
    its request (:meth:`_reply_pdu` and the per-function methods; Modbus
    Application Protocol V1.1b3 sections 6.1-6.6, 6.11, 6.12 and 7):
    function code equal, or equal | 0x80 for an exception of 2 bytes; read
    byte count ceil(qty / 8) or 2 x qty, and exactly that many data bytes;
    write replies exactly 4 bytes after the function code (address and
    value / quantity, compared with the request by :class:`ModbusDevice`).

    timeout_s: response timeout per request. Reconnects with :class:`Backoff`;
    after ``blackhole_after`` consecutive timeouts closes and reopens (C10/C11).
    A connection reset or closed by the peer is reopened at the next request.
    """

    def __init__(self, host: str, port: int = 502, timeout_s: float = 1.0, *, blackhole_after: int = 3,
                 backoff: Backoff | None = None) -> None:
        self.host, self.port, self.timeout_s = host, port, timeout_s
        self.name = f"{host}:{port}"
        self.blackhole_after = blackhole_after
        self.backoff = backoff or Backoff()
        self._proto: _MbapProtocol | None = None
        self._lock = asyncio.Lock()
        self._timeouts = 0
        self._tid = 0
        self._closed = False
        self.connects = 0  # successful connections (diagnostics, tests)
        self.late_replies = 0  # ADUs whose transaction id matched no request in flight (discarded)
        self.last_error: str | None = None

    @property
    def connected(self) -> bool:
        t = self._proto.transport if self._proto is not None else None
        return t is not None and not t.is_closing()

    async def open(self) -> None:
        async with self._lock:
            try:
                await self._ensure_connected()
            except LinkDown:
                pass

    async def _ensure_connected(self) -> None:
        if self._closed:
            raise LinkDown(f"{self.name}: link closed")
        if self.connected:
            return
        if self._proto is not None and self._proto.lost and not self.last_error:
            self.last_error = self._proto.lost
        self._proto = None
        now = time.monotonic()
        if not self.backoff.due(now):
            raise LinkDown(f"comm fault: {self.name} not connected ({self.last_error or 'down'}), "
                           f"next attempt in {self.backoff.next_attempt - now:.1f} s")
        loop = asyncio.get_running_loop()
        try:
            _t, proto = await asyncio.wait_for(loop.create_connection(_MbapProtocol, self.host, self.port),
                                               timeout=self.timeout_s)
        except (OSError, asyncio.TimeoutError) as e:
            self.last_error = type(e).__name__
            delay = self.backoff.failed()
            log.warning("modbus tcp %s: connect failed (%s), retry in %.1f s", self.name, self.last_error, delay)
            raise LinkDown(f"comm fault: cannot connect to {self.name}, retry in {delay:.1f} s") from None
        sock = proto.transport.get_extra_info("socket") if proto.transport is not None else None
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        self._proto = proto
        self.backoff.succeeded()
        self.connects += 1
        self._timeouts = 0
        self.last_error = None
        log.info("modbus tcp %s: connected", self.name)

    def _drop(self, why: str) -> None:
        """Close the socket after a link fault; the next request reconnects at once (a connect that
        fails then backs off)."""
        self.last_error = why
        if self._proto is not None and self._proto.transport is not None:
            self._proto.transport.abort()
        self._proto = None
        self.backoff.next_attempt = 0.0

    def _next_tid(self) -> int:
        self._tid = self._tid % 0xFFFF + 1  # 1..65535: 0 is never sent, so a reply with id 0 is never ours
        return self._tid

    def _discard(self, tid: int, unit: int, pdu: bytes, expected: int) -> str:
        self.late_replies += 1
        log.info("modbus tcp %s: discarded reply with transaction id %d (unit %d, %s), expected %d", self.name,
                 tid, unit, pdu[:8].hex(" "), expected)
        return f"reply with transaction id {tid}, expected {expected}"

    async def _transact(self, unit_id: int, pdu: bytes) -> bytes:
        """Send ``pdu`` to ``unit_id``; return the reply PDU (function code checked, exceptions raised)."""
        async with self._lock:
            await self._ensure_connected()
            proto = self._proto
            assert proto is not None and proto.transport is not None
            tid = self._next_tid()
            while proto.adus:  # arrived while no request was in flight: late, never ours
                self._discard(*proto.adus.popleft(), expected=tid)
            try:
                proto.transport.write(_MBAP.pack(tid, 0, len(pdu) + 1, unit_id) + pdu)
            except (OSError, RuntimeError) as e:
                self._drop(type(e).__name__)
                raise LinkDown(f"comm fault: {self.name} {type(e).__name__}") from None
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.timeout_s
            mismatch: str | None = None
            while True:
                while proto.adus:
                    r_tid, r_unit, r_pdu = proto.adus.popleft()
                    if r_tid != tid:
                        mismatch = self._discard(r_tid, r_unit, r_pdu, tid)
                        continue
                    self._timeouts = 0
                    if r_unit != unit_id:
                        log.warning("modbus tcp %s: reply from unit %d to a request for unit %d (transaction %d)",
                                    self.name, r_unit, unit_id, tid)
                        raise ReplyMismatch(f"reply from unit {r_unit}, expected {unit_id}")
                    return self._reply_pdu(pdu[0], r_pdu)
                if proto.framing_error:
                    why = proto.framing_error
                    self._drop("framing error")
                    raise MalformedReply(why)
                if proto.transport is None:
                    # reset / closed while we waited (includes the raw ConnectionResetError case, C10a)
                    self._drop(proto.lost or "connection lost")
                    raise LinkDown(f"comm fault: {self.name} {proto.lost or 'connection lost'}")
                if loop.time() >= deadline:
                    break
                # wait for the next ADU, the end of the connection or the deadline: a future and a timer
                # handle, not asyncio.wait_for (which makes a task per request)
                fut = proto.waiter = loop.create_future()
                timer = loop.call_at(deadline, _wake_at_deadline, fut)
                try:
                    await fut
                finally:
                    timer.cancel()
                    proto.waiter = None
            if mismatch is not None:  # the peer is alive, it answered another transaction
                self._timeouts = 0
                raise ReplyMismatch(mismatch)
            self._timeouts += 1
            if self._timeouts >= self.blackhole_after:
                log.warning("modbus tcp %s: %d consecutive timeouts, reconnecting", self.name, self._timeouts)
                self._timeouts = 0
                self._drop("black hole")
            raise LinkTimeout(f"timeout (unit {unit_id}, {self.timeout_s:g} s)")

    @staticmethod
    def _reply_pdu(function: int, rsp: bytes) -> bytes:
        """Check the reply's function code (Modbus Application Protocol V1.1b3 section 7: an exception
        response is the request's function code + 0x80 and one exception code byte)."""
        fc = rsp[0]
        if fc == function | 0x80:
            if len(rsp) != 2:
                raise MalformedReply(f"exception reply of {len(rsp)} bytes, expected 2")
            raise ModbusExceptionReply(rsp[1], function)
        if fc != function:
            raise MalformedReply(f"function code 0x{fc:02X}, expected 0x{function:02X}")
        return rsp

    @staticmethod
    def _echo4(function: int, rsp: bytes) -> tuple[int, int]:
        """Address and value / quantity of a write reply (sections 6.5, 6.6, 6.11, 6.12: 4 bytes)."""
        if len(rsp) != 5:
            raise MalformedReply(f"{len(rsp) - 1} bytes after function code 0x{function:02X}, expected 4")
        return struct.unpack(">HH", rsp[1:5])

    async def read(self, unit_id: int, table: str, address: int, count: int) -> list[int]:
        fc = READ_FUNCTION[table]
        rsp = await self._transact(unit_id, struct.pack(">BHH", fc, address, count))
        if len(rsp) < 2:
            raise MalformedReply(f"no byte count after function code 0x{fc:02X}")
        check_byte_count(table, count, rsp[1])
        data = rsp[2:]
        if len(data) != rsp[1]:
            raise MalformedReply(f"{len(data)} data bytes after byte count {rsp[1]}")
        if table in BIT_TABLES:
            return [(data[i // 8] >> (i % 8)) & 1 for i in range(count)]
        return list(struct.unpack(f">{count}H", data))

    async def write_coil(self, unit_id: int, address: int, on: bool) -> tuple[int, int]:
        rsp = await self._transact(unit_id, struct.pack(">BHH", 5, address, 0xFF00 if on else 0x0000))
        return self._echo4(5, rsp)

    async def write_coils(self, unit_id: int, address: int, bits: Sequence[int]) -> tuple[int, int]:
        n = len(bits)
        packed = bytearray((n + 7) // 8)
        for i, b in enumerate(bits):
            if b:
                packed[i // 8] |= 1 << (i % 8)
        rsp = await self._transact(unit_id, struct.pack(">BHHB", 15, address, n, len(packed)) + bytes(packed))
        return self._echo4(15, rsp)

    async def write_register(self, unit_id: int, address: int, value: int) -> tuple[int, int]:
        rsp = await self._transact(unit_id, struct.pack(">BHH", 6, address, value))
        return self._echo4(6, rsp)

    async def write_registers(self, unit_id: int, address: int, values: Sequence[int]) -> tuple[int, int]:
        vals = list(values)
        rsp = await self._transact(unit_id, struct.pack(f">BHHB{len(vals)}H", 16, address, len(vals),
                                                        2 * len(vals), *vals))
        return self._echo4(16, rsp)

    async def close(self) -> None:
        self._closed = True
        if self._proto is not None and self._proto.transport is not None:
            self._proto.transport.close()
        self._proto = None


# --------------------------------------------------------------------------- RTU framing (pure)
def crc16(data: bytes) -> int:
    """CRC-16/MODBUS (poly 0xA001 reflected, init 0xFFFF); Modbus over Serial Line v1.02 section 6.2.2.
    Appended low byte first."""
    crc = 0xFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def with_crc(frame: bytes) -> bytes:
    """frame + CRC (low byte first)."""
    return frame + struct.pack("<H", crc16(frame))


def crc_ok(frame: bytes) -> bool:
    return len(frame) >= 4 and crc16(frame[:-2]) == struct.unpack("<H", frame[-2:])[0]


def silent_interval_s(baudrate: int, bytesize: int = 8, parity: str = "N", stopbits: float = 1) -> float:
    """t3.5 (Modbus over Serial Line v1.02 section 2.5.1.1): 3.5 character times, a character being
    start + data + parity + stop bits; fixed 1.75 ms above 19200 baud. 9600 8N1 -> 3.646 ms."""
    if baudrate > 19200:
        return 0.00175
    bits = 1 + bytesize + (0 if parity.upper() == "N" else 1) + stopbits
    return 3.5 * bits / baudrate


def _candidate_lengths(buf: bytes | bytearray, i: int) -> list[int]:
    """Possible lengths of an RTU frame (reply, exception, or another master's request) starting at buf[i]."""
    n = len(buf) - i
    if n < 2:
        return []
    fc = buf[i + 1]
    if fc & 0x80:
        return [5]
    if fc in (1, 2, 3, 4):
        out = [5 + buf[i + 2]] if n >= 3 else []
        return out + [8]
    if fc in (5, 6):
        return [8]
    if fc in (15, 16):
        out = [8]
        if n >= 7:
            out.append(9 + buf[i + 6])
        return out
    return []


def scan_rtu_reply(buf: bytes | bytearray, unit_id: int, function: int,
                   reply_len: int, request: bytes | None = None) -> tuple[bytes | None, int, list[bytes]]:
    """Find the reply to a request in a receive buffer, resynchronising (case C08).

    Scans every offset for a CRC-valid frame. A frame from ``unit_id`` with
    ``function`` and exactly ``reply_len`` bytes (read: 5 + byte count;
    write: 8), or an exception frame (function | 0x80, 5 bytes) from that
    unit, is the reply. Any other CRC-valid frame (another slave, another
    function, a wrong byte count such as a late reply to an earlier poll,
    our own echo) is discarded whole; bytes that start no valid frame are
    skipped. Returns (frame or None, bytes of buf that may be dropped,
    discarded frames). Incomplete data at the end is kept for the next call.

    request: the request frame just sent (with its CRC). For functions 1-4,
    15 and 16 a correct reply never equals the request (Modbus Application
    Protocol V1.1b3, sections 6.1-6.4, 6.11, 6.12), so bytes identical to it
    are our own echo (a two-wire adapter, Modbus over Serial Line V1.02,
    section 3.3) and are discarded, even where they would pass for a reply
    (FC1/FC2 at an address whose high byte equals the reply's byte count:
    01 01 03 00 00 14 is also a valid 3-byte coil reply). For FC5 / FC6 the
    correct reply is byte-identical to the request (sections 6.5, 6.6), so
    there an identical frame is taken as the reply.
    """
    n = len(buf)
    i = 0
    pending: int | None = None  # earliest offset that may start a frame not yet complete
    foreign: list[bytes] = []
    echo = request if request and function not in (5, 6) else None
    while i < n:
        if echo is not None and buf[i:i + len(echo)] == echo:
            foreign.append(bytes(echo))  # our own request, heard back
            i += len(echo)
            pending = None
            continue
        if n - i < 3 and pending is None:
            pending = i  # too short to tell
        found = None
        for length in _candidate_lengths(buf, i):
            if i + length <= n:
                if crc_ok(bytes(buf[i:i + length])):
                    found = length
                    break
            elif pending is None:
                pending = i
        if echo is not None and found is None and pending is None and echo.startswith(bytes(buf[i:])):
            pending = i  # the start of our echo: wait for the rest
        if found is None:
            i += 1
            continue
        frame = bytes(buf[i:i + found])
        if frame[0] == unit_id and ((frame[1] == function and found == reply_len)
                                    or (frame[1] == (function | 0x80) and found == 5)):
            return frame, i + found, foreign
        foreign.append(frame)  # a whole valid frame that is not our reply: drop it
        i += found
        pending = None  # bytes before a valid frame were noise
    return None, (n if pending is None else pending), foreign


def _rtu_pdu_read(function: int, address: int, count: int) -> bytes:
    return struct.pack(">BHH", function, address, count)


# --------------------------------------------------------------------------- RTU link
class RtuLink(_Link):
    """The one owner of a serial port (RS-485 multi-drop bus).

    port: device path; baudrate, parity ("N", "E", "O"), stopbits, bytesize;
    timeout_s: response timeout after the request has left the wire.
    Serialises every request on the bus; waits the t3.5 silent interval
    after the last byte seen on the line; flushes the input before each
    request; finds the reply with :func:`scan_rtu_reply`. A port that cannot
    be opened (or fails while open) is retried with :class:`Backoff`; before
    each request the open fd is compared with what the path names now
    (stat vs fstat), so a vanished adapter or a udev link re-pointed to a
    new tty is closed (no fd kept) and reopened without a restart.
    local_echo: the adapter is a 2-wire RS-485 transceiver whose receiver
    stays enabled while it transmits, so every request comes back to us
    (Modbus over Serial Line v1.02, section 3.3, two-wire definition: one
    balanced pair carries both directions). After sending, exactly the request's bytes are read
    and compared; a difference is a line fault (bus collision, wiring, a
    broken transceiver) and the request fails with "comm fault: echo
    mismatch", as does a missing echo. Without it an echoing adapter's echo
    (bytes identical to the request just sent) is skipped by the scanner for
    FC1-4, FC15 and FC16, and the scan goes on for the real reply; the link
    then has the fault ``link_fault`` = "echo seen, local_echo is off" (also
    in ``last_error``, logged once), reported with every reading until a
    request of those functions completes without an echo. The echo of FC5 /
    FC6 is byte-identical to a correct reply (Modbus Application Protocol
    V1.1b3, sections 6.5, 6.6), so on its own a write could look
    acknowledged by a silent slave: ModbusDevice's read-back catches that,
    and local_echo must be set for such adapters.
    Counters: ``discarded_frames`` (foreign / late frames and skipped echoes),
    ``flushed_bytes`` (stale input flushed before a request),
    ``echo_faults`` (missing or mismatched local echoes), ``echoes_seen``
    (echoes heard while local_echo is off).
    """

    def __init__(self, port: str, baudrate: int = 9600, parity: str = "N", stopbits: float = 1, bytesize: int = 8,
                 timeout_s: float = 0.5, *, backoff: Backoff | None = None, local_echo: bool = False) -> None:
        parity = str(parity).upper()
        if parity not in ("N", "E", "O"):
            raise ValueError(f"serial port {port}: parity {parity!r} must be N, E or O")
        if stopbits not in (1, 1.5, 2) or bytesize not in (7, 8) or baudrate <= 0:
            raise ValueError(f"serial port {port}: unsupported settings {baudrate} {bytesize}{parity}{stopbits}")
        self.port, self.baudrate, self.parity, self.stopbits, self.bytesize = port, baudrate, parity, stopbits, bytesize
        self.timeout_s = timeout_s
        self.local_echo = bool(local_echo)
        self.name = port
        self.char_time_s = (1 + bytesize + (0 if parity == "N" else 1) + stopbits) / baudrate
        self.t35_s = silent_interval_s(baudrate, bytesize, parity, stopbits)
        self.backoff = backoff or Backoff()
        self._lock = asyncio.Lock()
        self._ser: Any = None
        self._fd: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._buf = bytearray()
        self._event = asyncio.Event()
        self._last_line_activity = 0.0  # monotonic time of the last byte seen or sent
        self._closed = False
        self.discarded_frames = 0
        self.flushed_bytes = 0
        self.echo_faults = 0
        self.echoes_seen = 0
        self.link_fault: str | None = None
        self.requests_sent = 0
        self.request_starts: list[float] = []  # monotonic start of the last requests (bounded; tests)
        self.gaps_before_request: list[float] = []  # measured silent gap before each request (bounded)
        self.opens = 0
        self.last_error: str | None = None

    @property
    def settings(self) -> tuple:
        return (self.baudrate, self.parity, self.stopbits, self.bytesize)

    @property
    def is_open(self) -> bool:
        return self._fd is not None

    async def open(self) -> None:
        async with self._lock:
            try:
                self._ensure_open()
            except LinkDown:
                pass

    def _ensure_open(self) -> None:
        if self._closed:
            raise LinkDown(f"{self.name}: link closed")
        if self._fd is not None:
            why = self._port_moved()
            if why is None:
                return
            self._fail(why)  # the adapter is gone or the path (udev by-id link) now names another device
        now = time.monotonic()
        if not self.backoff.due(now):
            raise LinkDown(f"comm fault: serial port {self.port} not open ({self.last_error}), "
                           f"retry in {self.backoff.next_attempt - now:.1f} s")
        import serial  # pyserial

        try:
            ser = serial.Serial(self.port, baudrate=self.baudrate, bytesize=self.bytesize, parity=self.parity,
                                stopbits=self.stopbits, timeout=0, write_timeout=None, exclusive=True)
        except (serial.SerialException, OSError, ValueError) as e:
            self.last_error = str(e).splitlines()[0] if str(e) else type(e).__name__
            delay = self.backoff.failed()
            log.warning("modbus rtu %s: cannot open (%s), retry in %.1f s", self.port, self.last_error, delay)
            raise LinkDown(f"comm fault: cannot open serial port {self.port}: {self.last_error}") from None
        self._ser = ser
        self._fd = ser.fileno()
        os.set_blocking(self._fd, False)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._fd, self._on_readable)
        self._buf.clear()
        self.backoff.succeeded()
        self.opens += 1
        self.last_error = None
        log.info("modbus rtu %s: open %d %d%s%g", self.port, self.baudrate, self.bytesize, self.parity, self.stopbits)

    def _port_moved(self) -> str | None:
        """Why the open fd no longer is ``port`` (path gone, or re-pointed to another device), else None."""
        try:
            now, mine = os.stat(self.port), os.fstat(self._fd)  # type: ignore[arg-type]
        except FileNotFoundError:
            return "port vanished"
        except OSError as e:
            return f"port unusable: {e.strerror or e}"
        if (now.st_rdev, now.st_ino, now.st_dev) != (mine.st_rdev, mine.st_ino, mine.st_dev):
            return "port path re-pointed to another device"
        return None

    def _on_readable(self) -> None:
        fd = self._fd
        if fd is None:
            return
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return
        except OSError as e:
            self._fail(f"read error: {e.strerror or e}")
            return
        if not data:
            return
        self._last_line_activity = time.monotonic()
        self._buf += data
        if len(self._buf) > 8192:  # noise flood: keep the tail only
            del self._buf[:-1024]
        self._event.set()

    def _fail(self, why: str) -> None:
        log.warning("modbus rtu %s: %s; closing, will reopen", self.port, why)
        self.last_error = why
        self._close_port()
        self.backoff.failed()
        self._event.set()

    def _close_port(self) -> None:
        if self._fd is not None and self._loop is not None:
            try:
                self._loop.remove_reader(self._fd)
            except Exception:  # noqa: BLE001 - loop may be closing
                pass
        if self._ser is not None:
            try:
                self._ser.close()
            except Exception:  # noqa: BLE001
                pass
        self._ser = None
        self._fd = None

    async def _wait_silent(self) -> None:
        """Wait until t3.5 has passed since the last byte on the line (bounded by timeout_s)."""
        limit = time.monotonic() + max(self.timeout_s, 0.1)
        while True:
            now = time.monotonic()
            wait = self._last_line_activity + self.t35_s - now
            if wait <= 0 or now >= limit:
                return
            await asyncio.sleep(wait)

    def _flush_input(self) -> None:
        fd = self._fd
        assert fd is not None
        try:
            termios.tcflush(fd, termios.TCIFLUSH)
        except (termios.error, OSError):
            pass
        dropped = len(self._buf)
        while True:
            try:
                data = os.read(fd, 4096)
            except (BlockingIOError, OSError):
                break
            if not data:
                break
            dropped += len(data)
        if dropped:
            self.flushed_bytes += dropped
            log.debug("modbus rtu %s: flushed %d stale bytes", self.port, dropped)
        self._buf.clear()
        self._event.clear()

    def _send(self, frame: bytes) -> None:
        fd = self._fd
        assert fd is not None
        view = memoryview(frame)
        deadline = time.monotonic() + 1.0
        while view:
            try:
                n = os.write(fd, view)
                view = view[n:]
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise OSError("serial write blocked")
                time.sleep(0.0005)

    async def _consume_echo(self, frame: bytes, deadline: float) -> None:
        """Read and drop exactly our own echoed request (local_echo); a mismatch or no echo is a line fault."""
        n = len(frame)
        while len(self._buf) < n:
            if self._fd is None:
                raise LinkDown(f"comm fault: serial port {self.port} failed ({self.last_error})")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.echo_faults += 1
                log.warning("modbus rtu %s: no local echo of %s (got %s)", self.port, frame.hex(" "),
                            bytes(self._buf).hex(" ") or "nothing")
                self._buf.clear()
                raise LinkDown("comm fault: no local echo")
            self._event.clear()
            try:
                await asyncio.wait_for(self._event.wait(), remaining)
            except asyncio.TimeoutError:
                pass
        echo = bytes(self._buf[:n])
        del self._buf[:n]
        if echo != frame:
            self.echo_faults += 1
            log.warning("modbus rtu %s: echo mismatch: sent %s, heard %s", self.port, frame.hex(" "), echo.hex(" "))
            self._buf.clear()  # whatever follows a garbled echo cannot be trusted; the next request flushes anyway
            raise LinkDown("comm fault: echo mismatch")

    async def transact(self, unit_id: int, pdu: bytes, reply_len: int) -> bytes:
        """Send ``pdu`` to ``unit_id``; return the reply frame (without CRC checks left to do).

        reply_len: expected full frame length of a normal reply. Raises
        LinkTimeout, LinkDown or ModbusExceptionReply.
        """
        async with self._lock:
            self._ensure_open()
            await self._wait_silent()
            if self._fd is None:
                raise LinkDown(f"comm fault: serial port {self.port} closed")
            self._flush_input()
            frame = with_crc(bytes([unit_id]) + pdu)
            start = time.monotonic()
            self.gaps_before_request.append(start - self._last_line_activity)
            self.request_starts.append(start)
            del self.gaps_before_request[:-64], self.request_starts[:-64]
            try:
                self._send(frame)
            except OSError as e:
                self._fail(f"write error: {e.strerror or e}")
                raise LinkDown(f"comm fault: serial port {self.port} write failed") from None
            self.requests_sent += 1
            tx_end = start + len(frame) * self.char_time_s
            self._last_line_activity = tx_end
            deadline = tx_end + self.timeout_s
            if self.local_echo:
                await self._consume_echo(frame, deadline)
            function = pdu[0]
            echo_heard = False
            other_unit: int | None = None  # a reply of our shape from another unit (ReplyMismatch)
            while True:
                reply, consumed, foreign = scan_rtu_reply(self._buf, unit_id, function, reply_len,
                                                          None if self.local_echo else frame)
                if foreign:
                    self.discarded_frames += len(foreign)
                    for f in foreign:
                        if f == frame and not self.local_echo:
                            echo_heard = True
                        elif f[0] != unit_id and other_unit is None and (
                                (f[1] == function and len(f) == reply_len)
                                or (f[1] == function | 0x80 and len(f) == 5)):
                            other_unit = f[0]
                        log.debug("modbus rtu %s: discarded frame %s while polling unit %d", self.port, f.hex(" "),
                                  unit_id)
                if reply is not None:
                    del self._buf[:consumed]
                    if echo_heard:
                        self._echo_heard(frame)
                    elif function not in (5, 6):  # an echo would have been told apart: the adapter does not echo
                        self._echo_absent()
                    if reply[1] & 0x80:
                        raise ModbusExceptionReply(reply[2], function)
                    return reply
                if consumed:
                    del self._buf[:consumed]
                if self._fd is None:
                    raise LinkDown(f"comm fault: serial port {self.port} failed ({self.last_error})")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    if echo_heard:
                        self._echo_heard(frame)
                    if other_unit is not None:
                        raise ReplyMismatch(f"reply from unit {other_unit}, expected {unit_id}")
                    raise LinkTimeout(f"timeout (unit {unit_id}, {self.timeout_s:g} s)")
                self._event.clear()
                try:
                    await asyncio.wait_for(self._event.wait(), remaining)
                except asyncio.TimeoutError:
                    pass

    def _echo_heard(self, frame: bytes) -> None:
        """Our own request came back while local_echo is off: a configuration fault of the link."""
        self.echoes_seen += 1
        if self.link_fault is None:
            log.warning("modbus rtu %s: heard our own request %s back, but local_echo is off: the adapter "
                        "echoes (2-wire RS-485); set local_echo: true for this port", self.port, frame.hex(" "))
        self.link_fault = ECHO_OFF_FAULT
        self.last_error = ECHO_OFF_FAULT

    def _echo_absent(self) -> None:
        if self.link_fault is not None:
            log.info("modbus rtu %s: no echo any more; link fault cleared", self.port)
            self.link_fault = None
        if self.last_error == ECHO_OFF_FAULT:
            self.last_error = None

    async def read(self, unit_id: int, table: str, address: int, count: int) -> list[int]:
        fc = READ_FUNCTION[table]
        nbytes = (count + 7) // 8 if table in BIT_TABLES else 2 * count
        frame = await self.transact(unit_id, _rtu_pdu_read(fc, address, count), 5 + nbytes)
        check_byte_count(table, count, frame[2])
        data = frame[3:-2]
        if table in BIT_TABLES:
            return [(data[i // 8] >> (i % 8)) & 1 for i in range(count)]
        return list(struct.unpack(f">{count}H", data))

    async def write_coil(self, unit_id: int, address: int, on: bool) -> tuple[int, int]:
        frame = await self.transact(unit_id, struct.pack(">BHH", 5, address, 0xFF00 if on else 0), 8)
        return struct.unpack(">HH", frame[2:6])

    async def write_coils(self, unit_id: int, address: int, bits: Sequence[int]) -> tuple[int, int]:
        n = len(bits)
        packed = bytearray((n + 7) // 8)
        for i, b in enumerate(bits):
            if b:
                packed[i // 8] |= 1 << (i % 8)
        pdu = struct.pack(">BHHB", 15, address, n, len(packed)) + bytes(packed)
        frame = await self.transact(unit_id, pdu, 8)
        return struct.unpack(">HH", frame[2:6])

    async def write_register(self, unit_id: int, address: int, value: int) -> tuple[int, int]:
        frame = await self.transact(unit_id, struct.pack(">BHH", 6, address, value), 8)
        return struct.unpack(">HH", frame[2:6])

    async def write_registers(self, unit_id: int, address: int, values: Sequence[int]) -> tuple[int, int]:
        vals = list(values)
        pdu = struct.pack(f">BHHB{len(vals)}H", 16, address, len(vals), 2 * len(vals), *vals)
        frame = await self.transact(unit_id, pdu, 8)
        return struct.unpack(">HH", frame[2:6])

    async def close(self) -> None:
        self._closed = True
        self._close_port()


# --------------------------------------------------------------------------- links registry
class ModbusLinks:
    """Owns the shared links: one TcpLink per (host, port), one RtuLink per serial port."""

    def __init__(self) -> None:
        self._tcp: dict[tuple[str, int], TcpLink] = {}
        self._rtu: dict[str, RtuLink] = {}

    def tcp(self, host: str, port: int = 502, timeout_s: float = 1.0) -> TcpLink:
        """The shared link to host:port (created on first use; later timeouts are ignored)."""
        key = (host, int(port))
        link = self._tcp.get(key)
        if link is None:
            link = self._tcp[key] = TcpLink(host, int(port), timeout_s)
        return link

    def rtu(self, port: str, baudrate: int = 9600, parity: str = "N", stopbits: float = 1, bytesize: int = 8,
            timeout_s: float = 0.5, local_echo: bool = False) -> RtuLink:
        """The one owner of serial ``port``. Raises ValueError when the port is already
        configured with other line settings, local_echo included (two devices cannot
        disagree on one bus or its adapter)."""
        key = os.path.realpath(port)
        link = self._rtu.get(key)
        want = (baudrate, str(parity).upper(), stopbits, bytesize)
        if link is None:
            link = self._rtu[key] = RtuLink(port, baudrate, parity, stopbits, bytesize, timeout_s,
                                            local_echo=local_echo)
        elif link.local_echo != bool(local_echo):
            raise ValueError(f"serial port {port} is already used with local_echo={link.local_echo}; "
                             f"cannot also use it with local_echo={bool(local_echo)}")
        elif link.settings != want:
            b, p, s, n = link.settings
            raise ValueError(f"serial port {port} is already used at {b} {n}{p}{s:g}; "
                             f"cannot also use it at {baudrate} {bytesize}{str(parity).upper()}{stopbits:g}")
        return link

    @property
    def links(self) -> list[_Link]:
        return [*self._tcp.values(), *self._rtu.values()]

    async def close_all(self) -> None:
        for link in self.links:
            await link.close()
        self._tcp.clear()
        self._rtu.clear()


# --------------------------------------------------------------------------- device
@dataclass
class _UnitState:
    failures: int = 0
    offline: bool = False
    next_try: float = 0.0
    reason: str = ""


@dataclass
class _FaultState:
    reason: str
    next_try: float


class _BlockPlan:
    """How one planned block's reply becomes Readings, worked out once per block: its request label, the
    :class:`drivers.codec.BlockDecoder` of its points (those without a scale-factor register), and per point
    the config-order slot, tag, unit and entries (a slice of the reply: Reading.raw). ``slow``: the spans that go through
    ModbusDevice._make_reading instead (a point with a scale-factor register, and that register)."""

    __slots__ = ("block", "label", "decoder", "slots", "contiguous", "tags", "units", "slices", "slow")

    def __init__(self, block: Block, points: dict[str, ModbusPoint], slots: dict[str, int]) -> None:
        self.block = block
        self.label = str(block)
        fast: list[tuple[int, ModbusPoint]] = []
        self.slow: list[Span] = []
        for span in block.spans:
            p = points.get(span.key) if isinstance(span.key, str) else None
            if p is None or p.scale_factor_address is not None:
                self.slow.append(span)
            else:
                fast.append((span.address - block.address, p))
        self.decoder = BlockDecoder(fast, block.count, bits=block.table in BIT_TABLES)
        self.slots = [slots[p.tag] for _off, p in fast]
        lo = self.slots[0] if self.slots else 0
        #: (first, end) when the points are the config-order slots first..end-1 in order: one slice assignment
        self.contiguous = (lo, lo + len(self.slots)) if self.slots == list(range(lo, lo + len(self.slots))) else None
        self.tags = [p.tag for _off, p in fast]
        self.units = [p.unit for _off, p in fast]
        self.slices = [slice(lo, hi) for lo, hi in self.decoder.spans]


@dataclass(frozen=True)
class HeartbeatPoint:
    """The watchdog point a PLC watches (gateway.safety.heartbeat): table "holding_register" or "coil", 0-based
    PDU address, mode "count" (holding register only: 0..65535) or "toggle" (0 / 1), reference: the
    address as configured (e.g. "40101") for messages."""

    table: str
    address: int
    mode: str = "count"
    reference: str | None = None


class ModbusDevice(Device):
    """One configured Modbus device (one or more unit ids behind one link).

    name: device name (in every message). link: a TcpLink or RtuLink from
    :class:`ModbusLinks`. unit_id: the device's default unit id (points
    carry their own). points: the tags. protocol: "modbus_tcp" | "modbus_rtu".
    max_registers_per_read / max_bits_per_read: per-device request limits
    (clamped to 125 / 2000). offline_after: consecutive failed cycles
    (timeout, exception 0A/0B, link down) before a unit goes to the slow
    schedule of slow_poll_s (C09); a link that is down (TCP reconnect backoff,
    serial port missing) fails fast and does not count. max_gap: registers bridged between points
    (0: never read unmapped addresses). retries: immediate retries after a
    timeout. busy_retries / busy_backoff_s: retries of exception 05/06 (C07).
    config_fault_retry_s: retry period of a point that answered 01/02/03.
    write_attempts: bounded attempts of a write whose echo / read-back fails
    or that timed out (C04). heartbeat: the PLC watchdog point :meth:`beat` writes
    (:class:`HeartbeatPoint`; None: the device has none).
    Raises ValueError (one line: device, tag, why) for an inconsistent config.
    """

    def __init__(self, name: str, link: _Link, unit_id: int, points: list[ModbusPoint], protocol: str,
                 max_registers_per_read: int = 125, max_bits_per_read: int = 2000, offline_after: int = 3,
                 slow_poll_s: float = 30.0, *, max_gap: int = 0, retries: int = 1, busy_retries: int = 3,
                 busy_backoff_s: float = 0.05, config_fault_retry_s: float = 60.0, write_attempts: int = 2,
                 heartbeat: HeartbeatPoint | None = None) -> None:
        if protocol not in ("modbus_tcp", "modbus_rtu"):
            raise ValueError(f"{name}: protocol {protocol!r} must be modbus_tcp or modbus_rtu")
        if max_registers_per_read < 1 or max_bits_per_read < 1 or offline_after < 1:
            raise ValueError(f"{name}: read limits and offline_after must be >= 1")
        self.name = name
        self.protocol = protocol
        self.link = link
        self.unit_id = unit_id
        self.offline_after = offline_after
        self.slow_poll_s = slow_poll_s
        self.retries = retries
        self.busy_retries = busy_retries
        self.busy_backoff_s = busy_backoff_s
        self.config_fault_retry_s = config_fault_retry_s
        self.write_attempts = max(1, write_attempts)
        self.points: dict[str, ModbusPoint] = {}
        for p in points:
            if p.tag in self.points:
                raise ValueError(f"{name}: tag {p.tag!r} defined twice")
            _validate_point(name, p, protocol)
            self.points[p.tag] = p
        spans: list[Span] = []
        for p in self.points.values():
            spans.append(Span(p.tag, p.unit_id, p.table, p.address, p.count))
            if p.scale_factor_address is not None:
                spans.append(Span(("sf", p.tag), p.unit_id, p.table, p.scale_factor_address, 1))
        try:
            self.planner = ReadPlanner(spans, max_registers_per_read, max_bits_per_read, max_gap)
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None
        self._units: dict[int, _UnitState] = {}
        self._faults: dict[tuple, _FaultState] = {}  # (unit, table, address, count) -> config fault
        self._slots = {tag: i for i, tag in enumerate(self.points)}  # tag -> index in config order
        self._plans: dict[int, _BlockPlan] = {}  # id(block) -> its decoding plan (made at first read)
        self._closed = False
        self.last_requests: list[str] = []  # protocol requests of the last read (diagnostics / probe)
        if heartbeat is not None:
            if heartbeat.table not in ("holding_register", "coil"):
                raise ValueError(f"{name}: heartbeat must be a holding register or a coil, not {heartbeat.table}")
            if heartbeat.mode == "count" and heartbeat.table != "holding_register":
                raise ValueError(f"{name}: heartbeat mode count needs a holding register")
        self.heartbeat = heartbeat
        self.heartbeat_reference = None if heartbeat is None else (
            heartbeat.reference or f"{heartbeat.table} {heartbeat.address}")

    # -- Device interface ------------------------------------------------------------------
    @property
    def tags(self) -> list[str]:
        return list(self.points)

    @property
    def link_id(self) -> str:
        """The shared link's name: "host:port" (TCP) or the serial port (RTU)."""
        return str(self.link.name)

    def link_state(self) -> dict[str, Any]:
        """The shared link's state (TCP connected / serial port open) and last error; "offline" while this
        device's unit is on the slow retry schedule (then the state is "down" too)."""
        link = self.link
        up = getattr(link, "connected", None)
        if up is None:
            up = getattr(link, "is_open", None)
        offline = bool(self.unit_offline())
        return {"state": "up" if up and not offline else "down", "error": getattr(link, "last_error", None),
                "offline": offline}

    def describe(self, tag: str) -> str:
        """"holding 0 (40001)": the table, the 0-based protocol (PDU) address and the 1-based reference
        (Modicon convention, Modbus Application Protocol v1.1b3 section 4.4)."""
        p = self.points.get(tag)
        if p is None:
            return "?"
        return f"{_TABLE_WORD[p.table]} {p.address} ({reference(p.table, p.address)})"

    def format_raw(self, reading: Reading) -> str:
        """Registers as hex words, coils / discrete inputs as bits."""
        raw = getattr(reading, "raw", None)
        p = self.points.get(reading.tag)
        if (p is not None and p.table in BIT_TABLES and isinstance(raw, (list, tuple)) and raw
                and all(isinstance(x, int) for x in raw)):
            return " ".join(str(int(x)) for x in raw)
        return super().format_raw(reading)

    async def beat(self, value: int) -> None:
        """Write heartbeat ``value`` once: FC5 on a coil (Modbus Application Protocol V1.1b3 6.5), FC6 on a
        holding register (6.6). The normal response is an echo of the request; any other echo raises
        ValueError. No read-back (the PLC itself is the judge). Link faults and exception replies raise."""
        hb = self.heartbeat
        if hb is None:
            raise NotImplementedError(f"{self.name}: no heartbeat point configured")
        if hb.table == "coil":
            echo = await self.link.write_coil(self.unit_id, hb.address, bool(value))
            expect = (hb.address, 0xFF00 if value else 0x0000)
        else:
            echo = await self.link.write_register(self.unit_id, hb.address, value)
            expect = (hb.address, value)
        if tuple(echo) != expect:
            raise ValueError(f"echo {tuple(echo)} differs from {expect}")

    async def start(self) -> None:
        await self.link.open()

    async def close(self) -> None:
        self._closed = True  # links are shared; ModbusLinks.close_all() closes them

    def unit_offline(self, unit_id: int | None = None) -> bool:
        """True while the unit is on the slow schedule (communication fault)."""
        st = self._units.get(self.unit_id if unit_id is None else unit_id)
        return bool(st and st.offline)

    # -- reading ---------------------------------------------------------------------------
    def _unit(self, unit_id: int) -> _UnitState:
        st = self._units.get(unit_id)
        if st is None:
            st = self._units[unit_id] = _UnitState()
        return st

    def _plan(self, block: Block) -> "_BlockPlan":
        """The decoding plan of ``block`` (made once per planned block; a split makes new blocks)."""
        bp = self._plans.get(id(block))
        if bp is None or bp.block is not block:
            if len(self._plans) > 2 * len(self.planner.blocks) + 8:  # blocks replaced by splits or a replan
                live = {id(b) for b in self.planner.blocks}
                self._plans = {k: v for k, v in self._plans.items() if k in live}
            bp = self._plans[id(block)] = _BlockPlan(block, self.points, self._slots)
        return bp

    def _unit_failed(self, unit_id: int, reason: str, now: float) -> None:
        st = self._unit(unit_id)
        st.failures += 1
        st.reason = reason
        if st.failures >= self.offline_after:
            if not st.offline:
                log.warning("%s: unit %d offline after %d consecutive failures (%s); polling every %g s",
                            self.name, unit_id, st.failures, reason, self.slow_poll_s)
            st.offline = True
            st.next_try = now + self.slow_poll_s

    def _unit_ok(self, unit_id: int) -> None:
        st = self._unit(unit_id)
        if st.offline:
            log.info("%s: unit %d back online", self.name, unit_id)
        st.failures, st.offline, st.reason = 0, False, ""

    async def _read_block(self, block: Block, attempts_timeout: int, label: str | None = None) -> list[int]:
        busy = 0
        timeouts = 0
        while True:
            try:
                self.last_requests.append(label or str(block))
                return await self.link.read(block.unit_id, block.table, block.address, block.count)
            except ModbusExceptionReply as e:
                if e.code in BUSY_CODES and busy < self.busy_retries:
                    busy += 1
                    await asyncio.sleep(self.busy_backoff_s * (2 ** (busy - 1)))
                    continue
                raise
            except LinkTimeout:
                if timeouts < attempts_timeout:
                    timeouts += 1
                    continue
                raise

    async def read(self) -> list[Reading]:
        """Read every point once; one Reading per tag in config order. Never raises for a device fault."""
        now = time.monotonic()
        self.last_requests = []
        data: dict[Any, tuple[list[int], Block]] = {}  # span key -> (entries, block)
        errors: dict[Any, str] = {}
        failed_units: dict[int, str] = {}  # timeout / 0A / 0B this cycle: counts towards offline
        down_units: dict[int, str] = {}
        ok_units: set[int] = set()
        done: list[tuple[_BlockPlan, list[int]]] = []  # blocks read, with their entries
        queue = list(self.planner.blocks)
        while queue:
            block = queue.pop(0)
            st = self._unit(block.unit_id)
            if block.unit_id in failed_units or block.unit_id in down_units:
                why = failed_units.get(block.unit_id) or down_units[block.unit_id]
                self._set_error(block, errors, f"comm fault: unit {block.unit_id} ({why})")
                continue
            if st.offline and now < st.next_try:
                self._set_error(block, errors, f"comm fault: unit {block.unit_id} offline ({st.reason}), "
                                               f"retry in {st.next_try - now:.0f} s")
                continue
            fkey = (block.unit_id, block.table, block.address, block.count)
            fault = self._faults.get(fkey)
            if fault and now < fault.next_try:
                self._set_error(block, errors, fault.reason)
                continue
            bp = self._plan(block)
            try:
                entries = await self._read_block(block, 0 if st.offline else self.retries, bp.label)
            except ModbusExceptionReply as e:
                reason = exception_reason(e.code)
                ok_units.add(block.unit_id)  # the unit answered
                if e.code == 0x02:
                    new = self.planner.split(block)
                    if new:
                        log.info("%s: %s answered %s; split into %s", self.name, block, reason,
                                 ", ".join(map(str, new)))
                        queue[0:0] = new
                        continue
                if e.code in CONFIG_FAULT_CODES:
                    if fkey not in self._faults:
                        log.warning("%s: %s (%s) answered %s; check the configuration; retrying every %g s",
                                    self.name, block, ", ".join(str(s.key) for s in block.spans), reason,
                                    self.config_fault_retry_s)
                    self._faults[fkey] = _FaultState(reason, now + self.config_fault_retry_s)
                elif e.code in GATEWAY_CODES:
                    ok_units.discard(block.unit_id)
                    failed_units[block.unit_id] = reason
                self._set_error(block, errors, reason)
                continue
            except LinkTimeout as e:
                # "timeout", or what came back instead of our reply ("reply from unit 7, expected 3")
                reason = str(e) if isinstance(e, ReplyMismatch) else "timeout"
                failed_units[block.unit_id] = reason
                self._set_error(block, errors, reason)
                continue
            except LinkDown as e:
                # the link itself is down and backing off (fails fast): not a silent unit, no slow schedule
                down_units[block.unit_id] = "link down"
                self._set_error(block, errors, str(e) if str(e).startswith("comm fault") else f"comm fault: {e}")
                continue
            except MalformedReply as e:
                self._set_error(block, errors, f"malformed reply: {e}")
                continue
            ok_units.add(block.unit_id)
            if self._faults:
                self._faults.pop(fkey, None)
            done.append((bp, entries))
            for span in bp.slow:  # points with a scale-factor register and those registers: _make_reading
                data[span.key] = (block.slice(entries, span), block)
        for u, reason in failed_units.items():
            self._unit_failed(u, reason, now)
        for u in ok_units - set(failed_units):
            self._unit_ok(u)
        ts = time.time()
        # The poll's Readings are made in one go with the cyclic garbage collector paused: they are all alive
        # until they are returned, so each of the collections their allocations would trigger (one per 700
        # objects, a full one every few polls) would only move them to an older generation; with it paused,
        # they usually die by reference count (the previous poll's, when its caller lets go) before a
        # collection. Only allocation runs here, bounded by the tag count; the previous state is restored.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            out = self._readings(done, data, errors, ts)
        finally:
            if gc_was_enabled:
                gc.enable()
        if getattr(self.link, "link_fault", None):
            return [self._with_link_fault(r) for r in out]
        return out

    def _readings(self, done: list[tuple["_BlockPlan", list[int]]], data: dict, errors: dict,
                  ts: float) -> list[Reading]:
        """One Reading per tag in config order: each block read decoded at once and its Readings made as a
        column (Reading.good_many); a point whose block failed, or with a scale-factor register, through
        :meth:`_make_reading`."""
        mono = time.monotonic()
        out: list[Reading | None] = [None] * len(self._slots)
        good_many = Reading.good_many
        made = 0
        for bp, entries in done:
            values, bad = bp.decoder.decode(entries)
            raws = list(map(entries.__getitem__, bp.slices))  # each point's own entries: Reading.raw
            if bad is None:
                rs = good_many(bp.tags, values, bp.units, raws, ts, mono)
            else:
                rs = [Reading.bad(tag, unit, _decode_reason(bad[j]), ts, raw=raw) if j in bad
                      else Reading.good(tag, value, unit, ts, mono, raw)
                      for j, (tag, unit, value, raw) in enumerate(zip(bp.tags, bp.units, values, raws))]
            made += len(rs)
            if bp.contiguous is not None:
                out[bp.contiguous[0]:bp.contiguous[1]] = rs
            else:
                for slot, r in zip(bp.slots, rs):
                    out[slot] = r
        if made < len(out):  # a failed block, or a point with a scale factor
            for i, p in enumerate(self.points.values()):
                if out[i] is None:
                    out[i] = self._make_reading(p, data, errors, ts)
        return out  # type: ignore[return-value]

    def _with_link_fault(self, r: Reading) -> Reading:
        """A standing fault of the link's configuration (RtuLink: "echo seen, local_echo is off") goes
        with every reading of the link: a GOOD reading becomes UNCERTAIN (the value is the real reply's,
        the link is misconfigured), any other keeps its quality and gets the fault appended."""
        fault = getattr(self.link, "link_fault", None)
        if not fault:
            return r
        if r.quality is Quality.GOOD:
            return replace(r, quality=Quality.UNCERTAIN, reason=f"link fault: {fault}")
        return replace(r, reason=f"{r.reason or r.quality.value}; link fault: {fault}")

    @staticmethod
    def _set_error(block: Block, errors: dict[Any, str], reason: str) -> None:
        for span in block.spans:
            errors[span.key] = reason

    def _make_reading(self, p: ModbusPoint, data: dict, errors: dict, ts: float) -> Reading:
        if p.tag not in data:
            return Reading.bad(p.tag, p.unit, errors.get(p.tag, "comm fault"), ts)
        regs, _ = data[p.tag]
        sf = None
        if p.scale_factor_address is not None:
            if ("sf", p.tag) not in data:
                return Reading.bad(p.tag, p.unit, "scale factor: " + errors.get(("sf", p.tag), "comm fault"), ts,
                                   raw=regs)
            sf = decode(data[("sf", p.tag)][0], "int16")
        try:
            value = decode_value(regs, p, sf)
        except ValueError as e:  # CodecError (sentinel, NaN ...) or wrong length etc.: never a value
            return Reading.bad(p.tag, p.unit, _decode_reason(e), ts, raw=regs)
        return Reading(tag=p.tag, value=value, unit=p.unit, quality=Quality.GOOD, ts=ts, raw=regs)

    # -- writing ---------------------------------------------------------------------------
    def _werr(self, p: ModbusPoint, why: str) -> WriteError:
        return WriteError(f"{self.name}: write {p.tag} (unit {p.unit_id} {p.table} {p.address}): {why}")

    async def write(self, tag: str, value: Any) -> Reading:
        """Write ``value`` (engineering units) to ``tag``, check the echo, read back, compare.

        Coil: FC5 (FC15 for a bool array). Holding register: FC6 for one
        register, FC16 for several or when write_single_as_fc16. The echo must
        repeat address and value (FC5/FC6) or address and quantity (FC15/FC16);
        the read-back must return exactly the written registers / bits.
        Timeouts, busy and echo / read-back mismatches are retried up to
        ``write_attempts`` times; exceptions 01/02/03 are not retried.
        Returns the read-back Reading. Raises WriteError (one line: device,
        tag, unit, table, address, why) on any failure - never swallowed.
        """
        p = self.points.get(tag)
        if p is None:
            raise WriteError(f"{self.name}: no tag {tag!r}")
        if not p.writable:
            raise self._werr(p, "point is not writable")
        if p.dtype == "bit":
            raise self._werr(p, "bit-in-register outputs are not supported; map the output to a coil or register")
        try:
            regs = encode_value(value, p)
        except ValueError as e:
            raise self._werr(p, f"value {value!r}: {e}") from None
        last = "no attempt"
        for attempt in range(self.write_attempts):
            try:
                echo, expect = await self._send_write(p, regs)
            except ModbusExceptionReply as e:
                last = exception_reason(e.code)
                if e.code in BUSY_CODES:
                    await asyncio.sleep(self.busy_backoff_s)
                    continue
                raise self._werr(p, last) from None
            except MalformedReply as e:
                last = f"malformed reply: {e}"
                log.warning("%s", self._werr(p, last))
                continue
            except ModbusLinkError as e:
                last = str(e)
                continue
            if tuple(echo) != tuple(expect):
                last = f"echo mismatch: sent {_fmt(expect)}, device answered {_fmt(echo)}"
                log.warning("%s", self._werr(p, last))
                continue
            try:
                back = await self.link.read(p.unit_id, p.table, p.address, p.count)
            except ModbusExceptionReply as e:
                last = f"read-back failed: {exception_reason(e.code)}"
                continue
            except MalformedReply as e:
                last = f"read-back failed: malformed reply: {e}"
                continue
            except ModbusLinkError as e:
                last = f"read-back failed: {e}"
                continue
            if list(back) != list(regs):
                last = f"read-back mismatch: wrote {_fmt(regs)}, read {_fmt(back)}"
                log.warning("%s", self._werr(p, last))
                continue
            try:
                v = decode_value(back, p)
            except (CodecError, ValueError) as e:
                return self._with_link_fault(Reading.bad(p.tag, p.unit, str(e), raw=back))
            return self._with_link_fault(Reading(tag=p.tag, value=v, unit=p.unit, quality=Quality.GOOD,
                                                 ts=time.time(), raw=back))
        fault = getattr(self.link, "link_fault", None)
        suffix = f"; link fault: {fault}" if fault else ""
        raise self._werr(p, f"{last} (after {self.write_attempts} attempts){suffix}")

    async def _send_write(self, p: ModbusPoint, regs: list[int]) -> tuple[tuple, tuple]:
        """Send the write; return (echo, expected echo)."""
        if p.table == "coil":
            if len(regs) == 1:
                echo = await self.link.write_coil(p.unit_id, p.address, bool(regs[0]))
                return echo, (p.address, 0xFF00 if regs[0] else 0x0000)
            echo = await self.link.write_coils(p.unit_id, p.address, regs)
            return echo, (p.address, len(regs))
        if len(regs) == 1 and not p.write_single_as_fc16:
            echo = await self.link.write_register(p.unit_id, p.address, regs[0])
            return echo, (p.address, regs[0])
        echo = await self.link.write_registers(p.unit_id, p.address, regs)
        return echo, (p.address, len(regs))


def _decode_reason(e: ValueError) -> str:
    """The reason of a BAD reading whose registers did not decode: a CodecError's own text ("nan", "sentinel
    0xFFFF: value not available", "out of range: NAMUR NE 43 ..."), any other ValueError as "decode error: ..."."""
    return str(e) if isinstance(e, CodecError) else f"decode error: {e}"


def _fmt(vals: Iterable[int]) -> str:
    return " ".join(f"{v:04X}" for v in vals)


# --------------------------------------------------------------------------- from a config section
def from_config(section: Any, ctx: Any) -> ModbusDevice:
    """The ModbusDevice of one validated ``modbus_tcp`` / ``modbus_rtu`` device section (drivers.registry).

    ctx: drivers.registry.BuildContext. The link comes from the build's shared pool
    (``ctx.links.pool("modbus", ModbusLinks)``): one TcpLink per (host, port), one RtuLink per serial port
    (a relative port path is resolved against the config's directory). A ``heartbeat:`` section becomes the
    device's :class:`HeartbeatPoint`."""
    d = section
    links: ModbusLinks = ctx.links.pool("modbus", ModbusLinks)
    points = []
    for t in d.tags:
        table, address = t.table_address()
        scaling = Scaling(scale=t.scale, offset=t.offset,
                          raw_range=tuple(t.raw_range) if t.raw_range else None,
                          eng_range=tuple(t.eng_range) if t.eng_range else None)
        points.append(ModbusPoint(tag=t.name, unit_id=d.unit_id, table=table, address=address,
                                  dtype=t.type, order=t.order, length=t.length, bit=t.bit,
                                  str_len=t.str_len, scaling=scaling, sentinels=t.sentinel_values(),
                                  unit=t.unit, writable=t.writable,
                                  write_single_as_fc16=t.write_single_as_fc16))
    timeout_s = d.timeout_ms / 1000
    if d.protocol == "modbus_tcp":
        link: _Link = links.tcp(d.host, d.port, timeout_s)
    else:
        port = str(ctx.resolve(d.port)) if not d.port.startswith("/") else d.port
        link = links.rtu(port, d.baudrate, d.parity, d.stopbits, d.bytesize, timeout_s,
                         local_echo=d.local_echo)
    heartbeat = None
    hb = getattr(d, "heartbeat", None)
    if hb is not None:
        table, address = hb.table_address()
        ref = hb.address if isinstance(hb.address, (int, str)) else f"{table} {address}"
        heartbeat = HeartbeatPoint(table, address, hb.mode, str(ref))
    return ModbusDevice(d.name, link, d.unit_id, points, d.protocol,
                        max_registers_per_read=d.max_registers_per_read,
                        max_bits_per_read=d.max_bits_per_read, heartbeat=heartbeat)
