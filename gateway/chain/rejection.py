"""Signed batch rejections: the only answer that lets the gateway set a batch aside.

A receiver's 400, 413 or 422 (RFC 9110 s.15.5.1, s.15.5.14, s.15.5.21) may come from the
receiver judging the batch, or from anything in between (a proxy's 413, a receiver
misconfigured with a tiny cap, a load balancer's error page). Setting good data aside on
the word of an unauthenticated status would lose it, so the gateway holds a refused batch
(alarm event, retry with backoff) unless the answer carries a *rejection* signed by the
receiver's own key (gateway.record.uplink, ``uplink.receiver_key``).

Format (a compact JWS, RFC 7515 s.7.1, made and checked with gateway.chain.signing's
``Signer.sign_jws`` / ``verify_jws``: alg EdDSA / Ed25519, RFC 8037; kid the RFC 7638
thumbprint of the receiver key; header ``typ`` ``hazard-gateway-rejection+jws``). It travels in
the JSON answer body as ``{"error": "...", "rejection": "<compact JWS>"}``; its payload::

    {"typ": "hazard-gateway/batch-rejection", "gateway_id": str, "seq": int,
     "batch_sha256": hex SHA-256 of the exact request body bytes, "status": the HTTP status,
     "reason": str (at most 200 characters), "iat": int (epoch seconds)}

The gateway accepts it only when it verifies with ``uplink.receiver_key`` and names this
gateway_id, this seq, the SHA-256 of the bytes it sent and the status it got. ``iat`` is
informational (gateway clocks may be unsynchronised); a replayed rejection can only name bytes
the receiver already refused, since resends are byte-identical.

The receiver signs a rejection only when it can name the batch: gateway_id and seq are read
from the (unverified, bounded) body. A body it cannot parse, or one over its size cap (never
held whole, so never hashed or read), gets no rejection, and the gateway holds it.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from pathlib import Path
from typing import Any, Mapping

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.chain.signing import (GATEWAY_ID_RE, BatchError, KeyFileError, Signer, decode_unverified,
                             public_key_from_jwk, read_jwk, verify_jws)

#: JWS header ``typ`` (RFC 7515 s.4.1.9) of a batch rejection; keeps it apart from batches and requests
REJECTION_JWS_TYP = "hazard-gateway-rejection+jws"
#: ``typ`` claim of a batch rejection's payload
REJECTION_TYP = "hazard-gateway/batch-rejection"
#: statuses that refuse a batch's content: 400 Bad Request, 413 Content Too Large, 422 Unprocessable
#: Content (RFC 9110 s.15.5.1, s.15.5.14, s.15.5.21)
CONTENT_REFUSAL_STATUSES = frozenset({400, 413, 422})
#: a longer "rejection" member is not read (the receiver's are about 500 characters)
MAX_REJECTION_CHARS = 4096
MAX_REASON_CHARS = 200
_HEX64 = re.compile(r"^[0-9a-f]{64}$")

__all__ = ["CONTENT_REFUSAL_STATUSES", "REJECTION_JWS_TYP", "REJECTION_TYP", "RejectionError", "body_sha256",
           "load_receiver_key", "rejection_claims", "sign_rejection", "verify_rejection"]


class RejectionError(ValueError):
    """A rejection that does not allow setting the batch aside; str() is one line saying why."""


def body_sha256(body: bytes | bytearray) -> str:
    """Lower-case hex SHA-256 of the exact body bytes (FIPS 180-4)."""
    return hashlib.sha256(bytes(body)).hexdigest()


def rejection_claims(gateway_id: str, seq: int, batch_sha256: str, status: int, reason: str,
                     iat: int | None = None) -> dict[str, Any]:
    """The payload of a batch rejection (module docstring); ``reason`` is cut to 200 characters and
    made one line; ``iat`` defaults to now (epoch seconds)."""
    return {"typ": REJECTION_TYP, "gateway_id": gateway_id, "seq": seq, "batch_sha256": batch_sha256,
            "status": int(status), "reason": " ".join(str(reason).split())[:MAX_REASON_CHARS],
            "iat": int(time.time() if iat is None else iat)}


def sign_rejection(signer: Signer, body: bytes | bytearray, status: int, reason: str, *,
                   iat: int | None = None) -> str | None:
    """The receiver side: a compact JWS rejecting the batch in ``body`` (the exact request body bytes)
    with ``status``, signed by ``signer`` (the receiver key), or None when the body does not name a
    batch (not ASCII, not a compact JWS whose payload parses within gateway.chain.signing's bounds, or no
    valid gateway_id / seq in it): a rejection must name the batch it is about."""
    try:
        _, payload = decode_unverified(bytes(body).decode("ascii").strip())
    except (UnicodeDecodeError, BatchError):
        return None
    if not isinstance(payload, dict):
        return None
    gid, seq = payload.get("gateway_id"), payload.get("seq")
    if not isinstance(gid, str) or not GATEWAY_ID_RE.match(gid):
        return None
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        return None
    return signer.sign_jws(rejection_claims(gid, seq, body_sha256(body), status, reason, iat), REJECTION_JWS_TYP)


def load_receiver_key(path: str | os.PathLike[str]) -> dict[str, Ed25519PublicKey]:
    """{kid: key} from the receiver's public key file: one public Ed25519 JWK, as ``hazard-gateway
    keygen`` writes it (``<kid>.jwk`` next to the receiver's ``private.pem``; RFC 8037 s.2, kid the
    RFC 7638 thumbprint). Raises KeyFileError (one line, FILE[:LINE]: why) when the file is missing,
    unreadable, not JSON, or not a public Ed25519 JWK (a private one, with "d", is refused)."""
    p = Path(path)
    try:
        jwk = read_jwk(p)
    except KeyFileError:
        try:
            with p.open("rb") as fh:
                pem = fh.read(64).lstrip().startswith(b"-----BEGIN")
        except OSError:
            pem = False
        if pem:
            raise KeyFileError(f"{p}: a PEM file, not a JWK; give the receiver's public <kid>.jwk that "
                               f"`hazard-gateway keygen` writes next to its private.pem") from None
        raise
    try:
        kid, key = public_key_from_jwk(jwk)
    except ValueError as exc:
        raise KeyFileError(f"{p}: {exc}") from None
    return {kid: key}


def verify_rejection(rejection: Any, receiver_key: Mapping[str, Ed25519PublicKey] | None, *, gateway_id: str,
                     seq: int, sent_sha256: str | None, status: int | None) -> dict[str, Any]:
    """The gateway side: the claims of ``rejection`` (the answer's "rejection" member) when it allows
    setting batch (gateway_id, seq) aside: verified with ``receiver_key`` ({kid: key}, from
    :func:`load_receiver_key`; RFC 7515 s.5.2 via gateway.chain.signing.verify_jws) and naming this gateway_id,
    this seq, ``sent_sha256`` (hex SHA-256 of the exact bytes sent) and ``status``. Raises
    RejectionError (one line) otherwise: no key configured, no rejection, bad or foreign signature,
    another batch, other bytes, another status."""
    if not receiver_key:
        raise RejectionError("no uplink.receiver_key is configured, so no rejection can be trusted")
    if rejection is None:
        raise RejectionError("the answer carries no signed rejection")
    if not isinstance(rejection, str) or len(rejection) > MAX_REJECTION_CHARS:
        raise RejectionError(f"the answer's rejection is not a compact JWS of at most {MAX_REJECTION_CHARS} "
                             f"characters")
    try:
        _, claims = verify_jws(rejection, receiver_key, REJECTION_JWS_TYP)
    except BatchError as exc:
        if exc.check == "kid":
            raise RejectionError(f"rejection not signed by uplink.receiver_key ({', '.join(receiver_key)}): "
                                 f"{exc}") from None
        raise RejectionError(f"rejection does not verify: {exc}") from None
    if claims.get("typ") != REJECTION_TYP:
        raise RejectionError(f"rejection typ {claims.get('typ')!r} is not {REJECTION_TYP!r}")
    if claims.get("gateway_id") != gateway_id:
        raise RejectionError(f"rejection names gateway {claims.get('gateway_id')!r}, not {gateway_id!r}")
    got_seq = claims.get("seq")
    if not isinstance(got_seq, int) or isinstance(got_seq, bool) or got_seq != seq:
        raise RejectionError(f"rejection names seq {got_seq!r}, not {seq}")
    digest = claims.get("batch_sha256")
    if not isinstance(digest, str) or not _HEX64.match(digest) or sent_sha256 is None or digest != sent_sha256:
        raise RejectionError(f"rejection is for other bytes (batch_sha256 {str(digest)[:64]!r}, sent "
                             f"{sent_sha256!r})")
    got_status = claims.get("status")
    if status is None or got_status != status or isinstance(got_status, bool):
        raise RejectionError(f"rejection is for status {got_status!r}, not {status!r}")
    if not isinstance(claims.get("reason"), str):
        raise RejectionError("rejection has no reason")
    return claims
