"""Messages a person reads, in zh_CN when the locale says so (gateway/i18n.py).

The catalog: every msgid the code passes to ``_()`` / ``gettext()`` / ``ngettext()`` (extracted from gateway/ and
drivers/ with Babel's Python API, as ``make catalogs`` does with babel.cfg) has a non-empty, non-fuzzy zh_CN
translation; the shipped .mo is the .po compiled; each translation has exactly the msgid's {placeholders}.
Then the messages themselves: `grade`'s summary and `check`'s FILE:LINE:COL lines from the command line with
LANG=zh_CN.UTF-8 and LANG=C, the status rendering, and the operators' refusals, in Chinese.
"""

from __future__ import annotations

import gettext
import io
import json
import os
import string
import subprocess
import sys
import time
from pathlib import Path

import pytest
from babel.messages.extract import extract_from_dir
from babel.messages.mofile import read_mo, write_mo
from babel.messages.pofile import read_po

from gateway import i18n
from gateway.model import Quality, Reading

ROOT = Path(__file__).resolve().parents[2]
LOCALE = ROOT / "gateway" / "locale" / "zh_CN" / "LC_MESSAGES"
PO = LOCALE / f"{i18n.DOMAIN}.po"
MO = LOCALE / f"{i18n.DOMAIN}.mo"
#: babel.cfg's mapping and the keywords of `make catalogs`
METHOD_MAP = [("**.py", "python")]
KEYWORDS = {"_": None, "gettext": None, "ngettext": (1, 2)}


def extracted() -> list[tuple[str, int, str | tuple[str, ...]]]:
    """(file relative to the repository, line, msgid or (singular, plural)) of every message in gateway/ and drivers/."""
    out = []
    for top in ("gateway", "drivers"):
        for filename, lineno, message, _comments, _context in extract_from_dir(
                str(ROOT / top), METHOD_MAP, keywords=KEYWORDS, comment_tags=(), strip_comment_tags=True):
            out.append((f"{top}/{filename}", lineno, message))
    return out


def po_catalog():
    with PO.open("rb") as f:
        return read_po(f, locale="zh_CN", domain=i18n.DOMAIN)


def fields(text: str) -> set[str]:
    """The names of the str.format placeholders of ``text`` ({name}, {name:>3}; '{{' is no placeholder)."""
    return {name for _lit, name, _spec, _conv in string.Formatter().parse(text) if name is not None}


@pytest.fixture
def chinese():
    """The process speaks zh_CN for one test, English again after it."""
    i18n.set_language("zh_CN")
    try:
        yield
    finally:
        i18n.set_language("en")


# ------------------------------------------------------------------------------------------------ the catalog

def test_the_code_has_messages_to_translate():
    msgs = extracted()
    files = {f for f, _, _ in msgs}
    # the parts a person reads first: status and refusals, check messages, the grade summary, the command line's errors
    for f in ("gateway/ops/control.py", "gateway/config.py", "gateway/cli.py", "gateway/hazard/__init__.py",
              "gateway/safety/alarms.py", "gateway/safety/interlocks.py"):
        assert f in files, f
    assert len({m for _, _, m in msgs}) > 150


def test_every_message_has_a_chinese_translation():
    cat = po_catalog()
    missing = []
    for file, line, msg in extracted():
        key = msg if isinstance(msg, str) else msg[0]
        entry = cat.get(key)
        strings = () if entry is None else (entry.string if isinstance(entry.string, tuple) else (entry.string,))
        if entry is None:
            missing.append(f"{file}:{line}: {key!r}: not in {PO.relative_to(ROOT)} (run `make catalogs`)")
        elif entry.fuzzy or not strings or not all(s and s.strip() for s in strings):
            why = "fuzzy" if entry.fuzzy else "no translation"
            missing.append(f"{file}:{line}: {key!r}: {why} in {PO.relative_to(ROOT)}")
    assert not missing, "\n".join(missing)


def test_the_mo_is_the_po_compiled():
    cat = po_catalog()
    buf = io.BytesIO()
    write_mo(buf, cat)   # what `pybabel compile` writes: fuzzy entries left out
    buf.seek(0)
    fresh = {m.id: m.string for m in read_mo(buf) if m.id}
    with MO.open("rb") as f:
        shipped = {m.id: m.string for m in read_mo(f) if m.id}
    stale = sorted(set(fresh) ^ set(shipped)) + sorted(k for k in fresh.keys() & shipped.keys()
                                                         if fresh[k] != shipped[k])
    assert not stale, f"{MO.relative_to(ROOT)} is stale (run `make catalogs`): {stale[:10]}"
    # and it is what gettext loads at run time
    with MO.open("rb") as f:
        loaded = gettext.GNUTranslations(f)
    for msgid, msgstr in fresh.items():
        if isinstance(msgid, str):
            assert loaded.gettext(msgid) == msgstr, msgid
    some = next(k for k in fresh if isinstance(k, str))
    assert i18n.translator("zh_CN")(some) == fresh[some]


def test_translations_keep_the_placeholders():
    wrong = []
    for m in po_catalog():
        if not m.id or not m.string:
            continue
        ids = m.id if isinstance(m.id, tuple) else (m.id,)
        strs = m.string if isinstance(m.string, tuple) else (m.string,)
        want = set().union(*(fields(i) for i in ids))
        for s in strs:
            try:
                got = fields(s)
                s.format(**{n: "x" for n in got})
            except (ValueError, KeyError, IndexError) as exc:
                wrong.append(f"line {m.lineno}: {m.id!r}: {s!r} does not format ({exc})")
                continue
            if got != want:
                wrong.append(f"line {m.lineno}: {m.id!r}: placeholders {sorted(got)} instead of {sorted(want)}")
    assert not wrong, "\n".join(wrong)


def test_english_is_the_msgid_itself():
    assert i18n.translator("en")("unknown key (typo?)") == "unknown key (typo?)"
    assert i18n.translator("zh_CN")("unknown key (typo?)") == "未知的键（拼写错误？）"


# ------------------------------------------------------------------------------------------------ the command line

def run(lang: str, *args: str) -> subprocess.CompletedProcess:
    """``python -m gateway.cli *args`` with the locale of a person: LANG=``lang`` and nothing that outranks it."""
    env = {k: v for k, v in os.environ.items() if k not in ("LANGUAGE", "LC_ALL", "LC_MESSAGES", "LANG")}
    env.update(LANG=lang, PYTHONIOENCODING="utf-8")
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], capture_output=True, text=True,
                          encoding="utf-8", cwd=ROOT, env=env, timeout=60)


@pytest.mark.e2e
def test_grade_summary_in_chinese_and_english():
    # docs/domain.md's worked case: 20 t Cl2 + 100 t LPG, 35 people: S = 6, R = 22.8, grade 3 (yellow)
    args = ("grade", "--people", "35", "--substance", "氯=20", "--substance", "LPG=100")
    zh, en = run("zh_CN.UTF-8", *args), run("C", *args)
    assert zh.returncode == en.returncode == 0 and zh.stderr == en.stderr == "", zh.stderr + en.stderr
    assert json.loads(zh.stdout)["summary"] == "三级重大危险源，黄色（R = 22.8，S = 6）"
    assert json.loads(en.stdout)["summary"] == "grade 3 major hazard installation, yellow (R = 22.8, S = 6)"
    # two benzene tanks of 30 t, 10 people: S = R = 1.2, grade 4 (blue)
    four = run("zh_CN.UTF-8", "grade", "--people", "10", "--substance", "苯=30", "--substance", "benzene=30")
    assert json.loads(four.stdout)["summary"] == "四级重大危险源，蓝色（R = 1.2，S = 1.2）"
    below = run("zh_CN.UTF-8", "grade", "--people", "0", "--substance", "benzene=10")
    assert json.loads(below.stdout)["summary"] == "不构成重大危险源（S = 0.2 < 1）"
    bad = run("zh_CN.UTF-8", "grade", "--people", "35", "--substance", "氯=abc")
    assert bad.returncode == 2 and bad.stderr == "hazard-gateway: grade: --substance '氯=abc'：吨数须为不小于 0 的数字\n"


@pytest.mark.e2e
@pytest.mark.parametrize("name, zh, en", [
    ("08_duplicate_tag.yaml", ":10:10: devices[0].tags[1].name: 位号 'a' 与 devices[0].tags[0] 重复",
     ":10:10: devices[0].tags[1].name: tag name 'a' also used at devices[0].tags[0]"),
    # a pydantic kind: our sentence first, pydantic's English as the detail
    ("19_negative_deadband.yaml", ": devices[0].tags[0].alarms.HH.deadband: 超出范围：须不小于 0（Input should be",
     ": devices[0].tags[0].alarms.HH.deadband: Input should be greater than or equal to 0"),
    ("01_unknown_top_key.yaml", ":3:1: gatway_extra: 未知的键（拼写错误？）", ":3:1: gatway_extra: unknown key (typo?)"),
])
def test_check_speaks_the_locale_with_file_line_col(name, zh, en):
    path = f"tests/data/bad_configs/{name}"
    for lang, want in (("zh_CN.UTF-8", zh), ("C", en)):
        r = run(lang, "check", path)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.startswith(path + ":") and want in r.stderr.splitlines()[0], (lang, r.stderr)


# ------------------------------------------------------------------------------------------------ status and refusals

def alarm_engine():
    from gateway.safety.alarms import AlarmEngine, TagAlarmConfig, gas_preset

    eng = AlarmEngine([
        TagAlarmConfig("GD1.gas", gas_preset("combustible"), gas="combustible", group="gas"),
        TagAlarmConfig("AT301.H2S", gas_preset("toxic", 10.0), gas="toxic", group="gas"),
    ])
    t = 100.0
    for tag, v in (("GD1.gas", 30.0), ("AT301.H2S", 25.0)):
        t += 1.0
        eng.update(Reading(tag, v, "%LEL" if tag == "GD1.gas" else "mg/m3", Quality.GOOD, time.time()), t)
    return eng, t


def test_render_status_in_chinese(chinese):
    from gateway.ops.control import render_status

    eng, _t = alarm_engine()
    snap = {"gateway_id": "g", "uptime_s": 5, "config_hash": "abc", "time": "2026-01-01T00:00:00.000Z",
            "devices": {"plc": {"protocol": "modbus_tcp", "state": "up", "polls": 3, "bad": 0}},
            "tags": {"GD1.gas": {"value": 30.0, "unit": "%LEL", "quality": "good", "age_s": 0.1}},
            "alarms": [a.to_record() for a in eng.active()], "alarm_sequence": eng.first_out_sequence(),
            "interlocks": [{"name": "IL1", "state": "tripped", "cause": "process", "vote": "1oo2",
                            "votes": {"process": 1, "fault": 0, "needed": 1, "of": 2},
                            "bypass": {"user": "op", "until": "2026-01-01T01:00:00.000Z", "reason": "校验"}}],
            "outputs": [{"tag": "XV101.cmd", "commanded": 0, "confirmed": True}],
            "store": {"queue_depth": 0}, "uplink": None}
    text = render_status(snap)
    assert "报警（" in text and "个活动；* 为首出）" in text
    assert "未确认" in text and " 2级" in text and " 1级" in text           # unacked; level 2 / level 1 alarms
    assert "联锁\n" in text and "IL1" in text and "联锁动作 (工艺)" in text
    assert "已旁路，操作人 op" in text and "质量 好" in text and "链路 正常" in text
    assert "报警组 gas：首出报警及后续报警" in text and "上传  未配置" in text
    assert "ALARMS" not in text and "INTERLOCKS" not in text and "unacked" not in text
    i18n.set_language("en")
    english = render_status(snap)
    n = len(snap["alarms"])
    assert f"ALARMS ({n} active; * first-out)" in english and f"报警（{n} 个活动；* 为首出）" in text
    assert "unacked" in english and "INTERLOCKS" in english and "报警" not in english


def test_operator_refusals_in_chinese(chinese):
    from gateway.safety.alarms import AlarmActionError

    eng, t = alarm_engine()
    with pytest.raises(KeyError) as e:
        eng.ack("NO.SUCH", "op")
    assert e.value.args[0] == "没有报警 'NO.SUCH'"
    eng.ack("GD1.gas.H", "op", now_mono=t)
    with pytest.raises(AlarmActionError, match="GD1.gas.H：无需确认（状态 已确认）"):
        eng.ack("GD1.gas.H", "op", now_mono=t)
    with pytest.raises(AlarmActionError, match="GD1.gas.H：需要填写原因"):
        eng.shelve("GD1.gas.H", "op", "", 60, 3600, now_mono=t)
    with pytest.raises(AlarmActionError, match="拒绝复位"):
        eng.reset("GD1.gas.H", "op", now_mono=t)


def test_control_socket_refusals_in_chinese(chinese):
    """The refusals the daemon writes to the operator (gateway.ops.control.ControlServer.handle), in the daemon's
    language: the unknown interlock, a shelve without a reason, a bypass without minutes."""
    import asyncio

    from gateway.ops.control import ControlServer

    class Gw:   # the parts of an OperatorTarget that a refusal reaches
        def __init__(self) -> None:
            self.alarms, _t = alarm_engine()
            self.events: list = []

            class Il:
                @staticmethod
                def status() -> list:
                    return [{"name": "IL1", "state": "normal"}]
            self.interlocks = Il()

        def log_event(self, rec: dict) -> None:
            self.events.append(rec)

    gw = Gw()
    server = ControlServer(gw, Path("/nonexistent/control.sock"), max_shelve_s=3600.0)  # never started

    def ask(req: dict) -> dict:
        return asyncio.run(server.handle(req, "op", 1000, 1))

    assert ask({"action": "bypass", "interlock": "nope", "minutes": 1, "reason": "x"})["error"] == "没有联锁 'nope'"
    assert ask({"action": "shelve", "id": "GD1.gas.H", "minutes": 5})["error"] == "GD1.gas.H：搁置需要填写原因"
    assert ask({"action": "bypass", "interlock": "IL1", "reason": "x"})["error"] == "minutes 须为数字"
    assert ask({"action": "ack"})["error"] == "ack：哪个报警或联锁？（请给出其编号）"
    assert ask({"action": "ack", "id": "GD1.gas.H"})["message"] == "GD1.gas.H 已确认"
    assert [e["result"] for e in gw.events if e.get("type") == "operator"] == ["refused"] * 4 + ["ok"]


def test_config_problems_in_chinese(chinese, tmp_path):
    from gateway.config import ConfigError, load_config

    cfg = tmp_path / "gateway.yaml"
    cfg.write_text("gateway: {id: site-1}\nkeys: {private_key: k.pem}\ndevices:\n"
                   "  - name: plc\n    protocol: modbus_tcp\n    host: 127.0.0.1\n    poll_interval_ms: fast\n"
                   "    tags:\n      - {name: a, address: 40001, unit: [1]}\n")
    with pytest.raises(ConfigError) as e:
        load_config(cfg)
    lines = str(e.value).splitlines()
    assert any(":7:23: devices[0].poll_interval_ms: 类型错误：须为数字（Input should be" in x for x in lines), lines
    assert any("devices[0].tags[0].unit: 类型错误：须为字符串（Input should be a valid string）" in x for x in lines), lines
