"""Interlocks: MooN voting over alarm conditions, fail-safe on unknown inputs, latch, reset and bypass.

Pure, in-memory logic run in the poll tick right after the alarm engine (docs/design.md "two paths").
:meth:`InterlockEngine.evaluate` reads :meth:`gateway.safety.alarms.AlarmEngine.condition` for every input
and returns the :class:`TripCommand` list for :class:`gateway.safety.outputs.OutputManager` plus the
:class:`InterlockEvent` journal entries.

Rules and their sources:

- Voting MooN (1oo1, 1oo2, 2oo3, 2oo4 ...): trip when at least M of the N inputs vote to trip.
  GB 16808-2025 clause 5.5.1.8 lets a controller confirm an alarm only when two or more detectors
  alarm: that is 2oo2 / 2oo3 voting. HH/LL come from instruments separate from the control one
  (SH/T 3007 5.4, GB 50074 15.1), so interlocks vote across independent inputs.
- Fail-safe (docs/design.md; C03): an input whose condition is unknown (bad quality, stale, comm fault,
  no reading yet) votes to trip when ``on_fault == "trip"`` (the default); with "hold" it does not
  vote and the interlock keeps its state. Either way the interlock cannot be reset, nor clear by
  itself, while the unknown inputs could still make up M votes, and a fault event is raised.
- Latch (IEC 61511-1 11.2 practice, GB 16808 manual reset): once tripped, outputs stay in the safe
  state until the condition has cleared AND a person resets. The gateway never writes the normal
  (unsafe) value itself, except an optional ``OutputAction.reset_value`` (config ``reset_value``,
  e.g. beacon off), and never while another tripped interlock holds the same output.
- Bypass (ISA-18.2 / IEC 62682 audit): needs user and reason, is time-limited (max_bypass_s), and
  every start / end is an event. A bypass prevents new trips; it never un-trips an interlock.
- Reload and restart: the state that carries over to the next engine is :meth:`InterlockEngine.snapshot`
  (the allow-list :class:`InterlockState`), taken over by :meth:`InterlockEngine.adopt`. A SIGHUP reload
  adopts it in memory (gateway.runtime.reload). A restart is not a reset: trips (cleared-awaiting-reset included)
  and bypasses are exported (:meth:`InterlockEngine.export_state`, the snapshot's restart form), persisted
  off the safety path by gateway.safety.safety_state and restored before the first evaluate
  (:meth:`InterlockEngine.restore_state`, which adopts the snapshot rebuilt from the file), outputs
  commanded safe again.
- This gateway is not a SIS (IEC 61511 / GB/T 50770-2013) and may not be credited as a protection layer.
"""

from __future__ import annotations

import operator
import re
import time
from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable

from gateway.safety.alarms import AlarmEngine, adopt_fields
from gateway.i18n import gettext as _
from gateway.model import rfc3339

_VOTE_RE = re.compile(r"^(\d+)oo(\d+)$")


class InterlockActionError(ValueError):
    """A refused interlock action (reset while the condition persists, bypass without reason ...); one line."""


def parse_vote(vote: str, n_inputs: int | None = None) -> tuple[int, int]:
    """"MooN" -> (M, N). Raises ValueError unless 1 <= M <= N and N equals n_inputs (when given)."""
    m = _VOTE_RE.match(vote or "")
    if not m:
        raise ValueError(f"vote {vote!r} must look like 1oo1, 1oo2, 2oo3 (MooN)")
    mm, nn = int(m.group(1)), int(m.group(2))
    if not 1 <= mm <= nn:
        raise ValueError(f"vote {vote}: M must be between 1 and N")
    if n_inputs is not None and nn != n_inputs:
        raise ValueError(f"vote {vote} needs {nn} inputs, {n_inputs} given")
    return mm, nn


@dataclass
class InterlockInput:
    """One input: the alarm condition ``condition`` ("HH", "H", "L", "LL", "ROC", "DEV", "QUALITY") of ``tag``."""

    tag: str
    condition: str


@dataclass
class OutputAction:
    """On trip write ``value`` (the safe state, e.g. 0 to close a de-energise-to-trip valve, 1 for a beacon)
    to output tag ``output``. reset_value: optional value written after a reset (e.g. 0: beacon off);
    None (default) = the gateway never writes the normal value, restart is a local operator action."""

    output: str
    value: Any
    reset_value: Any = None


@dataclass
class InterlockSpec:
    """One interlock.

    name: unique name. inputs: the voting inputs. vote: "MooN" with N == len(inputs).
    on_fault: "trip" (default: an input with unknown condition votes to trip) or "hold".
    actions: outputs driven to the safe state on trip. latch: True (default) = stays tripped until
    the condition clears and a person resets; False = clears by itself when the condition clears.
    max_bypass_s: longest bypass allowed (seconds).

    Raises ValueError (one line) for a malformed vote, an unknown on_fault, or no inputs / actions.
    """

    name: str
    inputs: list[InterlockInput]
    vote: str = "1oo1"
    on_fault: str = "trip"
    actions: list[OutputAction] = field(default_factory=list)
    latch: bool = True
    max_bypass_s: float = 8 * 3600.0

    def __post_init__(self) -> None:
        if not self.inputs:
            raise ValueError(f"interlock {self.name}: no inputs")
        if not self.actions:
            raise ValueError(f"interlock {self.name}: no actions")
        try:
            parse_vote(self.vote, len(self.inputs))
        except ValueError as e:
            raise ValueError(f"interlock {self.name}: {e}") from None
        if self.on_fault not in ("trip", "hold"):
            raise ValueError(f"interlock {self.name}: on_fault must be 'trip' or 'hold', got {self.on_fault!r}")
        if not self.max_bypass_s > 0:
            raise ValueError(f"interlock {self.name}: max_bypass_s must be > 0")


@dataclass
class TripCommand:
    """Write ``value`` to output ``tag`` because interlock ``interlock`` tripped (kind "trip"), was
    reset (kind "reset", value = reset_value) or was restored tripped after a restart (kind "restore",
    the safe value again). cause: "process" / "fault" (trip, restore) or "reset".
    detected_mono / detected_ts: when the trip was detected (time.monotonic(), UTC epoch s)."""

    interlock: str
    tag: str
    value: Any
    cause: str
    detected_mono: float
    detected_ts: float
    kind: str = "trip"


@dataclass
class InterlockEvent:
    """One interlock journal entry.

    event: "trip", "clear" (condition gone; latched interlocks still await reset), "reset",
    "input_fault" / "input_fault_cleared", "bypass", "bypass_end", "demand_bypassed", "restored"
    (a trip or bypass restored after a restart, :meth:`InterlockEngine.restore_state`).
    cause: "process" or "fault" for trips. votes: {"process": n, "fault": n, "needed": M, "of": N}.
    inputs: [{tag, condition, state: True/False/None/"pending"}]. ts: UTC epoch s; mono: monotonic (not stored).
    """

    interlock: str
    event: str
    ts: float
    mono: float
    cause: str | None = None
    votes: dict[str, int] | None = None
    inputs: list[dict[str, Any]] | None = None
    user: str | None = None
    reason: str | None = None

    def to_record(self) -> dict[str, Any]:
        """JSON-able dict; ts as RFC 3339 UTC."""
        return {"type": "interlock", "interlock": self.interlock, "event": self.event, "ts": rfc3339(self.ts),
                "cause": self.cause, "votes": self.votes, "inputs": self.inputs, "user": self.user,
                "reason": self.reason}


@dataclass
class _Vote:
    process: int
    fault: int
    needed: int
    of: int
    inputs: list[dict[str, Any]]
    pending: int = 0

    def counts(self) -> dict[str, int]:
        d = {"process": self.process, "fault": self.fault, "needed": self.needed, "of": self.of}
        if self.pending:
            d["pending"] = self.pending
        return d


@dataclass
class _State:
    spec: InterlockSpec
    m: int
    n: int
    tripped: bool = False
    cause: str | None = None
    tripped_mono: float | None = None
    tripped_ts: float | None = None
    cleared: bool = False             # tripped and condition gone (awaiting reset)
    demand: bool = False
    last_faults: int = 0
    vote: _Vote | None = None
    bypass_user: str | None = None
    bypass_reason: str | None = None
    bypass_until_mono: float | None = None
    bypass_until_ts: float | None = None

    @property
    def bypassed(self) -> bool:
        return self.bypass_until_mono is not None


# ---------------------------------------------------------------------- state that carries over
#
# ALLOW-LIST: the runtime state of an interlock that a SIGHUP reload (gateway.runtime.reload) and a restart
# (gateway.safety.safety_state) carry from one InterlockEngine to the next. Every other field of _State (the spec
# and what is derived from it; the last vote, recomputed by the next evaluate) comes from the new engine.
# A field added to _State must be put here or classified: tests/safety/test_engine_state.py fails until it is.


@dataclass(slots=True)
class InterlockState:
    """The carried state of one interlock (defaults: a fresh interlock); a copy, read-only by convention.
    ``_mono`` times are
    time.monotonic() of this process, ``_ts`` UTC epoch seconds.

    tripped / cause ("process" | "fault") / tripped_mono / tripped_ts: the trip holding the outputs safe;
    cleared: tripped and the condition gone (awaiting reset); demand: the last vote demanded a trip (a
    bypassed demand is announced once); last_faults: unknown inputs at the last vote (a change is an
    event); bypass_user / bypass_reason / bypass_until_mono / bypass_until_ts: the audited bypass."""

    tripped: bool = False
    cause: str | None = None
    tripped_mono: float | None = None
    tripped_ts: float | None = None
    cleared: bool = False
    demand: bool = False
    last_faults: int = 0
    bypass_user: str | None = None
    bypass_reason: str | None = None
    bypass_until_mono: float | None = None
    bypass_until_ts: float | None = None

    @property
    def bypassed(self) -> bool:
        return self.bypass_until_mono is not None


_INTERLOCK_STATE = tuple(f.name for f in fields(InterlockState))
_interlock_state = operator.attrgetter(*_INTERLOCK_STATE)   # _State -> the InterlockState field values, in order


@dataclass(frozen=True)
class InterlockSnapshot:
    """What an InterlockEngine hands to the next one (:meth:`InterlockEngine.snapshot` / ``adopt``):
    interlocks: name -> InterlockState. Frozen; its mapping and records are copies, read-only by convention."""

    interlocks: dict[str, InterlockState]

    def saved(self) -> dict[str, dict[str, Any]]:
        """The restart form (gateway.safety.safety_state, ``interlocks`` of safety-state.json), JSON-able, keyed by
        name: only interlocks that are tripped (cleared-awaiting-reset included) or bypassed,
        ``{"tripped": bool, "cause": "process"|"fault"|None, "tripped_ts": UTC epoch s|None, "cleared": bool,
        "bypass": {"user", "reason", "until_ts": UTC epoch s} | None}``. Wall-clock only: a bypass expiry is
        kept as wall-clock time because the monotonic clock restarts with the process. Pure."""
        out: dict[str, dict[str, Any]] = {}
        for name, st in self.interlocks.items():
            if not st.tripped and not st.bypassed:
                continue
            out[name] = {"tripped": st.tripped, "cause": st.cause, "tripped_ts": st.tripped_ts,
                         "cleared": st.cleared,
                         "bypass": {"user": st.bypass_user, "reason": st.bypass_reason,
                                    "until_ts": st.bypass_until_ts} if st.bypassed else None}
        return out


def _saved_bypass_left(d: dict[str, Any], wall: float) -> float | None:
    """Seconds left of the bypass in one saved interlock entry at wall-clock ``wall``; None: no bypass saved."""
    b = d.get("bypass")
    if isinstance(b, dict) and isinstance(b.get("until_ts"), (int, float)):
        return float(b["until_ts"]) - wall
    return None


class InterlockEngine:
    """The configured interlocks.

    specs: InterlockSpecs (ValueError on a duplicate name). clock: wall clock for event
    timestamps (time.time). startup_grace_s: for this long after the first evaluate(), an input
    whose tag has not delivered any reading yet ("pending", the first poll is still under way)
    neither votes nor counts as a fault; after it, a tag that never answered is a fault like any other.
    Call :meth:`evaluate` every poll tick after the alarm engine.
    Actions raise InterlockActionError (one line) when refused, KeyError for an unknown name.
    """

    def __init__(self, specs: list[InterlockSpec], clock: Callable[[], float] = time.time,
                 startup_grace_s: float = 10.0) -> None:
        self._clock = clock
        self._grace_s = startup_grace_s
        self._start_mono: float | None = None
        self._s: dict[str, _State] = {}
        for spec in specs:
            if spec.name in self._s:
                raise ValueError(f"interlock {spec.name}: defined twice")
            m, n = parse_vote(spec.vote, len(spec.inputs))
            self._s[spec.name] = _State(spec, m, n)

    def check(self, alarms: AlarmEngine) -> list[str]:
        """Config problems (one line each): inputs whose tag/limit the alarm engine does not have."""
        out = []
        for st in self._s.values():
            for i in st.spec.inputs:
                try:
                    alarms.condition(i.tag, i.condition)
                except KeyError:
                    out.append(f"interlock {st.spec.name}: input {i.tag} has no {i.condition} limit")
        return out

    def _vote(self, st: _State, alarms: AlarmEngine, now: float | None) -> _Vote:
        process = fault = pending = 0
        inputs = []
        in_grace = now is not None and self._start_mono is not None and now - self._start_mono < self._grace_s
        for i in st.spec.inputs:
            try:
                c = alarms.condition(i.tag, i.condition)
                waiting = in_grace and not alarms.seen(i.tag)
            except KeyError:
                c, waiting = None, False  # a missing limit is an unknown input: fail-safe
            if c is None and waiting:
                pending += 1
                state: Any = "pending"
            elif c is None:
                fault += 1
                state = None
            else:
                process += int(c)
                state = c
            inputs.append({"tag": i.tag, "condition": i.condition, "state": state})
        return _Vote(process, fault, st.m, st.n, inputs, pending)

    def _event(self, st: _State, kind: str, now: float, v: _Vote | None = None, **kw: Any) -> InterlockEvent:
        v = v or st.vote
        return InterlockEvent(st.spec.name, kind, self._clock(), now, votes=v.counts() if v else None,
                              inputs=v.inputs if v else None, **kw)

    def evaluate(self, alarms: AlarmEngine, now_mono: float) -> tuple[list[TripCommand], list[InterlockEvent]]:
        """Vote every interlock; returns (commands to write, events).

        Trip when votes >= M: with on_fault "trip" votes = inputs in alarm + inputs unknown, with
        "hold" only inputs in alarm. cause = "process" when the inputs in alarm alone reach M, else
        "fault". The condition has cleared when inputs in alarm + inputs unknown < M. A bypassed
        interlock does not trip (event "demand_bypassed"); an expired bypass ends here (event
        "bypass_end") and a standing demand then trips at once.
        """
        cmds: list[TripCommand] = []
        events: list[InterlockEvent] = []
        if self._start_mono is None:
            self._start_mono = now_mono
        for st in self._s.values():
            v = self._vote(st, alarms, now_mono)
            st.vote = v
            if st.bypassed and now_mono >= st.bypass_until_mono:
                events.append(self._event(st, "bypass_end", now_mono, user=st.bypass_user, reason="bypass expired"))
                self._end_bypass(st)
            if v.fault != st.last_faults:
                unknown = ", ".join(f"{i['tag']}.{i['condition']}" for i in v.inputs if i["state"] is None)
                events.append(self._event(st, "input_fault" if v.fault else "input_fault_cleared", now_mono, v,
                                          reason=f"unknown: {unknown}" if unknown else None))
                st.last_faults = v.fault
            votes = v.process + (v.fault if st.spec.on_fault == "trip" else 0)
            demand = votes >= st.m
            clear = v.process + v.fault + v.pending < st.m
            if not st.tripped and demand:
                if st.bypassed:
                    if not st.demand:
                        events.append(self._event(st, "demand_bypassed", now_mono, v, user=st.bypass_user,
                                                  reason=st.bypass_reason))
                else:
                    cause = "process" if v.process >= st.m else "fault"
                    st.tripped, st.cause, st.cleared = True, cause, False
                    st.tripped_mono, st.tripped_ts = now_mono, self._clock()
                    events.append(self._event(st, "trip", now_mono, v, cause=cause))
                    cmds.extend(TripCommand(st.spec.name, a.output, a.value, cause, now_mono, st.tripped_ts)
                                for a in st.spec.actions)
            elif st.tripped:
                if clear and not st.cleared:
                    st.cleared = True
                    events.append(self._event(st, "clear", now_mono, v, cause=st.cause))
                    if not st.spec.latch:
                        cmds.extend(self._release(st, now_mono))
                        events.append(self._event(st, "reset", now_mono, v, reason="auto (latch: false)"))
                elif not clear:
                    st.cleared = False
            st.demand = demand
        return cmds, events

    def _release(self, st: _State, now: float) -> list[TripCommand]:
        """Untrip ``st``; the reset_value commands of its actions, except for an output that another
        tripped interlock still holds in the safe state (the reset of one interlock never un-safes an
        output a second one demands; that output is released when the last holder resets)."""
        st.tripped = st.cleared = False
        st.cause = st.tripped_mono = st.tripped_ts = None
        ts = self._clock()
        held = {a.output for o in self._s.values() if o.tripped for a in o.spec.actions}
        return [TripCommand(st.spec.name, a.output, a.reset_value, "reset", now, ts, kind="reset")
                for a in st.spec.actions if a.reset_value is not None and a.output not in held]

    def _get(self, name: str) -> _State:
        st = self._s.get(name)
        if st is None:
            raise KeyError(_("no interlock {name}").format(name=repr(name)))
        return st

    def reset(self, name: str, user: str, reason: str | None = None, alarms: AlarmEngine | None = None,
              now_mono: float | None = None) -> tuple[list[TripCommand], list[InterlockEvent]]:
        """Reset a tripped interlock once its condition has cleared (inputs in alarm + unknown < M).

        The vote is taken afresh from ``alarms`` when given, else from the last evaluate(). Returns
        (reset_value commands, [reset event]). Raises InterlockActionError: not tripped, no user, or
        the condition persists (message names the votes).
        """
        st = self._get(name)
        now = time.monotonic() if now_mono is None else now_mono
        if not user or not str(user).strip():
            raise InterlockActionError(_("interlock {name}: a user is required to reset").format(name=name))
        if not st.tripped:
            raise InterlockActionError(_("interlock {name}: not tripped, nothing to reset").format(name=name))
        v = self._vote(st, alarms, now) if alarms is not None else st.vote
        if v is None or v.process + v.fault + v.pending >= st.m:
            detail = _("no evaluation yet") if v is None else \
                _("{alarm} in alarm + {unknown} unknown of {of}, {needed} trip it").format(
                    alarm=v.process, unknown=v.fault + v.pending, of=v.of, needed=v.needed)
            raise InterlockActionError(_("interlock {name}: reset refused, condition persists ({detail})").format(
                name=name, detail=detail))
        st.vote = v
        ev = self._event(st, "reset", now, v, cause=st.cause, user=user, reason=reason)
        return self._release(st, now), [ev]

    def bypass(self, name: str, user: str, reason: str, duration_s: float,
               now_mono: float | None = None) -> InterlockEvent:
        """Bypass an interlock for duration_s seconds (0 < duration_s <= spec.max_bypass_s).

        Requires user and reason (audit). A bypass stops new trips only; a tripped interlock stays
        tripped. Raises InterlockActionError when refused.
        """
        st = self._get(name)
        now = time.monotonic() if now_mono is None else now_mono
        if not user or not str(user).strip() or not reason or not str(reason).strip():
            raise InterlockActionError(_("interlock {name}: bypass needs a user and a reason").format(name=name))
        if not 0 < duration_s <= st.spec.max_bypass_s:
            # stated in minutes, the unit the operator gives (`bypass --minutes`)
            raise InterlockActionError(_("interlock {name}: bypass of {minutes} min must be > 0 and <= {max} min")
                                       .format(name=name, minutes=f"{duration_s / 60:g}",
                                               max=f"{st.spec.max_bypass_s / 60:g}"))
        st.bypass_user, st.bypass_reason = user, reason
        st.bypass_until_mono, st.bypass_until_ts = now + duration_s, self._clock() + duration_s
        return self._event(st, "bypass", now, user=user, reason=f"{reason} (for {duration_s / 60:g} min)")

    def end_bypass(self, name: str, user: str, reason: str | None = None,
                   now_mono: float | None = None) -> InterlockEvent:
        """End a bypass early (event "bypass_end"). Raises InterlockActionError when not bypassed."""
        st = self._get(name)
        if not st.bypassed:
            raise InterlockActionError(_("interlock {name}: not bypassed").format(name=name))
        now = time.monotonic() if now_mono is None else now_mono
        self._end_bypass(st)
        return self._event(st, "bypass_end", now, user=user, reason=reason)

    @staticmethod
    def _end_bypass(st: _State) -> None:
        st.bypass_user = st.bypass_reason = None
        st.bypass_until_mono = st.bypass_until_ts = None

    def is_tripped(self, name: str) -> bool:
        """True while the interlock holds its outputs in the safe state."""
        return self._get(name).tripped

    def status(self) -> list[dict[str, Any]]:
        """One dict per interlock for `status`: name, state ("normal", "tripped", "tripped_cleared"
        = awaiting reset, "bypassed"), vote, on_fault, cause, tripped_at (RFC 3339), votes, inputs,
        bypass {user, reason, until} or None, degraded (unknown inputs leave fewer than M healthy)."""
        out = []
        for st in self._s.values():
            state = ("tripped_cleared" if st.cleared else "tripped") if st.tripped else \
                ("bypassed" if st.bypassed else "normal")
            v = st.vote
            out.append({
                "name": st.spec.name, "state": state, "vote": st.spec.vote, "on_fault": st.spec.on_fault,
                "latch": st.spec.latch, "cause": st.cause,
                "tripped_at": rfc3339(st.tripped_ts) if st.tripped_ts is not None else None,
                "votes": v.counts() if v else None, "inputs": v.inputs if v else None,
                "bypass": {"user": st.bypass_user, "reason": st.bypass_reason,
                           "until": rfc3339(st.bypass_until_ts)} if st.bypassed else None,
                "degraded": bool(v and v.of - v.fault < st.m),
                "outputs": [{"tag": a.output, "safe_value": a.value} for a in st.spec.actions],
            })
        return out

    def names(self) -> list[str]:
        """The configured interlock names, in config order."""
        return list(self._s)

    # ------------------------------------------------------------------ state that carries over

    def snapshot(self, *, restart_only: bool = False) -> InterlockSnapshot:
        """The runtime state that carries over to another engine (InterlockSnapshot: every interlock's
        InterlockState). Pure, in memory; a copy. restart_only: only the interlocks a restart keeps (tripped,
        cleared-awaiting-reset included, or bypassed), all :meth:`InterlockSnapshot.saved` reads."""
        return InterlockSnapshot({name: InterlockState(*_interlock_state(st)) for name, st in self._s.items()
                                  if not restart_only or st.tripped or st.bypassed})

    def adopt(self, snapshot: InterlockSnapshot) -> list[str]:
        """Take over the state in ``snapshot`` (from :meth:`snapshot` of the engine this one replaces, or a
        restart's :meth:`snapshot_from_saved`): every InterlockState field of each interlock name this
        engine has (spec, vote and outputs stay this engine's). A reload never resets a trip nor ends a
        bypass. The start-up grace is not adopted: it starts again with this engine's first evaluate().

        Returns one line per interlock of ``snapshot`` not configured here (its state is dropped; a reload
        refuses that beforehand for a tripped or bypassed one, gateway.runtime.reload.dropped_safety_state); [] when
        everything was adopted. Raises nothing."""
        return adopt_fields(snapshot.interlocks, self._s, _INTERLOCK_STATE, "interlock", "its state was not adopted")

    def snapshot_from_saved(self, saved: dict[str, dict[str, Any]], now_mono: float | None = None,
                            wall: float | None = None) -> tuple[InterlockSnapshot, list[str]]:
        """The snapshot a restart adopts from the restart form (:meth:`InterlockSnapshot.saved`, read back
        from safety-state.json), per saved interlock that still exists (this engine's state, changed):

        - tripped: tripped again with the saved cause ("fault" when unreadable) and trip time (``wall`` when
          missing), tripped_mono now, ``cleared`` False (the condition must be shown clear again by fresh
          readings);
        - bypassed: the remaining wall-clock time ``until_ts - wall``, capped at max_bypass_s (a wall-clock
          step cannot lengthen it beyond the limit), from now on the monotonic clock; a bypass that expired
          meanwhile is not restored.

        now_mono: default time.monotonic(); wall: default the engine's clock. Returns (snapshot, names in
        ``saved`` that are not configured any more). Pure."""
        now = time.monotonic() if now_mono is None else now_mono
        wall = self._clock() if wall is None else wall
        out: dict[str, InterlockState] = {}
        unknown: list[str] = []
        for name, d in saved.items():
            st = self._s.get(name)
            if st is None:
                unknown.append(name)
                continue
            state = InterlockState(*_interlock_state(st))
            if d.get("tripped"):
                cause = d.get("cause") if d.get("cause") in ("process", "fault") else "fault"
                ts = d.get("tripped_ts")
                state = replace(state, tripped=True, cause=cause, cleared=False, tripped_mono=now,
                                tripped_ts=float(ts) if isinstance(ts, (int, float)) else wall)
            left = _saved_bypass_left(d, wall)
            if left is not None and left > 0:
                b = d["bypass"]
                left = min(left, st.spec.max_bypass_s)
                state = replace(state, bypass_user=b.get("user"), bypass_reason=b.get("reason"),
                                bypass_until_mono=now + left, bypass_until_ts=wall + left)
            out[name] = state
        return InterlockSnapshot(out), unknown

    # ------------------------------------------------------------------ restart persistence (S3)

    def export_state(self) -> dict[str, dict[str, Any]]:
        """The interlock state that must survive a restart (gateway.safety.safety_state), JSON-able, keyed by name:
        ``self.snapshot(restart_only=True).saved()`` (see :meth:`InterlockSnapshot.saved`: tripped or
        bypassed interlocks, ``{"tripped", "cause", "tripped_ts", "cleared", "bypass": {"user", "reason",
        "until_ts"} | None}``).
        Pure and in memory (cheap enough to call every 0.5 s on the event loop).
        """
        return self.snapshot(restart_only=True).saved()

    def restore_state(self, saved: dict[str, dict[str, Any]], now_mono: float | None = None
                      ) -> tuple[list[TripCommand], list[InterlockEvent], list[str]]:
        """Restore what :meth:`export_state` saved before a restart; call before the first evaluate().

        A restart must never un-trip an interlock (IEC 61511-1 11.2 / GB 16808: a trip is left only by a
        manual reset after the condition has cleared). The state is :meth:`snapshot_from_saved`, adopted
        (:meth:`adopt`). Per saved interlock that still exists:

        - tripped: event "restored"; and one TripCommand (kind "restore") per action, so the outputs are
          commanded to the safe state again (a field operator may have moved them while the gateway was
          down). Until the first readings the inputs are "pending" or unknown, so a reset is refused.
        - bypassed: restored with the remaining wall-clock time; event "restored". A bypass that expired
          while the gateway was down is not restored: event "bypass_end" ("expired while the gateway was down").

        Returns (commands for OutputManager.apply, events, names in ``saved`` that are not configured
        any more: their state cannot be restored and the caller must report it).
        """
        now = time.monotonic() if now_mono is None else now_mono
        wall = self._clock()
        snap, unknown = self.snapshot_from_saved(saved, now, wall)
        self.adopt(snap)
        cmds: list[TripCommand] = []
        events: list[InterlockEvent] = []
        for name, d in saved.items():
            st = self._s.get(name)
            if st is None:
                continue
            if d.get("tripped"):
                events.append(self._event(st, "restored", now, cause=st.cause,
                                          reason=f"tripped at {rfc3339(st.tripped_ts)}"
                                                 f"{' (cleared before the restart)' if d.get('cleared') else ''};"
                                                 " restored after a restart, awaiting reset"))
                cmds.extend(TripCommand(name, a.output, a.value, st.cause, now, wall, kind="restore")
                            for a in st.spec.actions)
            left = _saved_bypass_left(d, wall)
            if left is None:
                continue
            if left <= 0:
                events.append(self._event(st, "bypass_end", now, user=d["bypass"].get("user"),
                                          reason="bypass expired while the gateway was down"))
            else:
                events.append(self._event(st, "restored", now, user=st.bypass_user,
                                          reason=f"bypass ({st.bypass_reason}) until "
                                                 f"{rfc3339(st.bypass_until_ts)} restored after a restart"))
        return cmds, events, unknown
