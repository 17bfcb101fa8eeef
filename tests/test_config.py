"""Config validation: every mistake is FILE:LINE:COL with the key path, exit 2, never a traceback.

The corpus in tests/data/bad_configs/ holds one broken file per mistake; the first
line of each says where the error must be reported and a word of the message:
``# expect: LINE:COL text``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parent.parent
CORPUS = sorted((Path(__file__).parent / "data" / "bad_configs").glob("*.yaml"))


def _expect(path: Path) -> tuple[int, int, str]:
    m = re.match(r"# expect: (\d+):(\d+) (.+)", path.read_text().splitlines()[0])
    assert m, f"{path.name}: first line must be '# expect: LINE:COL text'"
    return int(m[1]), int(m[2]), m[3]


def test_corpus_is_large_enough():
    assert len(CORPUS) >= 20


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.stem)
def test_bad_config_reports_file_line_col(path: Path):
    line, col, text = _expect(path)
    with pytest.raises(ConfigError) as ei:
        load_config(path)
    problems = ei.value.problems
    hit = [p for p in problems if p.line == line and p.col == col and text in p.message + " " + p.path]
    assert hit, f"expected {line}:{col} '{text}', got:\n{ei.value}"
    assert str(hit[0]).startswith(f"{path}:{line}:{col}: ")


@pytest.mark.parametrize("path", CORPUS[:6], ids=lambda p: p.stem)
def test_check_command_exits_2_with_one_line_per_problem(path: Path):
    line, col, _ = _expect(path)
    r = subprocess.run([sys.executable, "-m", "gateway.cli", "check", str(path)], capture_output=True, text=True)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert f"{path}:{line}:{col}:" in r.stderr
    assert all(re.match(r"^\S+:\d+:\d+: ", ln) for ln in r.stderr.splitlines())


def test_all_problems_reported_at_once(tmp_path: Path):
    f = tmp_path / "two.yaml"
    f.write_text("gateway: {id: s}\nkeys: {private_key: k}\ndevices:\n"
                 "  - {name: p, protocol: modbus_tcp, host: h, tags: [{name: a, address: 5}, {name: b, address: 40001, typo: 1}]}\n"
                 "bogus: 1\n")
    with pytest.raises(ConfigError) as ei:
        load_config(f)
    lines = str(ei.value).splitlines()
    assert len(lines) == 3, lines
    assert any("ambiguous" in x for x in lines) and any("typo" in x for x in lines) and any(":5:1: bogus" in x for x in lines)


def test_missing_file_is_one_line(tmp_path: Path):
    r = subprocess.run([sys.executable, "-m", "gateway.cli", "check", str(tmp_path / "nope.yaml")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip() == f"{tmp_path / 'nope.yaml'}:1:1: no such file"


def test_demo_config_is_valid():
    cfg = load_config(ROOT / "config" / "demo.yaml")
    assert [d.protocol for d in cfg.model.devices].count("modbus_rtu") == 3
    assert {i.name for i in cfg.model.interlocks} == {"T101_overfill", "T102_overfill", "gas_esd"}
    assert cfg.warnings == []


def test_gas_setpoint_looser_than_standard_warns(tmp_path: Path):
    f = tmp_path / "loose.yaml"
    f.write_text("gateway: {id: s}\nkeys: {private_key: k}\ndevices:\n"
                 "  - name: p\n    protocol: modbus_tcp\n    host: h\n"
                 "    tags: [{name: a, address: 40001, unit: '%LEL', alarms: {gas: combustible, H: 30}}]\n")
    cfg = load_config(f)
    assert len(cfg.warnings) == 1
    w = cfg.warnings[0]
    assert (w.line, "25") == (7, "25") and "GB/T 50493-2019" in w.message and "30" in w.message


def test_reference_notation_resolves_to_protocol_address(tmp_path: Path):
    """C05: 40001 -> holding 0, 400002 -> holding 1, 30001 -> input 0, {table, address} as given."""
    f = tmp_path / "c05.yaml"
    f.write_text("gateway: {id: s}\nkeys: {private_key: k}\ndevices:\n"
                 "  - name: p\n    protocol: modbus_tcp\n    host: h\n    tags:\n"
                 "      - {name: a, address: 40001}\n      - {name: b, address: 400002}\n"
                 "      - {name: c, address: 30001}\n      - {name: d, address: {table: holding_register, address: 0}}\n")
    tags = load_config(f).model.devices[0].tags
    assert [t.table_address() for t in tags] == [("holding_register", 0), ("holding_register", 1),
                                                 ("input_register", 0), ("holding_register", 0)]


def test_daemon_refuses_private_key_readable_by_others(tmp_path: Path):
    from gateway.signing import keygen

    keys = tmp_path / "keys"
    keygen(keys)
    key = keys / "private.pem"
    assert (key.stat().st_mode & 0o777) == 0o600
    cfg = tmp_path / "gw.yaml"
    cfg.write_text("gateway: {id: s, state_dir: state}\nkeys: {private_key: keys/private.pem}\n"
                   "uplink: {url: 'https://127.0.0.1:9/v1/batches'}\ndevices:\n"
                   "  - {name: p, protocol: modbus_tcp, host: 127.0.0.1, port: 9, tags: [{name: a, address: 40001}]}\n")
    os.chmod(key, 0o644)
    r = subprocess.run([sys.executable, "-m", "gateway.cli", "run", "--config", str(cfg)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    assert "private.pem" in r.stderr and ("group" in r.stderr or "others" in r.stderr or "0644" in r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1
