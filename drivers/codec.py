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
from typing import Any, Iterable, Sequence

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
    "BlockDecoder",
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


# --------------------------------------------------------------------------- block decoding
#: the unsigned struct code of a 1-, 2- and 4-register value (the bit pattern a sentinel is compared with)
_UNSIGNED = {1: "H", 2: "I", 4: "Q"}

# what a point of a block needs after its raw value is unpacked (BlockDecoder)
_K_PLAIN = 0     # integer type, identity scaling, no sentinel: the raw value is the value
_K_FLOAT = 1     # float type, identity scaling, no sentinel: NaN / infinity check only
_K_SCALED = 2    # scale / offset, no sentinel, no range map
_K_FULL = 3      # sentinels and / or a raw_range map: every check of decode_value, in its order
_K_BOOL = 4      # one coil / discrete input
_K_BIT = 5       # one bit of a register
_K_GENERIC = 6   # arrays, strings, anything else: decode_value itself on the point's registers


class BlockDecoder:
    """Decode every point of one block read at once, as :func:`decode_value` would one by one.

    points: (offset, point) pairs, offset = the point's first entry relative to the block's start address,
    point = anything :func:`decode_value` takes (``dtype``, ``order``, ``length``, ``bit``, ``scaling``,
    ``sentinels``; e.g. drivers.modbus.ModbusPoint). count: the block's quantity (registers, or bits when
    ``bits``). No point may take a power-of-ten scale factor here (``sf``): those go through decode_value.

    Built once per planned block: the register order of each point is normalised to one of two byte
    buffers (the registers as received, or with the two bytes of every register swapped) read big- or
    little-endian, so ABCD = as received ``>``, DCBA = as received ``<``, BADC = swapped ``>``, CDAB =
    swapped ``<`` (the same names as :func:`normalise_order`); the numeric points of one (buffer, endian)
    pair become one precompiled :class:`struct.Struct` with pad bytes between them (points that overlap go
    to a second one); the scaling and the checks each point needs are decided here too.

    :meth:`decode` (registers -> (values, bad)) then unpacks the whole block with those few structs, checks
    NaN / infinity of a run of identity floats with one sum, and applies per point exactly the checks of
    decode_value in its order: sentinel (raw integer or unsigned register pattern), NaN / infinity, NAMUR
    NE 43 band of a raw_range map (Scaling.check_raw), scaling, finite scaled value. Arrays, strings and any
    point whose layout cannot be precompiled are decoded by decode_value itself. The values and errors are
    the same as ``decode_value(registers[offset:offset + register_count(...)], point)`` for every point
    (tests/drivers/test_block_decoder.py checks this over random register contents for every type and order).
    """

    __slots__ = ("count", "bits", "n", "_pack", "_swap", "_structs", "_plain_all", "_floats", "_scaled",
                 "_full", "_bools", "_bitpts", "_generic", "_points", "_spans")

    def __init__(self, points: Sequence[tuple[int, Any]], count: int, bits: bool = False) -> None:
        self.count = count
        self.bits = bits
        self.n = len(points)
        self._points = [p for _off, p in points]
        self._spans: list[tuple[int, int]] = []          # (lo, hi) of each point in the block's entries
        kinds: list[int] = []
        numeric: list[tuple[int, int, str, bool, str]] = []  # (j, byte offset, struct code, swapped, endian)
        self._floats: list[int] = []
        self._scaled: list[tuple[int, float, float]] = []
        self._full: list[tuple[int, Any, Any, int, tuple, Scaling]] = []
        self._bools: list[tuple[int, int]] = []
        self._bitpts: list[tuple[int, int, int, bool]] = []
        self._generic: list[int] = []
        for j, (off, p) in enumerate(points):
            kind, info = self._classify(off, p, count, bits)
            kinds.append(kind)
            if kind == _K_GENERIC:
                try:
                    n = register_count(p.dtype, getattr(p, "length", 1) or 1, getattr(p, "str_len", None))
                except (ValueError, TypeError, AttributeError):
                    n = 1
                self._spans.append((off, off + n))
                self._generic.append(j)
                continue
            self._spans.append((off, off + info["regs"]))
            if kind == _K_BOOL:
                self._bools.append((j, off))
            elif kind == _K_BIT:
                self._bitpts.append((j, off, info["bit"], info["swap"]))
            else:
                numeric.append((j, 2 * off, info["code"], info["swapped"], info["endian"]))
                if kind == _K_FLOAT:
                    self._floats.append(j)
                elif kind == _K_SCALED:
                    self._scaled.append((j, info["scale"], info["offset"]))
                elif kind == _K_FULL:
                    pattern = struct.Struct(info["endian"] + _UNSIGNED[info["regs"]])
                    self._full.append((j, pattern, 2 * off, info["regs"], info["sentinels"], info["scaling"],
                                       info["swapped"]))
        self._pack = None if bits else struct.Struct(f">{count}H").pack
        # one struct per (buffer, endian) chain of non-overlapping numeric points, in address order
        chains: list[list] = []  # [swapped, endian, end byte, [(byte offset, code, j)]]
        for j, boff, code, swapped, endian in sorted(numeric, key=lambda x: (x[1], x[0])):
            size = struct.calcsize(code)
            for ch in chains:
                if ch[0] == swapped and ch[1] == endian and ch[2] <= boff:
                    break
            else:
                ch = [swapped, endian, 0, []]
                chains.append(ch)
            ch[3].append((boff, code, j))
            ch[2] = boff + size
        self._structs: list[tuple[struct.Struct, bool, int, list[int] | None]] = []
        for swapped, endian, _end, members in chains:
            fmt, pos = endian, members[0][0]
            for boff, code, _j in members:
                if boff > pos:
                    fmt += f"{boff - pos}x"
                fmt += code
                pos = boff + struct.calcsize(code)
            idx = [j for _b, _c, j in members]
            in_order = idx == list(range(self.n))
            self._structs.append((struct.Struct(fmt), swapped, members[0][0], None if in_order else idx))
        self._swap = any(sw for _st, sw, _start, _idx in self._structs)
        # True when every point is an identity float / integer of one in-order struct: values = the unpack
        self._plain_all = (len(self._structs) == 1 and self._structs[0][3] is None
                           and all(k in (_K_PLAIN, _K_FLOAT) for k in kinds))

    @staticmethod
    def _classify(off: int, p: Any, count: int, bits: bool) -> tuple[int, dict]:
        """The kind of point ``p`` (one of the _K_ codes) and what decoding it needs; _K_GENERIC when in doubt."""
        try:
            dtype = p.dtype
            length = getattr(p, "length", 1) or 1
            order = normalise_order(getattr(p, "order", "ABCD"), dtype)
            sentinels = tuple(getattr(p, "sentinels", ()) or ())
            scaling: Scaling = getattr(p, "scaling", None) or Scaling()
        except (ValueError, TypeError, AttributeError):
            return _K_GENERIC, {}
        if length != 1 or off < 0:
            return _K_GENERIC, {}
        if dtype == "bool":
            return (_K_BOOL, {"regs": 1}) if bits and off < count else (_K_GENERIC, {})
        if bits:
            return _K_GENERIC, {}
        if dtype == "bit":
            bit = getattr(p, "bit", None)
            if not isinstance(bit, int) or isinstance(bit, bool) or not 0 <= bit <= 15 or off >= count:
                return _K_GENERIC, {}
            return _K_BIT, {"regs": 1, "bit": bit, "swap": order == "BADC"}
        if dtype not in _NUMERIC:
            return _K_GENERIC, {}
        code, regs = _NUMERIC[dtype]
        if off + regs > count:
            return _K_GENERIC, {}
        info = {"regs": regs, "code": code, "swapped": order in ("BADC", "CDAB"),
                "endian": ">" if order in ("ABCD", "BADC") else "<", "sentinels": sentinels, "scaling": scaling}
        if sentinels or scaling.raw_range is not None:
            return _K_FULL, info
        if scaling.is_identity:
            return (_K_FLOAT if dtype in FLOAT_DTYPES else _K_PLAIN), info
        info["scale"], info["offset"] = scaling.scale, scaling.offset
        return _K_SCALED, info

    @property
    def spans(self) -> list[tuple[int, int]]:
        """(lo, hi) of each point's entries within the block, in the order of ``points``."""
        return list(self._spans)

    def decode(self, registers: Sequence[int]) -> tuple[list, dict[int, ValueError] | None]:
        """Decode one reply of the block.

        registers: the block's ``count`` entries as read (registers 0..65535; bits 0/1 for a coil or
        discrete-input block). Returns (values, bad): values[j] is the engineering value of the j-th point
        (None where it failed), bad is None when every point decoded, else {j: the CodecError (sentinel, NaN,
        infinity, NAMUR band, non-finite scaled value) or ValueError (a layout decode_value refuses) of
        point j}: what decode_value would raise for it. Raises ValueError when the number of entries is not
        ``count``.
        """
        if len(registers) != self.count:
            raise ValueError(f"block of {self.count} entries, got {len(registers)}")
        if self.bits:
            return self._decode_rest([None] * self.n, registers, None, None)
        try:
            data = self._pack(*registers)
        except struct.error:  # not 16-bit registers: let decode_value say which, point by point
            return self._decode_generic(registers, range(self.n))
        swapped = None
        if self._swap:
            swapped = bytearray(len(data))
            swapped[0::2] = data[1::2]
            swapped[1::2] = data[0::2]
        if self._plain_all:
            st, _sw, start, _idx = self._structs[0]
            values = list(st.unpack_from(swapped if _sw else data, start))
            if not self._floats or math.isfinite(sum(values)):
                return values, None
            return self._decode_rest(values, registers, data, swapped)
        values = [None] * self.n
        for st, sw, start, idx in self._structs:
            got = st.unpack_from(swapped if sw else data, start)
            if idx is None:
                values = list(got)
            else:
                for j, v in zip(idx, got):
                    values[j] = v
        return self._decode_rest(values, registers, data, swapped)

    def _decode_rest(self, values: list, registers: Sequence[int], data: bytes | None,
                     swapped: Any) -> tuple[list, dict[int, ValueError] | None]:
        """The per-point checks and scaling after the unpack (see the class docstring), in place."""
        bad: dict[int, ValueError] | None = None
        isfinite = math.isfinite
        for j in self._floats:
            r = values[j]
            if not isfinite(r):
                bad = bad or {}
                bad[j] = CodecError("nan" if math.isnan(r) else "infinity")
                values[j] = None
        for j, scale, offset in self._scaled:
            r = values[j]
            if isinstance(r, float) and not isfinite(r):
                bad = bad or {}
                bad[j] = CodecError("nan" if math.isnan(r) else "infinity")
                values[j] = None
                continue
            v = r * scale + offset
            if isinstance(v, float) and not isfinite(v):
                bad = bad or {}
                bad[j] = CodecError(f"scaled value of raw {r!r} is not finite")
                values[j] = None
                continue
            values[j] = v
        for j, pattern_st, boff, regs, sentinels, scaling, sw in self._full:
            r = values[j]
            try:
                pattern = None
                if sentinels:
                    pattern = pattern_st.unpack_from(swapped if sw else data, boff)[0]
                    if _is_sentinel(r, pattern, sentinels):
                        raise CodecError(f"sentinel 0x{pattern:0{regs * 4}X}: value not available")
                if isinstance(r, float) and not isfinite(r):
                    raise CodecError("nan" if math.isnan(r) else "infinity")
                scaling.check_raw(r)
                v = scaling.to_eng(r)
                if isinstance(v, float) and not isfinite(v):
                    raise CodecError(f"scaled value of raw {r!r} is not finite")
                values[j] = v
            except CodecError as e:
                bad = bad or {}
                bad[j] = e
                values[j] = None
        for j, off in self._bools:
            values[j] = bool(registers[off])
        for j, off, bit, swap in self._bitpts:
            w = registers[off]
            if swap:
                w = (w & 0xFF) << 8 | w >> 8
            values[j] = bool((w >> bit) & 1)
        if self._generic:
            _v, gbad = self._decode_generic(registers, self._generic, values)
            if gbad:
                bad = {**(bad or {}), **gbad}
        return values, bad

    def _decode_generic(self, registers: Sequence[int], which: Iterable[int],
                        values: list | None = None) -> tuple[list, dict[int, ValueError] | None]:
        values = [None] * self.n if values is None else values
        bad: dict[int, ValueError] | None = None
        for j in which:
            lo, hi = self._spans[j]
            try:
                values[j] = decode_value(list(registers[lo:hi]), self._points[j])
            except ValueError as e:  # CodecError included
                bad = bad or {}
                bad[j] = e
                values[j] = None
        return values, bad
