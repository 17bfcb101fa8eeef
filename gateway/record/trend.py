"""Read-only queries of the store for people (the status page's trends): the one place besides the writer
(gateway.record.store, whose SCHEMA this reads) that knows the readings table.

The store is opened with ``mode=ro`` (SQLite docs "URI filenames"): this connection can neither write nor take a
write lock, so a query never delays a commit of the writer (WAL: readers and the writer do not block each other).
Nothing here imports the writer. Every query is bounded in time: SQLite's progress handler interrupts it after
``budget_s`` (TrendError "query took longer than ...").

readings rows: ``tag``, ``value`` (JSON text: a number, true/false, null), ``unit``, ``quality`` (good | uncertain |
bad), ``ts`` (RFC 3339 UTC with milliseconds and 'Z', the gateway's receive time unless the device gave one), in
insertion order by ``id``.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

from gateway.model import rfc3339

MAX_POINTS = 1000
MAX_HOURS = 168.0


class TrendError(Exception):
    """The store cannot answer (missing, not a store, locked, corrupt, too slow); str() is one line."""


class ReadOnlyStore:
    """A read-only connection to the store at ``path`` (``mode=ro``; the file is never created), opened on first
    use and again after an error. Each query is interrupted after ``budget_s`` seconds (TrendError). One
    connection per thread that uses it (the status page's server thread holds one behind a lock)."""

    def __init__(self, path: Path, budget_s: float = 5.0) -> None:
        self.path = path
        self.budget_s = budget_s
        self._conn: sqlite3.Connection | None = None
        self._deadline = 0.0

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            if not self.path.is_file():
                raise TrendError(f"store {self.path} does not exist (yet)")
            conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=1.0,
                                   check_same_thread=False, isolation_level=None)
            conn.set_progress_handler(lambda: 1 if time.monotonic() > self._deadline else 0, 10_000)
            self._conn = conn
        self._deadline = time.monotonic() + self.budget_s
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def trend(self, tag: str, hours: float, *, now_s: float | None = None,
              max_points: int = MAX_POINTS) -> dict[str, Any]:
        """:func:`tag_trend` on this store; a failed query closes the connection (the next one reopens)."""
        try:
            return tag_trend(self._connection(), tag, hours, now_s=now_s, max_points=max_points,
                             budget_s=self.budget_s)
        except TrendError:
            self.close()
            raise


def _first_id_since(conn: sqlite3.Connection, since_ts: str) -> int | None:
    """The smallest id whose row (or a later one) is at or after ``since_ts``, by binary search over the id order
    (readings are inserted in time order, so this is O(log n) lookups of the primary key instead of a scan of
    ts). None for an empty table."""
    lo, hi = conn.execute("SELECT min(id), max(id) FROM readings").fetchone()
    if lo is None:
        return None
    hi += 1
    while lo < hi:
        mid = (lo + hi) // 2
        row = conn.execute("SELECT id, ts FROM readings WHERE id >= ? ORDER BY id LIMIT 1", (mid,)).fetchone()
        if row is None or row[1] >= since_ts:
            hi = mid
        else:
            lo = row[0] + 1
    return lo


def tag_trend(conn: sqlite3.Connection, tag: str, hours: float, *, now_s: float | None = None,
              max_points: int = MAX_POINTS, budget_s: float = 5.0) -> dict[str, Any]:
    """The last ``hours`` (0 < hours <= MAX_HOURS) of ``tag``, downsampled to at most ``max_points`` buckets.

    Returns {"tag", "from", "to" (epoch s), "bucket_s", "unit" (the latest stored, or None), "raw" (readings
    found), "points": [[t, min, max], ...]}: t is the bucket's start (epoch s), min and max of the numeric
    readings of good or uncertain quality in it (true/false count as 1/0), both None for a bucket that held
    only bad readings (a gap the chart leaves open). Empty buckets are left out. ValueError for hours out of
    range; TrendError when the store cannot answer.

    A reading whose ts is before the window but that was inserted after a later one (a device clock stepped back)
    may be left out: the window starts at the first row in insertion order whose ts is inside it.
    """
    if not 0 < hours <= MAX_HOURS:
        raise ValueError(f"hours must be > 0 and <= {MAX_HOURS:g}")
    now = time.time() if now_s is None else now_s
    since = now - hours * 3600.0
    width = max(hours * 3600.0 / max_points, 0.001)
    since_ts = rfc3339(since)
    try:
        first = _first_id_since(conn, since_ts)
        if first is None:
            rows, unit, raw = [], None, 0
        else:
            rows = conn.execute(
                """
                SELECT CAST(((julianday(ts) - 2440587.5) * 86400.0 - :since) / :width AS INTEGER) AS b,
                       min(v), max(v), count(*)
                FROM (SELECT id, ts,
                             CASE WHEN quality = 'bad' THEN NULL
                                  WHEN value IN ('true', 'false') THEN (value = 'true') * 1.0
                                  WHEN json_valid(value) AND json_type(value) IN ('integer', 'real')
                                       THEN CAST(value AS REAL) END AS v
                      FROM readings WHERE id >= :first AND tag = :tag AND ts >= :since_ts)
                GROUP BY b ORDER BY b
                """, {"since": since, "width": width, "first": first, "tag": tag, "since_ts": since_ts}).fetchall()
            got = conn.execute("SELECT unit FROM readings WHERE id >= ? AND tag = ? ORDER BY id DESC LIMIT 1",
                               (first, tag)).fetchone()
            unit = got[0] if got else None
            raw = sum(r[3] for r in rows)
    except sqlite3.OperationalError as exc:
        msg = str(exc)
        if "interrupted" in msg:
            raise TrendError(f"query took longer than {budget_s:g} s") from None
        raise TrendError(msg) from None
    except sqlite3.DatabaseError as exc:
        raise TrendError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
    points = [[round(since + b * width, 3), mn, mx] for b, mn, mx, _n in rows if b is not None and b >= 0]
    return {"tag": tag, "from": round(since, 3), "to": round(now, 3), "bucket_s": round(width, 3), "unit": unit,
            "raw": raw, "points": points[-max_points:]}
