"""MQTT 5 transport for batches (paho-mqtt 2.x): QoS 1, a batch counts as sent only at PUBACK.

For regulator platforms that ingest through broker clusters. Same interface as
``gateway.record.uplink.HttpsUplink`` (``async send(jws) -> Ack``, ``aclose()``), so the Forwarder,
the store and the chain do not change.

Wire format (MQTT Version 5.0, OASIS Standard, 2019):

* one PUBLISH per batch, QoS 1 (s.4.3.2: at least once), retain off, topic
  ``hazard/{gateway_id}/batches`` by default (config ``uplink.topic``);
* payload: the profile's body (gateway.record.envelopes; default the compact JWS, byte-identical on
  every resend, so a subscriber deduplicates by (gateway_id, seq) exactly as the HTTPS
  receiver does);
* properties (s.3.3.2.3): Content Type = the profile's content type (``application/jose``),
  Payload Format Indicator 1 (UTF-8), User Properties ``seq`` and ``kid`` (the RFC 7638
  key id), so a broker rule or a subscriber can route without parsing the JWS.

Acknowledgement: the batch is acknowledged when the broker's PUBACK for it arrives with a
reason code 0x00 (s.3.4.2.1). 0x10 "no matching subscribers" is NOT an acknowledgement:
the broker says nobody (no subscription, no persistent session) will ever get the
message and drops it, so the batch is kept and resent (RetryableError, with a warning).
A PUBACK means the *broker* has taken responsibility for the message; the platform
behind it must run persistent sessions or a durable bridge for that to be end to end,
as any QoS 1 ingest does. Failure reasons are classified like HTTP statuses:

==========================================  =====================================================
0x90 topic invalid, 0x95 packet too        ``PermanentError`` without a rejection: a PUBACK cannot
large, 0x99 payload format invalid          carry the receiver's signed rejection, so the Forwarder
                                            HOLDS the batch (one ``uplink_batch_held`` alarm event,
                                            retry with backoff) and never sets it aside
0x87 not authorized                         ``AuthError``: the broker refuses the gateway, not the
                                            batch: hold, one alarm event, retry with backoff
any other failure reason (0x80, 0x83,       ``RetryableError``: kept and resent byte-identical
0x91, 0x97 quota exceeded ...), CONNACK
refusal, TCP/TLS error, timeout, lost
connection
==========================================  =====================================================

No unbounded waits: connect (TCP + TLS + CONNACK) and each PUBACK are bounded by
``timeout_s``; after any failure the client is torn down completely (its in-flight queue
with it), so a broker that never answers cannot grow memory; the next ``send`` connects
afresh (clean start). TLS: the broker certificate is verified against ``ca_file`` (or the
system store) with hostname checking; ``client_cert`` enables mutual TLS. Plain ``mqtt://``
is accepted only for a loopback broker.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
import time
import uuid
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.chain.signing import decode_unverified
from gateway.tlsutil import client_context, parse_broker_url
from gateway.record.uplink import Ack, AuthError, PermanentError, RetryableError

log = logging.getLogger(__name__)

#: PUBACK reason codes that reject this message for good (MQTT 5 s.3.4.2.1)
PERMANENT_REASONS = frozenset({0x90, 0x95, 0x99})
#: PUBACK 0x87 (MQTT 5.0 s.3.4.2.1): the broker refuses this client, not the message: hold and retry
NOT_AUTHORIZED = 0x87
#: PUBACK 0x10: accepted, but no subscription (and so no session) matched: the broker drops it
NO_MATCHING_SUBSCRIBERS = 0x10
DEFAULT_TOPIC = "hazard/{gateway_id}/batches"


class MqttUplink:
    """MQTT 5 transport (QoS 1) with the interface of HttpsUplink.

    url: ``mqtts://host:port`` (or ``mqtt://`` to loopback). gateway_id: fills ``{gateway_id}``
    in ``topic``. ca_file: PEM CA / pinned certificate of the broker (None or True: system
    store). client_cert: PEM path or (cert, key) for mutual TLS. timeout_s: bound of connect
    and of each PUBACK wait. keepalive_s: MQTT keep alive (s.3.1.2.10). client_id: default
    ``hg-<gateway_id>-<random>``. profile: gateway.record.envelopes.PlatformProfile (envelope only).
    Raises ValueError (one line) for a bad url or unreadable TLS files.
    """

    def __init__(self, url: str, gateway_id: str, topic: str = DEFAULT_TOPIC, *,
                 ca_file: str | bool | None = None, client_cert: str | tuple[str, str] | None = None,
                 timeout_s: float = 5.0, keepalive_s: int = 30, client_id: str | None = None,
                 profile: Any = None) -> None:
        from gateway.record.envelopes import JwsProfile

        self.tls, self.host, self.port = parse_broker_url(url)
        self.url = url
        self.gateway_id = gateway_id
        self.topic = topic.replace("{gateway_id}", gateway_id)
        self.timeout_s = float(timeout_s)
        self.keepalive_s = int(keepalive_s)
        self.client_id = client_id or f"hg-{gateway_id}-{uuid.uuid4().hex[:8]}"
        self.profile = profile or JwsProfile()
        self._ctx: ssl.SSLContext | None = None
        if self.tls:
            self._ctx = client_context(ca_file, client_cert, "mqtt")
        self._client: mqtt.Client | None = None
        self._lock = threading.Lock()            # guards the fields below (paho thread vs. ours)
        self._connack: tuple[threading.Event, list[Any]] | None = None
        self._pending: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Future]] = {}
        self._early: dict[int, Any] = {}         # PUBACKs that beat the registration of their mid
        self._lost: str | None = None            # why the connection dropped (None: up or never)
        self._warned_no_subscribers = 0.0
        #: counters for health checks and tests
        self.connects = 0
        self.pubacks = 0

    # ------------------------------------------------------------------ paho callbacks (paho's thread)
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        with self._lock:
            if self._connack is not None:
                self._connack[1].append(reason)
                self._connack[0].set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        with self._lock:
            self._lost = f"connection lost ({reason})"
            pending, self._pending = self._pending, {}
        for loop, fut in pending.values():
            loop.call_soon_threadsafe(_set_exc, fut, RetryableError(
                f"{self.url}: connection lost before PUBACK ({reason})"))

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        with self._lock:
            entry = self._pending.pop(mid, None)
            if entry is None:
                self._early[mid] = reason
                return
        loop, fut = entry
        loop.call_soon_threadsafe(_set_result, fut, reason)

    # ------------------------------------------------------------------ connection
    def _connect_blocking(self) -> mqtt.Client:
        """TCP + TLS + CONNECT, then wait for CONNACK; all bounded by timeout_s. Raises RetryableError."""
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5)
        client.connect_timeout = self.timeout_s
        if self._ctx is not None:
            client.tls_set_context(self._ctx)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.reconnect_delay_set(min_delay=1, max_delay=5)
        ev = threading.Event()
        got: list[Any] = []
        with self._lock:
            self._connack = (ev, got)
            self._lost = None
            self._early.clear()
        try:
            client.connect(self.host, self.port, keepalive=self.keepalive_s, clean_start=True)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise RetryableError(f"{self.url}: {type(exc).__name__}: {exc}") from None
        client.loop_start()
        ok = ev.wait(self.timeout_s)
        with self._lock:
            self._connack = None
        if not ok or not got:
            _teardown(client)
            raise RetryableError(f"{self.url}: no CONNACK within {self.timeout_s:g} s")
        reason = got[0]
        if getattr(reason, "is_failure", False):
            _teardown(client)
            # a refused connection (not authorized, bad credentials ...) is a gateway-level fault a
            # person must fix: keep the data and retry, never dead-letter batches for it
            raise RetryableError(f"{self.url}: broker refused the connection: {reason}")
        self.connects += 1
        log.info("mqtt: connected to %s:%d as %s (topic %s)", self.host, self.port, self.client_id, self.topic)
        return client

    async def _ensure(self) -> mqtt.Client:
        if self._client is not None and self._lost is None and self._client.is_connected():
            return self._client
        await self._reset()
        self._client = await asyncio.to_thread(self._connect_blocking)
        return self._client

    async def _reset(self) -> None:
        client, self._client = self._client, None
        with self._lock:
            pending, self._pending = self._pending, {}
            self._early.clear()
        for loop, fut in pending.values():
            loop.call_soon_threadsafe(_set_exc, fut, RetryableError(f"{self.url}: connection reset"))
        if client is not None:
            await asyncio.to_thread(_teardown, client)

    # ------------------------------------------------------------------ the transport interface
    async def send(self, jws: str) -> Ack:
        """Publish one batch (QoS 1) and return an Ack at PUBACK.

        Raises RetryableError (connect/TLS failure, CONNACK refusal, no PUBACK within
        timeout_s, connection lost, a retryable PUBACK reason), AuthError (PUBACK 0x87) or
        PermanentError (PUBACK 0x90/0x95/0x99, no ``rejection``: the Forwarder holds the batch).
        After any error the client is torn down; the next send reconnects.
        """
        try:
            header, payload = decode_unverified(jws)
            gid, seq = str(payload["gateway_id"]), int(payload["seq"])
            ctype, body = self.profile.envelope(jws, payload)
        except (ValueError, KeyError, TypeError) as exc:
            raise RetryableError(f"{self.url}: cannot wrap the batch: {exc}") from None
        try:
            client = await self._ensure()
        except RetryableError:
            await self._reset()
            raise
        props = Properties(PacketTypes.PUBLISH)
        props.ContentType = ctype
        props.PayloadFormatIndicator = 1
        props.UserProperty = [("seq", str(seq)), ("kid", str(header.get("kid", "")))]
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()
        info = client.publish(self.topic, body, qos=1, retain=False, properties=props)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            await self._reset()
            raise RetryableError(f"{self.url}: publish failed: {mqtt.error_string(info.rc)}")
        with self._lock:
            if info.mid in self._early:
                fut.set_result(self._early.pop(info.mid))
            elif self._lost is not None:
                fut.set_exception(RetryableError(f"{self.url}: {self._lost}"))
            else:
                self._pending[info.mid] = (loop, fut)
        try:
            reason = await asyncio.wait_for(fut, self.timeout_s)
        except (asyncio.TimeoutError, TimeoutError):
            await self._reset()
            raise RetryableError(f"{self.url}: no PUBACK for seq {seq} within {self.timeout_s:g} s") from None
        except RetryableError:
            await self._reset()
            raise
        except asyncio.CancelledError:
            await self._reset()
            raise
        code = int(getattr(reason, "value", reason) or 0)
        if code >= 0x80:
            msg = f"{self.url}: PUBACK for seq {seq}: {reason} (0x{code:02X})"
            if code == NOT_AUTHORIZED:
                raise AuthError(msg, code)
            if code in PERMANENT_REASONS:
                raise PermanentError(msg, code)
            raise RetryableError(msg, code)
        if code == NO_MATCHING_SUBSCRIBERS:
            if time.monotonic() - self._warned_no_subscribers > 600:
                self._warned_no_subscribers = time.monotonic()
                log.warning("mqtt: broker %s has no subscriber (and no session) for %s; batches wait", self.url,
                            self.topic)
            raise RetryableError(f"{self.url}: PUBACK for seq {seq}: no matching subscribers (0x10); "
                                 "the broker discarded it, kept for a resend", code)
        self.pubacks += 1
        return Ack(gateway_id=gid, seq=seq, status="accepted", hash=None)

    async def aclose(self) -> None:
        """Disconnect and stop the network thread; idempotent."""
        await self._reset()


def _teardown(client: mqtt.Client) -> None:
    try:
        client.disconnect()
    except Exception:   # noqa: BLE001 - already broken; we only release it
        pass
    client.loop_stop()


def _set_result(fut: asyncio.Future, value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def _set_exc(fut: asyncio.Future, exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)
