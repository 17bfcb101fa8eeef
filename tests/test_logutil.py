"""gateway.logutil: one line per event, sd-daemon prefixes only under journald, rate limiting."""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.logutil import OneLineFormatter, RateLimitingHandler, setup_logging

ROOT = Path(__file__).resolve().parent.parent


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
            "from gateway.logutil import setup_logging\n"
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
