"""`hazard-gateway grade` and the config's hazard: section through `hazard-gateway check`.

Each case runs the real command line in a child process. Expected numbers are worked by hand from
GB 18218-2018 (see docs/domain.md): S = sum q/Q, R = alpha sum beta q/Q, grade 1: R >= 100,
2: 50..100, 3: 10..50, 4: < 10; alpha 2.0 (>= 100 people), 1.5 (50-99), 1.2 (30-49), 1.0 (1-29), 0.5 (0).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e  # every test runs the command line as a child process

ROOT = Path(__file__).resolve().parents[2]


def grade(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway.cli", "grade", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)


def ok(*args: str) -> dict:
    r = grade(*args)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    return json.loads(r.stdout)


def test_worked_check_chlorine_and_lpg():
    # docs/domain.md: 20 t Cl2 + 100 t LPG, 35 people: S = 20/5 + 100/50 = 6, R = 1.2 (4 x 4 + 1.5 x 2) = 22.8
    out = ok("--people", "35", "--substance", "氯=20", "--substance", "LPG=100")
    assert out["S"] == pytest.approx(6.0) and out["R"] == pytest.approx(22.8) and out["alpha"] == 1.2
    assert out["grade"] == 3 and out["major_hazard"] is True
    assert {s["id"] for s in out["substances"]} == {"chlorine", "lpg"}


@pytest.mark.parametrize("name", ["氯", "chlorine", "Chlorine", "7782-50-5"])
def test_name_may_be_chinese_english_or_cas(name):
    out = ok("--people", "35", "--substance", f"{name}=20")
    assert out["R"] == pytest.approx(19.2) and out["grade"] == 3 and out["S"] == pytest.approx(4.0)


def test_below_one_is_not_a_major_hazard_and_has_no_grade():
    out = ok("--people", "120", "--substance", "benzene=49.9")
    assert out["S"] == pytest.approx(0.998) and out["major_hazard"] is False and out["grade"] is None
    assert '"grade": null' in grade("--people", "120", "--substance", "benzene=49.9").stdout


@pytest.mark.parametrize("tonnes,expected", [
    # chlorine: Q 5 t, beta 4; 100 people -> alpha 2: R = 1.6 q
    ("62.5", 1), ("62.49", 2), ("31.25", 2), ("31.24", 3), ("6.25", 3), ("6.24", 4)])
def test_grade_boundaries_through_the_command(tonnes, expected):
    out = ok("--people", "100", "--substance", f"chlorine={tonnes}")
    assert out["grade"] == expected and out["major_hazard"] is True


def test_same_substance_twice_adds_up():
    # two benzene tanks of 30 t: S = 60/50 = 1.2, R = 1.0 x 1 x 1.2
    out = ok("--people", "10", "--substance", "苯=30", "--substance", "benzene=30")
    assert out["S"] == pytest.approx(1.2) and out["R"] == pytest.approx(1.2) and out["grade"] == 4


@pytest.mark.parametrize("args,needle", [
    (["--people", "35", "--substance", "chlorinee=20"], "unknown substance 'chlorinee'"),
    (["--people", "35", "--substance", "xyzzy=1"], "unknown substance 'xyzzy'"),
    (["--people", "35", "--substance", "氯=abc"], "TONNES must be a number"),
    (["--people", "35", "--substance", "氯=-1"], "TONNES must be a number >= 0"),
    (["--people", "35", "--substance", "氯"], "expected NAME=TONNES"),
    (["--people", "-1", "--substance", "氯=1"], "--people must be a whole number >= 0"),
    (["--people", "35"], "at least one --substance"),
])
def test_usage_errors_exit_2_with_one_line(args, needle):
    r = grade(*args)
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in r.stderr, r.stderr


def test_unknown_name_suggests_close_matches():
    r = grade("--people", "35", "--substance", "benzine=1")
    assert r.returncode == 2 and "benzene" in r.stderr and len(r.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------- the hazard: section of a config

def _demo_with(tmp_path: Path, old: str, new: str) -> Path:
    text = (ROOT / "config" / "demo.yaml").read_text(encoding="utf-8")
    assert text.count(old) >= 1, old
    f = tmp_path / "site.yaml"
    f.write_text(text.replace(old, new, 1), encoding="utf-8")
    return f


def _line_of(path: Path, needle: str) -> int:
    return next(i for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if needle in line)


def check(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway.cli", "check", str(path)], capture_output=True,
                          text=True, cwd=ROOT, timeout=60)


def test_demo_hazard_unit_is_valid(tmp_path):
    from gateway.chain.signing import keygen

    f = _demo_with(tmp_path, "hazard:", "hazard:")
    keygen(tmp_path / "keys")  # the demo's signing key (a checked secret file)
    from gateway.tlsutil import make_self_signed
    cert, _ = make_self_signed(tmp_path / "tls")   # uplink.ca_file: check loads it as run does
    (tmp_path / "keys" / "receiver-cert.pem").write_bytes(cert.read_bytes())
    r = check(f)
    assert r.returncode == 0 and "hazard" not in r.stderr, r.stderr


@pytest.mark.parametrize("old,new,needle,key", [
    ("substance: 苯, max_fill", "substance: benzine, max_fill", "substance: benzine",
     "hazard.units[0].tanks[0].substance: unknown substance 'benzine'"),
    ("tag_level: T102.level", "tag_level: T102.levle", "T102.levle",
     "hazard.units[0].tanks[1].tag_level: unknown tag 'T102.levle'"),
    ("tag_level: T102.level", "tag_level: T102.pressure", "tag_level: T102.pressure",
     "hazard.units[0].tanks[1].tag_level: tag 'T102.pressure' has unit 'kPa'; a level needs one of"),
    ("alarm_tags: [GD1.gas, GD2.gas, GD3.gas]", "alarm_tags: [GD1.gas, GD4.gas]", "GD4.gas",
     "hazard.units[0].alarm_tags[1]: unknown tag 'GD4.gas'"),
    ("{type: vertical_cylinder, diameter_m: 11.0", "{type: cone, diameter_m: 11.0", "type: cone",
     "hazard.units[0].tanks[0].geometry: type 'cone' not one of"),
    ("people_500m: 120", "people_500m: many", "people_500m: many",
     "hazard.units[0].people_500m: must be a whole number >= 0"),
    ("people_500m: 120", "people_500m: 120\n      colour_bias: 1", "colour_bias: 1",
     "hazard.units[0].colour_bias: unknown key(s) colour_bias"),
    ("people_500m: 120", "people_500m: 120\n      colour_basis: live", "colour_basis: live",
     "hazard.units[0].colour_basis: removed: the grade and the colour are those of the design maximum quantity"),
    ("tag_level: T102.level", "tag_level: [T102.level, T102.levle]", "tag_level: [T102.level, T102.levle]",
     "hazard.units[0].tanks[1].tag_level[1]: unknown tag 'T102.levle'"),
    ("substance: 苯, max_fill", "categories: [W5.3, J9], max_fill", "categories: [W5.3, J9]",
     "hazard.units[0].tanks[0].categories: unknown substance 'J9'"),
    ("substance: 苯, max_fill", "substance: 苯, mixture: alike, max_fill", "mixture: alike",
     "hazard.units[0].tanks[0].mixture: mixture must be one of same_class, own_class"),
    ("level2_alarm: raise", "level2_alarm: pink", "level2_alarm: pink",
     "hazard.units[0].colour_map: unit tank-group-T100: colour map: level2_alarm must be none, raise or red, "
     "got 'pink'"),
    ('enterprise_code: "330100000001"', 'enterprise_code: "3301 0001"', "enterprise_code",
     "gateway.enterprise_code: enterprise code '3301 0001' must be letters, digits"),
])
def test_hazard_config_errors_are_file_line_col(tmp_path, old, new, needle, key):
    f = _demo_with(tmp_path, old, new)
    r = check(f)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    errors = [line for line in r.stderr.splitlines() if ": warning: " not in line]
    assert len(errors) == 1, r.stderr
    assert errors[0].startswith(f"{f}:{_line_of(f, needle)}:") and key in errors[0], (errors[0], key)
