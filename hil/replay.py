"""Replay peers: answer captured Modbus requests with the captured responses, byte for byte.

Real traffic (tests/data/real/, see its ATTRIBUTION.md) is turned into a
table of outcomes: for each request key (unit id, request PDU bytes) the
responses in capture order, ``None`` where the capture holds no answer (the
device never replied: a timeout in the field). A replay peer serves that
table:

* :class:`ModbusTcpReplay`: an asyncio Modbus/TCP server on 127.0.0.1. A
  request whose (unit id, PDU) was captured gets the next captured response:
  the captured PDU and unit id unchanged, the MBAP transaction id set to the
  live request's (a client must match it; Modbus Messaging on TCP/IP v1.0b
  section 4.2), protocol id and length as captured. A captured unanswered
  request, an exhausted key and an unknown request get no answer at all.
* :class:`RtuReplay`: a responder on the device side of a paced pty pair
  (:class:`hil.serial_line.SerialLine`): it frames requests by their length
  (8 bytes for function codes 1-6, 9 + byte count for 15/16) and CRC, and
  writes the captured reply frame (CRC included, raw bytes) to the line.

Inputs: :func:`tcp_table` from a pcap (via :mod:`hil.pcap`) and
:func:`rtu_table` from the ``*.rtu.tsv`` frame lists (columns t_s, line,
baud, crc, hex; see the MANIFEST). :func:`pair_rtu` decides which RTU frame
answers which request.

``loop=True`` replays each key's sequence again from its start once it is
exhausted (for long-running demos); tests keep the default (no answer when
exhausted) so every value read can be matched to one captured response.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import tty
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from hil.pcap import Transaction, modbus_adus, transactions

__all__ = ["ReplayTable", "RtuFrame", "load_rtu_tsv", "pair_rtu", "tcp_table", "tcp_transactions", "rtu_table",
           "ModbusTcpReplay",
           "RtuReplay", "rtu_request_length"]

log = logging.getLogger(__name__)

Key = tuple[int, bytes]  # (unit id, request PDU)


class ReplayTable:
    """Request key -> captured outcomes in capture order (bytes: a response; None: unanswered).

    For TCP an outcome is the response PDU; for RTU the whole reply frame with CRC."""

    def __init__(self, pairs: Iterable[tuple[Key, bytes | None]] = (), loop: bool = False) -> None:
        self.outcomes: dict[Key, list[bytes | None]] = {}
        for key, out in pairs:
            self.outcomes.setdefault(key, []).append(out)
        self.loop = loop
        self._pos: Counter[Key] = Counter()
        self.served: Counter[str] = Counter()  # answered / unanswered / exhausted / unknown

    def next(self, key: Key) -> bytes | None:
        """The next outcome for ``key`` (None: do not answer); advances the key's position."""
        seq = self.outcomes.get(key)
        if seq is None:
            self.served["unknown"] += 1
            return None
        i = self._pos[key]
        if i >= len(seq):
            if not self.loop:
                self.served["exhausted"] += 1
                return None
            i = 0
        self._pos[key] = i + 1
        out = seq[i]
        self.served["answered" if out is not None else "unanswered"] += 1
        return out

    def remaining(self, key: Key) -> int:
        return len(self.outcomes.get(key, ())) - self._pos[key]


def tcp_table(path: str | Path, server: str | None = None, server_port: int = 502, loop: bool = False) -> ReplayTable:
    """A ReplayTable of the Modbus/TCP transactions in a pcap (optionally of one server IP only).

    Outcome = the response ADU's unit id byte + PDU is kept as (unit, pdu); the
    table stores the raw response ADU (MBAP + PDU) so the peer sends its bytes."""
    txs = transactions(modbus_adus(path, server_port))
    return ReplayTable(((t.request.unit, t.request.pdu), t.response.raw if t.response else None)
                       for t in txs if server is None or t.request.conn[2] == server)


def tcp_transactions(path: str | Path, server: str | None = None, server_port: int = 502) -> list[Transaction]:
    """The captured transactions (optionally of one server IP), in request order."""
    return [t for t in transactions(modbus_adus(path, server_port)) if server is None or t.request.conn[2] == server]


# --------------------------------------------------------------------------- RTU frame lists
@dataclass(frozen=True)
class RtuFrame:
    """One frame of a ``*.rtu.tsv`` file: time (s from capture start), analyser line label, baud, raw ADU."""

    t_s: float
    line: str
    baud: int
    crc_ok: bool
    raw: bytes


def load_rtu_tsv(path: str | Path) -> list[RtuFrame]:
    """Read a ``*.rtu.tsv`` frame list ('#' lines are comments). Raises ValueError (one line) on a bad row."""
    out = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        cols = line.split("\t")
        if len(cols) != 5:
            raise ValueError(f"{path}:{n}: expected 5 tab-separated columns, got {len(cols)}")
        try:
            out.append(RtuFrame(float(cols[0]), cols[1], int(cols[2]), cols[3] == "OK", bytes.fromhex(cols[4])))
        except ValueError as e:
            raise ValueError(f"{path}:{n}: {e}") from None
    return out


def rtu_request_length(buf: bytes | bytearray) -> int | None:
    """Length of the RTU request frame starting buf[0] (None: not enough bytes to tell).

    Modbus Application Protocol v1.1b3 section 6: functions 1-6 carry 4 bytes
    after the code (8-byte frame with address and CRC); 15 and 16 carry
    address, quantity, a byte count N and N bytes (9 + N). Other codes: 0
    (not a request this replay knows)."""
    if len(buf) < 2:
        return None
    fc = buf[1]
    if 1 <= fc <= 6:
        return 8
    if fc in (15, 16):
        return 9 + buf[6] if len(buf) >= 7 else None
    return 0


def _answers(req: bytes, rsp: bytes) -> bool:
    """True when ``rsp`` has the shape of a reply to ``req`` (same slave; function or exception; length)."""
    if rsp[0] != req[0]:
        return False
    fc = req[1]
    if rsp[1] == fc | 0x80:
        return len(rsp) == 5
    if rsp[1] != fc:
        return False
    if fc in (1, 2):
        count = struct.unpack(">H", req[4:6])[0]
        return len(rsp) == 5 + (count + 7) // 8
    if fc in (3, 4):
        count = struct.unpack(">H", req[4:6])[0]
        return len(rsp) == 5 + 2 * count
    if fc in (5, 6):
        return rsp == req  # an echo
    if fc in (15, 16):
        return len(rsp) == 8 and rsp[2:6] == req[2:6]
    return False


def _is_request(frame: bytes) -> bool:
    n = rtu_request_length(frame)
    return bool(n) and n == len(frame)


def pair_rtu(frames: list[RtuFrame], master_line: str | None = None) -> list[tuple[bytes, bytes | None]]:
    """(request, reply or None) in capture order.

    master_line: the analyser line label of the master's transmit side
    ("TX" for brainchild-io-16do, "RX" for wizmodbus, where the labels are as
    seen by the device); None for a single half-duplex line (the flow meter),
    where a frame is a request when it has a request's shape and no request
    is waiting, and a reply when it has the shape of a reply to the waiting
    request (so an FC5/FC6 echo follows its request)."""
    out: list[tuple[bytes, bytes | None]] = []
    pending: bytes | None = None
    for f in frames:
        raw = f.raw
        if master_line is not None:
            is_req = f.line == master_line
        else:
            is_req = pending is None or not _answers(pending, raw)
            if is_req and not _is_request(raw):
                raise ValueError(f"frame at {f.t_s} s ({raw.hex(' ')}) is neither a request nor a reply")
        if is_req:
            if pending is not None:
                out.append((pending, None))
            pending = raw
        else:
            if pending is None or not _answers(pending, raw):
                raise ValueError(f"frame at {f.t_s} s ({raw.hex(' ')}) answers no waiting request")
            out.append((pending, raw))
            pending = None
    if pending is not None:
        out.append((pending, None))
    return out


def rtu_table(pairs: list[tuple[bytes, bytes | None]], loop: bool = False) -> ReplayTable:
    """Key (slave, request PDU without address and CRC) -> reply frames (raw, CRC included)."""
    return ReplayTable((((req[0], req[1:-2]), rsp) for req, rsp in pairs), loop=loop)


# --------------------------------------------------------------------------- TCP peer
class ModbusTcpReplay:
    """Modbus/TCP replay server on ``host`` (port 0: any free port), serving a ReplayTable.

    Use as ``async with ModbusTcpReplay(table) as srv:`` then connect to
    ``srv.port``. Counters: ``connects``, ``requests`` (list of (unit, pdu))."""

    def __init__(self, table: ReplayTable, host: str = "127.0.0.1", port: int = 0) -> None:
        self.table, self.host, self._port = table, host, port
        self.connects = 0
        self.requests: list[Key] = []
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task] = set()

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._client, self.host, self._port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for w in list(self._writers):
                w.transport.abort()
            for t in list(self._tasks):
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> "ModbusTcpReplay":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connects += 1
        self._writers.add(writer)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            while True:
                hdr = await reader.readexactly(7)
                tid, _pid, length, unit = struct.unpack(">HHHB", hdr)
                if length < 2:
                    break
                pdu = await reader.readexactly(length - 1)
                self.requests.append((unit, pdu))
                raw = self.table.next((unit, pdu))
                if raw is None:
                    continue
                writer.write(struct.pack(">H", tid) + raw[2:])
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._writers.discard(writer)
            self._tasks.discard(task)  # type: ignore[arg-type]
            writer.close()


# --------------------------------------------------------------------------- RTU peer
class RtuReplay:
    """Replay responder on the device-side tty ``path`` of a SerialLine (or any raw tty).

    Frames requests by length (:func:`rtu_request_length`) and CRC; a frame
    that fails the CRC is dropped with its first byte (resynchronising).
    Counters: ``requests`` (raw request frames seen), ``crc_errors``."""

    def __init__(self, path: str, table: ReplayTable) -> None:
        self.path, self.table = path, table
        self.requests: list[bytes] = []
        self.crc_errors = 0
        self._fd: int | None = None
        self._buf = bytearray()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        self._fd = os.open(self.path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(self._fd)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._fd, self._readable)

    async def stop(self) -> None:
        if self._fd is not None:
            assert self._loop is not None
            self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = None

    async def __aenter__(self) -> "RtuReplay":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _readable(self) -> None:
        from drivers.modbus import crc_ok

        assert self._fd is not None
        try:
            self._buf += os.read(self._fd, 4096)
        except (BlockingIOError, OSError):
            return
        while True:
            n = rtu_request_length(self._buf)
            if n is None or len(self._buf) < max(n, 1):
                return
            if n == 0 or not crc_ok(bytes(self._buf[:n])):
                self.crc_errors += n != 0
                del self._buf[0]
                continue
            frame = bytes(self._buf[:n])
            del self._buf[:n]
            self.requests.append(frame)
            reply = self.table.next((frame[0], frame[1:-2]))
            if reply is not None:
                os.write(self._fd, reply)
