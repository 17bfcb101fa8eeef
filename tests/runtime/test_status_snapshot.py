"""status.json is written on change, at most once per STATUS_EVERY_S (gateway.runtime.gateway.Gateway._status_loop).

"Change" (gateway.runtime.gateway.status_change_view) is anything but the clock and the progress counters: a tag's
age grows every second and a device's poll counter with every poll, and neither alone rewrites the file; the file is
rewritten every STATUS_KEEPALIVE_S anyway, so its ``time`` shows the daemon alive and its ages are at most that old.
The in-memory snapshot (``last_status``: the STATUS line, metrics, the page) stays fresh every STATUS_EVERY_S, and the
store counters (SQLite queries) are taken again only when the store or the uploader moved.
"""

from __future__ import annotations

import asyncio
import copy
import json
import time
from pathlib import Path

import pytest

import gateway.runtime.gateway as gwmod
from gateway.config import load_config
from gateway.model import Quality, Reading
from gateway.runtime.gateway import Gateway, status_change_view

pytestmark = pytest.mark.timeout(60)

SNAP = {"gateway_id": "g", "config_hash": "c", "time": "2026-01-01T00:00:00.000Z", "uptime_s": 5.0,
        "readings_queued": 10, "readings_taken": 9,
        "devices": {"plc": {"protocol": "modbus_tcp", "polls": 5, "bad": 0, "last_poll": 1.0, "state": "up",
                            "error": None, "offline": False, "tags": 1}},
        "tags": {"T1": {"value": 1.5, "unit": "m", "quality": "good", "reason": None, "age_s": 0.2,
                        "protocol": "modbus_tcp", "device": "plc", "precision": None}},
        "alarms": [], "heartbeats": [{"device": "plc", "value": 3, "beats": 3, "age_s": 0.1, "state": "ok",
                                      "errors": 0, "last_error": None}],
        "store": {"readings_unsent": 4, "writer_error": None}, "record_path": None, "uplink": None}


def _with(path: tuple, value):
    s = copy.deepcopy(SNAP)
    d = s
    for k in path[:-1]:
        d = d[k]
    d[path[-1]] = value
    return s


@pytest.mark.parametrize("path,value", [(("time",), "2026-01-01T00:00:07.000Z"), (("uptime_s",), 12.0),
                                        (("readings_queued",), 500), (("readings_taken",), 499),
                                        (("tags", "T1", "age_s"), 7.2), (("devices", "plc", "polls"), 12),
                                        (("devices", "plc", "last_poll"), 8.0), (("heartbeats", 0, "value"), 9),
                                        (("heartbeats", 0, "age_s"), 0.9)])
def test_the_clock_ages_and_progress_counters_alone_are_no_change(path, value):
    assert status_change_view(_with(path, value)) == status_change_view(SNAP)


@pytest.mark.parametrize("path,value", [(("tags", "T1", "value"), 1.6), (("tags", "T1", "quality"), "bad"),
                                        (("alarms",), [{"id": "T1.HH"}]), (("devices", "plc", "state"), "down"),
                                        (("store", "readings_unsent"), 0), (("record_path",), {"store": "disk full"}),
                                        (("heartbeats", 0, "state"), "failing")])
def test_values_alarms_links_and_store_counters_are_a_change(path, value):
    assert status_change_view(_with(path, value)) != status_change_view(SNAP)


def test_the_view_leaves_the_snapshot_alone():
    s = copy.deepcopy(SNAP)
    status_change_view(s)
    assert s == SNAP


def _gateway(tmp_path: Path) -> Gateway:
    cfg = tmp_path / "gw.yaml"
    cfg.write_text("gateway: {id: status-loop, state_dir: state}\nkeys: {private_key: keys/private.pem}\n"
                   "devices:\n  - {name: plc, protocol: modbus_tcp, host: 127.0.0.1, "
                   "tags: [{name: T1.level, address: 30001, type: float32, unit: m}]}\n")
    (tmp_path / "state").mkdir()
    return Gateway(load_config(cfg))


def _file(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "state" / "status.json").read_text())


async def _until(pred, timeout_s: float = 5.0):
    deadline = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


@pytest.mark.e2e   # about a second: the keep-alive rewrite is waited for
async def test_status_json_is_written_on_change_and_kept_alive(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(gwmod, "STATUS_EVERY_S", 0.02)
    monkeypatch.setattr(gwmod, "STATUS_KEEPALIVE_S", 0.6)
    gw = _gateway(tmp_path)
    gw.tick.values["T1.level"] = Reading(tag="T1.level", value=1.5, unit="m", quality=Quality.GOOD, ts=time.time())
    task = asyncio.create_task(gw._status_loop())
    try:
        await _until(lambda: (tmp_path / "state" / "status.json").exists())
        first = _file(tmp_path)
        assert first["tags"]["T1.level"]["value"] == 1.5
        assert "\n" not in (tmp_path / "state" / "status.json").read_text()   # compact: json's C encoder
        await asyncio.sleep(0.25)   # a dozen loop passes: the ages grew, nothing else changed
        assert _file(tmp_path)["time"] == first["time"]
        assert gw.last_status["time"] != first["time"]          # the in-memory snapshot stays fresh
        assert gw.last_status["tags"]["T1.level"]["age_s"] > first["tags"]["T1.level"]["age_s"]
        gw.tick.values["T1.level"] = Reading(tag="T1.level", value=2.5, unit="m", quality=Quality.GOOD,
                                             ts=time.time())
        await _until(lambda: _file(tmp_path)["tags"]["T1.level"]["value"] == 2.5, 1.0)   # a change: at once
        changed = _file(tmp_path)["time"]
        await _until(lambda: _file(tmp_path)["time"] != changed, 2.0)    # unchanged: the keep-alive rewrite
    finally:
        gw._stopping = True
        await asyncio.wait_for(task, 5)


async def test_the_store_counters_are_taken_again_only_when_the_store_moved(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(gwmod, "STATUS_EVERY_S", 0.02)
    monkeypatch.setattr(gwmod, "STATUS_KEEPALIVE_S", 30.0)
    gw = _gateway(tmp_path)
    gw.store.commit_interval_s = 0.02
    await asyncio.to_thread(gw.store.open)
    calls = []
    real = gw.store.stats
    gw.store.stats = lambda: calls.append(1) or real()   # counts the real queries
    task = asyncio.create_task(gw._status_loop())
    try:
        await _until(lambda: gw.last_status is not None)
        await asyncio.sleep(0.3)   # some 15 passes, nothing recorded
        assert len(calls) == 1 and gw.last_status["store"]["readings_total"] == 0
        assert gw.store.put_reading(Reading(tag="T1.level", value=1.5, unit="m", quality=Quality.GOOD,
                                            ts=time.time()))
        await _until(lambda: (gw.last_status["store"] or {}).get("readings_total") == 1, 3.0)
        assert _file(tmp_path)["store"]["readings_total"] == 1   # a change of the counters is written
        assert 2 <= len(calls) <= 4
    finally:
        gw._stopping = True
        await asyncio.wait_for(task, 5)
        await asyncio.to_thread(gw.store.close)
