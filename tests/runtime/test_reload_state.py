"""SIGHUP reload (gateway.runtime.reload) and the safety state: a tripped or bypassed interlock cannot be dropped by
a reload, and the swap keeps the poll/safety gap short even when the uplink hangs.

A Gateway runs in this process against the HIL tank PLC (hil.tank_plc.TankPlc, pymodbus TCP); the
reload is the one the daemon runs on SIGHUP (reload_from_file). Nothing is mocked: the hung uplink is a
TCP server that accepts connections and never answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import sqlite3
import time
from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.runtime.gateway import Gateway
from gateway.runtime.reload import reload_from_file
from gateway.chain.signing import Signer, keygen
from hil.tank_plc import TankPlc
from conftest import hazard_section, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]   # e2e: daemons or servers, seconds of waiting


def config_text(plc_port: int, *, interlocks: str, uplink: str = "", extra_devices: str = "") -> str:
    return f"""gateway: {{id: reload-gw, state_dir: state}}
keys: {{private_key: keys/private.pem}}
store: {{path: store.sqlite, commit_interval_ms: 50, max_bytes: 1099511627776}}
{uplink}devices:
  - name: tank_plc
    protocol: modbus_tcp
    host: 127.0.0.1
    port: {plc_port}
    poll_interval_ms: 100
    timeout_ms: 500
    tags:
      - {{name: T101.level, address: 30001, type: float32, unit: m, alarms: {{HH: {{setpoint: 11.0, deadband: 0.1}}}}}}
      - {{name: T102.level, address: 30007, type: float32, unit: m, alarms: {{HH: {{setpoint: 11.0, deadband: 0.1}}}}}}
      - {{name: XV101, address: {{table: coil, address: 0}}, type: bool, writable: true}}
      - {{name: XV102, address: {{table: coil, address: 1}}, type: bool, writable: true}}
{extra_devices}interlocks:
{interlocks}"""


INTERLOCKS = """  - {name: T101_overfill, inputs: [{tag: T101.level, condition: HH}], vote: 1oo1, actions: [{output: XV101, value: 0}]}
  - {name: T102_overfill, inputs: [{tag: T102.level, condition: HH}], vote: 1oo1, actions: [{output: XV102, value: 0}]}
"""
RENAMED = """  - {name: T101_HH_trip, inputs: [{tag: T101.level, condition: HH}], vote: 1oo1, actions: [{output: XV101, value: 0}]}
"""


class TimedGateway(Gateway):
    """Records when each tank PLC poll delivered its readings (monotonic), across a reload (the class stays)."""

    def on_readings(self, readings):
        if any(r.tag == "T101.level" for r in readings):
            type(self).poll_times.append(time.monotonic())
        super().on_readings(readings)


@contextlib.asynccontextmanager
async def running(tmp_path: Path, make_text, cls=Gateway):
    plc = TankPlc()
    await plc.start()
    for t in ("T101", "T102"):
        plc.set_inflow(t, 0.0)
        plc.set_outflow(t, 0.0)
    keygen(tmp_path / "keys")
    path = tmp_path / "gw.yaml"
    path.write_text(make_text(plc.port))
    gw = cls(load_config(path), Signer.from_file(tmp_path / "keys" / "private.pem"))
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(gw.run(stop, ready=ready.set))
    try:
        await asyncio.wait_for(ready.wait(), 10)
        await wait_for(lambda: all(t in gw.values and gw.values[t].usable for t in ("T101.level", "T102.level")),
                       10, "first readings")
        yield plc, gw, path
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 20)
        await plc.stop()


def state(gw, name: str) -> str:
    return next(s["state"] for s in gw.interlocks.status() if s["name"] == name)


async def test_a_reload_that_drops_a_tripped_or_bypassed_interlock_is_refused(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="hazard_gateway")
    async with running(tmp_path, lambda port: config_text(port, interlocks=INTERLOCKS)) as (plc, gw, path):
        plc.set_level("T101", 11.5)
        await wait_for(lambda: gw.interlocks.is_tripped("T101_overfill"), 5, "trip")
        gw.interlocks.bypass("T102_overfill", "op", "transmitter test", 600)
        old_hash = gw.cfg.config_hash
        tripped_at = next(s["tripped_at"] for s in gw.interlocks.status() if s["name"] == "T101_overfill")
        path.write_text(config_text(plc.port, interlocks=RENAMED))  # T101 renamed, T102 removed

        assert await reload_from_file(gw) is False
        lines = [r.getMessage() for r in caplog.records if "a reload would drop its state" in r.getMessage()]
        assert len(lines) == 2, [r.getMessage() for r in caplog.records]
        t101 = next(m for m in lines if "T101_overfill" in m)
        assert f"{path}: interlocks: T101_overfill is tripped since {tripped_at}" in t101 and "reset it first" in t101
        assert "\n" not in t101
        t102 = next(m for m in lines if "T102_overfill" in m)
        assert "is bypassed by op until" in t102 and "bypass T102_overfill --end" in t102
        assert gw.cfg.config_hash == old_hash  # untouched: still the old config, the trip and the bypass
        assert state(gw, "T101_overfill") == "tripped" and state(gw, "T102_overfill") == "bypassed"

        # reset the trip and end the bypass: the same reload is then applied
        plc.set_level("T101", 9.0)
        await wait_for(lambda: state(gw, "T101_overfill") == "tripped_cleared", 5, "clear")
        gw.interlocks.reset("T101_overfill", "op", alarms=gw.alarms)
        gw.interlocks.end_bypass("T102_overfill", "op")
        assert await reload_from_file(gw) is True
        assert gw.cfg.config_hash != old_hash and [s["name"] for s in gw.interlocks.status()] == ["T101_HH_trip"]


async def hung_server(tls_dir: Path) -> tuple[asyncio.AbstractServer, list, Path]:
    """An HTTPS endpoint that hangs: it completes the TLS handshake (certificate made for the test) and
    then never reads nor answers anything, nor closes."""
    import ssl

    from gateway.tlsutil import make_self_signed

    cert, key = make_self_signed(tls_dir)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    held: list = []

    async def hold(reader, writer):
        held.append(writer)
        await asyncio.Event().wait()

    server = await asyncio.start_server(hold, "127.0.0.1", 0, ssl=ctx)
    return server, held, cert


async def test_the_reload_polling_gap_stays_short_with_a_hung_uplink(tmp_path, caplog):
    """The tank PLC keeps being polled through a reload although the uplink hangs (HTTPS endpoint that never
    answers) and so does an OPC UA server (accepts TCP, never answers: its device's start waits ~3 x its
    timeout): the forwarder swap happens after polling resumed, and each device starts in its own loop."""
    caplog.set_level(logging.INFO, logger="hazard_gateway")
    server, held, cert = await hung_server(tmp_path / "tls")
    port = server.sockets[0].getsockname()[1]
    uplink = (f"uplink: {{url: 'https://127.0.0.1:{port}/v1/batches', ca_file: '{cert}', timeout_ms: 10000, "
              "interval_ms: 50}\n")
    silent: list = []

    async def hold(reader, writer):
        silent.append(writer)
        await asyncio.Event().wait()

    opc = await asyncio.start_server(hold, "127.0.0.1", 0)
    opc_dev = f"""  - name: plant
    protocol: opcua
    endpoint: opc.tcp://127.0.0.1:{opc.sockets[0].getsockname()[1]}/hung/
    poll_interval_ms: 250
    timeout_ms: 3000
    tags:
      - {{name: AT301.H2S, node_id: "ns=2;s=AT301.H2S", unit: mg/m3}}
"""
    TimedGateway.poll_times = []
    try:
        async with running(tmp_path, lambda port: config_text(port, interlocks=INTERLOCKS, uplink=uplink,
                                                              extra_devices=opc_dev),
                           cls=TimedGateway) as (plc, gw, path):
            await wait_for(lambda: held, 5, "the uplink connected to the hung server")
            await asyncio.sleep(0.5)
            text = path.read_text().replace("poll_interval_ms: 100", "poll_interval_ms: 90")
            path.write_text(text)
            t0 = time.monotonic()
            assert await reload_from_file(gw) is True
            took = time.monotonic() - t0
            await wait_for(lambda: TimedGateway.poll_times[-1] > t0 + took, 5, "polls after the reload")
            await asyncio.sleep(0.5)
            times = [t for t in TimedGateway.poll_times if t0 - 1.0 <= t]
            gap = max(b - a for a, b in zip(times, times[1:]))
            assert gap < 2.0, f"polling stopped for {gap:.2f} s during the reload (reload took {took:.2f} s)"
            assert any("polling paused" in r.getMessage() for r in caplog.records)
            assert gw.forwarder is not None and not gw.forwarder.stopped  # the new forwarder runs
    finally:
        for w in [*held, *silent]:
            w.close()
        server.close()
        opc.close()


async def test_a_reload_that_changes_the_design_basis_records_the_grade_change(tmp_path):
    """The grade is the design grade (GB 18218-2018 4.2.2): it changes only with its basis, the config.
    120 -> 20 people within 500 m: alpha 2.0 -> 1.0, R 2 x S -> S; one event, in the chain's store."""
    S = math.pi * 5.5 ** 2 * 12.0 * 0.88 / 50.0   # 22.8: benzene Q 50 t, beta 1
    text = lambda people: lambda port: config_text(port, interlocks=INTERLOCKS) + hazard_section(people)
    async with running(tmp_path, text(120)) as (plc, gw, path):
        (u,) = gw.hazard.status()
        assert u["grade"] == 3 and u["R"] == pytest.approx(2 * S, abs=1e-5)
        plc.set_level("T101", 10.0)    # the level moves the inventory only: no event
        path.write_text(text(20)(plc.port))
        assert await reload_from_file(gw) is True
        (u,) = gw.hazard.status()
        assert u["grade"] == 3 and u["R"] == pytest.approx(S, abs=1e-5)
        assert gw.store.flush(10)
        db = sqlite3.connect(gw.cfg.store_path)
        events = [json.loads(d) for (d,) in db.execute("SELECT data FROM events ORDER BY id")]
        db.close()
    hazard = [e for e in events if e.get("type") == "hazard"]
    assert [e["event"] for e in hazard] == ["design_basis_changed"], hazard
    e = hazard[0]
    assert e["unit"] == "dike-T100" and e["changes"] == ["R"] and (e["from_grade"], e["to_grade"]) == (3, 3)
    assert e["from_R"] == pytest.approx(2 * S, abs=1e-5) and e["R"] == pytest.approx(S, abs=1e-5)
    # the basic-data record of each config rides in the chain: at the start, then after the reload
    basic = [e for e in events if e.get("type") == "basic_data"]
    assert [(b["installations"][0]["alpha"], b["installations"][0]["grade"]) for b in basic] == [(2.0, 3), (1.0, 3)]
    assert basic[0]["config_hash"] != basic[1]["config_hash"]
