"""What the status page serves, as the server threads see it: the latest status snapshot and the alarm limits.

The page never touches the gateway's live objects. :class:`PageData` is filled on the event loop by
gateway.ops.web.serve (from ``gw.last_status``, the snapshot ``hazard-gateway status`` and status.json show,
gateway.runtime.gateway.Gateway.status) and read by the HTTP threads; one lock guards a swap of two references,
so a reader never sees half an update and never holds up the event loop for longer than that.

``/api/status`` body (JSON)::

    {"status": <the snapshot, unchanged: gateway_id, time, uptime_s, devices, tags, alarms, alarms_hidden,
                alarm_sequence, points_disabled, hidden_dangers, interlocks, outputs, trips, heartbeats,
                annunciators, hazard, store, record_path, uplink ...> or null before the first one,
     "received_s": epoch s when the page took it (null before), "now_s": epoch s of this answer,
     "limits": {tag: [{"kind": "HH"|"H"|"L"|"LL", "setpoint": float, "priority": 1..4, "level": 1|2|null}]}}
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

#: only level limits are horizontal lines on a trend (ROC and DEV are not in the tag's unit)
LINE_KINDS = ("HH", "H", "L", "LL")


def alarm_limits(cfg: Any) -> dict[str, list[dict[str, Any]]]:
    """tag -> its level alarm limits (HH, H, L, LL; gas presets resolved in the tag's unit, as the alarm engine
    runs them: gateway.config.tag_alarm_config) for every enabled tag of ``cfg`` (a gateway.config.LoadedConfig)
    that has alarms. A tag whose limits cannot be resolved is left out (check has refused such a config)."""
    from gateway.config import tag_alarm_config

    out: dict[str, list[dict[str, Any]]] = {}
    m = cfg.model
    for d in m.devices:
        if not d.enabled:
            continue
        for t in d.tags:
            if t.alarms is None:
                continue
            try:
                tac = tag_alarm_config(t, policy=m.alarm_policy)
            except ValueError:
                continue
            lines = [{"kind": x.kind, "setpoint": float(x.setpoint), "priority": x.priority, "level": x.level}
                     for x in tac.limits if x.kind in LINE_KINDS]
            if lines:
                out[t.name] = sorted(lines, key=lambda x: -x["setpoint"])
    return out


class PageData:
    """The latest snapshot and limits, swapped in by the event loop, read by the server threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._status: dict[str, Any] | None = None
        self._body: bytes | None = None
        self._received_s: float | None = None
        self._limits: dict[str, list[dict[str, Any]]] = {}
        self._limits_json = "{}"

    def publish(self, status: dict[str, Any] | None, limits: dict[str, list[dict[str, Any]]] | None = None) -> None:
        """A new snapshot (None: keep the last one) and, when given, new limits. The snapshot is encoded here,
        once, not per request (callers on the event loop: a snapshot is some tens of kB)."""
        body = None if status is None else json.dumps(status, default=str, separators=(",", ":")).encode()
        lj = None if limits is None else json.dumps(limits, separators=(",", ":"))
        with self._lock:
            if status is not None:
                self._status, self._body, self._received_s = status, body, time.time()
            if limits is not None:
                self._limits, self._limits_json = limits, lj  # type: ignore[assignment]

    def status_body(self) -> bytes:
        """The /api/status answer (module docstring), encoded."""
        with self._lock:
            body, received, lj = self._body, self._received_s, self._limits_json
        head = b'{"status":' + (body if body is not None else b"null")
        tail = ',"received_s":%s,"now_s":%.3f,"limits":%s}' % (
            "null" if received is None else f"{received:.3f}", time.time(), lj)
        return head + tail.encode()

    def knows_tag(self, tag: str) -> bool:
        """Whether ``tag`` is a tag of the latest snapshot or has limits (a trend is served for those only)."""
        with self._lock:
            return tag in self._limits or (self._status is not None and tag in (self._status.get("tags") or {}))

    def limits_of(self, tag: str) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._limits.get(tag, []))
