"""Read planner tables (C06)."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from drivers.modbus_planner import (MalformedReply, ReadPlanner, Span, check_byte_count, expected_byte_count,
                                    plan)


def _spans(addrs, table="holding_register", unit=1, count=1):
    return [Span(f"t{a}", unit, table, a, count) for a in addrs]


def _shape(blocks):
    return [(b.address, b.count) for b in blocks]


def test_C06_300_contiguous_registers():
    blocks = plan(_spans(range(300)))
    assert _shape(blocks) == [(0, 125), (125, 125), (250, 50)]
    assert sum(len(b.spans) for b in blocks) == 300


def test_C06_protocol_max_clamps_device_max():
    assert max(b.count for b in plan(_spans(range(300)), max_registers=500)) == 125
    blocks = plan(_spans(range(5000), table="coil"), max_bits=10_000)
    assert max(b.count for b in blocks) == 2000 and blocks[0].function == 1


def test_C06_device_max_50():
    blocks = plan(_spans(range(300)), max_registers=50)
    assert all(b.count <= 50 for b in blocks) and len(blocks) == 6


def test_C06_hole_split_is_remembered():
    p = ReadPlanner(_spans([11174, 11176, 11177]), max_gap=1)
    assert _shape(p.blocks) == [(11174, 4)]
    new = p.split(p.blocks[0])
    assert _shape(new) == [(11174, 1), (11176, 2)]
    assert _shape(p.blocks) == [(11174, 1), (11176, 2)]
    assert _shape(p.replan()) == [(11174, 1), (11176, 2)]  # split kept
    # a contiguous block that still fails is split into single points
    new2 = p.split(p.blocks[1])
    assert _shape(new2) == [(11176, 1), (11177, 1)]
    assert p.split(p.blocks[0]) is None  # one span: the point itself is wrong


def test_groups_by_unit_and_table_and_gap():
    spans = _spans([0, 1]) + _spans([0, 1], unit=2) + _spans([0], table="input_register") + _spans([5])
    blocks = plan(spans)
    assert [(b.unit_id, b.table, b.address, b.count) for b in blocks] == [
        (1, "holding_register", 0, 2), (1, "holding_register", 5, 1),
        (1, "input_register", 0, 1), (2, "holding_register", 0, 2)]
    assert _shape(plan(_spans([0, 1, 5]), max_gap=3)) == [(0, 6)]
    assert _shape(plan(_spans([0, 1, 5]), max_gap=2)) == [(0, 2), (5, 1)]


def test_multi_register_and_overlap():
    spans = [Span("f", 1, "holding_register", 10, 2), Span("b0", 1, "holding_register", 12, 1),
             Span("b1", 1, "holding_register", 12, 1)]
    (b,) = plan(spans)
    assert (b.address, b.count, len(b.spans)) == (10, 3, 3)
    assert b.slice([1, 2, 3], spans[0]) == [1, 2]
    assert b.slice([1, 2, 3], spans[2]) == [3]
    # a point never straddles blocks
    blocks = plan([Span(i, 1, "holding_register", 2 * i, 2) for i in range(100)])
    assert _shape(blocks) == [(0, 124), (124, 76)]


def test_span_too_long_for_limit():
    with pytest.raises(ValueError, match="exceed"):
        plan([Span("s", 1, "holding_register", 0, 60)], max_registers=50)


def test_C06_byte_count():
    assert expected_byte_count("holding_register", 3) == 6
    assert expected_byte_count("coil", 9) == 2
    check_byte_count("input_register", 2, 4)
    with pytest.raises(MalformedReply, match="byte count 3, expected 4"):
        check_byte_count("input_register", 2, 3)


@given(st.sets(st.integers(0, 3000), min_size=1, max_size=400), st.integers(1, 125), st.integers(0, 10))
def test_plan_properties(addrs, maxr, gap):
    spans = _spans(sorted(addrs))
    blocks = plan(spans, max_registers=maxr, max_gap=gap)
    seen = [s.key for b in blocks for s in b.spans]
    assert sorted(seen) == sorted(s.key for s in spans)
    for b in blocks:
        assert 1 <= b.count <= maxr
        assert all(b.address <= s.address and s.end <= b.end for s in b.spans)
