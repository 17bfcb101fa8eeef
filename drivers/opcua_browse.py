"""Browse an OPC UA server's address space for commissioning (``hazard-gateway browse``), on asyncua.

A technician points it at an endpoint and gets the nodes below a start node (default the Objects folder,
ns=0;i=85) with what a config needs: the node id to paste into a tag's ``node_id:``, the browse name, the node
class and, for a Variable, its data type (``Float``, ``Double[]`` for an array, a server-defined type by its
browse name).

Spec: OPC UA Part 4 5.8.2 Browse and 5.8.3 BrowseNext (asyncua follows continuation points), following the
forward HierarchicalReferences (ns=0;i=33, subtypes included: Organizes, HasComponent, HasProperty, ...) as
the standard's address space views do; Part 4 5.10.2 Read for the DataType (Part 3 5.6.2) and ValueRank
(Part 3 5.6.2: -1 scalar, >= 1 array) attributes of the Variables of each level, in one Read per level;
Part 6 5.3.1.10 for the node id string forms (``ns=2;s=...``, ``nsu=URI;s=...``).

The connection is the driver's (:func:`drivers.opcua.new_client`): the same security policies, modes,
client certificate / trusted server certificate checks and user name / password file as an ``opcua``
device of the config. The walk is bounded: ``depth`` levels below the start node (1..MAX_DEPTH), at most
``max_nodes`` nodes in all (then :attr:`BrowseResult.truncated`), each node listed once (a node reached
again through another reference, as Organizes loops allow, is not walked twice).

Errors: ValueError (a usage error: a bad endpoint or node id string, a bad bound), LookupError (the start
node does not exist on that server: the status code is named), ConnectionError / OSError / asyncio
timeouts (the server cannot be reached or refused the session). Messages are one line, English; the
command line translates its own words around them.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass, field
from typing import Any

from asyncua import ua

from drivers.opcua import check_security, new_client
from drivers.opcua_node_ids import parse_node_id

#: Objects folder (Part 5 8.2.4): where a plant's nodes are
OBJECTS_FOLDER = "i=85"
DEFAULT_DEPTH = 3
MAX_DEPTH = 10
DEFAULT_MAX_NODES = 2000
MAX_NODES = 100_000


@dataclass(frozen=True)
class BrowsedNode:
    """One node found: ``node_id`` (``ns=2;s=Tank1.Level``, or ``nsu=URI;s=...`` with ``nsu``),
    ``browse_name`` (its name part; ``ns`` the browse name's namespace index), ``node_class`` (``Object``,
    ``Variable``, ``Method``, ...), ``data_type`` (Variables: the type's name, ``[]`` appended for an
    array; None otherwise or when the server did not say), ``depth`` (1 = a child of the start node),
    ``display_name``."""

    node_id: str
    browse_name: str
    node_class: str
    data_type: str | None
    depth: int
    display_name: str = ""
    ns: int = 0

    def line(self, indent: str = "  ") -> str:
        """``ns=2;s=Tank1.Level  Level  Variable  Float``, indented by depth (depth 1: none)."""
        cols = [self.node_id, self.browse_name, self.node_class] + ([self.data_type] if self.data_type else [])
        return indent * (self.depth - 1) + "  ".join(cols)


@dataclass
class BrowseResult:
    """The walk: ``start`` (the start node as browsed), ``nodes`` in depth-first order (each child after its
    parent), ``truncated`` (max_nodes was reached: more nodes exist), ``namespaces`` (the server's namespace
    array, index -> URI)."""

    endpoint: str
    start: str
    depth: int
    max_nodes: int
    nodes: list[BrowsedNode] = field(default_factory=list)
    truncated: bool = False
    namespaces: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint, "from": self.start, "depth": self.depth, "max_nodes": self.max_nodes,
                "truncated": self.truncated, "namespaces": self.namespaces,
                "nodes": [asdict(n) for n in self.nodes]}


def _node_id_text(nid: ua.NodeId, namespaces: list[str], nsu: bool) -> str:
    text = nid.to_string()
    if nsu and nid.NamespaceIndex and nid.NamespaceIndex < len(namespaces):
        return text.replace(f"ns={nid.NamespaceIndex};", f"nsu={namespaces[nid.NamespaceIndex]};", 1)
    return text


def _plain(nid: ua.NodeId) -> ua.NodeId:
    """The NodeId of an ExpandedNodeId of this server (no NamespaceUri / ServerIndex parts)."""
    return ua.NodeId(nid.Identifier, nid.NamespaceIndex, nid.NodeIdType)


def _class_name(nc: Any) -> str:
    try:
        return ua.NodeClass(int(nc)).name
    except ValueError:
        return str(nc)


async def browse(endpoint: str, *, start: str = OBJECTS_FOLDER, depth: int = DEFAULT_DEPTH,
                 max_nodes: int = DEFAULT_MAX_NODES, security: dict | None = None, timeout_s: float = 5.0,
                 nsu: bool = False, name: str = "browse") -> BrowseResult:
    """Connect to ``endpoint`` (``opc.tcp://host:port/path``) as the driver does, browse ``depth`` levels
    (1..MAX_DEPTH) of forward hierarchical references below ``start`` (a node id string, default the
    Objects folder), at most ``max_nodes`` nodes (1..MAX_NODES), read the DataType and ValueRank of the
    Variables, disconnect. ``security``: an opcua device's security mapping (policy, mode, cert, key,
    server_cert, username, password_file); ``timeout_s`` per request; ``nsu``: node ids as
    ``nsu=URI;...`` (namespace indexes may change between sessions, URIs do not). Raises as the module
    docstring says."""
    if not isinstance(endpoint, str) or not endpoint.startswith("opc.tcp://") or len(endpoint) <= len("opc.tcp://"):
        raise ValueError(f"endpoint {endpoint!r} must look like opc.tcp://host:4840/path")
    if not 1 <= depth <= MAX_DEPTH:
        raise ValueError(f"depth {depth} must be within 1..{MAX_DEPTH}")
    if not 1 <= max_nodes <= MAX_NODES:
        raise ValueError(f"max nodes {max_nodes} must be within 1..{MAX_NODES}")
    if not timeout_s > 0:
        raise ValueError(f"timeout {timeout_s} must be > 0 s")
    parsed = parse_node_id(start)  # ValueError with the reason
    sec = check_security(name, security)
    client, _fingerprint = await new_client(name, endpoint, sec, timeout_s)
    try:
        await asyncio.wait_for(client.connect(), timeout=timeout_s * 3)
    except BaseException:
        client.disconnect_socket()
        raise
    try:
        namespaces = await client.get_namespace_array()
        try:
            start_id = parsed.resolve(namespaces)
        except LookupError as exc:
            raise LookupError(f"node id {start}: {exc}") from None
        result = BrowseResult(endpoint, _node_id_text(start_id, namespaces, nsu), depth, max_nodes,
                              namespaces=list(namespaces))
        check = await client.read_attributes([client.get_node(start_id)], ua.AttributeIds.NodeClass)
        if not check[0].StatusCode.is_good():
            raise LookupError(f"node {start}: {check[0].StatusCode.name} (no such node on this server)")
        await _walk(client, start_id, result, namespaces, nsu)
        return result
    finally:
        try:
            await asyncio.wait_for(client.disconnect(), timeout=timeout_s)
        except Exception:  # noqa: BLE001 - the server may be gone already
            client.disconnect_socket()


async def _walk(client: Any, start_id: ua.NodeId, result: BrowseResult, namespaces: list[str], nsu: bool) -> None:
    """Depth-first listing, one Browse per node and one Read per sibling group's Variables."""
    seen = {start_id.to_string()}
    type_names: dict[str, str] = {}

    async def children(nid: ua.NodeId) -> list[ua.ReferenceDescription]:
        refs = await client.get_node(nid).get_references(
            refs=ua.ObjectIds.HierarchicalReferences, direction=ua.BrowseDirection.Forward, includesubtypes=True)
        return [r for r in refs if r.IsForward and not getattr(r.NodeId, "ServerIndex", 0)]  # on this server

    async def type_name(dt: ua.NodeId) -> str:
        key = dt.to_string()
        if key not in type_names:
            if dt.NamespaceIndex == 0 and isinstance(dt.Identifier, int) and dt.Identifier in ua.ObjectIdNames:
                type_names[key] = ua.ObjectIdNames[dt.Identifier]
            else:
                dv = await client.read_attributes([client.get_node(dt)], ua.AttributeIds.BrowseName)
                qn = dv[0].Value.Value if dv[0].StatusCode.is_good() and dv[0].Value is not None else None
                type_names[key] = qn.Name if isinstance(qn, ua.QualifiedName) else key
        return type_names[key]

    async def data_types(refs: list[ua.ReferenceDescription]) -> dict[str, str]:
        variables = [r for r in refs if r.NodeClass in (ua.NodeClass.Variable, ua.NodeClass.VariableType)]
        if not variables:
            return {}
        nodes = [client.get_node(r.NodeId) for r in variables]
        dts = await client.read_attributes(nodes, ua.AttributeIds.DataType)
        ranks = await client.read_attributes(nodes, ua.AttributeIds.ValueRank)
        out = {}
        for r, dt, rank in zip(variables, dts, ranks):
            if not dt.StatusCode.is_good() or dt.Value is None or not isinstance(dt.Value.Value, ua.NodeId):
                continue
            name = await type_name(dt.Value.Value)
            vr = rank.Value.Value if rank.StatusCode.is_good() and rank.Value is not None else -1
            out[_plain(r.NodeId).to_string()] = name + ("[]" if isinstance(vr, int) and vr >= 1 else "")
        return out

    async def visit(nid: ua.NodeId, level: int) -> None:
        refs = await children(nid)
        types = await data_types(refs)
        for r in refs:
            plain = _plain(r.NodeId)
            key = plain.to_string()
            if key in seen:
                continue
            if len(result.nodes) >= result.max_nodes:
                result.truncated = True
                return
            seen.add(key)
            result.nodes.append(BrowsedNode(
                node_id=_node_id_text(plain, namespaces, nsu),
                browse_name=r.BrowseName.Name or "", node_class=_class_name(r.NodeClass),
                data_type=types.get(key), depth=level, display_name=r.DisplayName.Text or "",
                ns=r.BrowseName.NamespaceIndex))
            if level < result.depth:
                await visit(plain, level + 1)
                if result.truncated:
                    return

    await visit(start_id, 1)
