"""The load generator's pure parts: chunked decoding, per-event timing, aggregation."""

from __future__ import annotations

import pytest

from pi5bench.loadgen import Phase, aggregate, cpu_between, delivered_share
from pi5bench.sse_client import ChunkedDecoder, StreamResult, _Timing, request_bytes


def test_chunked_decoder_survives_any_split() -> None:
    body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n"
    for size in (1, 2, 3, 7, len(body)):
        decoder = ChunkedDecoder()
        out = b"".join(decoder.feed(body[i : i + size]) for i in range(0, len(body), size))
        assert out == b"hello world"
        assert decoder.finished


def test_chunked_decoder_waits_for_the_last_chunk() -> None:
    decoder = ChunkedDecoder()
    assert decoder.feed(b"3\r\nabc\r\n") == b"abc"
    assert not decoder.finished


def test_timing_keeps_window_events_and_uses_the_core_for_relative_lateness() -> None:
    result = StreamResult()
    timing = _Timing(result, 50.0, (1.0, 2.0))  # window in epoch seconds
    # emitted every 50 ms from ts 1000; arrivals 5, 3, 9 ms late; the first outside the window
    for i, late in enumerate((5.0, 3.0, 9.0)):
        ts = 950.0 + 50.0 * i
        timing.add(ts + late, ts)
    timing.finish()
    assert result.lateness_ms == [3.0, 9.0]
    assert result.relative_ms == [0.0, 6.0]  # least-delayed event is the baseline (the core's choice)
    assert result.gap_ms == [0.0, 0.0]  # each emitted exactly 50 ms after the previous one


def _result(outcome: str, tokens: int, done_tokens: int | None, lateness: list[float]) -> dict[str, object]:
    r = StreamResult(outcome=outcome, tokens=tokens, done_tokens=done_tokens, lateness_ms=lateness)
    r.integrity = "ok" if outcome == "done" else "not_checked"
    return r.to_dict()


def test_aggregate_counts_lost_events_and_dropped_streams() -> None:
    phase = Phase(url="http://x", streams=3, tokens=10)
    figures = aggregate(
        phase,
        [_result("done", 10, 10, [1.0, 2.0]), _result("error_done", 4, 4, [3.0]), _result("eof", 6, None, [])],
    )
    assert figures["events_lost"] == 4  # the cut stream: 10 expected, 6 received
    assert figures["streams_dropped"] == 1
    assert figures["streams_error_done"] == 1
    assert figures["lateness_ms"]["max"] == 3.0
    assert figures["outcomes"] == {"done": 1, "error_done": 1, "eof": 1}
    assert figures["delivered_share"] is None  # no window: no pace


def test_delivered_share_compares_with_the_probe_pace() -> None:
    phase = Phase(url="http://x", streams=2, interval_ms=50, window=(1.0, 3.0))
    assert delivered_share(phase, 80, 2) == 1.0  # 2 streams x 2 s x 20/s
    assert delivered_share(phase, 40, 2) == 0.5


def test_phase_spec_rejects_unknown_keys() -> None:
    assert Phase.from_json('{"url": "http://x", "streams": 2, "window": [1, 2]}').window == (1, 2)
    with pytest.raises(SystemExit, match="bogus"):
        Phase.from_json('{"url": "http://x", "streams": 2, "bogus": 1}')


def test_cpu_between_gives_cores_per_group() -> None:
    first = {"t_s": 0.0, "cpu_s": {"nginx": 1.0, "backend": 2.0}, "host_jiffies": [100, 200]}
    last = {"t_s": 2.0, "cpu_s": {"nginx": 2.0, "backend": 4.0}, "host_jiffies": [400, 600]}
    assert cpu_between(first, last) == {"nginx": 0.5, "backend": 1.0, "machine_busy_share": 0.75}


def test_request_asks_for_an_event_stream() -> None:
    raw = request_bytes("localhost", "/api/probe/stream?tokens=1", (("X-A", "b"),))
    assert raw.startswith(b"GET /api/probe/stream?tokens=1 HTTP/1.1\r\nHost: localhost\r\n")
    assert b"Accept: text/event-stream" in raw and raw.endswith(b"X-A: b\r\n\r\n")
