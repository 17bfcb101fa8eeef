"""Simulated tank PLC on Modbus TCP (unit id 1), for the HIL rig.

Register map (0-based PDU addresses; the gateway config depends on it, keep
it exactly):

input registers (FC4), float32 IEEE 754, big-endian word order ABCD
(high word first; Modbus Application Protocol V1.1b3 4.2 sends each register
big-endian), 2 registers each:

=====  ==========================  =====
addr   tag                          unit
=====  ==========================  =====
0      T101 level                   m
2      T101 temperature             degC
4      T101 pressure (gauge)        kPa
6      T102 level                   m
8      T102 temperature             degC
10     T102 pressure (gauge)        kPa
=====  ==========================  =====

coils (FC1 read, FC5/FC15 write):
0 XV101 T101 inlet valve (1 = energised = open), 1 XV102 T102 inlet valve
(1 = open), 2 XV100 ESD valve on the common feed (1 = energised = open; a trip
writes 0, de-energise-to-trip), 3 beacon (1 = on).

holding register 100 (FC3 read, FC6/FC16 write), uint16: the gateway's
heartbeat counter. The PLC records when it last changed (``heartbeat_age_s``).

Any other address answers exception 02 ILLEGAL DATA ADDRESS (MAP 7).

Physics (every 50 ms, from time.monotonic()): each tank is a vertical
cylinder 12 m high. While its inlet valve AND the ESD valve are open the level
rises by ``inflow`` m/min (default 0.2); a small outflow (default 0.05 m/min) always drains
it; the level saturates at 0 and at the top (overflow). Temperature is about
20 degC with a slow bounded random walk; gauge pressure follows the level a
little (1.5 kPa + 0.25 kPa per metre, small noise).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice
from pymodbus.simulator.simutils import SimUtils

from hil.scenario import CrossingWatch

log = logging.getLogger(__name__)

UNIT_ID = 1
TANKS = ("T101", "T102")
COILS = ("XV101", "XV102", "XV100", "beacon")
INLET_COIL = {"T101": "XV101", "T102": "XV102"}
QUANTITIES = ("level", "temperature", "pressure")
IR_ADDRESS = {f"{tank}.{q}": 6 * i + 2 * j for i, tank in enumerate(TANKS) for j, q in enumerate(QUANTITIES)}
HEARTBEAT_ADDRESS = 100
TICK_S = 0.05


@dataclass
class Tank:
    """State of one simulated tank. level m, temperature degC, pressure kPa gauge, flows m/min."""

    name: str
    height_m: float = 12.0
    level_m: float = 0.0
    temperature_c: float = 20.0
    pressure_kpa: float = 0.0
    inflow_m_per_min: float = 0.2
    outflow_m_per_min: float = 0.05


def float32_abcd(value: float) -> list[int]:
    """float -> two registers, word order ABCD (high word first)."""
    hi, lo = struct.unpack(">HH", struct.pack(">f", value))
    return [hi, lo]


class TankPlc:
    """A tank PLC simulator serving Modbus TCP on host:port (port 0 = any free port).

    Public state: ``level(tank)``, ``coil(name)``, ``heartbeat``,
    ``heartbeat_age_s``; controls: ``set_inflow``, ``set_outflow``,
    ``set_level``, ``set_coil``; records: ``events`` (client coil writes as
    {"t", "kind": "coil_write", "coil", "value", "changed"}), ``watch`` /
    ``first_crossing`` for thresholds on tags "T101.level" etc.
    ``on_event``: optional callable receiving every event dict as it happens.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, height_m: float = 12.0, seed: int | None = None) -> None:
        self.host = host
        self._req_port = port
        self._port: int | None = None
        self.tanks = {
            "T101": Tank("T101", height_m=height_m, level_m=8.0),
            "T102": Tank("T102", height_m=height_m, level_m=6.0),
        }
        self._coils = {"XV101": True, "XV102": True, "XV100": True, "beacon": False}
        self.heartbeat = 0
        self._hb_changed_mono: float | None = None
        self.events: list[dict] = []
        self.on_event: Callable[[dict], None] | None = None
        self.watches = CrossingWatch("tank_plc", lambda: self._emit)
        self._rng = random.Random(seed)
        self._server: ModbusTcpServer | None = None
        self._task: asyncio.Task | None = None
        self._last_tick: float | None = None
        for tank in self.tanks.values():
            self._update_derived(tank, 0.0)

    # ------------------------------------------------------------------ accessors
    @property
    def port(self) -> int:
        """The TCP port actually bound (after start())."""
        if self._port is None:
            raise RuntimeError("TankPlc not started")
        return self._port

    def level(self, tank: str) -> float:
        """Current level of ``tank`` in m."""
        return self._tank(tank).level_m

    def temperature(self, tank: str) -> float:
        return self._tank(tank).temperature_c

    def pressure(self, tank: str) -> float:
        return self._tank(tank).pressure_kpa

    def coil(self, name: str) -> bool:
        """Current state of coil ``name`` (XV101, XV102, XV100, beacon)."""
        if name not in self._coils:
            raise KeyError(f"unknown coil {name!r}; known: {', '.join(COILS)}")
        return self._coils[name]

    @property
    def heartbeat_age_s(self) -> float | None:
        """Seconds since the gateway last changed holding register 100; None if it never did."""
        return None if self._hb_changed_mono is None else time.monotonic() - self._hb_changed_mono

    # ------------------------------------------------------------------ controls
    def set_inflow(self, tank: str, m_per_min: float) -> None:
        """Level rise rate of ``tank`` while its inlet (and the ESD valve) is open, m/min >= 0."""
        if m_per_min < 0:
            raise ValueError(f"{tank}: inflow must be >= 0 m/min, got {m_per_min}")
        self._tank(tank).inflow_m_per_min = float(m_per_min)

    def set_outflow(self, tank: str, m_per_min: float) -> None:
        """Constant drain of ``tank``, m/min >= 0."""
        if m_per_min < 0:
            raise ValueError(f"{tank}: outflow must be >= 0 m/min, got {m_per_min}")
        self._tank(tank).outflow_m_per_min = float(m_per_min)

    def set_level(self, tank: str, m: float) -> None:
        """Force the level of ``tank`` (m, 0..height)."""
        t = self._tank(tank)
        if not 0.0 <= m <= t.height_m:
            raise ValueError(f"{tank}: level must be within 0..{t.height_m} m, got {m}")
        t.level_m = float(m)
        self._update_derived(t, 0.0)

    def set_coil(self, name: str, value: bool) -> None:
        """Set a coil from the field side (not a client write; logged as kind "coil_set")."""
        self.coil(name)
        self._coils[name] = bool(value)
        self._emit({"t": time.time(), "kind": "coil_set", "coil": name, "value": int(bool(value))})

    def watch(self, tag: str, threshold: float, direction: str = "up") -> None:
        """Record the first crossing of ``threshold`` by ``tag`` ("T101.level" ...)."""
        if tag not in IR_ADDRESS:
            raise KeyError(f"unknown PLC tag {tag!r}; known: {', '.join(IR_ADDRESS)}")
        self.watches.watch(tag, threshold, direction)

    def first_crossing(self, tag: str, threshold: float) -> float | None:
        """UTC epoch seconds of the first crossing of a watched threshold, or None."""
        return self.watches.first_crossing(tag, threshold)

    # ------------------------------------------------------------------ life cycle
    async def start(self) -> None:
        """Start the Modbus TCP server and the physics task. Raises OSError when the port cannot be bound."""
        device = SimDevice(
            id=UNIT_ID,
            simdata=(
                [SimData(0, values=[False] * 16, datatype=DataType.BITS)],  # coils
                [SimData(0, values=[False] * 16, datatype=DataType.BITS)],  # discrete inputs (unused)
                [SimData(HEARTBEAT_ADDRESS, values=0, datatype=DataType.REGISTERS)],  # holding
                [SimData(0, count=12, values=0, datatype=DataType.REGISTERS)],  # input registers
            ),
            action=self._action,
        )
        # unit ids other than 1 get no answer (a TCP gateway would say 0x0B; a PLC simply drops them)
        self._server = ModbusTcpServer(device, address=(self.host, self._req_port), ignore_missing_devices=True)
        await self._server.serve_forever(background=True)
        transport = self._server.transport
        sockets = getattr(transport, "sockets", None)
        if not sockets:
            raise OSError(f"tank PLC: could not listen on {self.host}:{self._req_port}")
        self._port = sockets[0].getsockname()[1]
        self._last_tick = time.monotonic()
        self._tick(self._last_tick)
        self._task = asyncio.create_task(self._physics(), name="tank-plc-physics")

    async def stop(self) -> None:
        """Stop physics and the server, closing every client connection. Idempotent."""
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._server:
            await self._server.shutdown()
            self._server = None

    # ------------------------------------------------------------------ internals
    def _tank(self, tank: str) -> Tank:
        try:
            return self.tanks[tank]
        except KeyError:
            raise KeyError(f"unknown tank {tank!r}; known: {', '.join(TANKS)}") from None

    def _emit(self, event: dict) -> None:
        self.events.append(event)
        if self.on_event:
            try:
                self.on_event(event)
            except Exception:  # an event sink must not break the simulator
                log.exception("tank PLC event sink failed")

    def _update_derived(self, t: Tank, dt: float) -> None:
        walk = self._rng.gauss(0.0, 0.02) * (dt / TICK_S) ** 0.5 if dt else 0.0
        t.temperature_c = min(21.0, max(19.0, t.temperature_c + walk - 0.01 * (t.temperature_c - 20.0)))
        t.pressure_kpa = 1.5 + 0.25 * t.level_m + (self._rng.gauss(0.0, 0.01) if dt else 0.0)

    def _tick(self, now: float) -> None:
        dt = max(0.0, now - (self._last_tick or now))
        self._last_tick = now
        wall = time.time()
        feed_open = self._coils["XV100"]
        for name, t in self.tanks.items():
            rate = -t.outflow_m_per_min
            if feed_open and self._coils[INLET_COIL[name]]:
                rate += t.inflow_m_per_min
            t.level_m = min(t.height_m, max(0.0, t.level_m + rate * dt / 60.0))
            self._update_derived(t, dt)
            self.watches.update(f"{name}.level", t.level_m, wall)
            self.watches.update(f"{name}.temperature", t.temperature_c, wall)
            self.watches.update(f"{name}.pressure", t.pressure_kpa, wall)

    async def _physics(self) -> None:
        next_t = time.monotonic()
        while True:
            next_t += TICK_S
            await asyncio.sleep(max(0.0, next_t - time.monotonic()))
            now = time.monotonic()
            if now - next_t > 1.0:  # fell far behind (debugger, suspended): do not burst
                next_t = now
            self._tick(now)

    def _input_registers(self) -> list[int]:
        regs: list[int] = []
        for tank in TANKS:
            t = self.tanks[tank]
            for v in (t.level_m, t.temperature_c, t.pressure_kpa):
                regs += float32_abcd(v)
        return regs

    async def _action(self, function_code: int, start_address: int, address: int, count: int,
                      registers: list[int], set_values: list[int] | list[bool] | None) -> ExcCodes | None:
        """pymodbus SimDevice hook: serve reads from the model, record writes into it."""
        if function_code in (1, 5, 15):
            n = len(set_values) if set_values is not None else None
            if set_values is None:
                # a read: count here is in 16-bit registers; the exact coil count is not passed,
                # so refuse only a start address outside the map
                if address >= len(COILS):
                    return ExcCodes.ILLEGAL_ADDRESS
            elif address + n > len(COILS):
                return ExcCodes.ILLEGAL_ADDRESS
            if set_values is not None:
                wall = time.time()
                for i, v in enumerate(set_values):
                    name = COILS[address + i]
                    old = self._coils[name]
                    self._coils[name] = bool(v)
                    self._emit({"t": wall, "kind": "coil_write", "coil": name, "value": int(bool(v)),
                                "changed": old != bool(v)})
            bits = [self._coils[c] for c in COILS] + [False] * (16 - len(COILS))
            registers[0] = SimUtils.bitsToRegisters(bits)[0]
            return None
        if function_code == 4:
            registers[: 12] = self._input_registers()
            return None
        if function_code in (3, 6, 16):
            if set_values is not None:
                value = int(set_values[-1]) & 0xFFFF
                if value != self.heartbeat:
                    self._hb_changed_mono = time.monotonic()
                self.heartbeat = value
            registers[0] = self.heartbeat
            return None
        return ExcCodes.ILLEGAL_FUNCTION
