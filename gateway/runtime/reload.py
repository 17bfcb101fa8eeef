"""SIGHUP: reload the configuration of a running gateway without losing data or the chain.

Sequence (:func:`reload_from_file`):

1. Validate first. The file is loaded with gateway.config.load_config (every problem as
   ``FILE:LINE:COL: key.path: message``), the signing key is read, and a complete Plant is built from
   the new config (gateway.runtime.build.build_plant: device drivers, alarm and interlock engines, hazard units;
   constructors only, nothing is opened). Changes that cannot be applied to a running store are refused:
   ``gateway.id`` (the chain belongs to one gateway id), ``gateway.state_dir`` and ``store.path``; so is a
   config that removes or renames an interlock that is tripped (or cleared and awaiting reset) or bypassed
   (its state is carried by name and would be dropped: reset it or end the bypass first). Any problem:
   each is logged as one ERROR line and the gateway keeps running on the old config, untouched.
2. Swap, ordered to keep the poll/safety gap short (:func:`reload_gateway`): the new engines adopt the
   running engines' state (snapshot / adopt) and the new Plant replaces the gateway's in one assignment
   (``gw.plant``), its safety ticker taking over at once; the old poll loops finish their current read
   (bounded), writes in flight get a short bound, the old devices and links close (bounded); each new
   device starts and polls in its own task, heartbeats and annunciators restart, and the watchdog
   heartbeats are re-registered. Only then is the forwarder stopped (an unacknowledged batch stays in the
   store and is resent) and a new one started, so a slow or hung uplink never stalls polling. The pause
   is logged ("polling paused N s").
3. Record. An event ``{"type": "gateway", "event": "config_reloaded", "config_hash":
   new, "previous_config_hash": old}`` goes into the store, so it is signed and uploaded
   in the next batch; every later batch carries the new ``config_hash``. The basic-data record of the new
   config (``{"type": "basic_data", ...}``, gateway.runtime.basic_data) follows it into the chain.

What carries over (the Gateway object and its live parts, gateway.runtime.gateway.LIVE, are never replaced):

* the Store object, its queues and its chain (the Batcher reads the last batch from the
  store, so ``seq`` continues without a gap and ``prev`` links to the last batch);
  ``store.commit_interval_ms``, ``max_bytes``, ``retention_days`` and ``retention_floor`` take
  effect at once (a waiver is recorded again, ``retention_floor_waived``);
* the OutputManager: the state of every output and the trip records (an output the
  new config no longer names keeps its last state: outputs hold);
* alarm state of every alarm id (``TAG.KIND``) that exists in both configs (AlarmEngine.snapshot /
  adopt, the allow-list gateway.safety.alarms.AlarmState): active, latched, acknowledged, shelved/suppressed,
  first-out, on-delay timers, and the tag's last value and age (gateway.safety.alarms.TagState). A changed set
  point applies from the next reading (a latched alarm stays latched until reset: a reload never resets
  a latch). New alarms start normal;
* interlock state of every interlock name in both configs (InterlockEngine.snapshot / adopt, the
  allow-list gateway.safety.interlocks.InterlockState): tripped (and cause), cleared-awaiting-reset, bypass with
  its expiry. A reload never resets a trip (nor drops one, see 1.). The start-up grace for inputs that
  have not delivered a reading starts again, so an input on a new device is "pending" (not a fault)
  while that device's first poll runs;
* last values, poll counters of devices that keep their name, readings_queued, the control socket.

PLC heartbeats (gateway.safety.heartbeat) and annunciators belong to the Plant and are rebuilt from the new
config: a heartbeat register pauses for the swap (the old writer ends after its current beat; the new one
starts with the new devices, typically 1-3 s later), well inside a PLC's heartbeat timeout.

Everything else derived from the config (gateway.runtime.build.Plant) comes from the new config.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from gateway.config import ConfigError, LoadedConfig, load_config
from gateway.hazard.engine import basis_events
from gateway.model import rfc3339
from gateway.runtime.basic_data import record as record_basic_data
from gateway.runtime.build import store_settings
from gateway.runtime.ports import ReloadTarget

log = logging.getLogger("hazard_gateway.reload")

#: bounds of the swap, seconds (the poll/safety gap is bounded by the first three plus the new devices' start)
OLD_LOOPS_S = 1.0       # an old poll loop's read in flight; then it is cancelled (its device is being closed)
OUTPUTS_IDLE_S = 0.5    # confirmed writes in flight on the old links; an unfinished one retries on the new
DEVICE_CLOSE_S = 1.0    # closing one old device, and the old links
FORWARDER_STOP_S = 5.0  # the old forwarder: its task, then its uplink (after polling has resumed)


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
    """Interlocks of the running gateway.safety.interlocks.InterlockEngine ``old`` that are tripped (or cleared and
    awaiting reset) or bypassed and have no interlock of the same name in ``new``: one line each naming the
    file; empty when none. A reload carries state by name, so removing or renaming such an interlock would
    silently drop its trip (an un-trip without a reset) or its audited bypass; it is refused instead."""
    out = []
    names = set(new.names())
    for name, st in old.snapshot(restart_only=True).interlocks.items():  # the tripped or bypassed ones
        if name in names:
            continue
        if st.tripped:
            what = "tripped" + (" (cleared, awaiting reset)" if st.cleared else "") + \
                (f" since {rfc3339(st.tripped_ts)}" if st.tripped_ts is not None else "")
            todo = f"reset it first (hazard-gateway reset {name})"
        else:
            what = f"bypassed by {st.bypass_user} until {rfc3339(st.bypass_until_ts)}" if st.bypass_until_ts \
                else "bypassed"
            todo = f"end the bypass first (hazard-gateway bypass {name} --end)"
        out.append(f"{new_cfg.path}: interlocks: {name} is {what} and the new config has no interlock of that "
                   f"name (removed or renamed); a reload would drop its state: {todo}")
    return out


def _signer_for(cfg: LoadedConfig) -> Any:
    if cfg.model.uplink is None:
        return None
    from gateway.chain.signing import Signer

    return Signer.from_file(cfg.resolve(cfg.model.keys.private_key))


async def reload_from_file(gw: ReloadTarget, path: Any = None) -> bool:
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


async def _bounded(aw: Any, bound_s: float, what: str) -> None:
    try:
        await asyncio.wait_for(aw, bound_s)
    except (TimeoutError, asyncio.TimeoutError):
        log.warning("SIGHUP: %s took longer than %.1f s; abandoned", what, bound_s)
    except Exception as exc:  # closing is best effort; the new links are separate objects
        log.warning("SIGHUP: %s: %s", what, exc)


async def reload_gateway(gw: ReloadTarget, new_cfg: LoadedConfig, signer: Any) -> list[str]:
    """Apply a validated config to a running gateway (gateway.runtime.ports.ReloadTarget; see the module
    docstring).
    Returns problems (one line each) when the config cannot be applied; then nothing changed.

    Order of the swap (the poll/safety gap is only steps 2-3, bounded by OLD_LOOPS_S + OUTPUTS_IDLE_S +
    2 x DEVICE_CLOSE_S plus the new devices' connect; measured and logged as "polling paused"):

    1. under the reload lock, with no await between the check and the swap: refuse when a tripped or
       bypassed interlock would be dropped (:func:`dropped_safety_state`); the new Plant's engines adopt
       the running engines' snapshots, poll counters of devices that keep their name carry, and
       ``gw.plant`` is replaced in one assignment; the new plant's safety ticker starts at once. From here
       the safety path (the ticker, an old loop's last tick, operator actions) runs on the new engines;
    2. the old plant's tasks end (each sees ``gw.plant`` is not its plant: the old poll loops after their
       current read, bounded, then cancelled), writes in flight get OUTPUTS_IDLE_S (an unfinished one is
       retried on the new device), old devices and links close (each bounded);
    3. each new device starts and polls in its own task; heartbeats and annunciators restart;
    4. only then the forwarder is swapped (the uplink may take seconds on a bad network; the old
       forwarder is fully stopped before the new one starts, so no seq is built twice).
    """
    problems = restart_needed(gw.cfg, new_cfg)
    if problems:
        return problems
    try:
        plant = gw.plant_for(new_cfg, signer)  # constructors only: validates drivers, engines, hazard units
        # the new uploader too (TLS files, receiver key), before anything is swapped: a file that cannot be
        # loaded refuses the reload and the running uploader goes on
        new_fw = gw.build_forwarder(plant)
    except (ValueError, KeyError, OSError) as exc:
        return [f"{new_cfg.path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"]
    async with gw.reload_lock:
        old = gw.plant
        problems = (["the gateway is shutting down"] if gw.stopping
                    else dropped_safety_state(old.interlocks, plant.interlocks, new_cfg))
        if problems:
            aclose = getattr(getattr(new_fw, "uplink", None), "aclose", None)
            if aclose:   # the unused uploader's connection pool
                await _bounded(aclose(), FORWARDER_STOP_S, "closing the unused uplink")
            return problems
        old_hash = old.cfg.config_hash
        t0 = time.monotonic()
        # -- 1. the new engines adopt the running state; the new plant replaces the old one in one assignment
        notes = [*plant.alarms.adopt(old.alarms.snapshot()), *plant.interlocks.adopt(old.interlocks.snapshot())]
        for name in plant.polls:
            if name in old.polls:
                plant.polls[name] = old.polls[name]
        old_tasks = gw.swap_plant(plant)
        for n in notes:
            log.debug("SIGHUP: %s", n)
        gw.store.retune(**store_settings(new_cfg))
        s = new_cfg.model.store
        gw.log_event({"type": "gateway", "event": "config_reloaded", "config_hash": new_cfg.config_hash,
                      "previous_config_hash": old_hash, "ts": rfc3339(time.time())})
        if (waiver := s.waiver_event()) is not None:   # C16: a waived retention floor, on the record again
            gw.log_event({**waiver, "ts": rfc3339(time.time())})
        record_basic_data(plant, gw.log_event)   # the regulator's basic data of the new config (config_hash)
        if plant.hazard is not None:  # a grade changes only with its design basis: record each change
            for ev in basis_events(old.hazard, plant.hazard, time.time()):
                gw.tick.log_hazard_event(ev)
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
        for dev in old.devices:
            await _bounded(dev.close(), DEVICE_CLOSE_S, f"closing device {dev.name}")
        await _bounded(old.links.close_all(), DEVICE_CLOSE_S, "closing the old links")
        gw.forget_tags(plant.device_of)  # after the old loops' last tick
        # -- 3. start the new parts: every device polls as soon as it has started
        gw.start_plant_tasks(plant)
        paused = time.monotonic() - t0
        # -- 4. the forwarder, last: stopping the old one may wait on the network (bounded)
        await gw.replace_forwarder(new_fw, FORWARDER_STOP_S)
        log.info("SIGHUP: config %s applied (was %s) in %.1f s, polling paused %.2f s: %d devices, %d tags",
                 new_cfg.config_hash[:12], old_hash[:12], time.monotonic() - t0, paused, len(plant.devices),
                 len(plant.device_of))
    return []
