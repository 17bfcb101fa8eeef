"""gateway.chain.signing: keys, JWS format and verification, checked against jwcrypto (independent JOSE library)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from jwcrypto import jwk as jc_jwk
from jwcrypto import jws as jc_jws

from gateway.model import Quality, Reading
from gateway.chain.signing import (JWS_TYP, BatchError, KeyFileError, Signer, b64url_decode, b64url_encode,
                             build_payload, chain_hash, keygen, load_trust_dir, verify_batch)

TS = "2025-03-01T08:00:00.000Z"


def readings(n: int = 3) -> list[dict]:
    out = [Reading("T101.gas", 12.5 + i, "%LEL", Quality.GOOD, 1740816000.0 + i).to_record() for i in range(n)]
    out.append(Reading.bad("T102.gas", "%LEL", "timeout", ts=1740816000.0).to_record())
    return out


def payload(seq: int = 1, prev: str | None = None, gid: str = "gw-01", **extra) -> dict:
    return build_payload(gid, seq, prev, "sha256:cfg", readings(), [{"kind": "alarm", "tag": "T101.gas"}],
                         created_at=TS, **extra)


@pytest.fixture()
def keydir(tmp_path):
    d = tmp_path / "keys"
    kid = keygen(d)
    return d, kid


def test_keygen_writes_0600_pem_and_jwk_named_by_rfc7638_thumbprint(keydir):
    d, kid = keydir
    pem = d / "private.pem"
    assert stat.S_IMODE(pem.stat().st_mode) == 0o600
    key = serialization.load_pem_private_key(pem.read_bytes(), password=None)
    assert isinstance(key, Ed25519PrivateKey)
    assert b"BEGIN PRIVATE KEY" in pem.read_bytes()  # PKCS#8, unencrypted
    jwk = json.loads((d / f"{kid}.jwk").read_text())
    assert jwk["kty"] == "OKP" and jwk["crv"] == "Ed25519" and jwk["kid"] == kid and "d" not in jwk
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert b64url_decode(jwk["x"]) == raw
    # independent thumbprint: jwcrypto, and by hand per RFC 7638 s.3
    assert jc_jwk.JWK(kty="OKP", crv="Ed25519", x=jwk["x"]).thumbprint() == kid
    by_hand = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": jwk["x"]}, separators=(",", ":")).encode()
    assert base64.urlsafe_b64encode(hashlib.sha256(by_hand).digest()).rstrip(b"=").decode() == kid


def test_keygen_never_overwrites_a_private_key(keydir):
    d, kid = keydir
    before = (d / "private.pem").read_bytes()
    with pytest.raises(KeyFileError, match="refusing to overwrite") as ei:
        keygen(d)
    assert "\n" not in str(ei.value)
    assert (d / "private.pem").read_bytes() == before
    assert [p.name for p in d.glob("*.jwk")] == [f"{kid}.jwk"]


def test_keygen_mode_is_0600_even_with_a_permissive_umask(tmp_path):
    old = os.umask(0)
    try:
        keygen(tmp_path / "k")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "k" / "private.pem").stat().st_mode) == 0o600


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_signer_refuses_key_readable_by_group_or_others(keydir, mode):
    d, _ = keydir
    os.chmod(d / "private.pem", mode)
    with pytest.raises(KeyFileError) as ei:
        Signer.from_file(d / "private.pem")
    msg = str(ei.value)
    assert f"{mode:04o}" in msg and "chmod 600" in msg and str(d / "private.pem") in msg and "\n" not in msg


def test_signer_refuses_missing_non_pem_and_non_ed25519(tmp_path):
    with pytest.raises(KeyFileError, match="no such key file"):
        Signer.from_file(tmp_path / "nope.pem")
    junk = tmp_path / "junk.pem"
    fd = os.open(junk, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"not a key\n")
    os.close(fd)
    with pytest.raises(KeyFileError, match="not a PEM private key"):
        Signer.from_file(junk)
    ec = tmp_path / "ec.pem"
    fd = os.open(ec, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, generate_private_key(SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    os.close(fd)
    with pytest.raises(KeyFileError, match="not an Ed25519 key"):
        Signer.from_file(ec)


def test_jws_from_signer_verifies_with_jwcrypto_and_has_the_agreed_header(keydir):
    d, kid = keydir
    signer = Signer.from_file(d / "private.pem")
    assert signer.kid == kid and signer.public_jwk["kid"] == kid
    p = payload()
    compact = signer.sign(p)
    pub = jc_jwk.JWK(**json.loads((d / f"{kid}.jwk").read_text()))
    token = jc_jws.JWS()
    token.deserialize(compact)
    token.verify(pub, alg="EdDSA")
    assert token.jose_header == {"alg": "EdDSA", "kid": kid, "typ": JWS_TYP}
    # payload bytes: compact UTF-8 JSON with sorted keys
    assert token.payload == json.dumps(p, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert json.loads(token.payload)["readings"][-1] == {**readings()[-1]}
    # header is compact + sorted too (one canonical compact form per batch)
    assert b64url_decode(compact.split(".")[0]) == json.dumps(
        {"alg": "EdDSA", "kid": kid, "typ": JWS_TYP}, separators=(",", ":")).encode()


def test_verify_batch_accepts_a_jwcrypto_made_batch(keydir, tmp_path):
    """The other direction: our verifier accepts a batch signed by the independent library."""
    d, _ = keydir
    k = jc_jwk.JWK.generate(kty="OKP", crv="Ed25519")
    kid = k.thumbprint()
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / f"{kid}.jwk").write_text(k.export_public())
    token = jc_jws.JWS(json.dumps(payload()).encode())
    token.add_signature(k, alg="EdDSA", protected={"alg": "EdDSA", "kid": kid, "typ": JWS_TYP})
    got = verify_batch(token.serialize(compact=True), load_trust_dir(tmp_path / "t"))
    assert got["gateway_id"] == "gw-01" and got["seq"] == 1


def test_chain_hash_is_b64url_sha256_of_the_ascii_jws():
    s = "eyJ.eyJ.sig"
    assert chain_hash(s) == base64.urlsafe_b64encode(hashlib.sha256(s.encode()).digest()).decode().rstrip("=")
    assert len(chain_hash(s)) == 43 and "=" not in chain_hash(s)


def _resign(signer: Signer, header: dict, body: bytes) -> str:
    h = b64url_encode(json.dumps(header, separators=(",", ":")).encode())
    si = h + "." + b64url_encode(body)
    return si + "." + b64url_encode(signer._key.sign(si.encode()))


def test_verify_batch_names_the_failed_check(keydir, tmp_path):
    d, kid = keydir
    signer = Signer.from_file(d / "private.pem")
    trust = load_trust_dir(d)
    good = signer.sign(payload())
    assert verify_batch(good, trust)["seq"] == 1

    h, p, s = good.split(".")
    flipped_payload = h + "." + p[:10] + ("A" if p[10] != "A" else "B") + p[11:] + "." + s
    cases = {
        "signature": [flipped_payload, h + "." + p + "." + s[:-2] + ("AA" if s[-2:] != "AA" else "BA")],
        "malformed": ["", "a.b", h + "." + p + "." + s + ".x", "!!!." + p + "." + s, h + "." + p + "=." + s,
                      _resign(signer, {"alg": "EdDSA", "kid": kid, "typ": "JWT"}, b"{}"),
                      _resign(signer, {"alg": "EdDSA", "kid": kid, "typ": JWS_TYP, "crit": ["b64"], "b64": False},
                              b"{}")],
        "alg": [_resign(signer, {"alg": "none", "kid": kid, "typ": JWS_TYP}, b"{}"),
                _resign(signer, {"alg": "HS256", "kid": kid, "typ": JWS_TYP}, b"{}")],
        "kid": [_resign(Signer(Ed25519PrivateKey.generate()),
                        {"alg": "EdDSA", "kid": "unknownkid", "typ": JWS_TYP}, b"{}"),
                Signer(Ed25519PrivateKey.generate()).sign(payload())],
        "payload": [_resign(signer, {"alg": "EdDSA", "kid": kid, "typ": JWS_TYP}, b"[1]"),
                    _resign(signer, {"alg": "EdDSA", "kid": kid, "typ": JWS_TYP},
                            json.dumps({**payload(), "seq": 0}).encode()),
                    _resign(signer, {"alg": "EdDSA", "kid": kid, "typ": JWS_TYP},
                            json.dumps({**payload(), "seq": 2}).encode()),  # seq 2 with prev null
                    _resign(signer, {"alg": "EdDSA", "kid": kid, "typ": JWS_TYP},
                            json.dumps({k: v for k, v in payload().items() if k != "config_hash"}).encode())],
    }
    for check, compacts in cases.items():
        for c in compacts:
            with pytest.raises(BatchError) as ei:
                verify_batch(c, trust)
            assert ei.value.check == check, (check, str(ei.value))
            assert "\n" not in str(ei.value)


def test_non_canonical_base64url_is_refused():
    assert b64url_decode("AA") == b"\x00"
    with pytest.raises(ValueError):
        b64url_decode("AB")  # same byte, stray trailing bits: a second spelling of one batch
    with pytest.raises(ValueError):
        b64url_decode("AA==")


@pytest.mark.parametrize("bad, why", [
    ({"gateway_id": "../etc"}, "gateway_id"),
    ({"gateway_id": ""}, "gateway_id"),
    ({"seq": True}, "seq"),
    ({"seq": 3, "prev": "short"}, "prev"),
    ({"created_at": "2025-03-01T08:00:00+08:00"}, "not UTC"),
    ({"created_at": "yesterday"}, "created_at"),
    ({"readings": [{"tag": "x", "value": 1, "unit": "ppm", "quality": "fine", "ts": TS}]}, "quality"),
    ({"readings": [{"tag": "x", "value": 1, "unit": "ppm", "quality": "bad", "ts": TS}]}, "no value"),
    ({"readings": [{"tag": "x", "unit": "ppm", "quality": "good", "ts": TS}]}, "lacks value"),
    ({"events": {"a": 1}}, "events"),
    ({"announce_key": {"kty": "OKP", "crv": "Ed25519", "x": "AA"}}, "announce_key"),
])
def test_signer_refuses_a_payload_of_the_wrong_shape(keydir, bad, why):
    d, _ = keydir
    signer = Signer.from_file(d / "private.pem")
    with pytest.raises(BatchError, match=why) as ei:
        signer.sign({**payload(), **bad})
    assert ei.value.check == "payload"


def test_signer_refuses_nan():
    signer = Signer(Ed25519PrivateKey.generate())
    p = payload()
    p["events"] = [{"v": float("nan")}]
    with pytest.raises(ValueError):
        signer.sign(p)


def test_load_trust_dir_checks_kid_and_refuses_private_keys(tmp_path, keydir):
    d, kid = keydir
    assert list(load_trust_dir(d)) == [kid]
    t = tmp_path / "trust"
    t.mkdir()
    jwk = json.loads((d / f"{kid}.jwk").read_text())
    (t / "a.jwk").write_text(json.dumps({**jwk, "kid": "not-the-thumbprint"}))
    with pytest.raises(KeyFileError, match=r"a\.jwk: JWK kid 'not-the-thumbprint' is not its RFC 7638"):
        load_trust_dir(t)
    (t / "a.jwk").write_text(json.dumps({**jwk, "d": jwk["x"]}))
    with pytest.raises(KeyFileError, match="private key"):
        load_trust_dir(t)
    (t / "a.jwk").write_text('{"kty": "OKP",\n "crv": }')
    with pytest.raises(KeyFileError, match=r"a\.jwk:2: not JSON"):
        load_trust_dir(t)
    (t / "a.jwk").write_text(json.dumps({"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}))
    with pytest.raises(KeyFileError, match="not an Ed25519 key"):
        load_trust_dir(t)
    with pytest.raises(KeyFileError, match="does not exist"):
        load_trust_dir(tmp_path / "missing")
