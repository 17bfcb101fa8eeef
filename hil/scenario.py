"""Scenarios as data, and threshold-crossing records for the HIL rig.

Part 1, :class:`CrossingWatch`: each simulator (tank PLC, gas bus, OPC UA
plant) records the wall-clock time (UTC epoch seconds, time.time()) at which a
simulated value first crossed a registered threshold, so an end-to-end test
can measure "crossing -> gateway trip" latency. The crossing time is linearly
interpolated between the two samples that straddle the threshold.

Part 2, scenarios: a YAML file holding a list of timed steps, e.g.::

    name: demo
    steps:
      - {at_s: 0,  watch: {tag: T101.level, threshold: 11.0, direction: up}}
      - {at_s: 2,  set_inflow: {tank: T101, m_per_min: 12.0}}
      - {at_s: 20, ramp_lel: {slaves: [1, 2], to_pct: 60, over_s: 8}}
      - {at_s: 25, set_h2s: {mg_m3: 30}}

(a bare list of steps is accepted too). ``at_s`` is seconds from the start
of the run (time.monotonic()); steps run in ``at_s`` order. Actions:

=================  ==========================================================
set_inflow         {tank: T101|T102, m_per_min: float >= 0}
set_outflow        {tank, m_per_min: float >= 0}
set_level          {tank, m: float, 0..tank height}
set_coil           {coil: XV101|XV102|XV100|beacon, value: 0|1}  (as the field would)
set_lel            {slave: 1..3, pct: 0..100}            %LEL
ramp_lel           {slaves: [1..3], to_pct: 0..100, over_s: float > 0}
set_fault          {slave: 1..3, fault: bool}
set_h2s            {mg_m3: float >= 0}
ramp_h2s           {to_mg_m3: float >= 0, over_s: float > 0}
watch              {tag: str, threshold: float, direction: up|down}
log                {message: str}
link_down          {link: modbus_tcp|serial|opcua, for_s: float > 0}  the peer
                   stops answering for for_s s (TCP / OPC UA: server closed,
                   connects refused; serial: every slave silent); the plant
                   keeps running. Returns at once; later steps go on.
power_loss         {down_s: float >= 0}  SIGKILL of the gateway, restarted
                   after down_s (needs the demo runner: ``hazard-gateway demo
                   --scenario power_loss``; repeat the step for a loop)
clock_step         {offset_s: float}  step the OPC UA plant's clock by
                   offset_s (cumulative): its SourceTimestamps jump
=================  ==========================================================

Tags for ``watch``: ``T101.level``, ``T101.temperature``, ``T101.pressure``
(same for T102) on the PLC; ``LEL.1`` .. ``LEL.3`` on the gas bus; ``H2S`` on
the OPC UA plant.

A malformed file raises :class:`ScenarioError` whose str() is one line,
``path:line: what is wrong`` (line numbers from the YAML parser, 1-based).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.yamlload import YamlError, parse_yaml, read_text

SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"

EventSink = Callable[[dict], None]


# ---------------------------------------------------------------------------- crossings
@dataclass
class _Watch:
    tag: str
    threshold: float
    direction: str
    last: float | None = None
    last_t: float | None = None
    crossed_at: float | None = None


class CrossingWatch:
    """First-crossing recorder for the thresholds a scenario registers.

    ``watch(tag, threshold, direction)`` registers a threshold ("up": value goes
    from below to >= threshold; "down": from above to <= threshold).
    ``update(tag, value)`` is called by the simulator each time the simulated
    value changes. ``first_crossing(tag, threshold)`` returns the UTC epoch
    seconds of the first crossing, or None. A value that already sits past
    the threshold when the watch is registered counts as crossed at that
    moment. Each first crossing is also sent to ``sink`` as
    {"t", "kind": "crossing", "source", "tag", "threshold", "direction", "value"}.
    """

    def __init__(self, source: str, sink: Callable[[], EventSink | None] | None = None) -> None:
        self.source = source
        self._sink = sink
        self._watches: dict[tuple[str, float], _Watch] = {}
        self._current: dict[str, tuple[float, float]] = {}

    def watch(self, tag: str, threshold: float, direction: str = "up") -> None:
        """Register a threshold on ``tag``; raises ValueError on a bad direction."""
        if direction not in ("up", "down"):
            raise ValueError(f"direction must be 'up' or 'down', got {direction!r}")
        key = (tag, float(threshold))
        if key in self._watches:
            return
        w = _Watch(tag, float(threshold), direction)
        self._watches[key] = w
        if tag in self._current:
            value, t = self._current[tag]
            w.last, w.last_t = value, t
            if (direction == "up" and value >= w.threshold) or (direction == "down" and value <= w.threshold):
                self._record(w, time.time(), value)

    def update(self, tag: str, value: float, t: float | None = None) -> None:
        """Feed the current simulated value of ``tag`` (t: UTC epoch seconds, default now)."""
        t = time.time() if t is None else t
        self._current[tag] = (value, t)
        for w in self._watches.values():
            if w.tag != tag:
                continue
            if w.crossed_at is None and w.last is not None:
                up = w.direction == "up" and w.last < w.threshold <= value
                down = w.direction == "down" and w.last > w.threshold >= value
                if up or down:
                    span = value - w.last
                    frac = (w.threshold - w.last) / span if span else 1.0
                    self._record(w, w.last_t + frac * (t - w.last_t), value)
            w.last, w.last_t = value, t

    def first_crossing(self, tag: str, threshold: float) -> float | None:
        """UTC epoch seconds at which ``tag`` first crossed ``threshold``; None if not (yet) or not watched."""
        w = self._watches.get((tag, float(threshold)))
        return None if w is None else w.crossed_at

    def crossings(self) -> list[dict]:
        """Every recorded first crossing, in time order."""
        out = [
            {"tag": w.tag, "threshold": w.threshold, "direction": w.direction, "t": w.crossed_at}
            for w in self._watches.values()
            if w.crossed_at is not None
        ]
        return sorted(out, key=lambda e: e["t"])

    def _record(self, w: _Watch, t: float, value: float) -> None:
        w.crossed_at = t
        sink = self._sink() if self._sink else None
        if sink:
            sink({"t": t, "kind": "crossing", "source": self.source, "tag": w.tag,
                  "threshold": w.threshold, "direction": w.direction, "value": value})


# ---------------------------------------------------------------------------- scenarios
class ScenarioError(ValueError):
    """A malformed scenario file; str() is one line ``path:line: what is wrong``."""


TANK_NAMES = ("T101", "T102")
COIL_NAMES = ("XV101", "XV102", "XV100", "beacon")
SLAVE_IDS = (1, 2, 3)


#: the latest a step may run (seconds from the start): a day; a demo or HIL run is minutes
MAX_AT_S = 86400.0


def _num(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False):
    def check(v: Any) -> str | None:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return f"expected a number, got {v!r}"
        if not math.isfinite(v):   # .inf / .nan / 1e999: a step that never runs, or a run that never ends
            return f"expected a finite number, got {v!r}"
        if lo is not None and (v <= lo if lo_open else v < lo):
            return f"{v} is below the allowed range ({'>' if lo_open else '>='} {lo})"
        if hi is not None and v > hi:
            return f"{v} is above the allowed range (<= {hi})"
        return None
    return check


def _one_of(*choices: Any):
    def check(v: Any) -> str | None:
        if isinstance(v, bool) or v not in choices:
            return f"expected one of {', '.join(map(str, choices))}, got {v!r}"
        return None
    return check


def _bool(v: Any) -> str | None:
    return None if isinstance(v, bool) else f"expected true or false, got {v!r}"


def _str(v: Any) -> str | None:
    return None if isinstance(v, str) and v else f"expected a non-empty string, got {v!r}"


def _slaves(v: Any) -> str | None:
    if not isinstance(v, list) or not v:
        return f"expected a non-empty list of slave ids, got {v!r}"
    bad = [s for s in v if isinstance(s, bool) or s not in SLAVE_IDS]
    return f"unknown slave id(s) {bad}; known: 1, 2, 3" if bad else None


def _coil_value(v: Any) -> str | None:
    return None if v in (0, 1) else f"expected 0 or 1 (or true/false), got {v!r}"


_TANK = _one_of(*TANK_NAMES)
_SLAVE = _one_of(*SLAVE_IDS)

#: action name -> {argument: validator}; every argument is required
ACTIONS: dict[str, dict[str, Callable[[Any], str | None]]] = {
    "set_inflow": {"tank": _TANK, "m_per_min": _num(0)},
    "set_outflow": {"tank": _TANK, "m_per_min": _num(0)},
    "set_level": {"tank": _TANK, "m": _num(0, 12)},
    "set_coil": {"coil": _one_of(*COIL_NAMES), "value": _coil_value},
    "set_lel": {"slave": _SLAVE, "pct": _num(0, 100)},
    "ramp_lel": {"slaves": _slaves, "to_pct": _num(0, 100), "over_s": _num(0, lo_open=True)},
    "set_fault": {"slave": _SLAVE, "fault": _bool},
    "set_h2s": {"mg_m3": _num(0)},
    "ramp_h2s": {"to_mg_m3": _num(0), "over_s": _num(0, lo_open=True)},
    "watch": {"tag": _str, "threshold": _num(), "direction": _one_of("up", "down")},
    "log": {"message": _str},
    "link_down": {"link": _one_of("modbus_tcp", "serial", "opcua"), "for_s": _num(0, lo_open=True)},
    "power_loss": {"down_s": _num(0)},
    "clock_step": {"offset_s": _num()},
}


@dataclass(frozen=True)
class Step:
    """One timed step: at ``at_s`` seconds after the start, do ``action`` with ``args``. line: 1-based source line."""

    at_s: float
    action: str
    args: dict[str, Any]
    line: int = 0


@dataclass
class Scenario:
    """A named list of steps, sorted by at_s (stable for equal times). duration_s: at_s of the last step."""

    name: str
    steps: list[Step] = field(default_factory=list)
    source: str = "<memory>"

    @property
    def duration_s(self) -> float:
        return max((s.at_s for s in self.steps), default=0.0)


def _line_of(node: Any, key: Any = None, default: int = 0) -> int:
    """1-based line of ``node`` (or of its key/item ``key``) in a ruamel round-trip document."""
    lc = getattr(node, "lc", None)
    if lc is None:
        return default
    try:
        if key is None:
            return lc.line + 1
        if isinstance(key, int) and isinstance(node, list):
            return lc.item(key)[0] + 1
        return lc.key(key)[0] + 1
    except Exception:
        return lc.line + 1


def resolve_scenario_path(name_or_path: str | Path) -> Path:
    """A scenario name ("demo") -> hil/scenarios/demo.yaml; a path (a .yaml/.yml name, or an existing file,
    or anything with a directory part) is returned as is. A directory of the same name in the working
    directory (a demo --workdir called "demo") does not shadow a built-in scenario."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.is_file() or len(p.parts) > 1:
        return p
    return SCENARIO_DIR / f"{name_or_path}.yaml"


def load_scenario(name_or_path: str | Path) -> Scenario:
    """Load and validate a scenario file (or a name in hil/scenarios/).

    Raises ScenarioError ("path:line: message", one line) for a missing file,
    a YAML syntax error, an unknown action, a missing/unknown/ill-typed
    argument or a bad ``at_s``.
    """
    path = resolve_scenario_path(name_or_path)
    try:
        text = read_text(path, str(path))
    except YamlError as exc:
        what = f"cannot read scenario file: {exc.message}" if exc.line == 0 else exc.message
        raise ScenarioError(f"{path}:{exc.line}: {what}") from None
    return parse_scenario(text, str(path), default_name=path.stem)


def parse_scenario(text: str, source: str = "<string>", default_name: str = "scenario") -> Scenario:
    """Parse and validate scenario YAML ``text``; ``source`` names it in error messages. The YAML goes
    through the gateway's bounded loader (gateway.yamlload: node budget with aliases expanded, nesting
    depth, self-referencing aliases, core tags only). Raises ScenarioError ("source:line: message")."""
    try:
        doc = parse_yaml(text, source)
    except YamlError as exc:
        raise ScenarioError(f"{source}:{exc.line}: {exc.message}") from None

    def fail(line: int, msg: str) -> ScenarioError:
        return ScenarioError(f"{source}:{line}: {msg}")

    name = default_name
    steps_node = doc
    if isinstance(doc, dict):
        unknown = [k for k in doc if k not in ("name", "description", "steps")]
        if unknown:
            raise fail(_line_of(doc, unknown[0]), f"unknown top-level key {unknown[0]!r} (expected name, description, steps)")
        if "steps" not in doc:
            raise fail(_line_of(doc, default=1), "missing 'steps' (a list of timed steps)")
        name = str(doc.get("name") or default_name)
        steps_node = doc["steps"]
        list_line = _line_of(doc, "steps")
    else:
        list_line = 1
    if not isinstance(steps_node, list):
        raise fail(list_line, "'steps' must be a list of steps like {at_s: 2, set_inflow: {tank: T101, m_per_min: 3.0}}")
    if not steps_node:
        raise fail(list_line, "the scenario has no steps")

    steps: list[Step] = []
    for i, node in enumerate(steps_node):
        line = _line_of(steps_node, i, list_line)
        if not isinstance(node, dict):
            raise fail(line, f"step {i + 1} must be a mapping like {{at_s: 2, set_lel: {{slave: 1, pct: 12}}}}, got {node!r}")
        if "at_s" not in node:
            raise fail(line, f"step {i + 1}: missing 'at_s' (seconds from the start)")
        err = _num(0, MAX_AT_S)(node["at_s"])
        if err:
            raise fail(_line_of(node, "at_s", line), f"step {i + 1}: at_s: {err}")
        actions = [k for k in node if k != "at_s"]
        if len(actions) != 1:
            where = _line_of(node, actions[1], line) if len(actions) > 1 else line
            raise fail(where, f"step {i + 1}: expected exactly one action besides at_s, got {actions or 'none'}")
        action = actions[0]
        aline = _line_of(node, action, line)
        if action not in ACTIONS:
            raise fail(aline, f"step {i + 1}: unknown action {action!r}; known: {', '.join(ACTIONS)}")
        args = node[action]
        schema = ACTIONS[action]
        if action == "watch" and isinstance(args, dict) and "direction" not in args:
            args = dict(args, direction="up")
        if not isinstance(args, dict):
            raise fail(aline, f"step {i + 1}: {action} needs a mapping with {', '.join(schema)}, got {args!r}")
        for key in args:
            if key not in schema:
                raise fail(_line_of(args, key, aline), f"step {i + 1}: {action}: unknown argument {key!r}; expected {', '.join(schema)}")
        for key, check in schema.items():
            if key not in args:
                raise fail(aline, f"step {i + 1}: {action}: missing argument {key!r}")
            err = check(args[key])
            if err:
                raise fail(_line_of(args, key, aline), f"step {i + 1}: {action}.{key}: {err}")
        plain = {k: (list(v) if isinstance(v, list) else v) for k, v in args.items()}
        steps.append(Step(float(node["at_s"]), action, plain, line))
    steps.sort(key=lambda s: s.at_s)
    return Scenario(name=name, steps=steps, source=source)


async def run_scenario(scenario: Scenario, target: Any, on_step: EventSink | None = None,
                       time_scale: float = 1.0) -> None:
    """Run ``scenario`` against ``target`` (a hil.farm.TankFarm or anything with the same methods).

    Each step waits until ``at_s * time_scale`` seconds (time.monotonic()) after
    the start, then calls ``target.<action>(**args)`` (awaiting it when it is a
    coroutine). ``on_step`` receives {"t", "kind": "step", "scenario", "at_s",
    "action", "args"} as each step runs. Exceptions from the target propagate.
    """
    t0 = time.monotonic()
    for step in scenario.steps:
        delay = t0 + step.at_s * time_scale - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if on_step:
            on_step({"t": time.time(), "kind": "step", "scenario": scenario.name, "at_s": step.at_s,
                     "action": step.action, "args": step.args})
        result = getattr(target, step.action)(**step.args)
        if asyncio.iscoroutine(result):
            await result
