"""OPC UA node ids in their string form (OPC UA Part 6 5.3.1.10), without asyncua at import.

``check`` validates every configured node id with :func:`parse_node_id`; only the driver, at connect
time, turns one into an asyncua ``ua.NodeId`` (:meth:`ParsedNodeId.resolve`), so reading a config never
loads the OPC UA stack.
"""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass
from typing import Any

from gateway.model import Explained


@dataclass(frozen=True)
class ParsedNodeId:
    """A node id string split into its parts (Part 6 5.3.1.10 string form).

    ns: namespace index, or None when given as ``nsu=``; nsu: namespace URI or None;
    kind: "i" numeric, "s" string, "g" GUID, "b" opaque (base64); identifier: the
    typed identifier (int, str, uuid.UUID or bytes).
    """

    ns: int | None
    nsu: str | None
    kind: str
    identifier: int | str | uuid.UUID | bytes

    def resolve(self, namespace_array: list[str]) -> Any:
        """The asyncua ``ua.NodeId`` for a session whose NamespaceArray is ``namespace_array``.

        Raises LookupError when the ``nsu`` URI is not on the server.
        """
        from asyncua import ua   # the driver has it loaded already; check never gets here

        ns = self.ns
        if ns is None:
            try:
                ns = namespace_array.index(self.nsu)
            except ValueError:
                raise LookupError(f"namespace {self.nsu} not on server") from None
        kind = {"i": ua.NodeIdType.Numeric, "s": ua.NodeIdType.String,
                "g": ua.NodeIdType.Guid, "b": ua.NodeIdType.ByteString}[self.kind]
        if kind is ua.NodeIdType.Numeric:
            return ua.NodeId(self.identifier, ns)  # asyncua picks the two/four-byte encoding
        return ua.NodeId(self.identifier, ns, kind)


def parse_node_id(text: str) -> ParsedNodeId:
    """Parse ``[ns=<n>;|nsu=<uri>;](i|s|g|b)=<id>`` (Part 6 5.3.1.10).

    No namespace prefix means ns=0. Raises ValueError (one line) on whitespace
    anywhere in the node id, an unknown identifier type, a non-numeric ``i=`` /
    ``ns=``, a malformed GUID or base64 opaque id.
    """
    if not isinstance(text, str) or not text:
        raise ValueError(f"node id {text!r}: empty")
    if any(ch.isspace() for ch in text):
        raise ValueError(Explained("node id {node_id}: contains whitespace", node_id=repr(text)))
    ns: int | None = 0
    nsu: str | None = None
    rest = text
    if text.startswith("ns=") or text.startswith("nsu="):
        head, sep, rest = text.partition(";")
        if not sep:
            raise ValueError(f"node id {text!r}: expected ';' after the namespace")
        key, _, val = head.partition("=")
        if key == "ns":
            if not val.isdigit() or int(val) > 65535:
                raise ValueError(f"node id {text!r}: namespace index {val!r} is not 0..65535")
            ns = int(val)
        else:
            if not val:
                raise ValueError(f"node id {text!r}: empty namespace URI")
            ns, nsu = None, val
    kind, sep, ident = rest.partition("=")
    if not sep or kind not in ("i", "s", "g", "b") or not ident:
        raise ValueError(f"node id {text!r}: expected i=, s=, g= or b= identifier")
    value: int | str | uuid.UUID | bytes
    if kind == "i":
        if not ident.isdigit() or int(ident) > 0xFFFFFFFF:
            raise ValueError(f"node id {text!r}: numeric identifier {ident!r} is not 0..4294967295")
        value = int(ident)
    elif kind == "g":
        try:
            value = uuid.UUID(ident)
        except ValueError:
            raise ValueError(f"node id {text!r}: {ident!r} is not a GUID") from None
    elif kind == "b":
        try:
            value = base64.b64decode(ident, validate=True)
        except ValueError:
            raise ValueError(f"node id {text!r}: {ident!r} is not base64") from None
    else:
        value = ident
    return ParsedNodeId(ns=ns, nsu=nsu, kind=kind, identifier=value)
