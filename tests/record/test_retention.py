"""Retention (C16): on_full policies, the time floor, the `check` warning; report by exception.

Real SQLite files, a real Gateway object fed readings through its poll-tick entry point
(Gateway.on_readings), and the CLI as a subprocess for `check`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.runtime.gateway import Gateway
from gateway.model import Quality, Reading
from gateway.record.report import ReportFilter, ReportRule
from gateway.record.store import Store
from conftest import sql_rows as rows

T0 = 1_760_000_000.0


def rec(i: int, tag: str = "TT-1") -> dict:
    return Reading(tag=tag, value=float(i), unit="degC", quality=Quality.GOOD, ts=T0 + i).to_record()


# ---------------------------------------------------------------- on_full: stop_polling


def test_C16_stop_polling_keeps_everything_stored_and_records_the_refusal(tmp_path: Path) -> None:
    db = tmp_path / "s.sqlite"
    cap = 400_000
    st = Store(db, commit_interval_s=0.02, max_bytes=cap, on_full="stop_polling").open()
    accepted = refused = 0
    i = 0
    while refused < 500 and i < 50_000:
        for _ in range(200):
            if st.put_reading(rec(i)):
                accepted += 1
            else:
                refused += 1
            i += 1
        assert st.flush(10)
    assert st.full and refused >= 500
    assert st.put_event({"kind": "alarm", "type": "alarm", "id": "TT-1.HH"})   # alarm events still go
    assert st.flush(10)
    st.close()
    # nothing that was stored was deleted: ids 1..accepted, all present
    (n, lo, hi), = rows(db, "SELECT count(*), min(id), max(id) FROM readings")
    assert n == accepted and lo == 1 and hi == accepted
    gaps = rows(db, "SELECT reason, count, tags FROM gaps")
    assert sum(c for r, c, _ in gaps if r == "store_full_stop_polling") == refused
    assert {json.loads(t)[0] for r, _, t in gaps} == {"TT-1"}
    kinds = [k for k, in rows(db, "SELECT kind FROM events")]
    assert kinds.count("buffer_overflow") == 1 and "alarm" in kinds
    used = Store(db).open()
    try:
        assert used.used_bytes(used._bconn) <= cap * 1.1
    finally:
        used.close()


def test_C16_stop_polling_frees_only_acked_records_past_the_floor(tmp_path: Path) -> None:
    from gateway.record.batches import Batcher
    from gateway.chain.signing import Signer, keygen

    keygen(tmp_path / "k")
    signer = Signer.from_file(tmp_path / "k" / "private.pem")
    db = tmp_path / "s.sqlite"
    cap = 300_000
    for floor_s, expect_free in ((86400.0, False), (0.0, True)):
        if db.exists():
            for f in tmp_path.glob("s.sqlite*"):
                f.unlink()
        st = Store(db, commit_interval_s=0.02, max_bytes=cap, on_full="stop_polling", retention_floor_s=floor_s).open()
        i = 0
        while not st.full and i < 50_000:
            for _ in range(200):
                st.put_reading(rec(i))
                i += 1
            st.flush(10)
        b = Batcher(st, signer, "gw", lambda: "c", max_readings=1000)
        while (batch := b.next_batch()) is not None:      # everything delivered and acknowledged
            b.mark_acked(batch.seq)
        time.sleep(0.01)
        st.put_reading(rec(i))                             # the writer re-evaluates on the next cycle
        st.flush(10)
        time.sleep(0.1)
        assert st.full is not expect_free, f"floor {floor_s}"
        assert st.put_reading(rec(i + 1)) is expect_free
        st.flush(10)
        total = st.stats()["readings_total"]
        st.close()
        if expect_free:
            assert total < i                               # acked records past the floor were deleted
        else:
            assert total >= i - 1                          # younger than the floor: all kept


def test_store_rejects_unknown_policy(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="on_full"):
        Store(tmp_path / "x.sqlite", on_full="drop_newest")


# ---------------------------------------------------------------- check warns (C16 last sentence)


CFG = """gateway: {id: site-1, state_dir: state}
keys: {private_key: k/private.pem}
store:
  max_bytes: %d
  retention_days: 30
  on_full: %s
devices:
  - name: plc
    protocol: modbus_tcp
    host: 127.0.0.1
    port: 1
    poll_interval_ms: 1000
    tags:
%s
"""


def cfg_text(max_bytes: int, ntags: int = 10, on_full: str = "drop_oldest", extra_tag: str = "") -> str:
    tags = "".join(f"      - {{name: T{i}, address: {30001 + 2 * i}, type: float32}}\n" for i in range(ntags))
    return CFG % (max_bytes, on_full, tags + extra_tag)


@pytest.mark.e2e
def test_C16_check_refuses_a_max_bytes_that_cannot_hold_the_retention_floor(tmp_path: Path) -> None:
    from gateway.config import ConfigError
    from gateway.chain.signing import keygen
    keygen(tmp_path / "k")
    f = tmp_path / "g.yaml"
    f.write_text(cfg_text(50 * 1024 * 1024))              # 10 tags at 1 Hz for 30 days: ~2.6 GB needed
    with pytest.raises(ConfigError) as ei:                # the 30-day floor is hard (SAWS order No. 40)
        load_config(f)
    e = str(ei.value)
    assert e.startswith(f"{f}:4:3: store.max_bytes:") and "retention_days 30" in e and "10 readings/s" in e
    assert "store.retention_floor" in e                   # says how to waive it
    p = subprocess.run([sys.executable, "-m", "gateway.cli", "check", str(f)], capture_output=True, text=True)
    assert p.returncode == 2 and f"{f}:4:3: store.max_bytes:" in p.stderr
    # waived with a reason (tests/record/test_retention_floor.py has the rest): the old warning again
    f.write_text(cfg_text(50 * 1024 * 1024, on_full='drop_oldest\n  retention_floor: {waive: true, reason: "lab"}'))
    cfg = load_config(f)
    assert len(cfg.warnings) == 1
    w = str(cfg.warnings[0])
    assert w.startswith(f"{f}:4:3: warning: store.max_bytes:") and "retention_days 30" in w and "10 readings/s" in w
    f.write_text(cfg_text(4 * 1024 ** 3))                 # 4 GiB holds 30 days of 10 readings/s
    assert load_config(f).warnings == []
    f.write_text(cfg_text(50 * 1024 * 1024, on_full="stop_everything"))
    p = subprocess.run([sys.executable, "-m", "gateway.cli", "check", str(f)], capture_output=True, text=True)
    assert p.returncode == 2 and f"{f}:6:12: store.on_full:" in p.stderr


# ---------------------------------------------------------------- report by exception


def test_report_filter_table() -> None:
    f = ReportFilter({"A": ReportRule(deadband=0.5, max_silence_s=10.0)})
    g, b = Quality.GOOD, Quality.BAD

    def r(v, q=g, reason=None):
        return Reading(tag="A", value=v, unit="m", quality=q, ts=T0, reason=reason)

    steps = [  # (reading, mono, expected keep)
        (r(1.0), 0.0, True),          # first
        (r(1.2), 1.0, False),         # within deadband of 1.0
        (r(1.5), 2.0, False),         # exactly the deadband: not more than it
        (r(1.51), 3.0, True),         # moved more than 0.5 from 1.0
        (r(1.6), 4.0, False),
        (r(None, b, "timeout"), 5.0, True),   # quality change
        (r(None, b, "timeout"), 6.0, False),
        (r(None, b, "exception 02"), 7.0, True),  # reason change
        (r(1.6), 8.0, True),          # back to good
        (r(1.6), 17.9, False),
        (r(1.6), 18.0, True),         # max_silence reached
    ]
    for i, (reading, mono, keep) in enumerate(steps):
        assert f.keep(reading, mono) is keep, f"step {i}: {reading.value} {reading.quality} at {mono}"
    assert f.keep(r(1.6), 18.1, force=True) is True
    assert ReportFilter({}).keep(r(1.0), 0.0) is True     # a tag without report: every reading
    s = ReportFilter({"A": ReportRule()})                   # deadband 0: every change, bools and strings too
    assert [s.keep(r(v), t) for t, v in enumerate([True, True, False, "x", "x", "y"])] == \
        [True, False, True, True, False, True]


def test_report_by_exception_cuts_the_record_path_not_the_safety_path(tmp_path: Path) -> None:
    f = tmp_path / "g.yaml"
    extra = ("      - {name: LVL, address: 30021, type: float32, unit: m, alarms: {H: 10.0},\n"
             "         report: {deadband: 0.5, max_silence_s: 0.3}}\n")
    f.write_text(cfg_text(4 * 1024 ** 3, ntags=1, extra_tag=extra))
    cfg = load_config(f)
    gw = Gateway(cfg)
    gw.store.open()
    try:
        values = [5.0 + 0.05 * i for i in range(100)]       # 5.00 .. 9.95, a slow rise
        values += [10.02]                                    # crosses H by 0.02: inside the deadband
        for i, v in enumerate(values):
            gw.on_readings([Reading(tag="LVL", value=v, unit="m", quality=Quality.GOOD, ts=T0 + i),
                            Reading(tag="T0", value=1.0, unit="", quality=Quality.GOOD, ts=T0 + i)])
        assert [a.to_record()["id"] for a in gw.alarms.active()] == ["LVL.H"]   # the safety path saw 10.02
        time.sleep(0.35)
        gw.on_readings([Reading(tag="LVL", value=10.02, unit="m", quality=Quality.GOOD, ts=T0 + 200)])
        assert gw.store.flush(10)
        stored = [(json.loads(v), ts) for v, ts in rows(gw.store.path,
                                                        "SELECT value, ts FROM readings WHERE tag='LVL' ORDER BY id")]
        t0 = len(rows(gw.store.path, "SELECT 1 FROM readings WHERE tag='T0'"))
        events = [json.loads(d) for d, in rows(gw.store.path, "SELECT data FROM events")]
    finally:
        gw.store.close()
    vals = [v for v, _ in stored]
    # first, then each move of more than 0.5 m, then the alarm value (forced), then the max-silence report
    assert vals[0] == 5.0 and vals[-2:] == [10.02, 10.02]
    assert all(abs(b - a) > 0.5 for a, b in zip(vals[:-3], vals[1:-2]))
    assert 10 <= len(vals) <= 14, vals
    assert t0 == 101                                         # a tag without report: every poll recorded
    assert any(e.get("type") == "alarm" and e.get("id") == "LVL.H" for e in events)   # alarm events always go
