"""The status page's HTTP server: standard library only (``http.server.ThreadingHTTPServer``), GET and HEAD only.

Routes (all read-only; every other method is 405, operator actions stay on the control socket):

=================================  ==========================================================================
``/``                              the page (HTML, labels in the language of Accept-Language or ``?lang=``)
``/static/NAME``                   the page's script and style, uPlot (vendored, gateway/ops/web/static)
``/api/status``                    the latest status snapshot and alarm limits (gateway.ops.web.snapshot)
``/api/trend?tag=T&hours=H``       the last H hours (default 1, at most 168) of tag T from the store, read-only,
                                   at most 1000 min/max buckets (gateway.record.trend), with T's alarm limits
``/api/labels?lang=zh_CN|en``      the label dictionary (gateway.ops.web.labels)
=================================  ==========================================================================

What a slow or hostile client can cost (it can never touch the gateway: the page reads snapshots only):

* one thread per connection, at most ``max_connections`` at once; beyond that the accepting thread answers
  ``503`` itself (a few bytes into a fresh socket buffer, 0.2 s send timeout) and closes;
* a request line and headers of at most MAX_REQUEST_BYTES, read within REQUEST_DEADLINE_S from the first byte
  (a reaper thread shuts down a connection past its deadline: a client sending one byte a second cannot hold
  a slot longer than that), an idle keep-alive connection closed after IDLE_S; no request body is ever read;
* one trend query at a time (a lock; a second waits at most TREND_WAIT_S, then 503), each bounded by
  gateway.record.trend's time budget; a password check (gateway.ops.web.auth) one at a time.

Off loopback the server speaks TLS only (the config refuses otherwise) and wants HTTP Basic credentials; on
loopback the Host header must name a loopback host (a page of another site that a DNS name rebinds to
127.0.0.1 gets 421, so it cannot read the plant's status through an operator's browser).
"""

from __future__ import annotations

import contextlib
import html
import json
import logging
import socket
import ssl
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from gateway.i18n import CHINESE, ENGLISH, language_for_accept
from gateway.ops.web.auth import BasicAuth
from gateway.ops.web.labels import labels
from gateway.ops.web.snapshot import PageData
from gateway.record.trend import MAX_HOURS, ReadOnlyStore, TrendError

log = logging.getLogger("hazard_gateway.web")

STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
                ".png": "image/png", ".svg": "image/svg+xml"}
MAX_REQUEST_BYTES = 8192
REQUEST_DEADLINE_S = 10.0
IDLE_S = 15.0
TREND_WAIT_S = 2.0
REAP_EVERY_S = 0.5
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1", "[::1]")


class _BoundedReader:
    """The request's read side, counting what a request may read (MAX_REQUEST_BYTES for line and headers)."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.left = MAX_REQUEST_BYTES

    def readline(self, limit: int = -1) -> bytes:
        n = self.left if limit < 0 else min(limit, self.left)
        if n <= 0:
            return b""
        line = self.raw.readline(n)
        self.left -= len(line)
        return line

    def read(self, n: int = -1) -> bytes:   # never used for bodies; bounded all the same
        n = self.left if n < 0 else min(n, self.left)
        data = self.raw.read(n) if n > 0 else b""
        self.left -= len(data)
        return data

    def close(self) -> None:
        self.raw.close()


class StatusPageServer(ThreadingHTTPServer):
    """ThreadingHTTPServer with a connection cap, per-connection deadlines, optional TLS and Basic auth.

    ``data``: the PageData the page serves; ``store_path``: the SQLite store (opened read-only for trends);
    ``loopback``: the listen address is a loopback one (Host header checked); ``tls``: a server SSLContext or
    None; ``auth``: BasicAuth or None."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], data: PageData, store_path: Path | None, *,
                 max_connections: int = 32, tls: ssl.SSLContext | None = None, auth: BasicAuth | None = None,
                 loopback: bool = True) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, PageHandler)
        self.data = data
        self.store = ReadOnlyStore(store_path) if store_path is not None else None
        self.trend_lock = threading.Lock()
        self.tls = tls
        self.auth = auth
        self.loopback = loopback
        self.max_connections = max_connections
        self._slots = threading.BoundedSemaphore(max_connections)
        self._deadlines: dict[socket.socket, float] = {}
        self._dl_lock = threading.Lock()
        self.refused = 0          # connections answered 503 at the cap
        self.reaped = 0           # connections shut down past their deadline
        self._reaper_stop = threading.Event()
        self._reaper = threading.Thread(target=self._reap, name="web-reaper", daemon=True)
        self._reaper.start()

    # -- connections

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.refused += 1
            try:
                request.setblocking(False)
                with contextlib.suppress(BlockingIOError):   # what the client sent already: read, so that the
                    for _ in range(8):                       # close is a FIN after the answer, not a reset
                        if not request.recv(8192):
                            break
                request.settimeout(0.2)
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
                                b"Retry-After: 2\r\nConnection: close\r\nContent-Length: 27\r\n\r\n"
                                b"too many connections (503)\n")
            except OSError:
                pass
            self.shutdown_request(request)
            return
        self.set_deadline(request, REQUEST_DEADLINE_S)
        try:
            super().process_request(request, client_address)
        except Exception:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            if self.tls is not None:   # the handshake in this thread, under the connection's deadline
                raw = request
                raw.settimeout(REQUEST_DEADLINE_S)
                self.forget(raw)
                request = self.tls.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
                self.set_deadline(request, REQUEST_DEADLINE_S)
                try:
                    request.do_handshake()
                except (OSError, ssl.SSLError):
                    self.shutdown_request(request)
                    return
            super().process_request_thread(request, client_address)
        finally:
            self.forget(request)
            self._slots.release()

    def set_deadline(self, sock: socket.socket, seconds: float) -> None:
        with self._dl_lock:
            self._deadlines[sock] = time.monotonic() + seconds

    def forget(self, sock: socket.socket) -> None:
        with self._dl_lock:
            self._deadlines.pop(sock, None)

    def _reap(self) -> None:
        while not self._reaper_stop.wait(REAP_EVERY_S):
            now = time.monotonic()
            with self._dl_lock:
                late = [s for s, d in self._deadlines.items() if d < now]
                for s in late:
                    del self._deadlines[s]
            for s in late:
                self.reaped += 1
                try:
                    s.shutdown(socket.SHUT_RDWR)   # the handler's blocked read returns; its thread ends
                except OSError:
                    pass

    def active(self) -> int:
        """Connections being served now."""
        with self._dl_lock:
            return len(self._deadlines)

    def server_close(self) -> None:
        self._reaper_stop.set()
        super().server_close()
        if self.store is not None:
            with self.trend_lock:
                self.store.close()


class PageHandler(BaseHTTPRequestHandler):
    """One connection: GET/HEAD of the routes in the module docstring."""

    server: StatusPageServer
    protocol_version = "HTTP/1.1"
    server_version = "hazard-gateway-status"
    sys_version = ""
    timeout = REQUEST_DEADLINE_S    # per read; the server's reaper bounds the whole request

    def setup(self) -> None:
        super().setup()
        self.rfile = _BoundedReader(self.rfile)   # type: ignore[assignment]

    def handle_one_request(self) -> None:
        self.rfile.left = MAX_REQUEST_BYTES        # type: ignore[attr-defined]
        super().handle_one_request()
        if not self.close_connection:             # keep-alive: idle until the next request line
            self.server.set_deadline(self.connection, IDLE_S)

    def parse_request(self) -> bool:
        ok = super().parse_request()
        if ok and self.rfile.left <= 0:            # type: ignore[attr-defined]
            self.send_error(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)
            return False
        if ok:   # the request is in: the deadline for answering it
            self.server.set_deadline(self.connection, REQUEST_DEADLINE_S)
        return ok

    def log_message(self, format: str, *args: Any) -> None:   # noqa: A002 - BaseHTTPRequestHandler's name
        log.debug("web %s: " + format, self.address_string(), *args)

    # -- methods

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def do_GET(self) -> None:
        self._serve(head=False)

    def _not_allowed(self) -> None:
        self.close_connection = True
        self._send(HTTPStatus.METHOD_NOT_ALLOWED, b"read-only: GET and HEAD only; operator actions are on the "
                                                  b"control socket\n", "text/plain; charset=utf-8",
                   extra={"Allow": "GET, HEAD", "Connection": "close"})

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed

    # -- answers

    def _send(self, status: int, body: bytes, ctype: str, *, head: bool = False, cache: str = "no-store",
              extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", cache)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Content-Security-Policy", CSP)
        if self.server.tls is not None:
            self.send_header("Strict-Transport-Security", "max-age=31536000")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, status: int, obj: Any, head: bool) -> None:
        body = obj if isinstance(obj, bytes) else json.dumps(obj, separators=(",", ":"), default=str).encode()
        self._send(status, body, "application/json", head=head)

    def _error(self, status: int, message: str, head: bool) -> None:
        self._json(status, {"error": message}, head)

    def _host_ok(self) -> bool:
        if not self.server.loopback:
            return True
        host = (self.headers.get("Host") or "").strip().lower()
        if host.startswith("["):
            name = host[:host.find("]") + 1]
        else:
            name = host.rpartition(":")[0] if ":" in host else host
        return name in LOOPBACK_NAMES

    def _serve(self, head: bool) -> None:
        if not self._host_ok():
            self.close_connection = True
            self._send(HTTPStatus.MISDIRECTED_REQUEST, b"this page answers only to a loopback host name\n",
                       "text/plain; charset=utf-8", head=head)
            return
        if self.server.auth is not None and self.server.auth.check(self.headers.get("Authorization")) is None:
            self._send(HTTPStatus.UNAUTHORIZED, b"credentials needed\n", "text/plain; charset=utf-8", head=head,
                       extra={"WWW-Authenticate": 'Basic realm="hazard-gateway", charset="UTF-8"'})
            return
        url = urlsplit(self.path)
        query = parse_qs(url.query, max_num_fields=8)
        path = url.path
        try:
            if path in ("/", "/index.html"):
                self._page(query, head)
            elif path.startswith("/static/"):
                self._static(path.removeprefix("/static/"), head)
            elif path == "/api/status":
                self._json(HTTPStatus.OK, self.server.data.status_body(), head)
            elif path == "/api/trend":
                self._trend(query, head)
            elif path == "/api/labels":
                self._json(HTTPStatus.OK, labels(self._lang(query)), head)
            else:
                self._error(HTTPStatus.NOT_FOUND, "not found", head)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _lang(self, query: dict[str, list[str]]) -> str:
        asked = (query.get("lang") or [""])[0]
        if asked in (CHINESE, ENGLISH):
            return asked
        return language_for_accept(self.headers.get("Accept-Language"))

    def _page(self, query: dict[str, list[str]], head: bool) -> None:
        lang = self._lang(query)
        lab = labels(lang)
        # the labels go into a JSON data block (not executed; CSP allows scripts from 'self' only); '<' escaped so
        # no text can close the element
        data = json.dumps(lab, ensure_ascii=False).replace("<", "\\u003c")
        body = PAGE.format(lang="zh-CN" if lang == CHINESE else "en", title=html.escape(lab["title"]),
                           labels=data).encode("utf-8")
        self._send(HTTPStatus.OK, body, "text/html; charset=utf-8", head=head,
                   extra={"Content-Language": "zh-CN" if lang == CHINESE else "en", "Vary": "Accept-Language"})

    def _static(self, name: str, head: bool) -> None:
        path = STATIC_DIR / name
        if "/" in name or name.startswith(".") or path.suffix not in STATIC_TYPES or not path.is_file():
            self._error(HTTPStatus.NOT_FOUND, "not found", head)
            return
        self._send(HTTPStatus.OK, path.read_bytes(), STATIC_TYPES[path.suffix], head=head, cache="max-age=300")

    def _trend(self, query: dict[str, list[str]], head: bool) -> None:
        tag = (query.get("tag") or [""])[0]
        try:
            hours = float((query.get("hours") or ["1"])[0])
        except ValueError:
            hours = -1.0
        if not 0 < hours <= MAX_HOURS:
            self._error(HTTPStatus.BAD_REQUEST, f"hours must be > 0 and <= {MAX_HOURS:g}", head)
            return
        if not tag or not self.server.data.knows_tag(tag):
            self._error(HTTPStatus.NOT_FOUND, f"unknown tag {tag!r}", head)
            return
        if self.server.store is None:
            self._error(HTTPStatus.SERVICE_UNAVAILABLE, "no store", head)
            return
        if not self.server.trend_lock.acquire(timeout=TREND_WAIT_S):
            self._send(HTTPStatus.SERVICE_UNAVAILABLE, b'{"error":"busy: another trend is being read"}',
                       "application/json", head=head, extra={"Retry-After": "2"})
            return
        try:
            out = self.server.store.trend(tag, hours)
        except TrendError as exc:
            self._error(HTTPStatus.SERVICE_UNAVAILABLE, str(exc), head)
            return
        finally:
            self.server.trend_lock.release()
        out["limits"] = self.server.data.limits_of(tag)
        self._json(HTTPStatus.OK, out, head)


PAGE = """<!DOCTYPE html>
<html lang="{lang}">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/static/uPlot.min.css">
<link rel="stylesheet" href="/static/page.css">
<script id="labels" type="application/json">{labels}</script>
<script src="/static/uPlot.iife.min.js" defer></script>
<script src="/static/page.js" defer></script>
</head>
<body>
<header id="top"></header>
<main id="main"></main>
</body>
</html>
"""
