"""Logging for the daemon: one line per event, journald-friendly, rate-limited, no secrets.

* One line per event: newlines inside a message (and an exception's traceback) are
  folded into the line (`` | ``), so journald and grep see one record per event.
* Under systemd (``$JOURNAL_STREAM`` names the device:inode of our stderr, see
  systemd.exec(5) "JOURNAL_STREAM") lines carry the sd-daemon(3) level prefix
  ``<3>`` err, ``<4>`` warning, ``<5>`` notice, ``<6>`` info, ``<7>`` debug and no
  timestamp (journald adds its own). Elsewhere: ``2025-01-01T12:00:00.123Z LEVEL
  name: message``.
* Repeating faults are rate-limited per message key: the first occurrence is
  written, the repeats within ``interval_s`` are counted, and when the interval is
  over one summary line says ``(repeated N times in the last 60 s)``. The key is
  ``extra={"key": ...}`` when given, else logger + level + the formatted message.
  Only WARNING and above are limited: INFO lines are events (alarm transitions) and
  are never rate-limited.
* Nothing that logs waits on the log's consumer (docs/design.md: the safety path never waits on
  the disk). The caller only formats the message and puts the record into a bounded
  in-memory queue (:class:`DroppingQueueHandler`, a ``logging.handlers.QueueHandler``);
  one writer thread (``logging.handlers.QueueListener``) formats the line and writes it
  to stderr. When the writer is stalled (journald not reading, a full pipe) the queue
  fills up and further lines are dropped and counted, never waited for; once there is
  room again one line ``N log lines dropped (log writer stalled)`` says how many. The
  log is diagnostics: the record of alarms and trips is the store's signed event chain,
  which has its own non-blocking queue (gateway.record.store).
* Redaction: PEM blocks, JWK private members (``"d"``, ``"p"``, ``"q"`` ...),
  ``password=``/``token:``/``secret`` style key-value pairs, HTTP Authorization
  values and URL user-info passwords are replaced by ``***`` before writing.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import queue
import re
import sys
import threading
import time
from typing import IO, Any

#: sd-daemon(3) priority prefixes (syslog levels)
SD_PREFIX = {logging.CRITICAL: "<2>", logging.ERROR: "<3>", logging.WARNING: "<4>", logging.INFO: "<6>",
             logging.DEBUG: "<7>"}

_REDACTIONS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"-----BEGIN [A-Z0-9 ]*-----.*?(-----END [A-Z0-9 ]*-----|$)", re.S), "[redacted PEM]"),
    (re.compile(r"""(["']?\b(?:d|p|q|dp|dq|qi|k)["']\s*:\s*["'])[A-Za-z0-9_\-]{16,}(["'])"""), r"\1***\2"),
    (re.compile(r"""(?i)(\b(?:password|passwd|passphrase|pwd|secret|token|api[_-]?key|private[_-]?key)\b["']?\s*[=:]\s*["']?)"""
                r"""([^\s"',;}&]+)"""), r"\1***"),
    (re.compile(r"(?i)(\bauthorization\b\s*[:=]\s*(?:bearer|basic)?\s*)\S+"), r"\1***"),
    (re.compile(r"(\b[a-z][a-z0-9+.\-]*://[^/\s:@]+:)[^@\s/]+@"), r"\1***@"),
]


def redact(text: str) -> str:
    """``text`` with key material and passwords replaced by ``***`` / ``[redacted PEM]``."""
    for pat, repl in _REDACTIONS:
        text = pat.sub(repl, text)
    return text


def under_journald(stream: IO[str] | None = None) -> bool:
    """True when ``stream`` (default stderr) is the journal stream systemd gave us ($JOURNAL_STREAM)."""
    js = os.environ.get("JOURNAL_STREAM")
    if not js:
        return False
    stream = stream or sys.stderr
    try:
        dev, ino = (int(x) for x in js.split(":", 1))
        st = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError):
        return True  # set but unverifiable: trust it (no timestamps is harmless)
    return (st.st_dev, st.st_ino) == (dev, ino)


class OneLineFormatter(logging.Formatter):
    """One redacted line per record; journald style (``<N>`` prefix, no time) or plain with a UTC time."""

    def __init__(self, journald: bool) -> None:
        super().__init__()
        self.journald = journald

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            tb = exc.__traceback__
            where = ""
            while tb is not None and tb.tb_next is not None:
                tb = tb.tb_next
            if tb is not None:
                where = f" at {os.path.basename(tb.tb_frame.f_code.co_filename)}:{tb.tb_lineno}"
            msg = f"{msg}: {type(exc).__name__}: {exc}{where}"
        msg = redact(msg)
        msg = " | ".join(part for part in msg.replace("\r", "\n").split("\n") if part.strip()) or msg.strip()
        if self.journald:
            return f"{SD_PREFIX.get(record.levelno, '<6>')}{record.name}: {msg}"
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        return f"{ts} {record.levelname} {record.name}: {msg}"


class RateLimitingHandler(logging.Handler):
    """Wraps a handler: per message key the first record passes, repeats within ``interval_s`` are
    counted, and a summary "(repeated N times in the last S s)" is written when the interval ends
    (at the next record of any key, or at flush/close). Records below ``min_level`` always pass."""

    def __init__(self, target: logging.Handler, interval_s: float = 60.0, min_level: int = logging.WARNING,
                 clock: Any = time.monotonic) -> None:
        super().__init__(level=target.level)
        self.target = target
        self.interval_s = interval_s
        self.min_level = min_level
        self.clock = clock
        self._state: dict[tuple, list[Any]] = {}  # key -> [window start, suppressed count, last record]
        self._mu = threading.Lock()

    @staticmethod
    def key_of(record: logging.LogRecord) -> tuple:
        key = getattr(record, "key", None)
        return (record.name, record.levelno, key if key is not None else record.getMessage())

    def _summary(self, rec: logging.LogRecord, n: int, since: float) -> logging.LogRecord:
        s = logging.makeLogRecord(rec.__dict__)
        s.msg = f"{rec.getMessage()} (repeated {n} time{'s' if n != 1 else ''} in the last {max(1, round(since))} s)"
        s.args = None
        s.exc_info = None
        s.exc_text = None
        return s

    def _due(self, now: float, force: bool = False) -> list[logging.LogRecord]:
        out = []
        for key, st in list(self._state.items()):
            if force or now - st[0] >= self.interval_s:
                if st[1]:
                    out.append(self._summary(st[2], st[1], now - st[0]))
                del self._state[key]
        return out

    def emit(self, record: logging.LogRecord) -> None:
        now = self.clock()
        if record.levelno < self.min_level:
            with self._mu:
                pending = self._due(now)
            for r in pending:
                self.target.handle(r)
            self.target.handle(record)
            return
        key = self.key_of(record)
        with self._mu:
            pending = self._due(now)
            st = self._state.get(key)
            if st is None:
                self._state[key] = [now, 0, record]
                out = True
            else:
                st[1] += 1
                st[2] = record
                out = False
        for r in pending:
            self.target.handle(r)
        if out:
            self.target.handle(record)

    def flush(self) -> None:
        with self._mu:
            pending = self._due(self.clock(), force=True)
        for r in pending:
            self.target.handle(r)
        self.target.flush()

    def close(self) -> None:
        self.flush()
        self.target.close()
        super().close()


#: records the log queue holds while the writer is stalled (a few MB at most)
LOG_QUEUE_SIZE = 10_000


class _StreamWriter(logging.StreamHandler):
    """The writer thread's stream handler. flush() from another thread (logging.shutdown at exit, a
    final flush) gives up after ``lock_timeout_s`` instead of waiting forever on a write that blocks."""

    lock_timeout_s = 1.0

    def flush(self) -> None:
        if self.lock is None or not self.lock.acquire(timeout=self.lock_timeout_s):
            return
        try:
            if self.stream and hasattr(self.stream, "flush"):
                self.stream.flush()
        except (OSError, ValueError):
            pass
        finally:
            self.lock.release()


class DroppingQueueHandler(logging.handlers.QueueHandler):
    """A QueueHandler that never blocks its caller: records go into a bounded ``queue.Queue`` that a
    ``logging.handlers.QueueListener`` thread writes to ``target`` (the handler doing the I/O).

    When the queue is full the record is dropped and counted (``dropped``: total; the count since the
    last report is pending). At the next record that finds room, a WARNING "N log lines dropped (log
    writer stalled)" is queued first. The message is rendered (``%`` args merged) in the caller's
    thread; the exception info stays on the record so the writer's formatter still sees it.
    flush() waits at most ``flush_timeout_s`` for the writer to catch up; close() stops the writer."""

    def __init__(self, target: logging.Handler, maxsize: int = LOG_QUEUE_SIZE, flush_timeout_s: float = 5.0) -> None:
        if maxsize < 1:
            raise ValueError("the log queue needs room for at least one record")
        super().__init__(queue.Queue(maxsize))
        self.target = target
        self.flush_timeout_s = flush_timeout_s
        self.dropped = 0            # total records dropped since start
        self._pending = 0           # dropped and not yet reported
        self._mu = threading.Lock()
        self.listener = logging.handlers.QueueListener(self.queue, target, respect_handler_level=True)
        self.listener.start()

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        rec = logging.makeLogRecord(record.__dict__)
        rec.msg = record.getMessage()
        rec.args = None
        return rec

    def _put(self, record: logging.LogRecord) -> bool:
        try:
            self.queue.put_nowait(record)
            return True
        except queue.Full:
            return False

    def _note(self) -> logging.LogRecord:
        n = self._pending
        return logging.LogRecord("hazard_gateway.log", logging.WARNING, __file__, 0,
                                 f"{n} log line{'s' if n != 1 else ''} dropped (log writer stalled)", None, None)

    def enqueue(self, record: logging.LogRecord) -> None:
        with self._mu:
            if self._pending and self._put(self._note()):
                self._pending = 0
            if not self._put(record):
                self.dropped += 1
                self._pending += 1

    def flush(self) -> None:
        """Report pending drops and wait (at most flush_timeout_s) until the writer has written the queue."""
        q = self.queue
        deadline = time.monotonic() + self.flush_timeout_s
        self._report_pending(deadline)
        with q.all_tasks_done:
            while q.unfinished_tasks:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                q.all_tasks_done.wait(left)

    def _report_pending(self, deadline: float) -> None:
        with self._mu:
            if not self._pending:
                return
            try:
                self.queue.put(self._note(), timeout=max(0.0, deadline - time.monotonic()))
                self._pending = 0
            except queue.Full:
                pass

    def close(self) -> None:
        """Flush (bounded), then stop the writer thread (bounded: a writer blocked for good is left behind,
        it is a daemon thread)."""
        self.flush()
        th = self.listener._thread
        if th is not None:
            try:
                self.queue.put(self.listener._sentinel, timeout=1.0)
            except queue.Full:
                pass
            th.join(self.flush_timeout_s)
            self.listener._thread = None
        super().close()


def setup_logging(level: str | int = "INFO", stream: IO[str] | None = None, interval_s: float = 60.0,
                  quiet: tuple[str, ...] = ("asyncua", "httpx", "pymodbus", "uvicorn.access"),
                  queue_size: int = LOG_QUEUE_SIZE) -> logging.Handler:
    """Configure the root logger for the daemon; returns the installed handler (flush() writes pending
    rate-limit summaries and waits, bounded, for the writer; close() also stops the writer thread).

    level: name or number (HG_LOG_LEVEL); stream: default stderr; interval_s: the rate-limit window;
    queue_size: records held for the writer thread (see DroppingQueueHandler). Libraries in ``quiet``
    log per request at INFO: they are held at WARNING. An unknown level name raises ValueError (one line).

    Chain: root -> RateLimitingHandler (caller's thread, in memory) -> DroppingQueueHandler (bounded
    queue, never blocks) -> writer thread -> OneLineFormatter -> ``stream``."""
    stream = stream or sys.stderr
    lvl = logging.getLevelName(level.upper()) if isinstance(level, str) else level
    if not isinstance(lvl, int):
        raise ValueError(f"log level {level!r} is not one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
    inner = _StreamWriter(stream)
    inner.setFormatter(OneLineFormatter(journald=under_journald(stream)))
    handler = RateLimitingHandler(DroppingQueueHandler(inner, maxsize=queue_size), interval_s=interval_s)
    root = logging.getLogger()
    for h in list(root.handlers):
        if isinstance(h, RateLimitingHandler):
            root.removeHandler(h)
            h.close()
    root.addHandler(handler)
    root.setLevel(lvl)
    for name in quiet:
        logging.getLogger(name).setLevel(max(lvl, logging.WARNING))
    return handler
