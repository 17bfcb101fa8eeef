"""The status page as a task of the daemon (config ``web:``; started beside metrics in gateway.runtime.daemon).

:func:`serve_web` starts gateway.ops.web.server.StatusPageServer in its own daemon thread, then, on the event loop,
hands it the latest status snapshot (``gw.last_status``, the one ``status`` and status.json show) every
``every_s`` and the alarm limits of the running config (again after a SIGHUP reload: the snapshot's config_hash
changes); cancelled, it shuts the server down. The web section itself (address, TLS, credentials) is read at
start: changing it needs a restart.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
from typing import Any, Callable

from gateway.ops.web.auth import BasicAuth
from gateway.ops.web.server import StatusPageServer
from gateway.ops.web.snapshot import PageData, alarm_limits
from gateway.runtime.ports import StatusSource

log = logging.getLogger("hazard_gateway.web")


def parse_listen(listen: str) -> tuple[str, int]:
    """'127.0.0.1:8080' / '[::1]:8080' -> (host, port). ValueError (one line) otherwise."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"web listen {listen!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def build_server(cfg: Any, data: PageData) -> StatusPageServer:
    """The server for ``cfg`` (a gateway.config.LoadedConfig with ``web:``), bound, not yet serving. OSError when
    the address cannot be bound; ssl.SSLError / OSError for an unusable certificate or key."""
    import ipaddress

    web = cfg.model.web
    host, port = parse_listen(web.listen)
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    tls = None
    if web.tls is not None:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.minimum_version = ssl.TLSVersion.TLSv1_2
        tls.load_cert_chain(str(cfg.resolve(web.tls.cert_file)), str(cfg.resolve(web.tls.key_file)))
    auth = BasicAuth(cfg.resolve(web.credentials_file)) if web.credentials_file else None
    return StatusPageServer((host, port), data, cfg.store_path, max_connections=web.max_connections, tls=tls,
                            auth=auth, loopback=loopback)


async def serve_web(gw: StatusSource, config: Callable[[], Any], every_s: float = 1.0) -> None:
    """Serve the status page until cancelled (module docstring). ``config()`` is the running config (after a reload
    the new one: ``lambda: gw.cfg``). A port that cannot be bound, or a certificate that cannot be loaded, is
    logged (one line) and the gateway runs on without the page."""
    cfg = config()
    data = PageData()
    data.publish(gw.last_status, alarm_limits(cfg))
    try:
        server = build_server(cfg, data)
    except (OSError, ssl.SSLError) as exc:
        log.error("web: cannot serve the status page on %s: %s", cfg.model.web.listen,
                  getattr(exc, "strerror", None) or exc)
        return
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.5}, name="web", daemon=True)
    thread.start()
    scheme = "https" if cfg.model.web.tls is not None else "http"
    log.info("status page on %s://%s/", scheme, cfg.model.web.listen)
    config_hash = cfg.config_hash
    last = gw.last_status
    try:
        while True:
            await asyncio.sleep(every_s)
            snap = gw.last_status
            limits = None
            now_cfg = config()
            if now_cfg is not None and now_cfg.config_hash != config_hash:   # a SIGHUP reload: new limits
                config_hash = now_cfg.config_hash
                limits = alarm_limits(now_cfg)
            data.publish(None if snap is last else snap, limits)   # encode each snapshot once
            last = snap
    finally:
        await asyncio.to_thread(server.shutdown)
        server.server_close()
        thread.join(timeout=2)
