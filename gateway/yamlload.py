"""Bounded YAML loading: the one place where a YAML file the gateway reads is parsed.

Every YAML input goes through :func:`load_yaml` (a file) or :func:`parse_yaml` (text): the
config (gateway.config.read_yaml, so also ``check``, ``run``, ``probe``, ``demo`` and a SIGHUP
reload), the device profiles it includes or names (gateway.device_profiles) and the HIL
scenarios (hil.scenario); the strapping-table CSV files a hazard unit names are read through
:func:`read_text` (size, UTF-8; gateway.hazard.volume). A hostile or broken file ends in one :class:`YamlError` whose str()
is ``FILE:LINE:COL: message``, in bounded time and memory; never a traceback, never code
execution (only the YAML core tags are accepted, so no ``!!python/...`` object is built).

The limits hold per file and are checked while ruamel.yaml composes the node graph, before
anything builds or walks the tree:

=====================  ======================================================================
MAX_FILE_BYTES         1 MiB, checked before parsing (the largest shipped file is 28 KB; ruamel
                       parses a dense MiB in about 6 s on a CI core)
MAX_NODES              200,000 nodes counted as a walk sees them, keys included, every alias
                       expanded (an alias costs the size of the node it names): an alias bomb
                       ("billion laughs") stops at the alias that crosses the budget
MAX_DEPTH              64 levels of nesting, aliases expanded
MAX_SCALAR_CHARS       64 KiB in one scalar (key or value)
self-reference         an alias inside the node its anchor names (``&a [*a]``): that node would
                       contain itself, which no walk can finish
duplicate anchors      an anchor name defined twice (YAML lets the later one win, silently)
tags                   only str, int, float, bool, null, map, seq, merge (``<<:``) and
                       timestamp; any other explicit tag (``!!python/...``, ``!local``) is refused
=====================  ======================================================================

A ruamel round-trip load shares the node of an anchor between its aliases (no copy), so the
danger is in the walks that come after it (profile expansion, conversion to plain dicts,
pydantic); the budget counts exactly what those walks would visit. Anchors, aliases and merge
keys (``x-`` anchors, ``<<: *defaults``) keep working inside the limits. A device profile is an
alias across files (each device copies its tags): that expansion has its own bound,
gateway.device_profiles.MAX_PROFILE_TAGS.
"""

from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.composer import Composer
from ruamel.yaml.constructor import RoundTripConstructor
from ruamel.yaml.error import MantissaNoDotYAML1_1Warning, MarkedYAMLError, YAMLError
from ruamel.yaml.events import AliasEvent
from ruamel.yaml.nodes import MappingNode, ScalarNode, SequenceNode
from ruamel.yaml.reader import ReaderError

from gateway.i18n import gettext as _

# ruamel warns (a multi-line text on stderr) about "1e3" in a %YAML 1.1 document; the value loads as a
# float either way, and a file's problems are one line each
warnings.filterwarnings("ignore", category=MantissaNoDotYAML1_1Warning)

MAX_FILE_BYTES = 1 << 20
MAX_NODES = 200_000
MAX_DEPTH = 64
MAX_SCALAR_CHARS = 1 << 16

_CORE = "tag:yaml.org,2002:"
#: the explicit tags a gateway file may carry (YAML core schema, merge keys and timestamps)
ALLOWED_TAGS = frozenset(_CORE + t for t in ("str", "int", "float", "bool", "null", "map", "seq", "merge",
                                             "timestamp"))


class YamlError(ValueError):
    """One problem that stops an input file from loading: ``file`` as shown, ``line`` and ``col``
    1-based (line 0: the file as a whole, e.g. missing or too big; col 0: no column), ``message``
    one line. str() is ``FILE:LINE:COL: message`` (``FILE: message`` for the file as a whole)."""

    def __init__(self, file: str, line: int, col: int, message: str):
        self.file, self.line, self.col, self.message = file, line, col, message
        where = f"{file}:{line}:{col}" if line and col else f"{file}:{line}" if line else file
        super().__init__(f"{where}: {message}")


class _Limit(Exception):
    """Raised inside the composer: (ruamel mark, message); load_yaml adds the file name."""

    def __init__(self, mark: Any, message: str):
        super().__init__(message)
        self.mark, self.message = mark, message


def _shown_tag(tag: Any) -> str:
    s = str(tag)
    return "!!" + s[len(_CORE):] if s.startswith(_CORE) else s


class _BoundedComposer(Composer):
    """ruamel's Composer, measuring each node as it is composed: (nodes under it with aliases
    expanded, height with aliases expanded). An alias adds the measure of its anchor's node in
    O(1), so an alias bomb is refused after a few hundred events, not after 10**9 copies."""

    def __init__(self, loader: Any = None) -> None:
        super().__init__(loader)
        self._measure: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded count, expanded height)
        self._total = 0

    def _spend(self, n: int, mark: Any, prefix: str = "") -> None:
        self._total += n
        if self._total > MAX_NODES:
            raise _Limit(mark, prefix + _("the file holds more than {max} nodes with aliases expanded (an alias "
                                          "bomb?); a gateway file needs far fewer").format(max=MAX_NODES))

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.parser.peek_event()
        if isinstance(event, AliasEvent):
            target = self.anchors.get(event.anchor)
            if target is not None:  # an undefined alias is ruamel's own (marked) error
                measure = self._measure.get(id(target))
                if measure is None:
                    raise _Limit(event.start_mark, _("alias *{name} is inside the node its anchor &{name} names: a "
                                                     "self-referencing alias (the node would contain itself)")
                                 .format(name=event.anchor))
                count, height = measure
                self._spend(count, event.start_mark, f"alias *{event.anchor}: ")  # the YAML syntax, not words
                if self.depth + height > MAX_DEPTH:
                    raise _Limit(event.start_mark, _("alias *{name}: nesting deeper than {max} levels with the "
                                                     "alias expanded").format(name=event.anchor, max=MAX_DEPTH))
            return super().compose_node(parent, index)
        anchor = getattr(event, "anchor", None)
        if anchor is not None and anchor in self.anchors:
            first = self.anchors[anchor].start_mark
            raise _Limit(event.start_mark, _("anchor &{name} is defined twice (first at line {line}): an alias "
                                             "would silently take the later one; give each anchor its own name")
                         .format(name=anchor, line=first.line + 1))
        tag = getattr(event, "ctag", None)
        if tag is not None and str(tag) != "!" and str(tag) not in ALLOWED_TAGS:
            raise _Limit(event.start_mark, _("tag {tag} is not allowed: a gateway file holds plain YAML only "
                                             "(mappings, lists, strings, numbers, true/false, null)")
                         .format(tag=_shown_tag(tag)))
        if self.depth + 1 > MAX_DEPTH:
            raise _Limit(event.start_mark, _("nesting deeper than {max} levels").format(max=MAX_DEPTH))
        before = self._total
        self._spend(1, event.start_mark)
        node = super().compose_node(parent, index)
        if isinstance(node, ScalarNode):
            height = 1
            if isinstance(node.value, str) and len(node.value) > MAX_SCALAR_CHARS:
                raise _Limit(node.start_mark, _("a scalar of {n} characters: more than the {max} allowed")
                             .format(n=len(node.value), max=MAX_SCALAR_CHARS))
        elif isinstance(node, SequenceNode):
            height = 1 + max((self._measure[id(c)][1] for c in node.value), default=0)
        elif isinstance(node, MappingNode):
            height = 1 + max((self._measure[id(c)][1] for kv in node.value for c in kv), default=0)
            for key, value in node.value:
                if str(key.tag) == _CORE + "merge" and not (isinstance(value, MappingNode) or (
                        isinstance(value, SequenceNode) and all(isinstance(v, MappingNode) for v in value.value))):
                    got = _("a scalar") if isinstance(value, ScalarNode) else _("a list holding other values")
                    raise _Limit(key.start_mark, _("a merge key (<<:) takes a mapping or a list of mappings "
                                                   "(<<: *defaults), not {got}").format(got=got))
        else:  # pragma: no cover - ruamel composes only these three
            height = 1
        self._measure[id(node)] = (self._total - before, height)
        return node


class _MarkedConstructor(RoundTripConstructor):
    """ruamel's round-trip constructor, but a value that cannot be built (``!!int zz``, ``!!timestamp
    2024-13-45``, an integer of more digits than Python converts) is reported at its own line and
    column, not at 1:1."""

    def construct_object(self, node: Any, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError, TypeError) as exc:
            value = node.value if isinstance(node.value, str) else type(node.value).__name__
            shown = value if len(value) <= 40 else value[:37] + "..."
            text = (str(exc).splitlines() or [type(exc).__name__])[0]
            if "digits" in text and "int" in text:   # Python's int/str conversion limit (CVE-2020-10735)
                text = _("an integer of {n} digits (at most 4300 are read)").format(n=len(value))
            raise _Limit(node.start_mark, _("cannot read the value {value}: {error}").format(value=repr(shown),
                                                                                            error=text)) from None


def _line_col(text: str, index: int) -> tuple[int, int]:
    """1-based (line, column) of character ``index`` of ``text``."""
    index = max(0, min(index, len(text)))
    line_start = text.rfind("\n", 0, index) + 1
    return text.count("\n", 0, index) + 1, index - line_start + 1


def read_text(path: str | os.PathLike[str], shown: str | None = None) -> str:
    """The text of an input file (YAML, or a CSV table the config names): UTF-8 (a leading UTF-8
    byte-order mark is kept; YAML skips it), at most MAX_FILE_BYTES, a regular file. Raises
    YamlError (line 0 for the file as a whole, the line and column of the first bad byte for text
    that is not UTF-8); never another exception."""
    p = Path(path)
    shown = str(path) if shown is None else shown
    try:
        st = os.stat(p)
        if not stat.S_ISREG(st.st_mode):
            raise YamlError(shown, 0, 0, _("not a regular file"))
        with open(p, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise YamlError(shown, 0, 0, _("no such file")) from None
    except OSError as exc:
        raise YamlError(shown, 0, 0, _("cannot read: {error}").format(error=exc.strerror or exc)) from None
    if len(data) > MAX_FILE_BYTES:
        raise YamlError(shown, 0, 0, _("larger than the {max} MiB limit of a gateway input file ({n} bytes)")
                        .format(max=MAX_FILE_BYTES >> 20, n=max(st.st_size, len(data))))
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise YamlError(shown, 1, 1, _("UTF-16 text (byte-order mark): save the file as UTF-8"))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        head = data[:exc.start]
        line = head.count(b"\n") + 1
        col = len(head[head.rfind(b"\n") + 1:].decode("utf-8", "replace")) + 1
        raise YamlError(shown, line, col, _("not UTF-8 text: byte 0x{byte} cannot be decoded (binary data? save "
                                            "the file as UTF-8)").format(byte=f"{data[exc.start]:02x}")) from None


def parse_yaml(text: str, shown: str) -> Any:
    """Parse YAML ``text`` into ruamel round-trip nodes (CommentedMap / CommentedSeq / scalars,
    with ``lc`` line marks) within the limits above. ``shown`` names the file in errors.

    Raises YamlError (FILE:LINE:COL) for a syntax error (message "YAML syntax error: ..."), a
    duplicate key, a character YAML does not allow, more than one document, and every limit;
    never another exception."""
    yaml = YAML(typ="rt")
    yaml.Composer = _BoundedComposer
    yaml.Constructor = _MarkedConstructor
    try:
        return yaml.load(text)
    except _Limit as exc:
        line, col = (exc.mark.line + 1, exc.mark.column + 1) if exc.mark is not None else (1, 1)
        raise YamlError(shown, line, col, exc.message) from None
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        what = str(exc.problem or exc.context or "invalid")
        if exc.context and exc.problem and exc.problem.startswith("but "):  # "expected ... but found ..."
            what = f"{exc.context} {exc.problem}"
        what = " ".join(what.split())
        raise YamlError(shown, line, col, _("YAML syntax error: {detail}").format(detail=what)) from None
    except ReaderError as exc:
        line, col = _line_col(text, exc.position) if isinstance(exc.position, int) else (1, 1)
        ch = exc.character if isinstance(exc.character, int) else 0
        raise YamlError(shown, line, col, _("character U+{code} is not allowed in YAML text (binary data?)")
                        .format(code=f"{ch:04X}")) from None
    except (YAMLError, RecursionError, MemoryError) as exc:
        raise YamlError(shown, 1, 1, _("YAML error: {detail}").format(
            detail=(str(exc).splitlines() or [type(exc).__name__])[0])) from None
    except Exception as exc:  # a ruamel internal error on odd input: still one line, not a traceback
        first = (str(exc).splitlines() or [""])[0]
        raise YamlError(shown, 1, 1, _("YAML error: {detail}").format(
            detail=f"{type(exc).__name__}: {first}".rstrip(": "))) from None


def load_yaml(path: str | os.PathLike[str], shown: str | None = None) -> tuple[Any, str]:
    """Read and parse one YAML file -> (root node, text): :func:`read_text` then :func:`parse_yaml`.
    Raises YamlError; never another exception."""
    shown = str(path) if shown is None else shown
    text = read_text(path, shown)
    return parse_yaml(text, shown), text
