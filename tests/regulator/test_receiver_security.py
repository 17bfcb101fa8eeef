"""Receiver security over real HTTPS on 127.0.0.1: keys bound to gateways, key rotation with proof
of possession, signed status requests, bounded JSON, and bounded connections, time and memory.

Every peer is real: the receiver is gateway.regulator.receiver (in a thread, or as a child process for the
memory measurement), clients are httpx or asyncio/ssl streams pinned to its self-signed certificate.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import os
import re
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.model import Quality, Reading
from gateway.regulator.receiver import (BackgroundReceiver, Receiver, ReceiverError, ReceiverLimits, export_batches,
                              make_self_signed, signed_request_headers)
from gateway.chain.signing import JWS_TYP, Signer, build_payload, chain_hash, key_proof_claims
from gateway.regulator.verify import run_verify

JOSE = {"content-type": "application/jose"}
ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------- helpers


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def cjson(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def raw_jws(priv: Ed25519PrivateKey, header: bytes | dict, payload: bytes | dict) -> str:
    """A compact JWS built by hand (no validation by gateway.chain.signing): for batches the signer refuses."""
    h = header if isinstance(header, bytes) else cjson(header)
    p = payload if isinstance(payload, bytes) else cjson(payload)
    signing_input = b64(h) + "." + b64(p)
    return signing_input + "." + b64(priv.sign(signing_input.encode("ascii")))


def batch_header(signer: Signer) -> dict:
    return {"alg": "EdDSA", "kid": signer.kid, "typ": JWS_TYP}


def records(seq: int, n: int = 2) -> list[dict]:
    return [Reading(f"TK{seq}.gas{i}", float(seq * 10 + i), "%LEL", Quality.GOOD, 1.74e9 + seq + i / 10).to_record()
            for i in range(n)]


def payload(gid: str, seq: int, prev: str | None, **extra) -> dict:
    return build_payload(gid, seq, prev, "sha256:cfg", records(seq), [], created_at=1.74e9 + seq, **extra)


def chain(signer: Signer, gid: str, first: int, last: int, prev: str | None = None,
          extra: dict[int, dict] | None = None) -> list[str]:
    out = []
    for seq in range(first, last + 1):
        jws = signer.sign(payload(gid, seq, prev, **(extra or {}).get(seq, {})))
        out.append(jws)
        prev = chain_hash(jws)
    return out


def unchecked_payload(gid: str, seq: int, prev: str | None, **extra) -> dict:
    p = {"gateway_id": gid, "seq": seq, "prev": prev, "created_at": "2025-02-19T21:20:00.000Z",
         "config_hash": "sha256:cfg", "readings": records(seq), "events": []}
    p.update(extra)
    return p


def new_signer() -> tuple[Ed25519PrivateKey, Signer]:
    priv = Ed25519PrivateKey.generate()
    return priv, Signer(priv)


def write_jwk(path: Path, signer: Signer, **members) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**signer.public_jwk, **members}, indent=2, sort_keys=True) + "\n")


def post(client: httpx.Client, jws: str) -> httpx.Response:
    return client.post("/v1/batches", content=jws.encode(), headers=JOSE)


@pytest.fixture()
def keys():
    """Private keys and signers: A and A2 of gw-01, B of gw-02, C of nobody (untrusted)."""
    return {name: new_signer() for name in ("A", "A2", "B", "C")}


def bound_trust(tmp_path: Path, keys, layout: str = "dir", *, with_a2: bool = False) -> Path:
    """trust/<gateway_id>/<kid>.jwk ("dir") or trust/<kid>.jwk with a gateway_id member ("member")."""
    trust = tmp_path / "trust"
    owners = {"A": "gw-01", "B": "gw-02", **({"A2": "gw-01"} if with_a2 else {})}
    for name, gid in owners.items():
        s = keys[name][1]
        if layout == "dir":
            write_jwk(trust / gid / f"{s.kid}.jwk", s)
        else:
            write_jwk(trust / f"{s.kid}.jwk", s, gateway_id=gid)
    return trust


def flat_trust(tmp_path: Path, keys, names=("A", "B")) -> Path:
    """The legacy layout: trust/<kid>.jwk without a gateway_id (as keygen writes it)."""
    trust = tmp_path / "trust"
    for name in names:
        write_jwk(trust / f"{keys[name][1].kid}.jwk", keys[name][1])
    return trust


def client_for(rx: BackgroundReceiver, **kw) -> httpx.Client:
    return httpx.Client(base_url=rx.url, verify=rx.ssl_context(), timeout=10, **kw)


def verify_dir(trust: Path, d: Path) -> tuple[int, str]:
    buf = io.StringIO()
    code = run_verify(trust, sorted(d.glob("*.jws")), out=buf)
    return code, buf.getvalue()


# ---------------------------------------------------------------- 1. keys are bound to gateways


@pytest.mark.e2e
@pytest.mark.parametrize("layout", ["dir", "member"])
def test_a_key_of_another_gateway_is_refused_401_counted_and_logged(tmp_path, keys, layout, caplog):
    trust = bound_trust(tmp_path, keys, layout)
    A, B = keys["A"][1], keys["B"][1]
    a = chain(A, "gw-01", 1, 2)
    caplog.set_level(logging.WARNING, logger="gateway.regulator.receiver")
    with BackgroundReceiver(tmp_path / "rx", trust) as rx, client_for(rx) as c:
        # B's key has never signed anything: no first use to go by; the trust directory says gw-02
        r = post(c, chain(B, "gw-01", 1, 1)[0])
        assert r.status_code == 401, r.text
        assert f"key {B.kid} is bound to gateway gw-02 by the trust directory, not gw-01" in r.json()["error"]
        assert [post(c, x).status_code for x in a] == [200, 200]
        # right seq and prev, signed by gw-02's trusted key: still not gw-01's record
        r = post(c, chain(B, "gw-01", 3, 3, prev=chain_hash(a[1]))[0])
        assert r.status_code == 401 and "bound to gateway gw-02" in r.json()["error"]
        assert post(c, chain(B, "gw-02", 1, 1)[0]).json()["status"] == "accepted"
        assert rx.receiver.store.last_seq("gw-01") == 2
        stats = rx.receiver.stats()
        assert stats["rejected_key_binding"] == 2 and stats["accepted"] == 3
    lines = [r.getMessage() for r in caplog.records if "bound to gateway gw-02" in r.getMessage()]
    assert len(lines) == 2 and all("\n" not in m and m.startswith("rejected 401: ") for m in lines), lines

    # offline: the same forgery in an export is a binding fault
    out = tmp_path / "export"
    export_batches(tmp_path / "rx" / "receiver.sqlite", out)
    assert verify_dir(trust, out)[0] == 0
    (out / "gw-01-3.jws").write_text(chain(B, "gw-01", 3, 3, prev=chain_hash(a[1]))[0])
    code, text = verify_dir(trust, out)
    assert code == 1 and re.search(r"gw-01-3\.jws: binding: key \S+ is bound to gateway gw-02", text), text


@pytest.mark.e2e
def test_trust_directory_contradictions_and_unbound_keys_under_require_binding(tmp_path, keys):
    A, B = keys["A"][1], keys["B"][1]
    t1 = tmp_path / "t1"
    write_jwk(t1 / "gw-01" / f"{A.kid}.jwk", A, gateway_id="gw-02")
    with pytest.raises(ReceiverError, match=r"gateway_id 'gw-02' contradicts its directory 'gw-01'"):
        BackgroundReceiver(tmp_path / "rx1", t1).start()
    t2 = tmp_path / "t2"
    write_jwk(t2 / "gw-01" / f"{A.kid}.jwk", A)
    write_jwk(t2 / "gw-02" / f"{A.kid}.jwk", A)
    with pytest.raises(ReceiverError, match=r"bound to gateway gw-02 here but to gateway gw-01"):
        BackgroundReceiver(tmp_path / "rx2", t2).start()
    t3 = flat_trust(tmp_path / "x", keys, ("B",))
    write_jwk(t3 / "gw-01" / f"{A.kid}.jwk", A)
    with pytest.raises(ReceiverError, match=r"key is not bound to a gateway"):
        BackgroundReceiver(tmp_path / "rx3", t3, require_binding=True).start()
    # without require_binding the flat key is served (bound on first use), the bound one as bound
    with BackgroundReceiver(tmp_path / "rx3", t3) as rx, client_for(rx) as c:
        assert rx.receiver.bindings() == {A.kid: "gw-01", B.kid: None}
        assert post(c, chain(B, "gw-02", 1, 1)[0]).status_code == 200
        assert post(c, chain(B, "gw-03", 1, 1)[0]).status_code == 401


@pytest.mark.e2e
def test_cli_receiver_refuses_unbound_keys_with_require_bound_keys(tmp_path, keys):
    trust = bound_trust(tmp_path, keys)
    write_jwk(trust / f"{keys['C'][1].kid}.jwk", keys["C"][1])   # one legacy unbound key
    store = tmp_path / "rx.sqlite"
    res = subprocess.run([sys.executable, "-m", "gateway.regulator.receiver", "--listen", "127.0.0.1:0", "--store", str(store),
                          "--trust", str(trust), "--require-bound-keys"], cwd=ROOT, capture_output=True, text=True,
                         timeout=30)
    assert res.returncode == 2 and "key is not bound to a gateway" in res.stderr, res.stderr


# ---------------------------------------------------------------- 2. key rotation needs proof of possession


@pytest.mark.e2e
def test_announce_key_without_or_with_a_wrong_proof_is_refused_and_cannot_lock_out_the_owner(tmp_path, keys):
    trust = flat_trust(tmp_path, keys)   # the legacy layout: B is unbound until it first signs
    (pa, A), (pb, B) = keys["A"], keys["B"]
    a1 = chain(A, "gw-01", 1, 1)[0]
    hdr = batch_header(A)
    with BackgroundReceiver(tmp_path / "rx", trust) as rx, client_for(rx) as c:
        assert post(c, a1).status_code == 200
        # gw-01 announces gw-02's published public key: without a proof -> 400
        bare = raw_jws(pa, hdr, unchecked_payload("gw-01", 2, chain_hash(a1), announce_key=B.public_jwk))
        r = post(c, bare)
        assert r.status_code == 400 and "without announce_key_proof" in r.json()["error"], r.text
        # ... with a "proof" it made itself (signed by A, not by B's private key) -> 401
        forged = A.sign_jws(key_proof_claims("gw-01", B.kid, 2), "hazard-gateway-key-proof+jws")
        r = post(c, raw_jws(pa, hdr, unchecked_payload("gw-01", 2, chain_hash(a1), announce_key=B.public_jwk,
                                                        announce_key_proof=forged)))
        assert r.status_code == 401 and r.json()["error"].startswith("key_proof:"), r.text
        # a real proof by the new key, but for another batch (seq 7), replayed here -> 401
        n_priv, N = new_signer()
        other = N.announcement("gw-01", 7)
        r = post(c, raw_jws(pa, hdr, unchecked_payload("gw-01", 2, chain_hash(a1), **other)))
        assert r.status_code == 401 and "key_proof" in r.json()["error"] and '"seq":7' in r.json()["error"]
        # the owner of B is not locked out
        assert post(c, chain(B, "gw-02", 1, 1)[0]).json()["status"] == "accepted"
        assert rx.receiver.store.last_seq("gw-01") == 1
        st = rx.receiver.stats()
        assert st["rejected_payload"] == 1 and st["rejected_key_proof"] == 2


@pytest.mark.e2e
def test_rotation_with_proof_and_a_key_change_without_announcement(tmp_path, keys):
    trust = bound_trust(tmp_path, keys, "member", with_a2=True)   # A2: a trusted key of gw-01, never announced
    A, A2 = keys["A"][1], keys["A2"][1]
    _, N = new_signer()
    b = chain(A, "gw-01", 1, 2, extra={2: N.announcement("gw-01", 2)})
    b += chain(N, "gw-01", 3, 3, prev=chain_hash(b[-1]))
    with BackgroundReceiver(tmp_path / "rx", trust) as rx, client_for(rx) as c:
        assert [post(c, x).json()["status"] for x in b] == ["accepted"] * 3
        r = post(c, chain(A2, "gw-01", 4, 4, prev=chain_hash(b[-1]))[0])
        assert r.status_code == 401 and r.json()["error"].startswith("key change: gw-01 seq 4 is signed by"), r.text
        assert rx.receiver.stats()["rejected_key_change"] == 1
        # the old key stays trusted for its own gateway
        assert post(c, chain(A, "gw-01", 4, 4, prev=chain_hash(b[-1]))[0]).json()["status"] == "accepted"
    out = tmp_path / "export"
    assert export_batches(tmp_path / "rx" / "receiver.sqlite", out) == 4
    code, text = verify_dir(trust, out)
    assert code == 0 and "announces key" in text, text


def test_verify_refuses_a_key_change_without_a_proven_announcement(tmp_path, keys):
    trust = flat_trust(tmp_path, keys, ("A", "A2"))   # both trusted; today's layout
    (pa, A), A2 = keys["A"], keys["A2"][1]
    _, N = new_signer()
    d = tmp_path / "changed"
    d.mkdir()
    b = chain(A, "gw-01", 1, 2)
    b += chain(A2, "gw-01", 3, 3, prev=chain_hash(b[-1]))   # switch to A2, never announced
    for i, x in enumerate(b, start=1):
        (d / f"gw-01-{i}.jws").write_text(x)
    code, text = verify_dir(trust, d)
    assert code == 1 and re.search(r"gw-01-3\.jws: key change: seq 3 is signed by \S+, which neither", text), text

    d = tmp_path / "noproof"   # announced, but without proof of possession
    d.mkdir()
    a1 = A.sign(payload("gw-01", 1, None))
    a2 = raw_jws(pa, batch_header(A), unchecked_payload("gw-01", 2, chain_hash(a1), announce_key=N.public_jwk))
    n3 = N.sign(payload("gw-01", 3, chain_hash(a2)))
    for i, x in enumerate((a1, a2, n3), start=1):
        (d / f"gw-01-{i}.jws").write_text(x)
    code, text = verify_dir(trust, d)
    assert code == 1 and "gw-01-2.jws: payload: announce_key" in text and "gw-01-3.jws: kid: unknown key" in text, text

    d = tmp_path / "proven"
    d.mkdir()
    b = chain(A, "gw-01", 1, 2, extra={2: N.announcement("gw-01", 2)})
    b += chain(N, "gw-01", 3, 4, prev=chain_hash(b[-1]))
    for i, x in enumerate(b, start=1):
        (d / f"gw-01-{i}.jws").write_text(x)
    code, text = verify_dir(trust, d)
    assert code == 0, text


# ---------------------------------------------------------------- 3. status needs the upload's trust


@pytest.mark.e2e
def test_status_needs_a_fresh_request_signed_by_a_key_of_that_gateway(tmp_path, keys):
    trust = bound_trust(tmp_path, keys, "member")
    A, B, C = keys["A"][1], keys["B"][1], keys["C"][1]
    _, G9 = new_signer()
    write_jwk(trust / f"{G9.kid}.jwk", G9, gateway_id="gw-09")
    b = chain(A, "gw-01", 1, 2)
    path = "/v1/gateways/gw-01/status"
    with BackgroundReceiver(tmp_path / "rx", trust) as rx, client_for(rx) as c:
        assert [post(c, x).status_code for x in b] == [200, 200]
        r = c.get(path)
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("JWS")
        assert "last_hash" not in r.text
        good = signed_request_headers(A, "gw-01")
        r = c.get(path, headers=good)
        assert r.status_code == 200 and r.json()["last_hash"] == chain_hash(b[1]) and r.json()["last_seq"] == 2
        r = c.get(path, headers=good)   # the same signed request again
        assert r.status_code == 401 and "replayed" in r.json()["error"]
        r = c.get(path, headers=signed_request_headers(B, "gw-01"))   # another gateway's trusted key
        assert r.status_code == 401 and "bound to gateway gw-02" in r.json()["error"]
        r = c.get(path, headers=signed_request_headers(C, "gw-01"))   # an unknown key
        assert r.status_code == 401 and "unknown key" in r.json()["error"]
        r = c.get("/v1/gateways/gw-02/status", headers=signed_request_headers(A, "gw-01"))
        assert r.status_code == 401
        r = c.get(path, headers=signed_request_headers(A, "gw-01", path="/v1/gateways/gw-01/other"))
        assert r.status_code == 401 and "not GET /v1/gateways/gw-01/status" in r.json()["error"]
        r = c.get(path, headers=signed_request_headers(A, "gw-01", now=time.time() - 3600))
        assert r.status_code == 401 and "iat" in r.json()["error"]
        r = c.get(path, headers={"authorization": "Bearer " + b[1]})
        assert r.status_code == 401
        # a batch is not a status request (typ), even when signed by the right key
        r = c.get(path, headers={"authorization": "JWS " + b[1]})
        assert r.status_code == 401 and "typ" in r.json()["error"]
        r = c.get("/v1/gateways/gw-09/status", headers=signed_request_headers(G9, "gw-09"))
        assert r.status_code == 404
        st = rx.receiver.stats()
        assert st["status_ok"] == 2 and st["rejected_status_auth"] == 9
    # the same decision without HTTP (as an MQTT bridge would use it), default freshness window
    rcv = Receiver(tmp_path / "rx" / "receiver.sqlite", trust)
    try:
        assert rcv.authorize_status("gw-01", path, signed_request_headers(A, "gw-01")["authorization"]) is None
        old = signed_request_headers(A, "gw-01", now=time.time() - 301)["authorization"]
        assert rcv.authorize_status("gw-01", path, old)[0] == 401
    finally:
        rcv.close()


# ---------------------------------------------------------------- 4. bounded JSON


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.mark.e2e
def test_deeply_nested_or_oversized_json_in_header_or_payload_is_400_with_the_reason(tmp_path, keys):
    trust = bound_trust(tmp_path, keys, "member")
    pa, A = keys["A"]
    hdr = cjson(batch_header(A))
    body = cjson(payload("gw-01", 1, None))
    with BackgroundReceiver(tmp_path / "rx", trust) as rx, client_for(rx) as c:
        cases = {
            "header 5000 deep": raw_jws(pa, hdr[:-1] + b',"x":' + _nested(5000) + b"}", body),
            "header 40 deep": raw_jws(pa, hdr[:-1] + b',"x":' + _nested(40) + b"}", body),
            "payload 5000 deep": raw_jws(pa, hdr, cjson(payload("gw-01", 1, None))[:-1] + b',"x":'
                                         + _nested(5000) + b"}"),
            "payload 33 deep": raw_jws(pa, hdr, cjson(payload("gw-01", 1, None))[:-1] + b',"x":'
                                       + _nested(32) + b"}"),
        }
        for name, jws in cases.items():
            r = post(c, jws)
            assert r.status_code == 400, (name, r.status_code, r.text[:200])
            assert "nested deeper than 32 levels" in r.json()["error"], (name, r.text)
        r = post(c, raw_jws(pa, hdr, cjson(payload("gw-01", 1, None))[:-1] + b',"n":' + b"7" * 5000 + b"}"))
        assert r.status_code == 400 and "JWS payload is not acceptable JSON" in r.json()["error"], r.text[:200]
        r = post(c, raw_jws(pa, hdr[:-1] + b',"pad":"' + b"p" * 2000 + b'"}', cjson(payload("gw-01", 1, None))))
        assert r.status_code == 400 and "at most 1024 are accepted" in r.json()["error"], r.text[:200]
        # 32 levels (payload, events, an event, 29 more) is fine
        ok = A.sign(payload("gw-01", 1, None) | {"events": [{"kind": "deep",
                                                              "d": json.loads(b"[" * 28 + b"{}" + b"]" * 28)}]})
        assert post(c, ok).json()["status"] == "accepted"
        assert rx.receiver.stats()["rejected_malformed"] == 6
    # the offline verifier reports such a file instead of crashing
    d = tmp_path / "deep"
    d.mkdir()
    (d / "gw-01-1.jws").write_text(cases["payload 5000 deep"])
    code, text = verify_dir(trust, d)
    assert code == 1 and "nested deeper than 32 levels" in text, text


# ---------------------------------------------------------------- 5. bounded connections, time and memory


async def _tls_open(port: int, ctx: ssl.SSLContext):
    return await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="127.0.0.1")


async def _closed_within(reader: asyncio.StreamReader, timeout: float) -> bool:
    """True when the server closes (EOF, reset, or an answer then EOF) within ``timeout``."""
    try:
        async with asyncio.timeout(timeout):
            while await reader.read(65536):
                pass
        return True
    except TimeoutError:   # before OSError: TimeoutError is one
        return False
    except (ConnectionError, ssl.SSLError, OSError):
        return True


@pytest.mark.e2e
async def test_honest_gateway_is_served_while_300_slow_connections_are_held_then_dropped(tmp_path, keys):
    trust = bound_trust(tmp_path, keys, "member")
    A = keys["A"][1]
    lim = ReceiverLimits(header_timeout_s=4.0, tls_handshake_timeout_s=4.0, body_timeout_s=4.0)
    b = chain(A, "gw-01", 1, 3)
    with BackgroundReceiver(tmp_path / "rx", trust, limits=lim) as rx:
        port = int(rx.url.rsplit(":", 1)[1])
        ctx = rx.ssl_context()
        t0 = time.monotonic()
        # 100 TCP connections that never start TLS
        tcp = await asyncio.gather(*(asyncio.open_connection("127.0.0.1", port) for _ in range(100)))
        # 140 TLS connections with half a request head, 30 that trickle a byte now and then (also
        # after a first answer, on a kept-alive connection), 30 that send headers and half a body
        tls = await asyncio.gather(*(_tls_open(port, ctx) for _ in range(200)))
        partial, trickle, slow_body = tls[:140], tls[140:170], tls[170:]
        for _, w in partial:
            w.write(b"POST /v1/batches HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/jose\r\n")
        for i, (r, w) in enumerate(trickle):
            if i % 2:
                w.write(b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                assert (await r.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
                await r.readexactly(11)   # {"ok":true}
        for _, w in slow_body:
            w.write(b"POST /v1/batches HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/jose\r\n"
                    b"Content-Length: 5000\r\n\r\n" + b"e" * 100)
        await asyncio.gather(*(w.drain() for _, w in tls))
        opened = time.monotonic() - t0

        async def trickler() -> None:
            for _ in range(40):
                for _, w in trickle:
                    if not w.is_closing():
                        w.write(b"X")
                await asyncio.sleep(0.25)

        trickling = asyncio.create_task(trickler())
        # the honest gateway, while all 300 are open
        async with httpx.AsyncClient(base_url=rx.url, verify=ctx, timeout=5) as c:
            t1 = time.monotonic()
            for jws in b:
                r = await c.post("/v1/batches", content=jws.encode(), headers=JOSE)
                assert r.status_code == 200, r.text
            r = await c.get("/v1/gateways/gw-01/status", headers=signed_request_headers(A, "gw-01"))
            assert r.status_code == 200 and r.json()["last_seq"] == 3
            served = time.monotonic() - t1
        assert served < 3.0, f"honest requests took {served:.1f} s"
        assert opened + served < lim.header_timeout_s, "the slow connections were not all open while it was served"
        # every slow connection is dropped by the server, soon after its deadline
        closed = await asyncio.gather(*(_closed_within(r, 8.0) for r, _ in tcp + tls))
        trickling.cancel()
        assert sum(closed) == 300, f"{300 - sum(closed)} slow connections still open"
        elapsed = time.monotonic() - t0
        for _, w in tcp + tls:
            w.close()
        st = rx.receiver.stats()
        assert st["rejected_header_timeout"] == 170 and st["rejected_body_timeout"] == 30, st
        assert st["accepted"] == 3
    assert elapsed < 14


def _vm_hwm_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


async def _flood(port: int, ctx: ssl.SSLContext, total: int, chunked: bool) -> bytes:
    """Send a ``total``-byte body (declared, or chunked without a length), stopping once an answer
    arrives; return the answer's status line (b"" when the receiver only closed the connection)."""
    r, w = await _tls_open(port, ctx)
    head = b"POST /v1/batches HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/jose\r\n"
    head += b"Transfer-Encoding: chunked\r\n\r\n" if chunked else b"Content-Length: %d\r\n\r\n" % total
    chunk = b"A" * (1 << 20)
    answer = asyncio.create_task(r.readuntil(b"\r\n"))
    try:
        w.write(head)
        sent = 0
        while sent < total and not answer.done():
            w.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
            await w.drain()
            sent += len(chunk)
        if chunked and not answer.done():
            w.write(b"0\r\n\r\n")
        return await asyncio.wait_for(answer, 20)
    except (ConnectionError, ssl.SSLError, OSError, asyncio.IncompleteReadError):
        return answer.result() if answer.done() and not answer.exception() else b""
    finally:
        answer.cancel()
        w.close()


@pytest.mark.e2e
async def test_oversized_bodies_are_refused_in_bounded_memory_and_the_honest_gateway_is_served(tmp_path, keys):
    """24 concurrent 15 MB bodies (half declared, half chunked) against the receiver as its own process
    (default limits): each is refused (413, or 503 when the shared budget is spent) and the process's
    peak memory stays far below what buffering them would take (24 x 15 MB)."""
    trust = bound_trust(tmp_path, keys, "member")
    A = keys["A"][1]
    cert, key = make_self_signed(tmp_path / "tls")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.regulator.receiver", "--listen", "127.0.0.1:0", "--store", str(tmp_path / "rx.sqlite"),
         "--trust", str(trust), "--cert", str(cert), "--key", str(key)],
        cwd=ROOT, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        url = None
        deadline = time.monotonic() + 15
        while url is None and time.monotonic() < deadline:
            line = await asyncio.to_thread(proc.stderr.readline)
            if not line:
                break
            m = re.search(r"receiver listening on (https://127\.0\.0\.1:(\d+))", line)
            url = m.group(1) if m else None
        assert url, "receiver did not report its address"
        drain = asyncio.create_task(asyncio.to_thread(proc.stderr.read))
        port = int(url.rsplit(":", 1)[1])
        ctx = ssl.create_default_context(cafile=str(cert))
        base_kb = _vm_hwm_kb(proc.pid)
        big = 15 * 1024 * 1024
        flood = asyncio.gather(*(_flood(port, ctx, big, chunked=i % 2 == 1) for i in range(24)))
        b = chain(A, "gw-01", 1, 4)
        async with httpx.AsyncClient(base_url=url, verify=ctx, timeout=10) as c:
            await asyncio.sleep(0.2)
            codes = []
            for jws in b:
                codes.append((await c.post("/v1/batches", content=jws.encode(), headers=JOSE)).status_code)
            answers = await flood
            assert codes == [200] * 4
            # declared: 413 before a byte of the body is kept; chunked: 413 at max_body, or 503 once the
            # shared budget for large bodies is spent; the sender reads the answer (no reset)
            assert all(a.startswith(b"HTTP/1.1 413") for a in answers[0::2]), answers
            assert all(a.startswith((b"HTTP/1.1 413", b"HTTP/1.1 503")) for a in answers[1::2]), answers
            st = await c.get("/v1/gateways/gw-01/status", headers=signed_request_headers(A, "gw-01"))
            assert st.json()["last_seq"] == 4
        peak_mb = (_vm_hwm_kb(proc.pid) - base_kb) / 1024
        assert peak_mb < 160, f"receiver peak memory grew by {peak_mb:.0f} MB"
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 15) == 0
        log = await drain
        assert "receiver stats:" in log and "rejected_body_too_large=" in log, log[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
