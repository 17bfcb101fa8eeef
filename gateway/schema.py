"""JSON Schema of the configuration file, for editors (`hazard-gateway schema`).

The schema is pydantic's ``Config.model_json_schema()`` (JSON Schema draft 2020-12),
with every field's ``description`` from gateway.config, wrapped with ``$schema``,
``$id`` and a title. config/schema.json is this output; tests/config/test_schema.py
regenerates it and fails when it is out of date. Point an editor at it, e.g. the
YAML language server::

    # yaml-language-server: $schema=schema.json

The schema checks shape and types only; cross-references (interlock inputs,
unique names, profile tags, secret file modes) are checked by `hazard-gateway check`.
"""

from __future__ import annotations

import json
from typing import Any

SCHEMA_ID = "https://hazard-gateway.invalid/schema/config.json"


def config_schema() -> dict[str, Any]:
    """The JSON Schema (a dict) of a hazard-gateway config file."""
    from gateway.config import Config

    body = Config.model_json_schema(mode="validation")
    out: dict[str, Any] = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "hazard-gateway configuration",
        "description": ("One YAML file: gateway identity, keys, store, uplink, devices (Modbus TCP/RTU, OPC UA) "
                        "with tags and alarms, interlocks. Validate with `hazard-gateway check FILE`."),
    }
    out.update({k: v for k, v in body.items() if k not in ("title", "description")})
    return out


def schema_text() -> str:
    """The schema as stable, indented JSON text ending in a newline (what config/schema.json holds)."""
    return json.dumps(config_schema(), indent=2, ensure_ascii=False) + "\n"
