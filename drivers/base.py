"""The one small interface between the core and every protocol adapter.

Modelled on EdgeX's protocol-driver boundary: the core asks a device to read
its configured points and to write a value to one output point, and knows
nothing else of the protocol. Every method is a coroutine on the gateway's
asyncio loop.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from gateway.model import Reading


class Device(ABC):
    """One configured device (a PLC, a detector, an OPC UA server).

    name: the device name from the config (used in every error message).
    protocol: the protocol name, a key of drivers.registry.PROTOCOLS ("modbus_tcp", "modbus_rtu", "opcua").
    tags: the tag names this device delivers (inputs and outputs).
    link_id: the physical link the device shares with others (a serial port, host:port); its own name
    when it shares none.
    heartbeat_reference: where :meth:`beat` writes (for messages); None when the device has no
    heartbeat point.
    """

    name: str
    protocol: str
    heartbeat_reference: str | None = None

    @property
    def link_id(self) -> str:
        """A stable string naming the physical link this device is polled over; devices with the same
        protocol and link_id wait for each other. Default: the device's own name (a link of its own)."""
        return self.name

    def link_state(self) -> dict[str, Any]:
        """{"state": "up" | "down", "error": the last link error or None, "offline": bool} for the operator's
        status (control socket, ``hazard-gateway status``). Default: the device's own ``connected`` and
        ``last_error`` attributes, never offline."""
        return {"state": "up" if getattr(self, "connected", None) else "down",
                "error": getattr(self, "last_error", None), "offline": False}

    def describe(self, tag: str) -> str:
        """Where point ``tag`` lives on the device, as a technician reads it from the device's manual
        (commissioning probe); "?" for a tag the device does not have."""
        return "?"

    def format_raw(self, reading: Reading) -> str:
        """The raw part of ``reading`` (what the device sent) as one short string; "-" when nothing was
        read. Default: integers as hex words, anything else as str()."""
        raw = getattr(reading, "raw", None)
        if raw is None or raw == [] or raw == ():
            return "-"
        if isinstance(raw, (list, tuple)) and all(isinstance(x, int) for x in raw):
            return " ".join(f"{x:04X}" for x in raw)
        return str(raw)

    async def beat(self, value: int) -> None:
        """Write heartbeat ``value`` to the device's heartbeat point (gateway.safety.heartbeat) and check that the
        device took it; raise (any exception, one line) when it did not. A protocol without heartbeats
        raises NotImplementedError."""
        raise NotImplementedError(f"{self.name}: protocol {self.protocol} has no heartbeat")

    @property
    @abstractmethod
    def tags(self) -> list[str]:
        """Tag names of every point of this device, in config order."""

    @abstractmethod
    async def start(self) -> None:
        """Prepare the link. Must not raise when the device is unreachable:
        the first read then returns bad readings ("comm fault") and the link
        reconnects with backoff."""

    @abstractmethod
    async def read(self) -> list[Reading]:
        """Read every point once; one Reading per tag, bad ones included.

        Never raises for a device fault: a timeout, exception response or
        malformed reply becomes a BAD reading with the reason."""

    @abstractmethod
    async def write(self, tag: str, value: Any) -> Reading:
        """Write ``value`` (engineering units) to output point ``tag``, read it
        back and return the read-back Reading.

        Raises gateway.model.WriteError (one line: device, address, why) when
        the write is rejected, the echo differs, or the read-back disagrees."""

    @abstractmethod
    async def close(self) -> None:
        """Close the link cleanly; idempotent."""
