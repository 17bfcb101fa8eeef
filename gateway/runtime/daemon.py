"""`hazard-gateway run`: the daemon process around a Gateway.

Signals: SIGTERM / SIGINT finish the current tick, flush the store, close
devices and exit 0 (outputs hold their state). SIGHUP reloads the config file
(gateway.runtime.reload: validated first; a bad file is logged as FILE:LINE:COL and the
gateway keeps running on the old one). Logs go to stderr one line per event
(journald adds the timestamp).

systemd (Type=notify, sd_notify(3) datagram protocol on $NOTIFY_SOCKET): READY=1
once devices are configured and the store is open; STATUS=<one-line summary>
when it changes (gateway.runtime.health.status_line); with WATCHDOG_USEC set
(WatchdogSec=) WATCHDOG=1 at half that interval, only while every poll loop and
the safety path make progress (gateway.runtime.health; the store writer and the uploader are supervised
in process by gateway.record.supervisor and never restart the service); STOPPING=1
on SIGTERM; RELOADING=1 + MONOTONIC_USEC then READY=1 around a SIGHUP reload.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import time

from gateway.config import LoadedConfig
from gateway.runtime.gateway import Gateway

log = logging.getLogger("hazard_gateway.reload")


def sd_notify(state: str) -> bool:
    """Send one sd_notify(3) datagram to $NOTIFY_SOCKET; False when not under systemd."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(addr)
            s.sendall(state.encode())
    except OSError as exc:  # the manager went away: never let notification stop the gateway
        logging.getLogger("hazard_gateway").warning("sd_notify to %s failed: %s", addr.lstrip("\0"), exc)
        return False
    return True


#: optional imports that libraries of the daemon make only when the package is installed, for features the daemon
#: never uses: httpcore imports trio to run under a trio event loop (the daemon runs asyncio), httpx imports click,
#: rich and pygments for its command-line client. In a dev or test venv they are there (selenium brings trio), and
#: they cost about 5 MB of RSS and 100 modules. A None entry in sys.modules makes ``import`` raise ImportError
#: (Python reference, "The module cache"), which both libraries take as "not installed".
UNUSED_OPTIONAL_IMPORTS = ("trio", "click", "rich", "pygments")


def skip_unused_imports(names: tuple[str, ...] = UNUSED_OPTIONAL_IMPORTS) -> list[str]:
    """Mark ``names`` absent in sys.modules unless already imported (then they stay); returns the names marked.
    For the daemon's process only (run_daemon): never in a process that may want them (tests, `demo`)."""
    marked = [n for n in names if n not in sys.modules]
    for n in marked:
        sys.modules[n] = None  # type: ignore[assignment]
    return marked


def run_daemon(cfg: LoadedConfig) -> int:
    """Run until SIGTERM/SIGINT. Raises KeyFileError (one line) for a key readable by others."""
    from gateway.ops.logutil import setup_logging

    skip_unused_imports()   # before the uplink builds its HTTP client (httpx / httpcore import lazily)

    # one line per event, <N> prefixes under journald, repeating faults rate-limited, secrets redacted;
    # asyncua/httpx/pymodbus log per request at INFO and are held at WARNING
    log_handler = setup_logging(os.environ.get("HG_LOG_LEVEL", "INFO"), stream=sys.stderr)
    signer = None
    if cfg.model.uplink is not None:
        from gateway.chain.signing import Signer

        signer = Signer.from_file(cfg.resolve(cfg.model.keys.private_key))
    gw = Gateway(cfg, signer)

    async def main() -> None:
        from gateway.runtime.health import status_notify_loop, watchdog_interval_s, watchdog_loop
        from gateway.runtime.reload import reload_from_file

        stop, hup, started = asyncio.Event(), asyncio.Event(), asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_stop() -> None:
            if not stop.is_set():
                stop.set()
                sd_notify("STOPPING=1")  # systemd stops the watchdog; TimeoutStopSec bounds the rest

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_stop)
        loop.add_signal_handler(signal.SIGHUP, hup.set)
        extra: list[asyncio.Task] = []

        async def reloader() -> None:  # one reload at a time; SIGHUPs during a reload coalesce
            await started.wait()
            while not stop.is_set():
                await hup.wait()
                hup.clear()
                if stop.is_set():
                    return
                sd_notify(f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")
                try:
                    await reload_from_file(gw)
                except Exception as exc:  # noqa: BLE001 - a reload bug must not end reloading (or the daemon)
                    log.error("SIGHUP: reload failed (%s: %s); still running; the next SIGHUP is tried again",
                              type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
                    log.debug("SIGHUP: reload failure", exc_info=True)
                sd_notify("READY=1")

        def ready() -> None:  # devices configured, store open (Gateway.run)
            sd_notify("READY=1\nSTATUS=polling")
            started.set()
            wd = watchdog_interval_s()
            if wd:
                extra.append(asyncio.create_task(watchdog_loop(gw.health, sd_notify, wd / 2, stop), name="watchdog"))
            if os.environ.get("NOTIFY_SOCKET"):
                extra.append(asyncio.create_task(status_notify_loop(gw, sd_notify, stop), name="sd-status"))
            if cfg.model.metrics is not None:  # optional Prometheus endpoint (loopback unless allow_remote)
                from gateway.ops.metrics import serve_metrics

                extra.append(asyncio.create_task(serve_metrics(gw, cfg.model.metrics.listen), name="metrics"))
            if cfg.model.web is not None:  # optional read-only status page (loopback, or TLS + credentials)
                from gateway.ops.web.serve import serve_web

                extra.append(asyncio.create_task(serve_web(gw, lambda: gw.cfg), name="web"))

        extra.append(asyncio.create_task(reloader(), name="sighup"))
        await gw.run(stop, ready=ready)
        for t in extra:
            t.cancel()
        await asyncio.gather(*extra, return_exceptions=True)

    asyncio.run(main())
    log_handler.flush()  # write the "repeated N times" summaries still pending
    return 0
