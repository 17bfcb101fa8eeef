"""TCP fault proxy: put it between the gateway and a Modbus/TCP or OPC UA server, then break the path.

The proxy listens on 127.0.0.1 (port 0: any free port) and forwards every
accepted connection to ``upstream`` (host, port), byte for byte and in order.
It knows nothing of the protocol above TCP, so the same rig serves Modbus/TCP
(cases C10, C11) and OPC UA (C12). Modes, switchable at run time with
:meth:`TcpFaultProxy.set_mode`:

``pass``
    forward both directions.
``latency``
    forward each chunk ``ms`` milliseconds late (both directions, order kept).
``reset``
    the next chunk of data (either direction) on a connection is not
    forwarded: both sockets are closed with an RST (SO_LINGER 0), as a PLC
    does when it drops a connection. One-shot by default: the mode falls back
    to ``pass`` after the first reset (``sticky=True`` keeps resetting).
``idle_close``
    a connection with no data in either direction for ``s`` seconds is
    closed gracefully (FIN), as devices with an idle timeout do.
``black_hole``
    sockets stay open (and new connections are accepted) but nothing is
    forwarded; data is read and thrown away, so the sender's kernel sees its
    segments acknowledged and only an application timeout can notice.
``refuse``
    the listening socket is closed, so connects are refused (RST to SYN);
    open connections are reset. Leaving the mode listens again on the same
    port.

Counters: ``accepts`` (connections accepted), ``resets``, ``idle_closes``,
``chunks`` per direction ("up": client -> server, "down": server -> client),
``downstream_chunks`` since the last :meth:`set_mode` (how many answers went
through). The proxy never raises for a peer's fault; a failing upstream
connect closes the client connection (counted in ``upstream_failures``).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time
from collections import Counter
from dataclasses import dataclass, field

__all__ = ["TcpFaultProxy", "MODES"]

log = logging.getLogger(__name__)

MODES = ("pass", "latency", "reset", "idle_close", "black_hole", "refuse")


def _rst(writer: asyncio.StreamWriter) -> None:
    """Close with an RST instead of a FIN (SO_LINGER on, timeout 0)."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.transport.abort()


@dataclass
class _Conn:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    last_data: float = field(default_factory=time.monotonic)
    tasks: list[asyncio.Task] = field(default_factory=list)
    closed: bool = False


class TcpFaultProxy:
    """Fault-injecting TCP forwarder. upstream: (host, port). listen_port: 0 = any free port.

    Use ``async with TcpFaultProxy((host, port)) as p:`` and connect to ``p.port``."""

    def __init__(self, upstream: tuple[str, int], host: str = "127.0.0.1", listen_port: int = 0) -> None:
        self.upstream = upstream
        self.host = host
        self._port = listen_port
        self.mode = "pass"
        self.latency_s = 0.0
        self.idle_s = 0.0
        self.sticky = False
        self.accepts = 0
        self.resets = 0
        self.idle_closes = 0
        self.upstream_failures = 0
        self.chunks: Counter[str] = Counter()
        self.downstream_chunks = 0
        self._server: asyncio.base_events.Server | None = None
        self._conn_list: list[_Conn] = []
        self._idle_task: asyncio.Task | None = None

    # ------------------------------------------------------------------ life cycle
    @property
    def port(self) -> int:
        return self._port

    @property
    def open_connections(self) -> int:
        return sum(1 for c in self._conn_list if not c.closed)

    async def start(self) -> None:
        await self._listen()
        self._idle_task = asyncio.create_task(self._idle_watch())

    async def stop(self) -> None:
        if self._idle_task is not None:
            self._idle_task.cancel()
            await asyncio.gather(self._idle_task, return_exceptions=True)
            self._idle_task = None
        await self._unlisten()
        for c in list(self._conn_list):
            self._close(c, rst=True)
        tasks = [t for c in self._conn_list for t in c.tasks]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._conn_list.clear()

    async def __aenter__(self) -> "TcpFaultProxy":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _listen(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._accept, self.host, self._port, reuse_address=True)
            self._port = self._server.sockets[0].getsockname()[1]

    async def _unlisten(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    # ------------------------------------------------------------------ control
    async def set_mode(self, mode: str, *, ms: float = 0.0, s: float = 0.0, sticky: bool = False) -> None:
        """Switch mode (see module docstring). latency: ``ms``; idle_close: ``s``; reset: ``sticky``.
        Raises ValueError for an unknown mode or a missing parameter."""
        if mode not in MODES:
            raise ValueError(f"unknown proxy mode {mode!r}; one of {', '.join(MODES)}")
        if mode == "latency" and ms <= 0:
            raise ValueError("latency needs ms > 0")
        if mode == "idle_close" and s <= 0:
            raise ValueError("idle_close needs s > 0")
        self.mode, self.latency_s, self.idle_s, self.sticky = mode, ms / 1000.0, s, sticky
        self.downstream_chunks = 0
        if mode == "refuse":
            await self._unlisten()
            for c in list(self._conn_list):
                self._close(c, rst=True)
        else:
            await self._listen()
        if mode == "idle_close":
            now = time.monotonic()
            for c in self._conn_list:
                c.last_data = now

    # ------------------------------------------------------------------ forwarding
    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "refuse":  # a connect that raced the listener close
            _rst(writer)
            return
        self.accepts += 1
        conn = _Conn(writer)
        self._conn_list.append(conn)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError as e:
            self.upstream_failures += 1
            log.info("proxy: upstream %s:%d unreachable (%s)", *self.upstream, e)
            self._close(conn, rst=True)
            return
        if conn.closed:
            up_writer.transport.abort()
            return
        conn.upstream = up_writer
        me = asyncio.current_task()
        conn.tasks = [asyncio.create_task(self._pump(conn, up_reader, writer, "down"))]
        if me is not None:
            conn.tasks.append(me)
        await self._pump(conn, reader, up_writer, "up")

    async def _pump(self, conn: _Conn, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: str) -> None:
        try:
            while not conn.closed:
                data = await reader.read(65536)
                if not data:
                    break
                conn.last_data = time.monotonic()
                mode = self.mode
                if mode == "black_hole":
                    continue
                if mode == "reset":
                    self.resets += 1
                    if not self.sticky:
                        self.mode = "pass"
                    self._close(conn, rst=True)
                    return
                if mode == "latency" and self.latency_s > 0:
                    await asyncio.sleep(self.latency_s)
                    if conn.closed:
                        return
                writer.write(data)
                await writer.drain()
                self.chunks[direction] += 1
                if direction == "down":
                    self.downstream_chunks += 1
        except (ConnectionError, OSError, asyncio.CancelledError):
            pass
        self._close(conn, rst=False)

    def _close(self, conn: _Conn, rst: bool) -> None:
        if conn.closed:
            return
        conn.closed = True
        for w in (conn.client, conn.upstream):
            if w is None:
                continue
            if rst:
                _rst(w)
            else:
                try:
                    w.close()
                except Exception:  # noqa: BLE001 - already gone
                    pass

    async def _idle_watch(self) -> None:
        while True:
            await asyncio.sleep(0.01)
            self._conn_list = [c for c in self._conn_list if not c.closed or any(not t.done() for t in c.tasks)]
            if self.mode != "idle_close":
                continue
            now = time.monotonic()
            for c in list(self._conn_list):
                if not c.closed and now - c.last_data >= self.idle_s:
                    self.idle_closes += 1
                    self._close(c, rst=False)
