"""Heartbeat: the gateway keeps a watchdog register changing in every PLC that carries an interlock output.

docs/design.md (Fail safe, Heartbeat): the PLC watches the register and trips by itself when it stops
changing, so a dead, hung or disconnected gateway cannot leave a plant unprotected. Configured per
Modbus device::

    heartbeat: {address: 40101, interval_ms: 1000, mode: count}   # or {table: coil, address: 8}, toggle

mode ``count`` writes 1, 2, 3 ... 65535, 0, 1 ... to a holding register (FC6, Modbus Application
Protocol V1.1b3 6.6); mode ``toggle`` alternates 0 / 1 (FC6, or FC5 on a coil, 6.5). The echo of the
write must repeat address and value (Modbus spec: the normal response to FC5/FC6 is an echo of the
request), else the beat counts as failed. There is no read-back: the PLC itself is the judge.

The heartbeat proves more than a running process: it is written only while the gateway's safety path
is alive (``alive()``: the alarm tick ran recently, and every poll loop that feeds an interlock input
has delivered readings within its fresh window, gateway.build.fresh_windows); a stuck safety path
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

    device: device name (messages). link: the device's drivers.modbus link (shared TCP/RTU link).
    unit_id: Modbus unit id. table: "holding_register" or "coil"; address: 0-based PDU address;
    reference: the address as configured (e.g. "40101") for messages. interval_s: seconds between
    beats (> 0). mode: "count" (holding register only) or "toggle". alive: callable answering
    whether the safety path is running (None: always). why: optional callable giving the one-line
    reason when ``alive()`` is False (for the log and ``status``). Raises ValueError for a bad
    combination.
    """

    def __init__(self, device: str, link: Any, unit_id: int, table: str, address: int, interval_s: float,
                 mode: str = "count", *, reference: str | None = None,
                 alive: Callable[[], bool] | None = None, why: Callable[[], str | None] | None = None) -> None:
        if table not in ("holding_register", "coil"):
            raise ValueError(f"{device}: heartbeat must be a holding register or a coil, not {table}")
        if mode not in ("count", "toggle"):
            raise ValueError(f"{device}: heartbeat mode must be count or toggle, not {mode!r}")
        if mode == "count" and table != "holding_register":
            raise ValueError(f"{device}: heartbeat mode count needs a holding register")
        if not interval_s > 0:
            raise ValueError(f"{device}: heartbeat interval must be > 0")
        self.device, self.link, self.unit_id = device, link, unit_id
        self.table, self.address, self.interval_s, self.mode = table, address, float(interval_s), mode
        self.reference = reference or f"{table} {address}"
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
            if self.table == "coil":
                echo = await self.link.write_coil(self.unit_id, self.address, bool(v))
                expect = (self.address, 0xFF00 if v else 0x0000)
            else:
                echo = await self.link.write_register(self.unit_id, self.address, v)
                expect = (self.address, v)
            if tuple(echo) != expect:
                raise ValueError(f"echo {tuple(echo)} differs from {expect}")
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
    """One Heartbeat per enabled Modbus device with a ``heartbeat:`` section (cfg: LoadedConfig;
    devices: the built driver objects, matched by name; alive / why: see Heartbeat)."""
    by_name = {d.name: d for d in devices}
    out = []
    for d in cfg.model.devices:
        hb = getattr(d, "heartbeat", None)
        dev = by_name.get(d.name)
        if hb is None or dev is None or not d.enabled:
            continue
        table, address = hb.table_address()
        ref = hb.address if isinstance(hb.address, (int, str)) else f"{table} {address}"
        out.append(Heartbeat(d.name, dev.link, d.unit_id, table, address, hb.interval_ms / 1000, hb.mode,
                             reference=str(ref), alive=alive, why=why))
    return out
