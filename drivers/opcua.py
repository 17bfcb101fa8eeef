"""OPC UA client driver (asyncua): subscriptions, status -> quality, watchdog, reconnect.

One :class:`OpcUaDevice` is one OPC UA server endpoint (a PLC, a DCS gateway or
an analyser). Each configured :class:`OpcUaPoint` is one tag bound to one
Variable node. The driver

* resolves ``nsu=<uri>`` node ids to namespace indexes on every connect
  (OPC UA Part 6 5.3.1.10: indexes are only valid for one session);
* creates one subscription per session with exactly one monitored item per
  subscribed tag (Part 4 5.12/5.13), asks for both timestamps, and applies an
  absolute deadband filter (Part 4 7.22.2) when the point has one;
* maps every StatusCode to a quality by its severity bits (Part 4 7.34.1:
  00 good, 01 uncertain, 10 bad, 11 reserved -> bad); a bad value is dropped
  (C13);
* stamps each reading with the source timestamp, else the server timestamp,
  else the local receive time, and records which (C13, Part 4 7.11);
* detects "connected but silent" servers with a watchdog read of
  ServerStatus/CurrentTime (ns=0;i=2258) and a subscription keep-alive check
  (Part 4 5.13.1.1); on any session or subscription failure drops the whole
  client and reconnects with exponential backoff, building a new session and a
  new subscription (C12). During the gap every tag reads BAD "comm fault".
  The watchdog read is also the session keep-alive: it runs every
  min(watchdog_s, RevisedSessionTimeout / 3), the timeout the server revised
  in its CreateSession response (Part 4 5.6.2), so a server that caps the
  session below the configured watchdog never times the session out;
* with a security policy: sends the ApplicationUri of the client certificate's
  subjectAltName in CreateSession (Part 4 5.6.2, Part 6 6.2.2), and refuses a
  server whose certificate is not among the trusted ones (``server_cert``, a
  file or a directory; Part 4 6.1.3) before any session exists.

Sample config (gateway.yaml, keys as in gateway/config.py)::

    devices:
      - name: plant-opcua
        protocol: opcua
        endpoint: opc.tcp://10.0.0.5:4840/hazard/
        timeout_ms: 2000
        publishing_interval_ms: 250
        tags:
          - {name: AT301_H2S, node_id: "nsu=urn:hazard-gateway:hil:plant;s=GasDetector.AT301.H2S",
             unit: mg/m3, deadband: 0.1}
          - {name: XV100_TRIP, node_id: "ns=2;s=ESD.XV100.TripCommand", writable: true, subscribe: false}

Emits one Reading per tag per read(): value, quality good/uncertain/bad with
reason ("status BadSensorFailure", "comm fault", ...), ts and ts_source.
"""

from __future__ import annotations

import asyncio
import logging
import math
import struct
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from asyncua import Client, ua
from asyncua.crypto import security_policies
from asyncua.ua import status_codes
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from drivers.base import Device
from drivers.opcua_certs import (certificate_application_uri, first_der, load_certificates,  # noqa: F401
                                 sha256_fingerprint, trusted_server_certificates)
from drivers.opcua_node_ids import ParsedNodeId, parse_node_id  # noqa: F401
from gateway.model import Quality, Reading, TimeSource, WriteError

_log = logging.getLogger(__name__)

SERVER_CURRENT_TIME = ua.NodeId(2258, 0)  # Server/ServerStatus/CurrentTime (Part 5 12.10)
COMM_FAULT = "comm fault"

# OPC UA DateTime values at or before 1601-01-01 mean "no timestamp" (Part 6 5.2.2.5)
_MIN_TS = datetime(1601, 1, 2, tzinfo=timezone.utc)


@dataclass(frozen=True)
class OpcUaPoint:
    """One tag on an OPC UA server.

    tag: tag name. node_id: ``ns=2;s=...``, ``ns=2;i=...``, ``nsu=<uri>;s=...``
    (i=/s=/g=/b= identifiers; Part 6 5.3.1.10); whitespace -> ValueError.
    unit: engineering unit. writable: the gateway may write it (output point).
    subscribe: deliver by subscription (else a direct Read each poll).
    deadband: absolute deadband in engineering units for the monitored item
    (Part 4 7.22.2), 0 = every change.
    """

    tag: str
    node_id: str
    unit: str = ""
    writable: bool = False
    subscribe: bool = True
    deadband: float = 0.0

    def __post_init__(self) -> None:
        if not self.tag:
            raise ValueError(f"OPC UA point {self.node_id!r}: empty tag name")
        try:
            parse_node_id(self.node_id)
        except ValueError as exc:
            raise ValueError(f"tag {self.tag}: {exc}") from None
        if not (isinstance(self.deadband, (int, float)) and math.isfinite(self.deadband) and self.deadband >= 0):
            raise ValueError(f"tag {self.tag}: deadband {self.deadband!r} must be a finite number >= 0")

    @property
    def parsed(self) -> ParsedNodeId:
        return parse_node_id(self.node_id)


# --------------------------------------------------------------------------- status / values

def status_name(code: int) -> str:
    """Symbolic name of a StatusCode (info bits ignored), else its hex form (Part 4 7.34)."""
    code &= 0xFFFFFFFF
    for candidate in (code, code & 0xFFFF0000):
        if candidate in status_codes.code_to_name_doc:
            return status_codes.code_to_name_doc[candidate][0]
    return f"0x{code:08X}"


def quality_of(code: int) -> Quality:
    """Quality from the StatusCode severity bits 31..30 (Part 4 7.34.1).

    00 -> GOOD, 01 -> UNCERTAIN, 10 -> BAD, 11 (reserved) -> BAD.
    """
    severity = (code >> 30) & 0b11
    if severity == 0:
        return Quality.GOOD
    if severity == 1:
        return Quality.UNCERTAIN
    return Quality.BAD


def _epoch(ts: datetime | None) -> float | None:
    if ts is None:
        return None
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=timezone.utc)
    if ts < _MIN_TS:
        return None
    return ts.timestamp()


def _plain(value: Any) -> Any:
    """A decoded Variant value as a Reading value (number, bool, str or list)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, ua.LocalizedText):
        return value.Text
    if isinstance(value, datetime):
        return _epoch(value)
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).hex()
    return str(value)


def reading_from_datavalue(point: OpcUaPoint, dv: ua.DataValue, received_at: float | None = None,
                           received_mono: float | None = None) -> Reading:
    """Map one DataValue to a Reading (C13).

    Quality from the status severity (:func:`quality_of`); a BAD reading never
    carries a value (a server that still sends one is ignored). UNCERTAIN keeps
    the value. A missing value, or NaN/infinity, under a good/uncertain status
    is BAD ("no value" / "nan"). Time: SourceTimestamp, else ServerTimestamp,
    else ``received_at`` (UTC epoch s, default now), with Reading.ts_source.
    """
    now = time.time() if received_at is None else received_at
    mono = time.monotonic() if received_mono is None else received_mono
    code = dv.StatusCode.value if dv.StatusCode is not None else 0
    src, srv = _epoch(dv.SourceTimestamp), _epoch(dv.ServerTimestamp)
    if src is not None:
        ts, ts_source = src, TimeSource.SOURCE
    elif srv is not None:
        ts, ts_source = srv, TimeSource.SERVER
    else:
        ts, ts_source = now, TimeSource.LOCAL
    quality = quality_of(code)
    name = status_name(code)
    raw = {"status": code, "status_name": name}
    value = _plain(dv.Value.Value) if dv.Value is not None else None
    reason: str | None = None
    if quality is Quality.BAD:
        value, reason = None, f"status {name}"
    elif value is None:
        quality, reason = Quality.BAD, f"status {name}, no value"
    elif isinstance(value, float) and not math.isfinite(value):
        quality, value, reason = Quality.BAD, None, "nan"
    elif quality is Quality.UNCERTAIN:
        reason = f"status {name}"
    return Reading(tag=point.tag, value=value, unit=point.unit, quality=quality, ts=ts, reason=reason,
                   ts_source=ts_source, mono=mono, raw=raw)


_INT_RANGES = {
    ua.VariantType.SByte: (-2**7, 2**7 - 1), ua.VariantType.Byte: (0, 2**8 - 1),
    ua.VariantType.Int16: (-2**15, 2**15 - 1), ua.VariantType.UInt16: (0, 2**16 - 1),
    ua.VariantType.Int32: (-2**31, 2**31 - 1), ua.VariantType.UInt32: (0, 2**32 - 1),
    ua.VariantType.Int64: (-2**63, 2**63 - 1), ua.VariantType.UInt64: (0, 2**64 - 1),
}


def coerce_for_variant(value: Any, vtype: ua.VariantType) -> Any:
    """Convert an engineering value to the Python value for a Variant of ``vtype``.

    Raises ValueError (one line) when it does not fit: a fraction or
    out-of-range number for an integer type, a non-0/1 number for Boolean,
    NaN/infinity, or an unsupported type (Part 6 5.1.2 built-in types).
    """
    if vtype == ua.VariantType.Boolean:
        if isinstance(value, bool):
            return value
        if isinstance(value, (int, float)) and value in (0, 1):
            return bool(value)
        raise ValueError(f"{value!r} is not a Boolean (true/false/0/1)")
    if vtype in _INT_RANGES:
        if isinstance(value, bool):
            value = int(value)
        if isinstance(value, float):
            if not math.isfinite(value) or value != int(value):
                raise ValueError(f"{value!r} is not an integer for {vtype.name}")
            value = int(value)
        if not isinstance(value, int):
            raise ValueError(f"{value!r} is not an integer for {vtype.name}")
        lo, hi = _INT_RANGES[vtype]
        if not lo <= value <= hi:
            raise ValueError(f"{value} outside {vtype.name} range {lo}..{hi}")
        return value
    if vtype in (ua.VariantType.Float, ua.VariantType.Double):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{value!r} is not a number for {vtype.name}")
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"{value!r} is not a finite number")
        if vtype == ua.VariantType.Float and abs(value) > 3.4028234663852886e38:
            raise ValueError(f"{value} outside Float range")
        return value
    if vtype == ua.VariantType.String:
        return str(value)
    raise ValueError(f"writing {vtype.name} nodes is not supported")


def _same(written: Any, readback: Any, vtype: ua.VariantType) -> bool:
    if vtype == ua.VariantType.Float and isinstance(readback, float):
        return struct.unpack("<f", struct.pack("<f", written))[0] == readback
    if isinstance(written, bool) or isinstance(readback, bool):
        return type(written) is type(readback) and written == readback
    return written == readback


# --------------------------------------------------------------------------- security

_POLICIES = {"Basic256Sha256", "Aes128Sha256RsaOaep", "Aes256Sha256RsaPss", "Aes128_Sha256_RsaOaep",
             "Aes256_Sha256_RsaPss"}
_MODES = {"Sign", "SignAndEncrypt"}
_SECURITY_KEYS = {"policy", "mode", "cert", "key", "server_cert", "username", "password_file"}

#: the keep-alive never runs more often than this, whatever the server revised (a server that
#: answers a 1 ms session timeout would otherwise get a read storm)
MIN_KEEPALIVE_S = 0.1


class SecurityConfigError(ConnectionError):
    """A connect refused by the driver's own security checks, before any session exists.

    The message is one line starting with ``device NAME: ``. Retrying cannot help until the
    configuration, a certificate or the server changes, so it is logged at ERROR.
    """


class ServerCertificateNotTrusted(SecurityConfigError):
    """The server's certificate is not among the trusted ones (Part 4 6.1.3, trust list check).

    The message is one line: ``device X: server certificate not trusted: subject ..., sha256
    fingerprint AA:BB:...; ...``. ``fingerprint`` holds the colon-separated SHA-256 of the DER.
    """

    def __init__(self, message: str, fingerprint: str) -> None:
        super().__init__(message)
        self.fingerprint = fingerprint


def keepalive_interval(watchdog_s: float, revised_session_timeout_s: float | None) -> float:
    """Seconds between session keep-alive reads: min(watchdog_s, revised / 3), at least MIN_KEEPALIVE_S.

    The server closes a session that sees no request for its RevisedSessionTimeout (Part 4
    5.6.2); one third leaves room for two lost or late keep-alives. revised_session_timeout_s:
    the CreateSession RevisedSessionTimeout in seconds; None, zero, negative or non-finite
    (a server that did not say) -> watchdog_s.
    """
    if (revised_session_timeout_s is None or not math.isfinite(revised_session_timeout_s)
            or revised_session_timeout_s <= 0):
        return float(watchdog_s)
    return max(MIN_KEEPALIVE_S, min(float(watchdog_s), revised_session_timeout_s / 3.0))


def _policy_class(name: str) -> type:
    return getattr(security_policies, f"SecurityPolicy{name.replace('_', '')}")


def _check_security(device: str, security: dict | None) -> dict | None:
    """Validate the ``security`` dict; raise ValueError with one line naming the device.

    With a policy: the client certificate must carry a URI in its subjectAltName (Part 6
    6.2.2), and ``server_cert``, when given, must be a certificate file or a directory
    holding certificates (the trusted server certificates).
    """
    if security is None:
        return None
    if not isinstance(security, dict):
        raise ValueError(f"device {device}: security must be a mapping")
    unknown = set(security) - _SECURITY_KEYS
    if unknown:
        raise ValueError(f"device {device}: unknown security key(s) {sorted(unknown)}; "
                         f"allowed {sorted(_SECURITY_KEYS)}")
    sec = dict(security)
    if "policy" in sec or "mode" in sec:
        if sec.get("policy") not in _POLICIES:
            raise ValueError(f"device {device}: security policy {sec.get('policy')!r} not one of "
                             f"Basic256Sha256, Aes128Sha256RsaOaep, Aes256Sha256RsaPss")
        sec["policy"] = sec["policy"].replace("_", "")
        if sec.get("mode") not in _MODES:
            raise ValueError(f"device {device}: security mode {sec.get('mode')!r} not Sign or SignAndEncrypt")
        for key in ("cert", "key"):
            if not sec.get(key):
                raise ValueError(f"device {device}: security {key} (file path) is required with a policy")
        for key in ("cert", "key"):
            if not Path(sec[key]).is_file():
                raise ValueError(f"device {device}: security {key} file {sec[key]} not found")
        trust = Path(sec["server_cert"]) if sec.get("server_cert") else None
        if trust is not None and not (trust.is_file() or trust.is_dir()):
            raise ValueError(f"device {device}: security server_cert {sec['server_cert']} is neither a file "
                             f"nor a directory")
        try:
            certificate_application_uri(sec["cert"])
            if sec.get("server_cert"):
                trusted_server_certificates(sec["server_cert"])
        except ValueError as exc:
            raise ValueError(f"device {device}: {exc}") from None
    if ("username" in sec) != ("password_file" in sec):
        raise ValueError(f"device {device}: security needs both username and password_file")
    if "password_file" in sec and not Path(sec["password_file"]).is_file():
        raise ValueError(f"device {device}: password_file {sec['password_file']} not found")
    return sec


# --------------------------------------------------------------------------- the device

class _SubHandler:
    """asyncua subscription callbacks bound to one session generation."""

    def __init__(self, device: "OpcUaDevice", generation: int) -> None:
        self.device = device
        self.generation = generation

    def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
        self.device._on_datachange(self.generation, data.monitored_item)

    def status_change_notification(self, status: Any) -> None:
        code = getattr(getattr(status, "Status", None), "value", 0)
        self.device._on_sub_status(self.generation, code)

    def event_notification(self, event: Any) -> None:  # pragma: no cover - no event items
        pass


@dataclass
class _Cached:
    dv: ua.DataValue
    received_at: float
    received_mono: float


class OpcUaDevice(Device):
    """An OPC UA server as a gateway device (asyncua client, Part 4 services).

    name: device name (in every log line and error). endpoint:
    ``opc.tcp://host:port/path``. points: the OpcUaPoint list (unique tags).
    timeout_s: per-request timeout. publishing_interval_ms: subscription
    publishing interval. watchdog_s: the longest period of the
    ServerStatus/CurrentTime (ns=0;i=2258) watchdog read, which is also the
    session keep-alive; each session uses :attr:`keepalive_interval_s` =
    min(watchdog_s, RevisedSessionTimeout / 3) (Part 4 5.6.2), logged once
    when that is below watchdog_s. A subscription that sent no publish
    response (data or keep-alive) for about 2 x keepalive_interval_s also
    counts as failed.
    security: None (SecurityPolicy None, anonymous) or a dict with policy
    (Basic256Sha256 | Aes128Sha256RsaOaep | Aes256Sha256RsaPss, the
    underscore spellings too), mode (Sign | SignAndEncrypt), cert, key (file
    paths), server_cert (the trusted server certificate: a DER/PEM file or a
    directory of them) and/or username + password_file. With a policy the
    client's ApplicationUri is the URI in cert's subjectAltName (Part 6 6.2.2)
    and the server must present a trusted certificate, else the connect
    fails with :class:`ServerCertificateNotTrusted` (no session, every tag
    BAD "comm fault", :attr:`last_error` says why; Part 4 6.1.3).
    backoff_initial_s / backoff_max_s: reconnect backoff (doubling). Raises
    ValueError (one line naming the device, and the file if one is at fault)
    on a bad configuration, e.g. a client certificate without a URI in its
    subjectAltName.
    """

    protocol = "opcua"

    def __init__(self, name: str, endpoint: str, points: list[OpcUaPoint], timeout_s: float = 2.0,
                 publishing_interval_ms: float = 250, watchdog_s: float = 5.0, security: dict | None = None,
                 *, backoff_initial_s: float = 0.5, backoff_max_s: float = 30.0) -> None:
        self.name = name
        if not isinstance(endpoint, str) or not endpoint.startswith("opc.tcp://"):
            raise ValueError(f"device {name}: endpoint {endpoint!r} must start with opc.tcp://")
        if not points:
            raise ValueError(f"device {name}: no points")
        seen: set[str] = set()
        for p in points:
            if p.tag in seen:
                raise ValueError(f"device {name}: tag {p.tag} defined twice")
            seen.add(p.tag)
        for label, v in (("timeout_s", timeout_s), ("publishing_interval_ms", publishing_interval_ms),
                         ("watchdog_s", watchdog_s), ("backoff_initial_s", backoff_initial_s),
                         ("backoff_max_s", backoff_max_s)):
            if not (isinstance(v, (int, float)) and v > 0):
                raise ValueError(f"device {name}: {label} must be > 0, got {v!r}")
        self.endpoint = endpoint
        self.timeout_s = float(timeout_s)
        self.publishing_interval_ms = float(publishing_interval_ms)
        self.watchdog_s = float(watchdog_s)
        self.backoff_initial_s = float(backoff_initial_s)
        self.backoff_max_s = float(backoff_max_s)
        self._security = _check_security(name, security)
        self._points = {p.tag: p for p in points}
        self._order = [p.tag for p in points]
        self._parsed = {p.tag: p.parsed for p in points}
        self._handle_tag = {i + 1: tag for i, tag in enumerate(self._order)}  # ClientHandle -> tag

        self._client: Client | None = None
        self._sub: Any = None
        self._sub_created_mono = 0.0
        self._node: dict[str, ua.NodeId] = {}
        self._point_error: dict[str, str] = {}  # tag -> reason (unknown namespace, bad monitored item)
        self._monitored: set[str] = set()  # tags with a live monitored item this session
        self._cache: dict[str, _Cached] = {}
        self._vtype: dict[str, ua.VariantType] = {}
        self._generation = 0
        self._connected = False
        self._closed = False
        self._wake: asyncio.Event | None = None
        self._wake_reason = ""
        self._attempted: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._io_lock: asyncio.Lock | None = None
        self._last_logged = ""
        #: diagnostics: sessions established, notifications per tag, last fault (one line)
        self.sessions = 0
        #: RevisedSessionTimeout of the current / last session in seconds (Part 4 5.6.2), None before one
        self.revised_session_timeout_s: float | None = None
        #: seconds between keep-alive (watchdog) reads this session: min(watchdog_s, revised / 3)
        self.keepalive_interval_s = self.watchdog_s
        #: the ApplicationUri sent in CreateSession (from the certificate's URI SAN when a policy is set)
        self.application_uri: str | None = None
        #: SHA-256 fingerprint of the server certificate of the current / last secure session
        self.server_cert_sha256: str | None = None
        self._keepalive_logged: float | None = None
        self.notifications: dict[str, int] = {t: 0 for t in self._order}
        self.last_error: str | None = None

    # ------------------------------------------------------------------ Device API

    @property
    def tags(self) -> list[str]:
        """Tag names in config order."""
        return list(self._order)

    def describe(self, tag: str) -> str:
        """The node id as configured."""
        p = self._points.get(tag)
        return p.node_id if p is not None else "?"

    def format_raw(self, reading: Reading) -> str:
        """The status code name ({"status": code, "status_name": name})."""
        raw = getattr(reading, "raw", None)
        if isinstance(raw, dict):
            return str(raw.get("status_name", raw.get("status", "-")))
        return super().format_raw(reading)

    @property
    def connected(self) -> bool:
        """True while a session with a live subscription is up."""
        return self._connected

    async def start(self) -> None:
        """Start the connection supervisor and wait (at most ~3 x timeout_s) for
        the first connect attempt. Never raises when the server is down."""
        if self._task is not None:
            return
        self._closed = False
        self._wake = asyncio.Event()
        self._attempted = asyncio.Event()
        self._io_lock = asyncio.Lock()
        self._task = asyncio.create_task(self._supervise(), name=f"opcua:{self.name}")
        try:
            await asyncio.wait_for(self._attempted.wait(), timeout=self.timeout_s * 3 + 1)
        except asyncio.TimeoutError:
            pass

    async def read(self) -> list[Reading]:
        """One Reading per point, config order; never raises for a device fault.

        A subscribed point with a cached notification from the live
        subscription is served from the cache (its own timestamps, so an
        unchanged value is not re-stamped); other points are read directly
        (one Read service call, both timestamps). While disconnected every
        point is BAD "comm fault".
        """
        now, mono = time.time(), time.monotonic()
        if not self._connected or self._client is None:
            return [Reading.bad(t, self._points[t].unit, COMM_FAULT, ts=now) for t in self._order]
        out: dict[str, Reading] = {}
        direct: list[str] = []
        sub_alive = self._subscription_alive(mono)
        for tag in self._order:
            point = self._points[tag]
            if tag in self._point_error and tag not in self._node:
                out[tag] = Reading.bad(tag, point.unit, self._point_error[tag], ts=now)
                continue
            cached = self._cache.get(tag)
            if point.subscribe and tag in self._monitored and cached is not None and sub_alive:
                out[tag] = reading_from_datavalue(point, cached.dv, cached.received_at, cached.received_mono)
            else:
                direct.append(tag)
        if direct:
            generation = self._generation
            try:
                dvs = await self._read_values([self._node[t] for t in direct])
            except Exception as exc:  # noqa: BLE001 - any transport/service failure is a comm fault
                self._fault(generation, f"read failed: {_one_line(exc)}")
                dvs = None
            recv, rmono = time.time(), time.monotonic()
            for i, tag in enumerate(direct):
                point = self._points[tag]
                if dvs is None:
                    out[tag] = Reading.bad(tag, point.unit, COMM_FAULT, ts=recv)
                else:
                    out[tag] = reading_from_datavalue(point, dvs[i], recv, rmono)
        return [out[t] for t in self._order]

    async def write(self, tag: str, value: Any) -> Reading:
        """Write ``value`` to the node of output point ``tag`` and read it back.

        The Variant type is the node's DataType (built-in types, Part 6 5.1.2),
        else the type of its current value, so an Int32 node gets an Int32 and
        not Python's default Int64 (Part 4 5.10.4: servers may reject a type
        mismatch). Returns the read-back Reading. Raises WriteError (one line:
        device, tag, node id, why) when the point is unknown / not writable,
        the device is not connected, the value does not fit the type, the
        Write status is not Good, or the read-back differs.
        """
        point = self._points.get(tag)
        where = f"{self.name} {tag}"
        if point is None:
            raise WriteError(f"{self.name}: no point {tag!r}")
        where = f"{self.name} {tag} ({point.node_id})"
        if not point.writable:
            raise WriteError(f"{where}: point is not writable")
        if not self._connected or self._client is None or tag not in self._node:
            raise WriteError(f"{where}: {self._point_error.get(tag, 'not connected (' + COMM_FAULT + ')')}")
        node_id = self._node[tag]
        generation = self._generation
        try:
            vtype = self._vtype.get(tag) or await self._variant_type(tag, node_id)
            try:
                py_value = coerce_for_variant(value, vtype)
            except ValueError as exc:
                raise WriteError(f"{where}: {exc}") from None
            params = ua.WriteParameters()
            wv = ua.WriteValue()
            wv.NodeId = node_id
            wv.AttributeId = ua.AttributeIds.Value
            wv.Value = ua.DataValue(ua.Variant(py_value, vtype))
            params.NodesToWrite = [wv]
            results = await self._request(self._client.uaclient.write(params))
            code = results[0].value
            if quality_of(code) is not Quality.GOOD:
                raise WriteError(f"{where}: write rejected, status {status_name(code)}")
            dv = (await self._read_values([node_id]))[0]
        except WriteError:
            raise
        except Exception as exc:  # noqa: BLE001
            self._fault(generation, f"write failed: {_one_line(exc)}")
            raise WriteError(f"{where}: {COMM_FAULT}: {_one_line(exc)}") from None
        reading = reading_from_datavalue(point, dv)
        if reading.quality is Quality.BAD:
            raise WriteError(f"{where}: read-back {reading.reason}")
        if not _same(py_value, dv.Value.Value, vtype):
            raise WriteError(f"{where}: read-back {dv.Value.Value!r} differs from written {py_value!r}")
        return reading

    async def close(self) -> None:
        """Stop the supervisor and close the session; idempotent."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        await self._teardown()

    # ------------------------------------------------------------------ internals

    async def _request(self, coro: Any) -> Any:
        return await asyncio.wait_for(coro, timeout=self.timeout_s)

    async def _read_values(self, node_ids: list[ua.NodeId]) -> list[ua.DataValue]:
        client = self._client
        if client is None:
            raise ConnectionError("not connected")
        params = ua.ReadParameters()
        params.TimestampsToReturn = ua.TimestampsToReturn.Both
        for nid in node_ids:
            rv = ua.ReadValueId()
            rv.NodeId = nid
            rv.AttributeId = ua.AttributeIds.Value
            params.NodesToRead.append(rv)
        dvs = await self._request(client.uaclient.read(params))
        if len(dvs) != len(node_ids):
            raise ConnectionError(f"Read returned {len(dvs)} results for {len(node_ids)} nodes")
        return dvs

    async def _variant_type(self, tag: str, node_id: ua.NodeId) -> ua.VariantType:
        """The Variant type to write: DataType attribute if built-in, else current value's type."""
        assert self._client is not None
        dts = await self._request(self._client.uaclient.read_attributes([node_id], ua.AttributeIds.DataType))
        vtype: ua.VariantType | None = None
        dt = dts[0].Value.Value if dts and dts[0].Value is not None else None
        if isinstance(dt, ua.NodeId) and dt.NamespaceIndex == 0 and isinstance(dt.Identifier, int):
            if 1 <= dt.Identifier <= 25:
                vtype = ua.VariantType(dt.Identifier)
            elif dt.Identifier == 29:  # Enumeration -> Int32 on the wire (Part 6 5.2.2.16)
                vtype = ua.VariantType.Int32
        if vtype is None:
            current = (await self._read_values([node_id]))[0]
            if current.Value is not None and current.Value.VariantType != ua.VariantType.Null:
                vtype = current.Value.VariantType
        if vtype is None:
            raise WriteError(f"{self.name} {tag}: cannot tell the node's data type ({dt})")
        self._vtype[tag] = vtype
        return vtype

    def _subscription_alive(self, mono: float) -> bool:
        sub = self._sub
        if sub is None:
            return False
        last = sub.last_publish_at or self._sub_created_mono
        return mono - last <= self._stale_after_s()

    def _stale_after_s(self) -> float:
        # the server sends a keep-alive at least every keepalive_count x interval (~keepalive_interval_s / 2)
        return max(2.0 * self.keepalive_interval_s, 4.0 * self.publishing_interval_ms / 1000.0)

    def _on_datachange(self, generation: int, item: ua.MonitoredItemNotification) -> None:
        if generation != self._generation:
            return  # a late notification from a dead session
        tag = self._handle_tag.get(item.ClientHandle)
        if tag is None or item.Value is None:
            return
        self._cache[tag] = _Cached(item.Value, time.time(), time.monotonic())
        self.notifications[tag] += 1

    def _on_sub_status(self, generation: int, code: int) -> None:
        if quality_of(code) is Quality.BAD:
            self._fault(generation, f"subscription status {status_name(code)}")

    def _fault(self, generation: int, reason: str) -> None:
        """Mark the session failed (from a callback, read or write); the supervisor reconnects."""
        if generation != self._generation or self._wake is None:
            return
        self._connected = False
        self.last_error = reason
        if not self._wake.is_set():
            self._wake_reason = reason
            self._wake.set()

    def _log_fault(self, reason: str, suffix: str = "", level: int = logging.WARNING) -> None:
        """Log a fault once per distinct reason (no journald flood while a server stays down)."""
        self.last_error = reason
        if reason != self._last_logged:
            own = f"device {self.name}: "
            text = reason[len(own):] if reason.startswith(own) else reason
            _log.log(level, "OPC UA device %s (%s): %s%s", self.name, self.endpoint, text, suffix)
            self._last_logged = reason

    async def _supervise(self) -> None:
        delay = self.backoff_initial_s
        assert self._wake is not None and self._attempted is not None
        while not self._closed:
            self._wake.clear()
            try:
                await self._connect()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - every failure means: back off and retry
                if isinstance(exc, SecurityConfigError):  # our own refusal: the message is the reason
                    self._log_fault(str(exc), f"; retrying with backoff up to {self.backoff_max_s:g} s",
                                    logging.ERROR)
                else:
                    self._log_fault(f"connect failed: {_one_line(exc)}",
                                    f"; retrying with backoff up to {self.backoff_max_s:g} s")
                await self._teardown()
                self._attempted.set()
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.backoff_max_s)
                continue
            self._attempted.set()
            delay = self.backoff_initial_s
            if self._last_logged:
                _log.warning("OPC UA device %s (%s): connected (session %d)", self.name, self.endpoint,
                             self.sessions)
            self._last_logged = ""
            self.last_error = None
            reason = await self._watch()
            self._log_fault(reason, "; reconnecting")
            await self._teardown()
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.backoff_max_s)

    async def _watch(self) -> str:
        """Return the reason once the session or subscription failed (C12)."""
        assert self._wake is not None
        generation = self._generation
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.keepalive_interval_s)
                return self._wake_reason or "session lost"
            except asyncio.TimeoutError:
                pass
            if generation != self._generation or self._client is None:
                return "session replaced"
            try:
                dv = (await self._read_values([SERVER_CURRENT_TIME]))[0]
            except Exception as exc:  # noqa: BLE001
                return f"watchdog read of ServerStatus/CurrentTime (ns=0;i=2258) failed: {_one_line(exc)}"
            code = dv.StatusCode.value if dv.StatusCode is not None else 0
            if quality_of(code) is Quality.BAD:
                return f"watchdog read of ServerStatus/CurrentTime: status {status_name(code)}"
            if self._monitored and not self._subscription_alive(time.monotonic()):
                return f"subscription silent for more than {self._stale_after_s():.1f} s"

    async def _connect(self) -> None:
        """One session: connect, resolve node ids, one subscription, one monitored item per tag."""
        await self._teardown()
        client, fingerprint = await new_client(self.name, self.endpoint, self._security, self.timeout_s,
                                               self.watchdog_s)
        if fingerprint is not None:
            self.application_uri, self.server_cert_sha256 = client.application_uri, fingerprint
        self._generation += 1
        generation = self._generation

        async def lost(exc: Exception) -> None:
            self._fault(generation, f"connection lost: {_one_line(exc)}")

        client.connection_lost_callback = lost
        self._client = client
        await asyncio.wait_for(client.connect(), timeout=self.timeout_s * 3)
        self._adopt_session_timeout(client)
        ns_array = await self._request(client.get_namespace_array())
        self._node.clear()
        self._point_error.clear()
        self._vtype.clear()
        for tag in self._order:
            try:
                self._node[tag] = self._parsed[tag].resolve(ns_array)
            except LookupError as exc:
                self._point_error[tag] = f"node id {self._points[tag].node_id}: {exc}"
                self._log_fault(f"tag {tag}: {self._point_error[tag]}")
        sub_tags = [t for t in self._order if self._points[t].subscribe and t in self._node]
        if sub_tags:
            await self._subscribe(client, generation, sub_tags)
        self.sessions += 1
        self._connected = True

    def _adopt_session_timeout(self, client: Client) -> None:
        """Keep-alive from the session timeout the server revised (Part 4 5.6.2).

        asyncua stores the CreateSession RevisedSessionTimeout (ms) in client.session_timeout.
        keepalive_interval_s = min(watchdog_s, revised / 3); one log line naming the device
        when that is below watchdog_s (again only if a later session gets another timeout).
        """
        revised_ms = client.session_timeout
        revised = float(revised_ms) / 1000.0 if isinstance(revised_ms, (int, float)) and revised_ms > 0 else None
        self.revised_session_timeout_s = revised
        self.keepalive_interval_s = keepalive_interval(self.watchdog_s, revised)
        if self.keepalive_interval_s < self.watchdog_s and self._keepalive_logged != revised:
            self._keepalive_logged = revised
            _log.warning("OPC UA device %s (%s): the server revised the session timeout to %g s; keep-alive "
                         "every %g s (a third of it) instead of watchdog_s %g s", self.name, self.endpoint,
                         revised, self.keepalive_interval_s, self.watchdog_s)

    async def _subscribe(self, client: Client, generation: int, tags: list[str]) -> None:
        interval = self.publishing_interval_ms
        keepalive = max(1, math.ceil(self.keepalive_interval_s * 1000.0 / 2.0 / interval))
        params = ua.CreateSubscriptionParameters()
        params.RequestedPublishingInterval = interval
        params.RequestedMaxKeepAliveCount = keepalive
        params.RequestedLifetimeCount = max(3 * keepalive, math.ceil(60_000 / interval))
        params.MaxNotificationsPerPublish = 10_000
        params.PublishingEnabled = True
        params.Priority = 0
        sub = await self._request(client.create_subscription(params, _SubHandler(self, generation)))
        self._sub, self._sub_created_mono = sub, time.monotonic()
        handles = {tag: h for h, tag in self._handle_tag.items()}
        requests = []
        for tag in tags:
            point = self._points[tag]
            rv = ua.ReadValueId()
            rv.NodeId = self._node[tag]
            rv.AttributeId = ua.AttributeIds.Value
            mp = ua.MonitoringParameters()
            mp.ClientHandle = handles[tag]
            mp.SamplingInterval = interval
            mp.QueueSize = 1
            mp.DiscardOldest = True
            if point.deadband > 0:
                flt = ua.DataChangeFilter()
                flt.Trigger = ua.DataChangeTrigger.StatusValue
                flt.DeadbandType = ua.DeadbandType.Absolute
                flt.DeadbandValue = float(point.deadband)
                mp.Filter = flt
            mir = ua.MonitoredItemCreateRequest()
            mir.ItemToMonitor = rv
            mir.MonitoringMode = ua.MonitoringMode.Reporting
            mir.RequestedParameters = mp
            requests.append(mir)
        results = await self._request(sub.create_monitored_items(requests))
        self._monitored.clear()
        for tag, res in zip(tags, results):
            if isinstance(res, ua.StatusCode):  # failed item: fall back to direct reads
                self._point_error[tag] = f"monitored item status {status_name(res.value)}"
                self._log_fault(f"tag {tag} ({self._points[tag].node_id}): {self._point_error[tag]}")
            else:
                self._monitored.add(tag)

    async def _teardown(self) -> None:
        """Forget the session: no cached value survives it (the gap reads BAD)."""
        self._connected = False
        self._generation += 1
        self._cache.clear()
        self._monitored.clear()
        self._sub = None
        client, self._client = self._client, None
        if client is None:
            return
        client.connection_lost_callback = None
        try:
            await asyncio.wait_for(client.disconnect(), timeout=self.timeout_s)
        except (asyncio.TimeoutError, Exception):  # noqa: BLE001 - the server may already be gone
            try:
                client.disconnect_socket()
            except Exception:  # noqa: BLE001
                pass


async def secure_channel(client: Client, device: str, sec: dict, timeout_s: float) -> str:
    """Set up the secure channel of ``client``: ApplicationUri from the certificate, trusted server.

    1. client.application_uri = the URI in the client certificate's subjectAltName, so the
       CreateSession ClientDescription.ApplicationUri matches it (Part 4 5.6.2, Part 6 6.2.2).
    2. GetEndpoints over a SecurityPolicy None channel (Part 4 5.4.4; no session, nothing
       read); the endpoint with the configured policy and mode must exist.
    3. Its ServerCertificate (the first of a chain) must be one of the trusted certificates
       (``server_cert``, by SHA-256 of the DER; Part 4 6.1.3), else
       :class:`ServerCertificateNotTrusted`.
    4. The channel is built with the trusted copy of that certificate, so a server that
       does not hold its private key cannot open it, and asyncua refuses a CreateSession
       response carrying another certificate ("Server certificate mismatch").

    Returns the SHA-256 fingerprint of the trusted server certificate. Raises SecurityConfigError (one
    line, ``device`` named) for a certificate file at fault, ConnectionError / asyncua errors for
    transport or endpoint failures.
    """
    policy = _policy_class(sec["policy"])
    mode = getattr(ua.MessageSecurityMode, sec["mode"])
    try:
        app_uri = certificate_application_uri(sec["cert"])
        client_der = load_certificates(sec["cert"])[0].public_bytes(Encoding.DER)
        trusted = trusted_server_certificates(sec["server_cert"]) if sec.get("server_cert") else {}
    except ValueError as exc:  # a certificate replaced since start, or removed
        raise SecurityConfigError(f"device {device}: {exc}") from None
    client.application_uri = app_uri
    endpoints = await asyncio.wait_for(client.connect_and_get_server_endpoints(), timeout=timeout_s * 3)
    offered = [ep for ep in endpoints if ep.SecurityPolicyUri == policy.URI and ep.SecurityMode == mode]
    if not offered:
        have = sorted({f"{(ep.SecurityPolicyUri or '').rpartition('#')[2]} "
                       f"{ua.MessageSecurityMode(ep.SecurityMode).name}" for ep in endpoints})
        raise ConnectionError(f"server offers no endpoint with {sec['policy']} {sec['mode']} "
                              f"(it offers: {', '.join(have) or 'none'})")
    ders = [first_der(ep.ServerCertificate or b"") for ep in offered]
    server_der = next((d for d in ders if sha256_fingerprint(d) in trusted), ders[0])
    if not server_der:
        raise ConnectionError("the endpoint carries no server certificate")
    fingerprint = sha256_fingerprint(server_der)
    if fingerprint not in trusted:
        try:
            subject = x509.load_der_x509_certificate(server_der).subject.rfc4514_string() or "(empty)"
        except ValueError:
            subject = "(not a parsable X.509 certificate)"
        where = f"not in server_cert {sec['server_cert']}" if trusted else "no server_cert configured"
        raise ServerCertificateNotTrusted(
            f"device {device}: server certificate not trusted: subject {subject}, "
            f"sha256 fingerprint {fingerprint}; {where}", fingerprint)
    await client.set_security(policy, client_der, sec["key"], None, trusted[fingerprint], mode)
    return fingerprint


def check_security(device: str, security: dict | None) -> dict | None:
    """The ``security`` dict of an opcua device checked and normalised (policy spelling without underscores);
    raises ValueError with one line naming ``device`` (and the file at fault). None: SecurityPolicy None,
    anonymous."""
    return _check_security(device, security)


async def new_client(device: str, endpoint: str, security: dict | None, timeout_s: float,
                     watchdog_s: float = 5.0) -> tuple[Client, str | None]:
    """An asyncua Client for ``endpoint`` set up as the driver connects (not yet connected): request timeout
    ``timeout_s``, a requested session timeout of max(30 s, 4 x watchdog_s) (the server revises it, Part 4
    5.6.2), with a policy the secure channel of :func:`secure_channel` (GetEndpoints, trusted server
    certificate), with a username the password read from its file. ``security``: as checked by
    :func:`check_security`. Returns (client, SHA-256 fingerprint of the trusted server certificate, or None
    without a policy); raises as :func:`secure_channel` does."""
    client = Client(endpoint, timeout=timeout_s, watchdog_intervall=watchdog_s)
    client.name = client.description = f"hazard-gateway {device}"
    client.session_timeout = max(30_000, int(watchdog_s * 4000))  # requested; the server revises it
    sec = security or {}
    fingerprint = None
    if sec.get("policy"):
        fingerprint = await secure_channel(client, device, sec, timeout_s)
    if sec.get("username"):
        client.set_user(sec["username"])
        client.set_password(Path(sec["password_file"]).read_text(encoding="utf-8").rstrip("\r\n"))
    return client, fingerprint


def quiet_asyncua_logging(level: int = logging.CRITICAL) -> None:
    """Raise the asyncua loggers' threshold (call once from the CLI's logging setup).

    asyncua logs a full traceback at ERROR when a server goes away (e.g.
    "Publish iteration crashed"); this driver already logs each fault as one
    line naming the device, so the library's own records are noise in journald.
    """
    logging.getLogger("asyncua").setLevel(level)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    name = type(exc).__name__
    if isinstance(exc, asyncio.TimeoutError) and not text:
        return "timeout"
    return f"{name}: {text}" if text else name


def from_config(section: Any, ctx: Any) -> OpcUaDevice:
    """The OpcUaDevice of one validated ``opcua`` device section (drivers.registry; ctx:
    drivers.registry.BuildContext). Certificate, key and password file paths are resolved against the
    config's directory."""
    d = section
    points = [OpcUaPoint(tag=t.name, node_id=t.node_id, unit=t.unit, writable=t.writable,
                         subscribe=t.subscribe, deadband=t.deadband) for t in d.tags]
    security = None
    if d.security is not None:
        security = {k: (str(ctx.resolve(v)) if k in ("cert", "key", "server_cert", "password_file") else v)
                    for k, v in d.security.model_dump(exclude_none=True).items()}
    return OpcUaDevice(d.name, d.endpoint, points, timeout_s=d.timeout_ms / 1000,
                       publishing_interval_ms=d.publishing_interval_ms, watchdog_s=d.watchdog_s,
                       security=security)
