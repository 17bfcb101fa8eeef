"""A small classic-pcap reader for Modbus/TCP captures: frames -> TCP streams -> MBAP ADUs.

Only the standard library (struct). What it reads:

* libpcap "classic" files (not pcapng): magic 0xA1B2C3D4 (microsecond) or
  0xA1B23C4D (nanosecond) in either byte order; link types 1 (Ethernet II,
  with 802.1Q VLAN tags skipped) and 113 (Linux cooked capture, SLL).
  Reference: the libpcap file format (draft-ietf-opsawg-pcap, sections 4-5).
* IPv4 (RFC 791; header length from IHL, fragments other than the first are
  skipped, which Modbus traffic never needs) and TCP (RFC 9293; data offset,
  sequence numbers modulo 2**32).
* Reassembly per TCP stream direction: segments are delivered in sequence
  order; retransmitted and overlapping bytes are used once; a hole that the
  capture never fills (a frame the sniffer lost) is skipped at the end of
  the stream or when more than ``MAX_PENDING`` later segments are waiting,
  and the ADU splitter then restarts at the next segment (Modbus masters send
  each ADU at the start of a segment), counting the lost bytes in
  :attr:`StreamStats.gap_bytes`.
* MBAP splitting (Modbus Messaging on TCP/IP Implementation Guide v1.0b,
  section 3.1.3): transaction id (2), protocol id (2, must be 0), length
  (2, = unit id + PDU, 2..254 since a PDU is at most 253 bytes), unit id (1),
  then the PDU. Bytes that cannot start a valid header are skipped one at a
  time and counted as junk.

The direction of an ADU is decided by the port: to ``server_port`` (502) is a
request, from it a response. :func:`transactions` pairs each request with the
response on the same connection that carries the same transaction id (the
client's match rule, section 4.2 of the implementation guide); a request
without one is "unanswered" (a timeout in the capture).

Errors: :class:`PcapError` (one line) for a file that is not a classic pcap,
is truncated in its global header, or has an unsupported link type. A
record truncated at the end of the file ends the iteration quietly (a
capture cut off by the sniffer), and is counted in :attr:`PcapFile.truncated`.
"""

from __future__ import annotations

import ipaddress
import struct
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

__all__ = ["PcapError", "TcpSegment", "Adu", "Transaction", "StreamStats", "PcapFile", "read_segments",
           "modbus_adus", "transactions", "function_counts", "per_packet_counts"]

LINKTYPE_ETHERNET = 1
LINKTYPE_LINUX_SLL = 113
ETH_IPV4, ETH_VLAN, ETH_QINQ = 0x0800, 0x8100, 0x88A8
MAX_PENDING = 64  # out-of-order segments held back before a hole is declared lost

TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_ACK = 0x01, 0x02, 0x04, 0x08, 0x10


class PcapError(ValueError):
    """The file is not a readable classic pcap; str() is one line naming the file."""


@dataclass(frozen=True)
class TcpSegment:
    """One captured IPv4/TCP packet. ts: capture time, seconds since the epoch (float)."""

    ts: float
    src: str
    sport: int
    dst: str
    dport: int
    seq: int
    flags: int
    payload: bytes


@dataclass(frozen=True)
class Adu:
    """One Modbus/TCP application data unit.

    conn: (client ip, client port, server ip, server port), the same for both
    directions. is_request: True for client -> server. ts: capture time of the
    segment that completed the ADU. raw: MBAP header + PDU, byte-exact.
    """

    ts: float
    conn: tuple[str, int, str, int]
    is_request: bool
    tid: int
    pid: int
    unit: int
    pdu: bytes
    raw: bytes

    @property
    def function(self) -> int:
        """The function code byte (with 0x80 set in an exception response)."""
        return self.pdu[0] if self.pdu else -1


@dataclass(frozen=True)
class Transaction:
    """A request and its response (None: the capture holds no answer)."""

    request: Adu
    response: Adu | None


@dataclass
class StreamStats:
    """Reassembly counters of one file: bytes that the capture lost (holes), retransmitted bytes
    used once, bytes skipped because no MBAP header could start there."""

    streams: int = 0
    gap_bytes: int = 0
    gaps: int = 0
    retransmitted_bytes: int = 0
    junk_bytes: int = 0


@dataclass
class PcapFile:
    """Header facts of a pcap file; filled by :func:`read_segments`."""

    path: str
    linktype: int = 0
    nanosecond: bool = False
    records: int = 0
    truncated: int = 0
    non_tcp: int = 0


def _records(path: str | Path, info: PcapFile) -> Iterator[tuple[float, bytes]]:
    data = Path(path).read_bytes()
    if len(data) < 24:
        raise PcapError(f"{path}: not a pcap file (only {len(data)} bytes)")
    magic_le = struct.unpack("<I", data[:4])[0]
    magic_be = struct.unpack(">I", data[:4])[0]
    if magic_le in (0xA1B2C3D4, 0xA1B23C4D):
        endian, magic = "<", magic_le
    elif magic_be in (0xA1B2C3D4, 0xA1B23C4D):
        endian, magic = ">", magic_be
    elif data[:4] == b"\x0a\x0d\x0d\x0a":
        raise PcapError(f"{path}: pcapng is not supported; convert with `editcap -F pcap`")
    else:
        raise PcapError(f"{path}: not a classic pcap file (magic {data[:4].hex()})")
    info.nanosecond = magic == 0xA1B23C4D
    _vmaj, _vmin, _tz, _sig, _snap, linktype = struct.unpack(endian + "HHiIII", data[4:24])
    info.linktype = linktype & 0x0FFFFFFF
    if info.linktype not in (LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL):
        raise PcapError(f"{path}: link type {info.linktype} not supported (Ethernet 1 or Linux SLL 113)")
    div = 1e9 if info.nanosecond else 1e6
    off = 24
    rec = struct.Struct(endian + "IIII")
    while off + 16 <= len(data):
        sec, frac, incl, _orig = rec.unpack_from(data, off)
        off += 16
        if off + incl > len(data):
            info.truncated += 1
            return
        info.records += 1
        yield sec + frac / div, data[off:off + incl]
        off += incl
    if off != len(data):
        info.truncated += 1


def _ipv4_payload(frame: bytes, linktype: int) -> bytes | None:
    if linktype == LINKTYPE_ETHERNET:
        if len(frame) < 14:
            return None
        etype = struct.unpack_from(">H", frame, 12)[0]
        off = 14
        while etype in (ETH_VLAN, ETH_QINQ) and len(frame) >= off + 4:
            etype = struct.unpack_from(">H", frame, off + 2)[0]
            off += 4
    else:  # Linux cooked capture v1: 16-byte header, protocol at 14
        if len(frame) < 16:
            return None
        etype = struct.unpack_from(">H", frame, 14)[0]
        off = 16
    return frame[off:] if etype == ETH_IPV4 else None


def read_segments(path: str | Path, info: PcapFile | None = None) -> Iterator[TcpSegment]:
    """Every IPv4/TCP packet of a classic pcap file, in file order.

    Raises PcapError (see module docstring). ``info`` (optional) receives the
    header facts and counters."""
    info = info or PcapFile(str(path))
    for ts, frame in _records(path, info):
        ip = _ipv4_payload(frame, info.linktype)
        if ip is None or len(ip) < 20 or ip[0] >> 4 != 4:
            info.non_tcp += 1
            continue
        ihl = (ip[0] & 0x0F) * 4
        total_len, frag, proto = struct.unpack_from(">H", ip, 2)[0], struct.unpack_from(">H", ip, 6)[0], ip[9]
        if proto != 6 or ihl < 20 or (frag & 0x1FFF):
            info.non_tcp += 1
            continue
        ip = ip[:total_len] if 0 < total_len <= len(ip) else ip  # drop Ethernet padding
        tcp = ip[ihl:]
        if len(tcp) < 20:
            info.non_tcp += 1
            continue
        sport, dport, seq, _ack, off_flags = struct.unpack_from(">HHIIH", tcp, 0)
        doff = (off_flags >> 12) * 4
        src = str(ipaddress.IPv4Address(ip[12:16]))
        dst = str(ipaddress.IPv4Address(ip[16:20]))
        yield TcpSegment(ts, src, sport, dst, dport, seq, off_flags & 0x3F, bytes(tcp[doff:]))


def _seq_diff(a: int, b: int) -> int:
    """a - b in sequence space (RFC 9293 section 3.4), as a signed number."""
    d = (a - b) & 0xFFFFFFFF
    return d - (1 << 32) if d >= (1 << 31) else d


class _Direction:
    """One direction of one TCP connection: in-order byte delivery + MBAP splitting."""

    def __init__(self, conn: tuple[str, int, str, int], is_request: bool, stats: StreamStats) -> None:
        self.conn, self.is_request, self.stats = conn, is_request, stats
        self.next_seq: int | None = None
        self.pending: dict[int, tuple[float, bytes]] = {}
        self.buf = bytearray()
        self.out: list[Adu] = []

    def syn(self, seq: int) -> None:
        self.next_seq = (seq + 1) & 0xFFFFFFFF
        self.pending.clear()
        self.buf.clear()

    def add(self, ts: float, seq: int, payload: bytes) -> None:
        if self.next_seq is None:
            self.next_seq = seq  # the capture started mid-connection
        if _seq_diff(seq + len(payload), self.next_seq) <= 0:
            self.stats.retransmitted_bytes += len(payload)
            return
        old = self.pending.get(seq)
        if old is None or len(old[1]) < len(payload):
            self.pending[seq] = (ts, payload)
        self._drain()
        if len(self.pending) > MAX_PENDING:
            self._skip_hole()

    def _drain(self) -> None:
        assert self.next_seq is not None
        progressed = True
        while progressed and self.pending:
            progressed = False
            for seq in list(self.pending):
                ts, data = self.pending[seq]
                start = _seq_diff(seq, self.next_seq)
                if start > 0:
                    continue
                del self.pending[seq]
                end = start + len(data)
                if end <= 0:
                    self.stats.retransmitted_bytes += len(data)
                    continue
                self.stats.retransmitted_bytes += -start
                self.buf += data[-start:]
                self.next_seq = (self.next_seq + end) & 0xFFFFFFFF
                self._split(ts)
                progressed = True

    def _skip_hole(self) -> None:
        """The capture lost bytes: continue at the earliest waiting segment, restart ADU framing there."""
        assert self.next_seq is not None
        first = min(self.pending, key=lambda s: _seq_diff(s, self.next_seq))  # type: ignore[arg-type]
        lost = _seq_diff(first, self.next_seq)
        self.stats.gaps += 1
        self.stats.gap_bytes += lost
        self.stats.junk_bytes += len(self.buf)
        self.buf.clear()
        self.next_seq = first
        self._drain()

    def finish(self) -> None:
        while self.pending:
            self._skip_hole()
        self.stats.junk_bytes += len(self.buf)
        self.buf.clear()

    def _split(self, ts: float) -> None:
        buf = self.buf
        while len(buf) >= 7:
            tid, pid, length, unit = struct.unpack_from(">HHHB", buf, 0)
            if pid != 0 or not 2 <= length <= 254:
                del buf[0]
                self.stats.junk_bytes += 1
                continue
            if len(buf) < 6 + length:
                return
            raw = bytes(buf[:6 + length])
            del buf[:6 + length]
            self.out.append(Adu(ts, self.conn, self.is_request, tid, pid, unit, raw[7:], raw))


def modbus_adus(path: str | Path, server_port: int = 502, stats: StreamStats | None = None) -> list[Adu]:
    """Every Modbus/TCP ADU of a capture, both directions, sorted by capture time.

    server_port: the Modbus server's TCP port (502). stats: optional
    StreamStats to receive the reassembly counters. Raises PcapError."""
    stats = stats if stats is not None else StreamStats()
    dirs: dict[tuple[str, int, str, int], _Direction] = {}
    for seg in read_segments(path):
        if seg.dport == server_port:
            conn, is_req = (seg.src, seg.sport, seg.dst, seg.dport), True
        elif seg.sport == server_port:
            conn, is_req = (seg.dst, seg.dport, seg.src, seg.sport), False
        else:
            continue
        key = (seg.src, seg.sport, seg.dst, seg.dport)
        d = dirs.get(key)
        if d is None:
            d = dirs[key] = _Direction(conn, is_req, stats)
        if seg.flags & TCP_SYN:
            d.syn(seg.seq)
            continue
        if seg.payload:
            d.add(seg.ts, seg.seq, seg.payload)
    stats.streams = len(dirs)
    out: list[Adu] = []
    for d in dirs.values():
        d.finish()
        out += d.out
    out.sort(key=lambda a: a.ts)
    return out


def transactions(adus: Iterable[Adu]) -> list[Transaction]:
    """Pair requests and responses per connection by transaction id, in capture order.

    A response is matched to the oldest open request on the same connection
    with the same transaction id and unit id; responses that match nothing
    are dropped (the request was not captured). Returns one Transaction per
    request, in request order."""
    open_reqs: dict[tuple, list[int]] = defaultdict(list)
    result: list[list] = []
    for a in sorted(adus, key=lambda x: x.ts):
        key = (a.conn, a.tid, a.unit)
        if a.is_request:
            open_reqs[key].append(len(result))
            result.append([a, None])
        elif open_reqs.get(key):
            result[open_reqs[key].pop(0)][1] = a
    return [Transaction(req, rsp) for req, rsp in result]


def function_counts(adus: Iterable[Adu]) -> dict[int, tuple[int, int]]:
    """Function code (exception bit cleared) -> (requests, responses)."""
    req: Counter[int] = Counter()
    rsp: Counter[int] = Counter()
    for a in adus:
        (req if a.is_request else rsp)[a.function & 0x7F] += 1
    return {fc: (req[fc], rsp[fc]) for fc in sorted(set(req) | set(rsp))}


def per_packet_counts(path: str | Path, server_port: int = 502) -> dict[int, tuple[int, int]]:
    """Function code -> (requests, responses) counted packet by packet, without reassembly.

    The naive method of simple capture tools (and of the counts in
    tests/data/real/ATTRIBUTION.md, made with dpkt): each TCP payload is split
    into MBAP ADUs on its own, a header whose protocol id is not 0 ends the
    payload, a length running past the payload is cut there, and
    retransmitted segments count again. Kept to check the reader against
    those published counts; use :func:`modbus_adus` for the real traffic."""
    req: Counter[int] = Counter()
    rsp: Counter[int] = Counter()
    for seg in read_segments(path):
        if server_port not in (seg.sport, seg.dport):
            continue
        p, off = seg.payload, 0
        while len(p) - off >= 8:
            _tid, pid, length, _unit, fc = struct.unpack_from(">HHHBB", p, off)
            if pid != 0:
                break
            if fc & 0x7F:  # function code 0 does not exist: a segment starting mid-ADU
                (req if seg.dport == server_port else rsp)[fc & 0x7F] += 1
            off += 6 + max(length, 2)
    return {fc: (req[fc], rsp[fc]) for fc in sorted(set(req) | set(rsp))}
