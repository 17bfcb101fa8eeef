"""Reference receiver over real HTTPS (self-signed cert, httpx pinned to it), export, offline verify."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from conftest import gateway_signers
from gateway.model import Quality, Reading
from gateway.regulator.receiver import (BackgroundReceiver, ReceiverError, ReceiverStore, export_batches, make_self_signed,
                              run_receiver, signed_request_headers)
from gateway.chain.signing import Signer, build_payload, chain_hash
from gateway.regulator.verify import run_verify, verify_files

JOSE = {"content-type": "application/jose"}
ROOT = Path(__file__).resolve().parents[2]


def chain(signer: Signer, gid: str, first: int, last: int, prev: str | None = None, *, per: int = 3,
          extra: dict[int, dict] | None = None) -> list[str]:
    """Signed batches first..last of gateway gid, hash-chained from prev."""
    out = []
    for seq in range(first, last + 1):
        recs = [Reading(f"TK{seq}.gas{i}", float(seq * 10 + i), "%LEL", Quality.GOOD, 1.74e9 + seq + i / 10).to_record()
                for i in range(per)]
        p = build_payload(gid, seq, prev, "sha256:cfg", recs, [], created_at=1.74e9 + seq,
                          **(extra or {}).get(seq, {}))
        jws = signer.sign(p)
        out.append(jws)
        prev = chain_hash(jws)
    return out


def flip(jws: str, part: int = 1, at: int = 20) -> str:
    parts = jws.split(".")
    s = parts[part]
    parts[part] = s[:at] + ("B" if s[at] != "B" else "C") + s[at + 1:]
    return ".".join(parts)


@pytest.fixture()
def pki(tmp_path):
    """Two gateways' keys (A for gw-01, B for gw-02) in one flat trust dir (bound on first use), plus an untrusted
    key C."""
    return gateway_signers(tmp_path, ("A", "B"), bound=False, untrusted=("C",))


@pytest.fixture()
def rx(tmp_path, pki):
    trust, _ = pki
    with BackgroundReceiver(tmp_path / "rx", trust) as r:
        yield r


@pytest.fixture()
def client(rx):
    with httpx.Client(base_url=rx.url, verify=rx.ssl_context(), timeout=10) as c:
        yield c


def post(client: httpx.Client, jws: str) -> httpx.Response:
    return client.post("/v1/batches", content=jws.encode(), headers=JOSE)


@pytest.mark.e2e
def test_in_order_accept_duplicate_and_each_rejection(rx, client, pki):
    _, s = pki
    b = chain(s["A"], "gw-01", 1, 4)
    for i, jws in enumerate(b[:3], start=1):
        r = post(client, jws)
        assert r.status_code == 200, r.text
        assert r.json() == {"gateway_id": "gw-01", "seq": i, "status": "accepted", "hash": chain_hash(jws)}

    # byte-identical resend (C14 b): 200, same ack, status duplicate; nothing stored twice
    r = post(client, b[1])
    assert r.status_code == 200 and r.json() == {"gateway_id": "gw-01", "seq": 2, "status": "duplicate",
                                                 "hash": chain_hash(b[1])}
    # flipped byte in payload or signature -> 401 (signature), in the header -> 400/401
    assert post(client, flip(b[2])).status_code == 401
    assert post(client, flip(b[2], part=2)).status_code == 401
    assert post(client, flip(b[2], part=0, at=5)).status_code in (400, 401)
    # replayed seq 2 with a different (validly signed) body -> 409 conflict
    other = chain(s["A"], "gw-01", 1, 2, per=2)[1]
    assert other != b[1]
    r = post(client, other)
    assert r.status_code == 409 and r.json()["error"].startswith("conflict")
    # wrong key: a key the receiver does not know -> 401
    r = post(client, chain(s["C"], "gw-01", 4, 4, prev=chain_hash(b[2]))[0])
    assert r.status_code == 401 and "unknown key" in r.json()["error"]
    # a trusted (unbound, flat layout) key of another gateway signing for gw-01 -> 401 once its
    # first use bound it to gw-02
    assert post(client, chain(s["B"], "gw-02", 1, 1)[0]).status_code == 200
    r = post(client, chain(s["B"], "gw-01", 4, 4, prev=chain_hash(b[2]))[0])
    assert r.status_code == 401 and "is bound to gateway gw-02" in r.json()["error"]
    # seq 4 with a prev that is not the hash of the stored seq 3 -> 409 chain broken
    r = post(client, chain(s["A"], "gw-01", 4, 4, prev=chain_hash(other))[0])
    assert r.status_code == 409 and r.json()["error"].startswith("chain broken")
    # malformed -> 400; wrong content type -> 415
    assert post(client, "not-a-jws").status_code == 400
    assert client.post("/v1/batches", content=b[3].encode(), headers={"content-type": "text/plain"}).status_code == 415
    # the right seq 4 still goes in
    assert post(client, b[3]).json()["status"] == "accepted"

    st = client.get("/v1/gateways/gw-01/status", headers=signed_request_headers(s["A"], "gw-01")).json()
    assert st["last_seq"] == 4 and st["count"] == 4 and st["gaps"] == [] and st["readings"] == 12
    assert st["last_hash"] == chain_hash(b[3])

    with ReceiverStore(rx.store_path) as store:
        stored = store.batches("gw-01")
        assert [x.jws for x in stored] == b  # verbatim
        assert all(re.match(r"\d{4}-\d\d-\d\dT.*Z$", x.received_at) for x in stored)
        assert store.readings_count() == 15 and store.readings_count("gw-01") == 12
        assert sum(1 for _ in store.readings("gw-01")) == 12


@pytest.mark.e2e
def test_reordered_batch_is_refused_with_the_expected_seq(client, pki):
    _, s = pki
    b = chain(s["A"], "gw-01", 1, 3)
    assert post(client, b[0]).status_code == 200
    r = post(client, b[2])  # seq 3 before 2
    assert r.status_code == 409 and r.json() == {"error": "gap: expected seq 2", "expected_seq": 2}
    r = post(client, chain(s["B"], "gw-09", 2, 2, prev="A" * 43)[0])  # a new gateway must start at 1
    assert r.status_code == 409 and r.json()["expected_seq"] == 1
    assert [post(client, x).status_code for x in b[1:]] == [200, 200]
    assert client.get("/v1/gateways/gw-01/status",
                      headers=signed_request_headers(s["A"], "gw-01")).json()["last_seq"] == 3


@pytest.mark.e2e
def test_tls_is_real_and_pinned(rx):
    with httpx.Client(verify=True, timeout=5) as c:  # system CAs do not know the self-signed cert
        with pytest.raises(httpx.ConnectError):
            c.get(rx.url + "/v1/health")
    with httpx.Client(verify=rx.ssl_context(), timeout=5) as c:
        assert c.get(rx.url + "/v1/health").json()["ok"] is True
    with httpx.Client(timeout=5) as c:  # plain HTTP to the TLS port gets no HTTP answer
        with pytest.raises(httpx.HTTPError):
            c.get(rx.url.replace("https://", "http://") + "/v1/health")


@pytest.mark.e2e
def test_key_rotation_by_announce_key_persists_across_restart(tmp_path, pki):
    trust, s = pki
    new = Signer(Ed25519PrivateKey.generate())
    b = chain(s["A"], "gw-01", 1, 2, extra={2: new.announcement("gw-01", 2)})
    b += chain(new, "gw-01", 3, 3, prev=chain_hash(b[-1]))
    early = chain(new, "gw-07", 1, 1)[0]  # the new key before it was announced
    with BackgroundReceiver(tmp_path / "rx", trust) as r, \
            httpx.Client(base_url=r.url, verify=r.ssl_context(), timeout=10) as c:
        assert post(c, early).status_code == 401
        assert [post(c, x).status_code for x in b] == [200, 200, 200]
        # the announced key is bound to gw-01
        assert post(c, chain(new, "gw-07", 1, 1)[0]).status_code == 401
    with BackgroundReceiver(tmp_path / "rx", trust) as r, \
            httpx.Client(base_url=r.url, verify=r.ssl_context(), timeout=10) as c:
        assert post(c, chain(new, "gw-01", 4, 4, prev=chain_hash(b[-1]))[0]).json()["status"] == "accepted"
    # offline: the announced key is trusted after the announcing batch (same gateway only)
    out = tmp_path / "export"
    assert export_batches(tmp_path / "rx" / "receiver.sqlite", out) == 4
    buf = io.StringIO()
    assert run_verify(trust, sorted(out.glob("*.jws")), out=buf) == 0, buf.getvalue()
    assert "announces key" in buf.getvalue()


def _received(tmp_path, pki, n: int = 5) -> tuple[Path, list[str]]:
    trust, s = pki
    b = chain(s["A"], "gw-01", 1, n)
    with BackgroundReceiver(tmp_path / "rx", trust) as r, \
            httpx.Client(base_url=r.url, verify=r.ssl_context(), timeout=10) as c:
        for x in b:
            assert post(c, x).status_code == 200
        assert post(c, chain(s["B"], "gw-02", 1, 1)[0]).status_code == 200
    out = tmp_path / "export"
    assert export_batches(r.store_path, out) == n + 1
    return out, b


@pytest.mark.e2e
def test_export_names_and_bytes_then_verify_ok(tmp_path, pki):
    trust, _ = pki
    out, b = _received(tmp_path, pki)
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([f"gw-01-{i}.jws" for i in range(1, 6)] + ["gw-02-1.jws"])
    assert [(out / f"gw-01-{i}.jws").read_bytes() for i in range(1, 6)] == [x.encode() for x in b]
    buf = io.StringIO()
    assert run_verify(trust, [out], out=buf) == 0, buf.getvalue()
    assert buf.getvalue().strip().splitlines()[-1].startswith("OK: 6 batches verified")


def _verify(trust: Path, d: Path) -> tuple[int, str]:
    buf = io.StringIO()
    code = run_verify(trust, sorted(d.glob("*.jws")), out=buf)
    return code, buf.getvalue()


@pytest.mark.e2e
def test_verify_rejects_flip_gap_broken_prev_wrong_key_and_equivocation(tmp_path, pki):
    trust, s = pki
    out, b = _received(tmp_path, pki)

    def case(name: str) -> Path:
        d = tmp_path / name
        shutil.copytree(out, d)
        return d

    d = case("flip")
    (d / "gw-01-3.jws").write_text(flip(b[2]))
    code, text = _verify(trust, d)
    assert code == 1 and re.search(r"FAULT .*gw-01-3\.jws: signature", text), text

    d = case("gap")
    (d / "gw-01-3.jws").unlink()
    code, text = _verify(trust, d)
    assert code == 1 and "FAULT gw-01: seq 3 missing" in text, text
    buf = io.StringIO()
    assert run_verify(trust, sorted(d.glob("*.jws")), out=buf, as_json=True) == 1
    rep = json.loads(buf.getvalue())  # the same verdict as the text, as data
    assert rep["ok"] is False and {"file": None, "message": "gw-01: seq 3 missing"} in rep["faults"], rep
    assert rep["batches"] == rep["verified"] == len(list(d.glob("*.jws")))
    assert sorted((f["gateway_id"], f["seq"]) for f in rep["files"])[:2] == [("gw-01", 1), ("gw-01", 2)]

    d = case("start")
    (d / "gw-01-1.jws").unlink()
    code, text = _verify(trust, d)
    assert code == 1 and "seq 1 missing" in text
    buf = io.StringIO()
    assert run_verify(trust, sorted(d.glob("*.jws")), partial=True, out=buf) == 0, buf.getvalue()

    d = case("prev")  # seq 4 re-signed with the right key but chained to a different seq 3
    alt = chain(s["A"], "gw-01", 3, 4, prev=chain_hash(b[1]), per=2)
    (d / "gw-01-4.jws").write_text(alt[1])
    code, text = _verify(trust, d)
    assert code == 1 and re.search(r"gw-01-4\.jws: chain broken: prev is not the hash of seq 3", text), text

    d = case("wrongkey")
    (d / "gw-01-5.jws").write_text(chain(s["C"], "gw-01", 5, 5, prev=chain_hash(b[3]))[0])
    code, text = _verify(trust, d)
    assert code == 1 and "gw-01-5.jws: kid: unknown key id" in text, text

    d = case("otherkey")  # a trusted key, but gw-02's, signing for gw-01 (unbound keys: caught as a key change)
    (d / "gw-01-5.jws").write_text(chain(s["B"], "gw-01", 5, 5, prev=chain_hash(b[3]))[0])
    code, text = _verify(trust, d)
    assert code == 1 and "gw-01-5.jws: key change: seq 5 is signed by" in text, text
    (d / "gw-02-2.jws").unlink(missing_ok=True)
    (d / "gw-01-5.jws").unlink()   # the same key as the first of gw-01's chain: a key used by two gateways
    (d / "gw-03-1.jws").write_text(chain(s["B"], "gw-03", 1, 1)[0])
    code, text = _verify(trust, d)
    assert code == 1 and "signs for several gateways" in text, text

    d = case("equivocation")  # two different signed bodies for seq 3
    (d / "extra.jws").write_text(alt[0])
    code, text = _verify(trust, d)
    assert code == 1 and "seq 3 exists with a different body" in text, text

    d = case("copy")  # a byte-identical copy is only a note
    shutil.copy(d / "gw-01-2.jws", d / "copy-of-2.jws")
    code, text = _verify(trust, d)
    assert code == 0 and "NOTE" in text and "byte-identical copy" in text, text

    rep = verify_files(trust, sorted(out.glob("*.jws")))
    assert rep.ok and all(f.ok for f in rep.files) and rep.chains == {"gw-01": (1, 5), "gw-02": (1, 1)}


def test_verify_usage_errors_exit_2(tmp_path, pki):
    trust, _ = pki
    buf = io.StringIO()
    assert run_verify(trust, [], out=buf) == 2
    assert run_verify(tmp_path / "no-such-dir", [tmp_path / "x.jws"], out=buf) == 2
    (tmp_path / "empty").mkdir()
    assert run_verify(tmp_path / "empty", [tmp_path / "x.jws"], out=buf) == 2
    assert all(line.startswith("hazard-gateway: ") for line in buf.getvalue().splitlines())
    buf = io.StringIO()
    assert run_verify(trust, [], out=buf, as_json=True) == 2
    assert json.loads(buf.getvalue()) == {"ok": False, "error": "no batch files given"}


def test_run_receiver_refuses_unsafe_or_broken_setups(tmp_path, pki):
    trust, _ = pki
    store = tmp_path / "s.sqlite"
    with pytest.raises(ReceiverError, match="refusing plain HTTP on 0.0.0.0"):
        run_receiver("0.0.0.0:0", store, trust)
    with pytest.raises(ReceiverError, match="both a certificate and its key"):
        run_receiver("127.0.0.1:0", store, trust, certfile=tmp_path / "c.pem")
    with pytest.raises(ReceiverError, match="not HOST:PORT"):
        run_receiver("8443", store, trust)
    (tmp_path / "emptytrust").mkdir()
    with pytest.raises(ReceiverError, match="no \\*\\.jwk"):
        run_receiver("127.0.0.1:0", store, tmp_path / "emptytrust")
    with pytest.raises(ReceiverError, match="no such receiver store"):
        export_batches(tmp_path / "missing.sqlite", tmp_path / "out")


@pytest.mark.e2e
def test_subprocess_receiver_serves_https_and_stops_cleanly_on_sigterm(tmp_path, pki):
    trust, s = pki
    cert, key = make_self_signed(tmp_path / "tls")
    store = tmp_path / "rx.sqlite"
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.regulator.receiver", "--listen", "127.0.0.1:0", "--store", str(store),
         "--trust", str(trust), "--cert", str(cert), "--key", str(key)],
        cwd=ROOT, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        url = None
        deadline = time.monotonic() + 15
        while url is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            m = re.search(r"receiver listening on (https://127\.0\.0\.1:\d+)", line)
            url = m.group(1) if m else None
        assert url, "receiver did not report its address"
        b = chain(s["A"], "gw-01", 1, 2)
        with httpx.Client(base_url=url, verify=ssl.create_default_context(cafile=str(cert)), timeout=10) as c:
            assert [post(c, x).status_code for x in b] == [200, 200]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    with ReceiverStore(store, create=False) as st:
        assert [x.jws for x in st.batches("gw-01")] == b


@pytest.mark.e2e
def test_locked_store_answers_503_with_retry_after_then_recovers(tmp_path, pki):
    import sqlite3

    trust, s = pki
    b = chain(s["A"], "gw-01", 1, 1)
    with BackgroundReceiver(tmp_path / "rx", trust, busy_timeout_s=0.2) as r, \
            httpx.Client(base_url=r.url, verify=r.ssl_context(), timeout=10) as c:
        locker = sqlite3.connect(r.store_path, isolation_level=None)
        locker.execute("BEGIN IMMEDIATE")
        try:
            resp = post(c, b[0])
            assert resp.status_code == 503 and resp.headers["retry-after"] == "1"
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        assert post(c, b[0]).json()["status"] == "accepted"


@pytest.mark.e2e
def test_failed_commit_is_rolled_back_and_the_next_batch_is_accepted(tmp_path, pki):
    """R4: a COMMIT that fails (here, deterministically, a deferred foreign key violated by a trigger
    while a flag is set; SQLite keeps the transaction open after a failed COMMIT) answers 503, is
    rolled back, and the next batch is stored instead of every later batch getting 503."""
    import sqlite3

    trust, s = pki
    b = chain(s["A"], "gw-01", 1, 2)
    with BackgroundReceiver(tmp_path / "rx", trust) as r, \
            httpx.Client(base_url=r.url, verify=r.ssl_context(), timeout=10) as c:
        db = r.receiver.store._db
        db.executescript("""
            CREATE TABLE fail_flag (on_ INTEGER);
            CREATE TABLE parent (id INTEGER PRIMARY KEY);
            CREATE TABLE child (pid INTEGER REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED);
            CREATE TRIGGER fail_commit AFTER INSERT ON batches WHEN (SELECT count(*) FROM fail_flag) > 0
            BEGIN INSERT INTO child(pid) VALUES (42); END;
            INSERT INTO fail_flag VALUES (1);""")
        db.execute("PRAGMA foreign_keys=ON")
        resp = post(c, b[0])
        assert resp.status_code == 503 and resp.headers["retry-after"] == "1", resp.text
        assert not db.in_transaction                       # rolled back, not left open
        other = sqlite3.connect(r.store_path, timeout=1)    # and nothing holds the write lock
        other.execute("DELETE FROM fail_flag")
        other.commit()
        other.close()
        assert post(c, b[0]).json()["status"] == "accepted"
        assert post(c, b[1]).json()["status"] == "accepted"
        assert r.receiver.store.last_seq("gw-01") == 2


@pytest.mark.e2e
async def test_submit_runs_off_the_event_loop(tmp_path, pki):
    """R4: a slow submit (SQLite, signature checks) does not block the receiver's event loop."""
    import asyncio
    import threading

    trust, s = pki
    b = chain(s["A"], "gw-01", 1, 1)
    with BackgroundReceiver(tmp_path / "rx", trust, tls=False) as r:
        real, started, release = r.receiver.submit, threading.Event(), threading.Event()

        def slow_submit(body):
            started.set()
            release.wait(10)
            return real(body)

        r.receiver.submit = slow_submit
        async with httpx.AsyncClient(base_url=r.url, timeout=10) as c:
            pending = asyncio.create_task(c.post("/v1/batches", content=b[0].encode(), headers=JOSE))
            assert await asyncio.to_thread(started.wait, 5)
            health = await c.get("/v1/health", timeout=2)      # answered while submit is still busy
            release.set()
            assert health.json()["ok"] is True
            assert (await pending).json()["status"] == "accepted"


@pytest.mark.e2e
def test_answer_lost_after_commit_then_resend_is_a_duplicate(tmp_path, pki):
    """C14 (b): the receiver commits but answers after the client's timeout; the byte-identical
    resend is acknowledged as a duplicate and stored once."""
    import asyncio

    trust, s = pki
    b = chain(s["A"], "gw-01", 1, 1)
    slow = {"on": True}

    async def late(status: int, doc: dict) -> None:
        if slow["on"]:
            await asyncio.sleep(1.5)

    with BackgroundReceiver(tmp_path / "rx", trust, after_submit=late) as r, \
            httpx.Client(base_url=r.url, verify=r.ssl_context(), timeout=0.5) as c:
        with pytest.raises(httpx.ReadTimeout):
            post(c, b[0])
        slow["on"] = False
        assert post(c, b[0]).json()["status"] == "duplicate"
    with ReceiverStore(r.store_path) as st:
        assert len(st.batches("gw-01")) == 1
