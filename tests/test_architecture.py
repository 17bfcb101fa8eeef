"""The import contract of the code base (docs/design.md, "Dependency direction", "Two paths", "Layout").

Every module of gateway/, drivers/ and hil/ is parsed with ``ast`` (nothing is imported or run), and every import
it makes is collected, the ones inside functions too (``deferred``). The packages name the parts (gateway/safety,
gateway/record, gateway/chain, gateway/regulator, gateway/runtime, gateway/ops, gateway/hazard); the arrows that
must hold:

(a) drivers/ imports nothing from gateway/ except gateway.model;
(b) the safety path (gateway.safety, gateway.hazard) never imports the record path (gateway.record) nor the
    regulator side (gateway.regulator), not even inside a function;
(c) the regulator side imports only the chain (gateway.chain), what both ends of the wire share (SHARED: the
    model, the TLS helpers, the shipped version) and itself (besides the standard library and third-party packages);
(d) gateway/ and drivers/ never import hil/ at module level (the rigs are not part of the shipped daemon);
(e) there is no import cycle among modules at module level; a deferred import (inside a function) that would
    close a cycle if it were at module level is listed in DEFERRED_CYCLES;
(f) no module takes a private name of another one (``from X import _p``, ``X._p`` on an imported module).

Today's exceptions are on ALLOW (rule -> exact (importer, imported, why) entries; for rule f, imported is
"module.name"). An entry is one arrow to remove: the test fails on any violation that is not on the list, and on
any entry that no longer matches a violation (delete it then), so the list only shrinks. The checker is proven
on synthetic modules (tests at the end): a forbidden import written to tmp_path is reported.
"""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("gateway", "drivers", "hil")

#: The safety path (docs/design.md, "Safety path" and "Fail safe"): the tick, input validity, the alarm engine and
#: its gas set points, interlocks, outputs, annunciators, the PLC heartbeat, the persisted safety state; and the
#: hazard engine (GB 18218-2018, pure, in memory).
SAFETY_PATH = ("gateway.safety", "gateway.hazard")
#: The record path (docs/design.md, "Record path", "Record path supervision", "Clock"): store, batches, uplinks and
#: platform envelopes, report-by-exception, the clock-step watch, supervisor, journal, chain position.
RECORD_PATH = ("gateway.record",)
#: The regulator's side: the reference receiver and the offline verifier.
REGULATOR_SIDE = ("gateway.regulator",)
#: The chain both sides share: Ed25519 JWS signing and chain hash, and the signed batch rejection.
CHAIN = ("gateway.chain",)
MODEL = "gateway.model"
#: What the regulator side may take from the edge's tree besides the chain: the model, and the TLS helpers both
#: ends of the wire use (contexts, a self-signed certificate for a receiver or a test), and the shipped files and
#: version (a standard-library leaf: the receiver's build_info says which release runs).
SHARED = (MODEL, "gateway.tlsutil", "gateway.shipped")
#: The edge's other rooms: the runtime shell (build, the Gateway, reload, daemon, health) and operations for people.
EDGE_PACKAGES = ("gateway.runtime", "gateway.ops")
#: The top-level modules of gateway/: configuration (its YAML loader, schema, device profiles), the command line,
#: the shared leaves. A new module goes in a package above or on this list (test_every_gateway_module_is_placed).
TOP_LEVEL = frozenset({
    "gateway", "gateway.cli", "gateway.config", "gateway.device_profiles", "gateway.filemode", "gateway.i18n", "gateway.model",
    "gateway.profile_import", "gateway.schema", "gateway.shipped", "gateway.tlsutil", "gateway.yamlload",
})


def _within(module: str, packages: tuple[str, ...]) -> bool:
    return any(_in(module, p) for p in packages)


RULES = {
    "a": "drivers/ imports nothing from gateway/ except gateway.model",
    "b": "the safety path imports neither the record path nor the regulator side",
    "c": "the regulator side imports only the chain, the model and itself",
    "d": "gateway/ and drivers/ do not import hil/ at module level",
    "e": "no import cycle at module level",
    "f": "no private name of another module",
}

#: Exceptions to the rules, one exact arrow each: (importer, imported, why); none today. An entry is a debt: a later
#: step deletes it (the test fails on an entry that no longer matches).
ALLOW: dict[str, list[tuple[str, str, str]]] = {
    "a": [],
    "b": [],
    "c": [],
    "d": [],
    "e": [],
    "f": [],
}

#: Deferred imports (inside a function) that would close an import cycle at module level: (importer, imported, why).
DEFERRED_CYCLES: list[tuple[str, str, str]] = [
    ("gateway.config", "gateway.device_profiles",
     "device_profiles builds on config's models; config expands profiles while loading"),
    ("gateway.record.uplink", "gateway.record.envelopes",
     "profiles imports Ack from uplink; the HTTPS uplink takes JwsProfile as its default"),
]


# ---------------------------------------------------------------------------------------------- the checker

@dataclass(frozen=True)
class Import:
    importer: str
    imported: str            # a module of ours
    name: str | None         # the name taken from it (``from X import name``, ``X.name``); None: the module itself
    line: int
    deferred: bool           # inside a function: runs when called, not when the importer is imported


@dataclass(frozen=True)
class Violation:
    rule: str
    importer: str
    imported: str
    line: int

    def __str__(self) -> str:
        return f"({self.rule}) {self.importer} -> {self.imported} (line {self.line}): {RULES[self.rule]}"


def repo_modules(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the PACKAGES under root."""
    out: dict[str, Path] = {}
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _ours(module: str) -> bool:
    return module.split(".")[0] in PACKAGES


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _raw_imports(module: str, path: Path) -> list[tuple]:
    """The import statements of our packages in ``module`` (file ``path``), in source order, as
    ("import", name, asname, line, deferred), ("from", absolute base, name, asname, line, deferred) and the
    reads of a private attribute off a name, ("attr", root name, [attribute chain], private name, line, deferred)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: list[tuple] = []

    def absolute(node: ast.ImportFrom) -> str:
        if not node.level:
            return node.module or ""
        base = package.split(".")
        if node.level > 1:
            base = base[:-(node.level - 1)]
        return ".".join(base + ([node.module] if node.module else []))

    def visit(node: ast.AST, deferred: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = deferred or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                out.extend(("import", a.name, a.asname, child.lineno, inner) for a in child.names if _ours(a.name))
            elif isinstance(child, ast.ImportFrom):
                base = absolute(child)
                if _ours(base):
                    out.extend(("from", base, a.name, a.asname, child.lineno, inner) for a in child.names)
            elif isinstance(child, ast.Attribute) and _is_private(child.attr):
                chain, value = [], child.value
                while isinstance(value, ast.Attribute):
                    chain.append(value.attr)
                    value = value.value
                if isinstance(value, ast.Name):
                    out.append(("attr", value.id, list(reversed(chain)), child.attr, child.lineno, inner))
            visit(child, inner)

    visit(tree, False)
    return out


@functools.lru_cache(maxsize=None)
def _raw_cached(module: str, path: Path, mtime_ns: int) -> tuple[tuple, ...]:
    return tuple(_raw_imports(module, path))


def parse_imports(module: str, path: Path, known: set[str] | frozenset[str]) -> list[Import]:
    """The imports of our packages that ``module`` (file ``path``) makes, with the private attributes it reads off
    imported modules (as Import entries with ``name`` set). ``known``: every module name there is (``from package
    import module`` is an import of that module). A file is parsed once per version."""
    found: list[Import] = []
    bound: dict[str, str] = {}       # local name -> module it is bound to (for X._private)
    for event in _raw_cached(module, path, path.stat().st_mtime_ns):
        if event[0] == "import":
            _, name, asname, line, deferred = event
            found.append(Import(module, name, None, line, deferred))
            if asname:
                bound[asname] = name
            else:
                bound.setdefault(name.split(".")[0], name.split(".")[0])
        elif event[0] == "from":
            _, base, name, asname, line, deferred = event
            sub = f"{base}.{name}"
            if sub in known:                          # from package import module
                found.append(Import(module, sub, None, line, deferred))
                bound[asname or name] = sub
            else:
                found.append(Import(module, base, name, line, deferred))
        else:
            _, root, chain, attr, line, deferred = event
            if root in bound:
                target = ".".join([bound[root], *chain])
                if target in known:
                    found.append(Import(module, target, attr, line, deferred))
    return found


def scan(modules: dict[str, Path]) -> list[Import]:
    """Every import of every module."""
    known = frozenset(modules)
    return [imp for name, path in sorted(modules.items()) for imp in parse_imports(name, path, known)]


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (or a module importing itself), Tarjan."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in edges.get(v, ()):
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            strong(v)
    return out


def _reaches(edges: dict[str, set[str]], start: str, goal: str) -> bool:
    seen, todo = set(), [start]
    while todo:
        v = todo.pop()
        if v == goal:
            return True
        if v not in seen:
            seen.add(v)
            todo.extend(edges.get(v, ()))
    return False


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def violations(imports: list[Import]) -> list[Violation]:
    """Every arrow that breaks a rule, one per (rule, importer, imported), at its first line."""
    out: dict[tuple[str, str, str], Violation] = {}

    def add(rule: str, imp: Import, imported: str | None = None) -> None:
        key = (rule, imp.importer, imported or imp.imported)
        if key not in out or imp.line < out[key].line:
            out[key] = Violation(rule, imp.importer, imported or imp.imported, imp.line)

    module_level: dict[str, set[str]] = {}
    for imp in imports:
        src, dst = imp.importer, imp.imported
        if imp.name is not None and _is_private(imp.name) and dst != src:
            add("f", imp, f"{dst}.{imp.name}")
        if dst == src:
            continue
        if _in(src, "drivers") and _in(dst, "gateway") and dst != MODEL:
            add("a", imp)
        if _within(src, SAFETY_PATH) and _within(dst, RECORD_PATH + REGULATOR_SIDE):
            add("b", imp)
        if _within(src, REGULATOR_SIDE) and not (dst in SHARED or _within(dst, CHAIN + REGULATOR_SIDE)):
            add("c", imp)
        if (_in(src, "gateway") or _in(src, "drivers")) and _in(dst, "hil") and not imp.deferred:
            add("d", imp)
        if not imp.deferred:
            module_level.setdefault(src, set()).add(dst)
    for comp in _cycles(module_level):
        members = set(comp)
        for imp in imports:
            if not imp.deferred and imp.importer in members and imp.imported in members:
                add("e", imp)
    return sorted(out.values(), key=lambda v: (v.rule, v.importer, v.imported))


def deferred_cycle_closers(imports: list[Import]) -> list[tuple[str, str, int]]:
    """Deferred imports A -> B where B reaches A at module level: hoisted, they would make a cycle."""
    module_level: dict[str, set[str]] = {}
    for imp in imports:
        if not imp.deferred and imp.imported != imp.importer:
            module_level.setdefault(imp.importer, set()).add(imp.imported)
    out: dict[tuple[str, str], int] = {}
    for imp in imports:
        key = (imp.importer, imp.imported)
        if imp.deferred and imp.imported != imp.importer and imp.imported not in module_level.get(imp.importer, ()) \
                and _reaches(module_level, imp.imported, imp.importer):
            out[key] = min(out.get(key, imp.line), imp.line)
    return sorted((a, b, line) for (a, b), line in out.items())


def unexpected(found: list[Violation], allow: dict[str, list[tuple[str, str, str]]] = ALLOW) -> list[Violation]:
    allowed = {(rule, a, b) for rule, entries in allow.items() for a, b, _why in entries}
    return [v for v in found if (v.rule, v.importer, v.imported) not in allowed]


def stale(found: list[Violation], allow: dict[str, list[tuple[str, str, str]]] = ALLOW) -> list[tuple[str, str, str]]:
    seen = {(v.rule, v.importer, v.imported) for v in found}
    return [(rule, a, b) for rule, entries in allow.items() for a, b, _why in entries if (rule, a, b) not in seen]


@functools.lru_cache(maxsize=1)
def _repo() -> tuple[dict[str, Path], list[Import]]:
    mods = repo_modules()
    return mods, scan(mods)


# ---------------------------------------------------------------------------------------------- the contract

def test_the_packages_and_the_top_level_modules_exist():
    mods, _ = _repo()
    for pkg in SAFETY_PATH + RECORD_PATH + REGULATOR_SIDE + CHAIN + EDGE_PACKAGES:
        assert pkg in mods, f"{pkg} is not a package (renamed? moved?)"
    assert not sorted(TOP_LEVEL - set(mods)), "TOP_LEVEL names modules that do not exist (renamed? moved?)"
    assert not sorted(m for m in TOP_LEVEL if m.count(".") > 1), "TOP_LEVEL holds modules of gateway/ itself only"


def test_every_gateway_module_is_placed():
    """A new module of gateway/ goes in a package, or on TOP_LEVEL, so the rules know which side it is on."""
    mods, _ = _repo()
    rooms = SAFETY_PATH + RECORD_PATH + REGULATOR_SIDE + CHAIN + EDGE_PACKAGES
    missing = sorted(m for m in mods if _in(m, "gateway") and m not in TOP_LEVEL and not _within(m, rooms))
    assert not missing, f"put these modules in a package, or on TOP_LEVEL in {Path(__file__).name}: {missing}"


def test_the_chain_stands_alone():
    """What the regulator side may import must not bring the edge in with it: the chain imports only the model
    and itself."""
    _, imports = _repo()
    bad = sorted({(i.importer, i.imported) for i in imports
                  if _within(i.importer, CHAIN) and not (i.imported == MODEL or _within(i.imported, CHAIN))})
    assert not bad, bad
    model = sorted({i.imported for i in imports if i.importer == MODEL and i.imported != MODEL})
    assert not model, f"gateway.model is the leaf everything shares; it imports {model}"


@pytest.mark.parametrize("rule", sorted(RULES))
def test_import_contract(rule):
    _, imports = _repo()
    found = [v for v in violations(imports) if v.rule == rule]
    new = unexpected(found)
    assert not new, "forbidden import(s):\n" + "\n".join(map(str, new))
    old = [entry for entry in stale(found) if entry[0] == rule]
    assert not old, f"ALLOW[{rule!r}] entries that no longer match an import (delete them): {old}"


def test_allow_list_entries_are_exact_and_explained():
    mods, _ = _repo()
    assert set(ALLOW) == set(RULES)
    for rule, entries in ALLOW.items():
        pairs = [(a, b) for a, b, _ in entries]
        assert len(pairs) == len(set(pairs)), f"duplicate entry in ALLOW[{rule!r}]"
        for importer, imported, why in entries:
            assert importer in mods, importer
            target = imported.rpartition(".")[0] if rule == "f" else imported
            assert target in mods, f"ALLOW[{rule!r}]: {imported} is not a module (no patterns)"
            assert why.strip() and "\n" not in why


def test_deferred_imports_that_would_close_a_cycle_are_listed():
    _, imports = _repo()
    found = {(a, b): line for a, b, line in deferred_cycle_closers(imports)}
    listed = {(a, b) for a, b, _why in DEFERRED_CYCLES}
    assert not sorted(set(found) - listed), \
        f"new deferred import(s) that hide a cycle: {[(a, b, found[a, b]) for a, b in sorted(set(found) - listed)]}"
    assert not sorted(listed - set(found)), f"DEFERRED_CYCLES entries no longer needed: {sorted(listed - set(found))}"


def test_the_scan_sees_the_known_arrows():
    """The checker reads the real tree: the imports the design names are found, deferred ones as deferred."""
    _, imports = _repo()
    arrows = {(i.importer, i.imported, i.deferred) for i in imports if i.name is None or not _is_private(i.name)}
    assert ("drivers.modbus", "gateway.model", False) in arrows
    assert ("gateway.runtime.gateway", "gateway.safety.alarms", False) in arrows
    assert ("gateway.runtime.gateway", "gateway.record.uplink", True) in arrows          # built in a method
    assert ("gateway.cli", "gateway.runtime.daemon", True) in arrows              # the command line loads lazily
    # from gateway.hazard import substances: an import of the module, not of a name
    assert ("gateway.hazard.engine", "gateway.hazard.substances", False) in arrows


# ---------------------------------------------------------------------------------------------- the checker fails

def _with(tmp_path: Path, module: str, source: str, *, replace: bool = False) -> list[Violation]:
    """The violations of the real tree with ``module`` written to tmp_path: its real source with ``source``
    appended, or (replace=True, or a module that does not exist yet) ``source`` alone."""
    mods, _ = _repo()
    path = tmp_path / (module.replace(".", "/") + ".py")
    path.parent.mkdir(parents=True, exist_ok=True)
    real = "" if replace or module not in mods else mods[module].read_text(encoding="utf-8")
    path.write_text(real + "\n" + source)
    return unexpected(violations(scan({**mods, module: path})))


@pytest.mark.parametrize("module, source, rule, imported", [
    ("drivers.gpio", "from gateway.config import load_config\n", "a", "gateway.config"),
    ("drivers.modbus", "def f():\n    import gateway.record.store\n", "a", "gateway.record.store"),
    ("gateway.safety.interlocks", "def f():\n    from gateway.record.store import Store\n", "b", "gateway.record.store"),
    ("gateway.safety.alarms", "from ..record import uplink\n", "b", "gateway.record.uplink"),
    ("gateway.hazard.engine", "from ..record.supervisor import STORE\n", "b", "gateway.record.supervisor"),
    ("gateway.safety.outputs", "import gateway.regulator.receiver as rx\n", "b", "gateway.regulator.receiver"),
    ("gateway.safety.tick", "from gateway.regulator.verify import run_verify\n", "b", "gateway.regulator.verify"),
    ("gateway.regulator.receiver", "from gateway.ops.logutil import setup_logging\n", "c", "gateway.ops.logutil"),
    ("gateway.regulator.verify", "from gateway.record.uplink import Forwarder\n", "c", "gateway.record.uplink"),
    ("gateway.regulator.receiver", "def f():\n    from gateway.config import load_config\n", "c", "gateway.config"),
    ("gateway.regulator.receiver", "from drivers.codec import decode\n", "c", "drivers.codec"),
    ("drivers.opcua", "from hil.tank_plc import TankPlc\n", "d", "hil.tank_plc"),
    ("gateway.ops.probe", "import hil.farm\n", "d", "hil.farm"),
    ("gateway.model", "from gateway.safety.alarms import AlarmEngine\n", "e", "gateway.safety.alarms"),
    ("gateway.safety.outputs", "from gateway.safety.interlocks import _private_helper\n", "f", "gateway.safety.interlocks._private_helper"),
    ("gateway.ops.control", "import gateway.record.store as s\n\ndef f():\n    return s._SCHEMA\n", "f", "gateway.record.store._SCHEMA"),
    ("gateway.ops.metrics", "import drivers.codec\nX = drivers.codec._word_order\n", "f", "drivers.codec._word_order"),
])
def test_a_new_forbidden_import_is_reported(tmp_path, module, source, rule, imported):
    new = _with(tmp_path, module, source)
    assert (rule, module, imported) in [(v.rule, v.importer, v.imported) for v in new], new
    assert all(v.importer == module or v.rule == "e" for v in new), new   # nothing else, but the loop's other arrow


def test_a_cycle_reports_both_arrows_of_the_loop(tmp_path):
    new = _with(tmp_path, "gateway.model", "from gateway.safety.alarms import AlarmEngine\n")
    assert {(v.importer, v.imported) for v in new if v.rule == "e"} == \
        {("gateway.model", "gateway.safety.alarms"), ("gateway.safety.alarms", "gateway.model")}, new


def test_a_deferred_import_is_allowed_where_the_rule_is_about_module_level(tmp_path):
    assert _with(tmp_path, "drivers.opcua", "def f():\n    from hil.tank_plc import TankPlc\n") == []
    assert _with(tmp_path, "gateway.model", "def f():\n    from gateway.safety.alarms import AlarmEngine\n") == []
    mods, imports = _repo()
    path = tmp_path / "gateway" / "model.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(mods[MODEL].read_text(encoding="utf-8")
                    + "\ndef f():\n    from gateway.safety.alarms import AlarmEngine\n")
    closers = deferred_cycle_closers(scan({**mods, MODEL: path}))
    assert ("gateway.model", "gateway.safety.alarms") in {(a, b) for a, b, _ in closers}


def test_allowed_imports_stay_quiet(tmp_path):
    assert _with(tmp_path, "drivers.gpio", "from gateway.model import Reading\nfrom drivers.base import Device\n") == []
    assert _with(tmp_path, "gateway.regulator.verify", "from gateway.chain.signing import chain_hash\nimport json\nimport httpx\n") \
        == []
    # the record path may use the safety path's types; the rule is one way
    assert _with(tmp_path, "gateway.record.store", "from gateway.safety.interlocks import InterlockEngine\n") == []
    assert _with(tmp_path, "gateway.safety.alarms", "import os\nos._exit\n") == []                 # not one of our modules


def test_a_stale_allow_list_entry_is_reported():
    _, imports = _repo()
    found = violations(imports)
    assert stale(found, {"d": [("gateway.ops.demo", "hil.farm", "deferred there: not a violation")]}) == \
        [("d", "gateway.ops.demo", "hil.farm")]
    assert stale(found) == []
