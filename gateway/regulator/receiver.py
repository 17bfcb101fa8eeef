"""The reference regulator receiver: HTTPS endpoint, verification, dedup, storage.

HTTP interface (JSON answers; errors are ``{"error": "<one line>"}``):

``POST /v1/batches``  body = one compact JWS (see gateway.chain.signing), ``Content-Type: application/jose``
(RFC 7515 s.9.2.1); surrounding ASCII whitespace is ignored. Answers:

* 200 ``{"gateway_id", "seq", "status": "accepted", "hash"}`` -- stored; ``hash`` = chain_hash(body).
* 200 same ack with ``"status": "duplicate"`` -- byte-identical resend of a stored batch
  (dedup by (gateway_id, seq), so at-least-once upload becomes exactly-once, case C14).
* 400 malformed (not a compact JWS, bad JSON, JSON nested deeper than 32 levels, a protected
  header over 1024 bytes, bad payload shape, bad typ/crit, announce_key without its
  announce_key_proof, announce_key of a key that belongs to another gateway, a bad basic-data
  record: see "Basic data"). With a receiver signing key (see "Signed rejections") the answer also
  carries ``"rejection"``.
* 401 unknown kid, alg other than EdDSA, signature does not verify, the key is bound to
  another gateway ("key K is bound to gateway B, not V": a key signs for one gateway only),
  a change of signing key mid-chain to a key that was never announced ("key change"), or an
  announce_key_proof that is not the new key's signature over this gateway_id, kid and seq.
* 409 a different body for a stored (gateway_id, seq) ("conflict"); seq != last+1
  ("gap: expected seq N", strict: the gateway sends in order, case C15; HTTP is always strict,
  see "Out-of-order delivery" for the exception); prev != chain hash of the stored seq-1
  ("chain broken"). 409 answers carry ``expected_seq``.
* 408 the body did not arrive within ``body_timeout_s`` (the connection is closed); 413 body
  larger than ``max_body`` bytes (declared, or once that much has streamed in: it is never
  buffered whole); 415 wrong content type. After a 413, 415 or budget 503 the rest of the body
  is read and thrown away (for at most ``body_timeout_s``), so the sender sees the answer.
* 503 + Retry-After when the store is locked or a write fails (commit error, disk full, a lost
  PostgreSQL connection, a lock not granted in time; case C17; gateway.regulator.storage.STORE_ERRORS):
  nothing was stored, the transaction is rolled back, and the resend is judged afresh;
  also when too many large bodies are in flight at once (``large_body_budget``), and
  (uvicorn's own answer, no Retry-After) above ``max_connections`` open connections.

``submit`` runs in a worker thread (asyncio.to_thread, at most ``submit_concurrency`` at once):
its store and signature work never blocks the event loop; ReceiverStore serialises the writers
(SQLite: its lock and BEGIN IMMEDIATE; PostgreSQL: advisory locks on the gateway and the kids,
so several receiver processes on one database decide each (gateway_id, seq) once; see
gateway.regulator.storage).

Out-of-order delivery (``Receiver.submit(body, unordered=True)``, for a transport that may hand
one gateway's batches to different receiver processes, e.g. MQTT 5 shared subscriptions, MQTT 5.0
s.4.8.2): a batch whose signature verifies (and whose key may sign for the gateway) but whose seq
is beyond last+1 (at most ``PARK_WINDOW`` beyond; further is still a 409 gap) is stored durably
in the ``parked`` table and answered 202 ``{"gateway_id", "seq", "status": "parked",
"expected_seq"}``; a byte-identical resend of a parked batch is answered "parked" again, a
different body for a parked seq 409 "conflict". Whenever a batch of that gateway is accepted
(either way), its parked successors are taken in seq order within the same transaction and
judged exactly as if they had just arrived (signature, key binding, chain, key change,
announce_key); each accepted one leaves the parked table and counts as ``accepted``; the first
one refused is dropped from it (logged, counted as ``rejected_<reason>``; its resend is judged
afresh) and ends the run. With ``unordered=False`` (the default, and HTTP) a gap is a 409.

``GET /v1/gateways/{gateway_id}/status`` -> ``{"gateway_id", "last_seq", "count", "gaps",
"readings", "last_hash", "last_received_at"}``. It needs the same trust as an upload: header
``Authorization: JWS <compact JWS>`` signed by a key of that gateway (bound to it as for
uploads), typ ``hazard-gateway-request+jws``, claims ``{"gateway_id", "method": "GET",
"path": "/v1/gateways/<id>/status", "iat": <epoch s>, "jti": <random, 16-64 chars>}``;
:func:`signed_request_headers` makes it. ``iat`` within ``status_max_age_s`` (300 s) of the
receiver's clock; a jti is accepted once. Anything else: 401 (``WWW-Authenticate: JWS``);
404 for a gateway with no batch (after the check).

``GET /v1/gateways/{gateway_id}/basic-data`` -> ``{"gateway_id", "seq", "config_hash", "received_at",
"doc"}``: the latest basic-data record (基础数据) of the gateway, ``doc`` as the gateway sent it
(gateway.chain.basic_data), ``seq`` the batch that carried it. The same signed request as the status
(claims ``"path": "/v1/gateways/<id>/basic-data"``; :func:`signed_request_headers` with that path);
404 when no basic data has been accepted yet (after the check).

Basic data: every ``{"type": "basic_data"}`` event of a batch that would be accepted must pass
gateway.chain.basic_data.validate (schema version 1, units fit measures, CAS check digits, limits
within ranges, point codes built from their parts), name the batch's ``gateway_id`` and carry its
``config_hash`` (or that of a config the batch records a ``start`` or ``config_reloaded`` of), and
keep the enterprise code bound to the gateway by its first accepted basic data (another code, or
none, after it is forged or a re-registration). A bad one refuses the whole batch: 400, reason
``basic_data`` (``rejected_basic_data`` in :meth:`Receiver.stats`; a content refusal, signed when
the receiver has a key), nothing stored. A good one is stored with the batch in one transaction
(the batch's last one, ReceiverStore.put_basic_data).

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

Storage (gateway.regulator.storage, docs/design.md "Receiver storage"; ``--store``): a file is
SQLite in WAL mode with synchronous=FULL; a ``postgresql://`` URL is PostgreSQL (psycopg 3), for
several receiver processes on one database. Either way an ack is only sent for a batch whose
transaction has committed (durable), and the schema is migrated at start (``schema_migrations``).
Batches are stored verbatim (the exact compact JWS) with ``received_at``; ``export`` writes them
out (all, one gateway's, or those received since an RFC 3339 time).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import ipaddress
import logging
import os
import secrets
import signal
import socket
import ssl
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.model import rfc3339
from gateway.chain import basic_data
from gateway.chain.rejection import CONTENT_REFUSAL_STATUSES, sign_rejection
from gateway.chain.signing import (BatchError, KeyFileError, Signer, batch_kid, chain_hash, links_to,
                                   public_key_from_jwk, verify_batch, verify_jws)
from gateway.tlsutil import make_self_signed
from gateway.regulator import metrics as ops_metrics
from gateway.regulator.metrics import SILENT_AFTER_S
from gateway.regulator.verify import TrustedKey, load_trust
from gateway.regulator.storage import (STORE_ERRORS, ReceiverError, ReceiverStore, StoredBatch, is_url,
                                      parse_since)

log = logging.getLogger("gateway.regulator.receiver")

MAX_BODY = 8 * 1024 * 1024
STATUS_MAX_AGE_S = 300.0
REQUEST_TYP = "hazard-gateway-request+jws"
#: what a gateway may read of itself with a signed request: /v1/gateways/<id>/<resource> -> its name in stats()
GATEWAY_RESOURCES = {"status": "status", "basic-data": "basic_data"}
#: unordered delivery: a batch at most this far beyond the next expected seq is parked, one further is a gap (409)
PARK_WINDOW = 1000
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


def export_batches(store: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, gateway_id: str | None = None,
                   since: str | None = None) -> int:
    """Export the accepted batches of the receiver store ``store`` (a path or a ``postgresql://`` URL) verbatim
    as ``out_dir/f"{gateway_id}-{seq}.jws"`` (no zero padding, no trailing newline); only one gateway's with
    ``gateway_id``, only those received at or after ``since`` (RFC 3339) with ``since``. Returns the number of
    files. Raises ReceiverError (one line) for a missing or unreadable store or a bad ``since``."""
    if since is not None:
        try:
            parse_since(since)
        except ValueError as exc:
            raise ReceiverError(str(exc)) from None
    with ReceiverStore(store, create=False) as st:
        return st.export(out_dir, gateway_id=gateway_id, since=since)


# ---------------------------------------------------------------- verification core


class Receiver:
    """Verification, dedup, key binding and chain checks for one store and one trust directory.

    ``submit(body)`` is the whole POST /v1/batches decision and returns (HTTP status, JSON doc);
    ``authorize_request`` checks a signed GET of a gateway's status or basic data; the HTTP layer only adds transport
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

    def submit(self, body: bytes | bytearray, *, unordered: bool = False) -> tuple[int, dict[str, Any]]:
        """Decide on one uploaded batch; see the module docstring for every answer. A content refusal
        (400) carries a signed ``rejection`` when the receiver has a key and the body names a batch.
        ``unordered``: the transport may deliver a gateway's batches out of order (module docstring,
        "Out-of-order delivery"): a verified batch ahead of a gap is parked (202) instead of refused (409).
        Raises one of gateway.regulator.storage.STORE_ERRORS when the store cannot take the decision (the
        HTTP layer answers 503): then nothing was stored."""
        status, doc = self._decide(body, unordered)
        if status in CONTENT_REFUSAL_STATUSES and self.rejection_signer is not None:
            rejection = sign_rejection(self.rejection_signer, body, status, str(doc.get("error", "")))
            if rejection is None:
                self.count("rejection_unsigned")
                log.warning("rejected %d without a signed rejection: the body names no batch", status)
            else:
                self.count("rejection_signed")
                doc = {**doc, "rejection": rejection}
        return status, doc

    def _decide(self, body: bytes | bytearray, unordered: bool = False) -> tuple[int, dict[str, Any]]:
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
        gid = payload["gateway_id"]
        accepted: list[tuple[str, int]] = []
        with self.store.transaction(gid, kids=_kids(payload, kid)):
            status, doc = self._judge(compact, payload, kid, unordered=unordered)
            if status == 200 and doc["status"] == "accepted":
                accepted.append((f"{gid} seq {payload['seq']}", len(payload["readings"])))
                accepted += self._take_parked(gid, payload["seq"])
        for i, (where, n) in enumerate(accepted):   # counted once committed
            self.count("accepted")
            log.info("accepted %s (%d readings%s)", where, n, ", parked before" if i else "")
        return status, doc

    def _judge(self, compact: str, payload: dict[str, Any], kid: str, *, unordered: bool = False
               ) -> tuple[int, dict[str, Any]]:
        """The decision on one verified batch, inside the store transaction (locked on its gateway and kids):
        key binding, dedup, conflict, gap (or park), chain, key change, announce; an accepted batch is
        inserted (answer 200 "accepted", counted by the caller once committed)."""
        gid, seq = payload["gateway_id"], payload["seq"]
        digest = chain_hash(compact)
        ack = {"gateway_id": gid, "seq": seq, "status": "accepted", "hash": digest}
        where = f"{gid} seq {seq}"
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
            if unordered and last + 1 < seq <= last + PARK_WINDOW:
                return self._park(compact, kid, gid, seq, last)
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
        basic, refused = self._basic_data(payload, where)   # before any write: a refusal stores nothing
        if refused is not None:
            return self._reject("basic_data", 400, refused)
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
        received_at = rfc3339(time.time())
        self.store._insert_batch(StoredBatch(
            gateway_id=gid, seq=seq, jws=compact, hash=digest, kid=kid, created_at=payload["created_at"],
            received_at=received_at, n_readings=len(payload["readings"]),
            n_events=len(payload["events"])))
        if basic:   # the batch's latest basic data, in the same transaction
            self.store.put_basic_data(gid, seq, basic[-1]["config_hash"], basic[-1], received_at)
            log.info("%s carries basic data (%d points, config %s)", where, len(basic[-1]["points"]),
                     basic[-1]["config_hash"][:12])
        return 200, ack

    def _basic_data(self, payload: dict[str, Any], where: str) -> tuple[list[dict[str, Any]], str | None]:
        """(the batch's basic-data events in order, None) when each is acceptable, else ([], one-line reason).

        Each ``{"type": "basic_data"}`` event must pass gateway.chain.basic_data.validate, name the batch's
        gateway_id and carry the batch's config_hash, or that of a config the batch itself records the
        gateway running on (a ``gateway`` ``start`` or ``config_reloaded`` event in it: a batch is built after
        the fact, so a backlog across a restart or reload holds the records of both configs). Its enterprise
        code must be the one bound to the gateway: the first enterprise code its accepted basic data carried
        (that of the record stored for it, else of the first one in the batch that has one); a later record
        with another code, or with none, is forged or a re-registration, which the regulator makes itself."""
        events = [(i, e) for i, e in enumerate(payload["events"]) if e.get("type") == basic_data.TYPE]
        if not events:
            return [], None
        gid = payload["gateway_id"]
        hashes = {payload["config_hash"]}
        for e in payload["events"]:
            if e.get("type") == "gateway" and e.get("event") in ("start", "config_reloaded"):
                hashes.update(h for h in (e.get("config_hash"), e.get("previous_config_hash")) if isinstance(h, str))
        stored = self.store.basic_data(gid)
        bound = (stored["doc"].get("enterprise") or {}).get("code") if stored else None
        bound_by = f"the basic data of seq {stored['seq']}" if bound is not None else None
        out = []
        for i, e in events:
            at = f"basic_data: {where} events[{i}]"
            try:
                doc = basic_data.validate(e)
            except ValueError as exc:
                return [], f"{at}: {str(exc).removeprefix('basic_data: ')}"
            if doc["gateway_id"] != gid:
                return [], f"{at}: names gateway {doc['gateway_id']}, not {gid}"
            if doc["config_hash"] not in hashes:
                return [], (f"{at}: config_hash {doc['config_hash'][:16]} is not the batch's "
                            f"({str(payload['config_hash'])[:16]}) nor one it records a start or reload of")
            code = doc["enterprise"]["code"]
            if bound_by is not None and code != bound:
                return [], (f"{at}: enterprise code {code} is not {bound}, bound to {gid} by {bound_by} "
                            "(forged, or a re-registration the regulator must make)")
            if bound_by is None and code is not None:
                bound, bound_by = code, f"events[{i}] of this batch"
            out.append(doc)
        return out, None

    def _park(self, compact: str, kid: str, gid: str, seq: int, last: int) -> tuple[int, dict[str, Any]]:
        """Keep a verified batch that arrived ahead of a gap (unordered delivery); 202 "parked", the same for
        a byte-identical resend, 409 conflict for a different body parked for the same seq."""
        where = f"{gid} seq {seq}"
        held = self.store.parked(gid, seq)
        if held is not None and held != compact:
            return self._reject("conflict", 409, f"conflict: {where} is already parked with a different body",
                                {"expected_seq": last + 1})
        if held is None:
            self.store.park(gid, seq, compact, kid, rfc3339(time.time()))
        log.info("parked %s%s: expected seq %d first", where, " again" if held else "", last + 1)
        self.count("parked")
        return 202, {"gateway_id": gid, "seq": seq, "status": "parked", "expected_seq": last + 1}

    def _take_parked(self, gid: str, seq: int) -> list[tuple[str, int]]:
        """After ``seq`` of ``gid`` was accepted (same transaction): judge its parked successors in seq order
        exactly as if they had just arrived (signature, binding, chain, key change, announce). Each accepted
        one leaves the parked table; the first refused one is dropped from it (its predecessor is now fixed,
        so it can never be accepted; the gateway's resend is judged afresh) and ends the run. Returns
        (where, readings) of the accepted ones."""
        if not self.store.parked_seqs(gid):
            return []
        self.store.unpark(gid, seq)   # the batch just accepted may have been parked too
        out: list[tuple[str, int]] = []
        while (held := self.store.parked(gid, seq + 1)) is not None:
            seq += 1
            where = f"{gid} seq {seq}"
            try:
                payload = self._verify(lambda trust: verify_batch(held, trust))
            except BatchError as exc:
                status, doc = self._reject(exc.check, STATUS_FOR_CHECK.get(exc.check, 400),
                                           f"parked {where}: {exc.check}: {exc}")
            else:
                kid = batch_kid(held)
                assert kid is not None
                self.store.lock_kids(_kids(payload, kid))
                status, doc = self._judge(held, payload, kid)
            self.store.unpark(gid, seq)
            if status != 200 or doc.get("status") != "accepted":
                log.warning("parked %s refused when its turn came (%d: %s); dropped", where, status,
                            doc.get("error", doc.get("status")))
                break
            out.append((where, len(payload["readings"])))
        return out

    # ------------------------------------------------------------ signed requests

    def authorize_request(self, gateway_id: str, path: str, authorization: str | None,
                          *, now: float | None = None) -> tuple[int, dict[str, Any]] | None:
        """None when ``authorization`` ("JWS <compact>") is a fresh, unreplayed request for GET ``path``, one of
        the gateway's own resources ``/v1/gateways/<gateway_id>/<resource>`` (:data:`GATEWAY_RESOURCES`: status,
        basic-data), signed by a key of ``gateway_id`` (module docstring); else (401, error doc). Counted per
        resource: ``<name>_ok`` or ``rejected_<name>_auth`` (``status``, ``basic_data``; ``request`` for a path
        that is none of them)."""
        resource = path.removeprefix(f"/v1/gateways/{gateway_id}/") if path.startswith(
            f"/v1/gateways/{gateway_id}/") else None
        name = GATEWAY_RESOURCES.get(resource or "", "request")

        def deny(why: str) -> tuple[int, dict[str, Any]]:
            return self._reject(f"{name}_auth", 401, f"{resource if name != 'request' else path} of {gateway_id}: "
                                                     f"{why}")

        if name == "request":
            return deny(f"not a resource of the gateway ({', '.join(GATEWAY_RESOURCES)})")

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
        self.count(f"{name}_ok")
        return None

    #: the former name, for the status route's callers (an MQTT bridge)
    authorize_status = authorize_request


def _kids(payload: dict[str, Any], kid: str) -> set[str]:
    """The kids a decision on this batch reads or binds: its signer and an announced key."""
    out = {kid}
    if isinstance(payload.get("announce_key"), dict):
        with contextlib.suppress(Exception):
            out.add(public_key_from_jwk(payload["announce_key"])[0])
    return out


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
            try:   # store and Ed25519 checks block: run them off the event loop (ReceiverStore locks itself)
                async with submit_slots:
                    status, doc = await asyncio.to_thread(receiver.submit, body)
            except STORE_ERRORS as exc:   # locked, disk full, failed commit, lost database: nothing stored, retry
                receiver.count("rejected_store_busy")
                log.error("store error: %s", exc)
                return JSONResponse({"error": f"store unavailable: {exc}"}, 503, headers={"Retry-After": "1"})
        finally:
            budget["used"] -= drawn[0]
        if after_submit is not None:
            await after_submit(status, doc)
        return JSONResponse(doc, status)

    async def signed_get(request: Request, read: Callable[[str], Any], missing: str) -> JSONResponse:
        """A gateway's own resource: the signed request checked (Receiver.authorize_request), then ``read(gid)``
        in a thread; None from it is a 404 ``missing`` (with {gateway_id} filled in)."""
        gid = request.path_params["gateway_id"]
        denied = await asyncio.to_thread(receiver.authorize_request, gid, request.url.path,
                                         request.headers.get("authorization"))
        if denied is not None:
            return JSONResponse(denied[1], denied[0], headers={"WWW-Authenticate": 'JWS realm="hazard-gateway"'})
        doc = await asyncio.to_thread(read, gid)
        if doc is None:
            return JSONResponse({"error": missing.format(gateway_id=gid)}, 404)
        return JSONResponse(doc)

    async def gateway_status(request: Request) -> JSONResponse:
        return await signed_get(request, receiver.store.status, "unknown gateway {gateway_id}")

    async def gateway_basic_data(request: Request) -> JSONResponse:
        return await signed_get(request, receiver.store.basic_data, "no basic data of gateway {gateway_id}")

    async def health(request: Request) -> JSONResponse:
        status, doc = ops_metrics.health(await ops_metrics.snapshot_within(receiver, silent_after_s=silent_after_s))
        return JSONResponse(doc, status)

    async def metrics(request: Request) -> Response:
        snap = await ops_metrics.snapshot_within(receiver, silent_after_s=silent_after_s)
        return Response(ops_metrics.render(snap), media_type="text/plain; version=0.0.4; charset=utf-8")

    return Starlette(routes=[
        Route("/v1/batches", post_batch, methods=["POST"]),
        Route("/v1/gateways/{gateway_id}/status", gateway_status, methods=["GET"]),
        Route("/v1/gateways/{gateway_id}/basic-data", gateway_basic_data, methods=["GET"]),
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
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on an accepted connection only when its proto says TCP
    # (asyncio base_events._set_nodelay); without it every keep-alive answer after the first waits ~40 ms on
    # Nagle's algorithm meeting the client's delayed ACK (RFC 896, RFC 1122 s.4.2.3.2)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
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


def run_receiver(listen: str | None, store: str | os.PathLike[str], trust: str | os.PathLike[str],
                 certfile: str | os.PathLike[str] | None = None, keyfile: str | os.PathLike[str] | None = None,
                 *, log_level: str = "info", limits: ReceiverLimits | None = None,
                 require_binding: bool = False, signing_key: str | os.PathLike[str] | None = None,
                 silent_after_s: float = SILENT_AFTER_S, mqtt: Any = None) -> int:
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
    directory / store, or an unusable signing key. ``store``: an SQLite file or a ``postgresql://`` URL
    (gateway.regulator.storage).

    ``mqtt``: a gateway.regulator.mqtt_ingest.MqttIngestSettings: also consume batches from an MQTT 5 broker
    (shared subscription, ack after commit; see that module), with ``listen`` None only that (then the
    process runs until SIGTERM/SIGINT and prints "receiver consuming SUBSCRIPTION from URL as CLIENT_ID").
    ReceiverError (one line) for bad MQTT settings or TLS files, and when neither is given.
    """
    if listen is None:
        if mqtt is None:
            raise ReceiverError("give --listen HOST:PORT, --mqtt URL, or both")
        return _run_mqtt_only(store, trust, mqtt, limits=limits, require_binding=require_binding,
                              signing_key=signing_key)
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
    _check_mqtt(mqtt)
    signer = _rejection_signer(signing_key)
    receiver = Receiver(store, trust, require_binding=require_binding, status_max_age_s=lim.status_max_age_s,
                        rejection_signer=signer)
    _raise_fd_limit(lim)
    sock = _bind(host, port)
    ingest = None
    try:
        ingest = _start_mqtt(receiver, mqtt)
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
        if ingest is not None:
            ingest.stop()
        receiver.close()
        log.info("receiver stats: %s", " ".join(f"{k}={v}" for k, v in sorted(receiver.stats().items())) or "none")
    return 0


def _check_mqtt(mqtt: Any) -> None:
    """ReceiverError (one line) for bad MQTT ingest settings, before the store is opened."""
    if mqtt is None:
        return
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")   # one line a batch
    try:
        mqtt.check()
    except ValueError as exc:
        raise ReceiverError(str(exc)) from None


def _start_mqtt(receiver: Receiver, mqtt: Any) -> Any:
    """The started gateway.regulator.mqtt_ingest.MqttIngest for ``mqtt`` settings, or None without them."""
    if mqtt is None:
        return None
    from gateway.regulator.mqtt_ingest import MqttIngest

    try:
        ingest = MqttIngest(receiver, mqtt)
    except ValueError as exc:
        raise ReceiverError(str(exc)) from None
    ingest.start()
    print(f"receiver consuming {mqtt.subscription} from {mqtt.url} as {mqtt.client_id}", file=sys.stderr, flush=True)
    return ingest


def _run_mqtt_only(store: str | os.PathLike[str], trust: str | os.PathLike[str], mqtt: Any, *,
                   limits: ReceiverLimits | None, require_binding: bool,
                   signing_key: str | os.PathLike[str] | None) -> int:
    """run_receiver without an HTTP listener: the MQTT ingest until SIGTERM/SIGINT; 0."""
    lim = limits or ReceiverLimits()
    _check_mqtt(mqtt)
    receiver = Receiver(store, trust, require_binding=require_binding, status_max_age_s=lim.status_max_age_s,
                        rejection_signer=_rejection_signer(signing_key))
    stop = threading.Event()
    old = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}
    ingest = None
    try:
        ingest = _start_mqtt(receiver, mqtt)
        while not stop.wait(3600):
            pass
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if ingest is not None:
            ingest.stop()
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
    ``rx.ssl_context()`` for clients, ``rx.store_path`` (``store``: an SQLite path, default
    ``workdir/receiver.sqlite``, or a ``postgresql://`` URL, kept as given), ``rx.receiver``. ``tls=False`` serves
    plain HTTP on loopback. Hooks are passed to :func:`create_app`; busy_timeout_s is the store's
    busy timeout (SQLite busy timeout, PostgreSQL lock_timeout; after it a locked store answers 503); ``limits``, ``require_binding`` and
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
        # a postgresql:// URL stays a string (Path would fold its "//")
        self.store_path: Path | str = (store if is_url(store) else Path(store)) if store else \
            self.workdir / "receiver.sqlite"
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
    ap.add_argument("--store", required=True, help="an SQLite file, or a postgresql:// URL (gateway.regulator.storage)")
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
