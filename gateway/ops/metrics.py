"""Optional Prometheus metrics (config ``metrics: {listen: 127.0.0.1:9108}``).

Served by prometheus-client's HTTP server in its own thread, text exposition
format 0.0.4 at ``/metrics``. The endpoint has no authentication, so the config
refuses a non-loopback address unless ``allow_remote: true`` (gateway.config
MetricsSection).

The scrape thread never touches the gateway's live objects: :func:`serve_metrics`
reads the gateway's latest status snapshot (``last_status``, taken once a
second with the store statistics in a worker thread) and the collector serves it.

Metrics (all prefixed ``hazard_gateway_``):

=================================  =======  ==========================================
polls_total{device,protocol}       counter  poll cycles of each device
bad_readings_total{device,...}     counter  readings of BAD / uncertain quality
readings_total                     counter  readings handed to the record path
active_alarms{priority}            gauge    active (incl. unacknowledged) alarms
unsent_readings                    gauge    readings not yet acknowledged by the receiver
unacked_batches                    gauge    signed batches sent but not acknowledged
last_acked_seq                     gauge    seq of the last acknowledged batch (-1: none)
dropped_records_total              counter  records the bounded buffer had to drop
uplink_consecutive_failures        gauge    failed uploads in a row
up                                 gauge    1 while the gateway runs
tag_value{tag,device,unit}         gauge    latest engineering value of a numeric or bool
                                            tag (absent while its quality is bad: no value)
tag_quality{tag,device}            gauge    2 good, 1 uncertain, 0 bad (OPC UA Part 8 classes)
tag_age_seconds{tag,device}        gauge    age of the latest reading when the snapshot was taken
device_up{device,protocol}         gauge    1 while the device's link is up
interlock_tripped{interlock}       gauge    1 tripped (or cleared, awaiting reset)
interlock_bypassed{interlock}      gauge    1 while bypassed (operator, reason and expiry: status)
build_info{version,gateway_id,     gauge    always 1; labels say what runs
           config_hash}
=================================  =======  ==========================================
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from gateway.runtime.ports import StatusSource
from gateway.shipped import version

log = logging.getLogger("hazard_gateway.metrics")

PREFIX = "hazard_gateway_"
#: tag_quality's value per quality class
QUALITY_LEVEL = {"good": 2, "uncertain": 1, "bad": 0}


def parse_listen(listen: str) -> tuple[str, int]:
    """'127.0.0.1:9108' / '[::1]:9108' -> (host, port). ValueError (one line) otherwise."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"metrics listen {listen!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def from_status(status: dict[str, Any]) -> dict[str, Any]:
    """What the collector serves, from a status snapshot (Gateway.status; gateway.runtime.ports): polls, bad
    readings and link state per device, each tag's value (numbers and bools only), quality level and age, each
    interlock's state, gateway id and config hash, active alarm counts per priority, readings queued, the store counters (none
    when the store did not answer) and the uplink's consecutive failures (None without an uplink)."""
    prio: dict[str, int] = {}
    for a in status.get("alarms") or []:
        p = str(a.get("priority", "") or "")
        prio[p] = prio.get(p, 0) + 1
    store = status.get("store") or {}
    uplink = status.get("uplink")
    tags = {}
    for name, t in (status.get("tags") or {}).items():
        v = t.get("value")
        tags[name] = {"device": str(t.get("device") or ""), "unit": str(t.get("unit") or ""),
                      "quality": QUALITY_LEVEL.get(str(t.get("quality")), 0), "age_s": t.get("age_s"),
                      # a number or a bool is a sample; a string or an array is not a time series
                      "value": float(v) if isinstance(v, (int, float)) else None}
    return {
        "gateway_id": str(status.get("gateway_id") or ""), "config_hash": str(status.get("config_hash") or ""),
        "devices": {name: {k: st.get(k) for k in ("protocol", "polls", "bad", "state")}
                    for name, st in (status.get("devices") or {}).items()},
        "tags": tags,
        "interlocks": {str(il.get("name")): str(il.get("state")) for il in status.get("interlocks") or []},
        "alarms": prio,
        "readings_queued": status.get("readings_queued", 0),
        "store": {} if "error" in store else dict(store),
        "uplink_failures": None if uplink is None else uplink.get("consecutive_failures"),
        "taken_at": time.time(),
    }


class GatewayCollector:
    """A prometheus_client collector over the latest :func:`snapshot`."""

    def __init__(self) -> None:
        self.snap: dict[str, Any] | None = None

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        s = self.snap
        up = GaugeMetricFamily(PREFIX + "up", "1 while the gateway runs and has taken a snapshot")
        up.add_metric([], 1.0 if s else 0.0)
        yield up
        if not s:
            return
        polls = CounterMetricFamily(PREFIX + "polls", "poll cycles of each device", labels=["device", "protocol"])
        bad = CounterMetricFamily(PREFIX + "bad_readings", "readings of bad or uncertain quality",
                                  labels=["device", "protocol"])
        for name, st in sorted(s["devices"].items()):
            polls.add_metric([name, str(st.get("protocol", ""))], float(st.get("polls", 0)))
            bad.add_metric([name, str(st.get("protocol", ""))], float(st.get("bad", 0)))
        yield polls
        yield bad
        info = GaugeMetricFamily(PREFIX + "build_info", "what runs: version, gateway id, config hash (always 1)",
                                 labels=["version", "gateway_id", "config_hash"])
        info.add_metric([version(), s["gateway_id"], s["config_hash"][:12]], 1.0)
        yield info
        up_dev = GaugeMetricFamily(PREFIX + "device_up", "1 while the device's link is up", labels=["device", "protocol"])
        for name, st in sorted(s["devices"].items()):
            up_dev.add_metric([name, str(st.get("protocol", ""))], 1.0 if st.get("state") == "up" else 0.0)
        yield up_dev
        value = GaugeMetricFamily(PREFIX + "tag_value", "latest engineering value (absent while bad)",
                                  labels=["tag", "device", "unit"])
        quality = GaugeMetricFamily(PREFIX + "tag_quality", "2 good, 1 uncertain, 0 bad", labels=["tag", "device"])
        age = GaugeMetricFamily(PREFIX + "tag_age_seconds", "age of the latest reading", labels=["tag", "device"])
        for name, t in sorted(s["tags"].items()):
            if t["value"] is not None:
                value.add_metric([name, t["device"], t["unit"]], t["value"])
            quality.add_metric([name, t["device"]], float(t["quality"]))
            if t["age_s"] is not None:
                age.add_metric([name, t["device"]], float(t["age_s"]))
        yield value
        yield quality
        yield age
        tripped = GaugeMetricFamily(PREFIX + "interlock_tripped", "1 tripped or awaiting reset",
                                    labels=["interlock"])
        bypassed = GaugeMetricFamily(PREFIX + "interlock_bypassed", "1 while bypassed", labels=["interlock"])
        for name, state in sorted(s["interlocks"].items()):
            tripped.add_metric([name], 1.0 if state in ("tripped", "tripped_cleared") else 0.0)
            bypassed.add_metric([name], 1.0 if state == "bypassed" else 0.0)
        yield tripped
        yield bypassed
        readings = CounterMetricFamily(PREFIX + "readings", "readings handed to the record path")
        readings.add_metric([], float(s["readings_queued"]))
        yield readings
        alarms = GaugeMetricFamily(PREFIX + "active_alarms", "active alarms by priority (1 highest)",
                                   labels=["priority"])
        for p in ("1", "2", "3", "4"):
            alarms.add_metric([p], float(s["alarms"].get(p, 0)))
        for p, n in s["alarms"].items():
            if p not in ("1", "2", "3", "4"):
                alarms.add_metric([p], float(n))
        yield alarms
        st = s["store"]
        for name, key, doc, default in (
                ("unsent_readings", "readings_unsent", "readings not yet acknowledged by the receiver", 0),
                ("unacked_batches", "batches_unacked", "signed batches not yet acknowledged", 0),
                ("last_acked_seq", "last_acked_seq", "seq of the last acknowledged batch (-1: none yet)", -1)):
            g = GaugeMetricFamily(PREFIX + name, doc)
            v = st.get(key)
            g.add_metric([], float(default if v is None else v))
            yield g
        dropped = CounterMetricFamily(PREFIX + "dropped_records", "records the bounded buffer had to drop")
        dropped.add_metric([], float(st.get("dropped") or 0))
        yield dropped
        if s["uplink_failures"] is not None:
            g = GaugeMetricFamily(PREFIX + "uplink_consecutive_failures", "failed uploads in a row")
            g.add_metric([], float(s["uplink_failures"]))
            yield g


async def serve_metrics(gw: StatusSource, listen: str, every_s: float = 1.0) -> None:
    """Serve /metrics on ``listen`` until cancelled, refreshing what it serves every ``every_s`` from the
    latest status snapshot (``gw.last_status``, taken every second; status.json gets it when it changed).

    A port that cannot be bound is logged (one line) and the gateway runs on without metrics."""
    from prometheus_client import CollectorRegistry, start_http_server

    host, port = parse_listen(listen)
    registry = CollectorRegistry(auto_describe=False)
    collector = GatewayCollector()
    registry.register(collector)
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        log.error("metrics: cannot listen on %s: %s", listen, exc.strerror or exc)
        return
    log.info("metrics on http://%s/metrics", listen)
    try:
        while True:
            snap = gw.last_status
            if snap is not None:
                fresh = from_status(snap)
                if not fresh["store"] and collector.snap:   # the store did not answer: serve its last counters
                    fresh["store"] = collector.snap["store"]
                collector.snap = fresh
            await asyncio.sleep(every_s)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=2)
