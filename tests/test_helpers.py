"""The shared test helpers of tests/conftest.py do what the copies they replaced did."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from gateway.config import load_config
from conftest import free_port, sql_rows, tank_overfill_config, wait_exit, wait_for


async def test_wait_for_returns_the_first_truthy_value_of_a_plain_or_an_async_predicate():
    n = iter(range(10))
    assert await wait_for(lambda: next(n) >= 3 and "ok", 5, "three polls") == "ok"

    async def later():
        return {"x": 1}
    assert await wait_for(lambda: later(), 5) == {"x": 1}
    assert await wait_for(lambda: 7, 5, in_thread=True) == 7


async def test_wait_for_fails_with_what_it_waited_for_the_last_value_and_the_detail():
    t0 = time.monotonic()
    with pytest.raises(AssertionError) as e:
        await wait_for(lambda: [], 0.1, "the moon", detail=lambda: "sky clear")
    assert 0.1 <= time.monotonic() - t0 < 2
    assert str(e.value) == "timed out after 0.1 s waiting for the moon (last: []); sky clear"


async def test_wait_for_stops_at_once_when_the_daemon_exited(tmp_path):
    log = tmp_path / "daemon.log"
    log.write_text("boom: the last lines of the log\n")
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    proc.wait(30)
    t0 = time.monotonic()
    with pytest.raises(AssertionError) as e:
        await wait_for(lambda: False, 60, "READY", proc=proc, log=log)
    assert time.monotonic() - t0 < 5
    assert str(e.value).startswith("daemon exited (3) while waiting for READY\n") and "boom" in str(e.value)
    assert await wait_exit(proc, 1) == 3


def test_free_port_is_free_and_sql_rows_closes(tmp_path):
    import socket
    import sqlite3

    with socket.socket() as s:
        s.bind(("127.0.0.1", free_port()))     # nobody holds it
    db = tmp_path / "x.sqlite"
    with sqlite3.connect(db) as c:
        c.execute("CREATE TABLE t (a)")
        c.execute("INSERT INTO t VALUES (?)", (1,))
    c.close()
    assert sql_rows(db, "SELECT a FROM t WHERE a = ?", (1,)) == [(1,)]


def test_tank_overfill_config_is_a_valid_config_and_keeps_its_lines(tmp_path):
    text = tank_overfill_config(5020, gateway_id="t", store="{max_bytes: 1099511627776}", extra="",
                                heartbeat="heartbeat: {address: 40101}", timeout_ms=200, vote="1oo1",
                                alarms="{H: 10.5, HH: {setpoint: 11.0, deadband: 0.1, latching: true}}")
    lines = text.splitlines()
    assert lines[2] == "store: {max_bytes: 1099511627776}" and lines[3] == ""          # extra: line 4, blank
    assert lines[10] == "    timeout_ms: 200" and lines[11] == "    heartbeat: {address: 40101}"
    assert lines[13].endswith("unit: m,") and lines[14].startswith("         alarms: {H: 10.5")  # long: wrapped
    (tmp_path / "gw.yaml").write_text(text)
    cfg = load_config(tmp_path / "gw.yaml")
    assert [i.name for i in cfg.model.interlocks] == ["T101_overfill"]
    short = tank_overfill_config(1, gateway_id="t", store="{max_bytes: 1}", store_at_end=True).splitlines()
    assert short[-1] == "store: {max_bytes: 1}" and short[9].endswith("alarms: {HH: 11.0}}")
