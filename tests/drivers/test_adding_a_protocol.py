"""Adding a protocol touches drivers/ and the registry only (drivers/README.md, "Adding a protocol").

A child process plays the part of a new driver: it defines a Device, the protocol's config section (its own
keys for a device and a tag) and one registry entry, in that order, before anything of gateway/ is imported,
and then uses the unchanged core: ``check`` validates a config of the new protocol (and reports a typo in its
own keys at FILE:LINE:COL, listing it among the protocols), build_plant builds it, a poll's readings go
through the safety tick into an interlock trip that writes the output back through the new driver.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

CHILD = r'''
import asyncio, json, sys, time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

import drivers.registry as registry
from drivers.base import Device
from gateway.model import STRICT, Quality, Reading


class LoopFields(BaseModel):          # the device keys of the new protocol
    model_config = STRICT
    start: float = Field(description="the value every input starts at")


class LoopTagFields(BaseModel):       # the tag keys of the new protocol
    model_config = STRICT
    slot: int = Field(ge=0, description="where the value lives")


class LoopDevice(Device):
    protocol = "loopback"

    def __init__(self, section: Any) -> None:
        self.name = section.name
        self._tags = [t.name for t in section.tags]
        self.memory = {t.name: section.start for t in section.tags}
        self.writes: list = []

    @property
    def tags(self) -> list[str]:
        return self._tags

    async def start(self) -> None:
        pass

    async def read(self) -> list[Reading]:
        return [Reading(t, v, "m", Quality.GOOD, ts=time.time()) for t, v in self.memory.items()]

    async def write(self, tag: str, value: Any) -> Reading:
        self.writes.append((tag, value))
        self.memory[tag] = value
        return Reading(tag, value, "", Quality.GOOD, ts=time.time())

    async def close(self) -> None:
        pass


registry.PROTOCOLS["loopback"] = registry.Protocol(
    "loopback", lambda section, ctx: LoopDevice(section), lambda section: str(section.name),
    LoopFields, LoopTagFields, "LoopbackDevice", "LoopbackTag")

from gateway.config import ConfigError, load_config          # the core, unchanged, after the entry
from gateway.runtime.gateway import Gateway

good, bad = Path(sys.argv[1]), Path(sys.argv[2])
out: dict = {}
try:
    load_config(bad)
except ConfigError as exc:
    out["bad"] = [str(p) for p in exc.problems]
cfg = load_config(good)
gw = Gateway(cfg)
dev = gw.plant.devices[0]
out["device"] = [type(dev).__name__, dev.link_id]


async def main() -> None:
    gw.on_readings(await dev.read())            # 12.0 m > HH 11.0: the interlock trips, XV1 := 0
    for _ in range(100):
        if dev.writes:
            break
        await asyncio.sleep(0.01)
    out["writes"] = dev.writes
    out["state"] = gw.plant.interlocks.status()[0]["state"]

asyncio.run(main())
print(json.dumps(out))
'''

CONFIG = """\
gateway: {{id: gw-loop, state_dir: state}}
keys: {{private_key: keys/private.pem}}
store: {{retention_floor: {{waive: true, reason: "a test of the registry, no records kept"}}}}
devices:
  - name: loop1
    protocol: loopback
    {start_key}: 12.0
    poll_interval_ms: 1000
    tags:
      - {{name: T1.level, slot: 0, unit: m, alarms: {{HH: 11.0}}}}
      - {{name: XV1, slot: 1, writable: true}}
interlocks:
  - name: T1_overfill
    inputs: [{{tag: T1.level, condition: HH}}]
    actions: [{{output: XV1, value: 0}}]
"""


@pytest.mark.e2e
def test_a_new_protocol_needs_only_a_driver_a_section_and_a_registry_entry(tmp_path):
    from gateway.chain.signing import keygen

    keygen(tmp_path / "keys")
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(CONFIG.format(start_key="start"))
    bad.write_text(CONFIG.format(start_key="strat"))      # a typo in the new protocol's own key
    r = subprocess.run([sys.executable, "-c", CHILD, str(good), str(bad)], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.splitlines()[-1])
    assert out["device"] == ["LoopDevice", "loop1"]
    assert out["writes"] == [["XV1", 0]] and out["state"] == "tripped", out
    assert f"{bad}:7:5: devices[0].strat: unknown key (typo?)" in out["bad"], out["bad"]
    assert f"{bad}:5:5: devices[0]: missing required key 'start'" in out["bad"], out["bad"]   # at the device


def test_the_registry_lists_each_protocols_config_section():
    """Every entry gives its own keys as pydantic models with the config's strictness (gateway.model.STRICT);
    the config's device models are built from exactly these entries."""
    from drivers.registry import PROTOCOLS
    from gateway.config import DEVICE_MODELS, TAG_MODELS
    from gateway.model import STRICT

    assert set(DEVICE_MODELS) == set(TAG_MODELS) == set(PROTOCOLS)
    for name, p in PROTOCOLS.items():
        for section in (p.device_fields, p.tag_fields):
            assert section.model_config == STRICT, (name, section)
        assert DEVICE_MODELS[name].__name__ == p.device_model and TAG_MODELS[name].__name__ == p.tag_model
        assert issubclass(DEVICE_MODELS[name], p.device_fields) and issubclass(TAG_MODELS[name], p.tag_fields)
