"""A scripted Modbus RTU bus on a pty pair, for driver tests (not a test module)."""

from __future__ import annotations

import os
import select
import threading
import time
import tty


class RawRtu:
    """Scripted RTU bus on a pty: the gateway opens ``path``; handler(frame) -> bytes to send | None."""

    def __init__(self, handler):
        self.handler = handler
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)
        self.frames: list[tuple[float, bytes]] = []
        self._stop = False
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        buf = b""
        while not self._stop:
            r, _, _ = select.select([self.master], [], [], 0.05)
            if not r:
                continue
            try:
                buf += os.read(self.master, 4096)
            except OSError:
                return
            # requests are 8 bytes (FC1-6) or 9 + n (FC15/16)
            while len(buf) >= 8:
                n = 9 + buf[6] if buf[1] in (15, 16) else 8
                if len(buf) < n:
                    break
                frame, buf = buf[:n], buf[n:]
                self.frames.append((time.monotonic(), frame))
                out = self.handler(frame)
                if out:
                    for chunk in out if isinstance(out, list) else [out]:
                        os.write(self.master, chunk)

    def close(self):
        self._stop = True
        self._t.join(1)
        os.close(self.master)
        os.close(self.slave)
