"""The Gateway: the one object that owns the running parts, built from the config.

Two paths, never coupled (docs/design.md):

* SAFETY PATH, in the poll tick and from memory: a device's readings go to the
  alarm engine, the interlock engine votes, and the output manager starts
  confirmed writes as tasks. Nothing here waits on SQLite, the disk or the
  uplink: put_reading/put_event only enqueue (gateway.store), and so does the
  log (the daemon's logging, gateway.logutil.setup_logging, puts each line into
  a bounded queue that a writer thread drains; a stalled stderr / journald
  drops and counts lines, it never delays a trip).
* RECORD PATH, queued and allowed to lag: the store's writer thread commits
  readings and events; the forwarder builds, signs and sends batches and marks
  them sent only on the receiver's acknowledgement.

Polling is one asyncio task per device, paced on time.monotonic() (C18): a
wall-clock step neither stalls nor bursts it. APScheduler 3 was considered and
not used for this, because its interval triggers compute the next fire time
from wall-clock datetimes, so an NTP step of -1 h would stall polling for an
hour (the fault C18 describes).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from drivers.base import Device
from drivers.codec import Scaling
from drivers.modbus import ModbusDevice, ModbusLinks, ModbusPoint
from drivers.opcua import OpcUaDevice, OpcUaPoint
from gateway.alarms import CLOCK, GAS_DETECTION_BUDGET_S, SYSTEM_TAG, AlarmEngine, TagAlarmConfig
from gateway.annunciator import Annunciators, specs_from_config
from gateway.config import (AlarmsCfg, LoadedConfig, ModbusRtuDevice, ModbusTcpDevice, OpcUaDeviceCfg,
                            tag_alarm_config)
from gateway.control import ControlServer, ControlStartError, socket_path
from gateway.filemode import create_record_file
from gateway.hazard import HazardEngine, point_code, unit_from_dict
from gateway.health import Health, link_key, watch_gateway
from gateway.heartbeat import build_heartbeats
from gateway.interlocks import InterlockEngine, InterlockInput, InterlockSpec, OutputAction
from gateway.model import Quality, Reading, WriteError, rfc3339
from gateway.outputs import OutputManager
from gateway.record_supervisor import RECORD_ALARM_PRIORITY, STORE, UPLINK, RecordSupervisor, opened_event
from gateway.clock import RESYNC_TEXT, ClockMonitor
from gateway.report import ReportFilter, rules_from_config as report_rules
from gateway.safety_state import FILE_NAME as SAFETY_STATE_FILE, SafetyStateError, SafetyStatePersister
from gateway.safety_state import load as load_safety_state
from gateway.store import Store

log = logging.getLogger("hazard_gateway")

ALARM_TICK_S = 0.1
STATUS_EVERY_S = 1.0
HAZARD_TICK_S = 1.0  # re-check stale hazard inputs and the unit alarm state this often
DRAIN_ON_STOP_S = 5.0  # bound of the final upload at SIGTERM
OUTPUT_RETRY_S = 5.0  # an output write still unconfirmed after its attempts is retried this often (docs/design.md, Fail safe)
SAFETY_ALIVE_S = 2.0  # heartbeats stop when the safety step has not run for this long
CLOCK_ALARM_PRIORITY = 3  # system.CLOCK: a fault of the record (alarm and sample times), not of the process


# --- building runtime objects from the config ----------------------------------

def build_devices(cfg: LoadedConfig, links: ModbusLinks) -> list[Device]:
    """One driver object per enabled device; Modbus links shared per (host, port) / serial port."""
    devices: list[Device] = []
    for d in cfg.model.devices:
        if not d.enabled:
            continue
        if isinstance(d, (ModbusTcpDevice, ModbusRtuDevice)):
            points = []
            for t in d.tags:
                table, address = t.table_address()
                scaling = Scaling(scale=t.scale, offset=t.offset,
                                  raw_range=tuple(t.raw_range) if t.raw_range else None,
                                  eng_range=tuple(t.eng_range) if t.eng_range else None)
                points.append(ModbusPoint(tag=t.name, unit_id=d.unit_id, table=table, address=address,
                                          dtype=t.type, order=t.order, length=t.length, bit=t.bit,
                                          str_len=t.str_len, scaling=scaling, sentinels=t.sentinel_values(),
                                          unit=t.unit, writable=t.writable,
                                          write_single_as_fc16=t.write_single_as_fc16))
            timeout_s = d.timeout_ms / 1000
            if isinstance(d, ModbusTcpDevice):
                link = links.tcp(d.host, d.port, timeout_s)
            else:
                port = str(cfg.resolve(d.port)) if not d.port.startswith("/") else d.port
                link = links.rtu(port, d.baudrate, d.parity, d.stopbits, d.bytesize, timeout_s,
                                 local_echo=d.local_echo)
            devices.append(ModbusDevice(d.name, link, d.unit_id, points, d.protocol,
                                        max_registers_per_read=d.max_registers_per_read,
                                        max_bits_per_read=d.max_bits_per_read))
        elif isinstance(d, OpcUaDeviceCfg):
            points = [OpcUaPoint(tag=t.name, node_id=t.node_id, unit=t.unit, writable=t.writable,
                                 subscribe=t.subscribe, deadband=t.deadband) for t in d.tags]
            security = None
            if d.security is not None:
                security = {k: (str(cfg.resolve(v)) if k in ("cert", "key", "server_cert", "password_file") else v)
                            for k, v in d.security.model_dump(exclude_none=True).items()}
            devices.append(OpcUaDevice(d.name, d.endpoint, points, timeout_s=d.timeout_ms / 1000,
                                       publishing_interval_ms=d.publishing_interval_ms, watchdog_s=d.watchdog_s,
                                       security=security))
    return devices


def valid_ranges(cfg: LoadedConfig) -> dict[str, tuple[float, float]]:
    """Tag -> (lo, hi) of every enabled tag with a ``valid_range`` (engineering units)."""
    return {t.name: (float(t.valid_range[0]), float(t.valid_range[1]))
            for d in cfg.model.devices if d.enabled for t in d.tags if t.valid_range is not None}


def check_valid_range(readings: list[Reading], ranges: dict[str, tuple[float, float]]) -> list[Reading]:
    """``readings`` with every usable reading whose value (or any element of a list value) lies outside
    its tag's valid range turned BAD, reason "out of range: V outside valid_range [lo, hi]" (time,
    time source and raw kept). The one place valid_range is applied (Gateway.on_readings, before the
    safety step, for every protocol; the probe shows the same). A value outside what the instrument
    can measure is a fault, never a reading "within limits" (docs/design.md fail-safe; NAMUR NE 43 for
    4-20 mA loops is checked by the codec). Booleans and strings are not ranged."""
    if not ranges:
        return readings
    out = []
    for r in readings:
        rng = ranges.get(r.tag)
        if rng is not None and r.usable:
            vals = r.value if isinstance(r.value, list) else [r.value]
            bad = next((v for v in vals if isinstance(v, (int, float)) and not isinstance(v, bool)
                        and not rng[0] <= v <= rng[1]), None)
            if bad is not None:
                r = dataclasses.replace(r, value=None, quality=Quality.BAD,
                                        reason=f"out of range: {bad:g} outside valid_range [{rng[0]:g}, {rng[1]:g}]")
        out.append(r)
    return out


#: a device's readings count as fresh for this many poll periods (plus its link's timeouts); docs/design.md, Fail safe
STALE_POLL_PERIODS = 3
#: timeouts one poll cycle may spend per device sharing a link: a connect, a request and its retry
#: (drivers.modbus retries=1; a unit that timed out is skipped for the rest of the cycle)
STALE_TIMEOUTS_PER_DEVICE = 3


def fresh_windows(cfg: LoadedConfig) -> dict[str, float]:
    """Device name -> seconds within which its poll loop delivers a fresh reading (good or bad) when it is
    running at all: STALE_POLL_PERIODS poll intervals plus, for every enabled device sharing its link
    (gateway.health.link_key: one RS-485 bus, one TCP host:port), STALE_TIMEOUTS_PER_DEVICE timeouts,
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


def points_disabled(alarms: AlarmEngine) -> dict[str, Any]:
    """The 屏蔽 indication (GB 16808: disabled points are shown and counted; docs/domain.md, Alarm management):
    ``{"active": bool, "count": gas points (tags) with a disabled alarm, "points": their tag names, "alarms":
    the disabled alarms as AlarmStatus records}`` from AlarmEngine.disabled_points. Active while any gas
    point is shelved, suppressed or out of service; clear when none is."""
    disabled = alarms.disabled_points()
    tags = sorted({a.tag for a in disabled})
    return {"active": bool(disabled), "count": len(tags), "points": tags,
            "alarms": [a.to_record() for a in disabled]}


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


def point_codes(cfg: LoadedConfig, hazard: HazardEngine | None) -> dict[str, str]:
    """Regulator point code per tag (gateway.hazard.point_code: enterprise code + major-hazard code + tag,
    joined by gateway.point_separator). The major-hazard code of a tag is that of the first hazard unit
    the tag belongs to (HazardEngine.unit_tags) when the unit has one, else gateway.major_hazard_code.
    Without an enterprise code, or a tag without any major-hazard code, the tag has no point code."""
    g = cfg.model.gateway
    if not g.enterprise_code:
        return {}
    mh_of: dict[str, str] = {}
    if hazard is not None:
        for unit in hazard.units:
            code = hazard.major_hazard_code(unit)
            if code:
                for tag in hazard.unit_tags(unit):
                    mh_of.setdefault(tag, str(code))
    out = {}
    for tag in cfg.all_tags():
        mh = mh_of.get(tag, g.major_hazard_code)
        if mh:
            out[tag] = point_code(g.enterprise_code, mh, tag, sep=g.point_separator)
    return out


# --- the running gateway ----------------------------------------------------------

class Gateway:
    """Owns devices, the safety path (alarms, interlocks, outputs) and the record path (store, forwarder).

    cfg: a validated config. signer: gateway.signing.Signer for batches (None: no uplink).
    Build, then ``await run(stop_event)``; run() returns after a clean shutdown (current
    tick finished, store flushed, devices closed; outputs are left as they are: hold).
    """

    def __init__(self, cfg: LoadedConfig, signer: Any = None) -> None:
        self.cfg = cfg
        self.signer = signer
        self.links = ModbusLinks()
        self.devices = build_devices(cfg, self.links)
        self.device_of: dict[str, Device] = {tag: dev for dev in self.devices for tag in dev.tags}
        self.protocol_of: dict[str, str] = {tag: dev.protocol for dev in self.devices for tag in dev.tags}
        policy = cfg.model.alarm_policy
        self.alarms = AlarmEngine(alarm_configs(cfg), gas_on_delay_cap_s=policy.gas_on_delay_cap_s)
        # system.CLOCK (gateway.clock.ClockMonitor.sync_alarm), raised by the alarm ticker after the grace
        self.alarms.add_system_alarm(SYSTEM_TAG, CLOCK, CLOCK_ALARM_PRIORITY)
        for kind in (STORE, UPLINK):  # record-path faults (gateway.record_supervisor)
            self.alarms.add_system_alarm(SYSTEM_TAG, kind, RECORD_ALARM_PRIORITY)
        self._clock_grace_s = policy.clock_unsync_grace_s
        self.interlocks = InterlockEngine(interlock_specs(cfg))
        self.outputs = OutputManager(self._write_output, on_event=self._record_output_event,
                                     retry_after_fault_s=OUTPUT_RETRY_S)
        self.store = Store(cfg.store_path, commit_interval_s=cfg.model.store.commit_interval_ms / 1000,
                           max_bytes=cfg.model.store.max_bytes,
                           busy_timeout_ms=cfg.model.store.busy_timeout_ms,
                           retention_floor_s=cfg.model.store.retention_days * 86400,
                           on_full=cfg.model.store.on_full,
                           floor_waived=cfg.model.store.retention_floor.waive)
        self.values: dict[str, Reading] = {}
        self._valid_range = valid_ranges(cfg)  # tag -> (lo, hi), engineering units (check_valid_range)
        self._last_stored: dict[str, tuple] = {}
        self.report = ReportFilter(report_rules(cfg))   # report by exception: record path only
        self.clock = ClockMonitor()                      # wall-clock steps (C18), clock state per batch
        self.hazard = build_hazard(cfg)
        self.points = point_codes(cfg, self.hazard)
        self._hazard_unit_tags = {u: self.hazard.unit_tags(u) for u in self.hazard.units} if self.hazard else {}
        self._interlock_inputs = {i.name: {x.tag for x in i.inputs} for i in cfg.model.interlocks}
        self._hazard_tick_mono = 0.0
        self.polls: dict[str, dict[str, Any]] = {d.name: {"protocol": d.protocol, "polls": 0, "bad": 0,
                                                          "last_poll": None} for d in self.devices}
        # readings handed to the store's queue (put_reading accepted them); a reading counts as taken only
        # once committed (docs/design.md "Two paths"): that figure is Store.stats()["readings_committed"]
        self.readings_queued = 0
        self.forwarder: Any = None
        self.started_at = time.time()
        self._stopping = False
        self._status_path = cfg.state_dir / "status.json"
        self.health = Health()  # progress of the poll loops and the safety path (systemd watchdog)
        self.record = RecordSupervisor(self)  # the store writer and the uploader, supervised in process
        self._poll_tasks: list[asyncio.Task] = []
        self._fw_task: asyncio.Task | None = None
        self._aux_tasks: list[asyncio.Task] = []
        self._reload_lock = asyncio.Lock()  # SIGHUP reload (gateway.reload) vs shutdown
        # docs/design.md, Fail safe: PLC watchdog registers, beacons / horns, the operator socket (gateway.control)
        self.last_safety_mono: float | None = None
        # devices whose poll loops feed an interlock input, with the window they must deliver within (S6)
        windows = fresh_windows(cfg)
        feeds = {self.device_of[i.tag].name for il in cfg.model.interlocks for i in il.inputs if i.tag in self.device_of}
        self._interlock_feeds = {name: windows[name] for name in sorted(feeds)}
        self.heartbeats = build_heartbeats(cfg, self.devices, alive=self._safety_alive, why=self._safety_problem)
        self.annunciators = Annunciators(specs_from_config(cfg), self._write_output, lambda: self.alarms.active(),
                                         on_fault=self._set_output_fault, on_event=self._log_event,
                                         disabled=lambda: self.alarms.disabled_points())
        self.control: ControlServer | None = None
        # trips, bypasses and latched alarms survive a restart (gateway.safety_state); written off the loop
        self.safety_state = SafetyStatePersister(
            cfg.state_dir / SAFETY_STATE_FILE, gateway_id=cfg.model.gateway.id,
            export=lambda: {"interlocks": self.interlocks.export_state(), "alarms": self.alarms.export_state()})

    # ---- safety path ----

    def on_readings(self, readings: list[Reading]) -> None:
        """The poll tick: valid ranges, alarms, interlock voting, output commands; record path only enqueues."""
        now = time.monotonic()
        readings = check_valid_range(readings, self._valid_range)  # out of range: BAD before the safety step
        events: list[Any] = []
        for r in readings:
            self.values[r.tag] = r
            if r.tag in self.alarms.tags:
                events += self.alarms.update(r, now)
        self._safety_step(events, now)
        if self.hazard is not None:  # pure and in memory (GB 18218-2018 quantities), after the safety step
            for ev in self.hazard.update_many(readings):
                self._log_hazard_event(ev)
        for r in readings:
            # A subscription-fed tag (OPC UA) is re-delivered unchanged between notifications, after a
            # reconnect and after a restart: the record path stores each sample stamped by the device or
            # server once, keyed by its sample time, quality and value (the last such key per tag, seeded
            # from the store at start, Store.last_samples). Locally stamped readings are always new samples.
            rec = self._reading_record(r)
            if rec["ts_source"] != "local":
                key = (rec["ts"], rec["quality"], json.dumps(rec["value"], default=str))
                if self._last_stored.get(r.tag) == key:
                    continue
                self._last_stored[r.tag] = key
            # report by exception (per-tag config); a reading that moved an alarm is always kept
            if not self.report.keep(r, now, force=any(getattr(e, "tag", None) == r.tag for e in events)):
                continue
            if self.store.put_reading(rec):   # False: dropped, counted by the store and recorded as a gap
                self.readings_queued += 1

    def _safety_step(self, alarm_events: list[Any], now: float) -> None:
        self.last_safety_mono = now
        commands, il_events = self.interlocks.evaluate(self.alarms, now)
        if commands:
            self.outputs.apply(commands)
        for e in alarm_events:
            self._log_event(e.to_record())
        for e in il_events:
            self._log_event(e.to_record())
        if self.hazard is not None and (alarm_events or il_events):
            self._sync_hazard_alarm_state()

    def _sync_hazard_alarm_state(self) -> None:
        """Map the live alarm state onto each hazard unit (HazardEngine.update_alarm_state):

        * level2_active: an alarm of GB/T 50493-2019 5.5.2 level 2 (the gas presets' HH, oxygen L) is in
          alarm (active, or latched awaiting reset; shelved or suppressed ones count too: hiding an
          alarm from the operator does not lower the risk) on a tag of the unit;
        * tripped: an interlock holds its outputs in the safe state (tripped, cleared or not, until
          reset) and at least one of its inputs is a tag of the unit.

        Tags of a unit: HazardEngine.unit_tags (its level / temperature / pressure tags and alarm_tags).
        """
        level2 = {a.tag for a in self.alarms.active(include_hidden=True) if a.level == 2 and (a.active or a.latched)}
        tripped: set[str] = set()
        for name, inputs in self._interlock_inputs.items():
            if self.interlocks.is_tripped(name):
                tripped |= inputs
        for unit, tags in self._hazard_unit_tags.items():
            for ev in self.hazard.update_alarm_state(unit, level2_active=bool(tags & level2),
                                                     tripped=bool(tags & tripped)):
                self._log_hazard_event(ev)

    def _log_hazard_event(self, ev: dict[str, Any]) -> None:
        """A hazard event (a colour change, or a design-basis change at a reload): to the store (chain, upload)
        with the enterprise and major-hazard codes."""
        g = self.cfg.model.gateway
        ev = dict(ev)
        ev["enterprise_code"] = g.enterprise_code
        ev["major_hazard_code"] = self.hazard.major_hazard_code(ev["unit"]) or g.major_hazard_code
        self._log_event(ev)

    def _log_event(self, rec: dict[str, Any]) -> None:
        if rec.get("type") in ("interlock", "alarm"):  # a trip, reset, bypass or latch: persist it now
            self.safety_state.poke()
        rec.setdefault("gateway_id", self.cfg.model.gateway.id)
        if self.points:  # the regulator point code of every tag an event names
            if rec.get("tag") in self.points:
                rec.setdefault("point", self.points[rec["tag"]])
            if isinstance(rec.get("inputs"), list):
                rec["inputs"] = [dict(i, point=self.points[i["tag"]]) if isinstance(i, dict) and i.get("tag")
                                 in self.points else i for i in rec["inputs"]]
        self.store.put_event(rec)
        log.info("event %s", json.dumps(rec, sort_keys=True, default=str))

    def _reading_record(self, r: Reading) -> dict[str, Any]:
        rec = r.to_record()
        point = self.points.get(r.tag)
        if point:
            rec["point"] = point
        return rec

    async def _write_output(self, tag: str, value: Any) -> Reading:
        dev = self.device_of.get(tag)
        if dev is None:
            raise WriteError(f"output {tag}: no such tag on any device")
        return await dev.write(tag, value)

    def _record_output_event(self, ev: dict[str, Any]) -> None:
        ev = dict(ev)
        ev.setdefault("type", "output")
        self._log_event(ev)
        if ev["type"] in ("output_fault", "output_confirmed"):  # an unconfirmed write is an alarm (docs/design.md, Fail safe)
            self._set_output_fault(ev["tag"], ev["type"] == "output_fault", ev.get("error"))

    def _set_output_fault(self, tag: str, fault: bool, reason: str | None) -> None:
        for e in self.alarms.set_output_fault(tag, fault, reason):
            self._log_event(e.to_record())

    def _safety_problem(self) -> str | None:
        """Why the safety path cannot be vouched for (one line), or None when it can: the safety step has
        not run within SAFETY_ALIVE_S, or a poll loop feeding an interlock input has not delivered a read
        (good or bad) within its fresh window (fresh_windows; the ``poll:<device>`` beats of self.health,
        refreshed when watch_gateway (re)registers them at start and after a reload). A device that does
        not answer still delivers (BAD readings, which the interlock votes on); only a hung loop fails."""
        now = time.monotonic()
        if self.last_safety_mono is None or now - self.last_safety_mono >= SAFETY_ALIVE_S:
            return "the safety path is not running"
        for name, window in self._interlock_feeds.items():
            age = self.health.age(f"poll:{name}", now)
            if age is not None and age > window:
                return (f"poll loop of {name} (feeds an interlock) has delivered nothing for {age:.1f} s "
                        f"(window {window:g} s)")
        return None

    def _safety_alive(self) -> bool:
        """True while PLC heartbeats may be written (gateway.heartbeat): see _safety_problem."""
        return self._safety_problem() is None

    async def _start_control(self) -> None:
        c = self.cfg.model.control
        server = ControlServer(self, socket_path(self.cfg), c.mode, c.group, c.max_shelve_minutes * 60.0)
        try:
            await server.start()
        except ControlStartError as exc:  # the safety path runs on without operator actions
            log.error("%s; operator actions (ack, reset, bypass ...) are unavailable", exc)
            return
        self.control = server

    async def _restore_safety_state(self) -> list[Any]:
        """Restore trips, bypasses and latched alarms saved before a restart (gateway.safety_state) into the
        engines: a "restored" event per trip / latch / bypass; returns the TripCommands that drive the
        restored trips' outputs to the safe state again. A state file that cannot be read is logged and
        recorded (event "safety_state_unreadable"), moved aside, and the gateway starts without it (a
        standing demand trips again at the first evaluation). State of interlocks / alarms no longer
        configured is recorded as "safety_state_unmatched" (gateway.reload refuses such a removal)."""
        path = self.safety_state.path
        try:
            saved = await asyncio.to_thread(load_safety_state, path)
        except SafetyStateError as exc:
            log.error("%s; starting without the saved trips and latches", exc)
            aside = path.with_name(f"{path.name}.unreadable-{int(time.time())}")
            try:
                os.replace(path, aside)
            except OSError:
                aside = None
            self._log_event({"type": "gateway", "event": "safety_state_unreadable", "reason": str(exc),
                             "moved_to": str(aside) if aside else None, "ts": rfc3339(time.time())})
            return []
        if saved is None:
            return []
        now = time.monotonic()
        cmds, il_events, il_unknown = self.interlocks.restore_state(saved["interlocks"], now)
        al_events, al_unknown = self.alarms.restore_state(saved["alarms"], now)
        for e in [*al_events, *il_events]:
            self._log_event(e.to_record())
        if il_unknown or al_unknown:
            log.error("safety state of %s not restored: no longer configured",
                      ", ".join([*il_unknown, *al_unknown]))
            self._log_event({"type": "gateway", "event": "safety_state_unmatched", "interlocks": il_unknown,
                             "alarms": al_unknown, "ts": rfc3339(time.time())})
        if il_events or al_events:
            log.warning("restored after a restart: %d interlock trip/bypass, %d latched alarm(s)",
                        len(il_events), len(al_events))
        return cmds

    async def _alarm_ticker(self) -> None:
        while not self._stopping:
            await asyncio.sleep(ALARM_TICK_S)
            now = time.monotonic()
            self._safety_step(self.alarms.tick(now), now)
            step = self.clock.tick()
            if step is not None:
                self._log_event(self.clock.step_event(step))
            self._clock_alarm_step(now)
            self.health.beat("safety")
            if self.hazard is not None and now - self._hazard_tick_mono >= HAZARD_TICK_S:
                self._hazard_tick_mono = now
                for ev in self.hazard.tick(now):  # staleness of levels / temperatures
                    self._log_hazard_event(ev)
                self._sync_hazard_alarm_state()

    def _clock_alarm_step(self, now: float) -> None:
        """Raise the CLOCK system alarm (system.CLOCK, "系统时钟未同步") when the kernel has reported the clock
        unsynchronised for alarm_policy.clock_unsync_grace_s, clear it when it is synchronised again; an
        unknown state (not Linux) raises nothing (gateway.clock.ClockMonitor.sync_alarm). Memory only: the
        kernel is asked at most once per ClockMonitor.sync_check_s."""
        reason = self.clock.sync_alarm(self._clock_grace_s)
        for e in self.alarms.set_system_alarm(SYSTEM_TAG, CLOCK, reason is not None, reason, now_mono=now,
                                              clear_reason=RESYNC_TEXT, priority=CLOCK_ALARM_PRIORITY):
            self._log_event(e.to_record())

    # ---- polling ----

    async def _poll_loop(self, dev: Device, interval_s: float) -> None:
        stats = self.polls[dev.name]
        next_t = time.monotonic()
        while not self._stopping and dev in self.devices:  # a reload replaces self.devices: old loops end
            try:
                readings = await dev.read()
            except Exception as exc:  # a driver bug must not stop the other devices; the tags go bad
                log.error("device %s: read failed: %s", dev.name, exc)
                readings = [Reading.bad(tag, "", f"driver error: {exc}") for tag in dev.tags]
            stats["polls"] += 1
            stats["bad"] += sum(1 for r in readings if not r.usable)
            stats["last_poll"] = time.time()
            self.on_readings(readings)
            self.health.beat(f"poll:{dev.name}")
            next_t += interval_s
            now = time.monotonic()
            if next_t < now:  # overran: skip missed ticks, never burst (C18)
                next_t = now
            await asyncio.sleep(next_t - now)

    # ---- record path ----

    def _build_forwarder(self) -> Any:
        up = self.cfg.model.uplink
        if up is None or self.signer is None:
            return None
        from gateway.batches import Batcher
        from gateway.rejection import load_receiver_key
        from gateway.uplink import Forwarder, HttpsUplink

        ca = self.cfg.resolve(up.ca_file)
        cert = None
        if up.client_cert:
            cert = (str(self.cfg.resolve(up.client_cert)), str(self.cfg.resolve(up.client_key or up.client_cert)))
        from gateway.profiles import get_profile
        if up.transport == "mqtt":
            from gateway.uplink_mqtt import MqttUplink
            uplink: Any = MqttUplink(up.url, self.cfg.model.gateway.id, up.topic, ca_file=str(ca) if ca else None,
                                     client_cert=cert, timeout_s=up.timeout_ms / 1000, keepalive_s=up.keepalive_s,
                                     profile=get_profile(up.profile))
        else:
            uplink = HttpsUplink(up.url, ca_file=str(ca) if ca else None, client_cert=cert,
                                 timeout_s=up.timeout_ms / 1000, profile=get_profile(up.profile))
        batcher = Batcher(self.store, self.signer, self.cfg.model.gateway.id, lambda: self.cfg.config_hash,
                          max_readings=up.batch_max_readings, clock_fn=self.clock.state)
        # only a rejection signed by this key may set a batch aside (gateway.rejection); run checked the file
        rk = load_receiver_key(self.cfg.resolve(up.receiver_key)) if up.receiver_key else None
        return Forwarder(self.store, batcher, uplink, idle_s=up.interval_ms / 1000, receiver_key=rk)

    def _start_forwarder(self) -> None:
        """Start the uploader task (self._fw_task) when there is a forwarder, none runs and the store is open.
        Called at start, after a reload, when a store that could not be opened at start opens, and by the
        record supervisor to restart an uploader that ended or hung (gateway.record_supervisor)."""
        if self.forwarder is None or not self.store.is_open or self._stopping:
            return
        if self._fw_task is not None and not self._fw_task.done():
            return
        self._fw_task = asyncio.create_task(self.forwarder.run(), name="forwarder")

    async def _store_ready(self) -> None:
        """The store has just opened: seed the sample keys from it (Store.last_samples) and record a file
        it set aside (corrupt at open). Samples seen while it was not open are kept (a newer key wins)."""
        stored = await asyncio.to_thread(self.store.last_samples, list(self.device_of))
        self._last_stored = {**stored, **self._last_stored}
        if self.store.moved_aside:
            self._log_event({"type": "store", "event": "corrupt_store_moved_aside", "path": str(self.store.moved_aside),
                             "ts": rfc3339(time.time())})

    async def on_store_opened(self, waited_s: float | None) -> None:
        """The record supervisor opened a store that could not be opened at start: seed, record how long it
        took (event store_opened), start the uploader. What was queued meanwhile is committed by the writer."""
        await self._store_ready()
        self._log_event(opened_event(waited_s))
        log.warning("store %s open after %.0f s; recording resumes with what waited in memory",
                    self.store.path, waited_s or 0.0)
        self._start_forwarder()

    async def _drain(self, bound_s: float) -> None:
        """At shutdown, keep uploading for at most bound_s while anything is unsent (nothing is lost
        either way: what is left goes out after the next start)."""
        deadline = time.monotonic() + bound_s
        while time.monotonic() < deadline:
            if not self.store.is_open:
                return
            try:
                st = await asyncio.to_thread(self.store.stats)
            except (OSError, sqlite3.Error) as exc:   # StoreError (corrupt, closed meanwhile): nothing to drain
                log.warning("shutdown: no upload drain, the store cannot be read: %s", exc)
                return
            if not st.get("readings_unsent") and not st.get("events_unsent") and not st.get("batches_unacked"):
                return
            if self.forwarder.consecutive_failures >= 2:
                return
            await asyncio.sleep(0.1)

    # ---- status ----

    def status(self, store_stats: dict[str, Any] | None = None) -> dict[str, Any]:
        """A JSON-able snapshot for `status` and the demo summary (call on the event loop;
        store_stats comes from Store.stats(), which touches SQLite and so runs in a thread)."""
        now = time.time()
        fw = self.forwarder
        return {
            "gateway_id": self.cfg.model.gateway.id,
            "config_hash": self.cfg.config_hash,
            "time": rfc3339(now),
            "uptime_s": round(now - self.started_at, 1),
            "readings_queued": self.readings_queued,
            # taken = committed to SQLite since the store was opened (Store.stats)
            "readings_taken": None if store_stats is None else store_stats.get("readings_committed"),
            "devices": self.polls,
            "tags": {t: {"value": r.value, "unit": r.unit, "quality": r.quality.value, "reason": r.reason,
                         "age_s": round(now - r.ts, 3), "protocol": self.protocol_of.get(t)}
                     for t, r in self.values.items()},
            "alarms": [a.to_record() for a in self.alarms.active()],
            # GB 16808: the first alarm, then the later alarms in time order, per first-out group
            "alarm_sequence": self.alarms.first_out_sequence(),
            # GB 16808 屏蔽: shelved / suppressed / out-of-service gas points, shown and counted
            "points_disabled": points_disabled(self.alarms),
            "interlocks": self.interlocks.status(),
            "outputs": self.outputs.states(),
            "trips": [t.to_record() for t in self.outputs.trip_records()],
            "hazard": self.hazard.status() if self.hazard is not None else [],
            "store": store_stats,
            # the record path's supervision (gateway.record_supervisor): one line per faulty part, or None
            "record_path": self.record.problems(),
            "uplink": None if fw is None else {"sent": fw.sent, "dead_lettered": fw.dead_lettered,
                                               "consecutive_failures": fw.consecutive_failures,
                                               "last_error": fw.last_error},
        }

    def _write_json(self, snapshot: dict[str, Any]) -> None:
        tmp = self._status_path.with_suffix(".tmp")
        with os.fdopen(create_record_file(tmp), "w", encoding="utf-8") as f:  # 0640 whatever the umask
            f.write(json.dumps(snapshot, default=str, indent=1))
        os.replace(tmp, self._status_path)

    async def write_status(self) -> None:
        """Write state_dir/status.json atomically (SQLite and file I/O off the event loop)."""
        try:
            stats = await asyncio.to_thread(self.store.stats)
        except Exception as exc:  # not open, locked, corrupt: the status is written without its counters
            stats = {"error": str(exc).splitlines()[0] if str(exc) else type(exc).__name__}
        await asyncio.to_thread(self._write_json, self.status(stats))

    async def _status_loop(self) -> None:
        while not self._stopping:
            try:
                await self.write_status()
            except Exception as exc:  # status is diagnostics; never let it stop the gateway
                log.warning("status file: %s", exc)
            await asyncio.sleep(STATUS_EVERY_S)

    # ---- lifecycle ----

    def _start_aux(self) -> list[asyncio.Task]:
        """Tasks of the config-derived writers: PLC heartbeats and annunciators. Each ends at shutdown, or
        when a SIGHUP reload (gateway.reload) has replaced it in self.heartbeats / self.annunciators."""
        out = [asyncio.create_task(h.run(lambda h=h: self._stopping or h not in self.heartbeats),
                                   name=f"heartbeat:{h.device}") for h in self.heartbeats]
        if len(self.annunciators):
            ann = self.annunciators
            out.append(asyncio.create_task(ann.run(lambda: self._stopping or ann is not self.annunciators),
                                           name="annunciators"))
        return out

    async def run(self, stop: asyncio.Event, ready: Any = None) -> None:
        """Poll until ``stop`` is set, then shut down cleanly. ``ready()`` is called once devices are
        configured and the store is open (sd_notify READY=1)."""
        try:
            self.cfg.state_dir.mkdir(parents=True, exist_ok=True)
            await asyncio.to_thread(self.store.open)
        except OSError as exc:  # locked by another process, a full or read-only disk: the safety path runs anyway
            log.error("%s; polling, alarms and interlocks start without it, the store is retried "
                      "(system.STORE alarm)", exc)
            self.record.note_open_failed(exc)
        else:
            await self._store_ready()
        self._log_event({"type": "gateway", "event": "start", "config_hash": self.cfg.config_hash,
                         "ts": rfc3339(time.time())})
        waiver = self.cfg.model.store.waiver_event()   # C16: a waived retention floor, on the record at each start
        if waiver is not None:
            self._log_event({**waiver, "ts": rfc3339(time.time())})
        restore_cmds = await self._restore_safety_state()  # before the first evaluate (no poll loop yet)
        for dev in self.devices:
            await dev.start()
        if restore_cmds:  # a restored trip: its outputs to the safe state again, confirmed by read-back
            self.outputs.apply(restore_cmds)
        self.forwarder = self._build_forwarder()  # started once the store is open (_start_forwarder)
        intervals = {d.name: d.poll_interval_ms / 1000 for d in self.cfg.model.devices}
        self._poll_tasks = [asyncio.create_task(self._poll_loop(dev, intervals[dev.name]), name=f"poll:{dev.name}")
                            for dev in self.devices]
        tasks = [asyncio.create_task(self._alarm_ticker(), name="alarm-tick")]
        tasks.append(asyncio.create_task(self._status_loop(), name="status"))
        tasks.append(asyncio.create_task(self.safety_state.run(lambda: self._stopping), name="safety-state"))
        tasks.append(asyncio.create_task(self.record.run(lambda: self._stopping), name="record-supervisor"))
        self._aux_tasks = self._start_aux()
        await self._start_control()
        self._start_forwarder()
        watch_gateway(self)  # heartbeats for the systemd watchdog (gateway.health)
        if ready:
            ready()
        log.info("gateway %s running: %d devices, %d tags", self.cfg.model.gateway.id, len(self.devices),
                 len(self.device_of))
        await stop.wait()
        # Shutdown: let the current ticks finish, flush, close. Outputs hold their state.
        async with self._reload_lock:  # a SIGHUP reload in progress completes first (gateway.reload)
            self._stopping = True
        if self.control is not None:
            await self.control.close()
        done, pending = await asyncio.wait([*self._poll_tasks, *self._aux_tasks, *tasks], timeout=5.0)
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        try:
            await self.outputs.wait_idle(timeout_s=3.0)
        except (TimeoutError, asyncio.TimeoutError):
            log.warning("outputs still being written at shutdown")
        await self.outputs.close()
        await self.safety_state.write_if_changed()  # the last resets / acks before the stop
        self._log_event({"type": "gateway", "event": "stop", "ts": rfc3339(time.time())})
        await asyncio.to_thread(self.store.flush)
        if self.forwarder is not None:
            if self._fw_task is not None:
                await self._drain(DRAIN_ON_STOP_S)
            self.forwarder.stop()
            try:
                if self._fw_task is not None:
                    await asyncio.wait_for(self._fw_task, 5.0)
            except (TimeoutError, asyncio.TimeoutError):
                self._fw_task.cancel()
            aclose = getattr(self.forwarder.uplink, "aclose", None)
            if aclose:
                await aclose()
        for dev in self.devices:
            await dev.close()
        await self.links.close_all()
        await asyncio.to_thread(self.store.flush)
        try:
            await self.write_status()
        except OSError:
            pass
        await asyncio.to_thread(self.store.close)
