"""Prometheus metrics scraped over HTTP from a real daemon process polling a real Modbus TCP server;
the same daemon's log lines under $JOURNAL_STREAM (sd-daemon <N> prefixes, no timestamps)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import SimData, SimDevice
from pymodbus.simulator.simutils import DataType

from drivers.codec import encode
from gateway.config import ConfigError, load_config
from conftest import free_port, wait_exit

pytestmark = pytest.mark.timeout(60)
ROOT = Path(__file__).resolve().parents[2]


def metric(text: str, name: str, **labels: str) -> float | None:
    """The value of the sample ``name`` whose label set is exactly ``labels`` (in any order), or None."""
    for m in re.finditer(r"^(\w+)(?:\{(.*)\})? (\S+)$", text, re.M):
        if m[1] == name and dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m[2] or "")) == labels:
            return float(m[3])
    return None


@pytest.mark.e2e
async def test_metrics_scraped_from_running_daemon(tmp_path: Path):
    regs = encode(12.0, "float32", "CDAB") + [0, 0]  # Midas gas = 12 ppm (> H 10: one active alarm)
    sim = SimDevice(id=1, simdata=(
        [SimData(60000, values=[0], datatype=DataType.BITS)], [SimData(60000, values=[0], datatype=DataType.BITS)],
        [SimData(2, values=regs, datatype=DataType.REGISTERS)],
        [SimData(60000, values=[0], datatype=DataType.REGISTERS)]))
    server = ModbusTcpServer([sim], address=("127.0.0.1", 0))
    await server.serve_forever(background=True)
    mport = server.transport.sockets[0].getsockname()[1]
    hport = free_port()
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(f"""gateway: {{id: metrics-test, state_dir: state}}
keys: {{private_key: keys/none.pem}}
devices:
  - name: midas1
    protocol: modbus_tcp
    host: 127.0.0.1
    port: {mport}
    poll_interval_ms: 100
    profile: honeywell_midas
    select: [gas]
    overrides:
      gas: {{unit: ppm, alarms: {{H: 10.0}}}}
  - name: dead
    protocol: modbus_tcp
    host: 127.0.0.1
    port: {free_port()}
    poll_interval_ms: 200
    timeout_ms: 100
    tags: [{{name: dead.x, address: 40001}}]
metrics: {{listen: "127.0.0.1:{hport}"}}
store: {{max_bytes: 1099511627776}}
""")
    log = tmp_path / "daemon.log"
    with log.open("w") as err:
        st = os.fstat(err.fileno())
        env = dict(os.environ, JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}")
        env.pop("NOTIFY_SOCKET", None)
        proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "run", "--config", str(cfg)], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=err, env=env)
        try:
            text = ""
            deadline = time.monotonic() + 30
            async with httpx.AsyncClient() as client:
                while time.monotonic() < deadline:
                    assert proc.poll() is None, log.read_text()
                    try:
                        r = await client.get(f"http://127.0.0.1:{hport}/metrics", timeout=2)
                        text = r.text
                        if (metric(text, "hazard_gateway_polls_total", device="midas1", protocol="modbus_tcp") or 0) >= 3 \
                                and (metric(text, "hazard_gateway_bad_readings_total", device="dead",
                                            protocol="modbus_tcp") or 0) >= 1 \
                                and metric(text, "hazard_gateway_active_alarms", priority="3") == 1:
                            break
                    except httpx.TransportError:
                        pass
                    await asyncio.sleep(0.2)
            assert r.headers["content-type"].startswith("text/plain")
            assert metric(text, "hazard_gateway_up") == 1
            assert metric(text, "hazard_gateway_polls_total", device="midas1", protocol="modbus_tcp") >= 3, text
            assert metric(text, "hazard_gateway_bad_readings_total", device="midas1", protocol="modbus_tcp") == 0
            assert metric(text, "hazard_gateway_bad_readings_total", device="dead", protocol="modbus_tcp") >= 1
            assert metric(text, "hazard_gateway_active_alarms", priority="3") == 1, text
            assert metric(text, "hazard_gateway_last_acked_seq") == -1        # no uplink: nothing acked
            assert metric(text, "hazard_gateway_unsent_readings") >= 1
            assert metric(text, "hazard_gateway_readings_total") >= 1
            assert metric(text, "hazard_gateway_tag_value", tag="midas1.gas", device="midas1", unit="ppm") == 12.0
            assert metric(text, "hazard_gateway_tag_quality", tag="midas1.gas", device="midas1") == 2
            assert metric(text, "hazard_gateway_tag_quality", tag="dead.x", device="dead") == 0
            assert metric(text, "hazard_gateway_tag_value", tag="dead.x", device="dead", unit="") is None  # bad
            assert metric(text, "hazard_gateway_device_up", device="midas1", protocol="modbus_tcp") == 1
            assert metric(text, "hazard_gateway_device_up", device="dead", protocol="modbus_tcp") == 0
            assert 0 <= metric(text, "hazard_gateway_tag_age_seconds", tag="midas1.gas", device="midas1") < 5
            assert re.search(r'^hazard_gateway_build_info\{config_hash="[0-9a-f]{12}",gateway_id="metrics-test",'
                             r'version="\d[^"]*"\} 1\.0$', text, re.M), text
        finally:
            proc.send_signal(signal.SIGTERM)
            rc = await wait_exit(proc, 20)   # the loop keeps serving the devices while it stops
            await server.shutdown()
    assert rc == 0
    # config warnings (FILE:LINE:COL, printed before the daemon starts), then the daemon's own lines
    lines = [ln for ln in log.read_text().splitlines() if not re.match(r"^\S+:\d+:\d+: warning: ", ln)]
    assert lines and all(re.match(r"^<[2-7]>\S+: ", ln) for ln in lines), lines[:5]   # journald style
    assert not any(re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", ln.split(": ", 1)[0]) for ln in lines)
    assert any(ln.startswith("<6>hazard_gateway.metrics: metrics on http://127.0.0.1") for ln in lines)


def test_metrics_listen_must_be_loopback(tmp_path: Path):
    base = ("gateway: {id: s}\nkeys: {private_key: k}\n"
            "devices: [{name: p, protocol: modbus_tcp, host: h, tags: [{name: a, address: 40001}]}]\n")
    f = tmp_path / "m.yaml"
    for listen in ("127.0.0.1:9108", "[::1]:9108", "localhost:9108"):
        f.write_text(base + f'metrics: {{listen: "{listen}"}}\n')
        assert load_config(f).model.metrics.listen == listen
    f.write_text(base + 'metrics: {listen: "192.168.1.5:9108"}\n')
    with pytest.raises(ConfigError) as ei:
        load_config(f)
    assert "not loopback" in str(ei.value) and ":4:" in str(ei.value)
    f.write_text(base + 'metrics: {allow_remote: true, listen: "0.0.0.0:9108"}\n')
    assert load_config(f).model.metrics.allow_remote
    f.write_text(base + 'metrics: {listen: "127.0.0.1"}\n')
    with pytest.raises(ConfigError, match="HOST:PORT"):
        load_config(f)


def test_interlock_metrics_follow_the_status_snapshot():
    """interlock_tripped / interlock_bypassed from the interlocks' states in a status snapshot (one per
    interlock, 0 or 1): tripped and cleared-awaiting-reset both count as tripped."""
    from prometheus_client import CollectorRegistry, generate_latest

    from gateway.ops.metrics import GatewayCollector, from_status

    collector = GatewayCollector()
    collector.snap = from_status({"gateway_id": "gw", "config_hash": "ab" * 32, "interlocks": [
        {"name": "A", "state": "tripped"}, {"name": "B", "state": "tripped_cleared"},
        {"name": "C", "state": "bypassed"}, {"name": "D", "state": "normal"}]})
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    text = generate_latest(registry).decode()
    assert [metric(text, "hazard_gateway_interlock_tripped", interlock=n) for n in "ABCD"] == [1, 1, 0, 0]
    assert [metric(text, "hazard_gateway_interlock_bypassed", interlock=n) for n in "ABCD"] == [0, 0, 1, 0]
