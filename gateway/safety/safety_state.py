"""The safety state that must survive a restart: ``state_dir/safety-state.json``.

A watchdog restart, a crash or a power loss must not un-trip an interlock: a trip is left only by a
manual reset after the condition has cleared (IEC 61511-1 11.2 practice; GB 16808 controllers latch
until a manual reset). The alarm and interlock engines live in memory on the safety path; their state
carries from one engine to the next by ONE mechanism, the engines' snapshot / adopt
(gateway.safety.alarms.AlarmEngine.snapshot / adopt, gateway.safety.interlocks.InterlockEngine.snapshot / adopt). A
SIGHUP reload adopts a snapshot in memory (gateway.runtime.reload); a restart carries a part of it through this
file:

* :func:`export` takes the snapshots and keeps their restart form (AlarmSnapshot.saved,
  InterlockSnapshot.saved): interlocks tripped (or cleared and awaiting reset), with cause and trip
  time, and bypasses with their wall-clock expiry; latched alarms awaiting reset, with their activation
  time, acknowledgement and first-out mark. Only wall-clock times are written: the monotonic clock
  starts again with the process;
* at start the engines build a snapshot back from the file (``snapshot_from_saved``: monotonic times
  taken afresh, a bypass's remaining time from its wall-clock expiry) and adopt it (``restore_state``).

Writing never touches the safety path (docs/design.md "two paths"): :class:`SafetyStatePersister` runs as
a small background task. It is woken AT ONCE when a trip, reset, bypass or latch happens (the gateway
calls :meth:`SafetyStatePersister.poke` for every interlock or alarm event it records: setting an
asyncio.Event, nothing more, on the safety path), and otherwise checks every :data:`WRITE_EVERY_S`
seconds (catching any change no event announced, a SIGHUP reload's carry-over included). It takes the
in-memory snapshot (a pure dict build on the event loop), compares it with the last one written, and
only when it changed writes it in a worker thread, atomically: a temporary file in the same directory, fsync,
rename over the old file, fsync of the directory (POSIX rename(2) is atomic; the fsyncs make the new
content durable before and after the rename, so a power loss leaves the old or the new file, never
a torn one). A trip is thus on disk within one write (a few ms on a healthy disk) of its event; a change
no event announced, within WRITE_EVERY_S plus one write. A write already under way when the next event
comes is followed by another as soon as it ends.

At start (gateway.runtime.gateway.Gateway.run), before devices are polled, :func:`load` reads the file and
the engines restore it (``restore_state``), each restored trip or latch is a "restored" event, and
a tripped interlock's outputs are commanded to the safe state again (confirmed writes).

File format (JSON object): ``format`` (1), ``gateway_id``, ``written_at`` (RFC 3339 UTC),
``interlocks`` {name: ...}, ``alarms`` {id: ...} (shapes: AlarmSnapshot.saved and
InterlockSnapshot.saved, the engines' export_state), ``hidden_dangers`` [...] (the open and pending
hidden-danger records, gateway.safety.hidden_danger.HiddenDangerTracker.saved; absent in older files).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from gateway.filemode import create_record_file, fsync_dir
from gateway.model import rfc3339

if TYPE_CHECKING:
    from gateway.safety.alarms import AlarmEngine
    from gateway.safety.hidden_danger import HiddenDangerTracker
    from gateway.safety.interlocks import InterlockEngine

log = logging.getLogger("hazard_gateway.safety_state")

FILE_NAME = "safety-state.json"
FORMAT = 1
#: the longest a changed safety state waits before it is written (seconds)
WRITE_EVERY_S = 0.5


def export(alarms: "AlarmEngine", interlocks: "InterlockEngine",
           hidden: "HiddenDangerTracker | None" = None) -> dict[str, Any]:
    """The state to persist: ``{"interlocks": interlocks.snapshot(restart_only=True).saved(), "alarms":
    alarms.snapshot(restart_only=True).saved()}`` (the restart form of the engines' snapshots; shapes in
    the module docstring), and with ``hidden`` its open and pending hidden-danger records as
    ``"hidden_dangers"`` (HiddenDangerTracker.saved). Pure and in memory: O(alarms) checks, a copy of the
    latched alarms and the tripped or bypassed interlocks only; safe on the event loop."""
    out = {"interlocks": interlocks.snapshot(restart_only=True).saved(),
           "alarms": alarms.snapshot(restart_only=True).saved()}
    if hidden is not None:
        out["hidden_dangers"] = hidden.saved()
    return out


class SafetyStateError(ValueError):
    """The state file exists but cannot be used (unreadable, not JSON, wrong format); one line."""


def write_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as JSON to ``path`` atomically and durably: tmp file + fsync + rename + fsync(dir).
    The file is mode 0640 whatever the umask (gateway.filemode).

    Blocking (disk I/O): call it in a worker thread, never on the event loop. Raises OSError."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    body = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    fd = create_record_file(tmp)
    try:
        view = memoryview(body)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def load(path: Path) -> dict[str, Any] | None:
    """The saved state ({"interlocks": {...}, "alarms": {...}, "hidden_dangers": [...], ...}); None when there is
    no file.

    Blocking (disk I/O). Raises SafetyStateError (one line naming the file) for a file that cannot be
    read or is not a format-1 safety state."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SafetyStateError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise SafetyStateError(f"{path}: not JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT \
            or not isinstance(data.get("interlocks", {}), dict) or not isinstance(data.get("alarms", {}), dict) \
            or not isinstance(data.get("hidden_dangers", []), list):
        raise SafetyStateError(f"{path}: not a format-{FORMAT} safety state")
    data.setdefault("interlocks", {})
    data.setdefault("alarms", {})
    data.setdefault("hidden_dangers", [])
    return data


class SafetyStatePersister:
    """Writes the safety state to ``path`` when it changed, at most every ``every_s`` seconds, off the loop.

    export: returns {"interlocks": ..., "alarms": ...} from the live engines (called on the event loop;
    must be pure and fast). gateway_id goes into the file for the reader. ``writes`` counts files
    written, ``last_error`` holds the last write failure (one line; None after a good write).
    """

    def __init__(self, path: Path, export: Callable[[], dict[str, Any]], gateway_id: str,
                 every_s: float = WRITE_EVERY_S) -> None:
        self.path = Path(path)
        self.export = export
        self.gateway_id = gateway_id
        self.every_s = every_s
        self.writes = 0
        self.last_error: str | None = None
        self._written: dict[str, Any] | None = None
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()

    def poke(self) -> None:
        """Ask for a write as soon as possible (a trip, reset, bypass or latch just happened). Cheap and
        non-blocking: safe to call on the safety path; must be called on the persister's event loop."""
        self._wake.set()

    async def write_if_changed(self) -> bool:
        """Snapshot now; write it (in a thread) when it differs from the last one written. True when written.
        A write failure is logged (once per distinct error) and retried at the next call; never raises OSError."""
        async with self._lock:
            snap = self.export()
            if snap == self._written:
                return False
            doc = {"format": FORMAT, "gateway_id": self.gateway_id, "written_at": rfc3339(time.time()), **snap}
            try:
                await asyncio.to_thread(write_atomic, self.path, doc)
            except OSError as exc:
                msg = f"{self.path}: cannot write the safety state: {exc.strerror or exc}"
                if msg != self.last_error:
                    log.error("%s; a restart now would not restore the latest trips", msg)
                self.last_error = msg
                return False
            self._written = snap
            self.writes += 1
            self.last_error = None
            return True

    async def run(self, stopping: Callable[[], bool]) -> None:
        """Until ``stopping()``: write the state if it changed, at once after :meth:`poke`, else every every_s."""
        while not stopping():
            self._wake.clear()
            await self.write_if_changed()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.every_s)
            except (TimeoutError, asyncio.TimeoutError):
                pass
