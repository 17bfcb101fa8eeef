"""`hazard-gateway browse` (drivers/opcua_browse.py) against a real asyncua server on 127.0.0.1 (hil/opcua_plant.py):
the node ids, browse names, node classes and data types a technician pastes into a config, the bounds (depth,
max nodes, loops), the driver's security setup, and one-line errors with exit 1 (device) or 2 (usage)."""

from __future__ import annotations

import json

import pytest
import pytest_asyncio

from drivers.opcua_browse import browse
from drivers.opcua_node_ids import parse_node_id
from hil.opcua_plant import NAMESPACE_URI, OpcUaPlant, free_port
from conftest import run_cli
from opcua_certs import make_cert

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(90)]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def plant():
    p = OpcUaPlant()
    await p.start()
    yield p
    await p.stop()


async def test_the_plant_nodes_with_ids_names_classes_and_types(plant):
    res = await browse(plant.endpoint, depth=3)
    lines = [n.line() for n in res.nodes]
    i = lines.index("ns=2;s=GasDetector  GasDetector  Object")
    assert lines[i:i + 4] == ["ns=2;s=GasDetector  GasDetector  Object",
                              "  ns=2;s=GasDetector.AT301  AT301  Object",
                              "    ns=2;s=GasDetector.AT301.H2S  H2S  Variable  Double",
                              "    ns=2;s=GasDetector.AT301.Status  Status  Variable  Int32"]
    assert "    ns=2;s=ESD.XV100.TripCommand  TripCommand  Variable  Boolean" in lines
    assert "  ns=2;s=Gateway.Heartbeat  Heartbeat  Variable  UInt16" in lines
    assert "i=2253  Server  Object" in lines            # the standard Server object is there too
    assert any(line.endswith("Variable  String[]") for line in lines)   # arrays: ValueRank >= 1
    assert not res.truncated and all(n.depth <= 3 for n in res.nodes)
    ids = [n.node_id for n in res.nodes]
    assert len(ids) == len(set(ids))                    # each node once
    for n in res.nodes:                                 # what is printed is what a config accepts
        parse_node_id(n.node_id)


async def test_from_depth_nsu_and_max_nodes(plant):
    res = await browse(plant.endpoint, start=f"nsu={NAMESPACE_URI};s=GasDetector", depth=1, nsu=True)
    assert [n.line() for n in res.nodes] == [f"nsu={NAMESPACE_URI};s=GasDetector.AT301  AT301  Object"]
    two = await browse(plant.endpoint, start="ns=2;s=ESD", depth=2)
    assert [n.line() for n in two.nodes] == ["ns=2;s=ESD.XV100  XV100  Object",
                                             "  ns=2;s=ESD.XV100.Position  Position  Variable  Double",
                                             "  ns=2;s=ESD.XV100.TripCommand  TripCommand  Variable  Boolean"]
    capped = await browse(plant.endpoint, depth=10, max_nodes=5)
    assert len(capped.nodes) == 5 and capped.truncated
    with pytest.raises(LookupError, match="BadNodeIdUnknown"):
        await browse(plant.endpoint, start="ns=2;s=NoSuchNode")
    for kwargs in ({"depth": 0}, {"depth": 11}, {"max_nodes": 0}, {"start": "ns=2;x=1"}):
        with pytest.raises(ValueError):
            await browse(plant.endpoint, **kwargs)


async def test_cli_lines_json_and_errors(plant):
    rc, out, err = await run_cli("browse", plant.endpoint, "--from", "ns=2;s=GasDetector")
    assert rc == 0, err
    assert out.splitlines() == [
        "ns=2;s=GasDetector.AT301  AT301  Object",
        "  ns=2;s=GasDetector.AT301.H2S  H2S  Variable  Double",
        "    ns=2;s=GasDetector.AT301.H2S.EngineeringUnits  EngineeringUnits  Variable  EUInformation",  # HasProperty
        "  ns=2;s=GasDetector.AT301.Status  Status  Variable  Int32"]
    assert err.strip() == "4 nodes below ns=2;s=GasDetector, depth 3"
    rc, out, err = await run_cli("browse", plant.endpoint, "--from", "ns=2;s=ESD", "--json", "--depth", "1")
    assert rc == 0, err
    data = json.loads(out)
    assert data["nodes"] == [{"node_id": "ns=2;s=ESD.XV100", "browse_name": "XV100", "node_class": "Object",
                              "data_type": None, "depth": 1, "display_name": "XV100", "ns": 2}]
    assert data["namespaces"][2] == NAMESPACE_URI and data["truncated"] is False
    rc, out, err = await run_cli("browse", plant.endpoint, "--max-nodes", "2")
    assert rc == 0 and len(out.splitlines()) == 2 and "--max-nodes 2" in err
    dead = f"opc.tcp://127.0.0.1:{free_port('127.0.0.1')}/x"
    for args, code in (((dead, "--timeout", "0.5"), 1), (("http://plc:4840",), 2),
                       ((plant.endpoint, "--from", "ns=2;s=Nope"), 2), ((plant.endpoint, "--from", "s="), 2),
                       ((plant.endpoint, "--depth", "99"), 2)):
        rc, out, err = await run_cli("browse", *args)
        assert rc == code and len(err.splitlines()) == 1 and "Traceback" not in err, (args, rc, err)
        assert err.startswith("hazard-gateway: browse")


async def test_security_goes_through_the_driver(plant, tmp_path):
    """The driver's secure-channel setup (drivers.opcua.secure_channel) is what browse uses: a policy the server
    does not offer is refused before any session, naming what it offers; a certificate without a URI in its
    subjectAltName is refused as the driver refuses it (Part 6 6.2.2)."""
    cert, key = make_cert(tmp_path, "client", "urn:hazard-gateway:test:browse", server=False)
    rc, out, err = await run_cli("browse", plant.endpoint, "--policy", "Basic256Sha256", "--cert", str(cert),
                                 "--key", str(key), "--timeout", "2")
    assert rc == 1 and "server offers no endpoint with Basic256Sha256 SignAndEncrypt" in err, err
    (tmp_path / "bare").mkdir()
    bare, bare_key = make_cert(tmp_path / "bare", "client", None, server=False)
    rc, out, err = await run_cli("browse", plant.endpoint, "--policy", "Basic256Sha256", "--cert", str(bare),
                                 "--key", str(bare_key))
    assert rc == 2 and "URI" in err and len(err.splitlines()) == 1, err
    rc, out, err = await run_cli("browse", plant.endpoint, "--username", "op", "--password-file",
                                 str(tmp_path / "missing"))
    assert rc == 2 and "password_file" in err, err
