"""The config sections of the Modbus protocols: what a modbus_tcp or modbus_rtu device and its tags may say.

Protocol fields only (pydantic, gateway.model.STRICT): gateway.config joins them with the fields every device
and tag has (name, poll interval, unit, alarms, ranges, report) into the device models of the config, for every
protocol the registry lists (drivers.registry.Protocol.device_fields / tag_fields). :func:`check_devices` holds
the checks across devices and tags a single field cannot make.

Sources: Modbus Application Protocol V1.1b3 (tables and their function codes, 125 registers / 2000 bits per
read, section 6), Modbus over Serial Line V1.02 (slave addresses 1..247, 2.2; parity, 2.5.1), Modbus Messaging
on TCP/IP V1.0b (the MBAP unit identifier, 4.4.1.3); reference notation: drivers.modbus.parse_reference (C05).
"""

from __future__ import annotations

from typing import Any, Callable, Literal, Union

from pydantic import BaseModel, Field, field_validator, model_validator

from drivers.codec import normalise_order, register_count
from drivers.modbus import parse_reference
from gateway.model import STRICT, Explained


class ModbusAddress(BaseModel):
    model_config = STRICT

    table: Literal["coil", "discrete_input", "input_register", "holding_register"]
    address: int = Field(ge=0, le=65535, description="0-based protocol (PDU) address")


def _table_address(address: Any) -> tuple[str, int]:
    if isinstance(address, ModbusAddress):
        return address.table, address.address
    return parse_reference(address)


class ModbusTagFields(BaseModel):
    """The Modbus fields of a tag: where it is (address), how its registers decode (type, order, length,
    bit, str_len) and scale, and the raw values that mean "not available"."""

    model_config = STRICT

    address: Union[ModbusAddress, int, str] = Field(
        description="reference notation (40001, 30001, 400002 ...) or {table, address} (0-based)")
    type: str = Field("uint16", description="bool, bit, int16, uint16, int32, uint32, float32, int64, uint64, "
                                            "float64, string")
    order: str = Field("ABCD", description="register order of multi-register values: ABCD (high word first), "
                                           "CDAB (word-swapped), BADC, DCBA")
    length: int = Field(1, ge=1, le=125, description="array of this many consecutive values")
    bit: int | None = Field(None, ge=0, le=15, description="type bit: bit number, 0 = least significant")
    str_len: int | None = Field(None, ge=1, le=250, description="type string: characters")
    scale: float = Field(1.0, description="engineering = raw * scale + offset")
    offset: float = Field(0.0, description="engineering = raw * scale + offset")
    raw_range: tuple[float, float] | None = Field(None, description="[raw_lo, raw_hi] mapped linearly onto "
                                                                    "eng_range, e.g. 4-20 mA counts [4000, 20000]")
    eng_range: tuple[float, float] | None = Field(None, description="[eng_lo, eng_hi] for raw_range")
    sentinels: list[Union[int, str]] = Field(default_factory=list, description="raw 'not available' values, e.g. 0xFFFF")
    write_single_as_fc16: bool = Field(False, description="write one register with FC16 (devices refusing FC6)")

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
    def _ranges(self) -> "ModbusTagFields":
        if (self.raw_range is None) != (self.eng_range is None):
            raise ValueError(Explained("raw_range and eng_range go together"))
        return self

    def table_address(self) -> tuple[str, int]:
        """(table, 0-based PDU address) of the tag."""
        return _table_address(self.address)

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
                    raise ValueError(Explained("sentinel {value} is not an integer (write 0xFFFF or 65535)",
                                               value=repr(s))) from None
        return v


class HeartbeatCfg(BaseModel):
    """Watchdog register the gateway writes every interval_ms so the PLC can trip by itself when the
    gateway stops (docs/design.md, Fail safe). mode count: a holding register counts 0..65535 and
    wraps; mode toggle: a holding register or a coil alternates 0/1."""

    model_config = STRICT

    address: Union[ModbusAddress, int, str] = Field(
        description="holding register (e.g. 40101) or, for mode toggle, a coil; reference notation or {table, address}")
    interval_ms: int = Field(1000, ge=50, le=60_000)
    mode: Literal["count", "toggle"] = "count"

    @field_validator("address")
    @classmethod
    def _address(cls, v: Any) -> Any:
        if not isinstance(v, ModbusAddress):
            parse_reference(v)
        return v

    def table_address(self) -> tuple[str, int]:
        return _table_address(self.address)

    @model_validator(mode="after")
    def _table(self) -> "HeartbeatCfg":
        table, _ = self.table_address()
        if table not in ("holding_register", "coil"):
            raise ValueError(Explained("a heartbeat is written: it must be a holding register or a coil, not {table}",
                                       table=table.replace("_", " ")))
        if self.mode == "count" and table != "holding_register":
            raise ValueError(Explained("mode count needs a holding register (a coil can only toggle)"))
        return self


class ModbusTcpFields(BaseModel):
    """The fields of a modbus_tcp device."""

    model_config = STRICT

    host: str = Field(description="IP address or host name of the PLC / gateway")
    port: int = Field(502, ge=1, le=65535, description="TCP port (Modbus: 502)")
    unit_id: int = Field(1, ge=0, le=255, description="MBAP unit identifier (255 or 1 for most PLCs; the slave "
                                                       "id behind a TCP-to-RTU gateway)")
    max_registers_per_read: int = Field(125, ge=1, le=125)
    max_bits_per_read: int = Field(2000, ge=1, le=2000)
    heartbeat: HeartbeatCfg | None = None


class ModbusRtuFields(BaseModel):
    """The fields of a modbus_rtu device (a slave on a serial bus; the devices of one port share the bus)."""

    model_config = STRICT

    port: str = Field(description="serial device, e.g. /dev/ttyUSB0 or /dev/serial/by-id/...")
    baudrate: int = Field(9600, ge=300, le=921600, description="bit/s; every device on one port shares it")
    parity: Literal["N", "E", "O"] = Field("N", description="N, E or O (Modbus over serial line: E is the default "
                                                            "of the standard, many devices use N)")
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    local_echo: bool = Field(False, description="the 2-wire RS-485 adapter echoes what it sends: read and check "
                                                "the echo of each request; every device on one port shares it")
    unit_id: int = Field(ge=1, le=247, description="slave address 1..247")
    max_registers_per_read: int = Field(125, ge=1, le=125)
    max_bits_per_read: int = Field(2000, ge=1, le=2000)
    heartbeat: HeartbeatCfg | None = None


Report = Callable[[tuple, str], None]


def check_devices(devices: list[tuple[int, Any]], report: Report) -> None:
    """Checks across the Modbus devices of one config (``devices``: (index in devices:, validated section) of
    every modbus_tcp / modbus_rtu device): the devices of one serial port share its settings (one bus, one
    baud rate); an input table cannot be written; a bit table holds bools. ``report(location, message)``
    with a location below ``devices``."""
    serial: dict[str, tuple] = {}
    for di, d in devices:
        if d.protocol == "modbus_rtu":
            settings = (d.baudrate, d.parity, d.stopbits, d.bytesize)
            if d.port in serial and serial[d.port][0] != settings:
                report(("devices", di, "baudrate"), Explained(
                    "port {port} is shared with devices[{other}] but with other serial settings (one bus, one baud "
                    "rate)", port=d.port, other=serial[d.port][1]))
            serial.setdefault(d.port, (settings, di))
        for ti, t in enumerate(d.tags):
            table, _ = t.table_address()
            if t.writable and table in ("discrete_input", "input_register"):
                report(("devices", di, "tags", ti, "writable"),
                       Explained("an input register cannot be written") if table == "input_register"
                       else Explained("a discrete input cannot be written"))
            if table in ("coil", "discrete_input") and t.type not in ("bool",):
                report(("devices", di, "tags", ti, "type"),
                       Explained("a coil holds bits: type must be bool") if table == "coil"
                       else Explained("a discrete input holds bits: type must be bool"))
