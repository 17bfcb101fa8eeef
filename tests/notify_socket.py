"""The manager's side of sd_notify(3) for daemon tests: a bound AF_UNIX datagram socket that records every
message with its arrival time (time.monotonic). Used as NOTIFY_SOCKET of a daemon child process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time

from conftest import wait_for


class NotifySocket:
    """The manager's side of sd_notify(3): a bound AF_UNIX datagram socket; messages with arrival times."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="hgn")  # short: sun_path holds 108 bytes
        self.path = os.path.join(self.dir, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setblocking(False)
        self.messages: list[tuple[float, str]] = []
        self._task: asyncio.Task | None = None

    async def _recv(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await loop.sock_recv(self.sock, 65536)
            t = time.monotonic()
            for line in data.decode().split("\n"):
                if line:
                    self.messages.append((t, line))

    def start(self) -> None:
        self._task = asyncio.create_task(self._recv())

    def times(self, msg: str) -> list[float]:
        return [t for t, m in self.messages if m == msg]

    def lines(self, prefix: str) -> list[str]:
        return [m for _, m in self.messages if m.startswith(prefix)]

    async def wait_for(self, pred, timeout: float, proc: subprocess.Popen | None = None, what: str = "") -> None:
        """Until ``pred()`` holds (conftest.wait_for, every 50 ms); fails naming the last messages."""
        await wait_for(pred, timeout, what, step_s=0.05, proc=proc, detail=lambda: f"got {self.messages[-10:]}")

    async def close(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)
