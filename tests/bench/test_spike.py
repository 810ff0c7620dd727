"""The delivery spike's pure parts: event format, Last-Event-ID parsing, the resume verdict, the figures."""

from __future__ import annotations

import json

import pytest

from ansible_collections.pi5.streaming.plugins.module_utils import stream_check as core
from pi5bench.spike import added_lateness, design_cost, group_memory, markdown, seed_bounds, us_per_event
from pi5bench.spike_client import Resumed, judge
from pi5bench.spike_events import PROBE_TOKENS, done_summary, encode_event, resume_from, stream_id
from pi5bench.sse_client import _header


def test_event_is_the_backends_format_and_survives_the_core_parser() -> None:
    raw = encode_event(7, "token", "r1", " 你好世界", 1000.5)
    parser = core.SseParser()
    parser.feed(raw, 0.0)
    (event,) = parser.events
    assert event.id == "7"
    assert json.loads(event.data) == {"type": "token", "threadId": "r1", "content": " 你好世界", "ts": 1000.5}


def test_done_summary_is_what_the_core_checks() -> None:
    contents = list(PROBE_TOKENS)
    assert core.check_integrity(contents, done_summary(contents))[0] == "ok"
    assert core.check_integrity(contents[:-1], done_summary(contents))[0] == "mismatch"


def test_stream_ids_order_events_and_start_at_one() -> None:
    assert stream_id(0) == "0-0"  # XREAD after 0-0: the whole reply
    assert stream_id(12) == "12-0"
    with pytest.raises(ValueError, match="start at 1"):
        stream_id(-1)


@pytest.mark.parametrize(
    ("header", "after"),
    [(None, 0), ("5", 5), (" 12 ", 12), ("", 0), ("abc", 0), ("-3", 0), ("3-0", 0), ("1" * 13, 0), ("1796587242:0", 0)],
)
def test_a_hostile_or_foreign_last_event_id_replays_from_the_start(header: str | None, after: int) -> None:
    assert resume_from(header) == after


def _reply(ids: list[str], contents: list[str], *, done: bool = True, connections: int = 1) -> Resumed:
    return Resumed(outcome="done" if done else "timeout", connections=connections, ids=ids, contents=contents,
                   summary=done_summary(["a", "b", "c"]) if done else None)


def test_judge_passes_a_resumed_reply_with_every_token_once() -> None:
    verdict = judge(_reply(["1", "2", "3", "4"], ["a", "b", "c"], connections=2))
    assert verdict == {"complete": True, "integrity": "ok", "ids_twice": 0, "tokens_missing": 0, "reconnects": 1}


def test_judge_fails_an_id_seen_twice() -> None:
    verdict = judge(_reply(["1", "2", "2", "3", "4"], ["a", "b", "c"], connections=2))
    assert not verdict["complete"]
    assert verdict["ids_twice"] == 1


def test_judge_fails_a_missing_token_and_a_reply_without_done() -> None:
    missing = judge(_reply(["1", "3", "4"], ["a", "c"]))
    assert (missing["complete"], missing["integrity"], missing["tokens_missing"]) == (False, "mismatch", 1)
    unfinished = judge(_reply(["1"], ["a"], done=False))
    assert (unfinished["complete"], unfinished["integrity"]) == (False, "no_done")


def test_content_location_is_read_from_any_header_case() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\ncontent-location: /api/replies/ab\r\n\r\n"
    assert _header(head, b"content-location") == "/api/replies/ab"
    assert _header(b"HTTP/1.1 200 OK\r\nX: y\r\n\r\n", b"content-location") is None


def _figures(streams: int = 100) -> dict[str, object]:
    sample = {"rss_kb": {"redis": 12000, "sse_a": 70000, "worker": 50000}, "nginx_rss_kb": 30000}
    return {
        "streams": streams,
        "idle": {"rss_kb": {"redis": 10000, "sse_a": 60000, "worker": 50000}, "nginx_rss_kb": 20000},
        "samples": [sample, sample, sample],
        "cpu_cores": {"sse_a": 0.3, "nginx": 0.1, "redis": 0.05, "worker": 0.2, "single": 0.9, "client": 0.4},
        "lateness_ms": {"p50": 4.0, "p99": 30.0},
    }


def test_memory_per_stream_is_the_rise_from_idle_over_the_streams() -> None:
    memory = group_memory(_figures())
    assert memory["redis"] == {"idle_kb": 10000, "active_kb": 12000, "per_stream_kb": 20.0}
    assert memory["nginx"]["per_stream_kb"] == 100.0
    assert group_memory({"streams": 0, "samples": []}) == {}


def test_a_designs_cost_counts_only_its_own_processes() -> None:
    cost = design_cost(_figures(), "a_sse")
    assert cost["cores"] == 0.65  # sse_a + nginx + redis + worker, not the baseline's process or the client
    assert cost["kib_per_stream"] == 100.0 + 20.0 + 100.0 + 0.0


def test_capacity_search_starts_from_the_levels_measured() -> None:
    assert seed_bounds({100: True, 300: True, 600: False}, 25, 2000) == (300, 600, True)
    assert seed_bounds({100: True, 300: True}, 25, 2000) == (300, 2000, False)
    assert seed_bounds({100: False}, 25, 2000) == (25, 100, True)


def test_added_lateness_is_against_the_baseline_at_the_same_load() -> None:
    assert added_lateness({"lateness_ms": {"p50": 5.5, "p99": 40.0}}, {"lateness_ms": {"p50": 2.0, "p99": 30.0}}) == {
        "p50": 3.5, "p99": 10.0}
    assert added_lateness({"lateness_ms": {"p50": None, "p99": 1.0}}, {"lateness_ms": {"p50": 2.0, "p99": 3.0}})["p50"] is None


def test_markdown_has_the_capacity_ratio_and_every_drill() -> None:
    text = markdown({
        "started": "t", "target": "c", "cores": 2, "load_before": [1, 1, 1],
        "capacity": {"single": {"streams": 40}, "b_nchan": {"streams": 120}},
        "drills": {"nginx_reload": {"b_nchan": {"complete": 200, "streams": 200, "ids_twice": 0, "tokens_missing": 0,
                                                "streams_reconnected": 200, "statuses": {"200": 400},
                                                "same_event_twice": 0, "worker_publish_retries": 3}}},
    })
    assert "| 120 | 3.0 |" in text
    assert "| nginx_reload | b_nchan | 200/200 | 0 | 0 | 0 | 200 | 3 |" in text


def test_cpu_per_event_divides_each_groups_cores_by_the_events_delivered() -> None:
    figures = {**_figures(), "delivered_share": 0.5}  # 100 streams x 20/s x 0.5 = 1000 events/s
    per = us_per_event(figures, "a_sse")
    assert per == {"sse_a": 300.0, "nginx": 100.0, "redis": 50.0, "worker": 200.0, "all": 650.0}
    assert us_per_event({**_figures(), "delivered_share": None}, "a_sse") is None
