"""Configuration: one YAML file validated into typed models.

Shape (see config/example-site.yaml for a commented template)::

    gateway:    {id, enterprise_code, major_hazard_code, state_dir}
    keys:       {private_key}
    store:      {path, commit_interval_ms, max_bytes, retention_days}
    uplink:     {url, ca_file, client_cert, client_key, timeout_ms, batch_max_readings, interval_ms}
    devices:    [{name, protocol: modbus_tcp|modbus_rtu|opcua, ..., tags: [...]}]
    interlocks: [{name, inputs: [{tag, condition}], vote: 2oo3, on_fault: trip|hold, actions: [{output, value}]}]

Every mistake is reported as ``FILE:LINE:COL: key.path: message`` (all of them at
once) through :class:`ConfigError`; unknown keys are errors, so a typo cannot
silently disable an alarm. Relative paths are resolved against the directory of
the config file. The YAML is read with ruamel.yaml, which keeps the line and
column of every key and value.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError

from drivers.codec import normalise_order, register_count
from drivers.modbus import parse_reference
from drivers.opcua import parse_node_id

LIMIT_KINDS = ("HH", "H", "L", "LL")
TABLES = ("coil", "discrete_input", "input_register", "holding_register")
NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"


@dataclass(frozen=True)
class Problem:
    """One config problem: where (file, 1-based line and column, key path) and what."""

    file: str
    line: int
    col: int
    path: str
    message: str
    warning: bool = False

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        kind = "warning: " if self.warning else ""
        return f"{self.file}:{self.line}:{self.col}: {kind}{where}{self.message}"


class ConfigError(Exception):
    """Raised with every problem of a config file; str() is one line per problem."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- sections ---------------------------------------------------------------

class GatewaySection(Strict):
    id: str = Field(pattern=NAME_RE, description="gateway id, unique per regulator")
    enterprise_code: str | None = Field(None, description="regulator's enterprise code (12 digits on most platforms)")
    major_hazard_code: str | None = Field(None, description="code of the major hazard installation")
    state_dir: str = Field("state", description="directory for the store and status files (relative to the config)")


class KeysSection(Strict):
    private_key: str = Field(description="Ed25519 private key PEM (mode 0600) made by `hazard-gateway keygen`")


class StoreSection(Strict):
    path: str = Field("store.sqlite", description="SQLite buffer, relative to state_dir")
    commit_interval_ms: int = Field(500, ge=10, le=60_000,
                                    description="the writer commits at least this often; bounds a power-loss loss")
    max_bytes: int = Field(1 << 30, ge=1 << 20, description="size cap of the buffer database")
    retention_days: float = Field(30, ge=0, description="time floor of local records (SAWS order No. 40: 30 days)")


class UplinkSection(Strict):
    url: str = Field(pattern=r"^https://", description="receiver endpoint, e.g. https://host/v1/batches (TLS only)")
    ca_file: str | None = Field(None, description="CA (or self-signed certificate) that the receiver's certificate must chain to")
    client_cert: str | None = None
    client_key: str | None = None
    timeout_ms: int = Field(5000, ge=100)
    batch_max_readings: int = Field(500, ge=1, le=100_000)
    interval_ms: int = Field(1000, ge=10, description="pause between batches when nothing is pending")


class LimitCfg(Strict):
    setpoint: float
    deadband: float = Field(0.0, ge=0)
    on_delay_s: float = Field(0.0, ge=0)
    off_delay_s: float = Field(0.0, ge=0)
    priority: int | None = Field(None, ge=1, le=4)
    latching: bool | None = None


LimitValue = Union[float, LimitCfg]


class AlarmsCfg(Strict):
    gas: Literal["combustible", "toxic", "oxygen"] | None = Field(
        None, description="GB/T 50493-2019 5.5.2 preset: combustible 25/50 %LEL, toxic 100/200 %OEL, oxygen 19.5/23.5 %VOL")
    oel: float | None = Field(None, gt=0, description="occupational exposure limit for gas: toxic (same unit as the tag)")
    HH: LimitValue | None = None
    H: LimitValue | None = None
    L: LimitValue | None = None
    LL: LimitValue | None = None
    stale_after_s: float | None = Field(None, gt=0, description="no fresh good reading for this long is a stale alarm")
    group: str | None = Field(None, description="first-out group (default: every gas detector is in the group 'gas')")

    @model_validator(mode="after")
    def _toxic_needs_oel(self) -> "AlarmsCfg":
        if self.gas == "toxic" and self.oel is None and self.H is None and self.HH is None:
            raise ValueError("gas: toxic needs oel (or explicit H/HH set points)")
        return self


class ModbusAddress(Strict):
    table: Literal["coil", "discrete_input", "input_register", "holding_register"]
    address: int = Field(ge=0, le=65535, description="0-based protocol (PDU) address")


class TagBase(Strict):
    name: str = Field(pattern=NAME_RE)
    unit: str = ""
    writable: bool = False
    alarms: AlarmsCfg | None = None
    description: str | None = None


class ModbusTag(TagBase):
    address: Union[ModbusAddress, int, str] = Field(
        description="reference notation (40001, 30001, 400002 ...) or {table, address} (0-based)")
    type: str = "uint16"
    order: str = "ABCD"
    length: int = Field(1, ge=1, le=125)
    bit: int | None = Field(None, ge=0, le=15)
    str_len: int | None = Field(None, ge=1, le=250)
    scale: float = 1.0
    offset: float = 0.0
    raw_range: tuple[float, float] | None = None
    eng_range: tuple[float, float] | None = None
    sentinels: list[Union[int, str]] = Field(default_factory=list, description="raw 'not available' values, e.g. 0xFFFF")
    write_single_as_fc16: bool = False

    @field_validator("address")
    @classmethod
    def _address(cls, v: Any) -> Any:
        if isinstance(v, ModbusAddress):
            return v
        parse_reference(v)  # raises ValueError with the reason (C05: a bare 0-based number is ambiguous)
        return v

    @field_validator("type")
    @classmethod
    def _type(cls, v: str) -> str:
        register_count(v, 1, 1)
        return v

    @field_validator("order")
    @classmethod
    def _order(cls, v: str, info: Any) -> str:
        normalise_order(v, info.data.get("type", "uint16"))
        return v

    @model_validator(mode="after")
    def _ranges(self) -> "ModbusTag":
        if (self.raw_range is None) != (self.eng_range is None):
            raise ValueError("raw_range and eng_range go together")
        return self

    def table_address(self) -> tuple[str, int]:
        if isinstance(self.address, ModbusAddress):
            return self.address.table, self.address.address
        return parse_reference(self.address)

    def sentinel_values(self) -> tuple[int, ...]:
        return tuple(int(s, 0) if isinstance(s, str) else int(s) for s in self.sentinels)

    @field_validator("sentinels")
    @classmethod
    def _sentinels(cls, v: list) -> list:
        for s in v:
            if isinstance(s, str):
                try:
                    int(s, 0)
                except ValueError:
                    raise ValueError(f"sentinel {s!r} is not an integer (write 0xFFFF or 65535)") from None
        return v


class OpcUaTag(TagBase):
    node_id: str = Field(description="ns=2;s=..., nsu=URI;s=..., i=/s=/g=/b= forms")
    subscribe: bool = True
    deadband: float = Field(0.0, ge=0)

    @field_validator("node_id")
    @classmethod
    def _node_id(cls, v: str) -> str:
        parse_node_id(v)  # ValueError: whitespace, unknown form (OPC UA Part 6 5.3.1.10)
        return v


class DeviceBase(Strict):
    name: str = Field(pattern=NAME_RE)
    poll_interval_ms: int = Field(1000, ge=20, le=3_600_000)
    timeout_ms: int = Field(1000, ge=10, le=60_000)
    enabled: bool = True


class ModbusTcpDevice(DeviceBase):
    protocol: Literal["modbus_tcp"]
    host: str
    port: int = Field(502, ge=1, le=65535)
    unit_id: int = Field(1, ge=0, le=255)
    max_registers_per_read: int = Field(125, ge=1, le=125)
    max_bits_per_read: int = Field(2000, ge=1, le=2000)
    tags: list[ModbusTag]


class ModbusRtuDevice(DeviceBase):
    protocol: Literal["modbus_rtu"]
    port: str = Field(description="serial device, e.g. /dev/ttyUSB0 or /dev/serial/by-id/...")
    baudrate: int = Field(9600, ge=300, le=921600)
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    unit_id: int = Field(ge=1, le=247)
    max_registers_per_read: int = Field(125, ge=1, le=125)
    max_bits_per_read: int = Field(2000, ge=1, le=2000)
    tags: list[ModbusTag]


class OpcUaSecurity(Strict):
    """OPC UA Part 2 / Part 7 security: policy + mode with a client certificate, and/or a user token."""

    policy: Literal["Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss"] | None = None
    mode: Literal["Sign", "SignAndEncrypt"] | None = None
    cert: str | None = Field(None, description="client certificate (DER or PEM) file")
    key: str | None = Field(None, description="client private key file")
    server_cert: str | None = Field(None, description="trusted server certificate file")
    username: str | None = None
    password_file: str | None = Field(None, description="file holding the password (never inline)")

    @model_validator(mode="after")
    def _pairs(self) -> "OpcUaSecurity":
        if (self.policy is None) != (self.mode is None):
            raise ValueError("policy and mode go together")
        if self.policy and not (self.cert and self.key):
            raise ValueError("a security policy needs cert and key files")
        if (self.username is None) != (self.password_file is None):
            raise ValueError("username and password_file go together")
        return self


class OpcUaDeviceCfg(DeviceBase):
    protocol: Literal["opcua"]
    endpoint: str = Field(pattern=r"^opc\.tcp://")
    publishing_interval_ms: int = Field(250, ge=10)
    watchdog_s: float = Field(5.0, gt=0, description="read ServerStatus/CurrentTime this often (C12)")
    security: OpcUaSecurity | None = None
    tags: list[OpcUaTag]


DeviceCfg = Annotated[Union[ModbusTcpDevice, ModbusRtuDevice, OpcUaDeviceCfg], Field(discriminator="protocol")]


class InterlockInputCfg(Strict):
    tag: str
    condition: Literal["HH", "H", "L", "LL"]


class ActionCfg(Strict):
    output: str = Field(description="a writable tag")
    value: Union[bool, int, float] = Field(description="the safe-state value written on trip")


class InterlockCfg(Strict):
    name: str = Field(pattern=NAME_RE)
    inputs: list[InterlockInputCfg] = Field(min_length=1)
    vote: str = Field("1oo1", pattern=r"^\d+oo\d+$", description="MooN voting, e.g. 2oo3 (GB 16808-2025 5.5.1.8)")
    on_fault: Literal["trip", "hold"] = "trip"
    latch: bool = True
    actions: list[ActionCfg] = Field(min_length=1)

    @model_validator(mode="after")
    def _vote(self) -> "InterlockCfg":
        m, n = (int(x) for x in self.vote.split("oo"))
        if not 1 <= m <= n:
            raise ValueError(f"vote {self.vote}: M must be between 1 and N")
        if n != len(self.inputs):
            raise ValueError(f"vote {self.vote} needs {n} inputs, {len(self.inputs)} given")
        return self


class Config(Strict):
    gateway: GatewaySection
    keys: KeysSection
    store: StoreSection = StoreSection()
    uplink: UplinkSection | None = None
    devices: list[DeviceCfg] = Field(min_length=1)
    interlocks: list[InterlockCfg] = Field(default_factory=list)


@dataclass
class LoadedConfig:
    """A validated config and where it came from: path, base dir for relative paths, hash of its bytes."""

    model: Config
    path: Path
    text: str
    warnings: list[Problem]

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    @property
    def config_hash(self) -> str:
        """SHA-256 hex of the file's bytes: recorded in every batch (config_hash)."""
        return hashlib.sha256(self.text.encode()).hexdigest()

    def resolve(self, p: str | None) -> Path | None:
        """A config path made absolute against the config file's directory."""
        if p is None:
            return None
        q = Path(p).expanduser()
        return q if q.is_absolute() else (self.base_dir / q)

    @property
    def state_dir(self) -> Path:
        return self.resolve(self.model.gateway.state_dir)  # type: ignore[return-value]

    @property
    def store_path(self) -> Path:
        q = Path(self.model.store.path)
        return q if q.is_absolute() else self.state_dir / q

    def all_tags(self) -> dict[str, tuple[Any, Any]]:
        """tag name -> (device cfg, tag cfg)."""
        return {t.name: (d, t) for d in self.model.devices for t in d.tags}


# --- locating errors ---------------------------------------------------------

def _locate(root: Any, loc: tuple, default: tuple[int, int] = (0, 0)) -> tuple[int, int, str]:
    """Walk a pydantic error location through the ruamel tree: (line, col) 1-based and a key path."""
    node, line, col = root, default[0], default[1]
    parts: list[str] = []
    for key in loc:
        if isinstance(node, CommentedMap) and isinstance(key, str) and key in node:
            ln, cl = node.lc.key(key)
            line, col = ln, cl
            parts.append(key)
            node = node[key]
        elif isinstance(node, CommentedSeq) and isinstance(key, int) and 0 <= key < len(node):
            line, col = node.lc.item(key)
            parts.append(f"[{key}]")
            node = node[key]
        # else: a discriminator tag or a model-level location; keep the deepest found
    path = ".".join(parts).replace(".[", "[")
    return line + 1, col + 1, path


def _value_pos(root: Any, loc: tuple) -> tuple[int, int] | None:
    """Position of the value (not the key) at loc, when it is a scalar in a mapping."""
    node = root
    for i, key in enumerate(loc):
        last = i == len(loc) - 1
        if isinstance(node, CommentedMap) and isinstance(key, str) and key in node:
            if last and not isinstance(node[key], (CommentedMap, CommentedSeq)):
                ln, cl = node.lc.value(key)
                return ln + 1, cl + 1
            node = node[key]
        elif isinstance(node, CommentedSeq) and isinstance(key, int) and 0 <= key < len(node):
            if last and not isinstance(node[key], (CommentedMap, CommentedSeq)):
                ln, cl = node.lc.item(key)
                return ln + 1, cl + 1
            node = node[key]
        else:
            return None
    return None


def _message(err: dict) -> str:
    msg = err.get("msg", "invalid")
    typ = err.get("type", "")
    if typ == "extra_forbidden":
        return "unknown key (typo?)"
    if typ == "missing":
        return f"missing required key '{err['loc'][-1]}'"
    if typ == "union_tag_invalid":
        ctx = err.get("ctx") or {}
        return f"protocol must be one of {ctx.get('expected_tags', 'modbus_tcp, modbus_rtu, opcua')}"
    if typ == "union_tag_not_found":
        return "missing required key 'protocol' (modbus_tcp, modbus_rtu or opcua)"
    msg = msg.removeprefix("Value error, ")
    return msg


_PYDANTIC_BRANCHES = {"float", "int", "str", "bool", "list", "dict", "tuple", "none",
                      "modbus_tcp", "modbus_rtu", "opcua"}  # + discriminator tags


def _clean_loc(loc: tuple) -> tuple:
    """Drop pydantic's union branch names (e.g. 'modbus_tcp', 'float', 'LimitCfg') from a location."""
    models = {c.__name__ for c in Strict.__subclasses__()} | {c.__name__ for c in TagBase.__subclasses__()} \
        | {c.__name__ for c in DeviceBase.__subclasses__()}
    out = []
    for k in loc:
        if isinstance(k, str) and (k in models or k in _PYDANTIC_BRANCHES
                                   or k.startswith(("function-", "union[", "tagged-union[", "literal["))):
            continue
        out.append(k)
    return tuple(out)


def _dedupe_union_errors(errors: list[dict]) -> list[dict]:
    """A value that fits no member of a Union yields one error per member: keep the most telling.

    A type error of one branch ("should be a valid number") is dropped when another branch got
    further (its location is deeper), and only one error is kept per location."""
    cleaned = [(_clean_loc(e["loc"]), e) for e in errors]
    out: list[dict] = []
    seen: set[tuple] = set()
    for loc, e in cleaned:
        typ = e.get("type", "")
        if typ.endswith(("_type", "_parsing")) and any(o != loc and o[:len(loc)] == loc for o, _ in cleaned):
            continue
        if typ.endswith(("_type", "_parsing")) and any(o == loc and not f.get("type", "").endswith(("_type", "_parsing"))
                                                       for o, f in cleaned):
            continue
        if loc in seen:
            continue
        seen.add(loc)
        out.append(dict(e, loc=loc))
    return out


def _to_plain(node: Any) -> Any:
    if isinstance(node, CommentedMap):
        return {str(k): _to_plain(v) for k, v in node.items()}
    if isinstance(node, CommentedSeq):
        return [_to_plain(v) for v in node]
    return node


# --- loading -------------------------------------------------------------------

def load_config(path: str | Path) -> LoadedConfig:
    """Read, parse and validate a config file.

    Returns a LoadedConfig (with warnings, e.g. a gas set point looser than the
    GB/T 50493-2019 5.5.2 ceiling). Raises ConfigError listing every problem
    as FILE:LINE:COL; never another exception for a bad file.
    """
    p = Path(path)
    shown = str(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([Problem(shown, 1, 1, "", "no such file")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([Problem(shown, 1, 1, "", f"cannot read: {exc}")]) from None
    yaml = YAML(typ="rt")
    try:
        root = yaml.load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise ConfigError([Problem(shown, line, col, "", f"YAML syntax: {exc.problem or exc.context}")]) from None
    except Exception as exc:  # ruamel raises a few unmarked errors (duplicate keys, bad tags)
        raise ConfigError([Problem(shown, 1, 1, "", f"YAML: {str(exc).splitlines()[0]}")]) from None
    if not isinstance(root, CommentedMap):
        raise ConfigError([Problem(shown, 1, 1, "", "the top level must be a mapping (gateway:, devices: ...)")])
    try:
        model = Config.model_validate(_to_plain(root))
    except ValidationError as exc:
        problems = []
        for err in _dedupe_union_errors(exc.errors(include_url=False)):
            loc = err["loc"]
            if err.get("type") == "union_tag_invalid":
                loc = (*loc, "protocol")
            line, col, kpath = _locate(root, loc)
            if err.get("type") not in ("missing", "extra_forbidden"):
                vp = _value_pos(root, loc)
                if vp:
                    line, col = vp
            problems.append(Problem(shown, line, col, kpath, _message(err)))
        raise ConfigError(sorted(problems, key=lambda q: (q.line, q.col))) from None
    loaded = LoadedConfig(model=model, path=p.resolve(), text=text, warnings=[])
    problems, warnings = _semantic_checks(loaded, root, shown)
    if problems:
        raise ConfigError(sorted(problems, key=lambda q: (q.line, q.col)))
    loaded.warnings = warnings
    return loaded


def _semantic_checks(cfg: LoadedConfig, root: Any, shown: str) -> tuple[list[Problem], list[Problem]]:
    """Cross-references pydantic cannot see: unique names, interlock inputs and outputs, serial settings."""
    m = cfg.model
    problems: list[Problem] = []
    warnings: list[Problem] = []

    def at(loc: tuple, msg: str, warning: bool = False) -> None:
        line, col, kpath = _locate(root, loc)
        (warnings if warning else problems).append(Problem(shown, line, col, kpath, msg, warning))

    seen_dev: dict[str, int] = {}
    seen_tag: dict[str, tuple[int, int]] = {}
    serial: dict[str, tuple] = {}
    for di, d in enumerate(m.devices):
        if d.name in seen_dev:
            at(("devices", di, "name"), f"device name '{d.name}' also used by devices[{seen_dev[d.name]}]")
        seen_dev.setdefault(d.name, di)
        if isinstance(d, ModbusRtuDevice):
            settings = (d.baudrate, d.parity, d.stopbits, d.bytesize)
            if d.port in serial and serial[d.port][0] != settings:
                at(("devices", di, "baudrate"), f"port {d.port} is shared with devices[{serial[d.port][1]}] "
                   "but with other serial settings (one bus, one baud rate)")
            serial.setdefault(d.port, (settings, di))
        for ti, t in enumerate(d.tags):
            if t.name in seen_tag:
                a, b = seen_tag[t.name]
                at(("devices", di, "tags", ti, "name"), f"tag name '{t.name}' also used at devices[{a}].tags[{b}]")
            seen_tag.setdefault(t.name, (di, ti))
            if isinstance(t, ModbusTag):
                table, _ = t.table_address()
                if t.writable and table in ("discrete_input", "input_register"):
                    at(("devices", di, "tags", ti, "writable"), f"{_article(table)} {table.replace('_', ' ')} cannot be written")
                if table in ("coil", "discrete_input") and t.type not in ("bool",):
                    at(("devices", di, "tags", ti, "type"), f"{_article(table)} {table.replace('_', ' ')} holds bits: type must be bool")
            if t.alarms is not None:
                for w in _preset_warnings(t.alarms):
                    at(("devices", di, "tags", ti, "alarms"), w, warning=True)
    tags = cfg.all_tags()
    for ii, il in enumerate(m.interlocks):
        for ni, inp in enumerate(il.inputs):
            if inp.tag not in tags:
                at(("interlocks", ii, "inputs", ni, "tag"), f"unknown tag '{inp.tag}'")
                continue
            alarms = tags[inp.tag][1].alarms
            if alarms is None or inp.condition not in _limit_kinds(alarms):
                at(("interlocks", ii, "inputs", ni, "condition"),
                   f"tag '{inp.tag}' has no {inp.condition} limit (set it under the tag's alarms:)")
        for ai, act in enumerate(il.actions):
            if act.output not in tags:
                at(("interlocks", ii, "actions", ai, "output"), f"unknown tag '{act.output}'")
            elif not tags[act.output][1].writable:
                at(("interlocks", ii, "actions", ai, "output"), f"tag '{act.output}' is not writable (writable: true)")
    return problems, warnings


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def _limit_kinds(a: AlarmsCfg) -> set[str]:
    kinds = {k for k in LIMIT_KINDS if getattr(a, k) is not None}
    if a.gas in ("combustible", "toxic"):
        kinds |= {"H", "HH"}
    elif a.gas == "oxygen":
        kinds |= {"L", "H"}
    return kinds


def _preset_warnings(a: AlarmsCfg) -> list[str]:
    """Set points looser than the GB/T 50493-2019 5.5.2 ceilings (combustible 25/50 %LEL, toxic 100/200 %OEL)."""
    out = []

    def sp(v: LimitValue | None) -> float | None:
        return None if v is None else (v if isinstance(v, (int, float)) else v.setpoint)

    if a.gas == "combustible":
        ceilings = {"H": 25.0, "HH": 50.0}
    elif a.gas == "toxic" and a.oel:
        ceilings = {"H": a.oel, "HH": 2 * a.oel}
    else:
        ceilings = {}
    for k, ceiling in ceilings.items():
        v = sp(getattr(a, k))
        if v is not None and v > ceiling:
            out.append(f"{k} set point {v:g} is looser than the GB/T 50493-2019 5.5.2 ceiling {ceiling:g}")
    return out
