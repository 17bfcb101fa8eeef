"""The config path of `run`, `probe`, `check`, `status` and the operator commands: --config (check's FILE) >
$HAZARD_GATEWAY_CONFIG > /etc/hazard-gateway/gateway.yaml (gateway.cli.resolve_config); a missing file is one
line naming where the path came from, exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.chain.signing import keygen
from gateway.ops.install import DEFAULT_CONFIG
from conftest import run_cli as cli, tank_overfill_config

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]
ENV = "HAZARD_GATEWAY_CONFIG"


def _site(d: Path, gateway_id: str) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    keygen(d / "keys")
    cfg = d / "gateway.yaml"
    cfg.write_text(tank_overfill_config(1, gateway_id=gateway_id, poll_interval_ms=10000))
    return cfg


async def test_check_without_file_uses_the_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    cfg = _site(tmp_path, "envsite")
    monkeypatch.setenv(ENV, str(cfg))
    rc, out, err = await cli("check")
    assert rc == 0, err
    assert out.startswith(f"{cfg}: ok (")


async def test_file_and_config_beat_the_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    good = _site(tmp_path / "a", "given")
    monkeypatch.setenv(ENV, str(tmp_path / "missing.yaml"))
    rc, out, err = await cli("check", str(good))
    assert rc == 0, err
    assert out.startswith(f"{good}: ok (")
    # --config beats the env var for the operator commands too: the socket comes from the given config
    rc, out, err = await cli("status", "--config", str(good))
    assert rc == 2
    assert "missing.yaml" not in err and ENV not in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


async def test_missing_env_path_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    missing = tmp_path / "nope.yaml"
    monkeypatch.setenv(ENV, str(missing))
    for args in (("check",), ("run",), ("probe",), ("status",), ("ack", "A1"), ("silence",)):
        rc, out, err = await cli(*args)
        assert (rc, out) == (2, ""), args
        assert err == f"hazard-gateway: no config: {missing} does not exist (from {ENV})\n", args


async def test_missing_default_is_one_line(monkeypatch: pytest.MonkeyPatch):
    if Path(DEFAULT_CONFIG).exists():
        pytest.skip(f"{DEFAULT_CONFIG} exists on this machine")
    monkeypatch.delenv(ENV, raising=False)
    for args in (("check",), ("run",), ("status",)):
        rc, out, err = await cli(*args)
        assert (rc, out) == (2, ""), args
        assert err == ("hazard-gateway: no config: /etc/hazard-gateway/gateway.yaml does not exist "
                       f"(the default; give --config or set {ENV})\n"), args


async def test_socket_needs_no_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(ENV, str(tmp_path / "nope.yaml"))
    rc, out, err = await cli("status", "--socket", str(tmp_path / "control.sock"))
    assert rc == 2
    assert "no config" not in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


async def test_status_via_env_var_when_the_daemon_is_not_running(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    cfg = _site(tmp_path, "notrunning")
    monkeypatch.setenv(ENV, str(cfg))
    rc, out, err = await cli("status")
    _, _, err_given = await cli("status", "--config", str(cfg))
    assert rc == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err == err_given  # the same usual one-line error as with --config
