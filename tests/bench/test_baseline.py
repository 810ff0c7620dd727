"""The previous design in the same run (capacity ratio, the Redis hop's added lateness) and memory per stream."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pi5bench import report
from pi5bench.run import Bench, added_ms, compare, first_round, median_round, memory_per_stream, parse_args


def _phase(p50: float, p99: float, streams: int = 100, **mid: int) -> dict[str, Any]:
    idle = {"nginx_rss_kb": 1000, "backend_rss_kb": 5000, "worker_rss_kb": 3000, "redis_used_kb": 800,
            "redis_rss_kb": 4000, "backend_cgroup_kb": None}
    return {
        "lateness_ms": {"count": 10, "p50": p50, "p99": p99, "max": p99 * 2},
        "delivered_share": 0.95,
        "outcomes": {"done": streams},
        "idle": idle,
        "samples": [{}, {**idle, **mid}],
    }


def _level(p50: float, p99: float, streams: int = 100) -> dict[str, Any]:
    return {"direct": _phase(p50, p99, streams), "nginx": _phase(p50 + 1, p99 + 2, streams)}


def test_added_lateness_is_this_design_minus_the_previous_one() -> None:
    assert added_ms(_phase(12.0, 40.0), _phase(2.0, 9.5), "p50") == 10.0
    assert added_ms(_phase(12.0, 40.0), _phase(2.0, 9.5), "p99") == 30.5
    assert added_ms(_phase(1.0, 4.0), _phase(2.0, 9.0), "p99") == -5.0  # faster: negative, not hidden
    assert added_ms(_phase(1.0, 4.0), None, "p99") is None
    assert added_ms({"lateness_ms": {"p99": None}}, _phase(2.0, 9.0), "p99") is None  # no events: no figure


def test_compare_checks_the_capacity_ratio_against_1_8() -> None:
    latency = {"1": _level(3.0, 8.0), "100": _level(10.0, 50.0)}
    baseline = {"1": _level(1.0, 3.0), "100": _level(4.0, 20.0), "1000": _level(90.0, 300.0)}
    compared = compare(latency, baseline, 600, 325)
    assert compared["capacity_nginx"] == {"pipeline": 600, "baseline": 325, "ratio": 1.85, "target": 1.8,
                                          "verdict": "PASS"}
    assert set(compared["added_lateness_ms"]) == {"1", "100"}  # only levels measured on both
    assert compared["added_lateness_ms"]["100"] == {
        "direct_added_p50_ms": 6.0, "direct_added_p99_ms": 30.0, "nginx_added_p50_ms": 6.0, "nginx_added_p99_ms": 30.0,
    }


def test_compare_fails_below_1_8_and_without_a_figure() -> None:
    assert compare({}, {}, 580, 325)["capacity_nginx"]["verdict"] == "FAIL"  # 1.78
    assert compare({}, {}, None, 325)["capacity_nginx"]["verdict"] == "FAIL"
    assert compare({}, {}, 600, None)["capacity_nginx"]["verdict"] == "FAIL"


def test_memory_per_stream_takes_the_first_round_not_the_median_one() -> None:
    grown = _phase(1.0, 2.0, 1000, backend_rss_kb=5000 + 42_000, worker_rss_kb=3000 + 10_000, redis_used_kb=800 + 7_000,
                   nginx_rss_kb=1000 + 39_000)
    flat = _phase(1.0, 2.0, 1000)  # later rounds: the heap had grown already, nothing rises
    runs = [{"direct": grown, "nginx": grown}, {"direct": flat, "nginx": flat}, {"direct": flat, "nginx": flat}]
    latency = {"1000": {**median_round(runs), "first_round": first_round(runs[0])}}
    assert memory_per_stream(latency) == {
        "nginx_rss_at_1000": 39.0, "backend_rss_at_1000": 42.0, "worker_rss_at_1000": 10.0,
        "redis_used_at_1000": 7.0, "redis_rss_at_1000": 0.0,
    }
    # The median round alone (what the table kept before) reads nothing: the regression this guards.
    del latency["1000"]["first_round"]
    assert memory_per_stream(latency)["backend_rss_at_1000"] == 0.0


def test_memory_per_stream_skips_a_level_whose_first_round_lost_streams() -> None:
    ok = _phase(1.0, 2.0, 100, backend_rss_kb=5000 + 4000)
    cut = {**_phase(1.0, 2.0, 1000, backend_rss_kb=5000 + 9000), "outcomes": {"done": 990, "eof": 10}}
    latency = {
        "100": {"direct": ok, "nginx": ok, "first_round": first_round({"direct": ok, "nginx": ok})},
        "1000": {"direct": cut, "nginx": cut, "first_round": first_round({"direct": cut, "nginx": cut})},
    }
    assert memory_per_stream(latency)["backend_rss_at_100"] == 40.0
    assert not any(key.endswith("_at_1000") for key in memory_per_stream(latency))


def test_memory_per_stream_leaves_out_groups_the_design_has_not() -> None:
    phase = _phase(1.0, 2.0, 100, backend_rss_kb=5000 + 4000)
    for snapshot in (phase["idle"], phase["samples"][1]):
        snapshot.update(worker_rss_kb=0, redis_used_kb=None, redis_rss_kb=0)
    found = memory_per_stream({"100": {"direct": phase, "nginx": phase}})
    assert found == {"nginx_rss_at_100": 0.0, "backend_rss_at_100": 40.0}


def test_the_comparison_is_in_the_table(tmp_path: Path) -> None:
    latency = {"100": _level(10.0, 50.0)}
    baseline = {"100": _level(4.0, 20.0)}
    results: dict[str, Any] = {
        "latency": latency,
        "capacity": {"nginx": {"streams": 500}},
        "baseline": {"commit": "dc525e0aaaaaaaaaa", "latency": baseline, "memory_per_stream_kb": {"backend_rss_at_100": 40.0}},
        "comparison": {**compare(latency, baseline, 500, 325), "same_run": True},
    }
    report.write(results, tmp_path)
    table = (tmp_path / "latest.md").read_text()
    assert "Previous design (dc525e0aaaaa: one process generates and delivers)" in table
    assert "| 100 | 4.0 / 20.0 | 5.0 / 22.0 | 6.0 / 30.0 | 6.0 / 30.0 | 0.95 / 0.95 |" in table
    assert "ratio **1.54** (issue 14: >= 1.80): **FAIL**" in table
    assert results["summary"]["capacity_nginx_vs_baseline"]["verdict"] == "FAIL"


def test_no_baseline_no_comparison_lines() -> None:
    assert report.baseline_lines({"latency": {"1": _level(1.0, 2.0)}}) == []


def test_baseline_options() -> None:
    args = parse_args(["--only", "baseline", "--baseline-ref", "abc123", "--baseline-ports", "1,2"])
    assert (args.only, args.baseline_ref, args.baseline_ports) == (["baseline"], "abc123", [1, 2])
    assert parse_args([]).baseline_ref == "dc525e0"


def test_memory_per_stream_reads_no_negative_zero() -> None:
    phase = _phase(1.0, 2.0, 100, backend_rss_kb=5000 - 4)  # a page given back: -0.04 rounds to 0.0, not -0.0
    assert str(memory_per_stream({"100": {"direct": phase, "nginx": phase}})["backend_rss_at_100"]) == "0.0"


def test_capacity_steps_count_load_phases_not_the_known_low_end(monkeypatch: pytest.MonkeyPatch) -> None:
    bench = Bench(parse_args(["--capacity-steps", "2", "--capacity-resolution", "50"]))
    phases: list[int] = []

    def load_phase(path: str, streams: int, pi: object = None) -> dict[str, Any]:
        phases.append(streams)
        return _phase(1.0, 50.0 if streams <= 400 else 500.0, streams)

    monkeypatch.setattr(bench, "load_phase", load_phase)
    monkeypatch.setattr(bench, "passes", lambda figures: figures["lateness_ms"]["p99"] < 100)
    latency = {"100": _level(1.0, 50.0), "1000": _level(1.0, 500.0)}
    found = bench.search_capacity("nginx", latency, bench.pi)
    assert phases == [550, 325]  # two load phases, as asked; 100 and 1000 were known
    assert found["streams"] == 325 and found["bounds"] == [100, 1000]
