"""A buffer database that becomes corrupt while the gateway runs, or is found corrupt at start (C17b).

The file is damaged the way a failing SD card damages it: pages in the middle of the file are
overwritten with random bytes while the store is open. SQLite only notices when it reads such a page
past its page cache, so every test first checkpoints the WAL into the file from another connection
(``PRAGMA wal_checkpoint(TRUNCATE)``, which also makes the store's connections drop their caches at
their next transaction) and then damages b-tree pages of the readings table found by walking the
table's b-tree in the file (SQLite docs "Database File Format", section 1.6 "B-tree Pages").

What must hold: ``corrupt`` is set (not for "database is locked"), polling goes on (put_* keeps
accepting), the writer keeps its records pending; ``recover_corrupt()`` sets the file aside, copies
what reads back, and the fresh store carries the chain on: a real receiver accepts the batches on
both sides of the recovery, the batch never delivered before is sent byte-identical, the next batch
has seq = last + 1 and prev = its hash and carries the signed gap row and the alarm event, and
every reading that was readable arrives exactly once.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import random
import sqlite3
import struct
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from gateway.record.batches import Batch, Batcher
from gateway.record.chain_position import ChainPosition, ChainPositionError, position_path
from gateway.model import Quality, Reading, rfc3339
from gateway.regulator.receiver import BackgroundReceiver, export_batches
from gateway.chain.signing import chain_hash, decode_unverified
from gateway.record.store import Store, StoreError, is_corruption
from gateway.record.uplink import Forwarder, HttpsUplink
from gateway.regulator.verify import run_verify
from conftest import run_forwarder

T0 = 1_760_000_000.0
GW = "tankfarm-01"


def rec(i: int, tag: str = "LT-101") -> dict:
    return Reading(tag=tag, value=i, unit="m", quality=Quality.GOOD, ts=T0 + i).to_record()


def fill(store: Store, values: range) -> None:
    for i in values:
        assert store.put_reading(rec(i))
    assert store.flush(10)


def payload(jws: str) -> dict:
    return decode_unverified(jws)[1]


# ---------------------------------------------------------------- damaging the file like a failing card


def _varint(b: bytes, i: int) -> tuple[int, int]:
    v = 0
    for k in range(9):
        c = b[i + k]
        if k == 8:
            return (v << 8) | c, i + 9
        v = (v << 7) | (c & 0x7F)
        if not c & 0x80:
            return v, i + k + 1
    raise AssertionError("unreachable")


def checkpoint(db: Path) -> None:
    """Copy the WAL into the database file (so the damage is not shadowed by WAL frames) and reset the
    WAL (the store's connections then drop their page caches at their next transaction)."""
    conn = sqlite3.connect(db)
    try:
        busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        assert busy == 0
    finally:
        conn.close()


def table_leaves(db: Path, table: str) -> tuple[list[tuple[int, list[int]]], int]:
    """([(page number, [rowids on that leaf]), ...] in key order, page size) of a table b-tree, read from
    the file (SQLite docs "Database File Format" 1.6: interior table page 0x05, leaf 0x0D)."""
    conn = sqlite3.connect(db)
    try:
        root = conn.execute("SELECT rootpage FROM sqlite_master WHERE type='table' AND name=?", (table,)).fetchone()[0]
    finally:
        conn.close()
    data = db.read_bytes()
    page_size = struct.unpack(">H", data[16:18])[0]
    page_size = 65536 if page_size == 1 else page_size
    out: list[tuple[int, list[int]]] = []

    def walk(pg: int) -> None:
        off = (pg - 1) * page_size
        hdr = off + (100 if pg == 1 else 0)
        kind, cells = data[hdr], struct.unpack(">H", data[hdr + 3:hdr + 5])[0]
        if kind == 0x0D:
            ids = []
            for c in range(cells):
                ptr = struct.unpack(">H", data[hdr + 8 + 2 * c:hdr + 10 + 2 * c])[0]
                _, j = _varint(data, off + ptr)       # payload size
                ids.append(_varint(data, j)[0])        # rowid
            out.append((pg, ids))
            return
        assert kind == 0x05, f"page {pg}: type {kind:#x}"
        for c in range(cells):
            ptr = struct.unpack(">H", data[hdr + 12 + 2 * c:hdr + 14 + 2 * c])[0]
            walk(struct.unpack(">I", data[off + ptr:off + ptr + 4])[0])
        walk(struct.unpack(">I", data[hdr + 8:hdr + 12])[0])

    walk(root)
    return out, page_size


def smash(db: Path, pages: list[int], page_size: int) -> None:
    """Overwrite whole pages in the middle of the file with random bytes (the file keeps its size; a fixed
    seed keeps the garbage the same on every run)."""
    rng = random.Random(17)
    with open(db, "r+b") as f:
        for pg in pages:
            f.seek((pg - 1) * page_size)
            f.write(rng.randbytes(page_size))
            f.flush()
            os.fsync(f.fileno())


def value_of_id(db: Path) -> dict[int, int]:
    """{readings rowid: reading value} while the file is still sound."""
    conn = sqlite3.connect(db)
    try:
        return {i: json.loads(v) for i, v in conn.execute("SELECT id, value FROM readings")}
    finally:
        conn.close()


def all_sent(st: Store) -> bool:
    s = st.stats()
    return s["readings_unsent"] == 0 and s["batches_unacked"] == 0 and s["queue_depth"] == 0


# ---------------------------------------------------------------- the whole path over a real receiver


@pytest.mark.e2e
async def test_C17b_runtime_corruption_recovers_and_a_real_receiver_accepts_the_chain(tmp_path: Path,
                                                                                      signing_keys) -> None:
    signer, trust_dir = signing_keys
    db = tmp_path / "gw" / "store.sqlite"
    with BackgroundReceiver(tmp_path / "rx", trust_dir) as rx:
        st = Store(db, commit_interval_s=0.05).open()
        try:
            b = Batcher(st, signer, GW, lambda: "cfg", max_readings=100)
            up = HttpsUplink(rx.url, ca_file=str(rx.cafile))
            fill(st, range(0, 500))                                    # batches 1..5, delivered
            await run_forwarder(Forwarder(st, b, up, idle_s=0.05), lambda: all_sent(st), 20)
            fill(st, range(500, 3500))
            st.put_event({"kind": "alarm", "tag": "LT-101", "state": "unack_active"})
            assert st.flush(10)
            pending = b.next_batch()                                   # batch 6: stored, never delivered
            assert pending.seq == 6 and [r["value"] for r in payload(pending.jws)["readings"]] == list(range(500, 600))
            newest_batched_ts = max(r["ts"] for r in payload(pending.jws)["readings"])
            pos = ChainPosition(position_path(db))
            assert pos.load() and pos.seq == 6 and not pos.acked and pos.hash == chain_hash(pending.jws)
            assert list(pos.unacked) == [6] and pos.unacked[6].jws == pending.jws and pos.acked_seq == 5
            assert position_path(db).stat().st_mode & 0o137 == 0      # at most 0640

            # the card fails: two leaves in the middle of the unbatched readings turn to garbage
            ids = value_of_id(db)
            checkpoint(db)
            leaves, page_size = table_leaves(db, "readings")
            unbatched = [(pg, rows) for pg, rows in leaves[:-1] if min(rows) > 700]
            victims = [unbatched[len(unbatched) // 3], unbatched[2 * len(unbatched) // 3]]
            lost = {ids[i] for _, rows in victims for i in rows}
            smash(db, [pg for pg, _ in victims], page_size)

            with pytest.raises(sqlite3.DatabaseError, match="malformed"):
                st.stats()                                             # the status loop reads past the cache
            assert st.corrupt is not None and "malformed" in st.corrupt and st.corrupt.startswith("stats")
            # polling goes on; the writer holds what it takes; the batch side refuses the damaged file
            for i in range(10_000, 10_020):
                assert st.put_reading(rec(i))
            assert st.put_event({"kind": "trip", "interlock": "LSHH-101"})
            assert not st.flush(2)
            with pytest.raises(StoreError, match="corrupt"):
                b.next_batch()
            with pytest.raises(StoreError, match="corrupt"):
                st.stats()
            assert st.restart_writer() is False

            summary = await asyncio.to_thread(st.recover_corrupt)

            assert st.corrupt is None and st.moved_aside is not None and st.moved_aside.exists()
            assert summary["moved_to"] == str(st.moved_aside)
            assert st.moved_aside.name.startswith("store.sqlite.corrupt-")
            assert summary["chain"] == {"seq": 6, "hash": chain_hash(pending.jws), "continued": True, "resent": [6]}
            # readable: 601..3500 minus the two leaves (unbatched) + 501..600 (rows of unacked batch 6)
            assert summary["salvaged"]["readings"] == 3000 - len(lost) and summary["salvaged"]["events"] == 1
            assert summary["unreadable"]["readings"] == len(lost)
            interval = summary["lost_interval"]
            assert interval["first_ts"] == newest_batched_ts and interval["count"] == len(lost)
            assert interval["first_ts"] < interval["last_ts"] <= rfc3339(time.time())
            assert st.flush(10)                                        # the held records are committed now
            assert st.unacked_batch() == (6, pending.jws)              # sent again, byte-identical

            await run_forwarder(Forwarder(st, b, up, idle_s=0.05), lambda: all_sent(st), 30)
            after = b.next_batch()
            assert after is None
            await up.aclose()
        finally:
            st.close()

        batches = rx.receiver.store.batches(GW)
        seqs = [x.seq for x in batches]
        assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) > 7
        prev = None
        for x in batches:                                              # an unbroken chain across the recovery
            assert payload(x.jws)["prev"] == prev
            prev = x.hash
        assert batches[5].jws == pending.jws
        seven = payload(batches[6].jws)
        assert seven["prev"] == chain_hash(pending.jws)
        gap = [g for g in seven["gaps"] if g["reason"] == "store_corrupt_unreadable"]
        assert len(gap) == 1 and gap[0]["count"] == len(lost) and gap[0]["first_ts"] == newest_batched_ts
        assert gap[0]["tags"] == ["LT-101"]
        ev = [e for e in seven["events"] if e["kind"] == "store_corrupt"]
        assert len(ev) == 1 and ev[0]["severity"] == "alarm" and ev[0]["moved_to"] == summary["moved_to"]
        assert ev[0]["salvaged"]["readings"] == 3000 - len(lost) and ev[0]["when"] == "running"
        kinds = Counter(e["kind"] for x in batches for e in payload(x.jws)["events"])
        assert kinds["alarm"] == 1 and kinds["trip"] == 1 and kinds["store_corrupt"] == 1
        # every reading that was readable arrives, exactly once; only the two smashed leaves are missing
        values = Counter(r["value"] for _, _, r in rx.receiver.store.readings(GW))
        expected = (set(range(3500)) - lost) | set(range(10_000, 10_020))
        assert set(values) == expected and set(values.values()) == {1}

    out = tmp_path / "export"
    assert export_batches(tmp_path / "rx" / "receiver.sqlite", out) == len(seqs)
    buf = io.StringIO()
    assert run_verify(trust_dir, sorted(out.glob("*.jws")), out=buf) == 0, buf.getvalue()
    assert f"{GW} seq 1..{len(seqs)}" in buf.getvalue()


# ---------------------------------------------------------------- the writer's commit finds it


def test_C17b_corrupt_page_in_the_writers_commit_holds_records_then_chain_goes_on(tmp_path: Path,
                                                                                  signing_keys) -> None:
    signer, trust_dir = signing_keys
    db = tmp_path / "store.sqlite"
    st = Store(db, commit_interval_s=0.05).open()
    try:
        b = Batcher(st, signer, GW, lambda: "cfg", max_readings=1000)
        fill(st, range(0, 100))
        one = b.next_batch()
        assert one.seq == 1 and b.mark_acked(1)
        pos = ChainPosition(position_path(db))
        assert pos.load() and pos.seq == 1 and pos.acked and pos.unacked == {} and pos.acked_hash == one.hash
        fill(st, range(100, 3000))
        ids = value_of_id(db)
        checkpoint(db)
        leaves, page_size = table_leaves(db, "readings")
        last_pg, last_ids = leaves[-1]                                  # where the next insert goes
        smash(db, [last_pg], page_size)
        lost = {ids[i] for i in last_ids}

        for i in range(5000, 5050):                                     # the poll tick is never refused
            assert st.put_reading(rec(i))
        deadline = time.monotonic() + 10
        while st.corrupt is None:
            assert time.monotonic() < deadline, "the writer did not notice the damaged page"
            time.sleep(0.02)
        assert st.corrupt.startswith("commit:") and "malformed" in st.corrupt
        assert st._writer_error is not None and "corrupt" in st._writer_error
        assert not st.flush(1)
        assert st._thread is not None and st._thread.is_alive()         # not crashed: holding
        with pytest.raises(StoreError):                                 # the batch side refuses the file
            st.stats()

        summary = st.recover_corrupt()
        assert summary["chain"]["seq"] == 1 and summary["chain"]["continued"]
        assert summary["salvaged"]["readings"] == 2900 - len(lost)
        assert summary["lost_interval"]["count"] == len(lost)
        assert st.flush(10)
        s = st.stats()
        assert s["readings_unsent"] == 2900 - len(lost) + 50 and s["last_acked_seq"] == 1

        two = b.next_batch()
        p2 = payload(two.jws)
        assert two.seq == 2 and p2["prev"] == one.hash
        assert [g["reason"] for g in p2["gaps"]] == ["store_corrupt_unreadable"]
        assert p2["gaps"][0]["count"] == len(lost) and p2["gaps"][0]["first_ts"] == rec(99)["ts"]
        assert [e["kind"] for e in p2["events"]] == ["store_corrupt"]
        assert b.mark_acked(2)
        got = [r["value"] for r in p2["readings"]]
        while (nxt := b.next_batch()) is not None:
            got += [r["value"] for r in payload(nxt.jws)["readings"]]
            assert b.mark_acked(nxt.seq)
        assert sorted(got) == sorted((set(range(100, 3000)) - lost) | set(range(5000, 5050)))
        pos = ChainPosition(position_path(db))
        assert pos.load() and pos.seq == st.chain.seq > 2 and pos.acked and pos.unacked == {}
    finally:
        st.close()


def test_locked_is_not_corruption(tmp_path: Path, signing_keys) -> None:
    """SQLITE_BUSY / "database is locked" on the batch side is a lock (C17a), never a corruption."""
    signer, _ = signing_keys
    assert is_corruption(sqlite3.DatabaseError("database disk image is malformed"))
    assert is_corruption(sqlite3.DatabaseError("file is not a database"))
    assert not is_corruption(sqlite3.OperationalError("database is locked"))
    assert not is_corruption(sqlite3.OperationalError("disk I/O error"))
    db = tmp_path / "store.sqlite"
    st = Store(db, commit_interval_s=0.05, busy_timeout_ms=100).open()
    try:
        fill(st, range(10))
        locker = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
        locker.execute("BEGIN EXCLUSIVE")
        try:
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                Batcher(st, signer, GW, lambda: "cfg").next_batch()
            assert st.corrupt is None
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        assert Batcher(st, signer, GW, lambda: "cfg").next_batch().seq == 1
    finally:
        st.close()


# ---------------------------------------------------------------- at start: the chain carries on too


def test_C17b_corrupt_file_at_start_carries_the_chain_on(tmp_path: Path, signing_keys) -> None:
    signer, trust_dir = signing_keys
    db = tmp_path / "store.sqlite"
    sent: dict[int, str] = {}
    with Store(db, commit_interval_s=0.05) as st:
        b = Batcher(st, signer, GW, lambda: "cfg", max_readings=100)
        fill(st, range(0, 300))
        for _ in range(3):
            x = b.next_batch()
            sent[x.seq] = x.jws
            assert b.mark_acked(x.seq)
        fill(st, range(300, 2300))
        four = b.next_batch()                                       # stored, not delivered
        sent[4] = four.jws
    leaves, page_size = table_leaves(db, "readings")
    ids = value_of_id(db)
    victim = [(pg, rows) for pg, rows in leaves[:-1] if min(rows) > 500][5]
    smash(db, [victim[0]], page_size)

    with Store(db, commit_interval_s=0.05) as st:
        assert st.moved_aside is not None and st.moved_aside.exists()
        b = Batcher(st, signer, GW, lambda: "cfg", max_readings=5000)
        assert b.next_batch() == Batch(4, four.jws)                  # the undelivered batch, byte-identical
        assert b.mark_acked(4)
        five = b.next_batch()
        sent[5] = five.jws
        p5 = payload(five.jws)
        assert five.seq == 5 and p5["prev"] == chain_hash(four.jws)
        gap = [g for g in p5["gaps"] if g["reason"] == "store_corrupt_unreadable"]
        assert len(gap) == 1 and gap[0]["count"] == -1                # unknown at start
        assert gap[0]["first_ts"] == max(r["ts"] for r in payload(four.jws)["readings"])
        ev = [e for e in p5["events"] if e["kind"] == "store_corrupt"]
        assert len(ev) == 1 and ev[0]["when"] == "start" and ev[0]["moved_to"] == str(st.moved_aside)
        lost = {ids[i] for i in victim[1]}
        assert sorted(r["value"] for r in p5["readings"]) == sorted(set(range(400, 2300)) - lost)
    out = tmp_path / "out"
    out.mkdir()
    for seq, jws in sent.items():
        (out / f"{GW}-{seq}.jws").write_text(jws)
    buf = io.StringIO()
    assert run_verify(trust_dir, sorted(out.glob("*.jws")), out=buf) == 0, buf.getvalue()


def test_corrupt_file_at_start_without_a_position_file_takes_the_position_from_its_batches(tmp_path: Path,
                                                                                           signing_keys) -> None:
    """The position file is gone too (or never written): the set-aside file's own batches table, when it
    reads back, gives the position, so the chain still carries on."""
    signer, _ = signing_keys
    db = tmp_path / "store.sqlite"
    with Store(db, commit_interval_s=0.05) as st:
        b = Batcher(st, signer, GW, lambda: "cfg", max_readings=100)
        fill(st, range(0, 1500))
        x = None
        for _ in range(2):
            x = b.next_batch()
            assert b.mark_acked(x.seq)
    position_path(db).unlink()
    leaves, page_size = table_leaves(db, "readings")
    smash(db, [[pg for pg, rows in leaves[:-1] if min(rows) > 300][3]], page_size)
    with Store(db, commit_interval_s=0.05) as st:
        assert st.moved_aside is not None and st.chain.seq == 2 and st.chain.acked
        three = Batcher(st, signer, GW, lambda: "cfg", max_readings=100).next_batch()
        assert three.seq == 3 and payload(three.jws)["prev"] == x.hash


def test_missing_database_with_a_chain_position_carries_the_chain_on(tmp_path: Path, signing_keys) -> None:
    signer, _ = signing_keys
    db = tmp_path / "store.sqlite"
    with Store(db, commit_interval_s=0.05) as st:
        b = Batcher(st, signer, GW, lambda: "cfg")
        fill(st, range(10))
        one = b.next_batch()
        assert b.mark_acked(1)
    for f in tmp_path.glob("store.sqlite*"):
        if f != position_path(db):
            f.unlink()
    with Store(db, commit_interval_s=0.05) as st:
        fill(st, range(10, 20))
        two = Batcher(st, signer, GW, lambda: "cfg").next_batch()
        p = payload(two.jws)
        assert two.seq == 2 and p["prev"] == one.hash
        assert [g["reason"] for g in p["gaps"]] == ["store_missing"]
        assert [e["kind"] for e in p["events"]] == ["store_missing"]


def test_chain_position_file_is_atomic_and_a_garbled_one_is_refused(tmp_path: Path, signing_keys) -> None:
    signer, _ = signing_keys
    db = tmp_path / "store.sqlite"
    with Store(db, commit_interval_s=0.05) as st:
        b = Batcher(st, signer, GW, lambda: "cfg")
        fill(st, range(5))
        b.next_batch()
    path = position_path(db)
    doc = json.loads(path.read_text())
    assert doc["seq"] == 1 and doc["acked"] is False and len(doc["unacked"]) == 1
    assert not list(tmp_path.glob("*.tmp"))
    path.write_text(path.read_text().replace('"seq":1', '"seq":7', 1))
    with pytest.raises(ChainPositionError, match="checksum"):
        ChainPosition(path).load()
    with Store(db, commit_interval_s=0.05) as st:                  # a sound database wins; the file is rewritten
        assert st.chain.seq == 1
    assert ChainPosition(path).load()


def test_recover_corrupt_is_a_no_op_on_a_sound_store(tmp_path: Path) -> None:
    with Store(tmp_path / "s.sqlite", commit_interval_s=0.05) as st:
        fill(st, range(3))
        assert st.recover_corrupt()["moved_to"] is None and st.moved_aside is None
        assert st.stats()["readings_total"] == 3


def test_batch_side_call_during_recovery_is_refused_not_blocked(tmp_path: Path, signing_keys) -> None:
    """While recover_corrupt() runs, batch-side calls (the Forwarder, stats) get StoreError at once."""
    signer, _ = signing_keys
    db = tmp_path / "store.sqlite"
    st = Store(db, commit_interval_s=0.05).open()
    try:
        fill(st, range(2000))
        checkpoint(db)
        leaves, page_size = table_leaves(db, "readings")
        smash(db, [leaves[len(leaves) // 2][0]], page_size)
        with pytest.raises(sqlite3.DatabaseError):
            st.stats()
        errors: list[BaseException] = []
        done = threading.Event()

        def poke() -> None:
            while not done.is_set():
                try:
                    st.stats()
                except StoreError:
                    pass
                except BaseException as e:   # noqa: BLE001
                    errors.append(e)
                time.sleep(0.001)

        t = threading.Thread(target=poke)
        t.start()
        try:
            st.recover_corrupt()
        finally:
            done.set()
            t.join(5)
        assert errors == [] and st.corrupt is None
    finally:
        st.close()
