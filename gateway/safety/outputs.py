"""Output manager: writes interlock commands to devices, confirms them by read-back, never assumes them.

The safety path calls :meth:`OutputManager.apply` in the poll tick; it only starts asyncio tasks and
returns at once, so a slow device, a full disk or a dead uplink never delays the next tick
(docs/design.md "two paths"). Each write:

- goes through ``write(tag, value) -> Reading`` (the device write with read-back, drivers/base.py
  ``Device.write``), which raises gateway.model.WriteError when rejected or echoed wrongly;
- is confirmed only when the returned read-back is of quality GOOD and equals the commanded value
  (C04: a disagreeing read-back or echo is a failure, never "applied"; an UNCERTAIN read-back, OPC UA
  Part 4 7.34.1 severity 01 such as UncertainLastUsableValue, may be a stale cached value and never
  confirms either);
- is retried under a bounded policy (``attempts`` tries, exponential backoff from ``backoff_s`` up
  to ``backoff_max_s``, each try limited to ``attempt_timeout_s``);
- raises an "output_fault" event when not confirmed within ``confirm_timeout_s`` of the command, or
  when the attempts are spent, whichever comes first.

A newer command for the same output supersedes an older one between attempts (latest wins).
Events go out through ``on_event(dict)`` (the caller queues them to the store); an exception in the
callback is logged and never stops the safety path. A :class:`TripRecord` is kept per trip write
(detected, issued and confirmed times) so the demo can print the latency.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterable

from gateway.safety.interlocks import TripCommand
from gateway.model import Quality, Reading, WriteError, rfc3339

log = logging.getLogger(__name__)

WriteFn = Callable[[str, Any], Awaitable[Reading]]


@dataclass
class TripRecord:
    """Timeline of one commanded output write (times: monotonic s and UTC epoch s; None until reached).

    latency_issue_ms / latency_confirm_ms: detection -> first write issued / read-back confirmed."""

    interlock: str
    tag: str
    value: Any
    cause: str
    kind: str
    detected_mono: float
    detected_ts: float
    issued_mono: float | None = None
    issued_ts: float | None = None
    confirmed_mono: float | None = None
    confirmed_ts: float | None = None
    attempts: int = 0
    error: str | None = None
    superseded: bool = False

    @property
    def latency_issue_ms(self) -> float | None:
        return None if self.issued_mono is None else (self.issued_mono - self.detected_mono) * 1000.0

    @property
    def latency_confirm_ms(self) -> float | None:
        return None if self.confirmed_mono is None else (self.confirmed_mono - self.detected_mono) * 1000.0

    def to_record(self) -> dict[str, Any]:
        """JSON-able dict (RFC 3339 UTC times, latencies in ms)."""
        def t(x: float | None) -> str | None:
            return None if x is None else rfc3339(x)
        return {"interlock": self.interlock, "tag": self.tag, "value": self.value, "cause": self.cause,
                "kind": self.kind, "detected": t(self.detected_ts), "issued": t(self.issued_ts),
                "confirmed": t(self.confirmed_ts), "attempts": self.attempts, "error": self.error,
                "superseded": self.superseded, "latency_issue_ms": self.latency_issue_ms,
                "latency_confirm_ms": self.latency_confirm_ms}


@dataclass
class OutputState:
    """State of one output tag. commanded: last commanded value. confirmed: the read-back matched it
    (never True for an unconfirmed write). confirmed_at: UTC epoch s of that confirmation.
    attempts: tries for the current command. last_error: one line. fault: output-fault raised and
    not yet cleared by a confirmation. busy: a write is in progress."""

    tag: str
    commanded: Any = None
    confirmed: bool = False
    confirmed_at: float | None = None
    attempts: int = 0
    last_error: str | None = None
    fault: bool = False
    busy: bool = False

    def to_record(self) -> dict[str, Any]:
        return {"tag": self.tag, "commanded": self.commanded, "confirmed": self.confirmed,
                "confirmed_at": None if self.confirmed_at is None else rfc3339(self.confirmed_at),
                "attempts": self.attempts, "last_error": self.last_error, "fault": self.fault, "busy": self.busy}


@dataclass(eq=False)
class _Job:
    value: Any
    interlock: str
    cause: str
    records: list[TripRecord] = field(default_factory=list)
    attempts: int = 0
    issued_mono: float | None = None
    fault_reported: bool = False
    done: bool = False
    watchdog: asyncio.TimerHandle | None = None


def values_match(readback: Any, commanded: Any, rel_tol: float = 1e-6, abs_tol: float = 1e-6) -> bool:
    """True when a read-back value equals the commanded one: numbers (bool counts as 0/1) within
    rel_tol/abs_tol (float32 and scaled registers round), anything else by ==."""
    def num(v: Any) -> float | None:
        if isinstance(v, bool):
            return float(v)
        if isinstance(v, (int, float)):
            return float(v)
        return None
    a, b = num(readback), num(commanded)
    if a is not None and b is not None:
        return math.isfinite(a) and math.isclose(a, b, rel_tol=rel_tol, abs_tol=abs_tol)
    return readback == commanded


def readback_problem(tag: str, rb: Any, commanded: Any) -> str | None:
    """None when the read-back ``rb`` confirms the write of ``commanded`` to ``tag``, else why not (one line).

    Only a Reading of quality GOOD whose value matches (:func:`values_match`) confirms. UNCERTAIN
    (OPC UA Part 4 7.34.1 severity 01, e.g. UncertainLastUsableValue) may be a cached or substituted
    value rather than the output's present state, so it confirms nothing; neither does BAD."""
    if not isinstance(rb, Reading) or rb.quality is not Quality.GOOD or rb.value is None:
        q = getattr(rb, "quality", None)
        return f"{tag}: read-back unusable ({getattr(q, 'value', q)}, {getattr(rb, 'reason', None)})"
    if not values_match(rb.value, commanded):
        return f"{tag}: read-back {rb.value!r} differs from commanded {commanded!r}"
    return None


class OutputManager:
    """Confirmed, retried, non-blocking output writes for the safety path.

    write: coroutine (tag, value) -> read-back Reading; raises WriteError when the write fails.
    on_event: called with a dict per event: {"type": "output_write" | "output_confirmed" |
    "output_fault", "tag", "value", "interlock", "attempt", "error", "ts" (RFC 3339)}.
    attempts >= 1, backoff_s / backoff_max_s / attempt_timeout_s / confirm_timeout_s in seconds.
    retry_after_fault_s: None (default) = give up after ``attempts`` (the fault stands); a number = after
    the fault, keep retrying every that many seconds until confirmed or superseded (an
    unconfirmed output write raises an output-fault alarm and is retried; docs/design.md, Fail safe).
    clock: wall clock (time.time); monotonic time always comes from time.monotonic().
    """

    def __init__(self, write: WriteFn, on_event: Callable[[dict], None] | None = None, *, attempts: int = 3,
                 backoff_s: float = 0.2, backoff_max_s: float = 2.0, attempt_timeout_s: float = 2.0,
                 confirm_timeout_s: float = 5.0, history: int = 1000,
                 clock: Callable[[], float] = time.time, retry_after_fault_s: float | None = None) -> None:
        if attempts < 1:
            raise ValueError("attempts must be >= 1")
        if backoff_s < 0 or backoff_max_s < 0 or attempt_timeout_s <= 0 or confirm_timeout_s <= 0:
            raise ValueError("backoff must be >= 0 and timeouts > 0")
        self._write = write
        self._on_event = on_event
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.attempt_timeout_s = attempt_timeout_s
        self.confirm_timeout_s = confirm_timeout_s
        if retry_after_fault_s is not None and not retry_after_fault_s > 0:
            raise ValueError("retry_after_fault_s must be > 0 (or None)")
        self.retry_after_fault_s = retry_after_fault_s
        self._clock = clock
        self._states: dict[str, OutputState] = {}
        self._jobs: dict[str, _Job] = {}
        self._tasks: dict[str, asyncio.Task] = {}
        self._records: collections.deque[TripRecord] = collections.deque(maxlen=history)
        self._closed = False

    # ------------------------------------------------------------------ public

    def apply(self, commands: Iterable[TripCommand]) -> list[asyncio.Task]:
        """Start (or supersede) a confirmed write per command; returns the tasks now running for them.

        Never awaits: must be called from the event loop thread. A command equal to the one already
        in progress for that output joins it (no second write); a different value supersedes it at the
        next attempt. A command for an output already confirmed at that value is written again (the
        device may have been changed locally). Raises RuntimeError after close().
        """
        if self._closed:
            raise RuntimeError("OutputManager is closed")
        loop = asyncio.get_running_loop()
        started = []
        for cmd in commands:
            rec = TripRecord(cmd.interlock, cmd.tag, cmd.value, cmd.cause, cmd.kind, cmd.detected_mono, cmd.detected_ts)
            self._records.append(rec)
            st = self._states.setdefault(cmd.tag, OutputState(cmd.tag))
            job = self._jobs.get(cmd.tag)
            if job is not None and not job.done and values_match(job.value, cmd.value, 0, 0) \
                    and type(job.value) is type(cmd.value):
                job.records.append(rec)
                if job.issued_mono is not None:
                    rec.issued_mono, rec.issued_ts = time.monotonic(), self._clock()
            else:
                if job is not None and not job.done:
                    self._finish(job, superseded=True)
                job = _Job(cmd.value, cmd.interlock, cmd.cause, [rec])
                self._jobs[cmd.tag] = job
                st.commanded, st.confirmed, st.confirmed_at, st.attempts = cmd.value, False, None, 0
                job.watchdog = loop.call_later(self.confirm_timeout_s, self._watchdog, cmd.tag, job)
            task = self._tasks.get(cmd.tag)
            if task is None or task.done():
                task = loop.create_task(self._run(cmd.tag), name=f"output-write:{cmd.tag}")
                self._tasks[cmd.tag] = task
            st.busy = True
            if task not in started:
                started.append(task)
        return started

    def state(self, tag: str) -> OutputState:
        """State of one output (KeyError when never commanded)."""
        return self._states[tag]

    def states(self) -> list[dict[str, Any]]:
        """Every commanded output as dicts (for `status`)."""
        return [s.to_record() for s in self._states.values()]

    def trip_records(self) -> list[TripRecord]:
        """Recent command timelines, oldest first (bounded by ``history``)."""
        return list(self._records)

    async def wait_idle(self, timeout_s: float | None = None) -> None:
        """Wait until no write is in progress (raises TimeoutError after timeout_s)."""
        async def idle() -> None:
            while True:
                tasks = [t for t in self._tasks.values() if not t.done()]
                if not tasks:
                    return
                await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.wait_for(idle(), timeout_s)

    async def close(self) -> None:
        """Cancel writes in progress and watchdogs; idempotent."""
        self._closed = True
        for job in self._jobs.values():
            if job.watchdog is not None:
                job.watchdog.cancel()
        tasks = [t for t in self._tasks.values() if not t.done()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ------------------------------------------------------------------ internals

    def _emit(self, kind: str, tag: str, job: _Job, **kw: Any) -> None:
        ev = {"type": kind, "tag": tag, "value": job.value, "interlock": job.interlock, "cause": job.cause,
              "ts": rfc3339(self._clock()), **kw}
        if self._on_event is None:
            return
        try:
            self._on_event(ev)
        except Exception:  # the record path must never stop the safety path
            log.exception("output event callback failed for %s", tag)

    def _finish(self, job: _Job, superseded: bool = False) -> None:
        job.done = True
        if job.watchdog is not None:
            job.watchdog.cancel()
        if superseded:
            for r in job.records:
                if r.confirmed_mono is None:
                    r.superseded = True

    def _fault(self, tag: str, job: _Job, why: str) -> None:
        st = self._states[tag]
        st.fault = True
        if not job.fault_reported:
            job.fault_reported = True
            for r in job.records:
                r.error = why
            self._emit("output_fault", tag, job, attempt=job.attempts, error=why)
            log.error("output fault: %s", why)

    def _watchdog(self, tag: str, job: _Job) -> None:
        if self._jobs.get(tag) is job and not job.done:
            st = self._states[tag]
            self._fault(tag, job, f"{tag}: write of {job.value!r} not confirmed within {self.confirm_timeout_s:g} s"
                        + (f" (last error: {st.last_error})" if st.last_error else ""))

    async def _run(self, tag: str) -> None:
        st = self._states[tag]
        try:
            while True:
                job = self._jobs.get(tag)
                if job is None or job.done:
                    return
                ok = await self._attempt(tag, job)
                if job.done:          # superseded while writing
                    continue
                if ok:
                    self._finish(job)
                    continue
                if job.attempts >= self.attempts:
                    self._fault(tag, job, f"{tag}: write of {job.value!r} failed after {job.attempts} attempts: "
                                          f"{st.last_error}")
                    if self.retry_after_fault_s is None:
                        self._finish(job)
                        continue
                    delay = self.retry_after_fault_s  # keep trying, slowly, until confirmed or superseded
                else:
                    delay = min(self.backoff_max_s, self.backoff_s * (2 ** (job.attempts - 1)))
                await asyncio.sleep(delay)
        finally:
            st.busy = False

    async def _attempt(self, tag: str, job: _Job) -> bool:
        st = self._states[tag]
        job.attempts += 1
        st.attempts = job.attempts
        now = time.monotonic()
        if job.issued_mono is None:
            job.issued_mono = now
            wall = self._clock()
            for r in job.records:
                r.issued_mono, r.issued_ts = now, wall
        for r in job.records:
            r.attempts = job.attempts
        err: str | None = None
        try:
            rb = await asyncio.wait_for(self._write(tag, job.value), self.attempt_timeout_s)
        except WriteError as e:
            err = str(e) or f"{tag}: write rejected"
        except asyncio.TimeoutError:
            err = f"{tag}: no answer to the write within {self.attempt_timeout_s:g} s"
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a driver broke its contract; still a failed write, never an applied one
            err = f"{tag}: {type(e).__name__}: {e}"
        else:
            err = readback_problem(tag, rb, job.value)
        if job.done:
            return False
        self._emit("output_write", tag, job, attempt=job.attempts, ok=err is None, error=err)
        if err is not None:
            st.last_error = err
            log.warning("output write attempt %d failed: %s", job.attempts, err)
            return False
        mono, wall = time.monotonic(), self._clock()
        st.confirmed, st.confirmed_at, st.last_error, st.fault = True, wall, None, False
        for r in job.records:
            r.confirmed_mono, r.confirmed_ts, r.error = mono, wall, None
        self._emit("output_confirmed", tag, job, attempt=job.attempts, late=job.fault_reported,
                   latency_ms=(mono - job.records[0].detected_mono) * 1000.0)
        return True
