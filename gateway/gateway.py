"""The Gateway: the one object that owns the running parts, built from the config.

Two paths, never coupled (DESIGN.md):

* SAFETY PATH, in the poll tick and from memory: a device's readings go to the
  alarm engine, the interlock engine votes, and the output manager starts
  confirmed writes as tasks. Nothing here waits on SQLite, the disk or the
  uplink (put_reading/put_event only enqueue).
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
import time
from pathlib import Path
from typing import Any

from drivers.base import Device
from drivers.codec import Scaling
from drivers.modbus import ModbusDevice, ModbusLinks, ModbusPoint
from drivers.opcua import OpcUaDevice, OpcUaPoint
from gateway.alarms import AlarmEngine, LimitSpec, TagAlarmConfig, gas_preset
from gateway.config import (AlarmsCfg, LimitCfg, LoadedConfig, ModbusRtuDevice, ModbusTcpDevice, OpcUaDeviceCfg)
from gateway.interlocks import InterlockEngine, InterlockInput, InterlockSpec, OutputAction
from gateway.model import Reading, WriteError, rfc3339
from gateway.outputs import OutputManager
from gateway.store import Store

log = logging.getLogger("hazard_gateway")

ALARM_TICK_S = 0.1
STATUS_EVERY_S = 1.0
DRAIN_ON_STOP_S = 5.0  # bound of the final upload at SIGTERM


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
                link = links.rtu(port, d.baudrate, d.parity, d.stopbits, d.bytesize, timeout_s)
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


def _limit(kind: str, v: float | LimitCfg, base: LimitSpec | None) -> LimitSpec:
    """A configured limit over a preset default: the config's fields win, the preset fills the rest."""
    if isinstance(v, LimitCfg):
        fields: dict[str, Any] = {"setpoint": v.setpoint, "deadband": v.deadband, "on_delay_s": v.on_delay_s,
                                  "off_delay_s": v.off_delay_s}
        if v.priority is not None:
            fields["priority"] = v.priority
        if v.latching is not None:
            fields["latching"] = v.latching
    else:
        fields = {"setpoint": float(v)}
    if base is not None:
        merged = {"priority": base.priority, "latching": base.latching, "level": base.level,
                  "deadband": base.deadband, "on_delay_s": base.on_delay_s}
        merged.update(fields)
        return LimitSpec(kind, **merged)
    return LimitSpec(kind, priority={"HH": 1, "LL": 1, "H": 3, "L": 3}.get(kind, 3), **fields)


def alarm_configs(cfg: LoadedConfig) -> list[TagAlarmConfig]:
    """TagAlarmConfig per tag that has alarms: (GB/T 50493-2019 5.5.2 presets, then explicit limits);
    every other input tag still gets its QUALITY alarm."""
    out = []
    for d in cfg.model.devices:
        if not d.enabled:
            continue
        for t in d.tags:
            a: AlarmsCfg | None = t.alarms
            if a is None:
                if not t.writable:
                    out.append(TagAlarmConfig(tag=t.name))
                continue
            preset = {s.kind: s for s in gas_preset(a.gas, a.oel)} if a.gas and (a.gas != "toxic" or a.oel) else {}
            limits = dict(preset)
            for kind in ("HH", "H", "L", "LL"):
                v = getattr(a, kind)
                if v is not None:
                    limits[kind] = _limit(kind, v, preset.get(kind))
            out.append(TagAlarmConfig(tag=t.name, limits=list(limits.values()), gas=a.gas,
                                      stale_after_s=a.stale_after_s, group=a.group or ("gas" if a.gas else None),
                                      oel=a.oel))
    return out


def interlock_specs(cfg: LoadedConfig) -> list[InterlockSpec]:
    return [InterlockSpec(name=i.name, inputs=[InterlockInput(x.tag, x.condition) for x in i.inputs], vote=i.vote,
                          on_fault=i.on_fault, actions=[OutputAction(a.output, a.value) for a in i.actions],
                          latch=i.latch)
            for i in cfg.model.interlocks]


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
        self.alarms = AlarmEngine(alarm_configs(cfg))
        self.interlocks = InterlockEngine(interlock_specs(cfg))
        self.outputs = OutputManager(self._write_output, on_event=self._record_output_event)
        self.store = Store(cfg.store_path, commit_interval_s=cfg.model.store.commit_interval_ms / 1000,
                           max_bytes=cfg.model.store.max_bytes,
                           retention_floor_s=cfg.model.store.retention_days * 86400)
        self.values: dict[str, Reading] = {}
        self._last_stored: dict[str, tuple] = {}
        self.polls: dict[str, dict[str, Any]] = {d.name: {"protocol": d.protocol, "polls": 0, "bad": 0,
                                                          "last_poll": None} for d in self.devices}
        self.readings_taken = 0
        self.forwarder: Any = None
        self.started_at = time.time()
        self._stopping = False
        self._status_path = cfg.state_dir / "status.json"

    # ---- safety path ----

    def on_readings(self, readings: list[Reading]) -> None:
        """The poll tick: alarms, interlock voting, output commands; record path only enqueues."""
        now = time.monotonic()
        events: list[Any] = []
        for r in readings:
            self.values[r.tag] = r
            if r.tag in self.alarms.tags:
                events += self.alarms.update(r, now)
        self._safety_step(events, now)
        for r in readings:
            # A subscription-fed tag (OPC UA) is re-delivered unchanged between notifications: the record
            # path stores each distinct sample once, keyed by its sample time, quality and value.
            key = (r.ts, r.quality, r.value)
            if self._last_stored.get(r.tag) == key:
                continue
            self._last_stored[r.tag] = key
            self.store.put_reading(self._reading_record(r))
            self.readings_taken += 1

    def _safety_step(self, alarm_events: list[Any], now: float) -> None:
        commands, il_events = self.interlocks.evaluate(self.alarms, now)
        if commands:
            self.outputs.apply(commands)
        for e in alarm_events:
            self._log_event(e.to_record())
        for e in il_events:
            self._log_event(e.to_record())

    def _log_event(self, rec: dict[str, Any]) -> None:
        rec.setdefault("gateway_id", self.cfg.model.gateway.id)
        self.store.put_event(rec)
        log.info("event %s", json.dumps(rec, sort_keys=True, default=str))

    def _reading_record(self, r: Reading) -> dict[str, Any]:
        rec = r.to_record()
        g = self.cfg.model.gateway
        if g.enterprise_code:
            rec["point"] = f"{g.enterprise_code}.{g.major_hazard_code or '-'}.{r.tag}"
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

    async def _alarm_ticker(self) -> None:
        while not self._stopping:
            await asyncio.sleep(ALARM_TICK_S)
            now = time.monotonic()
            self._safety_step(self.alarms.tick(now), now)

    # ---- polling ----

    async def _poll_loop(self, dev: Device, interval_s: float) -> None:
        stats = self.polls[dev.name]
        next_t = time.monotonic()
        while not self._stopping:
            try:
                readings = await dev.read()
            except Exception as exc:  # a driver bug must not stop the other devices; the tags go bad
                log.error("device %s: read failed: %s", dev.name, exc)
                readings = [Reading.bad(tag, "", f"driver error: {exc}") for tag in dev.tags]
            stats["polls"] += 1
            stats["bad"] += sum(1 for r in readings if not r.usable)
            stats["last_poll"] = time.time()
            self.on_readings(readings)
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
        from gateway.uplink import Forwarder, HttpsUplink

        ca = self.cfg.resolve(up.ca_file)
        cert = None
        if up.client_cert:
            cert = (str(self.cfg.resolve(up.client_cert)), str(self.cfg.resolve(up.client_key or up.client_cert)))
        uplink = HttpsUplink(up.url, ca_file=str(ca) if ca else None, client_cert=cert, timeout_s=up.timeout_ms / 1000)
        batcher = Batcher(self.store, self.signer, self.cfg.model.gateway.id, lambda: self.cfg.config_hash,
                          max_readings=up.batch_max_readings)
        return Forwarder(self.store, batcher, uplink, idle_s=up.interval_ms / 1000)

    async def _drain(self, bound_s: float) -> None:
        """At shutdown, keep uploading for at most bound_s while anything is unsent (nothing is lost
        either way: what is left goes out after the next start)."""
        deadline = time.monotonic() + bound_s
        while time.monotonic() < deadline:
            st = await asyncio.to_thread(self.store.stats)
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
            "readings_taken": self.readings_taken,
            "devices": self.polls,
            "tags": {t: {"value": r.value, "unit": r.unit, "quality": r.quality.value, "reason": r.reason,
                         "age_s": round(now - r.ts, 3), "protocol": self.protocol_of.get(t)}
                     for t, r in self.values.items()},
            "alarms": [a.to_record() for a in self.alarms.active()],
            "interlocks": self.interlocks.status(),
            "outputs": self.outputs.states(),
            "trips": [t.to_record() for t in self.outputs.trip_records()],
            "store": store_stats,
            "uplink": None if fw is None else {"sent": fw.sent, "dead_lettered": fw.dead_lettered,
                                               "consecutive_failures": fw.consecutive_failures,
                                               "last_error": fw.last_error},
        }

    def _write_json(self, snapshot: dict[str, Any]) -> None:
        tmp = self._status_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(snapshot, default=str, indent=1))
        os.replace(tmp, self._status_path)

    async def write_status(self) -> None:
        """Write state_dir/status.json atomically (SQLite and file I/O off the event loop)."""
        stats = await asyncio.to_thread(self.store.stats)
        await asyncio.to_thread(self._write_json, self.status(stats))

    async def _status_loop(self) -> None:
        while not self._stopping:
            try:
                await self.write_status()
            except Exception as exc:  # status is diagnostics; never let it stop the gateway
                log.warning("status file: %s", exc)
            await asyncio.sleep(STATUS_EVERY_S)

    # ---- lifecycle ----

    async def run(self, stop: asyncio.Event, ready: Any = None) -> None:
        """Poll until ``stop`` is set, then shut down cleanly. ``ready()`` is called once devices are
        configured and the store is open (sd_notify READY=1)."""
        self.cfg.state_dir.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(self.store.open)
        if self.store.moved_aside:
            self._log_event({"type": "store", "event": "corrupt_store_moved_aside", "path": str(self.store.moved_aside),
                             "ts": rfc3339(time.time())})
        self._log_event({"type": "gateway", "event": "start", "config_hash": self.cfg.config_hash,
                         "ts": rfc3339(time.time())})
        for dev in self.devices:
            await dev.start()
        self.forwarder = self._build_forwarder()
        intervals = {d.name: d.poll_interval_ms / 1000 for d in self.cfg.model.devices}
        tasks = [asyncio.create_task(self._poll_loop(dev, intervals[dev.name]), name=f"poll:{dev.name}")
                 for dev in self.devices]
        tasks.append(asyncio.create_task(self._alarm_ticker(), name="alarm-tick"))
        tasks.append(asyncio.create_task(self._status_loop(), name="status"))
        fw_task = asyncio.create_task(self.forwarder.run(), name="forwarder") if self.forwarder else None
        if ready:
            ready()
        log.info("gateway %s running: %d devices, %d tags", self.cfg.model.gateway.id, len(self.devices),
                 len(self.device_of))
        await stop.wait()
        # Shutdown: let the current ticks finish, flush, close. Outputs hold their state.
        self._stopping = True
        done, pending = await asyncio.wait(tasks, timeout=5.0)
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        try:
            await self.outputs.wait_idle(timeout_s=3.0)
        except (TimeoutError, asyncio.TimeoutError):
            log.warning("outputs still being written at shutdown")
        await self.outputs.close()
        self._log_event({"type": "gateway", "event": "stop", "ts": rfc3339(time.time())})
        await asyncio.to_thread(self.store.flush)
        if self.forwarder is not None:
            await self._drain(DRAIN_ON_STOP_S)
            self.forwarder.stop()
            try:
                await asyncio.wait_for(fw_task, 5.0)
            except (TimeoutError, asyncio.TimeoutError):
                fw_task.cancel()
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
