"""The receiver's MQTT 5 ingest: batches from a broker through a shared subscription (paho-mqtt 2.x).

A regulator platform that takes uploads through a broker (cluster) runs one or more receiver processes with
``--mqtt``; each one is an :class:`MqttIngest` in front of the same :class:`gateway.regulator.receiver.Receiver`
decision (``submit``) and the same store, so adding a process spreads the load.

Wire contract (MQTT Version 5.0, OASIS Standard, 2019; the publisher is gateway.record.uplink_mqtt):

* subscription ``$share/<group>/<filter>`` (s.4.8.2 shared subscriptions; group ``receivers``, filter
  ``hazard/+/batches`` by default) at QoS 1 (s.4.3.2). The broker hands each message to ONE member of the
  group, so N processes with the same group each take a share;
* one PUBLISH = one batch: payload the compact JWS, byte-identical on every resend; properties Content Type
  ``application/jose``, User Properties ``seq`` and ``kid`` (informational: the JWS decides);
* the session is persistent: CONNECT with Clean Start 0 (s.3.1.2.4) and a Session Expiry Interval
  (s.3.1.2.11.2, one day by default) under a client id that the operator gives each process and keeps
  (``--mqtt-client-id``). A process that stops or dies keeps its session in the broker: what the broker had
  sent it without a PUBACK, and what it queued for it meanwhile, comes again when the same client id
  reconnects (s.4.4, with DUP set). Receive Maximum (s.3.1.2.11.3) bounds the messages in flight to one
  process;
* the answer: the receiver's JSON answer ``{"http_status": <the HTTP status submit gave>, ...the HTTP answer's
  JSON}`` (for a content refusal with ``"rejection"``, the signed rejection, when the receiver has a key) is
  published QoS 1 to the PUBLISH's Response Topic with its Correlation Data (s.4.10 request / response) when it
  carries one, else to ``hazard/{gateway_id}/answers`` (``answer_topic``; ``{gateway_id}`` is the level of the
  message's topic that the filter's first ``+`` matched, else the verified gateway_id of the answer). Content
  Type ``application/json``. The answer is a courtesy: a failed answer publish is counted and logged and never
  changes what happens to the batch.

The ack rule. paho runs with manual acknowledgement; the PUBACK (s.3.4) for a batch is sent only AFTER
``Receiver.submit`` has decided for good:

* committed: 200 accepted, 200 duplicate, 202 parked (stored durably, see below);
* refused for good: 400 (malformed, bad payload), 401 (signature, unknown kid, key binding, key change), 409
  conflict or chain broken: the resend of the same bytes gets the same answer; also a payload over
  ``max_body`` (answered 413, never submitted). A refused batch is counted (``refused``, and the receiver's
  ``rejected_<reason>``) and its answer published; nothing of it is stored;
* NOT acknowledged: the store was busy or failed (``sqlite3.Error``, ``StoreUnavailable`` or any other exception
  from submit: the HTTP receiver's 503), or a 409 "gap" (a batch further ahead than the receiver parks,
  ``PARK_WINDOW``: its predecessors can still come). Nothing was stored; the message stays unacknowledged in
  this process's session. The broker never resends on a live connection (s.4.4), so the process submits it
  again itself after a backoff (1 s doubling to 30 s, jittered); if the process dies meanwhile, the broker
  sends it again when the client id reconnects.

Why: the gateway counts a batch as sent at the broker's PUBACK to IT (gateway.record.uplink_mqtt); from then on
the broker holds the only copy outside the plant, until this process acknowledges it. Acknowledging before the
commit would lose the batch in a crash between the two; acknowledging a 503 would drop a batch the store never
took. Acknowledging twice is harmless: a batch submitted again is answered "duplicate". An ack is sent only on
the connection the message came in on: after a reconnect the broker sends the message again (s.4.4) and the
new copy is acknowledged, never a packet identifier of the old connection.

The ordering problem. A shared subscription spreads consecutive batches of ONE gateway over the group's
members (mosquitto: round robin per message), so seq 7 can reach process B before seq 6 reaches process A,
or A may be down with seq 6 waiting in its session for minutes. A strict receiver would refuse seq 7 (409
gap) and the broker copy would be gone. So the ingest submits with ``unordered=True``: a batch beyond the next
expected seq is verified and PARKED durably in the store (202 ``"parked"``), then acknowledged; when its
predecessors arrive (through any process) the parked batches are checked against the chain and accepted in
order. The stored chain stays contiguous and verifiable; a gap is only ever "not yet".

On an EMQX cluster (EMQX 5) the same client works unchanged: EMQX takes ``$share/<group>/<filter>`` and
persistent sessions (kept on disk and replicated only with EMQX's durable sessions, ``durable_sessions.enable``;
otherwise a session lives in the memory of its node and is lost when that node restarts). Its dispatch strategy
(``mqtt.shared_subscription_strategy``, ``broker.`` before EMQX 5.1; per group
``broker.shared_subscription_group.<group>.strategy``) picks the member: ``round_robin`` (the default) and
``random`` spread one gateway over all members (parking puts the chain back in order); ``hash_clientid`` keeps
each publishing gateway on one member and ``hash_topic`` each topic, so each gateway's ``hazard/<id>/batches``:
then one gateway's batches arrive in order and parking is needed only while the group changes (a member joins,
leaves or dies); ``sticky`` keeps everything on one member until it goes. With ``hash_*`` a member that is down
holds its gateways' batches in its session until it is back (mosquitto's round robin does the same for its
share), so run every member under a supervisor (systemd ``Restart=``), each with its own stable client id. If
the broker hands a message to another member instead (EMQX 4's ``shared_dispatch_ack_enabled``, a redispatch),
that one submits it and gets "accepted" or "duplicate"; no batch counts twice.

Broker limits: a session's queue is bounded (mosquitto ``max_queued_messages``, default 1000; EMQX
``mqtt.max_mqueue_len``), and QoS 1 messages beyond it are DROPPED by the broker. Size it for the longest time a
member may be down times its share of the upload rate, and keep the Session Expiry Interval above that time.
mosquitto keeps sessions across its own restart only with ``persistence true``.

docs/design.md, "Receiver ingest over MQTT", gives the design in short.

Retiring a receiver for good: its session still receives its share while it is away (until it expires); end
it cleanly with :meth:`MqttIngest.stop` ``leave=True`` (``--mqtt-leave`` on the command line: unsubscribe,
finish what is in flight, then DISCONNECT with Session Expiry Interval 0, s.3.14.2.2.2).

TLS as for the uplink: ``mqtts://host[:port]`` verifies the broker against ``ca_file`` (or the system store)
with hostname checking; ``client_cert`` + ``client_key`` for mutual TLS; plain ``mqtt://`` only to a loopback
broker (gateway.tlsutil.parse_broker_url). Reconnects use paho's backoff (``reconnect_delay_set``: 1 s doubling
to 30 s), as the uplink does.

Log lines (English, for the regulator's operators): one INFO line per decided message, ``mqtt <client id>:
<topic> seq <n>: <status> <outcome>``, and the stats at stop (``mqtt ingest stats: ...``).
"""

from __future__ import annotations

import json
import logging
import queue
import random
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from gateway.chain.signing import decode_unverified
from gateway.tlsutil import client_context, parse_broker_url

log = logging.getLogger("gateway.regulator.mqtt_ingest")

DEFAULT_GROUP = "receivers"
DEFAULT_FILTER = "hazard/+/batches"
DEFAULT_ANSWER_TOPIC = "hazard/{gateway_id}/answers"
#: one day: how long the broker keeps a stopped process's session (and what it queued for it)
DEFAULT_SESSION_EXPIRY_S = 24 * 3600
#: answers that end a message: committed (200 accepted / duplicate, 202 parked) or refused for good
FINAL_STATUSES = frozenset({200, 202, 400, 401, 409, 413})
_MAX_CLIENT_ID = 256

__all__ = ["DEFAULT_ANSWER_TOPIC", "DEFAULT_FILTER", "DEFAULT_GROUP", "MqttIngest", "MqttIngestSettings"]


class SubmitTarget(Protocol):
    """What the ingest needs of gateway.regulator.receiver.Receiver."""

    def submit(self, body: bytes | bytearray, *, unordered: bool = False) -> tuple[int, dict[str, Any]]: ...

    def count(self, event: str) -> None: ...


@dataclass(frozen=True, slots=True)
class MqttIngestSettings:
    """How one receiver process consumes batches (module docstring). ``url``: ``mqtts://host[:port]`` (or
    ``mqtt://`` to loopback); ``client_id``: stable per process (its persistent session); ``group``: the shared
    subscription's ShareName; ``topic``: the topic filter; ``answer_topic``: with ``{gateway_id}``;
    ``ca_file``, ``client_cert``, ``client_key``: PEM paths (TLS); ``session_expiry_s``: Session Expiry Interval
    (s); ``keepalive_s``: Keep Alive (s); ``concurrency``: submits at once (worker threads);
    ``receive_maximum``: messages in flight from the broker; ``max_body``: bytes, larger payloads are refused
    (413); ``retry_min_s``/``retry_max_s``: backoff of a submit that was not decided (store busy); ``leave``:
    :meth:`MqttIngest.stop` retires this member for good by default.
    """

    url: str
    client_id: str
    group: str = DEFAULT_GROUP
    topic: str = DEFAULT_FILTER
    answer_topic: str = DEFAULT_ANSWER_TOPIC
    ca_file: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    session_expiry_s: int = DEFAULT_SESSION_EXPIRY_S
    keepalive_s: int = 30
    concurrency: int = 4
    receive_maximum: int = 16
    max_body: int = 8 * 1024 * 1024
    retry_min_s: float = 1.0
    retry_max_s: float = 30.0
    leave: bool = False

    def check(self) -> tuple[bool, str, int]:
        """(tls, host, port) of ``url``; ValueError (one line) for a bad url, client id, group, topic filter,
        answer topic or a client certificate without its key."""
        tls, host, port = parse_broker_url(self.url, "--mqtt-topic")
        cid = self.client_id
        if not cid or len(cid.encode()) > _MAX_CLIENT_ID or not cid.isprintable() or " " in cid:
            raise ValueError(f"mqtt client id {cid!r}: give each receiver process its own stable id "
                             f"(1-{_MAX_CLIENT_ID} printable characters, no spaces)")
        if not self.group or any(c in self.group for c in "/+#") or not self.group.isprintable():
            raise ValueError(f"mqtt group {self.group!r}: a share name has no '/', '+' or '#' "
                             "(MQTT 5.0 s.4.8.2)")
        _check_filter(self.topic)
        if "{gateway_id}" not in self.answer_topic or any(c in self.answer_topic for c in "+#"):
            raise ValueError(f"mqtt answer topic {self.answer_topic!r}: must hold {{gateway_id}} and no "
                             "wildcard")
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("mqtt mutual TLS needs both --mqtt-cert and --mqtt-key")
        if not tls and (self.ca_file or self.client_cert):
            raise ValueError(f"mqtt url {self.url!r}: TLS files given for a plain mqtt:// broker; use mqtts://")
        for n in ("session_expiry_s", "keepalive_s"):
            if not 0 <= getattr(self, n) <= 0xFFFFFFFF:
                raise ValueError(f"mqtt {n} {getattr(self, n)} out of range")
        if not 1 <= self.concurrency <= 64 or not self.concurrency <= self.receive_maximum <= 65535:
            raise ValueError("mqtt concurrency must be 1-64 and at most receive_maximum (<= 65535)")
        self.tls_context(tls)
        return tls, host, port

    def tls_context(self, tls: bool = True) -> ssl.SSLContext | None:
        """The verifying client context for ``mqtts://`` (None for plain); ValueError (one line) when a file is
        unreadable."""
        if not tls:
            return None
        cert = (self.client_cert, self.client_key) if self.client_cert and self.client_key else None
        return client_context(self.ca_file, cert, "mqtt")

    @property
    def subscription(self) -> str:
        """``$share/<group>/<filter>`` (s.4.8.2)."""
        return f"$share/{self.group}/{self.topic}"


def _check_filter(f: str) -> None:
    """A topic filter (s.4.7): '#' only as the last level, '+' only as a whole level; ValueError otherwise."""
    levels = f.split("/")
    ok = bool(f) and not f.startswith("$") and all(
        (lv not in ("#", "+") and "#" not in lv and "+" not in lv) or lv == "+" or (lv == "#" and i == len(levels) - 1)
        for i, lv in enumerate(levels))
    if not ok:
        raise ValueError(f"mqtt topic filter {f!r}: '+' and '#' stand for whole levels, '#' only last "
                         "(MQTT 5.0 s.4.7), and no '$'")


@dataclass(slots=True)
class _Job:
    gen: int            # connection generation the message came in on
    mid: int
    qos: int
    topic: str
    payload: bytes
    response_topic: str | None
    correlation: bytes | None


class MqttIngest:
    """One receiver process's MQTT consumer (module docstring). ``receiver``: the
    gateway.regulator.receiver.Receiver (``submit(body, unordered=True)``, ``count``); ``settings``:
    :class:`MqttIngestSettings`. Raises ValueError (one line) for bad settings or unreadable TLS files.

    ``start()`` returns at once (paho connects and reconnects in its own thread); ``wait_subscribed(s)``;
    ``stop(leave=False)``; ``stats()`` -> {event: count}: received, acked, accepted, duplicate, parked,
    refused, retried, answers, answers_failed, stale_acks, connects, connect_failures, disconnects.
    """

    def __init__(self, receiver: SubmitTarget, settings: MqttIngestSettings) -> None:
        self.receiver = receiver
        self.s = settings
        self.tls, self.host, self.port = settings.check()
        self._ctx = settings.tls_context(self.tls)
        self._wildcard_level = next((i for i, lv in enumerate(settings.topic.split("/")) if lv == "+"), None)
        self._client: mqtt.Client | None = None
        self._lock = threading.Lock()            # guards _gen, _up, _stats
        self._gen = 0
        self._up = False
        self._stats: dict[str, int] = {}
        self._jobs: queue.Queue[_Job | None] = queue.Queue()   # bounded by Receive Maximum (broker side)
        self._busy = 0
        self._workers: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._subscribed = threading.Event()
        self._unsubscribed = threading.Event()
        self._rng = random.Random()
        self.subscribe_error: str | None = None
        self._quiet_until = 0.0

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "MqttIngest":
        """Connect (in paho's thread, retried with backoff) and start the workers."""
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.s.client_id, protocol=mqtt.MQTTv5,
                        manual_ack=True)
        if self._ctx is not None:
            c.tls_set_context(self._ctx)
        c.reconnect_delay_set(min_delay=1, max_delay=30)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_connect_fail = self._on_connect_fail
        c.on_subscribe = self._on_subscribe
        c.on_unsubscribe = lambda *a: self._unsubscribed.set()
        c.on_message = self._on_message
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.s.session_expiry_s
        props.ReceiveMaximum = self.s.receive_maximum
        self._client = c
        for i in range(self.s.concurrency):
            t = threading.Thread(target=self._work, name=f"mqtt-ingest-{i}", daemon=True)
            t.start()
            self._workers.append(t)
        c.connect_async(self.host, self.port, keepalive=self.s.keepalive_s, clean_start=False, properties=props)
        c.loop_start()
        log.info("mqtt %s: consuming %s from %s://%s:%d (session expiry %d s)", self.s.client_id,
                 self.s.subscription, "mqtts" if self.tls else "mqtt", self.host, self.port, self.s.session_expiry_s)
        return self

    def wait_subscribed(self, timeout_s: float) -> bool:
        """True once the broker granted the subscription (on this or an earlier connection)."""
        return self._subscribed.wait(timeout_s)

    def stop(self, *, leave: bool | None = None, timeout_s: float = 10.0) -> None:
        """Stop taking messages, let the workers finish what they hold (at most ``timeout_s``), disconnect.

        Messages not yet decided stay unacknowledged in the session: the broker sends them again when this
        client id connects next. ``leave``: retire this member for good: unsubscribe first, finish everything
        in flight, then end the session (Session Expiry Interval 0), so the broker queues nothing more for it.
        None: ``settings.leave``. Idempotent.
        """
        c = self._client
        if c is None:
            return
        leave = self.s.leave if leave is None else leave
        deadline = time.monotonic() + timeout_s
        if leave and self._up:
            self._unsubscribed.clear()
            c.unsubscribe(self.s.subscription)
            self._unsubscribed.wait(max(0.0, deadline - time.monotonic()))
            while time.monotonic() < deadline and (self._busy or not self._jobs.empty()):
                time.sleep(0.05)
        self._stopping.set()
        for _ in self._workers:
            self._jobs.put(None)
        for t in self._workers:
            t.join(max(0.1, deadline - time.monotonic()))
        props = None
        if leave:
            props = Properties(PacketTypes.DISCONNECT)
            props.SessionExpiryInterval = 0
        try:
            c.disconnect(properties=props)
        except Exception:   # noqa: BLE001 - already down; the session is the broker's
            pass
        c.loop_stop()
        self._client = None
        log.info("mqtt ingest stats: %s", " ".join(f"{k}={v}" for k, v in sorted(self.stats().items())) or "none")

    def stats(self) -> dict[str, int]:
        """{event: count} since start (class docstring)."""
        with self._lock:
            return dict(self._stats)

    def _count(self, event: str, n: int = 1) -> None:
        with self._lock:
            self._stats[event] = self._stats.get(event, 0) + n

    # ------------------------------------------------------------------ paho callbacks (paho's thread)
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if getattr(reason, "is_failure", False):
            log.error("mqtt %s: broker %s:%d refused the connection: %s", self.s.client_id, self.host, self.port,
                      reason)
            return
        with self._lock:
            self._gen += 1
            self._up = True
        self._count("connects")
        log.info("mqtt %s: connected to %s:%d (session present: %s)", self.s.client_id, self.host, self.port,
                 bool(getattr(flags, "session_present", False)))
        if not self._stopping.is_set():
            # subscribing again with a session present only replaces the same subscription (s.3.8.4)
            client.subscribe(self.s.subscription, options=SubscribeOptions(qos=1))

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        """TCP/TLS connect failed (paho retries with its backoff): one warning now, then about once a minute."""
        self._count("connect_failures")
        now = time.monotonic()
        if now >= self._quiet_until:
            self._quiet_until = now + 60.0
            log.warning("mqtt %s: cannot connect to %s:%d (%d attempts so far); retrying", self.s.client_id,
                        self.host, self.port, self.stats().get("connect_failures", 0))

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        bad = [r for r in reasons if getattr(r, "is_failure", False)]
        if bad:
            # 0x87 not authorized, 0x8F filter invalid, 0x9E shared subscriptions not supported (s.3.9.3)
            self.subscribe_error = str(bad[0])
            log.error("mqtt %s: the broker refused the subscription %s: %s", self.s.client_id,
                      self.s.subscription, bad[0])
            return
        self.subscribe_error = None
        log.info("mqtt %s: subscribed %s (QoS %s)", self.s.client_id, self.s.subscription,
                 ", ".join(str(getattr(r, "value", r)) for r in reasons))
        self._subscribed.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        with self._lock:
            self._gen += 1     # acks of messages from the old connection are dropped from now on
            self._up = False
        if not self._stopping.is_set():
            self._count("disconnects")
            log.warning("mqtt %s: connection to %s:%d lost (%s); reconnecting", self.s.client_id, self.host,
                        self.port, reason)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if self._stopping.is_set():
            return   # not acknowledged: it comes again with the session
        p = getattr(msg, "properties", None)
        with self._lock:
            gen = self._gen
        self._count("received")
        self._jobs.put(_Job(gen, msg.mid, msg.qos, msg.topic, bytes(msg.payload),
                            getattr(p, "ResponseTopic", None) or None, getattr(p, "CorrelationData", None)))

    # ------------------------------------------------------------------ workers
    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None or self._stopping.is_set():
                return
            with self._lock:
                self._busy += 1
            try:
                self._handle(job)
            except Exception:   # noqa: BLE001 - a bug must not end the worker; the message stays unacked
                log.exception("mqtt %s: %s: unexpected error; the message stays unacknowledged", self.s.client_id,
                              job.topic)
            finally:
                with self._lock:
                    self._busy -= 1

    def _handle(self, job: _Job) -> None:
        failures = 0
        while True:
            if len(job.payload) > self.s.max_body:
                self.receiver.count("rejected_body_too_large")
                status, doc = 413, {"error": f"body larger than {self.s.max_body} bytes"}
                break
            try:
                status, doc = self.receiver.submit(job.payload, unordered=True)
            except Exception as exc:   # noqa: BLE001 - sqlite3.Error, StoreUnavailable ...: the HTTP 503
                status, doc = 503, {"error": f"store unavailable: {type(exc).__name__}: {exc}"}
                self.receiver.count("rejected_store_busy")
            if status in FINAL_STATUSES and not (status == 409 and str(doc.get("error", "")).startswith("gap")):
                break
            failures += 1
            self._count("retried")
            delay = self._rng.uniform(0.5, 1.0) * min(self.s.retry_max_s, self.s.retry_min_s * 2 ** (failures - 1))
            (log.warning if failures == 1 or failures % 10 == 0 else log.info)(
                "mqtt %s: %s: %d %s; not acknowledged, submitted again in %.1f s (attempt %d)", self.s.client_id,
                job.topic, status, doc.get("error", ""), delay, failures + 1)
            if self._stopping.wait(delay) or self._stale(job):
                return   # the broker has it (unacknowledged): it comes again with the session
        outcome = doc.get("status") if status in (200, 202) else "refused"
        self._count(str(outcome))
        log.info("mqtt %s: %s seq %s: %d %s%s", self.s.client_id, job.topic, self._seq_of(job, doc), status,
                 outcome, "" if status in (200, 202) else f" ({doc.get('error', '')})")
        self._answer(job, status, doc)
        self._ack(job)

    def _stale(self, job: _Job) -> bool:
        with self._lock:
            return job.gen != self._gen

    def _ack(self, job: _Job) -> None:
        """PUBACK on the connection the message came on; after a reconnect the broker's new copy is acked."""
        if job.qos == 0:
            return
        c = self._client
        with self._lock:   # the generation cannot change while the PUBACK is queued (see _on_disconnect)
            if c is None or job.gen != self._gen or not self._up:
                self._stats["stale_acks"] = self._stats.get("stale_acks", 0) + 1
                return
            rc = c.ack(job.mid, job.qos)
        if rc == mqtt.MQTT_ERR_SUCCESS:
            self._count("acked")
        else:
            self._count("stale_acks")

    # ------------------------------------------------------------------ answers
    def _seq_of(self, job: _Job, doc: dict[str, Any]) -> Any:
        if "seq" in doc:
            return doc["seq"]
        try:
            return decode_unverified(job.payload.decode("ascii").strip())[1].get("seq", "?")
        except Exception:   # noqa: BLE001 - garbled: the log line says '?'
            return "?"

    def _answer_topic(self, job: _Job, doc: dict[str, Any]) -> str | None:
        if job.response_topic:
            return job.response_topic
        gid: str | None = None
        levels = job.topic.split("/")
        if self._wildcard_level is not None and self._wildcard_level < len(levels):
            gid = levels[self._wildcard_level]
        if not gid and isinstance(doc.get("gateway_id"), str):
            gid = doc["gateway_id"]
        if not gid:
            return None
        return self.s.answer_topic.replace("{gateway_id}", gid)

    def _answer(self, job: _Job, status: int, doc: dict[str, Any]) -> None:
        """Publish the answer QoS 1; a failure is counted and logged, the batch's fate does not depend on it."""
        try:
            topic = self._answer_topic(job, doc)
            c = self._client
            if topic is None or c is None:
                self._count("answers_failed")
                log.warning("mqtt %s: %s: no topic to answer on", self.s.client_id, job.topic)
                return
            props = Properties(PacketTypes.PUBLISH)
            props.ContentType = "application/json"
            props.PayloadFormatIndicator = 1
            if job.correlation is not None:
                props.CorrelationData = job.correlation
            body = json.dumps({"http_status": status, **doc}, separators=(",", ":"))
            info = c.publish(topic, body, qos=1, properties=props)
            if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):   # NO_CONN: queued for reconnect
                raise OSError(mqtt.error_string(info.rc))
            self._count("answers")
        except Exception as exc:   # noqa: BLE001 - never let the answer lose the batch
            self._count("answers_failed")
            log.warning("mqtt %s: %s: answer not published: %s", self.s.client_id, job.topic, exc)
