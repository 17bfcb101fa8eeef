"""The regulator receiver's store: accepted batches, announced keys, parked batches, basic data.

Two backends behind one class, :class:`ReceiverStore`, chosen by its target (docs/design.md, "Receiver storage"):

* a filesystem path: SQLite, embedded, the default (WAL mode, ``synchronous=FULL``: an ack is only sent for a
  batch that is durable; writers serialise with ``BEGIN IMMEDIATE``; SQLite docs, "Write-Ahead Logging" and
  "PRAGMA synchronous");
* a ``postgresql://`` (or ``postgres://``) URL (a libpq connection URI, PostgreSQL docs, "Connection URIs"):
  PostgreSQL through psycopg 3, for a platform that runs several receiver processes on one database. A small pool
  of autocommit connections serves the reads; :meth:`ReceiverStore.transaction` takes one for the duration of an
  explicit ``BEGIN ISOLATION LEVEL READ COMMITTED`` ... ``COMMIT`` (autocommit off inside). A connection that
  broke (server restart, ``pg_terminate_backend``) is dropped and a fresh one is made; the receiver answers 503
  to the request that met the break and nothing is stored.

Schema: one set of tables for both (TEXT, BIGINT, composite primary keys, ``ON CONFLICT`` upserts; SQLite reads
BIGINT as INTEGER affinity, SQLite docs, "Datatypes", s.3.1):

* ``batches (gateway_id, seq) PRIMARY KEY``: the exact compact JWS as received, its chain hash, kid, created_at,
  received_at (RFC 3339 UTC, milliseconds, ``Z``: fixed width, so text order is time order), counts;
* ``keys (kid PRIMARY KEY)``: keys added by ``announce_key``, bound to the announcing gateway;
* ``parked (gateway_id, seq) PRIMARY KEY``: verified batches that arrived ahead of a gap (out-of-order delivery,
  see gateway.regulator.receiver, "Out-of-order delivery");
* ``basic_data (gateway_id PRIMARY KEY)``: the latest basic-data record of each gateway (the highest seq);
* ``schema_migrations (version PRIMARY KEY, applied_at, description)``.

Migrations are explicit and numbered (:data:`MIGRATIONS`). Opening with ``create=True`` applies the missing ones
in order, each in its own transaction that also records its row in ``schema_migrations``; two processes opening
at once serialise on the write lock (SQLite ``BEGIN IMMEDIATE``; PostgreSQL a transaction-level advisory lock),
and the second finds the work done. A store made before migrations existed (``batches`` and ``keys`` but no
``schema_migrations``) is adopted as version 1. A store whose version is newer than :data:`SCHEMA_VERSION` is
refused with one line (ReceiverError), with ``create=False`` too; ``create=False`` applies nothing (export and
reports read what is there).

Exactly-once with several receivers on one PostgreSQL: :meth:`ReceiverStore.transaction` takes
``pg_advisory_xact_lock`` on the gateway (and on each kid the decision reads or binds) before the first read, so
all writers of one gateway run one after another: the second one's reads (READ COMMITTED takes a fresh snapshot
per statement, PostgreSQL docs, "Transaction Isolation", s.13.2.1) see what the first committed, and it answers
"duplicate" instead of storing twice; the primary key (gateway_id, seq) stays the last guard. Chosen over
SERIALIZABLE with retry because every upload of a batch to two receivers would then abort one of the two
(40001) and cost a round of 503s and resends; the lock makes it wait a few milliseconds instead. Locks are
taken gateway first, then kids in sorted order, so they cannot deadlock; a kid locked later in the same
transaction (a parked successor signed by another key) may, and then PostgreSQL's deadlock detection aborts one
transaction (503, resent). The lock keys are (27502, hash of gateway_id) and (27503, hash of kid), migrations
(27501, 0): a database shared with other software must not use these advisory lock classes.

Errors: a failed write, a failed COMMIT, a lost connection, a lock not granted within ``busy_timeout_s`` roll
the transaction back and raise: sqlite3.Error on SQLite, :class:`StoreUnavailable` on PostgreSQL (its
``__cause__`` is the psycopg error); :data:`STORE_ERRORS` is the tuple the HTTP layer answers 503 for, so no
batch is acknowledged that is not committed. ReceiverError (one line) for a store that cannot be opened.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import sqlite3
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence
from urllib.parse import urlsplit, urlunsplit

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.chain.signing import canonical_json, decode_unverified, public_key_from_jwk
from gateway.model import rfc3339

log = logging.getLogger("gateway.regulator.storage")

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "STORE_ERRORS", "Migration", "ReceiverError", "ReceiverStore",
           "StoreUnavailable", "StoredBatch", "is_url", "parse_since"]


class ReceiverError(ValueError):
    """A receiver start/export problem a person must fix; str() is one line (a ValueError, so the
    CLI prints it as one line)."""


class StoreUnavailable(RuntimeError):
    """A PostgreSQL store could not take a transaction (connection lost, lock timeout, serialization failure,
    deadlock, a failed COMMIT): it was rolled back, nothing was stored; the receiver answers 503. str() is one
    line; ``__cause__`` is the psycopg error."""


#: what a submit may raise when the store is busy or a write fails: the receiver answers 503 with Retry-After
STORE_ERRORS: tuple[type[BaseException], ...] = (sqlite3.Error, StoreUnavailable)


@dataclass(frozen=True, slots=True)
class StoredBatch:
    """One accepted batch as stored: ``jws`` is the exact compact JWS received."""

    gateway_id: str
    seq: int
    jws: str
    hash: str
    kid: str
    created_at: str
    received_at: str
    n_readings: int
    n_events: int


@dataclass(frozen=True, slots=True)
class Migration:
    """One numbered schema step: ``statements`` run in order in one transaction (the same SQL on both backends)."""

    version: int
    description: str
    statements: tuple[str, ...]


#: the schema history, applied in order; never edit a released step, append a new one
MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "batches and announced keys", (
        """CREATE TABLE IF NOT EXISTS batches (
            gateway_id  TEXT    NOT NULL,
            seq         BIGINT  NOT NULL,
            jws         TEXT    NOT NULL,
            hash        TEXT    NOT NULL,
            kid         TEXT    NOT NULL,
            created_at  TEXT    NOT NULL,
            received_at TEXT    NOT NULL,
            n_readings  BIGINT  NOT NULL,
            n_events    BIGINT  NOT NULL,
            PRIMARY KEY (gateway_id, seq))""",
        "CREATE INDEX IF NOT EXISTS batches_kid ON batches (kid)",
        """CREATE TABLE IF NOT EXISTS keys (
            kid          TEXT PRIMARY KEY,
            jwk          TEXT    NOT NULL,
            gateway_id   TEXT    NOT NULL,
            announced_by TEXT    NOT NULL,
            announced_in_seq BIGINT NOT NULL,
            added_at     TEXT    NOT NULL)""",
    )),
    Migration(2, "parked batches (out-of-order delivery); export by received_at", (
        """CREATE TABLE IF NOT EXISTS parked (
            gateway_id  TEXT    NOT NULL,
            seq         BIGINT  NOT NULL,
            jws         TEXT    NOT NULL,
            kid         TEXT    NOT NULL,
            received_at TEXT    NOT NULL,
            PRIMARY KEY (gateway_id, seq))""",
        "CREATE INDEX IF NOT EXISTS batches_received_at ON batches (received_at)",
    )),
    Migration(3, "basic data: the latest record of each gateway", (
        """CREATE TABLE IF NOT EXISTS basic_data (
            gateway_id  TEXT PRIMARY KEY,
            seq         BIGINT  NOT NULL,
            config_hash TEXT    NOT NULL,
            doc         TEXT    NOT NULL,
            received_at TEXT    NOT NULL)""",
    )),
)
SCHEMA_VERSION = MIGRATIONS[-1].version

_MIGRATIONS_TABLE = """CREATE TABLE IF NOT EXISTS schema_migrations (
    version     INTEGER PRIMARY KEY,
    applied_at  TEXT    NOT NULL,
    description TEXT    NOT NULL)"""
_COLS = "gateway_id, seq, jws, hash, kid, created_at, received_at, n_readings, n_events"
_LOCK_MIGRATE, _LOCK_GATEWAY, _LOCK_KID = 27501, 27502, 27503
_RFC3339 = re.compile(r"\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d:\d\d(\.\d+)?([Zz]|[+-]\d\d:\d\d)")


def is_url(target: str | os.PathLike[str]) -> bool:
    """True for a ``postgresql://`` or ``postgres://`` URL (a PostgreSQL store), False for a path."""
    return isinstance(target, str) and target.lower().startswith(("postgresql://", "postgres://"))


def _shown(url: str) -> str:
    """The URL with its password (in the user part or a ``password=`` parameter) replaced by ``***``, for
    messages and logs."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "postgresql://(unparsable URL)"
    if parts.query:
        parts = parts._replace(query=re.sub(r"(?i)(^|&)(password=)[^&]*", r"\1\2***", parts.query))
    if password is not None:
        netloc = parts.netloc.rsplit("@", 1)
        parts = parts._replace(netloc=f"{netloc[0].split(':', 1)[0]}:***@{netloc[1]}")
    return urlunsplit(parts)


def parse_since(since: str) -> str:
    """An RFC 3339 date-time (RFC 3339 s.5.6: a "T" or space, an offset or ``Z``, optional fraction) -> the
    receiver's ``received_at`` form of the same instant in UTC (milliseconds, ``Z``), rounded up to the next
    millisecond, so ``received_at >= parse_since(s)`` as text is "received at or after s". ValueError (one line)."""
    s = since.strip()
    if not _RFC3339.fullmatch(s):
        raise ValueError(f"--since {since!r} is not an RFC 3339 date-time (e.g. 2026-01-31T00:00:00Z)")
    norm = s[:10] + "T" + s[11:]
    norm = norm[:-1] + "+00:00" if norm[-1] in "Zz" else norm
    frac = re.search(r"\.(\d+)", norm)
    if frac and len(frac.group(1)) > 6:   # fromisoformat takes at most microseconds; more digits only round up
        extra = int(frac.group(1)[6:]) > 0
        norm = norm[:frac.start(1) + 6] + norm[frac.end(1):]
    else:
        extra = False
    try:
        dt = datetime.fromisoformat(norm).astimezone(timezone.utc)
    except ValueError:
        raise ValueError(f"--since {since!r} is not a valid date-time") from None
    if dt.microsecond % 1000 or extra:
        dt = dt.replace(microsecond=dt.microsecond - dt.microsecond % 1000) + timedelta(milliseconds=1)
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _lock_key(text: str) -> int:
    """A signed 32-bit advisory lock key for ``text`` (first 4 bytes of its SHA-256); a collision only
    serialises two unrelated writers."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:4], "big", signed=True)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


class _PgPool:
    """A few idle autocommit psycopg connections, made on demand; a broken or closed one is dropped on return."""

    def __init__(self, url: str, connect_timeout_s: float, max_idle: int = 8) -> None:
        import psycopg
        from psycopg.conninfo import conninfo_to_dict

        self._psycopg = psycopg
        self._url = url
        given = conninfo_to_dict(url)
        self._kwargs: dict[str, Any] = {"autocommit": True}
        if "connect_timeout" not in given:
            self._kwargs["connect_timeout"] = max(2, int(connect_timeout_s + 0.999))
        if "application_name" not in given:
            self._kwargs["application_name"] = "hazard-gateway-receiver"
        self._idle: list[Any] = []
        self._lock = threading.Lock()
        self._max_idle = max_idle
        self._closed = False

    def connect(self) -> Any:
        return self._psycopg.connect(self._url, **self._kwargs)

    def get(self) -> Any:
        with self._lock:
            while self._idle:
                conn = self._idle.pop()
                if not (conn.closed or conn.broken):
                    return conn
        return self.connect()

    def put(self, conn: Any) -> None:
        TS = self._psycopg.pq.TransactionStatus
        if not (conn.closed or conn.broken) and conn.info.transaction_status != TS.IDLE:
            with contextlib.suppress(self._psycopg.Error):
                conn.rollback()
        with self._lock:
            keep = (not self._closed and not (conn.closed or conn.broken)
                    and conn.info.transaction_status == TS.IDLE and len(self._idle) < self._max_idle)
            if keep:
                self._idle.append(conn)
                return
        with contextlib.suppress(Exception):
            conn.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            with contextlib.suppress(Exception):
                conn.close()


class ReceiverStore:
    """The receiver's store (module docstring): SQLite for a path, PostgreSQL for a ``postgresql://`` URL.

    Several ReceiverStore objects (threads or processes) may open the same file or database; writers serialise
    in :meth:`transaction`. ``create=False`` applies no migration and raises ReceiverError when the file does not
    exist or holds no receiver store (for export and reporting). ``busy_timeout_s``: how long a writer waits for
    the write lock (SQLite busy timeout; PostgreSQL ``lock_timeout`` and the connect timeout) before the store
    error that the receiver answers 503 for. ``path`` is the SQLite file (None for PostgreSQL), ``target`` the
    store as shown in messages (a URL without its password), ``dialect`` "sqlite" or "postgresql".
    """

    def __init__(self, target: str | os.PathLike[str], *, create: bool = True, busy_timeout_s: float = 5.0) -> None:
        self._local = threading.local()
        self._lock = threading.RLock()
        self._busy_timeout_s = busy_timeout_s
        self._pool: _PgPool | None = None
        if is_url(target):
            assert isinstance(target, str)
            self.dialect = "postgresql"
            self.path: Path | None = None
            self.target = _shown(target)
            self._open_pg(target, busy_timeout_s)
        else:
            self.dialect = "sqlite"
            self.path = Path(target)
            self.target = str(self.path)
            if not create and not self.path.is_file():
                raise ReceiverError(f"{self.path}: no such receiver store")
            try:
                self._db = sqlite3.connect(self.path, timeout=busy_timeout_s, isolation_level=None,
                                           check_same_thread=False)
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")
            except sqlite3.DatabaseError as exc:
                raise ReceiverError(f"{self.path}: cannot open receiver store: {exc}") from None
        try:
            self.schema_version = self._migrate() if create else self._check_version()
        except ReceiverError:
            self.close()
            raise
        except (sqlite3.Error, StoreUnavailable) as exc:
            self.close()
            raise ReceiverError(f"{self.target}: cannot open receiver store: {_one_line(exc)}") from None
        self._C = ' COLLATE "C"' if self.dialect == "postgresql" else ""   # byte order of text on both

    def _open_pg(self, url: str, busy_timeout_s: float) -> None:
        try:
            import psycopg  # noqa: F401
        except ImportError:
            raise ReceiverError(f"{self.target}: a PostgreSQL store needs psycopg 3, which is not installed: "
                                f"pip install 'hazard-gateway[receiver]'") from None
        try:
            self._pool = _PgPool(url, busy_timeout_s)
            self._pool.put(self._pool.connect())   # fail now, with one line, when the server is not there
        except psycopg.Error as exc:
            raise ReceiverError(f"{self.target}: cannot open receiver store: {_one_line(exc)}") from None

    def close(self) -> None:
        """Close the connection(s); idempotent."""
        with self._lock:
            if self._pool is not None:
                self._pool.close()
            else:
                self._db.close()

    def __enter__(self) -> "ReceiverStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ statements

    def _pg(self, sql: str) -> str:
        return sql.replace("?", "%s")

    def _q(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of one statement (``?`` placeholders): in this thread's transaction if one is open, else on its
        own (SQLite: under the store lock; PostgreSQL: an autocommit connection from the pool)."""
        if self._pool is None:
            with self._lock:
                return self._db.execute(sql, params).fetchall()
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            cur = conn.execute(self._pg(sql), params)
            return cur.fetchall() if cur.description is not None else []
        return self._pg_autocommit(lambda c: c.execute(self._pg(sql), params))

    def _pg_autocommit(self, run: Callable[[Any], Any]) -> list[tuple[Any, ...]]:
        """One statement outside a transaction; once more on a fresh connection if the pooled one had broken
        (a restarted server, a terminated backend). StoreUnavailable when that fails too."""
        import psycopg

        assert self._pool is not None
        for attempt in (1, 2):
            conn = self._pooled() if attempt == 1 else self._fresh()
            try:
                cur = run(conn)
                return cur.fetchall() if cur.description is not None else []
            except psycopg.Error as exc:
                if attempt == 1 and conn.broken:
                    continue
                raise StoreUnavailable(f"{self.target}: {_one_line(exc)}") from exc
            finally:
                self._pool.put(conn)
        raise AssertionError("unreachable")

    def _pooled(self) -> Any:
        """An idle pooled connection, else a new one; StoreUnavailable (one line) when the server cannot be
        reached (a stopped or unreachable PostgreSQL answers 503, never a bare 500)."""
        import psycopg

        assert self._pool is not None
        try:
            return self._pool.get()
        except psycopg.Error as exc:
            raise StoreUnavailable(f"{self.target}: cannot connect: {_one_line(exc)}") from exc

    def _fresh(self) -> Any:
        import psycopg

        assert self._pool is not None
        try:
            return self._pool.connect()
        except psycopg.Error as exc:
            raise StoreUnavailable(f"{self.target}: cannot connect: {_one_line(exc)}") from exc

    def _x(self, sql: str, params: Sequence[Any] = ()) -> None:
        self._q(sql, params)

    # ------------------------------------------------------------ transactions

    @contextlib.contextmanager
    def transaction(self, gateway_id: str | None = None, *, kids: Iterable[str] = ()) -> Iterator[None]:
        """One write transaction; COMMIT at the end of the block, ROLLBACK on any exception, the COMMIT's own
        included, and the exception raised (module docstring, "Errors").

        SQLite: ``BEGIN IMMEDIATE`` ... COMMIT under the store lock; ``gateway_id`` and ``kids`` are not needed
        (one writer per file). A failed COMMIT (SQLITE_BUSY, SQLITE_FULL, an I/O error, a deferred constraint)
        can leave the transaction open (SQLite docs, "COMMIT": "the transaction remains active" when it fails
        with SQLITE_BUSY; sqlite3_get_autocommit(3)); it is rolled back here, so the next batch starts a fresh
        transaction instead of failing forever on "cannot start a transaction within a transaction".

        PostgreSQL: a pooled connection, ``BEGIN ISOLATION LEVEL READ COMMITTED``, ``SET LOCAL lock_timeout``
        (busy_timeout_s), then ``pg_advisory_xact_lock`` on ``gateway_id`` and on each of ``kids`` in sorted
        order (module docstring, "Exactly-once"), all in one round trip; every store call of this thread inside
        the block runs in it. COMMIT is checked to have committed (a transaction in error answers COMMIT with
        ROLLBACK, which would otherwise look like success). psycopg errors come out as StoreUnavailable.
        """
        if self._pool is None:
            with self._lock:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield
                    self._db.execute("COMMIT")
                except BaseException:
                    if self._db.in_transaction:
                        try:
                            self._db.execute("ROLLBACK")
                        except sqlite3.Error as exc:   # keep the original error; the rollback's is secondary
                            log.error("%s: rollback failed: %s", self.path, exc)
                    raise
            return
        if getattr(self._local, "conn", None) is not None:
            raise RuntimeError("ReceiverStore.transaction() does not nest")
        locks = ([(_LOCK_GATEWAY, _lock_key(gateway_id))] if gateway_id is not None else [])
        locks += [(_LOCK_KID, _lock_key(k)) for k in sorted(set(kids))]
        with self._pg_transaction(locks):
            yield

    def lock_kids(self, kids: Iterable[str]) -> None:
        """Inside :meth:`transaction`: also lock these kids (PostgreSQL; SQLite has one writer anyway). Taken
        out of the usual order, so it may meet a deadlock, which PostgreSQL breaks by aborting one transaction
        (StoreUnavailable, 503)."""
        if self._pool is None:
            return
        for k in sorted(set(kids)):
            self._x("SELECT pg_advisory_xact_lock(?, ?)", (_LOCK_KID, _lock_key(k)))

    @contextlib.contextmanager
    def _pg_transaction(self, locks: list[tuple[int, int]]) -> Iterator[Any]:
        import psycopg
        from psycopg.pq import TransactionStatus

        assert self._pool is not None
        begin = "BEGIN ISOLATION LEVEL READ COMMITTED; SET LOCAL lock_timeout = '%dms'; " % max(
            1, int(self._busy_timeout_s * 1000))
        begin += "".join("SELECT pg_advisory_xact_lock(%d, %d); " % lk for lk in locks)
        conn = self._pooled()
        try:
            try:
                conn.execute(begin)
            except psycopg.OperationalError:
                if not conn.broken:
                    raise
                self._pool.put(conn)   # a stale pooled connection: nothing was done yet, so try a fresh one
                conn = self._fresh()
                conn.execute(begin)
            self._local.conn = conn
            try:
                yield conn
            finally:
                self._local.conn = None
            if conn.info.transaction_status == TransactionStatus.INERROR:
                raise StoreUnavailable(f"{self.target}: the transaction failed before COMMIT; rolled back")
            cur = conn.execute("COMMIT")
            if (cur.statusmessage or "").upper() != "COMMIT":
                raise StoreUnavailable(f"{self.target}: COMMIT answered {cur.statusmessage!r}; rolled back")
        except BaseException as exc:
            if not (conn.closed or conn.broken) and conn.info.transaction_status != TransactionStatus.IDLE:
                try:
                    conn.execute("ROLLBACK")
                except psycopg.Error as rb:   # keep the original error; the rollback's is secondary
                    log.error("%s: rollback failed: %s", self.target, _one_line(rb))
            if isinstance(exc, psycopg.Error):
                raise StoreUnavailable(f"{self.target}: {_one_line(exc)}") from exc
            raise
        finally:
            self._pool.put(conn)

    # ------------------------------------------------------------ migrations

    def _table_exists(self, name: str) -> bool:
        if self.dialect == "sqlite":
            return bool(self._q("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)))
        return bool(self._q("SELECT 1 FROM information_schema.tables WHERE table_schema = current_schema() "
                            "AND table_name = ?", (name,)))

    def _version(self) -> int:
        if not self._table_exists("schema_migrations"):
            return 0
        return int(self._q("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")[0][0])

    def _too_new(self, version: int) -> ReceiverError:
        return ReceiverError(f"{self.target}: receiver store schema version {version} is newer than this "
                             f"hazard-gateway knows ({SCHEMA_VERSION}); upgrade hazard-gateway to open it")

    @contextlib.contextmanager
    def _migration_transaction(self) -> Iterator[None]:
        if self._pool is None:
            with self.transaction():
                yield
        else:
            with self._pg_transaction([(_LOCK_MIGRATE, 0)]):
                yield

    def _migrate(self) -> int:
        """Apply the missing migrations, one transaction each (module docstring); the version reached."""
        while True:
            with self._migration_transaction():
                self._x(_MIGRATIONS_TABLE)
                current = self._version()
                if current > SCHEMA_VERSION:
                    raise self._too_new(current)
                if current == SCHEMA_VERSION:
                    return current
                now = rfc3339(time.time())
                if current == 0 and self._table_exists("batches") and self._table_exists("keys"):
                    self._x("INSERT INTO schema_migrations (version, applied_at, description) VALUES (?, ?, ?)",
                            (1, now, "adopted: a store made before schema_migrations"))
                    log.info("%s: receiver store adopted as schema version 1", self.target)
                    continue
                step = MIGRATIONS[current]
                assert step.version == current + 1
                for stmt in step.statements:
                    self._x(stmt)
                self._x("INSERT INTO schema_migrations (version, applied_at, description) VALUES (?, ?, ?)",
                        (step.version, now, step.description))
                log.info("%s: receiver store migrated to schema version %d (%s)", self.target, step.version,
                         step.description)

    def _check_version(self) -> int:
        """create=False: the version as it is; ReceiverError for a newer one or for no receiver store at all."""
        if not self._table_exists("batches"):
            raise ReceiverError(f"{self.target}: not a receiver store (no batches table)")
        current = self._version()
        if current > SCHEMA_VERSION:
            raise self._too_new(current)
        return current or 1

    # ------------------------------------------------------------ queries

    def get(self, gateway_id: str, seq: int) -> StoredBatch | None:
        """The stored batch (gateway_id, seq), or None."""
        rows = self._q(f"SELECT {_COLS} FROM batches WHERE gateway_id=? AND seq=?", (gateway_id, seq))
        return StoredBatch(*rows[0]) if rows else None

    def last_seq(self, gateway_id: str) -> int:
        """Highest stored seq of a gateway; 0 when none."""
        return int(self._q("SELECT MAX(seq) FROM batches WHERE gateway_id=?", (gateway_id,))[0][0] or 0)

    def batches(self, gateway_id: str | None = None, *, since: str | None = None) -> list[StoredBatch]:
        """Stored batches of one gateway (or all), ordered by (gateway_id, seq); ``since``: only those with
        ``received_at >= since`` (the stored form: :func:`parse_since` makes it from RFC 3339)."""
        where, params = [], []
        if gateway_id is not None:
            where.append("gateway_id=?")
            params.append(gateway_id)
        if since is not None:
            where.append(f"received_at{self._C} >= ?")
            params.append(since)
        cond = f" WHERE {' AND '.join(where)}" if where else ""
        rows = self._q(f"SELECT {_COLS} FROM batches{cond} ORDER BY gateway_id{self._C}, seq", params)
        return [StoredBatch(*r) for r in rows]

    def gateways(self) -> list[str]:
        """Every gateway_id with at least one stored batch, sorted."""
        return sorted(r[0] for r in self._q("SELECT DISTINCT gateway_id FROM batches"))

    def readings_count(self, gateway_id: str | None = None) -> int:
        """Number of readings in all stored batches (of one gateway, or all)."""
        if gateway_id is None:
            row = self._q("SELECT COALESCE(SUM(n_readings), 0) FROM batches")[0]
        else:
            row = self._q("SELECT COALESCE(SUM(n_readings), 0) FROM batches WHERE gateway_id=?", (gateway_id,))[0]
        return int(row[0])

    def readings(self, gateway_id: str | None = None) -> Iterator[tuple[str, int, dict[str, Any]]]:
        """(gateway_id, seq, reading record) for every stored reading, in (gateway_id, seq) order.

        The records are read back from the stored (already verified) JWS payloads.
        """
        for b in self.batches(gateway_id):
            for r in decode_unverified(b.jws)[1]["readings"]:
                yield b.gateway_id, b.seq, r

    def status(self, gateway_id: str) -> dict[str, Any] | None:
        """``{"gateway_id", "last_seq", "count", "gaps", "readings", "last_hash", "last_received_at"}``
        or None for an unknown gateway. ``gaps`` lists missing seq ranges ``[first, last]``."""
        with self._lock if self._pool is None else contextlib.nullcontext():
            row = self._q("SELECT COUNT(*), MAX(seq), COALESCE(SUM(n_readings), 0) FROM batches WHERE gateway_id=?",
                          (gateway_id,))[0]
            if not row[0]:
                return None
            seqs = [r[0] for r in self._q("SELECT seq FROM batches WHERE gateway_id=? ORDER BY seq", (gateway_id,))]
            last = self.get(gateway_id, row[1])
        gaps: list[list[int]] = []
        expected = 1
        for s in seqs:
            if s > expected:
                gaps.append([expected, s - 1])
            expected = s + 1
        if last is None:   # PostgreSQL without a transaction: nothing is deleted, so this cannot happen
            return None
        return {"gateway_id": gateway_id, "last_seq": int(row[1]), "count": int(row[0]), "gaps": gaps,
                "readings": int(row[2]), "last_hash": last.hash, "last_received_at": last.received_at}

    def summaries(self) -> list[dict[str, Any]]:
        """One ``{"gateway_id", "count", "last_seq", "readings", "last_received_at", "parked"}`` per gateway with
        a stored or a parked batch, sorted by gateway_id (two grouped queries; for gateway.regulator.metrics).
        ``last_received_at`` is the latest received_at (None with only parked batches), ``parked`` the number
        of parked batches."""
        rows = self._q(f"SELECT gateway_id, COUNT(*), MAX(seq), COALESCE(SUM(n_readings), 0), "
                       f"MAX(received_at{self._C}) FROM batches GROUP BY gateway_id")
        out = {g: {"gateway_id": g, "count": int(n), "last_seq": int(last or 0), "readings": int(r),
                   "last_received_at": at, "parked": 0} for g, n, last, r, at in rows}
        for g, n in self._q("SELECT gateway_id, COUNT(*) FROM parked GROUP BY gateway_id"):
            out.setdefault(g, {"gateway_id": g, "count": 0, "last_seq": 0, "readings": 0, "last_received_at": None,
                               "parked": 0})["parked"] = int(n)
        return [out[g] for g in sorted(out)]

    def announced_keys(self) -> dict[str, tuple[Ed25519PublicKey, str]]:
        """{kid: (public key, gateway_id)} of keys added by announce_key."""
        out: dict[str, tuple[Ed25519PublicKey, str]] = {}
        for kid, jwk, gid in self._q("SELECT kid, jwk, gateway_id FROM keys"):
            out[kid] = (public_key_from_jwk(json.loads(jwk))[1], gid)
        return out

    def key_gateways(self, kid: str) -> set[str]:
        """gateway_ids a key has signed for, or was announced for."""
        return {r[0] for r in self._q("SELECT DISTINCT gateway_id FROM batches WHERE kid=? "
                                      "UNION SELECT gateway_id FROM keys WHERE kid=?", (kid, kid))}

    def announced_for(self, kid: str) -> str | None:
        """The gateway_id a key was announced for (announce_key), or None."""
        rows = self._q("SELECT gateway_id FROM keys WHERE kid=?", (kid,))
        return rows[0][0] if rows else None

    def key_established(self, gateway_id: str, kid: str) -> bool:
        """True when ``kid`` signed a stored batch of ``gateway_id`` or was announced in one."""
        return bool(self._q("SELECT 1 FROM batches WHERE gateway_id=? AND kid=? UNION ALL "
                            "SELECT 1 FROM keys WHERE gateway_id=? AND kid=? LIMIT 1",
                            (gateway_id, kid, gateway_id, kid)))

    # ------------------------------------------------------------ parked batches (out-of-order delivery)

    def parked(self, gateway_id: str, seq: int) -> str | None:
        """The compact JWS parked for (gateway_id, seq), or None."""
        rows = self._q("SELECT jws FROM parked WHERE gateway_id=? AND seq=?", (gateway_id, seq))
        return rows[0][0] if rows else None

    def parked_seqs(self, gateway_id: str | None = None) -> list[tuple[str, int]]:
        """(gateway_id, seq) of every parked batch (of one gateway, or all), in that order."""
        if gateway_id is None:
            rows = self._q(f"SELECT gateway_id, seq FROM parked ORDER BY gateway_id{self._C}, seq")
        else:
            rows = self._q("SELECT gateway_id, seq FROM parked WHERE gateway_id=? ORDER BY seq", (gateway_id,))
        return [(g, int(s)) for g, s in rows]

    def park(self, gateway_id: str, seq: int, jws: str, kid: str, received_at: str) -> None:
        """Inside transaction(): keep a verified batch that arrived ahead of a gap (idempotent)."""
        self._x("INSERT INTO parked (gateway_id, seq, jws, kid, received_at) VALUES (?,?,?,?,?) "
                "ON CONFLICT (gateway_id, seq) DO NOTHING", (gateway_id, seq, jws, kid, received_at))

    def unpark(self, gateway_id: str, upto_seq: int) -> None:
        """Inside transaction(): drop the parked batches of a gateway up to and including ``upto_seq``."""
        self._x("DELETE FROM parked WHERE gateway_id=? AND seq<=?", (gateway_id, upto_seq))

    # ------------------------------------------------------------ basic data

    def put_basic_data(self, gateway_id: str, seq: int, config_hash: str, doc: dict[str, Any],
                       received_at: str) -> None:
        """Inside transaction(): record a gateway's basic-data document carried by batch ``seq``; the record of
        the highest seq is kept (an older one arriving later changes nothing; the same seq again replaces it).
        ``doc`` is stored as JSON text; ``received_at`` RFC 3339."""
        self._x("INSERT INTO basic_data (gateway_id, seq, config_hash, doc, received_at) VALUES (?,?,?,?,?) "
                "ON CONFLICT (gateway_id) DO UPDATE SET seq=excluded.seq, config_hash=excluded.config_hash, "
                "doc=excluded.doc, received_at=excluded.received_at WHERE excluded.seq >= basic_data.seq",
                (gateway_id, seq, config_hash, json.dumps(doc, sort_keys=True, ensure_ascii=False), received_at))

    def basic_data(self, gateway_id: str) -> dict[str, Any] | None:
        """``{"gateway_id", "seq", "config_hash", "received_at", "doc"}`` of the latest basic data of a
        gateway, or None."""
        rows = self._q("SELECT gateway_id, seq, config_hash, received_at, doc FROM basic_data WHERE gateway_id=?",
                       (gateway_id,))
        if not rows:
            return None
        gid, seq, config_hash, received_at, doc = rows[0]
        return {"gateway_id": gid, "seq": int(seq), "config_hash": config_hash, "received_at": received_at,
                "doc": json.loads(doc)}

    # ------------------------------------------------------------ writes (inside transaction())

    def _insert_batch(self, b: StoredBatch) -> None:
        self._x(f"INSERT INTO batches ({_COLS}) VALUES (?,?,?,?,?,?,?,?,?)",
                (b.gateway_id, b.seq, b.jws, b.hash, b.kid, b.created_at, b.received_at, b.n_readings, b.n_events))

    def _insert_key(self, kid: str, jwk: dict[str, Any], gateway_id: str, announced_by: str, seq: int) -> None:
        self._x("INSERT INTO keys (kid, jwk, gateway_id, announced_by, announced_in_seq, added_at) "
                "VALUES (?,?,?,?,?,?) ON CONFLICT (kid) DO NOTHING",
                (kid, canonical_json(jwk).decode(), gateway_id, announced_by, seq, rfc3339(time.time())))

    def export(self, out_dir: str | os.PathLike[str], *, gateway_id: str | None = None,
               since: str | None = None) -> int:
        """Write the stored batches verbatim to ``out_dir/<gateway_id>-<seq>.jws``; return the count.
        ``gateway_id``: that gateway's only; ``since`` (RFC 3339): only batches received at or after it
        (ValueError, one line, for a bad one). ReceiverError when the directory cannot be made."""
        key = parse_since(since) if since is not None else None
        out = Path(out_dir)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ReceiverError(f"{out}: cannot create export directory: {exc.strerror}") from None
        n = 0
        for b in self.batches(gateway_id, since=key):
            target = out / f"{b.gateway_id}-{b.seq}.jws"
            tmp = target.with_name(target.name + ".tmp")
            tmp.write_bytes(b.jws.encode("ascii"))
            os.replace(tmp, target)
            n += 1
        return n
