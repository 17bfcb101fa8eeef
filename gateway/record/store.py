"""The record path's durable buffer: readings, events, gaps and signed batches in SQLite.

Shape of the record path (docs/design.md, "Two paths, never coupled")::

    poll tick --put_reading()/put_event()--> bounded in-memory queues (never wait on SQLite)
              --writer thread, one transaction per commit interval--> SQLite (WAL)
              --Batcher--> batches table (signed JWS) --Forwarder--> receiver --ack--> acked_at

Durability contract (C15, C17c):

* ``put_reading`` / ``put_event`` only append to a bounded ``queue.Queue``; they never
  touch SQLite, so a locked, slow or full disk cannot delay the poll tick or a trip.
  (The daemon's log lines are queued the same way, gateway.ops.logutil, so the poll tick
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
  an alarm. Corruption found while running (SQLITE_CORRUPT "database disk image is
  malformed", SQLITE_NOTADB "file is not a database": SQLite docs "Result and Error Codes")
  in the writer's commit or a batch-side call sets ``corrupt`` (one line); the writer then
  stops committing and keeps its records pending, the batch side raises StoreError, and
  ``recover_corrupt()`` sets the file aside and opens a fresh store. In both cases the
  chain carries on: the chain position is kept apart from the readings
  (gateway.record.chain_position, ``<name>.chain.json``), so the fresh store's next batch has seq =
  last + 1 and prev = the hash of the last batch, unacknowledged batches are sent again
  byte-identical, what reads back cleanly from the set-aside file (unbatched readings,
  events, gaps) is copied over, and one signed ``store_corrupt_unreadable`` gap row covers
  what could not be read back.
* Retention (C16), config ``store.on_full`` and ``store.retention_floor``. The time floor
  ``retention_floor_s`` (30 days by default, SAWS order No. 40: records kept at least 30 days)
  is hard: whatever the policy, nothing younger than it is deleted (age: a batch's
  ``created_at``, a reading's or event's ``ts``), unless the floor is waived
  (``floor_waived``, config ``store.retention_floor: {waive: true, reason}``).
  Policy ``drop_oldest`` (default): when the used size passes ``max_bytes`` the writer
  frees space in this order: (1) acknowledged batches and their rows older than the floor,
  oldest first (already delivered; never the newest batch nor the predecessor of the oldest
  unacknowledged one, whose JWS a tombstone's ``prev`` needs), (2) unsent telemetry older
  than the floor, oldest first, (3) unsent events older than the floor, oldest first. (2) and
  (3) write a gap row and a ``buffer_overflow`` event. Policy ``stop_polling``: only (1);
  unsent data is never deleted. Under either policy, when that is not enough, new telemetry
  is refused (``full``, ``full_reason``; each refused reading is counted in a
  ``store_full_stop_polling`` gap row, one ``buffer_overflow`` alarm per episode) until the
  used size is under 90 % of the cap again. Events are still recorded, and the poll tick
  and the safety path go on (``put_reading`` returns False and counts): only the *recording*
  of telemetry stops, never the alarms and interlocks. With the floor waived, ``drop_oldest``
  deletes (1) whatever their age (with a warning when younger than the floor), then (2) and
  (3) whatever their age, never refusing telemetry; alarm and trip events are the last thing
  dropped. ``stop_polling`` keeps its floor (``retention_floor_s``) even when waived.

Tables: ``readings`` (id, tag, value JSON, unit, quality, reason, ts, ts_source,
batch_seq, point: regulator point code), ``events`` (id, kind, ts, data JSON, batch_seq), ``gaps`` (id, reason,
tags JSON, first_ts, last_ts, count, recorded_at, batch_seq), ``batches`` (seq, jws,
created_at, acked_at, dead_letter: reason when the stored jws is a tombstone),
``dead_letters`` (seq, original jws, reason, status, dead_at), ``chain_anchor`` (seq, hash,
set_at, source: links of the chain whose JWS a store seeded from the chain position does not hold).
``ts`` columns hold RFC 3339 UTC strings. A reading's ``value`` is the text ``json.dumps(value, default=str)``
(the writer spells finite floats, ints and None without the encoder, the same text); a batch parses the texts
of its rows in one ``json.loads`` when SQLite's ``json_valid`` passes each. The partial index
``batches_unacked`` (seq WHERE acked_at IS NULL) finds the unacknowledged batches without reading the JWS of
the others (a row's later columns sit behind its JWS, in overflow pages); a store made before it gets it at
its next open (CREATE INDEX IF NOT EXISTS, one pass over the batches table). Nothing else in the file format
changed: stores of either version open and batch alike.
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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from gateway.record.chain_position import ChainPosition, ChainPositionError, PrevHash, position_path, prev_value
from gateway.filemode import create_record_file
from gateway.model import Reading, rfc3339
from gateway.record.journal import RecordJournal

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
-- the unacknowledged batches by seq: finding them never reads the JWS of the acknowledged ones (a row's later
-- columns sit behind its JWS, in overflow pages), so the drain does not slow down as acknowledged batches pile up
CREATE INDEX IF NOT EXISTS batches_unacked ON batches(seq) WHERE acked_at IS NULL;
CREATE TABLE IF NOT EXISTS dead_letters (
    seq INTEGER PRIMARY KEY,
    jws TEXT NOT NULL,
    reason TEXT NOT NULL,
    status INTEGER NULL,
    dead_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS chain_anchor (
    seq INTEGER PRIMARY KEY,   -- a batch of the chain whose JWS this database does not hold
    hash TEXT NOT NULL,        -- its chain hash (the next batch's prev), from the chain position file
    set_at TEXT NOT NULL,
    source TEXT NOT NULL       -- why: the file it replaced ("moved aside ..."), "store_missing" ...
);
"""

#: an overflow episode ends after this many seconds without a drop (one alarm per episode, C16)
OVERFLOW_EPISODE_S = 60.0
#: default retention floor: SAWS order No. 40 (2011/2015) keeps electronic records >= 30 days
RETENTION_FLOOR_S = 30 * 86400.0
#: close() waits at most this long for a commit while commits are failing (seconds)
CLOSE_WHILE_FAILING_S = 3.0
#: while commits fail, the uncommitted-records journal is rewritten at most this often (seconds)
JOURNAL_EVERY_S = 1.0
#: what the writer does at max_bytes (config store.on_full)
ON_FULL_POLICIES = ("drop_oldest", "stop_polling")
#: while full, how often the writer looks again for records that have aged past the floor (seconds)
FULL_RETRY_S = 5.0
#: the floor's drop_oldest looks at most this many of the oldest unsent rows per step for ones past the floor
FLOOR_SCAN_ROWS = 20_000
#: SQLite primary result codes of a damaged file (SQLite docs "Result and Error Codes": SQLITE_CORRUPT,
#: SQLITE_NOTADB); "database is locked" (SQLITE_BUSY 5, SQLITE_LOCKED 6) is not corruption (C17a)
SQLITE_CORRUPT = 11
SQLITE_NOTADB = 26
#: stats() counts rows exactly up to this many (bounded index scans once a second); beyond, counters since open
STATS_EXACT_ROWS = 100_000
#: salvage of a set-aside file reads rowid ranges of this many ids per query
SALVAGE_CHUNK = 2000
#: ... and gives a table up after this many ranges that did not read back (a bad root page fails them all)
SALVAGE_MAX_FAILED = 4000


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


def is_corruption(exc: BaseException) -> bool:
    """True when ``exc`` says the database file itself is damaged: an sqlite3.DatabaseError whose
    primary result code is SQLITE_CORRUPT (11, "database disk image is malformed") or SQLITE_NOTADB
    (26, "file is not a database"), SQLite docs "Result and Error Codes" (extended codes such as
    SQLITE_CORRUPT_INDEX keep the primary code in their low 8 bits); without a code (Python < 3.11,
    or an error raised by the sqlite3 module itself) the message decides. "database is locked" /
    "busy" are never corruption (C17a)."""
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    msg = str(exc).lower()
    if "locked" in msg or "busy" in msg:
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int) and (code & 0xFF) in (SQLITE_CORRUPT, SQLITE_NOTADB):
        return True
    return "malformed" in msg or "not a database" in msg or "database corruption" in msg


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass


def _value_text(v: Any) -> str:
    """The ``value`` column's JSON text of a reading value: exactly ``json.dumps(v, default=str)``, with
    the common scalars spelt without the encoder (a finite float's repr and an int's are the JSON
    text json.dumps writes: the json module encodes them with float.__repr__ / int.__repr__)."""
    t = type(v)
    if t is float:
        if v - v == 0.0:
            return float.__repr__(v)
    elif v is None:
        return "null"
    elif t is int:
        return int.__repr__(v)
    return json.dumps(v, default=str)


def _reading_row(rec: dict[str, Any]) -> tuple:
    return _bindable((str(rec.get("tag")), _value_text(rec.get("value")), rec.get("unit"),
                      str(rec.get("quality", "bad")), rec.get("reason"), str(rec.get("ts") or _utc_now()),
                      rec.get("ts_source"), rec.get("point")))


def _decode_values(texts: list[str | None]) -> list[Any]:
    """The values of ``value`` column texts (JSON, NULL: None), parsed in one json.loads of the texts
    joined into one array when SQLite's json_valid passed each of them (``valid``: see new_batch), else
    one by one (a malformed text raises ValueError, as before)."""
    try:
        out = json.loads("[" + ",".join("null" if t is None else t for t in texts) + "]")
    except (ValueError, TypeError):
        out = None
    if isinstance(out, list) and len(out) == len(texts):
        return out
    return [json.loads(t) if t is not None else None for t in texts]


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


def _signed_prev(jws: str) -> str | None:
    """The ``prev`` a stored batch was signed with (None for seq 1 or when it cannot be decoded)."""
    try:
        from gateway.chain.signing import decode_unverified   # local: the store stays importable without signing
        prev = decode_unverified(jws)[1].get("prev")
    except Exception:   # noqa: BLE001 - a batch that does not decode has no usable prev
        return None
    return prev if isinstance(prev, str) else None


def _position_from_conn(conn: sqlite3.Connection, path: Path,
                        fallback: ChainPosition | None = None) -> ChainPosition:
    """The chain position a database holds (its batches and chain_anchor tables), for ``path`` (the
    chain position file). ``fallback`` (the file's position) supplies what the database does not know
    when both stand at the same seq (created_at, the batched ts marks of an anchored tip). Raises sqlite3.Error."""
    from gateway.record.chain_position import Unacked
    from gateway.chain.signing import chain_hash
    pos = ChainPosition(path)
    last = conn.execute("SELECT seq, jws, created_at, acked_at FROM batches ORDER BY seq DESC LIMIT 1").fetchone()
    try:
        anchor = conn.execute("SELECT seq, hash FROM chain_anchor ORDER BY seq DESC LIMIT 1").fetchone()
    except sqlite3.OperationalError:   # a file made before chain anchors existed
        anchor = None
    if last is not None and (anchor is None or last[0] >= anchor[0]):
        pos.seq, pos.hash, pos.created_at, pos.acked = last[0], chain_hash(last[1]), last[2], last[3] is not None
    elif anchor is not None:
        pos.seq, pos.hash, pos.acked = anchor[0], anchor[1], True
    acked = conn.execute("SELECT seq, jws FROM batches WHERE acked_at IS NOT NULL ORDER BY seq DESC LIMIT 1").fetchone()
    if acked is not None:
        pos.acked_seq, pos.acked_hash = acked[0], chain_hash(acked[1])
    if anchor is not None and anchor[0] > pos.acked_seq:
        pos.acked_seq, pos.acked_hash = anchor[0], anchor[1]
    for seq, jws, created_at, dead in conn.execute(
            "SELECT seq, jws, created_at, dead_letter FROM batches WHERE acked_at IS NULL ORDER BY seq"):
        pos.unacked[seq] = Unacked(seq, jws, created_at, _signed_prev(jws), dead)
    # the batched marks: newest ts among the rows of the newest batch holding rows of that kind (an index end)
    for t in ("readings", "events"):
        try:   # a damaged readings table (salvage) leaves the mark to the position file
            ts = conn.execute(f"SELECT max(ts) FROM {t} WHERE batch_seq ="
                              f" (SELECT max(batch_seq) FROM {t} WHERE batch_seq IS NOT NULL)").fetchone()[0]
        except sqlite3.DatabaseError:
            continue
        if isinstance(ts, str):
            pos.note_ts(ts if t == "readings" else None, ts if t == "events" else None)
    if fallback is not None and fallback.known and fallback.seq <= pos.seq:
        if fallback.seq == pos.seq and pos.created_at is None:
            pos.created_at = fallback.created_at
        pos.note_ts(fallback.reading_ts, fallback.event_ts)
    return pos


@dataclass
class _Salvage:
    """What read back cleanly from a set-aside database file (see _salvage).

    readings / events / gaps: rows ready to insert, oldest first, each ending in batch_seq (None, or the
    seq of an unacknowledged batch the chain position re-inserts); unbatched: [readings, events] among
    them with batch_seq None; unreadable: {table: ids that did not read back (rows, or holes where rows
    had been deleted) plus rows read back malformed; -1 when the table could not be read, or only
    partly}; position: the chain position to seed from."""

    readings: list[tuple]
    events: list[tuple]
    gaps: list[tuple]
    unbatched: list[int]
    unreadable: dict[str, int]
    position: ChainPosition


def _ok_text(v: Any, null: bool = True) -> bool:
    return isinstance(v, str) or (null and v is None)


def _json_is(text: Any, kind: type | None) -> bool:
    if not isinstance(text, str):
        return False
    try:
        v = json.loads(text)
    except ValueError:
        return False
    return kind is None or isinstance(v, kind)


def _salvage(target: Path, position: ChainPosition) -> _Salvage:
    """Read back, read-only, what a set-aside (corrupt) database still holds and a fresh store needs.

    Opens ``target`` with ``mode=ro`` (SQLite docs "URI filenames": the file and its -wal are not
    written). The chain position is ``position`` unless the file's own batches table (when readable)
    stands further on (the position file lagged after a failed write). Per table (readings, events,
    gaps), per rowid range of SALVAGE_CHUNK ids, ``NOT INDEXED`` (the table b-tree only: an index may be
    the damaged part; SQLite docs "INDEXED BY"): rows that are not in a batch (batch_seq NULL or past
    the chain position: those become unbatched again) or in a batch not yet acknowledged (kept with its
    seq, the batch is re-inserted from the position). A range that fails (SQLITE_CORRUPT / NOTADB, or
    any DatabaseError) keeps the rows read before the fault and is split in halves down to single
    ids; at most SALVAGE_MAX_FAILED failures per table. Rows whose values do not have their column's
    shape (a page that reads back as garbage) are left out and counted as unreadable. Never raises."""
    out = _Salvage([], [], [], [0, 0], {}, position)
    try:
        conn = sqlite3.connect(f"{target.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None,
                               check_same_thread=False)
    except sqlite3.Error as e:
        log.error("%s: cannot open the set-aside file to salvage it: %s", target, e)
        out.unreadable = {"readings": -1, "events": -1, "gaps": -1}
        return out
    try:
        try:
            conn.execute("PRAGMA query_only=1")
            found = _position_from_conn(conn, position.path, position)
            if found.seq > position.seq and _plausible(found):
                log.warning("%s: the set-aside file's chain stands at seq %d, the chain position file at %d; "
                            "continuing from the file's", target, found.seq, position.seq)
                out.position = position = found
        except Exception as e:   # noqa: BLE001 - a damaged batches table (or garbage in it): use the position
            log.info("%s: batches table of the set-aside file not readable (%s); using the chain position file",
                     target, e)
        after = position.seq
        keep = set(position.unacked)
        low = min([after + 1, *keep])
        for table in ("readings", "events", "gaps"):
            rows, bad = _salvage_table(conn, table, low)
            for row in rows:
                seq = row[-1]
                if seq is None or seq > after:
                    row = (*row[:-1], None)
                elif seq not in keep:
                    continue
                getattr(out, table).append(row)
                if row[-1] is None and table != "gaps":
                    out.unbatched[0 if table == "readings" else 1] += 1
            if bad:
                out.unreadable[table] = bad
    finally:
        conn.close()
    return out


def _plausible(pos: ChainPosition) -> bool:
    """Every unacknowledged batch read from a damaged file decodes as a JWS carrying its own seq."""
    from gateway.chain.signing import decode_unverified
    for u in pos.unacked.values():
        try:
            p = decode_unverified(u.jws)[1]
        except Exception:   # noqa: BLE001 - garbage that happens to read back
            return False
        if not isinstance(p, dict) or p.get("seq") != u.seq:
            return False
    return True


def _salvage_table(conn: sqlite3.Connection, table: str, low_seq: int) -> tuple[list[tuple], int]:
    """(rows without the id, ids that did not read back (rows or holes) + rows read back malformed; -1
    when the table could not be read (its schema, its bounds, or too many failures))."""
    try:
        names = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
    except sqlite3.DatabaseError:
        return [], -1
    if not names:
        return [], -1 if table != "gaps" else 0
    if table == "readings":
        cols = "tag, value, unit, quality, reason, ts, ts_source, " + ("point" if "point" in names else "NULL")

        def valid(r: tuple) -> bool:
            return (isinstance(r[1], str) and bool(r[1]) and (r[2] is None or _json_is(r[2], None))
                    and _ok_text(r[3]) and _ok_text(r[4], False) and _ok_text(r[5]) and _ok_text(r[6], False)
                    and _ok_text(r[7]) and _ok_text(r[8]))
    elif table == "events":
        cols = "kind, ts, data"

        def valid(r: tuple) -> bool:
            return _ok_text(r[1]) and _ok_text(r[2], False) and _json_is(r[3], dict)
    else:
        cols = "reason, tags, first_ts, last_ts, count, recorded_at"

        def valid(r: tuple) -> bool:
            return (_ok_text(r[1], False) and _json_is(r[2], list) and _ok_text(r[3]) and _ok_text(r[4])
                    and isinstance(r[5], int) and _ok_text(r[6], False))
    sql = (f"SELECT id, {cols}, batch_seq FROM {table} NOT INDEXED WHERE id BETWEEN ? AND ?"
           f" AND (batch_seq IS NULL OR batch_seq >= ?) ORDER BY id")
    # one id: a point lookup, which never steps on to the next (perhaps damaged) leaf page
    one = f"SELECT id, {cols}, batch_seq FROM {table} WHERE id = ? AND (batch_seq IS NULL OR batch_seq >= ?)"
    try:
        lo, hi = conn.execute(f"SELECT min(id), max(id) FROM {table}").fetchone()
    except sqlite3.DatabaseError:
        try:   # the b-tree's edges do not read back: AUTOINCREMENT keeps the highest id apart
            row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name=?", (table,)).fetchone()
        except sqlite3.DatabaseError:
            row = None
        if row is None or not isinstance(row[0], int):
            return [], -1
        lo, hi = 1, row[0]
    if lo is None:
        return [], 0
    got: list[tuple] = []
    failed = 0    # queries that failed (bounded by SALVAGE_MAX_FAILED)
    skipped = 0   # single ids that did not read back (a row, or a hole left by a deletion)

    def read(a: int, b: int) -> None:
        nonlocal failed, skipped
        part: list[tuple] = []
        try:
            for r in conn.execute(one, (a, low_seq)) if a == b else conn.execute(sql, (a, b, low_seq)):
                part.append(r)
        except sqlite3.DatabaseError:
            failed += 1
            got.extend(part)
            if failed > SALVAGE_MAX_FAILED:
                raise
            if a == b:
                skipped += 1
                return
            start = part[-1][0] + 1 if part else a
            if start > b:
                return
            if start == b:
                read(b, b)
                return
            mid = (start + b) // 2
            read(start, mid)
            read(mid + 1, b)
            return
        got.extend(part)

    try:
        for a in range(lo, hi + 1, SALVAGE_CHUNK):
            read(a, min(hi, a + SALVAGE_CHUNK - 1))
    except sqlite3.DatabaseError:
        log.error("salvage: %s: more than %d queries did not read back; giving the rest of the table up",
                  table, SALVAGE_MAX_FAILED)
        return [r[1:] for r in got if (r[-1] is None or isinstance(r[-1], int)) and valid(r)], -1
    rows = [r[1:] for r in got if (r[-1] is None or isinstance(r[-1], int)) and valid(r)]
    return rows, skipped + (len(got) - len(rows))


class Store:
    """The SQLite buffer of the record path.

    path: database file (created with its directory). commit_interval_s: the writer
    commits at most this often (seconds); it bounds what a SIGKILL or power loss costs.
    queue_max: bound of the in-memory reading queue (records); events have their own
    queue of ``event_queue_max`` so a telemetry flood cannot push out an alarm.
    max_bytes: size cap of the used database pages (None: unbounded), policy ``on_full``.
    busy_timeout_ms: how long one SQLite statement waits for another connection's lock.
    retention_floor_s: records younger than this are never deleted (SAWS order No. 40: records
    kept at least 30 days); at the cap new telemetry is refused instead (``full``).
    floor_waived: the floor is waived (config ``store.retention_floor``): drop_oldest may then
    delete records younger than it at the cap, with a warning.

    Thread model: ``put_*`` are called from the asyncio loop (the poll tick) and never
    wait on SQLite. The writer thread owns one connection; the Batcher/Forwarder and
    ``stats()`` use a second connection under a lock (call them off the event loop,
    e.g. ``asyncio.to_thread``).
    """

    def __init__(self, path: str | os.PathLike[str], commit_interval_s: float = 0.5,
                 queue_max: int = 100_000, *, max_bytes: int | None = None,
                 event_queue_max: int = 10_000, busy_timeout_ms: int = 2000,
                 retention_floor_s: float = RETENTION_FLOOR_S, on_full: str = "drop_oldest",
                 floor_waived: bool = False) -> None:
        if commit_interval_s <= 0:
            raise ValueError("commit_interval_s must be > 0")
        if queue_max < 1 or event_queue_max < 1:
            raise ValueError("queue sizes must be >= 1")
        if on_full not in ON_FULL_POLICIES:
            raise ValueError(f"on_full must be one of {', '.join(ON_FULL_POLICIES)}, not {on_full!r}")
        self.on_full = on_full
        #: True while the store is at its cap with nothing it may delete (the retention floor) and new
        #: telemetry is refused (gap rows); see full_reason
        self.full = False
        #: the retention floor is waived (config store.retention_floor): drop_oldest may delete younger records
        self.floor_waived = bool(floor_waived)
        self._floor_try_mono = -1e9      # last deletion attempt while full (bounded retries, FULL_RETRY_S)
        self.path = Path(path)
        self.commit_interval_s = float(commit_interval_s)
        self.queue_max = int(queue_max)
        self.max_bytes = max_bytes
        self.busy_timeout_ms = int(busy_timeout_ms)
        self.retention_floor_s = float(retention_floor_s)
        #: set by open() or recover_corrupt() when a corrupt database was moved aside (C17b)
        self.moved_aside: Path | None = None
        #: one line (where: the SQLite message) once corruption was seen while running (SQLITE_CORRUPT /
        #: SQLITE_NOTADB in the writer's commit or a batch-side call), until recover_corrupt(); else None
        self.corrupt: str | None = None
        self._corrupt_ts: str | None = None     # when ``corrupt`` was set (RFC 3339): end of the lost interval
        self._halt = False                      # recover_corrupt(): the writer returns at its next loop
        self._recover_lock = threading.Lock()
        # (set-aside file, problem, detected at) of a corruption whose fresh store is not seeded yet
        self._recovery_target: tuple[Path | None, str, str] | None = None
        #: the chain position kept apart from the readings (gateway.record.chain_position), <name>.chain.json
        self.chain = ChainPosition(position_path(self.path))
        self._chain_dirty = False               # the file lags the database (a write failed); retried
        # unbatched readings / events in the database as far as the counters tell (None: unknown)
        self._unbatched_est: list[int] | None = None
        self._readings_est: int | None = None   # rows in the readings table as far as the counters tell
        self._deleted = [0, 0, 0]                # retention deletes of the open transaction (_count_deleted)
        self._committed_tags: set[str] = set()  # tags committed since open (at most 1000): a lost gap's tags
        self._rq: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=self.queue_max)
        self._eq: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=int(event_queue_max))
        self._count_lock = threading.Lock()
        self._drops = _Drops()           # readings dropped since last commit
        self._full_drops = _Drops()      # readings refused since last commit (store full, retention floor)
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
        # what waits uncommitted while commits fail, for a gap record after a power loss (gateway.record.journal)
        self.journal = RecordJournal(self.path.with_name(self.path.name + ".journal"))
        self._journal_mono = -1e9
        #: the note the previous run left in the journal (records it had taken and never committed), or None
        self.lost_at_stop: dict[str, Any] | None = None
        self._journal_taken = False   # the previous run's note is read once per process, never a note of this run
        self._inode: int | None = None   # of the database file at open (file_problem)

    # ------------------------------------------------------------------ open / close
    def _connect(self) -> sqlite3.Connection:
        if not self.path.exists():  # SQLite would create it 0644 whatever the umask; its -wal/-shm take its mode
            try:
                os.close(create_record_file(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL))
            except OSError:
                pass  # made meanwhile, or cannot be made: then sqlite3.connect says so (StoreError)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                               timeout=self.busy_timeout_ms / 1000)
        conn.execute(f"PRAGMA busy_timeout={self.busy_timeout_ms}")
        return conn

    def progress(self) -> tuple[bool | None, tuple[int, int], tuple[int, int]]:
        """The writer's progress since open: (writer thread alive, or None while the store is not open;
        records enqueued as (readings, events); records committed as (readings, events)). Read by the
        record supervisor's stall check (gateway.record.supervisor.store_writer_check)."""
        th = self._thread
        return (None if th is None else th.is_alive()), (self._in[0], self._in[1]), (self._done[0], self._done[1])

    def retune(self, *, commit_interval_s: float, max_bytes: int | None, retention_floor_s: float,
               floor_waived: bool) -> None:
        """Apply the settings a SIGHUP reload may change (the same meaning as in the constructor) to the open
        store, from its next commit on. Raises ValueError for commit_interval_s <= 0, changing nothing."""
        if commit_interval_s <= 0:
            raise ValueError("commit_interval_s must be > 0")
        self.commit_interval_s = float(commit_interval_s)
        self.max_bytes = max_bytes
        self.retention_floor_s = float(retention_floor_s)
        self.floor_waived = bool(floor_waived)

    def open(self) -> "Store":
        """Open (or create) the database, check it, start the writer thread.

        Runs ``PRAGMA integrity_check`` (SQLite docs, "PRAGMA integrity_check"); when it
        reports anything but "ok", or the file is not a database (SQLITE_NOTADB), the file and
        its -wal / -shm are renamed ``<name>.corrupt-<YYYYmmddTHHMMSSZ>`` (``moved_aside``) and a
        fresh database is created and seeded as recover_corrupt() does (C17b): the chain carries on
        from the chain position file, what reads back from the set-aside file is copied over, and
        one ``store_corrupt_unreadable`` gap row (count -1: unknown at start) and one
        ``store_corrupt`` alarm event are stored. A database file that is missing while the chain
        position file names batches (reason ``store_missing``), or that stands behind it
        (``store_behind_chain``: e.g. an old copy put back), is seeded from the position the same
        way, with a gap row and an alarm event of that reason. Otherwise the position file is
        brought up to date from the database. Raises StoreError (one line with the path) when
        the directory or file cannot be created. Returns self.
        """
        if self._thread is not None:
            return self
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"{self.path}: cannot create directory: {e.strerror}") from None
        if self.path.exists() and not self.path.is_file():   # a directory, a FIFO: no database, and not ours
            raise StoreError(f"{self.path}: is not a regular file (a directory?); the buffer database cannot "
                             "be opened there")                  # to move aside: the supervisor retries
        self.journal.open()   # before SQLite: a store that cannot be opened still notes what waits
        if not self._journal_taken:
            self.lost_at_stop = self.journal.take()
            self._journal_taken = True
        problem = self._check_existing()
        if problem is None and self.corrupt is not None and self.path.exists():
            problem = self.corrupt   # seen damaged while running and closed before recover_corrupt()
        existed = self.path.exists()
        if problem is not None:
            target = self._move_aside(problem, announce=False)
            if self._recovery_target is None:   # else: a fresh file of a seeding that failed; salvage the first
                self._recovery_target = (target, problem, _utc_now())
        try:
            self._open_connections()
            self._chain_open(existed)
            if self.lost_at_stop is not None:
                self._record_lost_at_stop(self._wconn, self.lost_at_stop)
        except sqlite3.Error as e:
            self._close_connections()
            raise StoreError(f"{self.path}: cannot open buffer database: {e}") from None
        self.corrupt = self._corrupt_ts = None
        self._halt = False
        self.lost_at_stop = None
        self.journal.clear()
        self._stopping = False
        self._thread = threading.Thread(target=self._writer, name="store-writer", daemon=True)
        self._thread.start()
        return self

    def _open_connections(self) -> None:
        """Connect the writer's and the batch side's connections (WAL, synchronous FULL, the schema).
        Raises sqlite3.Error."""
        self._wconn = self._connect()
        try:
            self._inode = os.stat(self.path).st_ino   # file_problem(): deleted or replaced later
        except OSError:
            self._inode = None
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

    def _close_connections(self) -> None:
        for conn in (self._bconn, self._wconn):
            if conn is not None:
                try:
                    conn.close()
                except sqlite3.Error:
                    pass
        self._bconn = self._wconn = None

    @property
    def is_open(self) -> bool:
        """True once open() has succeeded (the writer runs), until close()."""
        return self._thread is not None

    @property
    def writer_error(self) -> str | None:
        """Why the writer's last commit failed (disk full, read-only, I/O error, locked); None once one
        succeeds."""
        return self._writer_error

    def file_problem(self) -> str | None:
        """One line when the database file of the open store was deleted or replaced by another file (a
        person's rm, a restore over it), else None. The open connections still write the old file (its
        inode lives while open) and the uploader still reads it; what is unsent when the process stops
        is lost with it (the next start seeds a fresh file from the chain position: a store_missing gap)."""
        if self._thread is None or self._inode is None:
            return None
        try:
            ino = os.stat(self.path).st_ino
        except FileNotFoundError:
            return f"{self.path} was deleted while open"
        except OSError:
            return None
        return None if ino == self._inode else f"{self.path} was replaced by another file while open"

    def restart_writer(self) -> bool:
        """Start the writer thread again when it has died (the gateway's record supervisor calls this);
        records it had dequeued are still pending on the Store and are committed first. False when the
        store is not open or the writer is alive, or while recover_corrupt() has stopped it."""
        if self._wconn is None or self._thread is None or self._thread.is_alive() or self._halt:
            return False
        log.error("%s: store writer thread had died; starting it again", self.path)
        self._thread = threading.Thread(target=self._writer, name="store-writer", daemon=True)
        self._thread.start()
        return True

    def _record_lost_at_stop(self, conn: sqlite3.Connection, note: dict[str, Any]) -> None:
        """The previous run stopped (power loss, SIGKILL, a close that could not commit) with records taken
        and never committed: one gap row (reason ``uncommitted_at_stop``: tags, first/last ts, count from the
        journal note) and one ``records_lost`` alarm event, in one transaction, so the loss is uploaded."""
        tags = [str(t) for t in note.get("tags") or [] if t is not None]
        count = note.get("count") if isinstance(note.get("count"), int) else -1
        first, last = note.get("first_ts"), note.get("last_ts")
        conn.execute("BEGIN IMMEDIATE")
        try:
            self._insert_gap(conn, "uncommitted_at_stop", tags, first, last, count)
            self._insert_event(conn, {
                "kind": "records_lost", "severity": "alarm", "reason": "uncommitted_at_stop", "count": count,
                "first_ts": first, "last_ts": last, "why": str(note.get("reason") or "")[:300],
                "detail": "records taken while the store could not commit were lost when the gateway stopped"})
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise
        log.error("%s: the previous run stopped with %s records never committed (%s .. %s, %s); recorded as a gap",
                  self.path, count, first, last, note.get("reason"))

    def note_waiting(self, reason: str, force: bool = False) -> None:
        """Note in the journal what waits uncommitted (records dequeued by the writer and still queued), at
        most every JOURNAL_EVERY_S unless ``force``. Called by the writer while commits fail and by the
        gateway while the store cannot be opened; blocking (an fsync): never from the poll tick."""
        now = time.monotonic()
        if not force and now - self._journal_mono < JOURNAL_EVERY_S:
            return
        self._journal_mono = now
        pending = [*self._pending_r[:5000], *self._pending_e[:1000]]
        heads = []
        for q in (self._rq, self._eq):
            try:
                heads.append(q.queue[0])
                pending.extend(list(q.queue)[:2000] if len(pending) < 5000 else [])
            except IndexError:
                pass
        count = len(self._pending_r) + len(self._pending_e) + self._rq.qsize() + self._eq.qsize()
        if count == 0:
            return
        stamps = [r.get("ts") for r in [*pending, *heads] if isinstance(r.get("ts"), str)]
        tags = {str(r.get("tag")) for r in pending if "tag" in r}
        prev = self.lost_at_stop   # the previous run's note, not yet recorded: this note must not erase it
        if prev is not None:
            if isinstance(prev.get("first_ts"), str):
                stamps.append(prev["first_ts"])
            if isinstance(prev.get("count"), int) and prev["count"] > 0:
                count += prev["count"]
            tags |= {str(t) for t in prev.get("tags") or [] if t is not None}
            reason = f"{reason}; before: {prev.get('reason')}"
        self.journal.note(min(stamps) if stamps else None, _utc_now(), count, sorted(tags), reason)

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

    def _move_aside(self, problem: str, announce: bool = True) -> Path:
        """Rename the database and its -wal / -shm to ``<name>.corrupt-<YYYYmmddTHHMMSSZ>[-n]`` (same
        directory: a rename, no copy; the set-aside file is kept as evidence and never written again);
        sets ``moved_aside`` and returns it. announce: also queue a ``store_corrupt`` alarm event (the
        seeding of the fresh store stores a fuller one instead). Raises OSError."""
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
        log.error("%s: database file is corrupt (%s); moved aside to %s, starting a fresh buffer",
                  self.path, problem, target.name)
        if announce:
            self.put_event({"kind": "store_corrupt", "severity": "alarm", "path": str(self.path),
                            "moved_to": str(target), "problem": problem[:500]})
        return target

    # ------------------------------------------------------------------ chain position / corruption (C17b)
    @staticmethod
    def _db_tip(conn: sqlite3.Connection) -> int:
        """Newest seq of the chain this database knows (a batch row or an anchor), 0 for none."""
        row = conn.execute("SELECT max(s) FROM (SELECT max(seq) AS s FROM batches"
                           " UNION ALL SELECT max(seq) FROM chain_anchor)").fetchone()
        return 0 if row is None or row[0] is None else int(row[0])

    def _chain_open(self, existed: bool) -> None:
        """open(): seed the fresh database from the chain position where needed (a corrupt file set aside,
        a missing file, a file behind the position), then make the in-memory position and its file
        match the database. Raises sqlite3.Error (open() turns it into StoreError)."""
        conn = self._wconn
        assert conn is not None
        pos = ChainPosition(self.chain.path)
        try:
            found = pos.load()
        except ChainPositionError as e:
            log.error("%s; the chain goes on from the database alone", e)
            pos, found = ChainPosition(self.chain.path), False
        if self._recovery_target is not None:
            target, problem, detected = self._recovery_target
            salv = _salvage(target, pos) if target is not None else _Salvage([], [], [], [0, 0], {}, pos)
            self._seed(conn, salv, reason="store_corrupt", target=target, problem=problem, detected=detected,
                       lost=-1, tags=[], when="start")
            self._recovery_target = None
            pos, found = salv.position, found or salv.position.known
        elif found and pos.seq > self._db_tip(conn):
            reason = "store_behind_chain" if existed else "store_missing"
            problem = (f"the database stands at seq {self._db_tip(conn)}, the chain position at {pos.seq}"
                       if existed else f"database file missing; the chain position stands at seq {pos.seq}")
            log.error("%s: %s; carrying the chain on from the position file", self.path, problem)
            self._seed(conn, _Salvage([], [], [], [0, 0], {}, pos), reason=reason, target=None, problem=problem,
                       detected=_utc_now(), lost=-1, tags=[], when="start")
        self.chain = _position_from_conn(conn, self.chain.path, pos if found else None)
        if (found and not self.chain.same_as(pos)) or (not found and self.chain.known):
            self._chain_save()
        self._count_unbatched(conn)

    def _count_unbatched(self, conn: sqlite3.Connection) -> None:
        """Start the unbatched estimate (readings, events) from the database (index scans)."""
        r = conn.execute("SELECT count(*) FROM readings WHERE batch_seq IS NULL").fetchone()[0]
        e = conn.execute("SELECT count(*) FROM events WHERE batch_seq IS NULL").fetchone()[0]
        n = conn.execute("SELECT count(*) FROM readings").fetchone()[0]
        with self._count_lock:
            self._unbatched_est = [r, e]
            self._readings_est = n

    def _seed(self, conn: sqlite3.Connection, salv: _Salvage, *, reason: str, target: Path | None, problem: str,
              detected: str, lost: int, tags: list[str], when: str) -> dict[str, Any]:
        """Seed a fresh database in ONE transaction: chain anchors and the unacknowledged batches of
        ``salv.position`` (those past what the database already holds), the salvaged rows, one gap row
        (reason ``store_corrupt_unreadable`` for reason "store_corrupt", else ``reason``: first_ts = the
        newest batched record's ts, last_ts = ``detected``, count = ``lost`` or -1, ``tags``) and one
        alarm event of kind ``reason``. Returns the summary recover_corrupt() returns. Raises sqlite3.Error."""
        pos = salv.position
        tip = self._db_tip(conn)
        now = _utc_now()
        source = f"moved aside {target.name}" if target is not None else reason
        anchors = sorted((s, h) for s, h in pos.anchors().items() if s > tip)
        resend = [u for _, u in sorted(pos.unacked.items()) if u.seq > tip]
        interval = {"first_ts": pos.record_ts, "last_ts": detected, "count": lost}
        salvaged = {"readings": len(salv.readings), "events": len(salv.events), "gaps": len(salv.gaps)}
        chain = {"seq": pos.seq, "hash": pos.hash, "continued": pos.known, "resent": [u.seq for u in resend]}
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany("INSERT OR REPLACE INTO chain_anchor(seq, hash, set_at, source) VALUES (?,?,?,?)",
                             [(s, h, now, source) for s, h in anchors])
            conn.executemany("INSERT OR IGNORE INTO batches(seq, jws, created_at, dead_letter) VALUES (?,?,?,?)",
                             [(u.seq, u.jws, u.created_at, u.dead_letter) for u in resend])
            conn.executemany("INSERT INTO readings(tag, value, unit, quality, reason, ts, ts_source, point, batch_seq)"
                             " VALUES (?,?,?,?,?,?,?,?,?)", salv.readings)
            conn.executemany("INSERT INTO events(kind, ts, data, batch_seq) VALUES (?,?,?,?)", salv.events)
            conn.executemany("INSERT INTO gaps(reason, tags, first_ts, last_ts, count, recorded_at, batch_seq)"
                             " VALUES (?,?,?,?,?,?,?)", salv.gaps)
            self._insert_gap(conn, "store_corrupt_unreadable" if reason == "store_corrupt" else reason,
                             sorted(tags)[:1000], pos.record_ts, detected, lost)
            self._insert_event(conn, {
                "kind": reason, "severity": "alarm", "path": str(self.path),
                "moved_to": None if target is None else str(target), "problem": problem[:500], "when": when,
                "salvaged": salvaged, "unreadable": salv.unreadable, "lost_interval": interval, "chain": chain,
                "detail": "buffer database replaced by a fresh one; the chain carries on" if pos.known else
                          "buffer database replaced by a fresh one; no chain position known, the chain restarts"})
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise
        if pos.known:
            log.error("%s: fresh buffer seeded (%s): chain goes on after seq %d, %d batch(es) to send again; "
                      "salvaged %s; unreadable %s; gap %s .. %s (%s records)", self.path, reason, pos.seq,
                      len(resend), salvaged, salv.unreadable or "nothing", pos.record_ts, detected, lost)
        else:
            log.error("%s: fresh buffer seeded (%s) without a chain position: the chain restarts at seq 1 and the "
                      "receiver will answer 409 until it is reset; salvaged %s", self.path, reason, salvaged)
        return {"moved_to": None if target is None else str(target), "problem": problem, "salvaged": salvaged,
                "unreadable": dict(salv.unreadable), "lost_interval": interval, "chain": chain}

    def _chain_save(self, must: bool = False) -> None:
        """Write the chain position file (call under ``_block``). A failure is logged once per episode and
        marks the file dirty (rewritten before the next batch is handed out); with ``must`` it raises
        StoreError, so a batch is never sent before its position is on disk."""
        try:
            self.chain.save()
        except OSError as e:
            if not self._chain_dirty:
                log.error("%s: cannot write the chain position %s: %s", self.path, self.chain.path.name,
                          e.strerror or e)
            self._chain_dirty = True
            if must:
                raise StoreError(f"{self.path}: cannot write the chain position {self.chain.path.name}: "
                                 f"{e.strerror or e}") from None
            return
        if self._chain_dirty:
            log.warning("%s: chain position %s written again", self.path, self.chain.path.name)
            self._chain_dirty = False

    def _note_corrupt(self, exc: BaseException, where: str) -> bool:
        """Set ``corrupt`` when ``exc`` says the file is damaged (is_corruption); True then."""
        if not is_corruption(exc):
            return False
        if self.corrupt is None:
            self._corrupt_ts = _utc_now()
            self.corrupt = f"{where}: {str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}"
            log.error("%s: the database file is damaged (%s); records are held in memory until the store is "
                      "recovered (recover_corrupt)", self.path, self.corrupt)
        return True

    def recover_corrupt(self) -> dict[str, Any]:
        """Replace a database found corrupt while running by a fresh one that carries the chain on.

        Blocking (seconds to minutes for a large file): call it off the event loop
        (``asyncio.to_thread``); one call at a time (a lock), safe to call from tests. Steps: stop the
        writer (its dequeued records stay pending on the Store), close both connections, move the file
        and its -wal / -shm aside (``<name>.corrupt-<stamp>``, ``moved_aside``), read back what it still
        holds (read-only, per table and rowid range: unbatched readings, events and gaps, and the rows
        of unacknowledged batches; see _salvage), create the fresh database and seed it in one
        transaction from the chain position (gateway.record.chain_position, kept in memory and in
        ``<name>.chain.json``): anchors so the next batch has seq = last + 1 and prev = hash of the last
        batch, the unacknowledged batches re-inserted unacknowledged (byte-identical JWS, sent again),
        the salvaged rows, ONE gap row (reason ``store_corrupt_unreadable``, first_ts = newest ts that
        went into a batch, last_ts = when the corruption was seen, count = readings + events committed
        and not batched that did not read back as far as the counters tell: an upper bound when
        retention dropped unsent rows since open, those have their own gap rows; tags = tags committed
        since open, at most 1000) and ONE ``store_corrupt`` alarm event (path, moved_to, problem,
        salvaged, unreadable, lost_interval, chain); then the writer starts again with the pending
        records and ``corrupt`` is cleared.

        Returns {"moved_to": str path of the set-aside file, "problem": the ``corrupt`` line,
        "salvaged": {"readings": n, "events": n, "gaps": n}, "unreadable": {table: ranges or rows that
        did not read back, -1: none of the table}, "lost_interval": {"first_ts": RFC 3339 | None,
        "last_ts": RFC 3339, "count": int, -1 unknown}, "chain": {"seq": last seq, "hash": its chain
        hash, "continued": bool, "resent": [seqs re-inserted unacknowledged]}}. When ``corrupt`` is
        None nothing is done and {"moved_to": None, "salvaged": {... 0}, "lost_interval": None} is
        returned. Raises StoreError when the store is not open, the writer does not stop within 30 s, or
        the fresh database cannot be created; ``corrupt`` then stays set and a later call carries on
        (the set-aside file is reused, never moved twice).
        """
        with self._recover_lock:
            if self.corrupt is None:
                return {"moved_to": None, "problem": None, "salvaged": {"readings": 0, "events": 0, "gaps": 0},
                        "unreadable": {}, "lost_interval": None, "chain": None}
            if self._thread is None:
                raise StoreError(f"{self.path}: store is not open")
            problem, detected = self.corrupt, self._corrupt_ts or _utc_now()
            self._halt = True
            self._wake.set()
            if self._thread.is_alive():
                self._thread.join(30.0)
                if self._thread.is_alive():
                    raise StoreError(f"{self.path}: the store writer did not stop within 30 s; recovery postponed")
            with self._block:
                self._close_connections()
                if self._recovery_target is None:
                    try:
                        target = self._move_aside(problem, announce=False) if self.path.exists() else None
                    except OSError as e:
                        raise StoreError(f"{self.path}: cannot move the corrupt database aside: "
                                         f"{e.strerror or e}") from None
                    self._recovery_target = (target, problem, detected)
                target, problem, detected = self._recovery_target
                pos = self.chain.copy()   # in memory: at least as new as its file
            # outside the lock: the batch side refuses while corrupt is set
            salv = _salvage(target, pos) if target is not None else _Salvage([], [], [], [0, 0], {}, pos)
            with self._count_lock:
                est = None if self._unbatched_est is None else list(self._unbatched_est)
                tags = sorted(self._committed_tags)
            lost = -1 if est is None else (max(0, est[0] - salv.unbatched[0]) + max(0, est[1] - salv.unbatched[1]))
            with self._block:
                try:
                    self._open_connections()
                    assert self._wconn is not None
                    summary = self._seed(self._wconn, salv, reason="store_corrupt", target=target, problem=problem,
                                         detected=detected, lost=lost, tags=tags, when="running")
                    self._recovery_target = None
                    self.chain = _position_from_conn(self._wconn, self.chain.path, salv.position)
                    self._chain_save()
                    self._count_unbatched(self._wconn)
                except sqlite3.Error as e:
                    self._close_connections()
                    raise StoreError(f"{self.path}: cannot create a fresh buffer database after corruption: {e}"
                                     ) from None
                self._writer_error = None
                self.corrupt = self._corrupt_ts = None
                self._halt = False
                self._thread = threading.Thread(target=self._writer, name="store-writer", daemon=True)
                self._thread.start()
            return summary

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Block until every record queued before this call is committed.

        Returns True when done, False on timeout (e.g. the database stays locked; while commits are
        failing the wait is at most CLOSE_WHILE_FAILING_S), and at once while ``corrupt`` is set (nothing is committed until recover_corrupt()).
        Used at shutdown and in tests; never call it from the poll tick.
        """
        if self._writer_error:   # commits are failing: a long wait only delays a stop (close() notes the rest)
            timeout_s = min(timeout_s, CLOSE_WHILE_FAILING_S)
        with self._count_lock:
            target = list(self._in)
        deadline = time.monotonic() + timeout_s
        self._wake.set()
        with self._done_cv:
            while self._done[0] < target[0] or self._done[1] < target[1]:
                left = deadline - time.monotonic()
                if left <= 0 or self._thread is None or not self._thread.is_alive() or self.corrupt is not None:
                    return False
                self._wake.set()
                self._done_cv.wait(min(left, 0.1))
        return True

    def close(self, timeout_s: float = 30.0) -> None:
        """Commit what is queued, stop the writer, close both connections. Idempotent. While commits are
        failing it waits at most CLOSE_WHILE_FAILING_S, not ``timeout_s``. Records that could
        not be committed (the store never opened, or commits kept failing) are noted in the journal
        (gateway.record.journal): the next open() records them as a gap. A recover_corrupt() in progress
        finishes first (it starts a writer of its own)."""
        with self._recover_lock:
            if self._thread is not None:
                if self._writer_error:   # commits are failing (disk full, read-only...): waiting longer only
                    timeout_s = min(timeout_s, CLOSE_WHILE_FAILING_S)   # delays the stop (systemd kills at
                self.flush(timeout_s)   # TimeoutStopSec); the journal notes what is left: a gap at the next start
                self._stopping = True
                self._wake.set()
                self._thread.join(timeout_s)
                self._thread = None
            elif self._rq.qsize() or self._eq.qsize():
                self.note_waiting("the store could not be opened", force=True)
            self.journal.close()
            with self._block:
                self._close_connections()

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
        if self.full:   # at the cap with the floor held: keep what is stored, record what was refused (C16)
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
            if self._halt:   # recover_corrupt(): the dequeued records stay pending on self for the next writer
                return
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
                    if self.max_bytes is not None and (pending_r or pending_e) and self.corrupt is None:
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
                    self.journal.clear()   # what waited is committed (a no-op when nothing was noted)
                else:
                    self.note_waiting(self._writer_error or "commit failed")
                    with self._count_lock:     # put the drop counts back for the retry
                        self._merge_drops(self._drops, drops)
                        self._merge_drops(self._ev_drops, ev_drops)
                        self._merge_drops(self._full_drops, full_drops)
                    if stopping:
                        log.error("%s: closing with %d records not committed; the next start records them as a gap",
                                  self.path, len(pending_r) + len(pending_e))
                        self.note_waiting(f"closing: {self._writer_error or 'commit failed'}", force=True)
                        return
                    time.sleep(min(0.2, self.commit_interval_s))
                    continue
            if self.max_bytes is not None and self.corrupt is None:
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
        if self.corrupt is not None:   # a damaged file gets nothing more; the records wait for recover_corrupt()
            self._writer_error = f"store corrupt: {self.corrupt}"
            return False
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
                            "detail": f"buffer reached max_bytes={self.max_bytes} (on_full {self.on_full}); "
                                      "new telemetry is not recorded until records age past the retention floor"})
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise
        except sqlite3.Error as e:
            if self._note_corrupt(e, "commit"):
                self._writer_error = f"store corrupt: {self.corrupt}"
                return False
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
            if self._unbatched_est is not None:
                self._unbatched_est[0] += len(r_rows)
                self._unbatched_est[1] += len(e_rows)
            if self._readings_est is not None:
                self._readings_est += len(r_rows)
            if len(self._committed_tags) < 1000:
                self._committed_tags.update(str(r[0]) for r in r_rows[:5000])
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
        """Keep used bytes + the ``incoming`` rows about to be committed under max_bytes: when the
        projection passes the cap, free space down to 90 % of it; with the retention floor (not waived,
        or policy stop_polling) only records older than the floor go (_retention_floor)."""
        assert self.max_bytes is not None and self._wconn is not None
        conn = self._wconn
        try:
            used = self.used_bytes(conn)
            extra = int(incoming * self._per_row(conn, used)) if incoming else 0
            if self.on_full == "stop_polling" or not self.floor_waived:
                self._retention_floor(conn, used, extra)
                return
            if self.full:   # the floor was waived since (a reload): drop_oldest never refuses telemetry
                self.full = False
                log.warning("%s: retention floor waived; recording telemetry again (drop_oldest)", self.path)
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

    def _retention_floor(self, conn: sqlite3.Connection, used: int, extra: int) -> None:
        """The hard retention floor (C16; SAWS order No. 40). Over max_bytes (while ``full``: over 90 % of
        it) delete, oldest first, only records older than ``retention_floor_s``: acknowledged batches,
        then (drop_oldest) unsent telemetry, then unsent events; if that is not enough, refuse new
        telemetry (``full``) until the used bytes fall under 90 % of the cap. Nothing younger than the
        floor is deleted; stop_polling deletes no unsent data. While full, acknowledged batches are looked
        at every pass (an ack may free them), unsent rows every FULL_RETRY_S, at most FLOOR_SCAN_ROWS a step."""
        assert self.max_bytes is not None
        target = int(self.max_bytes * 0.9)
        if used + extra > self.max_bytes or self.full and used + extra > target:
            now = time.monotonic()
            unsent = self.on_full == "drop_oldest" and (not self.full or now - self._floor_try_mono >= FULL_RETRY_S)
            if unsent:
                self._floor_try_mono = now
            floor = rfc3339(time.time() - self.retention_floor_s)
            for _ in range(50):
                n = max(100, math.ceil((used + extra - target) / self._per_row(conn, used) * 1.1))
                conn.execute("BEGIN IMMEDIATE")
                try:
                    done = self._drop_acked(conn, n, older_than=floor)
                    if not done and unsent:
                        m = min(n, FLOOR_SCAN_ROWS)
                        # events go last (C16): not while a reading past the floor waits to be committed
                        done = self._drop_unsent(conn, "readings", m, older_than=floor) \
                            or (not self._old_pending(floor) and self._drop_unsent(conn, "events", m, older_than=floor))
                    conn.execute("COMMIT")
                except BaseException:
                    _rollback(conn)
                    self._deletes_committed(False)
                    raise
                self._deletes_committed()
                used = self.used_bytes(conn)
                if not done or used + extra <= target:
                    break
        # full once what is stored is near the cap too (not for a projection alone: those rows may be old)
        if used + extra > self.max_bytes and used > target and not self.full:
            self.full = True
            log.error("%s: %s; alarm and trip events still are", self.path, self.full_reason)
        elif self.full and used + extra <= target:
            self.full = False
            log.warning("%s: space freed; recording telemetry again", self.path)

    def _old_pending(self, floor: str) -> bool:
        """True if a reading dequeued and not yet committed is older than ``floor`` (RFC 3339)."""
        return any(str(r.get("ts") or floor) < floor for r in self._pending_r if isinstance(r, dict))

    @property
    def full_reason(self) -> str | None:
        """One line for the system.STORE alarm while ``full`` (new telemetry refused at the cap), else None."""
        if not self.full:
            return None
        kept = "records" if self.on_full == "drop_oldest" else "unsent records and records"
        return (f"store full at max_bytes={self.max_bytes} (on_full {self.on_full}): {kept} younger than the "
                f"{self.retention_floor_s / 86400:g}-day retention floor are kept; new readings are not recorded")

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
            self._deletes_committed(False)
            raise
        self._deletes_committed()
        return done

    def _drop_acked(self, conn: sqlite3.Connection, n: int, older_than: str | None = None) -> bool:
        """Delete about ``n`` rows of the oldest acknowledged batches; False if none may go.

        Kept whatever their age: the newest batch row (the next batch's ``prev``) and every batch
        from the predecessor of the oldest unacknowledged one on (a tombstone for batch N is
        signed with the same ``prev`` as N, the hash of N-1's stored JWS; see dead_letter)."""
        last, oldest_unacked = conn.execute(
            "SELECT (SELECT max(seq) FROM batches), (SELECT min(seq) FROM batches WHERE acked_at IS NULL)").fetchone()
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
            n = conn.execute(f"DELETE FROM {table} WHERE batch_seq IS NOT NULL AND batch_seq <= ?"
                             f" AND batch_seq IN (SELECT seq FROM batches WHERE acked_at IS NOT NULL)", (hi,)).rowcount
            if table == "readings":
                self._count_deleted(n, 0, 0)
        conn.execute("DELETE FROM batches WHERE seq <= ? AND acked_at IS NOT NULL AND seq < ?", (hi, keep_from))
        return True

    def _drop_unsent(self, conn: sqlite3.Connection, table: str, n: int, older_than: str | None = None) -> bool:
        """Delete the oldest ``n`` unsent rows of ``table`` (a gap row, a buffer_overflow event per episode);
        with ``older_than`` (RFC 3339) only those of them whose ts is older. False if none may go."""
        if older_than is not None:   # the floor (C16): of the n oldest by id, only those past it
            col = "tag" if table == "readings" else "kind"
            old = conn.execute(f"SELECT id, {col}, ts FROM (SELECT id, {col}, ts FROM {table} WHERE batch_seq IS NULL"
                               " ORDER BY id LIMIT ?) WHERE ts < ?", (n, older_than)).fetchall()
            if not old:
                return False
            ids = [(i,) for i, _, _ in old]
            tags = list({t for _, t, _ in old})[:1000]
            first, last = min(ts for _, _, ts in old), max(ts for _, _, ts in old)
            reason = "retention_drop_oldest" if table == "readings" else "retention_drop_oldest_events"
            conn.executemany(f"DELETE FROM {table} WHERE id=?", ids)
            self._count_deleted(len(ids) if table == "readings" else 0, len(ids) if table == "readings" else 0,
                                len(ids) if table == "events" else 0)
            return self._dropped_unsent(conn, table, reason, tags, first, last, len(ids))
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
        n = conn.execute(f"DELETE FROM {table} WHERE batch_seq IS NULL AND id BETWEEN ? AND ?", (lo, hi)).rowcount
        self._count_deleted(n if table == "readings" else 0, n if table == "readings" else 0,
                            n if table == "events" else 0)
        return self._dropped_unsent(conn, table, reason, tags, first, last, len(ids))

    def _count_deleted(self, readings: int, unbatched_readings: int, unbatched_events: int) -> None:
        """Note a retention delete (rows, unbatched readings, unbatched events) for the row counters of
        stats(); applied by _deletes_committed once its transaction commits, forgotten at a rollback."""
        d = self._deleted
        d[0] += readings
        d[1] += unbatched_readings
        d[2] += unbatched_events

    def _deletes_committed(self, committed: bool = True) -> None:
        d, self._deleted = self._deleted, [0, 0, 0]
        if not committed:
            return
        with self._count_lock:
            if self._readings_est is not None:
                self._readings_est = max(0, self._readings_est - d[0])
            if self._unbatched_est is not None:
                self._unbatched_est[0] = max(0, self._unbatched_est[0] - d[1])
                self._unbatched_est[1] = max(0, self._unbatched_est[1] - d[2])

    def _dropped_unsent(self, conn: sqlite3.Connection, table: str, reason: str, tags: list, first: str | None,
                        last: str | None, count: int) -> bool:
        """Record ``count`` deleted unsent rows: a gap row, the counter, a rate-limited log line, and one
        buffer_overflow event per episode."""
        self._insert_gap(conn, reason, sorted(t for t in tags if t is not None), first, last, count)
        with self._count_lock:
            self._dropped_total += count
        self._drop_log_n += count
        now = time.monotonic()
        if now - self._drop_log_mono > 60.0:      # rate-limited: one line a minute
            log.warning("%s: max_bytes=%d reached; dropped %d oldest unsent %s (now up to %s)",
                        self.path, self.max_bytes, self._drop_log_n, table, last)
            self._drop_log_mono, self._drop_log_n = now, 0
        if self._overflow_event_due():
            floor = "" if self.floor_waived else f" older than the {self.retention_floor_s / 86400:g}-day floor"
            self._insert_event(conn, {
                "kind": "buffer_overflow", "severity": "alarm", "reason": reason, "dropped": count,
                "detail": f"buffer reached max_bytes={self.max_bytes}; oldest unsent {table}{floor} dropped"})
        return True

    # ------------------------------------------------------------------ batch side (Batcher / Forwarder)
    def _b(self) -> sqlite3.Connection:
        if self._bconn is None:
            raise StoreError(f"{self.path}: store is not open")
        return self._bconn

    @contextmanager
    def _batch_side(self, what: str) -> Iterator[sqlite3.Connection]:
        """The batch connection under ``_block``. Raises StoreError while ``corrupt`` is set (the damaged
        file is not read again; recover_corrupt() replaces it); an sqlite3.DatabaseError that says the
        file is damaged (is_corruption) sets ``corrupt`` (``what``: the method) and is raised on."""
        if self.corrupt is not None:
            raise StoreError(f"{self.path}: store is corrupt ({self.corrupt}); waiting for recover_corrupt()")
        with self._block:
            if self.corrupt is not None:
                raise StoreError(f"{self.path}: store is corrupt ({self.corrupt}); waiting for recover_corrupt()")
            conn = self._b()
            try:
                yield conn
            except sqlite3.DatabaseError as e:
                self._note_corrupt(e, what)
                raise

    def last_samples(self, tags: list[str]) -> dict[str, tuple[str, str, type, Any]]:
        """The newest stored device- or server-stamped reading of each tag as (ts RFC 3339, quality, type of
        the value, value): the gateway's key of a sample (gateway.runtime.gateway, on_readings); a tag whose
        stored value text is not JSON is left out.

        Used at start so a sample re-delivered after a restart (an OPC UA subscription sends the current
        value with its original source timestamp) is not stored twice. One pass over the table (no extra
        index slows ingest), bounded by the retention cap."""
        wanted = set(tags)
        out: dict[str, tuple[str, str, type, Any]] = {}
        with self._batch_side("last_samples") as conn:
            for tag, ts, quality, value in conn.execute(
                    "SELECT tag, ts, quality, value FROM readings WHERE id IN"
                    " (SELECT max(id) FROM readings WHERE ts_source != 'local' GROUP BY tag)"):
                if tag in wanted:
                    try:
                        v = json.loads(value) if value is not None else None
                    except ValueError:
                        continue
                    out[tag] = (ts, quality, type(v), v)
        return out

    def last_batch(self) -> tuple[int, str] | None:
        """(seq, jws) of the newest batch stored (acked or not), or None. A store seeded from the chain
        position (C17b) knows older links by hash only (``chain.seq`` / ``chain.hash``): None until
        its first batch."""
        with self._batch_side("last_batch") as conn:
            row = conn.execute("SELECT seq, jws FROM batches ORDER BY seq DESC LIMIT 1").fetchone()
        return None if row is None else (row[0], row[1])

    def unacked_batch(self) -> tuple[int, str] | None:
        """(seq, jws) of the oldest unacknowledged batch (a tombstone included), or None. Raises
        StoreError when the chain position file lags (a write failed) and still cannot be written: a
        batch is not sent before its position is on disk."""
        with self._batch_side("unacked_batch") as conn:
            if self._chain_dirty:
                self._chain_save(must=True)
            row = conn.execute("SELECT seq, jws FROM batches WHERE acked_at IS NULL"
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
        the chain continues across restarts; ``prev_jws`` is the last stored JWS, or, in a
        store seeded from the chain position (C17b) before its first batch, a
        gateway.record.chain_position.PrevHash (the last batch's chain hash: the maker uses it as
        ``prev`` as it is, gateway.record.chain_position.prev_value). After the commit the chain
        position file is written (raises StoreError when it cannot be: the batch stays
        stored and is handed out by unacked_batch() once its position is on disk).
        """
        with self._batch_side("new_batch") as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                last = conn.execute("SELECT seq, jws FROM batches ORDER BY seq DESC LIMIT 1").fetchone()
                anchor = conn.execute("SELECT seq, hash FROM chain_anchor ORDER BY seq DESC LIMIT 1").fetchone()
                if anchor is not None and (last is None or anchor[0] > last[0]):
                    last = (anchor[0], PrevHash(anchor[1]))   # seeded from the chain position: hash only
                rrows = conn.execute(
                    "SELECT id, tag, value, unit, quality, reason, ts, ts_source, point,"
                    " value IS NULL OR json_valid(value) FROM readings"
                    " WHERE batch_seq IS NULL ORDER BY id LIMIT ?", (max_readings,)).fetchall()
                # every text one JSON value (json_valid): parse them all in one call; else one by one
                texts = [r[2] for r in rrows]
                values = _decode_values(texts) if all(r[9] for r in rrows) else \
                    [json.loads(t) if t is not None else None for t in texts]
                readings = []
                for r, v in zip(rrows, values):
                    rec = {"tag": r[1], "value": v, "unit": r[3], "quality": r[4], "reason": r[5], "ts": r[6],
                           "ts_source": r[7]}
                    if r[8]:
                        rec["point"] = r[8]
                    readings.append((r[0], rec))
                del rrows, texts, values
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
                if readings:   # the oldest unbatched ids up to the last one taken: exactly these rows (write lock held)
                    n = conn.execute("UPDATE readings SET batch_seq=? WHERE batch_seq IS NULL AND id BETWEEN ? AND ?",
                                     (seq, readings[0][0], readings[-1][0])).rowcount
                    if n != len(readings):
                        raise StoreError(f"{self.path}: batch {seq}: {n} readings marked, {len(readings)} taken")
                for table, items in (("events", events), ("gaps", gaps)):
                    if items:
                        conn.executemany(f"UPDATE {table} SET batch_seq=? WHERE id=?", [(seq, i) for i, _ in items])
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise
            with self._count_lock:
                if self._unbatched_est is not None:
                    self._unbatched_est[0] = max(0, self._unbatched_est[0] - len(readings))
                    self._unbatched_est[1] = max(0, self._unbatched_est[1] - len(events))
            r_ts = [str(r["ts"]) for _, r in readings if r.get("ts")]
            e_ts = [str(e["ts"]) for _, e in events if isinstance(e, dict) and e.get("ts")]
            self.chain.created(seq, jws, created_at, prev_value(None if last is None else last[1]),
                               max(r_ts) if r_ts else None, max(e_ts) if e_ts else None)
            self._chain_save(must=True)
        return seq, jws

    def mark_acked(self, seq: int) -> bool:
        """Record the receiver's acknowledgement of batch ``seq``; its rows now count as
        sent. Returns False if the batch is unknown or was already acked. The chain position
        file is updated (a failed write is logged and retried before the next batch is handed out;
        until then a recovery would send this batch again: the receiver answers "duplicate")."""
        with self._batch_side("mark_acked") as conn:
            cur = conn.execute("UPDATE batches SET acked_at=? WHERE seq=? AND acked_at IS NULL",
                               (_utc_now(), seq))
            if cur.rowcount == 1:
                self.chain.acked_batch(seq)
                self._chain_save()
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
        with self._batch_side("dead_letter") as conn:
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
                from gateway.chain.signing import chain_hash   # local: store stays importable without signing
                ev = {"kind": "batch_dead_lettered", "severity": "alarm", "ts": _utc_now(), "seq": seq,
                      "status": status, "reason": reason[:300], "original_hash": chain_hash(original)}
                ev_id = conn.execute("INSERT INTO events(kind, ts, data, batch_seq) VALUES (?,?,?,?)",
                                     (ev["kind"], ev["ts"], json.dumps(ev), seq)).lastrowid
                prev = conn.execute("SELECT jws FROM batches WHERE seq=?", (seq - 1,)).fetchone()
                if prev is None and seq > 1:   # a store seeded from the chain position holds seq - 1 by hash
                    anchor = conn.execute("SELECT hash FROM chain_anchor WHERE seq=?", (seq - 1,)).fetchone()
                    prev = None if anchor is None else (PrevHash(anchor[0]),)
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
            self.chain.replaced(seq, jws, created_at, reason[:300])
            self._chain_save()
        return True

    def dead_letters(self) -> list[dict[str, Any]]:
        """Set-aside batches, oldest first: [{seq, jws (the original), reason, status, dead_at}]."""
        with self._batch_side("dead_letters") as conn:
            rows = conn.execute("SELECT seq, jws, reason, status, dead_at FROM dead_letters ORDER BY seq"
                                ).fetchall()
        return [dict(zip(("seq", "jws", "reason", "status", "dead_at"), r)) for r in rows]

    def stats(self) -> dict[str, Any]:
        """Counters for the status view and health checks.

        readings_total: rows in the readings table (counted at open, then kept by the writer: rows
        inserted or deleted by another program meanwhile are not seen); readings_unsent: rows not in an
        acknowledged batch (unbatched ones counted exactly up to STATS_EXACT_ROWS, beyond from the
        counter); oldest_unsent_ts: RFC 3339 ts of the oldest of those (None; beyond STATS_EXACT_ROWS
        unbatched rows, the oldest among the STATS_EXACT_ROWS oldest by id: readings are stored in time order);
        batches_unacked: batches not yet acked; batches_dead_letter: batches set aside;
        last_acked_seq (None); queue_depth: records waiting in memory; dropped: records
        dropped since open (queue overflow, retention, refused while full, unserialisable), each
        one also in a gap row; readings_committed: readings committed since open (taken, C15);
        used_bytes; writer_error: the
        last commit error while writes are failing (e.g. "database is locked"), else None.
        last_acked_seq counts a chain anchor (a store seeded from the chain position, C17b).
        Raises StoreError while ``corrupt`` is set.
        """
        with self._batch_side("stats") as c:
            cap = STATS_EXACT_ROWS
            # no scan of the whole table once a second: the row count is kept by the writer (counted at open,
            # then every insert and retention delete); the unbatched rows are counted exactly up to
            # STATS_EXACT_ROWS (a bounded index scan; normally a batch or less), beyond from the counter
            with self._count_lock:
                total = self._readings_est
            if total is None:
                total = c.execute("SELECT count(*) FROM readings").fetchone()[0]
            unbatched, oldest = c.execute(
                "SELECT count(*), min(ts) FROM (SELECT ts FROM readings WHERE batch_seq IS NULL ORDER BY id LIMIT ?)",
                (cap + 1,)).fetchone()
            in_unacked, oldest_b = c.execute(
                "SELECT count(*), min(ts) FROM readings WHERE batch_seq IN"
                " (SELECT seq FROM batches WHERE acked_at IS NULL)").fetchone()
            # the batches' own columns are not read: they sit behind the JWS (overflow pages); the unacknowledged
            # seqs come from the index batches_unacked, the newest acknowledged one is the newest seq not among them
            open_seqs = {r[0] for r in c.execute("SELECT seq FROM batches WHERE acked_at IS NULL")}
            unacked = len(open_seqs)
            dead = c.execute("SELECT count(*) FROM dead_letters").fetchone()[0]
            newest = c.execute("SELECT seq FROM batches ORDER BY seq DESC LIMIT ?", (unacked + 1,)).fetchall()
            last_acked = next((seq for (seq,) in newest if seq not in open_seqs), None)
            anchor = c.execute("SELECT max(seq) FROM chain_anchor").fetchone()[0]
            if anchor is not None and (last_acked is None or anchor > last_acked):
                last_acked = anchor
            used = self.used_bytes(c)
        with self._count_lock:
            dropped = self._dropped_total
            committed = self._committed_readings
            est = None if self._unbatched_est is None else self._unbatched_est[0]
        if unbatched > cap and est is not None:
            unbatched = max(unbatched, est)
        unsent = unbatched + in_unacked
        if oldest_b is not None and (oldest is None or oldest_b < oldest):
            oldest = oldest_b
        return {"readings_total": total, "readings_unsent": unsent, "oldest_unsent_ts": oldest,
                "batches_unacked": unacked, "batches_dead_letter": dead, "last_acked_seq": last_acked,
                "queue_depth": self._rq.qsize() + self._eq.qsize(), "dropped": dropped, "readings_committed": committed,
                "used_bytes": used, "writer_error": self._writer_error}
