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
    protocol: "modbus_tcp", "modbus_rtu" or "opcua".
    tags: the tag names this device delivers (inputs and outputs).
    """

    name: str
    protocol: str

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
