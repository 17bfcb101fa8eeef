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

ROOT = Path(__file__).resolve().parents[2]
CORPUS = sorted((Path(__file__).parents[1] / "data" / "bad_configs").glob("*.yaml"))


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


@pytest.mark.e2e
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


@pytest.mark.e2e
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


@pytest.mark.e2e
def test_daemon_refuses_private_key_readable_by_others(tmp_path: Path):
    from gateway.chain.signing import keygen

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


RESET_CFG = """gateway: {id: s}
keys: {private_key: k}
devices:
  - name: p
    protocol: modbus_tcp
    host: h
    tags:
      - {name: L1, address: 30001, alarms: {HH: 10}}
      - {name: L2, address: 30002, alarms: {HH: 10}}
      - {name: XV1, address: 40001, writable: true}
      - {name: BEACON, address: 40002, writable: true}
interlocks:
  - name: il1
    inputs: [{tag: L1, condition: HH}]
    actions: [{output: XV1, value: 0}, {output: BEACON, value: 1, reset_value: 0}]
  - name: il2
    inputs: [{tag: L2, condition: HH}]
    actions: [{output: BEACON, value: 1, reset_value: 0}]
"""


def test_reset_value_from_config_is_written_after_a_reset(tmp_path: Path):
    """A2: actions[].reset_value reaches gateway.safety.interlocks.OutputAction; a reset writes it (beacon off)."""
    from gateway.safety.alarms import AlarmEngine
    from gateway.runtime.build import alarm_configs, interlock_specs
    from gateway.safety.interlocks import InterlockEngine
    from gateway.model import Quality, Reading

    f = tmp_path / "gw.yaml"
    f.write_text(RESET_CFG)
    cfg = load_config(f)
    alarms, il = AlarmEngine(alarm_configs(cfg)), InterlockEngine(interlock_specs(cfg))
    alarms.update(Reading("L1", 12.0, "m", Quality.GOOD, 0.0), 0.0)
    alarms.update(Reading("L2", 1.0, "m", Quality.GOOD, 0.0), 0.0)
    cmds, _ = il.evaluate(alarms, 0.0)
    assert [(c.tag, c.value) for c in cmds] == [("XV1", 0), ("BEACON", 1)]
    alarms.update(Reading("L1", 1.0, "m", Quality.GOOD, 1.0), 1.0)
    il.evaluate(alarms, 1.0)
    cmds, _ = il.reset("il1", "op", "clear", alarms=alarms, now_mono=2.0)
    assert [(c.tag, c.value, c.kind) for c in cmds] == [("BEACON", 0, "reset")]   # XV1 stays closed


def test_check_refuses_one_output_with_two_safe_or_reset_values(tmp_path: Path):
    """A2: an output written by two interlocks must get the same safe value and the same reset value."""
    f = tmp_path / "gw.yaml"
    lines = RESET_CFG.splitlines()
    il2 = len(lines) - 1                         # il2's actions line is the last line
    f.write_text(RESET_CFG.replace("[{output: BEACON, value: 1, reset_value: 0}]",
                                   "[{output: BEACON, value: 0, reset_value: 1}]"))
    with pytest.raises(ConfigError) as e:
        load_config(f)
    msgs = [(p.line, p.path, p.message) for p in e.value.problems]
    assert (il2 + 1, "interlocks[1].actions[0].value",
            "output 'BEACON' gets safe value 0 here but 1 from interlocks[0].actions[1] (il1): one output, "
            "one safe state") in msgs, msgs
    assert any(m[1] == "interlocks[1].actions[0].reset_value" and "one reset value" in m[2] for m in msgs), msgs
    f.write_text(RESET_CFG.replace("[{output: BEACON, value: 1, reset_value: 0}]", "[{output: BEACON, value: 1}]"))
    with pytest.raises(ConfigError, match="gets reset_value None here but 0 from interlocks"):
        load_config(f)


def test_check_uses_the_alarm_engines_presets_and_warnings(tmp_path: Path):
    """A1: `check` judges alarms with gateway.safety.alarms (gas_preset, setpoint_warnings), the same translation
    the running gateway uses (config.tag_alarm_config), not a copy with its own numbers."""
    f = tmp_path / "a1.yaml"
    head = ("gateway: {id: s}\nkeys: {private_key: k}\ndevices:\n"
            "  - name: p\n    protocol: modbus_tcp\n    host: h\n    tags:\n")
    f.write_text(head +
                 "      - {name: O2, address: 30001, unit: '%VOL', alarms: {gas: oxygen, L: 18.0}}\n"
                 "      - {name: LEL, address: 30002, unit: '%LEL', alarms: {gas: combustible,\n"
                 "         HH: {setpoint: 50, on_delay_s: 45}}}\n")
    ws = load_config(f).warnings
    got = {(w.line, w.path, w.message) for w in ws}
    assert (8, "devices[0].tags[0].alarms", "L set point 18 is looser than the GB/T 50493-2019 5.5.2 limit 19.5") \
        in got, got
    assert (9, "devices[0].tags[1].alarms", "HH on-delay 45 s exceeds the 5 s gas on-delay cap (it adds to the "
            "detector's response); capped at 5 s") in got, got
    # toxic without oel has no preset: only the explicit H exists, so an interlock on HH is refused
    f.write_text(head +
                 "      - {name: H2S, address: 30001, unit: ppm, alarms: {gas: toxic, H: 10}}\n"
                 "      - {name: XV, address: 40001, writable: true}\n"
                 "interlocks:\n  - name: il\n    inputs: [{tag: H2S, condition: HH}]\n"
                 "    actions: [{output: XV, value: 0}]\n")
    with pytest.raises(ConfigError, match="tag 'H2S' has no HH limit"):
        load_config(f)
