"""The whole check (curl, timing, verdict, diagnosis) against live streams on 127.0.0.1."""

from __future__ import annotations

import json
import re
import time

import pytest

from ansible_collections.pi5.streaming.plugins.module_utils.stream_check import (
    CheckResult,
    Criteria,
    CurlMissing,
    Hop,
    Request,
    accepted_encodings,
    check_hops,
    check_stream,
    fetch,
    parse_sse,
)
from tests.stream_check.stream_check_server import SseServer, TlsServer

BUFFER_ADVICE = ": check proxy_buffering / gzip for text/event-stream"


def check(url: str, criteria: Criteria | None = None, name: str | None = None, **request: object) -> CheckResult:
    return check_stream(Request(url=url, **request), criteria or Criteria(), name=name)  # type: ignore[arg-type]


class TestIncremental:
    def test_shipped_probe_shape_is_incremental_and_fast(self, server: SseServer) -> None:
        result = check(server.url("/stream?n=20&interval_ms=50"))
        assert result.verdict == "incremental", result.diagnosis
        assert (result.status, result.http_version, result.events, result.tokens) == (200, "1.1", 20, 20)
        assert result.integrity == "ok" and result.ended_cleanly
        assert result.span_ratio is not None and result.span_ratio > 0.8
        assert result.lateness_max_ms is not None and result.lateness_max_ms < 500
        assert result.elapsed_ms < 3000
        assert re.fullmatch(
            r"incremental: 20 events, first after \d+ ms, spread over \d+ ms, largest burst \d+ \(\d+%\), "
            r"max lateness \d+ ms \(HTTP/1\.1\)",
            result.summary,
        )

    @pytest.mark.parametrize(
        "query", ["eol=crlf", "eol=cr", "split=1", "framing=close"], ids=["crlf", "cr", "split-utf8", "close-delimited"]
    )
    def test_wire_variants(self, server: SseServer, query: str) -> None:
        result = check(server.url(f"/stream?n=8&interval_ms=30&{query}"))
        assert result.verdict == "incremental", result.diagnosis
        assert result.integrity == "ok"  # every multi-byte token survived the split reads


class TestBuffered:
    def test_one_burst_after_the_emission(self, server: SseServer) -> None:
        result = check(server.url("/burst?n=10&interval_ms=30"))
        assert result.verdict == "buffered"
        assert re.fullmatch(
            r"the server delivers all 10 events in one burst after \d\.\d s" + BUFFER_ADVICE, result.diagnosis
        )
        assert (result.largest_burst, result.deliveries, result.integrity) == (10, 1, "ok")

    def test_named_hop_appears_in_the_diagnosis(self, server: SseServer) -> None:
        result = check(server.url("/burst?n=10&interval_ms=30"), name="nginx")
        assert result.diagnosis.startswith("nginx delivers all 10 events in one burst after ")

    @pytest.mark.parametrize(("query", "expected"), [("n=12&groups=3", "(4+4+4)"), ("n=10&groups=2", "(5+5)")])
    def test_coalesced_bunches(self, server: SseServer, query: str, expected: str) -> None:
        result = check(server.url(f"/bunches?interval_ms=30&{query}"))
        assert result.verdict == "buffered"
        assert f"events in only {result.deliveries} bursts {expected}" in result.diagnosis
        assert result.burst_share is not None and result.burst_share <= 0.5


class TestBroken:
    def test_connection_cut_after_the_200(self, server: SseServer) -> None:
        result = check(server.url("/truncate?n=6&interval_ms=20&mode=cut"))
        assert result.verdict == "truncated" and result.curl_exit == 18
        assert result.diagnosis.startswith("stream ended after 200 without a done event (6 events over ")
        assert "curl 18" in result.diagnosis and "truncated by a timeout or a proxy" in result.diagnosis

    def test_clean_end_without_done(self, server: SseServer) -> None:
        result = check(server.url("/truncate?n=6&interval_ms=20&mode=clean"))
        assert result.verdict == "truncated" and result.curl_exit == 0
        assert "curl" not in result.diagnosis

    def test_no_done_is_fine_for_a_generic_endpoint(self, server: SseServer) -> None:
        result = check(server.url("/truncate?n=6&interval_ms=20&mode=clean"), Criteria(expect_done=False))
        assert result.verdict == "incremental", result.diagnosis

    def test_502_page(self, server: SseServer) -> None:
        result = check(server.url("/502"))
        assert result.verdict == "http_error" and result.status == 502
        assert result.diagnosis == (
            "502 from the proxy: nothing listens on the upstream port "
            "(is the backend running on the port nginx proxies to?)"
        )
        assert "502 Bad Gateway" in result.body_excerpt
        assert result.headers["Server"] == "nginx/1.22.1"

    def test_gzip_when_the_browser_accepts_it(self, server: SseServer) -> None:
        result = check(server.url("/gzip?n=8&interval_ms=30"))
        assert result.verdict == "compressed" and result.content_encoding == "gzip"
        assert result.diagnosis.startswith("response is gzip-compressed (8 events decoded;")
        # This server flushes every compressed event, and the diagnosis says what was measured.
        assert result.diagnosis.endswith(
            "each arrived on its own): it streams here only because every hop flushes each compressed chunk; "
            "one buffering hop makes gzip hold output until its buffer fills; exclude text/event-stream from gzip_types"
        )

    def test_same_endpoint_streams_when_not_offered_gzip(self, server: SseServer) -> None:
        # Proves the default request offers gzip like a browser: only then does the server compress.
        result = check(server.url("/gzip?n=8&interval_ms=30"), headers=("Accept-Encoding: identity",))
        assert result.verdict == "incremental", result.diagnosis

    def test_sha256_mismatch(self, server: SseServer) -> None:
        result = check(server.url("/badsha?n=8&interval_ms=20"))
        assert result.verdict == "integrity" and result.integrity == "mismatch"
        assert "sha256" in result.diagnosis and "tokens" not in result.integrity_detail

    def test_lost_token(self, server: SseServer) -> None:
        result = check(server.url("/stream?n=8&interval_ms=20&drop=3"))
        assert result.verdict == "integrity"
        assert "tokens 7 != 8" in result.diagnosis

    def test_index_html_fallback(self, server: SseServer) -> None:
        result = check(server.url("/html"))
        assert result.verdict == "wrong_content_type"
        assert result.diagnosis.startswith("Content-Type is text/html, not text/event-stream")

    def test_unknown_path(self, server: SseServer) -> None:
        result = check(server.url("/nowhere"))
        assert result.verdict == "http_error"
        assert result.diagnosis.startswith("404 for /nowhere: no location routes this path")

    def test_redirect_is_not_followed(self, server: SseServer) -> None:
        result = check(server.url("/redirect"))
        assert result.verdict == "http_error"
        assert result.diagnosis.startswith("301 redirect to https://pi5.test/stream")

    def test_nothing_listens(self, closed_port: int) -> None:
        result = check(f"http://127.0.0.1:{closed_port}/stream")
        assert result.verdict == "connect_error" and result.status is None
        assert result.diagnosis.startswith(f"nothing accepts connections on 127.0.0.1:{closed_port}")

    def test_headers_then_silence(self, server: SseServer) -> None:
        result = check(server.url("/stall?seconds=3"), max_time=0.6)
        assert result.verdict == "timeout"
        assert re.match(r"HTTP 200 headers arrived after \d+ ms, then no event within 0\.6 s", result.diagnosis)

    def test_no_response_at_all(self, server: SseServer) -> None:
        result = check(server.url("/hang?seconds=3"), max_time=0.6)
        assert result.verdict == "timeout" and result.status is None
        assert result.diagnosis.startswith(f"127.0.0.1:{server.port} did not answer within 0.6 s")

    def test_missing_curl(self, server: SseServer) -> None:
        with pytest.raises(CurlMissing):
            fetch(Request(url=server.url("/stream"), curl="/nonexistent/curl"))


class TestConfigRevision:
    def test_expected_revision(self, server: SseServer) -> None:
        result = check(
            server.url("/stream?n=6&interval_ms=20&rev=abc"), Criteria(expect_header="X-Config-Revision: abc")
        )
        assert result.verdict == "incremental", result.diagnosis

    def test_stale_revision(self, server: SseServer) -> None:
        result = check(
            server.url("/stream?n=6&interval_ms=20&rev=abc"), Criteria(expect_header="X-Config-Revision: def")
        )
        assert result.verdict == "stale_config"
        assert result.diagnosis.startswith("X-Config-Revision is 'abc', expected 'def'")

    def test_missing_revision(self, server: SseServer) -> None:
        result = check(server.url("/stream?n=6&interval_ms=20"), Criteria(expect_header="X-Config-Revision: def"))
        assert result.verdict == "stale_config"
        assert result.diagnosis.startswith("the response lacks X-Config-Revision")


class TestHeartbeats:
    criteria = Criteria(expect_heartbeats=True, heartbeat_interval_ms=150)
    paused = "/stream?n=6&interval_ms=20&pause_after=2&pause_ms=700"

    def test_keepalives_bridge_the_pause(self, server: SseServer) -> None:
        result = check(server.url(self.paused + "&heartbeat_ms=150"), self.criteria)
        assert result.verdict == "incremental", result.diagnosis
        assert result.heartbeats >= 4

    def test_silent_pause(self, server: SseServer) -> None:
        result = check(server.url(self.paused), self.criteria)
        assert result.verdict == "heartbeat_missing"
        assert re.match(
            r"the stream was silent for \d+ ms \(\d+-\d+ ms, between two reads of the body\) without a "
            r"': keepalive' comment",
            result.diagnosis,
        )


class TestRequestShape:
    def seen(self, server: SseServer, request: Request) -> dict[str, object]:
        events = parse_sse(fetch(request).chunks).events
        echo: dict[str, object] = json.loads(events[0].data)
        return echo

    def test_browser_like_get(self, server: SseServer) -> None:
        echo = self.seen(server, Request(url=server.url("/echo")))
        headers = echo["headers"]
        assert isinstance(headers, dict)
        assert echo["method"] == "GET"
        assert headers["accept"] == "text/event-stream"
        assert headers["accept-encoding"] == accepted_encodings()  # what browsers send, less what it cannot decode
        assert headers["cache-control"] == "no-cache"

    def test_json_post_with_extra_header(self, server: SseServer) -> None:
        echo = self.seen(server, Request(url=server.url("/echo"), data='{"q": 1}', headers=("X-Probe: yes",)))
        headers = echo["headers"]
        assert isinstance(headers, dict)
        assert (echo["method"], echo["body"]) == ("POST", '{"q": 1}')
        assert headers["content-type"] == "application/json"
        assert headers["x-probe"] == "yes"

    def test_explicit_method(self, server: SseServer) -> None:
        assert self.seen(server, Request(url=server.url("/echo"), method="PUT", data="{}"))["method"] == "PUT"

    def test_every_check_opens_a_fresh_connection(self, server: SseServer) -> None:
        before = len(server.seen)
        for _ in range(2):
            check(server.url("/stream?n=5&interval_ms=10"))
        ports = [seen.client_port for seen in server.seen[before:]]
        assert len(ports) == 2 and ports[0] != ports[1]


class TestTls:
    def test_server_name_checked_against_a_local_address(self, tls_server: TlsServer) -> None:
        result = check(
            tls_server.url("/stream?n=6&interval_ms=20"), resolve=(tls_server.resolve(),), cacert=tls_server.cacert
        )
        assert result.verdict == "incremental", result.diagnosis
        assert result.remote == f"127.0.0.1:{tls_server.server.port}"

    def test_certificate_for_another_name(self, tls_server: TlsServer) -> None:
        result = check(
            tls_server.url("/stream", host="other.test"),
            resolve=(tls_server.resolve("other.test"),),
            cacert=tls_server.cacert,
        )
        assert result.verdict == "tls_error"
        assert result.diagnosis.startswith("TLS certificate not valid for other.test")

    def test_untrusted_certificate(self, tls_server: TlsServer) -> None:
        result = check(tls_server.url("/stream"), resolve=(tls_server.resolve(),))
        assert result.verdict == "tls_error"
        assert result.diagnosis.startswith("TLS certificate of pi5.test is not trusted")

    def test_insecure_skips_verification(self, tls_server: TlsServer) -> None:
        result = check(tls_server.url("/stream?n=6&interval_ms=20"), resolve=(tls_server.resolve(),), insecure=True)
        assert result.verdict == "incremental", result.diagnosis

    def test_http2_asked_for_is_reported_when_not_given(self, tls_server: TlsServer) -> None:
        result = check(
            tls_server.url("/stream?n=6&interval_ms=20"),
            resolve=(tls_server.resolve(),),
            insecure=True,
            http_version="2",
        )
        assert result.http_version == "1.1"
        assert "HTTP/2 was asked for but the server answered HTTP/1.1" in result.notes


class TestHops:
    def test_nginx_buffers_behind_a_streaming_backend(self, server: SseServer) -> None:
        hops = [
            Hop("backend", Request(url=server.url("/stream?n=8&interval_ms=30"))),
            Hop("nginx", Request(url=server.url("/burst?n=8&interval_ms=30"))),
        ]
        result = check_hops(hops)
        assert (result.verdict, result.first_bad_hop) == ("buffered", "nginx")
        assert result.diagnosis.startswith(
            "nginx buffers: backend streams incrementally, but nginx delivers all 8 events in one burst after "
        )
        assert [hop.verdict for hop in result.hops] == ["incremental", "buffered"]

    def test_backend_itself_buffers(self, server: SseServer) -> None:
        hops = [
            Hop("backend", Request(url=server.url("/burst?n=8&interval_ms=20"))),
            Hop("nginx", Request(url=server.url("/burst?n=8&interval_ms=20"))),
        ]
        result = check_hops(hops, stop_on_failure=True)
        assert result.first_bad_hop == "backend" and len(result.hops) == 1
        assert result.diagnosis.startswith("backend itself buffers: backend delivers all 8 events in one burst")

    def test_hops_run_together_and_the_buffering_one_is_still_blamed(self, server: SseServer) -> None:
        hops = [
            Hop("backend", Request(url=server.url("/stream?n=20&interval_ms=40"))),
            Hop("nginx", Request(url=server.url("/burst?n=20&interval_ms=40"))),
            Hop("tunnel", Request(url=server.url("/stream?n=20&interval_ms=40"))),
        ]
        started = time.monotonic()
        result = check_hops(hops)
        took_ms = (time.monotonic() - started) * 1000.0
        assert (result.verdict, result.first_bad_hop) == ("buffered", "nginx")
        assert [hop.verdict for hop in result.hops] == ["incremental", "buffered", "incremental"]
        assert result.diagnosis.startswith("nginx buffers: backend streams incrementally, but nginx delivers all 20")
        # Three 0.8 s streams one after another take 2.4 s; together about one of them.
        assert took_ms < 0.7 * sum(hop.elapsed_ms for hop in result.hops)
        ports = [seen.client_port for seen in server.seen[-3:]]
        assert len(set(ports)) == 3  # each hop its own fresh connection
