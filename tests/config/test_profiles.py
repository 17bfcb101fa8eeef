"""Device profiles (config/profiles/): loading, merging, errors in the right file, decoding samples
from the sources through drivers.codec, and a device using a profile polling a real pymodbus server."""

from __future__ import annotations

import csv
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import SimData, SimDevice
from pymodbus.simulator.simutils import DataType

from drivers.codec import Scaling, decode_value, encode
from drivers.modbus import crc_ok, parse_reference
from gateway.config import ConfigError, load_config
from gateway.device_profiles import BUILTIN_DIR, builtin_profiles, load_profile
from gateway.model import Quality

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]
SOURCES = BUILTIN_DIR / "sources"
HEAD = "gateway: {id: s}\nkeys: {private_key: k.pem}\ndevices:\n"
STORE = "store: {max_bytes: 1099511627776}\n"   # at the end: no line moves; holds 30 days at these rates (C16)


def cfg_with(tmp_path: Path, devices: str, extra: str = "", name: str = "gw.yaml") -> Path:
    f = tmp_path / name
    f.write_text(HEAD + devices + extra + STORE)
    return f


def point(tag) -> SimpleNamespace:
    """A codec point from a validated config tag (what gateway.build_devices builds)."""
    return SimpleNamespace(dtype=tag.type, order=tag.order, length=tag.length, bit=tag.bit,
                           scaling=Scaling(scale=tag.scale, offset=tag.offset,
                                           raw_range=tuple(tag.raw_range) if tag.raw_range else None,
                                           eng_range=tuple(tag.eng_range) if tag.eng_range else None),
                           sentinels=tag.sentinel_values())


def device_tags(tmp_path: Path, profile: str, protocol: str = "modbus_rtu", extra: str = "") -> dict:
    conn = "port: /dev/ttyUSB0\n    unit_id: 1" if protocol == "modbus_rtu" else "host: 127.0.0.1"
    f = cfg_with(tmp_path, f"  - name: d\n    protocol: {protocol}\n    {conn}\n    profile: {profile}\n"
                           f"    select: ['*']\n{extra}")
    return {t.name.removeprefix("d."): t for t in load_config(f).model.devices[0].tags}


# --- every shipped profile ------------------------------------------------------------------

PROFILES = builtin_profiles()


def test_the_required_profiles_are_shipped():
    names = {p.stem for p in PROFILES}
    assert {"generic_4_20ma_input", "generic_remote_io", "draeger_polytron8000", "msa_ultima_x", "honeywell_midas",
            "oldham_itrans2", "franklin_incon_ts550evo", "pemtech_pt495", "igd_toc635", "new_cosmos_ps7m",
            "pneumercator_tms", "sf6_o2_jinan", "draeger_regard3900"} <= names


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.stem)
def test_profile_loads_and_every_tag_validates(path: Path, tmp_path: Path):
    prof = load_profile(path)
    assert prof.name == path.stem and prof.tags
    proto = "modbus_tcp" if prof.header.get("protocols") == ["modbus_tcp"] else "modbus_rtu"
    tags = device_tags(tmp_path, prof.name, proto)  # all tags through the config models
    assert len(tags) == len(prof.tags)
    src = prof.header.get("source")
    if src:  # the cited CSV is shipped beside the profiles
        assert (BUILTIN_DIR / src.split(":")[0]).is_file(), src


def _assumed_refs(csv_path: Path) -> set[int]:
    """Documented 4xxxx/3xxxx references whose PDU address the source CSV marks "(assumed)"."""
    out = set()
    for row in csv.DictReader(csv_path.open(encoding="utf-8")):
        if "assumed" in row["pdu_address"]:
            m = re.match(r"(\d{5,6})", row["documented_address"])
            if m:
                out.add(int(m[1]))
    return out


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.stem)
def test_assumed_addresses_stay_marked(path: Path):
    prof = load_profile(path)
    src = prof.header.get("source")
    if not src:
        pytest.skip("generic profile: no source map")
    assumed = _assumed_refs(BUILTIN_DIR / src.split(":")[0])
    for t in prof.tags:
        addr = t.data["address"]
        if isinstance(addr, int) and addr in assumed:
            assert t.assumed and t.note, f"{prof.name}.{t.key}: {addr} is '(assumed)' in {src} but not in the profile"


def test_sources_have_attribution_with_midas_provenance():
    text = (SOURCES / "ATTRIBUTION.md").read_text()
    for csv_file in SOURCES.glob("*.csv"):
        assert csv_file.name in text, f"{csv_file.name} has no attribution entry"
    assert "GPL" in text and "numat/midas" in text


# --- documented samples decode through drivers.codec ---------------------------------------

def test_polytron_manual_example_40_0(tmp_path: Path):
    t = device_tags(tmp_path, "draeger_polytron8000")["gas"]
    assert t.table_address() == ("holding_register", 506)
    assert decode_value([0x4220, 0x0000], point(t)) == 40.0


def test_midas_float_is_word_swapped(tmp_path: Path):
    t = device_tags(tmp_path, "honeywell_midas", "modbus_tcp")
    assert t["gas"].table_address() == ("holding_register", 2)
    assert decode_value([0x0000, 0x3F80], point(t["gas"])) == 1.0
    assert decode_value(encode(12.5, "float32", "CDAB"), point(t["gas"])) == 12.5
    assert encode(12.5, "float32", "CDAB") == [0x0000, 0x4148]
    assert decode_value([0x00C0], point(t["alarm_high"])) is True   # status bit 7
    assert decode_value([0x0040], point(t["alarm_high"])) is False


def test_sf6_o2_example_frame(tmp_path: Path):
    frame = bytes.fromhex("01 03 04 0B E8 00 D1 B8 7F")
    assert crc_ok(frame)
    regs = [int.from_bytes(frame[3:5], "big"), int.from_bytes(frame[5:7], "big")]
    t = device_tags(tmp_path, "sf6_o2_jinan")
    assert decode_value(regs[:1], point(t["sf6"])) == 3048
    assert decode_value(regs[1:], point(t["o2"])) == pytest.approx(20.9)


def test_igd_and_generic_4_20_scaling(tmp_path: Path):
    igd = device_tags(tmp_path, "igd_toc635", "modbus_tcp")["s1.gas"]
    assert decode_value([0], point(igd)) == pytest.approx(-10.0)      # 0 = -10 %LEL (manual)
    assert decode_value([1200], point(igd)) == pytest.approx(110.0)   # 1200 = 110 %LEL
    ai = device_tags(tmp_path, "generic_4_20ma_input", "modbus_tcp")["ai1"]
    assert decode_value([12000], point(ai)) == pytest.approx(50.0)
    assert decode_value([4000], point(ai)) == pytest.approx(0.0)


def test_pneumercator_tank_start_formula_and_signed_level(tmp_path: Path):
    t = device_tags(tmp_path, "pneumercator_tms")
    for n in (1, 7, 12):  # T = ((N-1)*16) + 40002: status at T, level at T+2
        assert parse_reference(40002 + (n - 1) * 16) == t[f"tank{n}.status"].table_address()
        assert t[f"tank{n}.level"].table_address()[1] == (n - 1) * 16 + 3
    assert decode_value(encode(-25, "int32", "ABCD"), point(t["tank1.level"])) == -25


# --- merging, overrides, warnings ----------------------------------------------------------

def test_select_prefix_overrides_and_defaults(tmp_path: Path):
    f = cfg_with(tmp_path, "  - name: gd7\n    protocol: modbus_rtu\n    port: /dev/ttyUSB0\n"
                           "    profile: msa_ultima_x\n    tag_prefix: AT7.\n    select: [gas1, fault_status]\n"
                           "    overrides:\n      gas1: {unit: ppm, address: 40207, alarms: {gas: toxic, oel_mg_m3: 5, "
                           "gas_name: SO2}}\n")
    cfg = load_config(f)
    d = cfg.model.devices[0]
    assert (d.baudrate, d.parity, d.unit_id) == (19200, "E", 247)   # the profile's device_defaults
    assert [t.name for t in d.tags] == ["AT7.fault_status", "AT7.gas1"]   # the profile's order
    gas = d.tags[1]
    assert gas.unit == "ppm" and gas.alarms.oel_mg_m3 == 5 and gas.type == "float32"
    # the overridden address is no longer "assumed"; the other tag is
    msgs = [w.message for w in cfg.warnings]
    assert not any("AT7.gas1" in m for m in msgs)
    assert any("AT7.fault_status" in m and "assumed" in m for m in msgs)


@pytest.mark.e2e
def test_check_warns_for_each_used_assumed_address(tmp_path: Path):
    f = cfg_with(tmp_path, "  - name: GD1\n    protocol: modbus_rtu\n    port: /dev/ttyUSB0\n    unit_id: 1\n"
                           "    profile: pemtech_pt495\n")
    (tmp_path / "k.pem").write_text("not a key, but a secret file with the right mode")
    (tmp_path / "k.pem").chmod(0o600)
    r = subprocess.run([sys.executable, "-m", "gateway.cli", "check", str(f)], capture_output=True, text=True,
                       cwd=ROOT)
    assert r.returncode == 0, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 2, lines   # default select: gas, status
    assert all(ln.startswith(f"{f}:8:5: warning: devices[0].profile: tag 'GD1.") for ln in lines)
    assert "pemtech_pt495.yaml:" in lines[0] and "assumed" in lines[0]


def test_error_inside_profile_is_reported_in_the_profile_file(tmp_path: Path):
    (tmp_path / "profiles").mkdir()
    prof = tmp_path / "profiles" / "mydet.yaml"
    prof.write_text("profile: {name: mydet}\ntags:\n  - {key: gas, address: 40001, type: float32}\n"
                    "  - {key: temp, address: 40003, type: int16, order: XYZW}\n")
    f = cfg_with(tmp_path, "  - {name: d, protocol: modbus_tcp, host: h, profile: mydet}\n")
    with pytest.raises(ConfigError) as ei:
        load_config(f)
    (p,) = ei.value.problems
    assert (Path(p.file).resolve(), p.line, p.col, p.path) == (prof.resolve(), 4, 53, "tags[1].order")
    assert "register order" in p.message


def test_override_error_is_reported_in_the_config(tmp_path: Path):
    f = cfg_with(tmp_path, "  - name: d\n    protocol: modbus_tcp\n    host: h\n    profile: honeywell_midas\n"
                           "    overrides:\n      gas: {scale: zero}\n")
    with pytest.raises(ConfigError) as ei:
        load_config(f)
    (p,) = ei.value.problems
    assert (p.file, p.line, p.col, p.path) == (str(f), 9, 20, "devices[0].overrides.gas.scale")


def test_include_files_and_cycles(tmp_path: Path):
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "a.yaml").write_text("profile: {name: site_a}\ninclude: [b.yaml]\ntags:\n  - {key: x, address: 40001}\n")
    (lib / "b.yaml").write_text("profile: {name: site_b}\ntags:\n  - {key: y, address: 40002}\n")
    f = cfg_with(tmp_path, "  - {name: d, protocol: modbus_tcp, host: h, profile: site_a}\n", "include: [lib]\n")
    cfg = load_config(f)
    assert [t.name for t in cfg.model.devices[0].tags] == ["d.y", "d.x"]  # included tags first
    h1 = cfg.config_hash
    (lib / "b.yaml").write_text("profile: {name: site_b}\ntags:\n  - {key: y, address: 40003}\n")
    assert load_config(f).config_hash != h1   # a changed register map changes the recorded config hash
    (lib / "b.yaml").write_text("profile: {name: site_b}\ninclude: [a.yaml]\ntags:\n  - {key: y, address: 40002}\n")
    with pytest.raises(ConfigError) as ei:
        load_config(f)
    assert any("include cycle" in p.message and p.file.endswith("b.yaml") and p.line == 2
               for p in ei.value.problems), str(ei.value)


def test_duplicate_key_in_profile(tmp_path: Path):
    prof = tmp_path / "dup.yaml"
    prof.write_text("profile: {name: dup}\ntags:\n  - {key: x, address: 40001}\n  - {key: x, address: 40002}\n")
    with pytest.raises(ConfigError) as ei:
        load_profile(prof)
    (p,) = ei.value.problems
    assert (p.line, p.col) == (4, 11) and "already defined" in p.message


# --- a device using a profile polls a real Modbus TCP server ---------------------------------

@pytest.mark.e2e
async def test_profile_device_polls_pymodbus_server(tmp_path: Path):
    from drivers.registry import Links
    from gateway.runtime.build import build_devices

    regs = [0x00C1, 0x0102] + encode(12.5, "float32", "CDAB") + [125, 0, 0b1000, 23, 4000, 7, 480]
    sim = SimDevice(id=1, simdata=(
        [SimData(60000, values=[0], datatype=DataType.BITS)], [SimData(60000, values=[0], datatype=DataType.BITS)],
        [SimData(0, values=regs, datatype=DataType.REGISTERS)],
        [SimData(60000, values=[0], datatype=DataType.REGISTERS)]))
    server = ModbusTcpServer([sim], address=("127.0.0.1", 0))
    await server.serve_forever(background=True)
    port = server.transport.sockets[0].getsockname()[1]
    links = Links()
    try:
        f = cfg_with(tmp_path, f"  - name: midas1\n    protocol: modbus_tcp\n    host: 127.0.0.1\n    port: {port}\n"
                               "    unit_id: 1\n    timeout_ms: 1000\n    profile: honeywell_midas\n"
                               "    overrides:\n      gas: {unit: ppm}\n")
        cfg = load_config(f)
        (dev,) = build_devices(cfg, links)
        await dev.start()
        readings = {r.tag: r for r in await dev.read()}
        assert readings["midas1.gas"].quality == Quality.GOOD, readings["midas1.gas"]
        assert readings["midas1.gas"].value == 12.5 and readings["midas1.gas"].unit == "ppm"
        assert readings["midas1.alarm_high"].value is True and readings["midas1.alarm_low"].value is True
        assert readings["midas1.status"].value == 0x00C1
        assert readings["midas1.unit_code"].value == 0b1000
        assert readings["midas1.flow"].value == 480
        await dev.close()
    finally:
        await links.close_all()
        await server.shutdown()


# --- config/example-site.yaml ----------------------------------------------------------------

@pytest.mark.e2e
def test_example_site_passes_check(tmp_path: Path):
    """The commented template passes `check` once its secret files (mode 0600) and certificates exist; the only
    warnings are the profile addresses still to be verified on site."""
    from site_secrets import make_site_secrets

    site = tmp_path / "gateway.yaml"
    site.write_text((ROOT / "config" / "example-site.yaml").read_text())
    make_site_secrets(tmp_path / "keys")
    r = subprocess.run([sys.executable, "-m", "gateway.cli", "check", str(site)], capture_output=True, text=True,
                       cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"{site}: ok (9 devices,")
    warnings = r.stderr.strip().splitlines()
    assert warnings and all("warning:" in w and "assumed address" in w for w in warnings), warnings
    cfg = load_config(site)
    m = cfg.model
    assert {d.protocol for d in m.devices} == {"modbus_tcp", "modbus_rtu", "opcua"}
    assert m.uplink is not None and m.metrics is not None and m.keys.private_key
    assert {i.name for i in m.interlocks} == {"T101_overfill", "gas_esd"}
    gas = [t for d in m.devices for t in d.tags if t.alarms and t.alarms.gas]
    assert {t.alarms.gas for t in gas} == {"combustible", "toxic"}
    assert any(d.profile for d in m.devices)
