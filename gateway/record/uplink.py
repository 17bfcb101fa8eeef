"""Uplink: send stored batches to the regulator's receiver and record the acknowledgements.

Transport (``HttpsUplink``): ``POST <url>/v1/batches`` with the compact JWS as the body,
``Content-Type: application/jose`` (RFC 7515 s.9.2.1). Answers are classified so the
record path neither loses nor duplicates data, never sets data aside on an unauthenticated
answer, and moves past a batch the receiver itself rejected (C14):

=====================================  ===========================================
2xx with ack JSON                      ``Ack`` (status "accepted" or "duplicate")
408, 425, 429, 5xx, transport errors   ``RetryableError`` (Retry-After honoured, capped;
(connect, TLS, timeout, reset),        RFC 9110 s.10.2.3, RFC 6585 s.4)
2xx whose body is not a matching ack
400, 413, 422                          ``PermanentError``: the batch's content is refused
(RFC 9110 s.15.5.1, s.15.5.14,         (carrying the answer's ``rejection`` and the SHA-256 of
s.15.5.21)                             the bytes sent). The Forwarder sets the batch aside (a
                                       signed tombstone takes its seq: alarm event + gap rows,
                                       C14c) ONLY when that rejection is signed by
                                       ``uplink.receiver_key`` and names this gateway_id, seq,
                                       SHA-256 and status (gateway.chain.rejection). Otherwise (no
                                       key configured, no rejection, bad or foreign signature,
                                       another batch; a proxy's 413 or a misconfigured
                                       receiver) it HOLDS: keeps the batch, retries with
                                       backoff, one ``uplink_batch_held`` alarm event, ``held``
401, 403                               ``AuthError``: the receiver refuses the GATEWAY (its key
                                       not installed yet, a certificate not trusted), not the
                                       batch: alarm event, hold and retry with backoff; good
                                       data is never set aside for it
409 (conflict / gap / chain broken)    ``ChainError``: alarm event, hold and retry slowly
any other status (3xx, 404, 405 ...)   ``RetryableError``: a wrong URL is a config fault;
                                       data is kept, not thrown away
=====================================  ===========================================

409 means the receiver's chain disagrees with ours (a different body for a stored seq,
a gap, a broken prev), e.g. after the local buffer was reset without its chain position (a
corrupt store, C17b, carries the chain on: gateway.record.chain_position). An identical resend
is answered 200 "duplicate", so a 409 never means "already have it". Dead-lettering would
not help (every later batch would get the same 409), so the uploader holds, raises one
``uplink_chain_conflict`` alarm event, and retries every ``max_backoff_s``.

A held batch (400/413/422 without a valid signed rejection) blocks the batches after it, as a
409 does: the chain has no gaps, so nothing later can be accepted before it. That is the price of
never dropping good data on the word of a proxy; the alarm event and ``held`` tell a person,
who fixes the cause (a proxy's or receiver's size cap, a receiver without its ``--signing-key``,
a wrong ``uplink.receiver_key``), after which the same bytes go through. MQTT (gateway.record.uplink_mqtt)
raises PermanentError for PUBACK 0x90/0x95/0x99, which cannot carry a signed body: such a
batch is always held, never set aside.

``Forwarder`` is the loop: next_batch -> send -> mark_acked on ack (rows count as sent
only after a 2xx ack) -> repeat; exponential backoff with full jitter on retryable errors
(AWS Architecture Blog "Exponential Backoff And Jitter"), at least the server's
Retry-After (capped at ``max_backoff_s``). A resend is byte-identical (the stored JWS).
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import logging
import random
import time
from dataclasses import dataclass
from typing import Any, Mapping
from urllib.parse import urlsplit

import httpx

from gateway.record.batches import Batch, Batcher
from gateway.chain.rejection import CONTENT_REFUSAL_STATUSES, MAX_REJECTION_CHARS, RejectionError, verify_rejection
from gateway.record.store import Store
from gateway.tlsutil import client_context

log = logging.getLogger(__name__)

#: the receiver (or something in between) refuses the batch's content: set aside only with a
#: signed rejection, else hold (RFC 9110 s.15.5.1, s.15.5.14, s.15.5.21; gateway.chain.rejection)
PERMANENT_STATUSES = CONTENT_REFUSAL_STATUSES
#: the receiver does not (yet) accept this gateway: hold, never dead-letter (RFC 9110 s.15.5.2, s.15.5.4)
AUTH_STATUSES = frozenset({401, 403})
RETRYABLE_STATUSES = frozenset({408, 425, 429})
BATCH_PATH = "/v1/batches"


class UplinkError(Exception):
    """A batch was not acknowledged; str() is one line (url, status or transport error)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class RetryableError(UplinkError):
    """Send again later. retry_after_s: the server's Retry-After in seconds (None if absent)."""

    def __init__(self, message: str, status: int | None = None, retry_after_s: float | None = None) -> None:
        super().__init__(message, status)
        self.retry_after_s = retry_after_s


class PermanentError(UplinkError):
    """The batch's content was refused: HTTP 400/413/422 (RFC 9110 s.15.5.1, s.15.5.14, s.15.5.21) or
    an MQTT PUBACK 0x90/0x95/0x99 (MQTT 5.0 s.3.4.2.1).

    answer: short text of the refusal for people ("HTTP 422: payload: ..."). rejection: the answer
    body's "rejection" member (a compact JWS, RFC 7515 s.7.1; None when absent or for MQTT).
    sent_sha256: hex SHA-256 of the exact bytes sent (None when unknown). retry_after_s: the
    answer's Retry-After (RFC 9110 s.10.2.3), capped, or None. The Forwarder sets the batch aside
    only when ``rejection`` verifies (gateway.chain.rejection.verify_rejection); otherwise it holds it.
    """

    def __init__(self, message: str, status: int | None = None, *, answer: str | None = None,
                 rejection: str | None = None, sent_sha256: str | None = None,
                 retry_after_s: float | None = None) -> None:
        super().__init__(message, status)
        self.answer = answer or message
        self.rejection = rejection
        self.sent_sha256 = sent_sha256
        self.retry_after_s = retry_after_s


class AuthError(RetryableError):
    """401/403: the receiver does not accept this gateway (its key or certificate), which is not the
    batch's fault: hold the data, raise an alarm event, retry with backoff."""


class ChainError(RetryableError):
    """409: the receiver's chain and ours disagree (conflict, gap, chain broken).

    expected_seq: the seq the receiver wants next (None if not given). Not the batch's
    fault, so it is not dead-lettered; the forwarder raises an alarm event and holds.
    """

    def __init__(self, message: str, expected_seq: int | None = None) -> None:
        super().__init__(message, 409, None)
        self.expected_seq = expected_seq


@dataclass(frozen=True, slots=True)
class Ack:
    """The receiver's acknowledgement: gateway_id, seq, status ("accepted"|"duplicate"),
    hash (chain_hash of the batch as the receiver stored it, or None)."""

    gateway_id: str
    seq: int
    status: str
    hash: str | None = None


def parse_retry_after(value: str | None, cap_s: float, now: float | None = None) -> float | None:
    """Retry-After (RFC 9110 s.10.2.3: delta-seconds or an HTTP-date) -> seconds, capped
    to [0, cap_s]; None when absent or unparseable."""
    if value is None:
        return None
    value = value.strip()
    try:
        secs = float(int(value))
    except ValueError:
        try:
            dt = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if dt is None:
            return None
        secs = dt.timestamp() - (time.time() if now is None else now)
    return max(0.0, min(secs, cap_s))


def _json_body(resp: httpx.Response) -> Any:
    try:
        return resp.json()
    except ValueError:
        return None


def _reason(resp: httpx.Response) -> str:
    text = resp.text.strip().replace("\n", " ")
    body = _json_body(resp)
    if isinstance(body, dict):
        text = str(body.get("error") or body.get("reason") or body.get("detail") or text)
    return " ".join(text.split())[:200]


def _rejection(resp: httpx.Response) -> str | None:
    """The answer's "rejection" member (gateway.chain.rejection), or None (absent, not a string, too long)."""
    body = _json_body(resp)
    rej = body.get("rejection") if isinstance(body, dict) else None
    return rej if isinstance(rej, str) and len(rej) <= MAX_REJECTION_CHARS else None


class HttpsUplink:
    """HTTPS transport for batches (httpx.AsyncClient, TLS verified, never disabled).

    url: receiver base URL ("https://host:port"), or the full ``.../v1/batches`` URL.
    ca_file: PEM file of the CA (or the pinned self-signed certificate) to verify the
    receiver against; None or True: the system CA store. client_cert: path of a PEM with
    certificate and key, or (cert_path, key_path), for mutual TLS. timeout_s: per request
    (connect, read, write). max_backoff_s: cap of an honoured Retry-After. profile: a
    gateway.record.envelopes.PlatformProfile (default JwsProfile: the JWS as application/jose).
    Raises ValueError (one line) for a non-https URL or an unreadable CA/cert file.
    """

    def __init__(self, url: str, ca_file: str | bool | None = None,
                 client_cert: str | tuple[str, str] | None = None, timeout_s: float = 5.0,
                 max_backoff_s: float = 60.0, profile: Any = None) -> None:
        from gateway.record.envelopes import JwsProfile   # local: profiles imports Ack from here
        self.profile = profile or JwsProfile()
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.netloc:
            raise ValueError(f"uplink url {url!r}: must be https://host[:port][/path]")
        base = url.rstrip("/")
        self.url = base if base.endswith(BATCH_PATH) else base + BATCH_PATH
        self.timeout_s = float(timeout_s)
        self.max_backoff_s = float(max_backoff_s)
        self._ctx = client_context(ca_file, client_cert, "uplink")
        self._client: httpx.AsyncClient | None = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(verify=self._ctx, timeout=httpx.Timeout(self.timeout_s),
                                             follow_redirects=False)
        return self._client

    #: send() takes the payload the Batcher just signed (Forwarder), instead of decoding the JWS again
    takes_payload = True

    async def send(self, jws: str, payload: dict[str, Any] | None = None) -> Ack:
        """POST one compact JWS; return the receiver's Ack. ``payload``: the dict signed into ``jws`` when the
        caller has it (gateway.record.batches.Batch.payload), else it is decoded from ``jws``.

        Raises RetryableError (408/425/429/5xx/other, transport error, timeout, 2xx
        without a valid ack body), ChainError (409), AuthError (401/403) or PermanentError (400/413/422,
        with the answer's ``rejection`` and ``sent_sha256`` of the body bytes sent).
        """
        from gateway.chain.signing import decode_unverified
        if payload is None:
            try:   # the receiver judges a malformed body (400); the profile sees {} then
                payload = decode_unverified(jws)[1]
                payload = payload if isinstance(payload, dict) else {}
            except ValueError:
                payload = {}
        gid, seq = str(payload.get("gateway_id", "")), payload.get("seq", 0)
        try:
            ctype, body = self.profile.envelope(jws, payload)
        except (ValueError, KeyError, TypeError) as exc:   # a profile that cannot wrap it: keep it, retry
            raise RetryableError(f"{self.url}: profile {self.profile.name}: cannot wrap the batch: {exc}") from None
        try:
            resp = await self._http().post(self.url, content=body,
                                           headers={"Content-Type": ctype, "Accept": "application/json"})
        except httpx.TimeoutException as exc:
            raise RetryableError(f"{self.url}: timeout after {self.timeout_s:g} s ({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            raise RetryableError(f"{self.url}: {type(exc).__name__}: {exc}") from None
        status = resp.status_code
        if 200 <= status < 300:
            try:
                return self.profile.parse_ack(status, resp.content, gid, seq)
            except ValueError as exc:
                raise RetryableError(f"{self.url}: {exc}", status) from None
        reason = _reason(resp)
        if status == 409:
            expected = None
            doc = _json_body(resp)
            try:
                expected = int(doc["expected_seq"]) if isinstance(doc, dict) and "expected_seq" in doc else None
            except (ValueError, TypeError):
                pass
            raise ChainError(f"{self.url}: 409 {reason}", expected)
        if status in AUTH_STATUSES:
            raise AuthError(f"{self.url}: {status} {reason}", status,
                            parse_retry_after(resp.headers.get("retry-after"), self.max_backoff_s))
        if status in PERMANENT_STATUSES:
            raise PermanentError(f"{self.url}: {status} {reason}", status, answer=f"HTTP {status}: {reason}",
                                 rejection=_rejection(resp), sent_sha256=hashlib.sha256(body).hexdigest(),
                                 retry_after_s=parse_retry_after(resp.headers.get("retry-after"),
                                                                 self.max_backoff_s))
        retry_after = parse_retry_after(resp.headers.get("retry-after"), self.max_backoff_s)
        if not (status in RETRYABLE_STATUSES or status >= 500):
            log.warning("%s: unexpected status %d (%s); check the uplink url; will retry", self.url, status, reason)
        raise RetryableError(f"{self.url}: {status} {reason}", status, retry_after)

    async def aclose(self) -> None:
        """Close the connection pool; idempotent."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None


class Forwarder:
    """The upload loop of the record path (at-least-once; receiver dedup makes it exactly-once).

    store: gateway.record.store.Store (for events). batcher: gateway.record.batches.Batcher. uplink: any
    object with ``async send(jws) -> Ack`` raising RetryableError/PermanentError.
    rate_limit_per_s: at most this many sends per second (None: unlimited).
    min_backoff_s / max_backoff_s: exponential backoff bounds (seconds, full jitter).
    idle_s: how long to wait when there is nothing to send. receiver_key: {kid: Ed25519 public
    key} of the receiver (gateway.chain.rejection.load_receiver_key of ``uplink.receiver_key``), the only
    key whose signed rejection lets a refused batch be set aside; None: every refused batch is held.

    Status for health checks: ``sent`` (acks), ``consecutive_failures``, ``last_error``,
    ``last_ack_mono`` (time.monotonic() of the last ack), ``dead_lettered``, ``refused`` (the
    receiver refuses this gateway, 401/403, since the last ack), ``held`` (None, or one line
    "receiver rejects batch N without a valid signed rejection (HTTP 422: reason); holding it: why"
    while the current batch is held after a 400/413/422 or PUBACK refusal that did not come with a
    valid signed rejection; None again at the next ack or when the batch is set aside), and
    ``last_beat_mono``: time.monotonic() at the start of every loop iteration of run() (None
    before run() and after it returned), so gateway.runtime.health can tell a live uploader from a dead
    or hung one (:func:`gateway.record.supervisor.uploader_check`; one iteration takes at most
    :meth:`max_iteration_s`).
    """

    def __init__(self, store: Store, batcher: Batcher, uplink: Any, rate_limit_per_s: float | None = None, *,
                 min_backoff_s: float = 0.5, max_backoff_s: float = 60.0, idle_s: float = 1.0,
                 rng: random.Random | None = None,
                 receiver_key: Mapping[str, Any] | None = None) -> None:
        self.store = store
        self.batcher = batcher
        self.uplink = uplink
        self.min_interval_s = 0.0 if not rate_limit_per_s else 1.0 / rate_limit_per_s
        self.min_backoff_s = float(min_backoff_s)
        self.max_backoff_s = float(max_backoff_s)
        self.idle_s = float(idle_s)
        self.receiver_key = dict(receiver_key) if receiver_key else None
        self._rng = rng or random.Random()
        self._stop = asyncio.Event()
        self.sent = 0
        self.dead_lettered = 0
        #: the receiver refuses this gateway (401/403) since the last ack
        self.refused = False
        #: why the current batch is held after a content refusal without a valid signed rejection (else None)
        self.held: str | None = None
        #: the receiver's chain disagrees (409) since the last ack: its one-line answer, else None
        self.chain_conflict: str | None = None
        self.consecutive_failures = 0
        self.last_error: str | None = None
        self.last_ack_mono: float | None = None
        self.last_beat_mono: float | None = None
        self._last_send_mono: float | None = None

    def stop(self) -> None:
        """Ask run() to return; an in-flight send is abandoned (the batch is resent later)."""
        self._stop.set()

    @property
    def stopped(self) -> bool:
        """True once stop() was called."""
        return self._stop.is_set()

    def max_iteration_s(self) -> float:
        """Upper bound (seconds) of one loop iteration of run() that is not hung: the rate-limit
        wait, one send bounded by the uplink's ``timeout_s`` (default 5 s; httpx applies it per
        connect/write/read/pool phase, hence x4), the longest sleep after it (idle, backoff or a
        held chain: max_backoff_s) and 10 s for the store calls around it."""
        timeout = float(getattr(self.uplink, "timeout_s", 5.0) or 5.0)
        return self.min_interval_s + 4 * timeout + max(self.idle_s, self.max_backoff_s) + 10.0

    def backoff_s(self, failures: int, retry_after_s: float | None = None) -> float:
        """Delay before the next attempt after ``failures`` consecutive failures: full jitter
        over min(max_backoff_s, min_backoff_s * 2**(failures-1)), but at least the server's
        Retry-After (itself capped at max_backoff_s)."""
        ceiling = min(self.max_backoff_s, self.min_backoff_s * (2 ** max(0, failures - 1)))
        delay = self._rng.uniform(ceiling / 2, ceiling)
        if retry_after_s is not None:
            delay = max(delay, min(retry_after_s, self.max_backoff_s))
        return delay

    async def _sleep(self, seconds: float) -> bool:
        """Sleep unless stopped; True when stop() was called."""
        if seconds <= 0:
            return self._stop.is_set()
        try:
            await asyncio.wait_for(self._stop.wait(), timeout=seconds)
            return True
        except asyncio.TimeoutError:
            return False

    async def run(self) -> None:
        """Upload until stop(). Never raises for a receiver or network fault. After stop() it is done
        (build a new Forwarder); after it ended on an unexpected exception or was cancelled, run() may be
        called again (gateway.record.supervisor restarts it so)."""
        try:
            await self._run()
        finally:
            self.last_beat_mono = None

    async def _run(self) -> None:
        while not self._stop.is_set():
            self.last_beat_mono = time.monotonic()   # liveness for gateway.runtime.health (one beat per iteration)
            try:
                batch = await asyncio.to_thread(self.batcher.next_batch)
            except Exception as exc:   # a store fault must not kill the uploader
                log.error("uplink: cannot build the next batch: %s", exc)
                self.last_error = f"store: {exc}"
                if await self._sleep(self.idle_s):
                    break
                continue
            if batch is None:
                if await self._sleep(self.idle_s):
                    break
                continue
            if self._last_send_mono is not None and self.min_interval_s:
                wait = self._last_send_mono + self.min_interval_s - time.monotonic()
                if await self._sleep(wait):
                    break
            try:
                await self._attempt(batch)
            except Exception as exc:   # a store or bookkeeping fault must not kill the uploader: keep the batch
                log.exception("uplink: batch %d: unexpected error; keeping it for a retry", batch.seq)
                await self._retry_later(batch, f"{type(exc).__name__}: {exc}", None)

    async def _attempt(self, batch: Batch) -> None:
        self._last_send_mono = time.monotonic()
        if batch.payload is not None and getattr(self.uplink, "takes_payload", False):
            send = asyncio.ensure_future(self.uplink.send(batch.jws, batch.payload))
        else:
            send = asyncio.ensure_future(self.uplink.send(batch.jws))
        stopper = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({send, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
        if not send.done():
            send.cancel()
            try:
                await send
            except (asyncio.CancelledError, Exception):
                pass
            return
        try:
            ack = send.result()
        except PermanentError as exc:
            await self._refused_content(batch, exc)
            return
        except ChainError as exc:
            if self.consecutive_failures == 0 or self.last_error is None or "409" not in self.last_error:
                self.store.put_event({"kind": "uplink_chain_conflict", "severity": "alarm", "seq": batch.seq,
                                      "expected_seq": exc.expected_seq, "reason": str(exc)[:300]})
            self.consecutive_failures += 1
            self.last_error = str(exc)
            self.chain_conflict = f"batch {batch.seq}: {str(exc)[:300]}"
            log.error("uplink: batch %d: receiver chain disagrees (%s); holding uploads, retry in %.0f s",
                      batch.seq, exc, self.max_backoff_s)
            await self._sleep(self.max_backoff_s)
            return
        except AuthError as exc:
            if not self.refused:   # one alarm per episode; the next ack ends it
                self.refused = True
                self.store.put_event({"kind": "uplink_refused_gateway", "severity": "alarm", "seq": batch.seq,
                                      "status": exc.status, "reason": str(exc)[:300]})
                log.error("uplink: the receiver refuses this gateway (%s); holding batch %d and the rest, "
                          "retrying with backoff: is the gateway's key installed at the receiver?", exc, batch.seq)
            await self._retry_later(batch, str(exc), exc.retry_after_s)
            return
        except RetryableError as exc:
            await self._retry_later(batch, str(exc), exc.retry_after_s)
            return
        except Exception as exc:   # an uplink bug must not kill the loop; keep the batch
            await self._retry_later(batch, f"{type(exc).__name__}: {exc}", None)
            return
        problem = self._check_ack(batch, ack)
        if problem is not None:
            await self._retry_later(batch, problem, None)
            return
        await asyncio.to_thread(self.batcher.mark_acked, batch.seq)
        self.sent += 1
        self.consecutive_failures = 0
        self.last_error = None
        self.last_ack_mono = time.monotonic()
        if self.refused:
            self.refused = False
            log.warning("uplink: the receiver accepts this gateway again (batch %d acknowledged)", batch.seq)
        if self.held is not None:
            self.held = None
            log.warning("uplink: batch %d acknowledged; the held batch went through", batch.seq)
        self.chain_conflict = None

    async def _refused_content(self, batch: Batch, exc: PermanentError) -> None:
        """400/413/422 (or a PUBACK refusal): set the batch aside only on a valid signed rejection
        (gateway.chain.rejection.verify_rejection), else hold it (module docstring)."""
        try:
            claims = verify_rejection(exc.rejection, self.receiver_key, gateway_id=self.batcher.gateway_id,
                                      seq=batch.seq, sent_sha256=exc.sent_sha256, status=exc.status)
        except RejectionError as why:
            self._note_held(batch, exc, str(why))
            await self._retry_later(batch, f"held: {exc}", exc.retry_after_s)
            return
        self.last_error = str(exc)
        reason = f"rejected_by_receiver: {exc.answer}"[:300]
        try:
            replaced = await asyncio.to_thread(self.batcher.dead_letter, batch.seq, reason, exc.status)
        except Exception as dl_exc:   # cannot build the tombstone (store fault): keep the batch, retry
            log.error("uplink: batch %d rejected (%s) but cannot be set aside: %s; keeping it, will retry",
                      batch.seq, exc, dl_exc)
            await self._retry_later(batch, f"dead-letter failed: {dl_exc}", None)
            return
        if replaced:
            self.consecutive_failures = 0
            self.dead_lettered += 1
            self.held = None
            # the receiver's signed word, kept as evidence next to the tombstone's batch_dead_lettered alarm
            self.store.put_event({"kind": "batch_rejected_by_receiver", "severity": "info", "seq": batch.seq,
                                  "status": exc.status, "reason": str(claims.get("reason"))[:300],
                                  "receiver_kid": next(iter(self.receiver_key or {}), None),
                                  "rejection": exc.rejection})
            log.error("uplink: batch %d rejected by the receiver's signed rejection (%s); set aside, a tombstone "
                      "takes its seq", batch.seq, exc.answer)
        else:
            # the tombstone itself was refused: the receiver refuses this gateway as such (key,
            # id, limits). Hold the data and retry slowly; a person must act.
            self.consecutive_failures += 1
            self._note_held(batch, exc, "the receiver rejects its tombstone too (signed); a person must act",
                            signed=True)
            log.error("uplink: tombstone batch %d refused too (%s); holding uploads, retry in %.0f s",
                      batch.seq, exc, self.max_backoff_s)
            await self._sleep(self.max_backoff_s)

    def _note_held(self, batch: Batch, exc: PermanentError, why: str, signed: bool = False) -> None:
        """Set ``held``; the first time in an episode also one ``uplink_batch_held`` alarm event and an error line."""
        first = self.held is None
        self.held = (f"receiver rejects batch {batch.seq} " + ("" if signed else "without a valid signed rejection ")
                     + f"({exc.answer}); holding it: {why}")[:400]
        if first:
            self.store.put_event({"kind": "uplink_batch_held", "severity": "alarm", "seq": batch.seq,
                                  "status": exc.status, "reason": exc.answer[:300], "why": why[:300]})
            log.error("uplink: %s; retrying with backoff, nothing is set aside", self.held)

    def _check_ack(self, batch: Batch, ack: Ack) -> str | None:
        if ack.seq != batch.seq or ack.gateway_id != self.batcher.gateway_id:
            return f"ack for {ack.gateway_id}/{ack.seq} does not match batch {self.batcher.gateway_id}/{batch.seq}"
        if ack.status not in ("accepted", "duplicate"):
            return f"ack status {ack.status!r} for batch {batch.seq} is not accepted/duplicate"
        if ack.hash is not None and ack.hash != batch.hash:
            return f"ack hash for batch {batch.seq} differs from the sent batch"
        return None

    async def _retry_later(self, batch: Batch, error: str, retry_after_s: float | None) -> None:
        self.consecutive_failures += 1
        self.last_error = error
        delay = self.backoff_s(self.consecutive_failures, retry_after_s)
        log.warning("uplink: batch %d not acknowledged (%s); retry %d in %.1f s", batch.seq, error,
                    self.consecutive_failures, delay)
        await self._sleep(delay)
