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
