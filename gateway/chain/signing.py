"""Signed, hash-chained batches: Ed25519 keys, JWS signing and verification.

Batch format (the regulator needs nothing but the public key to check it):

* A batch is a JWS in compact serialization (RFC 7515 section 7.1) with
  ``alg`` "EdDSA" over Ed25519 (RFC 8037 section 3.1).
* Protected header, exactly ``{"alg":"EdDSA","kid":<kid>,"typ":"hazard-gateway-batch+jws"}``
  (compact JSON, sorted keys). ``kid`` is the RFC 7638 JWK thumbprint of the
  public key: base64url (no padding) SHA-256 over ``{"crv":"Ed25519","kty":"OKP","x":...}``
  (RFC 8037 section 2 lists the required OKP members).
* Payload: UTF-8 JSON, compact separators, sorted keys, no NaN/Infinity, with at least
  ``gateway_id`` (str, ``[A-Za-z0-9._-]``, 1..64, not starting with "."), ``seq`` (int >= 1,
  no gaps), ``prev`` (``chain_hash`` of the previous batch's compact JWS, null for seq 1),
  ``created_at`` (RFC 3339 UTC), ``config_hash`` (str), ``readings`` (list of
  ``{tag, value|null, unit, quality, ts, ...}``, see ``gateway.model.Reading.to_record``)
  and ``events`` (list of objects). Optional ``announce_key``: a public Ed25519 JWK
  the gateway rotates to, always together with ``announce_key_proof``: proof of possession
  of the new key, a compact JWS signed BY THE NEW KEY (header ``{"alg":"EdDSA","kid":<new
  kid>,"typ":"hazard-gateway-key-proof+jws"}``) over exactly ``{"announce_key": <new kid>,
  "gateway_id": <gateway_id>, "seq": <seq>}`` of the batch that carries it
  (:meth:`Signer.announcement` builds both). The batch itself is signed with the old key,
  so the old key vouches for the new one and the new key proves it is held by the announcer
  (a published public key of someone else cannot be announced). A receiver trusts the new
  key once the batch carrying it verifies.
* Bounds: a protected header is at most 1024 bytes; header and payload JSON nest at most
  ``MAX_JSON_DEPTH`` (32) containers deep; anything else is "malformed".
* Hash chain: ``prev`` of batch n == base64url(SHA-256(ASCII bytes of the compact JWS
  of batch n-1)), without padding.

Signing and verification use ``cryptography`` directly (Ed25519 per RFC 8032);
tests check interoperability with an independent JOSE library (jwcrypto).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import stat
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Mapping

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gateway.model import rfc3339

try:   # a fast, exact JSON writer (pyproject dependency); canonical_json falls back to the standard library
    import orjson as _orjson
    _ORJSON_OPTS = _orjson.OPT_SORT_KEYS | _orjson.OPT_PASSTHROUGH_SUBCLASS | _orjson.OPT_PASSTHROUGH_DATETIME \
        | _orjson.OPT_PASSTHROUGH_DATACLASS
except ImportError:   # pragma: no cover - orjson is a dependency; the standard library gives the same JSON
    _orjson = None
    _ORJSON_OPTS = 0

JWS_TYP = "hazard-gateway-batch+jws"
KEY_PROOF_TYP = "hazard-gateway-key-proof+jws"
JWS_ALG = "EdDSA"
MAX_JSON_DEPTH = 32
MAX_HEADER_BYTES = 1024
PRIVATE_KEY_FILE = "private.pem"
GATEWAY_ID_RE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$")
_B64URL_RE = re.compile(r"^[A-Za-z0-9_-]*$")
_B64URL_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_QUALITIES = frozenset({"good", "uncertain", "bad"})
REQUIRED_FIELDS = ("gateway_id", "seq", "prev", "created_at", "config_hash", "readings", "events")

Trust = Mapping[str, Ed25519PublicKey]


class KeyFileError(ValueError):
    """A key or trust file a person must fix; str() is one line naming the file (a ValueError,
    so the CLI prints it as one line)."""


class BatchError(ValueError):
    """A batch that fails a check; str() is one line saying which check failed.

    ``check`` names the failed check, one of: "malformed" (not a compact JWS, bad
    base64url, bad JSON, JSON nested too deep, header too large or not acceptable), "alg"
    (alg is not EdDSA), "kid" (key id not in the trust set), "signature" (Ed25519 signature
    does not verify), "payload" (signed payload lacks or mistypes a required field, e.g.
    announce_key without announce_key_proof), "key_proof" (announce_key_proof is not a valid
    signature by the announced key over this gateway_id, new kid and seq).
    """

    def __init__(self, check: str, message: str) -> None:
        super().__init__(message)
        self.check = check


# ---------------------------------------------------------------- encoding


def b64url_encode(data: bytes) -> str:
    """base64url without padding (RFC 7515 section 2, "Base64url Encoding")."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Strict base64url without padding; raises ValueError on any other form.

    Non-canonical encodings (stray trailing bits) are refused so that one batch
    has exactly one compact form and therefore exactly one chain hash.
    """
    if not text.isascii() or text.encode("ascii").translate(None, _B64URL_ALPHABET) or len(text) % 4 == 1:
        raise ValueError("not base64url")
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    # full 4-character groups encode their 3 bytes one way only; a final group of 2 or 3 characters
    # (1 or 2 bytes) is canonical when its unused low bits are zero: re-encoding that tail decides
    tail = len(text) % 4
    if tail and b64url_encode(data[-(tail - 1):]) != text[-tail:]:
        raise ValueError("non-canonical base64url")
    return data


def canonical_json(obj: Any) -> bytes:
    """Compact, key-sorted UTF-8 JSON (RFC 8259); NaN/Infinity refused (ValueError).

    With orjson installed the bytes come from orjson (OPT_SORT_KEYS), which writes the same compact,
    key-sorted text as ``json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False)`` except
    that a float may be spelt differently (``1e16`` for ``1e+16``, ``0.00001`` for ``1e-05``: the same
    number, RFC 8259 s.6). What orjson refuses (an integer beyond 64 bits, a non-str key, a str subclass,
    a lone surrogate) and any non-finite float (orjson would write null) goes through the standard
    library, whose answer (or ValueError / TypeError) is the result."""
    if _orjson is not None and _finite(obj):
        try:
            return _orjson.dumps(obj, option=_ORJSON_OPTS)
        except TypeError:   # orjson.JSONEncodeError: let the standard library give its answer or its error
            pass
    return _std_canonical(obj)


def _std_canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def _finite(obj: Any, depth: int = 0) -> bool:
    """True when ``obj`` is plain JSON data (dict, list, tuple, str, int, bool, None and finite floats, exactly
    these types) no deeper than this check follows; False for a non-finite float (NaN or an infinity:
    orjson would write null), any other type (orjson writes some that the json module refuses: an Enum, a
    UUID) or deeper nesting: the standard library then gives the answer or the error."""
    t = type(obj)
    if t is float:
        return obj - obj == 0.0
    if t is dict:
        vals: Any = obj.values()
    elif t is list or t is tuple:
        vals = obj
    else:
        return t is str or obj is None or t is int or t is bool
    if depth > 200:
        return False
    for v in vals:
        t = type(v)
        if t is str or v is None or t is int or t is bool:
            continue
        if t is float:
            if v - v != 0.0:
                return False
        elif t is dict:   # a list of flat records (readings): their values inline, no call per record
            for w in v.values():
                t = type(w)
                if t is str or w is None or t is int or t is bool:
                    continue
                if t is float:
                    if w - w != 0.0:
                        return False
                elif not _finite(w, depth + 2):
                    return False
        elif not _finite(v, depth + 1):
            return False
    return True


_JSON_STRING_RE = re.compile(rb'"[^"]*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_NOT_QUOTES_BRACKETS = bytes(b for b in range(256) if b not in b'[]{}"')
_BRACKETS_TO_PARENS = bytes.maketrans(b"[]{}", b"()()")


def json_too_deep(raw: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when the JSON text ``raw`` nests more than ``limit`` arrays/objects (or its brackets
    do not balance), judged without parsing it (so the parser never recurses that deep).

    Escape pairs (``\\\\`` first, then ``\\"``) and then strings are removed (brackets inside
    strings do not count); then every pass removes the innermost ``()`` pairs, one nesting
    level per pass; anything left after ``limit`` passes is deeper than ``limit``. Linear in
    size per pass, all in C (no backtracking regular expression)."""
    unescaped = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    # keep only quotes and brackets (the pairing of quotes and what lies between them do not change); with
    # every quote paired, drop adjacent quote pairs (an empty string, or the seam of two strings: the
    # brackets between the remaining pairs stay inside or outside as they were); then the strings
    marks = unescaped.translate(None, _NOT_QUOTES_BRACKETS)
    if not marks.count(b'"') % 2:
        marks = marks.replace(b'""', b"")
    brackets = _JSON_STRING_RE.sub(b"", marks).translate(_BRACKETS_TO_PARENS, _NOT_BRACKETS)
    for _ in range(limit):
        if not brackets:
            return False
        shorter = brackets.replace(b"()", b"")
        if len(shorter) == len(brackets):
            break
        brackets = shorter
    return bool(brackets)


def _load_json(raw: bytes, what: str) -> Any:
    """Parse bounded JSON (UTF-8, at most MAX_JSON_DEPTH deep); BatchError("malformed") otherwise."""
    if json_too_deep(raw):
        raise BatchError("malformed", f"{what} is nested deeper than {MAX_JSON_DEPTH} levels "
                                      f"(or its brackets do not balance)")
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise BatchError("malformed", f"{what} is not UTF-8 JSON") from None
    except ValueError as exc:   # e.g. an integer of more than sys.get_int_max_str_digits() digits
        raise BatchError("malformed", f"{what} is not acceptable JSON: {exc}") from None


def chain_hash(compact_jws: str) -> str:
    """base64url (no padding) of SHA-256 over the ASCII bytes of a compact JWS.

    This is the value the next batch carries in ``prev``.
    """
    return b64url_encode(hashlib.sha256(compact_jws.encode("ascii")).digest())


def links_to(payload: dict[str, Any], previous_jws_hash: str) -> bool:
    """The chain's link rule, one place for the receiver and the offline verifier: batch seq n (n > 1) links
    to seq n-1 when its ``prev`` equals ``previous_jws_hash``, the chain_hash of seq n-1's compact JWS (seq 1
    has ``prev`` null and links to nothing, validate_payload). ``payload``: a validated batch payload."""
    return payload["prev"] == previous_jws_hash


# ---------------------------------------------------------------- keys / JWK


def public_jwk(key: Ed25519PublicKey) -> dict[str, str]:
    """Public JWK of an Ed25519 key: ``{"kty":"OKP","crv":"Ed25519","x":..,"kid":..}`` (RFC 8037 s.2)."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    jwk = {"kty": "OKP", "crv": "Ed25519", "x": b64url_encode(raw)}
    jwk["kid"] = jwk_thumbprint(jwk)
    return jwk


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 thumbprint (SHA-256, base64url) of an OKP JWK: hash of its required
    members crv, kty, x in lexicographic order, compact JSON (RFC 7638 s.3.2, RFC 8037 s.2)."""
    members = {"crv": jwk["crv"], "kty": jwk["kty"], "x": jwk["x"]}
    return b64url_encode(hashlib.sha256(canonical_json(members)).digest())


def public_key_from_jwk(jwk: Any) -> tuple[str, Ed25519PublicKey]:
    """(kid, key) from a public Ed25519 JWK; raises ValueError (one line) when it is
    not one, carries a private part "d", or its "kid" differs from the thumbprint."""
    if not isinstance(jwk, dict):
        raise ValueError("JWK is not a JSON object")
    if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
        raise ValueError(f"JWK is not an Ed25519 key (kty={jwk.get('kty')!r}, crv={jwk.get('crv')!r})")
    if "d" in jwk:
        raise ValueError("JWK contains a private key (member 'd'); only public keys belong here")
    x = jwk.get("x")
    try:
        raw = b64url_decode(x) if isinstance(x, str) else b""
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise ValueError("JWK member 'x' is not a 32-byte base64url Ed25519 public key")
    kid = jwk_thumbprint(jwk)
    if "kid" in jwk and jwk["kid"] != kid:
        raise ValueError(f"JWK kid {jwk['kid']!r} is not its RFC 7638 thumbprint {kid!r}")
    return kid, Ed25519PublicKey.from_public_bytes(raw)


def keygen(out_dir: str | os.PathLike[str]) -> str:
    """Make an Ed25519 key pair in ``out_dir`` and return its kid.

    Writes ``out_dir/private.pem`` (PKCS#8 PEM, unencrypted, created with mode 0600,
    never widened) and ``out_dir/<kid>.jwk`` (public JWK, mode 0644) for the regulator's
    trust directory. Raises KeyFileError (one line) when private.pem already exists
    (it is never overwritten) or the directory cannot be written.
    """
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise KeyFileError(f"{out}: cannot create key directory: {exc.strerror}") from None
    priv_path = out / PRIVATE_KEY_FILE
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    try:
        fd = os.open(priv_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    except FileExistsError:
        raise KeyFileError(f"{priv_path}: a private key already exists; refusing to overwrite it") from None
    except OSError as exc:
        raise KeyFileError(f"{priv_path}: cannot create: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
        fh.flush()
        os.fsync(fh.fileno())
    jwk = public_jwk(key.public_key())
    jwk_path = out / f"{jwk['kid']}.jwk"
    fd = os.open(jwk_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(jwk, indent=2, sort_keys=True) + "\n")
    return jwk["kid"]


def read_jwk(path: Path) -> dict[str, Any]:
    """The JSON object of one ``.jwk`` file. Raises KeyFileError (one line, FILE[:LINE]) when it cannot be
    read, is not JSON (nesting too deep included) or is not an object."""
    try:
        jwk = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"{path}: cannot read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise KeyFileError(f"{path}:{exc.lineno}: not JSON: {exc.msg}") from None
    except RecursionError:
        raise KeyFileError(f"{path}: not JSON: nested too deep") from None
    if not isinstance(jwk, dict):
        raise KeyFileError(f"{path}: JWK is not a JSON object")
    return jwk


def load_trust_dir(directory: str | os.PathLike[str]) -> dict[str, Ed25519PublicKey]:
    """{kid: public key} from every ``*.jwk`` in ``directory`` (top level only; members other
    than the key's, such as "gateway_id", are ignored). The regulator side reads the whole trust
    layout, ``<gateway_id>/`` sub-directories and "gateway_id" bindings included, with
    ``gateway.regulator.verify.load_trust``.

    Each file must hold one public Ed25519 JWK whose "kid" (when present) equals its
    RFC 7638 thumbprint. Raises KeyFileError (one line, naming the file) for a missing
    directory or a bad file. An empty directory gives an empty dict.
    """
    d = Path(directory)
    if not d.is_dir():
        raise KeyFileError(f"{d}: trust directory does not exist")
    trust: dict[str, Ed25519PublicKey] = {}
    for path in sorted(d.glob("*.jwk")):
        jwk = read_jwk(path)
        try:
            kid, key = public_key_from_jwk(jwk)
        except ValueError as exc:
            raise KeyFileError(f"{path}: {exc}") from None
        trust[kid] = key
    return trust


# ---------------------------------------------------------------- payload


def _check_rfc3339_utc(value: Any, what: str) -> None:
    if not isinstance(value, str) or "T" not in value:
        raise BatchError("payload", f"{what} is not an RFC 3339 timestamp")
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise BatchError("payload", f"{what} is not an RFC 3339 timestamp: {value!r}") from None
    if dt.utcoffset() is None or dt.utcoffset().total_seconds() != 0:
        raise BatchError("payload", f"{what} is not UTC: {value!r}")


def validate_payload(payload: Any) -> dict[str, Any]:
    """Check the batch payload shape (module docstring); return it or raise BatchError("payload")."""
    if not isinstance(payload, dict):
        raise BatchError("payload", "payload is not a JSON object")
    missing = [f for f in REQUIRED_FIELDS if f not in payload]
    if missing:
        raise BatchError("payload", f"payload lacks {', '.join(missing)}")
    gid = payload["gateway_id"]
    if not isinstance(gid, str) or not GATEWAY_ID_RE.match(gid):
        raise BatchError("payload", f"gateway_id {gid!r} is not 1-64 characters of [A-Za-z0-9._-]")
    seq = payload["seq"]
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        raise BatchError("payload", f"seq {seq!r} is not an integer >= 1")
    prev = payload["prev"]
    if seq == 1:
        if prev is not None:
            raise BatchError("payload", "seq 1 must have prev null")
    else:
        ok = isinstance(prev, str) and len(prev) == 43
        if ok:
            try:
                b64url_decode(prev)
            except ValueError:
                ok = False
        if not ok:
            raise BatchError("payload", f"seq {seq}: prev is not a base64url SHA-256 (43 characters)")
    _check_rfc3339_utc(payload["created_at"], "created_at")
    if not isinstance(payload["config_hash"], str):
        raise BatchError("payload", "config_hash is not a string")
    readings = payload["readings"]
    if not isinstance(readings, list):
        raise BatchError("payload", "readings is not a list")
    good_ts: set[str] = set()   # timestamps already checked in this payload (a poll stamps many readings alike)
    for i, r in enumerate(readings):
        if not isinstance(r, dict):
            raise BatchError("payload", f"readings[{i}] is not an object")
        try:
            tag, value, unit, quality, ts = r["tag"], r["value"], r["unit"], r["quality"], r["ts"]
        except KeyError:
            for f in ("tag", "value", "unit", "quality", "ts"):
                if f not in r:
                    raise BatchError("payload", f"readings[{i}] lacks {f}") from None
            raise
        if not isinstance(tag, str) or not isinstance(unit, str):
            raise BatchError("payload", f"readings[{i}]: tag and unit must be strings")
        if quality not in _QUALITIES:
            raise BatchError("payload", f"readings[{i}] ({tag}): quality {quality!r} is not good/uncertain/bad")
        if value is not None and quality == "bad":
            raise BatchError("payload", f"readings[{i}] ({tag}): a bad reading carries no value")
        if type(ts) is not str or ts not in good_ts:
            _check_rfc3339_utc(ts, f"readings[{i}].ts")
            if type(ts) is str:
                good_ts.add(ts)
    events = payload["events"]
    if not isinstance(events, list) or not all(isinstance(e, dict) for e in events):
        raise BatchError("payload", "events is not a list of objects")
    if "announce_key" in payload or "announce_key_proof" in payload:
        _check_announcement(payload)
    return payload


def key_proof_claims(gateway_id: str, kid: str, seq: int) -> dict[str, Any]:
    """What ``announce_key_proof`` signs (with the NEW key): the gateway, the new kid and the
    seq of the batch that announces it, so a proof fits exactly one announcement."""
    return {"announce_key": kid, "gateway_id": gateway_id, "seq": seq}


def _check_announcement(payload: dict[str, Any]) -> None:
    """announce_key is a public Ed25519 JWK and announce_key_proof proves its private half is held
    by the announcer (module docstring); BatchError("payload") / ("key_proof") otherwise."""
    if "announce_key" not in payload:
        raise BatchError("payload", "announce_key_proof without announce_key")
    try:
        new_kid, new_key = public_key_from_jwk(payload["announce_key"])
    except ValueError as exc:
        raise BatchError("payload", f"announce_key: {exc}") from None
    proof = payload.get("announce_key_proof")
    if not isinstance(proof, str):
        raise BatchError("payload", f"announce_key {new_kid} without announce_key_proof (a signature by the new "
                                    f"key over gateway_id, its kid and seq: proof that the announcer holds it)")
    try:
        _, claims = verify_jws(proof, {new_kid: new_key}, KEY_PROOF_TYP)
    except BatchError as exc:
        raise BatchError("key_proof", f"announce_key_proof for {new_kid}: {exc}") from None
    want = key_proof_claims(payload["gateway_id"], new_kid, payload["seq"])
    if claims != want:
        raise BatchError("key_proof", f"announce_key_proof for {new_kid} is for {canonical_json(claims).decode()}, "
                                      f"not {canonical_json(want).decode()}")


def build_payload(gateway_id: str, seq: int, prev: str | None, config_hash: str,
                  readings: list[dict[str, Any]], events: list[dict[str, Any]] | None = None,
                  created_at: float | str | None = None, **extra: Any) -> dict[str, Any]:
    """A batch payload dict with the required fields (module docstring).

    created_at: UTC epoch seconds or an RFC 3339 string; default now. ``extra`` adds
    fields (e.g. ``**new_signer.announcement(gateway_id, seq)``). Raises BatchError("payload") on a bad shape.
    """
    if created_at is None:
        created_at = time.time()
    payload = {"gateway_id": gateway_id, "seq": seq, "prev": prev,
               "created_at": created_at if isinstance(created_at, str) else rfc3339(created_at),
               "config_hash": config_hash, "readings": list(readings), "events": list(events or [])}
    payload.update(extra)
    return validate_payload(payload)


# ---------------------------------------------------------------- sign / verify


class Signer:
    """Signs batch payloads with one Ed25519 private key (JWS compact, alg EdDSA)."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self.public_jwk: dict[str, str] = public_jwk(private_key.public_key())
        self.kid: str = self.public_jwk["kid"]
        self._header_b64 = b64url_encode(canonical_json({"alg": JWS_ALG, "kid": self.kid, "typ": JWS_TYP}))

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> "Signer":
        """Load a PKCS#8 PEM Ed25519 private key (as written by :func:`keygen`).

        Raises KeyFileError (one line naming the file) when the file is missing, is
        readable or writable by group or others (mode & 0o077; fix: ``chmod 600``),
        is encrypted, or is not an Ed25519 PEM private key.
        """
        p = Path(path)
        try:
            fd = os.open(p, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError:
            raise KeyFileError(f"{p}: no such key file") from None
        except OSError as exc:
            raise KeyFileError(f"{p}: cannot open key file: {exc.strerror}") from None
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise KeyFileError(f"{p}: not a regular file")
            mode = stat.S_IMODE(st.st_mode)
            if mode & 0o077:
                raise KeyFileError(f"{p}: private key file mode {mode:04o} gives group/others access; "
                                   f"run 'chmod 600 {p}'")
            data = fh.read(1 << 16)
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except TypeError:
            raise KeyFileError(f"{p}: private key is encrypted; an unencrypted PKCS#8 PEM is expected") from None
        except (ValueError, UnsupportedAlgorithm):
            raise KeyFileError(f"{p}: not a PEM private key") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyFileError(f"{p}: not an Ed25519 key ({type(key).__name__.removeprefix('_')})")
        return cls(key)

    def sign_jws(self, claims: Mapping[str, Any], typ: str) -> str:
        """Compact JWS ``{"alg":"EdDSA","kid":..,"typ":typ}`` over canonical JSON ``claims``: for
        messages that are not batches (key proofs, signed requests; ``typ`` keeps them apart).
        Batches go through :meth:`sign` (ValueError for typ == JWS_TYP)."""
        if typ == JWS_TYP:
            raise ValueError("batches are signed with Signer.sign, which validates the payload")
        header_b64 = b64url_encode(canonical_json({"alg": JWS_ALG, "kid": self.kid, "typ": typ}))
        signing_input = header_b64 + "." + b64url_encode(canonical_json(dict(claims)))
        return signing_input + "." + b64url_encode(self._key.sign(signing_input.encode("ascii")))

    def announcement(self, gateway_id: str, seq: int) -> dict[str, Any]:
        """``{"announce_key", "announce_key_proof"}`` announcing THIS signer's key (the new one)
        in batch ``seq`` of ``gateway_id``; merge it into the payload of that batch and sign the
        batch with the OLD key: ``old.sign(build_payload(..., **new.announcement(gid, seq)))``."""
        return {"announce_key": dict(self.public_jwk),
                "announce_key_proof": self.sign_jws(key_proof_claims(gateway_id, self.kid, seq), KEY_PROOF_TYP)}

    def sign(self, payload: dict[str, Any]) -> str:
        """Validate ``payload`` (BatchError("payload") if bad), serialize it canonically
        and return the compact JWS ``header.payload.signature`` (RFC 7515 s.7.1)."""
        validate_payload(payload)
        signing_input = self._header_b64 + "." + b64url_encode(canonical_json(payload))
        sig = self._key.sign(signing_input.encode("ascii"))
        return signing_input + "." + b64url_encode(sig)


def _split(compact: str) -> tuple[list[str], dict[str, Any], bytes]:
    """(parts, header, payload bytes) of a compact JWS; raises BatchError("malformed")."""
    if not isinstance(compact, str):
        raise BatchError("malformed", "batch is not text")
    parts = compact.split(".")
    if len(parts) != 3:
        raise BatchError("malformed", f"not a compact JWS: {len(parts)} dot-separated parts instead of 3")
    try:
        header_raw, payload_raw = b64url_decode(parts[0]), b64url_decode(parts[1])
        b64url_decode(parts[2])
    except ValueError as exc:
        raise BatchError("malformed", f"not a compact JWS: {exc}") from None
    if len(header_raw) > MAX_HEADER_BYTES:
        if json_too_deep(header_raw):
            raise BatchError("malformed", f"JWS protected header is nested deeper than {MAX_JSON_DEPTH} levels "
                                          f"(or its brackets do not balance)")
        raise BatchError("malformed", f"JWS protected header is {len(header_raw)} bytes; at most "
                                      f"{MAX_HEADER_BYTES} are accepted")
    header = _load_json(header_raw, "JWS protected header")
    if not isinstance(header, dict):
        raise BatchError("malformed", "JWS protected header is not a JSON object")
    return parts, header, payload_raw


def _parse_payload(payload_raw: bytes) -> Any:
    return _load_json(payload_raw, "JWS payload")


def decode_unverified(compact: str) -> tuple[dict[str, Any], Any]:
    """(header, payload) of a compact JWS WITHOUT checking the signature (for sorting
    and error messages only). Raises BatchError("malformed")."""
    _, header, payload_raw = _split(compact)
    return header, _parse_payload(payload_raw)


def verify_batch(compact: str, trust: Trust) -> dict[str, Any]:
    """Verify one batch and return its payload dict.

    Checks, in order: compact form (RFC 7515 s.7.1, strict base64url), header JSON,
    ``alg`` == "EdDSA" (RFC 8037 s.3.1), no ``crit`` (RFC 7515 s.4.1.11: we understand
    no extensions), ``typ`` == "hazard-gateway-batch+jws", ``kid`` in ``trust``
    ({kid: Ed25519PublicKey}), the Ed25519 signature over the ASCII signing input, and
    only then the payload: UTF-8 JSON and its shape (:func:`validate_payload`). So a
    tampered payload fails as "signature", never as "malformed". Does not check sequence
    or chain; that needs the neighbours (see gateway.regulator.verify and gateway.regulator.receiver).

    Raises BatchError (one line; ``.check`` names the failed check).
    """
    _kid, payload_raw = _verified(compact, trust, JWS_TYP)
    return validate_payload(_parse_payload(payload_raw))


def _verified(compact: str, trust: Trust, typ: str) -> tuple[str, Any]:
    """The checks every compact JWS of this project gets (RFC 7515 s.5.2): header alg EdDSA only, no
    crit, typ ``typ``, a kid in ``trust``, the Ed25519 signature. Returns (kid, raw payload).
    Raises BatchError (``.check`` malformed / alg / kid / signature)."""
    parts, header, payload_raw = _split(compact)
    alg = header.get("alg")
    if alg != JWS_ALG:
        raise BatchError("alg", f"alg {alg!r} is not accepted; only EdDSA (Ed25519)")
    if "crit" in header:
        raise BatchError("malformed", f"JWS header has crit {header['crit']!r}; no extensions are understood")
    if header.get("typ") != typ:
        raise BatchError("malformed", f"JWS typ {header.get('typ')!r} is not {typ!r}")
    kid = header.get("kid")
    if not isinstance(kid, str):
        raise BatchError("kid", "JWS header has no kid")
    key = trust.get(kid)
    if key is None:
        raise BatchError("kid", f"unknown key id {kid}")
    try:
        key.verify(b64url_decode(parts[2]), f"{parts[0]}.{parts[1]}".encode("ascii"))
    except InvalidSignature:
        raise BatchError("signature", f"Ed25519 signature does not verify with key {kid}") from None
    return kid, payload_raw


def verify_jws(compact: str, trust: Trust, typ: str) -> tuple[str, dict[str, Any]]:
    """Verify a non-batch compact JWS (key proof, signed request) of type ``typ``: the same
    checks and bounds as :func:`verify_batch` but no payload shape; returns (kid, claims dict).
    Raises BatchError (``.check`` malformed / alg / kid / signature)."""
    kid, payload_raw = _verified(compact, trust, typ)
    claims = _parse_payload(payload_raw)
    if not isinstance(claims, dict):
        raise BatchError("malformed", "JWS payload is not a JSON object")
    return kid, claims


def batch_kid(compact: str) -> str | None:
    """The kid in a batch's header, or None if the header is unreadable (no verification)."""
    try:
        kid = decode_unverified(compact)[0].get("kid")
    except BatchError:
        return None
    return kid if isinstance(kid, str) else None


__all__ = [
    "BatchError", "KeyFileError", "Signer", "Trust", "JWS_TYP", "JWS_ALG", "KEY_PROOF_TYP", "MAX_JSON_DEPTH",
    "b64url_decode", "b64url_encode", "batch_kid", "build_payload", "canonical_json", "chain_hash",
    "decode_unverified", "json_too_deep", "jwk_thumbprint", "key_proof_claims", "keygen", "load_trust_dir",
    "public_jwk", "public_key_from_jwk", "validate_payload", "verify_batch", "verify_jws",
]
