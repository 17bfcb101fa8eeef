"""gateway.ops.logutil: one line per event, sd-daemon prefixes only under journald, rate limiting."""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from gateway.ops.logutil import OneLineFormatter, RateLimitingHandler, setup_logging

ROOT = Path(__file__).resolve().parents[2]


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def limited(interval: float = 60.0):
    target, clock = ListHandler(), Clock()
    h = RateLimitingHandler(target, interval_s=interval, clock=clock)
    lg = logging.Logger("t")
    lg.addHandler(h)
    return lg, h, target, clock


def test_repeating_fault_first_then_summary_per_interval():
    lg, h, out, clock = limited(60)
    for _ in range(50):
        lg.warning("device GD1: timeout")
        clock.t += 1
    assert out.lines == ["device GD1: timeout"]            # first only, within the interval
    clock.t += 11                                           # the interval is over: next record flushes
    lg.warning("device GD1: timeout")
    assert out.lines == ["device GD1: timeout", "device GD1: timeout (repeated 49 times in the last 61 s)",
                         "device GD1: timeout"]


def test_distinct_keys_and_info_are_not_limited():
    lg, h, out, clock = limited(60)
    lg.warning("device GD1: timeout")
    lg.warning("device GD2: timeout")
    lg.warning("x", extra={"key": "k"})
    lg.warning("y", extra={"key": "k"})                     # same explicit key: limited
    for _ in range(3):
        lg.info("alarm GD1.gas H active")                   # events are never dropped
    assert out.lines == ["device GD1: timeout", "device GD2: timeout", "x"] + ["alarm GD1.gas H active"] * 3
    h.flush()                                               # shutdown writes the pending summary
    assert out.lines[-1] == "y (repeated 1 time in the last 1 s)"


def test_one_line_per_event_with_exception():
    f = OneLineFormatter(journald=False)
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        rec = logging.LogRecord("hazard_gateway", logging.ERROR, __file__, 1, "poll failed:\n  device %s", ("GD1",),
                                sys.exc_info())
    line = f.format(rec)
    assert "\n" not in line
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z ERROR hazard_gateway: poll failed: \|   device GD1: "
                    r"ValueError: bad \| thing at test_logutil\.py:\d+$", line), line
    assert OneLineFormatter(journald=True).format(rec).startswith("<3>hazard_gateway: poll failed:")


@pytest.mark.parametrize("journal", ["match", "other", None])
def test_journald_detection_in_a_process(tmp_path: Path, journal):
    out = tmp_path / "err.log"
    code = ("import logging, os, sys\n"
            "from gateway.ops.logutil import setup_logging\n"
            "st = os.fstat(2)\n"
            f"j = {journal!r}\n"
            "if j == 'match': os.environ['JOURNAL_STREAM'] = f'{st.st_dev}:{st.st_ino}'\n"
            "elif j == 'other': os.environ['JOURNAL_STREAM'] = '1:2'\n"
            "else: os.environ.pop('JOURNAL_STREAM', None)\n"
            "setup_logging('INFO')\n"
            "logging.getLogger('hazard_gateway').warning('link down')\n"
            "logging.getLogger('hazard_gateway').info('started')\n")
    with out.open("w") as err:
        subprocess.run([sys.executable, "-c", code], stderr=err, check=True, cwd=ROOT, timeout=30)
    lines = out.read_text().splitlines()
    if journal == "match":
        assert lines == ["<4>hazard_gateway: link down", "<6>hazard_gateway: started"]
    else:
        assert len(lines) == 2 and re.match(r"^\S+Z WARNING hazard_gateway: link down$", lines[0]), lines


def test_unknown_level_is_one_line_error():
    with pytest.raises(ValueError, match="not one of"):
        setup_logging("LOUD", stream=io.StringIO())


# ------------------------------------------------------------------ S1: the log never blocks its caller

class BlockedPipe:
    """A pipe whose reader is not reading and whose buffer is already full: every write blocks
    (journald stalled), until drain() starts a reader."""

    def __init__(self) -> None:
        self.r, w = os.pipe()
        os.set_blocking(w, False)
        for size in (65536, 4096, 1):                # to the last byte: no short line fits any more
            try:
                while True:
                    os.write(w, b"x" * size)
            except BlockingIOError:
                pass
        os.set_blocking(w, True)
        self.stream = os.fdopen(w, "w", buffering=1, encoding="utf-8")
        self.data = bytearray()
        self._reader: threading.Thread | None = None

    def drain(self) -> None:
        def read() -> None:
            while chunk := os.read(self.r, 65536):
                self.data += chunk
        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()

    def text(self) -> str:
        return self.data.decode(errors="replace").lstrip("x")

    def close(self) -> None:
        self.stream.close()
        if self._reader is not None:
            self._reader.join(5)
        os.close(self.r)


@pytest.fixture
def blocked_log():
    pipe = BlockedPipe()
    root = logging.getLogger()
    level = root.level
    handler = setup_logging("INFO", stream=pipe.stream, queue_size=5)
    try:
        yield pipe, handler
    finally:
        if pipe._reader is None:
            pipe.drain()
        root.removeHandler(handler)
        handler.close()
        root.setLevel(level)
        pipe.close()


def test_a_blocked_log_stream_never_blocks_the_caller_and_drops_are_counted(blocked_log):
    pipe, handler = blocked_log
    lg = logging.getLogger("hazard_gateway.test")
    # another test in this worker may have left a level on the hazard_gateway loggers: this one must log INFO
    for name in ("hazard_gateway", "hazard_gateway.test"):
        logging.getLogger(name).setLevel(logging.NOTSET)
    lg.disabled = False

    def burst() -> None:
        for i in range(200):
            lg.info("event %d", i)                   # INFO: not rate-limited, every line is queued
    th = threading.Thread(target=burst, daemon=True)
    t0 = time.monotonic()
    th.start()
    th.join(5)
    assert not th.is_alive(), "logging blocked its caller"
    took = time.monotonic() - t0
    assert took < 1.0, took                          # 200 in-memory puts (generous for a loaded machine)
    queued = handler.target
    assert queued.dropped >= 200 - 5 - 1, queued.dropped  # the queue holds 5, the writer is stuck on one
    pipe.drain()                                     # journald reads again
    deadline = time.monotonic() + 5
    while queued.queue.qsize() and time.monotonic() < deadline:
        time.sleep(0.01)
    lg.info("after the stall")
    handler.flush()
    while "after the stall" not in pipe.text() and time.monotonic() < deadline:
        time.sleep(0.01)                             # the reader thread has not read the pipe yet
    lines = pipe.text().splitlines()
    # one note each time room returned after drops (the writer may free a slot during the burst too)
    notes = [int(m.group(1)) for ln in lines
             if (m := re.search(r"WARNING hazard_gateway.log: (\d+) log lines? dropped \(log writer stalled\)$", ln))]
    assert notes and sum(notes) == queued.dropped, (notes, queued.dropped, lines[-5:])
    assert lines[-1].endswith("hazard_gateway.test: after the stall")


def test_a_blocked_log_stream_does_not_delay_an_interlock_trip(tmp_path: Path, blocked_log):
    """S1: Gateway.log_event logs every alarm / interlock event at INFO inside the safety step. With the
    log's stream blocked (a full pipe nobody reads), the safety step still runs at once and trips."""
    import asyncio

    from gateway.config import load_config
    from gateway.runtime.gateway import Gateway
    from gateway.model import Quality, Reading

    pipe, handler = blocked_log
    (tmp_path / "gw.yaml").write_text("""gateway: {id: s1, state_dir: state}
keys: {private_key: k}
devices:
  - name: plc
    protocol: modbus_tcp
    host: 127.0.0.1
    port: 9
    tags:
      - {name: T1, address: 30001, alarms: {HH: 10}}
      - {name: XV1, address: {table: coil, address: 0}, type: bool, writable: true}
interlocks:
  - name: il
    inputs: [{tag: T1, condition: HH}]
    actions: [{output: XV1, value: 0}]
""")
    gw = Gateway(load_config(tmp_path / "gw.yaml"))
    took: list[float] = []

    def safety_steps() -> None:
        logging.getLogger("hazard_gateway").warning("the writer is now stuck on this line")

        async def steps() -> None:
            for v in (5.0, 12.0):                    # within limits, then HH: alarm + trip events, logged
                t0 = time.monotonic()
                gw.on_readings([Reading("T1", v, "m", Quality.GOOD, time.time())])
                took.append(time.monotonic() - t0)
            for i in range(50):                      # plus a burst of fault lines from the same tick
                logging.getLogger("hazard_gateway").error("device plc%d: timeout", i)
            await asyncio.sleep(0)
        asyncio.run(steps())

    th = threading.Thread(target=safety_steps, daemon=True)
    th.start()
    th.join(5)
    assert not th.is_alive(), "the safety step is blocked on the log stream"
    assert gw.interlocks.is_tripped("il")
    assert max(took) < 0.05, took                    # in-memory step: milliseconds, whatever the log does
    assert handler.target.dropped > 0
