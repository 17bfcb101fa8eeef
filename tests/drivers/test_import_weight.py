"""`check` reads a config without loading a protocol stack (docs/design.md, Layout: drivers/).

The example site has Modbus TCP, Modbus RTU and OPC UA devices with security; `check` validates node ids
(drivers/opcua_node_ids.py) and certificates (drivers/opcua_certs.py) without importing asyncua or pymodbus,
so a technician's `check` stays fast and a broken protocol library cannot break it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import json, sys
from gateway.cli import main
try:
    rc = main(["check", sys.argv[1]])
except SystemExit as e:
    rc = e.code
print(json.dumps({"rc": rc, "asyncua": "asyncua" in sys.modules, "pymodbus": "pymodbus" in sys.modules}))
"""


def test_check_of_a_site_with_every_protocol_loads_no_protocol_stack(tmp_path: Path) -> None:
    from site_secrets import make_site_secrets

    site = tmp_path / "gateway.yaml"
    site.write_text((ROOT / "config" / "example-site.yaml").read_text())
    make_site_secrets(tmp_path / "keys")
    r = subprocess.run([sys.executable, "-c", PROBE, str(site)], capture_output=True, text=True, cwd=ROOT, timeout=60)
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out == {"rc": 0, "asyncua": False, "pymodbus": False}, (out, r.stderr[-2000:])


BUILD = """
import json, sys
from gateway.config import load_config
from gateway.runtime.build import build_plant
plant = build_plant(load_config(sys.argv[1]))
print(json.dumps({"devices": sorted(d.protocol for d in plant.devices), "asyncua": "asyncua" in sys.modules,
                  "opcua_driver": "drivers.opcua" in sys.modules}))
"""


def test_building_a_modbus_only_config_imports_no_asyncua(tmp_path: Path) -> None:
    """drivers.registry imports a protocol's driver only for a device of that protocol: a Modbus-only plant
    (build_plant, as the daemon and a reload build it) never loads the OPC UA stack."""
    from conftest import tank_overfill_config
    from gateway.chain.signing import keygen

    keygen(tmp_path / "keys")
    site = tmp_path / "gw.yaml"
    site.write_text(tank_overfill_config(1502, gateway_id="mb-only", store="{max_bytes: 1099511627776}",
                                         store_at_end=True, heartbeat="heartbeat: {address: 40101}"))
    r = subprocess.run([sys.executable, "-c", BUILD, str(site)], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out == {"devices": ["modbus_tcp"], "asyncua": False, "opcua_driver": False}, (out, r.stderr[-2000:])


#: what `run` on a Modbus-TCP-only config with an HTTPS uplink and neither ``web:`` nor ``metrics:`` must not
#: load: the other protocols' stacks (asyncua; pyserial and pymodbus: the Modbus driver frames TCP itself and
#: opens a serial port only for RTU), the receiver's web stack and database client, the MQTT client (HTTPS
#: uplink), the status page and Prometheus (not configured), the test and bench tools, and the optional imports
#: of httpx / httpcore that the daemon marks absent (gateway.runtime.daemon.UNUSED_OPTIONAL_IMPORTS)
HEAVY = ("asyncua", "serial", "pymodbus", "starlette", "uvicorn", "psycopg", "paho", "prometheus_client",
         "matplotlib", "numpy", "selenium", "babel", "jwcrypto", "hypothesis", "trio", "click", "rich", "pygments",
         "gateway.ops.web", "gateway.ops.metrics", "gateway.regulator", "gateway.record.uplink_mqtt", "hil")

RUN = """
import json, os, signal, sys, threading, time
from pathlib import Path

def probe():   # once the daemon has written its status (devices started, store open, uplink built): what is loaded
    status = Path(sys.argv[2])
    deadline = time.monotonic() + 60
    while not status.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)   # the uploader's first attempt: its HTTP client is made then
    loaded = sorted(m for m, mod in sys.modules.items() if mod is not None)
    Path(sys.argv[3]).write_text(json.dumps(loaded))
    os.kill(os.getpid(), signal.SIGTERM)

threading.Thread(target=probe, daemon=True).start()
from gateway.cli import main
sys.exit(main(["run", "--config", sys.argv[1]]))
"""


@pytest.mark.e2e
def test_run_of_a_modbus_only_config_loads_no_other_stack_and_no_web_or_plotting_library(tmp_path: Path) -> None:
    """`hazard-gateway run` itself (devices started, store open, the HTTPS uploader running) on a Modbus TCP
    config: none of HEAVY is imported (docs/design.md, Layout: drivers/registry.py imports a protocol's driver
    only for a device of that protocol; the page and metrics only when configured)."""
    from conftest import free_port, tank_overfill_config
    from gateway.chain.signing import keygen
    from gateway.tlsutil import make_self_signed

    keygen(tmp_path / "keys")
    cert, _key = make_self_signed(tmp_path / "tls")
    site = tmp_path / "gw.yaml"
    uplink = f"uplink: {{url: 'https://127.0.0.1:{free_port()}/v1/batches', ca_file: {cert}}}"
    site.write_text(tank_overfill_config(free_port(), gateway_id="mb-run", store="{max_bytes: 1099511627776}",
                                         extra=uplink, store_at_end=True))
    out = tmp_path / "modules.json"
    r = subprocess.run([sys.executable, "-c", RUN, str(site), str(tmp_path / "state" / "status.json"), str(out)],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0 and out.exists(), r.stderr[-3000:]
    loaded = json.loads(out.read_text())
    assert "gateway.record.uplink" in loaded and "drivers.modbus" in loaded, "the probe ran before the daemon did"
    heavy = sorted(m for m in loaded if any(m == h or m.startswith(h + ".") for h in HEAVY))
    assert heavy == [], heavy
