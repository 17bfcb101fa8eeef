"""Hidden-danger records with a real daemon (``hazard-gateway run`` as a child process) on the HIL tank PLC, a real
HTTPS receiver and the real CLI on the control socket: a bypass of the overfill interlock and a shelve of a gas
alarm become "opened" records after hidden_danger.after_minutes (here 0.03 min), with who, why and since, in the
store and in the uploaded batches; the shelve is ended by the operator ("closed"); the daemon is killed and
started again while the bypass stands: no second "opened", and the "closed" comes with the same id when the
operator ends the bypass."""

from __future__ import annotations

import asyncio
import getpass
import json
import sqlite3
from datetime import datetime
from pathlib import Path

import pytest

from conftest import read_status, run_cli, until_daemon
from gateway.safety.safety_state import load
from hil.rig import GatewayProc, ReceiverProc, make_keys, payload
from hil.tank_plc import TankPlc

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]

AFTER_MINUTES = 0.03   # 1.8 s


def epoch(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def write_config(path: Path, plc_port: int, rx: ReceiverProc) -> Path:
    path.write_text(f"""gateway: {{id: hd-gw, state_dir: state, enterprise_code: '110000000001', major_hazard_code: MH01}}
keys: {{private_key: keys/private.pem}}
store: {{commit_interval_ms: 50, max_bytes: 1099511627776}}
uplink: {{url: '{rx.url}', ca_file: '{rx.cert}', interval_ms: 100, timeout_ms: 3000}}
hidden_danger: {{after_minutes: {AFTER_MINUTES}}}
devices:
  - name: tank_plc
    protocol: modbus_tcp
    host: 127.0.0.1
    port: {plc_port}
    poll_interval_ms: 100
    timeout_ms: 500
    tags:
      - {{name: T101.level, address: 30001, type: float32, unit: m, alarms: {{HH: 11.0}}}}
      - {{name: GD101, address: 30003, type: float32, unit: '%LEL', alarms: {{gas: combustible}}}}
      - {{name: XV101, address: {{table: coil, address: 0}}, type: bool, writable: true}}
interlocks:
  - name: T101_overfill
    inputs: [{{tag: T101.level, condition: HH}}]
    actions: [{{output: XV101, value: 0}}]
""")
    return path


def store_events(db: Path) -> list[dict]:
    """The hidden-danger events committed to the gateway's store (read-only, beside the running writer)."""
    try:
        c = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    except sqlite3.Error:
        return []
    try:
        rows = c.execute("SELECT data FROM events ORDER BY id").fetchall()
    except sqlite3.Error:
        return []
    finally:
        c.close()
    return [e for e in (json.loads(d) for (d,) in rows) if e.get("type") == "hidden_danger"]


def uploaded_events(db: Path) -> list[dict]:
    """The hidden-danger events in the batches the receiver accepted, in seq order."""
    try:
        c = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
        try:
            jws = [r[0] for r in c.execute("SELECT jws FROM batches ORDER BY gateway_id, seq")]
        finally:
            c.close()
    except sqlite3.Error:
        return []
    return [e for j in jws for e in payload(j).get("events", []) if e.get("type") == "hidden_danger"]


def find(events: list[dict], event: str, kind: str) -> list[dict]:
    return [e for e in events if e["event"] == event and e["kind"] == kind]


async def test_bypass_and_shelve_become_hidden_dangers_and_close_across_a_restart(tmp_path: Path) -> None:
    plc = TankPlc()
    await plc.start()
    plc.set_inflow("T101", 0.0)
    plc.set_outflow("T101", 0.0)
    _key, trust = make_keys(tmp_path)
    rx = ReceiverProc(tmp_path / "rx", trust)
    await asyncio.to_thread(rx.start)
    cfg = write_config(tmp_path / "gw.yaml", plc.port, rx)
    state = tmp_path / "state"
    db = state / "store.sqlite"
    log = tmp_path / "gateway.log"
    sock = str(state / "control.sock")
    gw = GatewayProc(cfg, log)
    me = getpass.getuser()
    try:
        rc, out, err = await run_cli("check", str(cfg))
        assert rc == 0, out + err
        await asyncio.to_thread(gw.start)
        await until_daemon(lambda: (read_status(state).get("devices", {}).get("tank_plc", {}).get("polls")
                                    and (state / "control.sock").exists()), 30, "polling", gw.proc, log)
        rc, out, err = await run_cli("bypass", "T101_overfill", "--minutes", "10", "--reason", "LT101 proof test",
                                     "--socket", sock)
        assert rc == 0, err
        rc, out, err = await run_cli("shelve", "GD101.HH", "--minutes", "10", "--reason", "GD101 calibration",
                                     "--socket", sock)
        assert rc == 0, err

        # opened after after_minutes, with who, why and since; in the store and in the status
        opened = await until_daemon(lambda: len({e["kind"] for e in store_events(db) if e["event"] == "opened"}) == 2
                                    and store_events(db), 20, "two opened records", gw.proc, log)
        [bypass] = find(opened, "opened", "bypass")
        [shelve] = find(opened, "opened", "shelve")
        assert (bypass["target"], bypass["by"], bypass["feeds"]["interlocks"]) == ("T101_overfill", me,
                                                                                     ["T101_overfill"])
        assert bypass["reason"] == "LT101 proof test"
        assert (shelve["target"], shelve["by"], shelve["reason"]) == ("GD101.HH", me, "GD101 calibration")
        assert shelve["feeds"]["gas_alarms"] == ["GD101.HH"]
        for rec in (bypass, shelve):
            assert rec["gateway_id"] == "hd-gw" and rec["enterprise_code"] == "110000000001"
            assert all(i.get("point") for i in rec["inputs"]), rec["inputs"]   # point codes added by log_event
            waited = epoch(rec["opened_at"]) - epoch(rec["since"])
            assert AFTER_MINUTES * 60 <= waited < AFTER_MINUTES * 60 + 3, rec
        assert {h["id"] for h in read_status(state).get("hidden_dangers") or []} <= {bypass["id"], shelve["id"]}
        rc, out, err = await run_cli("status", "--socket", sock)
        assert rc == 0 and "HIDDEN DANGERS" in out and "T101_overfill" in out and "GD101 calibration" in out, out

        # the operator ends the shelve: closed, same id, with its duration
        rc, out, err = await run_cli("unshelve", "GD101.HH", "--reason", "calibrated", "--socket", sock)
        assert rc == 0, err
        [closed] = await until_daemon(lambda: find(store_events(db), "closed", "shelve"), 10, "shelve closed",
                                      gw.proc, log)
        assert (closed["id"], closed["ended_by"], closed["end_user"]) == (shelve["id"], "operator", me)
        assert closed["duration_s"] == pytest.approx(epoch(closed["closed_at"]) - epoch(shelve["since"]), abs=0.01)
        assert closed["duration_s"] >= AFTER_MINUTES * 60

        # SIGKILL while the bypass stands (its open record is in the safety state), then start again
        await until_daemon(lambda: any(h.get("id") == bypass["id"] for h in
                                       (load(state / "safety-state.json") or {}).get("hidden_dangers", [])),
                           5, "the open record in safety-state.json", gw.proc, log)
        await asyncio.to_thread(gw.kill)
        (state / "status.json").unlink(missing_ok=True)   # the killed daemon's last snapshot
        await asyncio.to_thread(gw.start)
        await until_daemon(lambda: (read_status(state).get("hidden_dangers") or [None])[0], 30,
                           "the restored open record in the status", gw.proc, log)
        assert [h["id"] for h in read_status(state)["hidden_dangers"]] == [bypass["id"]]
        await asyncio.sleep(AFTER_MINUTES * 60 + 1.5)    # longer than after_minutes: still no second open
        opens = sorted(e["id"] for e in store_events(db) if e["event"] == "opened")
        assert opens == sorted([bypass["id"], shelve["id"]])
        rc, out, err = await run_cli("bypass", "T101_overfill", "--end", "--reason", "proof test done",
                                     "--socket", sock)
        assert rc == 0, err
        [closed] = await until_daemon(lambda: find(store_events(db), "closed", "bypass"), 10, "bypass closed",
                                      gw.proc, log)
        assert (closed["id"], closed["ended_by"], closed["end_user"], closed["by"]) == (
            bypass["id"], "operator", me, me)
        assert closed["since"] == bypass["since"] and closed["duration_s"] > AFTER_MINUTES * 60 + 1.5

        # all four are uploaded, each once, in the signed chain
        up = await until_daemon(lambda: len(uploaded_events(rx.store)) >= 4 and uploaded_events(rx.store), 30,
                                "the records at the receiver", gw.proc, log)
        assert sorted((e["event"], e["kind"], e["id"]) for e in up) == sorted(
            [("opened", "bypass", bypass["id"]), ("opened", "shelve", shelve["id"]),
             ("closed", "shelve", shelve["id"]), ("closed", "bypass", bypass["id"])])
        assert await asyncio.to_thread(gw.term) == 0
    finally:
        if gw.alive():
            gw.kill()
        rx.close()
        await plc.stop()
