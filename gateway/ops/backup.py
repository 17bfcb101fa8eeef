"""`hazard-gateway backup` / `restore`: carry one gateway's chain onto a replaced industrial PC without a gap.

The receiver accepts batch ``seq`` only as ``last + 1`` with ``prev`` = the chain hash of the batch before, signed
by the key it has bound to the gateway (gateway.regulator.receiver: another seq is 409, another key without a
signed announcement 401). A new PC therefore needs three things of the old one: the private signing key, the
chain position (``<store>.chain.json``, gateway.record.chain_position: last seq, its hash, the unacknowledged
JWS) and the config; plus the persisted safety state (``state_dir/safety-state.json``: trips, bypasses and
latches survive the move as they survive a restart) and, optionally, the store itself.

Archive (``.tar.gz``, written with mode 0600 because it holds the PRIVATE signing key)::

    manifest.json                  shape below; written first
    config/<config file name>      the config file, verbatim
    config/<relative path>         every file the config names that lies under the config's directory
    external/<absolute path>       every file it names elsewhere (e.g. a CA file in /usr/local/share)
    state/safety-state.json        when present
    store/<store name>.chain.json  the chain position, when present
    store/<store name>.journal     the uncommitted-records journal, when present
    store/<store name>             with --with-store: a consistent snapshot (sqlite3 backup API)

The files the config names: keys.private_key and the public ``<kid>.jwk`` keygen wrote beside it, uplink.ca_file,
client_cert, client_key, receiver_key, an OPC UA device's security cert / key / server_cert (a file or a
directory) / password_file, and the device profile files read (include:, profile: paths, nested includes; not
the shipped ones).

manifest.json (JSON object)::

    {"format": 1, "created_at": RFC 3339 UTC, "live": bool (taken while the daemon ran, --live),
     "versions": {"hazard_gateway": str, "python": str, "sqlite": str, "chain_position": int,
                  "safety_state": int},
     "gateway_id": str, "kid": str (the signing key's RFC 7638 thumbprint),
     "config": {"file": member name, "dir": old config directory, "state_dir": old state_dir (absolute),
                "store": old store path (absolute)},
     "chain": {"seq": int, "hash": str | null, "acked_seq": int, "acked_hash": str | null,
               "store_seq": int | null (the snapshot's newest seq; null without --with-store)},
     "with_store": bool, "private_key": member name,
     "rewrite": [{"loc": [key, index, ...], "value": str (as written in the config), "member": member name
                  or prefix (a directory)}, ...]   the config paths restore may relocate,
     "members": [{"name": str, "kind": "config" | "secret" | "public" | "profile" | "record" | "store",
                  "sha256": hex, "size": int, "source": absolute path on the old PC}, ...]}

Order of a backup (why the chain stays contiguous): the store commits a new batch to SQLite FIRST and writes the
chain position file after the commit (gateway.record.store.Store.new_batch), so the file never names a batch the
database lacks. The backup reads the chain position file first and takes the database snapshot after it: the
snapshot then holds at least every batch the copied position names (the daemon may have added more meanwhile,
with --live), and at the first start on the new PC the store opens a database at or ahead of the position and
carries on from the database (no ``store_behind_chain`` seeding). The other order could pair an older snapshot
with a newer position: the store would then seed from the position while the snapshot still held, unbatched,
readings the newer batch had already carried, and send them twice. Without --with-store the new PC starts from
the chain position alone: its store is missing, so it is seeded from the position (``store_missing``): next seq
= last + 1, prev = the last hash, unacknowledged batches are sent again byte-identical, and what the old store
had not yet put into a batch is one signed gap row.

The old PC must stop uploading before the final backup: a batch it uploads after the backup takes the seq the
new PC will make next, and the receiver answers the new PC 409 (conflict). So ``backup`` asks the daemon's
control socket first and refuses while it answers (stop it: ``systemctl stop hazard-gateway``), unless --live
is given (a routine backup of a running gateway: consistent, but only the last backup after the stop may be
restored on a PC that uploads).

Restore verifies the archive before it writes anything: only regular-file members with relative names free of
``..`` (tarfile's ``data`` extraction filter as well), exactly the members the manifest lists, each with its
sha256. It refuses, unless --force, when any file it would write exists already (a chain position or a store on
the target is another chain, or this one already carried on); with --force every replaced file, and a store's
``-wal`` / ``-shm``, is first set aside as ``<name>.replaced-<UTC stamp>``. Files land under the config
directory (--config-dir, default the old one: config/... at their relative paths, external/... under
``files/``) and the state directory (--state-dir; default the old one, or the config's relative state_dir under
the new config directory); the config's paths are rewritten where a location changed, through the ruamel
round trip (comments kept; the file is copied verbatim when nothing moved). Modes: secrets 0600, records and the
config 0640, public files and profiles 0644; new directories 0750 (0700 for a secret's). Run as root, a file
takes the owner and group of the directory it is written into (install-service's /etc/hazard-gateway/keys
makes the key the service user's). At the end the restored config is checked as ``hazard-gateway check`` does.

Errors: :class:`BackupError` (a ValueError), one line; the command line prints it and exits 2.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
import shutil
import sqlite3
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.filemode import fsync_dir
from gateway.i18n import gettext as _

FORMAT = 1
MANIFEST = "manifest.json"
#: a manifest larger than this is not one
MANIFEST_MAX = 4 * 1024 * 1024
#: file modes on restore (and in the archive) per member kind
MODES = {"config": 0o640, "secret": 0o600, "public": 0o644, "profile": 0o644, "record": 0o640, "store": 0o640}
TOPS = ("config", "external", "state", "store")


class BackupError(ValueError):
    """A backup or restore that cannot be done; str() is one line (the command line exits 2)."""


@dataclass
class _Member:
    name: str
    kind: str
    source: Path
    data: bytes | None = None          # None: read from ``path`` (the store snapshot)
    path: Path | None = None


@dataclass
class _Plan:
    members: list[_Member] = field(default_factory=list)
    rewrite: list[dict[str, Any]] = field(default_factory=list)
    kid: str = ""                # the signing key's kid
    key_member: str = ""         # the member holding the private key


def _norm(p: Path) -> Path:
    return Path(os.path.normpath(os.path.abspath(p)))


def _under(p: Path, d: Path) -> bool:
    try:
        p.relative_to(d)
        return True
    except ValueError:
        return False


def _member_name(p: Path, config_dir: Path) -> str:
    """config/<path relative to the config dir> or external/<absolute path without its leading />."""
    p = _norm(p)
    if _under(p, config_dir):
        return posixpath.join("config", p.relative_to(config_dir).as_posix())
    return posixpath.join("external", p.as_posix().lstrip("/"))


def _read(p: Path, what: str) -> bytes:
    try:
        return p.read_bytes()
    except OSError as exc:
        raise BackupError(_("cannot read {what} {path}: {error}").format(what=what, path=p,
                                                                          error=exc.strerror or exc)) from None


def daemon_running(cfg: Any) -> str | None:
    """None when no daemon answers on the config's control socket; else one line saying it does (or that it
    cannot be told: the socket refuses us)."""
    from gateway.ops.control import ControlError, request, socket_path

    path = socket_path(cfg)
    try:
        request(path, {"action": "status"}, timeout_s=3.0)
    except ControlError as exc:
        if exc.exit_code == 2:
            return None
        return _("cannot tell whether the gateway runs ({error})").format(error=exc)
    return _("the gateway is running (its control socket {path} answers)").format(path=path)


def _plan(cfg: Any) -> _Plan:
    """The config file, the files it names and the rewrite entries (no state yet). Raises BackupError."""
    from gateway.chain.signing import Signer
    from gateway.config import public_file_locations, secret_locations
    from gateway.device_profiles import BUILTIN_DIR

    cdir = _norm(cfg.base_dir)
    plan = _Plan()
    seen: set[str] = set()

    def add(p: Path, kind: str, what: str) -> str:
        name = _member_name(p, cdir)
        if name not in seen:
            seen.add(name)
            plan.members.append(_Member(name, kind, _norm(p), _read(p, what)))
        return name

    add(cfg.path, "config", _("config"))
    for kind, locs in (("secret", secret_locations(cfg)), ("public", public_file_locations(cfg))):
        for loc, value in locs:
            p = _norm(cfg.resolve(value))
            what = ".".join(map(str, loc))
            if p.is_dir():  # an OPC UA server_cert directory of trusted certificates
                for f in sorted(q for q in p.iterdir() if q.is_file()):
                    add(f, kind, what)
                member = _member_name(p, cdir)
            else:
                member = add(p, kind, what)
            plan.rewrite.append({"loc": list(loc), "value": value, "member": member})
    key = _norm(cfg.resolve(cfg.model.keys.private_key))
    try:
        kid = Signer.from_file(key).kid
    except ValueError as exc:   # KeyFileError: one line naming the file
        raise BackupError(_("signing key: {error}").format(error=exc)) from None
    jwk = key.parent / f"{kid}.jwk"
    if jwk.is_file():
        add(jwk, "public", _("public key"))
    builtin = _norm(BUILTIN_DIR)
    for p, _text in cfg.extra_files or ():
        if not _under(_norm(p), builtin):
            add(Path(p), "profile", _("profile"))
    for i, inc in enumerate(cfg.model.include):
        plan.rewrite.append({"loc": ["include", i], "value": inc, "member": _member_name(cfg.resolve(inc), cdir)})
    for i, d in enumerate(cfg.model.devices):
        ref = getattr(d, "profile", None)
        if ref and ("/" in ref or ref.endswith((".yaml", ".yml"))):
            plan.rewrite.append({"loc": ["devices", i, "profile"], "value": ref,
                                 "member": _member_name(cfg.resolve(ref), cdir)})
    plan.kid, plan.key_member = kid, _member_name(key, cdir)
    return plan


def _snapshot(db: Path, out: Path) -> int:
    """Copy the SQLite database ``db`` to ``out`` consistently with the online backup API (SQLite docs "Online
    Backup API"; one step: one read transaction, which in WAL mode never blocks the daemon's writer). Returns the
    snapshot's newest chain seq (a batch or an anchor; 0: none). Raises BackupError."""
    try:
        src = sqlite3.connect(db, timeout=30)
        try:
            src.execute("PRAGMA busy_timeout=30000")
            dst = sqlite3.connect(out)
            try:
                src.backup(dst)
                row = dst.execute("SELECT max(s) FROM (SELECT max(seq) AS s FROM batches"
                                  " UNION ALL SELECT max(seq) FROM chain_anchor)").fetchone()
            finally:
                dst.close()
        finally:
            src.close()
    except sqlite3.Error as exc:
        raise BackupError(_("store {path}: cannot take a snapshot: {error}").format(path=db, error=exc)) from None
    return int(row[0] or 0) if row else 0


def backup(config: str | os.PathLike[str], out: str | os.PathLike[str], *, with_store: bool = False,
           live: bool = False) -> dict[str, Any]:
    """Write the backup archive ``out`` (.tar.gz, mode 0600) of the gateway configured by ``config``.

    Returns the manifest (shape in the module docstring) plus "archive": str path. Raises BackupError (one line)
    when the daemon answers on its control socket and ``live`` is False, when ``out`` exists, when a file the
    config names cannot be read, when the chain position file is unusable or the store snapshot fails; a
    ConfigError from gateway.config.load_config for a config that does not load."""
    from gateway.config import load_config
    from gateway.model import rfc3339
    from gateway.record.chain_position import VERSION as CHAIN_VERSION
    from gateway.record.chain_position import ChainPosition, ChainPositionError, position_path
    from gateway.safety.safety_state import FILE_NAME as SAFETY_FILE
    from gateway.safety.safety_state import FORMAT as SAFETY_FORMAT
    from gateway.shipped import version

    cfg = load_config(config)
    out = Path(out)
    if out.exists():
        raise BackupError(_("{path} exists; remove it or choose another name").format(path=out))
    if not live:
        running = daemon_running(cfg)
        if running:
            raise BackupError(_("{running}: stop it first (systemctl stop hazard-gateway), so that this PC "
                                "uploads nothing after the backup; --live backs up a running gateway (a routine "
                                "backup: not for a PC replacement)").format(running=running))
    plan = _plan(cfg)
    store = _norm(cfg.store_path)
    chain = {"seq": 0, "hash": None, "acked_seq": 0, "acked_hash": None, "store_seq": None}
    with tempfile.TemporaryDirectory(prefix="hazard-gateway-backup-") as tmp:
        # 1. the chain position FIRST (module docstring: the snapshot taken after it is never behind it)
        cp = position_path(store)
        if cp.exists():
            data = _read(cp, _("chain position"))
            copy = Path(tmp) / cp.name
            copy.write_bytes(data)
            pos = ChainPosition(copy)
            try:
                pos.load()
            except ChainPositionError as exc:
                raise BackupError(str(exc).replace(str(copy), str(cp))) from None
            chain.update(seq=pos.seq, hash=pos.hash, acked_seq=pos.acked_seq, acked_hash=pos.acked_hash)
            plan.members.append(_Member(f"store/{cp.name}", "record", cp, data))
        journal = store.with_name(store.name + ".journal")
        if journal.exists():
            plan.members.append(_Member(f"store/{journal.name}", "record", journal, _read(journal, _("journal"))))
        safety = _norm(cfg.state_dir) / SAFETY_FILE
        if safety.exists():
            plan.members.append(_Member(f"state/{SAFETY_FILE}", "record", safety, _read(safety, _("safety state"))))
        # 2. then the store snapshot
        if with_store:
            if not store.exists():
                raise BackupError(_("--with-store: there is no store at {path}").format(path=store))
            snap = Path(tmp) / store.name
            chain["store_seq"] = _snapshot(store, snap)
            plan.members.append(_Member(f"store/{store.name}", "store", store, None, snap))
        members = []
        for m in plan.members:
            h = hashlib.sha256()
            size = 0
            if m.data is not None:
                h.update(m.data)
                size = len(m.data)
            else:
                with open(m.path, "rb") as f:  # type: ignore[arg-type]
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
                        size += len(chunk)
            members.append({"name": m.name, "kind": m.kind, "sha256": h.hexdigest(), "size": size,
                            "source": str(m.source)})
        manifest = {
            "format": FORMAT, "created_at": rfc3339(time.time()), "live": bool(live),
            "versions": {"hazard_gateway": version(), "python": sys.version.split()[0],
                         "sqlite": sqlite3.sqlite_version, "chain_position": CHAIN_VERSION,
                         "safety_state": SAFETY_FORMAT},
            "gateway_id": cfg.model.gateway.id, "kid": plan.kid,
            "config": {"file": plan.members[0].name, "dir": str(_norm(cfg.base_dir)),
                       "state_dir": str(_norm(cfg.state_dir)), "store": str(store)},
            "chain": chain, "with_store": bool(with_store),
            "private_key": plan.key_member,
            "rewrite": plan.rewrite, "members": members}
        _write_archive(out, manifest, plan.members)
    manifest["archive"] = str(out)
    return manifest


def _write_archive(out: Path, manifest: dict[str, Any], members: list[_Member]) -> None:
    """tar.gz at ``out``: created 0600 (O_EXCL, fchmod whatever the umask) under a temporary name, fsynced,
    renamed into place. Raises BackupError."""
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    now = time.time()

    def info(name: str, size: int, mode: int) -> tarfile.TarInfo:
        ti = tarfile.TarInfo(name)
        ti.size, ti.mode, ti.mtime, ti.type = size, mode, int(now), tarfile.REGTYPE
        ti.uid = ti.gid = 0
        ti.uname = ti.gname = ""
        return ti

    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise BackupError(_("cannot create {path}: {error}").format(path=out, error=exc.strerror or exc)) from None
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as raw:
            with tarfile.open(fileobj=raw, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
                body = json.dumps(manifest, indent=1, sort_keys=True).encode() + b"\n"
                tar.addfile(info(MANIFEST, len(body), 0o600), io.BytesIO(body))
                for m in members:
                    mode = MODES[m.kind]
                    if m.data is not None:
                        tar.addfile(info(m.name, len(m.data), mode), io.BytesIO(m.data))
                    else:
                        with open(m.path, "rb") as f:  # type: ignore[arg-type]
                            tar.addfile(info(m.name, os.fstat(f.fileno()).st_size, mode), f)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise BackupError(_("cannot write {path}: {error}").format(path=out, error=exc.strerror or exc)) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# ------------------------------------------------------------------------------------------------ restore

def _safe_name(name: str) -> bool:
    """A member name restore accepts: relative, POSIX, no '..' or empty part, under one of TOPS (or the
    manifest)."""
    if not isinstance(name, str) or not name or name.startswith("/") or "\\" in name or "\0" in name:
        return False
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return False
    return name == MANIFEST or (parts[0] in TOPS and len(parts) >= 2)


def _load_manifest(tar: tarfile.TarFile, archive: Path) -> dict[str, Any]:
    try:
        ti = tar.getmember(MANIFEST)
    except KeyError:
        raise BackupError(_("{archive}: no manifest.json (not a hazard-gateway backup)").format(archive=archive)) from None
    if not ti.isreg() or ti.size > MANIFEST_MAX:
        raise BackupError(_("{archive}: manifest.json is not a regular file of at most 4 MiB").format(archive=archive))
    f = tar.extractfile(ti)
    assert f is not None
    try:
        doc = json.loads(f.read())
    except ValueError as exc:
        raise BackupError(_("{archive}: manifest.json is not JSON ({error})").format(archive=archive, error=exc)) from None
    ok = (isinstance(doc, dict) and doc.get("format") == FORMAT and isinstance(doc.get("members"), list)
          and isinstance(doc.get("config"), dict) and isinstance(doc.get("chain"), dict)
          and isinstance(doc.get("rewrite"), list) and isinstance(doc.get("gateway_id"), str))
    if ok:
        for m in doc["members"]:
            ok = ok and isinstance(m, dict) and _safe_name(m.get("name")) and m.get("name") != MANIFEST \
                and m.get("kind") in MODES and isinstance(m.get("sha256"), str)
        names = [m["name"] for m in doc["members"]] if ok else []
        ok = ok and len(set(names)) == len(names) and doc["config"].get("file") in names \
            and doc.get("private_key") in names
        for r in doc["rewrite"] if ok else []:
            ok = ok and isinstance(r, dict) and isinstance(r.get("loc"), list) and isinstance(r.get("value"), str) \
                and _safe_name(r.get("member"))
    if not ok:
        raise BackupError(_("{archive}: manifest.json has a wrong shape (format {format} expected)").format(
            archive=archive, format=FORMAT))
    return doc


@dataclass
class _Targets:
    config_dir: Path
    state_dir: Path
    store: Path
    files: dict[str, Path]       # member name -> where it is written


def _target_of(name: str, config_dir: Path, state_dir: Path, store: Path) -> Path:
    top, _sep, rest = name.partition("/")
    if top == "config":
        return config_dir / rest
    if top == "external":
        return config_dir / "files" / rest
    if top == "state":
        return state_dir / rest
    return store.parent / rest   # store/<store name>[.chain.json|.journal]


def _targets(doc: dict[str, Any], root: Any, config_dir: str | None, state_dir: str | None) -> _Targets:
    c = _norm(Path(config_dir)) if config_dir else Path(doc["config"]["dir"])
    gw = root.get("gateway") or {}
    sv = str(gw.get("state_dir") or "state")
    if state_dir:
        s = _norm(Path(state_dir))
    else:
        s = _norm(c / Path(sv).expanduser()) if not Path(sv).expanduser().is_absolute() else Path(doc["config"]["state_dir"])
    stv = str((root.get("store") or {}).get("path") or "store.sqlite")
    if not Path(stv).expanduser().is_absolute():
        store = _norm(s / stv)
    else:
        store = _norm(s / Path(stv).name) if state_dir else _norm(Path(stv).expanduser())
    files = {m["name"]: _target_of(m["name"], c, s, store) for m in doc["members"]}
    return _Targets(c, s, store, files)


def _relocate(doc: dict[str, Any], root: Any, t: _Targets, state_dir_given: bool) -> list[str]:
    """Rewrite the config's paths in place (ruamel tree) where a location changed; the key paths changed."""
    changed: list[str] = []
    old_c, old_s = Path(doc["config"]["dir"]), Path(doc["config"]["state_dir"])

    def put(loc: list[Any], value: str) -> None:
        node = root
        for k in loc[:-1]:
            node = node[k]
        node[loc[-1]] = value
        changed.append(".".join(map(str, loc)))

    for r in doc["rewrite"]:
        value, member = r["value"], r["member"]
        if member.startswith("config/") and not Path(value).expanduser().is_absolute():
            continue   # relative under the config dir: it moves with the config
        new = str(_target_of(member, t.config_dir, t.state_dir, t.store))
        if new != value:
            try:
                put(r["loc"], new)
            except (KeyError, IndexError, TypeError):
                raise BackupError(_("manifest.json names a config key {key} the config does not have").format(
                    key=".".join(map(str, r["loc"])))) from None
    gw = root.get("gateway")
    sv = str((gw or {}).get("state_dir") or "state")
    resolved = _norm(t.config_dir / Path(sv).expanduser())
    if state_dir_given and resolved != t.state_dir:
        if gw is None:
            raise BackupError(_("the config has no gateway: section"))
        put(["gateway", "state_dir"], str(t.state_dir))
    st = root.get("store")
    stv = None if st is None else st.get("path")
    if stv is not None and Path(str(stv)).expanduser().is_absolute() and str(t.store) != str(stv):
        put(["store", "path"], str(t.store))
    ctl = root.get("control")
    sock = None if ctl is None else ctl.get("socket")
    if sock is not None and Path(str(sock)).is_absolute():
        sp = _norm(Path(str(sock)))
        for old, new in ((old_s, t.state_dir), (old_c, t.config_dir)):
            if _under(sp, old) and old != new:
                put(["control", "socket"], str(new / sp.relative_to(old)))
                break
    return changed


def _ensure_dir(d: Path, mode: int) -> None:
    """mkdir -p with ``mode`` for each directory made (whatever the umask); as root, each takes its parent's
    owner."""
    missing = []
    p = d
    while not p.exists():
        missing.append(p)
        p = p.parent
    for q in reversed(missing):
        q.mkdir(mode=mode)
        os.chmod(q, mode)
        _adopt_owner(q)


def _adopt_owner(p: Path) -> None:
    if os.geteuid() == 0:
        st = p.parent.stat()
        os.chown(p, st.st_uid, st.st_gid)


def _put(src: Path, dst: Path, mode: int) -> None:
    """Copy ``src`` to ``dst`` atomically (tmp beside it created with ``mode``, fsync, rename, fsync(dir))."""
    tmp = dst.with_name(f".{dst.name}.restore-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0), mode)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as out, open(src, "rb") as f:
            shutil.copyfileobj(f, out, 1 << 20)
            out.flush()
            os.fsync(out.fileno())
        _adopt_owner(tmp)
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(dst.parent)


def restore(archive: str | os.PathLike[str], *, config_dir: str | None = None, state_dir: str | None = None,
            force: bool = False) -> dict[str, Any]:
    """Restore a backup archive (verify first, then write; module docstring).

    Returns {"config": str path of the restored config, "state_dir": str, "store": str, "gateway_id": str,
    "chain": the manifest's chain, "with_store": bool, "written": [str paths], "set_aside": [str paths],
    "relocated": [config key paths rewritten], "problems": [str lines of the check of the restored config;
    empty: it passes]}. Raises BackupError (one line, nothing written) for an archive that is not readable, a
    member with an absolute or '..' name or of another type than a regular file, a member the manifest does not
    list (or one it lists missing), a sha256 mismatch, a signing key that is not the manifest's kid, and files
    on the target unless ``force``."""
    from gateway.chain.signing import Signer
    from gateway.config import ConfigError, check_secrets, check_state_dirs, load_config
    from gateway.yamlload import YamlError, parse_yaml

    archive = Path(archive)
    with tempfile.TemporaryDirectory(prefix="hazard-gateway-restore-") as tmp:
        work = Path(tmp)
        try:
            with tarfile.open(archive, "r:gz") as tar:
                infos = tar.getmembers()
                for ti in infos:
                    if not _safe_name(ti.name):
                        raise BackupError(_("{archive}: member {name} has an absolute path or '..'; refused, "
                                            "nothing restored").format(archive=archive, name=ti.name))
                    if not ti.isreg():
                        raise BackupError(_("{archive}: member {name} is not a regular file; refused, nothing "
                                            "restored").format(archive=archive, name=ti.name))
                doc = _load_manifest(tar, archive)
                listed = {m["name"]: m for m in doc["members"]}
                names = [ti.name for ti in infos if ti.name != MANIFEST]
                extra = sorted(set(names) - set(listed)) or [n for n in names if names.count(n) > 1]
                if extra:
                    raise BackupError(_("{archive}: member {name} is not in manifest.json; refused, nothing "
                                        "restored").format(archive=archive, name=extra[0]))
                missing = sorted(set(listed) - set(names))
                if missing:
                    raise BackupError(_("{archive}: member {name} listed in manifest.json is missing; nothing "
                                        "restored").format(archive=archive, name=missing[0]))
                tar.extractall(work / "x", members=[ti for ti in infos if ti.name != MANIFEST], filter="data")
        except (tarfile.TarError, EOFError, OSError, __import__("zlib").error) as exc:
            if isinstance(exc, BackupError):
                raise
            raise BackupError(_("{archive}: not a readable .tar.gz ({error}); nothing restored").format(
                archive=archive, error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__)) from None
        for name, m in listed.items():
            h = hashlib.sha256()
            with open(work / "x" / name, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            if h.hexdigest() != m["sha256"]:
                raise BackupError(_("{archive}: member {name} does not match its sha256 in manifest.json (damaged "
                                    "or altered); nothing restored").format(archive=archive, name=name))
        cfg_src = work / "x" / doc["config"]["file"]
        try:
            root = parse_yaml(cfg_src.read_text(encoding="utf-8"), doc["config"]["file"])
        except (YamlError, UnicodeDecodeError) as exc:
            raise BackupError(_("{archive}: the config in it does not parse: {error}").format(
                archive=archive, error=str(exc).splitlines()[0])) from None
        try:
            kid = Signer.from_file(work / "x" / doc["private_key"]).kid
        except ValueError as exc:
            raise BackupError(_("{archive}: signing key: {error}").format(archive=archive, error=exc)) from None
        if kid != doc.get("kid"):
            raise BackupError(_("{archive}: the signing key's kid {kid} is not the manifest's {expected}").format(
                archive=archive, kid=kid, expected=doc.get("kid")))
        t = _targets(doc, root, config_dir, state_dir)
        relocated = _relocate(doc, root, t, bool(state_dir))
        cfg_target = t.files[doc["config"]["file"]]
        # what the daemon reads at start must all come from the archive: an old store (and its -wal / -shm, which
        # SQLite would apply to the restored file), chain position, journal or safety state on the target is set
        # aside (with --force) even when the archive has none of its own
        from gateway.safety.safety_state import FILE_NAME as SAFETY_FILE

        side = [t.store.with_name(t.store.name + sfx) for sfx in ("", "-wal", "-shm", ".chain.json", ".journal")]
        side.append(t.state_dir / SAFETY_FILE)
        present = [p for p in [*t.files.values(), *side] if p.exists() or p.is_symlink()]
        present = list(dict.fromkeys(present))
        if present and not force:
            raise BackupError(_("{path} exists (and {more} more): restore writes no file that is there already "
                                "(a chain position or store there belongs to a chain already carried on); give "
                                "--force to set them aside as *.replaced-<time>").format(
                path=present[0], more=len(present) - 1))
        if relocated:
            from ruamel.yaml import YAML

            buf = io.StringIO()
            yaml = YAML(typ="rt")
            yaml.width = 4096   # a long path stays on its line
            yaml.dump(root, buf)
            cfg_src.write_text(buf.getvalue(), encoding="utf-8")
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        set_aside = []
        for p in present:
            aside = p.with_name(f"{p.name}.replaced-{stamp}")
            os.replace(p, aside)
            set_aside.append(str(aside))
        written = []
        for name, m in listed.items():
            dst = t.files[name]
            dmode = 0o700 if m["kind"] == "secret" else 0o750
            try:
                _ensure_dir(dst.parent, dmode)
                _put(work / "x" / name, dst, 0o600 if name == doc["private_key"] else MODES[m["kind"]])
            except OSError as exc:
                raise BackupError(_("cannot write {path}: {error} (restore stopped; run it again with "
                                    "--force)").format(path=dst, error=exc.strerror or exc)) from None
            written.append(str(dst))
        try:
            _ensure_dir(t.state_dir, 0o750)
        except OSError:
            pass   # the check below names it
    problems: list[str] = []
    try:
        cfg = load_config(cfg_target)
        problems = [str(p) for p in check_secrets(cfg) + check_state_dirs(cfg) if not p.warning]
    except ConfigError as exc:
        problems = [str(p) for p in exc.problems]
    return {"config": str(cfg_target), "state_dir": str(t.state_dir), "store": str(t.store),
            "gateway_id": doc["gateway_id"], "chain": doc["chain"], "with_store": bool(doc.get("with_store")),
            "written": written, "set_aside": set_aside, "relocated": relocated, "problems": problems}


def backup_lines(m: dict[str, Any]) -> list[str]:
    """What `backup` prints: where, what, and the two warnings (private key; stop the old PC)."""
    chain = m["chain"]
    lines = [_("wrote {archive} (mode 0600): {n} files of gateway {gid}, chain position at seq {seq}{store}").format(
        archive=m["archive"], n=len(m["members"]), gid=m["gateway_id"], seq=chain["seq"],
        store=_(", store snapshot at seq {seq}").format(seq=chain["store_seq"]) if m["with_store"] else "")]
    lines.append(_("the archive holds the gateway's PRIVATE signing key ({kid}): keep it like the key itself, "
                   "never give it to the regulator").format(kid=m["kid"]))
    if m["live"]:
        lines.append(_("taken while the gateway runs (--live): it uploads on, so do not restore this archive on "
                       "another PC while this one runs (409 at the receiver)"))
    else:
        lines.append(_("this PC must not upload again once the new one runs from this archive (the receiver "
                       "answers 409): keep the gateway stopped (systemctl disable --now hazard-gateway)"))
    return lines


def restore_lines(r: dict[str, Any]) -> list[str]:
    """What `restore` prints."""
    chain = r["chain"]
    lines = [_("restored gateway {gid}: config {config}, state {state}").format(
        gid=r["gateway_id"], config=r["config"], state=r["state_dir"])]
    if r["relocated"]:
        lines.append(_("config paths relocated: {keys}").format(keys=", ".join(r["relocated"])))
    for p in r["set_aside"]:
        lines.append(_("set aside {path}").format(path=p))
    if r["with_store"]:
        lines.append(_("store restored: the chain carries on after seq {seq}").format(
            seq=max(chain["seq"], chain.get("store_seq") or 0)))
    elif chain["seq"]:
        lines.append(_("no store in the archive: the new store carries the chain on from the chain position "
                       "(next seq {next}); readings the old PC had not put into a batch are one signed gap row")
                     .format(next=chain["seq"] + 1))
    else:
        lines.append(_("no chain position in the archive (the old PC made no batch): the chain starts at seq 1"))
    if r["problems"]:
        lines.append(_("check of the restored config found problems:"))
        lines += r["problems"]
    else:
        lines.append(_("check: ok; start it with: hazard-gateway run --config {config}").format(config=r["config"]))
    lines.append(_("the old PC must stay stopped: if it uploads again the receiver answers 409"))
    return lines


__all__ = ["BackupError", "backup", "backup_lines", "daemon_running", "restore", "restore_lines"]
