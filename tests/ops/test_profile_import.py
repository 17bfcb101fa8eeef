"""`hazard-gateway profile import` (gateway/profile_import.py): register lists to device profiles.

With the real register maps in hil/register_maps/ (see ATTRIBUTION.md there): the imported Dräger Polytron 8000
and SF6/O2 detector lists give the addresses, types, orders and scales of the hand-written profiles in
config/profiles/; the PT495 rows whose scale is prose are refused, every one with its FILE:LINE:COL. With a
technician's list in Chinese (GBK, as Chinese Excel writes; UTF-8 with a BOM): the aliases, the encodings, the
delimiters. A generated profile used by a config passes `hazard-gateway check`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from drivers.modbus import parse_reference
from gateway.config import ConfigError, load_config
from gateway.device_profiles import load_profile
from gateway.profile_import import decode_bytes, import_profile, sniff_delimiter
from gateway.chain.signing import keygen
from conftest import run_cli

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]
MAPS = ROOT / "hil" / "register_maps"
PROFILES = ROOT / "config" / "profiles"


def where(tag: dict) -> tuple[str, int]:
    a = tag["address"]
    return (a["table"], a["address"]) if isinstance(a, dict) else parse_reference(a)


def by_address(tags) -> dict[tuple[str, int], list[dict]]:
    out: dict = {}
    for t in tags:
        out.setdefault(where(t), []).append(t)
    return out


def hand(name: str) -> list[dict]:
    prof = load_profile(PROFILES / f"{name}.yaml")
    return [{"key": t.key, **t.data, "assumed": t.assumed} for t in prof.tags]


def same_register(mine: dict, theirs: dict) -> bool:
    return (mine["type"] == theirs.get("type", "uint16") and mine.get("order", "ABCD") == theirs.get("order", "ABCD")
            and mine.get("scale", 1.0) == pytest.approx(theirs.get("scale", 1.0)))


# --------------------------------------------------------------------------------------------- real lists

@pytest.mark.parametrize("csv_name, profile, device", [
    ("draeger_polytron8000.csv", "draeger_polytron8000", None),
    ("sf6_o2_detector_jinan.csv", "sf6_o2_jinan", None),
])
def test_real_list_round_trips_against_the_hand_written_profile(tmp_path, csv_name, profile, device):
    res = import_profile(MAPS / csv_name, device=device)
    out = tmp_path / f"{profile}.yaml"
    out.write_text(res.text, encoding="utf-8")
    loaded = load_profile(out)                   # the loader `check` uses
    assert len(loaded.tags) == len(res.tags)
    mine = by_address(res.tags)
    for t in hand(profile):                      # every hand-written register is imported the same
        cands = [m for m in mine.get(where(t), []) if not m.get("writable")]
        assert cands, f"{profile}.{t['key']}: no imported tag at {where(t)}"
        assert any(same_register(m, t) for m in cands), (t, cands)
        assert any(m.get("assumed", False) == t["assumed"] for m in cands), (t, cands)


def test_polytron_import_is_the_hand_written_map_exactly():
    res = import_profile(MAPS / "draeger_polytron8000.csv")
    assert [(t["address"], t["type"], t.get("order", "ABCD"), t["assumed"]) for t in res.tags] == \
        [(40507, "float32", "ABCD", True), (40709, "uint16", "ABCD", True)]
    assert res.tags[0]["note"].startswith("PDU 506 derived by the 4xxxx-40001 convention")
    assert res.tags[1]["key"] == "password_status"
    assert "name: \"draeger_polytron8000\"" in res.text and "sha256 " in res.text


def test_sf6_zero_based_addresses_with_function_codes():
    res = import_profile(MAPS / "sf6_o2_detector_jinan.csv")
    sf6, o2, set_addr = res.tags
    assert sf6["address"] == {"table": "holding_register", "address": 0} and sf6["unit"] == "ppm"
    assert o2["scale"] == pytest.approx(0.1) and o2["address"]["address"] == 1        # "value / 10"
    assert set_addr["writable"] is True                                                 # FC6 only: a write register
    assert "济南开元科技" in res.text                                                    # UTF-8 kept as written


def test_real_pt495_rows_with_prose_scales_are_all_reported(tmp_path):
    with pytest.raises(ValueError, match="rows of 2 devices"):
        import_profile(MAPS / "pemtech_pt495_pt2008.csv")
    with pytest.raises(ConfigError) as exc:
        import_profile(MAPS / "pemtech_pt495_pt2008.csv", device="PT495")
    lines = [(p.line, p.col, p.path) for p in exc.value.problems]
    assert lines == [(2, 8, "scale"), (4, 8, "scale"), (6, 8, "scale")]          # all of them, not the first
    assert "x10 for sensors" in exc.value.problems[0].message
    # PT2008: 48 rows, all clean: the 6-digit references
    res = import_profile(MAPS / "pemtech_pt495_pt2008.csv", device="PT2008", name="pemtech_pt2008")
    assert len(res.tags) == 48 and res.skipped == 7
    theirs = by_address(hand("pemtech_pt2008"))
    mine = by_address(res.tags)
    assert all(any(same_register(m, t) for m in mine[k]) for k, ts in theirs.items() for t in ts)


async def test_cli_exit_2_with_every_bad_row():
    rc, out, err = await run_cli("profile", "import", "hil/register_maps/pemtech_pt495_pt2008.csv",
                                 "--device", "PT495")
    assert rc == 2 and out == ""
    assert err.splitlines() == [f"hil/register_maps/pemtech_pt495_pt2008.csv:{n}:8: scale: scale "
                                f"'{s}' is not a factor: give engineering = raw x scale as a number (0.1) or as /10"
                                for n, s in ((2, "x10 for sensors with 0.1 display resolution (10.5 -> 105)"),
                                             (4, "as 40001"), (6, "as 40001"))]
    rc, out, err = await run_cli("profile", "import", "hil/register_maps/pemtech_pt495_pt2008.csv")
    assert rc == 2 and len(err.splitlines()) == 1 and "--device" in err


# --------------------------------------------------------------------------------------------- a technician's list

ZH_LIST = ("位号,名称,地址,功能码,类型,字节序,系数,单位,量程,原始量程,备注\n"
           "LT101,储罐液位,0,3,REAL,CDAB,1,m,,,\n"
           "TT101,储罐温度,2,3,浮点数,低字在前,,℃,,,\n"
           "GD1,可燃气体浓度,10,4,WORD,,/10,%LEL,,,\n"
           "PT101,罐顶压力,11,4,uint16,,,kPa,0-500,4000-20000,4-20 mA 计数\n"
           "XV101,进料阀,0,1,BOOL,,,,,,\n")


@pytest.mark.parametrize("encoding, delimiter", [("gbk", ","), ("utf-8-sig", ";"), ("utf-8", "\t")])
def test_chinese_headers_gbk_bom_and_delimiters(tmp_path, encoding, delimiter):
    f = tmp_path / "点表.csv"
    f.write_bytes(ZH_LIST.replace(",", delimiter).encode(encoding))
    res = import_profile(f, name="tank_plc")
    assert res.delimiter == delimiter and res.encoding == {"gbk": "gbk"}.get(encoding, encoding)
    t = {x["key"]: x for x in res.tags}
    assert list(t) == ["LT101", "TT101", "GD1", "PT101", "XV101"]
    assert t["LT101"] == {"key": "LT101", "address": {"table": "holding_register", "address": 0},
                          "type": "float32", "order": "CDAB", "unit": "m", "description": "储罐液位"}
    assert t["TT101"]["order"] == "CDAB" and t["TT101"]["type"] == "float32"
    assert t["GD1"]["address"] == {"table": "input_register", "address": 10} and t["GD1"]["scale"] == 0.1
    assert t["PT101"]["raw_range"] == [4000.0, 20000.0] and t["PT101"]["eng_range"] == [0.0, 500.0]
    assert t["XV101"]["address"] == {"table": "coil", "address": 0} and t["XV101"]["type"] == "bool"
    out = tmp_path / "tank_plc.yaml"
    out.write_text(res.text, encoding="utf-8")
    assert [p.key for p in load_profile(out).tags] == list(t)


def test_chinese_names_without_a_key_column_become_descriptions(tmp_path):
    f = tmp_path / "list.csv"
    f.write_text("名称,地址,类型,单位\n液位,40001,float32,m\n温度,40003,float32,℃\n", encoding="utf-8-sig")
    res = import_profile(f)
    assert [(t["key"], t["description"]) for t in res.tags] == [("r40001", "液位"), ("r40003", "温度")]
    assert res.encoding == "utf-8-sig" and res.text.count("name: \"list\"") == 1


def test_every_bad_row_is_reported_with_file_line_col(tmp_path):
    f = tmp_path / "bad.csv"
    f.write_text("name,address,type,order,scale,unit,function\n"
                 "ok,40001,uint16,,,,\n"
                 "typo,40002,unit16,,,,\n"                     # 3: type
                 "prose,40003,uint16,,about ten,,\n"           # 4: scale
                 "bare,7,uint16,,,,\n"                         # 5: 0-based without a function
                 "\n"
                 "clash,40010,float32,XYZW,,,4\n"              # 7: order and function (4 vs 4xxxx)
                 "ok,40011,uint16,,,,\n"                       # 8: name used twice
                 "coil,00001,uint16,,,,\n"                     # 9: coil is bool
                 "wide,40020-40021,uint16,,,,\n", encoding="utf-8")   # 10: span vs type
    with pytest.raises(ConfigError) as exc:
        import_profile(f)
    got = [(p.line, p.path) for p in exc.value.problems]
    assert got == [(3, "type"), (4, "scale"), (5, "address"), (7, "order"), (7, "function"), (8, "name"),
                   (9, "type"), (10, "address")], got
    assert all(str(p).startswith(f"{f}:{p.line}:{p.col}: ") for p in exc.value.problems)
    assert "unit16" in exc.value.problems[0].message


def test_assumed_marks_and_address_typos(tmp_path):
    """'(assumed)' (or 推定/待确认) in the address or note column keeps ``assumed: true``, so check warns until
    the address is confirmed on the device; an address glued to letters ('3000x') is a typo, refused, never
    read as 3000."""
    f = tmp_path / "gd.csv"
    f.write_bytes("名称,地址,类型,单位,备注\n气体浓度,40001 (assumed),uint16,%LEL,\n故障,40002,uint16,,地址待确认\n"
                  "状态,40003,uint16,,\n".encode("gbk"))
    res = import_profile(f, name="gd")
    assert [t.get("assumed", False) for t in res.tags] == [True, True, False]
    assert res.text.count(", assumed: true") == 2
    g = tmp_path / "typo.csv"
    g.write_text("name,address,type,function\nlevel,3000x,uint16,4\nok,40001a,uint16,\n", encoding="utf-8")
    with pytest.raises(ConfigError) as exc:
        import_profile(g)
    assert [(p.line, p.path) for p in exc.value.problems] == [(2, "address"), (3, "address")]
    assert "'3000x' is not an address" in exc.value.problems[0].message


def test_detection_helpers():
    assert decode_bytes("名称".encode("gbk")) == ("名称", "gbk")
    assert decode_bytes(b"\xef\xbb\xbfname") == ("name", "utf-8-sig")
    with pytest.raises(ValueError):
        decode_bytes(b"\xff\xfe\x00\x81\x00", "ascii")
    assert sniff_delimiter("a;b;c\n1;2;3\n") == ";"
    assert sniff_delimiter("single\n") == ","


# --------------------------------------------------------------------------------------------- check accepts it

@pytest.mark.e2e
async def test_generated_profile_in_a_config_passes_check(tmp_path):
    keygen(tmp_path / "keys")
    (tmp_path / "profiles").mkdir()
    rc, out, err = await run_cli("profile", "import", "hil/register_maps/draeger_polytron8000.csv",
                                 "--out", str(tmp_path / "profiles" / "polytron.yaml"), "--name", "polytron",
                                 "--protocol", "modbus_rtu")
    assert rc == 0, err
    assert "2 tags" in out and "2 addresses assumed" in out
    rc, out, err = await run_cli("profile", "import", "hil/register_maps/draeger_polytron8000.csv",
                                 "--out", str(tmp_path / "profiles" / "polytron.yaml"))
    assert rc == 2 and "--force" in err                        # an existing file is not replaced silently
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text("gateway: {id: site1, state_dir: state}\n"
                   "keys: {private_key: keys/private.pem}\n"
                   "devices:\n"
                   "  - name: GD4\n"
                   "    protocol: modbus_rtu\n"
                   "    port: /dev/ttyUSB0\n"
                   "    unit_id: 4\n"
                   "    profile: polytron\n"
                   "    select: [measurement_mode_value]\n"
                   "    overrides:\n"
                   "      measurement_mode_value: {unit: \"%LEL\", alarms: {gas: combustible}}\n"
                   "store: {max_bytes: 1099511627776}\n")
    rc, out, err = await run_cli("check", str(cfg))
    assert rc == 0, err
    assert "1 devices, 1 tags" in out
    assert "uses assumed address 40507" in err                 # the imported assumed mark reaches check
    tags = load_config(cfg).model.devices[0].tags
    assert [(t.name, t.type, t.unit) for t in tags] == [("GD4.measurement_mode_value", "float32", "%LEL")]
    # printed to stdout (no --out): the same text, also checked
    rc, out, err = await run_cli("profile", "import", "hil/register_maps/draeger_polytron8000.csv", "--name",
                                 "polytron", "--protocol", "modbus_rtu")
    assert rc == 0 and out == (tmp_path / "profiles" / "polytron.yaml").read_text(encoding="utf-8")
