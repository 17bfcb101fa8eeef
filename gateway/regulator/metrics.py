"""Receiver operations: Prometheus metrics and the health answer of the reference receiver.

``GET /metrics``: Prometheus text exposition format 0.0.4 (prometheus-client's ``generate_latest``), one
snapshot per scrape, taken in a worker thread (one summary query of the store, see
ReceiverStore.summaries, plus the receiver's decision counters). Like every route of the receiver it is
served on the receiver's TLS listener; it carries no reading, only counts and gateway ids, so it needs no
signed request (put the listener behind the platform's network policy as for /v1/health).

Metrics (all prefixed ``hazard_receiver_``):

====================================================  =======  ====================================================
batches_total{outcome}                                counter  decisions since start: accepted, duplicate, parked
rejected_total{reason}                                counter  refusals since start, by reason (malformed,
                                                               signature, kid, key_binding, gap, chain, conflict,
                                                               basic_data, store_busy, body_too_large ...: the
                                                               ``rejected_<reason>`` counters of Receiver.stats)
rejections_signed_total                               counter  content refusals that carried a signed rejection
gateways                                              gauge    gateways with at least one stored batch
gateway_last_seq{gateway_id}                          gauge    highest stored seq
gateway_last_batch_age_seconds{gateway_id}            gauge    now - received_at of that batch
gateways_silent                                       gauge    gateways whose last batch is older than
                                                               ``silent_after_s`` (``--silent-after`` minutes)
silent_after_seconds                                  gauge    that threshold
gateway_chain_gaps{gateway_id}                        gauge    missing seq ranges: holes in the stored chain
                                                               (none when every batch came in order) plus one
                                                               while parked batches wait for a missing seq
gateway_parked_batches{gateway_id}                    gauge    batches parked beyond a gap (MQTT ingest)
stored_readings                                       gauge    readings in all stored batches
store_up                                              gauge    1 when the last snapshot read the store, else 0
build_info{version}                                   gauge    always 1
====================================================  =======  ====================================================

``GET /v1/health``: ``{"ok", "store", "gateways", "silent_after_s", "silent" (ids, at most 100, oldest
first), "silent_count", "chain_gaps" (ids, at most 100)}``; HTTP 200 while the store answers, 503 when it
does not (``"ok": false``, ``"store"``: the one-line error). A silent gateway is the platform's business
(an operator calls the plant), not the receiver's health, so it never makes the answer 503.

Both answer within ``ANSWER_WITHIN_S`` even when the database hangs (a frozen server, a partition that
drops packets without a reset): the store's reply is awaited that long (:func:`snapshot_within`), then the
answer says the store did not answer. While the store is down the per-gateway figures are those of the
last snapshot that read it (the ages keep growing from each gateway's last batch, so a gateway still goes
silent on the dashboard), never an empty list that would read "no gateways, none silent".
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import weakref
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from gateway.shipped import version

log = logging.getLogger("gateway.regulator.metrics")

PREFIX = "hazard_receiver_"
#: default --silent-after: a gateway that uploads nothing for 15 minutes is reported silent
SILENT_AFTER_S = 15 * 60.0
#: at most this many gateway ids in one health answer
LIST_CAP = 100
OUTCOMES = ("accepted", "duplicate", "parked")
#: a health or metrics answer waits at most this long for the store
ANSWER_WITHIN_S = 5.0
#: receiver -> its last per-gateway rows read from the store (shown while the store is down)
_LAST_ROWS: "weakref.WeakKeyDictionary[Any, list[dict[str, Any]]]" = weakref.WeakKeyDictionary()

__all__ = ["ANSWER_WITHIN_S", "LIST_CAP", "SILENT_AFTER_S", "Snapshot", "health", "render", "snapshot",
           "snapshot_within"]


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """What one scrape or health answer reports. ``gateways``: one dict per gateway from
    ReceiverStore.summaries() plus ``age_s`` (seconds since its last batch, None when unknown);
    ``store_error``: None, or why the store could not be read (one line)."""

    taken_at: float
    silent_after_s: float
    stats: dict[str, int]
    gateways: list[dict[str, Any]]
    store_error: str | None

    @property
    def silent(self) -> list[dict[str, Any]]:
        """Gateways whose last batch is older than silent_after_s, oldest first."""
        quiet = [g for g in self.gateways if g["age_s"] is not None and g["age_s"] > self.silent_after_s]
        return sorted(quiet, key=lambda g: -g["age_s"])

    @property
    def with_gaps(self) -> list[dict[str, Any]]:
        """Gateways with a hole in the stored chain or parked batches waiting for a missing seq."""
        return [g for g in self.gateways if _gaps(g)]


def _gaps(g: dict[str, Any]) -> int:
    holes = 1 if g["count"] != g["last_seq"] else 0   # seqs start at 1: count < last_seq means a hole
    return holes + (1 if g.get("parked") else 0)


def _age_s(received_at: str | None, now: float) -> float | None:
    if not received_at:
        return None
    try:
        return max(0.0, now - datetime.fromisoformat(received_at.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return None


def snapshot(receiver: Any, *, silent_after_s: float = SILENT_AFTER_S, now: float | None = None) -> Snapshot:
    """Read the receiver's counters and the store's per-gateway summary (blocking: call it in a thread).
    ``receiver``: gateway.regulator.receiver.Receiver. A store error is caught and reported in the snapshot
    (store_up 0, health 503), never raised: a scrape must not fail because the database is down."""
    now = time.time() if now is None else now
    try:
        rows = receiver.store.summaries()
        error = None
        _LAST_ROWS[receiver] = rows
    except Exception as exc:   # any driver error (sqlite3, psycopg): the answer says the store is down
        rows, error = _LAST_ROWS.get(receiver, []), f"{exc}".splitlines()[0] or type(exc).__name__
        log.error("store not readable for metrics/health: %s", error)
    return _snapshot_of(rows, now, silent_after_s, receiver.stats(), error)


def _snapshot_of(rows: list[dict[str, Any]], now: float, silent_after_s: float, stats: dict[str, int],
                 error: str | None) -> Snapshot:
    gateways = [dict(r, age_s=_age_s(r.get("last_received_at"), now)) for r in rows]
    return Snapshot(now, silent_after_s, stats, gateways, error)


async def snapshot_within(receiver: Any, *, silent_after_s: float = SILENT_AFTER_S,
                          timeout_s: float = ANSWER_WITHIN_S) -> Snapshot:
    """:func:`snapshot` in a worker thread, awaited at most ``timeout_s``; after that a snapshot that says the
    store did not answer (with the last rows read, see the module docstring). The stuck worker is left to
    finish on its own (the store's own timeouts end it)."""
    try:
        return await asyncio.wait_for(asyncio.to_thread(snapshot, receiver, silent_after_s=silent_after_s),
                                      timeout_s)
    except asyncio.TimeoutError:
        error = f"store did not answer within {timeout_s:g} s"
        log.error("metrics/health: %s", error)
        return _snapshot_of(_LAST_ROWS.get(receiver, []), time.time(), silent_after_s, receiver.stats(), error)


class _Collector:
    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap

    def collect(self):  # prometheus_client collector protocol
        s = self.snap
        c = CounterMetricFamily(PREFIX + "batches", "batch decisions since start, by outcome", labels=["outcome"])
        for outcome in OUTCOMES:
            c.add_metric([outcome], s.stats.get(outcome, 0))
        yield c
        c = CounterMetricFamily(PREFIX + "rejected", "refused batches and requests since start, by reason",
                                labels=["reason"])
        for key, n in sorted(s.stats.items()):
            if key.startswith("rejected_"):
                c.add_metric([key.removeprefix("rejected_")], n)
        yield c
        yield CounterMetricFamily(PREFIX + "rejections_signed", "content refusals carrying a signed rejection",
                                  value=s.stats.get("rejection_signed", 0))
        yield GaugeMetricFamily(PREFIX + "store_up", "1 when the store answered the last snapshot",
                                value=0 if s.store_error else 1)
        yield GaugeMetricFamily(PREFIX + "gateways", "gateways with a stored batch", value=len(s.gateways))
        yield GaugeMetricFamily(PREFIX + "silent_after_seconds", "age of the last batch above which a gateway "
                                "counts as silent", value=s.silent_after_s)
        yield GaugeMetricFamily(PREFIX + "gateways_silent", "gateways silent longer than silent_after_seconds",
                                value=len(s.silent))
        yield GaugeMetricFamily(PREFIX + "stored_readings", "readings in all stored batches",
                                value=sum(g["readings"] for g in s.gateways))
        seq = GaugeMetricFamily(PREFIX + "gateway_last_seq", "highest stored seq", labels=["gateway_id"])
        age = GaugeMetricFamily(PREFIX + "gateway_last_batch_age_seconds", "seconds since the last stored batch",
                                labels=["gateway_id"])
        gaps = GaugeMetricFamily(PREFIX + "gateway_chain_gaps", "missing seq ranges (holes, or parked batches "
                                 "waiting for a missing seq)", labels=["gateway_id"])
        parked = GaugeMetricFamily(PREFIX + "gateway_parked_batches", "batches parked beyond a gap",
                                   labels=["gateway_id"])
        for g in s.gateways:
            gid = [g["gateway_id"]]
            seq.add_metric(gid, g["last_seq"])
            if g["age_s"] is not None:
                age.add_metric(gid, g["age_s"])
            gaps.add_metric(gid, _gaps(g))
            parked.add_metric(gid, g.get("parked", 0))
        yield from (seq, age, gaps, parked)
        info = GaugeMetricFamily(PREFIX + "build_info", "always 1; the labels say what runs", labels=["version"])
        info.add_metric([version()], 1)
        yield info


def render(snap: Snapshot) -> bytes:
    """The Prometheus text exposition (format 0.0.4) of one snapshot."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(snap))
    return generate_latest(registry)


def health(snap: Snapshot) -> tuple[int, dict[str, Any]]:
    """(HTTP status, JSON doc) of GET /v1/health for one snapshot (module docstring)."""
    silent = snap.silent
    doc = {"ok": snap.store_error is None, "store": snap.store_error or "ok", "gateways": len(snap.gateways),
           "silent_after_s": snap.silent_after_s, "silent_count": len(silent),
           "silent": [g["gateway_id"] for g in silent[:LIST_CAP]],
           "chain_gaps": [g["gateway_id"] for g in snap.with_gaps[:LIST_CAP]]}
    return (200 if snap.store_error is None else 503), doc
