"""Annunciators: beacon and horn outputs driven from the alarm list, the way an alarm controller does.

Rules and their sources:

- GB 16808-2008 4.2 (indicator conventions; docs/domain.md): an alarm indicator flashes at >= 1 Hz, a
  fault indicator at >= 0.2 Hz. Each annunciator is ``steady`` (on while it has something to show) or
  ``flash`` (on for half a period, off for the other half, at ``alarm_hz`` for a process alarm and
  ``fault_hz`` for a fault); a process alarm outranks a fault.
- GB 16808 test methods (docs/domain.md, GB 16808; marked [?] there): silence is allowed (an operator action); a new alarm
  sounds again. ISA-18.2: acknowledging an alarm silences it.
- Faults (comm fault, bad quality, stale, output fault, unsynchronised clock: the QUALITY, OUTPUT and
  CLOCK alarm kinds) are distinct from gas / process alarms (GB 16808; GB/T 50493-2019 5.1.2 sends them
  separately).
- Points disabled (屏蔽; GB 16808: a controller that can disable points must show it, yellow, and count
  it; docs/domain.md, Alarm management): shelved, suppressed and out-of-service gas points
  (:meth:`gateway.safety.alarms.AlarmEngine.disabled_points`) light a ``disabled_indicator``.

What each kind shows (from :meth:`gateway.safety.alarms.AlarmEngine.active`, so shelved, suppressed and
out-of-service alarms never annunciate):

- ``beacon``: "alarm" while a followed process alarm is in alarm (active or latched, acknowledged or
  not), else "fault" while a followed fault alarm is in alarm, else "off". Silence does not touch it.
- ``horn``: sounds while a followed alarm is unacknowledged and in alarm and has not been silenced.
  Silence mutes the activations sounding now; a new activation (another alarm, or the same alarm
  raised again) sounds again. "alarm" when any sounding one is a process alarm, else "fault".
- ``disabled_indicator``: "disabled" while any followed gas point is shelved, suppressed or out of
  service (the ``disabled`` callable), else "off"; steady (or flashing at ``fault_hz``). Alarms and
  silence do not touch it.

Writes: direct device writes with read-back (``write(tag, value) -> Reading``, the gateway's
``Device.write``), not the OutputManager: a flashing output changes twice a second and is not a
trip, so it keeps no trip records and needs no supersede logic; each change is written once, read
back and compared. A write that fails or reads back another value raises the output's OUTPUT
(output-fault) alarm through ``on_fault(tag, True, reason)`` and is retried on the next tick; a
confirmed write clears it. One write per output is in flight at a time; the tick never waits on a
device. Mode changes and silences are events; single flashes are not.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Sequence

from gateway.safety.alarms import CLOCK, OUTPUT, QUALITY, AlarmStatus
from gateway.model import Reading, rfc3339
from gateway.safety.outputs import readback_problem, values_match

log = logging.getLogger("hazard_gateway.annunciator")

TICK_S = 0.05
WRITE_TIMEOUT_S = 2.0
FAULT_KINDS = (QUALITY, OUTPUT, CLOCK)
KINDS = ("beacon", "horn", "disabled_indicator")
MODES = ("off", "fault", "alarm", "disabled")


@dataclass
class AnnunciatorSpec:
    """One beacon, horn or disabled-points indicator (KINDS). output: writable tag; on_value / off_value
    written for on / off. pattern "steady" | "flash"; alarm_hz / fault_hz > 0 (flash rates; GB 16808-2008 4.2
    asks >= 1 / >= 0.2; a disabled_indicator flashes at fault_hz). groups / priorities: follow only alarms of
    these first-out groups / priorities (None: all). faults: also annunciate QUALITY / OUTPUT / CLOCK alarms.
    Raises ValueError for a bad kind, pattern or rate."""

    output: str
    kind: str
    pattern: str = "steady"
    alarm_hz: float = 1.0
    fault_hz: float = 0.2
    groups: list[str] | None = None
    priorities: list[int] | None = None
    faults: bool = True
    on_value: Any = 1
    off_value: Any = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"annunciator {self.output}: kind must be one of {', '.join(KINDS)}, not {self.kind!r}")
        if self.pattern not in ("steady", "flash"):
            raise ValueError(f"annunciator {self.output}: pattern must be steady or flash, not {self.pattern!r}")
        if not (self.alarm_hz > 0 and self.fault_hz > 0):
            raise ValueError(f"annunciator {self.output}: flash rates must be > 0 Hz")


def _key(a: AlarmStatus) -> tuple[str, Any]:
    """One activation of one alarm: a re-activation has a new since time."""
    return (a.id, a.since_ts)


@dataclass
class AnnunciatorLogic:
    """The pure part: which mode an annunciator is in and whether its output is on at a given time.

    Call :meth:`update` with the current active alarm list and time.monotonic(); it returns the
    value to write (spec.on_value / spec.off_value)."""

    spec: AnnunciatorSpec
    mode: str = "off"
    mode_since: float = 0.0
    silenced: set = field(default_factory=set)

    def follows(self, a: AlarmStatus) -> bool:
        s = self.spec
        if a.kind in FAULT_KINDS and not s.faults:
            return False
        if s.groups is not None and a.group not in s.groups:
            return False
        return s.priorities is None or a.priority in s.priorities

    def sounding(self, alarms: list[AlarmStatus]) -> list[AlarmStatus]:
        """Followed alarms that are in alarm and unacknowledged (what a horn sounds for, before silence)."""
        return [a for a in alarms if self.follows(a) and a.state == "unacked"]

    def target_mode(self, alarms: list[AlarmStatus], disabled: Sequence[AlarmStatus] = ()) -> str:
        if self.spec.kind == "disabled_indicator":
            return "disabled" if any(self.follows(a) for a in disabled) else "off"
        if self.spec.kind == "horn":
            live = [a for a in self.sounding(alarms) if _key(a) not in self.silenced]
        else:
            live = [a for a in alarms if self.follows(a) and a.base_state in ("unacked", "acked")]
        if any(a.kind not in FAULT_KINDS for a in live):
            return "alarm"
        return "fault" if live else "off"

    def silence(self, alarms: list[AlarmStatus]) -> int:
        """Mute what sounds now (horns only); returns how many activations were muted."""
        if self.spec.kind != "horn":
            return 0
        keys = {_key(a) for a in self.sounding(alarms)} - self.silenced
        self.silenced |= keys
        return len(keys)

    def update(self, alarms: list[AlarmStatus], now_mono: float, disabled: Sequence[AlarmStatus] = ()) -> Any:
        """Advance to ``now_mono`` and return the output value. disabled: the disabled gas points
        (AlarmEngine.disabled_points), what a disabled_indicator shows."""
        if self.spec.kind == "horn":  # forget muted activations that are over
            self.silenced &= {_key(a) for a in self.sounding(alarms)}
        mode = self.target_mode(alarms, disabled)
        if mode != self.mode:
            self.mode, self.mode_since = mode, now_mono
        return self.value(now_mono)

    def value(self, now_mono: float) -> Any:
        s = self.spec
        if self.mode == "off":
            return s.off_value
        if s.pattern == "steady":
            return s.on_value
        hz = s.alarm_hz if self.mode == "alarm" else s.fault_hz
        phase = ((now_mono - self.mode_since) * hz) % 1.0
        return s.on_value if phase < 0.5 else s.off_value  # on first: a new alarm shows at once


class Annunciators:
    """The running annunciators of one gateway.

    specs: AnnunciatorSpecs. write: coroutine (tag, value) -> read-back Reading (raises on failure).
    alarms: callable returning the active alarm list (AlarmEngine.active). disabled: callable returning the
    disabled gas points (AlarmEngine.disabled_points; None: none). on_fault(tag, fault, reason):
    raise / clear the output's OUTPUT alarm. on_event(dict): record path (mode changes, silences).
    """

    def __init__(self, specs: list[AnnunciatorSpec], write: Callable[[str, Any], Awaitable[Reading]],
                 alarms: Callable[[], list[AlarmStatus]], on_fault: Callable[[str, bool, str | None], None] | None = None,
                 on_event: Callable[[dict[str, Any]], None] | None = None, *, tick_s: float = TICK_S,
                 write_timeout_s: float = WRITE_TIMEOUT_S,
                 disabled: Callable[[], list[AlarmStatus]] | None = None) -> None:
        self.logic = [AnnunciatorLogic(s) for s in specs]
        self._write = write
        self._alarms = alarms
        self._disabled = disabled or (lambda: [])
        self._on_fault = on_fault
        self._on_event = on_event
        self.tick_s = tick_s
        self.write_timeout_s = write_timeout_s
        self._written: dict[str, Any] = {}      # output -> last value confirmed by read-back
        self._errors: dict[str, str] = {}       # output -> last write error
        self._busy: dict[str, asyncio.Task] = {}
        self.writes = 0
        self.history: dict[str, list[tuple[float, Any]]] = {s.output: [] for s in specs}  # confirmed (mono, value)
        self.history_max = 200

    def __len__(self) -> int:
        return len(self.logic)

    def silence(self, user: str | None = None, reason: str | None = None) -> int:
        """Silence every horn (operator action); returns the number of muted activations. Logs an event."""
        alarms = self._alarms()
        n = 0
        for lg in self.logic:
            muted = lg.silence(alarms)
            if muted:
                n += muted
                self._event({"type": "annunciator", "event": "silence", "output": lg.spec.output, "kind": "horn",
                             "muted": muted, "user": user, "reason": reason})
        return n

    def step(self, now_mono: float | None = None) -> None:
        """One tick: compute every output and start a write where the output must change (or retry)."""
        now = time.monotonic() if now_mono is None else now_mono
        alarms = self._alarms()
        disabled = self._disabled() if any(lg.spec.kind == "disabled_indicator" for lg in self.logic) else []
        for lg in self.logic:
            before = lg.mode
            v = lg.update(alarms, now, disabled)
            tag = lg.spec.output
            if lg.mode != before:
                self._event({"type": "annunciator", "event": "mode", "output": tag, "kind": lg.spec.kind,
                             "from": before, "to": lg.mode})
            task = self._busy.get(tag)
            if task is not None and not task.done():
                continue
            if tag in self._written and values_match(self._written[tag], v, 0, 0) and tag not in self._errors:
                continue
            self._busy[tag] = asyncio.get_running_loop().create_task(self._do_write(tag, v),
                                                                      name=f"annunciator:{tag}")

    async def _do_write(self, tag: str, value: Any) -> None:
        err: str | None = None
        try:
            rb = await asyncio.wait_for(self._write(tag, value), self.write_timeout_s)
        except asyncio.CancelledError:
            raise
        except (asyncio.TimeoutError, TimeoutError):
            err = f"{tag}: no answer to the write within {self.write_timeout_s:g} s"
        except Exception as exc:
            err = str(exc).splitlines()[0] if str(exc) else f"{tag}: {type(exc).__name__}"
        else:
            err = readback_problem(tag, rb, value)  # only a GOOD, matching read-back confirms
        self.writes += 1
        if err is not None:
            first = tag not in self._errors
            self._errors[tag] = err
            self._written.pop(tag, None)
            if first:
                log.error("annunciator output fault: %s", err)
            if self._on_fault:
                self._on_fault(tag, True, err)
            return
        self._written[tag] = value
        h = self.history[tag]
        h.append((time.monotonic(), value))
        del h[:-self.history_max]
        if self._errors.pop(tag, None) is not None and self._on_fault:
            self._on_fault(tag, False, None)

    async def run(self, stopping: Callable[[], bool]) -> None:
        """Tick every tick_s until ``stopping()``; then wait for writes in flight (outputs hold)."""
        while not stopping():
            try:
                self.step()
            except Exception:  # never let an annunciator bug stop the gateway
                log.exception("annunciator tick failed")
            await asyncio.sleep(self.tick_s)
        await self.close()

    async def close(self) -> None:
        tasks = [t for t in self._busy.values() if not t.done()]
        if tasks:
            await asyncio.wait(tasks, timeout=self.write_timeout_s)

    def status(self) -> list[dict[str, Any]]:
        """One dict per annunciator: output, kind, pattern, mode, silenced (muted activations), value
        (last confirmed), confirmed (no write error pending), last_error."""
        return [{"output": lg.spec.output, "kind": lg.spec.kind, "pattern": lg.spec.pattern, "mode": lg.mode,
                 "silenced": len(lg.silenced), "value": self._written.get(lg.spec.output),
                 "confirmed": lg.spec.output not in self._errors, "last_error": self._errors.get(lg.spec.output)}
                for lg in self.logic]

    def _event(self, ev: dict[str, Any]) -> None:
        ev.setdefault("ts", rfc3339(time.time()))
        if self._on_event is None:
            return
        try:
            self._on_event(ev)
        except Exception:
            log.exception("annunciator event callback failed")


def specs_from_config(cfg: Any) -> list[AnnunciatorSpec]:
    """AnnunciatorSpecs from a LoadedConfig's ``annunciators:`` list."""
    return [AnnunciatorSpec(output=a.output, kind=a.kind, pattern=a.pattern, alarm_hz=a.alarm_hz,
                            fault_hz=a.fault_hz, groups=list(a.groups) if a.groups is not None else None,
                            priorities=list(a.priorities) if a.priorities is not None else None, faults=a.faults)
            for a in cfg.model.annunciators]
