"""gateway.record.batches + gateway.record.uplink: chain, resend, and the Forwarder over real HTTPS (C14, C15)."""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import sqlite3
import time
from collections import Counter
from pathlib import Path

import pytest
from starlette.responses import JSONResponse, Response

from gateway.record.batches import Batcher
from gateway.model import Quality, Reading, rfc3339
from gateway.regulator.receiver import BackgroundReceiver, ReceiverLimits
from gateway.chain.rejection import (REJECTION_JWS_TYP, body_sha256, load_receiver_key, rejection_claims,
                               verify_rejection)
from gateway.chain.signing import Signer, chain_hash, decode_unverified, keygen, load_trust_dir, verify_batch
from gateway.record.store import Store, StoreError
from conftest import run_forwarder, wait_for as _wait_for
from gateway.record.uplink import (Forwarder, HttpsUplink, PermanentError, RetryableError,
                            parse_retry_after)

T0 = 1_760_000_000.0
GW = "tankfarm-01"


@pytest.fixture()
def keys(tmp_path: Path) -> tuple[Signer, Path]:
    kdir = tmp_path / "keys"
    kid = keygen(kdir)
    trust = tmp_path / "trust"
    trust.mkdir()
    shutil.copy(kdir / f"{kid}.jwk", trust / f"{kid}.jwk")
    return Signer.from_file(kdir / "private.pem"), trust


def make_receiver_key(tmp_path: Path, name: str) -> tuple[Path, Signer, dict]:
    """A receiver key as `hazard-gateway keygen` makes it: (private.pem for `--signing-key`, its Signer,
    load_receiver_key of the <kid>.jwk the gateway's uplink.receiver_key names)."""
    kdir = tmp_path / name
    kid = keygen(kdir)
    return kdir / "private.pem", Signer.from_file(kdir / "private.pem"), load_receiver_key(kdir / f"{kid}.jwk")


@pytest.fixture()
def rx_key(tmp_path: Path) -> tuple[Path, Signer, dict]:
    return make_receiver_key(tmp_path, "rxkey")


@pytest.fixture()
def other_gw(tmp_path: Path, keys) -> Signer:
    """A key the receiver's trust directory binds to another gateway (trust/other-gw/<kid>.jwk)."""
    _, trust = keys
    kdir = tmp_path / "other-gw-key"
    kid = keygen(kdir)
    (trust / "other-gw").mkdir()
    shutil.copy(kdir / f"{kid}.jwk", trust / "other-gw" / f"{kid}.jwk")
    return Signer.from_file(kdir / "private.pem")


class PoisonBatcher(Batcher):
    """Batch ``poison`` (when it carries readings) announces a key that the receiver binds to another
    gateway: a real content refusal (400 announce_binding, gateway.regulator.receiver) of a batch the receiver can
    name, so with a signing key it answers a signed rejection. The tombstone (no readings) is clean."""

    def __init__(self, *args, poison: int, other: Signer, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.poison, self.other = poison, other

    def _payload(self, seq, prev_jws, created_at, readings, events, gaps):
        p = super()._payload(seq, prev_jws, created_at, readings, events, gaps)
        if seq == self.poison and readings:
            p.update(self.other.announcement(self.gateway_id, seq))
        return p


def event_rows(db: Path) -> list[dict]:
    """Every event in the gateway store (call Store.flush first), oldest first."""
    conn = sqlite3.connect(db)
    rows = [json.loads(d) for (d,) in conn.execute("SELECT data FROM events ORDER BY id")]
    conn.close()
    return rows


def rec(i: int, tag: str = "GT-101") -> dict:
    return Reading(tag=tag, value=i, unit="%LEL", quality=Quality.GOOD, ts=T0 + i).to_record()


def fill(store: Store, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        assert store.put_reading(rec(i))
    assert store.flush(10)


def payload(jws: str) -> dict:
    return decode_unverified(jws)[1]


# ---------------------------------------------------------------- Batcher


def test_batch_chain_continues_across_restarts(tmp_path: Path, keys) -> None:
    signer, trust_dir = keys
    trust = load_trust_dir(trust_dir)
    db = tmp_path / "store.sqlite"
    seen = []
    for run in range(3):
        with Store(db, commit_interval_s=0.05) as st:
            fill(st, 25, start=run * 25)
            b = Batcher(st, signer, GW, lambda: "cfg-1", max_readings=10)
            while (batch := b.next_batch()) is not None:
                assert b.mark_acked(batch.seq) and not b.mark_acked(batch.seq)
                seen.append(batch.jws)
    assert len(seen) == 9                       # 3 x (10 + 10 + 5)
    prev = None
    for i, jws in enumerate(seen, start=1):
        p = verify_batch(jws, trust)
        assert p["seq"] == i and p["prev"] == prev and p["gateway_id"] == GW and p["config_hash"] == "cfg-1"
        assert p["clock"] == {"synchronised": None, "last_step_s": None} and p["gaps"] == []
        prev = chain_hash(jws)
    values = [r["value"] for jws in seen for r in payload(jws)["readings"]]
    assert values == list(range(75))            # oldest first, each once
    with Store(db) as st:
        s = st.stats()
    assert s["readings_unsent"] == 0 and s["last_acked_seq"] == 9 and s["batches_unacked"] == 0


def test_C14_resend_is_byte_identical_even_after_restart(tmp_path: Path, keys) -> None:
    signer, _ = keys
    db = tmp_path / "store.sqlite"
    with Store(db, commit_interval_s=0.05) as st:
        fill(st, 30)
        b = Batcher(st, signer, GW, lambda: "cfg", max_readings=10)
        first = b.next_batch()
        assert first is not None and first.seq == 1
        assert b.next_batch() == first          # not acked: the same stored JWS again
        assert st.stats()["readings_unsent"] == 30   # rows count as sent only after the ack
    with Store(db) as st:
        b = Batcher(st, signer, GW, lambda: "other-config", max_readings=10)
        again = b.next_batch()
        assert again is not None and again.jws == first.jws
        b.mark_acked(1)
        nxt = b.next_batch()
        assert nxt is not None and nxt.seq == 2 and payload(nxt.jws)["prev"] == chain_hash(first.jws)
        assert st.stats()["readings_unsent"] == 20


def test_events_jump_the_readings_backlog(tmp_path: Path, keys) -> None:
    signer, _ = keys
    with Store(tmp_path / "s.sqlite", commit_interval_s=0.05) as st:
        fill(st, 1200)
        b = Batcher(st, signer, GW, lambda: "cfg", max_readings=500)
        one = b.next_batch()
        b.mark_acked(one.seq)
        st.put_event({"kind": "trip", "interlock": "IL-3", "tag": "LT-201"})
        assert st.flush(5)
        two = b.next_batch()
        p = payload(two.jws)
        assert [e["kind"] for e in p["events"]] == ["trip"]
        assert [r["value"] for r in p["readings"]] == list(range(500, 1000))   # backlog still in order
        b.mark_acked(two.seq)
        three = payload(b.next_batch().jws)
        assert three["events"] == [] and len(three["readings"]) == 200


def test_malformed_record_is_quarantined_not_stalling_the_chain(tmp_path: Path, keys) -> None:
    signer, trust_dir = keys
    with Store(tmp_path / "s.sqlite", commit_interval_s=0.05) as st:
        st.put_reading(rec(1))
        st.put_reading({"tag": "PT-1", "value": 3.0, "unit": "bar", "quality": "bad", "reason": "x",
                        "ts": rfc3339(T0), "ts_source": "local"})      # bad quality carries a value
        st.put_reading(rec(2))
        assert st.flush(5)
        b = Batcher(st, signer, GW, lambda: "cfg")
        p = verify_batch(b.next_batch().jws, load_trust_dir(trust_dir))
    assert [r["value"] for r in p["readings"]] == [1, 2]
    assert [e["kind"] for e in p["events"]] == ["invalid_record"] and "PT-1" in p["events"][0]["record"]


# ---------------------------------------------------------------- uplink classification


def test_parse_retry_after() -> None:
    assert parse_retry_after("2", 60) == 2.0
    assert parse_retry_after("7200", 60) == 60.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 60, now=1445412470.0) == 10.0
    assert parse_retry_after("soon", 60) is None and parse_retry_after(None, 60) is None


def test_uplink_refuses_plain_http() -> None:
    with pytest.raises(ValueError, match="https"):
        HttpsUplink("http://127.0.0.1:1")


@pytest.mark.e2e
async def test_uplink_transport_errors_are_retryable(tmp_path: Path, keys) -> None:
    signer, trust_dir = keys
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()                                                     # nobody listens here
    up = HttpsUplink(f"https://127.0.0.1:{port}", timeout_s=1.0)
    with pytest.raises(RetryableError):
        await up.send("a.b.c")
    await up.aclose()
    # a receiver whose certificate is not the pinned CA: TLS verification fails -> retryable, never bypassed
    with BackgroundReceiver(tmp_path / "rx", trust_dir) as rx:
        up = HttpsUplink(rx.url, ca_file=True, timeout_s=2.0)
        with pytest.raises(RetryableError, match="CERTIFICATE_VERIFY_FAILED|certificate"):
            await up.send("a.b.c")
        await up.aclose()
        up = HttpsUplink(rx.url, ca_file=str(rx.cafile), timeout_s=2.0)
        with pytest.raises(PermanentError) as ei:
            await up.send("a.b.c")                                # 400 malformed
        assert ei.value.status == 400
        await up.aclose()


# ---------------------------------------------------------------- Forwarder over real HTTPS


async def wait_for(cond, timeout_s: float) -> None:
    """conftest.wait_for with ``cond`` called in a thread (it reads SQLite)."""
    await _wait_for(cond, timeout_s, step_s=0.05, in_thread=True)


def delivered(rx: BackgroundReceiver) -> tuple[list[int], Counter]:
    """(seqs in order, Counter of reading values) at the receiver, checking the hash chain."""
    batches = rx.receiver.store.batches(GW)
    prev = None
    for b in batches:
        p = payload(b.jws)
        assert p["prev"] == prev
        prev = b.hash
    values = Counter(r["value"] for _, _, r in rx.receiver.store.readings(GW))
    return [b.seq for b in batches], values




@pytest.mark.e2e
async def test_C14_1000_readings_in_batches_of_10_arrive_exactly_once(tmp_path: Path, keys) -> None:
    signer, trust_dir = keys
    rng = random.Random(14)

    async def latency(status, doc):          # C14a: 0-50 ms before the 200
        await asyncio.sleep(rng.uniform(0, 0.05))

    with BackgroundReceiver(tmp_path / "rx", trust_dir, after_submit=latency) as rx, \
            Store(tmp_path / "gw.sqlite", commit_interval_s=0.05) as st:
        fill(st, 1000)
        b = Batcher(st, signer, GW, lambda: "cfg", max_readings=10)
        up = HttpsUplink(rx.url, ca_file=str(rx.cafile), timeout_s=5.0)
        fwd = Forwarder(st, b, up, idle_s=0.05)
        await run_forwarder(fwd, lambda: st.stats()["readings_unsent"] == 0, 40)
        await up.aclose()
        seqs, values = delivered(rx)
        s = st.stats()
    assert seqs == list(range(1, 101)) and fwd.sent == 100
    assert values == Counter(range(1000))    # every reading exactly once
    assert s["last_acked_seq"] == 100 and s["batches_unacked"] == 0


@pytest.mark.e2e
async def test_C14b_answer_after_timeout_resends_same_bytes(tmp_path: Path, keys) -> None:
    signer, trust_dir = keys
    answers: list[tuple[int, str, str]] = []

    async def slow_third(status, doc):
        answers.append((doc.get("seq"), doc.get("status"), doc.get("hash")))
        if doc.get("seq") == 3 and doc.get("status") == "accepted":
            await asyncio.sleep(1.5)             # committed, but answered after the client's timeout

    with BackgroundReceiver(tmp_path / "rx", trust_dir, after_submit=slow_third) as rx, \
            Store(tmp_path / "gw.sqlite", commit_interval_s=0.05) as st:
        fill(st, 50)
        b = Batcher(st, signer, GW, lambda: "cfg", max_readings=10)
        up = HttpsUplink(rx.url, ca_file=str(rx.cafile), timeout_s=0.5)
        fwd = Forwarder(st, b, up, idle_s=0.05, min_backoff_s=0.05)
        await run_forwarder(fwd, lambda: st.stats()["readings_unsent"] == 0, 20)
        await up.aclose()
        seqs, values = delivered(rx)
    third = [a for a in answers if a[0] == 3]
    assert [a[1] for a in third] == ["accepted", "duplicate"]
    assert third[0][2] == third[1][2]            # same chain hash: byte-identical body
    assert seqs == [1, 2, 3, 4, 5] and values == Counter(range(50))


@pytest.mark.e2e
async def test_C14c_503_with_retry_after_twice_then_200(tmp_path: Path, keys) -> None:
    signer, trust_dir = keys
    hits: list[float] = []

    async def busy_twice(request):
        hits.append(time.monotonic())
        if len(hits) <= 2:
            return JSONResponse({"error": "maintenance"}, 503, headers={"Retry-After": "2"})
        return None

    with BackgroundReceiver(tmp_path / "rx", trust_dir, before_submit=busy_twice) as rx, \
            Store(tmp_path / "gw.sqlite", commit_interval_s=0.05) as st:
        fill(st, 5)
        b = Batcher(st, signer, GW, lambda: "cfg", max_readings=10)
        up = HttpsUplink(rx.url, ca_file=str(rx.cafile), max_backoff_s=30)
        fwd = Forwarder(st, b, up, idle_s=0.05, min_backoff_s=0.05)
        await run_forwarder(fwd, lambda: st.stats()["readings_unsent"] == 0, 20)
        await up.aclose()
        seqs, values = delivered(rx)
    assert len(hits) == 3
    assert hits[1] - hits[0] >= 1.95 and hits[2] - hits[1] >= 1.95     # Retry-After honoured
    assert hits[2] - hits[0] < 8
    assert seqs == [1] and values == Counter(range(5))


@pytest.mark.e2e
async def test_C14c_permanent_4xx_dead_letters_and_later_batches_flow(tmp_path: Path, keys, rx_key,
                                                                            other_gw) -> None:
    """(b) A receiver with --signing-key refuses batch 2's content (400: it announces a key of another
    gateway) with a signed rejection; the gateway trusts that key (uplink.receiver_key): batch 2 is set
    aside, a signed tombstone takes its seq (gap row, batch_dead_lettered alarm), later batches flow."""
    signer, trust_dir = keys
    rx_pem, _, receiver_key = rx_key
    db = tmp_path / "gw.sqlite"
    with BackgroundReceiver(tmp_path / "rx", trust_dir, signing_key=rx_pem) as rx, \
            Store(db, commit_interval_s=0.05) as st:
        fill(st, 40)
        b = PoisonBatcher(st, signer, GW, lambda: "cfg", max_readings=10, poison=2, other=other_gw)
        up = HttpsUplink(rx.url, ca_file=str(rx.cafile))
        fwd = Forwarder(st, b, up, idle_s=0.05, min_backoff_s=0.05, receiver_key=receiver_key)

        def evidence_uploaded() -> bool:
            # the receiver's signed word, recorded after the tombstone, rides in batch 3 or 4, or (when those
            # were already built) in an events-only batch 5: which one is a matter of timing, not of the rule
            return any(e.get("kind") == "batch_rejected_by_receiver" for x in rx.receiver.store.batches(GW)
                       for e in payload(x.jws)["events"])

        await run_forwarder(fwd, lambda: st.stats()["batches_unacked"] == 0 and (st.stats()["last_acked_seq"] or 0) >= 4
                            and evidence_uploaded(), 20)
        await up.aclose()
        assert st.flush(5)
        seqs, values = delivered(rx)
        later = [payload(x.jws) for x in rx.receiver.store.batches(GW)[4:]]
        dead = st.dead_letters()
        s = st.stats()
        tomb = payload(rx.receiver.store.get(GW, 2).jws)
        after = payload(rx.receiver.store.get(GW, 4).jws)
        rx_stats = rx.receiver.stats()
        conn = sqlite3.connect(db)
        gaps = conn.execute("SELECT reason, tags, first_ts, last_ts, count, batch_seq FROM gaps").fetchall()
        conn.close()
    events = event_rows(db)
    assert fwd.dead_lettered == 1 and s["batches_dead_letter"] == 1 and fwd.held is None
    assert rx_stats["rejected_announce_binding"] == 1 and rx_stats["rejection_signed"] == 1
    assert [d["seq"] for d in dead] == [2] and dead[0]["status"] == 400
    assert dead[0]["reason"].startswith("rejected_by_receiver: HTTP 400: announce_key ")
    assert [r["value"] for r in payload(dead[0]["jws"])["readings"]] == list(range(10, 20))
    # the chain at the receiver has no gap: seq 2 is the signed tombstone; at most an events-only batch follows
    assert seqs[:4] == [1, 2, 3, 4] and len(seqs) <= 5 and all(not p["readings"] for p in later)
    assert tomb["readings"] == [] and tomb["events"][0]["kind"] == "batch_dead_lettered"
    assert tomb["events"][0]["original_hash"] == chain_hash(dead[0]["jws"])
    assert tomb["gaps"][0]["reason"] == "dead_letter" and tomb["gaps"][0]["count"] == 10
    assert tomb["gaps"][0]["tags"] == ["GT-101"]
    # the gap row in the gateway's store: tags, time span, count of what was set aside
    assert gaps == [("dead_letter", '["GT-101"]', rfc3339(T0 + 10), rfc3339(T0 + 19), 10, 2)]
    # one alarm event (batch_dead_lettered, in the tombstone) and the receiver's signed word as evidence
    kinds = [e["kind"] for e in events]
    assert kinds.count("batch_dead_lettered") == 1 and "uplink_batch_held" not in kinds
    (alarm,) = [e for e in events if e["kind"] == "batch_dead_lettered"]
    assert alarm["severity"] == "alarm" and alarm["seq"] == 2 and alarm["status"] == 400
    (evidence,) = [e for e in events if e["kind"] == "batch_rejected_by_receiver"]
    claims = verify_rejection(evidence["rejection"], receiver_key, gateway_id=GW, seq=2,
                              sent_sha256=body_sha256(dead[0]["jws"].encode()), status=400)
    assert "already belongs to gateway other-gw" in claims["reason"] and evidence["receiver_kid"] in receiver_key
    assert values == Counter(set(range(40)) - set(range(10, 20)))       # later batches flowed
    assert [r["value"] for r in after["readings"]] == list(range(30, 40))


@pytest.mark.e2e
async def test_content_refusal_without_signed_rejection_holds_then_the_same_bytes_go_through(
        tmp_path: Path, keys, rx_key) -> None:
    """(a) A receiver without a signing key whose cap is below the batch answers 413 (a proxy's 413 looks
    the same): the gateway holds. Nothing is set aside, no tombstone, one uplink_batch_held alarm, and
    ``held`` says why; once the receiver restarts with a larger cap the same stored bytes are delivered."""
    signer, trust_dir = keys
    _, _, receiver_key = rx_key
    db = tmp_path / "gw.sqlite"
    with Store(db, commit_interval_s=0.05) as st:
        fill(st, 30)
        b = Batcher(st, signer, GW, lambda: "cfg", max_readings=30)
        first = b.next_batch()                   # built, signed and stored before it is sent
        rx = BackgroundReceiver(tmp_path / "rx", trust_dir, limits=ReceiverLimits(max_body=len(first.jws) // 2))
        with rx:
            up = HttpsUplink(rx.url, ca_file=str(rx.cafile))
            fwd = Forwarder(st, b, up, idle_s=0.05, min_backoff_s=0.05, max_backoff_s=0.2,
                            receiver_key=receiver_key)
            task = asyncio.create_task(fwd.run())
            try:
                await wait_for(lambda: rx.receiver.stats().get("rejected_body_too_large", 0) >= 3, 15)
                held, s, dead = fwd.held, st.stats(), st.dead_letters()
                assert st.flush(5)
                events_held = event_rows(db)
                await asyncio.to_thread(rx.stop)  # the cause is removed: restarted with the default cap
                rx.limits = ReceiverLimits()
                await asyncio.to_thread(rx.start)
                await wait_for(lambda: st.stats()["readings_unsent"] == 0, 20)
            finally:
                fwd.stop()
                await asyncio.wait_for(task, 10)
                await up.aclose()
            stored = rx.receiver.store.get(GW, 1)
            seqs, values = delivered(rx)
    assert s["batches_dead_letter"] == 0 and dead == [] and fwd.dead_lettered == 0 and s["batches_unacked"] == 1
    assert held.startswith("receiver rejects batch 1 without a valid signed rejection (HTTP 413: body larger than")
    assert "the answer carries no signed rejection" in held
    kinds = [e["kind"] for e in events_held]
    assert kinds.count("uplink_batch_held") == 1 and "batch_dead_lettered" not in kinds   # one alarm per episode
    (alarm,) = [e for e in events_held if e["kind"] == "uplink_batch_held"]
    assert alarm["severity"] == "alarm" and alarm["seq"] == 1 and alarm["status"] == 413
    assert stored.jws == first.jws               # delivered byte-identical, not a tombstone
    assert seqs[0] == 1 and values == Counter(range(30)) and fwd.held is None


@pytest.mark.e2e
@pytest.mark.parametrize("case", ["foreign_key", "no_receiver_key"])
async def test_real_signed_rejection_the_gateway_cannot_trust_holds(tmp_path: Path, keys, rx_key, other_gw,
                                                                    case) -> None:
    """(c) The receiver signs its refusal of batch 1, but with a key other than uplink.receiver_key, or the
    gateway has no receiver_key: the batch is held (kept, retried, one alarm), never set aside."""
    signer, trust_dir = keys
    rx_pem, _, receiver_key = rx_key
    if case == "foreign_key":
        rx_pem = make_receiver_key(tmp_path, "foreign-rxkey")[0]
    db = tmp_path / "gw.sqlite"
    with BackgroundReceiver(tmp_path / "rx", trust_dir, signing_key=rx_pem) as rx, \
            Store(db, commit_interval_s=0.05) as st:
        fill(st, 10)
        b = PoisonBatcher(st, signer, GW, lambda: "cfg", max_readings=10, poison=1, other=other_gw)
        up = HttpsUplink(rx.url, ca_file=str(rx.cafile))
        fwd = Forwarder(st, b, up, idle_s=0.05, min_backoff_s=0.05, max_backoff_s=0.2,
                        receiver_key=receiver_key if case == "foreign_key" else None)
        await run_forwarder(fwd, lambda: rx.receiver.stats().get("rejection_signed", 0) >= 3, 15)
        await up.aclose()
        assert st.flush(5)
        s, dead = st.stats(), st.dead_letters()
        assert rx.receiver.store.last_seq(GW) == 0
    kinds = [e["kind"] for e in event_rows(db)]
    assert s["batches_dead_letter"] == 0 and dead == [] and fwd.dead_lettered == 0 and s["batches_unacked"] == 1
    assert kinds.count("uplink_batch_held") == 1 and "batch_dead_lettered" not in kinds
    assert fwd.held.startswith("receiver rejects batch 1 without a valid signed rejection (HTTP 400: announce_key ")
    assert ("not signed by uplink.receiver_key" if case == "foreign_key" else "no uplink.receiver_key") in fwd.held


FORGED = {   # case -> what the held line must say
    "other_seq": "rejection names seq 2, not 1",
    "other_gateway": "rejection names gateway 'tankfarm-02', not 'tankfarm-01'",
    "other_bytes": "rejection is for other bytes",
    "other_status": "rejection is for status 400, not 422",
    "other_key": "not signed by uplink.receiver_key",
    "not_a_jws": "rejection does not verify",
    "no_rejection": "the answer carries no signed rejection",
    "proxy_413_html": "the answer carries no signed rejection",
}


@pytest.mark.e2e
@pytest.mark.parametrize("case", sorted(FORGED))
async def test_mismatched_or_missing_rejection_holds_then_the_batch_goes_through(tmp_path: Path, keys, rx_key,
                                                                                 case) -> None:
    """(c) 422 answers over real HTTPS whose rejection is signed by the receiver key but names another
    seq, gateway, body or status, is signed by another key, is no JWS, or is missing (a proxy's HTML 413):
    each holds the batch (never set aside, one alarm); when the receiver accepts it, it arrives unchanged."""
    signer, trust_dir = keys
    _, rx_signer, receiver_key = rx_key
    foreign = make_receiver_key(tmp_path, "foreign-rxkey")[1]
    refusing = {"on": True, "n": 0}
    db = tmp_path / "gw.sqlite"

    def answer(jws: str) -> Response:
        gid, seq, sha, status = GW, payload(jws)["seq"], body_sha256(jws.encode()), 422
        if case == "proxy_413_html":
            return Response("<html><body><h1>413 Request Entity Too Large</h1></body></html>", 413,
                            media_type="text/html")
        if case == "no_rejection":
            return JSONResponse({"error": "payload: unprocessable"}, 422)
        seq += case == "other_seq"
        gid = "tankfarm-02" if case == "other_gateway" else gid
        sha = body_sha256(b"other bytes") if case == "other_bytes" else sha
        claims = rejection_claims(gid, seq, sha, 400 if case == "other_status" else status, "payload: unprocessable")
        rej = (foreign if case == "other_key" else rx_signer).sign_jws(claims, REJECTION_JWS_TYP)
        if case == "not_a_jws":
            rej = rej.rsplit(".", 1)[0] + ".AAAA"
        return JSONResponse({"error": "payload: unprocessable", "rejection": rej}, status)

    with Store(db, commit_interval_s=0.05) as st:
        fill(st, 10)
        b = Batcher(st, signer, GW, lambda: "cfg", max_readings=10)
        first = b.next_batch()

        async def refuse(request):
            if refusing["on"]:
                refusing["n"] += 1
                return answer(first.jws)
            return None

        with BackgroundReceiver(tmp_path / "rx", trust_dir, before_submit=refuse) as rx:
            up = HttpsUplink(rx.url, ca_file=str(rx.cafile))
            fwd = Forwarder(st, b, up, idle_s=0.05, min_backoff_s=0.05, max_backoff_s=0.2,
                            receiver_key=receiver_key)
            task = asyncio.create_task(fwd.run())
            try:
                await wait_for(lambda: refusing["n"] >= 3, 15)
                held, s, dead = fwd.held, st.stats(), st.dead_letters()
                refusing["on"] = False
                await wait_for(lambda: st.stats()["readings_unsent"] == 0, 15)
            finally:
                fwd.stop()
                await asyncio.wait_for(task, 10)
                await up.aclose()
            assert st.flush(5)
            stored = rx.receiver.store.get(GW, 1)
    kinds = [e["kind"] for e in event_rows(db)]
    assert s["batches_dead_letter"] == 0 and dead == [] and fwd.dead_lettered == 0
    assert held.startswith("receiver rejects batch 1 without a valid signed rejection (HTTP ")
    assert FORGED[case] in held, held
    assert kinds.count("uplink_batch_held") == 1 and "batch_dead_lettered" not in kinds
    assert stored.jws == first.jws and fwd.held is None


@pytest.mark.e2e
async def test_401_403_hold_with_one_alarm_and_deliver_everything_once_the_key_is_installed(tmp_path: Path,
                                                                                            keys) -> None:
    """A receiver that has not installed the gateway's key yet answers 401 (or 403): that refuses the
    gateway, not the batch. Nothing is dead-lettered; one alarm event; once accepted, all arrives."""
    signer, trust_dir = keys
    refusing = {"on": True, "n": 0}

    async def not_yet(request):
        if refusing["on"]:
            refusing["n"] += 1
            return JSONResponse({"error": "unknown key"}, 401 if refusing["n"] % 2 else 403)
        return None

    with BackgroundReceiver(tmp_path / "rx", trust_dir, before_submit=not_yet) as rx, \
            Store(tmp_path / "gw.sqlite", commit_interval_s=0.05) as st:
        fill(st, 30)
        b = Batcher(st, signer, GW, lambda: "cfg", max_readings=10)
        up = HttpsUplink(rx.url, ca_file=str(rx.cafile))
        fwd = Forwarder(st, b, up, idle_s=0.05, min_backoff_s=0.05, max_backoff_s=0.2)
        task = asyncio.create_task(fwd.run())
        deadline = time.monotonic() + 10
        while refusing["n"] < 4:
            assert time.monotonic() < deadline, "the uploader stopped retrying"
            await asyncio.sleep(0.05)
        assert st.stats()["batches_dead_letter"] == 0 and fwd.dead_lettered == 0
        refusing["on"] = False                      # the key is installed at the receiver
        while st.stats()["readings_unsent"]:
            assert time.monotonic() < deadline + 10, st.stats()
            await asyncio.sleep(0.05)
        fwd.stop()
        await asyncio.wait_for(task, 10)
        await up.aclose()
        assert st.flush(5)
        conn = sqlite3.connect(tmp_path / "gw.sqlite")
        kinds = [k for (k,) in conn.execute("SELECT kind FROM events")]
        conn.close()
        seqs, values = delivered(rx)
    assert seqs == [1, 2, 3] and values == Counter(range(30))
    assert kinds.count("uplink_refused_gateway") == 1      # one alarm for the episode, not one per retry
    assert "batch_dead_lettered" not in kinds


@pytest.mark.e2e
async def test_C14_409_chain_conflict_holds_without_dead_lettering(tmp_path: Path, keys) -> None:
    """A reset buffer (a fresh store without its chain position file, e.g. copied in by hand; after C17b
    the chain carries on instead) restarts at seq 1: the receiver answers 409
    conflict; the uploader must hold with an alarm event, not tombstone good data."""
    signer, trust_dir = keys
    with BackgroundReceiver(tmp_path / "rx", trust_dir) as rx:
        for name, start in (("a.sqlite", 0), ("b.sqlite", 100)):
            with Store(tmp_path / name, commit_interval_s=0.05) as st:
                fill(st, 5, start=start)
                b = Batcher(st, signer, GW, lambda: "cfg", max_readings=10)
                up = HttpsUplink(rx.url, ca_file=str(rx.cafile))
                fwd = Forwarder(st, b, up, idle_s=0.05, max_backoff_s=0.2)
                if name == "a.sqlite":
                    await run_forwarder(fwd, lambda: st.stats()["readings_unsent"] == 0, 10)
                else:
                    await run_forwarder(fwd, lambda: fwd.consecutive_failures >= 3, 10)
                    assert st.flush(5)
                    s = st.stats()
                    conn = sqlite3.connect(tmp_path / name)
                    kinds = conn.execute("SELECT kind FROM events").fetchall()
                    conn.close()
                await up.aclose()
        seqs, values = delivered(rx)
    assert seqs == [1] and values == Counter(range(5))
    assert s["batches_dead_letter"] == 0 and s["batches_unacked"] == 1 and "409" in fwd.last_error
    assert fwd.chain_conflict is not None and fwd.chain_conflict.startswith("batch "), fwd.chain_conflict
    assert [k for (k,) in kinds] == ["uplink_chain_conflict"]


@pytest.mark.e2e
async def test_rate_limit_spaces_sends(tmp_path: Path, keys) -> None:
    signer, trust_dir = keys
    hits: list[float] = []

    async def stamp(request):
        hits.append(time.monotonic())

    with BackgroundReceiver(tmp_path / "rx", trust_dir, before_submit=stamp) as rx, \
            Store(tmp_path / "gw.sqlite", commit_interval_s=0.05) as st:
        fill(st, 50)
        b = Batcher(st, signer, GW, lambda: "cfg", max_readings=10)
        up = HttpsUplink(rx.url, ca_file=str(rx.cafile))
        fwd = Forwarder(st, b, up, rate_limit_per_s=10, idle_s=0.05)
        await run_forwarder(fwd, lambda: st.stats()["readings_unsent"] == 0, 10)
        await up.aclose()
    assert len(hits) == 5
    # 10 sends/s: the receiver sees them spread over >= 4 intervals; arrival jitter on a loaded machine
    # can shorten one gap, never the rate (without the limit 5 sends take a few ms).
    assert hits[-1] - hits[0] >= 4 * 0.1 * 0.95
    assert min(b - a for a, b in zip(hits, hits[1:])) >= 0.05


@pytest.mark.e2e
async def test_retention_keeps_the_tombstone_prev_then_422_dead_letters(tmp_path: Path, keys, rx_key) -> None:
    """R1: batches 1-2 acked, batch 3 unacked; the size cap then deletes acknowledged batches.
    Batch 2 (the prev of 3 and of its tombstone) must survive, so the 422 on 3 (with the receiver's
    signed rejection of exactly those bytes) still yields a signed tombstone the receiver accepts, and
    later batches flow."""
    signer, trust_dir = keys
    _, rx_signer, receiver_key = rx_key
    n = 0
    kept: list[int] = []
    # the batches are minutes old: only with the 30-day floor waived may the cap delete acknowledged ones
    st = Store(tmp_path / "gw.sqlite", commit_interval_s=0.05, max_bytes=200_000, floor_waived=True)

    async def flood_then_reject_third(request):
        nonlocal n
        n += 1
        if n == 3:   # 1 and 2 are acknowledged, 3 is the newest batch and unacked
            for i in range(1000, 5000):
                st.put_reading(rec(i))
            assert st.flush(20)                  # over the cap: retention deletes acknowledged batches
            conn = sqlite3.connect(tmp_path / "gw.sqlite")
            kept.extend(s for (s,) in conn.execute("SELECT seq FROM batches ORDER BY seq"))
            (third,) = conn.execute("SELECT jws FROM batches WHERE seq=3").fetchone()
            conn.close()
            b.max_readings = 1000
            rej = rx_signer.sign_jws(rejection_claims(GW, 3, body_sha256(third.encode()), 422,
                                                      "payload: unprocessable"), REJECTION_JWS_TYP)
            return JSONResponse({"error": "payload: unprocessable", "rejection": rej}, 422)
        return None

    with BackgroundReceiver(tmp_path / "rx", trust_dir, before_submit=flood_then_reject_third) as rx, st:
        fill(st, 30)
        b = Batcher(st, signer, GW, lambda: "cfg", max_readings=10)
        up = HttpsUplink(rx.url, ca_file=str(rx.cafile))
        fwd = Forwarder(st, b, up, idle_s=0.05, min_backoff_s=0.05, receiver_key=receiver_key)
        await run_forwarder(fwd, lambda: fwd.dead_lettered == 1 and st.stats()["readings_unsent"] == 0
                            and st.stats()["batches_unacked"] == 0, 30)
        await up.aclose()
        seqs, _ = delivered(rx)                  # checks prev of every batch, the tombstone's included
        tomb = payload(rx.receiver.store.get(GW, 3).jws)
    assert fwd.last_beat_mono is None            # run() returned normally
    assert kept == [2, 3]                        # at the 422: acked batch 1 deleted, 2 (prev of 3) kept
    assert seqs[:3] == [1, 2, 3] and len(seqs) >= 4
    assert tomb["readings"] == [] and tomb["events"][0]["kind"] == "batch_dead_lettered"


@pytest.mark.e2e
async def test_dead_letter_failure_keeps_the_batch_and_the_uploader_alive(tmp_path: Path, keys, rx_key) -> None:
    """R1: a fault while building the tombstone is logged and retried; run() never dies of it."""
    from gateway.record.uplink import Ack

    signer, _ = keys
    _, rx_signer, receiver_key = rx_key
    sends: list[int] = []

    class Uplink:
        timeout_s = 1.0

        async def send(self, jws: str) -> Ack:
            p = payload(jws)
            sends.append(p["seq"])
            if not p["events"]:                  # the original batch: refused for good, with a signed rejection
                sha = body_sha256(jws.encode())
                raise PermanentError("422 payload", 422, sent_sha256=sha, rejection=rx_signer.sign_jws(
                    rejection_claims(GW, p["seq"], sha, 422, "payload"), REJECTION_JWS_TYP))
            return Ack(GW, p["seq"], "accepted", chain_hash(jws))

    with Store(tmp_path / "gw.sqlite", commit_interval_s=0.05) as st:
        fill(st, 5)
        b = Batcher(st, signer, GW, lambda: "cfg", max_readings=10)
        real, calls = b.dead_letter, []

        def flaky(*a, **kw):
            calls.append(a)
            if len(calls) == 1:
                raise StoreError("disk I/O error")
            return real(*a, **kw)

        b.dead_letter = flaky
        fwd = Forwarder(st, b, Uplink(), idle_s=0.05, min_backoff_s=0.05, receiver_key=receiver_key)
        await run_forwarder(fwd, lambda: st.stats()["batches_unacked"] == 0 and fwd.dead_lettered == 1, 10)
    # kept, resent, set aside, tombstone sent; what the forwarder sends after that (a later batch, e.g. of the
    # dead-letter event, before run_forwarder stops it) takes a new seq, never 1 again
    assert len(calls) == 2 and sends[:3] == [1, 1, 1] and all(s > 1 for s in sends[3:]), sends


async def test_mqtt_puback_refusal_holds_never_dead_letters(tmp_path: Path, keys, rx_key) -> None:
    """A PUBACK 0x90/0x95/0x99 (gateway.record.uplink_mqtt raises PermanentError without a rejection: a PUBACK cannot
    carry a signed body) holds the batch with one alarm even with a receiver_key, until the broker takes it.
    (mosquitto cannot be made to answer these codes: over its size limit it disconnects, which is retryable.)"""
    from gateway.record.uplink import Ack

    signer, _ = keys
    _, _, receiver_key = rx_key
    sends: list[int] = []

    class MqttLike:
        timeout_s = 1.0

        async def send(self, jws: str) -> Ack:
            sends.append(payload(jws)["seq"])
            if len(sends) <= 3:
                raise PermanentError("mqtt://127.0.0.1:1883: PUBACK for seq 1: Packet too large (0x95)", 0x95)
            return Ack(GW, payload(jws)["seq"], "accepted", None)

    db = tmp_path / "gw.sqlite"
    with Store(db, commit_interval_s=0.05) as st:
        fill(st, 5)
        b = Batcher(st, signer, GW, lambda: "cfg", max_readings=10)
        fwd = Forwarder(st, b, MqttLike(), idle_s=0.05, min_backoff_s=0.05, max_backoff_s=0.1,
                        receiver_key=receiver_key)
        held: list[str | None] = []

        def done() -> bool:
            held.append(fwd.held)
            return st.stats()["readings_unsent"] == 0

        await run_forwarder(fwd, done, 10)
        assert st.flush(5)
        s = st.stats()
    kinds = [e["kind"] for e in event_rows(db)]
    assert sends[:4] == [1, 1, 1, 1] and s["batches_dead_letter"] == 0 and fwd.dead_lettered == 0
    assert any(h and "PUBACK for seq 1: Packet too large (0x95)" in h and "carries no signed rejection" in h
               for h in held)
    assert kinds.count("uplink_batch_held") == 1 and "batch_dead_lettered" not in kinds and fwd.held is None


async def test_health_sees_a_dead_or_hung_uploader() -> None:
    """R1: gateway.record.supervisor.uploader_check reports an uploader task that ended and one that stopped beating."""
    from types import SimpleNamespace

    from gateway.record.supervisor import uploader_check

    fw = SimpleNamespace(stopped=False, last_beat_mono=None, max_iteration_s=lambda: 5.0)

    async def boom():
        raise RuntimeError("prev is not a base64url SHA-256")

    gw = SimpleNamespace(forwarder=fw, uploader_task=asyncio.create_task(boom()))
    await asyncio.sleep(0)
    check = uploader_check(gw, 1.0)
    assert "uploader task has ended (RuntimeError" in check(time.monotonic())
    gw.uploader_task = asyncio.create_task(asyncio.sleep(10))
    fw.last_beat_mono = 100.0
    assert check(105.0) is None
    assert "no loop iteration for 7.0 s" in check(107.0)
    fw.stopped = True                            # shutdown / reload: not a fault
    assert check(107.0) is None
    gw.uploader_task.cancel()
