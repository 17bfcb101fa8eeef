"""The receiver's MQTT 5 ingest (gateway.regulator.mqtt_ingest) end to end: a real mosquitto (hil.mqtt_broker), two
real receiver processes (``python -m gateway.cli receiver --mqtt ...``, one over plain MQTT on loopback, one over
TLS with HTTP beside it) in one shared-subscription group on one store (SQLite, then PostgreSQL: hil.pgcluster),
three gateways publishing pre-signed chains through the real uplink (gateway.record.uplink_mqtt.MqttUplink).

What must hold: every (gateway, seq) is stored once with the exact bytes and the exported chains verify; both
processes took a share (their per-batch log lines); a process killed with SIGKILL in the middle loses nothing (its
share waits in its persistent session and comes once it is back under the same client id); a forged and a
malformed batch are refused, counted, never stored, and their answers are published (Response Topic +
Correlation Data, else hazard/<id>/answers, with the receiver's signed rejection for the malformed one).
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import signal
import sqlite3
import subprocess
import sys
import urllib.request
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.chain.rejection import body_sha256, load_receiver_key, verify_rejection
from gateway.chain.signing import Signer, build_payload, chain_hash, keygen
from gateway.model import Quality, Reading
from gateway.record.uplink_mqtt import MqttUplink
from hil import pgcluster
from hil.mqtt_broker import MOSQUITTO, Broker
from conftest import ROOT, free_port, gateway_signers, run_cli, sql_rows, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120),
              pytest.mark.skipif(MOSQUITTO is None and not os.environ.get("CI"),
                                 reason="mosquitto not installed (.ci/run installs it)")]

GATEWAYS = ("plant-a", "plant-b", "plant-c")
N = 30
T0 = 1_760_000_000.0


def make_chain(signer: Signer, gid: str, n: int) -> list[str]:
    """Batches 1..n of ``gid``, each linked to the previous one, three readings each."""
    out: list[str] = []
    prev = None
    for seq in range(1, n + 1):
        readings = [Reading(tag=f"T{k}.level", value=seq + k / 10, unit="m", quality=Quality.GOOD,
                            ts=T0 + seq + k / 100).to_record() for k in range(3)]
        jws = signer.sign(build_payload(gid, seq, prev, "cfg", readings, created_at=T0 + seq))
        out.append(jws)
        prev = chain_hash(jws)
    return out


class Rx:
    """One receiver process: ``python -m gateway.cli receiver --mqtt ...``; its log file collects every run."""

    def __init__(self, tmp: Path, name: str, url: str, store: str, trust: Path, signing_key: Path,
                 *extra: str) -> None:
        self.name, self.log = name, tmp / f"{name}.log"
        self.args = [sys.executable, "-m", "gateway.cli", "receiver", "--mqtt", url, "--mqtt-group", "g",
                     "--mqtt-client-id", name, "--store", store, "--trust", str(trust), "--signing-key",
                     str(signing_key), *extra]
        self.proc: subprocess.Popen | None = None
        self.runs = 0

    async def start(self) -> "Rx":
        with open(self.log, "ab") as fh:
            self.proc = subprocess.Popen(self.args, cwd=str(ROOT), stdout=fh, stderr=fh)
        self.runs += 1
        await wait_for(lambda: self.text().count(f"mqtt {self.name}: subscribed") >= self.runs, 20,
                       f"{self.name} subscribed", proc=self.proc, log=self.log)
        return self

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def handled(self, *outcomes: str) -> int:
        """Batches this process committed (accepted or parked; or ``outcomes``), from its per-batch log lines."""
        want = [f": {o}" for o in outcomes or ("200 accepted", "202 parked")]
        return sum(1 for line in self.text().splitlines()
                   if f"mqtt {self.name}: hazard/" in line and any(w in line for w in want))

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int | None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode if self.proc is not None else None


class Listener:
    """A paho MQTT 5 client subscribed to the answers: queue of (topic, JSON doc, correlation data)."""

    def __init__(self, port: int, *filters: str) -> None:
        self.q: queue.Queue = queue.Queue()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="answers-listener", protocol=mqtt.MQTTv5)
        self.c.on_message = lambda c, u, m: self.q.put((m.topic, json.loads(m.payload),
                                                         getattr(m.properties, "CorrelationData", None)))
        self.c.connect("127.0.0.1", port)
        for f in filters:
            self.c.subscribe(f, qos=1)
        self.c.loop_start()

    def publish(self, topic: str, payload: bytes, props: Properties | None = None) -> None:
        self.c.publish(topic, payload, qos=1, properties=props).wait_for_publish(5)

    def answers(self) -> list[tuple[str, dict, bytes | None]]:
        out = []
        while not self.q.empty():
            out.append(self.q.get_nowait())
        return out

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def _store_target(kind: str, tmp: Path, stack: list) -> str:
    if kind == "sqlite":
        return str(tmp / "rx.sqlite")
    why = pgcluster.available()
    if why is not None:
        if os.environ.get("CI"):
            raise AssertionError(why)
        pytest.skip(why)
    pg = pgcluster.PgCluster(tmp / "pg").start()
    stack.append(pg)
    return pg.createdb("rx")


@pytest.mark.parametrize("store_kind", ["sqlite", "postgresql"])
async def test_two_receivers_share_the_load_survive_sigkill_and_refuse_forgeries(tmp_path: Path,
                                                                                 store_kind: str) -> None:
    trust, signers = gateway_signers(tmp_path, GATEWAYS)   # each key bound to its gateway
    rx_kid = keygen(tmp_path / "rxkey")
    chains = {gid: make_chain(signers[gid], gid, N) for gid in GATEWAYS}

    stack: list = []
    broker = Broker(tmp_path / "broker").start()
    listener = None
    rxs: list[Rx] = []
    try:
        store = _store_target(store_kind, tmp_path, stack)
        listener = Listener(broker.port, "hazard/+/answers", "test/replies/#")
        key = tmp_path / "rxkey" / "private.pem"
        http_port = free_port()
        rxs = [Rx(tmp_path, "rx-a", f"mqtt://127.0.0.1:{broker.port}", store, trust, key),
               # rx-b: over TLS (the broker's certificate pinned), and HTTP beside it
               Rx(tmp_path, "rx-b", f"mqtts://127.0.0.1:{broker.tls_port}", store, trust, key,
                  "--mqtt-ca", str(broker.cafile), "--listen", f"127.0.0.1:{http_port}")]
        for rx in rxs:
            await rx.start()
        a, b = rxs
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v1/health", timeout=5) as resp:
            assert resp.status == 200
        uplinks = {gid: MqttUplink(f"mqtt://127.0.0.1:{broker.port}", gid, timeout_s=5) for gid in GATEWAYS}

        async def publish(seqs: range) -> None:
            async def one(gid: str) -> None:
                for s in seqs:
                    ack = await uplinks[gid].send(chains[gid][s - 1])
                    assert ack.seq == s     # the broker's PUBACK: the gateway counts it sent from here on
            await asyncio.gather(*(one(g) for g in GATEWAYS))

        def stored() -> list[tuple]:
            return sql_rows(Path(store), "SELECT gateway_id, seq, jws FROM batches") if store_kind == "sqlite" \
                else _pg_rows(store)

        # 1. both receivers up: the first third, spread over both
        await publish(range(1, 11))
        await wait_for(lambda: len(stored()) == 30, 20, "the first 30 batches stored", in_thread=True)
        # 2. rx-a killed in the middle of the second third; its share waits in its session at the broker
        before = a.handled()
        task = asyncio.create_task(publish(range(11, 21)))
        await wait_for(lambda: a.handled() >= before + 3, 20, "rx-a busy in the second third")
        a.kill()
        await task
        await publish(range(21, N + 1))
        await asyncio.sleep(0.5)
        held = 3 * N - len(stored())
        assert held > 0, "rx-a's share should wait at the broker while it is down"
        # 3. rx-a back under the same client id: its session is handed back and everything is stored
        await a.start()
        await wait_for(lambda: len(stored()) == 3 * N, 30, "every batch stored", in_thread=True,
                       detail=lambda: a.text()[-2000:])

        # 4. a forged batch (another batch's signature) with Response Topic + Correlation Data, and a malformed one
        #    (signed by the gateway's key but not a batch: typ) on the default answers topic
        header = chains["plant-a"][0].split(".")[0]
        forged = f"{header}.{chains['plant-a'][1].split('.')[1]}.{chains['plant-a'][2].split('.')[2]}"
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = "test/replies/plant-a"
        props.CorrelationData = b"corr-42"
        listener.publish("hazard/plant-a/batches", forged.encode(), props)
        bad = signers["plant-b"].sign_jws({"gateway_id": "plant-b", "seq": 99, "readings": "x"}, "text/plain")
        listener.publish("hazard/plant-b/batches", bad.encode())
        got: list = []

        def both_answers() -> bool:
            got.extend(listener.answers())
            return any(t == "test/replies/plant-a" for t, _, _ in got) and \
                any(t == "hazard/plant-b/answers" and d.get("http_status") == 400 for t, d, _ in got)

        await wait_for(both_answers, 15, "the answers to the forged and the malformed batch",
                       detail=lambda: repr(got[-5:]))
        reply = next(d for t, d, c in got if t == "test/replies/plant-a" and c == b"corr-42")
        assert reply["http_status"] == 401 and reply["error"].startswith("signature")
        refusal = next(d for t, d, _ in got if t == "hazard/plant-b/answers" and d.get("http_status") == 400)
        claims = verify_rejection(refusal["rejection"], load_receiver_key(tmp_path / "rxkey" / f"{rx_kid}.jwk"),
                                  gateway_id="plant-b", seq=99, sent_sha256=body_sha256(bad.encode()), status=400)
        assert claims["status"] == 400
        # the committed batches were answered too, on each gateway's answers topic
        assert {d["seq"] for t, d, _ in got if t == "hazard/plant-c/answers" and d.get("status") in
                ("accepted", "parked", "duplicate")} <= set(range(1, N + 1))

        for rx in rxs:
            assert rx.stop() == 0
        rows = stored()

        # exactly once, the exact bytes, nothing of the refused ones, nothing left parked
        assert sorted((g, s) for g, s, _ in rows) == sorted((g, s) for g in GATEWAYS for s in range(1, N + 1))
        assert all(jws == chains[g][s - 1] for g, s, jws in rows)
        # the chains export and verify offline, byte for byte
        out = tmp_path / "export"
        code, _, err = await run_cli("receiver", "export", "--store", store, "--out", str(out))
        assert code == 0, err
        assert sorted(f.name for f in out.iterdir()) == sorted(f"{g}-{s}.jws" for g in GATEWAYS
                                                              for s in range(1, N + 1))
        assert all((out / f"{g}-{s}.jws").read_text() == chains[g][s - 1] for g in GATEWAYS for s in range(1, N + 1))
        code, text, err = await run_cli("verify", "--trust", str(trust), str(out))
        assert code == 0, text + err
    finally:
        for rx in rxs:
            rx.stop()
        if listener is not None:
            listener.close()
        broker.close()
        for pg in stack:
            pg.stop()

    # both took a share (rx-a before and after its SIGKILL); the refusals were counted (the stats lines at stop)
    assert a.handled() > 0 and b.handled() > 0, (a.handled(), b.handled())
    # every batch was decided by one of them: a commit that SIGKILL beat to its log line came again as "duplicate"
    assert sum(rx.handled("200 accepted", "202 parked", "200 duplicate") for rx in (a, b)) >= 3 * N
    stats = [line for line in (a.text() + b.text()).splitlines() if "receiver stats:" in line]
    counts: dict[str, int] = {}
    for word in " ".join(stats).split():
        k, eq, v = word.partition("=")
        if eq and v.isdigit():
            counts[k] = counts.get(k, 0) + int(v)
    assert counts.get("rejected_signature") == 1, stats
    assert counts.get("rejected_malformed", 0) + counts.get("rejected_payload", 0) == 1, stats


def _pg_rows(url: str) -> list[tuple]:
    import psycopg

    with psycopg.connect(url) as conn:
        return conn.execute("SELECT gateway_id, seq, jws FROM batches").fetchall()


async def test_busy_store_is_not_acknowledged_the_broker_sends_it_again_and_a_leaving_member_ends_its_session(
        tmp_path: Path, signing_keys) -> None:
    """In process (the same MqttIngest the command line runs), on a real broker and a real SQLite store that another
    connection holds locked: the batch is submitted again and again, never acknowledged; the member stops; the
    broker hands the unacknowledged message to the same client id when it is back, and once stored and
    acknowledged it never comes again. ``leave`` ends the session: the broker then has nobody for the topic."""
    from gateway.record.uplink import RetryableError
    from gateway.regulator.mqtt_ingest import MqttIngest, MqttIngestSettings
    from gateway.regulator.receiver import Receiver

    signer, trust = signing_keys
    gid = "plant-busy"
    chain = make_chain(signer, gid, 3)
    broker = Broker(tmp_path / "broker").start()
    rx = Receiver(tmp_path / "rx.sqlite", trust, busy_timeout_s=0.1)
    settings = MqttIngestSettings(url=f"mqtt://127.0.0.1:{broker.port}", client_id="rx-1", group="g",
                                  retry_min_s=0.1, retry_max_s=0.3)
    up = MqttUplink(f"mqtt://127.0.0.1:{broker.port}", gid, timeout_s=5)
    lock = sqlite3.connect(tmp_path / "rx.sqlite", isolation_level=None)
    ingests: list[MqttIngest] = []
    try:
        first = MqttIngest(rx, settings).start()
        ingests.append(first)
        assert first.wait_subscribed(5)
        lock.execute("BEGIN IMMEDIATE")                      # the store is busy (the HTTP receiver's 503)
        await up.send(chain[0])
        await wait_for(lambda: first.stats().get("retried", 0) >= 3, 10, "submits of the busy store's batch")
        assert rx.store.last_seq(gid) == 0 and first.stats().get("acked", 0) == 0
        first.stop()                                         # still not acknowledged: it stays in the session
        lock.execute("ROLLBACK")

        again = MqttIngest(rx, settings).start()             # same client id: the broker sends it again (DUP)
        ingests.append(again)
        await wait_for(lambda: again.stats().get("acked", 0) == 1, 10, "the batch stored and acknowledged")
        assert rx.store.last_seq(gid) == 1 and again.stats()["accepted"] == 1
        await up.send(chain[1])
        await wait_for(lambda: again.stats().get("acked", 0) == 2, 10, "the next batch")
        again.stop()

        third = MqttIngest(rx, settings).start()             # acknowledged batches never come again
        ingests.append(third)
        assert third.wait_subscribed(5)
        await up.send(chain[2])
        await wait_for(lambda: third.stats().get("acked", 0) == 1, 10, "the third batch")
        await asyncio.sleep(0.3)
        assert third.stats().get("received") == 1 and "duplicate" not in third.stats()
        assert [b.seq for b in rx.store.batches(gid)] == [1, 2, 3]
        third.stop(leave=True)                               # retired: the broker keeps no session for it
        with pytest.raises(RetryableError, match="no matching subscribers"):
            await up.send(make_chain(signer, gid, 4)[3])
    finally:
        for ing in ingests:
            ing.stop()
        await up.aclose()
        lock.close()
        rx.close()
        broker.close()


@pytest.mark.parametrize("args, message", [
    ([], "--listen HOST:PORT and/or --mqtt URL"),
    (["--mqtt", "mqtt://127.0.0.1:1"], "--mqtt-client-id"),
    (["--mqtt-group", "g", "--listen", "127.0.0.1:0"], "--mqtt-group needs --mqtt URL"),
    (["--mqtt", "mqtt://broker.example", "--mqtt-client-id", "a"], "only to a loopback broker"),
    (["--mqtt", "mqtt://127.0.0.1:1", "--mqtt-client-id", "a", "--mqtt-group", "a/b"], "share name"),
    (["--mqtt", "mqtt://127.0.0.1:1", "--mqtt-client-id", "a", "--mqtt-topic", "hazard/#/x"], "topic filter"),
    (["--mqtt", "mqtts://127.0.0.1:1", "--mqtt-client-id", "a", "--mqtt-cert", "c.pem"], "--mqtt-key"),
    (["--mqtt", "mqtts://127.0.0.1:1", "--mqtt-client-id", "a", "--mqtt-ca", "missing.pem"], "mqtt TLS files"),
])
async def test_bad_mqtt_flags_are_one_line_and_exit_2(tmp_path: Path, signing_keys, args: list[str],
                                                      message: str) -> None:
    _, trust = signing_keys
    code, out, err = await run_cli("receiver", "--store", str(tmp_path / "rx.sqlite"), "--trust", str(trust), *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
