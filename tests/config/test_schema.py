"""`hazard-gateway schema` and config/schema.json: in sync, and usable (the shipped configs validate)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
from ruamel.yaml import YAML

from gateway.schema import config_schema, schema_text

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "config" / "schema.json"
UPDATE = ".venv/bin/hazard-gateway schema > config/schema.json"


def test_schema_json_is_in_sync():
    assert SCHEMA.read_text() == schema_text(), (
        f"config/schema.json is out of date with gateway/config.py; regenerate it with:  {UPDATE}")


@pytest.mark.e2e
def test_schema_command_prints_the_schema():
    r = subprocess.run([sys.executable, "-m", "gateway.cli", "schema"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and r.stderr == ""
    assert json.loads(r.stdout) == config_schema()


def test_schema_is_valid_and_described():
    s = config_schema()
    jsonschema.Draft202012Validator.check_schema(s)
    assert s["$schema"].endswith("2020-12/schema")
    props = s["properties"]
    assert {"gateway", "keys", "devices", "interlocks", "include", "metrics"} <= set(props)
    tag = s["$defs"]["ModbusTag"]["properties"]
    for key in ("address", "type", "order", "raw_range", "sentinels", "unit"):
        assert tag[key].get("description"), f"ModbusTag.{key} has no description"
    assert s["$defs"]["ModbusTcpDevice"]["additionalProperties"] is False  # unknown keys are errors


@pytest.mark.parametrize("name", ["demo.yaml", "example-site.yaml"])
def test_shipped_configs_validate_against_the_schema(name: str):
    data = YAML(typ="safe").load((ROOT / "config" / name).read_text())
    jsonschema.Draft202012Validator(config_schema()).validate(data)


def test_schema_rejects_a_typo():
    data = YAML(typ="safe").load((ROOT / "config" / "demo.yaml").read_text())
    data["devices"][0]["tags"][0]["alarms"]["HHH"] = 12.0
    errors = list(jsonschema.Draft202012Validator(config_schema()).iter_errors(data))
    assert errors
