"""Operator actions over the control socket (gateway.ops.control) against a running in-process Gateway.

The peer is the HIL tank PLC (pymodbus TCP on loopback); the client is the real `hazard-gateway`
CLI as a child process, or a raw unix socket where the test needs to send what the CLI never would.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import grp
import json
import os
import re
import socket
import sqlite3
import stat
import time
from pathlib import Path

import pytest

from gateway.safety.alarms import AlarmEngine, TagAlarmConfig, gas_preset
from gateway.config import ConfigError, load_config
from gateway.ops.control import ControlServer, ControlStartError, render_status, request
from gateway.runtime.gateway import Gateway
from gateway.model import Quality, Reading
from hil.tank_plc import TankPlc
from conftest import run_cli as cli, tank_overfill_config, wait_for

pytestmark = pytest.mark.timeout(60)


def other_group() -> grp.struct_group:
    """A group other than our primary one (to see that control.group is applied)."""
    mine = os.getgid()
    for g in grp.getgrall():
        if g.gr_gid != mine:
            return g
    pytest.skip("no second group on this machine")


def cfg_text(port: int, control: str = "") -> str:
    """``control`` is line 4 (a blank line when empty)."""
    return tank_overfill_config(port, gateway_id="ctl-test", store="{commit_interval_ms: 50, max_bytes: 1099511627776}",
                                extra=control, heartbeat="heartbeat: {address: 40101, interval_ms: 200}",
                                alarms="{H: 10.5, HH: {setpoint: 11.0, deadband: 0.1, latching: true}}")


@contextlib.asynccontextmanager
async def running(tmp_path: Path, control: str = ""):
    plc = TankPlc()
    await plc.start()
    plc.set_inflow("T101", 0.0)
    plc.set_outflow("T101", 0.0)
    stop = asyncio.Event()
    task = None
    try:
        (tmp_path / "gw.yaml").write_text(cfg_text(plc.port, control))
        cfg = load_config(tmp_path / "gw.yaml")
        gw = Gateway(cfg)
        ready = asyncio.Event()
        task = asyncio.create_task(gw.run(stop, ready=ready.set))
        await asyncio.wait_for(ready.wait(), 10)
        await wait_for(lambda: "T101.level" in gw.values, 5, "first reading")
        yield plc, gw, cfg
    finally:
        stop.set()
        if task is not None:
            await asyncio.wait_for(task, 20)
        await plc.stop()


def events(gw) -> list[dict]:
    gw.store.flush(10)
    db = sqlite3.connect(gw.store.path)
    try:
        return [json.loads(d) for (d,) in db.execute("SELECT data FROM events ORDER BY id")]
    finally:
        db.close()


# ---------------------------------------------------------------------------------------------- tests

@pytest.mark.e2e
async def test_socket_file_gets_the_configured_mode_and_group(tmp_path):
    g = other_group()
    async with running(tmp_path, f'control: {{socket: ops.sock, mode: "0640", group: {g.gr_name}}}') as (_, gw, cfg):
        st = os.stat(tmp_path / "ops.sock")
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o640
        assert st.st_gid == g.gr_gid
    assert not (tmp_path / "ops.sock").exists()  # removed at shutdown


def test_control_mode_accepts_yaml_octal_forms(tmp_path):
    for written, bits in (("0660", 0o660), ('"0600"', 0o600), ("0o640", 0o640), ("660", 0o660)):
        (tmp_path / "c.yaml").write_text(cfg_text(502, f"control: {{mode: {written}}}"))
        assert load_config(tmp_path / "c.yaml").model.control.mode == bits, written
    (tmp_path / "c.yaml").write_text(cfg_text(502, "control: {mode: 0668}"))
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path / "c.yaml")
    assert "c.yaml:4:" in str(e.value) and "octal" in str(e.value)


@pytest.mark.e2e
async def test_user_comes_from_peer_credentials_never_from_the_client(tmp_path):
    async with running(tmp_path) as (plc, gw, cfg):
        plc.set_level("T101", 10.7)  # H alarm (not latching)
        await wait_for(lambda: gw.alarms.state("T101.level.H") == "unacked", 5, "H alarm")
        ans = await asyncio.to_thread(request, cfg.state_dir / "control.sock",
                                      {"action": "ack", "id": "T101.level.H", "user": "mallory", "reason": "seen"})
        assert ans["ok"] and ans["user"] == getpass.getuser()
        assert gw.alarms.state("T101.level.H") == "acked"
        evs = events(gw)
        acks = [e for e in evs if e.get("type") == "alarm" and e.get("action") == "ack"]
        assert [(a["id"], a["user"], a["reason"]) for a in acks] == [("T101.level.H", getpass.getuser(), "seen")]
        op = [e for e in evs if e.get("type") == "operator"][-1]
        assert op["user"] == getpass.getuser() and op["uid"] == os.getuid() and op["pid"] > 0
        assert "mallory" not in json.dumps(evs)


@pytest.mark.e2e
async def test_ack_shelve_unshelve_and_refusals_through_the_cli(tmp_path):
    async with running(tmp_path) as (plc, gw, cfg):
        sock = str(cfg.state_dir / "control.sock")
        plc.set_level("T101", 10.7)
        await wait_for(lambda: gw.alarms.state("T101.level.H") == "unacked", 5, "H alarm")
        rc, out, err = await cli("ack", "T101.level.H", "--socket", sock, "--reason", "operator on the way")
        assert rc == 0 and "acknowledged" in out, err
        rc, out, err = await cli("ack", "T101.level.H", "--socket", sock)
        assert rc == 1 and err.strip().startswith("hazard-gateway: refused:") and "nothing to acknowledge" in err
        assert len(err.strip().splitlines()) == 1
        rc, out, err = await cli("ack", "NO.SUCH", "--socket", sock)
        assert rc == 1 and "no alarm 'NO.SUCH'" in err
        # shelve needs a reason: the CLI refuses before asking, the server refuses too
        rc, out, err = await cli("shelve", "T101.level.H", "--minutes", "5", "--socket", sock)
        assert rc == 2 and "--reason" in err
        ans = await asyncio.to_thread(request, sock, {"action": "shelve", "id": "T101.level.H", "minutes": 5})
        assert not ans["ok"] and "reason" in ans["error"]
        rc, out, err = await cli("shelve", "T101.level.H", "--minutes", "100000", "--reason", "x", "--socket", sock)
        # control.max_shelve_minutes (480 by default), stated in the unit the operator gave
        assert rc == 1 and "shelve of 100000 min must be > 0 and <= 480 min" in err, err
        rc, out, err = await cli("shelve", "T101.level.H", "--minutes", "5", "--reason", "transmitter swap",
                                 "--socket", sock)
        assert rc == 0, err
        assert "T101.level.H" not in {a.id for a in gw.alarms.active()}
        rc, out, err = await cli("unshelve", "T101.level.H", "--socket", sock)
        assert rc == 0 and gw.alarms.state("T101.level.H") == "unacked"
        ops = [(e["action"], e["result"]) for e in events(gw) if e.get("type") == "operator"]
        assert ops == [("ack", "ok"), ("ack", "refused"), ("ack", "refused"), ("shelve", "refused"),
                       ("shelve", "refused"), ("shelve", "ok"), ("unshelve", "ok")]


@pytest.mark.e2e
async def test_an_alarm_that_feeds_an_interlock_cannot_be_shelved_unless_the_interlock_is_bypassed(tmp_path):
    """The interlock would still trip while the annunciator went quiet: refused; a bypass first (its own
    reason, audited) makes the shelve possible."""
    async with running(tmp_path) as (plc, gw, cfg):
        sock = str(cfg.state_dir / "control.sock")
        plc.set_level("T101", 11.3)
        await wait_for(lambda: gw.alarms.condition("T101.level", "HH"), 5, "HH")
        rc, out, err = await cli("shelve", "T101.level.HH", "--minutes", "5", "--reason", "nuisance", "--socket", sock)
        assert rc == 1 and "is an input of interlock T101_overfill" in err and "bypass" in err, (rc, err)
        assert len(err.strip().splitlines()) == 1
        assert gw.alarms.state("T101.level.HH") != "shelved"
        plc.set_level("T101", 8.0)
        await wait_for(lambda: gw.alarms.condition("T101.level", "HH") is False, 5, "HH returned")
        gw.interlocks.reset("T101_overfill", "op", alarms=gw.alarms)
        rc, out, err = await cli("bypass", "T101_overfill", "--minutes", "600", "--reason", "LT101 calibration",
                                 "--socket", sock)
        assert rc == 1 and "bypass of 600 min must be > 0 and <= 480 min" in err, err  # max_bypass_s 8 h
        rc, out, err = await cli("bypass", "T101_overfill", "--minutes", "10", "--reason", "LT101 calibration",
                                 "--socket", sock)
        assert rc == 0, err
        rc, out, err = await cli("shelve", "T101.level.HH", "--minutes", "5", "--reason", "LT101 calibration",
                                 "--socket", sock)
        assert rc == 0, err


@pytest.mark.e2e
async def test_alarm_reset_refused_while_active_accepted_after_return(tmp_path):
    async with running(tmp_path) as (plc, gw, cfg):
        sock = str(cfg.state_dir / "control.sock")
        plc.set_level("T101", 11.3)
        await wait_for(lambda: gw.alarms.condition("T101.level", "HH"), 5, "HH")
        rc, out, err = await cli("reset", "T101.level.HH", "--socket", sock)
        assert rc == 1 and "condition still active" in err
        plc.set_level("T101", 8.0)
        await wait_for(lambda: gw.alarms.condition("T101.level", "HH") is False, 5, "HH returned")
        assert gw.alarms.state("T101.level.HH") == "unacked"  # latched
        rc, out, err = await cli("reset", "T101.level.HH", "--socket", sock, "--reason", "drained")
        assert rc == 0, err
        assert gw.alarms.state("T101.level.HH") == "normal"


@pytest.mark.e2e
async def test_status_text_and_json(tmp_path):
    async with running(tmp_path) as (plc, gw, cfg):
        plc.set_level("T101", 11.3)
        await wait_for(lambda: gw.outputs.states() and gw.outputs.state("XV101").confirmed, 5, "trip confirmed")
        await wait_for(lambda: gw.heartbeats[0].beats > 0, 5, "heartbeat")
        rc, out, err = await cli("status", "--config", str(tmp_path / "gw.yaml"))
        assert rc == 0, err
        for needle in ("DEVICES", "tank_plc", "link up", "T101.level", "good", "ALARMS (2 active",
                       "T101.level.HH", "T101_overfill", "tripped (process)", "XV101", "commanded 0",
                       "confirmed", "heartbeat tank_plc 40101 (count every 200 ms)", "STORE", "UPLINK none"):
            assert needle in out, f"{needle!r} missing from:\n{out}"
        lines = out.splitlines()
        assert lines.index(next(x for x in lines if "T101.level.HH" in x)) < \
            lines.index(next(x for x in lines if "T101.level.H " in x))  # priority order
        rc, out, err = await cli("status", "--json", "--socket", str(cfg.state_dir / "control.sock"))
        snap = json.loads(out)
        assert snap["devices"]["tank_plc"]["state"] == "up"
        polls = snap["devices"]["tank_plc"]["polls"]
        await asyncio.sleep(0.5)
        again = (await asyncio.to_thread(request, cfg.state_dir / "control.sock", {"action": "status"}))["status"]
        assert again["devices"]["tank_plc"]["polls"] >= polls + 3  # the live counters keep counting after a status
        assert snap["interlocks"][0]["state"] == "tripped"
        assert snap["heartbeats"][0]["state"] == "ok"
        assert "readings_unsent" in snap["store"] and "oldest_unsent_ts" in snap["store"]
        assert snap["tags"]["T101.level"]["unit"] == "m" and snap["tags"]["T101.level"]["age_s"] < 2


@pytest.mark.e2e
async def test_daemon_not_running_is_exit_2_and_a_stale_socket_is_replaced(tmp_path):
    sock = tmp_path / "state" / "control.sock"
    (tmp_path / "gw.yaml").write_text(cfg_text(1))
    rc, out, err = await cli("status", "--config", str(tmp_path / "gw.yaml"))
    assert rc == 2 and "not running" in err and len(err.strip().splitlines()) == 1
    sock.parent.mkdir()
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(sock))  # a socket file nobody listens on: a daemon that died
    s.close()
    rc, out, err = await cli("ack", "X", "--socket", str(sock))
    assert rc == 2 and "not running" in err
    async with running(tmp_path) as (_, gw, cfg):
        assert gw.control is not None
        rc, out, err = await cli("status", "--socket", str(sock))
        assert rc == 0, err
        # A second server on the same path refuses to start: someone is listening.
        with pytest.raises(ControlStartError, match="another gateway is listening"):
            await ControlServer(gw, sock).start()


@pytest.mark.e2e
async def test_a_socket_path_longer_than_sun_path_works(tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    path = deep / "control.sock"
    assert len(str(path)) > 108
    async with running(tmp_path, f"control: {{socket: {path}}}") as (_, gw, cfg):
        assert gw.control is not None and path.exists()
        ans = await asyncio.to_thread(request, path, {"action": "status"})
        assert ans["ok"] and ans["status"]["gateway_id"] == "ctl-test"


@pytest.mark.e2e
async def test_bad_requests_get_one_line_answers(tmp_path):
    async with running(tmp_path) as (_, gw, cfg):
        sock = cfg.state_dir / "control.sock"

        def raw(data: bytes) -> dict:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(str(sock))
                s.sendall(data)
                return json.loads(s.makefile().readline())

        assert "bad request" in (await asyncio.to_thread(raw, b"not json\n"))["error"]
        assert "unknown action" in (await asyncio.to_thread(raw, b'{"action": "rm -rf"}\n'))["error"]
        ans = await asyncio.to_thread(raw, b'{"action": "bypass", "interlock": "T101_overfill", "minutes": -1, '
                                           b'"reason": "x"}\n')
        assert not ans["ok"] and "minutes must be > 0" in ans["error"]
        ans = await asyncio.to_thread(raw, b'{"action": "bypass", "interlock": "nope", "minutes": 1, "reason": "x"}\n')
        assert not ans["ok"] and "no interlock 'nope'" in ans["error"]


def test_render_status_orders_gas_alarms_and_marks_first_out():
    eng = AlarmEngine([
        TagAlarmConfig("GD1.gas", gas_preset("combustible"), gas="combustible", group="gas"),
        TagAlarmConfig("GD2.gas", gas_preset("combustible"), gas="combustible", group="gas"),
        TagAlarmConfig("AT301.H2S", gas_preset("toxic", 10.0), gas="toxic", group="gas"),
    ])
    t = 100.0

    def feed(tag: str, v: float) -> None:
        nonlocal t
        t += 1.0
        eng.update(Reading(tag, v, "", Quality.GOOD, time.time()), t)

    feed("GD1.gas", 30.0)      # combustible level 1, first of the group
    feed("GD2.gas", 60.0)      # combustible level 2
    feed("AT301.H2S", 12.0)    # toxic level 1
    feed("AT301.H2S", 25.0)    # toxic level 2
    snap = {"gateway_id": "g", "alarms": [a.to_record() for a in eng.active()]}
    ids = [line.split()[1] if line.startswith("  *") else line.split()[0]
           for line in render_status(snap).splitlines() if ".gas." in line or ".H2S." in line]
    # level 2 before level 1, toxic before combustible at the same level, then time (GB/T 50493)
    assert ids == ["AT301.H2S.HH", "GD2.gas.HH", "AT301.H2S.H", "GD1.gas.H", "GD2.gas.H"]
    first = [line for line in render_status(snap).splitlines() if line.startswith("  *")]
    assert len(first) == 1 and "GD1.gas.H " in first[0]


def test_render_status_shows_later_alarms_in_time_order_and_points_disabled():
    """GB 16808: the first alarm, then later alarms in time order (not priority order), and the disabled
    gas points (屏蔽) shown and counted."""
    from gateway.safety.validity import points_disabled

    eng = AlarmEngine([
        TagAlarmConfig("GD1.gas", gas_preset("combustible"), gas="combustible", group="gas"),
        TagAlarmConfig("GD2.gas", gas_preset("combustible"), gas="combustible", group="gas"),
        TagAlarmConfig("GD3.gas", gas_preset("combustible"), gas="combustible", group="gas"),
        TagAlarmConfig("AT301.H2S", gas_preset("toxic", 10.0), gas="toxic", group="gas"),
    ])
    t = 100.0
    for tag, v in (("GD1.gas", 30.0), ("AT301.H2S", 25.0), ("GD2.gas", 60.0)):
        t += 1.0
        eng.update(Reading(tag, v, "", Quality.GOOD, time.time()), t)
    eng.shelve("GD3.gas.H", "op", "calibration gas on GD3", 600, 3600, now_mono=t)
    snap = {"gateway_id": "g", "alarms": [a.to_record() for a in eng.active()],
            "alarm_sequence": eng.first_out_sequence(), "points_disabled": points_disabled(eng)}
    assert snap["points_disabled"]["active"] and snap["points_disabled"]["count"] == 1
    text = render_status(snap).splitlines()
    i = next(n for n, line in enumerate(text) if line.startswith("  group gas: first alarm"))
    rows = [re.match(r"^ +(\d+)\. ([* ]) (\S+) +at (\S+) ", line) for line in text[i + 1:i + 6]]
    assert all(rows), text
    assert [r[3] for r in rows] == ["GD1.gas.H", "AT301.H2S.H", "AT301.H2S.HH", "GD2.gas.H", "GD2.gas.HH"], text
    assert [r[2] for r in rows] == ["*", " ", " ", " ", " "]          # the first-out, first
    assert [r[4] for r in rows] == sorted(r[4] for r in rows)          # in time order
    assert any(line.startswith("  POINTS DISABLED (屏蔽): 1 gas point(s): GD3.gas") for line in text), text
    eng.unshelve("GD3.gas.H", "op", now_mono=t + 1)
    snap["points_disabled"] = points_disabled(eng)
    assert not snap["points_disabled"]["active"] and not any("POINTS DISABLED" in x for x in render_status(snap).splitlines())
