"""GB 18218-2018 grading end to end (docs/domain.md, Quantity q: the design maximum), live.

Real peers on 127.0.0.1: the HIL tank PLC (pymodbus TCP server with its level physics), the Gateway
in-process (Modbus driver, alarms, interlocks, HazardEngine, SQLite store, HTTPS forwarder) and the
reference receiver (HTTPS, verifies each batch before it stores it). The hazard unit is the one of
config/demo.yaml (two benzene tanks, 11 m x 12 m, 120 people within 500 m): its grade is on the design
maximum quantity (4.2.2), grade 2 with R 72.8 whatever the levels do, while the current inventory
(R_live) rises past 50 as T101 fills from 8.0 m to 11 m. A level change is never a grade change.

The uploaded batches are checked independently of the signing code: signature with jwcrypto, sequence
and hash chain recomputed; R_live of the uploaded colour event is recomputed by hand from the readings.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import shutil
import sqlite3
import time
from pathlib import Path

import pytest
from jwcrypto import jwk, jws
from ruamel.yaml import YAML

from gateway.config import load_config
from gateway.runtime.gateway import Gateway
from gateway.model import Quality, Reading
from gateway.regulator.receiver import BackgroundReceiver
from gateway.chain.signing import Signer, keygen
from hil.tank_plc import IR_ADDRESS, TankPlc
from conftest import b64url, wait_for

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parents[2]
GW = "hazard-e2e"
ENTERPRISE, MH = "330100000001", "H01"   # a major-hazard code never repeats the enterprise code (point_code)
UNIT = "tank-group-T100"
NAN_F32 = [0x7FC0, 0x0000]  # a quiet NaN in float32 ABCD: what a failed transmitter channel reports (C03)


class TransmitterFaultPlc(TankPlc):
    """The HIL tank PLC whose level channel of one tank can be made to report NaN (the rest stays live)."""

    nan_level: str | None = None

    def _input_registers(self) -> list[int]:
        regs = super()._input_registers()
        if self.nan_level:
            a = IR_ADDRESS[f"{self.nan_level}.level"]
            regs[a:a + 2] = NAN_F32
        return regs


def _demo_hazard_unit() -> dict:
    """The hazard unit of config/demo.yaml, without alarm_tags of devices this rig does not run."""
    doc = YAML(typ="safe").load((ROOT / "config" / "demo.yaml").read_text(encoding="utf-8"))
    unit = dict(doc["hazard"]["units"][0])
    assert unit["name"] == UNIT
    unit["alarm_tags"] = [t for t in unit.get("alarm_tags", []) if t.startswith(("T101", "T102"))]
    return unit


def _write_config(tmp: Path, plc_port: int, rx_url: str, cafile: Path, gas: bool = False) -> Path:
    tags = [
        {"name": "T101.level", "address": 30001, "type": "float32", "unit": "m",
         "alarms": {"H": 10.5, "HH": {"setpoint": 11.0, "deadband": 0.1, "latching": True}}},
        {"name": "T101.temperature", "address": 30003, "type": "float32", "unit": "degC"},
        {"name": "T102.level", "address": 30007, "type": "float32", "unit": "m",
         "alarms": {"HH": {"setpoint": 11.0, "deadband": 0.1, "latching": True}}},
        {"name": "T102.temperature", "address": 30009, "type": "float32", "unit": "degC"},
        {"name": "XV101", "address": {"table": "coil", "address": 0}, "type": "bool", "writable": True},
        {"name": "XV102", "address": {"table": "coil", "address": 1}, "type": "bool", "writable": True},
    ]
    unit = _demo_hazard_unit()
    if gas:  # a combustible gas detector at the dike, in the unit's alarm_tags (GB/T 50493-2019 presets)
        tags.append({"name": "GD1.gas", "address": 40001, "type": "uint16", "scale": 0.1, "unit": "%LEL",
                     "alarms": {"gas": "combustible"}})
        unit["alarm_tags"] = ["GD1.gas"]
    cfg = {
        "gateway": {"id": GW, "enterprise_code": ENTERPRISE, "major_hazard_code": MH, "state_dir": "state"},
        "keys": {"private_key": "keys/private.pem"},
        "store": {"path": "store.sqlite", "commit_interval_ms": 100, "max_bytes": 1099511627776},
        "uplink": {"url": f"{rx_url}/v1/batches", "ca_file": str(cafile), "interval_ms": 100},
        "devices": [{"name": "tank_plc", "protocol": "modbus_tcp", "host": "127.0.0.1", "port": plc_port,
                     "poll_interval_ms": 250, "timeout_ms": 500, "tags": tags}],
        "interlocks": [{"name": "T101_overfill", "inputs": [{"tag": "T101.level", "condition": "HH"}],
                        "vote": "1oo1", "actions": [{"output": "XV101", "value": 0}]}],
        "hazard": {"stale_after_s": 10, "units": [unit]},
    }
    path = tmp / "gateway.yaml"
    path.write_text(json.dumps(cfg, ensure_ascii=False, indent=1), encoding="utf-8")  # JSON is YAML
    return path


def _unit(gw: Gateway) -> dict:
    (u,) = [u for u in gw.status()["hazard"] if u["unit"] == UNIT]
    return u


async def _until(gw: Gateway, cond, what: str, timeout_s: float = 15.0) -> dict:
    """The unit's status once ``cond(unit)`` holds."""
    return await wait_for(lambda: u if cond(u := _unit(gw)) else None, timeout_s, what, step_s=0.05,
                          detail=lambda: f"unit now {_unit(gw)}")


def _benzene_density(t_c: float) -> float:
    """The demo's density table (degC -> t/m3), interpolated by hand."""
    pts = [(10, 0.887), (20, 0.877), (30, 0.868), (40, 0.858), (50, 0.847)]
    for (t0, d0), (t1, d1) in zip(pts, pts[1:]):
        if t0 <= t_c <= t1:
            return d0 + (d1 - d0) * (t_c - t0) / (t1 - t0)
    raise AssertionError(f"{t_c} degC outside the table")


#: the demo unit's design grade by hand: 2 tanks x (pi 5.5^2 x 12 m x max_fill 0.9 x 0.887 t/m3) / 50 t, alpha 2
DESIGN_S = 2 * math.pi * 5.5 ** 2 * 12.0 * 0.9 * 0.887 / 50.0
DESIGN_R = 2.0 * DESIGN_S


@pytest.mark.e2e
async def test_filling_tank_moves_the_inventory_not_the_design_grade_events_uploaded_signed_chained(tmp_path: Path):
    kid = keygen(tmp_path / "keys")
    trust = tmp_path / "trust"
    trust.mkdir()
    shutil.copy(tmp_path / "keys" / f"{kid}.jwk", trust / f"{kid}.jwk")
    plc = TransmitterFaultPlc(seed=7)
    for tank in ("T101", "T102"):  # hold both levels (8.0 m and 6.0 m) until the fill starts
        plc.set_inflow(tank, 0.0)
        plc.set_outflow(tank, 0.0)
    await plc.start()
    with BackgroundReceiver(tmp_path / "rx", trust) as rx:
        cfg = load_config(_write_config(tmp_path, plc.port, rx.url, rx.cafile))
        gw = Gateway(cfg, Signer.from_file(tmp_path / "keys" / "private.pem"))
        stop = asyncio.Event()
        task = asyncio.create_task(gw.run(stop))
        try:
            # 8.0 m + 6.0 m of benzene: inventory R_live ~ 46.7; the grade (design) is 2, R 72.8 -> orange
            u0 = await _until(gw, lambda u: not u["inventory_uncertain"], "inventory from live levels")
            assert 46.0 < u0["R_live"] < 50.0 and u0["grade"] == 2 and u0["major_hazard"]
            assert u0["R"] == pytest.approx(DESIGN_R, abs=1e-5) and u0["S"] == pytest.approx(DESIGN_S, abs=1e-5)
            assert u0["colour"] == "orange" and not u0["tripped"] and u0["colour_source"] == "gateway-derived"
            plc.set_inflow("T101", 30.0)  # 0.5 m/s: R_live = 50 at T101 ~ 9.0 m, HH 11.0 m after ~6 s
            u1 = await _until(gw, lambda u: u["R_live"] >= 50.0, "inventory past R 50 while T101 fills")
            assert u1["grade"] == 2 and u1["R"] == u0["R"]          # the grade does not follow the level
            assert 8.9 < plc.level("T101") < 11.0
            # HH 11.0 m trips T101_overfill (input T101.level is a tag of the unit): colour raised to red
            u2 = await _until(gw, lambda u: u["tripped"], "T101_overfill trip seen by the unit")
            assert u2["colour"] == "red" and u2["grade"] == 2
            await asyncio.sleep(0.5)
            before = _unit(gw)
            # the level transmitter of T101 fails (NaN): inventory uncertain, and counted full - never lower
            plc.nan_level = "T101"
            u3 = await _until(gw, lambda u: u["inventory_uncertain"], "uncertain after a bad T101 level")
            assert u3["R_live"] >= before["R_live"] and u3["grade"] == 2 and u3["R"] == u0["R"]
            (t101,) = [t for t in u3["tanks"] if t["name"] == "T101"]
            assert t101["inventory_basis"] == "upper_bound" and t101["inventory_uncertain"]
            assert any(r.startswith("T101.level") and "nan" in r for r in u3["reasons"]), u3["reasons"]
            assert math.isclose(t101["inventory_q_t"], math.pi * 5.5 ** 2 * 12.0 * 0.887, rel_tol=1e-9)
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)  # drains the uplink before it returns
            await plc.stop()

        tokens = [b.jws for b in rx.receiver.store.batches(GW)]
    assert tokens

    # every batch: signature (jwcrypto, not our signing code), sequence and hash chain
    key = jwk.JWK.from_json((trust / f"{kid}.jwk").read_text())
    prev, payloads = None, []
    for i, token in enumerate(tokens, start=1):
        obj = jws.JWS()
        obj.deserialize(token)
        obj.verify(key, alg="EdDSA")
        p = json.loads(obj.payload)
        assert p["seq"] == i and p["prev"] == prev and p["gateway_id"] == GW
        prev = b64url(hashlib.sha256(token.encode("ascii")).digest())
        payloads.append(p)
    readings = [r for p in payloads for r in p["readings"]]
    hazard = [e for p in payloads for e in p["events"] if e.get("type") == "hazard"]

    # no grade events while the levels moved: the only hazard event is the trip's colour change, uploaded
    # once, with the design grade and the regulator codes
    assert [e["event"] for e in hazard] == ["colour_changed"], hazard
    e = hazard[0]
    assert (e["from_colour"], e["to_colour"], e["tripped"], e["changes"]) == ("orange", "red", True, ["colour"])
    assert e["unit"] == UNIT and e["grade"] == 2 and e["major_hazard"] and e["colour_source"] == "gateway-derived"
    assert e["R"] == pytest.approx(DESIGN_R, abs=1e-5) and e["S"] == pytest.approx(DESIGN_S, abs=1e-5)
    assert e["enterprise_code"] == ENTERPRISE and e["major_hazard_code"] == MH and e["gateway_id"] == GW
    # R_live recomputed by hand from the uploaded readings: the state after one of the last polls before
    # the event (the event is stamped by the gateway's clock when it maps the alarm state, after the poll)
    area = math.pi * 5.5 ** 2
    polls = sorted({r["ts"] for r in readings if r["tag"] == "T101.level" and r["ts"] <= e["ts"]})[-3:]
    hand = []
    for ts in polls:
        snap = {}
        for r in sorted((r for r in readings if r["ts"] <= ts), key=lambda r: r["ts"]):
            snap[r["tag"]] = r["value"]
        q = sum(area * snap[f"{t}.level"] * _benzene_density(snap[f"{t}.temperature"]) for t in ("T101", "T102"))
        hand.append(2.0 * q / 50.0)
    assert any(abs(e["R_live"] - h) < 1e-5 for h in hand), (e["R_live"], hand)
    assert e["R_live"] >= 50.0
    assert snap["T101.level"] >= 10.9 and snap["T102.level"] == pytest.approx(6.0, abs=1e-6)

    # point codes on tagged events: enterprise + major-hazard + tag (point_code's default, no separator)
    alarms = [x for p in payloads for x in p["events"] if x.get("type") == "alarm"]
    assert alarms and all(x["point"] == f"{ENTERPRISE}{MH}{x['tag']}" for x in alarms)
    trips = [x for p in payloads for x in p["events"] if x.get("type") == "interlock" and x["event"] == "trip"]
    assert trips and all(i["point"] == f"{ENTERPRISE}{MH}{i['tag']}" for x in trips for i in x["inputs"])
    assert readings and all(r["tag"] in gw.points for r in readings)


def test_readings_carry_point_codes_in_the_uploaded_batch(tmp_path: Path):
    """Gateway._reading_record adds the point code; it must survive the store into the signed batch."""
    from gateway.record.batches import Batcher
    from gateway.chain.signing import decode_unverified

    kid = keygen(tmp_path / "keys")
    cafile = tmp_path / "ca.pem"
    cafile.write_text("unused")
    gw = Gateway(load_config(_write_config(tmp_path, 1502, "https://127.0.0.1:1", cafile)),
                 Signer.from_file(tmp_path / "keys" / "private.pem"))
    assert gw.points["T101.level"] == f"{ENTERPRISE}{MH}T101.level" and kid
    gw.cfg.state_dir.mkdir(parents=True, exist_ok=True)
    gw.store.open()
    try:
        rec = gw._reading_record(Reading("T101.level", 8.0, "m", Quality.GOOD, ts=1_760_000_000.0))
        assert rec["point"] == f"{ENTERPRISE}{MH}T101.level"
        assert gw.store.put_reading(rec) and gw.store.flush(10)
        batch = Batcher(gw.store, gw.signer, GW, lambda: gw.cfg.config_hash).next_batch()
        (r,) = decode_unverified(batch.jws)[1]["readings"]
        assert r["point"] == f"{ENTERPRISE}{MH}T101.level"
    finally:
        gw.store.close()


def test_level2_gas_alarm_of_a_unit_tag_raises_the_colour_and_is_recorded(tmp_path: Path):
    """The alarm-state mapping in the tick (SafetyTick.sync_hazard_alarm_state), fed with readings directly:
    a level-2 combustible alarm (50 %LEL, GB/T 50493-2019 5.5.2) on a tag in the unit's alarm_tags raises
    the colour one step (demo colour_map level2_alarm: raise); a level-1 alarm does not."""
    cafile = tmp_path / "ca.pem"
    cafile.write_text("unused")
    cfg = load_config(_write_config(tmp_path, 1502, "https://127.0.0.1:1", cafile, gas=True))
    gw = Gateway(cfg, None)
    gw.cfg.state_dir.mkdir(parents=True, exist_ok=True)
    gw.store.open()
    t0 = time.time()

    def poll(i: int, gas: float) -> None:
        gw.on_readings([Reading("T101.level", 8.0, "m", Quality.GOOD, ts=t0 + i),
                        Reading("T101.temperature", 20.0, "degC", Quality.GOOD, ts=t0 + i),
                        Reading("T102.level", 6.0, "m", Quality.GOOD, ts=t0 + i),
                        Reading("T102.temperature", 20.0, "degC", Quality.GOOD, ts=t0 + i),
                        Reading("GD1.gas", gas, "%LEL", Quality.GOOD, ts=t0 + i)])

    poll(0, 0.0)
    assert _unit(gw)["colour"] == "orange" and _unit(gw)["grade"] == 2
    poll(1, 30.0)                                   # level 1 only
    assert _unit(gw)["colour"] == "orange" and not _unit(gw)["level2_active"]
    poll(2, 55.0)                                   # level 2
    u = _unit(gw)
    assert u["level2_active"] and u["colour"] == "red" and u["grade"] == 2  # the grade is the design's
    assert gw.store.flush(10)
    db = sqlite3.connect(gw.cfg.store_path)
    logged = [json.loads(d) for (d,) in db.execute("SELECT data FROM events ORDER BY id")]
    db.close()
    gw.store.close()
    (ev,) = [e for e in logged if e.get("type") == "hazard" and "colour" in e["changes"]]
    assert ev["from_colour"] == "orange" and ev["to_colour"] == "red" and ev["level2_active"]
    assert ev["enterprise_code"] == ENTERPRISE and ev["major_hazard_code"] == MH
    gas_alarms = [e for e in logged if e.get("type") == "alarm" and e["tag"] == "GD1.gas"]
    assert gas_alarms and all(e["point"] == f"{ENTERPRISE}{MH}GD1.gas" for e in gas_alarms)


def test_one_poll_is_one_snapshot():
    """HazardEngine.update_many: a poll's level and temperature together give one evaluation of the
    inventory, certain at once; fed one by one, the level without its temperature first counts the
    densest row (uncertain). Neither moves the grade."""
    from gateway.hazard import HazardEngine, unit_from_dict

    unit = _demo_hazard_unit()
    snap = [Reading("T101.level", 8.0, "m", Quality.GOOD, ts=1.0), Reading("T102.level", 6.0, "m", Quality.GOOD, ts=1.0),
            Reading("T101.temperature", 20.0, "degC", Quality.GOOD, ts=1.0),
            Reading("T102.temperature", 20.0, "degC", Quality.GOOD, ts=1.0)]
    together = HazardEngine([unit_from_dict(unit)])
    assert together.update_many(snap) == []
    (u,) = together.status()
    assert not u["inventory_uncertain"] and u["grade"] == 2
    assert u["R_live"] == pytest.approx(2.0 * math.pi * 5.5 ** 2 * 14.0 * 0.877 / 50.0, abs=1e-6)
    one_by_one = HazardEngine([unit_from_dict(unit)])
    one_by_one.update(snap[0])
    (first,) = one_by_one.status()
    assert first["inventory_uncertain"] and first["grade"] == 2
    eng = HazardEngine([unit_from_dict(dict(unit, alarm_tags=["GD1.gas"]))])
    assert eng.unit_tags(UNIT) == {"T101.level", "T101.temperature", "T102.level", "T102.temperature", "GD1.gas"}
    assert eng.major_hazard_code(UNIT) == MH
