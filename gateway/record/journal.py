"""The uncommitted-records journal: what the record path had taken but not yet committed.

While the store's writer cannot commit (a full disk, a read-only or failing filesystem, a database that
cannot be opened), readings and events wait in memory (gateway.record.store, bounded queues). A power loss or
a SIGKILL then loses them. So that the loss is never silent (docs/design.md, "Record path": every loss
is a gap record), the record path notes here, about once a second while commits fail, the interval and
count of what waits; on the next start the store turns a note left behind into a signed gap record
(reason ``uncommitted_at_stop``) and clears it.

The file cannot need new disk blocks when the disk is full: it is created once at its full size
(:data:`JOURNAL_BYTES`, zero-filled and fsynced) and every note overwrites it in place (``os.pwrite`` at
offset 0 + ``os.fsync``). A note is one JSON object padded with spaces, ending in a newline, followed by
its SHA-256 so a torn write is recognised (and ignored with a warning: an interval cannot be made up).

Shape of a note: ``{"first_ts": RFC 3339, "last_ts": RFC 3339, "count": int, "tags": [str, ...],
"reason": str}`` (``tags`` at most :data:`MAX_TAGS` names). An empty (all-zero or blank) journal
means nothing was waiting.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from gateway.filemode import create_record_file

log = logging.getLogger(__name__)

#: size of the journal file; a note never grows it
JOURNAL_BYTES = 8192
#: at most this many tag names are kept in a note (the count covers every record)
MAX_TAGS = 200
_DIGEST_LEN = 64


class RecordJournal:
    """One fixed-size journal file at ``path`` (mode 0640, gateway.filemode). Not thread-safe: one writer thread uses it.

    Every method is best effort: an OSError is logged once per kind and swallowed, because the journal
    only explains a loss; it must never stop the record path or the safety path.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        self._dirty = False   # a note is on disk
        self._warned: set[str] = set()

    def _warn(self, what: str, exc: OSError) -> None:
        if what not in self._warned:
            self._warned.add(what)
            log.warning("%s: record journal %s failed: %s", self.path, what, exc)

    def open(self) -> None:
        """Open the file, creating it at JOURNAL_BYTES (zeros, fsynced) when missing or short."""
        if self._fd is not None:
            return
        try:
            fd = create_record_file(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0))
        except OSError as exc:
            self._warn("open", exc)
            return
        try:
            if os.fstat(fd).st_size < JOURNAL_BYTES:
                os.pwrite(fd, b"\0" * JOURNAL_BYTES, 0)
                os.fsync(fd)
        except OSError as exc:
            self._warn("create", exc)
        self._fd = fd

    def read(self) -> dict[str, Any] | None:
        """The note on disk, or None (empty journal, unreadable, or torn: logged)."""
        try:
            data = self.path.read_bytes()[:JOURNAL_BYTES]
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._warn("read", exc)
            return None
        body, _, digest = data.rstrip(b"\0 \n").rpartition(b"\n")
        if not body.strip():
            return None
        body = body.rstrip(b" ")
        if hashlib.sha256(body).hexdigest().encode() != digest.strip():
            log.warning("%s: record journal is torn (checksum mismatch); its interval is unknown", self.path)
            return None
        try:
            note = json.loads(body)
        except ValueError:
            return None
        return note if isinstance(note, dict) else None

    def note(self, first_ts: str | None, last_ts: str | None, count: int, tags: list[str], reason: str) -> None:
        """Overwrite the journal with one note (in place, fsynced). count: records waiting (readings and events)."""
        if self._fd is None:
            return
        tags = sorted(tags)[:MAX_TAGS]
        reason = reason[:300]
        for keep in (len(tags), 20, 0):
            body = json.dumps({"first_ts": first_ts, "last_ts": last_ts, "count": int(count), "tags": tags[:keep],
                               "reason": reason}, ensure_ascii=False, separators=(",", ":")).encode()
            if len(body) + _DIGEST_LEN + 2 <= JOURNAL_BYTES:
                break
        digest = hashlib.sha256(body).hexdigest().encode()
        block = body + b"\n" + digest + b"\n"
        block += b" " * (JOURNAL_BYTES - len(block))
        try:
            os.pwrite(self._fd, block, 0)
            os.fsync(self._fd)
            self._dirty = True
        except OSError as exc:
            self._warn("write", exc)

    def clear(self) -> None:
        """Blank the journal (nothing waits any more). A no-op when it is already blank."""
        if self._fd is None or not self._dirty:
            return
        try:
            os.pwrite(self._fd, b" " * JOURNAL_BYTES, 0)
            os.fsync(self._fd)
            self._dirty = False
        except OSError as exc:
            self._warn("clear", exc)

    def take(self) -> dict[str, Any] | None:
        """The note left by the previous run (None when blank); the journal is blanked afterwards by clear()."""
        note = self.read()
        self._dirty = True   # whatever is on disk (a note, a torn one) is blanked by the next clear()
        return note

    def close(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None
