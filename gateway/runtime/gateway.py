"""The Gateway: the one object that owns the running parts, built from the config.

Two paths, never coupled (docs/design.md):

* SAFETY PATH, in the poll tick and from memory: a device's readings go to the
  alarm engine, the interlock engine votes, and the output manager starts
  confirmed writes as tasks. Nothing here waits on SQLite, the disk or the
  uplink: put_reading/put_event only enqueue (gateway.record.store), and so does the
  log (the daemon's logging, gateway.ops.logutil.setup_logging, puts each line into
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
import json
import logging
import os
import sqlite3
import time
from typing import Any

from drivers.base import Device
from gateway.safety.alarms import CLOCK, SYSTEM_TAG
from gateway.runtime.build import CLOCK_ALARM_PRIORITY, Plant, build_plant, store_settings
from gateway.runtime.basic_data import record as record_basic_data
from gateway.config import LoadedConfig
from gateway.ops.control import ControlServer, ControlStartError, socket_path
from gateway.filemode import create_record_file
from gateway.runtime.health import Health, watch_gateway
from gateway.model import Reading, WriteError, rfc3339
from gateway.safety.outputs import OutputManager
from gateway.safety.tick import ALARM_TICK_S, SafetyTick
from gateway.safety.validity import points_disabled
from gateway.record.supervisor import RecordSupervisor, opened_event
from gateway.record.clock import RESYNC_TEXT, ClockMonitor
from gateway.safety.safety_state import FILE_NAME as SAFETY_STATE_FILE, SafetyStateError, SafetyStatePersister
from gateway.safety.safety_state import export as export_safety_state, load as load_safety_state
from gateway.record.store import Store

log = logging.getLogger("hazard_gateway")

STATUS_EVERY_S = 1.0        # the status snapshot (``last_status``) is taken this often; status.json at most this often
STATUS_KEEPALIVE_S = 10.0   # status.json is rewritten at least this often while nothing changes (its ``time`` moves)
STORE_STATS_BUDGET = 0.005  # share of one core the status may spend in Store.stats (it counts rows: grows with the store)

#: snapshot fields that move with the clock or count progress alone; a change of them only is not a change of the
#: status (section -> keys; "" is the top level; each tag, device and heartbeat entry of its section)
STATUS_PROGRESS_KEYS = {"": frozenset({"time", "uptime_s", "readings_queued", "readings_taken"}),
                        "tags": frozenset({"age_s"}), "devices": frozenset({"polls", "bad", "last_poll"}),
                        "heartbeats": frozenset({"value", "beats", "age_s"})}


def _status_bytes(snap: dict[str, Any]) -> bytes:
    """The snapshot as compact UTF-8 JSON (what is not JSON by itself as its str()): orjson when it is installed
    and takes the snapshot (it refuses, TypeError, e.g. a dict key that is not a string), else json."""
    try:
        import orjson
    except ImportError:
        orjson = None
    if orjson is not None:
        try:
            return orjson.dumps(snap, default=str)
        except TypeError:
            pass
    return json.dumps(snap, default=str, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def status_change_view(snap: dict[str, Any]) -> dict[str, Any]:
    """What of a status snapshot (Gateway.status) counts as a change for status.json: everything but the fields
    that move with the clock or only count progress (STATUS_PROGRESS_KEYS: time, uptime, readings queued / taken,
    each tag's age, each device's poll counters, each heartbeat's counter and age). A tag's value, quality or
    reason, an alarm, an interlock, an output, a link state, the store's counters and faults, the uplink's
    counters: each is a change. Pure; returns a new dict (the snapshot is not modified)."""
    top = STATUS_PROGRESS_KEYS[""]
    out: dict[str, Any] = {k: v for k, v in snap.items() if k not in top and k not in STATUS_PROGRESS_KEYS}
    for section in ("tags", "devices"):
        skip = STATUS_PROGRESS_KEYS[section]
        out[section] = {name: {k: v for k, v in d.items() if k not in skip} if isinstance(d, dict) else d
                        for name, d in (snap.get(section) or {}).items()}
    skip = STATUS_PROGRESS_KEYS["heartbeats"]
    out["heartbeats"] = [{k: v for k, v in h.items() if k not in skip} if isinstance(h, dict) else h
                         for h in snap.get("heartbeats") or []]
    return out
DRAIN_ON_STOP_S = 5.0  # bound of the final upload at SIGTERM
FORWARDER_STOP_S = 5.0  # bound of stopping the forwarder (its task, then its uplink), at SIGTERM and at a reload
OUTPUT_RETRY_S = 5.0  # an output write still unconfirmed after its attempts is retried this often (docs/design.md, Fail safe)
SAFETY_ALIVE_S = 2.0  # heartbeats stop when the safety step has not run for this long


# --- the running gateway ----------------------------------------------------------

#: the attributes a Gateway holds besides its ``plant``: the live parts that a SIGHUP reload keeps (the
#: Gateway object is never replaced; a reload swaps ``plant`` only, gateway.runtime.reload). Whatever is derived
#: from the config belongs in the Plant (gateway.runtime.build), not here; tests/runtime/test_signals.py checks that every
#: attribute of a Gateway is ``plant`` or one of these.
LIVE = frozenset({"store", "outputs", "tick", "_last_stored", "readings_queued", "forwarder", "started_at",
                  "_stopping", "health", "_poll_tasks", "_ticker_task", "uploader_task", "_aux_tasks", "_reload_lock",
                  "clock", "control", "safety_state", "record", "last_status"})


def _from_plant(name: str) -> property:
    return property(lambda self: getattr(self.plant, name),
                    doc=f"``self.plant.{name}`` (gateway.runtime.build.Plant; read-only: a reload swaps the whole plant)")


class Gateway:
    """Owns devices, the safety path (alarms, interlocks, outputs) and the record path (store, forwarder).

    cfg: a validated config. signer: gateway.chain.signing.Signer for batches (None: no uplink).
    Build, then ``await run(stop_event)``; run() returns after a clean shutdown (current
    tick finished, store flushed, devices closed; outputs are left as they are: hold).

    ``plant`` (gateway.runtime.build.Plant) holds everything derived from the config; a SIGHUP reload
    (gateway.runtime.reload) replaces it in one assignment. The other attributes (LIVE) are the live parts
    kept across a reload. ``cfg``, ``devices``, ``alarms``, ``interlocks`` ... read the current plant.
    """

    cfg = _from_plant("cfg")
    signer = _from_plant("signer")
    links = _from_plant("links")
    devices = _from_plant("devices")
    device_of = _from_plant("device_of")
    protocol_of = _from_plant("protocol_of")
    alarms = _from_plant("alarms")
    interlocks = _from_plant("interlocks")
    hazard = _from_plant("hazard")
    points = _from_plant("points")
    polls = _from_plant("polls")
    report = _from_plant("report")
    heartbeats = _from_plant("heartbeats")
    annunciators = _from_plant("annunciators")

    def __init__(self, cfg: LoadedConfig, signer: Any = None) -> None:
        self.plant: Plant = self.plant_for(cfg, signer)
        self.outputs = OutputManager(self._write_output, on_event=self._record_output_event,
                                     retry_after_fault_s=OUTPUT_RETRY_S)
        self.store = Store(cfg.store_path, busy_timeout_ms=cfg.model.store.busy_timeout_ms,
                           on_full=cfg.model.store.on_full, **store_settings(cfg))
        self.tick = SafetyTick(lambda: self.plant, self.outputs, self.log_event)  # the safety step, in memory
        self._last_stored: dict[str, tuple] = {}
        self.clock = ClockMonitor()                      # wall-clock steps (C18), clock state per batch
        # readings handed to the store's queue (put_reading accepted them); a reading counts as taken only
        # once committed (docs/design.md "Two paths"): that figure is Store.stats()["readings_committed"]
        self.readings_queued = 0
        self.forwarder: Any = None
        self.started_at = time.time()
        self._stopping = False
        self.last_status: dict[str, Any] | None = None   # the latest snapshot written to status.json
        self.health = Health()  # progress of the poll loops and the safety path (systemd watchdog)
        self.record = RecordSupervisor(self)  # the store writer and the uploader, supervised in process
        # tasks of the plant (each ends when self.plant is no longer the plant it runs for) and the uploader
        self._poll_tasks: list[asyncio.Task] = []
        self._ticker_task: asyncio.Task | None = None
        self._aux_tasks: list[asyncio.Task] = []
        self.uploader_task: asyncio.Task | None = None
        self._reload_lock = asyncio.Lock()  # SIGHUP reload (gateway.runtime.reload) vs shutdown
        self.control: ControlServer | None = None  # the operator socket (gateway.ops.control)
        # trips, bypasses and latched alarms survive a restart (gateway.safety.safety_state); written off the loop
        self.safety_state = SafetyStatePersister(
            cfg.state_dir / SAFETY_STATE_FILE, gateway_id=cfg.model.gateway.id,
            export=lambda: export_safety_state(self.plant.alarms, self.plant.interlocks, self.tick.hidden))

    def plant_for(self, cfg: LoadedConfig, signer: Any = None) -> Plant:
        """gateway.runtime.build.build_plant for ``cfg``, its writers reporting to this gateway (annunciator writes,
        output faults and events; the heartbeats' "is the safety path alive"). Constructors only; raises
        what build_plant raises (ValueError, KeyError, OSError)."""
        return build_plant(cfg, signer, write_output=self._write_output, set_output_fault=self._set_output_fault,
                           log_event=self.log_event, safety_alive=self._safety_alive,
                           safety_problem=self._safety_problem)

    # ---- safety path ----

    def on_readings(self, readings: list[Reading]) -> None:
        """The poll tick: the safety step first (gateway.safety.tick: valid ranges, alarms, interlock voting,
        output commands), then the record path, which only enqueues."""
        plant = self.plant
        now = time.monotonic()
        readings, events = self.tick.on_readings(readings, now)
        for r in readings:
            # A subscription-fed tag (OPC UA) is re-delivered unchanged between notifications, after a
            # reconnect and after a restart: the record path stores each sample stamped by the device or
            # server once, keyed by its sample time, quality and value (the last such key per tag, seeded
            # from the store at start, Store.last_samples). Locally stamped readings are always new samples.
            rec = self._reading_record(r)
            if rec["ts_source"] != "local":
                value = rec["value"]   # compared by == (no JSON): its type too, so 1, 1.0 and True stay apart
                key = (rec["ts"], rec["quality"], type(value), value)
                if self._last_stored.get(r.tag) == key:
                    continue
                self._last_stored[r.tag] = key
            # report by exception (per-tag config); a reading that moved an alarm is always kept
            if not plant.report.keep(r, now, force=any(getattr(e, "tag", None) == r.tag for e in events)):
                continue
            if self.store.put_reading(rec):   # False: dropped, counted by the store and recorded as a gap
                self.readings_queued += 1

    @property
    def values(self) -> dict[str, Reading]:
        """The last reading of each tag, as the safety step judged it (SafetyTick.values)."""
        return self.tick.values

    def log_event(self, rec: dict[str, Any]) -> None:
        """Record one event (a dict: ``type`` and its fields; gateway_id and point codes are added) on
        both paths: the log line at once, the store queue (never blocks), and for an alarm, interlock or
        hidden-danger event a poke of the safety-state persister and a note to the hidden-danger tracker (who
        and why of a bypass or shelve, gateway.safety.hidden_danger). The one way every part (control, reload,
        the record supervisor) puts an event on the record."""
        if rec.get("type") in ("interlock", "alarm", "hidden_danger"):  # a trip, bypass, latch, record: persist now
            self.safety_state.poke()
            self.tick.hidden.note(rec)  # who, why and when of a bypass / shelve (gateway.safety.hidden_danger)
        plant = self.plant
        rec.setdefault("gateway_id", plant.cfg.model.gateway.id)
        points = plant.points
        if points:  # the regulator point code of every tag an event names
            if rec.get("tag") in points:
                rec.setdefault("point", points[rec["tag"]])
            if isinstance(rec.get("inputs"), list):
                rec["inputs"] = [dict(i, point=points[i["tag"]]) if isinstance(i, dict) and i.get("tag")
                                 in points else i for i in rec["inputs"]]
        self.store.put_event(rec)
        if rec.get("type") == "basic_data":   # the whole register rides in the chain; one short line in the log
            log.info("event basic_data: %d installations, %d vessels, %d points, config %s",
                     len(rec.get("installations", [])), len(rec.get("vessels", [])), len(rec.get("points", [])),
                     str(rec.get("config_hash", ""))[:12])
            return
        # ensure_ascii=False: the Chinese reason texts stay readable in journalctl (not \uXXXX escapes)
        log.info("event %s", json.dumps(rec, sort_keys=True, default=str, ensure_ascii=False))

    #: [epoch s, its RFC 3339 text] of the last reading recorded (a poll stamps many readings alike); a pure
    #: memo on the class, changed in place (no attribute of its own: LIVE)
    _ts_text: list[tuple[float | None, str]] = [(None, "")]

    def _reading_record(self, r: Reading) -> dict[str, Any]:
        """``r.to_record()`` (gateway.model.Reading), plus the tag's regulator point code; the RFC 3339 text of
        a timestamp equal to the previous reading's is reused."""
        ts = r.ts
        last = self._ts_text[0]
        if last[0] != ts:
            last = self._ts_text[0] = (ts, rfc3339(ts))
        rec = {"tag": r.tag, "value": r.value, "unit": r.unit, "quality": r.quality.value, "reason": r.reason,
               "ts": last[1], "ts_source": r.ts_source.value}
        point = self.plant.points.get(r.tag)
        if point:
            rec["point"] = point
        return rec

    async def _write_output(self, tag: str, value: Any) -> Reading:
        dev = self.plant.device_of.get(tag)
        if dev is None:
            raise WriteError(f"output {tag}: no such tag on any device")
        return await dev.write(tag, value)

    def _record_output_event(self, ev: dict[str, Any]) -> None:
        ev = dict(ev)
        ev.setdefault("type", "output")
        self.log_event(ev)
        if ev["type"] in ("output_fault", "output_confirmed"):  # an unconfirmed write is an alarm (docs/design.md, Fail safe)
            self._set_output_fault(ev["tag"], ev["type"] == "output_fault", ev.get("error"))

    def _set_output_fault(self, tag: str, fault: bool, reason: str | None) -> None:
        for e in self.plant.alarms.set_output_fault(tag, fault, reason):
            self.log_event(e.to_record())

    def _safety_problem(self) -> str | None:
        """Why the safety path cannot be vouched for (one line), or None when it can: the safety step has
        not run within SAFETY_ALIVE_S, or a poll loop feeding an interlock input has not delivered a read
        (good or bad) within its fresh window (fresh_windows; the ``poll:<device>`` beats of self.health,
        refreshed when watch_gateway (re)registers them at start and after a reload). A device that does
        not answer still delivers (BAD readings, which the interlock votes on); only a hung loop fails."""
        now = time.monotonic()
        age = self.tick.age_s(now)
        if age is None or age >= SAFETY_ALIVE_S:
            return "the safety path is not running"
        for name, window in self.plant.interlock_feeds.items():
            age = self.health.age(f"poll:{name}", now)
            if age is not None and age > window:
                return (f"poll loop of {name} (feeds an interlock) has delivered nothing for {age:.1f} s "
                        f"(window {window:g} s)")
        return None

    def _safety_alive(self) -> bool:
        """True while PLC heartbeats may be written (gateway.safety.heartbeat): see _safety_problem."""
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
        """Restore trips, bypasses and latched alarms saved before a restart (gateway.safety.safety_state) into the
        engines: a "restored" event per trip / latch / bypass; returns the TripCommands that drive the
        restored trips' outputs to the safe state again. A state file that cannot be read is logged and
        recorded (event "safety_state_unreadable"), moved aside, and the gateway starts without it (a
        standing demand trips again at the first evaluation). State of interlocks / alarms no longer
        configured is recorded as "safety_state_unmatched" (gateway.runtime.reload refuses such a removal)."""
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
            self.log_event({"type": "gateway", "event": "safety_state_unreadable", "reason": str(exc),
                             "moved_to": str(aside) if aside else None, "ts": rfc3339(time.time())})
            return []
        if saved is None:
            return []
        # open and pending hidden-danger records: the first step closes what ended while the gateway was down
        self.tick.hidden.restore(saved.get("hidden_dangers"))
        now = time.monotonic()
        plant = self.plant
        cmds, il_events, il_unknown = plant.interlocks.restore_state(saved["interlocks"], now)
        al_events, al_unknown = plant.alarms.restore_state(saved["alarms"], now)
        for e in [*al_events, *il_events]:
            self.log_event(e.to_record())
        if il_unknown or al_unknown:
            log.error("safety state of %s not restored: no longer configured",
                      ", ".join([*il_unknown, *al_unknown]))
            self.log_event({"type": "gateway", "event": "safety_state_unmatched", "interlocks": il_unknown,
                             "alarms": al_unknown, "ts": rfc3339(time.time())})
        if il_events or al_events:
            log.warning("restored after a restart: %d interlock trip/bypass, %d latched alarm(s)",
                        len(il_events), len(al_events))
        return cmds

    def _start_ticker(self, plant: Plant, first_s: float = ALARM_TICK_S) -> None:
        """Start the safety ticker of ``plant`` (self._ticker_task); its first tick after ``first_s``."""
        self._ticker_task = asyncio.create_task(self._alarm_ticker(plant, first_s), name="alarm-tick")

    async def _alarm_ticker(self, plant: Plant, first_s: float = ALARM_TICK_S) -> None:
        """Every ALARM_TICK_S: the time-based safety parts of ``plant`` (AlarmEngine.tick, then the safety step:
        on/off delays, stale inputs, re-alarm, shelve and bypass expiry), clock steps, system.CLOCK, the
        "safety" beat, hazard staleness. Ends at shutdown, or without another tick once a reload has made
        another plant the gateway's (its ticker takes over)."""
        delay = first_s
        while not self._stopping:
            await asyncio.sleep(delay)
            delay = ALARM_TICK_S
            if self.plant is not plant:
                return
            now = time.monotonic()
            self.tick.on_timer(plant, now)
            step = self.clock.tick()
            if step is not None:
                self.log_event(self.clock.step_event(step))
            self._clock_alarm_step(now)
            self.health.beat("safety")

    def _clock_alarm_step(self, now: float) -> None:
        """Raise the CLOCK system alarm (system.CLOCK, "系统时钟未同步") when the kernel has reported the clock
        unsynchronised for alarm_policy.clock_unsync_grace_s, clear it when it is synchronised again; an
        unknown state (not Linux) raises nothing (gateway.record.clock.ClockMonitor.sync_alarm). Memory only: the
        kernel is asked at most once per ClockMonitor.sync_check_s."""
        reason = self.clock.sync_alarm(self.plant.clock_grace_s)
        for e in self.plant.alarms.set_system_alarm(SYSTEM_TAG, CLOCK, reason is not None, reason, now_mono=now,
                                              clear_reason=RESYNC_TEXT, priority=CLOCK_ALARM_PRIORITY):
            self.log_event(e.to_record())

    # ---- polling ----

    def _start_polling(self, plant: Plant, *, start_devices: bool = False) -> None:
        """One poll task per device of ``plant`` (self._poll_tasks). start_devices: each task first starts
        its device (a reload: a slow device delays only its own loop); else the devices were started."""
        loop = self._start_then_poll if start_devices else self._poll_loop
        self._poll_tasks = [asyncio.create_task(loop(plant, dev, plant.poll_intervals[dev.name]),
                                                name=f"poll:{dev.name}") for dev in plant.devices]

    async def _start_then_poll(self, plant: Plant, dev: Device, interval_s: float) -> None:
        """A new device's poll loop: start the device (connect; an OPC UA start may wait ~3 x its timeout for
        an unreachable server), then poll."""
        try:
            await dev.start()
        except Exception as exc:  # drivers never raise here by contract; a bug must not stop the other loops
            log.error("SIGHUP: device %s: start failed: %s (its reads retry)", dev.name, exc)
        await self._poll_loop(plant, dev, interval_s)

    async def _poll_loop(self, plant: Plant, dev: Device, interval_s: float) -> None:
        stats = plant.polls[dev.name]
        next_t = time.monotonic()
        while not self._stopping and self.plant is plant:  # a reload replaces self.plant: old loops end
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

    def build_forwarder(self, plant: Plant | None = None) -> Any:
        """The uploader for ``plant`` (default: the running one), not started; None without an uplink.
        Raises ValueError (one line) when its TLS files or the receiver key cannot be loaded."""
        plant = plant or self.plant
        up = plant.cfg.model.uplink
        if up is None or plant.signer is None:
            return None
        from gateway.record.batches import Batcher
        from gateway.chain.rejection import load_receiver_key
        from gateway.record.uplink import Forwarder, HttpsUplink

        ca = plant.cfg.resolve(up.ca_file)
        cert = None
        if up.client_cert:
            cert = (str(plant.cfg.resolve(up.client_cert)), str(plant.cfg.resolve(up.client_key or up.client_cert)))
        from gateway.record.envelopes import get_profile
        if up.transport == "mqtt":
            from gateway.record.uplink_mqtt import MqttUplink
            uplink: Any = MqttUplink(up.url, plant.cfg.model.gateway.id, up.topic, ca_file=str(ca) if ca else None,
                                     client_cert=cert, timeout_s=up.timeout_ms / 1000, keepalive_s=up.keepalive_s,
                                     profile=get_profile(up.profile))
        else:
            uplink = HttpsUplink(up.url, ca_file=str(ca) if ca else None, client_cert=cert,
                                 timeout_s=up.timeout_ms / 1000, profile=get_profile(up.profile))
        batcher = Batcher(self.store, plant.signer, plant.cfg.model.gateway.id, lambda: self.cfg.config_hash,
                          max_readings=up.batch_max_readings, clock_fn=self.clock.state)
        # only a rejection signed by this key may set a batch aside (gateway.chain.rejection); run checked the file
        rk = load_receiver_key(plant.cfg.resolve(up.receiver_key)) if up.receiver_key else None
        return Forwarder(self.store, batcher, uplink, idle_s=up.interval_ms / 1000, receiver_key=rk)

    def start_uploader(self) -> None:
        """Start the uploader task (self.uploader_task) when there is a forwarder, none runs and the store is open.
        Called at start, after a reload, when a store that could not be opened at start opens, and by the
        record supervisor to restart an uploader that ended or hung (gateway.record.supervisor)."""
        if self.forwarder is None or not self.store.is_open or self._stopping:
            return
        if self.uploader_task is not None and not self.uploader_task.done():
            return
        self.uploader_task = asyncio.create_task(self.forwarder.run(), name="forwarder")

    async def _stop_forwarder(self, bound_s: float) -> None:
        """Stop the running forwarder, if any: its task gets ``bound_s`` to end (then it is cancelled), then its
        uplink's connections are closed (bounded too). An unacknowledged batch stays in the store: resent."""
        fw, task = self.forwarder, self.uploader_task
        if fw is None:
            return
        fw.stop()
        if task is not None:
            try:
                await asyncio.wait_for(task, bound_s)
            except (TimeoutError, asyncio.TimeoutError):
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        aclose = getattr(fw.uplink, "aclose", None)
        if aclose:
            try:
                await asyncio.wait_for(aclose(), bound_s)
            except (TimeoutError, asyncio.TimeoutError):
                log.warning("closing the uplink took longer than %.1f s; abandoned", bound_s)
            except Exception as exc:  # closing is best effort: the new uplink (or the exit) does not depend on it
                log.warning("closing the uplink: %s", exc)

    # ---- reload: gateway.runtime.reload drives these steps, in its order (gateway.runtime.ports.ReloadTarget) ----

    @property
    def stopping(self) -> bool:
        """True once shutdown has begun (set under ``reload_lock``)."""
        return self._stopping

    @property
    def reload_lock(self) -> asyncio.Lock:
        """Held by a reload's swap and by shutdown, so they never interleave."""
        return self._reload_lock

    def swap_plant(self, plant: Plant) -> list[asyncio.Task]:
        """Make ``plant`` the running one in one assignment; its safety ticker ticks at once (the time-based
        safety parts never pause). Returns the old plant's tasks (poll loops, heartbeats, annunciators, its
        ticker): each ends by itself once it sees it is no longer the gateway's plant; the caller bounds that."""
        old_ticker = self._ticker_task
        old = [*self._poll_tasks, *self._aux_tasks, *([old_ticker] if old_ticker is not None else [])]
        self.plant = plant
        if old_ticker is not None:
            self._start_ticker(plant, first_s=0.0)
        return old

    def forget_tags(self, keep: Any) -> None:
        """Drop the last value and the last sample key of every tag not in ``keep`` (a container of tag names;
        after a reload, the new plant's ``device_of``)."""
        for d in (self.tick.values, self._last_stored):
            for tag in [t for t in d if t not in keep]:
                del d[tag]

    def start_plant_tasks(self, plant: Plant) -> None:
        """Every device of ``plant`` starts and polls in its own task (a slow device delays only its own loop);
        heartbeats and annunciators start; the watchdog's beats are registered for the new device set."""
        self._start_polling(plant, start_devices=True)
        self._aux_tasks = self._start_aux(plant)
        watch_gateway(self)

    async def replace_forwarder(self, forwarder: Any, bound_s: float) -> None:
        """Stop the running forwarder (bounded by ``bound_s``, see _stop_forwarder), then start ``forwarder``
        (None: no uplink). The old one is fully stopped first, so no seq is built twice."""
        await self._stop_forwarder(bound_s)
        self.forwarder = forwarder
        self.uploader_task = None
        self.start_uploader()

    async def _store_ready(self) -> None:
        """The store has just opened: seed the sample keys from it (Store.last_samples) and record a file
        it set aside (corrupt at open). Samples seen while it was not open are kept (a newer key wins)."""
        stored = await asyncio.to_thread(self.store.last_samples, list(self.plant.device_of))
        self._last_stored = {**stored, **self._last_stored}
        if self.store.moved_aside:
            self.log_event({"type": "store", "event": "corrupt_store_moved_aside", "path": str(self.store.moved_aside),
                             "ts": rfc3339(time.time())})

    async def on_store_opened(self, waited_s: float | None) -> None:
        """The record supervisor opened a store that could not be opened at start: seed, record how long it
        took (event store_opened), start the uploader. What was queued meanwhile is committed by the writer."""
        await self._store_ready()
        self.log_event(opened_event(waited_s))
        log.warning("store %s open after %.0f s; recording resumes with what waited in memory",
                    self.store.path, waited_s or 0.0)
        self.start_uploader()

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
        """The status snapshot (call on the event loop; ``store_stats`` is Store.stats(), which touches SQLite
        and so is taken in a thread by :meth:`snapshot`). A JSON-able dict:

        gateway_id, config_hash, time (RFC 3339), uptime_s, readings_queued, readings_taken (committed since
        the store was opened; None without store counters); devices: name -> poll counters (polls, bad,
        last_poll) with the driver's link state (Device.link_state) and ``tags`` (how many it reads); tags:
        tag -> value, unit, quality, reason, age_s, protocol, device; alarms (active, priority order),
        alarms_hidden (shelved / suppressed / out of service), alarm_sequence (GB 16808 first-out and later
        alarms in time order), points_disabled (屏蔽), hidden_dangers (the open hidden-danger records,
        gateway.safety.hidden_danger.HiddenDangerTracker.status), interlocks, outputs, trips, heartbeats, annunciators,
        hazard (per unit: design grade and live inventory), store (Store.stats, or {"error": ...}),
        record_path (the supervisor's one line per faulty part), uplink (forwarder counters, or None).
        """
        now = time.time()
        fw = self.forwarder
        plant = self.plant
        alarms = plant.alarms
        return {
            "gateway_id": plant.cfg.model.gateway.id,
            "config_hash": plant.cfg.config_hash,
            "time": rfc3339(now),
            "uptime_s": round(now - self.started_at, 1),
            "readings_queued": self.readings_queued,
            # taken = committed to SQLite since the store was opened (Store.stats)
            "readings_taken": None if store_stats is None else store_stats.get("readings_committed"),
            # copies, never the live counters; the driver says what its link is (drivers.base.Device.link_state)
            "devices": {dev.name: {**plant.polls.get(dev.name, {}), **dev.link_state(), "tags": len(dev.tags)}
                        for dev in plant.devices},
            "tags": {t: {"value": r.value, "unit": r.unit, "quality": r.quality.value, "reason": r.reason,
                         "age_s": round(now - r.ts, 3), "protocol": plant.protocol_of.get(t),
                         "device": getattr(plant.device_of.get(t), "name", None),
                         "precision": plant.precision.get(t)}
                     for t, r in self.values.items()},
            "alarms": [a.to_record() for a in alarms.active()],
            "alarms_hidden": [a.to_record() for a in alarms.active(include_hidden=True) if a.state != a.base_state],
            # GB 16808: the first alarm, then the later alarms in time order, per first-out group
            "alarm_sequence": alarms.first_out_sequence(),
            # GB 16808 屏蔽: shelved / suppressed / out-of-service gas points, shown and counted
            "points_disabled": points_disabled(alarms),
            # open hidden-danger records (隐患): protections defeated longer than hidden_danger.after_minutes
            "hidden_dangers": self.tick.hidden.status(),
            "interlocks": plant.interlocks.status(),
            "outputs": self.outputs.states(),
            "trips": [t.to_record() for t in self.outputs.trip_records()],
            "heartbeats": [h.status() for h in plant.heartbeats],
            "annunciators": plant.annunciators.status(),
            "hazard": plant.hazard.status() if plant.hazard is not None else [],
            "store": store_stats,
            # the record path's supervision (gateway.record.supervisor): one line per faulty part, or None
            "record_path": self.record.problems(),
            "uplink": None if fw is None else {"sent": fw.sent, "dead_lettered": fw.dead_lettered,
                                               "consecutive_failures": fw.consecutive_failures,
                                               "last_error": fw.last_error},
        }

    async def snapshot(self, stats_timeout_s: float | None = None) -> dict[str, Any]:
        """:meth:`status` with the store counters, taken from SQLite in a thread; with ``stats_timeout_s`` a
        store that does not answer in time reads {"error": "store busy ..."} instead of delaying the answer.
        A store that is not open, locked or corrupt reads {"error": one line}. The one status snapshot of
        `status`, status.json, the STATUS line and metrics (gateway.runtime.ports)."""
        stats, _cpu = await self._store_stats(stats_timeout_s)
        return self.status(stats)

    async def _store_stats(self, timeout_s: float | None = None) -> tuple[dict[str, Any], float]:
        """(Store.stats() or {"error": one line}, CPU seconds the query took in its thread (time.thread_time))."""
        def timed() -> tuple[dict[str, Any], float]:
            t0 = time.thread_time()
            return self.store.stats(), time.thread_time() - t0

        try:
            return await asyncio.wait_for(asyncio.to_thread(timed), timeout_s)
        except (asyncio.TimeoutError, TimeoutError):
            return {"error": f"store busy (no answer within {timeout_s:g} s)"}, 0.0
        except Exception as exc:  # not open, locked, corrupt: the status goes on without its counters
            return {"error": str(exc).splitlines()[0] if str(exc) else type(exc).__name__}, 0.0

    def _store_activity(self) -> tuple:
        """What moves whenever a Store.stats() figure can have moved, read from memory (no SQLite): the store's
        open / fault state, its records enqueued and committed (Store.progress: a commit also runs retention),
        the uploader's acks, dead letters and failures (a batch acknowledged or set aside). Equal twice: the
        counters of the first stats() still hold, except a batch built and not yet answered
        (``batches_unacked``), which the answer or the keep-alive refresh brings in."""
        st, fw = self.store, self.forwarder
        progress = getattr(st, "progress", None)
        return (st.is_open, st.writer_error, getattr(st, "corrupt", None), getattr(st, "full_reason", None),
                progress() if progress is not None else time.monotonic(),   # no progress(): always moved
                None if fw is None else (fw.sent, fw.dead_lettered, fw.consecutive_failures, fw.last_error))

    def _write_json(self, snapshot: dict[str, Any]) -> None:
        """state_dir/status.json, atomically (a temp file 0640, then rename), compact UTF-8 JSON: orjson when
        installed (a tenth of json's time at 500 tags), else json's C encoder (an ``indent`` makes json fall back
        to its pure-Python encoder, 3x slower; `hazard-gateway status` is the view for people)."""
        path = self.plant.status_path
        tmp = path.with_suffix(".tmp")
        with os.fdopen(create_record_file(tmp), "wb") as f:  # 0640 whatever the umask
            f.write(_status_bytes(snapshot))
        os.replace(tmp, path)

    async def write_status(self) -> None:
        """Take the status snapshot with fresh store counters, keep it as ``last_status`` and write
        state_dir/status.json atomically (SQLite and file I/O off the event loop), whatever changed. Used at
        shutdown (the last word) and by tests; the running daemon's loop is :meth:`_status_loop`."""
        snap = await self.snapshot()
        self.last_status = snap
        await asyncio.to_thread(self._write_json, snap)

    async def _status_loop(self) -> None:
        """Every STATUS_EVERY_S: a fresh status snapshot in ``last_status`` (the STATUS line, metrics and the page
        read it; the ``status`` command takes its own), and status.json written when it changed
        (:func:`status_change_view`: not for the clock, the ages and the progress counters alone) or, unchanged,
        every STATUS_KEEPALIVE_S, so ``time`` in the file shows the daemon alive and its ages and counters are
        at most that old (a tag's age when read is ``age_s`` + now - ``time``).

        The store counters (Store.stats, SQLite queries that count rows, so their cost grows with the store)
        are taken again only when something that moves them moved (:meth:`_store_activity`) or for the
        keep-alive, and never more often than keeps their CPU time under STORE_STATS_BUDGET of one core."""
        written_view: dict[str, Any] | None = None
        written_at = stats_at = -float("inf")
        stats: dict[str, Any] | None = None
        stats_key: tuple | None = None
        stats_next = 0.0
        while not self._stopping:
            try:
                now = time.monotonic()
                key = self._store_activity()
                if stats is None or (now >= stats_next and (key != stats_key or now - stats_at >= STATUS_KEEPALIVE_S)):
                    stats, cpu_s = await self._store_stats()
                    stats_key, stats_at = key, now
                    stats_next = now + cpu_s / STORE_STATS_BUDGET
                snap = self.status(dict(stats))
                self.last_status = snap
                view = status_change_view(snap)
                if view != written_view or now - written_at >= STATUS_KEEPALIVE_S:
                    await asyncio.to_thread(self._write_json, snap)
                    written_view, written_at = view, now
            except Exception as exc:  # status is diagnostics; never let it stop the gateway
                log.warning("status file: %s", exc)
            await asyncio.sleep(STATUS_EVERY_S)

    # ---- lifecycle ----

    def _start_aux(self, plant: Plant) -> list[asyncio.Task]:
        """Tasks of the plant's config-derived writers: PLC heartbeats and annunciators. Each ends at shutdown,
        or when a SIGHUP reload (gateway.runtime.reload) has made another plant the gateway's."""
        def stopping() -> bool:
            return self._stopping or self.plant is not plant
        out = [asyncio.create_task(h.run(stopping), name=f"heartbeat:{h.device}") for h in plant.heartbeats]
        if len(plant.annunciators):
            out.append(asyncio.create_task(plant.annunciators.run(stopping), name="annunciators"))
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
        self.log_event({"type": "gateway", "event": "start", "config_hash": self.cfg.config_hash,
                         "ts": rfc3339(time.time())})
        waiver = self.cfg.model.store.waiver_event()   # C16: a waived retention floor, on the record at each start
        if waiver is not None:
            self.log_event({**waiver, "ts": rfc3339(time.time())})
        record_basic_data(self.plant, self.log_event)   # the regulator's basic data of this config, in the chain
        restore_cmds = await self._restore_safety_state()  # before the first evaluate (no poll loop yet)
        for dev in self.devices:
            await dev.start()
        if restore_cmds:  # a restored trip: its outputs to the safe state again, confirmed by read-back
            self.outputs.apply(restore_cmds)
        self.forwarder = self.build_forwarder()  # started once the store is open (start_uploader)
        plant = self.plant
        self._start_polling(plant)
        self._start_ticker(plant)
        tasks = [asyncio.create_task(self._status_loop(), name="status")]
        tasks.append(asyncio.create_task(self.safety_state.run(lambda: self._stopping), name="safety-state"))
        tasks.append(asyncio.create_task(self.record.run(lambda: self._stopping), name="record-supervisor"))
        self._aux_tasks = self._start_aux(plant)
        await self._start_control()
        self.start_uploader()
        watch_gateway(self)  # heartbeats for the systemd watchdog (gateway.runtime.health)
        if ready:
            ready()
        log.info("gateway %s running: %d devices, %d tags", self.cfg.model.gateway.id, len(self.devices),
                 len(self.device_of))
        await stop.wait()
        # Shutdown: let the current ticks finish, flush, close. Outputs hold their state.
        async with self._reload_lock:  # a SIGHUP reload in progress completes first (gateway.runtime.reload)
            self._stopping = True
        if self.control is not None:
            await self.control.close()
        plant_tasks = [*self._poll_tasks, *self._aux_tasks, *([self._ticker_task] if self._ticker_task else [])]
        done, pending = await asyncio.wait([*plant_tasks, *tasks], timeout=5.0)
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        try:
            await self.outputs.wait_idle(timeout_s=3.0)
        except (TimeoutError, asyncio.TimeoutError):
            log.warning("outputs still being written at shutdown")
        await self.outputs.close()
        await self.safety_state.write_if_changed()  # the last resets / acks before the stop
        self.log_event({"type": "gateway", "event": "stop", "ts": rfc3339(time.time())})
        await asyncio.to_thread(self.store.flush)
        if self.forwarder is not None and self.uploader_task is not None:
            await self._drain(DRAIN_ON_STOP_S)
        await self._stop_forwarder(FORWARDER_STOP_S)
        for dev in self.devices:
            await dev.close()
        await self.links.close_all()
        await asyncio.to_thread(self.store.flush)
        try:
            await self.write_status()
        except OSError:
            pass
        await asyncio.to_thread(self.store.close)
