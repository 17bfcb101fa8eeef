"""drivers/opcua.py against real asyncua servers (hil/opcua_plant.py) on 127.0.0.1.

One plant is shared by the module (asyncua servers take ~1 s to start); the
C12 tests start their own servers because they kill / freeze them.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import time
import uuid
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest
import pytest_asyncio
from asyncua import ua

from drivers.opcua import (OpcUaDevice, OpcUaPoint, coerce_for_variant, parse_node_id, quality_of,
                           reading_from_datavalue, status_name)
from gateway.model import Quality, TimeSource, WriteError
from hil.opcua_plant import (H2S, H2S_STATUS, HEARTBEAT, NAMESPACE_URI, XV100_POSITION, XV100_TRIP,
                             OpcUaPlant, free_port)
from conftest import wait_for as _wait_for

pytestmark = pytest.mark.asyncio(loop_scope="module")

UNCERTAIN_LAST_USABLE = 0x40900000
BAD_SENSOR_FAILURE = 0x808C0000
SEVERITY_11 = 0xC0000000
#: the predicates here are async (a read of the device): polled every 50 ms
wait_for = functools.partial(_wait_for, step_s=0.05)

# fast settings so the whole file stays well under 60 s
FAST = dict(timeout_s=0.5, publishing_interval_ms=50, watchdog_s=0.3, backoff_initial_s=0.2, backoff_max_s=0.5)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def plant():
    p = OpcUaPlant()
    await p.start()
    yield p
    await p.stop()


async def reading_of(dev: OpcUaDevice, tag: str):
    return {r.tag: r for r in await dev.read()}[tag]


def monitored_items_per_node(plant: OpcUaPlant) -> Counter:
    """Server side: how many monitored items exist per node id, over all subscriptions."""
    counts: Counter = Counter()
    for isub in plant.server.iserver.subscription_service.subscriptions.values():
        for item in isub.monitored_item_srv._monitored_items.values():
            counts[item.read_value_id.NodeId.to_string()] += 1
    return counts


# ------------------------------------------------------------------ node ids (pure)

@pytest.mark.parametrize("text, ns, nsu, kind, ident", [
    ("ns=2;s=GasDetector.AT301.H2S", 2, None, "s", "GasDetector.AT301.H2S"),
    ("ns=3;i=1001", 3, None, "i", 1001),
    ("i=2258", 0, None, "i", 2258),
    ("s=Plain", 0, None, "s", "Plain"),
    (f"nsu={NAMESPACE_URI};s=ESD.XV100.Position", None, NAMESPACE_URI, "s", "ESD.XV100.Position"),
    ("nsu=http://opcfoundation.org/UA/DI/;i=1002", None, "http://opcfoundation.org/UA/DI/", "i", 1002),
    ("ns=2;g=09087e75-8e5e-499b-954f-f2a9603db28a", 2, None, "g", uuid.UUID("09087e75-8e5e-499b-954f-f2a9603db28a")),
    ("ns=2;b=" + base64.b64encode(b"\x01\x02tag").decode(), 2, None, "b", b"\x01\x02tag"),
    ("ns=2;s=a;b=c", 2, None, "s", "a;b=c"),
])
async def test_parse_node_id_forms(text, ns, nsu, kind, ident):
    p = parse_node_id(text)
    assert (p.ns, p.nsu, p.kind, p.identifier) == (ns, nsu, kind, ident)


@pytest.mark.parametrize("text", [
    "ns=2;s=Gas Detector.H2S", " ns=2;s=X", "ns=2;s=X ", "ns=2; s=X", "ns=2;s=X\t", "nsu=urn:a b;s=X",
])
async def test_whitespace_node_id_rejected(text):
    with pytest.raises(ValueError) as err:
        OpcUaPoint("AT301_H2S", text)
    msg = str(err.value)
    assert "\n" not in msg and "AT301_H2S" in msg and "whitespace" in msg


@pytest.mark.parametrize("text", ["", "ns=2", "ns=x;s=A", "ns=2;q=A", "ns=2;i=12a", "ns=2;g=not-a-guid",
                                  "ns=2;b=***", "nsu=;s=A", "ns=70000;i=1", "ns=2;s="])
async def test_malformed_node_id_rejected(text):
    with pytest.raises(ValueError):
        parse_node_id(text)


# ------------------------------------------------------------------ status -> quality (pure table, C13)

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
SRV = NOW + timedelta(seconds=1)


@pytest.mark.parametrize("code, value, quality, out_value, reason", [
    (0x00000000, 13.0, Quality.GOOD, 13.0, None),
    (UNCERTAIN_LAST_USABLE, 12.3, Quality.UNCERTAIN, 12.3, "status UncertainLastUsableValue"),
    (UNCERTAIN_LAST_USABLE | 0x0400, 12.3, Quality.UNCERTAIN, 12.3, "status UncertainLastUsableValue"),
    (BAD_SENSOR_FAILURE, None, Quality.BAD, None, "status BadSensorFailure"),
    (BAD_SENSOR_FAILURE, 0.0, Quality.BAD, None, "status BadSensorFailure"),  # server sent a value anyway
    (SEVERITY_11, 5.0, Quality.BAD, None, "status 0xC0000000"),
    (0x00000000, None, Quality.BAD, None, "status Good, no value"),
    (0x00000000, float("nan"), Quality.BAD, None, "nan"),
])
async def test_C13_status_table(code, value, quality, out_value, reason):
    point = OpcUaPoint("T", "ns=2;s=T", unit="mg/m3")
    dv = ua.DataValue(ua.Variant(value, ua.VariantType.Double if value is not None else ua.VariantType.Null),
                      StatusCode=ua.StatusCode(code), SourceTimestamp=NOW, ServerTimestamp=SRV)
    r = reading_from_datavalue(point, dv, received_at=0.0)
    assert (r.quality, r.value, r.reason) == (quality, out_value, reason)
    assert r.usable is (quality is not Quality.BAD)
    assert (r.ts, r.ts_source) == (NOW.timestamp(), TimeSource.SOURCE)
    assert r.raw["status"] == code


async def test_C13_timestamp_fallback_table():
    point = OpcUaPoint("T", "ns=2;s=T")
    v = ua.Variant(1.0, ua.VariantType.Double)
    r = reading_from_datavalue(point, ua.DataValue(v, SourceTimestamp=None, ServerTimestamp=SRV), received_at=7.0)
    assert (r.ts, r.ts_source) == (SRV.timestamp(), TimeSource.SERVER)
    r = reading_from_datavalue(point, ua.DataValue(v), received_at=7.0)
    assert (r.ts, r.ts_source) == (7.0, TimeSource.LOCAL)
    # 1601-01-01 is OPC UA's "no time" (Part 6 5.2.2.5)
    r = reading_from_datavalue(point, ua.DataValue(v, SourceTimestamp=datetime(1601, 1, 1, tzinfo=timezone.utc),
                                                   ServerTimestamp=SRV), received_at=7.0)
    assert r.ts_source is TimeSource.SERVER


async def test_quality_of_severity_bits():
    assert [quality_of(c) for c in (0x0, 0x00A80000, 0x40000000, 0x80000000, 0xC0000000)] == [
        Quality.GOOD, Quality.GOOD, Quality.UNCERTAIN, Quality.BAD, Quality.BAD]
    assert status_name(0x808C0000) == "BadSensorFailure"


@pytest.mark.parametrize("value, vtype, expected", [
    (7, ua.VariantType.UInt16, 7), (7.0, ua.VariantType.Int32, 7), (True, ua.VariantType.Boolean, True),
    (1, ua.VariantType.Boolean, True), (3, ua.VariantType.Double, 3.0), (2.5, ua.VariantType.Float, 2.5),
])
async def test_coerce_for_variant_ok(value, vtype, expected):
    out = coerce_for_variant(value, vtype)
    assert out == expected and type(out) is type(expected)


@pytest.mark.parametrize("value, vtype", [
    (70000, ua.VariantType.UInt16), (-1, ua.VariantType.UInt16), (1.5, ua.VariantType.Int32),
    (2, ua.VariantType.Boolean), ("x", ua.VariantType.Double), (float("inf"), ua.VariantType.Double),
    (1e39, ua.VariantType.Float), (True, ua.VariantType.Double),
])
async def test_coerce_for_variant_rejects(value, vtype):
    with pytest.raises(ValueError):
        coerce_for_variant(value, vtype)


# ------------------------------------------------------------------ against the plant

@pytest.mark.e2e
async def test_subscription_delivers_values_ns_and_nsu_forms(plant):
    points = [
        OpcUaPoint("H2S_ns", f"ns={plant.ns};s={H2S}", unit="mg/m3"),
        OpcUaPoint("H2S_nsu", f"nsu={NAMESPACE_URI};s={H2S}", unit="mg/m3"),
        OpcUaPoint("CURRENT_TIME", "i=2258", subscribe=False),
    ]
    dev = OpcUaDevice("plant", plant.endpoint, points, **FAST)
    await dev.start()
    try:
        assert dev.connected

        async def initial_values_arrived():
            return dev.notifications["H2S_ns"] >= 1 and dev.notifications["H2S_nsu"] >= 1
        await wait_for(initial_values_arrived, 3.0)
        for value in (1.5, 2.5, 3.75):
            before = dict(dev.notifications)
            await plant.set_h2s(value)

            async def both_notified():
                rs = {r.tag: r for r in await dev.read()}
                return all(dev.notifications[t] == before[t] + 1 and rs[t].value == value
                           and rs[t].quality is Quality.GOOD for t in ("H2S_ns", "H2S_nsu"))
            await wait_for(both_notified, 3.0)
        assert dev.notifications["CURRENT_TIME"] == 0
        r = await reading_of(dev, "CURRENT_TIME")  # direct read of a ns=0 node
        assert r.quality is Quality.GOOD and isinstance(r.value, float) and abs(r.value - time.time()) < 5
        r = await reading_of(dev, "H2S_nsu")
        assert r.unit == "mg/m3" and r.ts_source is TimeSource.SOURCE
    finally:
        await dev.close()


@pytest.mark.e2e
async def test_unknown_namespace_uri_is_bad_for_that_tag_only(plant):
    points = [OpcUaPoint("GOOD", f"nsu={NAMESPACE_URI};s={H2S}"),
              OpcUaPoint("NOWHERE", "nsu=urn:not-on-this-server;s=X")]
    dev = OpcUaDevice("plant", plant.endpoint, points, **FAST)
    await dev.start()
    try:
        await plant.set_h2s(4.0)
        await wait_for(lambda: _is(dev, "GOOD", 4.0), 3.0)
        r = await reading_of(dev, "NOWHERE")
        assert r.quality is Quality.BAD and "urn:not-on-this-server" in r.reason
    finally:
        await dev.close()


async def _is(dev, tag, value):
    r = await reading_of(dev, tag)
    return r.quality is Quality.GOOD and r.value == value


@pytest.mark.e2e
@pytest.mark.parametrize("subscribe", [True, False], ids=["subscription", "direct-read"])
async def test_C13_status_codes_map_to_quality(plant, subscribe):
    points = [OpcUaPoint("AT301_H2S", f"nsu={NAMESPACE_URI};s={H2S}", unit="mg/m3", subscribe=subscribe),
              OpcUaPoint("XV100_POS", f"nsu={NAMESPACE_URI};s={XV100_POSITION}", unit="%", subscribe=subscribe)]
    dev = OpcUaDevice("plant", plant.endpoint, points, **FAST)
    await dev.start()
    try:
        if subscribe:  # make sure the readings below come from notifications, not from direct reads
            await wait_for(lambda: _notified(dev, "AT301_H2S", "XV100_POS"), 3.0)
            n0 = dict(dev.notifications)
        src = datetime.now(timezone.utc) - timedelta(seconds=30)
        await plant.set_h2s(12.3, ua.StatusCode(UNCERTAIN_LAST_USABLE), source_ts=src)

        async def uncertain():
            r = await reading_of(dev, "AT301_H2S")
            return r if r.quality is Quality.UNCERTAIN else None
        r = await wait_for(uncertain, 3.0)
        assert r.value == 12.3 and r.reason == "status UncertainLastUsableValue" and r.usable
        assert r.ts_source is TimeSource.SOURCE and abs(r.ts - src.timestamp()) < 1e-3

        await plant.set_h2s(None, ua.StatusCode(BAD_SENSOR_FAILURE))

        async def bad():
            r = await reading_of(dev, "AT301_H2S")
            return r if r.quality is Quality.BAD else None
        r = await wait_for(bad, 3.0)
        assert r.value is None and not r.usable and r.reason == "status BadSensorFailure"
        assert r.to_record()["value"] is None

        await plant.set_h2s(13.0, no_source_ts=True)
        r = await wait_for(lambda: _good_value(dev, "AT301_H2S", 13.0), 3.0)
        assert r.ts_source is TimeSource.SERVER and r.reason is None

        await plant.set_esd_position(50.0, ua.StatusCode(SEVERITY_11))

        async def sev11():
            r = await reading_of(dev, "XV100_POS")
            return r if r.quality is Quality.BAD else None
        r = await wait_for(sev11, 3.0)
        assert r.value is None and r.reason == "status 0xC0000000"
        if subscribe:
            assert dev.notifications["AT301_H2S"] - n0["AT301_H2S"] == 3
            assert dev.notifications["XV100_POS"] - n0["XV100_POS"] == 1
        else:
            assert dev.notifications["AT301_H2S"] == 0
    finally:
        await plant.set_esd_position(100.0)
        await plant.set_h2s(0.0)
        await dev.close()


async def _notified(dev, *tags):
    return all(dev.notifications[t] >= 1 for t in tags)


async def _good_value(dev, tag, value):
    r = await reading_of(dev, tag)
    return r if (r.quality is Quality.GOOD and r.value == value) else None


@pytest.mark.e2e
async def test_deadband_suppresses_small_changes(plant):
    points = [OpcUaPoint("H2S_db", f"nsu={NAMESPACE_URI};s={H2S}", unit="mg/m3", deadband=1.0)]
    dev = OpcUaDevice("plant", plant.endpoint, points, **FAST)
    await plant.set_h2s(10.0)
    await dev.start()
    try:
        await wait_for(lambda: _good_value(dev, "H2S_db", 10.0), 3.0)
        await plant.set_h2s(10.5)  # inside the deadband: no notification
        await asyncio.sleep(0.4)
        assert (await reading_of(dev, "H2S_db")).value == 10.0
        await plant.set_h2s(11.6)  # outside
        await wait_for(lambda: _good_value(dev, "H2S_db", 11.6), 3.0)
    finally:
        await dev.close()


@pytest.mark.e2e
async def test_write_keeps_variant_type_and_reads_back(plant):
    points = [OpcUaPoint("HEARTBEAT", f"nsu={NAMESPACE_URI};s={HEARTBEAT}", writable=True, subscribe=False),
              OpcUaPoint("XV100_TRIP", f"nsu={NAMESPACE_URI};s={XV100_TRIP}", writable=True),
              OpcUaPoint("XV100_POS", f"nsu={NAMESPACE_URI};s={XV100_POSITION}", unit="%"),
              OpcUaPoint("XV100_POS_W", f"nsu={NAMESPACE_URI};s={XV100_POSITION}", writable=True, subscribe=False),
              OpcUaPoint("AT301_STATUS", f"nsu={NAMESPACE_URI};s={H2S_STATUS}")]
    dev = OpcUaDevice("plant", plant.endpoint, points, **FAST)
    await dev.start()
    try:
        r = await dev.write("HEARTBEAT", 7)
        assert r.value == 7 and r.quality is Quality.GOOD
        dv = plant.server.read_attribute_value(plant.node_id(HEARTBEAT))
        assert dv.Value.VariantType == ua.VariantType.UInt16 and dv.Value.Value == 7  # type kept, not Int64
        assert (await dev.write("HEARTBEAT", 8.0)).value == 8

        r = await dev.write("XV100_TRIP", True)
        assert r.value is True
        await wait_for(lambda: _good_value(dev, "XV100_POS", 0.0), 3.0)  # the plant strokes XV-100 closed
        assert (await dev.write("XV100_TRIP", False)).value is False
        await wait_for(lambda: _good_value(dev, "XV100_POS", 100.0), 3.0)

        with pytest.raises(WriteError, match=r"outside UInt16 range"):
            await dev.write("HEARTBEAT", 70000)
        with pytest.raises(WriteError, match=r"not writable"):
            await dev.write("AT301_STATUS", 1)
        with pytest.raises(WriteError, match=r"no point"):
            await dev.write("NO_SUCH_TAG", 1)
        # configured writable, but the server's AccessLevel says no: the status is reported
        with pytest.raises(WriteError) as err:
            await dev.write("XV100_POS_W", 20.0)
        msg = str(err.value)
        assert ("BadNotWritable" in msg or "BadUserAccessDenied" in msg) and "plant XV100_POS_W" in msg
        assert "\n" not in str(err.value)
        assert dev.connected  # a rejected write is not a comm fault
    finally:
        await dev.close()


@pytest.mark.e2e
async def test_write_readback_mismatch_raises(plant):
    # a PLC that clamps the heartbeat: the server stores min(value, 100)
    nid = plant.node_id(HEARTBEAT)

    def clamp(node_data, attr, dv):
        node_data.attributes[attr].value = ua.DataValue(ua.Variant(min(dv.Value.Value, 100), ua.VariantType.UInt16),
                                                        SourceTimestamp=datetime.now(timezone.utc))
    plant.server.set_attribute_value_setter(nid, clamp)
    dev = OpcUaDevice("plant", plant.endpoint,
                      [OpcUaPoint("HEARTBEAT", f"nsu={NAMESPACE_URI};s={HEARTBEAT}", writable=True)], **FAST)
    await dev.start()
    try:
        assert (await dev.write("HEARTBEAT", 99)).value == 99
        with pytest.raises(WriteError, match=r"read-back 100 differs from written 500"):
            await dev.write("HEARTBEAT", 500)
    finally:
        plant.server.iserver.aspace._nodes[nid].attributes[ua.AttributeIds.Value].value_setter = None
        await dev.close()


@pytest.mark.e2e
async def test_start_never_raises_when_server_down_then_connects():
    port = free_port()
    points = [OpcUaPoint("AT301_H2S", f"nsu={NAMESPACE_URI};s={H2S}", unit="mg/m3"),
              OpcUaPoint("HEARTBEAT", f"nsu={NAMESPACE_URI};s={HEARTBEAT}", writable=True)]
    dev = OpcUaDevice("plant", f"opc.tcp://127.0.0.1:{port}/hazard/", points, **FAST)
    t0 = time.monotonic()
    await dev.start()
    assert time.monotonic() - t0 < 3.0
    try:
        for r in await dev.read():
            assert r.quality is Quality.BAD and r.reason == "comm fault" and r.value is None
        assert "Connect" in dev.last_error or "refused" in dev.last_error.lower()
        with pytest.raises(WriteError, match="comm fault"):
            await dev.write("HEARTBEAT", 1)
        async with OpcUaPlant(port=port) as p:
            await p.set_h2s(2.0)
            await wait_for(lambda: _good_value(dev, "AT301_H2S", 2.0), 6.0)
    finally:
        await dev.close()


# ------------------------------------------------------------------ C12: restart and silent server

@pytest.mark.e2e
async def test_C12_server_restart_resubscribes_once(caplog):
    """Server stopped, a new one on the same port 2 s later: values resume, one
    monitored item per tag on the new server, one notification per change, gap BAD."""
    port = free_port()
    p1 = OpcUaPlant(port=port)
    await p1.start()
    points = [OpcUaPoint("AT301_H2S", f"nsu={NAMESPACE_URI};s={H2S}", unit="mg/m3"),
              OpcUaPoint("XV100_POS", f"ns={p1.ns};s={XV100_POSITION}", unit="%")]
    dev = OpcUaDevice("plant", p1.endpoint, points, **FAST)
    await dev.start()
    p2 = None
    try:
        await p1.set_h2s(5.0)
        await wait_for(lambda: _good_value(dev, "AT301_H2S", 5.0), 3.0)
        await wait_for(lambda: _notified(dev, "AT301_H2S", "XV100_POS"), 3.0)  # values now come from the cache
        assert dev.sessions == 1

        await p1.stop()
        t_stop = time.monotonic()

        async def all_bad():
            rs = await dev.read()
            return rs if all(r.quality is Quality.BAD for r in rs) else None
        gap = await wait_for(all_bad, 2.0)
        assert time.monotonic() - t_stop < 2.0
        assert all(r.value is None and r.reason == "comm fault" for r in gap)

        # the gap stays bad: never the last value with a new time
        while time.monotonic() - t_stop < 2.0:
            assert all(r.quality is Quality.BAD for r in await dev.read())
            await asyncio.sleep(0.1)

        p2 = OpcUaPlant(port=port)
        await p2.start()
        t_restart = time.monotonic()
        await p2.set_h2s(6.0)
        await wait_for(lambda: _good_value(dev, "AT301_H2S", 6.0), 8.0)
        assert time.monotonic() - t_restart < 8.0
        assert (await reading_of(dev, "XV100_POS")).value == 100.0

        per_node = monitored_items_per_node(p2)
        assert per_node == {f"ns={p2.ns};s={H2S}": 1, f"ns={p2.ns};s={XV100_POSITION}": 1}
        assert len(p2.server.iserver.subscription_service.subscriptions) == 1

        # exactly one notification per change after the restart
        await asyncio.sleep(0.3)
        before = dev.notifications["AT301_H2S"]
        await p2.set_h2s(7.0)
        await wait_for(lambda: _good_value(dev, "AT301_H2S", 7.0), 3.0)
        await asyncio.sleep(0.3)
        assert dev.notifications["AT301_H2S"] - before == 1
        assert dev.sessions == 2
        assert "Traceback" not in "".join(r.getMessage() for r in caplog.records if r.name.startswith("drivers"))
    finally:
        await dev.close()
        await p1.stop()
        if p2 is not None:
            await p2.stop()


class FreezableProxy:
    """TCP proxy 127.0.0.1:port -> target; frozen = bytes are swallowed, sockets stay open
    (a server that is "connected but silent", C12)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.frozen = False
        self.port = 0
        self._server: asyncio.base_events.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        try:
            sr, sw = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            cw.close()
            return
        self._writers += [cw, sw]

        async def pump(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while data := await r.read(65536):
                    if not self.frozen:
                        w.write(data)
                        await w.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                w.close()
        await asyncio.gather(pump(cr, sw), pump(sr, cw))

    async def stop(self) -> None:
        for w in self._writers:
            w.close()
        if self._server is not None:
            self._server.close()


@pytest.mark.e2e
async def test_C12_silent_server_detected_by_watchdog(plant):
    proxy = FreezableProxy(plant.port)
    await proxy.start()
    points = [OpcUaPoint("AT301_H2S", f"nsu={NAMESPACE_URI};s={H2S}", unit="mg/m3")]
    dev = OpcUaDevice("plant", f"opc.tcp://127.0.0.1:{proxy.port}/hazard/", points, **FAST)
    await dev.start()
    try:
        await plant.set_h2s(8.0)
        await wait_for(lambda: _good_value(dev, "AT301_H2S", 8.0), 3.0)
        await wait_for(lambda: _notified(dev, "AT301_H2S"), 3.0)  # a cached value exists that must not be served
        proxy.frozen = True  # TCP stays up, nothing comes back
        t0 = time.monotonic()

        async def bad():
            [r] = await dev.read()
            return r if r.quality is Quality.BAD else None
        r = await wait_for(bad, 4.0)
        assert r.reason == "comm fault" and time.monotonic() - t0 < 4.0
        assert dev.last_error
        proxy.frozen = False
        await plant.set_h2s(9.0)
        await wait_for(lambda: _good_value(dev, "AT301_H2S", 9.0), 8.0)
        assert dev.sessions >= 2
    finally:
        await dev.close()
        await proxy.stop()
