"""From a config to the runtime parts derived from it alone: :func:`build_plant` -> :class:`Plant`.

A Plant is what a SIGHUP reload replaces as a whole (gateway.runtime.reload): the device drivers and their shared
links, the tag -> device / protocol maps, the alarm engine (with its system alarms), the interlock
engine, the hazard engine, point codes, valid ranges, stale / fresh windows, the report-by-exception
filter, poll intervals and counters, PLC heartbeats and annunciators. Everything that lives on across a
reload (the store, the output manager, last values, the forwarder, health, the clock monitor, the operator
socket, the record supervisor, the safety-state persister) belongs to gateway.runtime.gateway.Gateway, not here.

Building is constructors only: nothing is opened, connected, written or started (a hazard unit with a
relative strapping-table CSV reads that file, as the config loader did when it checked it). The engines
are objects with their own state; the Plant reference itself is frozen (a reload swaps the whole Plant in
one assignment, never a part of it). Engine state carries from one Plant to the next only through the
engines' snapshot / adopt (gateway.safety.alarms.AlarmEngine.snapshot, gateway.safety.interlocks.InterlockEngine.snapshot).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Awaitable, Callable

from drivers.base import Device
from drivers.registry import BuildContext, Links, build_device
from gateway.safety.alarms import CLOCK, GAS_DETECTION_BUDGET_S, SYSTEM_TAG, AlarmEngine, TagAlarmConfig
from gateway.safety.annunciator import Annunciators, specs_from_config
from gateway.chain.basic_data import point_code
from gateway.config import AlarmsCfg, LoadedConfig, point_places, tag_alarm_config
from gateway.hazard import HazardEngine, unit_from_dict
from gateway.runtime.health import link_key
from gateway.safety.heartbeat import Heartbeat, build_heartbeats
from gateway.safety.interlocks import InterlockEngine, InterlockInput, InterlockSpec, OutputAction
from gateway.model import Reading
from gateway.record.supervisor import RECORD_ALARM_PRIORITY, STORE, UPLINK
from gateway.record.report import ReportFilter, rules_from_config as report_rules

CLOCK_ALARM_PRIORITY = 3  # system.CLOCK: a fault of the record (alarm and sample times), not of the process
STATUS_FILE = "status.json"


def store_settings(cfg: LoadedConfig) -> dict[str, Any]:
    """The store settings of ``cfg`` that a reload may change: keyword arguments of Store and Store.retune
    (commit interval in s, the cap in bytes or None, the retention floor in s, whether it is waived)."""
    s = cfg.model.store
    return {"commit_interval_s": s.commit_interval_ms / 1000, "max_bytes": s.max_bytes,
            "retention_floor_s": s.retention_days * 86400, "floor_waived": s.retention_floor.waive}


def build_devices(cfg: LoadedConfig, links: Links) -> list[Device]:
    """One driver object per enabled device, built by its protocol's entry in drivers.registry (which imports
    the protocol's driver only when a device uses it); links shared per physical link (Modbus: per
    (host, port) / serial port) through ``links``."""
    ctx = BuildContext(resolve=cfg.resolve, links=links)
    return [build_device(d, ctx) for d in cfg.model.devices if d.enabled]


def precisions(cfg: LoadedConfig) -> dict[str, int]:
    """Tag -> decimal places shown (``precision``) of every enabled tag that sets it (gateway.model.format_value)."""
    return {t.name: t.precision for d in cfg.model.devices if d.enabled for t in d.tags if t.precision is not None}


def valid_ranges(cfg: LoadedConfig) -> dict[str, tuple[float, float]]:
    """Tag -> (lo, hi) of every enabled tag with a ``valid_range`` (engineering units)."""
    return {t.name: (float(t.valid_range[0]), float(t.valid_range[1]))
            for d in cfg.model.devices if d.enabled for t in d.tags if t.valid_range is not None}


#: a device's readings count as fresh for this many poll periods (plus its link's timeouts); docs/design.md, Fail safe
STALE_POLL_PERIODS = 3
#: timeouts one poll cycle may spend per device sharing a link: a connect, a request and its retry
#: (drivers.modbus retries=1; a unit that timed out is skipped for the rest of the cycle)
STALE_TIMEOUTS_PER_DEVICE = 3


def fresh_windows(cfg: LoadedConfig) -> dict[str, float]:
    """Device name -> seconds within which its poll loop delivers a fresh reading (good or bad) when it is
    running at all: STALE_POLL_PERIODS poll intervals plus, for every enabled device sharing its link
    (gateway.runtime.health.link_key: one RS-485 bus, one TCP host:port), STALE_TIMEOUTS_PER_DEVICE timeouts,
    since a silent device on a shared bus legitimately holds the link that long per cycle. A device that
    does not answer still delivers (BAD "timeout" readings) within this window; only a hung poll loop
    (a driver that never returns, a dead task) does not ("no fresh reading within N poll
    periods" is a fault; docs/design.md, Fail safe)."""
    enabled = [d for d in cfg.model.devices if d.enabled]
    link_wait: dict[tuple, float] = {}
    for d in enabled:
        k = link_key(d)
        link_wait[k] = link_wait.get(k, 0.0) + STALE_TIMEOUTS_PER_DEVICE * d.timeout_ms / 1000
    return {d.name: STALE_POLL_PERIODS * d.poll_interval_ms / 1000 + link_wait[link_key(d)] for d in enabled}


def derived_stale_after_s(window_s: float, poll_interval_s: float, timeout_s: float, gas: bool) -> float:
    """stale_after_s of a tag whose alarms do not set it: the device's fresh window (fresh_windows). A gas
    tag is capped at GAS_DETECTION_BUDGET_S (30 s: detection within 30 s, the detector response budget of
    the commissioning rules; GB/T 50493-2019; docs/domain.md, Response times), but never below one poll
    period + three timeouts (when the next reading may arrive at the latest; a detector polled that slowly
    cannot meet the 30 s rule, and `check` warns when its poll interval + timeout exceed 30 s)."""
    if not gas:
        return window_s
    return max(min(window_s, GAS_DETECTION_BUDGET_S), poll_interval_s + STALE_TIMEOUTS_PER_DEVICE * timeout_s)


def alarm_configs(cfg: LoadedConfig) -> list[TagAlarmConfig]:
    """TagAlarmConfig per tag that has alarms (gateway.config.tag_alarm_config: GB/T 50493-2019 5.5.2
    presets in the tag's unit, then explicit limits); every other input tag still gets its QUALITY alarm.

    stale_after_s: the tag's configured value, else derived from its device (no fresh reading,
    good or bad, within STALE_POLL_PERIODS poll periods plus the link's timeouts, see fresh_windows;
    gas tags at most GAS_DETECTION_BUDGET_S; docs/design.md, Fail safe), so a hung poll loop makes its tags stale (QUALITY alarm
    "stale", an unknown interlock input that votes to trip) instead of leaving the last value "known"
    forever."""
    out = []
    windows = fresh_windows(cfg)
    for d in cfg.model.devices:
        if not d.enabled:
            continue
        for t in d.tags:
            a: AlarmsCfg | None = t.alarms

            def stale(gas: bool, a: AlarmsCfg | None = a) -> float:
                if a is not None and a.stale_after_s is not None:
                    return a.stale_after_s
                return derived_stale_after_s(windows[d.name], d.poll_interval_ms / 1000, d.timeout_ms / 1000, gas)

            if a is None:
                if not t.writable:
                    out.append(TagAlarmConfig(tag=t.name, stale_after_s=stale(False)))
                continue
            out.append(tag_alarm_config(t, stale_after_s=stale(a.gas is not None), policy=cfg.model.alarm_policy))
    return out


def interlock_specs(cfg: LoadedConfig) -> list[InterlockSpec]:
    return [InterlockSpec(name=i.name, inputs=[InterlockInput(x.tag, x.condition) for x in i.inputs], vote=i.vote,
                          on_fault=i.on_fault, latch=i.latch,
                          actions=[OutputAction(a.output, a.value, a.reset_value) for a in i.actions])
            for i in cfg.model.interlocks]


def build_hazard(cfg: LoadedConfig) -> HazardEngine | None:
    """The GB 18218-2018 engine of the config's hazard: units (None without units). The config loader
    has already checked every unit, so a ValueError here is a bug, not a user error."""
    h = cfg.model.hazard
    if h is None or not h.units:
        return None
    specs = [unit_from_dict(d, f"hazard.units[{i}]", cfg.base_dir) for i, d in enumerate(h.units)]
    return HazardEngine(specs, stale_after_s=h.stale_after_s)


def point_codes(cfg: LoadedConfig, hazard: HazardEngine | None = None) -> dict[str, str]:
    """Regulator point code per tag (gateway.chain.basic_data.point_code: enterprise code + major-hazard code +
    tag code, joined by gateway.point_separator), from gateway.config.point_places: the major-hazard code of the
    tag's hazard unit (its point's installation or vessel, else the first unit the tag belongs to) when the unit
    has one, else gateway.major_hazard_code; the tag code is the point's ``code``, else the tag name. Without an
    enterprise code, or a tag without any major-hazard code, the tag has no point code. ``hazard`` is not needed
    (kept for callers)."""
    g = cfg.model.gateway
    if not g.enterprise_code:
        return {}
    return {tag: point_code(g.enterprise_code, place.major_hazard_code, place.tag_code, sep=g.point_separator)
            for tag, place in point_places(cfg).items() if place.major_hazard_code}


# --- the plant ------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, eq=False)
class Plant:
    """The runtime parts built from one config (see the module docstring). Frozen: a reload replaces the
    whole Plant (Gateway.plant), never one of its fields. Compared by identity.

    cfg: the LoadedConfig. signer: gateway.chain.signing.Signer of the batches (None: no uplink). links: the
    shared links (drivers.registry.Links) of ``devices`` (one driver per enabled device). device_of /
    protocol_of: tag -> driver / protocol name. alarms / interlocks: the engines (their state is theirs, carried by
    snapshot / adopt). clock_grace_s: alarm_policy.clock_unsync_grace_s (system.CLOCK). valid_range: tag ->
    (lo, hi), engineering units. report: the report-by-exception filter (record path). hazard: the
    GB 18218-2018 engine or None. points: tag -> regulator point code. hazard_unit_tags: unit -> its tags.
    interlock_inputs: interlock -> its input tags. polls: device -> {"protocol", "polls", "bad",
    "last_poll"} (counters; a reload keeps those of a device that keeps its name). status_path:
    state_dir/status.json. interlock_feeds: device feeding an interlock input -> its fresh window, seconds.
    poll_intervals: device -> poll interval, seconds. heartbeats: PLC watchdog writers. annunciators:
    beacons and horns. precision: tag -> decimal places shown (display only).
    """

    cfg: LoadedConfig
    signer: Any
    links: Links
    devices: list[Device]
    device_of: dict[str, Device]
    protocol_of: dict[str, str]
    alarms: AlarmEngine
    interlocks: InterlockEngine
    clock_grace_s: float
    valid_range: dict[str, tuple[float, float]]
    report: ReportFilter
    hazard: HazardEngine | None
    points: dict[str, str]
    hazard_unit_tags: dict[str, set[str]]
    interlock_inputs: dict[str, set[str]]
    polls: dict[str, dict[str, Any]]
    status_path: Path
    interlock_feeds: dict[str, float]
    poll_intervals: dict[str, float]
    heartbeats: list[Heartbeat]
    annunciators: Annunciators
    precision: dict[str, int]


def build_plant(cfg: LoadedConfig, signer: Any = None, *,
                write_output: Callable[[str, Any], Awaitable[Reading]] | None = None,
                set_output_fault: Callable[[str, bool, str | None], None] | None = None,
                log_event: Callable[[dict[str, Any]], None] | None = None,
                safety_alive: Callable[[], bool] | None = None,
                safety_problem: Callable[[], str | None] | None = None) -> Plant:
    """The Plant of ``cfg`` (a validated LoadedConfig). Constructors only: nothing is opened or started.

    The callables are the live gateway's, handed to the parts that report to it: write_output(tag, value)
    (coroutine returning the read-back Reading: annunciator writes), set_output_fault(tag, fault, reason)
    (an annunciator write not confirmed), log_event(record) (annunciator events), safety_alive() and
    safety_problem() (whether, and why not, PLC heartbeats may be written; gateway.safety.heartbeat). None: a
    Plant that reports nowhere (checks and tests).

    Raises ValueError (e.g. a duplicate interlock name, a bad heartbeat), KeyError or OSError from the
    constructors (a hazard unit's strapping table); a config that passed gateway.config.load_config builds.
    """
    links = Links()
    devices = build_devices(cfg, links)
    device_of: dict[str, Device] = {tag: dev for dev in devices for tag in dev.tags}
    protocol_of: dict[str, str] = {tag: dev.protocol for dev in devices for tag in dev.tags}
    policy = cfg.model.alarm_policy
    alarms = AlarmEngine(alarm_configs(cfg), gas_on_delay_cap_s=policy.gas_on_delay_cap_s)
    # system.CLOCK (gateway.record.clock.ClockMonitor.sync_alarm), raised by the alarm ticker after the grace
    alarms.add_system_alarm(SYSTEM_TAG, CLOCK, CLOCK_ALARM_PRIORITY)
    for kind in (STORE, UPLINK):  # record-path faults (gateway.record.supervisor)
        alarms.add_system_alarm(SYSTEM_TAG, kind, RECORD_ALARM_PRIORITY)
    interlocks = InterlockEngine(interlock_specs(cfg))
    hazard = build_hazard(cfg)
    # devices whose poll loops feed an interlock input, with the window they must deliver within (S6)
    windows = fresh_windows(cfg)
    feeds = {device_of[i.tag].name for il in cfg.model.interlocks for i in il.inputs if i.tag in device_of}
    # docs/design.md, Fail safe: PLC watchdog registers, beacons / horns
    heartbeats = build_heartbeats(cfg, devices, alive=safety_alive, why=safety_problem)
    annunciators = Annunciators(specs_from_config(cfg), write_output or _no_writer, alarms.active,
                                on_fault=set_output_fault, on_event=log_event, disabled=alarms.disabled_points)
    return Plant(
        cfg=cfg, signer=signer, links=links, devices=devices, device_of=device_of, protocol_of=protocol_of,
        alarms=alarms, interlocks=interlocks, clock_grace_s=policy.clock_unsync_grace_s,
        valid_range=valid_ranges(cfg),  # tag -> (lo, hi), engineering units (gateway.safety.validity.check_valid_range)
        report=ReportFilter(report_rules(cfg)),  # report by exception: record path only
        hazard=hazard, points=point_codes(cfg, hazard),
        hazard_unit_tags={u: hazard.unit_tags(u) for u in hazard.units} if hazard else {},
        interlock_inputs={i.name: {x.tag for x in i.inputs} for i in cfg.model.interlocks},
        polls={d.name: {"protocol": d.protocol, "polls": 0, "bad": 0, "last_poll": None} for d in devices},
        status_path=cfg.state_dir / STATUS_FILE,
        interlock_feeds={name: windows[name] for name in sorted(feeds)},
        poll_intervals={d.name: d.poll_interval_ms / 1000 for d in cfg.model.devices},
        heartbeats=heartbeats, annunciators=annunciators, precision=precisions(cfg))


async def _no_writer(tag: str, value: Any) -> Reading:
    raise OSError(f"output {tag}: this plant is not running (no writer)")
