"""Modbus read planning: coalesce points into block reads (pure, no I/O).

Rules (Modbus Application Protocol v1.1b3):
- FC3 / FC4 (read holding / input registers) ask for 1..125 registers
  (section 6.3 / 6.4); FC1 / FC2 (read coils / discrete inputs) for 1..2000
  bits (section 6.1 / 6.2). A device may accept less; the per-device limit
  (``max_registers`` / ``max_bits``) is never exceeded (case C06).
- Points are grouped per (unit id, table); spans that touch or overlap are
  merged, and spans separated by at most ``max_gap`` unmapped entries are
  bridged (0 = never read an address no point asked for).
- A block that answers exception 02 (illegal data address) because it spans
  a hole is split (:meth:`ReadPlanner.split`): first at its bridged gaps, then
  into single points. The split is remembered as *cuts* that every later plan
  honours (C06 hole case).
- A reply's byte count must be 2 x quantity for registers and
  ceil(quantity / 8) for bits (sections 6.1-6.4); :func:`check_byte_count`.

Shapes: a :class:`Span` is one point's extent (address = 0-based PDU address,
count = registers or bits); a :class:`Block` is one read request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Hashable, Iterable, Sequence

__all__ = [
    "REGISTER_TABLES",
    "BIT_TABLES",
    "READ_FUNCTION",
    "PROTOCOL_MAX_REGISTERS",
    "PROTOCOL_MAX_BITS",
    "Span",
    "Block",
    "plan",
    "ReadPlanner",
    "expected_byte_count",
    "check_byte_count",
    "MalformedReply",
]

PROTOCOL_MAX_REGISTERS = 125
PROTOCOL_MAX_BITS = 2000
REGISTER_TABLES = frozenset({"holding_register", "input_register"})
BIT_TABLES = frozenset({"coil", "discrete_input"})
#: table -> Modbus read function code
READ_FUNCTION = {"coil": 1, "discrete_input": 2, "holding_register": 3, "input_register": 4}


class MalformedReply(ValueError):
    """A reply that does not fit its request (byte count, length); no value from it is used."""


@dataclass(frozen=True)
class Span:
    """One point's extent: ``key`` identifies the point (e.g. its tag)."""

    key: Hashable
    unit_id: int
    table: str
    address: int
    count: int

    def __post_init__(self) -> None:
        if self.table not in READ_FUNCTION:
            raise ValueError(f"{self.key}: unknown table {self.table!r}")
        if self.address < 0 or self.count < 1 or self.address + self.count > 65536:
            raise ValueError(f"{self.key}: address {self.address} count {self.count} outside 0..65535")

    @property
    def end(self) -> int:
        """One past the last address."""
        return self.address + self.count


@dataclass(frozen=True)
class Block:
    """One read request: unit id, table, start address, quantity, and the spans it serves."""

    unit_id: int
    table: str
    address: int
    count: int
    spans: tuple[Span, ...] = field(default=())

    @property
    def function(self) -> int:
        """The Modbus read function code (1, 2, 3 or 4)."""
        return READ_FUNCTION[self.table]

    @property
    def end(self) -> int:
        return self.address + self.count

    def slice(self, data: Sequence, span: Span) -> list:
        """The entries of ``data`` (this block's reply) that belong to ``span``."""
        lo = span.address - self.address
        return list(data[lo:lo + span.count])

    def __str__(self) -> str:
        return f"unit {self.unit_id} FC{self.function} {self.table} @{self.address} x{self.count}"


def _limit(table: str, max_registers: int, max_bits: int) -> int:
    if table in BIT_TABLES:
        return max(1, min(max_bits, PROTOCOL_MAX_BITS))
    return max(1, min(max_registers, PROTOCOL_MAX_REGISTERS))


def plan(spans: Iterable[Span], max_registers: int = PROTOCOL_MAX_REGISTERS,
         max_bits: int = PROTOCOL_MAX_BITS, max_gap: int = 0,
         cuts: Iterable[tuple[int, str, int]] = ()) -> list[Block]:
    """Coalesce spans into blocks.

    max_registers / max_bits: the per-device limit, clamped to the protocol
    maxima 125 / 2000. max_gap: largest run of unrequested entries bridged
    inside a block. cuts: (unit_id, table, address) boundaries no block may
    cross (a block never holds both address-1 and address). A span longer
    than the limit cannot be read and raises ValueError (a config error).
    Returns blocks ordered by unit id, table, address; every span is in
    exactly one block.
    """
    if max_gap < 0:
        raise ValueError("max_gap must be >= 0")
    cutset = set(cuts)
    groups: dict[tuple[int, str], list[Span]] = {}
    for s in spans:
        groups.setdefault((s.unit_id, s.table), []).append(s)
    blocks: list[Block] = []
    for (unit, table) in sorted(groups, key=lambda k: (k[0], READ_FUNCTION[k[1]])):
        limit = _limit(table, max_registers, max_bits)
        members = sorted(groups[(unit, table)], key=lambda s: (s.address, s.end))
        cur: list[Span] = []
        start = end = 0
        for s in members:
            if s.count > limit:
                raise ValueError(f"{s.key}: {s.count} entries at {s.address} exceed the per-read limit of {limit}")
            if cur:
                new_end = max(end, s.end)
                crosses_cut = bool(cutset) and any((unit, table, a) in cutset for a in range(start + 1, new_end))
                if s.address - end <= max_gap and new_end - start <= limit and not crosses_cut:
                    cur.append(s)
                    end = new_end
                    continue
                blocks.append(Block(unit, table, start, end - start, tuple(cur)))
            cur, start, end = [s], s.address, s.end
        if cur:
            blocks.append(Block(unit, table, start, end - start, tuple(cur)))
    return blocks


class ReadPlanner:
    """The live read plan of one device, which learns from exception 02.

    ``blocks`` is the current plan. :meth:`split` is called when a block
    answered exception 02: it records cuts and returns the replacement
    blocks (None when the block holds one span only: that point itself is
    misconfigured). The cuts persist for every later :meth:`replan`.
    """

    def __init__(self, spans: Iterable[Span], max_registers: int = PROTOCOL_MAX_REGISTERS,
                 max_bits: int = PROTOCOL_MAX_BITS, max_gap: int = 0) -> None:
        self.spans = list(spans)
        self.max_registers = max_registers
        self.max_bits = max_bits
        self.max_gap = max_gap
        self.cuts: set[tuple[int, str, int]] = set()
        self.blocks: list[Block] = plan(self.spans, max_registers, max_bits, max_gap)

    def replan(self) -> list[Block]:
        """Recompute ``blocks`` from the spans and the remembered cuts."""
        self.blocks = plan(self.spans, self.max_registers, self.max_bits, self.max_gap, self.cuts)
        return self.blocks

    def split(self, block: Block) -> list[Block] | None:
        """Split ``block`` after an exception 02; remember the split.

        First pass: cut at every bridged gap (runs of contiguous spans stay
        together). If the block has no gap (or was already cut there): cut
        between every span. Returns the new blocks that replace ``block``
        (also updated in ``blocks``), or None if it holds a single span /
        cannot be split further.
        """
        starts = sorted({s.address for s in block.spans})
        if len(block.spans) < 2 or len(starts) < 2:
            return None
        new_cuts: set[tuple[int, str, int]] = set()
        reach = block.address
        for s in sorted(block.spans, key=lambda s: s.address):
            if s.address > reach:  # a bridged gap before s
                new_cuts.add((block.unit_id, block.table, s.address))
            reach = max(reach, s.end)
        if not new_cuts:
            new_cuts = {(block.unit_id, block.table, a) for a in starts[1:]}
        self.cuts |= new_cuts
        replacement = plan(block.spans, self.max_registers, self.max_bits, self.max_gap, self.cuts)
        idx = self.blocks.index(block) if block in self.blocks else len(self.blocks)
        self.blocks[idx:idx + 1] = replacement
        return replacement


def expected_byte_count(table: str, count: int) -> int:
    """Byte count of a correct read reply: 2 x count for registers, ceil(count / 8) for bits."""
    if table in BIT_TABLES:
        return (count + 7) // 8
    if table in REGISTER_TABLES:
        return 2 * count
    raise ValueError(f"unknown table {table!r}")


def check_byte_count(table: str, count: int, byte_count: int) -> None:
    """Raise MalformedReply unless ``byte_count`` is what a read of ``count`` entries returns (C06)."""
    want = expected_byte_count(table, count)
    if byte_count != want:
        raise MalformedReply(f"byte count {byte_count}, expected {want} for {count} {table.replace('_', ' ')}s")
