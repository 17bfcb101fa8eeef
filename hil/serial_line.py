"""Serial-line emulator: two pty pairs bridged by a thread paced at the baud rate.

A real RS-485 two-wire bus carries one character at a time in either
direction (half duplex). This emulator gives a device simulator and the
gateway each their own tty (the slave end of a Linux pty pair) and copies
bytes between the two master ends, releasing each character only when it
would have finished arriving on a real wire:

    char_time_s = bits_per_char / baudrate

with ``bits_per_char`` = 10 for 8N1 (start + 8 data + stop) and 11 for 8N2 or
8E1 (Modbus over Serial Line V1.02, section 2.5.1: "11 bits per character";
8N1 is the non-standard but common "no parity, 1 stop" variant). A Linux pty
cannot hold parity (opening one as 8E1 fails with EINVAL), so test 8E1 timing
as 8N2 with ``bits_per_char=11``.

So a Modbus RTU request of 8 bytes at 9600 baud 8N1 takes at least
8 * 10 / 9600 = 8.33 ms to reach the other side, and the t3.5 inter-frame
silence (section 2.5.1.1) is as real as the host scheduler allows (the thread
releases characters with sub-millisecond jitter, never early).

Both ptys are put in raw mode (termios, cfmakeraw equivalent via tty.setraw)
so no byte (0x0D, 0x11, 0x13, 0x7F ...) is translated or swallowed. The
emulator keeps its own fd on each slave end open for its whole life, so the
master never sees EIO when a peer closes and reopens its port.

Fault injection (cheap, for bus-robustness tests; see cases C08/C09):
``corrupt_next(direction)`` flips the bits of the next character,
``drop_next(direction, n)`` loses the next n characters,
``inject(direction, data)`` puts extra characters on the wire (noise or a
foreign slave's frame), ``delay_next(direction, s)`` holds the next
character back for s seconds (a late reply).

``local_echo=True`` emulates a 2-wire RS-485 adapter whose receiver stays
enabled while it transmits: every character the gateway sends comes back to
the gateway at the time it is on the wire, as the wire carries it (so a
``corrupt_next(TO_DEVICE)`` garbles the echo too).

Directions: ``"to_gateway"`` (device -> gateway) and ``"to_device"``
(gateway -> device).
"""

from __future__ import annotations

import errno
import logging
import os
import select
import termios
import threading
import time
import tty
from collections import deque
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

TO_GATEWAY = "to_gateway"
TO_DEVICE = "to_device"
_DIRECTIONS = (TO_GATEWAY, TO_DEVICE)


@dataclass
class _Faults:
    corrupt: int = 0
    drop: int = 0
    delay_s: float = 0.0
    inject: deque = field(default_factory=deque)


class SerialLine:
    """A paced, raw, bidirectional serial line between two ttys.

    baudrate: bits per second (e.g. 9600, 19200). bits_per_char: 10 for 8N1,
    11 for 8N2 / 8E1. half_duplex: True (RS-485 two-wire) makes both
    directions share one wire, so a reply cannot overlap a request.
    local_echo: the gateway hears its own transmission (see the module doc).

    Counters: ``bytes_to_gateway`` and ``bytes_to_device`` (delivered bytes).
    Raises RuntimeError from start() when called twice, OSError when a pty
    cannot be allocated.
    """

    def __init__(self, baudrate: int = 19200, bits_per_char: int = 10, half_duplex: bool = True,
                 local_echo: bool = False) -> None:
        if baudrate <= 0:
            raise ValueError(f"baudrate must be positive, got {baudrate}")
        if bits_per_char not in (10, 11, 12):
            raise ValueError(f"bits_per_char must be 10 (8N1), 11 (8N2/8E1) or 12 (8E2), got {bits_per_char}")
        self.baudrate = baudrate
        self.bits_per_char = bits_per_char
        self.half_duplex = half_duplex
        self.local_echo = local_echo
        self.char_time_s = bits_per_char / baudrate
        self.bytes_to_gateway = 0
        self.bytes_to_device = 0
        self._fds: list[int] = []
        self._dev_master = self._gw_master = -1
        self._dev_slave = self._gw_slave = -1
        self._wake_r = self._wake_w = -1
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._faults = {d: _Faults() for d in _DIRECTIONS}
        self._links: list[str] = []
        self.device_path: str | None = None
        self.gateway_path: str | None = None
        self.error: BaseException | None = None  # why the bridge thread died, if it did

    # ------------------------------------------------------------------ life cycle
    def start(self, device_link: str | None = None, gateway_link: str | None = None) -> tuple[str, str]:
        """Allocate both pty pairs and start the bridge thread.

        device_link / gateway_link: optional symlink paths created (replacing an
        existing symlink) to point at the device-side / gateway-side tty.
        Returns (device_side_path, gateway_side_path), e.g. ("/dev/pts/7", "/dev/pts/8").
        """
        if self._thread is not None:
            raise RuntimeError("SerialLine already started")
        try:
            self._dev_master, self._dev_slave = self._open_pty()
            self._gw_master, self._gw_slave = self._open_pty()
            self._wake_r, self._wake_w = os.pipe()
            self._fds += [self._wake_r, self._wake_w]
            for fd in (self._dev_master, self._gw_master, self._wake_r):
                os.set_blocking(fd, False)
            self.device_path = os.ttyname(self._dev_slave)
            self.gateway_path = os.ttyname(self._gw_slave)
            for link, target in ((device_link, self.device_path), (gateway_link, self.gateway_path)):
                if link:
                    self._make_link(link, target)
        except BaseException:
            self._close_fds()
            raise
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"SerialLine-{self.baudrate}", daemon=True)
        self._thread.start()
        return self.device_path, self.gateway_path

    def stop(self) -> None:
        """Stop the bridge thread, close every fd it opened and remove its symlinks. Idempotent."""
        if self._thread is not None:
            self._stop.set()
            self._wake()
            self._thread.join(timeout=5)
            self._thread = None
        self._close_fds()
        for link in self._links:
            try:
                if os.path.islink(link):
                    os.unlink(link)
            except OSError:
                pass
        self._links.clear()

    def __enter__(self) -> "SerialLine":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ faults
    def corrupt_next(self, direction: str = TO_GATEWAY, n: int = 1) -> None:
        """Invert the bits of the next n characters sent in ``direction`` (a CRC error at the receiver)."""
        with self._lock:
            self._fault(direction).corrupt += n

    def drop_next(self, direction: str = TO_GATEWAY, n: int = 1) -> None:
        """Lose the next n characters sent in ``direction`` (they still occupy the line time)."""
        with self._lock:
            self._fault(direction).drop += n

    def delay_next(self, direction: str = TO_GATEWAY, delay_s: float = 0.1) -> None:
        """Hold back the next character (and so everything behind it) in ``direction`` by delay_s seconds."""
        with self._lock:
            self._fault(direction).delay_s += delay_s
        self._wake()

    def inject(self, direction: str, data: bytes) -> None:
        """Put ``data`` on the line towards ``direction`` now, paced like any other characters."""
        with self._lock:
            self._fault(direction).inject.append(bytes(data))
        self._wake()

    def _fault(self, direction: str) -> _Faults:
        if direction not in self._faults:
            raise ValueError(f"direction must be one of {_DIRECTIONS}, got {direction!r}")
        return self._faults[direction]

    # ------------------------------------------------------------------ internals
    def _open_pty(self) -> tuple[int, int]:
        master, slave = os.openpty()
        self._fds += [master, slave]
        for fd in (slave, master):
            tty.setraw(fd, termios.TCSANOW)
        attrs = termios.tcgetattr(slave)
        speed = getattr(termios, f"B{self.baudrate}", None)
        if speed is not None:
            attrs[4] = attrs[5] = speed  # ispeed, ospeed: cosmetic on a pty, but what stty shows
        attrs[2] |= termios.CLOCAL | termios.CREAD
        termios.tcsetattr(slave, termios.TCSANOW, attrs)
        return master, slave

    def _make_link(self, link: str, target: str) -> None:
        if os.path.islink(link):
            os.unlink(link)
        elif os.path.exists(link):
            raise FileExistsError(f"{link}: exists and is not a symlink; refusing to replace it")
        os.symlink(target, link)
        self._links.append(link)

    def _wake(self) -> None:
        if self._wake_w >= 0:
            try:
                os.write(self._wake_w, b"x")
            except OSError:
                pass

    def _close_fds(self) -> None:
        for fd in self._fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds.clear()
        self._dev_master = self._gw_master = self._dev_slave = self._gw_slave = -1
        self._wake_r = self._wake_w = -1

    def _run(self) -> None:
        try:
            self._bridge()
        except BaseException as exc:  # a dead line must be visible, not silent
            self.error = exc
            log.error("serial line %s <-> %s stopped: %s", self.device_path, self.gateway_path, exc)

    def _bridge(self) -> None:
        """Bridge loop: read whatever arrived, release characters when their wire time has passed."""
        src = {self._dev_master: TO_GATEWAY, self._gw_master: TO_DEVICE}
        dst = {TO_GATEWAY: self._gw_master, TO_DEVICE: self._dev_master}
        # per direction: deque of [due_monotonic, byte]; wire_free: when the line (or direction) is idle again
        pending: dict[str, deque] = {d: deque() for d in _DIRECTIONS}
        wire_free = {d: 0.0 for d in _DIRECTIONS}
        out_buf: dict[str, bytearray] = {d: bytearray() for d in _DIRECTIONS}

        def schedule(direction: str, data: bytes, now: float) -> None:
            with self._lock:
                f = self._faults[direction]
                extra = f.delay_s
                f.delay_s = 0.0
            key = TO_GATEWAY if self.half_duplex else direction
            t = max(now + extra, wire_free[key])
            for b in data:
                t += self.char_time_s
                with self._lock:
                    f = self._faults[direction]
                    if f.drop:
                        f.drop -= 1
                        continue
                    if f.corrupt:
                        f.corrupt -= 1
                        b ^= 0xFF
                pending[direction].append((t, b))
                if self.local_echo and direction == TO_DEVICE:
                    pending[TO_GATEWAY].append((t, b))
            wire_free[key] = t

        while not self._stop.is_set():
            now = time.monotonic()
            with self._lock:
                injections = {d: list(self._faults[d].inject) for d in _DIRECTIONS}
                for d in _DIRECTIONS:
                    self._faults[d].inject.clear()
            for d, chunks in injections.items():
                for chunk in chunks:
                    schedule(d, chunk, now)
            # release due characters
            for d in _DIRECTIONS:
                q = pending[d]
                while q and q[0][0] <= now:
                    out_buf[d].append(q.popleft()[1])
                if out_buf[d]:
                    try:
                        n = os.write(dst[d], bytes(out_buf[d]))
                    except BlockingIOError:
                        n = 0
                    except OSError as exc:
                        if exc.errno in (errno.EIO, errno.EAGAIN):
                            n = 0
                        else:
                            raise
                    del out_buf[d][:n]
                    if d == TO_GATEWAY:
                        self.bytes_to_gateway += n
                    else:
                        self.bytes_to_device += n
            due = [pending[d][0][0] for d in _DIRECTIONS if pending[d]]
            timeout = None if not due else max(0.0, min(due) - time.monotonic())
            if any(out_buf.values()):
                timeout = 0.001 if timeout is None else min(timeout, 0.001)
            try:
                readable, _, _ = select.select([self._dev_master, self._gw_master, self._wake_r], [], [], timeout)
            except (OSError, ValueError):
                break
            now = time.monotonic()
            for fd in readable:
                if fd == self._wake_r:
                    try:
                        os.read(fd, 4096)
                    except OSError:
                        pass
                    continue
                try:
                    data = os.read(fd, 4096)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    if exc.errno == errno.EIO:  # no peer open on that slave end; we hold one, so rare
                        continue
                    raise
                if data:
                    schedule(src[fd], data, now)
