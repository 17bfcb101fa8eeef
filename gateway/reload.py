"""SIGHUP: reload the configuration of a running gateway without losing data or the chain.

Sequence (:func:`reload_from_file`):

1. Validate first. The file is loaded with gateway.config.load_config (every problem as
   ``FILE:LINE:COL: key.path: message``), the signing key is read, and a complete
   Gateway is built from the new config (device drivers, alarm and interlock engines,
   hazard units: constructors only, nothing is opened). Changes that cannot be applied
   to a running store are refused: ``gateway.id`` (the chain belongs to one gateway id),
   ``gateway.state_dir`` and ``store.path``; so is a config that removes or renames an
   interlock that is tripped (or cleared and awaiting reset) or bypassed (its state is
   carried by name and would be dropped: reset it or end the bypass first). Any problem:
   each is logged as one ERROR line and the gateway keeps running on the old config, untouched.
2. Swap, ordered to keep the poll/safety gap short (:func:`reload_gateway`): the state is
   carried and the new parts installed at once; the old poll loops finish their current
   read (bounded), writes in flight get a short bound, the old devices and links close
   (bounded); each new device starts and polls in its own task, and the watchdog
   heartbeats are re-registered. Only then is the forwarder stopped (an unacknowledged
   batch stays in the store and is resent) and a new one started, so a slow or hung
   uplink never stalls polling. The pause is logged ("polling paused N s").
3. Record. An event ``{"type": "gateway", "event": "config_reloaded", "config_hash":
   new, "previous_config_hash": old}`` goes into the store, so it is signed and uploaded
   in the next batch; every later batch carries the new ``config_hash``.

What carries over:

* the Store object, its queues and its chain (the Batcher reads the last batch from the
  store, so ``seq`` continues without a gap and ``prev`` links to the last batch);
  ``store.commit_interval_ms``, ``max_bytes``, ``retention_days`` and ``retention_floor`` take
  effect at once (a waiver is recorded again, ``retention_floor_waived``);
* the OutputManager: the state of every output and the trip records (an output the
  new config no longer names keeps its last state: outputs hold);
* alarm state of every alarm id (``TAG.KIND``) that exists in both configs: active,
  latched, acknowledged, shelved/suppressed, first-out, on-delay timers, and the tag's
  last value and age. A changed set point applies from the next reading (a latched alarm
  stays latched until reset: a reload never resets a latch). New alarms start normal;
* interlock state of every interlock name in both configs: tripped (and cause),
  cleared-awaiting-reset, bypass with its expiry. A reload never resets a trip (nor drops one,
  see 1.). The
  start-up grace for inputs that have not delivered a reading starts again, so an input
  on a new device is "pending" (not a fault) while that device's first poll runs;
* last values, poll counters of devices that keep their name, readings_queued, the control socket.

PLC heartbeats (gateway.heartbeat) and annunciators are rebuilt from the new config: a heartbeat
register pauses for the swap (the old writer ends after its current beat; the new one starts with
the new devices, typically 1-3 s later), well inside a PLC's heartbeat timeout.

Everything else derived from the config (RELOADED below) comes from the new config.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Any

from gateway.config import ConfigError, LoadedConfig, load_config
from gateway.hazard.engine import basis_events
from gateway.model import rfc3339

log = logging.getLogger("hazard_gateway.reload")

#: Gateway attributes built from the config: those of a Gateway built from the new config are used.
RELOADED = frozenset({"cfg", "signer", "links", "devices", "device_of", "protocol_of", "alarms", "interlocks",
                      "hazard", "points", "_hazard_unit_tags", "_interlock_inputs", "polls", "_status_path",
                      "report", "heartbeats", "annunciators", "_valid_range", "_interlock_feeds",
                      "_clock_grace_s"})
#: Gateway attributes that live on across a reload (runtime state, the store, the outputs, the operator socket).
KEPT = frozenset({"store", "outputs", "values", "_last_stored", "readings_queued", "forwarder", "started_at",
                  "_stopping", "health", "_poll_tasks", "_fw_task", "_aux_tasks", "_reload_lock",
                  "_hazard_tick_mono", "clock", "control", "last_safety_mono", "safety_state", "record"})

#: bounds of the swap, seconds (the poll/safety gap is bounded by the first three plus the new devices' start)
OLD_LOOPS_S = 1.0       # an old poll loop's read in flight; then it is cancelled (its device is being closed)
OUTPUTS_IDLE_S = 0.5    # confirmed writes in flight on the old links; an unfinished one retries on the new
DEVICE_CLOSE_S = 1.0    # closing one old device, and the old links
FORWARDER_STOP_S = 5.0  # the old forwarder (after polling has resumed)

# fields of the engines' per-object state that identify or configure the object (never copied)
_ALARM_IDENTITY = {"id", "tag", "kind", "spec", "cfg"}
_TAG_IDENTITY = {"cfg"}
_INTERLOCK_IDENTITY = {"spec", "m", "n", "vote"}


def restart_needed(old: LoadedConfig, new: LoadedConfig) -> list[str]:
    """Changes a reload cannot apply (one line each, naming the new file); empty when none."""
    out = []
    if new.model.gateway.id != old.model.gateway.id:
        out.append(f"{new.path}: gateway.id changed ({old.model.gateway.id} -> {new.model.gateway.id}): "
                   "the batch chain belongs to one gateway id; restart the service to apply")
    if new.state_dir.resolve() != old.state_dir.resolve():
        out.append(f"{new.path}: gateway.state_dir changed: restart the service to apply")
    if new.store_path.resolve() != old.store_path.resolve():
        out.append(f"{new.path}: store.path changed: restart the service to apply")
    return out


def dropped_safety_state(old: Any, new: Any, new_cfg: LoadedConfig) -> list[str]:
    """Interlocks of the running gateway.interlocks.InterlockEngine ``old`` that are tripped (or cleared and
    awaiting reset) or bypassed and have no interlock of the same name in ``new``: one line each naming the
    file; empty when none. A reload carries state by name, so removing or renaming such an interlock would
    silently drop its trip (an un-trip without a reset) or its audited bypass; it is refused instead."""
    out = []
    for name, st in old.export_state().items():
        if name in new._s:
            continue
        if st["tripped"]:
            what = "tripped" + (" (cleared, awaiting reset)" if st["cleared"] else "") + \
                (f" since {rfc3339(st['tripped_ts'])}" if st.get("tripped_ts") is not None else "")
            todo = f"reset it first (hazard-gateway reset {name})"
        else:
            b = st["bypass"] or {}
            what = f"bypassed by {b.get('user')} until {rfc3339(b['until_ts'])}" if b.get("until_ts") else "bypassed"
            todo = f"end the bypass first (hazard-gateway bypass {name} --end)"
        out.append(f"{new_cfg.path}: interlocks: {name} is {what} and the new config has no interlock of that "
                   f"name (removed or renamed); a reload would drop its state: {todo}")
    return out


def _copy_fields(src: Any, dst: Any, skip: set[str]) -> None:
    for f in dataclasses.fields(src):
        if f.name not in skip and hasattr(dst, f.name):
            setattr(dst, f.name, getattr(src, f.name))


def carry_alarm_state(old: Any, new: Any) -> list[str]:
    """Copy the state of every tag and alarm id present in both gateway.alarms.AlarmEngine objects
    (identity and configuration fields stay those of ``new``). Returns the alarm ids carried over."""
    for tag, ts in old._tags.items():
        if tag in new._tags:
            _copy_fields(ts, new._tags[tag], _TAG_IDENTITY)
    carried = []
    for aid, a in old._alarms.items():
        if aid in new._alarms:
            _copy_fields(a, new._alarms[aid], _ALARM_IDENTITY)
            carried.append(aid)
    for group, aid in old._first_out.items():
        if aid in new._alarms:
            new._first_out[group] = aid
            # the group's first alarm and later alarms in time order (AlarmEngine.first_out_sequence)
            new._sequence[group] = [x for x in old._sequence.get(group, []) if x[0] in new._alarms]
            new._sequence_count[group] = old._sequence_count.get(group, 0)
    new._start_mono = old._start_mono
    return carried


def carry_interlock_state(old: Any, new: Any) -> list[str]:
    """Copy trip, latch and bypass state of every interlock name present in both
    gateway.interlocks.InterlockEngine objects. Returns the names carried over."""
    carried = []
    for name, st in old._s.items():
        if name in new._s:
            _copy_fields(st, new._s[name], _INTERLOCK_IDENTITY)
            carried.append(name)
    return carried


def _signer_for(cfg: LoadedConfig) -> Any:
    if cfg.model.uplink is None:
        return None
    from gateway.signing import Signer

    return Signer.from_file(cfg.resolve(cfg.model.keys.private_key))


async def reload_from_file(gw: Any, path: Any = None) -> bool:
    """Re-read the config file (default: the one the gateway runs on) and apply it.

    Returns True when applied; False when rejected (each problem logged as one ERROR line,
    FILE:LINE:COL for config mistakes) or when the gateway is shutting down."""
    path = path or gw.cfg.path
    old_hash = gw.cfg.config_hash
    try:
        new_cfg = await asyncio.to_thread(load_config, path)
        signer = await asyncio.to_thread(_signer_for, new_cfg)
    except ConfigError as exc:
        for p in exc.problems:
            log.error("SIGHUP: %s", p)
        log.error("SIGHUP: new config rejected (%d problem%s); still running on config %s", len(exc.problems),
                  "s" if len(exc.problems) != 1 else "", old_hash[:12])
        return False
    except (OSError, ValueError) as exc:  # key file missing or readable by others (KeyFileError)
        log.error("SIGHUP: %s", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        log.error("SIGHUP: new config rejected; still running on config %s", old_hash[:12])
        return False
    for w in new_cfg.warnings:
        log.warning("SIGHUP: %s", w)
    if new_cfg.config_hash == old_hash:
        log.info("SIGHUP: config unchanged (%s); nothing to do", old_hash[:12])
        return True
    problems = await reload_gateway(gw, new_cfg, signer)
    if problems:
        for p in problems:
            log.error("SIGHUP: %s", p)
        log.error("SIGHUP: new config rejected; still running on config %s", old_hash[:12])
        return False
    return True


async def _start_then_poll(gw: Any, dev: Any, interval_s: float) -> None:
    """A new device's poll loop: start the device (connect; an OPC UA start may wait ~3 x its timeout for
    an unreachable server), then poll. One task per device, so a slow device delays only its own loop."""
    try:
        await dev.start()
    except Exception as exc:  # drivers never raise here by contract; a bug must not stop the other loops
        log.error("SIGHUP: device %s: start failed: %s (its reads retry)", dev.name, exc)
    await gw._poll_loop(dev, interval_s)


async def _bounded(aw: Any, bound_s: float, what: str) -> None:
    try:
        await asyncio.wait_for(aw, bound_s)
    except (TimeoutError, asyncio.TimeoutError):
        log.warning("SIGHUP: %s took longer than %.1f s; abandoned", what, bound_s)
    except Exception as exc:  # closing is best effort; the new links are separate objects
        log.warning("SIGHUP: %s: %s", what, exc)


async def reload_gateway(gw: Any, new_cfg: LoadedConfig, signer: Any) -> list[str]:
    """Apply a validated config to a running gateway.Gateway (see the module docstring).
    Returns problems (one line each) when the config cannot be applied; then nothing changed.

    Order of the swap (the poll/safety gap is only steps 2-3, bounded by OLD_LOOPS_S + OUTPUTS_IDLE_S +
    2 x DEVICE_CLOSE_S plus the new devices' connect; measured and logged as "polling paused"):

    1. under the reload lock, with no await between the check and the install: refuse when a tripped or
       bypassed interlock would be dropped (:func:`dropped_safety_state`); carry the alarm and interlock
       state into the new engines and install the new namespace. From here the safety path (the alarm
       ticker, an old loop's last tick) runs on the new engines;
    2. the old poll loops end after their current read (bounded, then cancelled), writes in flight get
       OUTPUTS_IDLE_S (an unfinished one is retried on the new device), old devices and links close
       (each bounded);
    3. each new device starts and polls in its own task; heartbeats and annunciators restart;
    4. only then the forwarder is swapped (the uplink may take seconds on a bad network; the old
       forwarder is fully stopped before the new one starts, so no seq is built twice).
    """
    from gateway.gateway import Gateway
    from gateway.health import watch_gateway

    problems = restart_needed(gw.cfg, new_cfg)
    if problems:
        return problems
    try:
        fresh = Gateway(new_cfg, signer)  # constructors only: validates drivers, engines, hazard units
    except (ValueError, KeyError, OSError) as exc:
        return [f"{new_cfg.path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"]
    async with gw._reload_lock:
        if gw._stopping:
            return ["the gateway is shutting down"]
        problems = dropped_safety_state(gw.interlocks, fresh.interlocks, new_cfg)
        if problems:
            return problems
        old_hash = gw.cfg.config_hash
        t0 = time.monotonic()
        # -- 1. carry state into the new engines, keep the KEPT attributes, install the new namespace.
        old_devices, old_links = gw.devices, gw.links
        old_hazard = gw.hazard
        old_tasks = [*gw._poll_tasks, *getattr(gw, "_aux_tasks", [])]
        carry_alarm_state(gw.alarms, fresh.alarms)
        carry_interlock_state(gw.interlocks, fresh.interlocks)
        for name in fresh.polls:
            if name in gw.polls:
                fresh.polls[name] = gw.polls[name]
        for attr in KEPT:
            if attr in gw.__dict__:
                fresh.__dict__[attr] = gw.__dict__[attr]
        # gw and fresh now share ONE attribute dict: the parts fresh's constructor built hold callbacks
        # bound to fresh (a heartbeat's "is the safety path alive", an annunciator's writer), and they must
        # see the live gateway's state (last_safety_mono, device_of ...), which they now do. Everything
        # that was bound to gw (the OutputManager, the control socket) sees the new parts the same way.
        # An old poll loop, heartbeat or annunciator ends because its object is no longer the gateway's.
        gw.__dict__ = fresh.__dict__
        s = new_cfg.model.store
        gw.store.commit_interval_s = s.commit_interval_ms / 1000
        gw.store.max_bytes = s.max_bytes
        gw.store.retention_floor_s = s.retention_days * 86400
        gw.store.floor_waived = s.retention_floor.waive
        gw._log_event({"type": "gateway", "event": "config_reloaded", "config_hash": new_cfg.config_hash,
                       "previous_config_hash": old_hash, "ts": rfc3339(time.time())})
        if (waiver := s.waiver_event()) is not None:   # C16: a waived retention floor, on the record again
            gw._log_event({**waiver, "ts": rfc3339(time.time())})
        if fresh.hazard is not None:  # a grade changes only with its design basis: record each change
            for ev in basis_events(old_hazard, fresh.hazard, time.time()):
                gw._log_hazard_event(ev)
        # -- 2. stop the old parts, each step bounded
        if old_tasks:
            _, pending = await asyncio.wait(old_tasks, timeout=OLD_LOOPS_S)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        try:
            await gw.outputs.wait_idle(timeout_s=OUTPUTS_IDLE_S)
        except (TimeoutError, asyncio.TimeoutError):
            log.warning("SIGHUP: outputs still being written; they continue on the new devices")
        for dev in old_devices:
            await _bounded(dev.close(), DEVICE_CLOSE_S, f"closing device {dev.name}")
        await _bounded(old_links.close_all(), DEVICE_CLOSE_S, "closing the old links")
        for d in (gw.values, gw._last_stored):  # after the old loops' last tick
            for tag in [t for t in d if t not in gw.device_of]:
                del d[tag]
        # -- 3. start the new parts: every device polls as soon as it has started
        intervals = {d.name: d.poll_interval_ms / 1000 for d in new_cfg.model.devices}
        gw._poll_tasks = [asyncio.create_task(_start_then_poll(gw, dev, intervals[dev.name]), name=f"poll:{dev.name}")
                          for dev in gw.devices]
        if hasattr(gw, "_start_aux"):
            gw._aux_tasks = gw._start_aux()
        watch_gateway(gw)
        paused = time.monotonic() - t0
        # -- 4. the forwarder, last: stopping the old one may wait on the network (bounded)
        old_fw, old_fw_task = gw.forwarder, gw._fw_task
        if old_fw is not None:
            old_fw.stop()
            if old_fw_task is not None:
                try:
                    await asyncio.wait_for(old_fw_task, FORWARDER_STOP_S)
                except (TimeoutError, asyncio.TimeoutError):
                    old_fw_task.cancel()
                    await asyncio.gather(old_fw_task, return_exceptions=True)
            aclose = getattr(old_fw.uplink, "aclose", None)
            if aclose:
                await _bounded(aclose(), FORWARDER_STOP_S, "closing the old uplink")
        gw.forwarder = gw._build_forwarder()
        gw._fw_task = None
        gw._start_forwarder()
        log.info("SIGHUP: config %s applied (was %s) in %.1f s, polling paused %.2f s: %d devices, %d tags",
                 new_cfg.config_hash[:12], old_hash[:12], time.monotonic() - t0, paused, len(gw.devices),
                 len(gw.device_of))
    return []
