"""A SIGHUP reload of a hostile config file is refused in bounded time and memory, and the gateway goes
on with its old config.

A reload of an alias bomb once grew the daemon to gigabytes: reload_from_file (what the daemon runs on
SIGHUP) must go through the bounded YAML loader (gateway.yamlload) like `check` and `run`. The
gateway runs for real against the simulated tank PLC; nothing is mocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import tracemalloc
from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.runtime.gateway import Gateway
from gateway.runtime.reload import reload_from_file
from gateway.chain.signing import Signer, keygen
from hil.tank_plc import TankPlc
from conftest import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]   # e2e: daemons or servers, seconds of waiting

LOAD_BOUND_S = 10        # the refused reload returns well within this (it takes milliseconds)
PEAK_BYTES = 64 << 20    # memory the refused reload may allocate (Python heap, tracemalloc)


def config_text(plc_port: int) -> str:
    return f"""gateway: {{id: reload-bounded, state_dir: state}}
keys: {{private_key: keys/private.pem}}
store: {{path: store.sqlite, commit_interval_ms: 50}}
devices:
  - name: tank_plc
    protocol: modbus_tcp
    host: 127.0.0.1
    port: {plc_port}
    poll_interval_ms: 250
    timeout_ms: 500
    tags:
      - {{name: T101.level, address: 30001, type: float32, unit: m, alarms: {{HH: {{setpoint: 11.0, deadband: 0.1}}}}}}
"""


#: appended to the running config: 9 levels of 9 aliases (10**9 strings once expanded)
BOMB = 'x-l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n' + "".join(
    f"x-l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 10))


@pytest.mark.parametrize("hostile", ["bomb", "self_alias"])
async def test_a_reload_of_a_hostile_file_is_one_line_and_keeps_the_old_config(tmp_path: Path, caplog, hostile):
    caplog.set_level(logging.INFO, logger="hazard_gateway")
    plc = TankPlc()
    await plc.start()
    keygen(tmp_path / "keys")
    path = tmp_path / "gw.yaml"
    good = config_text(plc.port)
    path.write_text(good)
    gw = Gateway(load_config(path), Signer.from_file(tmp_path / "keys" / "private.pem"))
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(gw.run(stop, ready=ready.set))
    try:
        await asyncio.wait_for(ready.wait(), 10)
        await wait_for(lambda: "T101.level" in gw.values and gw.values["T101.level"].usable, 10, "first readings")
        old_cfg, old_hash = gw.cfg, gw.cfg.config_hash
        if hostile == "bomb":
            path.write_text(good + BOMB + "x-boom: *l9\n")
            where, words = f"{path}:18:17: ", "nodes with aliases expanded"
        else:  # the root mapping contains itself: every walk of it would recurse for ever
            path.write_text("&root\n" + good + "x-loop: *root\n")
            where, words = f"{path}:14:9: ", "self-referencing alias"
        caplog.clear()
        tracemalloc.start()
        try:
            t0 = time.monotonic()
            applied = await asyncio.wait_for(reload_from_file(gw), LOAD_BOUND_S)
            took = time.monotonic() - t0
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert applied is False
        assert peak < PEAK_BYTES, f"the refused reload allocated {peak >> 20} MiB"
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 2, errors
        assert errors[0].startswith(f"SIGHUP: {where}") and words in errors[0] and "\n" not in errors[0], errors
        assert f"still running on config {old_hash[:12]}" in errors[1]
        assert gw.cfg is old_cfg and gw.cfg.config_hash == old_hash
        # and it goes on polling and alarming on the old config
        plc.set_level("T101", 11.5)
        await wait_for(lambda: any(a.tag == "T101.level" and a.kind == "HH" for a in gw.alarms.active()), 5,
                       "the HH alarm of the old config")
        assert took < LOAD_BOUND_S
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 20)
        await plc.stop()


@pytest.mark.parametrize("bad", ["retention_inf", "ca_garbage"])
async def test_a_reload_that_cannot_be_applied_keeps_the_uploader_and_the_next_reload_works(tmp_path: Path, caplog,
                                                                                         bad):
    """Two reloads that once broke a running daemon: ``retention_days: .inf`` (an OverflowError in the
    capacity check) and an uplink.ca_file of garbage (the new uploader failed after the old one was stopped,
    so uploads ended without an alarm). Each is refused with FILE:LINE or the file named, the running
    uploader goes on, and a later good reload is applied."""
    from gateway.regulator.receiver import BackgroundReceiver

    caplog.set_level(logging.INFO, logger="hazard_gateway")
    plc = TankPlc()
    await plc.start()
    kid = keygen(tmp_path / "keys")
    trust = tmp_path / "trust"
    trust.mkdir()
    (trust / f"{kid}.jwk").write_bytes((tmp_path / "keys" / f"{kid}.jwk").read_bytes())
    rx = BackgroundReceiver(tmp_path / "rx", trust)
    rx.start()
    path = tmp_path / "gw.yaml"
    good = config_text(plc.port) + f"uplink: {{url: '{rx.url}/v1/batches', ca_file: '{rx.cafile}', interval_ms: 100}}\n"
    path.write_text(good)
    gw = Gateway(load_config(path), Signer.from_file(tmp_path / "keys" / "private.pem"))
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(gw.run(stop, ready=ready.set))
    try:
        await asyncio.wait_for(ready.wait(), 10)
        await wait_for(lambda: rx.receiver.store.get("reload-bounded", 1) is not None, 20, "the first batch")
        old_fw, old_hash = gw.forwarder, gw.cfg.config_hash
        if bad == "retention_inf":
            path.write_text(good.replace("commit_interval_ms: 50}", "commit_interval_ms: 50, retention_days: .inf}"))
            where = f"{path}:3:"
        else:
            (tmp_path / "garbage.pem").write_bytes(bytes(range(256)) * 12)
            path.write_text(good.replace(str(rx.cafile), str(tmp_path / "garbage.pem")))
            where = "garbage.pem"
        caplog.clear()
        assert await reload_from_file(gw) is False
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert errors and where in errors[0] and "\n" not in errors[0], errors
        assert gw.cfg.config_hash == old_hash and gw.forwarder is old_fw and not old_fw.stopped
        # the running uploader goes on delivering
        seq0 = rx.receiver.store.last_seq("reload-bounded")
        await wait_for(lambda: rx.receiver.store.last_seq("reload-bounded") > seq0 + 1, 10,
                       "uploads after the refused reload")
        # and the next good reload is applied
        path.write_text(good.replace("poll_interval_ms: 250", "poll_interval_ms: 500"))
        caplog.clear()
        assert await reload_from_file(gw) is True, [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert gw.cfg.config_hash != old_hash
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 20)
        rx.stop()
        await plc.stop()
