"""A command whose reader stops early (`hazard-gateway decode ... | head -c 10`) ends quietly, as any filter does:
no traceback, no 'Broken pipe' line, exit 141 (128 + SIGPIPE)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_reader_that_stops_early_gets_no_error_line():
    regs = ["1234"] * 60000   # one JSON list of 60,000 numbers: more than a pipe holds
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "decode", "--type", "uint16", *regs], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = proc.stdout.read(10)   # a little, then stop reading, as `head -c 10` does
    proc.stdout.close()
    err = proc.stderr.read().decode()
    rc = proc.wait(timeout=60)
    assert first.startswith(b"[4660, ")
    assert rc == 141 and err == "", (rc, err)
