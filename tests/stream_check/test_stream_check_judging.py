"""Measuring, verdicts and diagnoses on exact synthetic timelines (no curl, no server)."""

from __future__ import annotations

import gzip
import hashlib
import json
import re

import pytest

from ansible_collections.pi5.streaming.plugins.module_utils.stream_check import (
    VERDICTS,
    CheckResult,
    Chunk,
    Criteria,
    Hop,
    Request,
    UsageError,
    analyse,
    attribute,
    check_hops,
    check_integrity,
    delivery_groups,
    largest_burst,
    relative_lateness,
    render_hops_table,
    render_table,
)
from tests.stream_check.stream_check_helpers import SSE_HEADERS, capture, paced, sse_event, token

NGINX = {**SSE_HEADERS, "server": "nginx/1.22.1"}


class TestMeasures:
    def test_largest_burst_counts_events_within_the_window(self) -> None:
        assert largest_burst([0, 5, 9, 30, 31, 200], 10) == 3
        assert largest_burst([0, 50, 100], 10) == 1
        assert largest_burst([], 10) == 0

    def test_delivery_groups_join_events_held_back_and_released_together(self) -> None:
        arrivals = [500, 500, 500, 1000, 1000, 1000]
        emitted = [0, 50, 100, 150, 200, 250]
        assert delivery_groups(arrivals, emitted, 10) == [3, 3]

    def test_a_fast_emitter_is_not_a_buffer(self) -> None:
        # Emitted 2 ms apart and arriving 2 ms apart: nothing was held back.
        arrivals = [float(i * 2) for i in range(50)]
        assert delivery_groups(arrivals, arrivals, 10) == [1] * 50
        # Without ts the same timeline cannot be told from a burst.
        assert delivery_groups(arrivals, [None] * 50, 10) == [50]

    def test_lateness_ignores_the_clock_offset(self) -> None:
        arrivals = [100.0, 150.0, 400.0]
        for offset in (0.0, -5e12, 1.7e12):
            emitted = [ts + offset for ts in (0.0, 50.0, 100.0)]
            assert relative_lateness(arrivals, emitted) == pytest.approx([0.0, 0.0, 200.0])

    def test_lateness_baseline_is_the_least_delayed_event_not_the_first(self) -> None:
        # The first event sat in a buffer with the next ones: relative to it, the
        # lateness would come out negative and hide the buffering.
        arrivals = [300.0, 300.0, 300.0, 310.0]
        emitted = [0.0, 100.0, 200.0, 300.0]
        assert relative_lateness(arrivals, emitted) == pytest.approx([290.0, 190.0, 90.0, 0.0])

    def test_lateness_needs_two_stamped_events(self) -> None:
        assert relative_lateness([1.0, 2.0], [None, 5.0]) == []


class TestIntegrity:
    def summary(self, contents: list[str]) -> dict[str, object]:
        text = "".join(contents).encode()
        return {"tokens": len(contents), "bytes": len(text), "sha256": hashlib.sha256(text).hexdigest()}

    def test_matching_summary(self) -> None:
        assert check_integrity(["a", "ü"], self.summary(["a", "ü"]))[0] == "ok"

    def test_lost_token(self) -> None:
        state, detail = check_integrity(["a"], self.summary(["a", "ü"]))
        assert state == "mismatch"
        assert detail.startswith("tokens 1 != 2, bytes 1 != 3, sha256 ")

    def test_altered_bytes_same_length(self) -> None:
        state, detail = check_integrity(["b"], self.summary(["a"]))
        assert (state, detail.split(" ")[0]) == ("mismatch", "sha256")

    def test_no_summary(self) -> None:
        assert check_integrity(["a"], None)[0] == "not_checked"
        assert check_integrity(["a"], {"type": "done"})[0] == "not_checked"


def judge(
    cap_kwargs: dict[str, object] | None = None, criteria: Criteria | None = None, **kwargs: object
) -> CheckResult:
    return analyse(capture(**{**(cap_kwargs or {}), **kwargs}), criteria or Criteria())  # type: ignore[arg-type]


class TestIncremental:
    def test_paced_stream_is_incremental_with_the_summary_line(self) -> None:
        result = judge(arrivals_ms=paced(20, 50, start_ms=45))
        assert result.verdict == "incremental" and result.incremental
        assert result.failures == []
        assert result.summary == (
            "incremental: 20 events, first after 45 ms, spread over 950 ms, "
            "largest burst 1 (5%), max lateness 0 ms (HTTP/1.1)"
        )
        assert result.integrity == "ok" and result.ended_cleanly and result.done
        assert (result.events, result.tokens, result.heartbeats) == (20, 20, 1)
        assert result.span_ratio == 1.0 and result.deliveries == 20

    def test_jitter_within_limits_stays_incremental(self) -> None:
        arrivals = [40 + i * 50 + (25 if i % 3 == 0 else 0) for i in range(20)]
        result = judge(arrivals_ms=arrivals, emitted_ms=paced(20, 50))
        assert result.verdict == "incremental", result.diagnosis

    def test_without_ts_spread_events_are_incremental(self) -> None:
        result = judge(arrivals_ms=paced(10, 50), emitted_ms=[None] * 10)
        assert result.verdict == "incremental"
        assert result.lateness_max_ms is None and result.span_ratio is None
        assert "lateness" not in result.summary

    def test_fast_emitter_with_ts_is_incremental(self) -> None:
        arrivals = paced(100, 2)
        assert judge(arrivals_ms=arrivals).verdict == "incremental"

    def test_result_is_json_serialisable_and_complete(self) -> None:
        result = judge(arrivals_ms=paced(10, 50))
        data = json.loads(json.dumps(result.to_dict()))
        for key in (
            "verdict",
            "incremental",
            "diagnosis",
            "status",
            "http_version",
            "content_type",
            "content_encoding",
            "ttfb_ms",
            "first_event_ms",
            "span_ms",
            "events",
            "heartbeats",
            "largest_burst",
            "burst_share",
            "lateness_p50_ms",
            "lateness_max_ms",
            "ended_cleanly",
            "integrity",
            "headers",
            "url",
            "summary",
            "arrivals_ms",
        ):
            assert key in data
        assert data["verdict"] in VERDICTS
        assert data["arrivals_ms"] == paced(10, 50)


class TestBuffered:
    def test_one_burst_through_nginx_names_nginx_and_the_settings(self) -> None:
        result = judge(arrivals_ms=[2000.0] * 20, emitted_ms=paced(20, 50), headers=NGINX)
        assert result.verdict == "buffered" and not result.incremental
        # The Server header names nginx, so the advice is nginx's own setting.
        assert result.diagnosis.startswith(
            "nginx delivers all 20 events in one burst after 2.0 s: nginx (named by Server: nginx/1.22.1): "
            "proxy_buffering off in the stream's location"
        )
        assert result.proxies == ["nginx (Server: nginx/1.22.1)"]
        assert result.largest_burst == 20 and result.burst_share == 1.0 and result.deliveries == 1

    def test_one_burst_without_ts(self) -> None:
        result = judge(arrivals_ms=[1500.0] * 8, emitted_ms=[None] * 8)
        assert result.verdict == "buffered"
        assert result.diagnosis.startswith("the server delivers all 8 events in one burst after 1.5 s")

    @pytest.mark.parametrize(("groups", "sizes"), [(2, "10+10"), (3, "7+7+6")])
    def test_a_few_bunches_are_buffering(self, groups: int, sizes: str) -> None:
        emitted = paced(20, 50)
        size = -(-20 // groups)
        # Each bunch is released when its last event is emitted: spans and lateness look fine.
        arrivals = [emitted[min((i // size + 1) * size, 20) - 1] + 5 for i in range(20)]
        result = judge(arrivals_ms=arrivals, emitted_ms=emitted)
        assert result.verdict == "buffered"
        assert f"in only {groups} bursts ({sizes})" in result.diagnosis
        assert result.burst_share is not None and result.burst_share <= 0.5  # share alone would pass
        assert result.span_ratio is not None and result.span_ratio >= 0.5  # so would the span

    def test_burst_share(self) -> None:
        emitted = paced(20, 50)
        arrivals = [600.0] * 12 + emitted[12:]
        result = judge(arrivals_ms=arrivals, emitted_ms=emitted, criteria=Criteria(min_delivery_ratio=0.0))
        assert result.verdict == "buffered"
        assert "delivers 12 of 20 events (60%) in one burst" in result.diagnosis

    def test_span_ratio(self) -> None:
        emitted = paced(20, 100)  # emitted over 1900 ms
        arrivals = [2000 + i * 20 for i in range(20)]  # arrive over 380 ms, 20 ms apart
        result = judge(arrivals_ms=arrivals, emitted_ms=emitted, criteria=Criteria(max_lateness_ms=5000))
        assert result.verdict == "buffered"
        assert "events emitted over 1900 ms within 380 ms (20% of the emission span)" in result.diagnosis

    def test_lateness(self) -> None:
        emitted = paced(20, 50)
        arrivals = [at + (1500 if i >= 10 else 0) for i, at in enumerate(emitted)]
        result = judge(arrivals_ms=arrivals, emitted_ms=emitted)
        assert result.verdict == "buffered"
        assert "delivers events up to 1500 ms late (limit 1000 ms)" in result.diagnosis
        assert result.lateness_max_ms == 1500.0 and result.lateness_p50_ms == 750.0

    def test_content_length_on_a_stream_is_called_out(self) -> None:
        result = judge(
            arrivals_ms=[900.0] * 10, emitted_ms=paced(10, 50), headers={**SSE_HEADERS, "content-length": "1234"}
        )
        assert "Content-Length 1234" in result.diagnosis


class TestBrokenStreams:
    def test_no_done_event_is_truncated(self) -> None:
        result = judge(arrivals_ms=paced(10, 50), done=False)
        assert result.verdict == "truncated" and not result.ended_cleanly
        assert result.diagnosis.startswith(
            "stream ended after 200 without a done event (10 events over 490 ms): truncated by a timeout or a proxy"
        )

    def test_connection_cut_names_curl_error(self) -> None:
        result = judge(
            arrivals_ms=paced(10, 50),
            done=False,
            curl_exit=18,
            curl_error="transfer closed with outstanding read data remaining",
        )
        assert result.verdict == "truncated"
        assert "curl 18: transfer closed with outstanding read data remaining" in result.diagnosis

    def test_generic_endpoint_without_done_ends_cleanly_on_exit_0(self) -> None:
        result = judge(arrivals_ms=paced(10, 50), done=False, criteria=Criteria(expect_done=False))
        assert result.verdict == "incremental" and result.ended_cleanly and result.integrity == "not_checked"

    def test_generic_endpoint_cut_is_truncated(self) -> None:
        result = judge(
            arrivals_ms=paced(10, 50),
            done=False,
            curl_exit=56,
            curl_error="Recv failure",
            criteria=Criteria(expect_done=False),
        )
        assert result.verdict == "truncated" and "curl 56" in result.diagnosis

    def test_integrity_mismatch(self) -> None:
        wrong = b'data: {"type": "done", "content": {"tokens": 10, "sha256": "00", "bytes": 70}}\n\n'
        result = judge(arrivals_ms=paced(10, 50), done_bytes=wrong)
        assert result.verdict == "integrity" and result.integrity == "mismatch"
        assert result.diagnosis.startswith("the reassembled tokens do not match the done event (")
        assert "sha256" in result.diagnosis and "sub_filter" in result.diagnosis

    def test_too_few_events(self) -> None:
        result = judge(arrivals_ms=paced(3, 50))
        assert result.verdict == "too_few_events"
        assert result.diagnosis.startswith("only 3 events arrived (need at least 5)")

    def test_every_failed_criterion_is_listed_verdict_first(self) -> None:
        result = judge(arrivals_ms=[800.0] * 10, emitted_ms=paced(10, 50), done=False)
        assert [failure.split(":")[0] for failure in result.failures] == ["truncated", "buffered"]

    def test_error_event_is_noted(self) -> None:
        cap = capture(arrivals_ms=paced(6, 50))
        error = b'data: {"type": "error", "content": "provider failed"}\n\n'
        chunks = (*cap.chunks[:-1], Chunk(cap.chunks[-1].at, error + cap.chunks[-1].data))
        result = analyse(type(cap)(**{**cap.__dict__, "chunks": chunks}))
        assert "the stream carried an error event: provider failed" in result.notes


class TestHttpAndTransport:
    def test_502_from_the_proxy(self) -> None:
        result = judge(arrivals_ms=[], done=False, status=502, headers={"content-type": "text/html", "server": "nginx"})
        assert result.verdict == "http_error"
        assert result.diagnosis == (
            "502 from the proxy: nothing listens on the upstream port "
            "(is the backend running on the port nginx proxies to?)"
        )
        assert result.failures == [f"http_error: {result.diagnosis}"]  # nothing piled on top

    @pytest.mark.parametrize(
        ("status", "headers", "expected"),
        [
            (504, {}, "504 from the proxy: the upstream accepted the connection"),
            (404, {}, "404 for /api/probe/stream: no location routes this path"),
            (301, {"location": "https://pi5.local/"}, "301 redirect to https://pi5.local/: the check does not follow"),
            (401, {}, "HTTP 401 from the server: the endpoint wants credentials"),
            (418, {"server": "nginx"}, "HTTP 418 from nginx: see the error log of nginx"),
        ],
    )
    def test_other_statuses(self, status: int, headers: dict[str, str], expected: str) -> None:
        result = judge(arrivals_ms=[], done=False, status=status, headers=headers)
        assert result.verdict == "http_error"
        assert result.diagnosis.startswith(expected)

    def test_html_instead_of_a_stream(self) -> None:
        result = judge(arrivals_ms=[], done=False, headers={"content-type": "text/html"})
        assert result.verdict == "wrong_content_type"
        assert result.diagnosis.startswith("Content-Type is text/html, not text/event-stream")
        assert "try_files" in result.diagnosis

    def test_gzip_compressed_stream(self) -> None:
        cap = capture(arrivals_ms=paced(10, 50), headers={**SSE_HEADERS, "content-encoding": "gzip"})
        body = b"".join(chunk.data for chunk in cap.chunks)
        gz = type(cap)(**{**cap.__dict__, "chunks": (Chunk(0.6, gzip.compress(body)),)})
        result = analyse(gz)
        assert result.verdict == "compressed" and result.content_encoding == "gzip"
        # Worded by what was measured: all ten in one burst, not "ten deliveries".
        assert result.diagnosis == (
            "response is gzip-compressed (10 events decoded; all arrived in one burst): "
            "gzip holds output until its buffer fills unless every hop flushes; exclude text/event-stream from gzip_types"
        )
        assert "buffered: " in result.failures[1]  # decoded, so the burst is measured too

    def test_brotli_compressed_stream(self) -> None:
        result = judge(arrivals_ms=[], done=False, headers={**SSE_HEADERS, "content-encoding": "br"})
        assert result.verdict == "compressed" and "brotli_types" in result.diagnosis
        assert len(result.failures) == 1

    @pytest.mark.parametrize(
        ("exit_code", "error", "verdict", "expected"),
        [
            (
                7,
                "Failed to connect to 127.0.0.1 port 7776 after 0 ms: Couldn't connect to server",
                "connect_error",
                "nothing accepts connections on 127.0.0.1:7776",
            ),
            (6, "Could not resolve host: pi5.local", "connect_error", "cannot resolve 127.0.0.1"),
            (52, "Empty reply from server", "connect_error", "127.0.0.1:7776 closed the connection without"),
            (
                60,
                "SSL: no alternative certificate subject name matches target host name 'pi5.local'",
                "tls_error",
                "TLS certificate not valid for pi5.local",
            ),
            (
                60,
                "SSL certificate problem: self-signed certificate",
                "tls_error",
                "TLS certificate of 127.0.0.1 is not trusted",
            ),
            (
                35,
                "error:0A00010B:SSL routines::wrong version number",
                "tls_error",
                "TLS handshake with 127.0.0.1:7776 failed",
            ),
            (
                28,
                "Connection timed out after 5001 milliseconds",
                "timeout",
                "127.0.0.1:7776 did not connect within 5 s",
            ),
            (
                28,
                "Operation timed out after 10000 milliseconds with 0 bytes received",
                "timeout",
                "127.0.0.1:7776 did not answer within 10 s",
            ),
        ],
    )
    def test_no_response(self, exit_code: int, error: str, verdict: str, expected: str) -> None:
        result = judge(arrivals_ms=[], done=False, status=None, curl_exit=exit_code, curl_error=error)
        assert result.verdict == verdict
        assert result.diagnosis.startswith(expected)
        assert result.summary.startswith(f"{verdict}: ")
        assert len(result.failures) == 1

    def test_headers_then_silence_until_max_time(self) -> None:
        result = judge(arrivals_ms=[], done=False, curl_exit=28, curl_error="Operation timed out")
        assert result.verdict == "timeout"
        assert result.diagnosis.startswith("HTTP 200 headers arrived after 5 ms, then no event within 10 s")
        assert "proxy buffering" in result.diagnosis

    def test_stream_longer_than_max_time(self) -> None:
        result = judge(arrivals_ms=paced(10, 50), done=False, curl_exit=28, curl_error="Operation timed out")
        assert result.verdict == "timeout"
        assert result.diagnosis.startswith("the stream was still open after 10 s (10 events arrived)")


class TestStaleConfig:
    criteria = Criteria(expect_header="X-Config-Revision: new")

    def test_matching_revision(self) -> None:
        headers = {**SSE_HEADERS, "x-config-revision": "new"}
        result = judge(arrivals_ms=paced(10, 50), headers=headers, criteria=self.criteria)
        assert result.verdict == "incremental"
        assert result.headers["X-Config-Revision"] == "new"

    def test_old_revision(self) -> None:
        headers = {**SSE_HEADERS, "x-config-revision": "old"}
        result = judge(arrivals_ms=paced(10, 50), headers=headers, criteria=self.criteria)
        assert result.verdict == "stale_config"
        assert result.diagnosis.startswith("X-Config-Revision is 'old', expected 'new': a stale config answered")

    def test_missing_revision(self) -> None:
        result = judge(arrivals_ms=paced(10, 50), criteria=self.criteria)
        assert result.verdict == "stale_config"
        assert result.diagnosis.startswith("the response lacks X-Config-Revision (expected 'new')")

    def test_stale_revision_wins_over_the_error_it_causes(self) -> None:
        headers = {"content-type": "text/html", "x-config-revision": "old"}
        result = judge(arrivals_ms=[], done=False, status=404, headers=headers, criteria=self.criteria)
        assert [failure.split(":")[0] for failure in result.failures] == ["stale_config", "http_error"]


class TestHeartbeats:
    criteria = Criteria(expect_heartbeats=True, heartbeat_interval_ms=500)

    def timeline(self) -> list[float]:
        return [*paced(5, 50), *(at + 2000 for at in paced(5, 50, start_ms=290))]  # 2 s pause after 5 events

    def test_keepalives_during_the_pause(self) -> None:
        result = judge(
            arrivals_ms=self.timeline(),
            comments_ms=[700, 1200, 1700, 2200],
            criteria=self.criteria,
            emitted_ms=self.timeline(),
        )
        assert result.verdict == "incremental", result.diagnosis
        assert result.heartbeats == 5  # the open marker and four keepalives

    def test_silent_pause(self) -> None:
        result = judge(arrivals_ms=self.timeline(), emitted_ms=self.timeline(), criteria=self.criteria)
        assert result.verdict == "heartbeat_missing"
        assert re.match(
            r"the stream was silent for 2050 ms \(240-2290 ms, between two reads of the body\) without a "
            r"': keepalive' comment",
            result.diagnosis,
        )

    def test_no_pause_proves_nothing(self) -> None:
        result = judge(arrivals_ms=paced(10, 50), criteria=self.criteria)
        assert result.verdict == "heartbeat_missing"
        assert result.diagnosis.startswith("heartbeats not proven: no pause between events was longer")

    def test_not_expected_not_checked(self) -> None:
        assert judge(arrivals_ms=self.timeline(), emitted_ms=self.timeline()).verdict == "incremental"


class TestNotes:
    def test_http2_asked_but_http11_answered(self) -> None:
        cap = capture(arrivals_ms=paced(10, 50))
        asked = type(cap)(**{**cap.__dict__, "request": Request(url=cap.request.url, http_version="2")})
        assert "HTTP/2 was asked for but the server answered HTTP/1.1" in analyse(asked).notes


def fake(name: str, verdict: str, diagnosis: str = "", observed: str = "") -> CheckResult:
    result = judge(arrivals_ms=paced(10, 50))
    result.name, result.verdict, result.incremental = name, verdict, verdict == "incremental"  # type: ignore[assignment]
    result.diagnosis, result.observed = diagnosis or verdict, observed or diagnosis or verdict
    return result


class TestAttribution:
    def test_all_hops_incremental(self) -> None:
        results = [fake("backend", "incremental"), fake("nginx", "incremental")]
        assert attribute(results) == (None, "every hop streams incrementally (backend, nginx)")

    def test_backend_itself_buffers(self) -> None:
        burst = "backend delivers all 20 events in one burst after 1.0 s"
        results = [fake("backend", "buffered", f"{burst}: check proxy_buffering", burst), fake("nginx", "buffered")]
        first, diagnosis = attribute(results)
        assert first == "backend"
        assert diagnosis.startswith(f"backend itself buffers: {burst}: the application holds its output")

    def test_nginx_buffers_behind_a_streaming_backend(self) -> None:
        burst = "nginx delivers all 20 events in one burst after 2.0 s: check proxy_buffering / gzip"
        results = [fake("backend", "incremental"), fake("nginx", "buffered", burst), fake("tunnel", "buffered")]
        assert attribute(results) == ("nginx", f"nginx buffers: backend streams incrementally, but {burst}")

    def test_third_hop(self) -> None:
        results = [fake("backend", "incremental"), fake("nginx", "incremental"), fake("tunnel", "compressed", "gz")]
        assert attribute(results) == (
            "tunnel",
            "tunnel compresses the stream: backend, nginx stream incrementally, but gz",
        )

    def test_backend_down(self) -> None:
        results = [fake("backend", "connect_error", "nothing accepts connections"), fake("nginx", "http_error")]
        assert attribute(results)[1] == "backend itself is unreachable: nothing accepts connections"

    def test_check_hops_runs_every_hop_reports_in_path_order_and_can_stop(self) -> None:
        hops = [Hop(name, Request(url=f"http://{name}.test/")) for name in ("backend", "nginx", "tunnel")]
        verdicts = {"backend": "incremental", "nginx": "buffered", "tunnel": "incremental"}
        ran: list[str] = []

        def runner(hop: Hop) -> CheckResult:
            ran.append(hop.name)
            return fake(hop.name, verdicts[hop.name], f"{hop.name} broke")

        full = check_hops(hops, runner=runner)
        assert sorted(ran) == ["backend", "nginx", "tunnel"]  # together, in threads: any order
        assert (full.verdict, full.first_bad_hop, full.incremental) == ("buffered", "nginx", False)
        assert [hop.name for hop in full.hops] == ["backend", "nginx", "tunnel"]
        ran.clear()
        short = check_hops(hops, runner=runner, stop_on_failure=True)
        assert ran == ["backend", "nginx"] and len(short.hops) == 2
        table = render_hops_table(full)
        assert table.splitlines()[0].split() == ["hop", "verdict", "status", "events", "first", "span", "burst", "late"]
        assert (
            table.splitlines()[-1]
            == "=> buffered at nginx: nginx buffers: backend streams incrementally, but nginx broke"
        )

    def test_no_hops_is_a_usage_error(self) -> None:
        with pytest.raises(UsageError):
            check_hops([])


class TestRenderTable:
    def test_table_shows_the_measurements(self) -> None:
        table = render_table(judge(arrivals_ms=paced(20, 50, start_ms=45)))
        assert table.splitlines()[0] == "stream check"
        assert "  verdict      incremental" in table
        assert "  first event  45 ms" in table
        assert "  bursts       largest 1 (5%), 20 deliveries" in table
        assert "  integrity    ok (20 tokens, 130 bytes, sha256 matches)" in table

    def test_failed_table_shouts_the_verdict_and_diagnoses(self) -> None:
        table = render_table(judge(arrivals_ms=[2000.0] * 20, emitted_ms=paced(20, 50), headers=NGINX))
        assert "  verdict      BUFFERED" in table
        assert "  diagnosis    nginx delivers all 20 events in one burst after 2.0 s" in table


def test_helpers_build_what_the_backend_sends() -> None:
    assert sse_event(0, 5.0) == b'id: 1\ndata: {"type": "token", "content": "t\\u00f6k0 ", "ts": 5}\n\n'
    assert token(3) == "tök3 "
