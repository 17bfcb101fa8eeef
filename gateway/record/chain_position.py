"""The chain position, kept apart from the readings: where the batch chain stands, in a file beside the store.

The receiver accepts batch ``seq`` only as ``last + 1`` with ``prev`` = chain hash of the batch before
(gateway.regulator.receiver; gateway.chain.signing.chain_hash). When the store's database becomes corrupt (a failing SD
card) and is set aside (gateway.record.store, C17b), a fresh database alone would restart the chain at seq 1 and
every upload would meet 409 until a person acts. So the store writes, after every change of the chain,
this small file ``<store>.chain.json`` (:func:`position_path`) beside the database, and seeds a fresh
database from it: the next batch has seq = last + 1 and prev = the hash of the last batch, and the
batches that were not acknowledged are sent again byte-identical.

Shape (JSON object, one line, keys sorted)::

    {"version": 1,
     "seq": int,               newest batch of the chain (0: no batch yet)
     "hash": str | null,       its chain hash (gateway.chain.signing.chain_hash of its compact JWS: the next prev)
     "created_at": str | null, its created_at (RFC 3339 UTC)
     "acked": bool,            whether the receiver acknowledged it
     "acked_seq": int,         newest acknowledged batch (0: none) and
     "acked_hash": str | null, its chain hash
     "reading_ts": str | null, newest ts of a reading put into a batch (RFC 3339), and
     "event_ts": str | null,   of an event: what was batched is safe in a signed JWS, what came after
                               it is at risk (events jump the readings backlog, so each kind has its
                               own mark; :attr:`ChainPosition.record_ts` is the older of the two)
     "unacked": [{"seq": int, "jws": str, "created_at": str, "prev": str | null,
                  "dead_letter": str | null}, ...],   every batch not yet acknowledged, oldest first
                               (usually 0 or 1 entries; a tombstone has ``dead_letter`` = the reason)
     "written_at": str,        when this file was written
     "sha256": str}            hex SHA-256 of the same object without "sha256" (canonical JSON): a
                               file garbled by the card is recognised, never believed

Writes are atomic: a temporary file beside it (mode 0640), fsync, rename over the old one, fsync of the
directory (POSIX rename(2); gateway.safety.safety_state.write_atomic). One write per created batch (it
holds that batch's JWS until the ack: as large as one batch, bounded by the Batcher's caps) and one
per ack (a few hundred bytes again). The Forwarder (gateway.record.uplink, also over MQTT) sends one batch at a
time and builds a new one only once none is unacknowledged (Batcher.next_batch), so ``unacked`` holds
at most one batch in normal running; it is a list because a tombstone or a direct caller may leave more.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gateway.model import rfc3339
from gateway.safety.safety_state import write_atomic

VERSION = 1
#: the file beside the database: ``<database file name>`` + this
SUFFIX = ".chain.json"
#: a file larger than this is not a chain position (unacked JWS are bounded by the batch caps)
MAX_BYTES = 64 * 1024 * 1024


class ChainPositionError(ValueError):
    """The chain position file exists but cannot be used (unreadable, not JSON, wrong shape, checksum
    mismatch); str() is one line naming the file."""


class PrevHash(str):
    """The chain hash of a batch whose compact JWS is no longer stored (only its hash is known, from the
    chain position). The store passes it as ``prev_jws`` to a batch maker; :func:`prev_value` returns it
    as it is instead of hashing it again."""

    __slots__ = ()


def prev_value(prev_jws: str | None) -> str | None:
    """The ``prev`` a batch carries: None for the first batch, a :class:`PrevHash` as it is, else
    gateway.chain.signing.chain_hash(prev_jws)."""
    if prev_jws is None:
        return None
    if isinstance(prev_jws, PrevHash):
        return str(prev_jws)
    from gateway.chain.signing import chain_hash   # local: the store stays importable without cryptography
    return chain_hash(prev_jws)


def position_path(store_path: str | os.PathLike[str]) -> Path:
    """``<store>.chain.json`` beside the database file."""
    p = Path(store_path)
    return p.with_name(p.name + SUFFIX)


@dataclass
class Unacked:
    """A batch not yet acknowledged: seq, the compact JWS exactly as stored (and sent), created_at,
    prev (its signed prev: the chain hash of seq - 1, None for seq 1), dead_letter (reason if it is a
    tombstone, else None)."""

    seq: int
    jws: str
    created_at: str
    prev: str | None
    dead_letter: str | None = None


def _digest(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
                          .encode()).hexdigest()


class ChainPosition:
    """The chain position of one store, in memory and in its file (:func:`position_path`).

    Not thread-safe: the store calls it under its batch-side lock. ``save()`` raises OSError; ``load()``
    raises ChainPositionError for a file that exists and cannot be used.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.seq = 0
        self.hash: str | None = None
        self.created_at: str | None = None
        self.acked = False
        self.acked_seq = 0
        self.acked_hash: str | None = None
        self.reading_ts: str | None = None
        self.event_ts: str | None = None
        self.unacked: dict[int, Unacked] = {}
        self.written_at: str | None = None

    # ---------------------------------------------------------------- state changes
    def created(self, seq: int, jws: str, created_at: str, prev: str | None, reading_ts: str | None,
                event_ts: str | None = None) -> None:
        """A new batch ``seq`` was stored (not yet acknowledged); reading_ts / event_ts: newest ts of its
        readings / events (None: none)."""
        self.seq, self.hash, self.created_at, self.acked = seq, _hash(jws), created_at, False
        self.unacked[seq] = Unacked(seq, jws, created_at, prev)
        self.note_ts(reading_ts, event_ts)

    def note_ts(self, reading_ts: str | None, event_ts: str | None) -> None:
        """Move the batched marks on (never back)."""
        if reading_ts is not None and (self.reading_ts is None or reading_ts > self.reading_ts):
            self.reading_ts = reading_ts
        if event_ts is not None and (self.event_ts is None or event_ts > self.event_ts):
            self.event_ts = event_ts

    @property
    def record_ts(self) -> str | None:
        """Where the records at risk begin: the older of the newest batched reading ts and the newest
        batched event ts (None when nothing was batched)."""
        marks = [t for t in (self.reading_ts, self.event_ts) if t is not None]
        return min(marks) if marks else None

    def acked_batch(self, seq: int) -> None:
        """The receiver acknowledged batch ``seq``."""
        entry = self.unacked.pop(seq, None)
        if seq == self.seq:
            self.acked = True
        if seq >= self.acked_seq:
            self.acked_seq = seq
            self.acked_hash = self.hash if seq == self.seq else (_hash(entry.jws) if entry else None)

    def replaced(self, seq: int, jws: str, created_at: str, reason: str) -> None:
        """Batch ``seq`` was dead-lettered: a tombstone with the same seq and prev now takes its place."""
        old = self.unacked.get(seq)
        self.unacked[seq] = Unacked(seq, jws, created_at, old.prev if old else None, reason)
        if seq == self.seq:
            self.hash, self.created_at = _hash(jws), created_at

    def anchors(self) -> dict[int, str]:
        """{seq: chain hash} of the batches a fresh database needs as links but whose JWS it will not hold:
        the newest batch when it was acknowledged, and the predecessor of every unacknowledged batch
        that is not itself unacknowledged (its hash is that batch's signed prev)."""
        out: dict[int, str] = {}
        if self.seq and self.acked and self.hash:
            out[self.seq] = self.hash
        for u in self.unacked.values():
            if u.seq > 1 and u.prev is not None and (u.seq - 1) not in self.unacked:
                out[u.seq - 1] = u.prev
        return out

    def copy(self) -> "ChainPosition":
        """An independent copy (same path)."""
        other = ChainPosition(self.path)
        other.__dict__.update(self.__dict__)
        other.unacked = {s: Unacked(**asdict(u)) for s, u in self.unacked.items()}
        return other

    @property
    def known(self) -> bool:
        """True when a batch has been made (seq > 0)."""
        return self.seq > 0

    # ---------------------------------------------------------------- file
    def to_dict(self) -> dict[str, Any]:
        return {"version": VERSION, "seq": self.seq, "hash": self.hash, "created_at": self.created_at,
                "acked": self.acked, "acked_seq": self.acked_seq, "acked_hash": self.acked_hash,
                "reading_ts": self.reading_ts, "event_ts": self.event_ts,
                "unacked": [asdict(u) for _, u in sorted(self.unacked.items())],
                "written_at": self.written_at}

    def same_as(self, other: "ChainPosition") -> bool:
        """True when both describe the same position (written_at aside)."""
        a, b = self.to_dict(), other.to_dict()
        a.pop("written_at"), b.pop("written_at")
        return a == b

    def save(self) -> None:
        """Write the file atomically and durably (gateway.safety.safety_state.write_atomic: tmp + fsync + rename +
        directory fsync; mode 0640). Blocking; raises OSError."""
        self.written_at = rfc3339(time.time())
        body = self.to_dict()
        body["sha256"] = _digest(body)
        write_atomic(self.path, body)

    def load(self) -> bool:
        """Read the file into this object. False when it does not exist (the position stays empty);
        raises ChainPositionError when it exists and cannot be used (nothing is changed then)."""
        try:
            if self.path.stat().st_size > MAX_BYTES:
                raise ChainPositionError(f"{self.path}: chain position file larger than {MAX_BYTES} bytes")
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return False
        except OSError as e:
            raise ChainPositionError(f"{self.path}: cannot read the chain position: {e.strerror or e}") from None
        try:
            doc = json.loads(raw)
        except ValueError as e:
            raise ChainPositionError(f"{self.path}: chain position is not JSON: {e}") from None
        if not isinstance(doc, dict) or doc.get("version") != VERSION:
            raise ChainPositionError(f"{self.path}: not a version {VERSION} chain position")
        digest = doc.pop("sha256", None)
        if digest != _digest(doc):
            raise ChainPositionError(f"{self.path}: chain position checksum mismatch (garbled file)")
        try:
            seq, acked_seq = doc["seq"], doc["acked_seq"]
            if not (isinstance(seq, int) and isinstance(acked_seq, int) and seq >= 0 and 0 <= acked_seq <= seq):
                raise TypeError("seq / acked_seq")
            unacked = {}
            for u in doc["unacked"]:
                entry = Unacked(int(u["seq"]), str(u["jws"]), str(u["created_at"]),
                                None if u.get("prev") is None else str(u["prev"]),
                                None if u.get("dead_letter") is None else str(u["dead_letter"]))
                if not 0 < entry.seq <= seq:
                    raise TypeError(f"unacked seq {entry.seq}")
                unacked[entry.seq] = entry
            hashes = [doc["hash"], doc["acked_hash"], doc["created_at"], doc["reading_ts"], doc["event_ts"]]
            if not all(h is None or isinstance(h, str) for h in hashes) or not isinstance(doc["acked"], bool):
                raise TypeError("hash / acked")
        except (KeyError, TypeError, ValueError) as e:
            raise ChainPositionError(f"{self.path}: chain position has a wrong shape ({e})") from None
        self.seq, self.hash, self.created_at, self.acked = seq, doc["hash"], doc["created_at"], doc["acked"]
        self.acked_seq, self.acked_hash = acked_seq, doc["acked_hash"]
        self.reading_ts, self.event_ts = doc["reading_ts"], doc["event_ts"]
        self.unacked, self.written_at = unacked, doc.get("written_at")
        return True


def _hash(jws: str) -> str:
    from gateway.chain.signing import chain_hash
    return chain_hash(jws)


__all__ = ["ChainPosition", "ChainPositionError", "PrevHash", "Unacked", "position_path", "prev_value"]
