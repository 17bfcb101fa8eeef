"""Codec tables: C01 (orders), C02 (signed + scale factor), C03 (sentinels, NaN), C04 (write encoding)."""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field

import pytest
from hypothesis import given, strategies as st

from drivers.codec import (CodecError, Scaling, apply_exponent, check_value, decode, decode_value, encode, encode_value,
                           normalise_order, register_count)


@dataclass
class P:  # a minimal point (decode_value is duck-typed)
    dtype: str
    order: str = "ABCD"
    length: int = 1
    bit: int | None = None
    str_len: int | None = None
    scaling: Scaling = field(default_factory=Scaling)
    sentinels: tuple = ()


# ---- C01 -----------------------------------------------------------------
@pytest.mark.parametrize("regs,order,expected", [
    ([0x4148, 0x0000], "ABCD", 12.5),
    ([0x0000, 0x3F80], "CDAB", 1.0),
    ([0x8EBF, 0x7B14], "BADC", struct.unpack(">f", bytes.fromhex("BF8E147B"))[0]),
    ([0xDA77, 0xFB41], "DCBA", struct.unpack(">f", bytes.fromhex("41FB77DA"))[0]),
])
def test_C01_float32_four_orders(regs, order, expected):
    v = decode(regs, "float32", order)
    assert v == expected
    assert encode(v, "float32", order) == regs


def test_C01_values_stated():
    assert decode([0x8EBF, 0x7B14], "float32", "BADC") == pytest.approx(-1.11, abs=1e-6)
    assert decode([0xDA77, 0xFB41], "float32", "DCBA") == pytest.approx(31.433521, abs=1e-5)


def test_C01_float32_array_cdab_keeps_element_order():
    assert decode([0x0000, 0x3FC0, 0x0000, 0x4040], "float32", "CDAB", length=2) == [1.5, 3.0]


def test_C01_no_silent_fallback_to_abcd():
    wrong = decode([0x0000, 0x3FC0], "float32", "ABCD")
    assert 0 < wrong < 1e-40  # about 2.3e-41: the CDAB value 1.5 must not appear
    assert decode([0x0000, 0x3FC0], "float32", "CDAB") == 1.5


def test_C01_encode_array_cdab():
    assert encode([1.0, 2.0], "float32", "CDAB") == [0x0000, 0x3F80, 0x0000, 0x4000]


@pytest.mark.parametrize("order,regs", [
    ("ABCD", [0x0001, 0x0203]),
    ("CDAB", [0x0203, 0x0001]),
    ("BADC", [0x0100, 0x0302]),
    ("DCBA", [0x0302, 0x0100]),
])
def test_C01_int32_uint32_orders(order, regs):
    assert decode(regs, "uint32", order) == 0x00010203
    assert decode(regs, "int32", order) == 0x00010203
    assert encode(0x00010203, "int32", order) == regs


@pytest.mark.parametrize("order,alias,regs", [
    ("ABCD", "ABCDEFGH", [0x0102, 0x0304, 0x0506, 0x0708]),
    ("CDAB", "GHEFCDAB", [0x0708, 0x0506, 0x0304, 0x0102]),
    ("BADC", "BADCFEHG", [0x0201, 0x0403, 0x0605, 0x0807]),
    ("DCBA", "HGFEDCBA", [0x0807, 0x0605, 0x0403, 0x0201]),
])
def test_C01_64bit_orders_and_8_letter_names(order, alias, regs):
    assert normalise_order(alias, "uint64") == order
    assert decode(regs, "uint64", order) == 0x0102030405060708
    assert decode(regs, "uint64", alias) == 0x0102030405060708
    assert encode(0x0102030405060708, "uint64", alias) == regs
    f = struct.unpack(">d", bytes.fromhex("0102030405060708"))[0]
    assert decode(regs, "float64", order) == f


def test_C01_float64_cdab():
    regs = encode(-123.456, "float64", "CDAB")
    assert len(regs) == 4
    assert decode(regs, "float64", "CDAB") == -123.456
    # words reversed relative to ABCD
    assert regs == list(reversed(encode(-123.456, "float64", "ABCD")))


@pytest.mark.parametrize("order,dtype,msg", [
    ("ABDC", "float32", "unknown register order"),
    ("ABCDEFGH", "float32", "names 8 bytes"),
    ("AB", "float32", "names 2 bytes"),
    ("xyz", "uint16", "unknown register order"),
])
def test_bad_orders_one_line(order, dtype, msg):
    with pytest.raises(ValueError) as e:
        normalise_order(order, dtype)
    assert msg in str(e.value) and "\n" not in str(e.value)


def test_16bit_orders():
    assert normalise_order("cdab", "uint16") == "ABCD"
    assert normalise_order("DCBA", "int16") == "BADC"
    assert decode([0x1234], "uint16", "BA") == 0x3412
    assert encode(0x3412, "uint16", "BADC") == [0x1234]


# ---- C02 -----------------------------------------------------------------
def test_C02_int16_signed():
    assert decode([0xFFEC], "int16") == -20
    assert decode([0xFFEC], "uint16") == 65516
    v = decode_value([0xFF38], P("int16", scaling=Scaling(scale=0.1)))
    assert v == pytest.approx(-20.0) and v < -10
    # C02 says "6532.0"; 0xFF38 read as uint16 is 65336, i.e. 6533.6 (either way not -20)
    assert decode_value([0xFF38], P("uint16", scaling=Scaling(scale=0.1))) == pytest.approx(6533.6)


def test_C02_power_of_ten_scale_factor():
    sf = decode([0xFFFF], "int16")
    assert sf == -1
    assert decode_value([0x1234], P("uint16"), sf=sf) == 466.0
    assert apply_exponent(4660, 0xFFFF) == 466.0  # unsigned register pattern read as int16
    assert apply_exponent(5, 2) == 500.0
    for bad in (11, -11, 0x7FF9):
        with pytest.raises(CodecError, match="exponent"):
            decode_value([0x1234], P("uint16"), sf=bad)


# ---- C03 -----------------------------------------------------------------
@pytest.mark.parametrize("regs,dtype,sentinels", [
    ([0xFFFF], "uint16", (0xFFFF,)),
    ([0x8000], "int16", (0x8000,)),
    ([0x8000], "int16", (-32768,)),
    ([0xFFFF, 0xFFFF], "uint32", (0xFFFFFFFF,)),
])
def test_C03_sentinels_are_bad(regs, dtype, sentinels):
    with pytest.raises(CodecError, match="sentinel"):
        decode_value(regs, P(dtype, sentinels=sentinels))
    # without the declaration the raw number passes (the profile must declare it)
    decode_value(regs, P(dtype))


@pytest.mark.parametrize("regs,order,word", [
    ([0x7FC0, 0x0000], "ABCD", "nan"),
    ([0x0000, 0x7FC0], "CDAB", "nan"),
    ([0x7F80, 0x0000], "ABCD", "infinity"),
    ([0xFF80, 0x0000], "ABCD", "infinity"),
])
def test_C03_nan_and_inf_are_bad(regs, order, word):
    with pytest.raises(CodecError, match=word):
        decode_value(regs, P("float32", order=order, scaling=Scaling(scale=2.0)))


def test_C03_float_sentinel_pattern_and_array_element():
    with pytest.raises(CodecError, match="sentinel"):
        decode_value([0xFF7F, 0xFFFF], P("float32", sentinels=(0xFF7FFFFF,)))
    with pytest.raises(CodecError, match="element 1"):
        decode_value([1, 0xFFFF, 3], P("uint16", length=3, sentinels=(0xFFFF,)))


def test_C03_check_value():
    check_value(1.5)
    check_value([1, 2.0])
    with pytest.raises(CodecError, match="nan"):
        check_value(decode([0x7FC0, 0], "float32"))
    with pytest.raises(CodecError, match="infinity .element 1"):
        check_value([1.0, math.inf])


def test_C03_nan_never_encoded():
    for v in (math.nan, math.inf):
        with pytest.raises(ValueError):
            encode(v, "float32")


# ---- C04 (encoding side) ------------------------------------------------
def test_C04_write_encodings():
    assert encode(12.5, "float32", "CDAB") == [0x0000, 0x4148]
    assert encode_value(-10, P("int16")) == [0xFFF6]
    assert Scaling(scale=0.01).to_raw(0.29, "uint16") == 29
    assert encode_value(0.29, P("uint16", scaling=Scaling(scale=0.01))) == [29]
    assert Scaling().to_raw(-2.5, "int16") == -3  # half away from zero
    assert Scaling().to_raw(2.5, "int16") == 3
    with pytest.raises(ValueError, match="out of range"):
        encode(70000, "uint16")
    with pytest.raises(ValueError, match="integer"):
        encode(1.5, "int16")


# ---- scaling ------------------------------------------------------------
def test_range_scaling_4_20mA():
    s = Scaling(raw_range=(4000, 20000), eng_range=(0.0, 100.0))
    assert s.to_eng(4000) == 0.0
    assert s.to_eng(12000) == 50.0
    assert s.to_eng(20000) == 100.0
    assert s.to_raw(25.0, "uint16") == 8000
    assert decode_value([8000], P("uint16", scaling=s)) == 25.0


# S2: NAMUR NE 43 section 3: failure information <= 3.6 mA or >= 21 mA; a broken loop is never a value
NE43 = Scaling(raw_range=(4000, 20000), eng_range=(0.0, 100.0))   # 4-20 mA as uA counts
NE43_12BIT = Scaling(raw_range=(819, 4095), eng_range=(0.0, 100.0))  # 0-20 mA on a 12-bit ADC


@pytest.mark.parametrize("scaling, raw, expect", [
    (NE43, 0, None),                    # broken loop: 0 mA would be -25 %LEL
    (NE43, 3599, None),
    (NE43, 3600, None),                 # 3.6 mA: the NE 43 downscale failure signal itself
    (NE43, 3601, -2.49375),             # just above: measuring / transition range, a value
    (NE43, 3800, -1.25),
    (NE43, 4000, 0.0),
    (NE43, 20000, 100.0),
    (NE43, 20500, 103.125),
    (NE43, 20999, 106.24375),
    (NE43, 21000, None),                # 21 mA: upscale failure signal
    (NE43, 0xFFFE, None),
    (NE43_12BIT, 737, None),            # 737 < 3.6 mA (737.1 counts)
    (NE43_12BIT, 738, pytest.approx(-2.4725, abs=1e-4)),
    (NE43_12BIT, 4095, 100.0),
    (Scaling(raw_range=(20000, 4000), eng_range=(100.0, 0.0)), 0, None),  # range written backwards
    (Scaling(scale=0.1), 0, 0.0),       # scale/offset is not a live-zero signal: no band
    (Scaling(), 0, 0),
])
def test_namur_ne43_band_of_range_scaling(scaling, raw, expect):
    p = P("uint16", scaling=scaling)
    if expect is None:
        with pytest.raises(CodecError, match=r"out of range: NAMUR NE 43 .* mA"):
            decode_value([raw], p)
    else:
        assert decode_value([raw], p) == expect


def test_namur_ne43_band_names_the_array_element():
    with pytest.raises(CodecError, match=r"NAMUR NE 43 .*\(element 1\)"):
        decode_value([8000, 0], P("uint16", length=2, scaling=NE43))
    assert decode_value([8000, 12000], P("uint16", length=2, scaling=NE43)) == [25.0, 50.0]


@pytest.mark.parametrize("kw", [
    dict(raw_range=(0, 10)),
    dict(raw_range=(0, 10), eng_range=(0, 1), scale=2.0),
    dict(raw_range=(5, 5), eng_range=(0, 1)),
    dict(scale=0),
    dict(scale=math.nan),
])
def test_bad_scaling(kw):
    with pytest.raises(ValueError):
        Scaling(**kw)


def test_identity_keeps_int():
    v = decode_value([7], P("uint16"))
    assert v == 7 and isinstance(v, int)


# ---- other types ---------------------------------------------------------
def test_register_count():
    assert register_count("uint16") == 1
    assert register_count("float32", 2) == 4
    assert register_count("float64") == 4
    assert register_count("string", str_len=5) == 3
    assert register_count("bool", 10) == 10
    assert register_count("bit") == 1
    with pytest.raises(ValueError):
        register_count("string")
    with pytest.raises(ValueError, match="unknown data type"):
        register_count("float16")


def test_bits_and_bools():
    assert decode([0b1010], "bit", bit=1) is True
    assert decode([0b1010], "bit", bit=2) is False
    assert decode([0x8001], "bit", bit=15, ) is True
    assert decode([0b1010], "bit", bit=0, length=4) == [False, True, False, True]
    assert decode([0x0100], "bit", "BADC", bit=0) is True
    with pytest.raises(ValueError):
        decode([1], "bit")
    assert decode([1, 0, 1], "bool", length=3) == [True, False, True]
    assert encode([True, False], "bool") == [1, 0]


def test_strings():
    regs = encode("CH4", "string", str_len=6)
    assert regs == [0x4348, 0x3400, 0x0000]
    assert decode(regs, "string") == "CH4"
    assert decode([0x4843, 0x0034], "string", "BADC") == "CH4"
    assert decode_value(regs, P("string", str_len=6)) == "CH4"
    with pytest.raises(ValueError):
        encode("toolong", "string", str_len=4)


def test_wrong_register_count():
    with pytest.raises(ValueError, match="needs 2 registers"):
        decode([1], "float32")


# ---- properties ----------------------------------------------------------
_ORD = st.sampled_from(["ABCD", "CDAB", "BADC", "DCBA"])


@given(st.integers(-2**31, 2**31 - 1), _ORD)
def test_int32_roundtrip(v, order):
    assert decode(encode(v, "int32", order), "int32", order) == v


@given(st.integers(0, 2**64 - 1), _ORD)
def test_uint64_roundtrip(v, order):
    assert decode(encode(v, "uint64", order), "uint64", order) == v


@given(st.lists(st.integers(0, 0xFFFF), min_size=4, max_size=4), _ORD)
def test_registers_roundtrip_float64(regs, order):
    v = decode(regs, "float64", order)
    if not math.isnan(v):
        assert encode(v, "float64", order) == regs
