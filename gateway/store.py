"""The record path's durable buffer: readings, events, gaps and signed batches in SQLite.

Shape of the record path (docs/design.md, "Two paths, never coupled")::

    poll tick --put_reading()/put_event()--> bounded in-memory queues (never wait on SQLite)
              --writer thread, one transaction per commit interval--> SQLite (WAL)
              --Batcher--> batches table (signed JWS) --Forwarder--> receiver --ack--> acked_at

Durability contract (C15, C17c):

* ``put_reading`` / ``put_event`` only append to a bounded ``queue.Queue``; they never
  touch SQLite, so a locked, slow or full disk cannot delay the poll tick or a trip.
  (The daemon's log lines are queued the same way, gateway.logutil, so the poll tick
  waits on no file descriptor at all.)
* A single writer thread drains the queues and commits **at most every
  ``commit_interval_s``** (default 0.5 s) in one transaction. A reading counts as
  taken once that transaction is committed (``stats()["readings_committed"]``; the
  gateway's ``readings_queued`` counts what was only handed to the queue). A SIGKILL
  or a power loss therefore loses at most the readings queued since the last commit: ``commit_interval_s`` worth of
  data (plus, while the database is locked, whatever waits in the queue). The database
  uses ``journal_mode=WAL`` with ``synchronous=FULL`` (SQLite docs "Write-Ahead
  Logging" section 2 and "PRAGMA synchronous": in WAL mode FULL makes every commit
  durable across power loss; NORMAL would keep the file consistent but could roll back
  the last commits).
* When a queue is full the record is dropped, counted (``stats()["dropped"]``) and a
  **gap row** (tags, first/last ts, count, reason) is written, which is itself uploaded
  in the next batch, plus one ``buffer_overflow`` event per episode. Nothing is dropped
  silently (C16). A record that cannot be serialised (json.dumps fails, or SQLite cannot
  bind a field) becomes an ``unserialisable`` gap row (tag, ts, count) in the same commit,
  so one bad record never blocks the others. Records the writer has dequeued stay pending
  on the Store across a restart of the writer thread after an unexpected error.
* ``open()`` runs ``PRAGMA integrity_check``; a corrupt file (and its -wal/-shm) is
  moved aside as ``<name>.corrupt-<UTC timestamp>`` and a fresh store starts with a
  ``store_corrupt`` event (C17b); ``moved_aside`` names the file so the gateway can raise
  an alarm.
* Retention (C16), config ``store.on_full``. Policy ``drop_oldest`` (default): when the used size passes ``max_bytes`` the
  writer frees space in this order: (1) acknowledged batches and their rows, oldest
  first (already delivered; never the newest batch nor the predecessor of the oldest
  unacknowledged one, whose JWS a tombstone's ``prev`` needs; a warning is logged when they are younger than the retention
  floor, 30 days by default per SAWS order No. 40), (2) unsent telemetry, oldest first,
  (3) unsent events, oldest first. (2) and (3) write a gap row and a
  ``buffer_overflow`` event: alarm and trip events are the last thing dropped.
  Policy ``stop_polling``: the time floor is hard. Over ``max_bytes`` only acknowledged
  records older than ``retention_floor_s`` are deleted; when that is not enough, new
  telemetry is refused (``full``; each refused reading is counted in a
  ``store_full_stop_polling`` gap row, one ``buffer_overflow`` alarm per episode) until the
  used size is under 90 % of the cap again. Events are still recorded, and the poll tick
  and the safety path go on: only the *recording* of telemetry stops, never the alarms
  and interlocks. Nothing stored, sent or not, is deleted before it is due.

Tables: ``readings`` (id, tag, value JSON, unit, quality, reason, ts, ts_source,
batch_seq, point: regulator point code), ``events`` (id, kind, ts, data JSON, batch_seq), ``gaps`` (id, reason,
tags JSON, first_ts, last_ts, count, recorded_at, batch_seq), ``batches`` (seq, jws,
created_at, acked_at, dead_letter: reason when the stored jws is a tombstone),
``dead_letters`` (seq, original jws, reason, status, dead_at). ``ts`` columns hold RFC 3339 UTC strings.
"""

from __future__ import annotations

import json
import logging
import math
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from gateway.model import Reading, rfc3339

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS readings (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tag TEXT NOT NULL,
    value TEXT,            -- JSON text (TEXT affinity keeps 0.0 a float)
    unit TEXT,
    quality TEXT NOT NULL,
    reason TEXT,
    ts TEXT NOT NULL,
    ts_source TEXT,
    batch_seq INTEGER NULL,
    point TEXT             -- regulator point code (enterprise + major hazard + tag), or NULL
);
CREATE INDEX IF NOT EXISTS readings_unbatched ON readings(id) WHERE batch_seq IS NULL;
CREATE INDEX IF NOT EXISTS readings_batch ON readings(batch_seq) WHERE batch_seq IS NOT NULL;
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT,
    ts TEXT NOT NULL,
    data TEXT NOT NULL,    -- JSON object
    batch_seq INTEGER NULL
);
CREATE INDEX IF NOT EXISTS events_batch ON events(batch_seq);
CREATE TABLE IF NOT EXISTS gaps (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    reason TEXT NOT NULL,
    tags TEXT NOT NULL,    -- JSON list
    first_ts TEXT,
    last_ts TEXT,
    count INTEGER NOT NULL,
    recorded_at TEXT NOT NULL,
    batch_seq INTEGER NULL
);
CREATE INDEX IF NOT EXISTS gaps_batch ON gaps(batch_seq);
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY,
    jws TEXT NOT NULL,
    created_at TEXT NOT NULL,
    acked_at TEXT NULL,
    dead_letter TEXT NULL
);
CREATE TABLE IF NOT EXISTS dead_letters (
    seq INTEGER PRIMARY KEY,
    jws TEXT NOT NULL,
    reason TEXT NOT NULL,
    status INTEGER NULL,
    dead_at TEXT NOT NULL
);
"""

#: an overflow episode ends after this many seconds without a drop (one alarm per episode, C16)
OVERFLOW_EPISODE_S = 60.0
#: default retention floor: SAWS order No. 40 (2011/2015) keeps electronic records >= 30 days
RETENTION_FLOOR_S = 30 * 86400.0
#: what the writer does at max_bytes (config store.on_full)
ON_FULL_POLICIES = ("drop_oldest", "stop_polling")


class StoreError(OSError):
    """The store cannot be used (cannot create the file, not opened); one line naming the file.

    An OSError, so the CLI (gateway.cli.main) prints it as one line and exits 2 instead of a traceback."""


@dataclass(frozen=True, slots=True)
class PendingRows:
    """Unbatched rows handed to the Batcher, oldest first by id.

    readings: list of (id, Reading.to_record() dict); events: list of (id, event dict);
    gaps: list of (id, gap dict with reason, tags, first_ts, last_ts, count, recorded_at).
    """

    readings: list[tuple[int, dict[str, Any]]]
    events: list[tuple[int, dict[str, Any]]]
    gaps: list[tuple[int, dict[str, Any]]]

    def __bool__(self) -> bool:
        return bool(self.readings or self.events or self.gaps)


class _Drops:
    """Accumulates dropped records between two commits (tags, time range, count)."""

    __slots__ = ("count", "tags", "first_ts", "last_ts")

    def __init__(self) -> None:
        self.count = 0
        self.tags: set[str] = set()
        self.first_ts: str | None = None
        self.last_ts: str | None = None

    def add(self, tag: str, ts: str | None) -> None:
        self.count += 1
        if len(self.tags) < 1000:
            self.tags.add(tag)
        if ts is not None:
            if self.first_ts is None or ts < self.first_ts:
                self.first_ts = ts
            if self.last_ts is None or ts > self.last_ts:
                self.last_ts = ts


def _utc_now() -> str:
    return rfc3339(time.time())


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass


def _reading_row(rec: dict[str, Any]) -> tuple:
    return _bindable((str(rec.get("tag")), json.dumps(rec.get("value"), default=str), rec.get("unit"),
                      str(rec.get("quality", "bad")), rec.get("reason"), str(rec.get("ts") or _utc_now()),
                      rec.get("ts_source"), rec.get("point")))


def _event_row(ev: dict[str, Any]) -> tuple:
    kind = ev.get("kind")
    return _bindable((None if kind is None else str(kind), str(ev["ts"]), json.dumps(ev, default=str)))


def _bindable(row: tuple) -> tuple:
    """``row`` if SQLite can bind every value as the column expects (None, str, int in 64 bits,
    float; "Python types" in the sqlite3 docs), else TypeError: such a record is turned into a
    gap row by the writer instead of failing the whole commit again and again."""
    for v in row:
        if v is None or isinstance(v, (str, float)):
            continue
        if isinstance(v, int) and not isinstance(v, bool) and -2**63 <= v < 2**63:
            continue
        raise TypeError(f"cannot store a {type(v).__name__} value")
    return row


class Store:
    """The SQLite buffer of the record path.

    path: database file (created with its directory). commit_interval_s: the writer
    commits at most this often (seconds); it bounds what a SIGKILL or power loss costs.
    queue_max: bound of the in-memory reading queue (records); events have their own
    queue of ``event_queue_max`` so a telemetry flood cannot push out an alarm.
    max_bytes: size cap of the used database pages (None: unbounded), policy drop_oldest.
    busy_timeout_ms: how long one SQLite statement waits for another connection's lock.
    retention_floor_s: acked records younger than this are only deleted under the size
    cap, with a warning (SAWS order No. 40: records kept at least 30 days).

    Thread model: ``put_*`` are called from the asyncio loop (the poll tick) and never
    wait on SQLite. The writer thread owns one connection; the Batcher/Forwarder and
    ``stats()`` use a second connection under a lock (call them off the event loop,
    e.g. ``asyncio.to_thread``).
    """

    def __init__(self, path: str | os.PathLike[str], commit_interval_s: float = 0.5,
                 queue_max: int = 100_000, *, max_bytes: int | None = None,
                 event_queue_max: int = 10_000, busy_timeout_ms: int = 2000,
                 retention_floor_s: float = RETENTION_FLOOR_S, on_full: str = "drop_oldest") -> None:
        if commit_interval_s <= 0:
            raise ValueError("commit_interval_s must be > 0")
        if queue_max < 1 or event_queue_max < 1:
            raise ValueError("queue sizes must be >= 1")
        if on_full not in ON_FULL_POLICIES:
            raise ValueError(f"on_full must be one of {', '.join(ON_FULL_POLICIES)}, not {on_full!r}")
        self.on_full = on_full
        #: stop_polling: True while the store is full and new telemetry is refused (gap rows)
        self.full = False
        self.path = Path(path)
        self.commit_interval_s = float(commit_interval_s)
        self.queue_max = int(queue_max)
        self.max_bytes = max_bytes
        self.busy_timeout_ms = int(busy_timeout_ms)
        self.retention_floor_s = float(retention_floor_s)
        #: set by open() when a corrupt database was moved aside (C17b)
        self.moved_aside: Path | None = None
        self._rq: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=self.queue_max)
        self._eq: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=int(event_queue_max))
        self._count_lock = threading.Lock()
        self._drops = _Drops()           # readings dropped since last commit
        self._full_drops = _Drops()      # readings refused since last commit (stop_polling, store full)
        self._ev_drops = _Drops()        # events dropped since last commit
        self._dropped_total = 0
        self._in = [0, 0]                # enqueued (readings, events)
        self._done = [0, 0]              # committed (readings, events)
        self._done_cv = threading.Condition()
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._wconn: sqlite3.Connection | None = None
        self._bconn: sqlite3.Connection | None = None
        self._block = threading.RLock()
        self._last_drop_mono: float | None = None
        self._last_lock_log = 0.0
        self._writer_error: str | None = None
        # records dequeued by the writer and not yet committed: on self, so a writer restart after an
        # unexpected exception resumes them instead of losing them (flush() waits for their count)
        self._pending_r: list[dict[str, Any]] = []
        self._pending_e: list[dict[str, Any]] = []
        self._committed_readings = 0     # readings rows inserted since open (what counts as taken)
        self._drop_log_mono = -1e9
        self._drop_log_n = 0

    # ------------------------------------------------------------------ open / close
    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                               timeout=self.busy_timeout_ms / 1000)
        conn.execute(f"PRAGMA busy_timeout={self.busy_timeout_ms}")
        return conn

    def open(self) -> "Store":
        """Open (or create) the database, check it, start the writer thread.

        Runs ``PRAGMA integrity_check`` (SQLite docs, "PRAGMA integrity_check"); when it
        reports anything but "ok", or the file is not a database, the file and its -wal /
        -shm are renamed ``<name>.corrupt-<YYYYmmddTHHMMSSZ>``, a fresh database is
        created and a ``store_corrupt`` event is queued (C17b). Raises StoreError (one
        line with the path) when the directory or file cannot be created. Returns self.
        """
        if self._thread is not None:
            return self
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"{self.path}: cannot create directory: {e.strerror}") from None
        problem = self._check_existing()
        if problem is not None:
            self._move_aside(problem)
        try:
            self._wconn = self._connect()
            mode = self._wconn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                log.warning("%s: journal_mode is %s, not wal", self.path, mode)
            self._wconn.execute("PRAGMA synchronous=FULL")
            # after a checkpoint the WAL is truncated to 4 MiB (counts against the C16 margin)
            self._wconn.execute("PRAGMA journal_size_limit=4194304")
            self._wconn.executescript(SCHEMA)
            cols = {r[1] for r in self._wconn.execute("PRAGMA table_info(readings)")}
            if "point" not in cols:  # a store made before point codes were kept: add the column in place
                self._wconn.execute("ALTER TABLE readings ADD COLUMN point TEXT")
            self._bconn = self._connect()
            self._bconn.execute("PRAGMA synchronous=FULL")
        except sqlite3.Error as e:
            raise StoreError(f"{self.path}: cannot open buffer database: {e}") from None
        self._stopping = False
        self._thread = threading.Thread(target=self._writer, name="store-writer", daemon=True)
        self._thread.start()
        return self

    def _check_existing(self) -> str | None:
        """None when the file is absent or passes the integrity check, else the reason."""
        if not self.path.exists():
            return None
        conn = None
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=self.busy_timeout_ms / 1000)
            rows = conn.execute("PRAGMA integrity_check").fetchall()
            if [r[0] for r in rows] != ["ok"]:
                return "; ".join(str(r[0]) for r in rows[:3])
            return None
        except sqlite3.DatabaseError as e:
            if "locked" in str(e) or "busy" in str(e):
                # a lock is not corruption: open normally, writes will wait (C17a)
                log.warning("%s: integrity check skipped, database is locked", self.path)
                return None
            return str(e)
        finally:
            if conn is not None:
                conn.close()

    def _move_aside(self, problem: str) -> None:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        n = 1
        while target.exists():
            n += 1
            target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{n}")
        os.replace(self.path, target)
        for suffix in ("-wal", "-shm"):
            side = self.path.with_name(self.path.name + suffix)
            if side.exists():
                os.replace(side, target.with_name(target.name + suffix))
        self.moved_aside = target
        log.error("%s: integrity check failed (%s); moved aside to %s, starting a fresh buffer",
                  self.path, problem, target.name)
        self.put_event({"kind": "store_corrupt", "severity": "alarm", "path": str(self.path),
                        "moved_to": str(target), "problem": problem[:500]})

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Block until every record queued before this call is committed.

        Returns True when done, False on timeout (e.g. the database stays locked).
        Used at shutdown and in tests; never call it from the poll tick.
        """
        with self._count_lock:
            target = list(self._in)
        deadline = time.monotonic() + timeout_s
        self._wake.set()
        with self._done_cv:
            while self._done[0] < target[0] or self._done[1] < target[1]:
                left = deadline - time.monotonic()
                if left <= 0 or self._thread is None or not self._thread.is_alive():
                    return False
                self._wake.set()
                self._done_cv.wait(min(left, 0.1))
        return True

    def close(self, timeout_s: float = 30.0) -> None:
        """Commit what is queued, stop the writer, close both connections. Idempotent."""
        if self._thread is not None:
            self.flush(timeout_s)
            self._stopping = True
            self._wake.set()
            self._thread.join(timeout_s)
            self._thread = None
        with self._block:
            for conn in (self._bconn, self._wconn):
                if conn is not None:
                    try:
                        conn.close()
                    except sqlite3.Error:
                        pass
            self._bconn = self._wconn = None

    def __enter__(self) -> "Store":
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ producers (poll tick)
    def put_reading(self, reading_record: dict[str, Any] | Reading) -> bool:
        """Queue one reading (a ``Reading.to_record()`` dict, or a Reading). Never blocks.

        Returns False when the queue was full: the reading is dropped, counted and
        recorded in a gap row at the next commit (C16).
        """
        rec = reading_record.to_record() if isinstance(reading_record, Reading) else reading_record
        if self.full:   # on_full stop_polling: keep what is stored, record what was refused (C16)
            with self._count_lock:
                self._full_drops.add(str(rec.get("tag")), rec.get("ts"))
                self._dropped_total += 1
            return False
        try:
            self._rq.put_nowait(rec)
        except queue.Full:
            with self._count_lock:
                self._drops.add(str(rec.get("tag")), rec.get("ts"))
                self._dropped_total += 1
            return False
        with self._count_lock:
            self._in[0] += 1
        return True

    def put_event(self, event: dict[str, Any]) -> bool:
        """Queue one event (alarm, trip, fault, audit ...: a JSON-able dict; ``kind`` names
        it, ``ts`` RFC 3339 is added when missing). Never blocks.

        Events have their own queue, so a telemetry flood does not drop them. Returns
        False when even that queue is full (the drop is counted and recorded as a gap).
        """
        ev = dict(event)
        ev.setdefault("ts", _utc_now())
        try:
            self._eq.put_nowait(ev)
        except queue.Full:
            with self._count_lock:
                self._ev_drops.add(str(ev.get("kind", "event")), ev.get("ts"))
                self._dropped_total += 1
            return False
        with self._count_lock:
            self._in[1] += 1
        return True

    # ------------------------------------------------------------------ writer thread
    def _writer(self) -> None:
        while True:
            try:
                self._writer_loop()
                return
            except Exception:   # never let the writer die silently; keep the record path alive
                # the dequeued records stay in self._pending_r/_e and are committed after the restart
                log.exception("%s: store writer failed; restarting it", self.path)
                time.sleep(1.0)

    def _writer_loop(self) -> None:
        while True:
            pending_r, pending_e = self._pending_r, self._pending_e
            stopping = self._stopping
            if not stopping:
                self._wake.wait(self.commit_interval_s)
                self._wake.clear()
            # drain only when nothing is stuck: a locked database must not grow memory
            if not pending_r and not pending_e:
                pending_e = self._pending_e = self._drain(self._eq)
                pending_r = self._pending_r = self._drain(self._rq)
            with self._count_lock:
                drops, self._drops = self._drops, _Drops()
                ev_drops, self._ev_drops = self._ev_drops, _Drops()
                full_drops, self._full_drops = self._full_drops, _Drops()
            if pending_r or pending_e or drops.count or ev_drops.count or full_drops.count:
                try:
                    if self.max_bytes is not None and (pending_r or pending_e):
                        self._retention(len(pending_r) + len(pending_e))   # make room first (C16)
                    ok = self._commit(pending_r, pending_e, drops, ev_drops, full_drops)
                except BaseException:
                    with self._count_lock:     # keep the drop counts for the retry after the restart
                        self._merge_drops(self._drops, drops)
                        self._merge_drops(self._ev_drops, ev_drops)
                        self._merge_drops(self._full_drops, full_drops)
                    raise
                if ok:
                    with self._done_cv:
                        self._done[0] += len(pending_r)
                        self._done[1] += len(pending_e)
                        self._done_cv.notify_all()
                    self._pending_r, self._pending_e = [], []
                else:
                    with self._count_lock:     # put the drop counts back for the retry
                        self._merge_drops(self._drops, drops)
                        self._merge_drops(self._ev_drops, ev_drops)
                        self._merge_drops(self._full_drops, full_drops)
                    if stopping:
                        log.error("%s: closing with %d records not committed", self.path,
                                  len(pending_r) + len(pending_e))
                        return
                    time.sleep(min(0.2, self.commit_interval_s))
                    continue
            if self.max_bytes is not None:
                self._retention()
            if stopping and self._rq.empty() and self._eq.empty():
                return

    @staticmethod
    def _merge_drops(into: _Drops, src: _Drops) -> None:
        if not src.count:
            return
        into.count += src.count
        into.tags |= src.tags
        for ts in (src.first_ts, src.last_ts):
            if ts is not None:
                into.first_ts = ts if into.first_ts is None or ts < into.first_ts else into.first_ts
                into.last_ts = ts if into.last_ts is None or ts > into.last_ts else into.last_ts

    @staticmethod
    def _drain(q: queue.Queue) -> list[dict[str, Any]]:
        out = []
        while True:
            try:
                out.append(q.get_nowait())
            except queue.Empty:
                return out

    def _overflow_event_due(self) -> bool:
        now = time.monotonic()
        due = self._last_drop_mono is None or now - self._last_drop_mono > OVERFLOW_EPISODE_S
        self._last_drop_mono = now
        return due

    @staticmethod
    def _serialise(records: list[dict], to_row: Callable[[dict], tuple], key: str) -> tuple[list[tuple], _Drops]:
        """Serialise records to rows; one that cannot be (json.dumps fails: a circular or non-str-keyed
        value; a value SQLite cannot bind) is left out and counted in the returned _Drops (tag or kind,
        ts) instead of failing the commit for every record with it (C16: recorded as a gap row)."""
        rows, bad = [], _Drops()
        for r in records:
            try:
                rows.append(to_row(r))
            except Exception as exc:   # noqa: BLE001 - any failure of one record's serialisation
                ts = r.get("ts") if isinstance(r, dict) else None
                try:
                    name = str(r.get(key)) if isinstance(r, dict) else "?"
                except Exception:   # noqa: BLE001 - even its name will not print
                    name = "?"
                bad.add(name, ts if isinstance(ts, str) else None)
                log.error("store: cannot serialise a %s record (%s: %s); recorded as an 'unserialisable' gap",
                          "reading" if key == "tag" else "event", type(exc).__name__, exc)
        return rows, bad

    def _commit(self, readings: list[dict], events: list[dict], drops: _Drops, ev_drops: _Drops,
                full_drops: _Drops | None = None) -> bool:
        conn = self._wconn
        assert conn is not None
        r_rows, r_bad = self._serialise(readings, _reading_row, "tag")
        e_rows, e_bad = self._serialise(events, _event_row, "kind")
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                if r_rows:
                    conn.executemany(
                        "INSERT INTO readings(tag, value, unit, quality, reason, ts, ts_source, point)"
                        " VALUES (?,?,?,?,?,?,?,?)", r_rows)
                if e_rows:
                    conn.executemany("INSERT INTO events(kind, ts, data) VALUES (?,?,?)", e_rows)
                for d, reason in ((r_bad, "unserialisable"), (e_bad, "unserialisable_events")):
                    if d.count:
                        self._insert_gap(conn, reason, sorted(d.tags), d.first_ts, d.last_ts, d.count)
                for d, reason in ((drops, "queue_overflow"), (ev_drops, "event_queue_overflow")):
                    if d.count:
                        self._insert_gap(conn, reason, sorted(d.tags), d.first_ts, d.last_ts, d.count)
                if (drops.count or ev_drops.count) and self._overflow_event_due():
                    self._insert_event(conn, {
                        "kind": "buffer_overflow", "severity": "alarm", "reason": "queue_overflow",
                        "dropped": drops.count + ev_drops.count,
                        "detail": "in-memory queue full (database locked or too slow); records dropped"})
                if full_drops is not None and full_drops.count:
                    self._insert_gap(conn, "store_full_stop_polling", sorted(full_drops.tags), full_drops.first_ts,
                                     full_drops.last_ts, full_drops.count)
                    if self._overflow_event_due():
                        self._insert_event(conn, {
                            "kind": "buffer_overflow", "severity": "alarm", "reason": "store_full_stop_polling",
                            "dropped": full_drops.count,
                            "detail": f"buffer reached max_bytes={self.max_bytes} (on_full stop_polling); "
                                      "new telemetry is not recorded until acknowledged records age out"})
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise
        except sqlite3.Error as e:
            now = time.monotonic()
            if now - self._last_lock_log > 10.0:   # rate-limited log (C17a)
                self._last_lock_log = now
                log.warning("%s: cannot commit %d records yet (%s); they wait in memory",
                            self.path, len(readings) + len(events), e)
            self._writer_error = str(e)
            return False
        with self._count_lock:
            self._committed_readings += len(r_rows)
            self._dropped_total += r_bad.count + e_bad.count
        if self._writer_error is not None:
            log.info("%s: writes resumed", self.path)
            self._writer_error = None
        return True

    @staticmethod
    def _insert_gap(conn: sqlite3.Connection, reason: str, tags: list[str], first_ts: str | None,
                    last_ts: str | None, count: int) -> None:
        conn.execute("INSERT INTO gaps(reason, tags, first_ts, last_ts, count, recorded_at)"
                     " VALUES (?,?,?,?,?,?)", (reason, json.dumps(tags), first_ts, last_ts, count, _utc_now()))

    @staticmethod
    def _insert_event(conn: sqlite3.Connection, event: dict[str, Any]) -> None:
        ev = dict(event)
        ev.setdefault("ts", _utc_now())
        conn.execute("INSERT INTO events(kind, ts, data) VALUES (?,?,?)",
                     (ev.get("kind"), str(ev["ts"]), json.dumps(ev, default=str)))

    # ------------------------------------------------------------------ retention (C16)
    def used_bytes(self, conn: sqlite3.Connection | None = None) -> int:
        """Bytes in use by the database (page_count - freelist_count) x page_size."""
        c = conn or self._wconn
        assert c is not None
        page_size = c.execute("PRAGMA page_size").fetchone()[0]
        pages = c.execute("PRAGMA page_count").fetchone()[0]
        free = c.execute("PRAGMA freelist_count").fetchone()[0]
        return (pages - free) * page_size

    def _per_row(self, conn: sqlite3.Connection, used: int) -> float:
        rows = self._rows(conn, "readings") + self._rows(conn, "events")
        return 200.0 if rows < 100 else max(1.0, used / rows)

    def _retention(self, incoming: int = 0) -> None:
        """Keep used bytes + the ``incoming`` rows about to be committed under max_bytes:
        when the projection passes the cap, drop down to 90 % of it (drop_oldest)."""
        assert self.max_bytes is not None and self._wconn is not None
        conn = self._wconn
        try:
            used = self.used_bytes(conn)
            extra = int(incoming * self._per_row(conn, used)) if incoming else 0
            if self.on_full == "stop_polling":
                self._retention_stop_polling(conn, used, extra)
                return
            if used + extra <= self.max_bytes:
                return
            target = int(self.max_bytes * 0.9)
            for _ in range(50):
                if used + extra <= target:
                    break
                if not self._drop_step(conn, used + extra - target, used):
                    log.error("%s: over max_bytes (%d > %d) and nothing left to drop",
                              self.path, used, self.max_bytes)
                    break
                used = self.used_bytes(conn)
        except sqlite3.Error as e:
            log.warning("%s: retention pass failed: %s", self.path, e)

    def _retention_stop_polling(self, conn: sqlite3.Connection, used: int, extra: int) -> None:
        """on_full stop_polling: over max_bytes, delete only acknowledged records older than the
        retention floor; if that is not enough, refuse new telemetry (``full``) until used bytes fall
        under 90 % of the cap. Unsent data and records younger than the floor are never deleted."""
        assert self.max_bytes is not None
        if used + extra > self.max_bytes:
            floor = rfc3339(time.time() - self.retention_floor_s)
            for _ in range(50):
                n = max(100, math.ceil((used + extra - int(self.max_bytes * 0.9)) / self._per_row(conn, used) * 1.1))
                conn.execute("BEGIN IMMEDIATE")
                try:
                    done = self._drop_acked(conn, n, older_than=floor)
                    conn.execute("COMMIT")
                except BaseException:
                    _rollback(conn)
                    raise
                used = self.used_bytes(conn)
                if not done or used + extra <= int(self.max_bytes * 0.9):
                    break
        if used + extra > self.max_bytes and not self.full:
            self.full = True
            log.error("%s: max_bytes=%d reached (on_full stop_polling): new telemetry is no longer recorded; "
                      "alarm and trip events still are", self.path, self.max_bytes)
        elif self.full and used + extra <= int(self.max_bytes * 0.9):
            self.full = False
            log.warning("%s: space freed; recording telemetry again", self.path)

    def _rows(self, conn: sqlite3.Connection, table: str) -> int:
        lo, hi = conn.execute(f"SELECT min(id), max(id) FROM {table}").fetchone()
        return 0 if lo is None else hi - lo + 1

    def _drop_step(self, conn: sqlite3.Connection, excess: int, used: int) -> bool:
        """Free about ``excess`` bytes by one drop_oldest step; False if nothing to drop."""
        n = max(100, math.ceil(excess / self._per_row(conn, used) * 1.1))
        conn.execute("BEGIN IMMEDIATE")
        try:
            # events go last (C16): never while readings are stored or about to be committed; with too
            # many incoming readings the cap is passed for one commit and the next pass drops them
            done = self._drop_acked(conn, n) or self._drop_unsent(conn, "readings", n) \
                or (not self._pending_r and self._drop_unsent(conn, "events", n))
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise
        return done

    def _drop_acked(self, conn: sqlite3.Connection, n: int, older_than: str | None = None) -> bool:
        """Delete about ``n`` rows of the oldest acknowledged batches; False if none may go.

        Kept whatever their age: the newest batch row (the next batch's ``prev``) and every batch
        from the predecessor of the oldest unacknowledged one on (a tombstone for batch N is
        signed with the same ``prev`` as N, the hash of N-1's stored JWS; see dead_letter)."""
        last, oldest_unacked = conn.execute(
            "SELECT max(seq), min(CASE WHEN acked_at IS NULL THEN seq END) FROM batches").fetchone()
        if last is None:
            return False
        keep_from = last if oldest_unacked is None else min(last, oldest_unacked - 1)
        seqs, rows = [], 0
        for seq, created in conn.execute(
                "SELECT seq, created_at FROM batches WHERE acked_at IS NOT NULL AND seq < ?"
                + (" AND created_at < ?" if older_than else "") + " ORDER BY seq",
                (keep_from, older_than) if older_than else (keep_from,)):
            seqs.append(seq)
            rows += conn.execute("SELECT count(*) FROM readings WHERE batch_seq=?", (seq,)).fetchone()[0] + 1
            if rows >= n:
                break
        if not seqs:
            return False
        newest = conn.execute("SELECT created_at FROM batches WHERE seq=?", (seqs[-1],)).fetchone()[0]
        if newest > rfc3339(time.time() - self.retention_floor_s):
            log.warning("%s: max_bytes=%d cannot hold the retention floor (%.0f days); "
                        "deleting acknowledged records from %s", self.path, self.max_bytes,
                        self.retention_floor_s / 86400, newest)
        hi = seqs[-1]
        for table in ("readings", "events", "gaps"):
            conn.execute(f"DELETE FROM {table} WHERE batch_seq IS NOT NULL AND batch_seq <= ?"
                         f" AND batch_seq IN (SELECT seq FROM batches WHERE acked_at IS NOT NULL)", (hi,))
        conn.execute("DELETE FROM batches WHERE seq <= ? AND acked_at IS NOT NULL AND seq < ?", (hi, keep_from))
        return True

    def _drop_unsent(self, conn: sqlite3.Connection, table: str, n: int) -> bool:
        ids = conn.execute(f"SELECT id FROM {table} WHERE batch_seq IS NULL ORDER BY id LIMIT ?", (n,)).fetchall()
        if not ids:
            return False
        lo, hi = ids[0][0], ids[-1][0]
        if table == "readings":
            tags = [r[0] for r in conn.execute(
                "SELECT DISTINCT tag FROM readings WHERE batch_seq IS NULL AND id BETWEEN ? AND ? LIMIT 1000",
                (lo, hi))]
            first, last = conn.execute(
                "SELECT min(ts), max(ts) FROM readings WHERE batch_seq IS NULL AND id BETWEEN ? AND ?",
                (lo, hi)).fetchone()
            reason = "retention_drop_oldest"
        else:
            tags = [r[0] for r in conn.execute(
                "SELECT DISTINCT kind FROM events WHERE batch_seq IS NULL AND id BETWEEN ? AND ? LIMIT 1000",
                (lo, hi))]
            first, last = conn.execute(
                "SELECT min(ts), max(ts) FROM events WHERE batch_seq IS NULL AND id BETWEEN ? AND ?",
                (lo, hi)).fetchone()
            reason = "retention_drop_oldest_events"
        conn.execute(f"DELETE FROM {table} WHERE batch_seq IS NULL AND id BETWEEN ? AND ?", (lo, hi))
        self._insert_gap(conn, reason, sorted(t for t in tags if t is not None), first, last, len(ids))
        with self._count_lock:
            self._dropped_total += len(ids)
        self._drop_log_n += len(ids)
        now = time.monotonic()
        if now - self._drop_log_mono > 60.0:      # rate-limited: one line a minute
            log.warning("%s: max_bytes=%d reached; dropped %d oldest unsent %s (now up to %s)",
                        self.path, self.max_bytes, self._drop_log_n, table, last)
            self._drop_log_mono, self._drop_log_n = now, 0
        if self._overflow_event_due():
            self._insert_event(conn, {
                "kind": "buffer_overflow", "severity": "alarm", "reason": reason, "dropped": len(ids),
                "detail": f"buffer reached max_bytes={self.max_bytes}; oldest unsent {table} dropped"})
        return True

    # ------------------------------------------------------------------ batch side (Batcher / Forwarder)
    def _b(self) -> sqlite3.Connection:
        if self._bconn is None:
            raise StoreError(f"{self.path}: store is not open")
        return self._bconn

    def last_samples(self, tags: list[str]) -> dict[str, tuple[str, str, str]]:
        """The newest stored device- or server-stamped reading of each tag as (ts RFC 3339, quality, value JSON).

        Used at start so a sample re-delivered after a restart (an OPC UA subscription sends the current
        value with its original source timestamp) is not stored twice. One pass over the table (no extra
        index slows ingest), bounded by the retention cap."""
        wanted = set(tags)
        out: dict[str, tuple[str, str, str]] = {}
        with self._block:
            conn = self._b()
            for tag, ts, quality, value in conn.execute(
                    "SELECT tag, ts, quality, value FROM readings WHERE id IN"
                    " (SELECT max(id) FROM readings WHERE ts_source != 'local' GROUP BY tag)"):
                if tag in wanted:
                    out[tag] = (ts, quality, value if value is not None else "null")
        return out

    def last_batch(self) -> tuple[int, str] | None:
        """(seq, jws) of the newest batch of the chain (acked or not), or None."""
        with self._block:
            row = self._b().execute("SELECT seq, jws FROM batches ORDER BY seq DESC LIMIT 1").fetchone()
        return None if row is None else (row[0], row[1])

    def unacked_batch(self) -> tuple[int, str] | None:
        """(seq, jws) of the oldest unacknowledged batch (a tombstone included), or None."""
        with self._block:
            row = self._b().execute("SELECT seq, jws FROM batches WHERE acked_at IS NULL"
                                    " ORDER BY seq LIMIT 1").fetchone()
        return None if row is None else (row[0], row[1])

    def new_batch(self, max_readings: int, max_events: int,
                  make: Callable[[int, str | None, PendingRows], tuple[str, str]]) -> tuple[int, str] | None:
        """Build and store the next batch in ONE transaction; None when nothing is unbatched.

        Selects the oldest unbatched readings (id order, at most ``max_readings``), every
        unbatched event (oldest first, at most ``max_events``; events jump the reading
        backlog) and every unbatched gap row; calls ``make(seq, prev_jws, rows)`` which
        returns ``(compact_jws, created_at)``; inserts the batch row and sets
        ``batch_seq`` on its rows. seq = last stored seq + 1 (1 for an empty table), so
        the chain continues across restarts.
        """
        with self._block:
            conn = self._b()
            conn.execute("BEGIN IMMEDIATE")
            try:
                last = conn.execute("SELECT seq, jws FROM batches ORDER BY seq DESC LIMIT 1").fetchone()
                readings = [(r[0], {"tag": r[1], "value": json.loads(r[2]) if r[2] is not None else None,
                                    "unit": r[3], "quality": r[4], "reason": r[5], "ts": r[6], "ts_source": r[7],
                                    **({"point": r[8]} if r[8] else {})})
                            for r in conn.execute(
                                "SELECT id, tag, value, unit, quality, reason, ts, ts_source, point FROM readings"
                                " WHERE batch_seq IS NULL ORDER BY id LIMIT ?", (max_readings,))]
                events = [(r[0], json.loads(r[1])) for r in conn.execute(
                    "SELECT id, data FROM events WHERE batch_seq IS NULL ORDER BY id LIMIT ?", (max_events,))]
                gaps = [(r[0], {"reason": r[1], "tags": json.loads(r[2]), "first_ts": r[3], "last_ts": r[4],
                                "count": r[5], "recorded_at": r[6]}) for r in conn.execute(
                    "SELECT id, reason, tags, first_ts, last_ts, count, recorded_at FROM gaps"
                    " WHERE batch_seq IS NULL ORDER BY id LIMIT 1000")]
                rows = PendingRows(readings, events, gaps)
                if not rows:
                    conn.execute("ROLLBACK")
                    return None
                seq = 1 if last is None else last[0] + 1
                jws, created_at = make(seq, None if last is None else last[1], rows)
                conn.execute("INSERT INTO batches(seq, jws, created_at) VALUES (?,?,?)", (seq, jws, created_at))
                for table, items in (("readings", readings), ("events", events), ("gaps", gaps)):
                    if items:
                        conn.executemany(f"UPDATE {table} SET batch_seq=? WHERE id=?", [(seq, i) for i, _ in items])
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise
        return seq, jws

    def mark_acked(self, seq: int) -> bool:
        """Record the receiver's acknowledgement of batch ``seq``; its rows now count as
        sent. Returns False if the batch is unknown or was already acked."""
        with self._block:
            cur = self._b().execute("UPDATE batches SET acked_at=? WHERE seq=? AND acked_at IS NULL",
                                    (_utc_now(), seq))
        return cur.rowcount == 1

    def dead_letter(self, seq: int, reason: str,
                    make: Callable[[int, str | None, PendingRows], tuple[str, str]],
                    status: int | None = None) -> bool:
        """Set batch ``seq`` aside after a permanent rejection and put a signed tombstone in
        its place, in one transaction (C14c).

        The receiver accepts only seq = last + 1 with an unbroken chain, so simply skipping
        a rejected batch would stop every later batch. Instead the original JWS moves to
        the ``dead_letters`` table (kept locally as evidence) and the same seq gets a new
        batch (built by ``make(seq, prev_jws, rows)``, same prev) that carries no readings
        but a ``batch_dead_lettered`` alarm event (seq, status, reason, hash of the original)
        and gap rows (reason "dead_letter": tags, time range, count of the set-aside
        readings and events). The tombstone is then sent like any batch; later batches flow.

        Returns False (nothing changed) when ``seq`` is unknown, acked, or already a
        tombstone: a rejected tombstone means the receiver refuses this gateway as such
        (key, id, size limit), which a person must fix; the caller then holds and retries.
        """
        with self._block:
            conn = self._b()
            conn.execute("BEGIN IMMEDIATE")
            try:
                row = conn.execute("SELECT jws FROM batches WHERE seq=? AND acked_at IS NULL AND dead_letter IS NULL",
                                   (seq,)).fetchone()
                if row is None:
                    _rollback(conn)
                    return False
                original = row[0]
                conn.execute("INSERT OR REPLACE INTO dead_letters(seq, jws, reason, status, dead_at)"
                             " VALUES (?,?,?,?,?)", (seq, original, reason, status, _utc_now()))
                for table, what in (("readings", "tag"), ("events", "kind")):
                    n, first, last = conn.execute(
                        f"SELECT count(*), min(ts), max(ts) FROM {table} WHERE batch_seq=?", (seq,)).fetchone()
                    if n:
                        tags = sorted(t[0] for t in conn.execute(
                            f"SELECT DISTINCT {what} FROM {table} WHERE batch_seq=? LIMIT 1000", (seq,))
                            if t[0] is not None)
                        conn.execute("INSERT INTO gaps(reason, tags, first_ts, last_ts, count, recorded_at,"
                                     " batch_seq) VALUES (?,?,?,?,?,?,?)",
                                     ("dead_letter" if table == "readings" else "dead_letter_events",
                                      json.dumps(tags), first, last, n, _utc_now(), seq))
                from gateway.signing import chain_hash   # local: store stays importable without signing
                ev = {"kind": "batch_dead_lettered", "severity": "alarm", "ts": _utc_now(), "seq": seq,
                      "status": status, "reason": reason[:300], "original_hash": chain_hash(original)}
                ev_id = conn.execute("INSERT INTO events(kind, ts, data, batch_seq) VALUES (?,?,?,?)",
                                     (ev["kind"], ev["ts"], json.dumps(ev), seq)).lastrowid
                prev = conn.execute("SELECT jws FROM batches WHERE seq=?", (seq - 1,)).fetchone()
                if prev is None and seq > 1:   # retention keeps it (_drop_acked); a store edited by hand may not
                    raise StoreError(f"{self.path}: cannot sign the tombstone of batch {seq}: "
                                     f"batch {seq - 1} (its prev) is no longer stored")
                events = [(ev_id, ev)]
                gaps = [(r[0], {"reason": r[1], "tags": json.loads(r[2]), "first_ts": r[3], "last_ts": r[4],
                                "count": r[5], "recorded_at": r[6]}) for r in conn.execute(
                    "SELECT id, reason, tags, first_ts, last_ts, count, recorded_at FROM gaps WHERE batch_seq=?"
                    " AND reason LIKE 'dead_letter%' ORDER BY id", (seq,))]
                jws, created_at = make(seq, None if prev is None else prev[0], PendingRows([], events, gaps))
                conn.execute("UPDATE batches SET jws=?, created_at=?, dead_letter=? WHERE seq=?",
                             (jws, created_at, reason[:300], seq))
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise
        return True

    def dead_letters(self) -> list[dict[str, Any]]:
        """Set-aside batches, oldest first: [{seq, jws (the original), reason, status, dead_at}]."""
        with self._block:
            rows = self._b().execute("SELECT seq, jws, reason, status, dead_at FROM dead_letters ORDER BY seq"
                                     ).fetchall()
        return [dict(zip(("seq", "jws", "reason", "status", "dead_at"), r)) for r in rows]

    def stats(self) -> dict[str, Any]:
        """Counters for the status view and health checks.

        readings_total: rows in the readings table; readings_unsent: rows not in an
        acknowledged batch; oldest_unsent_ts: RFC 3339 ts of the oldest of those (None);
        batches_unacked: batches not yet acked; batches_dead_letter: batches set aside;
        last_acked_seq (None); queue_depth: records waiting in memory; dropped: records
        dropped since open (queue overflow, retention, refused while full, unserialisable), each
        one also in a gap row; readings_committed: readings committed since open (taken, C15);
        used_bytes; writer_error: the
        last commit error while writes are failing (e.g. "database is locked"), else None.
        """
        with self._block:
            c = self._b()
            total = c.execute("SELECT count(*) FROM readings").fetchone()[0]
            unsent, oldest = c.execute(
                "SELECT count(*), min(ts) FROM readings WHERE batch_seq IS NULL OR batch_seq IN"
                " (SELECT seq FROM batches WHERE acked_at IS NULL)").fetchone()
            unacked = c.execute("SELECT count(*) FROM batches WHERE acked_at IS NULL").fetchone()[0]
            dead = c.execute("SELECT count(*) FROM dead_letters").fetchone()[0]
            last_acked = c.execute("SELECT max(seq) FROM batches WHERE acked_at IS NOT NULL").fetchone()[0]
            used = self.used_bytes(c)
        with self._count_lock:
            dropped = self._dropped_total
            committed = self._committed_readings
        return {"readings_total": total, "readings_unsent": unsent, "oldest_unsent_ts": oldest,
                "batches_unacked": unacked, "batches_dead_letter": dead, "last_acked_seq": last_acked,
                "queue_depth": self._rq.qsize() + self._eq.qsize(), "dropped": dropped, "readings_committed": committed,
                "used_bytes": used, "writer_error": self._writer_error}
