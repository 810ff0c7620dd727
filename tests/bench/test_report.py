"""Report writing: the summary's keys, the table, merging partial runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pi5bench import report
from pi5bench.run import median_round, memory_per_stream, parse_args, playbook_seconds


def _phase(p99: float, streams: int = 1) -> dict[str, Any]:
    return {
        "lateness_ms": {"count": 10, "p50": p99 / 2, "p99": p99, "max": p99 * 2},
        "relative_lateness_ms": {"count": 10, "p50": 1.0, "p99": 2.0, "max": 3.0},
        "emission_gap_ms": {"count": 10, "p50": 0.0, "p99": 1.0, "max": 1.0},
        "delivered_share": 0.98,
        "outcomes": {"done": streams},
        "idle": {"nginx_rss_kb": 1000, "backend_rss_kb": 5000, "backend_cgroup_kb": None},
        "samples": [{}, {"nginx_rss_kb": 3000, "backend_rss_kb": 9000, "backend_cgroup_kb": None}],
    }


RESULTS: dict[str, Any] = {
    "started": "now",
    "target": "container pi5-sim",
    "latency": {
        "1": {"direct": _phase(2.0), "nginx": _phase(3.0)},
        "1000": {"direct": _phase(20.0, 1000), "nginx": _phase(26.0, 1000)},
    },
    "capacity": {"direct": {"streams": 1200}, "nginx": {"streams": 900}},
    "drills": {"reload": {"verdict": "PASS: 0 events lost"}},
    "provisioning": {"cold_converge_s": 180.0, "warm_converge_median_s": 60.0},
}


def test_summary_holds_the_ratio_and_capacities() -> None:
    summary = report.summary(RESULTS)
    assert summary["p99_ratio_at_1000"] == 1.3
    assert summary["capacity_direct"] == 1200 and summary["capacity_nginx"] == 900


def test_write_produces_json_and_a_table(tmp_path: Path) -> None:
    written = report.write(dict(RESULTS), tmp_path)
    data = json.loads((tmp_path / "latest.json").read_text())
    assert data["summary"]["p99_ratio_at_1000"] == 1.3
    table = (tmp_path / "latest.md").read_text()
    assert "| 1000 (1) | 10.0 / 20.0 / 40.0 | 13.0 / 26.0 / 52.0 | 1.30 | 0.98 / 0.98 |" in table
    assert "PASS: 0 events lost" in table and "cold_converge_s" in table
    assert {p.name for p in written} >= {"latest.json", "latest.md"}


def test_memory_per_stream_uses_the_largest_level() -> None:
    assert memory_per_stream(RESULTS["latency"]) == {"nginx_rss_at_1000": 2.0, "backend_rss_at_1000": 4.0}


def test_merge_keeps_sections_not_rerun() -> None:
    merged = report.merge({"latency": 1, "drills": {"a": 1}}, {"drills": {"b": 2}, "started": "x"}, ["drills"])
    assert merged == {"latency": 1, "drills": {"b": 2}, "started": "x"}


def test_options_parse_lists() -> None:
    args = parse_args(["--levels", "1,10", "--only", "latency,drills", "--drills", "reload"])
    assert args.levels == [1, 10] and args.only == ["latency", "drills"] and args.drills == ["reload"]


def test_median_round_keeps_the_median_p99_and_the_median_ratio() -> None:
    runs = [{"direct": _phase(d), "nginx": _phase(n)} for d, n in ((10.0, 12.0), (30.0, 60.0), (20.0, 22.0))]
    chosen = median_round(runs)
    assert chosen["direct"]["lateness_ms"]["p99"] == 20.0
    assert chosen["nginx"]["lateness_ms"]["p99"] == 22.0
    assert chosen["rounds"]["p99_ratios"] == [1.2, 2.0, 1.1]
    assert chosen["rounds"]["median_ratio"] == 1.2
    assert report.latency_rows({"5": chosen})[0]["p99_ratio"] == 1.2


def test_the_playbook_time_is_profile_tasks_last_stamp() -> None:
    output = (
        "TASKS RECAP ****\n"
        "\x1b[0;33mMonday 30 November 2026  01:10:56 +0000 (0:00:00.058)       0:00:51.019 *******\x1b[0m\n"
        "  │ nginx : Stream the probe --- 3.84s\n"
    )
    assert playbook_seconds(output) == 51.02
    assert playbook_seconds("Monday (0:00:01.000)       1:02:03.5 ***\n") == 3723.5
    assert playbook_seconds("no profile here") is None


def test_the_rerun_comparison_is_in_the_table(tmp_path: Path) -> None:
    results = {"rerun": {"against": "/work/old", "playbook_median_s": {"this": 15.2, "against": 51.0},
                         "ratio_this_to_against": 0.298}}
    report.write(results, tmp_path)
    table = (tmp_path / "latest.md").read_text()
    assert "| /work/old | 15.2 | 51.0 |" in table
    assert "ratio this/against" in table
