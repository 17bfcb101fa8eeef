"""`hazard-gateway probe` against the HIL tank PLC (Modbus TCP), the PT495 gas bus (Modbus RTU on a
pty) and the OPC UA plant; the CLI runs as a real subprocess while the simulators serve in this loop."""

from __future__ import annotations

import asyncio
import json
import re
import os
import sys
from pathlib import Path

import pytest

from gateway.config import load_config
from drivers.modbus import reference
from gateway.i18n import display_width
from gateway.ops.probe import format_table, probe
from hil.gas_detectors import GasBus
from hil.opcua_plant import OpcUaPlant
from hil.tank_plc import TankPlc
from conftest import free_port as closed_port   # free a moment ago: nobody listens there

pytestmark = pytest.mark.timeout(60)

CLI = [sys.executable, "-m", "gateway.cli"]
ROOT = Path(__file__).resolve().parents[2]


def write_config(tmp: Path, plc_port: int, gas_tty: str, ua_port: int, dead_port: int | None = None) -> Path:
    dead = f"""
  - name: far_plc
    protocol: modbus_tcp
    host: 127.0.0.1
    port: {dead_port}
    timeout_ms: 200
    tags:
      - {{name: P1, address: 40010, type: int16, unit: bar}}
      - {{name: P2, address: 40011, type: int16, unit: bar}}
""" if dead_port else ""
    text = f"""
gateway: {{id: probe-test}}
keys: {{private_key: keys/private.pem}}
devices:
  - name: tank_plc
    protocol: modbus_tcp
    host: 127.0.0.1
    port: {plc_port}
    timeout_ms: 500
    tags:
      - {{name: T101.level, address: 30001, type: float32, unit: m}}
      - {{name: T102.level, address: 30007, type: float32, unit: m}}
      - {{name: XV101, address: {{table: coil, address: 0}}, type: bool, writable: true}}
      - {{name: HB, address: 40101, type: uint16}}
  - name: GD1
    protocol: modbus_rtu
    port: {gas_tty}
    baudrate: 19200
    unit_id: 1
    timeout_ms: 300
    tags:
      - {{name: GD1.gas, address: 40001, type: uint16, scale: 0.1, unit: "%LEL", sentinels: [0xFFFF]}}
  - name: GD2
    protocol: modbus_rtu
    port: {gas_tty}
    baudrate: 19200
    unit_id: 2
    timeout_ms: 300
    tags:
      - {{name: GD2.gas, address: 40001, type: uint16, scale: 0.1, unit: "%LEL", sentinels: [0xFFFF]}}
  - name: plant_ua
    protocol: opcua
    endpoint: opc.tcp://127.0.0.1:{ua_port}/hazard/
    timeout_ms: 1000
    tags:
      - {{name: AT301.H2S, node_id: "nsu=urn:hazard-gateway:hil:plant;s=GasDetector.AT301.H2S", unit: mg/m3}}
{dead}store: {{max_bytes: 1099511627776}}
"""
    path = tmp / "gw.yaml"
    path.write_text(text)
    return path


@pytest.fixture
async def sims():
    plc = TankPlc(seed=3)
    await plc.start()
    bus = GasBus(19200)
    gas_tty = await bus.start()
    plant = OpcUaPlant(port=0)
    await plant.start()
    plc.set_level("T101", 7.25)
    bus.set_lel(1, 12.5)
    bus.set_lel(2, 31.0)
    await plant.set_h2s(4.5)
    yield plc, bus, gas_tty, plant
    await plant.stop()
    await bus.stop()
    await plc.stop()


async def run_cli(*args: str, lang: str | None = None) -> tuple[int, str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), **({"LANGUAGE": lang} if lang else {}))
    proc = await asyncio.create_subprocess_exec(*CLI, *args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE, cwd=str(ROOT), env=env)
    out, err = await asyncio.wait_for(proc.communicate(), 40)
    return proc.returncode, out.decode(), err.decode()


def test_reference_notation():
    assert reference("holding_register", 0) == "40001"
    assert reference("input_register", 6) == "30007"
    assert reference("coil", 16) == "00017"
    assert reference("discrete_input", 0) == "10001"
    assert reference("holding_register", 9998) == "49999"
    assert reference("holding_register", 9999) == "410000"
    assert reference("holding_register", 65535) == "465536"


@pytest.mark.e2e
async def test_probe_rows_all_good(sims, tmp_path):
    plc, bus, gas_tty, plant = sims
    cfg = load_config(write_config(tmp_path, plc.port, gas_tty, plant.port))
    rows = {r.tag: r for r in await probe(cfg)}
    assert list(rows) == ["T101.level", "T102.level", "XV101", "HB", "GD1.gas", "GD2.gas", "AT301.H2S"]
    assert all(r.good for r in rows.values()), format_table(list(rows.values()))
    lvl = rows["T101.level"]
    assert lvl.address == "input 0 (30001)" and lvl.unit == "m" and lvl.quality == "good"
    assert abs(float(lvl.value) - 7.25) < 0.05
    assert len(lvl.raw.split()) == 2 and lvl.raw.split()[0] == "40E8"  # 7.25 = 0x40E80000 (ABCD)
    assert rows["XV101"].address == "coil 0 (00001)" and rows["XV101"].value is True and rows["XV101"].shown == "1" and rows["XV101"].raw == "1"
    assert rows["HB"].address == "holding 100 (40101)"
    assert rows["GD1.gas"].address == "holding 0 (40001)" and rows["GD1.gas"].value == 12.5 and rows["GD1.gas"].shown == "12.5"
    assert rows["GD1.gas"].raw == "007D" and rows["GD2.gas"].raw == "0136"  # x10 per PT495 map
    assert rows["AT301.H2S"].address.startswith("nsu=urn:hazard-gateway:hil:plant")
    assert rows["AT301.H2S"].shown == "4.5" and rows["AT301.H2S"].raw == "Good"
    only = await probe(cfg, "GD2")
    assert [r.tag for r in only] == ["GD2.gas"]
    with pytest.raises(ValueError, match="no enabled device 'nope'"):
        await probe(cfg, "nope")


@pytest.mark.e2e
async def test_probe_cli_exit_codes_and_comm_fault(sims, tmp_path):
    plc, bus, gas_tty, plant = sims
    good = write_config(tmp_path, plc.port, gas_tty, plant.port)
    rc, out, err = await run_cli("probe", "--config", str(good), "--device", "tank_plc")
    assert rc == 0, err
    lines = out.strip().splitlines()
    assert lines[0].split() == ["device", "tag", "address", "raw", "value", "unit", "quality"]
    assert len(lines) == 5 and "input 0 (30001)" in lines[1] and lines[1].rstrip().endswith("good")
    assert "Traceback" not in err

    bus.set_silent(2, True)  # a silent detector: its tag is BAD timeout, the others stay good
    bad = tmp_path / "dead"
    bad.mkdir()
    cfg = write_config(bad, plc.port, gas_tty, plant.port, dead_port=closed_port())
    rc, out, err = await run_cli("probe", "--config", str(cfg), "--json")
    assert rc == 1 and "Traceback" not in err
    rows = {r["tag"]: r for r in json.loads(out)}
    assert rows["P1"]["quality"] == rows["P2"]["quality"] == "bad" and rows["P1"]["reason"].startswith("comm fault")
    assert rows["P1"]["shown_quality"].startswith("bad (comm fault")
    assert rows["P1"]["address"] == "holding 9 (40010)" and rows["P1"]["value"] is None and rows["P1"]["shown"] == "-" and rows["P1"]["raw"] == "-"
    assert rows["GD2.gas"]["shown_quality"] == "bad (timeout)" and not rows["GD2.gas"]["good"]
    assert rows["GD1.gas"]["good"] and rows["T101.level"]["good"] and rows["AT301.H2S"]["good"]

    rc, out, err = await run_cli("probe", "--config", str(cfg), "--device", "nope")
    assert rc == 2 and err.count("\n") == 1 and "no enabled device 'nope'" in err
    broken = tmp_path / "broken.yaml"
    broken.write_text(good.read_text().replace("timeout_ms: 500", "timeout_ms: fast"))
    rc, out, err = await run_cli("probe", "--config", str(broken))
    assert rc == 2 and f"{broken}:" in err and "timeout_ms" in err and "Traceback" not in err


@pytest.mark.e2e
async def test_probe_flags_implausible_values_and_rounds_to_precision(sims, tmp_path):
    """A float read in the wrong word order (7.25 = 40E8 xxxx read CDAB: xxxx 40E8, a tiny or subnormal value),
    a 4-20 mA map read
    beyond its eng_range and a tag with ``precision``: the first two are uncertain with the reason (exit 1),
    never good; --json keeps numbers as numbers; the table is in the reader's language."""
    plc, bus, gas_tty, plant = sims
    plc.set_level("T102", 3.14159)
    bus.set_lel(2, 20.5)  # raw 205 of a [0, 200] map: 102.5 % of span, inside NAMUR NE 43's measuring band
    text = write_config(tmp_path, plc.port, gas_tty, plant.port).read_text()
    text = text.replace("{name: T101.level, address: 30001, type: float32, unit: m}",
                        "{name: T101.level, address: 30001, type: float32, order: CDAB, unit: m}")
    text = text.replace("{name: T102.level, address: 30007, type: float32, unit: m}",
                        "{name: T102.level, address: 30007, type: float32, unit: m, precision: 2}")
    text = text.replace('{name: GD2.gas, address: 40001, type: uint16, scale: 0.1, unit: "%LEL", sentinels: [0xFFFF]}',
                        '{name: GD2.gas, address: 40001, type: uint16, raw_range: [0, 200], eng_range: [0, 20], '
                        'unit: "%LEL", sentinels: [0xFFFF]}')
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(text)
    rows = {r.tag: r for r in await probe(load_config(cfg))}
    sub = rows["T101.level"]
    assert not sub.good and sub.implausible and re.search("subnormal|magnitude", sub.implausible)
    assert 0 < abs(sub.value) < 1e-12 and sub.quality.startswith("uncertain (implausible: ")
    over = rows["GD2.gas"]
    assert not over.good and over.value == pytest.approx(20.5) and "eng_range [0" in over.implausible
    t102 = rows["T102.level"]   # the simulated transmitter adds a little noise to 3.14159 m
    assert t102.good and abs(t102.value - 3.14159) < 0.05 and t102.shown == f"{t102.value:.2f}"
    assert t102.value != round(t102.value, 2)  # full resolution kept; only the display is rounded
    assert rows["GD1.gas"].good and rows["GD1.gas"].implausible is None

    rc, out, err = await run_cli("probe", "--config", str(cfg), "--json")
    assert rc == 1 and "Traceback" not in err
    js = {r["tag"]: r for r in json.loads(out)}
    assert isinstance(js["T102.level"]["value"], float) and js["T102.level"]["shown"] == f"{js['T102.level']['value']:.2f}"
    assert js["XV101"]["value"] is True and js["GD1.gas"]["value"] == 12.5
    assert js["T101.level"]["good"] is False and js["T101.level"]["implausible"].startswith("implausible: ")
    assert js["T101.level"]["quality"] == "uncertain" and js["T102.level"]["quality"] == "good"

    rc, out, err = await run_cli("probe", "--config", str(cfg), "--device", "tank_plc", lang="zh_CN")
    lines = out.splitlines()
    assert rc == 1 and lines[0].split()[:2] == ["设备", "位号"], out
    # wide characters count two columns: each row's raw value starts in the column of its heading 原始值
    col = display_width(lines[0][:lines[0].index("原始值")])
    assert all(line[col - 1] == " " and line[col] != " " for line in lines[1:]), out


def test_implausible_marks_word_order_faults_and_over_range():
    from gateway.ops.probe import implausible

    assert "subnormal" in implausible(2.3e-41, None)             # 0000 40E8 as float32 ABCD
    assert "magnitude" in implausible(1.3e-37, None) and "magnitude" in implausible(-4.2e15, None)
    assert "eng_range [0, 20]" in implausible(20.5, (0, 20)) and implausible(-0.1, (0, 20))
    assert all(implausible(v, (0, 20)) is None for v in (0, 0.0, 7.25, 20, 1e-6 * 1e3))
    assert implausible(True, (0, 1)) is None and implausible("text", None) is None and implausible(None, None) is None
