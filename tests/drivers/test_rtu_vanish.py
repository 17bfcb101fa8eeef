"""A vanished serial port (USB adapter unplugged, /dev/serial/by-id link re-pointed).

The gateway opens a symlink, as it would /dev/serial/by-id/...; the paced
hil SerialLine behind it is stopped (its ptys close, the link disappears:
the adapter is gone), then a new line is started and the same symlink now
points at a different pty (the adapter came back as another ttyUSBn). The
RtuLink must report BAD "comm fault" without raising, reopen with backoff
and read again without a restart, and hold no file descriptor of the old port.
"""

from __future__ import annotations

import asyncio
import os
import struct
import threading
import time

import pytest
import serial

from drivers.modbus import Backoff, ModbusDevice, ModbusPoint, RtuLink, crc_ok, with_crc
from gateway.model import Quality
from hil.serial_line import SerialLine
from conftest import open_fds

pytestmark = pytest.mark.timeout(30)


class Slave:
    """Unit 1 on a device-side tty: answers FC3 reads of one register with ``value``."""

    def __init__(self, path: str, value: int) -> None:
        self.ser = serial.Serial(path, 19200, timeout=0.05)
        self.value = value
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        buf = b""
        while not self._stop.is_set():
            try:
                buf += self.ser.read(64)
            except (serial.SerialException, OSError):
                return
            while len(buf) >= 8:
                frame, buf = buf[:8], buf[8:]
                if not crc_ok(frame):
                    buf = frame[1:] + buf
                    continue
                self.ser.write(with_crc(bytes([1, 3, 2]) + struct.pack(">H", self.value)))

    def close(self) -> None:
        self._stop.set()
        self._t.join(2)
        self.ser.close()


async def _read_until(d: ModbusDevice, pred, limit_s: float = 5.0):
    deadline = time.monotonic() + limit_s
    while True:
        (r,) = await d.read()
        if pred(r) or time.monotonic() > deadline:
            return r
        await asyncio.sleep(0.05)


async def test_vanished_port_reopens_on_the_repointed_path_without_fd_leak(tmp_path):
    link_path = str(tmp_path / "ttyUSB-by-id")
    before = open_fds()
    line = SerialLine(19200)
    dev, gw = line.start(gateway_link=link_path)
    slave = Slave(dev, 111)
    link = RtuLink(link_path, 19200, timeout_s=0.2, backoff=Backoff(initial_s=0.1, max_s=0.4))
    d = ModbusDevice("gd", link, 1, [ModbusPoint("g", 1, "holding_register", 0)], "modbus_rtu", retries=0,
                     offline_after=1000)
    line2 = slave2 = None
    try:
        (r,) = await d.read()
        assert r.value == 111 and link.opens == 1

        slave.close()
        line.stop()  # unplugged: the ptys are gone and so is the symlink
        assert not os.path.lexists(link_path)
        for _ in range(3):
            (r,) = await d.read()  # never raises
            assert r.quality is Quality.BAD and r.value is None and r.reason.startswith("comm fault")
        assert not link.is_open

        line2 = SerialLine(19200)
        dev2, gw2 = line2.start(gateway_link=link_path)  # plugged back in: same path, another pty
        slave2 = Slave(dev2, 222)
        r = await _read_until(d, lambda r: r.value == 222)
        assert r.quality is Quality.GOOD and r.value == 222
        assert link.opens == 2
        assert os.path.realpath(link_path) == gw2
    finally:
        await link.close()
        if slave2 is not None:
            slave2.close()
        if line2 is not None:
            line2.stop()
        if slave.ser.is_open:
            slave.close()
        line.stop()
    assert open_fds() == before  # every port the link opened (and the lines' ptys) is closed


async def test_repointed_path_is_followed_even_if_the_old_tty_lives_on(tmp_path):
    """udev moves the by-id link to a new tty while the old one still exists (and answers nothing):
    the stale fd would time out forever; the link notices the path names another device and reopens."""
    link_path = str(tmp_path / "ttyUSB-by-id")
    before = open_fds()
    old, new = SerialLine(19200), SerialLine(19200)
    dev, gw = old.start(gateway_link=link_path)
    slave = Slave(dev, 111)
    dev2, gw2 = new.start()
    slave2 = Slave(dev2, 222)
    link = RtuLink(link_path, 19200, timeout_s=0.2, backoff=Backoff(initial_s=0.1, max_s=0.4))
    d = ModbusDevice("gd", link, 1, [ModbusPoint("g", 1, "holding_register", 0)], "modbus_rtu", retries=0,
                     offline_after=1000)
    try:
        assert (await d.read())[0].value == 111
        slave.close()  # the old tty stays, nothing answers on it
        tmp = link_path + ".new"
        os.symlink(gw2, tmp)
        os.replace(tmp, link_path)
        r = await _read_until(d, lambda r: r.value == 222, limit_s=3.0)
        assert r.value == 222 and link.opens == 2
    finally:
        await link.close()
        slave2.close()
        new.stop()
        old.stop()
        if os.path.lexists(link_path):
            os.unlink(link_path)
    assert open_fds() == before
