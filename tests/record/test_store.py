"""gateway.record.store: durability, corrupt/locked database (C17), bounded buffer (C16)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from gateway.model import Quality, Reading, TimeSource
from gateway.record.store import Store
from conftest import sql_rows as rows

T0 = 1_760_000_000.0


def rec(i: int, tag: str = "TT-101", value=None) -> dict:
    return Reading(tag=tag, value=float(i) / 10 if value is None else value, unit="degC", quality=Quality.GOOD,
                   ts=T0 + i, ts_source=TimeSource.SOURCE).to_record()


def test_put_flush_reopen_finds_every_row(tmp_path: Path) -> None:
    db = tmp_path / "buf" / "store.sqlite"
    st = Store(db, commit_interval_s=0.05).open()
    for i in range(1000):
        assert st.put_reading(rec(i))
    st.put_reading(Reading.bad("PT-7", "bar", "exception 02 illegal data address", ts=T0))
    st.put_reading(Reading(tag="XS-1", value=True, unit="", quality=Quality.GOOD, ts=T0))
    st.put_reading(Reading(tag="LT-3", value=7, unit="m", quality=Quality.UNCERTAIN, ts=T0, reason="stale"))
    st.put_event({"kind": "alarm", "tag": "GT-1", "state": "unack_active", "ts": "2025-10-09T08:53:20.000Z"})
    assert st.flush(10)
    st.close()
    st.close()  # idempotent

    st = Store(db).open()
    try:
        s = st.stats()
        assert s["readings_total"] == 1003 and s["readings_unsent"] == 1003
        assert s["oldest_unsent_ts"] == "2025-10-09T08:53:20.000Z"
        assert s["batches_unacked"] == 0 and s["last_acked_seq"] is None and s["dropped"] == 0
    finally:
        st.close()
    got = rows(db, "SELECT tag, value, unit, quality, reason, ts, ts_source FROM readings ORDER BY id")
    assert got[0] == ("TT-101", "0.0", "degC", "good", None, "2025-10-09T08:53:20.000Z", "source")
    assert got[999][1] == "99.9"
    assert got[1000] == ("PT-7", "null", "bar", "bad", "exception 02 illegal data address",
                         "2025-10-09T08:53:20.000Z", "local")
    assert json.loads(got[1001][1]) is True and json.loads(got[1002][1]) == 7
    ev = rows(db, "SELECT kind, data FROM events")
    assert ev[0][0] == "alarm" and json.loads(ev[0][1])["tag"] == "GT-1"
    assert rows(db, "PRAGMA journal_mode")[0][0] == "wal"


def test_commit_interval_bounds_what_is_uncommitted(tmp_path: Path) -> None:
    """Without flush(), a queued reading is committed within about one commit interval."""
    db = tmp_path / "s.sqlite"
    st = Store(db, commit_interval_s=0.2).open()
    try:
        st.put_reading(rec(1))
        deadline = time.monotonic() + 2.0
        while not rows(db, "SELECT count(*) FROM readings")[0][0]:
            assert time.monotonic() < deadline, "reading not committed within 2 s"
            time.sleep(0.02)
    finally:
        st.close()


def test_C17_corrupt_database_moved_aside(tmp_path: Path) -> None:
    db = tmp_path / "store.sqlite"
    st = Store(db, commit_interval_s=0.05).open()
    for i in range(3000):
        st.put_reading(rec(i))
    assert st.flush(10)
    st.close()
    page = rows(db, "PRAGMA page_size")[0][0]
    assert not Path(str(db) + "-wal").exists() or Path(str(db) + "-wal").stat().st_size == 0
    with open(db, "r+b") as f:          # overwrite page 2 with random bytes
        f.seek(page)
        f.write(os.urandom(page))

    st = Store(db, commit_interval_s=0.05).open()
    try:
        assert st.moved_aside is not None
        assert st.moved_aside.name.startswith("store.sqlite.corrupt-") and st.moved_aside.exists()
        assert st.put_reading(rec(1))          # the fresh store works
        assert st.flush(10)
        s = st.stats()
        assert s["readings_total"] == 1
    finally:
        st.close()
    ev = [json.loads(d) for (d,) in rows(db, "SELECT data FROM events")]
    assert [e["kind"] for e in ev] == ["store_corrupt"]
    assert ev[0]["severity"] == "alarm" and ev[0]["moved_to"] == str(st.moved_aside)
    assert rows(db, "PRAGMA integrity_check") == [("ok",)]


def test_C17_garbage_file_is_moved_aside(tmp_path: Path) -> None:
    db = tmp_path / "store.sqlite"
    db.write_bytes(b"this is not a database" * 100)
    with Store(db) as st:
        assert st.moved_aside is not None
        assert st.moved_aside.read_bytes().startswith(b"this is not")


@pytest.mark.e2e
def test_C17_locked_database_put_never_blocks(tmp_path: Path) -> None:
    """Another connection holds an exclusive lock for 2 s: put_* stays non-blocking,
    nothing is lost once the lock is released (C17a)."""
    db = tmp_path / "store.sqlite"
    st = Store(db, commit_interval_s=0.05, busy_timeout_ms=300).open()
    st.put_reading(rec(0))
    assert st.flush(5)
    locked = threading.Event()

    def hold() -> None:
        conn = sqlite3.connect(db, isolation_level=None)
        conn.execute("BEGIN EXCLUSIVE")
        locked.set()
        time.sleep(2.0)
        conn.execute("COMMIT")
        conn.close()

    t = threading.Thread(target=hold)
    t.start()
    assert locked.wait(5)
    worst = 0.0
    i = 1
    start = time.monotonic()
    while time.monotonic() - start < 1.8:
        t0 = time.perf_counter()
        assert st.put_reading(rec(i))
        if i % 10 == 0:
            assert st.put_event({"kind": "alarm", "n": i})
        worst = max(worst, time.perf_counter() - t0)
        i += 1
        time.sleep(0.001)
    during = rows(db, "SELECT count(*) FROM readings")[0][0]
    assert st.stats()["writer_error"] is not None    # the writer saw the lock
    t.join()
    assert worst < 0.05, f"put_reading took {worst * 1000:.1f} ms while the database was locked"
    assert during == 1
    assert st.flush(10)
    s = st.stats()
    st.close()
    assert s["readings_total"] == i and s["dropped"] == 0 and s["writer_error"] is None
    assert rows(db, "SELECT count(*) FROM events")[0][0] == (i - 1) // 10


def test_C16_queue_overflow_is_counted_and_recorded_as_gap(tmp_path: Path) -> None:
    db = tmp_path / "store.sqlite"
    st = Store(db, commit_interval_s=0.05, queue_max=10, busy_timeout_ms=100).open()
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    try:
        accepted = [st.put_reading(rec(i, tag=f"T{i % 3}")) for i in range(60)]
        time.sleep(0.3)
        accepted += [st.put_reading(rec(i, tag=f"T{i % 3}")) for i in range(60, 100)]
        assert st.put_event({"kind": "trip", "interlock": "IL-1"})   # events have their own queue
    finally:
        conn.execute("COMMIT")
        conn.close()
    assert st.flush(10)
    dropped = accepted.count(False)
    assert dropped >= 60
    s = st.stats()
    st.close()
    assert s["dropped"] == dropped and s["readings_total"] == accepted.count(True)
    gaps = rows(db, "SELECT reason, tags, first_ts, last_ts, count FROM gaps")
    assert sum(g[4] for g in gaps) == dropped and {g[0] for g in gaps} == {"queue_overflow"}
    assert set(json.loads(gaps[0][1])) <= {"T0", "T1", "T2"}
    kinds = [k for (k,) in rows(db, "SELECT kind FROM events")]
    assert kinds.count("buffer_overflow") == 1 and "trip" in kinds


def test_C16_max_bytes_drops_oldest_telemetry_first(tmp_path: Path) -> None:
    db = tmp_path / "store.sqlite"
    cap = 300_000
    st = Store(db, commit_interval_s=0.05, max_bytes=cap).open()
    st.put_event({"kind": "trip", "interlock": "IL-7", "ts": "2025-10-09T08:00:00.000Z"})
    n = 0
    for _ in range(12):
        for _ in range(2000):
            st.put_reading(rec(n, tag=f"GT-{n % 10:02d}"))
            n += 1
        assert st.flush(10)
    s = st.stats()
    st.close()
    size = db.stat().st_size
    assert s["used_bytes"] <= cap * 1.1 and size <= cap * 1.1 + 4096, (s, size)
    assert 0 < s["readings_total"] < n
    assert s["dropped"] == n - s["readings_total"]
    gaps = rows(db, "SELECT reason, first_ts, count FROM gaps ORDER BY id")
    assert {g[0] for g in gaps} == {"retention_drop_oldest"}
    assert sum(g[2] for g in gaps) == s["dropped"] and gaps[0][1] == "2025-10-09T08:53:20.000Z"
    # the newest readings are kept, the oldest went
    kept = rows(db, "SELECT min(ts), max(ts) FROM readings")[0]
    assert kept[1] == rec(n - 1)["ts"] and kept[0] > rec(0)["ts"]
    kinds = [k for (k,) in rows(db, "SELECT kind FROM events")]
    assert "trip" in kinds and kinds.count("buffer_overflow") == 1


WRITER = textwrap.dedent("""
    import sys, time
    from gateway.record.store import Store
    st = Store(sys.argv[1], commit_interval_s=0.02).open()
    i = 0
    print("ready", flush=True)
    while True:
        for _ in range(200):
            st.put_reading({"tag": "FT-1", "value": i, "unit": "m3/h", "quality": "good",
                            "reason": None, "ts": "2025-10-09T08:53:20.000Z", "ts_source": "local"})
            i += 1
        time.sleep(0.002)
""")


@pytest.mark.e2e
def test_C17_sigkill_during_write_burst_keeps_database_intact(tmp_path: Path) -> None:
    db = tmp_path / "store.sqlite"
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    last = 0
    for run in range(8):
        p = subprocess.Popen([sys.executable, str(script), str(db)], stdout=subprocess.PIPE, env=env)
        assert p.stdout is not None and p.stdout.readline().strip() == b"ready"
        time.sleep(0.15 + 0.03 * run)
        p.send_signal(signal.SIGKILL)
        p.wait(10)
        p.stdout.close()
        assert rows(db, "PRAGMA integrity_check") == [("ok",)], f"run {run}"
        count = rows(db, "SELECT count(*) FROM readings")[0][0]
        assert count > last, f"run {run}: nothing committed"
        last = count
    with Store(db) as st:
        assert st.moved_aside is None


def test_R3_unserialisable_record_becomes_a_gap_and_flush_completes(tmp_path: Path) -> None:
    """A record json cannot serialise (circular value, non-string keys) or SQLite cannot bind must not
    kill the writer nor lose its neighbours: it becomes an 'unserialisable' gap row, counters catch up."""
    db = tmp_path / "store.sqlite"
    circular: list = []
    circular.append(circular)
    st = Store(db, commit_interval_s=0.05).open()
    assert st.put_reading(rec(1))
    assert st.put_reading(rec(2, tag="BAD-1", value=circular))
    assert st.put_reading({**rec(3, tag="BAD-2"), "unit": ["not", "bindable"]})
    assert st.put_reading(rec(4))
    assert st.put_event({"kind": "alarm", "payload": {(1, 2): "tuple key"}})
    assert st.put_event({"kind": "trip", "interlock": "IL-1"})
    assert st.flush(5), "flush never completed: records lost in the writer"
    s = st.stats()
    st.close()
    assert [t for (t,) in rows(db, "SELECT tag FROM readings ORDER BY id")] == ["TT-101", "TT-101"]
    assert [k for (k,) in rows(db, "SELECT kind FROM events")] == ["trip"]
    gaps = {r: (json.loads(t), c) for r, t, c in rows(db, "SELECT reason, tags, count FROM gaps")}
    assert gaps == {"unserialisable": (["BAD-1", "BAD-2"], 2), "unserialisable_events": (["alarm"], 1)}
    assert s["dropped"] == 3 and s["queue_depth"] == 0


@pytest.mark.e2e
def test_R3_writer_restart_keeps_the_records_it_had_dequeued(tmp_path: Path) -> None:
    """A non-sqlite3 exception in the writer restarts it; the records it held are committed after the
    restart (not lost without a gap row), so flush() completes."""
    db = tmp_path / "store.sqlite"
    st = Store(db, commit_interval_s=0.05, max_bytes=10**9).open()
    real, calls = st._retention, []

    def fail_once(*a, **kw):
        calls.append(a)
        if len(calls) == 1:
            raise RuntimeError("unexpected")
        return real(*a, **kw)

    st._retention = fail_once
    for i in range(20):
        assert st.put_reading(rec(i))
    assert st.flush(10)
    s = st.stats()
    st.close()
    assert s["readings_total"] == 20 and s["dropped"] == 0 and len(calls) >= 2


E1_CFG = """gateway: {id: site-1, state_dir: %s}
keys: {private_key: k/private.pem}
store:
  path: %s
devices:
  - name: plc
    protocol: modbus_tcp
    host: 127.0.0.1
    port: 1
    poll_interval_ms: 1000
    tags:
      - {name: T1, address: 30001, type: float32}
"""


@pytest.mark.e2e
def test_E1_store_path_that_cannot_be_created_is_one_line_in_run_and_check(tmp_path: Path) -> None:
    import subprocess
    import sys

    from gateway.chain.signing import keygen

    root = Path(__file__).resolve().parents[2]
    keygen(tmp_path / "k")
    f = tmp_path / "g.yaml"
    f.write_text(E1_CFG % ("state", "/proc/hazard-gateway-test/store.sqlite"))
    # run: the safety path starts without the store (docs/design.md, "Record path"); the fault is one line, the store is
    # retried under the system.STORE alarm, and a SIGTERM still ends the run cleanly
    run = subprocess.Popen([sys.executable, "-m", "gateway.cli", "run", "--config", str(f)], stderr=subprocess.PIPE,
                           stdout=subprocess.DEVNULL, text=True, cwd=root)
    try:
        seen: list[str] = []
        deadline = time.monotonic() + 30
        while not any("system.STORE" in ln for ln in seen):
            assert time.monotonic() < deadline and run.poll() is None, seen
            seen.append(run.stderr.readline())
        run.terminate()
        _, rest = run.communicate(timeout=30)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, rest
    err = "".join(seen) + rest
    assert "Traceback" not in err
    line = [ln for ln in err.splitlines() if "/proc/hazard-gateway-test" in ln]
    assert line and "/proc/hazard-gateway-test/store.sqlite: cannot create directory" in line[0], line
    assert "polling, alarms and interlocks start without it" in line[0], line[0]
    chk = subprocess.run([sys.executable, "-m", "gateway.cli", "check", str(f)], capture_output=True, text=True,
                         cwd=root, timeout=60)
    assert chk.returncode == 2 and "Traceback" not in chk.stderr
    assert f"{f}:4:9: store.path: store directory /proc/hazard-gateway-test cannot be created" in chk.stderr
    # a state_dir below a regular file: check names gateway.state_dir at its value
    (tmp_path / "afile").write_text("")
    f.write_text(E1_CFG % (tmp_path / "afile" / "state", "store.sqlite"))
    chk = subprocess.run([sys.executable, "-m", "gateway.cli", "check", str(f)], capture_output=True, text=True,
                         cwd=root, timeout=60)
    assert chk.returncode == 2, chk.stderr
    assert f"{f}:1:34: gateway.state_dir: state_dir {tmp_path / 'afile' / 'state'} cannot be created" in chk.stderr
    f.write_text(E1_CFG % ("fresh", "store.sqlite"))
    chk = subprocess.run([sys.executable, "-m", "gateway.cli", "check", str(f)], capture_output=True, text=True,
                         cwd=root, timeout=60)
    assert chk.returncode == 0, chk.stderr
    assert not (tmp_path / "fresh").exists()          # check probes, it does not create


def test_a_directory_where_the_store_file_should_be_is_refused_not_moved_aside(tmp_path: Path) -> None:
    """A directory at the store's path is no corrupt database: open() refuses it in one line (the gateway's
    record supervisor alarms and retries) and leaves it where it is, rather than renaming it as corrupt."""
    from gateway.record.store import StoreError

    path = tmp_path / "store.sqlite"
    path.mkdir()
    (path / "keep.txt").write_text("someone's files")
    st = Store(path)
    with pytest.raises(StoreError) as err:
        st.open()
    assert str(err.value) == f"{path}: is not a regular file (a directory?); the buffer database cannot be opened there"
    assert (path / "keep.txt").read_text() == "someone's files"
    assert not list(tmp_path.glob("store.sqlite.corrupt-*"))
    st.close()
