"""The receiver's store on PostgreSQL as well as SQLite (gateway/regulator/storage.py), against a real throw-away
cluster (hil/pgcluster.py) and real receivers over HTTPS:

* the decisions that matter (accept, duplicate, conflict, gap, chain broken, unknown key, key binding, key change,
  announce_key) on both backends;
* migrations: a fresh store gets every version, an SQLite store from before migrations is adopted, a newer version
  is refused with one line, two processes opening a fresh store at once apply each step once;
* the race: two receiver processes on one database, every batch of several gateways posted to both at once; each
  (gateway, seq) is stored once with the exact bytes, the chains verify, every 200 is visible from a fresh
  connection when it arrives, and exactly one answer per batch says "accepted";
* no ack without commit: a COMMIT that fails (a deferred constraint trigger that raises, or that ends its own
  backend) answers 503 with Retry-After and stores nothing; the resend is accepted;
* parked batches for out-of-order delivery (Receiver.submit(unordered=True)) on both backends;
* ``receiver export`` with --store URL, --gateway and --since.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import sqlite3
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from conftest import ROOT, gateway_signers, run_cli
from gateway.chain.signing import Signer, chain_hash
from gateway.model import rfc3339
from gateway.regulator.receiver import (BackgroundReceiver, Receiver, ReceiverError, ReceiverStore,
                                        signed_request_headers)
from gateway.regulator.storage import MIGRATIONS, SCHEMA_VERSION, parse_since
from gateway.regulator.verify import verify_files
from hil.pgcluster import PgCluster, available
from hil.rig import ReceiverProc
from test_receiver import chain, flip, post

pytestmark = pytest.mark.e2e

_why = available()
if _why:
    pytest.skip(_why, allow_module_level=True)

_DB_COUNTER = iter(range(1, 10_000))


@pytest.fixture(scope="module")
def pg(tmp_path_factory):
    with PgCluster(tmp_path_factory.mktemp("pg")) as cluster:
        yield cluster


@pytest.fixture()
def pg_url(pg):
    return pg.createdb(f"rx{next(_DB_COUNTER)}")


@pytest.fixture(params=["sqlite", "postgresql"])
def target(request, tmp_path):
    """A fresh store of each backend: an SQLite path or a postgresql:// URL of a new database."""
    if request.param == "sqlite":
        return str(tmp_path / "rx.sqlite")
    return request.getfixturevalue("pg_url")


@pytest.fixture()
def keys(tmp_path):
    """Flat trust dir (unbound keys, bound on first use) with A, B and D; C is untrusted."""
    return gateway_signers(tmp_path, ("A", "B", "D"), bound=False, untrusted=("C",))


def _rows(url: str, sql: str, params: tuple = ()) -> list[tuple]:
    """Rows of one query on a fresh connection (what another process sees now)."""
    with psycopg.connect(url, autocommit=True) as c:
        cur = c.execute(sql, params)
        return cur.fetchall() if cur.description is not None else []


# ------------------------------------------------------------------------------------------------ decisions


def test_decisions_are_the_same_on_both_backends(tmp_path, keys, target):
    trust, s = keys
    b = chain(s["A"], "gw-01", 1, 3)
    new = Signer(Ed25519PrivateKey.generate())
    b += chain(s["A"], "gw-01", 4, 4, prev=chain_hash(b[-1]), extra={4: new.announcement("gw-01", 4)})
    b += chain(new, "gw-01", 5, 5, prev=chain_hash(b[-1]))
    with BackgroundReceiver(tmp_path / "rx", trust, store=target) as rx, \
            httpx.Client(base_url=rx.url, verify=rx.ssl_context(), timeout=10) as c:
        assert rx.receiver.store.dialect == ("postgresql" if "://" in target else "sqlite")
        for i, jws in enumerate(b[:3], start=1):
            assert post(c, jws).json() == {"gateway_id": "gw-01", "seq": i, "status": "accepted",
                                           "hash": chain_hash(jws)}
        assert post(c, b[1]).json()["status"] == "duplicate"
        other = chain(s["A"], "gw-01", 1, 2, per=2)[1]
        r = post(c, other)
        assert r.status_code == 409 and r.json()["error"].startswith("conflict") and r.json()["expected_seq"] == 4
        r = post(c, chain(s["A"], "gw-01", 5, 5, prev=chain_hash(b[3]))[0])   # seq 5 before 4
        assert r.status_code == 409 and r.json() == {"error": "gap: expected seq 4", "expected_seq": 4}
        r = post(c, chain(s["A"], "gw-01", 4, 4, prev=chain_hash(other))[0])
        assert r.status_code == 409 and r.json()["error"].startswith("chain broken")
        assert post(c, flip(b[3])).status_code == 401
        r = post(c, chain(s["C"], "gw-01", 4, 4, prev=chain_hash(b[2]))[0])
        assert r.status_code == 401 and "unknown key" in r.json()["error"]
        assert post(c, chain(s["B"], "gw-02", 1, 1)[0]).json()["status"] == "accepted"   # B bound to gw-02
        r = post(c, chain(s["B"], "gw-01", 4, 4, prev=chain_hash(b[2]))[0])
        assert r.status_code == 401 and "is bound to gateway gw-02" in r.json()["error"]
        r = post(c, chain(s["D"], "gw-01", 4, 4, prev=chain_hash(b[2]))[0])   # trusted, unbound, not announced
        assert r.status_code == 401 and r.json()["error"].startswith("key change")
        assert [post(c, x).json()["status"] for x in b[3:]] == ["accepted", "accepted"]   # announce, then new key
        r = post(c, chain(new, "gw-07", 1, 1)[0])   # the announced key is bound to gw-01
        assert r.status_code == 401 and "by its announcement" in r.json()["error"]
        st = c.get("/v1/gateways/gw-01/status", headers=signed_request_headers(s["A"], "gw-01")).json()
        assert (st["last_seq"], st["count"], st["gaps"], st["readings"]) == (5, 5, [], 15)
        stats = rx.receiver.stats()
        assert (stats["accepted"], stats["duplicate"]) == (6, 1)
    # a restarted receiver on the same store still knows the announced key and the chain
    with BackgroundReceiver(tmp_path / "rx", trust, store=target) as rx, \
            httpx.Client(base_url=rx.url, verify=rx.ssl_context(), timeout=10) as c:
        assert post(c, chain(new, "gw-01", 6, 6, prev=chain_hash(b[-1]))[0]).json()["status"] == "accepted"
    with ReceiverStore(target, create=False) as st:
        assert [x.jws for x in st.batches("gw-01")][:5] == b
        assert st.gateways() == ["gw-01", "gw-02"] and st.readings_count("gw-01") == 18
        assert st.announced_for(new.kid) == "gw-01"


# ------------------------------------------------------------------------------------------------ migrations


def _versions(target: str) -> list[tuple[int, str]]:
    """schema_migrations as another process reads it (no ReceiverStore in between)."""
    sql = "SELECT version, description FROM schema_migrations ORDER BY 1"
    if "://" in target:
        return [(int(v), d) for v, d in _rows(target, sql)]
    db = sqlite3.connect(target)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def test_a_fresh_store_gets_every_migration_and_a_newer_one_is_refused(target):
    with ReceiverStore(target) as st:
        assert st.schema_version == SCHEMA_VERSION
    assert _versions(target) == [(m.version, m.description) for m in MIGRATIONS]
    with ReceiverStore(target) as st:   # opening again applies nothing
        st._x("INSERT INTO schema_migrations (version, applied_at, description) VALUES (?, ?, ?)",
              (SCHEMA_VERSION + 1, rfc3339(time.time()), "from a later release"))
    assert len(_versions(target)) == SCHEMA_VERSION + 1
    for create in (True, False):
        with pytest.raises(ReceiverError) as ei:
            ReceiverStore(target, create=create)
        msg = str(ei.value)
        assert "\n" not in msg and f"schema version {SCHEMA_VERSION + 1} is newer" in msg, msg
        assert "upgrade hazard-gateway" in msg


async def test_export_of_a_newer_store_is_one_line_exit_2(pg_url, tmp_path):
    ReceiverStore(pg_url).close()
    _rows(pg_url, "INSERT INTO schema_migrations VALUES (99, 'x', 'later')")
    code, out, err = await run_cli("receiver", "export", "--store", pg_url, "--out", str(tmp_path / "out"))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "schema version 99 is newer" in err, err


_LEGACY = """
CREATE TABLE batches (gateway_id TEXT NOT NULL, seq INTEGER NOT NULL, jws TEXT NOT NULL, hash TEXT NOT NULL,
    kid TEXT NOT NULL, created_at TEXT NOT NULL, received_at TEXT NOT NULL, n_readings INTEGER NOT NULL,
    n_events INTEGER NOT NULL, PRIMARY KEY (gateway_id, seq));
CREATE INDEX batches_kid ON batches (kid);
CREATE TABLE keys (kid TEXT PRIMARY KEY, jwk TEXT NOT NULL, gateway_id TEXT NOT NULL, announced_by TEXT NOT NULL,
    announced_in_seq INTEGER NOT NULL, added_at TEXT NOT NULL);
"""


def test_an_sqlite_store_from_before_migrations_is_adopted_as_version_1(tmp_path, keys):
    trust, s = keys
    path = tmp_path / "old.sqlite"
    b = chain(s["A"], "gw-01", 1, 2)
    db = sqlite3.connect(path)
    db.executescript(_LEGACY)
    db.execute("INSERT INTO batches VALUES ('gw-01', 1, ?, ?, ?, 'c', '2026-01-01T00:00:00.000Z', 3, 0)",
               (b[0], chain_hash(b[0]), s["A"].kid))
    db.commit()
    db.close()
    with ReceiverStore(path, create=False) as st:   # export/reports of an old store work without migrating it
        assert st.schema_version == 1 and st.last_seq("gw-01") == 1
    rx = Receiver(path, trust)
    try:
        assert rx.submit(b[1].encode())[1]["status"] == "accepted"   # the old chain goes on
        assert rx.submit(b[0].encode())[1]["status"] == "duplicate"
    finally:
        rx.close()
    v = _versions(str(path))
    assert [n for n, _ in v] == list(range(1, SCHEMA_VERSION + 1)) and v[0][1].startswith("adopted"), v


_OPEN = ("import sys, time\nfrom gateway.regulator.storage import ReceiverStore\n"
         "while time.time() < float(sys.argv[2]): time.sleep(0.001)\n"
         "print(ReceiverStore(sys.argv[1]).schema_version)\n")


def test_two_processes_opening_a_fresh_store_at_once_apply_each_migration_once(target):
    go = time.time() + 1.5   # both start importing now and open at the same instant
    procs = [subprocess.Popen([sys.executable, "-c", _OPEN, target, str(go)], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert [o.strip() for o, _ in outs] == [str(SCHEMA_VERSION)] * 2
    assert [n for n, _ in _versions(target)] == list(range(1, SCHEMA_VERSION + 1))


# ------------------------------------------------------------------------------------------------ the race


def test_two_receiver_processes_on_one_database_store_each_batch_exactly_once(tmp_path, pg_url):
    gateways = [f"gw-{i:02d}" for i in range(1, 5)]
    n = 12
    trust, signers = gateway_signers(tmp_path, gateways)
    batches = {gid: chain(signers[gid], gid, 1, n) for gid in gateways}
    procs = [ReceiverProc(tmp_path / f"rx{i}", trust) for i in (1, 2)]
    for p in procs:
        p.store = pg_url   # the CLI takes the URL as --store
    answers: list[tuple[int, str, int, int, str]] = []   # (receiver, gid, seq, http status, status/error)
    lock = threading.Lock()
    invisible: list[tuple[str, int]] = []

    steps = {gid: threading.Barrier(2) for gid in gateways}

    def send(i: int, gid: str) -> None:
        """All of gid's batches to receiver i, each until it is acknowledged. The two senders of a gateway start
        each step together (a barrier): for half the gateways both post the same batch at once, so the two
        processes race for the same (gateway, seq); for the other half receiver 2 gets each pair swapped
        (2, 1, 4, 3...), so it runs ahead of the chain into gaps while receiver 1 stores the predecessor."""
        order = list(range(1, n + 1))
        if i == 1 and gateways.index(gid) % 2:
            order = [x for pair in zip(order[1::2], order[::2]) for x in pair]
        with httpx.Client(verify=ssl.create_default_context(cafile=str(procs[i].cert)), timeout=20) as c:
            assert c.get(procs[i].url.replace("/v1/batches", "/v1/health")).status_code == 200   # warm TLS
            for seq in order:
                jws = batches[gid][seq - 1]
                try:
                    steps[gid].wait(60)
                except threading.BrokenBarrierError:
                    return   # the other sender failed; its error is reported
                for _ in range(400):
                    r = c.post(procs[i].url, content=jws.encode(), headers={"content-type": "application/jose"})
                    doc = r.json()
                    if r.status_code == 200:
                        # no ack before commit: another connection sees the exact bytes the moment the answer is in
                        if _rows(pg_url, "SELECT jws FROM batches WHERE gateway_id=%s AND seq=%s",
                                 (gid, seq)) != [(jws,)]:
                            with lock:
                                invisible.append((gid, seq))
                    with lock:
                        answers.append((i, gid, seq, r.status_code, doc.get("status") or doc.get("error", "")))
                    if r.status_code == 200:
                        break
                    if not (r.status_code == 503 or doc.get("error", "").startswith("gap")):
                        steps[gid].abort()
                        raise AssertionError((r.status_code, doc))
                    time.sleep(0.01)
                else:
                    steps[gid].abort()
                    raise AssertionError(f"{gid} seq {seq} never acknowledged by receiver {i + 1}")

    try:
        for p in procs:
            p.start()
        with concurrent.futures.ThreadPoolExecutor(len(gateways) * 2) as pool:
            for f in [pool.submit(send, i, gid) for gid in gateways for i in (0, 1)]:
                f.result(timeout=120)
    finally:
        for p in procs:
            p.close()

    assert not invisible, f"acknowledged before visible: {invisible}"
    acks = Counter((gid, seq, st) for _, gid, seq, code, st in answers if code == 200)
    for gid in gateways:
        for seq in range(1, n + 1):   # one receiver stored it, the other found it stored
            assert (acks[(gid, seq, "accepted")], acks[(gid, seq, "duplicate")]) == (1, 1), (gid, seq)
    accepted_by = Counter(i for i, _, _, code, st in answers if code == 200 and st == "accepted")
    assert sum(accepted_by.values()) == len(gateways) * n and set(accepted_by) == {0, 1}, accepted_by
    # the advisory locks make the second writer of a (gateway, seq) wait and answer "duplicate": no 503
    # (without them the loser's INSERT fails on the primary key and the sender has to come back)
    others = Counter(st for _, _, _, code, st in answers if code != 200)
    assert all(k.startswith("gap") for k in others), others

    rows = _rows(pg_url, "SELECT gateway_id, seq, jws FROM batches ORDER BY gateway_id, seq")
    assert rows == [(gid, seq, batches[gid][seq - 1]) for gid in gateways for seq in range(1, n + 1)]
    out = tmp_path / "export"
    code = subprocess.run([sys.executable, "-m", "gateway.cli", "receiver", "export", "--store", pg_url, "--out",
                           str(out)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert code.returncode == 0, code.stderr
    files = sorted(out.glob("*.jws"))
    assert len(files) == len(gateways) * n
    rep = verify_files(trust, files)
    assert rep.ok, [f for f in rep.files if not f.ok]
    assert rep.chains == {gid: (1, n) for gid in gateways}


# ------------------------------------------------------------------------------------------------ no ack without commit

_FAULT = """
CREATE TABLE fault (mode TEXT NOT NULL);
CREATE FUNCTION fault_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE m text;
BEGIN
    SELECT mode INTO m FROM fault LIMIT 1;
    IF m = 'raise' THEN
        RAISE EXCEPTION 'injected failure at COMMIT';
    ELSIF m = 'terminate' THEN
        PERFORM pg_terminate_backend(pg_backend_pid());
        PERFORM pg_sleep(5);
    END IF;
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER fault_at_commit AFTER INSERT ON batches DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION fault_at_commit();
"""


def test_a_failed_commit_answers_503_stores_nothing_and_the_resend_is_accepted(tmp_path, keys, pg_url):
    trust, s = keys
    b = chain(s["A"], "gw-01", 1, 3)
    with BackgroundReceiver(tmp_path / "rx", trust, store=pg_url) as rx, \
            httpx.Client(base_url=rx.url, verify=rx.ssl_context(), timeout=20) as c:
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute(_FAULT)
            for seq, mode in ((1, "raise"), (2, "terminate")):
                admin.execute("INSERT INTO fault VALUES (%s)", (mode,))
                r = post(c, b[seq - 1])   # the deferred trigger fires inside COMMIT
                assert r.status_code == 503 and r.headers["retry-after"] == "1", (mode, r.text)
                assert "store unavailable" in r.json()["error"]
                assert _rows(pg_url, "SELECT seq FROM batches WHERE gateway_id='gw-01' AND seq=%s", (seq,)) == []
                admin.execute("DELETE FROM fault")
                assert post(c, b[seq - 1]).json()["status"] == "accepted", mode   # a fresh connection if need be
            # every pooled connection ended behind the receiver's back: the next request still goes through
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE application_name = 'hazard-gateway-receiver'")
            assert post(c, b[2]).json()["status"] == "accepted"
        assert rx.receiver.stats()["rejected_store_busy"] == 2
    assert [r[0] for r in _rows(pg_url, "SELECT seq FROM batches ORDER BY seq")] == [1, 2, 3]


# ------------------------------------------------------------------------------------------------ parked batches


def test_parked_batches_are_taken_in_order_once_the_gap_closes(keys, target):
    trust, s = keys
    b = chain(s["A"], "gw-01", 1, 5)
    bad6 = chain(s["A"], "gw-01", 6, 6, prev="A" * 43)[0]   # verifies, but does not link to seq 5
    rx = Receiver(target, trust)
    try:
        assert rx.submit(b[2].encode()) == (409, {"error": "gap: expected seq 1", "expected_seq": 1})   # strict
        parked = {"gateway_id": "gw-01", "status": "parked", "expected_seq": 1}
        assert rx.submit(b[2].encode(), unordered=True) == (202, {**parked, "seq": 3})
        assert rx.submit(b[1].encode(), unordered=True) == (202, {**parked, "seq": 2})
        assert rx.submit(b[2].encode(), unordered=True) == (202, {**parked, "seq": 3})   # resend: parked again
        r = rx.submit(chain(s["A"], "gw-01", 1, 2, per=1)[1].encode(), unordered=True)   # another body for seq 2
        assert r[0] == 409 and r[1]["error"] == "conflict: gw-01 seq 2 is already parked with a different body"
        assert rx.store.parked_seqs() == [("gw-01", 2), ("gw-01", 3)]
        assert rx.submit(b[0].encode(), unordered=True) == (200, {"gateway_id": "gw-01", "seq": 1,
                                                                  "status": "accepted", "hash": chain_hash(b[0])})
        assert [x.jws for x in rx.store.batches("gw-01")] == b[:3] and rx.store.parked_seqs() == []
        assert rx.stats()["accepted"] == 3
        # a parked successor that does not link is judged as if it had just arrived: refused and dropped
        assert rx.submit(bad6.encode(), unordered=True)[0] == 202
        assert rx.submit(b[4].encode(), unordered=True)[0] == 202
        assert rx.submit(b[3].encode())[1]["status"] == "accepted"   # an ordered accept drains too
        assert rx.store.last_seq("gw-01") == 5 and rx.store.parked_seqs() == []
        assert rx.stats()["rejected_chain"] == 1
        summary = rx.store.summaries()
        assert [(g["gateway_id"], g["count"], g["last_seq"], g["parked"]) for g in summary] == [("gw-01", 5, 5, 0)]
    finally:
        rx.close()


def test_put_basic_data_keeps_the_record_of_the_highest_seq(target):
    with ReceiverStore(target) as st:
        assert st.basic_data("gw-01") is None
        for seq, h in ((2, "sha256:b"), (5, "sha256:e"), (3, "sha256:c")):
            with st.transaction("gw-01"):
                st.put_basic_data("gw-01", seq, h, {"site": "tank farm 东区", "seq": seq}, f"2026-01-0{seq}T00:00:00Z")
        assert st.basic_data("gw-01") == {"gateway_id": "gw-01", "seq": 5, "config_hash": "sha256:e",
                                          "received_at": "2026-01-05T00:00:00Z",
                                          "doc": {"site": "tank farm 东区", "seq": 5}}


# ------------------------------------------------------------------------------------------------ export


async def test_cli_export_from_a_url_by_gateway_and_since(tmp_path, keys, pg_url):
    trust, s = keys
    rx = Receiver(pg_url, trust)
    try:
        for jws in chain(s["A"], "gw-01", 1, 2) + chain(s["B"], "gw-02", 1, 1):
            assert rx.submit(jws.encode())[0] == 200
        time.sleep(0.005)
        since = rfc3339(time.time())
        time.sleep(0.005)
        b3 = chain(s["A"], "gw-01", 1, 3)[2]
        assert rx.submit(b3.encode())[0] == 200
    finally:
        rx.close()
    out = tmp_path / "all"
    code, stdout, err = await run_cli("receiver", "export", "--store", pg_url, "--out", str(out))
    assert code == 0 and "exported 4 batches" in stdout, err
    code, stdout, err = await run_cli("receiver", "export", "--store", pg_url, "--out", str(tmp_path / "g"),
                                      "--gateway", "gw-02")
    assert code == 0 and [p.name for p in (tmp_path / "g").iterdir()] == ["gw-02-1.jws"], err
    # since: an RFC 3339 time with an offset names the same instant
    local = since.replace("Z", "+00:00").replace("T", " ")
    for given in (since, local):
        d = tmp_path / f"since{len(given)}"
        code, stdout, err = await run_cli("receiver", "export", "--store", pg_url, "--out", str(d), "--since", given)
        assert code == 0 and [p.name for p in d.iterdir()] == ["gw-01-3.jws"], (given, err)
        assert (d / "gw-01-3.jws").read_text() == b3
    code, stdout, err = await run_cli("receiver", "export", "--store", pg_url, "--out", str(tmp_path / "x"),
                                      "--since", "yesterday")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "not an RFC 3339" in err, err
    assert not (tmp_path / "x").exists()


def test_parse_since_gives_the_stored_form_rounded_up_to_the_millisecond():
    assert parse_since("2026-01-31T08:00:00+08:00") == "2026-01-31T00:00:00.000Z"
    assert parse_since("2026-01-31t00:00:00.0001z") == "2026-01-31T00:00:00.001Z"
    assert parse_since("2026-01-31T00:00:00.123456789Z") == "2026-01-31T00:00:00.124Z"
    for bad in ("2026-01-31", "2026-01-31T00:00:00", "2026-02-30T00:00:00Z", "now"):
        with pytest.raises(ValueError):
            parse_since(bad)


def test_store_errors_are_one_line(tmp_path, pg):
    with pytest.raises(ReceiverError, match=r"^postgresql://postgres:\*\*\*@127\.0\.0\.1:\d+/nosuchdb: cannot open "
                                            r"receiver store: .*nosuchdb"):
        ReceiverStore(pg.url("nosuchdb").replace("postgres@", "postgres:secret@"))
    with pytest.raises(ReceiverError, match="not a receiver store"):
        ReceiverStore(pg.createdb("empty"), create=False)


def _server_processes(pg: PgCluster) -> list[int]:
    """The postmaster and its children (backends, background workers), from /proc."""
    pm = int((pg.datadir / "postmaster.pid").read_text().split("\n", 1)[0])
    pids = [pm]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pm:
                pids.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return pids


def test_a_frozen_or_stopped_database_gets_a_503_answer_never_a_hang_or_a_500(tmp_path):
    """A hung PostgreSQL (every server process stopped with SIGSTOP: a partition that drops packets looks the
    same) must not hang /v1/health: it answers 503 within its bound, still naming the gateways it knew. A stopped
    one answers every POST 503 + Retry-After (a connection refused on an empty pool was a bare 500 before)."""
    trust, signers = gateway_signers(tmp_path, ("gw-1",))
    batches = chain(signers["gw-1"], "gw-1", 1, 3)
    with PgCluster(tmp_path / "pg-outage") as pg:
        url = pg.createdb("rx")
        with BackgroundReceiver(tmp_path / "rx", trust, store=url) as rx, \
                httpx.Client(base_url=rx.url, verify=rx.ssl_context(), timeout=30) as c:
            assert post(c, batches[0]).status_code == 200
            assert c.get("/v1/health").json()["gateways"] == 1
            frozen = _server_processes(pg)
            for pid in frozen:
                os.kill(pid, signal.SIGSTOP)
            try:
                t0 = time.monotonic()
                h = c.get("/v1/health")
                waited = time.monotonic() - t0
            finally:
                for pid in frozen:
                    os.kill(pid, signal.SIGCONT)
            assert h.status_code == 503 and "did not answer" in h.json()["store"], h.text
            assert h.json()["gateways"] == 1 and waited < 25
            pg.stop()
            for _ in range(3):
                r = post(c, batches[1])
                assert r.status_code == 503 and r.headers["retry-after"] == "1", (r.status_code, r.text)
                assert "cannot connect" in r.json()["error"]
            h = c.get("/v1/health")
            assert h.status_code == 503 and h.json()["ok"] is False and h.json()["gateways"] == 1
