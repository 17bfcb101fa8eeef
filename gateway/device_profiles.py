"""Device profiles: reusable Modbus register maps that devices reference by name or path.

A profile file (``config/profiles/*.yaml``)::

    profile:
      name: draeger_polytron8000             # how devices refer to it (profile: draeger_polytron8000)
      description: ...
      source: sources/draeger_polytron8000.csv   # where the map comes from (see sources/ATTRIBUTION.md)
      device_defaults: {baudrate: 9600}      # filled into a device that does not set them
      select: ["*"]                          # tags a device gets when it does not say (fnmatch patterns)
    include: [other_profile.yaml]            # optional: tags of other profile files come first
    tags:
      - {key: gas, address: 40507, type: float32, order: ABCD, assumed: true,
         note: "PDU 506 derived by 4xxxx-40001; verify"}

Each tag takes every key of a Modbus tag in the config (address, type, order, scale,
raw_range/eng_range, sentinels, unit, writable, alarms, ...) with ``key`` in place of
``name``, plus ``assumed`` (the address was derived, not stated by the source) and a
``note``. A device uses a profile with::

    - name: GD4
      protocol: modbus_rtu
      port: /dev/ttyUSB0
      unit_id: 4
      profile: draeger_polytron8000          # a name, or a path such as profiles/mine.yaml
      select: [gas]                          # optional: fnmatch patterns over the profile's keys
      tag_prefix: "GD4."                     # optional: default "<device name>."
      overrides:                             # optional: per-tag changes, by key
        gas: {unit: "%LEL", alarms: {gas: combustible}}

The selected profile tags are appended to the device's own ``tags:``, named
``tag_prefix + key``, with the override's keys replacing the profile's. Names are
looked up in the config's top-level ``include:`` (profile files or directories),
then ``<config dir>/profiles/``, then the profiles shipped in ``config/profiles/``.

Every error keeps the file it is in: a mistake inside a profile is reported as
``PROFILE_FILE:LINE:COL``, a bad override as ``CONFIG_FILE:LINE:COL`` (ruamel.yaml
marks, carried through :class:`SourceMap`). A used tag whose address is
``assumed`` gives a warning at the device's ``profile:`` key, so ``check`` lists
every address still to be verified on site.
"""

from __future__ import annotations

import copy
import fnmatch
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, model_validator
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from gateway.i18n import gettext as _
from gateway.shipped import shipped
from drivers.registry import PROTOCOLS
from gateway.config import NAME_RE, ConfigError, Problem, Strict, profile_tag_model, read_yaml, validation_problems

#: profiles shipped with the gateway (gateway.shipped: the source tree, or the wheel's data directory)
BUILTIN_DIR = shipped("config/profiles")

#: device keys a profile may preset (device_defaults); serial ones only reach modbus_rtu devices
DEVICE_DEFAULT_KEYS = {"baudrate", "parity", "stopbits", "bytesize", "unit_id", "poll_interval_ms", "timeout_ms",
                       "max_registers_per_read", "max_bits_per_read"}
SERIAL_KEYS = {"baudrate", "parity", "stopbits", "bytesize"}

#: tags all devices of one config may take from profiles: each device copies its profile's tags, so a
#: short config (10,000 one-line devices naming a 100-tag profile) would otherwise expand to millions of
#: tags (minutes and gigabytes of validation); a gateway polls far fewer
MAX_PROFILE_TAGS = 20_000
#: profile files one config reads, in all (bytes): each file is bounded by gateway.yamlload, and this bounds
#: an include: directory of many (a real site's profiles are tens of KiB)
MAX_PROFILE_BYTES = 2 << 20


# --- source map: where every key of the validation tree came from ----------------------------------

@dataclass(frozen=True)
class Pos:
    """Where one key (or list item) is: file as shown, 1-based line/col of the key, of the value when the
    value is a scalar (else None), and the key path inside that file."""

    file: str
    line: int
    col: int
    vline: int | None
    vcol: int | None
    path: str


class SourceMap:
    """Location tuple of the validation tree (('devices', 2, 'tags', 0, 'address')) -> :class:`Pos`.

    Built from ruamel.yaml round-trip nodes (their ``lc`` marks), so positions survive merging a
    profile file's nodes into the config's tree."""

    def __init__(self, main_file: str) -> None:
        self.main_file = main_file
        self.pos: dict[tuple, Pos] = {}
        # location -> the locations one level below it that lead to a recorded one: a subtree is then
        # found in its own size, not by a scan of every position (profile expansion copies one per tag)
        self._kids: dict[tuple, set[tuple]] = {}

    def _set(self, loc: tuple, pos: Pos) -> None:
        self.pos[loc] = pos
        for i in range(len(loc) - 1, -1, -1):
            kids = self._kids.setdefault(loc[:i], set())
            if loc[:i + 1] in kids:
                break
            kids.add(loc[:i + 1])

    def _under(self, loc: tuple) -> list[tuple]:
        """Every recorded location equal to or below ``loc``."""
        out, todo = [], [tuple(loc)]
        while todo:
            k = todo.pop()
            if k in self.pos:
                out.append(k)
            todo.extend(self._kids.get(k, ()))
        return out

    def index(self, node: Any, file: str, loc: tuple = (), path: str = "") -> None:
        """Record the position of every key and item under ``node`` (a ruamel CommentedMap/Seq)."""
        if isinstance(node, CommentedMap):
            for key in node:
                child = node[key]
                scalar = not isinstance(child, (CommentedMap, CommentedSeq))
                try:
                    kl, kc = node.lc.key(key)
                    vl, vc = node.lc.value(key) if scalar else (None, None)
                except KeyError:  # a key merged in by a YAML merge key (<<: *anchor): point at the mapping
                    kl, kc = node.lc.line, node.lc.col
                    vl, vc = (kl, kc) if scalar else (None, None)
                p = f"{path}.{key}" if path else str(key)
                self._set((*loc, str(key)), Pos(file, kl + 1, kc + 1, None if vl is None else vl + 1,
                                                None if vc is None else vc + 1, p))
                self.index(child, file, (*loc, str(key)), p)
        elif isinstance(node, CommentedSeq):
            for i, child in enumerate(node):
                ln, cl = node.lc.item(i)
                scalar = not isinstance(child, (CommentedMap, CommentedSeq))
                p = f"{path}[{i}]"
                self._set((*loc, i), Pos(file, ln + 1, cl + 1, ln + 1 if scalar else None,
                                         cl + 1 if scalar else None, p))
                self.index(child, file, (*loc, i), p)

    def copy(self, src: "SourceMap", src_loc: tuple, dst_loc: tuple) -> None:
        """Map ``dst_loc`` and everything under it to the positions of ``src_loc`` in ``src``."""
        n = len(src_loc)
        moved = [((*dst_loc, *k[n:]), src.pos[k]) for k in src._under(tuple(src_loc))]
        self.drop(dst_loc)
        for k, v in moved:
            self._set(k, v)

    def drop(self, loc: tuple) -> None:
        loc = tuple(loc)
        for k in self._under(loc):
            del self.pos[k]
        todo = [loc]
        while todo:  # forget the emptied branch, then its link from above
            todo.extend(self._kids.pop(todo.pop(), ()))
        if loc:
            self._kids.get(loc[:-1], set()).discard(loc)

    def alias(self, dst_loc: tuple, pos: Pos | None) -> None:
        if pos is not None:
            self._set(tuple(dst_loc), pos)

    def get(self, loc: tuple) -> Pos | None:
        return self.pos.get(tuple(loc))

    def locate(self, loc: tuple) -> tuple[str, int, int, str]:
        """(file, line, col, key path) of the deepest known prefix of ``loc`` (the key's position)."""
        loc = tuple(loc)
        for n in range(len(loc), 0, -1):
            p = self.pos.get(loc[:n])
            if p is not None:
                return p.file, p.line, p.col, p.path
        return self.main_file, 1, 1, ""

    def problem(self, loc: tuple, message: str, at_value: bool = False, warning: bool = False) -> Problem:
        """A Problem at ``loc``; at_value: point at the value when it is a scalar found at exactly loc."""
        file, line, col, path = self.locate(loc)
        if at_value:
            p = self.pos.get(tuple(loc))
            if p is not None and p.vline is not None:
                line, col = p.vline, p.vcol  # type: ignore[assignment]
        return Problem(file, line, col, path, message, warning)


# --- profile file models --------------------------------------------------------------------------

def _profile_protocols() -> list[str]:
    """The protocols whose devices take register-map profiles (drivers.registry.Protocol.profiles)."""
    return [name for name, p in PROTOCOLS.items() if p.profiles]


class ProfileHeader(Strict):
    """The ``profile:`` section of a profile file."""

    name: str = Field(pattern=NAME_RE, description="the name devices use (profile: NAME)")
    description: str | None = None
    manufacturer: str | None = None
    source: str | None = Field(None, description="the register map this profile was compiled from, and its citation")
    protocols: list[str] = Field(default_factory=lambda: _profile_protocols(),
                                 description="transports the device speaks (protocols that take profiles)")
    device_defaults: dict[str, Any] = Field(
        default_factory=dict, description=f"device keys filled in when the device does not set them: "
                                          f"{', '.join(sorted(DEVICE_DEFAULT_KEYS))}")
    select: list[str] = Field(default_factory=lambda: ["*"],
                              description="fnmatch patterns over tag keys a device gets when it has no select:")
    notes: str | None = None

    @model_validator(mode="after")
    def _protocols(self) -> "ProfileHeader":
        bad = [p for p in self.protocols if p not in _profile_protocols()]
        if bad:
            raise ValueError(f"protocols: {', '.join(bad)} cannot take a register-map profile "
                             f"(allowed: {', '.join(_profile_protocols())})")
        return self

    @model_validator(mode="after")
    def _defaults(self) -> "ProfileHeader":
        bad = sorted(set(self.device_defaults) - DEVICE_DEFAULT_KEYS)
        if bad:
            raise ValueError(f"device_defaults: {', '.join(bad)} cannot be preset by a profile "
                             f"(allowed: {', '.join(sorted(DEVICE_DEFAULT_KEYS))})")
        return self


class ProfileTag(profile_tag_model()):  # type: ignore[misc]
    """One register of a profile: a config Modbus tag with ``key`` instead of ``name``."""

    name: str = Field("", description="(not used in profiles: the device's tag_prefix + key names the tag)")
    key: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$", description="tag name suffix, unique in the profile")
    assumed: bool = Field(False, description="the address is derived (e.g. 4xxxx-40001), not stated by the source")
    note: str | None = Field(None, description="why it is assumed / what to verify")

    @model_validator(mode="before")
    @classmethod
    def _no_name(cls, data: Any) -> Any:
        if isinstance(data, dict) and "name" in data:
            raise ValueError("a profile tag has key:, not name: (the device's tag_prefix + key names the tag)")
        return data


class ProfileFile(Strict):
    """A whole profile file: header, optional includes, tags."""

    profile: ProfileHeader
    include: list[str] = Field(default_factory=list, description="profile files (relative to this one) whose "
                                                                 "tags come first")
    tags: list[ProfileTag] = Field(default_factory=list)


@dataclass
class ProfTag:
    key: str
    data: dict[str, Any]         # plain mapping as written (key/assumed/note removed)
    smap: SourceMap              # the source map of the file it is in
    loc: tuple                   # its location in that file: ('tags', k)
    assumed: bool
    note: str | None


@dataclass
class Profile:
    name: str
    path: Path
    shown: str
    header: dict[str, Any]
    smap: SourceMap
    tags: list[ProfTag] = field(default_factory=list)

    @property
    def select(self) -> list[str]:
        return list(self.header.get("select") or ["*"])


def _shown(p: Path) -> str:
    try:
        rel = os.path.relpath(p)
    except ValueError:
        return str(p)
    return str(p) if rel.startswith("..") else rel


def _plain(node: Any) -> Any:
    if isinstance(node, CommentedMap):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, CommentedSeq):
        return [_plain(v) for v in node]
    return node


class ProfileLibrary:
    """Loads profile files once per config load; collects their problems and the files read."""

    def __init__(self, base_dir: Path) -> None:
        self.base_dir = base_dir
        self.by_path: dict[Path, Profile | None] = {}
        self.by_name: dict[str, Profile] = {}
        self.problems: list[Problem] = []
        self.files: list[tuple[Path, str]] = []
        self._stack: list[Path] = []
        self.profile_tags = 0          # tags devices took from profiles so far (MAX_PROFILE_TAGS)
        self.bytes_read = 0            # of profile files so far (MAX_PROFILE_BYTES)
        self.too_many_tags = False     # MAX_PROFILE_TAGS was passed (reported once)

    # ---- files ----

    def load(self, path: Path, ref: Problem | None = None) -> Profile | None:
        """Load and validate one profile file (with its includes). None when it has errors (recorded).
        ``ref`` is the place that named the file, used when the file itself is missing."""
        path = path.resolve()
        if path in self._stack:
            cycle = " -> ".join(_shown(p) for p in [*self._stack[self._stack.index(path):], path])
            if ref is not None:
                self.problems.append(Problem(ref.file, ref.line, ref.col, ref.path, f"include cycle: {cycle}"))
            return None
        if path in self.by_path:
            return self.by_path[path]
        shown = _shown(path)
        if not path.is_file():
            if ref is not None:
                what = (_("profile file {file} is not a regular file") if path.exists()
                        else _("no such profile file {file}")).format(file=shown)
                self.problems.append(Problem(ref.file, ref.line, ref.col, ref.path, what))
            self.by_path[path] = None
            return None
        try:
            size = path.stat().st_size
        except OSError:
            size = 0   # read_yaml says why
        if self.bytes_read + size > MAX_PROFILE_BYTES:
            if ref is not None:
                self.problems.append(Problem(ref.file, ref.line, ref.col, ref.path,
                                             f"profile file {shown}: the profiles of this config would pass "
                                             f"{MAX_PROFILE_BYTES >> 10} KiB in all ({self.bytes_read + size} "
                                             "bytes); include only the profiles the devices use"))
            self.by_path[path] = None
            return None
        self.bytes_read += size
        self._stack.append(path)
        try:
            prof = self._load(path, shown)
        finally:
            self._stack.pop()
        self.by_path[path] = prof
        return prof

    def _load(self, path: Path, shown: str) -> Profile | None:
        try:
            root, text = read_yaml(path, shown)
        except ConfigError as exc:
            self.problems.extend(exc.problems)
            return None
        self.files.append((path, text))
        if not isinstance(root, CommentedMap):
            self.problems.append(Problem(shown, 1, 1, "", "a profile file is a mapping (profile:, tags:)"))
            return None
        smap = SourceMap(shown)
        smap.index(root, shown)
        for k in range(len(root.get("tags") or [])):  # 'name' errors of a profile tag point at its key
            smap.alias(("tags", k, "name"), smap.get(("tags", k, "key")))
        plain = _plain(root)
        try:
            ProfileFile.model_validate(plain)
        except ValidationError as exc:
            self.problems.extend(validation_problems(exc, smap))
            return None
        prof = Profile(name=plain["profile"]["name"], path=path, shown=shown, header=plain["profile"], smap=smap)
        for ii, inc in enumerate(plain.get("include") or []):
            sub = self.load(path.parent / Path(inc).expanduser(), smap.problem(("include", ii), "", at_value=True))
            if sub is None:
                return None
            prof.tags.extend(sub.tags)
        seen = {t.key: t for t in prof.tags}
        ok = True
        for k, t in enumerate(plain.get("tags") or []):
            key = t["key"]
            if key in seen:
                other = seen[key]
                ofile, oline, _col, _path = other.smap.locate((*other.loc, "key"))
                self.problems.append(smap.problem(("tags", k, "key"), f"key '{key}' is already defined at "
                                                  f"{ofile}:{oline}", at_value=True))
                ok = False
                continue
            data = {f: v for f, v in t.items() if f not in ("key", "assumed", "note")}
            seen[key] = ProfTag(key, data, smap, ("tags", k), bool(t.get("assumed", False)), t.get("note"))
            prof.tags.append(seen[key])
        return prof if ok else None

    def include(self, ref: str, where: Problem) -> None:
        """A config-level ``include:`` entry: a profile file or a directory of them."""
        p = Path(ref).expanduser()
        p = p if p.is_absolute() else self.base_dir / p
        files = sorted(p.glob("*.yaml")) if p.is_dir() else [p]
        for f in files:
            prof = self.load(f, where)
            if prof is None:
                continue
            other = self.by_name.get(prof.name)
            if other is not None and other.path != prof.path:
                self.problems.append(Problem(where.file, where.line, where.col, where.path,
                                             f"profile name '{prof.name}' of {prof.shown} is also the name of "
                                             f"{other.shown}"))
                continue
            self.by_name[prof.name] = prof

    def resolve(self, ref: str, where: Problem) -> Profile | None:
        """A device's ``profile:`` value -> Profile (None: a problem was recorded)."""
        if "/" in ref or ref.endswith((".yaml", ".yml")):
            p = Path(ref).expanduser()
            return self.load(p if p.is_absolute() else self.base_dir / p, where)
        if ref in self.by_name:
            return self.by_name[ref]
        for d in (self.base_dir / "profiles", BUILTIN_DIR):
            f = d / f"{ref}.yaml"
            if f.is_file():
                prof = self.load(f, where)
                if prof is not None and prof.name != ref:
                    self.problems.append(Problem(prof.shown, *prof.smap.locate(("profile", "name"))[1:3],
                                                 "profile.name", f"file {f.name} names profile '{prof.name}'; "
                                                 f"devices refer to it as '{ref}' (make them the same)"))
                    return None
                return prof
        known = sorted({*self.by_name, *(f.stem for d in (self.base_dir / "profiles", BUILTIN_DIR)
                                         if d.is_dir() for f in d.glob("*.yaml"))})
        self.problems.append(Problem(where.file, where.line, where.col, where.path,
                                     _("unknown profile '{name}' (known: {known}; or give a path such as "
                                       "profiles/mine.yaml)").format(name=ref, known=", ".join(known) or "-")))
        return None


def builtin_profiles() -> list[Path]:
    """The profile files shipped in config/profiles/."""
    return sorted(BUILTIN_DIR.glob("*.yaml")) if BUILTIN_DIR.is_dir() else []


def load_profile(path: str | Path) -> Profile:
    """Load one profile file on its own. Raises ConfigError (FILE:LINE:COL) when it has errors."""
    lib = ProfileLibrary(Path(path).resolve().parent)
    prof = lib.load(Path(path), Problem(str(path), 1, 1, "", ""))
    if prof is None or lib.problems:
        raise ConfigError(lib.problems or [Problem(str(path), 1, 1, "", "cannot load profile")])
    return prof


# --- expanding a config ---------------------------------------------------------------------------

@dataclass
class Expanded:
    """The config tree ready for validation, where each part came from, and what loading found."""

    tree: dict[str, Any]
    smap: SourceMap
    problems: list[Problem]
    warnings: list[Problem]
    files: list[tuple[Path, str]]
    failed_devices: set[int]


def expand(root: CommentedMap, shown: str, cfg_path: Path) -> Expanded:
    """Index the config's marks, load the included / referenced profiles, and append each device's
    profile tags (with overrides) to its ``tags``. Problems are collected, never raised."""
    smap = SourceMap(shown)
    smap.index(root, shown)
    tree = _plain(root)
    lib = ProfileLibrary(cfg_path.resolve().parent)
    warnings: list[Problem] = []
    failed: set[int] = set()
    inc = tree.get("include")
    if isinstance(inc, list):
        for ii, ref in enumerate(inc):
            if isinstance(ref, str):
                lib.include(ref, smap.problem(("include", ii), "", at_value=True))
    devices = tree.get("devices")
    if isinstance(devices, list):
        for di, dev in enumerate(devices):
            if isinstance(dev, dict) and isinstance(dev.get("profile"), str):
                if not _apply_profile(di, dev, lib, smap, warnings):
                    failed.add(di)
    return Expanded(tree, smap, lib.problems, warnings, lib.files, failed)


def _apply_profile(di: int, dev: dict[str, Any], lib: ProfileLibrary, smap: SourceMap,
                   warnings: list[Problem]) -> bool:
    base = ("devices", di)
    ref_at = smap.problem((*base, "profile"), "", at_value=True)
    proto = PROTOCOLS.get(str(dev.get("protocol")))
    if proto is not None and not proto.profiles:   # drivers.registry: which protocols take register maps
        lib.problems.append(Problem(ref_at.file, ref_at.line, ref_at.col, ref_at.path,
                                    f"a profile is a Modbus register map; {proto.name} devices list their "
                                    "points under tags:"))
        return False
    prof = lib.resolve(dev["profile"], ref_at)
    if prof is None:
        return False
    ok = True
    # device defaults (the device's own keys win)
    for k, v in prof.header.get("device_defaults", {}).items():
        if k in SERIAL_KEYS and dev.get("protocol") != "modbus_rtu":
            continue
        if k not in dev:
            dev[k] = copy.deepcopy(v)
            smap.copy(prof.smap, ("profile", "device_defaults", k), (*base, k))
    # selection
    patterns = dev.get("select")
    if isinstance(patterns, list) and all(isinstance(p, str) for p in patterns):
        for pi, pat in enumerate(patterns):
            if not any(fnmatch.fnmatchcase(t.key, pat) for t in prof.tags):
                lib.problems.append(smap.problem((*base, "select", pi), _(
                    "'{pattern}' matches no tag of profile '{profile}' (keys: {keys})").format(
                    pattern=pat, profile=prof.name, keys=_keys(prof)), at_value=True))
                ok = False
    else:
        patterns = prof.select
    selected = [t for t in prof.tags if any(fnmatch.fnmatchcase(t.key, p) for p in patterns)]
    prefix = dev.get("tag_prefix", f"{dev.get('name', '')}.")
    overrides = dev.get("overrides")
    if overrides is not None and not isinstance(overrides, dict):
        return ok  # the model reports the type
    overrides = overrides or {}
    chosen = {t.key for t in selected}
    for key in overrides:
        if key not in chosen:
            why = (_("tag '{key}' of profile '{profile}' is not selected (select: {select})").format(
                       key=key, profile=prof.name, select=", ".join(patterns))
                   if any(t.key == key for t in prof.tags)
                   else _("profile '{profile}' has no tag '{key}' (keys: {keys})").format(
                       profile=prof.name, key=key, keys=_keys(prof)))
            lib.problems.append(smap.problem((*base, "overrides", key), why))
            ok = False
    tags = dev.setdefault("tags", [])
    if not isinstance(tags, list) or not isinstance(prefix, str):
        return ok
    if lib.too_many_tags or lib.profile_tags + len(selected) > MAX_PROFILE_TAGS:
        if not lib.too_many_tags:  # once, at the first device past the limit (the others fail quietly)
            lib.problems.append(smap.problem((*base, "profile"), f"devices take more than {MAX_PROFILE_TAGS} "
                                             f"tags from profiles in all (this one adds {len(selected)} from "
                                             f"'{prof.name}' to {lib.profile_tags}): more than one gateway polls; "
                                             "split the site over several gateways, or select: fewer tags",
                                             at_value=True))
            lib.too_many_tags = True
        return False
    lib.profile_tags += len(selected)
    name_pos = smap.get((*base, "tag_prefix")) or smap.get((*base, "profile"))
    for t in selected:
        j = len(tags)
        dst = (*base, "tags", j)
        merged = copy.deepcopy(t.data)
        smap.copy(t.smap, t.loc, dst)
        smap.alias((*dst, "name"), name_pos)
        merged["name"] = prefix + t.key
        ov = overrides.get(t.key)
        if isinstance(ov, dict):
            for f, v in ov.items():
                merged[f] = copy.deepcopy(v)
                smap.copy(smap, (*base, "overrides", t.key, f), (*dst, f))
        tags.append(merged)
        if t.assumed and not (isinstance(ov, dict) and "address" in ov):
            pfile, pline, _col, _path = t.smap.locate((*t.loc, "address"))
            why = f": {t.note}" if t.note else ": not stated by the source; verify it on the device"
            warnings.append(smap.problem((*base, "profile"), f"tag '{merged['name']}' uses assumed address "
                                         f"{t.data.get('address')!r} ({pfile}:{pline}){why}", warning=True))
    return ok


def _keys(prof: Profile, limit: int = 12) -> str:
    keys = [t.key for t in prof.tags]
    return ", ".join(keys[:limit]) + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")
