"""Wall-clock watch (C18): detect steps of the system clock and report the clock state per batch.

Every interval, delay and timeout of the gateway runs on ``time.monotonic()`` (CLOCK_MONOTONIC,
which an NTP step or ``date -s`` does not move), so a step of the wall clock neither stalls
nor bursts polling. Sample timestamps, however, come from the wall clock (UTC epoch
seconds, ``time.time()``), and a regulator reading them must know when that clock jumped.

:class:`ClockMonitor` compares, at each ``tick()``, how far the wall clock and the
monotonic clock advanced since the previous tick. A difference larger than ``threshold_s``
(default 1 s; NTP slews corrections below 0.128 s and steps above it, ntpd(8) / chrony
``makestep``) is a step: it is remembered (``last_step_s``, signed seconds, + = forward)
and returned so the caller records a ``clock_step`` event. ``state()`` is the Batcher's
``clock_fn``: ``{"synchronised": bool | None, "last_step_s": float | None}``, carried in
every batch (docs/design.md, Clock).

``synchronised`` comes from the kernel's NTP discipline: ``adjtimex(2)`` with modes 0 (a
read, no privilege needed) returns TIME_ERROR (5) while the clock is unsynchronised
(STA_UNSYNC set, as timedatectl's "System clock synchronized: no"); any other state is
synchronised. It is None where adjtimex is unavailable (not Linux). The kernel answer is
cached for ``sync_check_s`` seconds.

Alarm on loss of synchronisation (docs/domain.md, GB 16808: alarm times are recorded, and the
clock error of an alarm record is bounded; the figure is unconfirmed there, so the gateway at
least says when its clock is not disciplined): :meth:`ClockMonitor.sync_alarm` returns the
one-line reason of the CLOCK system alarm ("系统时钟未同步 ...") once the kernel has reported the
clock unsynchronised, without a break, for ``grace_s`` seconds (a boot before NTP has synchronised
is normal for a minute or two), and None otherwise, including when the state is unknown (None):
an unknown state raises nothing. The gateway raises and clears the alarm ``system.CLOCK`` from
it (gateway.runtime.gateway.Gateway, alarm_policy.clock_unsync_grace_s).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

#: adjtimex(2) return value while the clock is not synchronised
TIME_ERROR = 5
#: steps smaller than this (seconds) are ignored: scheduling jitter between the two clock reads
DEFAULT_THRESHOLD_S = 1.0
#: seconds the clock may be seen unsynchronised before the CLOCK alarm (alarm_policy.clock_unsync_grace_s)
DEFAULT_UNSYNC_GRACE_S = 60.0
#: what the CLOCK alarm says (operators read Chinese): "the system clock is not synchronised"
UNSYNC_TEXT = "系统时钟未同步"
#: what the CLOCK alarm's clearing event says: "the system clock is synchronised again"
RESYNC_TEXT = "系统时钟已恢复同步 / system clock synchronised again"


def kernel_synchronised() -> bool | None:
    """True/False from adjtimex(2) (Linux), None when it cannot be asked."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        buf = ctypes.create_string_buffer(512)   # struct timex (208 bytes on LP64); modes = 0 -> read only
        state = libc.adjtimex(buf)
    except (OSError, AttributeError):
        return None
    if state < 0:
        return None
    return state != TIME_ERROR


class ClockMonitor:
    """Detects wall-clock steps between ticks; reports the clock state for batches.

    wall: () -> UTC epoch seconds (default ``time.time``, looked up at each call so a test
    can substitute the clock). mono: () -> monotonic seconds. threshold_s: smallest step
    reported. sync_fn: () -> bool | None, default :func:`kernel_synchronised`.
    """

    def __init__(self, wall: Callable[[], float] | None = None, mono: Callable[[], float] | None = None,
                 threshold_s: float = DEFAULT_THRESHOLD_S, sync_fn: Callable[[], bool | None] | None = None,
                 sync_check_s: float = 60.0) -> None:
        self._wall = wall or (lambda: time.time())
        self._mono = mono or (lambda: time.monotonic())
        self.threshold_s = float(threshold_s)
        self._sync_fn = sync_fn or kernel_synchronised
        self._sync_check_s = float(sync_check_s)
        self._sync: bool | None = None
        self._sync_at: float | None = None
        self._unsync_since: float | None = None   # monotonic time the clock was first seen unsynchronised
        self._last: tuple[float, float] | None = None
        #: signed size of the last step seen (seconds; + = the wall clock jumped forward), None: none yet
        self.last_step_s: float | None = None
        #: wall time (epoch s, the new clock) when the last step was seen
        self.last_step_at: float | None = None
        self.steps = 0

    def tick(self) -> float | None:
        """Sample both clocks; return the step (signed seconds) when one happened since the last tick."""
        wall, mono = self._wall(), self._mono()
        last, self._last = self._last, (wall, mono)
        if last is None:
            return None
        step = (wall - last[0]) - (mono - last[1])
        if abs(step) < self.threshold_s:
            return None
        self.last_step_s = round(step, 3)
        self.last_step_at = wall
        self.steps += 1
        log.warning("wall clock stepped by %+.3f s (monotonic timers are unaffected)", step)
        return self.last_step_s

    def synchronised(self) -> bool | None:
        """The kernel's NTP state (cached for sync_check_s)."""
        now = self._mono()
        if self._sync_at is None or now - self._sync_at >= self._sync_check_s:
            self._sync, self._sync_at = self._sync_fn(), now
            if self._sync is False:
                if self._unsync_since is None:
                    self._unsync_since = now
            else:
                self._unsync_since = None
        return self._sync

    def unsynchronised_s(self) -> float | None:
        """Seconds (monotonic) since the clock was first seen unsynchronised, without a synchronised or unknown
        answer in between; None while it is synchronised or its state is unknown."""
        if self.synchronised() is not False or self._unsync_since is None:
            return None
        return self._mono() - self._unsync_since

    def sync_alarm(self, grace_s: float = DEFAULT_UNSYNC_GRACE_S) -> str | None:
        """The reason of the CLOCK system alarm (one line, stable while the condition lasts) when the clock has
        been seen unsynchronised for at least ``grace_s`` seconds; None otherwise (synchronised, unknown, or
        still within the grace)."""
        u = self.unsynchronised_s()
        if u is None or u < grace_s:
            return None
        return (f"{UNSYNC_TEXT} / system clock not synchronised: the kernel reports it (adjtimex TIME_ERROR) "
                f"for more than {grace_s:g} s; alarm and sample times may be off")

    def state(self) -> dict[str, Any]:
        """``{"synchronised": bool | None, "last_step_s": float | None}`` (the Batcher's clock_fn)."""
        return {"synchronised": self.synchronised(), "last_step_s": self.last_step_s}

    def step_event(self, step_s: float) -> dict[str, Any]:
        """The ``clock_step`` event record for a step returned by tick() (ts = the new wall clock)."""
        from gateway.model import rfc3339
        return {"kind": "clock_step", "type": "clock", "severity": "warning", "step_s": step_s,
                "ts": rfc3339(self._wall()), "synchronised": self._sync}
