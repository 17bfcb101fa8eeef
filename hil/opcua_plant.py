"""OPC UA plant simulator for hardware-in-the-loop tests (asyncua server, in-process).

A tiny simulated tank farm exposed as an OPC UA server (OPC UA Part 4 services
served by asyncua). All nodes are string node ids in namespace
``urn:hazard-gateway:hil:plant`` (default):

==============================  ========  ======  =========================================
node id (s=)                    type      unit    meaning
==============================  ========  ======  =========================================
GasDetector.AT301.H2S           Double    mg/m3   toxic gas detector AT-301, H2S concentration
GasDetector.AT301.Status        Int32     -       0 ok, 1 fault
ESD.XV100.Position              Double    %       ESD valve XV-100 position, 0 closed .. 100 open
ESD.XV100.TripCommand           Boolean   -       writable by clients: True = trip (close XV-100)
Gateway.Heartbeat               UInt16    -       writable by clients: gateway watchdog counter
==============================  ========  ======  =========================================

When a client writes TripCommand=True the simulated valve strokes to 0 %
(and back to 100 % on False); :meth:`OpcUaPlant.set_esd_position` sets the
position directly (it holds until the next TripCommand change).

Run standalone: ``python -m hil.opcua_plant --port 4840`` (``--ramp --ramp-ms 500`` changes H2S
every 500 ms; ``--report`` prints each value and the server-side subscription count, C12).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
from datetime import datetime, timezone

from asyncua import Server, ua

from hil.rig import free_port

NAMESPACE_URI = "urn:hazard-gateway:hil:plant"

H2S = "GasDetector.AT301.H2S"
H2S_STATUS = "GasDetector.AT301.Status"
XV100_POSITION = "ESD.XV100.Position"
XV100_TRIP = "ESD.XV100.TripCommand"
HEARTBEAT = "Gateway.Heartbeat"

_log = logging.getLogger(__name__)


def _utc(ts: datetime | float | None) -> datetime:
    if ts is None:
        return datetime.now(timezone.utc)
    if isinstance(ts, datetime):
        return ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)
    return datetime.fromtimestamp(float(ts), tz=timezone.utc)


class OpcUaPlant:
    """The simulated tank farm as an OPC UA server on ``opc.tcp://HOST:PORT/hazard/``.

    host: interface to bind (127.0.0.1 for tests). port: TCP port, 0 = pick a
    free one at :meth:`start`. namespace_uri: the plant namespace (node ids are
    resolved against it, so tests can check ``nsu=`` node ids).
    max_session_timeout_ms: cap of the RevisedSessionTimeout the server answers
    to CreateSession (Part 4 5.6.2; None = asyncua's default, 600 000 ms); the
    server closes a session that sends no request for that long.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0,
                 namespace_uri: str = NAMESPACE_URI, *, max_session_timeout_ms: float | None = None) -> None:
        self.host = host
        self.port = port
        self.namespace_uri = namespace_uri
        self.max_session_timeout_ms = max_session_timeout_ms
        self.ns: int | None = None
        self._server: Server | None = None
        self._nodes: dict[str, object] = {}
        self._esd_follow_task: asyncio.Task | None = None

    @property
    def endpoint(self) -> str:
        """``opc.tcp://HOST:PORT/hazard/`` (valid once :meth:`start` picked the port)."""
        return f"opc.tcp://{self.host}:{self.port}/hazard/"

    @property
    def server(self) -> Server:
        """The running asyncua Server (for tests that inspect sessions / monitored items)."""
        if self._server is None:
            raise RuntimeError("OpcUaPlant not started")
        return self._server

    def node_id(self, name: str) -> ua.NodeId:
        """The ua.NodeId of plant node ``name`` (e.g. "GasDetector.AT301.H2S")."""
        return ua.NodeId(name, self.ns)

    async def start(self) -> None:
        """Build the address space and listen. Raises OSError if the port is taken."""
        if self.port == 0:
            self.port = free_port(self.host)
        server = Server()
        await server.init()
        server.set_endpoint(self.endpoint)
        server.set_server_name("hazard-gateway HIL plant")
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        if self.max_session_timeout_ms is not None:  # asyncua revises min(max(requested, min), max)
            server.iserver.max_session_timeout_ms = float(self.max_session_timeout_ms)
            server.iserver.min_session_timeout_ms = min(server.iserver.min_session_timeout_ms,
                                                        float(self.max_session_timeout_ms))
        self.ns = await server.register_namespace(self.namespace_uri)
        ns = self.ns
        objects = server.nodes.objects
        now = datetime.now(timezone.utc)

        gas = await objects.add_object(ua.NodeId("GasDetector", ns), ua.QualifiedName("GasDetector", ns))
        at301 = await gas.add_object(ua.NodeId("GasDetector.AT301", ns), ua.QualifiedName("AT301", ns))
        esd = await objects.add_object(ua.NodeId("ESD", ns), ua.QualifiedName("ESD", ns))
        xv100 = await esd.add_object(ua.NodeId("ESD.XV100", ns), ua.QualifiedName("XV100", ns))
        gw = await objects.add_object(ua.NodeId("Gateway", ns), ua.QualifiedName("Gateway", ns))

        async def var(parent, name, browse, value, vtype, unit=None, writable=False):
            node = await parent.add_variable(ua.NodeId(name, ns), ua.QualifiedName(browse, ns),
                                             ua.Variant(value, vtype))
            await node.write_value(ua.DataValue(ua.Variant(value, vtype), SourceTimestamp=now, ServerTimestamp=now))
            if unit is not None:
                # Part 8 5.6.3: EngineeringUnits property (EUInformation, UNECE code not filled here)
                eu = ua.EUInformation(NamespaceUri="http://www.opcfoundation.org/UA/units/un/cefact",
                                      UnitId=-1, DisplayName=ua.LocalizedText(unit),
                                      Description=ua.LocalizedText(unit))
                await node.add_property(ua.NodeId(name + ".EngineeringUnits", ns),
                                        ua.QualifiedName("EngineeringUnits", 0), eu)
            if writable:
                await node.set_writable()
            self._nodes[name] = node
            return node

        await var(at301, H2S, "H2S", 0.0, ua.VariantType.Double, unit="mg/m3")
        await var(at301, H2S_STATUS, "Status", 0, ua.VariantType.Int32)
        await var(xv100, XV100_POSITION, "Position", 100.0, ua.VariantType.Double, unit="%")
        await var(xv100, XV100_TRIP, "TripCommand", False, ua.VariantType.Boolean, writable=True)
        await var(gw, HEARTBEAT, "Heartbeat", 0, ua.VariantType.UInt16, writable=True)

        await server.start()
        self._server = server
        self._esd_follow_task = asyncio.create_task(self._follow_trip_command())
        _log.info("OPC UA plant listening on %s (ns=%d %s)", self.endpoint, ns, self.namespace_uri)

    async def _write(self, name: str, value, vtype: ua.VariantType, status: ua.StatusCode | None = None,
                     source_ts: datetime | float | None = None, server_ts: datetime | float | None = None,
                     no_source_ts: bool = False) -> None:
        now = datetime.now(timezone.utc)
        code = status if status is not None else ua.StatusCode(ua.StatusCodes.Good)
        variant = ua.Variant(None, ua.VariantType.Null) if value is None else ua.Variant(value, vtype)
        dv = ua.DataValue(variant, StatusCode=code,
                          SourceTimestamp=None if no_source_ts else _utc(source_ts),
                          ServerTimestamp=_utc(server_ts) if server_ts is not None else now)
        await self.server.write_attribute_value(self.node_id(name), dv)

    async def set_h2s(self, mg_m3: float | None, status: ua.StatusCode | None = None, *,
                      source_ts: datetime | float | None = None, no_source_ts: bool = False) -> None:
        """Set AT-301 H2S (mg/m3), optionally with a Bad/Uncertain status code.

        status: an asyncua ``ua.StatusCode`` (e.g. ``ua.StatusCode(0x40900000)``
        UncertainLastUsableValue); a Bad status makes the server drop the value
        (Part 4 7.7.1). source_ts: the source timestamp (default now);
        no_source_ts=True sends only a server timestamp (C13).
        """
        await self._write(H2S, None if mg_m3 is None else float(mg_m3), ua.VariantType.Double, status,
                          source_ts=source_ts, no_source_ts=no_source_ts)

    async def set_status(self, code: int) -> None:
        """Set AT-301 Status (Int32: 0 ok, 1 fault)."""
        await self._write(H2S_STATUS, int(code), ua.VariantType.Int32)

    async def set_esd_position(self, pct: float, status: ua.StatusCode | None = None) -> None:
        """Set ESD valve XV-100 position in % open (0 closed .. 100 open), optionally with a status.

        The position holds until the next TripCommand change strokes the valve again.
        Raises ValueError outside 0..100.
        """
        if not 0.0 <= float(pct) <= 100.0:
            raise ValueError(f"XV-100 position {pct} % outside 0..100")
        await self._write(XV100_POSITION, float(pct), ua.VariantType.Double, status)

    async def read(self, name: str):
        """Current value of plant node ``name`` (server side, no client)."""
        return await self._nodes[name].read_value()

    async def _follow_trip_command(self) -> None:
        """Stroke XV-100 to 0 % on TripCommand=True, to 100 % on False (0.1 s scan)."""
        last = None
        try:
            while True:
                await asyncio.sleep(0.1)
                trip = await self._nodes[XV100_TRIP].read_value()
                if trip != last and last is not None:
                    await self._write(XV100_POSITION, 0.0 if trip else 100.0, ua.VariantType.Double)
                last = trip
        except asyncio.CancelledError:
            pass

    async def stop(self) -> None:
        """Stop listening and drop every session; idempotent."""
        if self._esd_follow_task is not None:
            self._esd_follow_task.cancel()
            try:
                await self._esd_follow_task
            except asyncio.CancelledError:
                pass
            self._esd_follow_task = None
        if self._server is not None:
            server, self._server = self._server, None
            await server.stop()

    async def __aenter__(self) -> "OpcUaPlant":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()


def subscription_report(plant: OpcUaPlant) -> dict:
    """Server side: sessions, subscriptions and monitored items per node id (HIL diagnostics,
    asyncua internals; C12 checks that a reconnect leaves one subscription, one item per tag)."""
    iserver = plant.server.iserver
    subs = iserver.subscription_service.subscriptions
    items: dict[str, int] = {}
    for isub in subs.values():
        for item in isub.monitored_item_srv._monitored_items.values():
            key = item.read_value_id.NodeId.to_string()
            items[key] = items.get(key, 0) + 1
    return {"sessions": len(getattr(iserver, "_external_sessions", {}) or {}), "subscriptions": len(subs),
            "monitored_items": items}


async def _run(host: str, port: int, ramp: bool, ramp_ms: float = 1000.0, report: bool = False) -> None:
    plant = OpcUaPlant(host=host, port=port)
    await plant.start()
    print(f"OPC UA plant on {plant.endpoint} (nsu={plant.namespace_uri}, ns={plant.ns})", flush=True)

    async def reporter() -> None:
        last = None
        while True:
            rep = subscription_report(plant)
            if rep != last:
                print("SUBSCRIPTIONS " + json.dumps(rep, sort_keys=True), flush=True)
                last = rep
            await asyncio.sleep(0.1)

    report_task = asyncio.create_task(reporter()) if report else None
    try:
        value = 0.0
        while True:
            await asyncio.sleep(ramp_ms / 1000.0 if ramp else 1.0)
            if ramp:
                value = (value + 0.5) % 20.0
                await plant.set_h2s(value)
                if report:
                    print(f"H2S {value}", flush=True)
    finally:
        if report_task is not None:
            report_task.cancel()
        await plant.stop()


def main(argv: list[str] | None = None) -> int:
    """``python -m hil.opcua_plant [--host 127.0.0.1] [--port 4840] [--ramp [--ramp-ms MS]] [--report]``."""
    ap = argparse.ArgumentParser(prog="python -m hil.opcua_plant", description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=4840, help="TCP port (0 = pick a free one)")
    ap.add_argument("--ramp", action="store_true", help="ramp H2S 0..20 mg/m3 by 0.5 per step (1 s steps)")
    ap.add_argument("--ramp-ms", type=float, default=1000.0, help="ramp step in ms (default 1000)")
    ap.add_argument("--report", action="store_true",
                    help="print each ramp value (H2S v) and, on every change, SUBSCRIPTIONS {json}: sessions, "
                         "subscriptions, monitored items per node id")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        asyncio.run(_run(args.host, args.port, args.ramp, args.ramp_ms, args.report))
    except KeyboardInterrupt:
        return 0
    except OSError as exc:
        print(f"opcua_plant: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
