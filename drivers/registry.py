"""Protocol name -> how to build its devices: the one place the core learns which protocols exist.

gateway.runtime.build.build_devices loops over the enabled device sections of a config and hands each to the entry of
its ``protocol``. An entry imports its driver module only when it builds a device of that protocol, so a
config without OPC UA never imports asyncua and one without Modbus never imports drivers.modbus.

An entry's ``build(section, ctx)`` takes one device section of a validated config (read by attribute, never
imported from gateway/: drivers/ imports nothing of gateway/ but gateway.model) and a :class:`BuildContext`
(``resolve``: the config's relative-path resolver; ``links``: the :class:`Links` the devices of one Plant
share), and returns the Device. ``link_id(section)`` names the physical link a configured device is polled
over without building anything (the same string as the built device's ``Device.link_id``; used by the
watchdog and staleness windows, which work on config sections). Adding a protocol: drivers/README.md,
"Adding a protocol".

An entry also says what its config section holds: ``device_fields`` and ``tag_fields`` (pydantic models of the
protocol's own keys, drivers/*_section.py), which gateway.config joins with the keys every device and tag has
into the device models of the config (their JSON Schema names: ``device_model`` and ``tag_model``);
``profiles`` (its devices may take their tags from a register-map profile, gateway.device_profiles) and
``check`` (checks across its devices that a single field cannot make). The section modules are light (pydantic
and the codec), so the registry imports them at once; the driver stacks stay lazy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from drivers import modbus_section, opcua_section
from drivers.base import Device


class Links:
    """The links the devices of one build share, one pool per protocol family (created on first use by that
    family's entry: ``pool("modbus", ModbusLinks)``). ``close_all()`` closes every pool's links."""

    def __init__(self) -> None:
        self._pools: dict[str, Any] = {}

    def pool(self, family: str, factory: Callable[[], Any]) -> Any:
        """The shared pool of ``family`` (``factory()`` on first use); it must have ``async close_all()``."""
        p = self._pools.get(family)
        if p is None:
            p = self._pools[family] = factory()
        return p

    async def close_all(self) -> None:
        for p in list(self._pools.values()):
            await p.close_all()
        self._pools.clear()


@dataclass(frozen=True)
class BuildContext:
    """What a protocol entry may use besides the device section: ``resolve(path)`` (a config-relative path to
    an absolute one, gateway.config.LoadedConfig.resolve) and ``links`` (the shared :class:`Links`)."""

    resolve: Callable[[str], Any]
    links: Links = field(default_factory=Links)


def _no_checks(devices: list[tuple[int, Any]], report: Callable[[tuple, str], None]) -> None:
    return None


@dataclass(frozen=True)
class Protocol:
    """One protocol: ``build(section, ctx) -> Device`` (imports the driver module lazily),
    ``link_id(section) -> str`` (pure: no driver module imported), and its config section: ``device_fields`` /
    ``tag_fields`` (pydantic models, gateway.model.STRICT) named ``device_model`` / ``tag_model`` once joined
    with the common keys; ``profiles``: its devices may use register-map profiles (then a device needs tags:
    or a profile:, else tags:); ``check(devices, report)``: (index, section) of each of its devices in a config,
    ``report(location, message)`` for a problem across them."""

    name: str
    build: Callable[[Any, BuildContext], Device]
    link_id: Callable[[Any], str]
    device_fields: type
    tag_fields: type
    device_model: str
    tag_model: str
    profiles: bool = False
    check: Callable[[list[tuple[int, Any]], Callable[[tuple, str], None]], None] = _no_checks


def _build_modbus(section: Any, ctx: BuildContext) -> Device:
    from drivers.modbus import from_config
    return from_config(section, ctx)


def _build_opcua(section: Any, ctx: BuildContext) -> Device:
    from drivers.opcua import from_config
    return from_config(section, ctx)


def _own_link(section: Any) -> str:
    return str(section.name)


#: protocol name (a device section's ``protocol``) -> its entry
PROTOCOLS: dict[str, Protocol] = {
    "modbus_tcp": Protocol("modbus_tcp", _build_modbus, lambda d: f"{d.host}:{d.port}",   # one TCP connection
                           modbus_section.ModbusTcpFields, modbus_section.ModbusTagFields, "ModbusTcpDevice",
                           "ModbusTag", profiles=True, check=modbus_section.check_devices),
    "modbus_rtu": Protocol("modbus_rtu", _build_modbus, lambda d: str(d.port),            # one serial bus
                           modbus_section.ModbusRtuFields, modbus_section.ModbusTagFields, "ModbusRtuDevice",
                           "ModbusTag", profiles=True, check=modbus_section.check_devices),
    "opcua": Protocol("opcua", _build_opcua, _own_link,                                    # its own session
                      opcua_section.OpcUaFields, opcua_section.OpcUaTagFields, "OpcUaDeviceCfg", "OpcUaTag"),
}


def entry(protocol: str) -> Protocol:
    """The entry of ``protocol``; ValueError (one line) for a protocol no driver serves."""
    try:
        return PROTOCOLS[protocol]
    except KeyError:
        raise ValueError(f"protocol {protocol!r}: no driver (known: {', '.join(sorted(PROTOCOLS))})") from None


def build_device(section: Any, ctx: BuildContext) -> Device:
    """The Device of one configured device section."""
    return entry(section.protocol).build(section, ctx)


def link_key(section: Any) -> tuple[str, str]:
    """(protocol, link id) of a configured device: devices with the same key share one physical link. A
    protocol without an entry has a link of its own (its name)."""
    proto = str(getattr(section, "protocol", ""))
    e = PROTOCOLS.get(proto)
    return (proto, e.link_id(section) if e is not None else _own_link(section))
