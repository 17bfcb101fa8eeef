"""The reference regulator receiver: HTTPS endpoint, verification, dedup, storage.

HTTP interface (JSON answers; errors are ``{"error": "<one line>"}``):

``POST /v1/batches``  body = one compact JWS (see gateway.signing), ``Content-Type: application/jose``
(RFC 7515 s.9.2.1); surrounding ASCII whitespace is ignored. Answers:

* 200 ``{"gateway_id", "seq", "status": "accepted", "hash"}`` -- stored; ``hash`` = chain_hash(body).
* 200 same ack with ``"status": "duplicate"`` -- byte-identical resend of a stored batch
  (dedup by (gateway_id, seq), so at-least-once upload becomes exactly-once, case C14).
* 400 malformed (not a compact JWS, bad JSON, bad payload shape, bad typ/crit, bad announce_key).
* 401 unknown kid, alg other than EdDSA, or signature does not verify.
* 403 the key is bound to another gateway_id (a key signs for one gateway only).
* 409 a different body for a stored (gateway_id, seq) ("conflict"); seq != last+1
  ("gap: expected seq N", strict: the gateway sends in order, case C15); prev != chain hash
  of the stored seq-1 ("chain broken"). 409 answers carry ``expected_seq``.
* 413 body larger than ``max_body`` bytes; 415 wrong content type; 503 + Retry-After when
  the store is locked or a write fails (commit error, disk full; case C17): nothing was stored,
  the transaction is rolled back, and the resend is judged afresh.

``submit`` runs in a worker thread (asyncio.to_thread): its SQLite and signature work never
blocks the event loop; ReceiverStore serialises the store with its lock and BEGIN IMMEDIATE.

``GET /v1/gateways/{gateway_id}/status`` -> ``{"gateway_id", "last_seq", "count", "gaps",
"readings", "last_hash", "last_received_at"}`` (404 when unknown). ``GET /v1/health`` -> ``{"ok": true}``.

Storage: SQLite in WAL mode with synchronous=FULL, so an ack is only sent for a batch that
is durable. Batches are stored verbatim (the exact compact JWS) with ``received_at``.

Key rotation: a batch whose payload carries ``announce_key`` (a public Ed25519 JWK) and that
verifies with a trusted key adds the announced key to the trust set, bound to the same
gateway_id, persisted in the store. Old keys stay trusted. New ``*.jwk`` files dropped into the
trust directory are picked up on the next batch with an unknown kid (no restart needed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import logging
import os
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
from gateway.signing import (BatchError, KeyFileError, batch_kid, canonical_json, chain_hash, decode_unverified,
                             load_trust_dir, public_key_from_jwk, verify_batch)
from gateway.tlsutil import make_self_signed

log = logging.getLogger("gateway.receiver")

MAX_BODY = 16 * 1024 * 1024
STATUS_FOR_CHECK = {"malformed": 400, "payload": 400, "alg": 401, "kid": 401, "signature": 401}

__all__ = ["BackgroundReceiver", "Receiver", "ReceiverError", "ReceiverStore", "StoredBatch", "create_app",
           "export_batches", "make_self_signed", "parse_listen", "run_receiver"]


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
    """Verification, dedup and chain checks for one store and one trust directory.

    ``submit(body)`` is the whole POST /v1/batches decision and returns (HTTP status, JSON doc);
    the HTTP layer only adds transport concerns. Raises ReceiverError at construction when the
    trust directory is missing or holds a bad ``*.jwk``.
    """

    def __init__(self, store: str | os.PathLike[str] | ReceiverStore, trust_dir: str | os.PathLike[str],
                 *, busy_timeout_s: float = 5.0) -> None:
        self.trust_dir = Path(trust_dir)
        try:
            self._static = load_trust_dir(self.trust_dir)
        except KeyFileError as exc:
            raise ReceiverError(str(exc)) from None
        self.store = store if isinstance(store, ReceiverStore) else ReceiverStore(store, busy_timeout_s=busy_timeout_s)
        if not self._static and not self.store.announced_keys():
            raise ReceiverError(f"{self.trust_dir}: no *.jwk public keys; every batch would be refused")
        self._last_rescan = 0.0

    def close(self) -> None:
        self.store.close()

    def trust(self) -> dict[str, Ed25519PublicKey]:
        """Current trust set {kid: key}: the trust directory plus announced keys."""
        keys = {kid: k for kid, (k, _) in self.store.announced_keys().items()}
        keys.update(self._static)
        return keys

    def _rescan(self) -> bool:
        """Reload the trust directory (at most once a second); True when it changed."""
        now = time.monotonic()
        if now - self._last_rescan < 1.0:
            return False
        self._last_rescan = now
        try:
            fresh = load_trust_dir(self.trust_dir)
        except KeyFileError as exc:
            log.error("trust directory not reloaded: %s", exc)
            return False
        changed = fresh.keys() != self._static.keys()
        self._static = fresh
        return changed

    def submit(self, body: bytes) -> tuple[int, dict[str, Any]]:
        """Decide on one uploaded batch; see the module docstring for every answer."""
        try:
            compact = body.decode("ascii").strip()
        except UnicodeDecodeError:
            return 400, {"error": "malformed: body is not an ASCII compact JWS"}
        try:
            try:
                payload = verify_batch(compact, self.trust())
            except BatchError as exc:
                if exc.check == "kid" and self._rescan():
                    payload = verify_batch(compact, self.trust())
                else:
                    raise
        except BatchError as exc:
            status = STATUS_FOR_CHECK.get(exc.check, 400)
            log.warning("rejected %d: %s", status, exc)
            return status, {"error": f"{exc.check}: {exc}"}
        kid = batch_kid(compact)
        assert kid is not None
        gid, seq = payload["gateway_id"], payload["seq"]
        digest = chain_hash(compact)
        ack = {"gateway_id": gid, "seq": seq, "status": "accepted", "hash": digest}
        where = f"{gid} seq {seq}"
        with self.store.transaction():
            bound = self.store.key_gateways(kid)
            if bound and gid not in bound:
                log.warning("rejected 403: %s: key %s belongs to %s", where, kid, ", ".join(sorted(bound)))
                return 403, {"error": f"key {kid} belongs to gateway {', '.join(sorted(bound))}, not {gid}"}
            existing = self.store.get(gid, seq)
            last = self.store.last_seq(gid)
            if existing is not None:
                if existing.jws == compact:
                    log.info("duplicate %s", where)
                    return 200, {**ack, "status": "duplicate"}
                log.warning("rejected 409: %s: conflict with the stored batch", where)
                return 409, {"error": f"conflict: {where} is already stored with a different body",
                             "expected_seq": last + 1}
            if seq != last + 1:
                log.warning("rejected 409: %s: gap, expected seq %d", where, last + 1)
                return 409, {"error": f"gap: expected seq {last + 1}", "expected_seq": last + 1}
            if seq > 1:
                before = self.store.get(gid, seq - 1)
                if before is None or payload["prev"] != before.hash:
                    log.warning("rejected 409: %s: chain broken", where)
                    return 409, {"error": f"chain broken: prev of {where} is not the hash of seq {seq - 1}",
                                 "expected_seq": last + 1}
            if "announce_key" in payload:
                new_kid, _ = public_key_from_jwk(payload["announce_key"])
                owners = self.store.key_gateways(new_kid) - {gid}
                if owners:
                    return 400, {"error": f"announce_key {new_kid} already belongs to gateway "
                                          f"{', '.join(sorted(owners))}"}
                jwk = {k: payload["announce_key"][k] for k in ("kty", "crv", "x")}
                jwk["kid"] = new_kid
                self.store._insert_key(new_kid, jwk, gid, kid, seq)
                log.info("%s announces key %s (signed by %s)", where, new_kid, kid)
            self.store._insert_batch(StoredBatch(
                gateway_id=gid, seq=seq, jws=compact, hash=digest, kid=kid, created_at=payload["created_at"],
                received_at=rfc3339(time.time()), n_readings=len(payload["readings"]),
                n_events=len(payload["events"])))
        log.info("accepted %s (%d readings)", where, len(payload["readings"]))
        return 200, ack


# ---------------------------------------------------------------- HTTP layer

BeforeHook = Callable[[Any], Awaitable[Any]]
AfterHook = Callable[[int, dict], Awaitable[None]]


def create_app(receiver: Receiver, *, max_body: int = MAX_BODY, before_submit: BeforeHook | None = None,
               after_submit: AfterHook | None = None):
    """The Starlette ASGI app for ``receiver``.

    Test hooks (for HIL fault injection, case C14): ``before_submit(request)`` may return a
    Response (e.g. 503 with Retry-After) that is sent instead of processing the batch;
    ``after_submit(status, doc)`` runs after the decision is committed and before the answer
    is sent (sleep in it to answer after the client's timeout).
    """
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def post_batch(request: Request) -> JSONResponse:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/jose":
            return JSONResponse({"error": f"content-type {ctype or 'missing'}: application/jose expected"}, 415)
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_body:
            return JSONResponse({"error": f"body larger than {max_body} bytes"}, 413)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_body:
                return JSONResponse({"error": f"body larger than {max_body} bytes"}, 413)
        if before_submit is not None:
            override = await before_submit(request)
            if override is not None:
                return override
        try:   # SQLite and Ed25519 checks block: run them off the event loop (ReceiverStore locks itself)
            status, doc = await asyncio.to_thread(receiver.submit, bytes(body))
        except sqlite3.Error as exc:   # locked, disk full, failed commit: nothing stored, the sender retries
            log.error("store error: %s", exc)
            return JSONResponse({"error": f"store busy: {exc}"}, 503, headers={"Retry-After": "1"})
        if after_submit is not None:
            await after_submit(status, doc)
        return JSONResponse(doc, status)

    async def gateway_status(request: Request) -> JSONResponse:
        gid = request.path_params["gateway_id"]
        st = await asyncio.to_thread(receiver.store.status, gid)
        if st is None:
            return JSONResponse({"error": f"unknown gateway {gid}"}, 404)
        return JSONResponse(st)

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    return Starlette(routes=[
        Route("/v1/batches", post_batch, methods=["POST"]),
        Route("/v1/gateways/{gateway_id}/status", gateway_status, methods=["GET"]),
        Route("/v1/health", health, methods=["GET"]),
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
    sock.listen(128)  # listening before "receiver listening on" is printed: early clients queue, not fail
    sock.set_inheritable(True)
    return sock


def _uvicorn_server(app: Any, certfile: str | None, keyfile: str | None, log_level: str):
    import uvicorn

    class _Server(uvicorn.Server):
        """uvicorn.Server that ends cleanly on SIGTERM/SIGINT (exit 0) instead of re-raising the signal."""

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

    config = uvicorn.Config(app, ssl_certfile=certfile, ssl_keyfile=keyfile, log_level=log_level,
                            lifespan="off", access_log=False, timeout_graceful_shutdown=5, server_header=False)
    return _Server(config)


def run_receiver(listen: str, store: str | os.PathLike[str], trust: str | os.PathLike[str],
                 certfile: str | os.PathLike[str] | None = None, keyfile: str | os.PathLike[str] | None = None,
                 *, log_level: str = "info") -> int:
    """Serve the receiver on ``listen`` ("HOST:PORT") until SIGTERM/SIGINT; return 0.

    HTTPS when certfile and keyfile (PEM) are given; plain HTTP only on a loopback host
    (127.0.0.0/8, ::1, localhost). On SIGTERM in-flight requests finish (at most 5 s), the
    store is closed and 0 is returned. Prints "receiver listening on URL" to stderr once bound.
    Raises ReceiverError (one line) for a bad listen address, missing cert/key, plain HTTP on a
    non-loopback host, a busy port, or a bad trust directory / store.
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
    receiver = Receiver(store, trust)
    sock = _bind(host, port)
    try:
        server = _uvicorn_server(create_app(receiver), str(certfile) if certfile else None,
                                 str(keyfile) if keyfile else None, log_level)
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
    return 0


class BackgroundReceiver:
    """A receiver on 127.0.0.1 with a free port, in a background thread (for tests and demos).

    ``with BackgroundReceiver(workdir, trust_dir) as rx:`` -> ``rx.url`` ("https://127.0.0.1:PORT"),
    ``rx.cafile`` (the self-signed cert, made in ``workdir`` with :func:`make_self_signed`),
    ``rx.ssl_context()`` for clients, ``rx.store_path``, ``rx.receiver``. ``tls=False`` serves
    plain HTTP on loopback. Hooks are passed to :func:`create_app`; busy_timeout_s is the SQLite
    busy timeout (after it a locked store answers 503). Stops by itself on exit.
    """

    def __init__(self, workdir: str | os.PathLike[str], trust_dir: str | os.PathLike[str], *, tls: bool = True,
                 store: str | os.PathLike[str] | None = None, before_submit: BeforeHook | None = None,
                 after_submit: AfterHook | None = None, start_timeout_s: float = 10.0,
                 busy_timeout_s: float = 5.0) -> None:
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
        self.receiver = Receiver(self.store_path, self.trust_dir, busy_timeout_s=self._busy_timeout_s)
        sock = _bind("127.0.0.1", 0)
        self.url = f"{'https' if self.tls else 'http'}://127.0.0.1:{sock.getsockname()[1]}"
        self._server = _uvicorn_server(create_app(self.receiver, **self._hooks),
                                       str(self.cafile) if self.tls else None,
                                       str(self.keyfile) if self.tls else None, "warning")

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
    """``python -m gateway.receiver --listen HOST:PORT --store FILE --trust DIR [--cert F --key F]``
    or ``... --export DIR --store FILE``; prints one line on a person-caused error, exit 2."""
    ap = argparse.ArgumentParser(prog="python -m gateway.receiver", description="reference regulator receiver")
    ap.add_argument("--listen", default="127.0.0.1:8443")
    ap.add_argument("--store", required=True)
    ap.add_argument("--trust")
    ap.add_argument("--cert")
    ap.add_argument("--key")
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
        return run_receiver(args.listen, args.store, args.trust, args.cert, args.key)
    except ReceiverError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
