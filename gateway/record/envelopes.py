"""Platform profiles: the adapter between our signed batch and a regulator platform's envelope.

A batch leaves the gateway as one compact JWS (RFC 7515 s.7.1, EdDSA / RFC 8037; see
gateway.chain.signing and gateway.record.batches). Regulator platforms differ in how they want it
wrapped on the wire (content type, an outer JSON document, field names of the answer).
A :class:`PlatformProfile` is the only place that knows such a format; the store, the
batcher, the chain and the transports (gateway.record.uplink HTTPS, gateway.record.uplink_mqtt MQTT 5)
do not change per platform.

Interface (duck-typed; subclass :class:`PlatformProfile` for the defaults)::

    name: str                                   # the value of `uplink.profile` in the config
    envelope(jws, payload) -> (content_type, body_bytes)
        jws: the compact JWS exactly as stored and signed (str, ASCII);
        payload: its decoded payload (dict: gateway_id, seq, prev, readings, ...), for
        profiles that copy fields (e.g. seq) into an outer document.
        Must be deterministic: the same batch gives the same bytes, so a resend is
        byte-identical (C14b) and the receiver can deduplicate.
    parse_ack(status, body, gateway_id, seq) -> gateway.record.uplink.Ack
        For request/response transports (HTTPS): a 2xx answer's body turned into an Ack
        for (gateway_id, seq). Raise ValueError when the body is not an acknowledgement
        of exactly that batch; the uplink then retries (it never counts a batch as sent
        on an answer it cannot read). Non-2xx statuses are classified by the transport
        (gateway.record.uplink table), not by the profile. MQTT has no answer body: a batch is
        sent at PUBACK (MQTT 5 s.3.4), so MQTT uses only ``envelope``.

Shipped: :class:`JwsProfile` (``jws``, the default): the compact JWS itself as the body,
``Content-Type: application/jose`` (RFC 7515 s.9.2.1), answered by the reference receiver's
ack JSON ``{"gateway_id", "seq", "status": "accepted"|"duplicate", "hash"}``
(gateway.regulator.receiver). This is the format the reference receiver and ``hazard-gateway verify``
check.

Adding a province's profile (only from that platform's published interface document;
do not guess a format):

1. subclass PlatformProfile in this module (or a module of your own) with a unique
   ``name``; wrap the JWS unchanged (the signature covers the payload bytes; never
   re-serialise the payload) and map the platform's answer to an Ack in ``parse_ack``;
2. add an instance to ``PROFILES``;
3. select it with ``uplink: {profile: NAME}`` in the gateway config (`check` rejects an
   unknown name);
4. add a table-driven test with the platform's sample request and answers, and an end to
   end test against a receiver speaking that envelope.
"""

from __future__ import annotations

import json
from typing import Any

from gateway.record.uplink import Ack


class PlatformProfile:
    """Base class of a platform envelope (see the module docstring for the contract)."""

    name = "base"

    def envelope(self, jws: str, payload: dict[str, Any]) -> tuple[str, bytes]:
        """(content_type, body) carrying ``jws`` for the platform; deterministic."""
        raise NotImplementedError

    def parse_ack(self, status: int, body: bytes, gateway_id: str, seq: int) -> Ack:
        """The Ack for batch (gateway_id, seq) from a 2xx answer; ValueError when it is none."""
        raise NotImplementedError


class JwsProfile(PlatformProfile):
    """Our own format: the compact JWS as the body (application/jose), the reference receiver's ack JSON."""

    name = "jws"
    content_type = "application/jose"

    def envelope(self, jws: str, payload: dict[str, Any]) -> tuple[str, bytes]:
        return self.content_type, jws.encode("ascii")

    def parse_ack(self, status: int, body: bytes, gateway_id: str, seq: int) -> Ack:
        try:
            doc = json.loads(body)
            ack = Ack(gateway_id=str(doc["gateway_id"]), seq=int(doc["seq"]), status=str(doc["status"]),
                      hash=doc.get("hash"))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{status} without a valid ack body ({type(exc).__name__})") from None
        return ack


#: name -> profile; `uplink.profile` in the config picks one
PROFILES: dict[str, PlatformProfile] = {JwsProfile.name: JwsProfile()}


def get_profile(name: str) -> PlatformProfile:
    """The registered profile ``name``; ValueError (one line, listing the known names) otherwise."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown platform profile {name!r} (known: {', '.join(sorted(PROFILES))})") from None
