"""RTU local echo of 2-wire RS-485 adapters, over the paced hil SerialLine.

SerialLine(local_echo=True) hears every character the gateway transmits, as
a 2-wire adapter with its receiver left enabled does. A small slave thread
on the device-side tty answers FC3 reads of holding register 0 with 1234 and
echoes FC6 writes.
"""

from __future__ import annotations

import struct
import threading

import pytest
import serial

from drivers.modbus import LinkTimeout, ModbusDevice, ModbusLinks, ModbusPoint, crc_ok, with_crc
from gateway.model import Quality
from hil.serial_line import TO_DEVICE, SerialLine

pytestmark = pytest.mark.timeout(30)


class Slave:
    """Unit 1 on the device side: FC3 -> [1234]; FC6 -> echo (unless ``silent``)."""

    def __init__(self, path: str) -> None:
        self.ser = serial.Serial(path, 19200, timeout=0.05)
        self.silent = False
        self.requests: list[bytes] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        buf = b""
        while not self._stop.is_set():
            buf += self.ser.read(64)
            while len(buf) >= 8:
                frame, buf = buf[:8], buf[8:]
                if not crc_ok(frame):
                    buf = frame[1:] + buf  # garbled: resynchronise one byte further on
                    continue
                self.requests.append(frame)
                if self.silent:
                    continue
                if frame[1] == 3:
                    self.ser.write(with_crc(bytes([1, 3, 2]) + struct.pack(">H", 1234)))
                elif frame[1] == 6:
                    self.ser.write(frame)

    def close(self) -> None:
        self._stop.set()
        self._t.join(2)
        self.ser.close()


@pytest.fixture
def bus():
    line = SerialLine(19200, local_echo=True)
    dev, gw = line.start()
    slave = Slave(dev)
    yield line, gw, slave
    slave.close()
    line.stop()


def _device(link) -> ModbusDevice:
    return ModbusDevice("gd", link, 1, [ModbusPoint("g", 1, "holding_register", 0, writable=True)], "modbus_rtu",
                        retries=0)


async def test_local_echo_is_consumed_and_value_read(bus):
    line, gw, slave = bus
    links = ModbusLinks()
    try:
        link = links.rtu(gw, 19200, timeout_s=0.3, local_echo=True)
        d = _device(link)
        for _ in range(3):
            (r,) = await d.read()
            assert r.quality is Quality.GOOD and r.value == 1234
        assert link.echo_faults == 0 and link.discarded_frames == 0  # the echo never reached the scanner
    finally:
        await links.close_all()


async def test_echo_mismatch_is_a_comm_fault(bus):
    line, gw, slave = bus
    links = ModbusLinks()
    try:
        link = links.rtu(gw, 19200, timeout_s=0.3, local_echo=True)
        d = _device(link)
        line.corrupt_next(TO_DEVICE)  # the wire garbles our request: the echo shows it
        (r,) = await d.read()
        assert r.quality is Quality.BAD and r.value is None and r.reason == "comm fault: echo mismatch"
        assert link.echo_faults == 1 and link.opens == 1  # a line fault, not a port fault: no reopen
        (r,) = await d.read()
        assert r.value == 1234
    finally:
        await links.close_all()


async def test_missing_echo_is_a_comm_fault():
    line = SerialLine(19200, local_echo=False)  # an adapter that does not echo, configured as if it did
    dev, gw = line.start()
    slave = Slave(dev)
    slave.silent = True
    links = ModbusLinks()
    try:
        d = _device(links.rtu(gw, 19200, timeout_s=0.1, local_echo=True))
        (r,) = await d.read()
        assert r.quality is Quality.BAD and r.reason == "comm fault: no local echo"
    finally:
        await links.close_all()
        slave.close()
        line.stop()


async def test_without_local_echo_read_echo_is_discarded_but_write_echo_fakes_an_ack(bus):
    line, gw, slave = bus
    links = ModbusLinks()
    try:
        link = links.rtu(gw, 19200, timeout_s=0.3)
        d = _device(link)
        (r,) = await d.read()
        # the echoed FC3 request is a CRC-valid 8-byte frame, not a 7-byte reply: the scanner drops it
        assert r.value == 1234 and link.discarded_frames == 1
        # FC6: the echo of the request is byte-identical to a correct reply, so a silent slave's write
        # looks acknowledged; only the echo handling tells them apart (why local_echo exists)
        slave.silent = True
        assert await link.write_register(1, 0, 7) == (0, 7)
        echo_link = ModbusLinks()
        try:
            e_link = echo_link.rtu(gw, 19200, timeout_s=0.1, local_echo=True)
            await link.close()  # release the port (exclusive) for the echo-aware link
            with pytest.raises(LinkTimeout):
                await e_link.write_register(1, 0, 7)
        finally:
            await echo_link.close_all()
    finally:
        await links.close_all()


def test_links_refuse_mixed_local_echo():
    links = ModbusLinks()
    links.rtu("/dev/ttyFAKE0", 9600)
    with pytest.raises(ValueError, match="local_echo"):
        links.rtu("/dev/ttyFAKE0", 9600, local_echo=True)
