"""The block decoder (drivers.codec.BlockDecoder) against the per-value codec (decode_value), its reference.

Every type and every register order that drivers/codec.py accepts (the 4-letter orders for every type, the
8-letter forms for 64-bit types, AB / BA for 16-bit types, lower case), with identity, scale/offset and
raw_range scalings and sentinels, over random register contents (hypothesis, with the special words that make
NaN, infinity, sentinels and the NAMUR NE 43 band likely): the value of each point (type and bits: repr), or
the error (CodecError or plain ValueError, and its text) is the same as decode_value's on that point's
registers. Then a ModbusDevice read over TCP gives, tag by tag, the Reading the per-value path gives
(value, quality, reason, raw), and Reading.good_many makes the Readings that Reading(...) makes.
"""

from __future__ import annotations

import dataclasses
import math
import struct

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from drivers.codec import BlockDecoder, CodecError, Scaling, decode_value, register_count
from drivers.modbus import ModbusDevice, ModbusLinks, ModbusPoint
from gateway.model import Quality, Reading, TimeSource

# ------------------------------------------------------------------------------------------------ strategies
NUMERIC = ("int16", "uint16", "int32", "uint32", "float32", "int64", "uint64", "float64")
ORDERS_4 = ("ABCD", "CDAB", "BADC", "DCBA")
#: every spelling normalise_order accepts, per type (the 8-letter forms only for 64-bit, AB/BA only for 1 register)
ORDERS = {t: ORDERS_4 + ("abcd", "cdab", "badc", "dcba") for t in NUMERIC + ("bit", "string")}
for t in ("int64", "uint64", "float64"):
    ORDERS[t] += ("ABCDEFGH", "GHEFCDAB", "BADCFEHG", "HGFEDCBA")
for t in ("int16", "uint16", "bit"):
    ORDERS[t] += ("AB", "BA", "ba")
TYPE_ORDERS = [(t, o) for t in NUMERIC + ("bit", "string") for o in ORDERS[t]]

#: register words that make the interesting raw values: NaN / infinity halves, sentinels, extremes, 4-20 mA counts
SPECIAL_WORDS = [0x0000, 0xFFFF, 0x8000, 0x7FFF, 0x7FC0, 0xFFC0, 0x7F80, 0xFF80, 0x7FF8, 0x7FF0, 0xFFF0, 0x0001,
                 0x0080, 0x0E10, 0x0FA0, 0x4E20, 0x5208, 0x3F80, 0x0000]
word = st.one_of(st.integers(0, 0xFFFF), st.sampled_from(SPECIAL_WORDS))
SENTINELS = [0xFFFF, 0x8000, -32768, -1, 0, 1, 0x7FFF, 0xFFFFFFFF, 0x80000000, 0x7FC00000, 0xFFC00000,
             0x7FF8000000000000, 0xFFFFFFFFFFFFFFFF, 0x8000000000000000, -2147483648]
sentinels = st.lists(st.one_of(st.sampled_from(SENTINELS), st.integers(-2 ** 63, 2 ** 64 - 1)), max_size=3)
finite = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e12, max_value=1e12)
scalings = st.one_of(
    st.just(Scaling()),
    st.builds(Scaling, scale=finite.filter(lambda x: x != 0), offset=finite),
    st.builds(Scaling, scale=st.sampled_from([0.1, 0.01, 1e300, -1e300, 2.5]), offset=st.sampled_from([0.0, -40.0])),
    st.just(Scaling(raw_range=(4000, 20000), eng_range=(0.0, 100.0))),
    st.just(Scaling(raw_range=(0, 27648), eng_range=(-50.0, 150.0))),
    st.builds(lambda lo, span, e: Scaling(raw_range=(lo, lo + span), eng_range=(0.0, e)),
              st.integers(-1000, 1000), st.integers(1, 40000), st.sampled_from([1.0, 100.0, 1e308])),
)


@st.composite
def points(draw, dtype=None, order=None):
    """A register point of any type and order (or of the given ones), scalar mostly, sometimes an array."""
    dtype = dtype or draw(st.sampled_from(NUMERIC + ("bit", "string")))
    order = order or draw(st.sampled_from(ORDERS[dtype]))
    length = draw(st.sampled_from([1, 1, 1, 1, 2, 3]))
    bit = str_len = None
    if dtype == "bit":
        bit = draw(st.integers(0, 15))
        length = draw(st.integers(1, 16 - bit)) if length > 1 else 1
    if dtype == "string":
        str_len = draw(st.integers(1, 9))
    numeric = dtype in NUMERIC
    return ModbusPoint(tag="t", unit_id=1, table="holding_register", address=0, dtype=dtype, order=order,
                       length=length, bit=bit, str_len=str_len,
                       scaling=draw(scalings) if numeric else Scaling(),
                       sentinels=tuple(draw(sentinels)) if numeric else ())


def reference(registers: list[int], offset: int, p: ModbusPoint) -> tuple[str, str]:
    """What the per-value codec makes of the point: ("ok", repr(value)) or (error kind, message)."""
    n = register_count(p.dtype, p.length, p.str_len)
    try:
        return "ok", repr(decode_value(registers[offset:offset + n], p))
    except CodecError as e:
        return "codec", str(e)
    except ValueError as e:
        return "value", str(e)


def from_block(values: list, bad: dict | None, j: int) -> tuple[str, str]:
    if bad is not None and j in bad:
        e = bad[j]
        return ("codec" if isinstance(e, CodecError) else "value"), str(e)
    return "ok", repr(values[j])


def check_block(layout: list[tuple[int, ModbusPoint]], registers: list[int], bits: bool = False) -> None:
    dec = BlockDecoder(layout, len(registers), bits=bits)
    values, bad = dec.decode(registers)
    assert len(values) == len(layout)
    for j, (off, p) in enumerate(layout):
        got, want = from_block(values, bad, j), reference(registers, off, p)
        assert got == want, f"point {j} {p.dtype} {p.order} @{off} {p.scaling} {p.sentinels}: {got} != {want}"
        v = values[j]
        assert not (isinstance(v, float) and not math.isfinite(v))  # never a NaN / infinity as a value
        if got[0] != "ok":
            assert v is None


# ------------------------------------------------------------------------------------------------ properties
@pytest.mark.e2e  # about 15 s in all: the fast lane has test_small_random_blocks_match_the_codec
@pytest.mark.parametrize("dtype,order", TYPE_ORDERS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_type_and_order_matches_the_codec(dtype, order, data):
    """One point of the type and order among random neighbours, at a random offset: same value or same error."""
    p = data.draw(points(dtype, order))
    n = register_count(p.dtype, p.length, p.str_len)
    before = data.draw(st.integers(0, 3))
    after = data.draw(st.integers(0, 3))
    registers = data.draw(st.lists(word, min_size=before + n + after, max_size=before + n + after))
    neighbour = ModbusPoint("n", 1, "holding_register", 0, "uint16")
    layout = [(before, p)] + [(i, neighbour) for i in range(before)] + \
             [(before + n + i, neighbour) for i in range(after)]
    check_block(layout, registers)


@pytest.mark.e2e  # about 2 s
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_blocks_match_the_codec(data):
    """Blocks of up to 12 points of mixed types and orders, overlapping or with gaps, in any order."""
    _random_block(data)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_small_random_blocks_match_the_codec(data):
    """The same property, fewer examples: the fast lane's check (make test-fast)."""
    _random_block(data)


def _random_block(data) -> None:
    pts = data.draw(st.lists(points(), min_size=1, max_size=12))
    layout, end = [], 0
    for p in pts:
        n = register_count(p.dtype, p.length, p.str_len)
        off = data.draw(st.integers(0, end + 2))  # overlaps the points before it, or leaves a gap
        layout.append((off, p))
        end = max(end, off + n)
    registers = data.draw(st.lists(word, min_size=end, max_size=end + 3))
    check_block(layout, registers)


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_bit_tables_match_the_codec(data):
    """Coils / discrete inputs: bool points, scalar and arrays."""
    count = data.draw(st.integers(1, 40))
    bits = data.draw(st.lists(st.integers(0, 1), min_size=count, max_size=count))
    layout = []
    for _ in range(data.draw(st.integers(1, 10))):
        off = data.draw(st.integers(0, count - 1))
        length = data.draw(st.integers(1, count - off))
        layout.append((off, ModbusPoint("b", 1, "coil", off, "bool", length=length)))
    check_block(layout, bits, bits=True)


def test_float_run_fast_path_finds_each_nan_and_infinity():
    """A block of identity floats is checked with one sum; a NaN or infinity still fails its own point only."""
    pts = [(2 * i, ModbusPoint(f"f{i}", 1, "input_register", 2 * i, "float32")) for i in range(5)]
    regs = []
    for v in (1.5, math.nan, 2.5, -math.inf, 3.5):
        regs += list(struct.unpack(">2H", struct.pack(">f", v)))
    values, bad = BlockDecoder(pts, 10).decode(regs)
    assert values == [1.5, None, 2.5, None, 3.5]
    assert {j: str(e) for j, e in bad.items()} == {1: "nan", 3: "infinity"}
    big = [(4 * i, ModbusPoint(f"d{i}", 1, "input_register", 4 * i, "float64")) for i in range(2)]
    regs = list(struct.unpack(">8H", struct.pack(">2d", 1.7e308, 1.7e308)))  # the sum overflows, the values do not
    assert BlockDecoder(big, 8).decode(regs) == ([1.7e308, 1.7e308], None)


def test_not_16_bit_registers_fall_back_to_the_codec_errors():
    p = ModbusPoint("a", 1, "holding_register", 0, "uint16")
    values, bad = BlockDecoder([(0, p), (1, p)], 2).decode([70000, 5])
    assert values == [None, 5] and isinstance(bad[0], ValueError) and not isinstance(bad[0], CodecError)
    assert "unsigned 16-bit" in str(bad[0])
    with pytest.raises(ValueError, match="block of 2 entries"):
        BlockDecoder([(0, p)], 2).decode([1])


# ------------------------------------------------------------------------------------------------ Readings
@settings(max_examples=100, deadline=None)
@given(tags=st.lists(st.text(min_size=1, max_size=5), max_size=6), data=st.data())
def test_good_many_equals_the_constructor(tags, data):
    values = data.draw(st.lists(st.one_of(st.integers(), finite, st.booleans(), st.text(max_size=3),
                                          st.lists(st.integers(), max_size=2), st.none()),
                                min_size=len(tags), max_size=len(tags)))
    raws = [[i] for i in range(len(tags))]
    units = ["m"] * len(tags)
    made = Reading.good_many(tags, values, units, raws, 1.5, 2.5)
    want = [Reading(t, v, u, Quality.GOOD, 1.5, None, TimeSource.LOCAL, 2.5, r)
            for t, v, u, r in zip(tags, values, units, raws)]
    assert made == want and all(type(r) is Reading for r in made)
    assert [dataclasses.astuple(r) for r in made] == [dataclasses.astuple(r) for r in want]
    for r in made:
        with pytest.raises(dataclasses.FrozenInstanceError):
            r.value = 0  # type: ignore[misc]


def test_good_refuses_nan_like_the_constructor():
    for v in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError, match="NaN/infinity"):
            Reading.good_many(["a"], [v], ["m"], [None], 1.0, 2.0)
        with pytest.raises(ValueError, match="NaN/infinity"):
            Reading("a", v, "m", Quality.GOOD, 1.0)
    assert Reading.good("a", 1, "m", 1.0, 2.0) == Reading("a", 1, "m", Quality.GOOD, 1.0, mono=2.0)


# ------------------------------------------------------------------------------------------------ the driver
@pytest.mark.e2e
@pytest.mark.timeout(60)
async def test_device_readings_equal_the_per_value_path():
    """Every type and order, scaled and with sentinels, read over TCP from a pymodbus server holding random
    registers (seeded): each Reading is what decode_value makes of that tag's registers."""
    import random

    from pymodbus.server import ModbusTcpServer
    from pymodbus.simulator import SimData, SimDevice
    from pymodbus.simulator.simutils import DataType

    rng = random.Random(20261208)
    pts, addr = [], 0
    for i, (dtype, order) in enumerate(TYPE_ORDERS * 3):
        kind = i % 4
        scaling = [Scaling(), Scaling(scale=0.1, offset=-5.0), Scaling(raw_range=(4000, 20000), eng_range=(0, 100)),
                   Scaling()][kind] if dtype in NUMERIC else Scaling()
        sent = (0xFFFF, 0x8000, 0xFFFFFFFF, 0x7FC00000) if kind == 3 and dtype in NUMERIC else ()
        p = ModbusPoint(f"t{i}", 1, "holding_register", addr, dtype, order, bit=rng.randrange(16) if dtype == "bit"
                        else None, str_len=5 if dtype == "string" else None, scaling=scaling, sentinels=sent,
                        unit="u")
        pts.append(p)
        addr += p.count + (i % 5 == 0)  # some holes, bridged by max_gap
    regs = [rng.choice(SPECIAL_WORDS) if rng.random() < 0.3 else rng.randrange(65536) for _ in range(addr + 2)]
    sim = SimDevice(id=1, simdata=([SimData(60000, values=[0], datatype=DataType.BITS)],
                                   [SimData(60000, values=[0], datatype=DataType.BITS)],
                                   [SimData(0, values=regs, datatype=DataType.REGISTERS)],
                                   [SimData(60000, values=[0], datatype=DataType.REGISTERS)]))
    server = ModbusTcpServer([sim], address=("127.0.0.1", 0))
    await server.serve_forever(background=True)
    links = ModbusLinks()
    try:
        port = server.transport.sockets[0].getsockname()[1]
        dev = ModbusDevice("plc", links.tcp("127.0.0.1", port), 1, pts, "modbus_tcp", max_gap=1)
        readings = await dev.read()
        assert len(dev.last_requests) > 1  # several blocks
        assert [r.tag for r in readings] == [p.tag for p in pts]
        outcomes = set()
        for p, r in zip(pts, readings):
            mine = regs[p.address:p.address + p.count]
            assert r.raw == mine and r.unit == "u"
            kind, text = reference(regs, p.address, p)
            outcomes.add(kind)
            if kind == "ok":
                assert r.quality is Quality.GOOD and r.reason is None and repr(r.value) == text, p
            else:
                assert r.quality is Quality.BAD and r.value is None, p
                assert r.reason == (text if kind == "codec" else f"decode error: {text}"), p
        assert outcomes >= {"ok", "codec"}  # good and bad readings both compared
    finally:
        await links.close_all()
        await server.shutdown()


@pytest.mark.e2e
@pytest.mark.timeout(30)
async def test_tcp_replies_split_across_reads_or_sent_together():
    """The MBAP reader parses whole ADUs in place and keeps a split one for the next read: a reply sent a byte
    at a time, and a stale ADU sent together with the real reply in one write, still give the right values
    (the stale one is discarded and counted)."""
    import asyncio

    from drivers.codec import encode

    value = encode(12.5, "float32")
    mode = {"split": True}

    async def client(reader, writer):
        try:
            while True:
                tid, _pid, length, unit = struct.unpack(">HHHB", await reader.readexactly(7))
                pdu = await reader.readexactly(length - 1)
                rsp = bytes([pdu[0], 4]) + struct.pack(">2H", *value)
                adu = struct.pack(">HHHB", tid, 0, len(rsp) + 1, unit) + rsp
                if mode["split"]:
                    for b in adu:
                        writer.write(bytes([b]))
                        await writer.drain()
                        await asyncio.sleep(0.002)
                else:  # a late reply to an earlier transaction and the real one, in one segment
                    stale = struct.pack(">HHHB", (tid - 1) or 0xFFFF, 0, 7, unit) + bytes([pdu[0], 4, 0, 0, 0, 0])
                    writer.write(stale + adu)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(client, "127.0.0.1", 0)
    links = ModbusLinks()
    try:
        link = links.tcp("127.0.0.1", server.sockets[0].getsockname()[1], timeout_s=2.0)
        dev = ModbusDevice("plc", link, 1, [ModbusPoint("f", 1, "holding_register", 0, "float32")], "modbus_tcp")
        for split in (True, False, True, False):
            mode["split"] = split
            (r,) = await dev.read()
            assert (r.quality, r.value, r.raw) == (Quality.GOOD, 12.5, value), split
        assert link.late_replies == 2 and link.connects == 1
    finally:
        await links.close_all()
        server.close()
