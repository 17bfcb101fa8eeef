"""Property: whatever YAML text the gateway is given, loading it succeeds or raises the loader's own
one-line error (FILE:LINE:COL), in bounded time; never another exception, never a hang.

Inputs are the shipped files mutated (lines deleted, duplicated, swapped; characters, anchors,
aliases, tags, an alias bomb and a self-reference inserted) plus random text and random bytes. They
go through the whole load, not only the parser: the config through load_config (profile expansion,
pydantic, semantic checks), a profile through load_profile, a HIL scenario through load_scenario.
Settings are fixed (derandomize, no example database) so CI runs the same examples every time.
"""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.config import ConfigError, LoadedConfig, load_config
from gateway.device_profiles import Profile, load_profile
from hil.scenario import Scenario, ScenarioError, load_scenario

# e2e: 200 hypothesis examples: about 30 s
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[2]
#: what the loader is given, by kind: config (load_config), profile (load_profile), scenario (load_scenario)
BASES = {
    "demo.yaml": ("config", (ROOT / "config" / "demo.yaml").read_text(encoding="utf-8")),
    "example-site.yaml": ("config", (ROOT / "config" / "example-site.yaml").read_text(encoding="utf-8")),
    "profile.yaml": ("profile", (ROOT / "config" / "profiles" / "generic_4_20ma_input.yaml").read_text(encoding="utf-8")),
    "scenario.yaml": ("scenario", (ROOT / "hil" / "scenarios" / "demo.yaml").read_text(encoding="utf-8")),
}
LIMIT_S = 5.0   # per example, CPU seconds (a SIGVTALRM timer stops a runaway walk) and wall seconds

BOMB = "x-l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"x-l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 10))
SNIPPETS = ["&a ", "*a", "<<: *a\n", "&b [*b]", "&c {k: *c}", "!!python/name:os.system ",
            "!!python/object/apply:os.system [echo]", "!include x ", "!!binary aGk= ", "[" * 100, "{" * 70,
            "\t", "\x00", "\ufeff", "---\n", "...\n", "? ", ": ", "- ", "'", '"', "#", "|", ">", "%YAML 1.1\n",
            "x: *l9\n", "<<: 3\n", "0o777", "1e999", "~", "null", "2026-01-01", "\u202e", "液氯"]
ALPHABET = st.characters(codec="utf-8", exclude_categories=("Cs",)) | st.sampled_from(list("&*!:-[]{},#|>'\"?%@`\t\n "))


class _TooSlow(Exception):
    pass


def _too_slow(signum, frame):
    raise _TooSlow(f"a load used more than {LIMIT_S} s of CPU")


@st.composite
def mutated(draw) -> tuple[str, bytes]:
    name = draw(st.sampled_from(sorted(BASES)))
    lines = BASES[name][1].splitlines(keepends=True)
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["delete", "duplicate", "swap", "chars", "anchor", "alias", "snippet", "bomb"]))
        i = draw(st.integers(0, len(lines) - 1)) if lines else 0
        if not lines:
            lines = [""]
        if op == "delete":
            del lines[i]
        elif op == "duplicate":
            lines.insert(i, lines[i])
        elif op == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif op == "chars":
            at = draw(st.integers(0, len(lines[i])))
            lines[i] = lines[i][:at] + draw(st.text(ALPHABET, max_size=8)) + lines[i][at:]
        elif op in ("anchor", "alias"):
            head, sep, tail = lines[i].partition(": ")
            n = draw(st.integers(0, 3))
            if sep:
                lines[i] = f"{head}: &a{n} {tail}" if op == "anchor" else f"{head}: *a{n}\n"
        elif op == "snippet":
            at = draw(st.integers(0, len(lines[i])))
            lines[i] = lines[i][:at] + draw(st.sampled_from(SNIPPETS)) + lines[i][at:]
        else:  # an alias bomb at the top level, used somewhere below it
            lines[i:i] = [BOMB]
    return name, "".join(lines).encode("utf-8")


inputs = st.one_of(
    mutated(),
    st.tuples(st.sampled_from(sorted(BASES)), st.text(ALPHABET, max_size=300).map(lambda t: t.encode("utf-8"))),
    st.tuples(st.sampled_from(sorted(BASES)), st.binary(max_size=300)),
)


def _load(kind: str, path: Path) -> tuple[object, type]:
    """(what the loader returned, the type it must be)."""
    if kind == "config":
        return load_config(path), LoadedConfig
    if kind == "profile":
        return load_profile(path), Profile
    return load_scenario(path), Scenario


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("yaml-property")


@settings(max_examples=200, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=inputs)
def test_any_yaml_loads_or_gives_one_line_errors_in_bounded_time(workdir: Path, case: tuple[str, bytes]):
    name, data = case
    kind = BASES[name][0]
    path = workdir / name
    path.write_bytes(data)
    old = signal.signal(signal.SIGVTALRM, _too_slow)
    signal.setitimer(signal.ITIMER_VIRTUAL, LIMIT_S, 0.5)  # repeats: a raise swallowed (gc callback) comes again
    t0 = time.monotonic()
    try:
        try:
            result, ok_type = _load(kind, path)
            assert isinstance(result, ok_type)
        except (ConfigError, ScenarioError) as exc:
            want = ConfigError if kind != "scenario" else ScenarioError
            assert isinstance(exc, want), f"{kind}: {type(exc).__name__}: {exc}"
            if isinstance(exc, ConfigError):
                assert exc.problems
                for p in exc.problems:
                    line = str(p)
                    assert "\n" not in line and p.line >= 1 and p.col >= 1, line
                    assert re.match(r"^[^\n]+:\d+:\d+: ", line), line
            else:
                assert "\n" not in str(exc) and re.match(rf"^{re.escape(str(path))}:\d+: ", str(exc)), str(exc)
    finally:
        signal.setitimer(signal.ITIMER_VIRTUAL, 0)
        signal.signal(signal.SIGVTALRM, old)
    assert time.monotonic() - t0 < LIMIT_S
