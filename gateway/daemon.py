"""`hazard-gateway run`: the daemon process around a Gateway.

Signals: SIGTERM / SIGINT finish the current tick, flush the store, close
devices and exit 0 (outputs hold their state). Logs go to stderr one line per
event (journald adds the timestamp). When NOTIFY_SOCKET is set (systemd
Type=notify) READY=1 is sent once devices are configured and the store is open
(sd_notify(3) datagram protocol).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys

from gateway.config import LoadedConfig
from gateway.gateway import Gateway


def sd_notify(state: str) -> bool:
    """Send one sd_notify(3) datagram to $NOTIFY_SOCKET; False when not under systemd."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
        s.connect(addr)
        s.sendall(state.encode())
    return True


def run_daemon(cfg: LoadedConfig) -> int:
    """Run until SIGTERM/SIGINT. Raises KeyFileError (one line) for a key readable by others."""
    logging.basicConfig(level=os.environ.get("HG_LOG_LEVEL", "INFO"), stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("asyncua", "httpx", "pymodbus"):  # their INFO lines are per request: keep the journal readable
        logging.getLogger(noisy).setLevel(logging.WARNING)
    signer = None
    if cfg.model.uplink is not None:
        from gateway.signing import Signer

        signer = Signer.from_file(cfg.resolve(cfg.model.keys.private_key))
    gw = Gateway(cfg, signer)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: logging.getLogger("hazard_gateway").warning(
            "SIGHUP: configuration reload is not supported yet; restart the service to apply a new config"))
        await gw.run(stop, ready=lambda: sd_notify("READY=1\nSTATUS=polling"))
        sd_notify("STOPPING=1")

    asyncio.run(main())
    return 0
