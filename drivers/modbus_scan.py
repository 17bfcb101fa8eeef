"""Find the Modbus unit ids (slave addresses) that answer on a serial bus or behind a TCP host, read-only
(``hazard-gateway scan``), on pymodbus clients.

Each unit id of the range gets one read request: FC3 Read Holding Registers (or FC4 Read Input Registers) of
one register at ``address`` (Modbus Application Protocol V1.1b3, 6.3 / 6.4). A unit that answers with data,
or with an exception response (section 7: 01 ILLEGAL FUNCTION, 02 ILLEGAL DATA ADDRESS, 03 ILLEGAL DATA
VALUE, 04 SERVER DEVICE FAILURE, 05/06 busy), is present: it heard its address. Two exceptions are not the
unit's own answer but a TCP-to-RTU gateway's about it: 0A GATEWAY PATH UNAVAILABLE and 0B GATEWAY TARGET
DEVICE FAILED TO RESPOND mean nobody answered behind the gateway; the unit is not present (they are counted).
For each unit found (``ident``), two identification requests follow, both reads: FC43/14 Read Device
Identification, basic objects VendorName / ProductCode / MajorMinorRevision (6.21, MEI type 0x0E), and
FC17 Report Server ID (6.13, serial line only in the spec, answered by many TCP devices too); a unit that
does not answer them (timeout, exception 01) keeps what it said to the read.

Nothing is ever written: only function codes 3 or 4, 17 and 43 are sent. Unit id 0 is the broadcast
address on a serial line (Modbus over Serial Line V1.02, 2.2: no reply, every slave acts) and is never
probed there; serial unit ids are 1..247, TCP ones 0..255 (MBAP unit identifier, Modbus Messaging on
TCP/IP V1.0b 4.4.1.3).

Bounded and paced: one request at a time; a unit gets ``timeout_s`` (per request; serial default 0.3 s) and
no retry; between two frames on a serial line at least the t3.5 silent interval passes (Modbus over Serial
Line V1.02, 2.5.1.1: 3.5 character times, 1.75 ms above 19200 baud; :func:`drivers.modbus.silent_interval_s`),
or ``gap_s`` when that is longer (slow converters, devices that need more turn-around time). The longest the
unit sweep can take (:meth:`Scanner.bound_s`) is known before it starts; each unit found adds at most two
identification requests. Cancelling the task (Ctrl-C in the command line) stops after the request in
flight and closes the port; what was found so far stays in :attr:`Scanner.found`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from drivers.modbus import silent_interval_s

#: exception codes (Modbus Application Protocol V1.1b3, section 7)
EXCEPTION_NAMES = {
    1: "ILLEGAL FUNCTION", 2: "ILLEGAL DATA ADDRESS", 3: "ILLEGAL DATA VALUE", 4: "SERVER DEVICE FAILURE",
    5: "ACKNOWLEDGE", 6: "SERVER DEVICE BUSY", 8: "MEMORY PARITY ERROR", 0x0A: "GATEWAY PATH UNAVAILABLE",
    0x0B: "GATEWAY TARGET DEVICE FAILED TO RESPOND",
}
#: a TCP-to-RTU gateway's answer for a unit that did not answer behind it: not the unit's own
GATEWAY_EXCEPTIONS = (0x0A, 0x0B)
SERIAL_UNITS = (1, 247)
TCP_UNITS = (0, 255)
DEFAULT_SERIAL_TIMEOUT_S = 0.3
DEFAULT_TCP_TIMEOUT_S = 1.0


def parse_units(text: str, serial: bool) -> list[int]:
    """``1-247``, ``5``, ``1-10,20,30-32`` -> the sorted unit ids; ValueError (one line) for a bad list or an
    id outside 1..247 (serial: 0 is the broadcast address) or 0..255 (TCP)."""
    lo_ok, hi_ok = SERIAL_UNITS if serial else TCP_UNITS
    out: set[int] = set()
    for part in str(text).replace(" ", "").split(","):
        if not part:
            continue
        a, sep, b = part.partition("-")
        try:
            lo, hi = int(a), int(b if sep else a)
        except ValueError:
            raise ValueError(f"unit ids {text!r}: {part!r} is not a number or range such as 1-247") from None
        if lo > hi:
            raise ValueError(f"unit ids {text!r}: range {part} runs backwards")
        if lo < lo_ok or hi > hi_ok:
            why = " (0 is the serial broadcast address: no slave answers it)" if serial and lo == 0 else ""
            raise ValueError(f"unit ids {text!r}: {part} outside {lo_ok}..{hi_ok}{why}")
        out.update(range(lo, hi + 1))
    if not out:
        raise ValueError(f"unit ids {text!r}: none given")
    return sorted(out)


def parse_host(text: str, default_port: int = 502) -> tuple[str, int]:
    """``HOST`` or ``HOST:PORT`` (``[v6]:PORT``) -> (host, port); ValueError for a bad port."""
    text = text.strip()
    host, port = text, default_port
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest.startswith(":"):
            port = _port(rest[1:], text)
    elif text.count(":") == 1:
        host, p = text.split(":")
        port = _port(p, text)
    if not host:
        raise ValueError(f"host {text!r}: no host name")
    return host, port


def _port(p: str, text: str) -> int:
    try:
        port = int(p)
    except ValueError:
        raise ValueError(f"host {text!r}: port {p!r} is not a number") from None
    if not 1 <= port <= 65535:
        raise ValueError(f"host {text!r}: port {port} outside 1..65535")
    return port


@dataclass
class UnitFound:
    """One unit that answered: ``unit``; ``function`` (3 or 4) and ``address`` read; ``registers`` (the value
    read, a list of one int) or ``exception`` (its code) with ``exception_name``; ``vendor``, ``product``,
    ``revision`` (FC43/14 basic objects, None when not answered); ``server_id`` (FC17 reply bytes as hex,
    None when not answered); ``elapsed_ms`` of the read's answer."""

    unit: int
    function: int
    address: int
    registers: list[int] | None = None
    exception: int | None = None
    exception_name: str | None = None
    vendor: str | None = None
    product: str | None = None
    revision: str | None = None
    server_id: str | None = None
    elapsed_ms: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ScanTarget:
    """Where to scan: ``host``/``port`` (Modbus TCP) or ``serial`` (a port) with baudrate, parity (N/E/O),
    stopbits (1/2), bytesize (7/8)."""

    host: str | None = None
    port: int = 502
    serial: str | None = None
    baudrate: int = 9600
    parity: str = "N"
    stopbits: int = 1
    bytesize: int = 8

    def __post_init__(self) -> None:
        if (self.host is None) == (self.serial is None):
            raise ValueError("give a TCP host or a serial port, not both")
        self.parity = str(self.parity).upper()
        if self.parity not in ("N", "E", "O"):
            raise ValueError(f"parity {self.parity!r} must be N, E or O")
        if self.stopbits not in (1, 2) or self.bytesize not in (7, 8) or not 300 <= self.baudrate <= 921600:
            raise ValueError(f"unsupported serial settings {self.baudrate} {self.bytesize}{self.parity}{self.stopbits}")

    @property
    def is_serial(self) -> bool:
        return self.serial is not None

    def describe(self) -> str:
        if self.is_serial:
            return f"{self.serial} {self.baudrate} {self.bytesize}{self.parity}{self.stopbits}"
        return f"{self.host}:{self.port}"


@dataclass
class Scanner:
    """One sweep over ``units`` of ``target``. ``function`` 3 or 4, ``address`` 0..65535 (0-based PDU
    address); ``timeout_s`` per request (> 0); ``gap_s`` the least time between frames (serial: at least
    t3.5); ``ident``: ask FC43/14 and FC17 of each unit found. ``on_found(UnitFound)`` is called as each unit
    is found (the command line prints it then). After :meth:`run`: ``found``, ``gateway_silent`` (unit ids a
    TCP gateway answered 0A/0B for), ``last_unit`` (the last id probed), ``done`` (the sweep finished)."""

    target: ScanTarget
    units: list[int]
    function: int = 3
    address: int = 0
    timeout_s: float = DEFAULT_SERIAL_TIMEOUT_S
    gap_s: float = 0.0
    ident: bool = True
    on_found: Callable[[UnitFound], None] | None = None
    found: list[UnitFound] = field(default_factory=list)
    gateway_silent: list[int] = field(default_factory=list)
    last_unit: int | None = None
    done: bool = False
    requests_sent: int = 0

    def __post_init__(self) -> None:
        if self.function not in (3, 4):
            raise ValueError(f"function {self.function} must be 3 (holding registers) or 4 (input registers)")
        if not 0 <= self.address <= 65535:
            raise ValueError(f"address {self.address} outside 0..65535 (0-based PDU address)")
        if not 0 < self.timeout_s <= 10:
            raise ValueError(f"timeout {self.timeout_s} s must be within 0..10 s")
        if not 0 <= self.gap_s <= 10:
            raise ValueError(f"gap {self.gap_s} s must be within 0..10 s")
        lo, hi = SERIAL_UNITS if self.target.is_serial else TCP_UNITS
        bad = [u for u in self.units if not lo <= u <= hi]
        if bad or not self.units:
            raise ValueError(f"unit ids must be within {lo}..{hi}")

    @property
    def pace_s(self) -> float:
        """The time left between two frames: t3.5 of the line (serial) or ``gap_s``, whichever is longer."""
        t = self.target
        t35 = silent_interval_s(t.baudrate, t.bytesize, t.parity, t.stopbits) if t.is_serial else 0.0
        return max(t35, self.gap_s)

    def bound_s(self) -> float:
        """The longest the unit sweep takes: every unit silent, each a full timeout plus the pacing."""
        return len(self.units) * (self.timeout_s + self.pace_s)

    def ident_bound_s(self) -> float:
        """What each unit found adds at most: two identification requests."""
        return 2 * (self.timeout_s + self.pace_s) if self.ident else 0.0

    def _client(self) -> Any:
        from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
        from pymodbus.framer import FramerType

        t = self.target
        if t.is_serial:
            return AsyncModbusSerialClient(t.serial, framer=FramerType.RTU, baudrate=t.baudrate, bytesize=t.bytesize,
                                           parity=t.parity, stopbits=t.stopbits, timeout=self.timeout_s, retries=0,
                                           reconnect_delay=0)
        return AsyncModbusTcpClient(t.host, port=t.port, timeout=self.timeout_s, retries=0, reconnect_delay=0)

    async def run(self) -> list[UnitFound]:
        """Open the port / connection (ConnectionError, one line, when it cannot be), sweep, close. Returns
        :attr:`found`."""
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)  # a silent unit is the common case here
        client = self._client()
        try:
            ok = await asyncio.wait_for(client.connect(), timeout=max(3.0, 3 * self.timeout_s))
        except asyncio.TimeoutError:
            ok = False
        if not ok:
            client.close()
            raise ConnectionError("cannot open the serial port" if self.target.is_serial else "cannot connect")
        self._last_frame = 0.0
        try:
            for unit in self.units:
                self.last_unit = unit
                hit = await self._probe(client, unit)
                if hit is None:
                    continue
                if self.ident:
                    await self._identify(client, hit)
                self.found.append(hit)
                if self.on_found is not None:
                    self.on_found(hit)
            self.done = True
        finally:
            client.close()
        return self.found

    async def _pace(self) -> None:
        wait = self._last_frame + self.pace_s - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)

    async def _call(self, coro_fn: Callable[[], Any]) -> Any:
        """One request, paced; the response, or None when the unit stayed silent (timeout, no valid frame)."""
        from pymodbus.exceptions import ModbusException

        await self._pace()
        self.requests_sent += 1
        try:
            return await asyncio.wait_for(coro_fn(), timeout=self.timeout_s + 0.5)
        except (ModbusException, asyncio.TimeoutError, ConnectionError, OSError):
            return None
        finally:
            self._last_frame = time.monotonic()

    async def _probe(self, client: Any, unit: int) -> UnitFound | None:
        read = client.read_holding_registers if self.function == 3 else client.read_input_registers
        t0 = time.monotonic()
        rr = await self._call(lambda: read(self.address, count=1, device_id=unit))
        if rr is None or getattr(rr, "dev_id", unit) != unit:
            return None
        hit = UnitFound(unit, self.function, self.address, elapsed_ms=round((time.monotonic() - t0) * 1000, 1))
        if rr.isError():
            code = int(getattr(rr, "exception_code", 0) or 0)
            if not self.target.is_serial and code in GATEWAY_EXCEPTIONS:
                self.gateway_silent.append(unit)
                return None
            hit.exception, hit.exception_name = code, EXCEPTION_NAMES.get(code, "unknown exception")
        else:
            hit.registers = list(rr.registers)
        return hit

    async def _identify(self, client: Any, hit: UnitFound) -> None:
        rr = await self._call(lambda: client.read_device_information(read_code=1, object_id=0, device_id=hit.unit))
        if rr is not None and not rr.isError() and getattr(rr, "dev_id", hit.unit) == hit.unit:
            info = getattr(rr, "information", {}) or {}

            def text(i: int) -> str | None:
                v = info.get(i)
                if isinstance(v, list):
                    v = b"".join(x for x in v if isinstance(x, bytes))
                return v.decode("latin-1").strip() if isinstance(v, bytes) and v else None

            hit.vendor, hit.product, hit.revision = text(0), text(1), text(2)
        rr = await self._call(lambda: client.report_device_id(device_id=hit.unit))
        if rr is not None and not rr.isError() and getattr(rr, "dev_id", hit.unit) == hit.unit:
            ident = getattr(rr, "identifier", b"") or b""
            status = getattr(rr, "status", None)
            raw = bytes(ident) + (bytes([0xFF if status else 0x00]) if status is not None else b"")
            hit.server_id = raw.hex(" ").upper() if raw else None
