"""gateway.record.trend: the status page's read-only trend query, on a store the real writer (Store) filled."""

from __future__ import annotations

import sqlite3
import time

import pytest

from gateway.model import rfc3339
from gateway.record.store import Store
from gateway.record.trend import MAX_POINTS, ReadOnlyStore, TrendError


def reading(tag: str, value, ts: float, quality: str = "good") -> dict:
    return {"tag": tag, "value": value, "unit": "m", "quality": quality, "reason": None, "ts": rfc3339(ts)}


@pytest.fixture()
def filled(tmp_path):
    """A store with 2 h of T101.level at 1 Hz (value = minutes since the start; the last 10 s bad), another tag."""
    now = time.time()
    path = tmp_path / "store.sqlite"
    store = Store(path, commit_interval_s=0.05).open()
    for i in range(7200):
        ts = now - 7200 + i
        store.put_reading(reading("T101.level", i / 60.0, ts) if i < 7190 else reading("T101.level", None, ts, "bad"))
        if i % 10 == 0:
            store.put_reading(reading("XV101", i % 20 == 0, ts))
    assert store.flush(30)
    yield path, now, store
    store.close()


def test_downsampled_min_max_within_the_window(filled):
    path, now, _store = filled
    ro = ReadOnlyStore(path)
    out = ro.trend("T101.level", 1.0, now_s=now)
    assert out["unit"] == "m" and 3500 <= out["raw"] <= 3602
    pts = out["points"]
    assert 0 < len(pts) <= MAX_POINTS and out["bucket_s"] == pytest.approx(3.6)
    assert all(p[0] >= now - 3600 - 0.01 for p in pts)
    good = [p for p in pts if p[1] is not None]
    assert all(p[1] <= p[2] for p in good)
    assert good[0][1] == pytest.approx(60.0, abs=0.1) and good[-1][2] == pytest.approx(7189 / 60, abs=0.1)
    assert pts[-1][1] is None and pts[-1][2] is None    # the last bucket held bad readings only: a gap
    two = ro.trend("T101.level", 2.0, now_s=now, max_points=100)
    assert len(two["points"]) <= 100 and two["raw"] > out["raw"]
    flags = ro.trend("XV101", 1.0, now_s=now)["points"]
    assert {p[1] for p in flags} <= {0.0, 1.0} and {p[2] for p in flags} <= {0.0, 1.0}
    assert ro.trend("nope", 1.0, now_s=now)["points"] == []
    with pytest.raises(ValueError):
        ro.trend("T101.level", 0)
    ro.close()


def test_the_connection_is_read_only(filled):
    path, _now, _store = filled
    ro = ReadOnlyStore(path)
    ro.trend("T101.level", 0.1)
    conn = ro._connection()   # noqa: SLF001 - the test looks at the connection the class opened
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        conn.execute("DELETE FROM readings")
    ro.close()


def test_a_missing_store_is_one_line(tmp_path):
    with pytest.raises(TrendError, match="does not exist"):
        ReadOnlyStore(tmp_path / "none.sqlite").trend("T101.level", 1.0)
    assert not (tmp_path / "none.sqlite").exists()
