"""Heartbeat: the gateway keeps a watchdog register changing in every PLC that carries an interlock output.

docs/design.md (Fail safe, Heartbeat): the PLC watches the register and trips by itself when it stops
changing, so a dead, hung or disconnected gateway cannot leave a plant unprotected. Configured per
Modbus device::

    heartbeat: {address: 40101, interval_ms: 1000, mode: count}   # or {table: coil, address: 8}, toggle

mode ``count`` writes 1, 2, 3 ... 65535, 0, 1 ... to a holding register (FC6, Modbus Application
Protocol V1.1b3 6.6); mode ``toggle`` alternates 0 / 1 (FC6, or FC5 on a coil, 6.5). The write itself
is the device's: ``Device.beat(value)`` (drivers.modbus.ModbusDevice.beat checks the echo repeats address
and value, the normal response to FC5/FC6); a beat that raises counts as failed. There is no read-back:
the PLC itself is the judge. A protocol without heartbeats has no ``heartbeat:`` section in its config.

The heartbeat proves more than a running process: it is written only while the gateway's safety path
is alive (``alive()``: the alarm tick ran recently, and every poll loop that feeds an interlock input
has delivered readings within its fresh window, gateway.runtime.build.fresh_windows); a stuck safety path
or a hung input poll loop stops the beat and so trips the PLC, even when the gateway could not write
the trip itself. It runs as its own task on the gateway's event loop, separate from polling, and never
touches the disk. On shutdown it stops: a PLC configured to trip on a stopped heartbeat will trip
(that is the point; set the PLC's timeout longer than a service restart if that is not wanted).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable

log = logging.getLogger("hazard_gateway.heartbeat")

COUNT_MODULO = 0x10000


class Heartbeat:
    """One device's watchdog register.

    device: device name (messages). target: the built device (drivers.base.Device) whose ``beat(value)``
    writes the watchdog point and raises when the device did not take it. interval_s: seconds between
    beats (> 0). mode: "count" (1, 2 ... 65535, 0 ...; the device refuses it for a point that only holds
    0 / 1) or "toggle". reference: the point as configured, for messages (default: the device's
    ``heartbeat_reference``). alive: callable answering whether the safety path is running (None: always).
    why: optional callable giving the one-line reason when ``alive()`` is False (for the log and
    ``status``). Raises ValueError for a bad mode or interval.
    """

    def __init__(self, device: str, target: Any, interval_s: float, mode: str = "count", *,
                 reference: str | None = None,
                 alive: Callable[[], bool] | None = None, why: Callable[[], str | None] | None = None) -> None:
        if mode not in ("count", "toggle"):
            raise ValueError(f"{device}: heartbeat mode must be count or toggle, not {mode!r}")
        if not interval_s > 0:
            raise ValueError(f"{device}: heartbeat interval must be > 0")
        self.device, self.target = device, target
        self.interval_s, self.mode = float(interval_s), mode
        self.reference = reference or getattr(target, "heartbeat_reference", None) or device
        self.alive = alive
        self.why = why
        self.held_reason: str | None = None
        self.value = 0
        self.beats = 0
        self.errors = 0
        self.last_error: str | None = None
        self.last_ok_mono: float | None = None
        self.held = False  # the safety path is not alive: beat withheld

    def next_value(self) -> int:
        """The value the next beat writes (count: +1 modulo 65536; toggle: 1 - previous)."""
        if self.mode == "count":
            return (self.value + 1) % COUNT_MODULO
        return 0 if self.value else 1

    async def beat(self) -> bool:
        """Write the next value once; True when the device echoed it. Never raises for a device fault."""
        if self.alive is not None and not self.alive():
            reason = (self.why() if self.why is not None else None) or "the safety path is not running"
            if (not self.held or reason != self.held_reason) and self.beats:  # (before the first safety
                log.error("heartbeat %s %s withheld: %s", self.device, self.reference, reason)  # step it waits)
            self.held, self.held_reason = True, reason
            return False
        if self.held and self.beats:
            log.warning("heartbeat %s %s: writing again", self.device, self.reference)
        self.held, self.held_reason = False, None
        v = self.next_value()
        try:
            await self.target.beat(v)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # timeout, link down, exception reply, malformed echo: a missed beat
            self.errors += 1
            why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if self.last_error is None:
                log.warning("heartbeat %s %s: write failed: %s", self.device, self.reference, why)
            self.last_error = why
            return False
        if self.last_error is not None:
            log.info("heartbeat %s %s: writing again", self.device, self.reference)
        self.value = v
        self.beats += 1
        self.last_error = None
        self.last_ok_mono = time.monotonic()
        return True

    async def run(self, stopping: Callable[[], bool]) -> None:
        """Beat every interval_s (fixed rate, missed ticks skipped) until ``stopping()``."""
        next_t = time.monotonic()
        while not stopping():
            await self.beat()
            next_t += self.interval_s
            now = time.monotonic()
            if next_t < now:
                next_t = now
            await asyncio.sleep(next_t - now)

    def status(self) -> dict[str, Any]:
        """{device, address, mode, interval_ms, value, beats, errors, state ("ok" | "failing" | "held" |
        "starting"), age_s (since the last echoed beat), last_error, held_reason}."""
        age = None if self.last_ok_mono is None else round(time.monotonic() - self.last_ok_mono, 3)
        state = "held" if self.held else ("failing" if self.last_error else ("ok" if self.beats else "starting"))
        return {"device": self.device, "address": self.reference, "mode": self.mode,
                "interval_ms": round(self.interval_s * 1000), "value": self.value, "beats": self.beats,
                "errors": self.errors, "state": state, "age_s": age, "last_error": self.last_error,
                "held_reason": self.held_reason}


def build_heartbeats(cfg: Any, devices: list[Any], alive: Callable[[], bool] | None = None,
                     why: Callable[[], str | None] | None = None) -> list[Heartbeat]:
    """One Heartbeat per enabled device with a ``heartbeat:`` section (cfg: LoadedConfig; devices: the
    built driver objects, matched by name, each writing its own heartbeat point; alive / why: see
    Heartbeat). Raises ValueError for a device that has a heartbeat section but no heartbeat point."""
    by_name = {d.name: d for d in devices}
    out = []
    for d in cfg.model.devices:
        hb = getattr(d, "heartbeat", None)
        dev = by_name.get(d.name)
        if hb is None or dev is None or not d.enabled:
            continue
        if getattr(dev, "heartbeat_reference", None) is None:
            raise ValueError(f"{d.name}: protocol {dev.protocol} has no heartbeat point")
        out.append(Heartbeat(d.name, dev, hb.interval_ms / 1000, hb.mode, alive=alive, why=why))
    return out
