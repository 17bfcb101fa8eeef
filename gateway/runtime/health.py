"""Progress tracking for the systemd watchdog, and the sd_notify STATUS line.

systemd's software watchdog (systemd.service(5) ``WatchdogSec=``, sd_watchdog_enabled(3),
sd_notify(3)): the manager passes ``WATCHDOG_USEC`` (and ``WATCHDOG_PID``) in the
environment; the service must send ``WATCHDOG=1`` on ``$NOTIFY_SOCKET`` more often than
that, or the manager kills it with SIGABRT and ``Restart=on-failure`` starts it again.
sd_watchdog_enabled(3) recommends pinging at half the interval.

A ping from a ticker alone would only prove the event loop runs. Here the ticker pings
only while every part of the **safety path** is making progress (:class:`Health`):

* ``poll:<device>``  one heartbeat per completed read of that device's poll loop (the loops feed
  the alarms and the interlocks); a loop stuck inside a read (a driver that blocks forever) or a
  loop task that died goes stale;
* ``safety``         the alarm/interlock ticker of the safety path (every 100 ms).

The record path is deliberately not watched by systemd (docs/design.md, "Two paths, never
coupled"): a restart would cure neither a hung fsync nor a full disk, and it would interrupt the
interlocks; after StartLimitBurst restarts the plant would have no layer at all. The store writer
and the uploader (a receiver that is down is not a hang, a task that died or a loop stuck for good
is) are supervised inside the process instead: gateway.record.supervisor checks them
(store_writer_check, uploader_check), restarts them and raises the system.STORE / system.UPLINK alarms.

Each heartbeat has its own limit in seconds; the limits of the poll loops come from
:func:`poll_limits` so that a device that merely stops answering (every request ends in
its configured timeout) never looks hung: the loop still completes, with BAD readings,
and restarting the service would not help it. Only a loop that makes no progress for
longer than the worst case its own timeouts allow is treated as hung.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from drivers.registry import link_key as registry_link_key
from gateway.i18n import gettext as _
from gateway.runtime.ports import StatusSource, WatchedGateway

log = logging.getLogger("hazard_gateway.health")

def watchdog_interval_s(env: dict[str, str] | None = None, pid: int | None = None) -> float | None:
    """The systemd watchdog timeout in seconds, or None when the watchdog is off for this process.

    Rules of sd_watchdog_enabled(3): ``WATCHDOG_USEC`` (microseconds, > 0) must be set, and when
    ``WATCHDOG_PID`` is set it must be this process's pid. A malformed value counts as off.
    """
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    wpid = env.get("WATCHDOG_PID")
    if wpid and wpid.strip() != str(os.getpid() if pid is None else pid):
        return None
    try:
        v = int(usec)
    except ValueError:
        return None
    return v / 1e6 if v > 0 else None


@dataclass
class _Beat:
    limit_s: float
    last: float


class Health:
    """Named heartbeats and checks; :meth:`stale` lists the parts that are not making progress.

    clock: monotonic seconds (time.monotonic; never the wall clock, so an NTP step moves nothing).
    A heartbeat registered with :meth:`watch` is stale when :meth:`beat` has not been called for
    more than its ``limit_s``. A check registered with :meth:`add_check` is a function
    ``(now_mono) -> str | None`` returning a one-line problem or None.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._beats: dict[str, _Beat] = {}
        self._checks: dict[str, Callable[[float], str | None]] = {}

    def watch(self, name: str, limit_s: float) -> None:
        """Start (or restart) watching heartbeat ``name``; counts as fresh now. limit_s > 0."""
        if limit_s <= 0:
            raise ValueError(f"{name}: limit_s must be > 0")
        self._beats[name] = _Beat(float(limit_s), self._clock())

    def beat(self, name: str) -> None:
        """Record progress of ``name`` (ignored for a name that is not watched)."""
        b = self._beats.get(name)
        if b is not None:
            b.last = self._clock()

    def age(self, name: str, now: float | None = None) -> float | None:
        """Seconds since heartbeat ``name`` last beat (or was (re)watched); None when it is not watched."""
        b = self._beats.get(name)
        if b is None:
            return None
        return (self._clock() if now is None else now) - b.last

    def forget(self, prefix: str) -> None:
        """Stop watching every heartbeat and check whose name starts with ``prefix`` (e.g. "poll:")."""
        for d in (self._beats, self._checks):
            for k in [k for k in d if k.startswith(prefix)]:
                del d[k]

    def add_check(self, name: str, check: Callable[[float], str | None]) -> None:
        self._checks[name] = check

    @property
    def names(self) -> list[str]:
        return sorted([*self._beats, *self._checks])

    def stale(self, now: float | None = None) -> list[str]:
        """One line per part that is not making progress (empty: everything is fine)."""
        now = self._clock() if now is None else now
        out = [f"{n}: no progress for {now - b.last:.1f} s (limit {b.limit_s:g} s)"
               for n, b in self._beats.items() if now - b.last > b.limit_s]
        for n, check in self._checks.items():
            try:
                problem = check(now)
            except Exception as exc:  # a broken check must fail towards "not healthy", never crash the ticker
                problem = f"check failed: {exc}"
            if problem:
                out.append(f"{n}: {problem}")
        return out


def link_key(d: Any) -> tuple:
    """The link a config device is polled over, (protocol, link id) from its protocol's entry in
    drivers.registry: devices on one shared link (a Modbus TCP host:port, an RTU serial port) have the same
    key and their requests are serialised; a device with a link of its own (an OPC UA session) is keyed by
    its name."""
    return registry_link_key(d)


def poll_limits(devices: list[Any], floor_s: float) -> dict[str, float]:
    """Seconds a device's poll loop may go without completing a read before it counts as hung.

    devices: config device models (name, enabled, poll_interval_ms, timeout_ms, tags, and for
    Modbus the link: host/port or serial port). floor_s: the smallest limit (the watchdog
    interval). The worst legitimate cycle of a device that answers nothing is bounded by its
    driver's timeouts: at most one request per tag, each tried twice (drivers.modbus
    ``retries=1``) plus a reconnect, each ``timeout + 1 s`` (response timeout plus the
    wait_for slack), so 3 x (timeout + 1 s) per tag; devices on one link (a shared RS-485 bus or TCP connection) wait for each
    other, so their worst cases add up. limit = poll interval + max(floor_s, that sum).
    """
    worst: dict[tuple, float] = {}
    enabled = [d for d in devices if getattr(d, "enabled", True)]
    for d in enabled:
        k = link_key(d)
        worst[k] = worst.get(k, 0.0) + max(1, len(d.tags)) * 3 * (d.timeout_ms / 1000 + 1.0)
    return {d.name: d.poll_interval_ms / 1000 + max(floor_s, worst[link_key(d)]) for d in enabled}


def status_line(status: dict[str, Any]) -> str:
    """The one-line STATUS= summary of a status snapshot (Gateway.status; gateway.runtime.ports): devices ok,
    active alarms, unsent readings, last acked seq, and a record-path fault the supervisor reports
    (gateway.record.supervisor: "store fault: ...").

    A device is ok when it delivered every one of its tags in its last read, each usable (good or
    uncertain, with a value). A store that did not answer (``{"error": ...}``) leaves its part out.
    Example: ``devices 5/5 ok, 2 alarms active, 120 readings unsent, last acked seq 45``; in the daemon's
    language (gateway.i18n: systemctl status shows it to the person at the console).
    """
    usable: dict[str, int] = {}
    for t in (status.get("tags") or {}).values():
        if t.get("quality") != "bad" and t.get("value") is not None and t.get("device"):
            usable[t["device"]] = usable.get(t["device"], 0) + 1
    devices = status.get("devices") or {}
    ok = sum(1 for name, d in devices.items() if d.get("tags") and usable.get(name, 0) >= d["tags"])
    n_alarms = len(status.get("alarms") or [])
    parts = [_("devices {ok}/{n} ok").format(ok=ok, n=len(devices)),
             (_("{n} alarm active") if n_alarms == 1 else _("{n} alarms active")).format(n=n_alarms)]
    store = status.get("store") or {}
    if store and "error" not in store:
        parts.append(_("{n} readings unsent").format(n=store.get("readings_unsent", 0)))
        seq = store.get("last_acked_seq")
        parts.append(_("last acked seq {seq}").format(seq=seq if seq is not None else "-"))
    rec = status.get("record_path") or {}
    for part, fault in (("store", _("store fault: {error}")), ("uplink", _("uplink fault: {error}"))):
        if rec.get(part):
            parts.append(fault.format(error=rec[part]))
    if store.get("writer_error") and not rec.get("store"):
        parts.append(_("store error: {error}").format(error=store["writer_error"]))
    return ", ".join(parts)


async def watchdog_loop(health: Health, notify: Callable[[str], Any], interval_s: float,
                        stop: asyncio.Event) -> None:
    """Send ``WATCHDOG=1`` every ``interval_s`` (half of WatchdogSec) while ``health`` reports
    nothing stale; otherwise withhold it (logged once per episode) so systemd restarts the service."""
    withheld = False
    while not stop.is_set():
        problems = health.stale()
        if problems:
            if not withheld:
                log.error("watchdog: withholding WATCHDOG=1 (systemd will restart the service): %s",
                          "; ".join(problems))
            withheld = True
        else:
            if withheld:
                log.warning("watchdog: progress again, WATCHDOG=1 resumed")
            withheld = False
            notify("WATCHDOG=1")
        try:
            await asyncio.wait_for(stop.wait(), timeout=interval_s)
        except (TimeoutError, asyncio.TimeoutError):
            pass


async def status_notify_loop(gw: StatusSource, notify: Callable[[str], Any], stop: asyncio.Event,
                             every_s: float = 2.0) -> None:
    """Refresh ``STATUS=`` (sd_notify(3)) when the summary changes, at most every ``every_s``, from the
    latest status snapshot (``gw.last_status``, taken about once per second off the event loop): a slow
    database can delay the STATUS line but never a WATCHDOG ping, which has its own ticker."""
    last = None
    while not stop.is_set():
        snap = gw.last_status
        if snap is not None:
            line = status_line(snap)
            if line != last:
                notify("STATUS=" + line)
                last = line
        try:
            await asyncio.wait_for(stop.wait(), timeout=every_s)
        except (TimeoutError, asyncio.TimeoutError):
            pass


#: progress floor without a systemd watchdog (status only; nothing is withheld then)
DEFAULT_FLOOR_S = 30.0


def watch_gateway(gw: WatchedGateway, floor_s: float | None = None) -> None:
    """(Re)register the heartbeats of the safety path of a running gateway (gateway.runtime.ports.WatchedGateway)
    in ``gw.health``: one
    per poll loop (limits from :func:`poll_limits`) and the safety path ticker. (The store writer and the
    uploader are supervised by gateway.record.supervisor, never by the systemd watchdog.)
    floor_s: the smallest limit; default the systemd watchdog interval (WatchdogSec), else 30 s.
    Called by Gateway.run() and again after a SIGHUP reload (the device set may have changed)."""
    floor = floor_s or watchdog_interval_s() or DEFAULT_FLOOR_S
    limits = poll_limits(gw.cfg.model.devices, floor)
    gw.health.forget("poll:")
    for dev in gw.devices:
        gw.health.watch(f"poll:{dev.name}", limits.get(dev.name, floor))
    gw.health.watch("safety", floor)
