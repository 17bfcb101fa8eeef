"""Signed batch rejections (gateway.chain.rejection): the receiver signs the content refusals it can name, over
real HTTPS; the gateway's uplink.receiver_key is checked by `check` as one FILE:LINE:COL line; person-made
mistakes with the receiver's --signing-key end in one line, never a traceback."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from gateway.config import check_secrets, load_config
from gateway.model import Quality, Reading
from gateway.regulator.receiver import BackgroundReceiver, ReceiverLimits
from gateway.chain.rejection import (MAX_REJECTION_CHARS, REJECTION_JWS_TYP, REJECTION_TYP, RejectionError,
                               body_sha256, load_receiver_key, rejection_claims, sign_rejection, verify_rejection)
from gateway.chain.signing import KeyFileError, Signer, b64url_encode, build_payload, decode_unverified, keygen

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parents[2]
JOSE = {"content-type": "application/jose"}
GW = "gw-01"


@pytest.fixture()
def setup(tmp_path: Path):
    """(gateway Signer, trust dir, receiver private.pem, receiver Signer, receiver key file <kid>.jwk)."""
    kid = keygen(tmp_path / "gwkey")
    trust = tmp_path / "trust"
    (trust / GW).mkdir(parents=True)
    shutil.copy(tmp_path / "gwkey" / f"{kid}.jwk", trust / GW / f"{kid}.jwk")
    rkid = keygen(tmp_path / "rxkey")
    return (Signer.from_file(tmp_path / "gwkey" / "private.pem"), trust, tmp_path / "rxkey" / "private.pem",
            Signer.from_file(tmp_path / "rxkey" / "private.pem"), tmp_path / "rxkey" / f"{rkid}.jwk")


def batch_payload(seq: int = 1, n: int = 3) -> dict:
    recs = [Reading(f"GT-{i}", float(i), "%LEL", Quality.GOOD, 1.76e9 + i).to_record() for i in range(n)]
    return build_payload(GW, seq, None if seq == 1 else "A" * 43, "cfg", recs, [], created_at=1.76e9)


@pytest.mark.e2e
def test_receiver_signs_the_content_refusals_it_can_name_and_no_others(tmp_path: Path, setup) -> None:
    signer, trust, rx_pem, _, rx_jwk = setup
    key = load_receiver_key(rx_jwk)
    # a body the receiver refuses for its content (400 malformed: JWS typ is not a batch's) but can name
    wrong_typ = (signer.sign_jws(batch_payload(), "not-a-batch+jws") + "\n").encode()
    good = signer.sign(batch_payload(n=200))
    with BackgroundReceiver(tmp_path / "rx", trust, signing_key=rx_pem,
                            limits=ReceiverLimits(max_body=len(good) - 1)) as rx, \
            httpx.Client(base_url=rx.url, verify=rx.ssl_context(), timeout=10) as c:
        r = c.post("/v1/batches", content=wrong_typ, headers=JOSE)
        assert r.status_code == 400 and r.json()["error"].startswith("malformed")
        claims = verify_rejection(r.json()["rejection"], key, gateway_id=GW, seq=1,
                                  sent_sha256=body_sha256(wrong_typ), status=400)   # the exact bytes, "\n" too
        assert claims["typ"] == REJECTION_TYP and claims["reason"].startswith("malformed: JWS typ")
        assert decode_unverified(r.json()["rejection"])[0]["typ"] == REJECTION_JWS_TYP
        # nothing names a batch: no rejection (the gateway holds)
        for body in (b"not-a-jws", "ünicode".encode(), b"a.b.c"):
            r = c.post("/v1/batches", content=body, headers=JOSE)
            assert r.status_code == 400 and "rejection" not in r.json(), body
        # over the cap: 413, never read whole, so never signed
        r = c.post("/v1/batches", content=good.encode(), headers=JOSE)
        assert r.status_code == 413 and "rejection" not in r.json()
        # 401 refuses the gateway, not the content
        other = Signer.from_file(rx_pem).sign(batch_payload())
        r = c.post("/v1/batches", content=other.encode(), headers=JOSE)
        assert r.status_code == 401 and "rejection" not in r.json()
        stats = rx.receiver.stats()
    assert stats["rejection_signed"] == 1 and stats["rejection_unsigned"] == 3


@pytest.mark.e2e
def test_receiver_without_a_signing_key_signs_nothing(tmp_path: Path, setup) -> None:
    signer, trust, *_ = setup
    with BackgroundReceiver(tmp_path / "rx", trust) as rx, \
            httpx.Client(base_url=rx.url, verify=rx.ssl_context(), timeout=10) as c:
        r = c.post("/v1/batches", content=signer.sign_jws(batch_payload(), "not-a-batch+jws").encode(), headers=JOSE)
    assert r.status_code == 400 and set(r.json()) == {"error"}


def test_sign_rejection_needs_a_body_that_names_a_batch(setup) -> None:
    signer, _, _, rx_signer, _ = setup

    def body(raw: bytes) -> bytes:   # a compact JWS with this payload (the signature does not matter here)
        h, _, sig = signer.sign_jws({"x": 1}, "x+jws").split(".")
        return f"{h}.{b64url_encode(raw)}.{sig}".encode()

    assert sign_rejection(rx_signer, signer.sign(batch_payload(seq=2)).encode(), 422, "x") is not None
    assert sign_rejection(rx_signer, body(b'{"gateway_id":"gw-01","seq":3}'), 400, "x") is not None
    for raw in (b'{"gateway_id":"gw-01"}', b'{"gateway_id":"gw-01","seq":true}', b'{"gateway_id":"gw-01","seq":0}',
                b'{"gateway_id":"../etc","seq":1}', b'{"gateway_id":7,"seq":1}', b"[1,2]", b"not json",
                b'{"gateway_id":"gw-01","seq":1,"x":' + b"[" * 40 + b"]" * 40 + b"}"):   # beyond the parse bounds
        assert sign_rejection(rx_signer, body(raw), 400, "x") is None, raw


def test_verify_rejection_says_why_in_one_line(setup) -> None:
    _, _, _, rx_signer, rx_jwk = setup
    key = load_receiver_key(rx_jwk)
    sha = body_sha256(b"batch")

    def rej(**over) -> str:
        claims = {**rejection_claims(GW, 5, sha, 422, "payload:\n bad"), **over}
        return rx_signer.sign_jws(claims, REJECTION_JWS_TYP)

    ok = verify_rejection(rej(), key, gateway_id=GW, seq=5, sent_sha256=sha, status=422)
    assert ok["reason"] == "payload: bad" and isinstance(ok["iat"], int)
    cases = [
        (dict(rejection=rej(), receiver_key=None), "no uplink.receiver_key"),
        (dict(rejection=None), "carries no signed rejection"),
        (dict(rejection="x" * (MAX_REJECTION_CHARS + 1)), "at most"),
        (dict(rejection=rej(typ="other")), "rejection typ 'other'"),
        (dict(rejection=rej(seq=True)), "names seq True, not 5"),
        (dict(rejection=rej(batch_sha256=sha.upper())), "other bytes"),
        (dict(rejection=rej(status=True), status=1), "status True"),
        (dict(rejection=rej(reason=None)), "no reason"),
        (dict(rejection=rx_signer.sign_jws(rejection_claims(GW, 5, sha, 422, "x"), "other+jws")), "does not verify"),
        (dict(sent_sha256=None), "other bytes"),
    ]
    for over, want in cases:
        kw = dict(rejection=rej(), receiver_key=key, gateway_id=GW, seq=5, sent_sha256=sha, status=422, **{})
        kw.update(over)
        rejection, receiver_key = kw.pop("rejection"), kw.pop("receiver_key")
        with pytest.raises(RejectionError) as ei:
            verify_rejection(rejection, receiver_key, **kw)
        assert want in str(ei.value) and "\n" not in str(ei.value), (over, str(ei.value))


def test_load_receiver_key_refuses_what_is_not_a_public_jwk(tmp_path: Path, setup) -> None:
    *_, rx_jwk = setup
    assert len(load_receiver_key(rx_jwk)) == 1
    private = tmp_path / "private.jwk"
    private.write_text(json.dumps({**json.loads(rx_jwk.read_text()), "d": "AAAA"}))
    for path, want in ((tmp_path / "missing.jwk", "cannot read"), (private, "contains a private key"),
                       (rx_jwk.parent / "private.pem", "a PEM file, not a JWK")):
        with pytest.raises(KeyFileError, match=want):
            load_receiver_key(path)


CONFIG = """gateway: {{id: s, state_dir: state}}
keys:
  private_key: keys/private.pem
uplink:
  url: https://127.0.0.1:9/v1/batches
  receiver_key: {key}
devices:
  - name: plc
    protocol: modbus_tcp
    host: 127.0.0.1
    port: 5020
    tags: [{{name: GT-101, address: 40001, type: float32, unit: "%LEL"}}]
"""


@pytest.mark.e2e
@pytest.mark.parametrize("what,want", [
    ("good", None),
    ("missing", "file rx/missing.jwk does not exist"),
    ("not_json", "receiver key rx/bad.jwk: "),
    ("private_jwk", "JWK contains a private key"),
    ("pem", "a PEM file, not a JWK"),
])
def test_check_reports_a_bad_receiver_key_as_one_line(tmp_path: Path, what: str, want: str | None) -> None:
    keygen(tmp_path / "keys")
    kid = keygen(tmp_path / "rx")
    name = {"good": f"{kid}.jwk", "missing": "missing.jwk", "pem": "private.pem"}.get(what, "bad.jwk")
    if what == "not_json":
        (tmp_path / "rx" / "bad.jwk").write_text('{"kty":\n')
    if what == "private_jwk":
        (tmp_path / "rx" / "bad.jwk").write_text(json.dumps({**json.loads((tmp_path / "rx" / f"{kid}.jwk").read_text()),
                                                            "d": "AAAA"}))
    site = tmp_path / "gw.yaml"
    site.write_text(CONFIG.format(key=f"rx/{name}"))
    problems = check_secrets(load_config(site))
    r = subprocess.run([sys.executable, "-m", "gateway.cli", "check", str(site)], capture_output=True, text=True,
                       cwd=ROOT, timeout=60)
    assert "Traceback" not in r.stderr
    if want is None:
        assert problems == [] and r.returncode == 0, r.stderr
        return
    assert [(p.line, p.path) for p in problems] == [(6, "uplink.receiver_key")]
    assert r.returncode == 2
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith(f"{site}:6:17: uplink.receiver_key: ") and want in line, line


@pytest.mark.e2e
@pytest.mark.parametrize("entry", [["-m", "gateway.cli", "receiver"], ["-m", "gateway.regulator.receiver"]])
def test_receiver_signing_key_mistakes_are_one_line(tmp_path: Path, setup, entry: list[str]) -> None:
    _, trust, rx_pem, _, rx_jwk = setup
    loose = tmp_path / "loose.pem"
    shutil.copy(rx_pem, loose)
    loose.chmod(0o644)
    for key, want in ((tmp_path / "nope.pem", "no such key file"), (loose, "chmod 600"),
                      (rx_jwk, "a JWK (a public key)")):
        r = subprocess.run([sys.executable, *entry, "--listen", "127.0.0.1:0", "--store", str(tmp_path / "s.sqlite"),
                            "--trust", str(trust), "--signing-key", str(key)], capture_output=True, text=True,
                           cwd=ROOT, timeout=60)
        assert r.returncode == 2 and "Traceback" not in r.stderr
        (line,) = r.stderr.strip().splitlines()
        assert "--signing-key" in line and want in line, line
