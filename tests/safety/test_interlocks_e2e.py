"""Interlocks end to end over the real simulators (docs/design.md, Fail safe).

The HIL tank farm (hil.farm.TankFarm: pymodbus TCP tank PLC, three PT495-like detectors on a paced
RTU pty bus, asyncua plant) runs in this process; a Gateway is built from a YAML config in tmp_path
with the real drivers and runs on the same event loop. Outputs are judged by the simulator's own
coils, operator actions go through the real control socket (the `hazard-gateway` CLI as a child
process), nothing is mocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.runtime.gateway import Gateway
from hil.farm import TankFarm
from conftest import free_port as closed_port   # free a moment ago: nobody listens there
from conftest import interlock_status as interlock, run_cli as cli, wait_for

# e2e: the HIL farm (TCP, RTU and OPC UA servers) and a running Gateway for seconds
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]


def config_text(ep: dict, *, plc_poll_ms: int = 100, uplink_port: int | None = None) -> str:
    host, port = ep["modbus_tcp"]
    gas = "\n".join(f"""  - name: GD{i}
    protocol: modbus_rtu
    port: {ep['serial_link']}
    baudrate: {ep['serial_baudrate']}
    unit_id: {i}
    poll_interval_ms: 200
    timeout_ms: 300
    tags:
      - {{name: GD{i}.gas, address: 40001, type: uint16, scale: 0.1, unit: "%LEL", sentinels: [0xFFFF],
         alarms: {{gas: combustible}}}}""" for i in (1, 2, 3))
    uplink = "" if uplink_port is None else f"""uplink:
  url: https://127.0.0.1:{uplink_port}/v1/batches
  timeout_ms: 500
  interval_ms: 50
"""
    return f"""gateway: {{id: e2e-farm, state_dir: state}}
keys: {{private_key: keys/private.pem}}
store: {{path: store.sqlite, commit_interval_ms: 50, max_bytes: 1099511627776}}
{uplink}devices:
  - name: tank_plc
    protocol: modbus_tcp
    host: {host}
    port: {port}
    poll_interval_ms: {plc_poll_ms}
    timeout_ms: 500
    heartbeat: {{address: 40101, interval_ms: 200}}
    tags:
      - {{name: T101.level, address: 30001, type: float32, unit: m,
         alarms: {{H: 10.5, HH: {{setpoint: 11.0, deadband: 0.1, latching: true}}}}}}
      - {{name: XV101, address: {{table: coil, address: 0}}, type: bool, writable: true}}
      - {{name: XV100, address: {{table: coil, address: 2}}, type: bool, writable: true}}
{gas}
interlocks:
  - name: T101_overfill
    inputs: [{{tag: T101.level, condition: HH}}]
    vote: 1oo1
    actions: [{{output: XV101, value: 0}}]
  - name: gas_esd
    inputs: [{{tag: GD1.gas, condition: HH}}, {{tag: GD2.gas, condition: HH}}, {{tag: GD3.gas, condition: HH}}]
    vote: 2oo3
    on_fault: trip
    actions: [{{output: XV100, value: 0}}]
"""


@contextlib.asynccontextmanager
async def rig(tmp_path: Path, **cfg_kw):
    """Farm + gateway running; yields (farm, gw, cfg)."""
    farm = TankFarm()
    ep = await farm.start(tmp_path / "farm")
    farm.set_inflow("T101", 0.0)
    farm.set_outflow("T101", 0.0)
    gw = task = None
    stop = asyncio.Event()
    try:
        signer = None
        if cfg_kw.get("uplink_port"):
            from gateway.chain.signing import Signer, keygen

            keygen(tmp_path / "keys")
            signer = Signer.from_file(tmp_path / "keys" / "private.pem")
        (tmp_path / "gw.yaml").write_text(config_text(ep, **cfg_kw))
        cfg = load_config(tmp_path / "gw.yaml")
        gw = Gateway(cfg, signer)
        ready = asyncio.Event()
        task = asyncio.create_task(gw.run(stop, ready=ready.set))
        await asyncio.wait_for(ready.wait(), 10)
        await wait_for(lambda: all(t in gw.values and gw.values[t].usable
                                   for t in ("T101.level", "XV101", "GD1.gas", "GD2.gas", "GD3.gas")), 10,
                       "first good readings")
        yield farm, gw, cfg
    finally:
        stop.set()
        if task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 20)
        await farm.stop()


def stored_events(gw) -> list[dict]:
    db = sqlite3.connect(gw.store.path)
    try:
        return [json.loads(d) for (d,) in db.execute("SELECT data FROM events ORDER BY id")]
    finally:
        db.close()


# ----------------------------------------------------------------------------------------------- tests

async def test_hh_overfill_closes_the_inlet(tmp_path):
    async with rig(tmp_path) as (farm, gw, _):
        farm.plc.watch("T101.level", 11.0)
        farm.set_level("T101", 10.9)
        farm.set_inflow("T101", 6.0)  # 0.1 m/s: crosses HH 11.0 within about a second
        await wait_for(lambda: not farm.plc.coil("XV101"), 10, "XV101 closed at the PLC")
        crossed = farm.plc.first_crossing("T101.level", 11.0)
        await wait_for(lambda: gw.outputs.state("XV101").confirmed, 5, "trip write confirmed by read-back")
        st = interlock(gw, "T101_overfill")
        assert st["state"] == "tripped" and st["cause"] == "process"
        rec = [r for r in gw.outputs.trip_records() if r.tag == "XV101"][-1]
        assert rec.value == 0 and rec.confirmed_ts is not None and rec.confirmed_ts - crossed < 2.0
        assert farm.plc.coil("XV100")  # the gas ESD valve was not touched
        level = farm.plc.level("T101")
        await asyncio.sleep(0.5)
        assert farm.plc.level("T101") == pytest.approx(level, abs=1e-6)  # inlet closed: the level stops rising
        # The PLC saw the write from the gateway (a client coil write), and the heartbeat is alive.
        assert any(e["kind"] == "coil_write" and e["coil"] == "XV101" and e["value"] == 0 for e in farm.plc.events)
        assert farm.plc.heartbeat_age_s is not None and farm.plc.heartbeat_age_s < 1.0


async def test_2oo3_one_detector_failed_counts_as_a_vote(tmp_path):
    async with rig(tmp_path) as (farm, gw, _):
        farm.set_fault(1, True)  # sentinel 0xFFFF -> BAD -> unknown -> votes to trip (on_fault: trip)
        await wait_for(lambda: (interlock(gw, "gas_esd")["votes"] or {}).get("fault") == 1, 5, "one fault vote")
        await asyncio.sleep(0.8)  # several RTU polls: one vote of two is not enough
        assert interlock(gw, "gas_esd")["state"] == "normal" and farm.plc.coil("XV100")
        assert gw.alarms.state("GD1.gas.QUALITY") == "unacked"  # the fault is an alarm of its own kind
        farm.set_lel(2, 60.0)  # one more detector at level 2 (HH 50 %LEL)
        await wait_for(lambda: not farm.plc.coil("XV100"), 5, "XV100 closed at the PLC")
        st = interlock(gw, "gas_esd")
        assert st["state"] == "tripped"
        assert st["votes"]["process"] == 1 and st["votes"]["fault"] == 1 and st["votes"]["needed"] == 2
        await wait_for(lambda: gw.outputs.state("XV100").confirmed, 5, "ESD write confirmed")


async def test_2oo3_two_detectors_failed_trip_on_faults_alone(tmp_path):
    async with rig(tmp_path) as (farm, gw, _):
        farm.set_fault(1, True)
        farm.set_fault(2, True)
        await wait_for(lambda: not farm.plc.coil("XV100"), 5, "XV100 closed at the PLC")
        st = interlock(gw, "gas_esd")
        assert st["state"] == "tripped" and st["cause"] == "fault"
        assert st["votes"]["process"] == 0 and st["votes"]["fault"] >= 2
        await wait_for(lambda: gw.outputs.state("XV100").confirmed, 5, "ESD write confirmed")
        await asyncio.to_thread(gw.store.flush)
        trips = [e for e in stored_events(gw) if e.get("type") == "interlock" and e.get("event") == "trip"]
        assert trips and trips[-1]["interlock"] == "gas_esd" and trips[-1]["cause"] == "fault"


async def test_latch_holds_until_reset_after_clear_via_control_socket(tmp_path):
    async with rig(tmp_path) as (farm, gw, cfg):
        sock = str(cfg.state_dir / "control.sock")
        farm.set_level("T101", 11.4)
        await wait_for(lambda: not farm.plc.coil("XV101"), 5, "trip")
        # Refused while the level is still above HH: exit 1 and one line naming the votes.
        rc, out, err = await cli("reset", "T101_overfill", "--socket", sock, "--reason", "try early")
        assert rc == 1 and "condition persists" in err and len(err.strip().splitlines()) == 1, (rc, out, err)
        assert interlock(gw, "T101_overfill")["state"] == "tripped"
        farm.set_level("T101", 9.0)  # clears (below 11.0 - deadband)
        await wait_for(lambda: interlock(gw, "T101_overfill")["state"] == "tripped_cleared", 5, "condition cleared")
        await asyncio.sleep(0.5)
        assert interlock(gw, "T101_overfill")["state"] == "tripped_cleared"  # latched: no reset by itself
        assert not farm.plc.coil("XV101")
        rc, out, err = await cli("reset", "T101_overfill", "--socket", sock, "--reason", "level back to 9 m")
        assert rc == 0, (out, err)
        assert interlock(gw, "T101_overfill")["state"] == "normal"
        assert not farm.plc.coil("XV101")  # the gateway never re-opens a valve by itself
        await asyncio.to_thread(gw.store.flush)
        events = stored_events(gw)
        import getpass

        resets = [e for e in events if e.get("type") == "interlock" and e.get("event") == "reset"]
        assert resets and resets[-1]["user"] == getpass.getuser() and resets[-1]["reason"] == "level back to 9 m"
        ops = [(e["result"], e["reason"]) for e in events if e.get("type") == "operator" and e["action"] == "reset"]
        assert ops == [("refused", "try early"), ("ok", "level back to 9 m")]


async def test_bypass_expires_then_a_standing_demand_trips(tmp_path):
    async with rig(tmp_path) as (farm, gw, cfg):
        sock = str(cfg.state_dir / "control.sock")
        rc, out, err = await cli("bypass", "T101_overfill", "--minutes", "0.05", "--socket", sock)
        assert rc == 2 and "--reason" in err  # a bypass needs a reason
        t_bypass = time.monotonic()  # the bypass starts after this, so it cannot end before t_bypass + 3 s
        rc, out, err = await cli("bypass", "T101_overfill", "--minutes", "0.05", "--reason", "level transmitter test",
                                 "--socket", sock)
        assert rc == 0, err
        farm.set_level("T101", 11.5)
        await wait_for(lambda: gw.alarms.condition("T101.level", "HH"), 5, "HH demand")
        await asyncio.sleep(0.5)
        assert farm.plc.coil("XV101") and interlock(gw, "T101_overfill")["state"] == "bypassed"
        await wait_for(lambda: not farm.plc.coil("XV101"), 8, "trip after the bypass expired")
        assert time.monotonic() - t_bypass >= 3.0
        await asyncio.to_thread(gw.store.flush)
        kinds = [e["event"] for e in stored_events(gw) if e.get("type") == "interlock"]
        assert kinds.index("bypass") < kinds.index("demand_bypassed") < kinds.index("bypass_end") < kinds.index("trip")


async def test_blocked_store_and_dead_uplink_delay_no_trip(tmp_path):
    async with rig(tmp_path, uplink_port=closed_port()) as (farm, gw, cfg):
        # Another connection holds the store's write lock; the uplink points at a closed port.
        blocker = sqlite3.connect(cfg.store_path, isolation_level=None, check_same_thread=False)
        try:
            blocker.execute("BEGIN EXCLUSIVE")
            await wait_for(lambda: gw.store._writer_error, 10, "the store writer to hit the lock", step_s=0.1)
            # the forwarder is stuck either way: on the closed port, or on the locked store when it builds a batch
            await wait_for(lambda: gw.forwarder.last_error is not None, 10, "the uplink to fail", step_s=0.1)
            t0 = time.monotonic()
            farm.set_level("T101", 11.5)
            await wait_for(lambda: gw.outputs.state("XV101").confirmed if "XV101" in
                           {o["tag"] for o in gw.outputs.states()} else False, 5, "confirmed trip")
            elapsed = time.monotonic() - t0
            assert not farm.plc.coil("XV101")
            # poll interval (0.1 s) + one confirmed write on loopback + slack for a loaded 2-core CI runner
            assert elapsed < 0.1 + 0.9, f"trip took {elapsed:.3f} s with the store blocked"
            assert gw.store.stats()["writer_error"]  # still blocked: the trip did not wait for it
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        ok = await asyncio.to_thread(gw.store.flush, 10)
        assert ok
        trips = [e for e in stored_events(gw) if e.get("type") == "interlock" and e.get("event") == "trip"]
        assert trips, "the trip event reached the store once the lock was released"
