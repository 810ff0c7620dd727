"""Statistics, ramping and the capacity search: pure functions, no Docker."""

from __future__ import annotations

import pytest

from pi5bench.stats import capacity_search, deal, percentile, plan_phase, ramp_offsets, ratio, summarize


def test_percentile_interpolates_between_ranks() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile(values, 100) == 100.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None


def test_percentile_rejects_a_bad_rank() -> None:
    with pytest.raises(ValueError, match=r"not within 0\.\.100"):
        percentile([1.0], 101)


def test_summarize_rounds_and_counts() -> None:
    assert summarize([1.04, 2.0, 3.0]) == {"count": 3, "p50": 2.0, "p99": 3.0, "max": 3.0}
    assert summarize([]) == {"count": 0, "p50": None, "p99": None, "max": None}


def test_ratio_handles_missing_and_zero() -> None:
    assert ratio(30.0, 20.0) == 1.5
    assert ratio(None, 2.0) is None
    assert ratio(1.0, 0.0) == 10.0  # a 0 ms denominator counts as 0.1 ms


def test_ramp_spaces_connections_and_deals_them_evenly() -> None:
    offsets = ramp_offsets(5, 10.0)
    assert offsets == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    assert deal(offsets, 2) == [[0.0, 0.2, 0.4], pytest.approx([0.1, 0.3])]
    assert sum(len(part) for part in deal(ramp_offsets(2000, 250.0), 3)) == 2000
    with pytest.raises(ValueError, match="per_second > 0"):
        ramp_offsets(3, 0)


def test_plan_keeps_every_stream_open_through_the_window() -> None:
    plan = plan_phase(1000, 250.0, 6.0, 50)
    assert plan.ramp_s == pytest.approx(3.996)
    assert plan.window_start_s == pytest.approx(4.996)
    # The first stream opened at 0 still has tokens at the window's end.
    assert plan.tokens * 50 / 1000 >= plan.window_end_s


def test_plan_refuses_streams_longer_than_the_probe_allows() -> None:
    with pytest.raises(ValueError, match="max 500"):
        plan_phase(5000, 100.0, 6.0, 50)


def test_capacity_search_bisects_to_the_threshold() -> None:
    calls: list[int] = []

    def passes(n: int) -> bool:
        calls.append(n)
        return n <= 640

    found, trials = capacity_search(passes, 100, 2000, max_steps=10, resolution=50)
    assert 600 <= found <= 640
    assert trials[0] == (100, True) and trials[1] == (2000, False)
    assert len(calls) <= 10


def test_capacity_search_stops_at_the_step_limit_and_at_the_top() -> None:
    found, trials = capacity_search(lambda n: n <= 640, 100, 2000, max_steps=3, resolution=1)
    assert (len(trials) == 3 and found in (100, 1050)) or found <= 640
    assert capacity_search(lambda n: True, 100, 2000, max_steps=5)[0] == 2000
    assert capacity_search(lambda n: False, 100, 2000, max_steps=5) == (0, [(100, False)])


def test_capacity_search_bisects_at_once_below_a_known_failure() -> None:
    tried: list[int] = []

    def passes(n: int) -> bool:
        tried.append(n)
        return n <= 300

    found, _ = capacity_search(passes, 100, 1000, max_steps=4, resolution=50, high_fails=True)
    assert 1000 not in tried and tried[0] == 100 and tried[1] == 550
    assert 100 <= found <= 300
