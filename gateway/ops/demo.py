"""`hazard-gateway demo`: the gateway end to end on the built-in simulated tank farm.

What runs, all on loopback and over real protocol stacks:

* the tank farm from hil/ (in this process): a tank PLC on Modbus TCP, three
  combustible gas detectors on one Modbus RTU bus over a pty pair, and an OPC
  UA server with a toxic gas detector and the ESD valve position;
* the reference regulator receiver (`hazard-gateway receiver`, HTTPS with a
  self-signed certificate made for the run) as a child process;
* the gateway daemon (`hazard-gateway run`) as a child process, configured by
  config/demo.yaml with the endpoints of the simulators filled in.

Then a scenario from hil/scenarios runs (default: T101 overfill, then a gas
leak); once its outcome has settled (every output confirmed, every reading up
to the end acknowledged: :func:`settled`) the gateway is stopped with SIGTERM, the receiver's batches are
exported and verified offline, and a summary is printed (and written as JSON
with --json): tags per protocol, readings, alarms, trips with the latency from
the limit crossing in the simulator to the output confirmed by read-back,
batches built, sent (acknowledged) and verified, and readings lost (stored but
not received) or duplicated, counted as multisets of (tag, ts, value, quality), and the basic-data record
(基础数据: enterprise, installations with their design grade, vessels, points and their codes) the receiver
holds, read from its store (the regulator view).
When it fails it says why, one line per missing outcome (:func:`failures`).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from gateway.config import load_config
from gateway.shipped import shipped
from gateway.yamlload import load_yaml
from gateway.model import format_value, rfc3339

REPO_CONFIG = shipped("config/demo.yaml")

# Simulator names of the demo tags (hil.farm watch names), for crossing times.
SIM_NAME = {"T101.level": "T101.level", "T102.level": "T102.level", "GD1.gas": "LEL.1", "GD2.gas": "LEL.2",
            "GD3.gas": "LEL.3", "AT301.H2S": "H2S"}


def _say(msg: str) -> None:
    print(msg, flush=True)


def _render_config(src: Path, dst: Path, *, plc_port: int, serial: str, opcua: str, receiver_url: str,
                   ca_file: Path, key_file: Path, state_dir: Path, receiver_key: Path | None = None,
                   web_port: int | None = None) -> None:
    """Copy the demo config with the simulators' endpoints filled in (comments kept); ``web_port``: serve the
    status page (gateway.ops.web) on 127.0.0.1:web_port."""
    doc, _ = load_yaml(src)  # the bounded loader (gateway.yamlload); run_demo has validated src already
    yaml = YAML(typ="rt")
    doc["gateway"]["state_dir"] = str(state_dir)
    doc["keys"]["private_key"] = str(key_file)
    doc["uplink"]["url"] = receiver_url
    doc["uplink"]["ca_file"] = str(ca_file)
    if receiver_key is not None:   # the receiver signs its content refusals with this key (gateway.chain.rejection)
        doc["uplink"]["receiver_key"] = str(receiver_key)
    if web_port is not None:
        doc["web"] = {"listen": f"127.0.0.1:{web_port}"}
    for dev in doc["devices"]:
        if dev["protocol"] == "modbus_tcp":
            dev["host"], dev["port"] = "127.0.0.1", plc_port
        elif dev["protocol"] == "modbus_rtu":
            dev["port"] = serial
        elif dev["protocol"] == "opcua":
            dev["endpoint"] = opcua
    with dst.open("w", encoding="utf-8") as f:
        yaml.dump(doc, f)


async def _wait_port(port: int, proc: subprocess.Popen, what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} before listening")
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {timeout_s:.0f} s")


def _read_status(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "gateway.cli", *args]


async def _demo(config: Path, wd: Path, scenario: str) -> dict[str, Any]:
    from gateway.chain.signing import keygen
    from gateway.tlsutil import make_self_signed
    from hil.farm import TankFarm
    from hil.rig import free_port, stop_process

    keys, trust, tls = wd / "keys", wd / "trust", wd / "tls"
    if not (keys / "private.pem").exists():
        keygen(keys)
    trust.mkdir(exist_ok=True)
    for jwk in keys.glob("*.jwk"):
        (trust / jwk.name).write_bytes(jwk.read_bytes())
    rx_keys = wd / "receiver-keys"
    if not (rx_keys / "private.pem").exists():
        keygen(rx_keys)
    receiver_key = next(rx_keys.glob("*.jwk"))
    cert, key = make_self_signed(tls)
    rport = free_port()
    wport = free_port()   # the status page, for a person to watch the run
    logs = {n: open(wd / f"{n}.log", "ab") for n in ("receiver", "gateway")}
    receiver = subprocess.Popen(_cli("receiver", "--listen", f"127.0.0.1:{rport}", "--store",
                                     str(wd / "receiver.sqlite"), "--trust", str(trust), "--cert", str(cert),
                                     "--key", str(key), "--signing-key", str(rx_keys / "private.pem")),
                                stdout=logs["receiver"], stderr=logs["receiver"])
    farm = TankFarm()
    gw: subprocess.Popen | None = None
    t0 = time.monotonic()
    try:
        eps = await farm.start(wd / "farm", events_path=wd / "farm-events.jsonl")
        _say(f"tank farm: Modbus TCP PLC 127.0.0.1:{eps['modbus_tcp'][1]}, RTU gas bus {eps['serial_link']} "
             f"({eps['serial_baudrate']} baud, slaves 1-3), OPC UA {eps['opcua']}")
        gw_cfg = wd / "gateway.yaml"
        _render_config(config, gw_cfg, plc_port=eps["modbus_tcp"][1], serial=eps["serial_link"], opcua=eps["opcua"],
                       receiver_url=f"https://127.0.0.1:{rport}/v1/batches", ca_file=cert,
                       key_file=keys / "private.pem", state_dir=wd / "state", receiver_key=receiver_key,
                       web_port=wport)
        cfg = load_config(gw_cfg)
        await _wait_port(rport, receiver, "receiver")
        _say(f"receiver: https://127.0.0.1:{rport}/v1/batches (store {wd / 'receiver.sqlite'})")
        gw = subprocess.Popen(_cli("run", "--config", str(gw_cfg)), stdout=logs["gateway"], stderr=logs["gateway"])
        status_path = cfg.state_dir / "status.json"
        deadline = time.monotonic() + 30
        while True:
            st = _read_status(status_path)
            if st and all(d["polls"] > 0 for d in st["devices"].values()):
                break
            if gw.poll() is not None:
                raise RuntimeError(f"gateway exited with code {gw.returncode}; see {wd / 'gateway.log'}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"gateway did not poll every device within 30 s; see {wd / 'gateway.log'}")
            await asyncio.sleep(0.2)
        _say(f"gateway: polling {len(st['devices'])} devices (config {gw_cfg})")
        _say(f"status page: http://127.0.0.1:{wport}/ (read-only; open it in a browser to watch the run)")

        async def power_cycle(down_s: float) -> None:  # scenario step power_loss (hil/farm.py)
            nonlocal gw
            gw.kill()  # SIGKILL: no shutdown, no flush, as a power loss
            gw.wait()
            _say(f"power loss: gateway killed, restarting in {down_s:g} s")
            await asyncio.sleep(down_s)
            gw = subprocess.Popen(_cli("run", "--config", str(gw_cfg)), stdout=logs["gateway"],
                                  stderr=logs["gateway"])

        farm.power_hook = power_cycle
        _say(f"scenario '{scenario}' running ...")
        await farm.run_scenario(scenario)
        await _settle(status_path, gw, time.time())
    finally:
        if gw is not None:
            # in a thread: the simulated farm runs on this event loop and must go on answering while the
            # gateway shuts down (finishes its tick, its output writes and its final upload); a blocking wait
            # here froze the PLC, so the gateway saw its inputs fail and tripped on the fault while stopping
            await asyncio.to_thread(stop_process, gw, 30)
        await farm.stop()
        stop_process(receiver, 15)
        for f in logs.values():
            f.close()
    if gw.returncode != 0:
        raise RuntimeError(f"gateway exited with code {gw.returncode}; see {wd / 'gateway.log'}")
    return _summary(cfg, wd, farm, trust, time.monotonic() - t0)


SETTLE_MIN_S = 2.0    # after the last step: the last readings are polled and the last trips commanded
SETTLE_MAX_S = 60.0   # a loaded machine (CI) may take this long; the demo waits for outcomes, not for a time


def settled(status: dict[str, Any] | None, end_ts: float) -> bool:
    """True when the gateway's status shows the scenario's outcome complete: every output command confirmed
    by read-back (or given up with a fault: no write in progress, nothing waiting for a retry), no batch
    waiting for its acknowledgement, and nothing older than ``end_ts`` (UTC epoch s, the scenario's end)
    still unsent. What is polled after ``end_ts`` goes in the final upload at SIGTERM."""
    if not status:
        return False
    if any(o.get("busy") or (not o.get("confirmed") and not o.get("fault")) for o in status.get("outputs", [])):
        return False
    store = status.get("store") or {}
    if "error" in store or store.get("batches_unacked"):
        return False
    oldest = _epoch(store.get("oldest_unsent_ts"))
    return oldest is None or oldest >= end_ts


async def _settle(status_path: Path, gw: subprocess.Popen, end_ts: float) -> None:
    """Wait SETTLE_MIN_S, then until :func:`settled` or SETTLE_MAX_S (a fixed sleep fails on a loaded
    machine, where a trip confirms or a batch is acknowledged later than usual)."""
    await asyncio.sleep(SETTLE_MIN_S)
    deadline = time.monotonic() + SETTLE_MAX_S - SETTLE_MIN_S
    while time.monotonic() < deadline and gw.poll() is None:
        if settled(_read_status(status_path), end_ts):
            return
        await asyncio.sleep(0.25)
    _say(f"gateway not settled {SETTLE_MAX_S:g} s after the scenario (outputs unconfirmed or uploads behind);"
         " stopping it anyway")


def failures(summary: dict[str, Any]) -> list[str]:
    """Why the demo failed, one line each (empty when it passed): every trip confirmed by read-back, nothing
    lost, at least one batch acknowledged, every batch the receiver holds exported and verified offline."""
    out = []
    if not summary["trips"]:
        out.append("no interlock tripped")
    out += [f"trip {t['interlock']}: {t['output']} := {t['value']} not confirmed by read-back"
            for t in summary["trips"] if not t["confirmed"]]
    if summary["readings_lost"]:
        out.append(f"{summary['readings_lost']} readings stored by the gateway but not held by the receiver"
                   f" ({summary['readings_unsent']} of them still unsent in the gateway's store)")
    if not summary["batches_sent"]:
        out.append("no batch acknowledged by the receiver")
    if summary["batches_exported"] != summary["batches_verified"] or summary["batches_verified"] < summary["batches_sent"]:
        out.append(f"{summary['batches_verified']} of {summary['batches_exported']} exported batches verified"
                   f" ({summary['batches_sent']} acknowledged): " + "; ".join(summary["verify_faults"][:3]))
    return out


def _summary(cfg: Any, wd: Path, farm: Any, trust: Path, elapsed_s: float) -> dict[str, Any]:
    from gateway.regulator.receiver import ReceiverStore, export_batches
    from gateway.regulator.verify import verify_files

    gid = cfg.model.gateway.id
    status = _read_status(cfg.state_dir / "status.json") or {}
    protocols: dict[str, int] = {"modbus_tcp": 0, "modbus_rtu": 0, "opcua": 0}
    good: dict[str, int] = {"modbus_tcp": 0, "modbus_rtu": 0, "opcua": 0}
    for d in cfg.model.devices:
        protocols[d.protocol] += len(d.tags)
    for t in status.get("tags", {}).values():
        if t.get("protocol") in good and t.get("quality") == "good":
            good[t["protocol"]] += 1

    db = sqlite3.connect(cfg.store_path)
    # a reading is its (tag, ts, value, quality): two distinct samples may share a millisecond ts
    stored = Counter(_reading_key(t, ts, json.loads(v) if v is not None else None, q)
                     for t, ts, v, q in db.execute("SELECT tag, ts, value, quality FROM readings"))
    stored_n = db.execute("SELECT count(*) FROM readings").fetchone()[0]
    by_protocol = {}
    batches_built = db.execute("SELECT count(*) FROM batches").fetchone()[0]
    batches_acked = db.execute("SELECT count(*) FROM batches WHERE acked_at IS NOT NULL").fetchone()[0]
    unsent = db.execute("SELECT count(*) FROM readings WHERE batch_seq IS NULL OR batch_seq IN"
                        " (SELECT seq FROM batches WHERE acked_at IS NULL)").fetchone()[0]
    db.close()

    rs = ReceiverStore(wd / "receiver.sqlite", create=False)
    try:
        received_rows = [r for _, _, r in rs.readings(gid)]
        received = Counter(_reading_key(r["tag"], r["ts"], r.get("value"), r.get("quality")) for r in received_rows)
        events = [e for b in rs.batches(gid) for e in _payload(b.jws).get("events", [])]
        basic = rs.basic_data(gid)   # the latest basic-data record (基础数据) the regulator holds
    finally:
        rs.close()
    exported = wd / "export"
    n_export = export_batches(wd / "receiver.sqlite", exported)
    report = verify_files(trust, sorted(exported.glob(f"{gid}-*.jws")))
    verified = sum(1 for f in report.files if f.ok) if report.ok else 0

    for tag in (r["tag"] for r in received_rows):
        p = next((d.protocol for d in cfg.model.devices for t in d.tags if t.name == tag), "?")
        by_protocol[p] = by_protocol.get(p, 0) + 1
    alarms = [{"id": e["id"], "tag": e["tag"], "kind": e["kind"], "level": e.get("level"), "value": e.get("value"),
               "limit": e.get("limit"), "ts": e["ts"], "first_out": e.get("first_out", False)}
              for e in events if e.get("type") == "alarm" and e.get("to_state") == "unacked"
              and e.get("from_state") in ("normal", "rtn_unacked")]
    trips = _trips(cfg, status, farm)
    lost, duplicated = reading_counts(stored, received)
    return {
        "gateway_id": gid,
        "workdir": str(wd),
        "elapsed_s": round(elapsed_s, 1),
        "protocols": protocols,
        "protocols_good_tags": good,
        "readings": stored_n,
        "readings_received": len(received_rows),
        "readings_by_protocol": by_protocol,
        "readings_duplicated": duplicated,
        "readings_lost": lost,
        "readings_unsent": unsent,  # in the gateway's store, not acknowledged when it stopped (sent at its next start)
        "alarms": alarms,
        "trips": trips,
        # GB 18218-2018 unit grade / colour / uncertain changes as received by the regulator (docs/domain.md, GB 18218-2018)
        # the grade is the design grade (GB 18218-2018 4.2.2): constant through the demo; events are colour
        # changes by the alarm state. hazard_units: the gateway's last status, with the current inventory beside
        "hazard": [{k: e.get(k) for k in ("ts", "unit", "event", "grade", "S", "R", "from_colour", "to_colour",
                                          "colour_source", "R_live", "changes")}
                   for e in events if e.get("type") == "hazard"],
        "hazard_units": [{k: u.get(k) for k in ("unit", "basis", "grade", "S", "R", "colour", "colour_source",
                                                "S_live", "R_live", "inventory_uncertain")}
                         for u in status.get("hazard", [])],
        # built: signed and stored by the gateway; sent: acknowledged by the receiver (a batch counts as
        # sent only at its ack, docs/design.md "Two paths"); batches_acked is the same figure, kept for readers
        "batches_built": batches_built,
        "batches_sent": batches_acked,
        "batches_acked": batches_acked,
        "batches_exported": n_export,
        "batches_verified": verified,
        "verify_faults": [str(x) for x in getattr(report, "faults", [])],
        # the regulator's register of this gateway (gateway.chain.basic_data), as its receiver holds it
        "basic_data": basic_data_view(basic, cfg.config_hash),
    }


def basic_data_view(held: dict[str, Any] | None, config_hash: str) -> dict[str, Any] | None:
    """The summary of the basic-data record a receiver holds (ReceiverStore.basic_data: {"gateway_id", "seq",
    "config_hash", "received_at", "doc"}), or None: seq, received_at, whether it is of the config the gateway ran
    (``config_hash``), enterprise, installations with their design grade, vessel and point counts, and the first
    point codes."""
    if held is None:
        return None
    doc = held["doc"]
    return {"seq": held["seq"], "received_at": held["received_at"], "config_hash": held["config_hash"],
            "current_config": held["config_hash"] == config_hash, "enterprise": doc.get("enterprise"),
            "installations": [{k: u.get(k) for k in ("name", "major_hazard_code", "grade", "S", "R", "colour")}
                              for u in doc.get("installations", [])],
            "vessels": len(doc.get("vessels", [])), "points": len(doc.get("points", [])),
            "typed_points": sum(1 for p in doc.get("points", []) if p.get("measure")),
            "point_codes": [{k: p.get(k) for k in ("code", "tag", "measure", "unit")}
                            for p in doc.get("points", [])[:4]]}


def reading_counts(stored: Counter, received: Counter) -> tuple[int, int]:
    """(lost, duplicated) from multisets of reading keys (:func:`_reading_key`): lost = stored
    readings the receiver does not hold as often as the store; duplicated = received more often
    than stored (keys the store no longer holds, e.g. deleted by retention after their ack, are
    not counted). Sets would merge two distinct samples that share a key component."""
    lost = sum((stored - received).values())
    duplicated = sum(max(0, received[k] - n) for k, n in stored.items())
    return lost, duplicated


def _reading_key(tag: str, ts: str, value: Any, quality: Any) -> tuple[str, str, str, str]:
    """A reading's identity for the lost / duplicated counts: tag, ts, value (as canonical JSON) and quality."""
    return (str(tag), str(ts), json.dumps(value, sort_keys=True, default=str), str(quality))


def _payload(jws: str) -> dict[str, Any]:
    from gateway.chain.signing import decode_unverified

    return decode_unverified(jws)[1]


def _trips(cfg: Any, status: dict[str, Any], farm: Any) -> list[dict[str, Any]]:
    """One entry per interlock output confirmed: latency from the simulator's limit crossing (the M-th
    input to cross, for MooN voting) to the read-back confirmation."""
    from gateway.runtime.build import alarm_configs

    setpoints = {(c.tag, s.kind): s.setpoint for c in alarm_configs(cfg) for s in c.limits}
    votes = {i.name: (int(i.vote.split("oo")[0]), i.inputs) for i in cfg.model.interlocks}
    out = []
    for rec in status.get("trips", []):
        if rec.get("kind") != "trip":
            continue
        m, inputs = votes.get(rec["interlock"], (1, []))
        crossings = sorted(t for t in (farm.first_crossing(SIM_NAME.get(x.tag, x.tag), setpoints.get((x.tag, x.condition)))
                                       for x in inputs if setpoints.get((x.tag, x.condition)) is not None)
                           if t is not None)
        crossed = crossings[m - 1] if len(crossings) >= m else None
        confirmed = _epoch(rec.get("confirmed"))
        out.append({"interlock": rec["interlock"], "output": rec["tag"], "value": rec["value"], "cause": rec["cause"],
                    "confirmed": rec.get("confirmed"), "attempts": rec.get("attempts"),
                    "crossed_in_simulator": rfc3339(crossed) if crossed else None,
                    "latency_ms": round((confirmed - crossed) * 1000, 1) if crossed and confirmed else None,
                    "detect_to_confirm_ms": rec.get("latency_confirm_ms")})
    return out


def _epoch(ts: str | None) -> float | None:
    from datetime import datetime

    if not ts:
        return None
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


#: GB 18218-2018 grade names and the risk colours as operators say them (docs/domain.md, Risk colours)
GRADE_ZH = {1: "一级", 2: "二级", 3: "三级", 4: "四级"}
COLOUR_ZH = {"red": "红", "orange": "橙", "yellow": "黄", "blue": "蓝"}


def _print_summary(s: dict[str, Any]) -> None:
    p = s["protocols"]
    _say("")
    _say("=== hazard-gateway demo summary ===")
    _say(f"tags per protocol: Modbus TCP {p['modbus_tcp']}, Modbus RTU {p['modbus_rtu']}, OPC UA {p['opcua']} "
         f"(good at the end: {s['protocols_good_tags']})")
    _say(f"readings: {s['readings']} stored, {s['readings_received']} received by the regulator "
         f"({s['readings_by_protocol']})")
    _say(f"alarms raised: {len(s['alarms'])}")
    for a in s["alarms"]:
        lvl = f" level {a['level']}" if a.get("level") else ""
        _say(f"  {a['ts']}  {a['id']:<22}{lvl} value {format_value(a['value'])} limit {format_value(a['limit'])}"
             f"{'  FIRST-OUT' if a.get('first_out') else ''}")
    _say(f"trips: {len(s['trips'])}")
    for t in s["trips"]:
        lat = f"{t['latency_ms']:.0f} ms" if t["latency_ms"] is not None else "n/a"
        state = "confirmed" if t["confirmed"] else "NOT CONFIRMED"
        _say(f"  {t['interlock']:<15} {t['output']} := {t['value']} ({t['cause']}) {state}; "
             f"limit crossing in simulator -> output confirmed: {lat}")
    _say("major-hazard units (GB 18218-2018, on the design maximum quantity, 4.2.2):")
    for u in s.get("hazard_units", []):
        grade = f"grade {u['grade']} ({GRADE_ZH.get(u['grade'], '')})" if u["grade"] else "not a major hazard"
        live = f"R_live {u['R_live']:.1f}" + (" (uncertain)" if u.get("inventory_uncertain") else "")
        _say(f"  {u['unit']}: {grade}, R {u['R']:.1f}, S {u['S']:.1f}, colour {u['colour']} "
             f"({COLOUR_ZH.get(u['colour'], '')}, {u['colour_source']}); current inventory {live}, not a grade")
    _say(f"  colour changes (alarm state): {len(s.get('hazard', []))}")
    for h in s.get("hazard", []):
        _say(f"  {h['ts']}  {h['unit']}: grade {h['grade']}, colour {h['from_colour']} -> {h['to_colour']}, "
             f"R {h['R']:.1f}, R_live {h['R_live']:.1f}")
    b = s.get("basic_data")
    if b is None:
        _say("basic data (基础数据) held by the regulator: none")
    else:
        e = b.get("enterprise") or {}
        _say(f"basic data (基础数据) held by the regulator: seq {b['seq']}, config {b['config_hash'][:12]}"
             f"{'' if b['current_config'] else ' (NOT the config the gateway ran)'}; enterprise {e.get('code')}"
             f"{' ' + e['name'] if e.get('name') else ''}")
        for u in b["installations"]:
            grade = f"grade {u['grade']} ({GRADE_ZH.get(u['grade'], '')})" if u["grade"] else "not a major hazard"
            _say(f"  installation {u['name']} ({u['major_hazard_code']}): design {grade}, R {u['R']:.1f}, "
                 f"S {u['S']:.1f}, {u['colour']}")
        _say(f"  {b['vessels']} vessels, {b['points']} points ({b['typed_points']} typed), e.g.:")
        for p in b["point_codes"]:
            _say(f"  {p['code']}  {p['tag']} ({p['measure'] or 'untyped'}, {p['unit'] or 'no unit'})")
    _say(f"batches: {s['batches_built']} built, {s['batches_sent']} sent (acknowledged), {s['batches_verified']} "
         f"verified offline (signature, sequence, hash chain)")
    _say(f"readings lost: {s['readings_lost']}   duplicated at receiver: {s['readings_duplicated']}")
    _say(f"work directory: {s['workdir']}")


def run_demo(config: str | None = None, workdir: str | None = None, json_out: str | None = None,
             scenario: str = "demo") -> int:
    """Run the demo; exit 0 when every trip was confirmed, nothing was lost and every batch the receiver
    holds verified (at least every acknowledged one), else 1."""
    cfg_path = Path(config) if config else REPO_CONFIG
    if not cfg_path.exists():
        print(f"hazard-gateway: demo config {cfg_path} not found (give --config)", file=sys.stderr)
        return 2
    load_config(cfg_path)  # a broken demo config is reported as FILE:LINE:COL before anything starts
    from gateway.regulator.receiver import web_stack_missing

    missing = web_stack_missing("demo")  # the demo runs the reference receiver
    if missing:
        print(f"hazard-gateway: demo: {missing}", file=sys.stderr)
        return 2
    from hil.scenario import SCENARIO_DIR, ScenarioError, load_scenario, resolve_scenario_path

    if not resolve_scenario_path(scenario).exists():
        known = ", ".join(sorted(p.stem for p in SCENARIO_DIR.glob("*.yaml")))
        print(f"hazard-gateway: unknown scenario '{scenario}' (known: {known}; or give a path)", file=sys.stderr)
        return 2
    try:
        load_scenario(scenario)  # a broken scenario file is one FILE:LINE line before anything starts
    except ScenarioError as exc:
        print(f"hazard-gateway: {exc}", file=sys.stderr)
        return 2
    # the simulators run in this process: asyncua's server warns that the demo endpoint has no security
    # policy (true, on loopback by design); pymodbus logs every client reconnect. Keep the console readable.
    import logging

    for name in ("asyncua", "pymodbus"):
        logging.getLogger(name).setLevel(logging.ERROR)
    wd = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="hazard-gateway-demo-"))
    wd.mkdir(parents=True, exist_ok=True)
    wd = wd.resolve()
    try:
        summary = asyncio.run(_demo(cfg_path, wd, scenario))
    except RuntimeError as exc:
        print(f"hazard-gateway: demo failed: {exc}", file=sys.stderr)
        return 1
    summary["failures"] = failures(summary)
    _print_summary(summary)
    if json_out:
        Path(json_out).write_text(json.dumps(summary, indent=2, default=str) + "\n")
    for line in summary["failures"]:
        print(f"hazard-gateway: demo failed: {line}", file=sys.stderr)
    return 1 if summary["failures"] else 0


if __name__ == "__main__":
    sys.exit(run_demo())
