"""OPC UA plant server built on the OPC Foundation PA-DIM and DI companion specifications.

The address space is built from the real type models in ``hil/nodesets/``
(OPC Foundation UA-Nodeset, MIT License 1.00; see hil/nodesets/ATTRIBUTION.md),
imported in their dependency order (DI 1.04, IRDI dictionary 1.01, PA-DIM
1.01; OPC 30081 PA-DIM section 4, OPC 10000-100 DI). Four instruments are
instantiated from those types in the plant namespace :data:`PLANT_URI`:

=======  ==========================================  ==================================  ==========
device   device ObjectType (PA-DIM)                  signal (SignalSet/...), VariableType unit
=======  ==========================================  ==================================  ==========
LT101    PADIMType                                   Level: LevelMeasurementVariableType   m
PT101    PADIMType                                   Pressure: PressureMeasurementVariableType  kPa
TT101    PADIMType                                   Temperature: TemperatureMeasurementVariableType  degC
AT201    NonDispersiveInfraredGasAnalyserType        Concentration: AnalyticalMeasurementVariableType  %LEL
=======  ==========================================  ==================================  ==========

The device objects carry every mandatory DI/PA-DIM component the types
declare (Manufacturer, SerialNumber, DeviceHealth, SignalSet, ...). The
measured value is the Value of the signal variable, node id
``s=<DEVICE>.SignalSet.<Signal>`` (Float, with EngineeringUnits as UNECE
EUInformation, OPC 10000-8 5.6.3, and EURange), e.g. for the gateway::

    node_id: "nsu=urn:hazard-gateway:hil:padim;s=LT101.SignalSet.Level"

Simplification, said plainly: PA-DIM puts a measurement in an
AnalogSignalType object's ``AnalogSignal`` variable; here the measurement
VariableType instance sits in the SignalSet directly (it is a subtype of
AnalogSignalVariableType, so a client sees the same type information).

Namespace order: ``namespace_order="standard"`` registers the companion
namespaces first ([UA, server, DI, IRDI, PADIM, plant] -> plant is ns=5);
``"plant_first"`` registers the plant namespace and a spare one before the
imports ([UA, server, plant, spare, DI, IRDI, PADIM] -> plant is ns=2), so a
client that cached a namespace index instead of resolving ``nsu=`` reads the
wrong nodes after :meth:`PadimPlant.restart`.

Standalone: ``python -m hil.opcua_padim [--port N] [--order standard|plant_first]``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from asyncua import Server, ua
from asyncua.common.instantiate_util import instantiate

from hil.opcua_plant import free_port

log = logging.getLogger(__name__)

NODESET_DIR = Path(__file__).resolve().parent / "nodesets"
#: import order (MANIFEST section 3): PA-DIM requires DI and the IRDI dictionary
NODESETS = ("Opc.Ua.Di.NodeSet2.xml", "Opc.Ua.IRDI.NodeSet2.xml", "Opc.Ua.PADIM.NodeSet2.xml")
PLANT_URI = "urn:hazard-gateway:hil:padim"
SPARE_URI = "urn:hazard-gateway:hil:padim:spare"
DI_URI = "http://opcfoundation.org/UA/DI/"
PADIM_URI = "http://opcfoundation.org/UA/PADIM/"
ORDERS = ("standard", "plant_first")

# PA-DIM NodeSet numeric ids (Opc.Ua.PADIM.NodeSet2.xml)
PADIM_TYPE = 1009
NDIR_GAS_ANALYSER_TYPE = 1086
LEVEL_MEASUREMENT = 1123
PRESSURE_MEASUREMENT = 1121
TEMPERATURE_MEASUREMENT = 1120
ANALYTICAL_MEASUREMENT = 1127

UNECE_URI = "http://www.opcfoundation.org/UA/units/un/cefact"


def _unece(code: str) -> int:
    """UNECE Rec. 20 common code -> OPC UA UnitId (OPC 10000-8 5.6.3: ASCII bytes packed big-endian)."""
    v = 0
    for ch in code:
        v = (v << 8) | ord(ch)
    return v


@dataclass(frozen=True)
class Instrument:
    """One instrument: device name, device ObjectType id, signal name, VariableType id, unit, UNECE code,
    EU range, initial value."""

    device: str
    device_type: int
    signal: str
    variable_type: int
    unit: str
    unece: str
    eu_range: tuple[float, float]
    initial: float

    @property
    def tag(self) -> str:
        return f"{self.device}.{self.signal}"

    @property
    def node(self) -> str:
        return f"{self.device}.SignalSet.{self.signal}"


INSTRUMENTS = (
    Instrument("LT101", PADIM_TYPE, "Level", LEVEL_MEASUREMENT, "m", "MTR", (0.0, 12.0), 5.0),
    Instrument("PT101", PADIM_TYPE, "Pressure", PRESSURE_MEASUREMENT, "kPa", "KPA", (0.0, 100.0), 3.0),
    Instrument("TT101", PADIM_TYPE, "Temperature", TEMPERATURE_MEASUREMENT, "degC", "CEL", (-40.0, 150.0), 20.0),
    Instrument("AT201", NDIR_GAS_ANALYSER_TYPE, "Concentration", ANALYTICAL_MEASUREMENT, "%LEL", "P1",
               (0.0, 100.0), 0.0),
)
BY_TAG = {i.tag: i for i in INSTRUMENTS}


def node_id_string(tag: str) -> str:
    """The gateway's ``nsu=`` node id of a tag ("LT101.Level" -> "nsu=urn:...:padim;s=LT101.SignalSet.Level")."""
    return f"nsu={PLANT_URI};s={BY_TAG[tag].node}"


class PadimPlant:
    """The PA-DIM plant on ``opc.tcp://HOST:PORT/padim/``.

    namespace_order: "standard" or "plant_first" (see module doc). ``values``: current value per tag
    ("LT101.Level", "PT101.Pressure", "TT101.Temperature", "AT201.Concentration").
    Raises ValueError for an unknown order or tag, OSError when the port cannot be bound.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, namespace_order: str = "standard") -> None:
        if namespace_order not in ORDERS:
            raise ValueError(f"namespace_order must be one of {', '.join(ORDERS)}, got {namespace_order!r}")
        self.host = host
        self.port = port
        self.namespace_order = namespace_order
        self.values: dict[str, float] = {i.tag: i.initial for i in INSTRUMENTS}
        self.ns: int | None = None
        self.namespaces: list[str] = []
        self._server: Server | None = None
        self._nodes: dict[str, object] = {}

    @property
    def endpoint(self) -> str:
        return f"opc.tcp://{self.host}:{self.port}/padim/"

    @property
    def server(self) -> Server:
        if self._server is None:
            raise RuntimeError("PadimPlant not started")
        return self._server

    async def start(self) -> None:
        """Import DI, IRDI, PA-DIM; instantiate the instruments; listen."""
        if self.port == 0:
            self.port = free_port(self.host)
        server = Server()
        await server.init()
        server.set_endpoint(self.endpoint)
        server.set_server_name("hazard-gateway HIL PA-DIM plant")
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        if self.namespace_order == "plant_first":
            await server.register_namespace(PLANT_URI)
            await server.register_namespace(SPARE_URI)
        for name in NODESETS:
            await server.import_xml(str(NODESET_DIR / name))
        self.ns = await server.register_namespace(PLANT_URI)  # existing index when already registered
        self.namespaces = await server.get_namespace_array()
        padim = self.namespaces.index(PADIM_URI)
        ns = self.ns
        now = datetime.now(timezone.utc)
        objects = server.nodes.objects
        self._nodes = {}
        for inst in INSTRUMENTS:
            dev = (await instantiate(objects, server.get_node(ua.NodeId(inst.device_type, padim)),
                                     nodeid=ua.NodeId(inst.device, ns), bname=ua.QualifiedName(inst.device, ns),
                                     dname=ua.LocalizedText(inst.device)))[0]
            await server.get_node(ua.NodeId(f"{inst.device}.Manufacturer", ns)).write_value(
                ua.LocalizedText("hazard-gateway HIL"))
            await server.get_node(ua.NodeId(f"{inst.device}.SerialNumber", ns)).write_value(f"HIL-{inst.device}")
            signal_set = server.get_node(ua.NodeId(f"{inst.device}.SignalSet", ns))
            var = (await instantiate(signal_set, server.get_node(ua.NodeId(inst.variable_type, padim)),
                                     nodeid=ua.NodeId(inst.node, ns), bname=ua.QualifiedName(inst.signal, ns),
                                     dname=ua.LocalizedText(inst.signal)))[0]
            await server.get_node(ua.NodeId(inst.node + ".EngineeringUnits", ns)).write_value(
                ua.EUInformation(NamespaceUri=UNECE_URI, UnitId=_unece(inst.unece),
                                 DisplayName=ua.LocalizedText(inst.unit), Description=ua.LocalizedText(inst.unit)))
            await server.get_node(ua.NodeId(inst.node + ".EURange", ns)).write_value(
                ua.Range(Low=inst.eu_range[0], High=inst.eu_range[1]))
            self._nodes[inst.tag] = var
            await self._write(inst.tag, self.values[inst.tag], now, server)
            log.debug("PA-DIM %s: %s under %s", inst.tag, inst.node, dev.nodeid)
        await server.start()
        self._server = server
        log.info("PA-DIM plant on %s (plant ns=%d, order %s)", self.endpoint, ns, self.namespace_order)

    async def _write(self, tag: str, value: float, ts: datetime | None = None, server: Server | None = None) -> None:
        """Write the signal variable and its ActualValue component (same DataValue)."""
        ts = ts or datetime.now(timezone.utc)
        server = server or self.server
        dv = ua.DataValue(ua.Variant(float(value), ua.VariantType.Float), SourceTimestamp=ts, ServerTimestamp=ts)
        await self._nodes[tag].write_value(dv)
        await server.get_node(ua.NodeId(BY_TAG[tag].node + ".ActualValue", self.ns)).write_value(dv)

    async def set(self, tag: str, value: float) -> None:
        """Set the measured value of ``tag`` (Float, source timestamp now). Raises ValueError for an unknown tag."""
        if tag not in BY_TAG:
            raise ValueError(f"unknown PA-DIM tag {tag!r}; known: {', '.join(BY_TAG)}")
        self.values[tag] = float(value)
        if self._server is not None:
            await self._write(tag, value)

    async def stop(self) -> None:
        """Stop listening (sessions are dropped). Idempotent."""
        if self._server is not None:
            await self._server.stop()
            self._server = None

    async def restart(self, namespace_order: str | None = None, down_s: float = 0.0) -> None:
        """Stop, wait ``down_s``, start again on the same port (optionally with another namespace order);
        the current values are kept."""
        await self.stop()
        if namespace_order is not None:
            if namespace_order not in ORDERS:
                raise ValueError(f"namespace_order must be one of {', '.join(ORDERS)}, got {namespace_order!r}")
            self.namespace_order = namespace_order
        if down_s > 0:
            await asyncio.sleep(down_s)
        await self.start()

    async def __aenter__(self) -> "PadimPlant":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()


async def _main(args: argparse.Namespace) -> None:
    plant = PadimPlant(args.host, args.port, args.order)
    await plant.start()
    print(f"hil.opcua_padim: {plant.endpoint} (plant ns={plant.ns}, order {plant.namespace_order})", flush=True)
    for inst in INSTRUMENTS:
        print(f"  {inst.tag:<20} {node_id_string(inst.tag)}  [{inst.unit}]", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await plant.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hil.opcua_padim", description="PA-DIM plant OPC UA server")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--order", choices=ORDERS, default="standard")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("asyncua").setLevel(logging.ERROR)
    try:
        asyncio.run(_main(args))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        print(f"hil.opcua_padim: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
