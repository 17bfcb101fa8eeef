"""Three simulated combustible gas detectors on one Modbus RTU bus, for the HIL rig.

The detectors (slave ids 1, 2, 3) follow the register map of the Pemtech
PT495 / Ultra1000 gas detector (manual rev 5.11 p.33; compiled in
hil/register_maps/pemtech_pt495_pt2008.csv, see ATTRIBUTION.md there).
Holding registers, FC3 read / FC6 write, 0-based PDU address (documented
4xxxx address in brackets):

====  =======  ===============================================================
PDU   doc      meaning
====  =======  ===============================================================
0     40001    gas concentration, uint16, %LEL x10 (10.5 %LEL -> 105);
               0xFFFF "not available" while the sensor is faulty (read-only)
1     40002    status: high byte 0x02 = LEL sensor; low byte bit0 alarm 1 active,
               bit1 alarm 2 active, bit7 sensor malfunction (read-only)
2     40003    alarm 1 set point, %LEL x10 (default 250 = 25 %LEL)
3     40004    alarm 1 relay type, 0 non-latching / 1 latching
4     40005    alarm 2 set point, %LEL x10 (default 500 = 50 %LEL)
5     40006    alarm 2 relay type, 0 / 1
6     40007    write 1 to reset latched alarms
====  =======  ===============================================================

The default set points are the GB/T 50493-2019 clause 5.5.2 limits for a
combustible point detector (level 1 <= 25 %LEL, level 2 <= 50 %LEL).
Addresses past 6 answer exception 02 ILLEGAL DATA ADDRESS; writes to 0 and 1
too. A slave id other than 1..3, or a slave made silent with
``set_silent``, does not answer at all (a dead node on RS-485).

The bus runs over a :class:`hil.serial_line.SerialLine` (default 19200 8N1,
10 bits per character) answered by a pymodbus ModbusSerialServer with the RTU
framer on the device-side pty; the gateway opens the gateway-side pty.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusSerialServer
from pymodbus.simulator import DataType, SimData, SimDevice

from hil.scenario import CrossingWatch
from hil.serial_line import SerialLine

log = logging.getLogger(__name__)

SLAVES = (1, 2, 3)
NOT_AVAILABLE = 0xFFFF
SENSOR_TYPE_LEL = 0x02
STATUS_ALARM1 = 0x01
STATUS_ALARM2 = 0x02
STATUS_MALFUNCTION = 0x80
N_REGISTERS = 7
TICK_S = 0.05


@dataclass
class Detector:
    """State of one PT495-like detector. lel_pct in %LEL; set points in %LEL x10."""

    slave: int
    lel_pct: float = 0.0
    fault: bool = False
    silent: bool = False
    alarm1_sp: int = 250
    alarm1_latching: int = 0
    alarm2_sp: int = 500
    alarm2_latching: int = 0
    latched1: bool = False
    latched2: bool = False
    ramp: tuple[float, float, float, float] | None = None  # (t0_mono, from_pct, to_pct, over_s)

    @property
    def raw_concentration(self) -> int:
        """Holding 0: %LEL x10, clamped to 0..1000; 0xFFFF when faulty."""
        if self.fault:
            return NOT_AVAILABLE
        return max(0, min(1000, round(self.lel_pct * 10)))

    def update_alarms(self) -> None:
        """Alarm bits: active while concentration >= set point; a latching alarm stays until reset."""
        raw = -1 if self.fault else self.raw_concentration
        a1, a2 = raw >= self.alarm1_sp, raw >= self.alarm2_sp
        self.latched1 = a1 or (self.latched1 and bool(self.alarm1_latching))
        self.latched2 = a2 or (self.latched2 and bool(self.alarm2_latching))

    def reset(self) -> None:
        """Register 6 := 1: clear latched alarms whose gas has cleared."""
        self.latched1 = self.latched2 = False
        self.update_alarms()

    @property
    def status(self) -> int:
        """Holding 1: high byte sensor type (0x02 LEL), low byte alarm / malfunction bits."""
        low = (STATUS_ALARM1 if self.latched1 else 0) | (STATUS_ALARM2 if self.latched2 else 0)
        if self.fault:
            low |= STATUS_MALFUNCTION
        return (SENSOR_TYPE_LEL << 8) | low

    def registers(self) -> list[int]:
        self.update_alarms()
        return [self.raw_concentration, self.status, self.alarm1_sp, self.alarm1_latching,
                self.alarm2_sp, self.alarm2_latching, 0]


class GasBus:
    """Three detectors (slaves 1..3) on one simulated RS-485 Modbus RTU line.

    baudrate: line speed (8N1; bits_per_char=11 runs it as 8N2, the 8E1 timing).
    link_dir: when given, symlinks ``link_dir/tty-gas-gw`` (gateway side) and
    ``link_dir/tty-gas-dev`` (device side; names configurable) are created. ``line`` is the SerialLine (fault injection).
    Controls: set_lel, ramp_lel, set_fault, set_silent; records: watch /
    first_crossing on tags "LEL.1" .. "LEL.3"; ``on_event`` receives every
    event dict (crossings, register writes by the gateway).
    """

    def __init__(self, baudrate: int = 19200, link_dir: str | None = None, *, bits_per_char: int = 10,
                 gateway_link_name: str = "tty-gas-gw", device_link_name: str = "tty-gas-dev") -> None:
        self.baudrate = baudrate
        self.link_dir = link_dir
        self._link_names = (device_link_name, gateway_link_name)
        self.line = SerialLine(baudrate=baudrate, bits_per_char=bits_per_char)
        self.detectors = {s: Detector(s) for s in SLAVES}
        self.events: list[dict] = []
        self.on_event: Callable[[dict], None] | None = None
        self.watches = CrossingWatch("gas_bus", lambda: self._emit)
        self.device_path: str | None = None
        self.gateway_path: str | None = None
        self.requests_answered = 0
        self._server: ModbusSerialServer | None = None
        self._task: asyncio.Task | None = None

    # ------------------------------------------------------------------ controls
    def set_lel(self, slave: int, pct: float) -> None:
        """Set the concentration seen by detector ``slave`` (1..3), %LEL 0..100; cancels a ramp."""
        d = self._det(slave)
        if not 0.0 <= pct <= 100.0:
            raise ValueError(f"gas detector {slave}: %LEL must be within 0..100, got {pct}")
        d.ramp = None
        d.lel_pct = float(pct)
        self._observe(d)

    def ramp_lel(self, slaves: list[int], to_pct: float, over_s: float) -> None:
        """Move each listed detector linearly from its current %LEL to ``to_pct`` over ``over_s`` seconds."""
        if not 0.0 <= to_pct <= 100.0:
            raise ValueError(f"ramp_lel: to_pct must be within 0..100, got {to_pct}")
        if over_s <= 0:
            raise ValueError(f"ramp_lel: over_s must be > 0, got {over_s}")
        now = time.monotonic()
        for s in slaves:
            d = self._det(s)
            d.ramp = (now, d.lel_pct, float(to_pct), float(over_s))

    def set_fault(self, slave: int, fault: bool) -> None:
        """Sensor malfunction: status bit7 set and concentration 0xFFFF while ``fault``."""
        d = self._det(slave)
        d.fault = bool(fault)
        self._emit({"t": time.time(), "kind": "fault", "source": "gas_bus", "slave": slave, "fault": d.fault})

    def set_silent(self, slave: int, silent: bool) -> None:
        """A silent slave receives requests but never answers (dead node, case C09)."""
        self._det(slave).silent = bool(silent)

    def lel(self, slave: int) -> float:
        """Current simulated %LEL at detector ``slave``."""
        return self._det(slave).lel_pct

    def watch(self, tag: str, threshold: float, direction: str = "up") -> None:
        """Record the first crossing of ``threshold`` by ``tag`` ("LEL.1" .. "LEL.3", %LEL)."""
        self._tag_slave(tag)
        self.watches.watch(tag, threshold, direction)

    def first_crossing(self, tag: str, threshold: float) -> float | None:
        """UTC epoch seconds of the first crossing of a watched threshold, or None."""
        return self.watches.first_crossing(tag, threshold)

    # ------------------------------------------------------------------ life cycle
    async def start(self) -> str:
        """Start the line and the RTU server; returns the gateway-side tty path.

        Raises OSError when no pty can be allocated or the server cannot open the device side.
        """
        links = (None, None)
        if self.link_dir:
            os.makedirs(self.link_dir, exist_ok=True)
            links = (os.path.join(self.link_dir, self._link_names[0]), os.path.join(self.link_dir, self._link_names[1]))
        self.device_path, self.gateway_path = self.line.start(device_link=links[0], gateway_link=links[1])
        try:
            devices = [
                SimDevice(
                    id=s,
                    simdata=(
                        [SimData(0, values=[False] * 16, datatype=DataType.BITS)],
                        [SimData(0, values=[False] * 16, datatype=DataType.BITS)],
                        [SimData(0, count=2, values=0, datatype=DataType.REGISTERS, readonly=True),
                         SimData(2, count=N_REGISTERS - 2, values=0, datatype=DataType.REGISTERS)],
                        [SimData(0, values=0, datatype=DataType.REGISTERS)],
                    ),
                    action=self._make_action(s),
                )
                for s in SLAVES
            ]
            # catch-all for any other slave id: pymodbus would otherwise log a KeyError traceback;
            # its (exception) reply is dropped in _trace_packet, so the node stays silent
            devices.append(SimDevice(id=0, simdata=[SimData(0, values=0, datatype=DataType.REGISTERS)],
                                     action=self._absent_action))
            self._server = ModbusSerialServer(
                devices, port=self.device_path, baudrate=self.baudrate, bytesize=8, parity="N",
                stopbits=1 if self.line.bits_per_char == 10 else 2, trace_packet=self._trace_packet,
            )
            await self._server.serve_forever(background=True)
            if self._server.transport is None:
                raise OSError(f"gas bus: could not open {self.device_path}")
        except BaseException:
            await self.stop()
            raise
        for d in self.detectors.values():
            self._observe(d)
        self._task = asyncio.create_task(self._ticker(), name="gas-bus-ramps")
        return self.gateway_path

    async def stop(self) -> None:
        """Stop the ramp task, the server and the line (no fd left open). Idempotent."""
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._server:
            await self._server.shutdown()
            self._server = None
        self.line.stop()

    # ------------------------------------------------------------------ internals
    def _det(self, slave: int) -> Detector:
        try:
            return self.detectors[int(slave)]
        except (KeyError, ValueError, TypeError):
            raise KeyError(f"unknown gas detector slave {slave!r}; known: 1, 2, 3") from None

    def _tag_slave(self, tag: str) -> int:
        prefix, _, num = tag.partition(".")
        if prefix != "LEL" or not num.isdigit() or int(num) not in SLAVES:
            raise KeyError(f"unknown gas bus tag {tag!r}; known: LEL.1, LEL.2, LEL.3")
        return int(num)

    def _emit(self, event: dict) -> None:
        self.events.append(event)
        if self.on_event:
            try:
                self.on_event(event)
            except Exception:
                log.exception("gas bus event sink failed")

    def _observe(self, d: Detector) -> None:
        self.watches.update(f"LEL.{d.slave}", d.lel_pct)

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            now = time.monotonic()
            for d in self.detectors.values():
                if d.ramp:
                    t0, frm, to, over = d.ramp
                    frac = min(1.0, (now - t0) / over)
                    d.lel_pct = frm + (to - frm) * frac
                    if frac >= 1.0:
                        d.ramp = None
                self._observe(d)

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        """Drop replies of silent or absent slaves: on RS-485 they would not answer at all."""
        if sending and data:
            d = self.detectors.get(data[0])
            if d is None or d.silent:
                return b""
            self.requests_answered += 1
        return data

    @staticmethod
    async def _absent_action(*_args) -> ExcCodes:
        return ExcCodes.GATEWAY_NO_RESPONSE

    def _make_action(self, slave: int):
        async def action(function_code: int, start_address: int, address: int, count: int,
                         registers: list[int], set_values: list[int] | None) -> ExcCodes | None:
            d = self.detectors[slave]
            if function_code not in (3, 6, 16):
                return ExcCodes.ILLEGAL_FUNCTION
            if set_values is not None:
                for i, v in enumerate(set_values):
                    addr = address + i
                    if addr == 2:
                        d.alarm1_sp = int(v)
                    elif addr == 3:
                        d.alarm1_latching = 1 if v else 0
                    elif addr == 4:
                        d.alarm2_sp = int(v)
                    elif addr == 5:
                        d.alarm2_latching = 1 if v else 0
                    elif addr == 6 and v == 1:
                        d.reset()
                    self._emit({"t": time.time(), "kind": "register_write", "source": "gas_bus",
                                "slave": slave, "address": addr, "value": int(v)})
            registers[:N_REGISTERS] = d.registers()
            return None

        return action
