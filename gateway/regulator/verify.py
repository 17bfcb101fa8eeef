"""Offline verification of exported batches: what a regulator runs with the public keys alone.

``hazard-gateway verify --trust DIR FILE...`` calls :func:`run_verify`. Each FILE holds one
compact JWS (as written by the receiver's export, ``<gateway_id>-<seq>.jws``); a directory
argument stands for the ``*.jws`` files in it. Checks (see gateway.chain.signing for the format):

1. per file: compact JWS form, alg EdDSA, known kid, Ed25519 signature, payload shape;
2. per gateway_id, files sorted by seq: sequence continuity from seq 1 (missing seqs are a
   fault; two different batches with one seq are a fault on both files; a byte-identical copy
   is a note), and the hash chain: ``prev`` of seq n == chain_hash(JWS of seq n-1);
3. keys and gateways: a key bound to a gateway in the trust directory (layout below) signs for
   that gateway only; a batch of another gateway signed with it is a fault ("binding"). An
   unbound key (legacy flat layout) that signs for two gateways is a fault.
4. key rotation: a key announced (``announce_key`` with its proof of possession
   ``announce_key_proof``, see gateway.chain.signing) in a verified batch is trusted for the later
   batches of the same gateway only. Within one chain every batch is signed by a key that
   signed an earlier batch of the chain or was announced in one: a change of signing key
   mid-chain without such an announcement is a fault ("key change"), even to a key the trust
   directory holds for the gateway. The first batch (seq 1, or the first of a partial chain)
   may be signed by any key of the gateway.

Trust directory layout (:func:`load_trust`; the receiver reads the same)::

    trust/
      <gateway_id>/<kid>.jwk    a key of that gateway only (the directory name is the gateway_id)
      <kid>.jwk                 with a "gateway_id" member: a key of that gateway only;
                                without one: an unbound key (legacy layout), see above

Each file holds one public Ed25519 JWK (``hazard-gateway keygen`` writes ``<kid>.jwk``).
A file in ``<gateway_id>/`` whose "gateway_id" member names another gateway, or one kid bound
to two gateways, is a trust-directory error (exit 2); an unbound copy of a bound key is
ignored, and so are sub-directories whose names are not gateway ids (e.g. starting with ".").

``created_at`` going backwards between consecutive batches is reported as a note (a clock
step or reordering at the gateway), not a fault. With ``partial=True`` a chain may start
after seq 1 (e.g. verifying one day's export); its first prev is then unchecked.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, TextIO

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.chain.signing import (GATEWAY_ID_RE, BatchError, KeyFileError, chain_hash, decode_unverified, links_to,
                                   public_key_from_jwk, read_jwk, verify_batch)

__all__ = ["FileResult", "TrustedKey", "VerifyReport", "load_trust", "verify_files", "run_verify"]


@dataclass(frozen=True)
class TrustedKey:
    """One public key of the trust directory: ``gateway_id`` is the gateway it signs for, or
    None for an unbound key (legacy flat layout without a "gateway_id" member)."""

    kid: str
    key: Ed25519PublicKey
    gateway_id: str | None
    path: str


def load_trust(directory: str | Path) -> dict[str, TrustedKey]:
    """{kid: TrustedKey} from the trust directory (layout in the module docstring).

    Raises KeyFileError (one line, naming the file) for a missing directory, a bad JWK, a
    "gateway_id" member that is not a gateway id or contradicts its directory, or one kid bound
    to two different gateways. An empty directory gives an empty dict."""
    d = Path(directory)
    if not d.is_dir():
        raise KeyFileError(f"{d}: trust directory does not exist")
    found: list[tuple[Path, str | None]] = [(p, None) for p in sorted(d.glob("*.jwk"))]
    for sub in sorted(p for p in d.iterdir() if p.is_dir()):
        if GATEWAY_ID_RE.match(sub.name):
            found += [(p, sub.name) for p in sorted(sub.glob("*.jwk"))]
    out: dict[str, TrustedKey] = {}
    for path, dir_gid in found:
        jwk = read_jwk(path)
        try:
            kid, key = public_key_from_jwk(jwk)
        except ValueError as exc:
            raise KeyFileError(f"{path}: {exc}") from None
        member = jwk.get("gateway_id")
        if member is not None and (not isinstance(member, str) or not GATEWAY_ID_RE.match(member)):
            raise KeyFileError(f"{path}: gateway_id {member!r} is not 1-64 characters of [A-Za-z0-9._-]")
        if dir_gid is not None and member is not None and member != dir_gid:
            raise KeyFileError(f"{path}: gateway_id {member!r} contradicts its directory {dir_gid!r}")
        gid = dir_gid or member
        before = out.get(kid)
        if before is not None and None not in (before.gateway_id, gid) and before.gateway_id != gid:
            raise KeyFileError(f"{path}: key {kid} is bound to gateway {gid} here but to gateway "
                               f"{before.gateway_id} in {before.path}")
        if before is None or before.gateway_id is None:   # a binding beats an unbound copy of the key
            out[kid] = TrustedKey(kid, key, gid, str(path))
    return out


@dataclass
class FileResult:
    """Outcome for one file. ``faults`` empty means the file verified and its links hold."""

    path: str
    gateway_id: str | None = None
    seq: int | None = None
    kid: str | None = None
    hash: str | None = None
    signed_ok: bool = False
    faults: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    created_at: str | None = None
    jws: str | None = field(default=None, repr=False)
    payload: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return not self.faults


@dataclass
class VerifyReport:
    """All file results plus faults/notes that belong to a gateway rather than one file
    (missing seqs, a key used by two gateways). ``ok`` is True only without any fault."""

    files: list[FileResult] = field(default_factory=list)
    faults: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    chains: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return bool(self.files) and not self.faults and all(f.ok for f in self.files)

    @property
    def fault_count(self) -> int:
        return len(self.faults) + sum(len(f.faults) for f in self.files)

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON: {"ok", "batches" (files read), "verified" (files without a fault), "faults":
        [{"file" (null for a chain's fault), "message"}], "notes": [same shape], "chains": {gateway_id:
        [first seq, last seq]}, "files": [{"file", "gateway_id", "seq", "kid", "hash", "ok"}]}."""
        return {
            "ok": self.ok, "batches": len(self.files), "verified": sum(1 for f in self.files if f.ok),
            "faults": [{"file": f.path, "message": m} for f in self.files for m in f.faults]
            + [{"file": None, "message": m} for m in self.faults],
            "notes": [{"file": f.path, "message": m} for f in self.files for m in f.notes]
            + [{"file": None, "message": m} for m in self.notes],
            "chains": {g: [a, b] for g, (a, b) in sorted(self.chains.items())},
            "files": [{"file": f.path, "gateway_id": f.gateway_id, "seq": f.seq, "kid": f.kid, "hash": f.hash,
                       "ok": f.ok} for f in self.files],
        }

    def lines(self) -> list[str]:
        """One line per fault, then per note, then a summary line."""
        out = [f"FAULT {f.path}: {m}" for f in self.files for m in f.faults]
        out += [f"FAULT {m}" for m in self.faults]
        out += [f"NOTE {f.path}: {m}" for f in self.files for m in f.notes]
        out += [f"NOTE {m}" for m in self.notes]
        n_ok = sum(1 for f in self.files if f.ok)
        if self.ok:
            spans = ", ".join(f"{g} seq {a}..{b}" for g, (a, b) in sorted(self.chains.items()))
            out.append(f"OK: {len(self.files)} batches verified, signatures and hash chains intact ({spans})")
        else:
            out.append(f"FAILED: {self.fault_count} fault(s); {n_ok} of {len(self.files)} files verified clean")
        return out


def _expand(files: Iterable[str | Path]) -> list[Path]:
    out: list[Path] = []
    for f in files:
        p = Path(f)
        out.extend(sorted(p.glob("*.jws")) if p.is_dir() else [p])
    return out


def _load(path: Path) -> FileResult:
    res = FileResult(path=str(path))
    try:
        res.jws = path.read_bytes().decode("ascii").strip()
    except OSError as exc:
        res.faults.append(f"cannot read: {exc.strerror}")
        return res
    except UnicodeDecodeError:
        res.faults.append("malformed: not an ASCII compact JWS")
        return res
    try:
        header, payload = decode_unverified(res.jws)
    except BatchError:
        return res  # verify_files names the check (a tampered payload is a signature fault)
    res.hash = chain_hash(res.jws)
    res.kid = header.get("kid") if isinstance(header.get("kid"), str) else None
    if isinstance(payload, dict):
        gid, seq = payload.get("gateway_id"), payload.get("seq")
        if isinstance(gid, str) and isinstance(seq, int) and not isinstance(seq, bool):
            res.gateway_id, res.seq = gid, seq
    return res


def verify_files(trust_dir: str | Path, files: Iterable[str | Path], *, partial: bool = False) -> VerifyReport:
    """Verify batch files against the public keys in ``trust_dir`` (layout: module docstring).

    Returns a VerifyReport (per file ok/faults, gateway-level faults). Raises KeyFileError
    (one line) when the trust directory is missing or holds a bad key file.
    """
    bound = load_trust(trust_dir)
    trust = {kid: t.key for kid, t in bound.items()}
    report = VerifyReport(files=[_load(p) for p in _expand(files)])
    groups: dict[str, list[FileResult]] = {}
    for res in report.files:
        if res.gateway_id is None:
            if not res.faults:  # unparsed or no usable gateway_id/seq: let verify_batch name the check
                try:
                    verify_batch(res.jws or "", trust)
                except BatchError as exc:
                    res.faults.append(f"{exc.check}: {exc}")
                else:  # pragma: no cover - verify_batch requires gateway_id and seq
                    res.faults.append("payload: no gateway_id/seq")
            continue
        groups.setdefault(res.gateway_id, []).append(res)

    key_users: dict[str, set[str]] = {}
    for gid, group in sorted(groups.items()):
        group.sort(key=lambda r: (r.seq, r.path))
        gtrust: dict[str, Ed25519PublicKey] = dict(trust)
        established: set[str] = set()   # kids that signed or were announced earlier in this chain
        for res in group:
            try:
                res.payload = verify_batch(res.jws or "", gtrust)
            except BatchError as exc:
                res.faults.append(f"{exc.check}: {exc}")
                continue
            kid = res.kid or ""
            owner = bound[kid].gateway_id if kid in bound else gid   # announced keys: this gateway's
            if owner is not None and owner != gid:
                res.faults.append(f"binding: key {kid} is bound to gateway {owner} in the trust directory, "
                                  f"not {gid}")
                continue
            if established and kid not in established:
                res.faults.append(f"key change: seq {res.seq} is signed by {kid}, which neither signed an earlier "
                                  f"batch of {gid} nor was announced in one (announce_key with "
                                  f"announce_key_proof, in a batch signed by the old key)")
                continue
            res.signed_ok = True
            res.created_at = res.payload["created_at"]
            established.add(kid)
            key_users.setdefault(kid, set()).add(gid)
            if "announce_key" in res.payload:
                new_kid, key = public_key_from_jwk(res.payload["announce_key"])
                new_owner = bound[new_kid].gateway_id if new_kid in bound else None
                if new_owner is not None and new_owner != gid:
                    res.faults.append(f"binding: announces key {new_kid}, which is bound to gateway {new_owner} "
                                      f"in the trust directory")
                    continue
                gtrust[new_kid] = key
                established.add(new_kid)
                res.notes.append(f"announces key {new_kid} for the later batches of {gid}")
        _check_sequence(gid, group, report, partial)

    for kid, gids in sorted(key_users.items()):
        if len(gids) > 1:
            report.faults.append(f"key {kid} signs for several gateways: {', '.join(sorted(gids))}")
    return report


def _check_sequence(gid: str, group: list[FileResult], report: VerifyReport, partial: bool) -> None:
    by_seq: dict[int, list[FileResult]] = {}
    for res in group:
        assert res.seq is not None
        by_seq.setdefault(res.seq, []).append(res)
    seqs = sorted(by_seq)
    first = seqs[0] if partial else 1
    expected = first
    for s in seqs:
        if s > expected:
            span = f"seq {expected}" if s - 1 == expected else f"seq {expected}..{s - 1}"
            report.faults.append(f"{gid}: {span} missing")
        expected = s + 1
    report.chains[gid] = (first, seqs[-1])

    # Duplicates: one body per seq. Identical copies are harmless; different bodies are a fault.
    chosen: dict[int, FileResult] = {}
    for s in seqs:
        files = by_seq[s]
        signed = [f for f in files if f.signed_ok]
        bodies = {f.jws for f in signed}
        if len(bodies) > 1:
            for f in signed:
                others = ", ".join(o.path for o in signed if o.jws != f.jws)
                f.faults.append(f"{gid} seq {s} exists with a different body in {others}")
        elif signed:
            chosen[s] = signed[0]
            for f in signed[1:]:
                f.notes.append(f"byte-identical copy of {signed[0].path}")

    # Hash chain and created_at order.
    for s in seqs:
        for res in by_seq[s]:
            if not res.signed_ok or res.payload is None or s == 1:
                continue
            before_all = by_seq.get(s - 1)
            if not before_all:
                if partial and s == first:
                    res.notes.append("first batch of this partial chain; prev not checked")
                continue  # the gap is already reported at gateway level
            before = chosen.get(s - 1)
            if before is None:
                res.notes.append(f"prev not checked: seq {s - 1} did not verify")
                continue
            if not links_to(res.payload, before.hash):
                res.faults.append(f"chain broken: prev is not the hash of seq {s - 1} ({before.path})")
            if _when(res.created_at) < _when(before.created_at):
                res.notes.append(f"created_at {res.created_at} is earlier than seq {s - 1}'s "
                                 f"{before.created_at} (clock step or reordering)")


def _when(rfc3339: str | None) -> datetime:
    try:
        return datetime.fromisoformat((rfc3339 or "").replace("Z", "+00:00"))
    except ValueError:
        return datetime.min.replace(tzinfo=timezone.utc)


def run_verify(trust_dir: str | Path, files: Iterable[str | Path], *, partial: bool = False,
               out: TextIO | None = None, as_json: bool = False) -> int:
    """Verify and print one line per fault and note, then a summary; with ``as_json`` one object instead
    (:meth:`VerifyReport.as_dict`). Exit code: 0 all verified, 1 any fault, 2 usage error (no files, bad or
    missing trust directory: one ``hazard-gateway: `` line on stderr, or with ``as_json`` {"ok": false,
    "error": ...} on stdout)."""
    stream = out if out is not None else sys.stdout
    err = sys.stderr if out is None else stream

    def usage(msg: str) -> int:
        if as_json:
            print(json.dumps({"ok": False, "error": msg}, ensure_ascii=False), file=stream)
        else:
            print(f"hazard-gateway: {msg}", file=err)
        return 2

    paths = _expand(files)
    if not paths:
        return usage("no batch files given")
    try:
        if not load_trust(trust_dir):
            return usage(f"{trust_dir}: no *.jwk public keys")
        report = verify_files(trust_dir, paths, partial=partial)
    except KeyFileError as exc:
        return usage(str(exc))
    if as_json:
        print(json.dumps(report.as_dict(), indent=1, ensure_ascii=False), file=stream)
    else:
        for line in report.lines():
            print(line, file=stream)
    return 0 if report.ok else 1
