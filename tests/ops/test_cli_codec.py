"""`hazard-gateway decode` / `encode`: a technician checks a register pair from a device manual.

Values from the field cases C01-C04: stdout is the value alone (a JSON number or list);
a sentinel, NaN or infinity is an error line and exit 1; bad input is exit 2, never a traceback.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e  # every test runs the command line as a child process


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("order,regs,value", [
    ("ABCD", ["4148", "0000"], 12.5),
    ("CDAB", ["0000", "3F80"], 1.0),
    ("DCBA", ["DA77", "FB41"], 31.433521270751953),
])
def test_C01_decode_float32_orders(order, regs, value):
    r = cli("decode", "--type", "float32", "--order", order, *regs)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == pytest.approx(value)


def test_C01_decode_order_all_shows_every_order_and_marks_the_implausible():
    # 12.5 as a device in CDAB sends it: the technician does not know the order yet
    r = cli("decode", "--type", "float32", "--order", "all", "0000", "4148")
    assert r.returncode == 0, r.stderr
    lines = dict(line.split("  ", 1) for line in r.stdout.splitlines())
    assert list(lines) == ["ABCD", "CDAB", "BADC", "DCBA"]
    assert json.loads(lines["CDAB"]) == 12.5
    assert lines["ABCD"] == "2.3418499935796343e-41  (subnormal: implausible)"    # a wrong word order
    assert lines["BADC"] == "2.591981769461614e-41  (subnormal: implausible)"
    assert json.loads(lines["DCBA"]) == 197632.0                                    # normal: not marked
    # one order gives NaN: said as not a value, the others still shown
    r = cli("decode", "--type", "float32", "--order", "all", "7FC0", "0000")
    assert r.returncode == 0 and r.stdout.splitlines()[0] == "ABCD  not a value: nan", r.stdout
    # no order gives a value: exit 1
    r = cli("decode", "--type", "float32", "--order", "all", "FFFF", "FFFF")
    assert r.returncode == 1 and len(r.stdout.splitlines()) == 4 and "value:" not in r.stdout.replace("not a value:", "")
    # a 16-bit type has no word order, so only ABCD and BADC are distinct
    r = cli("decode", "--type", "int16", "--order", "all", "FF38")
    assert r.returncode == 0 and r.stdout.splitlines() == ["ABCD  -200", "BADC  14591"], r.stdout


def test_C01_decode_array_keeps_order():
    r = cli("decode", "--type", "float32", "--order", "CDAB", "0000", "3FC0", "0000", "4040")
    assert json.loads(r.stdout) == [1.5, 3.0]


def test_C01_badc_is_not_abcd():
    r = cli("decode", "--type", "float32", "--order", "BADC", "8EBF", "7B14")
    assert json.loads(r.stdout) == pytest.approx(-1.11, abs=1e-6)


def test_C02_signed_with_scale():
    assert json.loads(cli("decode", "--type", "int16", "FFEC").stdout) == -20
    assert json.loads(cli("decode", "--type", "int16", "--scale", "0.1", "FF38").stdout) == pytest.approx(-20.0)


@pytest.mark.parametrize("regs", [["7FC0", "0000"], ["7F80", "0000"], ["FF80", "0000"]])
def test_C03_nan_and_infinity_exit_1(regs):
    r = cli("decode", "--type", "float32", *regs)
    assert r.returncode == 1 and r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_C04_encode_is_the_inverse():
    assert cli("encode", "--type", "float32", "--order", "CDAB", "1.0", "2.0").stdout.split() == \
        ["0000", "3F80", "0000", "4000"]
    assert cli("encode", "--type", "int16", "-10").stdout.split() == ["FFF6"]
    assert cli("encode", "--type", "uint16", "--scale", "0.01", "0.29").stdout.split() == ["001D"]  # 29, not 28


@pytest.mark.parametrize("args", [
    ["decode", "--type", "float32", "4148"],            # one register short
    ["decode", "--type", "float32", "XYZW", "0000"],    # not hex
    ["decode", "--type", "float33", "4148", "0000"],    # unknown type
    ["decode", "--type", "float32", "--order", "ACBD", "4148", "0000"],
])
def test_bad_input_exit_2_one_line(args):
    r = cli(*args)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
