"""MQTT 5 uplink (gateway.record.uplink_mqtt) against a real mosquitto broker started by the tests.

The broker (hil.mqtt_broker.Broker) runs from a mosquitto.conf written into tmp_path: a plain listener and a TLS
listener (certificate from gateway.tlsutil.make_self_signed) on 127.0.0.1, anonymous,
no persistence. A paho subscriber in the test hands every message it receives to the
reference receiver's verification core (gateway.regulator.receiver.Receiver: signature, seq,
chain, dedup), so "exactly once" is judged by the same strict code as over HTTPS.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import queue
import socket
import threading
import time
from collections import Counter
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from gateway.record.batches import Batcher
from gateway.config import ConfigError, load_config
from gateway.model import Quality, Reading
from gateway.regulator.receiver import Receiver
from gateway.chain.signing import decode_unverified
from gateway.record.store import Store
from gateway.record.uplink import AuthError, Forwarder, PermanentError, RetryableError
from gateway.record.uplink_mqtt import MqttUplink, parse_broker_url
from hil.mqtt_broker import MOSQUITTO, Broker
from conftest import wait_for as _wait_for

# CI installs mosquitto (.ci/run): there a missing broker is a failure, not a skip
pytestmark = [pytest.mark.skipif(MOSQUITTO is None and not os.environ.get("CI"),
                                 reason="mosquitto not installed (.ci/run installs it)"),
              pytest.mark.timeout(90)]

GW = "tankfarm-mqtt"
T0 = 1_760_000_000.0
wait_for = functools.partial(_wait_for, step_s=0.05)   # this file polls every 50 ms


class Subscriber:
    """A paho MQTT 5 subscriber (QoS 1) that queues (payload, properties) of every message; reconnects."""

    def __init__(self, port: int, topic: str = "hazard/+/batches") -> None:
        self.q: queue.Queue = queue.Queue()
        self.subscribed = threading.Event()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"regulator-{port}", protocol=mqtt.MQTTv5)
        self.c.reconnect_delay_set(1, 1)
        self.c.on_connect = lambda c, u, f, rc, p: (self.subscribed.clear(), c.subscribe(topic, qos=1))
        self.c.on_subscribe = lambda c, u, mid, rcs, p: self.subscribed.set()
        self.c.on_message = lambda c, u, m: self.q.put((bytes(m.payload), m.properties, m.topic))
        self.port = port

    def start(self) -> "Subscriber":
        self.c.connect("127.0.0.1", self.port, keepalive=5)
        self.c.loop_start()
        assert self.subscribed.wait(5)
        return self

    def stop(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()

    def drain_into(self, rx: Receiver, seen: list) -> None:
        """Feed every queued message to the strict receiver core; each must be accepted or a duplicate."""
        while True:
            try:
                payload, props, topic = self.q.get_nowait()
            except queue.Empty:
                return
            status, doc = rx.submit(payload)
            assert status == 200, (status, doc)
            user = dict(props.UserProperty)
            header, body = decode_unverified(payload.decode())
            assert topic == f"hazard/{GW}/batches"
            assert props.ContentType == "application/jose" and user["seq"] == str(body["seq"]) \
                and user["kid"] == header["kid"]
            seen.append((body["seq"], doc["status"]))


@pytest.fixture()
def broker(tmp_path: Path):
    b = Broker(tmp_path / "broker")
    yield b
    b.close()


def rec(i: int) -> dict:
    return Reading(tag=f"TT-{i % 10}", value=i, unit="degC", quality=Quality.GOOD, ts=T0 + i / 10).to_record()


def stored_readings(store: Store) -> Counter:
    with store._block:
        rows = store._b().execute("SELECT tag, ts, value FROM readings").fetchall()
    return Counter((t, ts, json.loads(v)) for t, ts, v in rows)


def received_readings(rx: Receiver) -> Counter:
    return Counter((r["tag"], r["ts"], r["value"]) for _, _, r in rx.store.readings(GW))


def test_broker_url_rules() -> None:
    assert parse_broker_url("mqtts://broker.example") == (True, "broker.example", 8883)
    assert parse_broker_url("mqtt://127.0.0.1:1884") == (False, "127.0.0.1", 1884)
    for bad in ("mqtt://broker.example", "https://x", "mqtts://x/topic", "mqtts://"):
        with pytest.raises(ValueError):
            parse_broker_url(bad)


def test_config_selects_mqtt_and_checks_its_url(tmp_path: Path) -> None:
    base = ("gateway: {id: site-1}\nkeys: {private_key: k.pem}\nuplink:\n  transport: mqtt\n  url: %s\n"
            "devices:\n  - {name: plc, protocol: modbus_tcp, host: 127.0.0.1, tags: [{name: a, address: 40001}]}\n")
    f = tmp_path / "g.yaml"
    f.write_text(base % "mqtts://broker.example:8883")
    cfg = load_config(f)
    assert cfg.model.uplink.transport == "mqtt" and cfg.model.uplink.topic == "hazard/{gateway_id}/batches"
    f.write_text(base % "mqtt://broker.example")
    with pytest.raises(ConfigError) as ei:
        load_config(f)
    assert f"{f}:5:8: uplink.url:" in str(ei.value) and "loopback" in str(ei.value)
    f.write_text(base.replace("transport: mqtt", "transport: https") % "mqtts://broker.example")
    with pytest.raises(ConfigError, match="https"):
        load_config(f)


@pytest.mark.e2e
async def test_no_unbounded_wait_on_a_silent_broker(tmp_path: Path, signing_keys) -> None:
    """A peer that accepts TCP but never sends CONNACK: send() fails within the timeout (retryable)."""
    signer, _ = signing_keys
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    try:
        up = MqttUplink(f"mqtt://127.0.0.1:{srv.getsockname()[1]}", GW, timeout_s=0.5)
        jws = signer.sign({"gateway_id": GW, "seq": 1, "prev": None, "created_at": "2025-01-01T00:00:00.000Z",
                           "config_hash": "c", "clock": {}, "readings": [], "events": [], "gaps": []})
        t = time.monotonic()
        with pytest.raises(RetryableError, match="CONNACK"):
            await up.send(jws)
        assert time.monotonic() - t < 2.5
        await up.aclose()
    finally:
        srv.close()


@pytest.mark.e2e
async def test_mqtt_tls_batches_arrive_once_verified(tmp_path: Path, signing_keys, broker: Broker) -> None:
    signer, trust = signing_keys
    broker.start()
    sub = Subscriber(broker.port).start()
    rx = Receiver(tmp_path / "rx.sqlite", trust)
    with Store(tmp_path / "gw.sqlite", commit_interval_s=0.05) as st:
        for i in range(1000):
            st.put_reading(rec(i))
        assert st.flush(10)
        up = MqttUplink(f"mqtts://127.0.0.1:{broker.tls_port}", GW, ca_file=str(broker.cafile), timeout_s=3)
        fw = Forwarder(st, Batcher(st, signer, GW, lambda: "cfg", max_readings=40), up, idle_s=0.05)
        task = asyncio.create_task(fw.run())
        seen: list = []
        await wait_for(lambda: st.stats()["batches_unacked"] == 0 and st.stats()["readings_unsent"] == 0, 30,
                       "all batches acknowledged")
        fw.stop()
        await task
        await up.aclose()
        await asyncio.sleep(0.2)
        sub.drain_into(rx, seen)
        assert [s for s, _ in seen] == list(range(1, 26))      # 1000 / 40, in order, each once
        assert up.pubacks == fw.sent == 25 and up.connects == 1
        assert received_readings(rx) == stored_readings(st)
        assert max(received_readings(rx).values()) == 1
    sub.stop()
    rx.close()


@pytest.mark.e2e
async def test_mqtt_broker_down_backoff_then_restart_resumes_nothing_lost(tmp_path: Path, signing_keys,
                                                                         broker: Broker) -> None:
    signer, trust = signing_keys
    attempts: list[float] = []

    class CountingUplink(MqttUplink):   # a spy on the real transport: records when each attempt starts
        async def send(self, jws: str):
            attempts.append(time.monotonic())
            return await super().send(jws)

    rx = Receiver(tmp_path / "rx.sqlite", trust)
    seen: list = []
    with Store(tmp_path / "gw.sqlite", commit_interval_s=0.05) as st:
        n = 0

        async def poll() -> None:   # 10 tags every 50 ms, like a poll tick, for the whole test
            nonlocal n
            while True:
                for _ in range(10):
                    st.put_reading(rec(n))
                    n += 1
                await asyncio.sleep(0.05)

        poller = asyncio.create_task(poll())
        up = CountingUplink(f"mqtts://127.0.0.1:{broker.tls_port}", GW, ca_file=str(broker.cafile), timeout_s=2)
        fw = Forwarder(st, Batcher(st, signer, GW, lambda: "cfg", max_readings=50), up, idle_s=0.05,
                       min_backoff_s=0.1, max_backoff_s=0.8)
        task = asyncio.create_task(fw.run())
        # 1. broker down: every attempt fails, retried with growing delays, nothing counts as sent
        await asyncio.sleep(3.0)
        assert fw.sent == 0 and fw.consecutive_failures >= 4 and "Connection refused" in (fw.last_error or "")
        gaps = [b - a for a, b in zip(attempts, attempts[1:])]
        assert len(gaps) >= 3 and gaps[-1] > gaps[0] and max(gaps) <= 0.8 + 0.3
        # 2. broker up (subscriber first): the backlog drains
        broker.start()
        sub = Subscriber(broker.port).start()
        await wait_for(lambda: fw.sent >= 5, 20, "uploads after the broker came up")
        sub.drain_into(rx, seen)
        # 3. broker restarted mid-stream: the uplink notices, retries, reconnects and resumes
        broker.stop()
        sent_at_stop = fw.sent
        await asyncio.sleep(1.0)
        broker.start()
        sub.subscribed.wait(5)
        await wait_for(lambda: fw.sent > sent_at_stop + 5, 20, "uploads after the broker restart")
        assert up.connects >= 2
        poller.cancel()
        assert st.flush(10)
        await wait_for(lambda: st.stats()["readings_unsent"] == 0 and st.stats()["batches_unacked"] == 0, 30,
                       "the backlog drained")
        fw.stop()
        await task
        await up.aclose()
        await asyncio.sleep(0.3)
        sub.drain_into(rx, seen)
        sub.stop()
        stored = stored_readings(st)
        last_seq = st.stats()["last_acked_seq"]
    got = received_readings(rx)
    assert sum(stored.values()) == n > 1000
    assert got == stored and max(got.values()) == 1           # every reading exactly once
    assert rx.store.last_seq(GW) == last_seq                   # seq 1..last, no gap (receiver enforces +1, chain)
    assert sorted({s for s, st_ in seen if st_ == "accepted"}) == list(range(1, last_seq + 1))
    rx.close()


@pytest.mark.e2e
async def test_mqtt_not_authorized_holds_and_is_not_dead_lettered(tmp_path: Path, signing_keys) -> None:
    """A broker ACL that forbids the topic answers PUBACK 0x87: the broker refuses this gateway, not the batch:
    AuthError (the Forwarder holds with one alarm and retries; nothing is set aside)."""
    signer, _ = signing_keys
    b = Broker(tmp_path / "acl-broker", acl="topic read hazard/#\n").start()
    try:
        up = MqttUplink(f"mqtt://127.0.0.1:{b.port}", GW, timeout_s=3)
        jws = signer.sign({"gateway_id": GW, "seq": 1, "prev": None, "created_at": "2025-01-01T00:00:00.000Z",
                           "config_hash": "c", "clock": {}, "readings": [], "events": [], "gaps": []})
        with pytest.raises(AuthError) as ei:
            await up.send(jws)
        assert ei.value.status == 0x87 and not isinstance(ei.value, PermanentError)
        await up.aclose()
    finally:
        b.close()


def test_platform_profiles_registry_and_config(tmp_path: Path) -> None:
    from gateway.record.envelopes import PROFILES, JwsProfile, get_profile

    p = get_profile("jws")
    assert isinstance(p, JwsProfile) and set(PROFILES) == {"jws"}        # only our own format ships
    assert p.envelope("a.b.c", {}) == ("application/jose", b"a.b.c")
    ack = p.parse_ack(200, b'{"gateway_id": "g", "seq": 3, "status": "duplicate", "hash": "h"}', "g", 3)
    assert (ack.gateway_id, ack.seq, ack.status, ack.hash) == ("g", 3, "duplicate", "h")
    with pytest.raises(ValueError):
        p.parse_ack(200, b"<html>ok</html>", "g", 3)                      # not an ack: never counts as sent
    with pytest.raises(ValueError, match="known: jws"):
        get_profile("zj-province")
    f = tmp_path / "g.yaml"
    f.write_text("gateway: {id: site-1}\nkeys: {private_key: k.pem}\nuplink:\n  url: https://r.example\n"
                 "  profile: zj-province\ndevices:\n  - {name: plc, protocol: modbus_tcp, host: 127.0.0.1,"
                 " tags: [{name: a, address: 40001}]}\n")
    with pytest.raises(ConfigError) as ei:
        load_config(f)
    assert f"{f}:5:12: uplink.profile: unknown platform profile 'zj-province'" in str(ei.value)
