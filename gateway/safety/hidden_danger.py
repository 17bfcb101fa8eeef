"""Hidden dangers (隐患): a defeated protection that lasts too long becomes a record the platform tracks to closure.

Why (docs/domain.md, Hidden dangers): 安委办〔2016〕3号 二(四) asks for closed-loop hidden-danger management
(隐患排查治理: check, register, assess, report, monitor, fix, close) linked to the government platform. A
bypass (旁路) of an interlock, or a shelve or out-of-service period of an alarm that is a gas alarm (a GB/T
50493-2019 detector tag: a gas preset, or the first-out group "gas") or an interlock input, defeats a
protection of a major hazard installation. Every such action is already an audit event with who and why
(docs/domain.md, Alarm management; docs/design.md, Fail safe, Bypass). When it lasts longer than
``hidden_danger.after_minutes`` (config; :data:`DEFAULT_AFTER_MINUTES`) it is also a hidden-danger record:
an "opened" event, and a "closed" event with the same ``id`` when the defeat ends.

The tracker is pure and in memory, on the safety side (docs/design.md, Two paths): the safety ticker calls
:meth:`HiddenDangerTracker.step` with the defeats it reads from the engines (:func:`current_defeats`, over the
plant's :class:`Protections`) about once a second (:data:`STEP_EVERY_S`, gateway.safety.tick), so a record
opens even when no reading arrives.
Who and why come from the audit events the gateway records (:meth:`HiddenDangerTracker.note`, called by
gateway.runtime.gateway.Gateway.log_event for every event): the alarm engine keeps no user or reason for a
shelve. Its open and pending records are persisted with the safety state (gateway.safety.safety_state,
``hidden_dangers``) and restored at start (:meth:`HiddenDangerTracker.restore`), so a restart neither opens
a record twice nor loses one; what ended while the gateway was down is closed at the first step after the
start.

Event shape (``type`` "hidden_danger", through Gateway.log_event, which adds gateway_id and the point code
of every ``inputs`` tag)::

    {"type": "hidden_danger", "event": "opened" | "closed", "id": UUID (stable, see hidden_danger_id),
     "kind": "bypass" | "shelve" | "out_of_service", "target": interlock name or alarm id,
     "feeds": {"gas_alarms": [alarm ids], "interlocks": [interlock names]}  (what it defeats),
     "inputs": [{"tag", "condition"}], "by": operator (SO_PEERCRED user of the control socket) | None,
     "reason": str | None, "since": RFC 3339, "until": RFC 3339 (planned end) | None,
     "after_minutes": float, "opened_at": RFC 3339, "ts": RFC 3339 (opened_at, or closed_at),
     closed only: "closed_at": RFC 3339, "duration_s": float (closed_at - since),
     "ended_by": "operator" | "expiry" | "config" | "restart", "end_user": str | None}

ended_by: ``operator`` (unshelve, in service, bypass --end), ``expiry`` (the shelve or bypass ran out, also
while the gateway was down: closed_at is then the planned end), ``config`` (a reload removed the target or
it no longer feeds a gas alarm or an interlock), ``restart`` (a shelve or out-of-service state does not
survive a restart of the gateway, gateway.safety.safety_state: the alarm annunciates again from the start).

The resolution is one step (STEP_EVERY_S): a defeat that starts and ends between two steps is not tracked
(it is an audit event all the same). This module imports the model only (tests/test_architecture.py).
"""

from __future__ import annotations

import copy
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Iterable, Mapping, Sequence

from gateway.model import rfc3339

KINDS = ("bypass", "shelve", "out_of_service")
ENDED_BY = ("operator", "expiry", "config", "restart")
#: Default of ``hidden_danger.after_minutes`` (the project's choice, not a standard's figure; docs/domain.md,
#: Hidden dangers): a routine task under a bypass or shelve (a detector calibration or bump test, an interlock
#: proof test) takes well under half an hour and is an audit event anyway; a protection still defeated after
#: 30 minutes has outlasted such a task and goes into the hidden-danger workflow. It is far below the 8 h
#: longest shelve (control.max_shelve_minutes) and bypass (InterlockSpec.max_bypass_s), so a defeat that lasts
#: a shift is always raised, and not 0, so that short tests do not flood the platform's hidden-danger list.
DEFAULT_AFTER_MINUTES = 30.0
#: how often the safety ticker runs :meth:`HiddenDangerTracker.step` (seconds, monotonic)
STEP_EVERY_S = 1.0
#: hidden states of an alarm that are a defeat, and their record kind (ISA-18.2 shelved / out of service)
_HIDE_KIND = {"shelved": "shelve", "out_of_service": "out_of_service"}
#: gateway.safety.interlocks.InterlockEngine words the reason of a bypass_end that is an expiry with
#: (evaluate: "bypass expired"; restore_state: "bypass expired while the gateway was down")
_BYPASS_EXPIRED = "bypass expired"
_NAMESPACE = uuid.UUID("3a4c2f0e-6d1b-5b8e-9a57-0c1d2e3f4a5b")


def hidden_danger_id(gateway_id: str, kind: str, target: str, since_ts: float) -> str:
    """The record's stable id: a name-based UUID (RFC 4122 version 5) of gateway id, kind, target and the
    defeat's start in whole milliseconds. The same defeat gives the same id on every start; the platform
    matches "closed" to "opened" by it."""
    return str(uuid.uuid5(_NAMESPACE, f"{gateway_id}|{kind}|{target}|{round(since_ts * 1000)}"))


def _epoch(ts: Any) -> float | None:
    """RFC 3339 (as gateway.model.rfc3339 writes it) -> UTC epoch seconds; None when it is not one."""
    if not isinstance(ts, str):
        return None
    try:
        return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


@dataclass(frozen=True)
class Defeat:
    """One defeated protection now: kind (KINDS), target (interlock name or alarm id), feeds ({"gas_alarms",
    "interlocks"}), inputs ([{"tag", "condition"}]), until_ts (planned end, UTC epoch s, None: none), by /
    reason (as the engine knows them: an interlock bypass keeps them, a shelve does not)."""

    kind: str
    target: str
    feeds: dict[str, list[str]]
    inputs: list[dict[str, Any]]
    until_ts: float | None = None
    by: str | None = None
    reason: str | None = None


class Protections:
    """What can be a hidden danger in one plant, built once from its config (the tick keeps one per plant; a
    reload builds the next): ``targets`` (every interlock name and every alarm id of a gas point or of an
    interlock input tag), ``gas_alarms`` (the alarm ids of gas points: a tag with a gas preset, or in the
    first-out group "gas", as AlarmEngine.disabled_points counts them), ``input_alarms`` (alarm id of an
    interlock input tag -> the interlocks it feeds: its voting condition, or the tag's QUALITY alarm, which
    announces the input's fault) and ``interlocks`` (name -> its voting inputs [{"tag", "condition"}]).

    alarms: gateway.safety.alarms.AlarmEngine. interlock_cfgs: the configured interlocks (objects with ``name``
    and ``inputs`` of ``tag`` / ``condition``: gateway.config InterlockCfg or InterlockSpec). O(alarms)."""

    def __init__(self, alarms: Any, interlock_cfgs: Iterable[Any]) -> None:
        self.interlocks: dict[str, list[dict[str, Any]]] = {}
        fed: dict[str, list[tuple[str, str]]] = {}
        for il in interlock_cfgs:
            self.interlocks[il.name] = [{"tag": i.tag, "condition": i.condition} for i in il.inputs]
            for i in il.inputs:
                fed.setdefault(i.tag, []).append((il.name, i.condition))
        self.gas_alarms: set[str] = set()
        self.input_alarms: dict[str, list[str]] = {}
        for a in alarms.all_status():
            if a.gas is not None or a.group == "gas":
                self.gas_alarms.add(a.id)
            names = list(dict.fromkeys(n for n, cond in fed.get(a.tag, ()) if cond == a.kind or a.kind == "QUALITY"))
            if names:
                self.input_alarms[a.id] = names
        self.targets: set[str] = {*self.interlocks, *self.gas_alarms, *self.input_alarms}


def current_defeats(alarms: Any, interlocks: Any, prot: Protections) -> tuple[list[Defeat], set[str]]:
    """The defeats that are hidden dangers now, and every target that could be one (``prot.targets``: a record
    whose target left it was ended by the config).

    alarms: gateway.safety.alarms.AlarmEngine. interlocks: gateway.safety.interlocks.InterlockEngine (its
    snapshot: bypass user, reason, until). prot: :class:`Protections` of the same plant.

    - every bypassed interlock (kind "bypass"): it defeats that interlock; inputs are its voting inputs;
    - every shelved or out-of-service alarm (kind "shelve" / "out_of_service") of a gas point (feeds: that gas
      alarm) or of an interlock input tag (feeds: the interlocks of ``prot.input_alarms``).

    Pure; cheap enough for the safety ticker: the bypassed interlocks, the disabled gas points
    (AlarmEngine.disabled_points) and the state of each interlock input alarm; the full alarm list only when
    such an input alarm is hidden (it can be shelved only while its interlock is bypassed)."""
    out: list[Defeat] = []
    for name, st in interlocks.snapshot(restart_only=True).interlocks.items():
        if st.bypassed and name in prot.interlocks:
            out.append(Defeat("bypass", name, {"gas_alarms": [], "interlocks": [name]},
                              copy.deepcopy(prot.interlocks[name]), st.bypass_until_ts, st.bypass_user,
                              st.bypass_reason))
    hidden = {a.id: a for a in alarms.disabled_points()}
    extra = {aid for aid in prot.input_alarms if aid not in hidden and alarms.state(aid) in _HIDE_KIND}
    if extra:
        hidden.update({a.id: a for a in alarms.all_status() if a.id in extra})
    for aid, a in hidden.items():
        kind = _HIDE_KIND.get(a.state)
        if kind is None:   # suppressed by design: the plant's logic, not a defeat (docs/domain.md, Hidden dangers)
            continue
        out.append(Defeat(kind, aid, {"gas_alarms": [aid] if aid in prot.gas_alarms else [],
                                      "interlocks": list(prot.input_alarms.get(aid, []))},
                          [{"tag": a.tag, "condition": a.kind}],
                          a.shelved_until_ts if kind == "shelve" else None))
    return out, prot.targets


@dataclass
class _Note:
    """What an audit event said about a start or an end: who, why, when (UTC epoch s), how it ended."""

    ts: float
    user: str | None = None
    reason: str | None = None
    how: str | None = None          # an end: "operator" | "expiry"


@dataclass
class _Track:
    kind: str
    target: str
    since_ts: float
    by: str | None
    reason: str | None
    until_ts: float | None
    feeds: dict[str, list[str]] = field(default_factory=dict)
    inputs: list[dict[str, Any]] = field(default_factory=list)
    id: str | None = None            # set when the record is opened
    opened_ts: float | None = None
    after_minutes: float | None = None


class HiddenDangerTracker:
    """The open (and not yet open) hidden-danger records of one gateway; lives as long as the process
    (gateway.safety.tick.SafetyTick owns it: a SIGHUP reload keeps it). Not thread-safe: the event loop only.

    :meth:`note` every recorded event (cheap: a few dict look-ups); :meth:`step` with the current defeats;
    :meth:`saved` / :meth:`restore` across a restart; :meth:`status` for `status` and the status page."""

    def __init__(self) -> None:
        self._tracks: dict[tuple[str, str], _Track] = {}
        self._starts: dict[tuple[str, str], _Note] = {}
        self._ends: dict[tuple[str, str], _Note] = {}
        self._restored = False

    # ---------------------------------------------------------------- who and why, from the audit trail

    def note(self, rec: Mapping[str, Any]) -> None:
        """Take who, why and when from one recorded event: an alarm event with action "shelve",
        "out_of_service" (a start), "unshelve", "in_service" (an operator's end), "shelve_expired" (an
        expiry); an interlock event "bypass" (a start) or "bypass_end" (an operator's end, or an expiry when
        the engine says "bypass expired"). Anything else is ignored. Never raises."""
        typ = rec.get("type")
        if typ == "alarm":
            action, target = rec.get("action"), rec.get("id")
            if action in ("shelve", "out_of_service"):
                self._start((_HIDE_KIND["shelved"] if action == "shelve" else "out_of_service", target), rec)
            elif action in ("unshelve", "in_service", "shelve_expired"):
                kind = "out_of_service" if action == "in_service" else "shelve"
                self._end((kind, target), rec, "expiry" if action == "shelve_expired" else "operator")
        elif typ == "interlock":
            event, target = rec.get("event"), rec.get("interlock")
            if event == "bypass":
                self._start(("bypass", target), rec)
            elif event == "bypass_end":
                expired = str(rec.get("reason") or "").startswith(_BYPASS_EXPIRED)
                self._end(("bypass", target), rec, "expiry" if expired else "operator")

    def _start(self, key: tuple[str, Any], rec: Mapping[str, Any]) -> None:
        ts = _epoch(rec.get("ts"))
        if ts is not None and isinstance(key[1], str):
            self._starts[key] = _Note(ts, rec.get("user"), rec.get("reason"))

    def _end(self, key: tuple[str, Any], rec: Mapping[str, Any], how: str) -> None:
        ts = _epoch(rec.get("ts"))
        if ts is not None and isinstance(key[1], str):
            self._ends[key] = _Note(ts, rec.get("user") if how == "operator" else None, rec.get("reason"), how)

    # ---------------------------------------------------------------- the step

    def step(self, defeats: Sequence[Defeat], targets: set[str], wall: float, after_s: float,
             gateway_id: str) -> list[dict[str, Any]]:
        """Advance to wall-clock time ``wall`` (UTC epoch s) with the defeats of now (:func:`current_defeats`).

        A defeat seen for the first time is tracked from its start (the audit event's time; else now). One
        tracked for at least ``after_s`` seconds (0: at once) is opened: event "opened". A tracked defeat that
        is gone (or ended and started again between two steps) is closed when it was opened: event "closed"
        (ended_by as the module docstring says); one that was never opened is forgotten. Returns the events
        (dicts of the module docstring's shape, in order: closes first). Pure apart from the tracker's state."""
        events: list[dict[str, Any]] = []
        now = {(d.kind, d.target): d for d in defeats}
        for key, tr in list(self._tracks.items()):
            d = now.get(key)
            end, start = self._ends.get(key), self._starts.get(key)
            again = end is not None and start is not None and start.ts >= end.ts and end.ts >= tr.since_ts
            if d is not None and not again:
                tr.until_ts, tr.feeds, tr.inputs = d.until_ts, d.feeds, d.inputs
                tr.by = tr.by if tr.by is not None else d.by
                tr.reason = tr.reason if tr.reason is not None else d.reason
                continue
            del self._tracks[key]
            if tr.id is not None:
                events.append(self._closed(tr, end, targets, wall))
        for key, d in now.items():
            if key in self._tracks:
                continue
            start = self._starts.get(key)
            since = start.ts if start is not None and start.ts <= wall else wall
            # who and why: the engine's own (an interlock keeps them for its bypass), else the audit event's
            by = d.by if d.by is not None else (start.user if start else None)
            reason = d.reason if d.reason is not None else (start.reason if start else None)
            self._tracks[key] = _Track(d.kind, d.target, since, by, reason, d.until_ts, d.feeds, d.inputs)
        for tr in self._tracks.values():
            if tr.id is None and wall - tr.since_ts >= after_s:
                tr.id = hidden_danger_id(gateway_id, tr.kind, tr.target, tr.since_ts)
                tr.opened_ts, tr.after_minutes = wall, after_s / 60.0
                events.append({**self._record(tr), "event": "opened", "ts": rfc3339(wall)})
        self._starts.clear()
        self._ends.clear()
        self._restored = False
        return events

    def _closed(self, tr: _Track, end: _Note | None, targets: set[str], wall: float) -> dict[str, Any]:
        end_user = None
        if end is not None and end.ts >= tr.since_ts:
            how, at = end.how or "operator", end.ts
            if how == "expiry" and tr.until_ts is not None:
                at = min(at, tr.until_ts)     # expired while the gateway was down: at its planned end
            end_user = end.user
        elif tr.target not in targets:
            how, at = "config", wall
        elif tr.until_ts is not None and wall >= tr.until_ts:
            how, at = "expiry", tr.until_ts
        elif self._restored:
            how, at = "restart", wall
        else:
            how, at = "config", wall
        at = max(at, tr.since_ts)
        return {**self._record(tr), "event": "closed", "closed_at": rfc3339(at),
                "duration_s": round(at - tr.since_ts, 3), "ended_by": how, "end_user": end_user, "ts": rfc3339(at)}

    @staticmethod
    def _record(tr: _Track) -> dict[str, Any]:
        return {"type": "hidden_danger", "id": tr.id, "kind": tr.kind, "target": tr.target,
                "feeds": copy.deepcopy(tr.feeds), "inputs": copy.deepcopy(tr.inputs), "by": tr.by,
                "reason": tr.reason, "since": rfc3339(tr.since_ts),
                "until": rfc3339(tr.until_ts) if tr.until_ts is not None else None,
                "after_minutes": tr.after_minutes,
                "opened_at": rfc3339(tr.opened_ts) if tr.opened_ts is not None else None}

    # ---------------------------------------------------------------- what operators see

    def status(self) -> list[dict[str, Any]]:
        """The open records, oldest first: the "opened" event's fields without ``type`` / ``event`` / ``ts``
        (gateway.runtime.gateway.Gateway.status ``hidden_dangers``)."""
        out = []
        for tr in sorted(self._tracks.values(), key=lambda t: (t.since_ts, t.kind, t.target)):
            if tr.id is not None:
                rec = self._record(tr)
                del rec["type"]
                out.append(rec)
        return out

    # ---------------------------------------------------------------- across a restart

    def saved(self) -> list[dict[str, Any]]:
        """The restart form (``hidden_dangers`` of safety-state.json): every tracked defeat, opened or not, as
        ``{"kind", "target", "since_ts", "by", "reason", "until_ts", "feeds", "inputs", "id", "opened_ts",
        "after_minutes"}`` (UTC epoch seconds), sorted by kind and target. JSON-able, pure; it changes only
        when a record starts, opens, ends or its planned end moves, so the persister writes only then."""
        return [asdict(tr) for _k, tr in sorted(self._tracks.items())]

    def restore(self, saved: Any) -> int:
        """Take back what :meth:`saved` wrote before a restart; call before the first :meth:`step`. An entry
        that is not of that shape is skipped. At the next step each restored defeat that is still there goes
        on (an opened record is not opened again, a pending one keeps its start); one that is gone is closed
        (expiry at its planned end, operator or expiry when the restart recorded its end, restart for a shelve
        or out-of-service state, which does not survive a restart, config when the target is no longer
        configured). Returns how many entries were taken. Never raises."""
        n = 0
        for d in saved if isinstance(saved, list) else ():
            try:
                tr = _Track(**d)
            except TypeError:
                continue
            if tr.kind not in KINDS or not isinstance(tr.target, str) or not isinstance(tr.since_ts, (int, float)) \
                    or not isinstance(tr.feeds, dict) or not isinstance(tr.inputs, list):
                continue
            self._tracks[(tr.kind, tr.target)] = tr
            n += 1
        self._restored = True
        return n
