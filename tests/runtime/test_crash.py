"""Crash test (docs/design.md, Record path): SIGKILL the gateway daemon 30 times at random moments.

The daemon (`python -m gateway.cli run`) polls the HIL tank PLC (hil.tank_plc, Modbus TCP,
10 tags at 10 Hz, in this process) and uploads over HTTPS to the reference receiver
(`python -m gateway.cli receiver`, a child process) that is stopped, restarted and bounced
along the way. After each kill the store must pass PRAGMA integrity_check; after a final
clean run that drains, the receiver must hold every reading of the gateway's store exactly
once and in store order, seq must run 1..n without a gap, and `verify` must accept the
exported chain.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from hil.rig import (GatewayProc, ReceiverProc, drained, integrity, make_keys, payload, receiver_batches,
                     receiver_readings, store_readings, tank_plc_config)
from hil.tank_plc import TankPlc

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]   # e2e: daemons or servers, seconds of waiting

KILLS = 30


async def test_sigkill_30_times_while_the_receiver_bounces(tmp_path: Path) -> None:
    seed = int(os.environ.get("CRASH_SEED", time.time()))
    rng = random.Random(seed)
    print(f"CRASH_SEED={seed}")
    plc = TankPlc(seed=seed)
    await plc.start()
    key, trust = make_keys(tmp_path)
    rx = ReceiverProc(tmp_path / "rx", trust)
    await asyncio.to_thread(rx.start)
    state = tmp_path / "state"
    cfg = tank_plc_config(tmp_path / "gw.yaml", gateway_id="crash-gw", plc_port=plc.port, state_dir=state,
                          key_file=key, receiver_url=rx.url, ca_file=rx.cert, poll_ms=100,
                          commit_interval_ms=100, batch_max_readings=100, interval_ms=100)
    gw = GatewayProc(cfg, tmp_path / "gateway.log")
    db = state / "store.sqlite"
    checks: list[str] = []
    try:
        for i in range(KILLS):
            await asyncio.to_thread(gw.start)
            t_up = time.monotonic() + 60
            while i == 0 and not db.exists():   # the first run creates the store; a loaded machine starts slowly
                assert gw.alive() and time.monotonic() < t_up, (tmp_path / "gateway.log").read_text()[-3000:]
                await asyncio.sleep(0.05)
            await asyncio.sleep(rng.uniform(0.7, 2.8))
            await asyncio.to_thread(gw.kill)
            if db.exists():
                checks.append(await asyncio.to_thread(integrity, db))
                assert checks[-1] == "ok", f"kill {i + 1} (seed {seed}): {checks[-1]}"
            # the receiver: down for two runs, back; bounced now and then
            if i % 7 == 2:
                await asyncio.to_thread(rx.stop)
            elif i % 7 == 4:
                await asyncio.to_thread(rx.start)
            elif i % 5 == 0 and rx.proc is not None:
                await asyncio.to_thread(rx.bounce)
        if rx.proc is None:
            await asyncio.to_thread(rx.start)
        # final clean run: drain, then SIGTERM (exit 0)
        (state / "status.json").unlink(missing_ok=True)
        await asyncio.to_thread(gw.start)
        deadline = time.monotonic() + 60
        while not drained(state):
            assert gw.alive(), (tmp_path / "gateway.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the backlog did not drain within 60 s"
            await asyncio.sleep(0.2)
        assert await asyncio.to_thread(gw.term) == 0
    finally:
        if gw.alive():
            gw.kill()
        rx.stop()
        await plc.stop()
    assert len(checks) == KILLS and set(checks) == {"ok"}
    assert await asyncio.to_thread(integrity, db) == "ok"
    stored = store_readings(db)
    got = receiver_readings(rx.store)
    assert len(stored) > 600
    dup = [k for k, n in Counter(got).items() if n > 1]
    assert not dup, f"{len(dup)} readings arrived twice, e.g. {dup[:3]}"
    missing = Counter(stored) - Counter(got)
    assert not missing, f"{sum(missing.values())} stored readings never arrived, e.g. {list(missing)[:3]}"
    extra = Counter(got) - Counter(stored)
    assert not extra, f"{sum(extra.values())} received readings are not in the store (seed {seed}), e.g. {list(extra)[:3]}"
    # exactly once, oldest first: batches carry store rows in id order, so the receiver's (seq, position)
    # order must be the store's id order itself (no sorting by ts, which ties within a poll)
    if got != stored:
        k = next(i for i, (a, b) in enumerate(zip(got, stored)) if a != b)
        pytest.fail(f"receiver order differs from store id order at reading {k} (seed {seed}):\n"
                    f"  store:    {stored[max(0, k - 2):k + 3]}\n  receiver: {got[max(0, k - 2):k + 3]}")
    seqs = [payload(t)["seq"] for t in receiver_batches(rx.store)]
    assert seqs == list(range(1, len(seqs) + 1))
    out = tmp_path / "export"
    exp = subprocess.run([sys.executable, "-m", "gateway.cli", "receiver", "export", "--store", str(rx.store),
                          "--out", str(out)], capture_output=True, text=True)
    assert exp.returncode == 0, exp.stderr
    ver = subprocess.run([sys.executable, "-m", "gateway.cli", "verify", "--trust", str(trust),
                          *sorted(map(str, out.glob("*.jws")))], capture_output=True, text=True)
    assert ver.returncode == 0, ver.stdout[-2000:] + ver.stderr[-2000:]
    rx.close()
