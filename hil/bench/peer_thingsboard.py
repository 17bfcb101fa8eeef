"""Peer comparison: ThingsBoard IoT Gateway polling the same Modbus TCP simulator with the same tags.

The peer (PyPI ``thingsboard-gateway``, pinned :data:`PEER_VERSION`) is
installed by this benchmark into its own venv (``bench-results/.peer-venv``;
created once, reused), together with the Modbus connector's dependencies
(``pymodbus`` at the version the connector requires, pyserial,
pyserial-asyncio), so it never touches the project's .venv.

Both gateways run as subprocesses and poll a :class:`hil.bench.TagSim` in
this process (``tags`` float32 tags, values changing every second) every
``poll_ms``; each is measured by the same harness
(:func:`hil.bench.idle.measure_process`: CPU from /proc, tags served by the
simulator). Ours runs with its whole record path (SQLite, signed batches,
HTTPS to the reference receiver); the peer with its own (telemetry over MQTT
to a local mosquitto broker when ``mosquitto`` is installed, else buffered in
its memory storage: the JSON says which). The peer's Modbus connector reads
one request per configured tag (its data model: one ``timeseries`` entry,
``32float``, ``objectsCount`` 2, per tag); ours plans block reads.

``peer_ratio`` = ours tags per CPU-second / the peer's (target >= 20, hil/bench/README.md, Targets).
If the peer cannot be installed or started, ``available`` is False and
``reason`` says exactly why; nothing raises.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from hil.bench import REPO, TagSim, free_port

PEER_VERSION = "3.8.5"
PEER_DEPS = ["pymodbus==3.9.2", "pyserial", "pyserial-asyncio"]  # thingsboard_gateway/connectors/modbus: required_version
DEFAULT_VENV = REPO / "bench-results" / ".peer-venv"


def _last_line(text: str) -> str:
    lines = [x for x in (text or "").strip().splitlines() if x.strip() and not x.startswith("WARNING: Location")]
    return lines[-1][:300] if lines else "(no output)"


def ensure_peer_venv(venv: Path = DEFAULT_VENV, timeout_s: float = 900) -> tuple[Path | None, str]:
    """Create the peer venv and install thingsboard-gateway into it; returns (python path, "") or (None, why)."""
    py = venv / "bin" / "python"
    stamp = venv / f".installed-{PEER_VERSION}"
    if py.exists() and stamp.exists():
        return py, ""
    try:
        if not py.exists():
            r = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True, timeout=300)
            if r.returncode != 0:
                return None, f"cannot create venv {venv}: {_last_line(r.stderr)}"
        r = subprocess.run([str(py), "-m", "pip", "install", "--disable-pip-version-check", "-q",
                            f"thingsboard-gateway=={PEER_VERSION}", *PEER_DEPS],
                           capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return None, f"pip install thingsboard-gateway=={PEER_VERSION} took longer than {timeout_s:.0f} s"
    except OSError as exc:
        return None, f"cannot run pip for the peer venv: {exc}"
    if r.returncode != 0:
        return None, f"pip install thingsboard-gateway=={PEER_VERSION} failed: {_last_line(r.stderr or r.stdout)}"
    stamp.touch()
    return py, ""


def _peer_configs(cfg_dir: Path, tags: int, poll_ms: int, sim_port: int, mqtt_port: int) -> Path:
    """Write tb_gateway.json, logs.json and modbus.json for the peer into cfg_dir; returns tb_gateway.json."""
    cfg_dir.mkdir(parents=True, exist_ok=True)
    (cfg_dir / "logs").mkdir(exist_ok=True)
    main = {
        "thingsboard": {
            "host": "127.0.0.1", "port": mqtt_port, "remoteShell": False, "remoteConfiguration": False,
            "latencyDebugMode": False,
            "statistics": {"enable": False, "statsSendPeriodInSeconds": 3600, "customStatsSendPeriodInSeconds": 3600},
            "deviceFiltering": {"enable": False, "filterFile": "list.json"},
            "maxPayloadSizeBytes": 8196, "minPackSendDelayMS": 50, "minPackSizeToSend": 500,
            "checkConnectorsConfigurationInSeconds": 3600, "handleDeviceRenaming": False,
            "security": {"type": "accessToken", "accessToken": "bench-peer"}, "qos": 1,
            "reportStrategy": {"type": "ON_RECEIVED"},
            "checkingDeviceActivity": {"checkDeviceInactivity": False},
        },
        "storage": {"type": "memory", "read_records_count": 100, "max_records_count": 100000},
        "grpc": {"enabled": False},
        "connectors": [{"type": "modbus", "name": "Modbus", "configuration": "modbus.json"}],
    }
    (cfg_dir / "tb_gateway.json").write_text(json.dumps(main, indent=2))
    logs = {
        "version": 1, "disable_existing_loggers": False,
        "formatters": {"f": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
        "handlers": {"file": {"class": "logging.FileHandler", "formatter": "f", "level": "WARNING",
                              "filename": str(cfg_dir / "logs" / "peer.log")}},
        "loggers": {**{n: {"handlers": ["file"], "level": "WARNING", "propagate": False}
                       for n in ("service", "connector", "converter", "storage", "extension",
                                 "tb_gateway.statistics", "database")},
                    # connection state lines are wanted (did it reach the broker?); pymodbus 3.9.2 warns about
                    # its own deprecated BinaryPayloadDecoder on every decode, which is not the peer's real cost
                    "tb_connection": {"handlers": ["file"], "level": "INFO", "propagate": False},
                    "pymodbus": {"handlers": ["file"], "level": "ERROR", "propagate": False}},
        "root": {"level": "WARNING", "handlers": ["file"]},
    }
    (cfg_dir / "logs.json").write_text(json.dumps(logs, indent=2))
    ts = [{"tag": f"T{i:04d}", "type": "32float", "functionCode": 4, "objectsCount": 2, "address": 2 * i}
          for i in range(tags)]
    modbus = {"master": {"slaves": [{
        "host": "127.0.0.1", "port": sim_port, "type": "tcp", "method": "socket", "unitId": 1,
        "deviceName": "bench-sim", "deviceType": "default", "timeout": 35, "byteOrder": "BIG", "wordOrder": "BIG",
        "retries": True, "retryOnEmpty": True, "retryOnInvalid": True, "pollPeriod": poll_ms,
        "connectAttemptTimeMs": 5000, "connectAttemptCount": 5, "waitAfterFailedAttemptsMs": 300000,
        "attributes": [], "timeseries": ts, "attributeUpdates": [], "rpc": []}]}}
    (cfg_dir / "modbus.json").write_text(json.dumps(modbus, indent=2))
    return cfg_dir / "tb_gateway.json"


def _start_broker(wd: Path) -> tuple[subprocess.Popen | None, int, str]:
    """A local mosquitto for the peer's telemetry; (None, closed port, why) when mosquitto is not installed."""
    exe = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
    port = free_port()
    if not exe:
        return None, port, "no mosquitto on this machine: the peer buffers its telemetry in memory storage"
    conf = wd / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return proc, port, f"telemetry over MQTT to a local mosquitto ({exe})"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    proc.wait()
    return None, port, "mosquitto did not start: the peer buffers its telemetry in memory storage"


def _stop(proc: subprocess.Popen | None, timeout_s: float = 15.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        proc.terminate()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()
        proc.wait()


async def measure_peer(py: Path, tags: int, poll_ms: int, duration_s: float, warmup_s: float,
                       wd: Path) -> dict[str, Any]:
    """Run the peer against a TagSim and measure it. Raises RuntimeError when it does not poll."""
    from hil.bench.idle import measure_process

    wd.mkdir(parents=True, exist_ok=True)
    sim = TagSim(tags, vary=True)
    await sim.start()
    broker, mqtt_port, broker_note = _start_broker(wd)
    cfg = _peer_configs(wd / "config", tags, poll_ms, sim.port, mqtt_port)
    log = open(wd / "peer-stdout.log", "ab")
    code = ("import sys; from thingsboard_gateway.gateway.tb_gateway_service import TBGatewayService; "
            "TBGatewayService(sys.argv[1])")
    proc = subprocess.Popen([str(py), "-c", code, str(cfg)], cwd=str(wd), stdout=log, stderr=log,
                            start_new_session=True)
    try:
        res = await measure_process(proc, sim, warmup_s=warmup_s, duration_s=duration_s, ready_timeout_s=90,
                                    expected_tags_per_s=tags * 1000 / poll_ms)
    except RuntimeError as exc:
        tail = _last_line((wd / "peer-stdout.log").read_text(errors="replace"))
        raise RuntimeError(f"{exc}; last output: {tail}") from None
    finally:
        _stop(proc)
        _stop(broker)
        log.close()
        await sim.stop()
    res["telemetry"] = broker_note
    return res


def run(tags: int = 500, poll_ms: int = 1000, duration_s: float = 60.0, warmup_s: float = 10.0,
        venv: str | None = None, ours: dict | None = None, workdir: str | None = None) -> dict[str, Any]:
    """Tags per CPU-second of ours and of the peer, same simulator, same tags, same interval.

    ours: an already measured run of our daemon at the same tags/interval (from hil.bench.idle), else it is
    measured here. Returns {"available", "reason", "peer", "ours", "peer_ratio", "params"}.
    """
    from hil.bench import idle

    params = {"peer": f"thingsboard-gateway {PEER_VERSION} (Modbus connector, one request per tag)",
              "tags": tags, "poll_ms": poll_ms, "duration_s": duration_s, "warmup_s": warmup_s}
    base = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="bench-peer-"))
    base.mkdir(parents=True, exist_ok=True)
    if ours is None:
        ours = idle.run(tags=tags, poll_ms=[poll_ms], duration_s=duration_s, warmup_s=warmup_s,
                        workdir=str(base / "ours"))["runs"][0]
    out: dict[str, Any] = {"params": params, "ours": ours, "peer": None, "available": False, "reason": None,
                           "peer_ratio": None}
    py, why = ensure_peer_venv(Path(venv) if venv else DEFAULT_VENV)
    if py is None:
        out["reason"] = why
        return out
    try:
        peer = asyncio.run(measure_peer(py, tags, poll_ms, duration_s, warmup_s, base / "peer"))
    except (RuntimeError, OSError) as exc:
        out["reason"] = f"the peer did not run: {exc}"
        return out
    out["peer"], out["available"] = peer, True
    if ours.get("tags_per_cpu_s") and peer.get("tags_per_cpu_s"):
        out["peer_ratio"] = round(ours["tags_per_cpu_s"] / peer["tags_per_cpu_s"], 1)
    elif not peer.get("tags_per_s"):
        out["reason"] = "the peer polled nothing during the measurement"
    return out


if __name__ == "__main__":
    print(json.dumps(run(duration_s=float(sys.argv[1]) if len(sys.argv) > 1 else 20.0,
                         ours={"tags_per_cpu_s": None}), indent=2))
