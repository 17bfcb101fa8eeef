"""The record path's fast paths give exactly what the plain code gave (docs/design.md "Record path").

The value text the store writer spells without json.dumps, the values a batch reads back in one parse,
canonical_json through orjson, the timestamp check done once per distinct timestamp, the gateway's reading
record and sample key, and stats() counted from counters: each against the straightforward form.
"""

from __future__ import annotations

import json
import math
import time
from types import SimpleNamespace

import pytest

from gateway.chain.signing import BatchError, _std_canonical, build_payload, canonical_json, validate_payload
from gateway.model import Quality, Reading, TimeSource, rfc3339
from gateway.record import store as store_mod
from gateway.record.store import Store, _decode_values, _value_text
from gateway.runtime.gateway import Gateway

VALUES = [0.0, -0.0, 1.5, -20.25, 1e16, 1e-05, 5e-324, 1.7976931348623157e308, 0.1 + 0.2, float("nan"),
          float("inf"), float("-inf"), 0, -7, 2**63 - 1, 2**64 + 5, -(2**70), True, False, None, "", "a\"b\\c",
          "温度", "\u2028", [1, 2.5, None], {"b": 1, "a": [True]}, (1, 2)]


@pytest.mark.parametrize("v", VALUES, ids=repr)
def test_value_text_is_json_dumps(v):
    assert _value_text(v) == json.dumps(v, default=str)


def test_value_text_of_an_unusual_type_goes_through_default_str():
    class Odd:
        def __str__(self) -> str:
            return "odd"
    assert _value_text(Odd()) == json.dumps("odd")


def test_decode_values_matches_json_loads_one_by_one():
    texts = [json.dumps(v, default=str) for v in VALUES] + [None]
    got = _decode_values(texts)
    want = [json.loads(t) if t is not None else None for t in texts]
    assert len(got) == len(want)
    for g, w in zip(got, want):
        if isinstance(w, float) and math.isnan(w):
            assert isinstance(g, float) and math.isnan(g)
        else:
            assert g == w and type(g) is type(w)


def test_decode_values_falls_back_and_raises_on_a_malformed_text():
    assert _decode_values(["1", "2"]) == [1, 2]
    with pytest.raises(ValueError):
        _decode_values(["1", "[2"])
    with pytest.raises(ValueError):   # two texts that would join into one valid array of another length
        _decode_values(["1,2", "3"])


def _payload(readings, events=None):
    return {"gateway_id": "gw-1", "seq": 2, "prev": "A" * 43, "created_at": "2026-01-02T03:04:05.678Z",
            "config_hash": "c" * 64, "clock": {"synchronised": None, "last_step_s": -1.25},
            "readings": readings, "events": events or [], "gaps": []}


def test_canonical_json_is_the_standard_librarys_bytes():
    t0 = 1767225600.0
    readings = [Reading(f"T{i % 7}.值", 20.0 + i / 8, "°C", Quality.GOOD, t0 + i // 3).to_record() for i in range(300)]
    readings.append({"tag": "X", "value": None, "unit": "", "quality": "bad", "reason": "timeout\n\"x\"",
                     "ts": rfc3339(t0), "ts_source": "local"})
    p = _payload(readings, [{"kind": "alarm", "z": {"b": [1, {"d": 2, "c": 3}]}, "a": "\u0007\u2028\x7f\x00\t/<>&",
                             "值": 1, "é": [], "😀": {}, "Z": (1, 2), "": -0.0, "big": 2**63 - 1, "neg": -(2**63)}])
    assert canonical_json(p) == _std_canonical(p)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_canonical_json_refuses_non_finite_floats_anywhere(bad):
    for obj in (bad, [bad], {"a": {"b": [1, bad]}}, _payload([], [{"kind": "x", "v": [[bad]]}])):
        with pytest.raises(ValueError):
            canonical_json(obj)


def test_canonical_json_what_orjson_refuses_is_the_standard_librarys_answer():
    class S(str):
        pass
    for obj in ({"n": 2**70}, {"k": S("v")}, [S("w")], {"deep": [[[[[[1]]]]]]}):
        assert canonical_json(obj) == _std_canonical(obj)
    with pytest.raises(TypeError):
        canonical_json({"t": object()})
    import enum
    import uuid

    class Colour(enum.Enum):
        RED = 1
    for odd in (Colour.RED, uuid.UUID(int=1)):   # types orjson would write and the json module refuses
        with pytest.raises(TypeError):
            canonical_json({"v": [odd]})
    with pytest.raises(ValueError):   # a lone surrogate is not UTF-8
        canonical_json({"s": "\ud800"})


def test_validate_payload_checks_every_distinct_timestamp_once_and_still_refuses():
    ts = "2026-01-02T03:04:05.000Z"
    good = [{"tag": "A", "value": 1.0, "unit": "m", "quality": "good", "ts": ts} for _ in range(5)]
    validate_payload(_payload(good))
    for bad_ts in ("2026-01-02T03:04:05.000+08:00", "2026-13-02T03:04:05.000Z", "yesterday", 17, None, ["x"]):
        rows = good + [{"tag": "B", "value": 1.0, "unit": "m", "quality": "good", "ts": bad_ts}] + good
        with pytest.raises(BatchError) as e:
            validate_payload(_payload(rows))
        assert e.value.check == "payload" and "readings[5].ts" in str(e.value)
    with pytest.raises(BatchError, match=r"readings\[1\] lacks unit"):
        validate_payload(_payload([good[0], {"tag": "A", "value": 1.0, "quality": "good", "ts": ts}]))
    with pytest.raises(BatchError, match="a bad reading carries no value"):
        validate_payload(_payload([dict(good[0], quality="bad")]))
    with pytest.raises(BatchError, match="is not good/uncertain/bad"):
        build_payload("gw-1", 1, None, "c", [dict(good[0], quality="fine")])


def _gateway(points):
    gw = Gateway.__new__(Gateway)
    gw.plant = SimpleNamespace(points=points)
    return gw


def test_gateway_reading_record_is_to_record_plus_point():
    gw = _gateway({"T1": "P-001"})
    t0 = time.time()
    for r in (Reading("T1", 1.25, "m", Quality.GOOD, t0), Reading("T1", 1.5, "m", Quality.GOOD, t0),
              Reading("T2", None, "bar", Quality.BAD, t0 + 0.0004, reason="timeout"),
              Reading("T2", 3, "bar", Quality.UNCERTAIN, t0 + 1, ts_source=TimeSource.SOURCE)):
        want = r.to_record()
        if r.tag == "T1":
            want["point"] = "P-001"
        assert gw._reading_record(r) == want


def test_store_reads_back_every_value_kind_and_counts_from_counters(tmp_path, monkeypatch):
    monkeypatch.setattr(store_mod, "STATS_EXACT_ROWS", 10)
    st = Store(tmp_path / "s.sqlite", commit_interval_s=0.05).open()
    try:
        t0 = 1767225600.0
        vals = [v for v in VALUES if not (isinstance(v, float) and not math.isfinite(v)) and v is not None]
        st.put_reading({"tag": "B", "value": None, "unit": "u", "quality": "bad", "reason": "timeout",
                        "ts": rfc3339(t0 - 5), "ts_source": "local"})
        for i, v in enumerate(vals):
            st.put_reading({"tag": f"T{i}", "value": v, "unit": "u", "quality": "good", "reason": None,
                            "ts": rfc3339(t0 + i), "ts_source": "local"})
        assert st.flush(10)
        n = len(vals) + 1
        s = st.stats()
        assert s["readings_total"] == n and s["readings_unsent"] == n and s["oldest_unsent_ts"] == rfc3339(t0 - 5)
        got: list = []

        def make(seq, prev, rows):
            got.extend(r for _, r in rows.readings)
            return "x.y.z", rfc3339(t0)
        assert st.new_batch(12, 10, make) == (1, "x.y.z")
        assert [r["value"] for r in got] == [None] + [json.loads(json.dumps(v)) for v in vals[:11]]
        assert [type(r["value"]) for r in got[1:]] == [type(json.loads(json.dumps(v))) for v in vals[:11]]
        s = st.stats()   # 12 in an unacknowledged batch + the rest; the oldest is in the batch
        assert s["readings_unsent"] == n and s["oldest_unsent_ts"] == rfc3339(t0 - 5)
        st.mark_acked(1)
        s = st.stats()
        assert s["readings_unsent"] == n - 12 and s["readings_total"] == n and s["last_acked_seq"] == 1
        assert s["oldest_unsent_ts"] == rfc3339(t0 + 11)
    finally:
        st.close()


@pytest.mark.e2e
async def test_the_uplink_keeps_its_tls_connection_and_sends_the_signed_payload(tmp_path):
    """One TLS handshake for several batches sent a second apart (httpx keeps the connection); the payload the
    Batcher hands over is the one signed into the JWS (the uplink does not decode it again)."""
    import asyncio
    import shutil

    from gateway.chain.signing import Signer, decode_unverified, keygen
    from gateway.record.batches import Batcher
    from gateway.record.uplink import HttpsUplink
    from gateway.regulator.receiver import BackgroundReceiver

    kid = keygen(tmp_path / "keys")
    (tmp_path / "trust").mkdir()
    shutil.copy(tmp_path / "keys" / f"{kid}.jwk", tmp_path / "trust" / f"{kid}.jwk")
    signer = Signer.from_file(tmp_path / "keys" / "private.pem")
    with BackgroundReceiver(tmp_path / "rx", tmp_path / "trust") as rx, \
            Store(tmp_path / "gw.sqlite", commit_interval_s=0.05) as st:
        for i in range(40):
            st.put_reading({"tag": "T", "value": i + 0.5, "unit": "m", "quality": "good", "reason": None,
                            "ts": rfc3339(1_760_000_000.0 + i), "ts_source": "local"})
        assert st.flush(10)
        up = HttpsUplink(rx.url, ca_file=str(rx.cafile), timeout_s=5.0)
        handshakes = []
        wrap_bio = up._ctx.wrap_bio
        up._ctx.wrap_bio = lambda *a, **k: handshakes.append(1) or wrap_bio(*a, **k)
        b = Batcher(st, signer, "gw-1", lambda: "cfg", max_readings=10)
        try:
            for seq in range(1, 5):
                batch = b.next_batch()
                assert batch.seq == seq and batch.payload == decode_unverified(batch.jws)[1]
                ack = await up.send(batch.jws, batch.payload)
                assert (ack.seq, ack.status) == (seq, "accepted")
                assert b.mark_acked(seq)
                await asyncio.sleep(1.0)
            assert b.next_batch() is None
        finally:
            await up.aclose()
        assert len(handshakes) == 1
        assert [x.seq for x in rx.receiver.store.batches("gw-1")] == [1, 2, 3, 4]


def _too_deep_reference(raw: bytes, limit: int = 32) -> bool:
    """json_too_deep as it was written first (strings removed by one regular expression over the whole text)."""
    import re
    unescaped = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    brackets = re.sub(rb'"[^"]*"', b"", unescaped).translate(bytes.maketrans(b"[]{}", b"()()"),
                                                             bytes(b for b in range(256) if b not in b"[]{}"))
    for _ in range(limit):
        if not brackets:
            return False
        shorter = brackets.replace(b"()", b"")
        if len(shorter) == len(brackets):
            break
        brackets = shorter
    return bool(brackets)


def test_json_too_deep_judges_as_the_plain_form_did():
    import random

    from gateway.chain.signing import json_too_deep
    rng = random.Random(7)
    alphabet = b'[]{}"\\ax,:'
    cases = [b"", b"[]", b"[" * 33 + b"]" * 33, b"[" * 32 + b"]" * 32, b'["[[[[", "]"]', b'"\\\\"[', b'""""[]',
             b'{"a":"[","b":""}', b'["\\"[", "x"]']
    cases += [bytes(rng.choice(alphabet) for _ in range(rng.randint(1, 80))) for _ in range(3000)]
    cases += [b"[" * d + b'"' + bytes(rng.choice(alphabet) for _ in range(10)) + b'"' + b"]" * d for d in range(28, 36)]
    for raw in cases:
        for limit in (2, 32):
            assert json_too_deep(raw, limit) == _too_deep_reference(raw, limit), raw


def test_b64url_decode_refuses_exactly_the_non_canonical_forms():
    import base64
    import itertools
    import random

    from gateway.chain.signing import b64url_decode
    chars = "AZaz09-_BQgw=\n+/ é"
    rng = random.Random(15)
    texts = ["".join(p) for n in range(7) for p in itertools.islice(itertools.product(chars, repeat=n), 6000)]
    texts += ["".join(rng.choice(chars) for _ in range(rng.randint(0, 13))) for _ in range(20000)]
    for text in texts:
        try:
            data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            ok = len(text) % 4 != 1 and base64.urlsafe_b64encode(data).rstrip(b"=").decode() == text
        except ValueError:
            ok = False
        if ok:
            assert b64url_decode(text) == data
        else:
            with pytest.raises(ValueError):
                b64url_decode(text)
