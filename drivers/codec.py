"""Register <-> value codec for Modbus points: pure functions, no I/O.

Shapes
------
A Modbus register is an unsigned 16-bit integer (0..65535), as the protocol
carries it (Modbus Application Protocol v1.1b3 section 4.2: big-endian
on the wire). Coils and discrete inputs are bits (0/1 or bool).

Data types (``dtype``)::

    bool                       one coil / discrete input (1 bit)
    bit                        one bit of a register (``bit`` = 0..15, 0 = LSB)
    int16 uint16               1 register
    int32 uint32 float32       2 registers (float32 = IEEE 754 binary32)
    int64 uint64 float64       4 registers (float64 = IEEE 754 binary64)
    string                     ASCII, ``str_len`` characters, 2 per register

``length`` > 1 makes an array of N consecutive elements (list result).

Register orders
---------------
Modbus defines no order for values wider than one register, so devices
disagree (case C01). The order names describe the bytes of the value as
they appear on the wire, the value's big-endian bytes being A B C D:

    ABCD  big-endian (high word first)          e.g. 4148 0000 = 12.5
    CDAB  word-swapped (low word first)         e.g. 0000 4148 = 12.5
    BADC  bytes swapped inside each word        e.g. 4841 0000 = 12.5
    DCBA  little-endian                         e.g. 0000 4841 = 12.5

For 64-bit types the same four names describe the whole value (ABCD:
big-endian, CDAB: words reversed, BADC: bytes swapped in each word, DCBA:
little-endian); the 8-letter forms ABCDEFGH, GHEFCDAB, BADCFEHG, HGFEDCBA
are accepted. For 16-bit types and ``bit`` only the byte swap matters
(ABCD/CDAB = as is, BADC/DCBA = bytes swapped); ``AB``/``BA`` are accepted.
For ``string`` ABCD means the first character in the high byte of each
register, BADC the low byte first. pymodbus's converters know only word
order, so all of this is done here with :mod:`struct`.

Scaling and validity (cases C02, C03, C04)
------------------------------------------
:class:`Scaling` maps raw -> engineering value either by ``scale``/``offset``
(eng = raw * scale + offset) or by a linear raw range -> engineering range
(e.g. 4-20 mA as counts 4000..20000 -> 0..100 %LEL). A power-of-ten scale
factor read from another register (value = raw * 10**sf, sf int16, the
SunSpec convention) is applied first; |sf| > 10 is refused.
Sentinel raw values ("not available", e.g. uint16 FFFF, int16 8000,
uint32 FFFFFFFF) and NaN / infinity never become a number: they raise
:class:`CodecError`, which the driver turns into a BAD reading.

A linear range map is a live-zero analogue signal (4-20 mA: ``raw_range`` is the
raw equivalent of 4 mA .. 20 mA), so a raw value in the NAMUR NE 43 failure
band raises CodecError "out of range: NAMUR NE 43 ...": at or below 3.6 mA
(-2.5 % of span: broken loop, 0 mA, sensor failure signalled downscale) or at
or above 21 mA (+106.25 % of span: short circuit, failure signalled upscale).
NE 43 (2003) section 3: measuring information 3.8..20.5 mA, failure information
<= 3.6 mA or >= 21 mA. Without this a broken loop (0 mA -> -25 %LEL) would be a
good reading "within limits". See :meth:`Scaling.check_raw`.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any, Sequence

from gateway.model import Explained

__all__ = [
    "CodecError",
    "Scaling",
    "DTYPES",
    "INTEGER_DTYPES",
    "FLOAT_DTYPES",
    "register_count",
    "decode",
    "encode",
    "normalise_order",
    "decode_value",
    "encode_value",
    "apply_exponent",
    "check_value",
    "MAX_EXPONENT",
    "NAMUR_LOW_FRACTION",
    "NAMUR_HIGH_FRACTION",
]

# dtype -> (struct format char, number of registers)
_NUMERIC: dict[str, tuple[str, int]] = {
    "int16": ("h", 1),
    "uint16": ("H", 1),
    "int32": ("i", 2),
    "uint32": ("I", 2),
    "float32": ("f", 2),
    "int64": ("q", 4),
    "uint64": ("Q", 4),
    "float64": ("d", 4),
}
INTEGER_DTYPES = frozenset({"int16", "uint16", "int32", "uint32", "int64", "uint64"})
FLOAT_DTYPES = frozenset({"float32", "float64"})
DTYPES = frozenset(_NUMERIC) | {"bool", "bit", "string"}
BIT_DTYPES = frozenset({"bool"})  # the dtypes that live in coil / discrete-input tables

#: Largest |exponent| accepted for a power-of-ten scale factor (case C02).
MAX_EXPONENT = 10

#: NAMUR NE 43 failure limits as fractions of a 4-20 mA span: 3.6 mA = (3.6 - 4) / 16 = -2.5 %,
#: 21 mA = (21 - 4) / 16 = +106.25 %. A raw value at or beyond either is a failure signal.
NAMUR_LOW_FRACTION = (3.6 - 4.0) / 16.0
NAMUR_HIGH_FRACTION = (21.0 - 4.0) / 16.0
_NAMUR_EPS = 1e-9

_ORDERS = ("ABCD", "CDAB", "BADC", "DCBA")
_ORDER_ALIASES_64 = {"ABCDEFGH": "ABCD", "GHEFCDAB": "CDAB", "BADCFEHG": "BADC", "HGFEDCBA": "DCBA"}
_ORDER_ALIASES_16 = {"AB": "ABCD", "BA": "BADC"}


class CodecError(ValueError):
    """A raw value that must not become a number: a sentinel ("not available"),
    NaN, infinity, or a power-of-ten exponent out of range. str() says which."""


def _check_dtype(dtype: str) -> None:
    if dtype not in DTYPES:
        raise ValueError(Explained("unknown data type {dtype} (expected one of {types})", dtype=repr(dtype),
                                   types=", ".join(sorted(DTYPES))))


def normalise_order(order: str, dtype: str) -> str:
    """Canonical 4-letter register order for ``dtype``.

    Accepts ABCD / CDAB / BADC / DCBA (case-insensitive) for every register
    type, the 8-letter forms (ABCDEFGH, GHEFCDAB, BADCFEHG, HGFEDCBA) for
    64-bit types only, and AB / BA for 16-bit types. For 16-bit types, ``bit``
    and ``string`` the word order is meaningless, so CDAB -> ABCD and
    DCBA -> BADC. Raises ValueError with a one-line message otherwise.
    """
    _check_dtype(dtype)
    if not isinstance(order, str):
        raise ValueError(Explained("register order must be a string such as 'ABCD', got {order}", order=repr(order)))
    o = order.strip().upper()
    nregs = _NUMERIC[dtype][1] if dtype in _NUMERIC else 1
    if o in _ORDER_ALIASES_64:
        if nregs != 4:
            raise ValueError(Explained("register order {order} names 8 bytes but {dtype} has {n}; use ABCD/CDAB/BADC/DCBA",
                                       order=repr(order), dtype=dtype, n=2 * nregs))
        return _ORDER_ALIASES_64[o]
    if o in _ORDER_ALIASES_16:
        if nregs != 1:
            raise ValueError(Explained("register order {order} names 2 bytes but {dtype} has {n}; use ABCD/CDAB/BADC/DCBA",
                                       order=repr(order), dtype=dtype, n=2 * nregs))
        return _ORDER_ALIASES_16[o]
    if o not in _ORDERS:
        raise ValueError(Explained("unknown register order {order} (expected ABCD, CDAB, BADC or DCBA)", order=repr(order)))
    if nregs == 1:
        return "BADC" if o in ("BADC", "DCBA") else "ABCD"
    return o


def register_count(dtype: str, length: int = 1, str_len: int | None = None) -> int:
    """Number of table entries a point occupies.

    Registers for register types; bits for ``bool`` (coil / discrete input).
    ``string`` needs ``str_len`` (characters): ceil(str_len / 2) registers per
    element. ``bit`` points occupy one register (all their bits, bit+length <= 16,
    are in it). Raises ValueError for an unknown dtype, length < 1 or a string
    without str_len.
    """
    _check_dtype(dtype)
    if not isinstance(length, int) or length < 1:
        raise ValueError(f"length must be a positive integer, got {length!r}")
    if dtype == "bool":
        return length
    if dtype == "bit":
        return 1
    if dtype == "string":
        if not str_len or str_len < 1:
            raise ValueError("a string point needs str_len (number of characters) >= 1")
        return length * ((str_len + 1) // 2)
    return length * _NUMERIC[dtype][1]


def _regs_to_bytes(regs: Sequence[int], order: str) -> bytes:
    """Registers of ONE element in wire order -> the value's big-endian bytes."""
    words = list(regs)
    if order in ("CDAB", "DCBA"):
        words.reverse()
    out = bytearray()
    swap = order in ("BADC", "DCBA")
    for w in words:
        if not isinstance(w, int) or not 0 <= w <= 0xFFFF:
            raise ValueError(f"register value {w!r} is not an unsigned 16-bit integer")
        hi, lo = w >> 8, w & 0xFF
        out += bytes((lo, hi)) if swap else bytes((hi, lo))
    return bytes(out)


def _bytes_to_regs(data: bytes, order: str) -> list[int]:
    """The value's big-endian bytes -> registers in wire order (inverse of _regs_to_bytes)."""
    swap = order in ("BADC", "DCBA")
    words = []
    for i in range(0, len(data), 2):
        hi, lo = data[i], data[i + 1]
        words.append((lo << 8 | hi) if swap else (hi << 8 | lo))
    if order in ("CDAB", "DCBA"):
        words.reverse()
    return words


def _decode_one(regs: Sequence[int], dtype: str, order: str, bit: int | None) -> Any:
    if dtype == "bool":
        return bool(regs[0])
    if dtype == "bit":
        word = _regs_to_bytes(regs[:1], order)
        value = word[0] << 8 | word[1]
        return bool((value >> (bit or 0)) & 1)
    if dtype == "string":
        raw = _regs_to_bytes(regs, "BADC" if order == "BADC" else "ABCD")
        text = raw.split(b"\x00", 1)[0].decode("ascii", errors="replace")
        return text.rstrip(" ")
    fmt, _ = _NUMERIC[dtype]
    return struct.unpack(">" + fmt, _regs_to_bytes(regs, order))[0]


def decode(registers: Sequence[int], dtype: str, order: str = "ABCD", length: int = 1,
           bit: int | None = None) -> Any:
    """Decode raw registers (or bits, for ``bool``) into a raw value.

    registers: exactly register_count(dtype, length) entries for numeric types,
    a multiple of ``length`` for ``string``; for ``bool``, ``length`` bits.
    Returns int / float / bool / str, or a list of them when length > 1.
    ``bit`` (0 = least significant) is required for ``bit``; with length N the
    bits bit .. bit+N-1 of the register are returned.
    NaN/inf floats are returned as they are: :func:`decode_value` rejects them.
    Raises ValueError on a wrong register count, bad order or bad bit number.
    """
    _check_dtype(dtype)
    o = normalise_order(order, dtype)
    regs = list(registers)
    if not isinstance(length, int) or length < 1:
        raise ValueError(f"length must be a positive integer, got {length!r}")
    if dtype == "bit":
        if bit is None or not 0 <= bit <= 15:
            raise ValueError(f"a bit point needs bit = 0..15, got {bit!r}")
        if bit + length > 16:
            raise ValueError(f"bits {bit}..{bit + length - 1} do not fit in one register")
        if len(regs) != 1:
            raise ValueError(f"bit point expects 1 register, got {len(regs)}")
        vals = [_decode_one(regs, "bit", o, bit + i) for i in range(length)]
        return vals[0] if length == 1 else vals
    if dtype == "string":
        if not regs or len(regs) % length:
            raise ValueError(f"{len(regs)} registers do not split into {length} strings")
        per = len(regs) // length
    elif dtype == "bool":
        per = 1
    else:
        per = _NUMERIC[dtype][1]
    if len(regs) != per * length:
        raise ValueError(f"{dtype}[{length}] needs {per * length} registers, got {len(regs)}")
    vals = [_decode_one(regs[i * per:(i + 1) * per], dtype, o, bit) for i in range(length)]
    return vals[0] if length == 1 else vals


def _encode_one(value: Any, dtype: str, order: str, str_len: int | None) -> list[int]:
    if dtype == "bool":
        if not isinstance(value, (bool, int)) or value not in (0, 1):
            raise ValueError(f"bool value must be true/false or 0/1, got {value!r}")
        return [1 if value else 0]
    if dtype == "string":
        if not isinstance(value, str):
            raise ValueError(f"string value expected, got {value!r}")
        try:
            data = value.encode("ascii")
        except UnicodeEncodeError:
            raise ValueError(f"string {value!r} is not ASCII") from None
        n = str_len if str_len is not None else len(data)
        if len(data) > n:
            raise ValueError(f"string {value!r} is longer than {n} characters")
        data = data.ljust(n + (n % 2), b"\x00")
        return _bytes_to_regs(data, "BADC" if order == "BADC" else "ABCD")
    fmt, _ = _NUMERIC[dtype]
    if dtype in INTEGER_DTYPES:
        if isinstance(value, bool):
            value = int(value)
        if isinstance(value, float):
            if not value.is_integer():
                raise ValueError(f"{dtype} needs an integer raw value, got {value!r} (scale with Scaling.to_raw)")
            value = int(value)
        if not isinstance(value, int):
            raise ValueError(f"{dtype} needs an integer raw value, got {value!r}")
    else:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{dtype} needs a number, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"refusing to write {value!r}: NaN/infinity is not a value")
    try:
        data = struct.pack(">" + fmt, value)
    except (struct.error, OverflowError):
        raise ValueError(f"value {value!r} is out of range for {dtype}") from None
    return _bytes_to_regs(data, order)


def encode(value: Any, dtype: str, order: str = "ABCD", str_len: int | None = None) -> list[int]:
    """Encode a raw value (or a list, for arrays) into registers in wire order.

    The exact inverse of :func:`decode`: encode(decode(r, t, o), t, o) == r.
    For ``bool`` returns bits (0/1). ``bit`` cannot be encoded alone (it needs
    a read-modify-write of the whole register). Integers must be integral and
    in range; floats must be finite. Raises ValueError otherwise.
    Example (C01): encode([1.0, 2.0], "float32", "CDAB") == [0x0000, 0x3F80, 0x0000, 0x4000].
    """
    _check_dtype(dtype)
    if dtype == "bit":
        raise ValueError("a bit-in-register point cannot be encoded alone (read-modify-write the register)")
    o = normalise_order(order, dtype)
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    out: list[int] = []
    for v in values:
        out += _encode_one(v, dtype, o, str_len)
    return out


def check_value(raw: Any) -> None:
    """Raise CodecError if ``raw`` (or any element of a list) is a NaN or infinite float (C03)."""
    for i, v in enumerate(raw if isinstance(raw, (list, tuple)) else [raw]):
        if isinstance(v, float) and not math.isfinite(v):
            where = f" (element {i})" if isinstance(raw, (list, tuple)) else ""
            raise CodecError(("nan" if math.isnan(v) else "infinity") + where)


#: the smallest normal IEEE 754 binary32 / binary64 magnitudes (IEEE 754-2019 3.4): below them (and not 0) a value
#: is subnormal, which a wrong word order makes of a real measurement far more often than an instrument reports it
MIN_NORMAL = {"float32": 1.1754943508222875e-38, "float64": 2.2250738585072014e-308}


def is_subnormal(raw: Any, dtype: str = "float32") -> bool:
    """True when ``raw`` is a float that is not 0 and smaller in magnitude than the smallest normal number of
    ``dtype`` (float32 / float64; any other type: False)."""
    return isinstance(raw, float) and 0 < abs(raw) < MIN_NORMAL.get(dtype, 0.0)


def apply_exponent(raw: int | float, sf: int) -> float:
    """value = raw * 10**sf (power-of-ten scale factor, SunSpec "sunssf" style).

    sf: the exponent as a signed 16-bit integer (FFFF = -1). |sf| > MAX_EXPONENT
    raises CodecError (C02: never produce 10**65529). Negative exponents divide,
    so 4660 with sf -1 gives exactly 466.0.
    """
    if isinstance(sf, bool) or not isinstance(sf, int):
        raise CodecError(f"scale factor exponent {sf!r} is not an integer")
    if sf > 0x7FFF and sf <= 0xFFFF:  # an unsigned register pattern: reinterpret as int16
        sf -= 0x10000
    if abs(sf) > MAX_EXPONENT:
        raise CodecError(f"scale factor exponent {sf} out of range (|sf| > {MAX_EXPONENT})")
    return raw / 10 ** (-sf) if sf < 0 else float(raw * 10 ** sf)


@dataclass(frozen=True)
class Scaling:
    """Raw <-> engineering value mapping.

    Either ``scale``/``offset`` (eng = raw * scale + offset) or a linear range
    map ``raw_range`` = (raw_lo, raw_hi) -> ``eng_range`` = (eng_lo, eng_hi), e.g.
    4-20 mA counts (4000, 20000) -> (0.0, 100.0) %LEL. Not both. The identity
    scaling keeps integers as integers; any other scaling returns float.
    Raises ValueError at construction for inconsistent parameters.
    """

    scale: float = 1.0
    offset: float = 0.0
    raw_range: tuple[float, float] | None = None
    eng_range: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if (self.raw_range is None) != (self.eng_range is None):
            raise ValueError("scaling needs both raw_range and eng_range, or neither")
        for name in ("scale", "offset"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"scaling {name} must be a finite number, got {v!r}")
        if self.scale == 0:
            raise ValueError("scaling scale must not be 0")
        if self.raw_range is not None:
            if self.scale != 1.0 or self.offset != 0.0:
                raise ValueError("use either scale/offset or raw_range/eng_range, not both")
            for name in ("raw_range", "eng_range"):
                r = getattr(self, name)
                if (not isinstance(r, (tuple, list)) or len(r) != 2
                        or not all(isinstance(x, (int, float)) and math.isfinite(x) for x in r)):
                    raise ValueError(f"scaling {name} must be two finite numbers (lo, hi), got {r!r}")
            object.__setattr__(self, "raw_range", tuple(self.raw_range))
            object.__setattr__(self, "eng_range", tuple(self.eng_range))
            if self.raw_range[0] == self.raw_range[1]:
                raise ValueError(f"scaling raw_range {self.raw_range} is empty")
            if self.eng_range[0] == self.eng_range[1]:
                raise ValueError(f"scaling eng_range {self.eng_range} is empty")

    @property
    def is_identity(self) -> bool:
        """True when to_eng returns the raw value unchanged."""
        return self.raw_range is None and self.scale == 1.0 and self.offset == 0.0

    def check_raw(self, raw: int | float) -> None:
        """Raise CodecError when ``raw`` is in the NAMUR NE 43 failure band of a linear range map.

        Only for ``raw_range``/``eng_range`` scaling (a live-zero 4-20 mA signal: raw_range is the raw
        equivalent of 4..20 mA); scale/offset and identity scaling are not checked. Failure: a raw value
        at or below the equivalent of 3.6 mA (-2.5 % of span) or at or above 21 mA (+106.25 % of span),
        NAMUR NE 43 section 3 (failure information <= 3.6 mA or >= 21 mA). The message names the raw
        value and its mA equivalent, e.g. "out of range: NAMUR NE 43 failure signal: raw 0 = 0.000 mA
        (valid above 3.6 mA and below 21 mA)"."""
        if self.raw_range is None or isinstance(raw, bool) or not isinstance(raw, (int, float)):
            return
        r0, r1 = self.raw_range
        frac = (raw - r0) / (r1 - r0)
        if frac <= NAMUR_LOW_FRACTION + _NAMUR_EPS or frac >= NAMUR_HIGH_FRACTION - _NAMUR_EPS:
            ma = 4.0 + 16.0 * frac
            raise CodecError(f"out of range: NAMUR NE 43 failure signal: raw {raw:g} = {ma:.3f} mA "
                             f"(valid above 3.6 mA and below 21 mA)")

    def to_eng(self, raw: int | float) -> int | float:
        """Raw value -> engineering value (no validity check: see :meth:`check_raw`)."""
        if self.is_identity:
            return raw
        if self.raw_range is not None:
            (r0, r1), (e0, e1) = self.raw_range, self.eng_range  # type: ignore[misc]
            return e0 + (raw - r0) * (e1 - e0) / (r1 - r0)
        return raw * self.scale + self.offset

    def to_raw(self, eng: int | float, dtype: str | None = None) -> int | float:
        """Engineering value -> raw value (inverse of to_eng).

        For an integer ``dtype`` the result is rounded to the nearest integer
        (half away from zero), so 0.29 with scale 0.01 gives 29, not 28 (C04).
        Raises ValueError for NaN / infinity.
        """
        if isinstance(eng, bool):
            eng = int(eng)
        if not isinstance(eng, (int, float)) or not math.isfinite(eng):
            raise ValueError(f"engineering value must be a finite number, got {eng!r}")
        if self.is_identity:
            raw: int | float = eng
        elif self.raw_range is not None:
            (r0, r1), (e0, e1) = self.raw_range, self.eng_range  # type: ignore[misc]
            raw = r0 + (eng - e0) * (r1 - r0) / (e1 - e0)
        else:
            raw = (eng - self.offset) / self.scale
        if dtype in INTEGER_DTYPES:
            return int(math.floor(abs(raw) + 0.5)) * (1 if raw >= 0 else -1)
        return raw


def _pattern(registers: Sequence[int], dtype: str, order: str) -> int:
    """The unsigned bit pattern of one element (for sentinel matching)."""
    return int.from_bytes(_regs_to_bytes(registers, order), "big")


def _is_sentinel(raw: Any, pattern: int | None, sentinels: Sequence[int]) -> bool:
    for s in sentinels:
        if isinstance(raw, int) and not isinstance(raw, bool) and raw == s:
            return True
        if pattern is not None and pattern == s:
            return True
    return False


def decode_value(registers: Sequence[int], point: Any, sf: int | None = None) -> Any:
    """Decode + validity check + scaling for one point.

    point: any object with ``dtype``, ``order``, ``length``, ``bit``, ``scaling``
    and ``sentinels`` attributes (e.g. drivers.modbus.ModbusPoint).
    sf: optional power-of-ten exponent read from a scale-factor register.
    Returns the engineering value (list for arrays). Raises CodecError when
    any element is a sentinel (matched against the raw integer or the unsigned
    register pattern, so int16 8000 matches 0x8000 or -32768), NaN or infinity,
    in the NAMUR NE 43 failure band of a raw_range scaling (Scaling.check_raw),
    or when ``sf`` is out of range (C02, C03).
    """
    dtype = point.dtype
    order = normalise_order(getattr(point, "order", "ABCD"), dtype)
    length = getattr(point, "length", 1) or 1
    sentinels = tuple(getattr(point, "sentinels", ()) or ())
    scaling: Scaling = getattr(point, "scaling", None) or Scaling()
    regs = list(registers)
    raw = decode(regs, dtype, order, length, getattr(point, "bit", None))
    if dtype in ("bool", "bit", "string"):
        return raw
    per = _NUMERIC[dtype][1]
    raws = raw if length > 1 else [raw]
    out = []
    for i, r in enumerate(raws):
        pattern = _pattern(regs[i * per:(i + 1) * per], dtype, order)
        if sentinels and _is_sentinel(r, pattern, sentinels):
            where = f" (element {i})" if length > 1 else ""
            raise CodecError(f"sentinel 0x{pattern:0{per * 4}X}{where}: value not available")
        if isinstance(r, float) and not math.isfinite(r):
            raise CodecError(("nan" if math.isnan(r) else "infinity") + (f" (element {i})" if length > 1 else ""))
        v: Any = r
        if sf is not None:
            v = apply_exponent(v, sf)
        try:
            scaling.check_raw(v)  # NAMUR NE 43 failure band of a 4-20 mA range map
        except CodecError as e:
            raise CodecError(f"{e}{f' (element {i})' if length > 1 else ''}") from None
        v = scaling.to_eng(v)
        if isinstance(v, float) and not math.isfinite(v):
            raise CodecError(f"scaled value of raw {r!r} is not finite")
        out.append(v)
    return out if length > 1 else out[0]


def encode_value(value: Any, point: Any) -> list[int]:
    """Engineering value -> registers (or bits) for a write: the same path as reads, inverted.

    Applies ``point.scaling.to_raw`` (rounding for integer types, C04) and
    :func:`encode` with ``point.order``. Raises ValueError for a value that does
    not fit the type or is not finite. ``bit`` points are refused (see encode).
    """
    dtype = point.dtype
    scaling: Scaling = getattr(point, "scaling", None) or Scaling()
    length = getattr(point, "length", 1) or 1
    if dtype in ("bool", "string", "bit"):
        raws = value
    else:
        vals = list(value) if isinstance(value, (list, tuple)) else [value]
        if len(vals) != length:
            raise ValueError(f"expected {length} value(s), got {len(vals)}")
        conv = [scaling.to_raw(v, dtype) for v in vals]
        raws = conv if length > 1 else conv[0]
    if dtype == "bool" and length > 1:
        vals = list(raws) if isinstance(raws, (list, tuple)) else [raws]
        if len(vals) != length:
            raise ValueError(f"expected {length} value(s), got {len(vals)}")
    return encode(raws, dtype, getattr(point, "order", "ABCD"), getattr(point, "str_len", None))
