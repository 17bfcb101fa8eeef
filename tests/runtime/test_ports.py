"""The typed ports of a running gateway (gateway.runtime.ports, gateway.record.supervisor.SupervisedGateway).

Every member a port names exists on a real Gateway built from a config, with the right kind (a method where
the port has a method, a coroutine function where it is async); no module of gateway/ takes a gateway as
``Any``; and the one status snapshot serves the STATUS line and metrics.
"""

from __future__ import annotations

import ast
import inspect
import typing
from pathlib import Path

import pytest

from conftest import tank_overfill_config
from gateway.config import load_config
from gateway.ops.metrics import from_status
from gateway.record.supervisor import SupervisedGateway
from gateway.runtime import ports
from gateway.runtime.gateway import Gateway
from gateway.runtime.health import status_line

ROOT = Path(__file__).resolve().parents[2]
PORTS = [ports.StatusSource, ports.OperatorTarget, ports.WatchedGateway, ports.ReloadTarget, SupervisedGateway]


def _members(proto: type) -> dict[str, str]:
    """name -> "attribute" | "property" | "method" | "async" for a Protocol class and its Protocol bases."""
    out: dict[str, str] = {}
    for klass in reversed(proto.__mro__):
        if klass in (object, typing.Protocol, typing.Generic) or not getattr(klass, "_is_protocol", False):
            continue
        for name in getattr(klass, "__annotations__", {}):
            out[name] = "attribute"
        for name, v in vars(klass).items():
            if name.startswith("_"):
                continue
            if isinstance(v, property):
                out[name] = "property"
            elif inspect.iscoroutinefunction(v):
                out[name] = "async"
            elif inspect.isfunction(v):
                out[name] = "method"
    return out


@pytest.fixture
def gateway(tmp_path) -> Gateway:
    path = tmp_path / "gw.yaml"
    path.write_text(tank_overfill_config(1502, gateway_id="gw-ports", poll_interval_ms=1000))
    return Gateway(load_config(path))


def _mismatches(obj: object, port: type) -> list[str]:
    """The members of ``port`` that ``obj`` lacks or has of another kind, one line each."""
    out = []
    for name, kind in _members(port).items():
        if not hasattr(obj, name):
            out.append(f"{port.__name__}.{name}: missing")
            continue
        value = getattr(obj, name)
        if kind == "async" and not inspect.iscoroutinefunction(value):
            out.append(f"{port.__name__}.{name}: not a coroutine function")
        elif kind == "method" and (not callable(value) or inspect.iscoroutinefunction(value)):
            out.append(f"{port.__name__}.{name}: not a plain method")
        elif kind in ("property", "attribute") and inspect.ismethod(value):
            out.append(f"{port.__name__}.{name}: not a value")
    return out


@pytest.mark.parametrize("port", PORTS, ids=lambda p: p.__name__)
def test_the_gateway_has_every_member_of_each_port(gateway, port):
    assert _members(port), f"{port.__name__} names nothing"
    assert _mismatches(gateway, port) == []


def test_the_port_check_reports_a_missing_or_wrong_member(gateway):
    class Port(typing.Protocol):
        no_such_part: int

        async def status(self) -> dict: ...          # Gateway.status is a plain method

        def snapshot(self) -> dict: ...              # Gateway.snapshot is async

        @property
        def start_uploader(self) -> bool: ...        # Gateway.start_uploader is a method

    assert _members(Port) == {"no_such_part": "attribute", "status": "async", "snapshot": "method",
                              "start_uploader": "property"}
    assert _mismatches(gateway, Port) == ["Port.no_such_part: missing", "Port.status: not a coroutine function",
                                          "Port.snapshot: not a plain method", "Port.start_uploader: not a value"]


def test_no_module_takes_a_gateway_as_any():
    bad = []
    for path in sorted((ROOT / "gateway").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for a in [*node.args.args, *node.args.kwonlyargs]:
                    if a.arg in ("gw", "gateway") and isinstance(a.annotation, ast.Name) and a.annotation.id == "Any":
                        bad.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}({a.arg}: Any)")
    assert not bad, bad


async def test_one_snapshot_serves_the_status_line_and_metrics(gateway):
    snap = await gateway.snapshot(2.0)
    assert snap["store"] and "error" in snap["store"]           # not open: one line, not a traceback
    assert set(snap["devices"]) == {d.name for d in gateway.devices}
    for name, d in snap["devices"].items():
        assert d["tags"] == sum(1 for dev in gateway.plant.device_of.values() if dev.name == name)
        assert "polls" in d
    line = status_line(snap)
    assert line.startswith(f"devices 0/{len(gateway.devices)} ok, 0 alarms active"), line   # nothing read yet
    assert "readings unsent" not in line                          # the store did not answer: no made-up 0
    m = from_status(snap)
    assert m["store"] == {} and set(m["devices"]) == set(snap["devices"])
    assert all(v["polls"] == 0 for v in m["devices"].values())
