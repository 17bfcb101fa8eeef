"""The ports of a running gateway: what each part that is not the Gateway may ask of it, typed.

The control socket, the systemd STATUS line and watchdog, metrics and reload each take the port they need,
never the Gateway object as ``Any`` and never its private members. gateway.runtime.gateway.Gateway implements
all of them (tests/runtime/test_ports.py checks it structurally, member by member). The record supervisor declares its
own port beside it (gateway.record.supervisor.SupervisedGateway): the record path does not import the runtime.

One status snapshot (``Gateway.snapshot``, the dict documented there) serves ``hazard-gateway status`` (the
control socket), status.json, the STATUS line (gateway.runtime.health.status_line) and metrics
(gateway.ops.metrics.from_status): ``last_status`` is the latest one, taken every second (status.json gets it when
it changed, gateway.runtime.gateway.Gateway._status_loop).
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol, Sequence

from drivers.base import Device
from gateway.config import LoadedConfig
from gateway.safety.alarms import AlarmEngine
from gateway.safety.interlocks import InterlockEngine
from gateway.safety.outputs import OutputManager


class StatusSource(Protocol):
    """The status snapshot, fresh or the latest one taken (about once per second)."""

    @property
    def last_status(self) -> dict[str, Any] | None: ...

    async def snapshot(self, stats_timeout_s: float | None = None) -> dict[str, Any]: ...


class OperatorTarget(StatusSource, Protocol):
    """What the control socket acts on (gateway.ops.control): the engines of the running plant, the outputs, the
    config (which interlocks an alarm feeds), and the record (every action is an event)."""

    @property
    def cfg(self) -> LoadedConfig: ...

    @property
    def alarms(self) -> AlarmEngine: ...

    @property
    def interlocks(self) -> InterlockEngine: ...

    outputs: OutputManager

    def log_event(self, rec: dict[str, Any]) -> None: ...


class WatchedGateway(StatusSource, Protocol):
    """What health needs (gateway.runtime.health): the devices whose poll loops it watches, the beats, the
    uploader it checks."""

    @property
    def cfg(self) -> LoadedConfig: ...

    @property
    def devices(self) -> Sequence[Device]: ...

    health: Any                         # gateway.runtime.health.Health
    forwarder: Any                      # gateway.record.uplink.Forwarder, or None without an uplink
    uploader_task: asyncio.Task | None


class ReloadTarget(Protocol):
    """What a SIGHUP reload drives (gateway.runtime.reload): build a Plant, swap it in, restart its tasks,
    replace the forwarder. Each step is a public method of the Gateway; reload orders them."""

    plant: Any                          # gateway.runtime.build.Plant
    store: Any                          # gateway.record.store.Store
    outputs: OutputManager
    tick: Any                           # gateway.safety.tick.SafetyTick

    @property
    def cfg(self) -> LoadedConfig: ...

    @property
    def stopping(self) -> bool: ...

    @property
    def reload_lock(self) -> asyncio.Lock: ...

    def plant_for(self, cfg: LoadedConfig, signer: Any = None) -> Any: ...

    def build_forwarder(self, plant: Any = None) -> Any: ...

    def swap_plant(self, plant: Any) -> list[asyncio.Task]: ...

    def forget_tags(self, keep: Any) -> None: ...

    def start_plant_tasks(self, plant: Any) -> None: ...

    async def replace_forwarder(self, forwarder: Any, bound_s: float) -> None: ...

    def log_event(self, rec: dict[str, Any]) -> None: ...
