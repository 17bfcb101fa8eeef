"""Batches: the signed, hash-chained unit of upload, built from the store's oldest rows.

A batch is stored BEFORE it is sent and resent byte-identical until acknowledged, so the
receiver can deduplicate by (gateway_id, seq) and the record path is exactly-once in
effect (docs/design.md "Two paths", C14b, C15). Payload (JSON, signed as a compact JWS by
``gateway.chain.signing.Signer``, RFC 7515 s.7.1 / RFC 8037)::

    {"gateway_id": str, "seq": int (1, 2, 3 ... no gaps), "prev": chain_hash(previous
     batch's compact JWS) | null for seq 1, "created_at": RFC 3339 UTC, "config_hash": str,
     "clock": {"synchronised": bool | null, "last_step_s": float | null},
     "readings": [Reading.to_record() ...], "events": [{...}], "gaps": [{reason, tags,
     first_ts, last_ts, count, recorded_at}]}

Order: readings go oldest-first (store id order, C15); every unbatched event rides in
the next new batch even while an older readings backlog drains ("events jump the queue",
still inside the one chain).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.record.chain_position import prev_value
from gateway.model import rfc3339
from gateway.chain.signing import BatchError, Signer, canonical_json, chain_hash, validate_payload
from gateway.record.store import PendingRows, Store

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Batch:
    """One stored batch: seq (sequence number), jws (compact JWS, the exact bytes sent); payload: the dict
    that was signed into ``jws`` when this process just made it (so the uplink need not decode it again),
    else None (a stored batch handed out again: the uplink decodes the JWS). Not compared."""

    seq: int
    jws: str
    payload: dict[str, Any] | None = field(default=None, compare=False, repr=False)

    @property
    def hash(self) -> str:
        """chain_hash of this batch (the next batch's ``prev``; the receiver's ack ``hash``)."""
        return chain_hash(self.jws)


def _no_clock() -> dict[str, Any]:
    return {"synchronised": None, "last_step_s": None}


class Batcher:
    """Builds, signs and stores batches from the store; hands out the next one to send.

    store: an open gateway.record.store.Store. signer: gateway.chain.signing.Signer. gateway_id: the
    id the receiver keys batches by. config_hash_fn: () -> str, hash of the running
    config (carried in every batch). max_readings / max_events: per-batch caps.
    clock_fn: () -> {"synchronised": bool|None, "last_step_s": float|None} (C18), default
    unknown. All methods touch SQLite: call them off the event loop (asyncio.to_thread).
    """

    def __init__(self, store: Store, signer: Signer, gateway_id: str, config_hash_fn: Callable[[], str],
                 max_readings: int = 500, *, max_events: int = 500,
                 clock_fn: Callable[[], dict[str, Any]] | None = None) -> None:
        if max_readings < 1 or max_events < 1:
            raise ValueError("max_readings and max_events must be >= 1")
        self.store = store
        self.signer = signer
        self.gateway_id = gateway_id
        self.config_hash_fn = config_hash_fn
        self.max_readings = max_readings
        self.max_events = max_events
        self.clock_fn = clock_fn or _no_clock
        self._made: tuple[str, dict[str, Any]] | None = None   # (jws, payload) of the last batch _make signed

    def next_batch(self) -> Batch | None:
        """The batch to send now, or None when there is nothing to send.

        If a stored batch is neither acknowledged nor dead-lettered, that one (oldest
        first) is returned with its stored JWS, so a resend is byte-identical (C14b).
        Otherwise a new batch is built from the oldest unbatched rows, with
        seq = last stored seq + 1 and prev = chain_hash(last stored JWS), signed and
        stored with its rows in one transaction before it is returned.
        """
        pending = self.store.unacked_batch()
        if pending is not None:
            return Batch(*pending)
        self._made = None
        made = self.store.new_batch(self.max_readings, self.max_events, self._make)
        if made is None:
            return None
        signed, self._made = self._made, None
        return Batch(*made, payload=signed[1] if signed is not None and signed[0] == made[1] else None)

    def mark_acked(self, seq: int) -> bool:
        """Record the receiver's ack of ``seq`` (rows count as sent only now)."""
        return self.store.mark_acked(seq)

    def dead_letter(self, seq: int, reason: str, status: int | None = None) -> bool:
        """Set ``seq`` aside after a permanent rejection and sign a tombstone for the same
        seq (no readings; a ``batch_dead_lettered`` alarm event and gap rows), so the chain
        stays gap-free and later batches flow (C14c). See Store.dead_letter. False when
        ``seq`` is already a tombstone (the caller holds and retries)."""
        return self.store.dead_letter(seq, reason, self._make, status)

    # ------------------------------------------------------------------ internals
    def _make(self, seq: int, prev_jws: str | None, rows: PendingRows) -> tuple[str, str]:
        created_at = rfc3339(time.time())
        readings = [r for _, r in rows.readings]
        events = [e for _, e in rows.events]
        gaps = [g for _, g in rows.gaps]
        payload = self._payload(seq, prev_jws, created_at, readings, events, gaps)
        try:
            jws = self.signer.sign(payload)
        except (BatchError, ValueError) as exc:
            # A malformed stored record must not stall the chain forever: move each bad
            # record into an "invalid_record" event (nothing is dropped silently).
            log.warning("batch %d: %s; quarantining the bad records", seq, exc)
            readings, events = self._quarantine(readings, events)
            payload = self._payload(seq, prev_jws, created_at, readings, events, gaps)
            jws = self.signer.sign(payload)
        self._made = (jws, payload)
        return jws, created_at

    def _payload(self, seq: int, prev_jws: str | None, created_at: str, readings: list, events: list,
                 gaps: list) -> dict[str, Any]:
        return {"gateway_id": self.gateway_id, "seq": seq,
                "prev": prev_value(prev_jws),   # a PrevHash (hash only, after a corrupt store) as it is
                "created_at": created_at, "config_hash": str(self.config_hash_fn()),
                "clock": self.clock_fn(), "readings": readings, "events": events, "gaps": gaps}

    def _quarantine(self, readings: list[dict], events: list[dict]) -> tuple[list[dict], list[dict]]:
        good_r: list[dict] = []
        good_e: list[dict] = []
        bad: list[dict] = []
        now = rfc3339(time.time())
        probe = {"gateway_id": self.gateway_id, "seq": 1, "prev": None, "created_at": rfc3339(time.time()),
                 "config_hash": "", "events": []}
        for r in readings:
            try:
                validate_payload({**probe, "readings": [r]})
                canonical_json(r)
                good_r.append(r)
            except (BatchError, ValueError, TypeError) as exc:
                bad.append({"kind": "invalid_record", "severity": "fault", "ts": now, "table": "readings",
                            "error": str(exc)[:300], "record": repr(r)[:1000]})
        for e in events:
            try:
                canonical_json(e)
                good_e.append(e)
            except (ValueError, TypeError) as exc:
                bad.append({"kind": "invalid_record", "severity": "fault", "ts": now, "table": "events",
                            "error": str(exc)[:300], "record": repr(e)[:1000]})
        return good_r, good_e + bad
