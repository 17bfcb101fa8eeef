"""`hazard-gateway backup` / `restore` (gateway/ops/backup.py): a replaced industrial PC carries the chain on.

End to end, real peers (hil.rig): a gateway daemon polls the HIL tank PLC and uploads to the reference receiver;
it is stopped, backed up (with and without the store), the old PC's directory is moved away, the archive is
restored into other directories (the "new PC"), `check` passes there, a daemon starts from the restored config
and uploads more. Then the receiver holds seq 1..n without a gap, no 409 was answered anywhere, every batch of
the new store is at the receiver byte-identical, and `verify` accepts the exported chain end to end (the first
batch of the new PC links to the last of the old one). A running daemon's backup is refused without --live; with
--live it is taken, and its store snapshot is sound and not behind the chain position taken before it.

In process (the command line's main): a member changed by one byte, a ``../`` or absolute member name and a
damaged gzip stream are each refused with one line and exit 2, writing nothing; a restore onto a chain position
that is there already is refused without --force and sets it aside with it; modes, comments and relocated paths.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

import pytest

from conftest import ROOT, run_cli, sql_rows, until_daemon
from gateway.chain.signing import chain_hash
from gateway.cli import main
from hil.rig import (GatewayProc, ReceiverProc, drained, integrity, make_keys, payload, receiver_batches,
                     receiver_readings, store_readings, tank_plc_config)
from hil.tank_plc import TankPlc

# a 409 answer as the logs write it ("HTTP 409", "409 Conflict", "status 409"), not the 409 inside a time stamp
# (04:43:01.409Z) or a hash
NO_409 = re.compile(r"(?<![\w.:])409(?![\w])")


def _seqs(db: Path) -> list[int]:
    try:
        return [payload(j)["seq"] for j in receiver_batches(db)]
    except Exception:   # noqa: BLE001 - the receiver has not created its store yet
        return []


# ------------------------------------------------------------------------------------------------ end to end

@pytest.mark.e2e
@pytest.mark.timeout(90)
@pytest.mark.parametrize("with_store", [True, False], ids=["with-store", "without-store"])
async def test_a_replaced_pc_carries_the_chain_on(tmp_path: Path, with_store: bool) -> None:
    plc = TankPlc(seed=7)
    await plc.start()
    old = tmp_path / "old-pc"
    key, trust = make_keys(old)
    rx_trust = tmp_path / "rx-trust"        # the regulator's copy of the public key (the old PC goes away)
    shutil.copytree(trust, rx_trust)
    rx = ReceiverProc(tmp_path / "rx", rx_trust)
    await asyncio.to_thread(rx.start)
    cfg = tank_plc_config(old / "gateway.yaml", gateway_id="swap-gw", plc_port=plc.port, state_dir=old / "state",
                          key_file=key, receiver_url=rx.url, ca_file=rx.cert, poll_ms=100, commit_interval_ms=100,
                          batch_max_readings=40, interval_ms=100, comment="site comment kept by restore")
    new_etc, new_var = tmp_path / "new-pc" / "etc" / "hazard-gateway", tmp_path / "new-pc" / "var" / "lib" / "hg"
    archive = tmp_path / "swap.tar.gz"
    old_log, new_log = tmp_path / "old-gateway.log", tmp_path / "new-gateway.log"
    gw = GatewayProc(cfg, old_log)
    gw2: GatewayProc | None = None
    try:
        await asyncio.to_thread(gw.start)
        await until_daemon(lambda: len(_seqs(rx.store)) >= 3, 40, "3 batches at the receiver", gw.proc, old_log)
        # the daemon answers on its control socket: a backup for a PC replacement is refused while it runs
        rc, out, err = await run_cli("backup", "--config", str(cfg), "--out", str(tmp_path / "live.tar.gz"))
        assert rc == 2 and "running" in err and "--live" in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "live.tar.gz").exists()
        if with_store:   # --live: a routine backup of the running daemon; the snapshot is never behind the position
            rc, out, err = await run_cli("backup", "--config", str(cfg), "--out", str(tmp_path / "live.tar.gz"),
                                         "--live", "--with-store")
            assert rc == 0 and "--live" in out, out + err
            with tarfile.open(tmp_path / "live.tar.gz") as tar:
                live = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
                tar.extract("store/store.sqlite", tmp_path / "live", filter="data")
            assert live["live"] is True and live["chain"]["store_seq"] >= live["chain"]["seq"] >= 3
            assert integrity(tmp_path / "live" / "store" / "store.sqlite") == "ok"
        assert await asyncio.to_thread(gw.term) == 0
        old_seqs = _seqs(rx.store)
        old_last = receiver_batches(rx.store)[-1]
        old_db = old / "state" / "store.sqlite"
        old_batched = sql_rows(old_db, "SELECT count(*) FROM readings WHERE batch_seq BETWEEN 1 AND ?",
                               (old_seqs[-1],))[0][0]

        args = ["backup", "--config", str(cfg), "--out", str(archive)] + (["--with-store"] if with_store else [])
        rc, out, err = await run_cli(*args)
        assert rc == 0, err
        assert stat.S_IMODE(archive.stat().st_mode) == 0o600
        assert "PRIVATE signing key" in out and "409" in out and "0600" in out
        with tarfile.open(archive) as tar:
            manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
            names = set(tar.getnames())
        assert manifest["gateway_id"] == "swap-gw" and manifest["with_store"] is with_store
        assert manifest["chain"]["seq"] >= old_seqs[-1] and manifest["chain"]["hash"]
        assert ("store/store.sqlite" in names) is with_store and "store/store.sqlite.chain.json" in names
        assert manifest["private_key"] in names and all(len(m["sha256"]) == 64 for m in manifest["members"])

        os.rename(old, tmp_path / "old-pc-gone")   # the new PC has nothing of the old one but the archive
        rc, out, err = await run_cli("restore", str(archive), "--config-dir", str(new_etc), "--state-dir",
                                     str(new_var))
        assert rc == 0, out + err
        new_cfg = new_etc / "gateway.yaml"
        text = new_cfg.read_text()
        assert "# site comment kept by restore" in text and "old-pc" not in text
        assert stat.S_IMODE((new_etc / "keys" / "private.pem").stat().st_mode) == 0o600
        rc, out, err = await run_cli("check", str(new_cfg))
        assert rc == 0, out + err

        gw2 = GatewayProc(new_cfg, new_log)
        await asyncio.to_thread(gw2.start)
        goal = old_seqs[-1] + 3
        await until_daemon(lambda: len(_seqs(rx.store)) >= goal and drained(new_var), 40,
                           f"seq {goal} at the receiver and the new store drained", gw2.proc, new_log)
        assert await asyncio.to_thread(gw2.term) == 0
        gw2 = None

        # onto the chain that carried on: refused without --force, one line, nothing changed
        before = (new_var / "store.sqlite.chain.json").read_bytes()
        rc, out, err = await run_cli("restore", str(archive), "--config-dir", str(new_etc), "--state-dir",
                                     str(new_var))
        assert rc == 2 and "exists" in err and "--force" in err and len(err.strip().splitlines()) == 1, err
        assert (new_var / "store.sqlite.chain.json").read_bytes() == before
    finally:
        for g in (gw, gw2):
            if g is not None and g.alive():
                g.kill()
        rx.stop()
        await plc.stop()

    jws = receiver_batches(rx.store)
    seqs = [payload(j)["seq"] for j in jws]
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) >= old_seqs[-1] + 3   # contiguous, no gap
    first_new = payload(jws[len(old_seqs)])
    assert first_new["prev"] == chain_hash(old_last)                                 # the link across the PCs
    for log in (old_log, new_log, rx.dir / "receiver.log"):
        hit = NO_409.search(log.read_text(errors="replace"))
        assert hit is None, f"{log.name}: a 409: {log.read_text()[max(0, hit.start() - 300):hit.end() + 200]}"
    # every batch the new PC stored was accepted, byte-identical
    new_db = new_var / "store.sqlite"
    at_rx = dict(zip(seqs, jws))
    for seq, body in sql_rows(new_db, "SELECT seq, jws FROM batches ORDER BY seq"):
        assert at_rx.get(seq) == body, f"batch {seq} of the new store is not at the receiver"
    gap_reasons = [g["reason"] for j in jws for g in payload(j).get("gaps") or []]
    stored, got = store_readings(new_db), receiver_readings(rx.store)
    assert not [k for k, n in Counter(got).items() if n > 1], "a reading arrived twice"
    if with_store:
        # the restored store holds the old PC's readings too: the receiver has each exactly once, in store order
        assert Counter(stored) - Counter(got) == Counter() and got == stored
        assert "store_missing" not in gap_reasons and "store_behind_chain" not in gap_reasons
    else:
        # from the chain position alone: the old PC's unbatched readings are one signed gap row, not silence
        assert "store_missing" in gap_reasons
        assert sum(len(payload(j)["readings"]) for j in jws[:len(old_seqs)]) == old_batched
        assert Counter(stored) - Counter(got) == Counter()   # what the new PC stored arrived
    out_dir = tmp_path / "export"
    exp = subprocess.run([sys.executable, "-m", "gateway.cli", "receiver", "export", "--store", str(rx.store),
                          "--out", str(out_dir)], capture_output=True, text=True, cwd=ROOT)
    assert exp.returncode == 0, exp.stderr
    ver = subprocess.run([sys.executable, "-m", "gateway.cli", "verify", "--trust", str(rx_trust),
                          *sorted(map(str, out_dir.glob("*.jws")))], capture_output=True, text=True, cwd=ROOT)
    assert ver.returncode == 0, ver.stdout[-2000:] + ver.stderr[-2000:]
    rx.close()


# ------------------------------------------------------------------------------------------------ in process

@pytest.fixture()
def archive(tmp_path: Path) -> Path:
    """A backup of a gateway that never ran, plus a chain position file, made with the command line's main."""
    from gateway.record.chain_position import ChainPosition
    from gateway.tlsutil import make_self_signed

    old = tmp_path / "old"
    key, _trust = make_keys(old)
    cert, _k = make_self_signed(tmp_path / "ca", ["127.0.0.1"])
    cfg = tank_plc_config(old / "gw.yaml", gateway_id="bk-gw", plc_port=5020, state_dir=old / "state",
                          key_file=key, receiver_url="https://127.0.0.1:9/v1/batches", ca_file=cert,
                          comment="kept")
    (old / "state").mkdir()
    pos = ChainPosition(old / "state" / "store.sqlite.chain.json")
    pos.created(1, "a.b.c", "2026-01-01T00:00:00.000Z", None, None)
    pos.acked_batch(1)
    pos.save()
    out = tmp_path / "bk.tar.gz"
    assert main(["backup", "--config", str(cfg), "--out", str(out)]) == 0
    return out


def _repack(src: Path, dst: Path, change: dict[str, bytes | None], add: dict[str, bytes] | None = None) -> None:
    """Copy the archive, replacing (bytes) or dropping (None) members by name and appending ``add``."""
    with tarfile.open(src) as tin, tarfile.open(dst, "w:gz") as tout:
        for ti in tin.getmembers():
            data = tin.extractfile(ti).read()  # type: ignore[union-attr]
            if ti.name in change:
                if change[ti.name] is None:
                    continue
                data = change[ti.name]  # type: ignore[assignment]
            ti.size = len(data)
            tout.addfile(ti, io.BytesIO(data))
        for name, data in (add or {}).items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tout.addfile(ti, io.BytesIO(data))


def _member(archive: Path, name: str) -> bytes:
    with tarfile.open(archive) as tar:
        return tar.extractfile(name).read()  # type: ignore[union-attr]


def _one_line_refusal(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_restore_relocates_and_checks(archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    etc, var = tmp_path / "new" / "etc", tmp_path / "new" / "var"
    capsys.readouterr()
    assert main(["restore", str(archive), "--config-dir", str(etc), "--state-dir", str(var)]) == 0
    out = capsys.readouterr().out
    assert "check: ok" in out and "next seq 2" in out
    text = (etc / "gw.yaml").read_text()
    assert text.startswith("# kept\n") and str(tmp_path / "old") not in text and str(var) in text
    assert stat.S_IMODE((etc / "keys" / "private.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE((etc / "keys").stat().st_mode) == 0o700
    assert stat.S_IMODE((var / "store.sqlite.chain.json").stat().st_mode) == 0o640
    ca = etc / "files" / str(tmp_path / "ca" / "server.crt").lstrip("/")
    assert ca.is_file() and str(ca) in text
    assert main(["check", str(etc / "gw.yaml")]) == 0


def test_a_member_changed_by_one_byte_is_refused(archive: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    body = bytearray(_member(archive, "config/gw.yaml"))
    body[len(body) // 2] ^= 0x01
    bad = tmp_path / "bad.tar.gz"
    _repack(archive, bad, {"config/gw.yaml": bytes(body)})
    etc = tmp_path / "new"
    err = _one_line_refusal(capsys, ["restore", str(bad), "--config-dir", str(etc), "--state-dir", str(etc / "s")])
    assert "config/gw.yaml" in err and "sha256" in err
    assert not etc.exists()
    # a damaged gzip stream: one line as well
    raw = bytearray(archive.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (tmp_path / "raw.tar.gz").write_bytes(raw)
    _one_line_refusal(capsys, ["restore", str(tmp_path / "raw.tar.gz"), "--config-dir", str(etc)])
    assert not etc.exists()


@pytest.mark.parametrize("name", ["../evil.txt", "config/../../evil.txt", "/tmp/evil-abs.txt"])
def test_a_member_outside_the_archive_is_refused(archive: Path, tmp_path: Path, name: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.tar.gz"
    _repack(archive, bad, {}, {name: b"owned\n"})
    work = tmp_path / "deep" / "work"
    work.mkdir(parents=True)
    err = _one_line_refusal(capsys, ["restore", str(bad), "--config-dir", str(work / "etc"),
                                     "--state-dir", str(work / "var")])
    assert "'..'" in err and name in err
    assert not (tmp_path / "deep" / "evil.txt").exists() and not (work / "etc").exists()
    assert not Path("/tmp/evil-abs.txt").exists()


def test_restore_onto_an_existing_chain_needs_force(archive: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    etc, var = tmp_path / "etc", tmp_path / "var"
    var.mkdir()
    there = var / "store.sqlite.chain.json"
    there.write_text("another chain\n")
    (var / "store.sqlite-wal").write_text("stale wal\n")
    err = _one_line_refusal(capsys, ["restore", str(archive), "--config-dir", str(etc), "--state-dir", str(var)])
    assert str(there) in err and "--force" in err
    assert there.read_text() == "another chain\n" and not etc.exists()
    assert main(["restore", str(archive), "--config-dir", str(etc), "--state-dir", str(var), "--force"]) == 0
    aside = sorted(p.name for p in var.glob("*.replaced-*"))
    assert len(aside) == 2 and all(n.startswith(("store.sqlite.chain.json.", "store.sqlite-wal.")) for n in aside)
    assert there.read_bytes() == _member(archive, "store/store.sqlite.chain.json")
    assert not (var / "store.sqlite-wal").exists()   # a stale WAL never meets the restored chain


def test_backup_never_overwrites_an_archive(archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = archive.read_bytes()
    err = _one_line_refusal(capsys, ["backup", "--config", str(tmp_path / "old" / "gw.yaml"), "--out", str(archive)])
    assert "exists" in err and archive.read_bytes() == before
