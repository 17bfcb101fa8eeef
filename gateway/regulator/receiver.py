"""The reference regulator receiver: HTTPS endpoint, verification, dedup, storage.

HTTP interface (JSON answers; errors are ``{"error": "<one line>"}``):

``POST /v1/batches``  body = one compact JWS (see gateway.chain.signing), ``Content-Type: application/jose``
(RFC 7515 s.9.2.1); surrounding ASCII whitespace is ignored. Answers:

* 200 ``{"gateway_id", "seq", "status": "accepted", "hash"}`` -- stored; ``hash`` = chain_hash(body).
* 200 same ack with ``"status": "duplicate"`` -- byte-identical resend of a stored batch
  (dedup by (gateway_id, seq), so at-least-once upload becomes exactly-once, case C14).
* 400 malformed (not a compact JWS, bad JSON, JSON nested deeper than 32 levels, a protected
  header over 1024 bytes, bad payload shape, bad typ/crit, announce_key without its
  announce_key_proof, announce_key of a key that belongs to another gateway). With a receiver
  signing key (see "Signed rejections") the answer also carries ``"rejection"``.
* 401 unknown kid, alg other than EdDSA, signature does not verify, the key is bound to
  another gateway ("key K is bound to gateway B, not V": a key signs for one gateway only),
  a change of signing key mid-chain to a key that was never announced ("key change"), or an
  announce_key_proof that is not the new key's signature over this gateway_id, kid and seq.
* 409 a different body for a stored (gateway_id, seq) ("conflict"); seq != last+1
  ("gap: expected seq N", strict: the gateway sends in order, case C15); prev != chain hash
  of the stored seq-1 ("chain broken"). 409 answers carry ``expected_seq``.
* 408 the body did not arrive within ``body_timeout_s`` (the connection is closed); 413 body
  larger than ``max_body`` bytes (declared, or once that much has streamed in: it is never
  buffered whole); 415 wrong content type. After a 413, 415 or budget 503 the rest of the body
  is read and thrown away (for at most ``body_timeout_s``), so the sender sees the answer.
* 503 + Retry-After when the store is locked or a write fails (commit error, disk full; case
  C17): nothing was stored, the transaction is rolled back, and the resend is judged afresh;
  also when too many large bodies are in flight at once (``large_body_budget``), and
  (uvicorn's own answer, no Retry-After) above ``max_connections`` open connections.

``submit`` runs in a worker thread (asyncio.to_thread, at most ``submit_concurrency`` at once):
its SQLite and signature work never blocks the event loop; ReceiverStore serialises the store
with its lock and BEGIN IMMEDIATE.

``GET /v1/gateways/{gateway_id}/status`` -> ``{"gateway_id", "last_seq", "count", "gaps",
"readings", "last_hash", "last_received_at"}``. It needs the same trust as an upload: header
``Authorization: JWS <compact JWS>`` signed by a key of that gateway (bound to it as for
uploads), typ ``hazard-gateway-request+jws``, claims ``{"gateway_id", "method": "GET",
"path": "/v1/gateways/<id>/status", "iat": <epoch s>, "jti": <random, 16-64 chars>}``;
:func:`signed_request_headers` makes it. ``iat`` within ``status_max_age_s`` (300 s) of the
receiver's clock; a jti is accepted once. Anything else: 401 (``WWW-Authenticate: JWS``);
404 for a gateway with no batch (after the check).

Operations (gateway.regulator.metrics): ``GET /v1/health`` -> ``{"ok", "store", "gateways", "silent_after_s",
"silent", "silent_count", "chain_gaps"}`` (503 while the store does not answer); ``GET /metrics`` -> Prometheus
text format: decisions by outcome, refusals by reason, per-gateway last seq, age of the last batch and chain
gaps, gateways silent longer than ``--silent-after`` minutes.

Trust directory (``--trust DIR``; read by gateway.regulator.verify.load_trust, the same for the offline
verifier)::

    DIR/<gateway_id>/<kid>.jwk   signs for that gateway only (the directory name says which)
    DIR/<kid>.jwk                with a "gateway_id" member: signs for that gateway only;
                                 without one (legacy flat layout, as ``keygen`` writes it): an
                                 unbound key, bound to the first gateway it signs an accepted
                                 batch for (trust on first use; a warning names these keys at
                                 start). ``--require-bound-keys`` refuses to start with them.

A batch (or status request) for gateway V signed by a key bound to B answers 401, is counted
in :meth:`Receiver.stats` (``rejected_key_binding``) and logged as one line.

Key rotation: a batch whose payload carries ``announce_key`` (a public Ed25519 JWK) with
``announce_key_proof`` (the new key's signature over gateway_id, new kid and seq: proof of
possession, see gateway.chain.signing) and that verifies with a key of the gateway adds the announced
key to the trust set, bound to the same gateway_id, persisted in the store. Old keys stay
trusted. Within a chain the signing key may change only to a key that signed an earlier batch
of that gateway or was announced in one ("key change" otherwise, also for a second key that
the trust directory holds for the gateway). New ``*.jwk`` files dropped into the trust
directory (e.g. a new gateway's key) are picked up on the next request with an unknown kid (no
restart needed).

Signed rejections (``--signing-key PATH``: an Ed25519 ``private.pem`` as ``hazard-gateway keygen``
writes it; the gateway trusts the ``<kid>.jwk`` written next to it as ``uplink.receiver_key``). A
gateway sets a refused batch aside only on the receiver's signed word (gateway.chain.rejection; a
proxy's 413 or a bare 400 makes it hold and retry). The content refusals are the 400s above
(RFC 9110 s.15.5.1: the batch itself is malformed or its payload unacceptable; this receiver
answers no 422, RFC 9110 s.15.5.21, but would sign one the same way); with a key each
one's JSON answer carries ``"rejection": <compact JWS>`` (RFC 7515 s.7.1, header typ
``hazard-gateway-rejection+jws``, signed with the receiver key) over ``{"typ":
"hazard-gateway/batch-rejection", "gateway_id", "seq", "batch_sha256" (hex SHA-256 of the exact
request body bytes), "status", "reason", "iat"}``, gateway_id and seq read from the unverified
body. None is sent when the body does not name a batch (not ASCII, not a compact JWS, a payload
that does not parse within the bounds, no valid gateway_id/seq): the gateway then holds. A 413
(RFC 9110 s.15.5.14) is never signed: a body over ``max_body`` is not held whole (the bounds
stay), so it can be neither hashed nor read; the gateway holds it until the cap is raised. 401,
403 and 409 refuse the gateway or the chain, not the content, and carry none. Without a key no
answer carries a rejection (every refused batch is held by the gateway).

Limits (:class:`ReceiverLimits`; the uvicorn settings limit_concurrency, timeout_keep_alive and
h11_max_incomplete_event_size, a TLS handshake timeout on the listening server, a request-header
deadline per connection and a body deadline, cap and shared budget in the app): a connection
that does not finish its TLS handshake within ``tls_handshake_timeout_s`` or its request
headers within ``header_timeout_s`` (after the handshake or the previous answer) is dropped,
so slow connections (slowloris) cannot pile up; a body is read in chunks and refused at
``max_body``; bytes beyond the first ``small_body`` of each body draw on one shared
``large_body_budget``, so many large bodies at once cannot exhaust memory.

Storage: SQLite in WAL mode with synchronous=FULL, so an ack is only sent for a batch that
is durable. Batches are stored verbatim (the exact compact JWS) with ``received_at``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import ipaddress
import json
import logging
import os
import secrets
import signal
import socket
import sqlite3
import ssl
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.model import rfc3339
from gateway.chain.rejection import CONTENT_REFUSAL_STATUSES, sign_rejection
from gateway.chain.signing import (BatchError, KeyFileError, Signer, batch_kid, canonical_json, chain_hash, links_to,
                             decode_unverified, public_key_from_jwk, verify_batch, verify_jws)
from gateway.tlsutil import make_self_signed
from gateway.regulator import metrics as ops_metrics
from gateway.regulator.metrics import SILENT_AFTER_S
from gateway.regulator.verify import TrustedKey, load_trust

log = logging.getLogger("gateway.regulator.receiver")

MAX_BODY = 8 * 1024 * 1024
STATUS_MAX_AGE_S = 300.0
REQUEST_TYP = "hazard-gateway-request+jws"
STATUS_FOR_CHECK = {"malformed": 400, "payload": 400, "alg": 401, "kid": 401, "signature": 401, "key_proof": 401}

__all__ = ["BackgroundReceiver", "REQUEST_TYP", "Receiver", "ReceiverError", "ReceiverLimits", "ReceiverStore",
           "StoredBatch", "create_app", "export_batches", "make_self_signed", "parse_listen", "run_receiver",
           "signed_request_headers"]


@dataclass(frozen=True, slots=True)
class ReceiverLimits:
    """Resource bounds of the HTTP server (module docstring, "Limits"). Sizes in bytes."""

    max_body: int = MAX_BODY                      # 413 above (about 40,000 readings per batch)
    small_body: int = 256 * 1024                  # per body, not drawn from the shared budget
    large_body_budget: int = 64 * 1024 * 1024     # bytes beyond small_body over all bodies in flight; 503 above
    max_connections: int = 1000                   # uvicorn limit_concurrency: 503 above
    max_header_bytes: int = 16 * 1024             # uvicorn h11_max_incomplete_event_size: 400 above
    header_timeout_s: float = 10.0                # request line + headers, from connect or the last answer
    body_timeout_s: float = 60.0                  # whole body, from the end of the headers: 408 after
    keep_alive_s: int = 5                         # uvicorn timeout_keep_alive (idle between requests)
    tls_handshake_timeout_s: float = 10.0
    tls_shutdown_timeout_s: float = 5.0
    submit_concurrency: int = 4                   # batches decoded and verified at once
    status_max_age_s: float = STATUS_MAX_AGE_S    # signed status request: |now - iat| at most this


class ReceiverError(ValueError):
    """A receiver start/export problem a person must fix; str() is one line (a ValueError, so the
    CLI prints it as one line)."""


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


_SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    gateway_id  TEXT    NOT NULL,
    seq         INTEGER NOT NULL,
    jws         TEXT    NOT NULL,
    hash        TEXT    NOT NULL,
    kid         TEXT    NOT NULL,
    created_at  TEXT    NOT NULL,
    received_at TEXT    NOT NULL,
    n_readings  INTEGER NOT NULL,
    n_events    INTEGER NOT NULL,
    PRIMARY KEY (gateway_id, seq)
);
CREATE INDEX IF NOT EXISTS batches_kid ON batches (kid);
CREATE TABLE IF NOT EXISTS keys (
    kid          TEXT PRIMARY KEY,
    jwk          TEXT    NOT NULL,
    gateway_id   TEXT    NOT NULL,
    announced_by TEXT    NOT NULL,
    announced_in_seq INTEGER NOT NULL,
    added_at     TEXT    NOT NULL
);
"""
_COLS = "gateway_id, seq, jws, hash, kid, created_at, received_at, n_readings, n_events"


class ReceiverStore:
    """SQLite store of accepted batches and announced keys (WAL, synchronous=FULL).

    Several ReceiverStore objects (threads or processes) may open the same file; writers
    serialise with ``BEGIN IMMEDIATE``. ``create=False`` raises ReceiverError when the file
    does not exist (for export and reporting).
    """

    def __init__(self, path: str | os.PathLike[str], *, create: bool = True, busy_timeout_s: float = 5.0) -> None:
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise ReceiverError(f"{self.path}: no such receiver store")
        try:
            self._db = sqlite3.connect(self.path, timeout=busy_timeout_s, isolation_level=None,
                                       check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            if create:
                self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise ReceiverError(f"{self.path}: cannot open receiver store: {exc}") from None
        self._lock = threading.RLock()

    def close(self) -> None:
        """Close the connection; idempotent."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> "ReceiverStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """``BEGIN IMMEDIATE`` ... COMMIT; ROLLBACK on any exception, the COMMIT's own included.

        A failed COMMIT (SQLITE_BUSY, SQLITE_FULL, an I/O error, a deferred constraint) can leave
        the transaction open (SQLite docs, "COMMIT": "the transaction remains active" when it fails
        with SQLITE_BUSY; sqlite3_get_autocommit(3)); it is rolled back here, so the next batch
        starts a fresh transaction instead of failing forever on "cannot start a transaction
        within a transaction"."""
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

    # ------------------------------------------------------------ queries

    def get(self, gateway_id: str, seq: int) -> StoredBatch | None:
        """The stored batch (gateway_id, seq), or None."""
        with self._lock:
            row = self._db.execute(f"SELECT {_COLS} FROM batches WHERE gateway_id=? AND seq=?",
                                   (gateway_id, seq)).fetchone()
        return StoredBatch(*row) if row else None

    def last_seq(self, gateway_id: str) -> int:
        """Highest stored seq of a gateway; 0 when none."""
        with self._lock:
            row = self._db.execute("SELECT MAX(seq) FROM batches WHERE gateway_id=?", (gateway_id,)).fetchone()
        return row[0] or 0

    def batches(self, gateway_id: str | None = None) -> list[StoredBatch]:
        """Stored batches of one gateway (or all), ordered by (gateway_id, seq)."""
        with self._lock:
            if gateway_id is None:
                rows = self._db.execute(f"SELECT {_COLS} FROM batches ORDER BY gateway_id, seq").fetchall()
            else:
                rows = self._db.execute(f"SELECT {_COLS} FROM batches WHERE gateway_id=? ORDER BY seq",
                                        (gateway_id,)).fetchall()
        return [StoredBatch(*r) for r in rows]

    def gateways(self) -> list[str]:
        """Every gateway_id with at least one stored batch, sorted."""
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT DISTINCT gateway_id FROM batches ORDER BY 1")]

    def readings_count(self, gateway_id: str | None = None) -> int:
        """Number of readings in all stored batches (of one gateway, or all)."""
        with self._lock:
            if gateway_id is None:
                row = self._db.execute("SELECT COALESCE(SUM(n_readings), 0) FROM batches").fetchone()
            else:
                row = self._db.execute("SELECT COALESCE(SUM(n_readings), 0) FROM batches WHERE gateway_id=?",
                                       (gateway_id,)).fetchone()
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
        with self._lock:
            row = self._db.execute(
                "SELECT COUNT(*), MAX(seq), COALESCE(SUM(n_readings), 0) FROM batches WHERE gateway_id=?",
                (gateway_id,)).fetchone()
            if not row[0]:
                return None
            seqs = [r[0] for r in self._db.execute("SELECT seq FROM batches WHERE gateway_id=? ORDER BY seq",
                                                    (gateway_id,))]
            last = self.get(gateway_id, row[1])
        gaps: list[list[int]] = []
        expected = 1
        for s in seqs:
            if s > expected:
                gaps.append([expected, s - 1])
            expected = s + 1
        assert last is not None
        return {"gateway_id": gateway_id, "last_seq": row[1], "count": row[0], "gaps": gaps,
                "readings": int(row[2]), "last_hash": last.hash, "last_received_at": last.received_at}

    def summaries(self) -> list[dict[str, Any]]:
        """One dict per gateway with a stored batch, sorted by gateway_id: ``{"gateway_id", "count",
        "last_seq", "last_received_at", "readings", "parked"}`` (``count`` < ``last_seq`` means a hole in
        the chain; ``parked``: batches waiting beyond a gap, 0 without parking). One query: the
        receiver's metrics and health (gateway.regulator.metrics) call it per scrape."""
        with self._lock:
            rows = self._db.execute(
                "SELECT b.gateway_id, COUNT(*), MAX(b.seq), COALESCE(SUM(b.n_readings), 0), "
                "(SELECT received_at FROM batches l WHERE l.gateway_id = b.gateway_id ORDER BY seq DESC LIMIT 1) "
                "FROM batches b GROUP BY b.gateway_id ORDER BY b.gateway_id").fetchall()
        return [{"gateway_id": g, "count": n, "last_seq": last, "last_received_at": at, "readings": int(readings),
                 "parked": 0} for g, n, last, readings, at in rows]

    def announced_keys(self) -> dict[str, tuple[Ed25519PublicKey, str]]:
        """{kid: (public key, gateway_id)} of keys added by announce_key."""
        out: dict[str, tuple[Ed25519PublicKey, str]] = {}
        with self._lock:
            rows = self._db.execute("SELECT kid, jwk, gateway_id FROM keys").fetchall()
        for kid, jwk, gid in rows:
            out[kid] = (public_key_from_jwk(json.loads(jwk))[1], gid)
        return out

    def key_gateways(self, kid: str) -> set[str]:
        """gateway_ids a key has signed for, or was announced for."""
        with self._lock:
            rows = self._db.execute("SELECT DISTINCT gateway_id FROM batches WHERE kid=? "
                                    "UNION SELECT gateway_id FROM keys WHERE kid=?", (kid, kid)).fetchall()
        return {r[0] for r in rows}

    def announced_for(self, kid: str) -> str | None:
        """The gateway_id a key was announced for (announce_key), or None."""
        with self._lock:
            row = self._db.execute("SELECT gateway_id FROM keys WHERE kid=?", (kid,)).fetchone()
        return row[0] if row else None

    def key_established(self, gateway_id: str, kid: str) -> bool:
        """True when ``kid`` signed a stored batch of ``gateway_id`` or was announced in one."""
        with self._lock:
            row = self._db.execute("SELECT 1 FROM batches WHERE gateway_id=? AND kid=? UNION ALL "
                                   "SELECT 1 FROM keys WHERE gateway_id=? AND kid=? LIMIT 1",
                                   (gateway_id, kid, gateway_id, kid)).fetchone()
        return row is not None

    # ------------------------------------------------------------ writes (inside transaction())

    def _insert_batch(self, b: StoredBatch) -> None:
        self._db.execute(f"INSERT INTO batches ({_COLS}) VALUES (?,?,?,?,?,?,?,?,?)",
                         (b.gateway_id, b.seq, b.jws, b.hash, b.kid, b.created_at, b.received_at,
                          b.n_readings, b.n_events))

    def _insert_key(self, kid: str, jwk: dict[str, Any], gateway_id: str, announced_by: str, seq: int) -> None:
        self._db.execute("INSERT OR IGNORE INTO keys (kid, jwk, gateway_id, announced_by, announced_in_seq, "
                         "added_at) VALUES (?,?,?,?,?,?)",
                         (kid, canonical_json(jwk).decode(), gateway_id, announced_by, seq, rfc3339(time.time())))

    def export(self, out_dir: str | os.PathLike[str]) -> int:
        """Write every stored batch verbatim to ``out_dir/<gateway_id>-<seq>.jws``; return the count."""
        out = Path(out_dir)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ReceiverError(f"{out}: cannot create export directory: {exc.strerror}") from None
        n = 0
        for b in self.batches():
            target = out / f"{b.gateway_id}-{b.seq}.jws"
            tmp = target.with_name(target.name + ".tmp")
            tmp.write_bytes(b.jws.encode("ascii"))
            os.replace(tmp, target)
            n += 1
        return n


def export_batches(store: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> int:
    """Export every accepted batch of the receiver store ``store`` verbatim as
    ``out_dir/f"{gateway_id}-{seq}.jws"`` (no zero padding, no trailing newline).
    Returns the number of files. Raises ReceiverError (one line) for a missing store."""
    with ReceiverStore(store, create=False) as st:
        return st.export(out_dir)


# ---------------------------------------------------------------- verification core


class Receiver:
    """Verification, dedup, key binding and chain checks for one store and one trust directory.

    ``submit(body)`` is the whole POST /v1/batches decision and returns (HTTP status, JSON doc);
    ``authorize_status`` checks a signed status request; the HTTP layer only adds transport
    concerns. Raises ReceiverError at construction when the trust directory is missing or holds
    a bad ``*.jwk`` (or, with ``require_binding``, a key not bound to a gateway).
    ``stats()`` counts every decision (``accepted``, ``duplicate``, ``rejected_<reason>``...).
    ``rejection_signer``: the receiver key (gateway.chain.signing.Signer) that signs content refusals
    (module docstring, "Signed rejections"; counted as ``rejection_signed``), or None.
    """

    def __init__(self, store: str | os.PathLike[str] | ReceiverStore, trust_dir: str | os.PathLike[str],
                 *, busy_timeout_s: float = 5.0, require_binding: bool = False,
                 status_max_age_s: float = STATUS_MAX_AGE_S, rejection_signer: Signer | None = None) -> None:
        self.rejection_signer = rejection_signer
        self.trust_dir = Path(trust_dir)
        self.require_binding = require_binding
        self.status_max_age_s = status_max_age_s
        try:
            self._static = self._load_trust()
        except KeyFileError as exc:
            raise ReceiverError(str(exc)) from None
        self.store = store if isinstance(store, ReceiverStore) else ReceiverStore(store, busy_timeout_s=busy_timeout_s)
        if not self._static and not self.store.announced_keys():
            raise ReceiverError(f"{self.trust_dir}: no *.jwk public keys; every batch would be refused")
        self._last_rescan = 0.0
        self._stats: collections.Counter[str] = collections.Counter()
        self._stats_lock = threading.Lock()
        self._seen_jti: collections.OrderedDict[str, float] = collections.OrderedDict()
        self._jti_lock = threading.Lock()
        self._quiet_until: dict[str, float] = {}

    def close(self) -> None:
        self.store.close()

    # ------------------------------------------------------------ trust

    def _load_trust(self) -> dict[str, TrustedKey]:
        keys = load_trust(self.trust_dir)
        unbound = sorted(t.path for t in keys.values() if t.gateway_id is None)
        if unbound and self.require_binding:
            raise KeyFileError(f"{unbound[0]}: key is not bound to a gateway; move it to "
                               f"{self.trust_dir}/<gateway_id>/ or add a \"gateway_id\" member")
        if unbound:
            log.warning("%s: %d key(s) not bound to a gateway (%s): each is bound to the first gateway it signs "
                        "for; move them to %s/<gateway_id>/ to bind them", self.trust_dir, len(unbound),
                        ", ".join(Path(u).name for u in unbound), self.trust_dir)
        return keys

    def trust(self) -> dict[str, Ed25519PublicKey]:
        """Current trust set {kid: key}: the trust directory plus announced keys."""
        keys = {kid: k for kid, (k, _) in self.store.announced_keys().items()}
        keys.update({kid: t.key for kid, t in self._static.items()})
        return keys

    def bindings(self) -> dict[str, str | None]:
        """{kid: gateway_id or None (unbound, bound on first use)} of the trust directory."""
        return {kid: t.gateway_id for kid, t in self._static.items()}

    def _rescan(self) -> bool:
        """Reload the trust directory (at most once a second); True when it changed."""
        now = time.monotonic()
        if now - self._last_rescan < 1.0:
            return False
        self._last_rescan = now
        try:
            fresh = self._load_trust()
        except KeyFileError as exc:
            log.error("trust directory not reloaded: %s", exc)
            return False
        changed = {k: t.gateway_id for k, t in fresh.items()} != self.bindings()
        self._static = fresh
        return changed

    def _owners(self, kid: str) -> tuple[set[str], str]:
        """(gateway_ids the key may sign for, what says so); an empty set for an unbound key that
        has not signed yet. The trust directory wins over an announcement and over first use."""
        t = self._static.get(kid)
        if t is not None and t.gateway_id is not None:
            return {t.gateway_id}, "the trust directory"
        announced = self.store.announced_for(kid)
        if announced is not None:
            return {announced}, "its announcement"
        return self.store.key_gateways(kid), "its first use"

    def _verify(self, verify: Callable[[dict[str, Ed25519PublicKey]], Any]) -> Any:
        try:
            return verify(self.trust())
        except BatchError as exc:
            if exc.check == "kid" and self._rescan():
                return verify(self.trust())
            raise

    # ------------------------------------------------------------ stats

    def count(self, event: str) -> None:
        """Add one to stats()[event]."""
        with self._stats_lock:
            self._stats[event] += 1

    def stats(self) -> dict[str, int]:
        """{event: count} since start: accepted, duplicate, rejected_<reason>, status_ok, ..."""
        with self._stats_lock:
            return dict(self._stats)

    def note(self, event: str, message: str, *args: Any, every_s: float = 10.0) -> None:
        """Count ``event`` and log ``message`` (warning) at most once per ``every_s`` for that event
        (for floods: slow connections, oversized bodies), with the running count."""
        self.count(event)
        now = time.monotonic()
        if now >= self._quiet_until.get(event, 0.0):
            self._quiet_until[event] = now + every_s
            log.warning(message + " (%d so far)", *args, self.stats().get(event, 0))

    def _reject(self, reason: str, status: int, error: str, doc: dict[str, Any] | None = None
                ) -> tuple[int, dict[str, Any]]:
        self.count(f"rejected_{reason}")
        log.warning("rejected %d: %s", status, error)
        return status, {"error": error, **(doc or {})}

    # ------------------------------------------------------------ batches

    def submit(self, body: bytes | bytearray) -> tuple[int, dict[str, Any]]:
        """Decide on one uploaded batch; see the module docstring for every answer. A content refusal
        (400) carries a signed ``rejection`` when the receiver has a key and the body names a batch."""
        status, doc = self._decide(body)
        if status in CONTENT_REFUSAL_STATUSES and self.rejection_signer is not None:
            rejection = sign_rejection(self.rejection_signer, body, status, str(doc.get("error", "")))
            if rejection is None:
                self.count("rejection_unsigned")
                log.warning("rejected %d without a signed rejection: the body names no batch", status)
            else:
                self.count("rejection_signed")
                doc = {**doc, "rejection": rejection}
        return status, doc

    def _decide(self, body: bytes | bytearray) -> tuple[int, dict[str, Any]]:
        try:
            compact = body.decode("ascii").strip()
        except UnicodeDecodeError:
            return self._reject("malformed", 400, "malformed: body is not an ASCII compact JWS")
        try:
            payload = self._verify(lambda trust: verify_batch(compact, trust))
        except BatchError as exc:
            return self._reject(exc.check, STATUS_FOR_CHECK.get(exc.check, 400), f"{exc.check}: {exc}")
        kid = batch_kid(compact)
        assert kid is not None
        gid, seq = payload["gateway_id"], payload["seq"]
        digest = chain_hash(compact)
        ack = {"gateway_id": gid, "seq": seq, "status": "accepted", "hash": digest}
        where = f"{gid} seq {seq}"
        with self.store.transaction():
            owners, how = self._owners(kid)
            if owners and gid not in owners:
                return self._reject("key_binding", 401, f"key {kid} is bound to gateway {', '.join(sorted(owners))} "
                                                        f"by {how}, not {gid} ({where})")
            existing = self.store.get(gid, seq)
            last = self.store.last_seq(gid)
            if existing is not None:
                if existing.jws == compact:
                    log.info("duplicate %s", where)
                    self.count("duplicate")
                    return 200, {**ack, "status": "duplicate"}
                return self._reject("conflict", 409, f"conflict: {where} is already stored with a different body",
                                    {"expected_seq": last + 1})
            if seq != last + 1:
                return self._reject("gap", 409, f"gap: expected seq {last + 1}", {"expected_seq": last + 1})
            if seq > 1:
                before = self.store.get(gid, seq - 1)
                if before is None or not links_to(payload, before.hash):
                    return self._reject("chain", 409, f"chain broken: prev of {where} is not the hash of seq "
                                                      f"{seq - 1}", {"expected_seq": last + 1})
                if not self.store.key_established(gid, kid):
                    return self._reject("key_change", 401, f"key change: {where} is signed by {kid}, which neither "
                                                           f"signed an earlier batch of {gid} nor was announced in "
                                                           f"one (announce_key with announce_key_proof)")
            if "announce_key" in payload:
                new_kid, _ = public_key_from_jwk(payload["announce_key"])
                new_owners, new_how = self._owners(new_kid)
                if new_owners - {gid}:
                    return self._reject("announce_binding", 400,
                                        f"announce_key {new_kid} already belongs to gateway "
                                        f"{', '.join(sorted(new_owners - {gid}))} by {new_how} ({where})")
                jwk = {k: payload["announce_key"][k] for k in ("kty", "crv", "x")}
                jwk["kid"] = new_kid
                self.store._insert_key(new_kid, jwk, gid, kid, seq)
                log.info("%s announces key %s (signed by %s, proof of possession verified)", where, new_kid, kid)
            self.store._insert_batch(StoredBatch(
                gateway_id=gid, seq=seq, jws=compact, hash=digest, kid=kid, created_at=payload["created_at"],
                received_at=rfc3339(time.time()), n_readings=len(payload["readings"]),
                n_events=len(payload["events"])))
        self.count("accepted")
        log.info("accepted %s (%d readings)", where, len(payload["readings"]))
        return 200, ack

    # ------------------------------------------------------------ signed requests

    def authorize_status(self, gateway_id: str, path: str, authorization: str | None,
                         *, now: float | None = None) -> tuple[int, dict[str, Any]] | None:
        """None when ``authorization`` ("JWS <compact>") is a fresh, unreplayed request for
        GET ``path`` signed by a key of ``gateway_id`` (module docstring); else (401, error doc)."""
        def deny(why: str) -> tuple[int, dict[str, Any]]:
            return self._reject("status_auth", 401, f"status of {gateway_id}: {why}")

        scheme, _, token = (authorization or "").strip().partition(" ")
        if scheme.lower() != "jws" or not token.strip():
            return deny("a request signed by the gateway's key is required (Authorization: JWS <compact JWS>)")
        try:
            kid, claims = self._verify(lambda trust: verify_jws(token.strip(), trust, REQUEST_TYP))
        except BatchError as exc:
            return deny(f"{exc.check}: {exc}")
        owners, how = self._owners(kid)
        if gateway_id not in owners:
            if owners:
                self.count("rejected_key_binding")
            return deny(f"key {kid} is bound to gateway {', '.join(sorted(owners)) or 'none yet'} by {how}, "
                        f"not {gateway_id}")
        if claims.get("gateway_id") != gateway_id or claims.get("path") != path or claims.get("method") != "GET":
            return deny(f"the signed request is for {claims.get('method')} {claims.get('path')} of "
                        f"{claims.get('gateway_id')}, not GET {path}")
        now = time.time() if now is None else now
        iat, jti = claims.get("iat"), claims.get("jti")
        if not isinstance(iat, (int, float)) or isinstance(iat, bool) or abs(now - iat) > self.status_max_age_s:
            return deny(f"iat {iat!r} is not within {self.status_max_age_s:g} s of the receiver's clock")
        if not isinstance(jti, str) or not 16 <= len(jti) <= 64:
            return deny("jti is not a string of 16-64 characters")
        with self._jti_lock:
            while self._seen_jti and (next(iter(self._seen_jti.values())) < now or len(self._seen_jti) > 100_000):
                self._seen_jti.popitem(last=False)
            if f"{kid}/{jti}" in self._seen_jti:
                return deny(f"jti {jti} was already used (replayed request)")
            self._seen_jti[f"{kid}/{jti}"] = now + 2 * self.status_max_age_s
        self.count("status_ok")
        return None


def signed_request_headers(signer: Signer, gateway_id: str, path: str | None = None, *,
                           now: float | None = None) -> dict[str, str]:
    """``{"authorization": "JWS <compact>"}`` for ``GET path`` (default the status of
    ``gateway_id``), signed with the gateway's batch key. One use each (fresh jti)."""
    claims = {"gateway_id": gateway_id, "method": "GET", "path": path or f"/v1/gateways/{gateway_id}/status",
              "iat": int(time.time() if now is None else now), "jti": secrets.token_urlsafe(18)}
    return {"authorization": "JWS " + signer.sign_jws(claims, REQUEST_TYP)}


# ---------------------------------------------------------------- HTTP layer

BeforeHook = Callable[[Any], Awaitable[Any]]
AfterHook = Callable[[int, dict], Awaitable[None]]


class _BodyRefused(Exception):
    def __init__(self, status: int, reason: str, error: str) -> None:
        super().__init__(error)
        self.status, self.reason, self.error = status, reason, error


def create_app(receiver: Receiver, *, limits: ReceiverLimits | None = None, max_body: int | None = None,
               before_submit: BeforeHook | None = None, after_submit: AfterHook | None = None,
               silent_after_s: float = SILENT_AFTER_S):
    """The Starlette ASGI app for ``receiver``.

    ``silent_after_s``: a gateway whose last batch is older than this is reported silent by GET /metrics
    and GET /v1/health (gateway.regulator.metrics).

    ``limits`` bounds bodies (max_body, small_body, large_body_budget, body_timeout_s) and
    concurrent submits; ``max_body`` overrides limits.max_body. Test hooks (for HIL fault
    injection, case C14): ``before_submit(request)`` may return a Response (e.g. 503 with
    Retry-After) that is sent instead of processing the batch; ``after_submit(status, doc)``
    runs after the decision is committed and before the answer is sent (sleep in it to answer
    after the client's timeout).
    """
    from starlette.applications import Starlette
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    lim = limits or ReceiverLimits()
    if max_body is not None:
        lim = dataclasses.replace(lim, max_body=max_body)
    budget = {"used": 0}   # bytes beyond small_body of all bodies in flight (event loop only: no lock)
    submit_slots = asyncio.Semaphore(lim.submit_concurrency)
    close = {"connection": "close"}

    def refuse(status: int, reason: str, error: str, headers: dict[str, str] | None = None) -> JSONResponse:
        """An answer before the body is read: the connection then discards the rest of the body
        (bounded by the protocol's drain deadline) so the sender sees it; a 408 closes."""
        receiver.note(f"rejected_{reason}", "rejected %d: %s", status, error)
        return JSONResponse({"error": error}, status, headers={**(close if status == 408 else {}), **(headers or {})})

    async def read_body(request: Request, drawn: list[int]) -> bytearray:
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > lim.max_body:
                raise _BodyRefused(413, "body_too_large", f"body larger than {lim.max_body} bytes")
            want = max(0, len(body) - lim.small_body)
            if want > drawn[0]:
                if budget["used"] + want - drawn[0] > lim.large_body_budget:
                    raise _BodyRefused(503, "busy_uploads", "receiver busy: too many large uploads in flight")
                budget["used"] += want - drawn[0]
                drawn[0] = want
        return body

    async def post_batch(request: Request) -> Response:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/jose":
            return refuse(415, "content_type", f"content-type {ctype or 'missing'}: application/jose expected")
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > lim.max_body:
            return refuse(413, "body_too_large", f"body larger than {lim.max_body} bytes")
        drawn = [0]
        try:
            try:
                body = await asyncio.wait_for(read_body(request, drawn), lim.body_timeout_s)
            except _BodyRefused as exc:
                return refuse(exc.status, exc.reason, exc.error,
                              {"Retry-After": "1"} if exc.status == 503 else None)
            except asyncio.TimeoutError:
                return refuse(408, "body_timeout", f"body not received within {lim.body_timeout_s:g} s")
            except ClientDisconnect:
                receiver.count("client_disconnect")
                return Response(status_code=400, headers=close)
            if before_submit is not None:
                override = await before_submit(request)
                if override is not None:
                    return override
            try:   # SQLite and Ed25519 checks block: run them off the event loop (ReceiverStore locks itself)
                async with submit_slots:
                    status, doc = await asyncio.to_thread(receiver.submit, body)
            except sqlite3.Error as exc:   # locked, disk full, failed commit: nothing stored, the sender retries
                receiver.count("rejected_store_busy")
                log.error("store error: %s", exc)
                return JSONResponse({"error": f"store busy: {exc}"}, 503, headers={"Retry-After": "1"})
        finally:
            budget["used"] -= drawn[0]
        if after_submit is not None:
            await after_submit(status, doc)
        return JSONResponse(doc, status)

    async def gateway_status(request: Request) -> JSONResponse:
        gid = request.path_params["gateway_id"]
        denied = await asyncio.to_thread(receiver.authorize_status, gid, request.url.path,
                                         request.headers.get("authorization"))
        if denied is not None:
            return JSONResponse(denied[1], denied[0], headers={"WWW-Authenticate": 'JWS realm="hazard-gateway"'})
        st = await asyncio.to_thread(receiver.store.status, gid)
        if st is None:
            return JSONResponse({"error": f"unknown gateway {gid}"}, 404)
        return JSONResponse(st)

    async def health(request: Request) -> JSONResponse:
        status, doc = ops_metrics.health(await asyncio.to_thread(ops_metrics.snapshot, receiver,
                                                                 silent_after_s=silent_after_s))
        return JSONResponse(doc, status)

    async def metrics(request: Request) -> Response:
        snap = await asyncio.to_thread(ops_metrics.snapshot, receiver, silent_after_s=silent_after_s)
        return Response(ops_metrics.render(snap), media_type="text/plain; version=0.0.4; charset=utf-8")

    return Starlette(routes=[
        Route("/v1/batches", post_batch, methods=["POST"]),
        Route("/v1/gateways/{gateway_id}/status", gateway_status, methods=["GET"]),
        Route("/v1/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ])


def parse_listen(listen: str) -> tuple[str, int]:
    """"HOST:PORT" or "[IPv6]:PORT" -> (host, port); ValueError (one line) otherwise."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"listen address {listen!r} is not HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _bind(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ReceiverError(f"{host}:{port}: cannot resolve: {exc.strerror}") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as exc:
        sock.close()
        raise ReceiverError(f"{host}:{port}: cannot listen: {exc.strerror}") from None
    sock.listen(1024)  # listening before "receiver listening on" is printed: early clients queue, not fail
    sock.set_inheritable(True)
    return sock


def _protocol_class(limits: ReceiverLimits, on_timeout: Callable[[str], None]) -> type:
    """uvicorn's h11 protocol plus per-connection deadlines:

    * "head": the request line and headers must be complete ``header_timeout_s`` after the
      connection was made (after the TLS handshake) or after the previous answer. uvicorn arms
      no timer before the first request, and any byte cancels its keep-alive timer, so without
      this a client sending a byte now and then holds a connection forever (slowloris).
    * "drain": after an early answer (413, 415, 503) the rest of the body is read and discarded
      (not buffered; so the sender reliably sees the answer instead of a reset), for at most
      ``body_timeout_s``.

    A connection past its deadline is aborted (no TLS close_notify wait). While the app reads a
    body, the app's own deadline (``body_timeout_s``) applies."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class _DeadlineH11Protocol(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None
        _phase: str | None = None

        def _set_phase(self, phase: str | None) -> None:
            if phase == self._phase:
                return   # a trickle of bytes does not extend a deadline
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None
            self._phase = phase
            if phase is not None:
                delay = limits.header_timeout_s if phase == "head" else limits.body_timeout_s
                self._deadline = self.loop.call_later(delay, self._expired, phase)

        def _update_deadline(self) -> None:
            if self.transport is None or self.transport.is_closing():
                self._set_phase(None)
            elif self.conn.their_state is h11.IDLE:
                self._set_phase("head")
            elif self.conn.their_state is h11.SEND_BODY and self.conn.our_state in (h11.DONE, h11.MUST_CLOSE):
                self._set_phase("drain")
            else:
                self._set_phase(None)

        def _expired(self, phase: str) -> None:
            self._deadline = None
            if self._phase == phase and not self.transport.is_closing():
                self._phase = None
                on_timeout(phase)
                self.transport.abort()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._update_deadline()

        def connection_lost(self, exc: Exception | None) -> None:
            self._set_phase(None)
            super().connection_lost(exc)

        def handle_events(self) -> None:
            super().handle_events()
            self._update_deadline()

        def on_response_complete(self) -> None:
            self._set_phase(None)   # a new phase starts: the next head, or draining this body
            super().on_response_complete()
            self._update_deadline()

    return _DeadlineH11Protocol


def _uvicorn_server(app: Any, certfile: str | None, keyfile: str | None, log_level: str,
                    limits: ReceiverLimits | None = None, receiver: Receiver | None = None):
    import uvicorn

    lim = limits or ReceiverLimits()

    def timeout(phase: str) -> None:
        if receiver is None:
            return
        if phase == "head":
            receiver.note("rejected_header_timeout", "dropped a connection without request headers after %g s",
                          lim.header_timeout_s)
        else:
            receiver.note("rejected_drain_timeout", "dropped a connection still sending a refused body after %g s",
                          lim.body_timeout_s)

    class _Server(uvicorn.Server):
        """uvicorn.Server that ends cleanly on SIGTERM/SIGINT (exit 0) instead of re-raising the
        signal, and whose TLS listener has handshake and shutdown timeouts (uvicorn passes none
        to loop.create_server, so asyncio's 60 s / 30 s apply and half-open TLS connections pile up)."""

        @contextlib.contextmanager
        def capture_signals(self):  # type: ignore[override]
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            old = {s: signal.signal(s, self.handle_exit) for s in (signal.SIGTERM, signal.SIGINT)}
            try:
                yield
            finally:
                for s, h in old.items():
                    signal.signal(s, h)

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:  # type: ignore[override]
            loop = asyncio.get_running_loop()
            real = loop.create_server

            async def create_server(*args: Any, **kwargs: Any) -> Any:
                if kwargs.get("ssl") is not None:
                    kwargs.setdefault("ssl_handshake_timeout", lim.tls_handshake_timeout_s)
                    kwargs.setdefault("ssl_shutdown_timeout", lim.tls_shutdown_timeout_s)
                return await real(*args, **kwargs)

            try:
                loop.create_server = create_server  # type: ignore[method-assign]
            except AttributeError:   # pragma: no cover - a loop without instance attributes
                log.warning("TLS handshake timeout not applied: the event loop does not allow it")
                await super().startup(sockets)
                return
            try:
                await super().startup(sockets)
            finally:
                del loop.create_server

    config = uvicorn.Config(app, ssl_certfile=certfile, ssl_keyfile=keyfile, log_level=log_level,
                            lifespan="off", access_log=False, timeout_graceful_shutdown=5, server_header=False,
                            loop="asyncio", http=_protocol_class(lim, timeout),
                            limit_concurrency=lim.max_connections, timeout_keep_alive=lim.keep_alive_s,
                            h11_max_incomplete_event_size=lim.max_header_bytes)
    return _Server(config)


def _raise_fd_limit(limits: ReceiverLimits) -> None:
    """Lift the soft open-file limit towards max_connections + headroom (up to the hard limit),
    so that slow connections run into max_connections and the deadlines, not into EMFILE."""
    try:
        import resource
    except ImportError:   # pragma: no cover - not POSIX
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = limits.max_connections * 2 + 256   # plus TLS handshakes in progress, the store, logs
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            soft = new
        if soft < want:
            log.warning("open-file limit %d is below %d (max_connections %d); raise LimitNOFILE", soft, want,
                        limits.max_connections)


#: the extra that brings the receiver's web stack (starlette, uvicorn); the plain gateway does not install it
WEB_EXTRA = "receiver"


def web_stack_missing(extra: str = WEB_EXTRA) -> str | None:
    """None when the receiver's web stack (starlette, uvicorn) is installed; else one line saying which extra
    to install (``extra``: "receiver", or "demo" for the demo, which runs a receiver). The gateway itself never
    needs it: a plant installs ``hazard-gateway``, a regulator ``hazard-gateway[receiver]``."""
    import importlib.util

    missing = [m for m in ("starlette", "uvicorn") if importlib.util.find_spec(m) is None]
    if not missing:
        return None
    return (f"the receiver needs {' and '.join(missing)}, which the plain gateway does not install: "
            f"pip install 'hazard-gateway[{extra}]'")


def run_receiver(listen: str, store: str | os.PathLike[str], trust: str | os.PathLike[str],
                 certfile: str | os.PathLike[str] | None = None, keyfile: str | os.PathLike[str] | None = None,
                 *, log_level: str = "info", limits: ReceiverLimits | None = None,
                 require_binding: bool = False, signing_key: str | os.PathLike[str] | None = None,
                 silent_after_s: float = SILENT_AFTER_S) -> int:
    """Serve the receiver on ``listen`` ("HOST:PORT") until SIGTERM/SIGINT; return 0.

    HTTPS when certfile and keyfile (PEM) are given; plain HTTP only on a loopback host
    (127.0.0.0/8, ::1, localhost). ``limits``: see :class:`ReceiverLimits` (the soft open-file
    limit is raised to fit max_connections). ``require_binding``: refuse to start with a key
    that is not bound to a gateway. ``signing_key``: the receiver's Ed25519 private key (PKCS#8 PEM,
    mode 0600, as ``keygen`` writes it) that signs content refusals (module docstring, "Signed
    rejections"). ``silent_after_s``: see :func:`create_app`. On SIGTERM in-flight requests finish
    (at most 5 s), the store is closed, the
    stats are logged as one line and 0 is returned. Prints "receiver
    listening on URL" to stderr once bound. Raises ReceiverError (one line) for a bad listen
    address, missing cert/key, plain HTTP on a non-loopback host, a busy port, a bad trust
    directory / store, or an unusable signing key.
    """
    try:
        host, port = parse_listen(listen)
    except ValueError as exc:
        raise ReceiverError(str(exc)) from None
    if (certfile is None) != (keyfile is None):
        raise ReceiverError("HTTPS needs both a certificate and its key (--cert and --key)")
    if certfile is None and not _is_loopback(host):
        raise ReceiverError(f"refusing plain HTTP on {host}: it is not a loopback address; give --cert and --key")
    for f in (certfile, keyfile):
        if f is not None and not Path(f).is_file():
            raise ReceiverError(f"{f}: no such file")
    lim = limits or ReceiverLimits()
    signer = _rejection_signer(signing_key)
    receiver = Receiver(store, trust, require_binding=require_binding, status_max_age_s=lim.status_max_age_s,
                        rejection_signer=signer)
    _raise_fd_limit(lim)
    sock = _bind(host, port)
    try:
        server = _uvicorn_server(create_app(receiver, limits=lim, silent_after_s=silent_after_s),
                                 str(certfile) if certfile else None,
                                 str(keyfile) if keyfile else None, log_level, lim, receiver)
        try:
            server.config.load()
        except (ssl.SSLError, OSError) as exc:
            raise ReceiverError(f"{certfile}: cannot load certificate/key: {exc}") from None
        bound = sock.getsockname()
        shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
        print(f"receiver listening on {'https' if certfile else 'http'}://{shown}:{bound[1]}", file=sys.stderr,
              flush=True)
        server.run(sockets=[sock])
    finally:
        sock.close()
        receiver.close()
        log.info("receiver stats: %s", " ".join(f"{k}={v}" for k, v in sorted(receiver.stats().items())) or "none")
    return 0


def _rejection_signer(signing_key: str | os.PathLike[str] | None) -> Signer | None:
    """The receiver key for signed rejections, or None; ReceiverError (one line naming the file)."""
    if signing_key is None:
        return None
    with contextlib.suppress(OSError):
        with open(signing_key, "rb") as fh:
            if fh.read(64).lstrip().startswith(b"{"):
                raise ReceiverError(f"--signing-key: {signing_key}: a JWK (a public key); give the receiver's "
                                    f"private.pem that `hazard-gateway keygen` wrote next to it")
    try:
        signer = Signer.from_file(signing_key)
    except KeyFileError as exc:
        raise ReceiverError(f"--signing-key: {exc}") from None
    log.info("content refusals are signed with receiver key %s", signer.kid)
    return signer


class BackgroundReceiver:
    """A receiver on 127.0.0.1 with a free port, in a background thread (for tests and demos).

    ``with BackgroundReceiver(workdir, trust_dir) as rx:`` -> ``rx.url`` ("https://127.0.0.1:PORT"),
    ``rx.cafile`` (the self-signed cert, made in ``workdir`` with :func:`make_self_signed`),
    ``rx.ssl_context()`` for clients, ``rx.store_path``, ``rx.receiver``. ``tls=False`` serves
    plain HTTP on loopback. Hooks are passed to :func:`create_app`; busy_timeout_s is the SQLite
    busy timeout (after it a locked store answers 503); ``limits``, ``require_binding`` and
    ``signing_key`` and ``silent_after_s`` as for :func:`run_receiver`. Stops by itself on exit. ``stop()``
    then ``start()``
    restarts it on the same port, store and certificate (``limits`` may be changed in between); ``port``
    picks the first port (0: a free one).
    """

    def __init__(self, workdir: str | os.PathLike[str], trust_dir: str | os.PathLike[str], *, tls: bool = True,
                 store: str | os.PathLike[str] | None = None, before_submit: BeforeHook | None = None,
                 after_submit: AfterHook | None = None, start_timeout_s: float = 10.0,
                 busy_timeout_s: float = 5.0, limits: ReceiverLimits | None = None,
                 require_binding: bool = False, signing_key: str | os.PathLike[str] | None = None,
                 port: int = 0, silent_after_s: float = SILENT_AFTER_S) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.store_path = Path(store) if store else self.workdir / "receiver.sqlite"
        self.trust_dir = Path(trust_dir)
        self.tls = tls
        self.cafile: Path | None = None
        self.keyfile: Path | None = None
        self._hooks = {"before_submit": before_submit, "after_submit": after_submit}
        self._timeout = start_timeout_s
        self._busy_timeout_s = busy_timeout_s
        self.limits = limits or ReceiverLimits()
        self._require_binding = require_binding
        self.signing_key = signing_key
        self._port = port
        self._silent_after_s = silent_after_s
        self._thread: threading.Thread | None = None
        self._server: Any = None
        self._error: BaseException | None = None
        self.url = ""
        self.receiver: Receiver | None = None

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts exactly this receiver's self-signed certificate."""
        if self.cafile is None:
            raise RuntimeError("receiver runs without TLS")
        return ssl.create_default_context(cafile=str(self.cafile))

    def start(self) -> "BackgroundReceiver":
        if self.tls and self.cafile is None:
            self.cafile, self.keyfile = make_self_signed(self.workdir / "tls", ["127.0.0.1", "localhost"])
        self.receiver = Receiver(self.store_path, self.trust_dir, busy_timeout_s=self._busy_timeout_s,
                                 require_binding=self._require_binding,
                                 status_max_age_s=self.limits.status_max_age_s,
                                 rejection_signer=_rejection_signer(self.signing_key))
        sock = _bind("127.0.0.1", self._port)
        self._port = sock.getsockname()[1]   # a restart listens on the same port
        self.url = f"{'https' if self.tls else 'http'}://127.0.0.1:{sock.getsockname()[1]}"
        self._server = _uvicorn_server(create_app(self.receiver, limits=self.limits,
                                                  silent_after_s=self._silent_after_s, **self._hooks),
                                       str(self.cafile) if self.tls else None,
                                       str(self.keyfile) if self.tls else None, "warning", self.limits,
                                       self.receiver)

        def _run() -> None:
            try:
                asyncio.run(self._server.serve(sockets=[sock]))
            except BaseException as exc:  # noqa: BLE001 - reported to start()
                self._error = exc
            finally:
                sock.close()

        self._thread = threading.Thread(target=_run, name="receiver", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + self._timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise ReceiverError(f"receiver did not start: {self._error!r}")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Stop serving and close the store; idempotent."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        if self.receiver is not None:
            self.receiver.close()
            self.receiver = None

    def __enter__(self) -> "BackgroundReceiver":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """``python -m gateway.regulator.receiver --listen HOST:PORT --store FILE --trust DIR [--cert F --key F]
    [--signing-key PEM] [--require-bound-keys] [--max-body BYTES] [--max-connections N]`` or
    ``... --export DIR --store FILE``;
    prints one line on a person-caused error, exit 2."""
    d = ReceiverLimits()
    ap = argparse.ArgumentParser(prog="python -m gateway.regulator.receiver", description="reference regulator receiver")
    ap.add_argument("--listen", default="127.0.0.1:8443")
    ap.add_argument("--store", required=True)
    ap.add_argument("--trust", help="trust directory: DIR/<gateway_id>/<kid>.jwk binds a key to its gateway; "
                                    "DIR/<kid>.jwk binds by its \"gateway_id\" member, else on first use")
    ap.add_argument("--cert", help="TLS certificate (PEM)")
    ap.add_argument("--key", help="TLS private key (PEM)")
    ap.add_argument("--signing-key", metavar="PEM",
                    help="receiver Ed25519 private key (keygen's private.pem): signs content refusals, the only "
                         "answers that let a gateway set a batch aside (its <kid>.jwk is uplink.receiver_key)")
    ap.add_argument("--require-bound-keys", action="store_true",
                    help="refuse to start with a key that is not bound to a gateway")
    ap.add_argument("--max-body", type=int, default=d.max_body, metavar="BYTES",
                    help=f"largest accepted batch (default {d.max_body})")
    ap.add_argument("--max-connections", type=int, default=d.max_connections, metavar="N",
                    help=f"open connections before new requests get 503 (default {d.max_connections})")
    ap.add_argument("--export", metavar="DIR", help="export stored batches to DIR and exit")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.export:
            n = export_batches(args.store, args.export)
            print(f"exported {n} batches to {args.export}")
            return 0
        if not args.trust:
            raise ReceiverError("--trust DIR is required to serve")
        if args.max_body < 1 or args.max_connections < 1:
            raise ReceiverError("--max-body and --max-connections must be >= 1")
        limits = dataclasses.replace(d, max_body=args.max_body, max_connections=args.max_connections)
        return run_receiver(args.listen, args.store, args.trust, args.cert, args.key, limits=limits,
                            require_binding=args.require_bound_keys, signing_key=args.signing_key)
    except ReceiverError as exc:
        print(f"hazard-gateway: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
