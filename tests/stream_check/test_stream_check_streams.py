"""Other servers' streams on exact synthetic timelines: emission times in any unit, other shapes, silences,
watching an endless feed, the proxy fingerprint. Each check next to the broken case it must catch."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

import pytest

from ansible_collections.pi5.streaming.plugins.module_utils.stream_check import (
    Capture,
    CheckResult,
    Chunk,
    Criteria,
    Request,
    analyse,
    fingerprint,
    read_timestamps,
)

URL = "http://127.0.0.1:8000/stream"
SSE = {"content-type": "text/event-stream"}
EPOCH_S = 1_780_000_000.0  # a 2026 wall-clock time, in seconds


def stream(
    pieces: Sequence[tuple[float, bytes]],
    *,
    headers: Mapping[str, str] = SSE,
    names: Sequence[str] = (),
    ttfb_ms: float | None = None,
    sent_ms: float = 1.0,
    curl_exit: int = 0,
    end_ms: float | None = None,
    http_version: str = "1.1",
    watch: float | None = None,
) -> Capture:
    """A capture of ``pieces`` (ms, bytes); the headers arrive with the first piece unless ``ttfb_ms``."""
    chunks = tuple(Chunk(at / 1000.0, data) for at, data in pieces)
    first = pieces[0][0] if pieces else 5.0
    last = end_ms if end_ms is not None else (pieces[-1][0] + 1.0 if pieces else 10.0)
    return Capture(
        request=Request(url=URL, watch=watch),
        chunks=chunks,
        curl_exit=curl_exit,
        status=200,
        http_version=http_version,
        headers=dict(headers),
        header_names=tuple(names) or tuple(name.title() for name in headers),
        ttfb_s=(ttfb_ms if ttfb_ms is not None else first) / 1000.0,
        sent_s=sent_ms / 1000.0,
        elapsed_s=last / 1000.0,
    )


def events(
    arrivals_ms: Sequence[float], stamps: Sequence[object], *, key: str = "ts", done: bytes = b"data: [DONE]\n\n"
) -> list[tuple[float, bytes]]:
    """One JSON event per arrival, ``key`` holding the stamp; the end marker after the last one."""
    pieces = [
        (at, f"data: {json.dumps({'content': f't{i}', key: stamp})}\n\n".encode())
        for i, (at, stamp) in enumerate(zip(arrivals_ms, stamps, strict=True))
    ]
    pieces.append((arrivals_ms[-1], done))
    return pieces


SPREAD = [40.0 + 50.0 * i for i in range(20)]  # 20 events, 50 ms apart: what streaming looks like
EMITTED_S = [EPOCH_S + 0.05 * i for i in range(20)]  # their emission, in seconds
BURST = [1000.0] * 20  # all at once after 1 s
FOURS = [40.0 + 200.0 * (i // 4) + 150.0 for i in range(20)]  # released four at a time, every 200 ms


def judge(pieces: list[tuple[float, bytes]], criteria: Criteria | None = None, **kwargs: object) -> CheckResult:
    return analyse(stream(pieces, **kwargs), criteria or Criteria(), name=None)  # type: ignore[arg-type]


class TestEmissionTimeUnits:
    @pytest.mark.parametrize(
        ("scale", "unit"), [(1.0, "seconds"), (1e3, "milliseconds"), (1e6, "microseconds"), (1e9, "nanoseconds")]
    )
    def test_a_streaming_server_is_incremental_in_every_unit(self, scale: float, unit: str) -> None:
        stamps = [stamp * scale if scale == 1.0 else int(stamp * scale) for stamp in EMITTED_S]
        result = judge(events(SPREAD, stamps))
        assert result.verdict == "incremental", result.diagnosis
        assert result.timestamps.startswith(f"`ts` in {unit} (epoch")
        assert result.lateness_max_ms is not None and result.lateness_max_ms < 1.0
        assert result.emission_span_ms == pytest.approx(950.0, abs=1.0)

    @pytest.mark.parametrize("scale", [1.0, 1e3, 1e6, 1e9])
    def test_bursts_of_four_are_buffered_in_every_unit(self, scale: float) -> None:
        # Seconds read as milliseconds made each stamp 0.05 "ms" apart: every event its own delivery.
        result = judge(events(FOURS, [stamp * scale for stamp in EMITTED_S]))
        assert result.verdict == "buffered"
        assert "in only 5 bursts (4+4+4+4+4)" in result.diagnosis

    def test_one_burst_in_seconds_is_buffered_with_its_real_lateness(self) -> None:
        result = judge(events(BURST, EMITTED_S))
        assert result.verdict == "buffered"
        assert result.lateness_max_ms == pytest.approx(950.0, abs=1.0)  # not the arrival time in "ms"

    def test_rfc3339_strings(self) -> None:
        stamps = [datetime.fromtimestamp(stamp, UTC).isoformat().replace("+00:00", "Z") for stamp in EMITTED_S]
        assert judge(events(SPREAD, stamps)).verdict == "incremental"
        result = judge(events(FOURS, stamps))
        assert result.verdict == "buffered" and result.timestamps.startswith("`ts` in RFC 3339")

    def test_go_nanosecond_rfc3339_with_an_offset(self) -> None:
        stamps = [
            datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "123+00:00" for stamp in EMITTED_S
        ]
        assert judge(events(SPREAD, stamps)).timestamps.startswith("`ts` in RFC 3339")

    @pytest.mark.parametrize(("scale", "unit"), [(1.0, "seconds"), (1e3, "milliseconds"), (1e6, "microseconds")])
    def test_relative_clocks_by_the_span_that_fits(self, scale: float, unit: str) -> None:
        stamps = [(12.5 + 0.05 * i) * scale for i in range(20)]  # time.monotonic(), performance.now()...
        result = judge(events(SPREAD, stamps))
        assert result.verdict == "incremental", result.diagnosis
        assert result.timestamps.startswith(f"`ts` in {unit} (a relative clock")
        assert judge(events(FOURS, stamps)).verdict == "buffered"

    @pytest.mark.parametrize("key", ["timestamp", "time", "created_at"])
    def test_other_keys(self, key: str) -> None:
        result = judge(events(SPREAD, [stamp * 1000 for stamp in EMITTED_S], key=key))
        assert result.timestamps.startswith(f"`{key}` in milliseconds")

    def test_no_stamps_judged_by_arrival_and_said_so(self) -> None:
        pieces = [(at, f"data: token {i}\n\n".encode()) for i, at in enumerate(SPREAD)]
        result = judge(pieces, Criteria(expect_done=False))
        assert result.verdict == "incremental"
        assert result.timestamps == "none in the events: judged by arrival alone"
        assert "emission times: none in the events: judged by arrival alone" in result.notes
        held = [(at, f"data: token {i}\n\n".encode()) for i, at in enumerate(FOURS)]
        assert judge(held, Criteria(expect_done=False)).verdict == "buffered"

    def test_a_constant_stamp_is_no_emission_time(self) -> None:
        # OpenAI's "created" is the same in every chunk of a reply.
        result = judge(events(FOURS, [int(EPOCH_S)] * 20, key="created"))
        assert result.timestamps == "`created` is the same in every event: judged by arrival alone"
        assert result.verdict == "buffered"

    def test_whole_seconds_are_too_coarse(self) -> None:
        stamps = [int(EPOCH_S + 0.6 + 0.05 * i) for i in range(20)]  # int(time.time()), crossing a second
        result = judge(events(SPREAD, stamps))
        assert result.timestamps == "`ts` in whole seconds is too coarse: judged by arrival alone"
        assert result.verdict == "incremental"

    def test_unit_is_decided_by_the_values_not_a_flag(self) -> None:
        payloads = [{"ts": 5.0 + 0.05 * i} for i in range(20)]
        seconds = read_timestamps(payloads, window_s=1.2)
        assert seconds.unit == "s"
        assert seconds.emitted_ms[1] == pytest.approx(5050.0)
        millis = read_timestamps([{"ts": 5000 + 50 * i} for i in range(20)], window_s=1.2)
        assert millis.unit == "ms"


class TestShapes:
    def test_openai_chunks_and_done(self) -> None:
        pieces = [
            (at, b'data: {"choices": [{"delta": {"content": "w%d "}}], "created": 1780000000}\n\n' % i)
            for i, at in enumerate(SPREAD)
        ]
        pieces.append((SPREAD[-1] + 5, b"data: [DONE]\n\n"))
        result = judge(pieces)
        assert (result.verdict, result.events, result.tokens, result.done) == ("incremental", 20, 20, True)

    def test_anthropic_typed_events(self) -> None:
        def typed(kind: str, body: dict[str, object]) -> bytes:
            return f"event: {kind}\ndata: {json.dumps({'type': kind, **body})}\n\n".encode()

        pieces = [(10.0, typed("message_start", {"message": {"id": "m"}}))]
        pieces.append((12.0, typed("content_block_start", {"index": 0})))
        pieces += [
            (at, typed("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": f"w{i} "}}))
            for i, at in enumerate(SPREAD)
        ]
        pieces.insert(8, (400.0, typed("ping", {})))
        pieces += [(1100.0, typed("content_block_stop", {"index": 0})), (1101.0, typed("message_stop", {}))]
        result = judge(sorted(pieces, key=lambda piece: piece[0]))
        assert result.verdict == "incremental", result.diagnosis
        assert (result.tokens, result.done, result.heartbeats) == (20, True, 1)  # ping is a heartbeat, not an event
        assert result.events == 23  # message_start, content_block_start, 20 deltas, content_block_stop

    def test_sse_starlette_pings_event_names_and_multiline_data(self) -> None:
        pieces = [(5.0, b": ping - 2026-06-01 12:00:00.000000+00:00\r\n\r\n")]
        pieces += [
            (at, f"event: token\r\nid: {i}\r\ndata: line one\r\ndata: line {i}\r\n\r\n".encode())
            for i, at in enumerate(SPREAD)
        ]
        pieces.append((SPREAD[-1] + 1, b"event: done\r\ndata: bye\r\n\r\n"))
        result = judge(pieces)
        assert (result.verdict, result.events, result.heartbeats, result.done) == ("incremental", 20, 1, True)


class TestSilences:
    def test_headers_held_until_the_first_write_are_a_silence(self) -> None:
        # A "thinking" server: 3 s without a byte, not even its headers, then the answer streams.
        late = [3000.0 + at for at in SPREAD]
        result = judge(events(late, [stamp * 1000 for stamp in EMITTED_S]))
        assert result.longest_silence_ms == pytest.approx(3039.0, abs=1.0)
        assert result.longest_silence.startswith("3039 ms before the response headers (1-3040 ms)")

    def test_silence_after_the_headers(self) -> None:
        late = [3000.0 + at for at in SPREAD]
        result = judge(events(late, [stamp * 1000 for stamp in EMITTED_S]), ttfb_ms=4.0)
        assert result.longest_silence.startswith("3036 ms between the headers and the first byte of the body")

    def test_heartbeats_expected_and_the_headers_held_back(self) -> None:
        late = [3000.0 + at for at in SPREAD]
        criteria = Criteria(expect_heartbeats=True, heartbeat_interval_ms=1000)
        result = judge(events(late, [stamp * 1000 for stamp in EMITTED_S]), criteria)
        assert result.verdict == "heartbeat_missing"
        assert "(1-3040 ms, before the response headers)" in result.diagnosis
        assert "sends its headers only with its first event" in result.diagnosis

    def test_no_silence_worth_naming_in_a_steady_stream(self) -> None:
        result = judge(events(SPREAD, [stamp * 1000 for stamp in EMITTED_S]))
        assert result.longest_silence_ms is not None and result.longest_silence_ms <= 51.0


class TestWatch:
    def test_an_endless_feed_watched_for_a_window_is_judged_not_timed_out(self) -> None:
        pieces = [(at, f"data: {{\"ts\": {stamp * 1000}}}\n\n".encode()) for at, stamp in zip(SPREAD, EMITTED_S, strict=True)]
        result = judge(pieces, curl_exit=28, end_ms=1200.0, watch=1.2)
        assert result.verdict == "incremental", result.diagnosis
        assert result.ended_cleanly

    def test_without_watch_the_same_capture_is_a_timeout(self) -> None:
        pieces = [(at, f"data: {{\"ts\": {stamp * 1000}}}\n\n".encode()) for at, stamp in zip(SPREAD, EMITTED_S, strict=True)]
        assert judge(pieces, curl_exit=28, end_ms=1200.0).verdict == "timeout"

    def test_a_watched_feed_that_buffers_is_buffered(self) -> None:
        pieces = [(at, f"data: {{\"ts\": {stamp * 1000}}}\n\n".encode()) for at, stamp in zip(FOURS, EMITTED_S, strict=True)]
        assert judge(pieces, curl_exit=28, end_ms=1200.0, watch=1.2).verdict == "buffered"


class TestCompressedWording:
    def gzip_pieces(self, arrivals: Sequence[float], *, flush: bool) -> list[tuple[float, bytes]]:
        import zlib  # noqa: PLC0415

        compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
        out: list[tuple[float, bytes]] = []
        for i, at in enumerate(arrivals):
            data = f"data: {{\"ts\": {EMITTED_S[i] * 1000}}}\n\n".encode()
            chunk = compressor.compress(data) + (compressor.flush(zlib.Z_SYNC_FLUSH) if flush else b"")
            out.append((at, chunk))
        out.append((arrivals[-1], compressor.compress(b"data: [DONE]\n\n") + compressor.flush()))
        return [(at, data) for at, data in out if data]

    def test_all_in_one_burst_is_not_called_twenty_deliveries(self) -> None:
        gz = {**SSE, "content-encoding": "gzip"}
        result = judge(self.gzip_pieces(BURST, flush=False), headers=gz)
        assert result.verdict == "compressed"
        assert "(20 events decoded; all arrived in one burst)" in result.diagnosis
        assert "streams here only because" not in result.diagnosis

    def test_flushed_per_event_is_called_streaming(self) -> None:
        gz = {**SSE, "content-encoding": "gzip"}
        result = judge(self.gzip_pieces(SPREAD, flush=True), headers=gz)
        assert "(20 events decoded; each arrived on its own)" in result.diagnosis


class TestFingerprint:
    @pytest.mark.parametrize(
        ("headers", "name"),
        [
            ({"server": "nginx/1.22.1"}, "nginx"),
            ({"server": "Apache/2.4.71 (Debian)"}, "Apache httpd"),
            ({"server": "lighttpd/1.4.69"}, "lighttpd"),
            ({"server": "Caddy"}, "Caddy"),
            ({"server": "cloudflare", "cf-ray": "8a1b-AMS"}, "Cloudflare"),
            ({"x-amzn-trace-id": "Root=1-abc"}, "AWS (ALB / API Gateway / Lambda)"),
            ({"server": "awselb/2.0"}, "AWS (ALB / API Gateway / Lambda)"),
            ({"via": "1.1 abc.cloudfront.net (CloudFront)", "x-amz-cf-id": "x"}, "Amazon CloudFront"),
            ({"via": "1.1 google", "x-cloud-trace-context": "abc/1"}, "Google Cloud load balancer / Google Front End"),
            ({"server": "Vercel", "x-vercel-id": "fra1::abc"}, "Vercel"),
            ({"server": "envoy", "x-envoy-upstream-service-time": "3"}, "Envoy (Istio)"),
            ({"via": "1.1 vegur"}, "Heroku router"),
        ],
    )
    def test_headers_name_the_proxy(self, headers: dict[str, str], name: str) -> None:
        layers = fingerprint(headers)
        assert name in [layer.name for layer in layers]

    def test_haproxy_by_its_lower_case_header_names(self) -> None:
        names = ["content-type", "cache-control", "transfer-encoding"]
        assert [layer.name for layer in fingerprint(dict.fromkeys(names, "x"), names, "1.1")] == ["HAProxy"]

    @pytest.mark.parametrize(
        ("names", "server", "version"),
        [
            (["Content-Type", "Transfer-Encoding"], "", "1.1"),  # mixed case: not HAProxy
            (["content-type", "server"], "uvicorn", "1.1"),  # uvicorn sends lower case itself
            (["content-type"], "", "2"),  # HTTP/2 is lower case by the protocol
        ],
    )
    def test_lower_case_names_only_count_where_they_mean_haproxy(self, names: list[str], server: str, version: str) -> None:
        headers = {name.lower(): "x" for name in names} | ({"server": server} if server else {})
        assert "HAProxy" not in [layer.name for layer in fingerprint(headers, names, version)]

    def test_cdn_in_front_of_nginx_is_named_first_and_the_advice_covers_both(self) -> None:
        headers = {**SSE, "server": "cloudflare", "cf-ray": "1", "via": "1.1 nginx"}
        result = judge(events(BURST, [stamp * 1000 for stamp in EMITTED_S]), headers=headers)
        assert result.proxies[0].startswith("Cloudflare")
        assert "nginx" in result.proxies[1]
        assert result.diagnosis.startswith("nginx delivers all 20 events in one burst")
        assert "proxy_buffering off" in result.diagnosis and "Response Buffering off" in result.diagnosis

    def test_nothing_named_keeps_the_generic_advice(self) -> None:
        result = judge(events(BURST, [stamp * 1000 for stamp in EMITTED_S]), headers={**SSE, "server": "gunicorn"})
        assert result.diagnosis.endswith(": check proxy_buffering / gzip for text/event-stream")
        assert result.proxies == []
