"""The 30-day retention floor is hard (C16; SAWS order No. 40 art. 13, docs/domain.md).

At the size cap nothing younger than ``retention_floor_s`` is deleted, whatever ``on_full`` says:
drop_oldest deletes acknowledged batches past the floor, then unsent telemetry past it, then unsent
events past it, and when that is not enough the store stops taking readings (``full``, gap rows,
``full_reason`` for the system.STORE alarm) while events are still recorded. Only a waiver
(``store.retention_floor: {waive: true, reason}``) gives the old drop_oldest back; `check` refuses a
cap that cannot hold the floor, or a retention_days below 30, without one; every gateway start with a
waiver records a ``retention_floor_waived`` event.

Real SQLite files and a real writer thread; the CLI as a subprocess for `check`; an in-process Gateway
for the start event.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

import gateway.record.store as store_mod
from gateway.config import ConfigError, load_config
from gateway.model import Quality, Reading, rfc3339
from gateway.record.store import Store
from conftest import sql_rows as rows

DAY = 86400.0


def reading(i: int, tag: str, ts: float | None = None) -> dict:
    return Reading(tag=tag, value=float(i), unit="degC", quality=Quality.GOOD,
                   ts=time.time() if ts is None else ts).to_record()


# ---------------------------------------------------------------- the store


def test_drop_oldest_keeps_readings_younger_than_the_floor_and_stops_taking_new_ones(tmp_path: Path,
                                                                                      monkeypatch) -> None:
    db = tmp_path / "s.sqlite"
    cap = 300_000
    st = Store(db, commit_interval_s=0.02, max_bytes=cap).open()       # drop_oldest, 30-day floor
    try:
        accepted = refused = i = 0
        while refused < 500 and i < 60_000:
            for _ in range(200):
                if st.put_reading(reading(i, "TT-1")):                  # never blocks: False and counted
                    accepted += 1
                else:
                    refused += 1
                i += 1
            assert st.flush(10)
        assert st.full and refused >= 500, (accepted, refused)
        reason = st.full_reason
        assert isinstance(reason, str) and "\n" not in reason
        assert f"max_bytes={cap}" in reason and "30-day" in reason and "not recorded" in reason
        assert st.put_event({"kind": "trip", "type": "interlock", "interlock": "IL-1"})   # events still go
        assert st.flush(10)
        time.sleep(0.1)
        # nothing stored was deleted: ids 1..accepted, all there
        (n, lo, hi), = rows(db, "SELECT count(*), min(id), max(id) FROM readings")
        assert n == accepted and lo == 1 and hi == accepted
        gaps = rows(db, "SELECT reason, count, tags FROM gaps")
        assert {r for r, _, _ in gaps} == {"store_full_stop_polling"}
        assert sum(c for _, c, _ in gaps) == refused and {json.loads(t)[0] for _, _, t in gaps} == {"TT-1"}
        kinds = [k for k, in rows(db, "SELECT kind FROM events")]
        assert "trip" in kinds and kinds.count("buffer_overflow") == 1
        assert st.stats()["used_bytes"] <= cap * 1.1

        # once the stored readings are past the floor (here: a shorter floor, as a reload would set)
        # they may go, and the store takes readings again under 90 % of the cap
        monkeypatch.setattr(store_mod, "FULL_RETRY_S", 0.0)
        time.sleep(0.3)
        st.retention_floor_s = 0.2
        deadline = time.monotonic() + 10
        while st.full and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not st.full and st.full_reason is None
        assert st.put_reading(reading(i, "TT-1")) and st.flush(10)
        assert "retention_drop_oldest" in {r for r, in rows(db, "SELECT reason FROM gaps")}
    finally:
        st.close()


def test_drop_oldest_frees_acked_then_unsent_telemetry_then_events_past_the_floor_never_younger(
        tmp_path: Path) -> None:
    from gateway.record.batches import Batcher
    from gateway.chain.signing import Signer, keygen

    keygen(tmp_path / "k")
    signer = Signer.from_file(tmp_path / "k" / "private.pem")
    db = tmp_path / "s.sqlite"
    old = time.time() - 40 * DAY
    st = Store(db, commit_interval_s=0.02).open()        # no cap while the old records are set up
    try:
        for i in range(1200):                             # delivered and acknowledged, 40 days ago
            assert st.put_reading(reading(i, "OLD-A", old + i))
        assert st.flush(10)
        b = Batcher(st, signer, "gw", lambda: "c", max_readings=200)
        while (batch := b.next_batch()) is not None:
            b.mark_acked(batch.seq)
        c = sqlite3.connect(db)
        c.execute("UPDATE batches SET created_at=?", (rfc3339(old + 2000),))
        c.commit()
        c.close()
        for i in range(1200):                             # never sent, 40 days old
            assert st.put_reading(reading(i, "OLD-U", old + 3000 + i))
        for i in range(200):
            assert st.put_event({"kind": "alarm", "id": f"OLD-{i}", "ts": rfc3339(old + 5000 + i)})
        assert st.flush(10)
        n_acked = rows(db, "SELECT count(*) FROM batches")[0][0]
        assert n_acked >= 6
        st.max_bytes = int(st.stats()["used_bytes"] * 1.25)     # the cap, as a reload would set it

        young = refused = i = 0
        seen = []
        while (not st.full or refused < 200) and i < 100_000:
            for _ in range(200):
                if st.put_reading(reading(i, "NEW")):
                    young += 1
                else:
                    refused += 1
                i += 1
            assert st.flush(10)
            acked = rows(db, "SELECT count(*) FROM batches")[0][0]
            (unsent,), = rows(db, "SELECT count(*) FROM readings WHERE tag='OLD-U'")
            (events,), = rows(db, "SELECT count(*) FROM events WHERE kind='alarm'")
            (new,), = rows(db, "SELECT count(*) FROM readings WHERE tag='NEW'")
            seen.append((acked, unsent, events, st.full))
            assert new == young, "a reading younger than the floor was deleted"
            if unsent < 1200:       # unsent telemetry only once the acked batches that may go are gone
                assert acked <= 1, seen[-3:]   # (the newest batch stays: the next batch's prev)
            if events < 200:        # events only once no old unsent telemetry is left
                assert unsent == 0, seen[-3:]
            if st.full:             # refusing readings only once nothing past the floor is left
                assert acked <= 1 and unsent == 0 and events == 0, seen[-3:]
        assert st.full and refused >= 200, seen[-3:]
        assert seen[0][:3] == (n_acked, 1200, 200)            # the flood started below the cap
        assert st.put_event({"kind": "trip", "type": "interlock"}) and st.flush(10)   # commits the gap row too
        reasons = {r for r, in rows(db, "SELECT reason FROM gaps")}
        assert {"retention_drop_oldest", "retention_drop_oldest_events", "store_full_stop_polling"} <= reasons
    finally:
        st.close()


def test_with_the_floor_waived_drop_oldest_deletes_younger_readings_as_before(tmp_path: Path) -> None:
    db = tmp_path / "s.sqlite"
    cap = 300_000
    st = Store(db, commit_interval_s=0.02, max_bytes=cap, floor_waived=True).open()
    try:
        n = 0
        for _ in range(12):
            for _ in range(2000):
                assert st.put_reading(reading(n, f"GT-{n % 10:02d}"))     # never refused
                n += 1
            assert st.flush(10)
        s = st.stats()
        assert not st.full and st.full_reason is None
    finally:
        st.close()
    assert s["used_bytes"] <= cap * 1.1 and 0 < s["readings_total"] < n
    assert {r for r, in rows(db, "SELECT reason FROM gaps")} == {"retention_drop_oldest"}
    kept = rows(db, "SELECT min(value), max(value) FROM readings")[0]
    assert float(kept[1]) == n - 1 and float(kept[0]) > 0          # the newest kept, the oldest (young) went


# ---------------------------------------------------------------- check


CFG = """gateway: {id: site-1, state_dir: state}
keys: {private_key: k/private.pem}
store:
  max_bytes: %d
  retention_days: %s
%sdevices:
  - name: plc
    protocol: modbus_tcp
    host: 127.0.0.1
    port: 1
    poll_interval_ms: 1000
    tags:
%s"""

SMALL = 50 * 1024 * 1024      # 10 tags at 1 Hz for 30 days need ~2.6 GB
WAIVER = '  retention_floor: {waive: true, reason: "lab bench: simulated devices, no site records"}\n'


def write_cfg(tmp_path: Path, max_bytes: int = SMALL, days: str = "30", floor: str = "") -> Path:
    from gateway.chain.signing import keygen
    if not (tmp_path / "k").exists():
        keygen(tmp_path / "k")
    tags = "".join(f"      - {{name: T{i}, address: {30001 + 2 * i}, type: float32}}\n" for i in range(10))
    f = tmp_path / "g.yaml"
    f.write_text(CFG % (max_bytes, days, floor, tags))
    return f


def check(f: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway.cli", "check", str(f)], capture_output=True, text=True)


@pytest.mark.e2e
def test_check_refuses_a_cap_that_cannot_hold_the_floor_unless_waived(tmp_path: Path) -> None:
    f = write_cfg(tmp_path)
    with pytest.raises(ConfigError) as ei:
        load_config(f)
    [p] = ei.value.problems
    assert (p.line, p.col, p.path, p.warning) == (4, 3, "store.max_bytes", False)
    assert "retention_days 30" in p.message and "retention_floor" in p.message
    r = check(f)
    assert r.returncode == 2 and f"{f}:4:3: store.max_bytes: max_bytes {SMALL} holds about" in r.stderr
    assert "Traceback" not in r.stderr
    f = write_cfg(tmp_path, floor=WAIVER)                     # waived with a reason: the old warning
    r = check(f)
    assert r.returncode == 0, r.stderr
    assert f"{f}:4:3: warning: store.max_bytes:" in r.stderr
    cfg = load_config(f)
    assert cfg.model.store.retention_floor.waive and cfg.model.store.retention_floor.reason.startswith("lab bench")


@pytest.mark.e2e
@pytest.mark.parametrize("floor, at, text", [
    ("  retention_floor: {waive: true}\n", "retention_floor", "needs a reason"),
    ('  retention_floor: {waive: true, reason: "  "}\n', "retention_floor", "needs a reason"),
    ("  retention_floor:\n    waive: true\n", "retention_floor", "needs a reason"),
    ('  retention_floor: {waive: true, reason: "lab", until: 2027-01-01}\n', "until", "unknown key"),
    ('  retention_floor: {waive: yes please, reason: "lab"}\n', "yes please", "valid boolean"),
])
def test_a_waiver_needs_a_reason_and_nothing_else(tmp_path: Path, floor: str, at: str, text: str) -> None:
    where = (6, floor.index(at) + 1)                          # FILE:LINE:COL of the key (or bad value)
    f = write_cfg(tmp_path, max_bytes=4 * 1024 ** 3, floor=floor)
    with pytest.raises(ConfigError) as ei:
        load_config(f)
    hit = [p for p in ei.value.problems if (p.line, p.col) == where and text in p.message]
    assert hit and hit[0].path.startswith("store.retention_floor"), str(ei.value)
    r = check(f)
    assert r.returncode == 2 and f"{f}:{where[0]}:{where[1]}: store.retention_floor" in r.stderr, r.stderr


@pytest.mark.e2e
def test_check_refuses_retention_days_below_30_unless_waived(tmp_path: Path) -> None:
    f = write_cfg(tmp_path, max_bytes=4 * 1024 ** 3, days="10")      # the cap holds 10 days easily
    with pytest.raises(ConfigError) as ei:
        load_config(f)
    [p] = ei.value.problems
    assert (p.line, p.col, p.path) == (5, 19, "store.retention_days") and "30-day floor" in p.message
    r = check(f)
    assert r.returncode == 2 and f"{f}:5:19: store.retention_days: retention_days 10 is below" in r.stderr
    f = write_cfg(tmp_path, max_bytes=4 * 1024 ** 3, days="10", floor=WAIVER)
    assert load_config(f).warnings == []
    assert check(f).returncode == 0


# ---------------------------------------------------------------- the waiver is on the record


@pytest.mark.e2e
async def test_each_gateway_start_with_a_waiver_records_a_retention_floor_waived_event(tmp_path: Path) -> None:
    from gateway.runtime.gateway import Gateway

    f = write_cfg(tmp_path, floor=WAIVER)
    db = tmp_path / "state" / "store.sqlite"

    async def start_and_stop(cfg_path: Path) -> Gateway:
        gw = Gateway(load_config(cfg_path))
        stop = asyncio.Event()
        task = asyncio.create_task(gw.run(stop))
        await asyncio.sleep(0.5)
        stop.set()
        await asyncio.wait_for(task, 30)
        return gw

    def waived() -> list[dict]:
        events = [json.loads(d) for d, in rows(db, "SELECT data FROM events ORDER BY id")]
        return [e for e in events if e.get("event") == "retention_floor_waived"]

    gw = await start_and_stop(f)
    assert gw.store.floor_waived is True
    [ev] = waived()
    assert ev["type"] == "store" and ev["reason"] == "lab bench: simulated devices, no site records"
    assert ev["retention_days"] == 30 and ev["max_bytes"] == SMALL and ev["gateway_id"] == "site-1"
    await start_and_stop(f)
    assert len(waived()) == 2                                          # one per start
    f = write_cfg(tmp_path, max_bytes=4 * 1024 ** 3)                   # no waiver: no event
    gw = await start_and_stop(f)
    assert gw.store.floor_waived is False and len(waived()) == 2
