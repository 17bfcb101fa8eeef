"""A register list (CSV, a device manual's Modbus table as a technician types it or Excel exports it) to a
device profile (``hazard-gateway profile import FILE.csv``), in the format of config/profiles/*.yaml and
checked by the same loader (:func:`gateway.device_profiles.load_profile`) before it is written.

Columns (header row, any order, case and spaces ignored; Chinese headers as in a 点表):

==============  ===================================================================  =====================
column          aliases                                                             value
==============  ===================================================================  =====================
key             tag, 位号                                                            the tag key (letters, digits, ``_ . -``)
name            名称, 点名, 变量名                                                   the key when there is no key column and it is
                                                                                     one; else (名称 in Chinese) it heads the
                                                                                     description, and the key is ``r<address>``
address         register, documented_address, 地址, 寄存器地址                       40001 / 400001 (Modicon reference), or a
                                                                                     0-based number (``0``, ``0x0010``) with a
                                                                                     function / table column; ``40003-40004``
type            data_type, 类型, 数据类型                                            uint16, int16, uint32, int32, float32, float64,
                                                                                     int64, uint64, bool, string; aliases WORD, INT,
                                                                                     DINT, DWORD, REAL, LREAL, float, 浮点数 ...
order           word_order, byte_order, 字节序, 字序                                 ABCD CDAB BADC DCBA (also "high word first",
                                                                                     "low word first", big/little endian, 高字在前)
scale           factor, scale_or_formula, 系数, 倍率, 比例                           engineering = raw x scale: ``0.1``, ``x0.1``,
                                                                                     ``/10``, ``value / 10``
unit            units, 单位                                                          free text (``%LEL``, ``ppm``)
function        function_code, fc, table, register_table, 功能码, 寄存器类型          3 / 4 / 1 / 2 (3/6: a read code counts),
                                                                                     holding / input / coil / discrete, 保持寄存器
description     meaning, 描述, 说明, 含义                                            free text
offset          偏移, 偏移量                                                         engineering = raw x scale + offset
eng_range       range, 量程, 工程量程                                                ``0-100`` (with raw_range)
raw_range       原始量程                                                             ``4000-20000``
pdu_address     pdu, 协议地址                                                        0-based address; "(assumed)" marks it assumed
note            备注, 注释                                                           free text
registers       count, 寄存器数, 长度                                                registers of the value (checked
                                                                                     against the type; a string's
                                                                                     length: 2 characters each)
device          设备, 设备型号                                                       rows of several devices: choose with --device
==============  ===================================================================  =====================

Other columns (source, ...) are ignored. A row whose cells are all empty is skipped. The file
is UTF-8 (with or without the BOM Excel writes) or GBK / GB18030 (Chinese Excel's "CSV" export), unless
``encoding`` says; the delimiter (``,`` ``;`` tab) is sniffed (csv.Sniffer) unless ``delimiter`` says.

Every row is checked; every problem is one :class:`gateway.config.Problem` ``FILE:LINE:COL: column:
message`` (LINE the row's first physical line, COL the 1-based CSV column), all of them, raised together as
:class:`gateway.config.ConfigError` (the command line prints them and exits 2).

Addresses: Modbus Application Protocol V1.1b3 (tables by function code, 6.1-6.4); the reference notation
of :func:`drivers.modbus.parse_reference`. A reference address with a pdu_address is cross-checked (both
must name the same register); with a pdu_address the 4xxxx reference alone is kept, marked ``assumed``
when the pdu cell says so (the convention the shipped profiles follow).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import tempfile
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drivers.codec import normalise_order, register_count
from drivers.modbus import parse_reference, reference
from gateway.config import NAME_RE, ConfigError, Problem
from gateway.device_profiles import load_profile
from gateway.i18n import gettext as _

#: the largest register list read (bytes): a device's map is a few hundred rows
MAX_BYTES = 4 << 20

COLUMNS: dict[str, tuple[str, ...]] = {
    "key": ("key", "tag", "tag_name", "tag_no", "位号", "仪表位号"),
    "name": ("name", "名称", "点名", "变量名", "点位名称", "名字"),
    "address": ("address", "register", "reg", "documented_address", "modbus_address", "地址", "寄存器地址",
                "寄存器", "modbus地址"),
    "type": ("type", "data_type", "datatype", "类型", "数据类型"),
    "order": ("order", "word_order", "byte_order", "endian", "endianness", "字节序", "字序", "字节顺序"),
    "scale": ("scale", "factor", "scale_or_formula", "multiplier", "系数", "倍率", "比例", "比例系数"),
    "unit": ("unit", "units", "单位"),
    "function": ("function", "function_code", "fc", "table", "register_table", "功能码", "寄存器类型", "区域"),
    "description": ("description", "meaning", "desc", "描述", "说明", "含义"),
    "offset": ("offset", "偏移", "偏移量"),
    "eng_range": ("eng_range", "range", "engineering_range", "量程", "工程量程"),
    "raw_range": ("raw_range", "原始量程", "原始范围"),
    "pdu_address": ("pdu_address", "pdu", "protocol_address", "协议地址"),
    "note": ("note", "notes", "remark", "备注", "注释"),
    "device": ("device", "model", "设备", "设备型号"),
    "registers": ("registers", "register_count", "count", "quantity", "寄存器数", "寄存器个数", "数量", "长度"),
}

TYPE_ALIASES = {
    "bool": "bool", "boolean": "bool", "coil": "bool", "bit": "bool", "开关量": "bool", "布尔": "bool",
    "int16": "int16", "int": "int16", "short": "int16", "sint16": "int16", "i16": "int16", "signed": "int16",
    "有符号整数": "int16", "整型": "int16",
    "uint16": "uint16", "word": "uint16", "uint": "uint16", "ushort": "uint16", "u16": "uint16",
    "unsigned": "uint16", "无符号整数": "uint16",
    "int32": "int32", "dint": "int32", "long": "int32", "i32": "int32", "长整型": "int32",
    "uint32": "uint32", "udint": "uint32", "dword": "uint32", "ulong": "uint32", "u32": "uint32",
    "float32": "float32", "float": "float32", "real": "float32", "single": "float32", "f32": "float32",
    "浮点": "float32", "浮点数": "float32", "浮点型": "float32", "单精度": "float32",
    "float64": "float64", "double": "float64", "lreal": "float64", "f64": "float64", "双精度": "float64",
    "int64": "int64", "lint": "int64", "uint64": "uint64", "ulint": "uint64",
    "string": "string", "str": "string", "ascii": "string", "字符串": "string",
}
#: words after a type that only describe it ("uint16 bitfield", "uint16 code")
TYPE_QUALIFIERS = {"bitfield", "bits", "flags", "code", "enum", "status", "register", "value", "位", "状态"}
WIDTH_TYPES = {16: "uint16", 32: "uint32", 64: "uint64"}

ORDER_PHRASES = (
    (("high word first", "big endian", "big-endian", "msw first", "most significant word first", "高字在前",
      "高位在前", "大端"), "ABCD"),
    (("low word first", "word swap", "word-swap", "lsw first", "低字在前", "低位在前"), "CDAB"),
    (("byte swap", "byte-swap"), "BADC"),
    (("little endian", "little-endian", "小端"), "DCBA"),
)

#: function codes (Modbus Application Protocol V1.1b3, 6.1-6.4, 6.5/6.6/6.11/6.12) -> table
READ_FC = {1: "coil", 2: "discrete_input", 3: "holding_register", 4: "input_register"}
WRITE_FC = {5: "coil", 15: "coil", 6: "holding_register", 16: "holding_register"}
TABLE_WORDS = {
    "holding": "holding_register", "holding_register": "holding_register", "holding register": "holding_register",
    "hr": "holding_register", "4x": "holding_register", "保持寄存器": "holding_register",
    "input": "input_register", "input_register": "input_register", "input register": "input_register",
    "ir": "input_register", "3x": "input_register", "输入寄存器": "input_register",
    "coil": "coil", "coils": "coil", "0x": "coil", "线圈": "coil",
    "discrete": "discrete_input", "discrete_input": "discrete_input", "discrete input": "discrete_input",
    "di": "discrete_input", "1x": "discrete_input", "离散输入": "discrete_input",
}

_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"


def _norm_header(h: str) -> str:
    h = unicodedata.normalize("NFKC", h or "").strip().lower()
    return re.sub(r"[\s\-]+", "_", h)


_ALIAS = {_norm_header(a): col for col, names in COLUMNS.items() for a in names}


@dataclass
class Row:
    line: int
    cells: dict[str, tuple[str, int]]   # column role -> (value, 1-based CSV column)

    def get(self, role: str) -> str:
        return self.cells.get(role, ("", 0))[0].strip()

    def col(self, role: str) -> int:
        return self.cells.get(role, ("", 1))[1] or 1


@dataclass
class Imported:
    """The result: ``profile`` (the YAML text), ``tags`` (the tag mappings written), ``skipped`` (rows of
    other devices left out), ``encoding`` and ``delimiter`` used, ``devices`` (distinct device cells)."""

    text: str
    tags: list[dict[str, Any]]
    encoding: str
    delimiter: str
    skipped: int = 0
    devices: list[str] = field(default_factory=list)


def decode_bytes(data: bytes, encoding: str | None = None) -> tuple[str, str]:
    """(text, encoding used): ``encoding`` when given, else UTF-8 with BOM, UTF-8, then GB18030 (a superset
    of GBK, what Chinese Excel writes). Raises ValueError when none decodes."""
    if encoding:
        try:
            return data.decode(encoding), encoding
        except (LookupError, UnicodeDecodeError) as exc:
            raise ValueError(_("cannot read the file as {encoding}: {error}").format(encoding=encoding,
                                                                                     error=exc)) from None
    if data.startswith(b"\xef\xbb\xbf"):
        return data[3:].decode("utf-8", errors="strict"), "utf-8-sig"
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    try:
        return data.decode("gb18030"), "gbk"
    except UnicodeDecodeError:
        raise ValueError(_("the file is neither UTF-8 nor GBK text; give --encoding")) from None


def sniff_delimiter(text: str) -> str:
    """The delimiter of ``text``: csv.Sniffer over the first lines among , ; tab |, else a comma."""
    sample = "\n".join(text.splitlines()[:20])
    try:
        return csv.Sniffer().sniff(sample, delimiters=",;\t|").delimiter
    except csv.Error:
        return ","


def _slug(text: str, limit: int = 40) -> str:
    """A tag key from free text: ASCII letters/digits, words joined by _ (the part before ':' '(' ',')."""
    head = re.split(r"[:(,;]", text, maxsplit=1)[0]
    words = re.findall(r"[A-Za-z0-9]+", unicodedata.normalize("NFKD", head))
    slug = "_".join(w.lower() for w in words)[:limit].strip("_")
    return slug


def _parse_type(cell: str) -> tuple[str | None, str | None]:
    """(type, None) or (None, reason)."""
    text = unicodedata.normalize("NFKC", cell).strip()
    if not text:
        return "uint16", None
    bare = re.sub(r"\([^)]*\)", " ", text).strip()
    m = re.fullmatch(r"(\d+)\s*-?\s*bit(?:s)?(?:\s+(.*))?", bare, re.IGNORECASE)
    if m and int(m.group(1)) in WIDTH_TYPES and all(w.lower() in TYPE_QUALIFIERS | {"unsigned"}
                                                      for w in (m.group(2) or "").split()):
        return WIDTH_TYPES[int(m.group(1))], None
    words = bare.split()
    if not words:
        return None, _("no type")
    head = words[0].lower()
    dtype = TYPE_ALIASES.get(head)
    if dtype is None:
        return None, _("type '{cell}' is not one the gateway decodes (uint16, int16, uint32, int32, float32, "
                       "float64, int64, uint64, bool, string)").format(cell=cell)
    rest = [w for w in words[1:] if w.lower() not in TYPE_QUALIFIERS]
    if rest:
        return None, _("type '{cell}': '{rest}' is not part of a type (put a scale in the scale column)").format(
            cell=cell, rest=" ".join(rest))
    return dtype, None


def _parse_order(cell: str, dtype: str) -> tuple[str | None, str | None]:
    text = unicodedata.normalize("NFKC", cell).strip()
    if not text:
        return "ABCD", None
    codes = set(re.findall(r"\b(ABCD|CDAB|BADC|DCBA|ABCDEFGH|GHEFCDAB|BADCFEHG|HGFEDCBA|AB|BA)\b", text.upper()))
    order = None
    if len(codes) == 1:
        order = codes.pop()
    elif not codes:
        low = text.lower()
        for phrases, code in ORDER_PHRASES:
            if any(low.startswith(p) or low == p for p in phrases):
                order = code
                break
    if order is None:
        return None, _("order '{cell}' is not ABCD, CDAB, BADC or DCBA").format(cell=cell)
    try:
        return normalise_order(order, dtype), None
    except ValueError as exc:
        return None, str(exc)


def _parse_scale(cell: str) -> tuple[float | None, str | None]:
    text = unicodedata.normalize("NFKC", cell).strip().replace("×", "x").replace("÷", "/")
    if not text:
        return 1.0, None
    low = re.sub(r"^(?:value|raw|val|x|值|原始值)\s*(?=[/*x])", "", text.lower()).strip()
    m = re.fullmatch(rf"(?:[x*]\s*)?({_NUM})", low)
    if m:
        return float(m.group(1)), None
    m = re.fullmatch(rf"/\s*({_NUM})", low) or re.fullmatch(rf"1\s*/\s*({_NUM})", low)
    if m and float(m.group(1)) != 0:
        return 1.0 / float(m.group(1)), None
    return None, _("scale '{cell}' is not a factor: give engineering = raw x scale as a number (0.1) or as "
                   "/10").format(cell=cell)


def _parse_range(cell: str) -> tuple[list[float] | None, str | None]:
    text = unicodedata.normalize("NFKC", cell).strip()
    m = re.fullmatch(rf"\[?\s*({_NUM})\s*(?:-|\.\.|~|～|,|to)\s*({_NUM})\s*\]?", text)
    if not m:
        return None, _("range '{cell}' is not low-high (0-100)").format(cell=cell)
    return [float(m.group(1)), float(m.group(2))], None


def _parse_function(cell: str) -> tuple[str | None, bool, str | None]:
    """(table, write-only, reason) from a function-code or table cell ('3', '3/6', 'FC4', 'holding')."""
    text = unicodedata.normalize("NFKC", cell).strip().lower()
    if not text:
        return None, False, None
    if text in TABLE_WORDS:
        return TABLE_WORDS[text], False, None
    codes = [int(c, 16) if c.startswith("0x") else int(c) for c in re.findall(r"0x[0-9a-f]+|\d+", text)]
    if not codes:
        return None, False, _("function '{cell}' is not a function code (3, 4, 1, 2) or a table").format(cell=cell)
    reads = {READ_FC[c] for c in codes if c in READ_FC}
    writes = {WRITE_FC[c] for c in codes if c in WRITE_FC}
    unknown = [c for c in codes if c not in READ_FC and c not in WRITE_FC]
    if unknown or len(reads | writes) != 1:
        return None, False, _("function '{cell}' names no single register table (3 holding, 4 input, 1 coil, "
                              "2 discrete input; 6/16 and 5/15 write holding registers and coils)").format(cell=cell)
    return (reads | writes).pop(), not reads, None


def _leading_number(cell: str) -> tuple[str | None, str | None]:
    """The first address of a cell: '40003-40004' -> '40003', '3200,3201' -> '3200', '0x0010' -> '0x0010'; the
    second when given (a range), else None."""
    text = unicodedata.normalize("NFKC", cell).strip()
    m = re.match(r"(0x[0-9A-Fa-f]+|\d+)\s*(?:(?:-|~|,|\.\.)\s*(0x[0-9A-Fa-f]+|\d+))?", text)
    if not m:
        return None, None
    return m.group(1), m.group(2)


#: the words that mark an address as not confirmed by the source (in the address, pdu_address or note column)
ASSUMED_MARKS = ("assum", "假定", "推定", "待确认")


def _is_assumed(*cells: str | None) -> bool:
    return any(c and any(m in c.lower() for m in ASSUMED_MARKS) for c in cells)


def _glued(cell: str) -> bool:
    """True when the first address of ``cell`` runs straight into letters or digits ('3000x', '40001a'): a typo,
    never a number followed by its annotation ('40001 (assumed)', '40001-40002')."""
    text = unicodedata.normalize("NFKC", cell).strip()
    m = re.match(r"(0x[0-9A-Fa-f]+|\d+)", text)
    return bool(m) and len(text) > m.end() and (text[m.end()].isalnum() or text[m.end()] == "_")


def _rest_of(cell: str) -> str:
    return re.sub(r"^\s*(0x[0-9A-Fa-f]+|\d+)(\s*(-|~|,|\.\.)\s*(0x[0-9A-Fa-f]+|\d+))?", "", cell).strip()


class _Rows:
    """Header + rows of the CSV text, with the physical line each row starts on."""

    def __init__(self, text: str, delimiter: str, shown: str) -> None:
        self.shown = shown
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
        self.rows: list[tuple[int, list[str]]] = []
        line = 1
        for rec in reader:
            self.rows.append((line, rec))
            line = reader.line_num + 1


def import_profile(path: str | Path, *, name: str | None = None, device: str | None = None,
                   encoding: str | None = None, delimiter: str | None = None, description: str | None = None,
                   protocols: list[str] | None = None, shown: str | None = None) -> Imported:
    """Read the register list ``path`` and return the profile text and its tags (nothing is written).
    ``name``: the profile name (default: the file name, made a valid name); ``device``: keep only rows whose
    device cell contains it (case-insensitive; needed when the file holds several devices); ``encoding`` /
    ``delimiter``: instead of detecting them; ``description``: the profile's (default: the device cell);
    ``protocols``: modbus_rtu / modbus_tcp (default both). Raises ConfigError with every problem
    (FILE:LINE:COL), ValueError (one line) for an unreadable file or a bad option."""
    p = Path(path)
    shown = shown or str(path)
    try:
        size = p.stat().st_size
    except OSError as exc:
        raise ValueError(_("{file}: cannot read: {error}").format(file=shown, error=exc.strerror or exc)) from None
    if not p.is_file():
        raise ValueError(_("{file}: not a regular file").format(file=shown))
    if size > MAX_BYTES:
        raise ValueError(_("{file}: {size} bytes is more than a register list ({limit} KiB at most)").format(
            file=shown, size=size, limit=MAX_BYTES >> 10))
    data = p.read_bytes()
    text, used = decode_bytes(data, encoding)
    if delimiter is not None:
        delimiter = {"tab": "\t", "\\t": "\t"}.get(delimiter, delimiter)
        if len(delimiter) != 1:
            raise ValueError(_("delimiter {delimiter!r} must be one character (or tab)").format(delimiter=delimiter))
    delim = delimiter or sniff_delimiter(text)
    rows = _Rows(text, delim, shown).rows
    problems: list[Problem] = []
    while rows and not any(c.strip() for c in rows[0][1]):
        rows.pop(0)
    if not rows:
        raise ConfigError([Problem(shown, 1, 1, "", _("no header row (name, address, type, order, scale, unit)"))])
    hline, header = rows[0]
    roles: dict[int, str] = {}
    for i, h in enumerate(header):
        role = _ALIAS.get(_norm_header(h))
        if role is None:
            continue
        if role in roles.values():
            other = next(k for k, v in roles.items() if v == role)
            problems.append(Problem(shown, hline, i + 1, h.strip(), _("column '{header}' is a second {role} "
                                    "column (the first is column {col})").format(header=h.strip(), role=role,
                                                                                  col=other + 1)))
            continue
        roles[i] = role
    if "address" not in roles.values() and "pdu_address" not in roles.values():
        problems.append(Problem(shown, hline, 1, "", _("no address column (address, 地址; found: {headers})").format(
            headers=", ".join(h.strip() for h in header if h.strip()) or "-")))
    if problems:
        raise ConfigError(problems)
    body = []
    for line, rec in rows[1:]:
        if not any(c.strip() for c in rec):
            continue
        cells = {role: (rec[i] if i < len(rec) else "", i + 1) for i, role in roles.items()}
        body.append(Row(line, cells))
    devices = sorted({r.get("device") for r in body if r.get("device")})
    skipped = 0
    if device is not None:
        keep = [r for r in body if device.lower() in r.get("device").lower()]
        if not keep:
            raise ValueError(_("{file}: no row of device '{device}' (devices: {devices})").format(
                file=shown, device=device, devices="; ".join(devices) or "-"))
        skipped = len(body) - len(keep)
        body = keep
        devices = sorted({r.get("device") for r in body if r.get("device")})
    elif len(devices) > 1:
        raise ValueError(_("{file}: rows of {n} devices ({devices}): choose one with --device TEXT").format(
            file=shown, n=len(devices), devices="; ".join(devices)))
    if not body:
        raise ConfigError([Problem(shown, hline, 1, "", _("no register rows below the header"))])

    tags: list[dict[str, Any]] = []
    keys: dict[str, int] = {}
    for row in body:
        tag = _row_tag(row, shown, problems)
        if tag is None:
            continue
        key = tag["key"]
        if key in keys:
            given = "key" if row.get("key") else ("name" if row.get("name") == key else None)
            if given:
                problems.append(Problem(shown, row.line, row.col(given), given, _("name '{key}' is also the "
                                        "name of line {line}").format(key=key, line=keys[key])))
                continue
            n = 2
            while f"{key}_{n}" in keys:
                n += 1
            tag["key"] = key = f"{key}_{n}"
        keys[key] = row.line
        tags.append(tag)
    if problems:
        raise ConfigError(problems)

    prof_name = name if name is not None else _default_name(p)
    if not re.match(NAME_RE, prof_name):
        raise ValueError(_("profile name '{name}' must be letters, digits, _ . - (give --name)").format(name=prof_name))
    desc = description if description is not None else (devices[0] if devices else None)
    out = render(prof_name, tags, source=p.name, sha256=hashlib.sha256(data).hexdigest(), description=desc,
                 protocols=protocols)
    return Imported(out, tags, used, delim, skipped, devices)


def _default_name(p: Path) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.\-]+", "_", p.stem).strip("_.-")
    return stem if stem and re.match(NAME_RE, stem) else "imported"


def _row_tag(row: Row, shown: str, problems: list[Problem]) -> dict[str, Any] | None:
    """The profile tag of one row, or None with its problems appended (every one of the row)."""
    before = len(problems)

    def bad(role: str, message: str) -> None:
        problems.append(Problem(shown, row.line, row.col(role), role, message))

    dtype, why = _parse_type(row.get("type"))
    if why:
        bad("type", why)
        dtype = None
    order = "ABCD"
    if dtype is not None:
        order, why = _parse_order(row.get("order"), dtype)
        if why:
            bad("order", why)
    scale, why = _parse_scale(row.get("scale"))
    if why:
        bad("scale", why)
    offset = 0.0
    if row.get("offset"):
        o, why = _parse_scale(row.get("offset").lstrip("+"))
        if why or not re.fullmatch(_NUM, row.get("offset").strip()):
            bad("offset", _("offset '{cell}' is not a number").format(cell=row.get("offset")))
        else:
            offset = float(row.get("offset"))
    eng = raw = None
    if row.get("eng_range"):
        eng, why = _parse_range(row.get("eng_range"))
        if why:
            bad("eng_range", why)
    if row.get("raw_range"):
        raw, why = _parse_range(row.get("raw_range"))
        if why:
            bad("raw_range", why)
    if (row.get("eng_range") and not row.get("raw_range")) or (row.get("raw_range") and not row.get("eng_range")):
        bad("eng_range" if row.get("eng_range") else "raw_range",
            _("an engineering range needs the raw range it maps (raw_range and eng_range go together)"))
    if row.get("key") and not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$", row.get("key")):
        bad("key", _("tag '{key}' is not a tag key (letters, digits, _ . -)").format(key=row.get("key")))
    table_fc, write_only, why = _parse_function(row.get("function"))
    if why:
        bad("function", why)

    address, assumed, pdu_note = _row_address(row, table_fc, bad)
    if address is not None and dtype is not None:
        table = address["table"] if isinstance(address, dict) else parse_reference(address)[0]
        if table in ("coil", "discrete_input") and dtype != "bool":
            bad("type", _("a {table} holds bits: the type is bool, not {type}").format(
                table=table.replace("_", " "), type=dtype))
        count = _leading_number(row.get("registers"))[0] if row.get("registers") else None
        if dtype == "string" and count is None:
            bad("type", _("a string needs its length: give the registers column (2 characters each)"))
        elif count is not None and dtype not in ("bool", "string") and int(count, 0) != register_count(dtype):
            bad("registers", _("{count} registers, but {type} takes {need}").format(
                count=count, type=dtype, need=register_count(dtype)))
        first, second = _leading_number(row.get("address") or row.get("pdu_address"))
        if second is not None and dtype not in ("bool", "string"):
            span = int(second, 0) - int(first, 0) + 1
            if span != register_count(dtype):
                bad("address", _("{cell} spans {span} registers; {type} takes {count}").format(
                    cell=row.get("address") or row.get("pdu_address"), span=span, type=dtype,
                    count=register_count(dtype)))
    if len(problems) > before or address is None or dtype is None:
        return None

    descr = row.get("description")
    raw_name = row.get("name")
    key_ok = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"
    if row.get("key"):
        key = row.get("key")
        if raw_name and raw_name != key:
            descr = f"{raw_name}: {descr}" if descr and descr != raw_name else raw_name
    elif raw_name and re.match(key_ok, raw_name):
        key = raw_name
    else:
        if raw_name:  # a Chinese 名称: keep it as the description
            descr = f"{raw_name}: {descr}" if descr and descr != raw_name else raw_name
        key = _slug(row.get("description")) if not raw_name else ""
        if not key:
            t, a = (address["table"], address["address"]) if isinstance(address, dict) else parse_reference(address)
            key = f"r{reference(t, a)}"
    tag: dict[str, Any] = {"key": key, "address": address, "type": dtype}
    if dtype == "string":
        tag["str_len"] = 2 * int(_leading_number(row.get("registers"))[0], 0)
    if order != "ABCD":
        tag["order"] = order
    if scale != 1.0:
        tag["scale"] = scale
    if offset:
        tag["offset"] = offset
    if raw is not None and eng is not None:
        tag["raw_range"], tag["eng_range"] = raw, eng
    if row.get("unit"):
        tag["unit"] = row.get("unit")
    if write_only:
        tag["writable"] = True
    if descr:
        tag["description"] = descr
    notes = [n for n in (pdu_note, row.get("note")) if n]
    if assumed:
        tag["assumed"] = True
    if notes:
        tag["note"] = "; ".join(notes)
    return tag


def _row_address(row: Row, table_fc: str | None, bad: Any) -> tuple[Any, bool, str | None]:
    """(address as the profile writes it, assumed, note) of a row; (None, ...) after bad(...)."""
    cell, pdu_cell = row.get("address"), row.get("pdu_address")
    ref: tuple[str, int] | None = None
    ref_text = None
    for role, text in (("address", cell), ("pdu_address", pdu_cell)):
        if text and _glued(text):
            bad(role, _("'{cell}' is not an address (a typo? write 40001, 0x0010 or 40001 (assumed))").format(
                cell=text))
            return None, False, None
    if cell:
        first, _second = _leading_number(cell)
        if first is not None and not first.lower().startswith("0x") and len(first) in (5, 6) and first[0] in "0134":
            try:
                ref = parse_reference(first)
                ref_text = first
            except ValueError as exc:
                bad("address", str(exc))
                return None, False, None
    pdu: int | None = None
    note = None
    if pdu_cell:
        first, _second = _leading_number(pdu_cell)
        if first is None:
            bad("pdu_address", _("pdu address '{cell}' is not a number").format(cell=pdu_cell))
            return None, False, None
        pdu = int(first, 0)
        if _is_assumed(pdu_cell):
            # the profile file's own text: English whatever the locale, as the shipped profiles are
            note = (f"PDU {pdu} derived by the 4xxxx-40001 convention, not stated by the source; verify on the "
                    "device")
    elif cell and ref is None:
        first, _second = _leading_number(cell)
        if first is None:
            bad("address", _("address '{cell}' is not a register number (40001, or 0-based with a function "
                             "code)").format(cell=cell))
            return None, False, None
        pdu = int(first, 0)
    # "(assumed)" in the address, pdu_address or note column: the source does not confirm the address
    assumed = _is_assumed(cell, pdu_cell, row.get("note"))
    if ref is not None:
        table, a = ref
        if table_fc is not None and table_fc != table:
            bad("function", _("address {ref} is a {table} but the function says {fc_table}").format(
                ref=ref_text, table=table.replace("_", " "), fc_table=table_fc.replace("_", " ")))
            return None, False, None
        if pdu is not None and pdu != a:
            bad("pdu_address", _("pdu address {pdu} is not the one of {ref} ({a})").format(pdu=pdu, ref=ref_text,
                                                                                          a=a))
            return None, False, None
        return int(ref_text) if ref_text[0] != "0" else ref_text, assumed, note
    if pdu is None:
        bad("address", _("no address"))
        return None, False, None
    if not 0 <= pdu <= 65535:
        bad("address", _("address {pdu} outside 0..65535").format(pdu=pdu))
        return None, False, None
    if table_fc is None:
        bad("address", _("address {pdu} is 0-based: give the function code column (3 holding, 4 input, 1 coil, "
                         "2 discrete input) or write it as a reference such as 40001").format(pdu=pdu))
        return None, False, None
    return {"table": table_fc, "address": pdu}, assumed, note


def _scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v) if v != int(v) or abs(v) >= 1e15 else f"{v:.1f}"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list):
        return "[" + ", ".join(_scalar(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_scalar(x)}" for k, x in v.items()) + "}"
    raise TypeError(type(v).__name__)


def render(name: str, tags: list[dict[str, Any]], *, source: str, sha256: str, description: str | None = None,
           protocols: list[str] | None = None) -> str:
    """The profile file text: a comment naming the register list, ``profile:`` and one flow mapping per tag,
    as config/profiles/*.yaml are written."""
    lines = [f"# Generated by `hazard-gateway profile import` from {source} (sha256 {sha256}).",
             "# Verify every address marked assumed: true on the device before relying on it.", "",
             "profile:", f"  name: {_scalar(name)}"]
    if description:
        lines.append(f"  description: {_scalar(description)}")
    lines.append(f"  source: {_scalar(source)}")
    if protocols:
        lines.append(f"  protocols: {_scalar(list(protocols))}")
    lines += ["", "tags:"]
    lines += [f"  - {_scalar(t)}" for t in tags]
    return "\n".join(lines) + "\n"


def write_checked(text: str, out: str | Path) -> Path:
    """Load ``text`` through gateway.device_profiles.load_profile (the loader `check` uses) from a temporary
    file beside ``out``, then move it to ``out``. Raises ConfigError (the loader's problems) and leaves
    ``out`` untouched when the profile does not load."""
    out = Path(out)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".yaml", dir=out.parent if str(out.parent) else ".")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        _load_as(tmp, str(out))
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return out


def check_text(text: str, shown: str = "<profile>") -> None:
    """Load ``text`` as a profile file (a temporary file) through load_profile; raises ConfigError (problems
    named after ``shown``)."""
    fd, tmp = tempfile.mkstemp(suffix=".yaml")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        _load_as(tmp, shown)
    finally:
        os.unlink(tmp)


def _load_as(tmp: str, shown: str) -> None:
    try:
        load_profile(tmp)
    except ConfigError as exc:
        names = {tmp, os.path.relpath(tmp)} if os.path.isabs(tmp) else {tmp}
        raise ConfigError([Problem(shown if p.file in names or p.file.endswith(os.path.basename(tmp)) else p.file,
                                   p.line, p.col, p.path, p.message, p.warning) for p in exc.problems]) from None
