"""PA-DIM plant (hil/opcua_padim.py): instruments built from the OPC Foundation DI / PA-DIM NodeSets, read by
the gateway's OpcUaDevice through ``nsu=`` node ids before and after a restart that changes the namespace order."""

from __future__ import annotations

import asyncio
import time

import pytest
from asyncua import Client, ua

from drivers.opcua import OpcUaDevice, OpcUaPoint
from gateway.model import Quality
from hil.opcua_padim import (DI_URI, INSTRUMENTS, PADIM_URI, PLANT_URI, PadimPlant, node_id_string)

pytestmark = pytest.mark.timeout(60)

FAST = dict(timeout_s=1.0, publishing_interval_ms=100, watchdog_s=0.5, backoff_initial_s=0.2, backoff_max_s=0.5)


async def _wait_values(dev: OpcUaDevice, want: dict[str, float], timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    last = {}
    while time.monotonic() < deadline:
        last = {r.tag: r for r in await dev.read()}
        if all(last[t].quality is Quality.GOOD and last[t].value == pytest.approx(v, abs=1e-4)
               for t, v in want.items()):
            return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"values not seen within {timeout_s} s: "
                         f"{ {t: (r.value, r.quality.value, r.reason) for t, r in last.items()} }")


@pytest.mark.e2e
async def test_padim_types_instantiated():
    """Devices are PA-DIM types, signals are PA-DIM measurement VariableTypes, units are UNECE EUInformation."""
    async with PadimPlant() as plant:
        async with Client(plant.endpoint) as c:
            nsa = await c.get_namespace_array()
            assert nsa.index(DI_URI) < nsa.index(PADIM_URI) < nsa.index(PLANT_URI)
            padim, ns = nsa.index(PADIM_URI), nsa.index(PLANT_URI)
            lt = c.get_node(ua.NodeId("LT101", ns))
            assert (await lt.read_type_definition()) == ua.NodeId(1009, padim)  # PADIMType
            at = c.get_node(ua.NodeId("AT201", ns))
            assert (await at.read_type_definition()) == ua.NodeId(1086, padim)  # NDIR gas analyser
            level = c.get_node(ua.NodeId("LT101.SignalSet.Level", ns))
            assert (await level.read_type_definition()) == ua.NodeId(1123, padim)  # LevelMeasurementVariableType
            eu = await c.get_node(ua.NodeId("LT101.SignalSet.Level.EngineeringUnits", ns)).read_value()
            assert eu.UnitId == 0x4D5452 and eu.DisplayName.Text == "m"  # UNECE "MTR"
            serial = await c.get_node(ua.NodeId("AT201.SerialNumber", ns)).read_value()
            assert serial == "HIL-AT201"


@pytest.mark.e2e
async def test_nsu_reads_survive_restart_with_other_namespace_order():
    plant = PadimPlant(namespace_order="standard")
    await plant.start()
    ns_before = plant.ns
    points = [OpcUaPoint(i.tag, node_id_string(i.tag), unit=i.unit) for i in INSTRUMENTS]
    dev = OpcUaDevice("padim", plant.endpoint, points, **FAST)
    await dev.start()
    try:
        await plant.set("LT101.Level", 7.25)
        await plant.set("AT201.Concentration", 12.5)
        await _wait_values(dev, {"LT101.Level": 7.25, "PT101.Pressure": 3.0, "TT101.Temperature": 20.0,
                                 "AT201.Concentration": 12.5}, 10.0)

        await plant.restart(namespace_order="plant_first", down_s=0.5)
        assert plant.ns != ns_before  # the plant namespace moved: only nsu= resolution finds the nodes now
        assert plant.namespaces.index(PLANT_URI) < plant.namespaces.index(DI_URI)
        await plant.set("LT101.Level", 8.5)
        await plant.set("PT101.Pressure", 4.75)
        got = await _wait_values(dev, {"LT101.Level": 8.5, "PT101.Pressure": 4.75, "TT101.Temperature": 20.0,
                                       "AT201.Concentration": 12.5}, 15.0)
        assert got["LT101.Level"].unit == "m"
        assert dev.sessions >= 2
    finally:
        await dev.close()
        await plant.stop()


@pytest.mark.e2e
async def test_stale_index_would_read_the_wrong_namespace():
    """The same numeric ns= id that was right before the restart points elsewhere after it (the fault nsu= avoids)."""
    plant = PadimPlant(namespace_order="standard")
    await plant.start()
    try:
        stale = f"ns={plant.ns};s=LT101.SignalSet.Level"
        await plant.restart(namespace_order="plant_first")
        async with Client(plant.endpoint) as c:
            with pytest.raises(ua.UaStatusCodeError):
                await c.get_node(stale).read_value()
            assert await c.get_node(f"ns={plant.ns};s=LT101.SignalSet.Level").read_value() == pytest.approx(5.0)
    finally:
        await plant.stop()


def test_unknown_order_rejected():
    with pytest.raises(ValueError, match="namespace_order"):
        PadimPlant(namespace_order="random")
