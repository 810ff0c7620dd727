"""The stream check against REAL nginx (the role's templates, rendered by Ansible) and the REAL backend.

Every site is the nginx role's own ``streaming-site.conf.j2`` and ``nginx.conf.j2``
rendered by ``ansible-playbook`` with the role's defaults, vars and a case's
variables; the few settings the templates cannot express are small edits
(nginx_cases.py names the real deployment each one reproduces). The backend is
``files/backend`` run as the image runs it. The probe is the role's: 20 tokens
50 ms apart, and the backend sends ``X-Accel-Buffering: no`` with every stream.
The role ships HTTPS with HTTP/2 (plain HTTP only redirects) and checks both
HTTP/2 and HTTP/1.1 through nginx; so does this suite.

What was found by experiment (nginx 1.22.1, curl 7.88, Chromium, loopback):

=====================================  ========  ========  ========  =======  ====================================
setting (site)                         HTTP/1.1  HTTP/2    plain     browser  verdict, and why
                                       over TLS  over TLS  HTTP/1.1
=====================================  ========  ========  ========  =======  ====================================
role defaults (shipped, shipped_plain) streams   streams   streams   streams  incremental
proxy_buffering on (buffering_on)      streams   streams   -         -        incremental: the backend's
                                                                              X-Accel-Buffering: no turns it off
... + proxy_ignore_headers             BUFFERS   streams   streams   h2:      buffered, "nginx delivers all 20
X-Accel-Buffering (buffering_ignored,                                streams  events in one burst after 1.0 s:
_plain, _no_http2)                                                   no h2:   nginx (named by Server: nginx):
                                                                              proxy_buffering off ...".
                                                                     BUFFERS  Buffered mode still writes what it
                                                                              reads at once, but unflushed: plain
                                                                              TCP sends it, TLS collects it in
                                                                              its ssl_buffer_size (16k) record
                                                                              until the stream ends (1k shows
                                                                              ~1 KiB bursts), HTTP/2 flushes per
                                                                              frame. Browsers only see it where
                                                                              nginx offers no HTTP/2; CDNs and
                                                                              tunnels fetch the origin with
                                                                              HTTP/1.1 and get the burst.
text/event-stream in gzip_types        streams   streams   -         -        incremental: the stream location's
(gzip_types_sse)                                                              own "gzip off" wins
... and no "gzip off" in the location  gzip      gzip      gzip      streams  compressed, "response is gzip-
(gzip_sse)                             20 deliv  20 deliv  20 deliv           compressed (20 events decoded; each
                                                                              arrived on its own): it streams here
                                                                              only because every hop flushes ...":
                                                                              unbuffered proxying flushes gzip per
                                                                              chunk, so it does NOT buffer
... + buffering on, header ignored     BUFFERS   BUFFERS   BUFFERS   BUFFERS  compressed (1 delivery), failures
(gzip_sse_buffering_ignored)                                                  also "buffered: ... one burst": no
                                                                              flush, gzip holds everything
proxy_http_version 1.0                 streams   streams   -         -        incremental: close-delimited
(http10_upstream)                                                             upstream reply relayed as it comes
                                                                              (upstream keepalive is lost)
chunked_transfer_encoding off          streams   streams   -         -        incremental, close-delimited
(chunked_off, seed 004)                                                       (no Transfer-Encoding, no length)
proxy_cache zone, no "proxy_cache      streams   streams   -         -        incremental twice: an unbuffered,
off" (cache_on)                                                               no-cache response is not cached
ssi on; ssi_types * (ssi_on)           streams   streams   -         -        incremental
limit_rate 512 (limit_rate)            streams   streams   -         -        incremental, NOT throttled: 8 KiB
                                                                              more in ~1 s (not applied to this
                                                                              unbuffered proxied response)
proxy_read_timeout 1s, 1.5 s silence   CUT       CUT       -         -        truncated, "stream ended after 200
(short_read_timeout)                                                          without a done event (10 events
                                                                              ...); the connection broke (curl
                                                                              18: ...)" (HTTP/2: curl 92, stream
                                                                              not closed cleanly); error log
                                                                              "upstream timed out"
... with heartbeats every 300 ms       streams   -         -         -        incremental: keepalives reset the
                                                                              read timeout
worker_shutdown_timeout 1s + reload    CUT       -         -         -        truncated (as above) when the old
mid-stream (short_worker_shutdown)                                            worker's 1 s is up, mid-way through
                                                                              a 2 s stream; the role's 300 s keeps
                                                                              it open (shipped_reload)
upstream port 8000 (wrong_upstream_    502       502       -         -        http_error, "502 from the proxy:
port, the Verse Pi)                                                           nothing listens on the upstream
                                                                              port (...)"; error log: connection
                                                                              refused to 127.0.0.1:8000
only /api/chat/message/stream proxied  404       404       -         -        http_error, "404 for /api/probe/
(location_not_routed, seed 001)                                               stream: no location routes ..."
front end try_files .../index.html     200 html  200 html  -         -        wrong_content_type, "Content-Type is
catches /api/probe (spa_fallback)                                             text/html, not text/event-stream:
                                                                              ... index.html fallback ..."
sub_filter, sub_filter_types *         alters    alters    -         -        integrity, "the reassembled tokens
(sub_filter)                                                                  do not match the done event ...":
                                                                              it streams, but rewrites the text
plain HTTP port of the shipped site    301       -         -         -        http_error, "301 redirect to
                                                                              https://...: the check does not
                                                                              follow redirects ..."
=====================================  ========  ========  ========  =======  ====================================

("-": not run, the protocol does not change the outcome there.)

Run: ``.venv/bin/pytest tests/nginx`` (as root; nginx, curl, openssl and Chromium from Debian).
"""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from ansible_collections.pi5.streaming.plugins.module_utils.stream_check import (
    CheckResult,
    Criteria,
    Hop,
    HopsResult,
    Request,
    check_hops,
    check_stream,
)
from ansible_collections.pi5.streaming.plugins.module_utils.stream_check import (
    check as check_path,
)
from tests.nginx.nginx_cases import PROBE
from tests.nginx.nginx_harness import Nginx, Stack

# The response names nginx (Server: nginx, the role hides the version), so the advice is nginx's own setting.
BUFFER_ADVICE = r"nginx \(named by Server: nginx\): proxy_buffering off in the stream's location .*"
GZIP_ADVICE = "nginx (named by Server: nginx): gzip off in the stream's location, and no text/event-stream in gzip_types"
ONE_BURST = r"nginx delivers all 20 events in one burst after \d+\.\d s"
HOP_BURST = r"nginx-h1\.1 delivers all 20 events in one burst after \d+\.\d s"


def request(server: Nginx, path: str = PROBE, http_version: str = "auto") -> Request:
    return Request(
        url=server.url(path), resolve=server.resolve, cacert=server.cacert, http_version=http_version, max_time=10.0
    )


def criteria(server: Nginx, **settings: object) -> Criteria:
    """The check as the role runs it, plus the revision header: this case's nginx answered."""
    return Criteria(expect_header=f"X-Config-Revision: {server.site.revision}", **settings)  # type: ignore[arg-type]


def check(stack: Stack, name: str, path: str = PROBE, http_version: str = "auto", **settings: object) -> CheckResult:
    server = stack.nginx(name)
    return check_stream(request(server, path, http_version), criteria(server, **settings))


def hops(stack: Stack, name: str) -> HopsResult:
    """What the role's verify runs: the backend alone, then nginx over HTTP/2 and HTTP/1.1 (TLS) or HTTP/1.1."""
    server = stack.nginx(name)
    nginx = ([Hop("nginx-h2", request(server, http_version="2"), criteria(server))] if server.is_tls else []) + [
        Hop("nginx-h1.1" if server.is_tls else "nginx", request(server, http_version="1.1"), criteria(server))
    ]
    return check_hops([Hop("backend", Request(url=stack.backend.url(PROBE))), *nginx])


def check_across_reload(stack: Stack, name: str, after_s: float = 0.4) -> CheckResult:
    """A 2 s probe over HTTP/1.1; ``after_s`` into it, nginx reloads (same config, new workers)."""
    server = stack.nginx(name)
    with ThreadPoolExecutor(1) as pool:
        probe = request(server, "/api/probe/stream?tokens=40&interval_ms=50", http_version="1.1")
        future = pool.submit(check_stream, probe, criteria(server))
        time.sleep(after_s)
        server.reload()
        return future.result()


def assert_incremental(result: CheckResult, http_version: str = "1.1") -> None:
    assert result.verdict == "incremental", f"{result.diagnosis}\n{result.to_dict()}"
    assert (result.status, result.http_version, result.integrity, result.done) == (200, http_version, "ok", True)
    assert result.content_encoding is None
    assert result.largest_burst <= 10, result.arrivals_ms  # generous: a loaded machine bunches a few


# --------------------------------------------------------------------------
# The role as shipped
# --------------------------------------------------------------------------


class TestShipped:
    def test_streams_over_https_h2_and_h11_as_the_role_checks(self, stack: Stack) -> None:
        result = hops(stack, "shipped")
        assert (result.verdict, result.first_bad_hop) == ("incremental", None), result.summary
        assert result.diagnosis == "every hop streams incrementally (backend, nginx-h2, nginx-h1.1)"
        _, h2, h11 = result.hops
        assert_incremental(h2, "2")
        assert_incremental(h11, "1.1")
        for hop in (h2, h11):
            assert (hop.events, hop.tokens) == (20, 20)
            assert hop.headers["X-Accel-Buffering"] == "no"  # for proxies in front of nginx
            assert hop.span_ratio is not None and hop.span_ratio > 0.7
        assert h11.headers["Transfer-Encoding"] == "chunked"
        assert re.fullmatch(
            r"incremental: 20 events, first after \d+ ms, spread over \d+ ms, largest burst \d+ \(\d+%\), "
            r"max lateness \d+ ms \(HTTP/2\)",
            h2.diagnosis,
        )

    def test_plain_http_redirects_to_https(self, stack: Stack) -> None:
        server = stack.nginx("shipped")
        result = check_stream(Request(url=server.plain_url(PROBE)))
        assert (result.verdict, result.status) == ("http_error", 301)
        assert result.diagnosis == (
            f"301 redirect to https://127.0.0.1:{server.ports.https}{PROBE}: the check does not follow redirects: "
            "give it the final URL (https:// instead of http://?)"
        )

    def test_streams_with_tls_off(self, stack: Stack) -> None:
        result = check(stack, "shipped_plain")
        assert_incremental(result)
        assert result.headers["X-Accel-Buffering"] == "no"

    def test_a_reload_does_not_cut_an_open_stream(self, stack: Stack) -> None:
        # worker_shutdown_timeout 300 s: the old worker finishes the stream it serves.
        result = check_across_reload(stack, "shipped_reload")
        assert_incremental(result)
        assert result.events == 40


# --------------------------------------------------------------------------
# Settings that look wrong but still stream (what is NOT the problem)
# --------------------------------------------------------------------------


class TestStillStreams:
    @pytest.mark.parametrize(
        ("name", "http_version"),
        [
            ("buffering_on", "1.1"),  # the backend's X-Accel-Buffering: no switches buffering off
            ("buffering_ignored_plain", "1.1"),  # buffered mode still writes what it has on plain HTTP
            ("buffering_ignored", "2"),  # HTTP/2 sends each DATA frame at once
            ("gzip_types_sse", "2"),  # the stream location's own "gzip off" wins
            ("http10_upstream", "1.1"),  # close-delimited upstream response, relayed as it comes
            ("ssi_on", "1.1"),  # SSI passes chunks without an include straight through
        ],
    )
    def test_streams(self, stack: Stack, name: str, http_version: str) -> None:
        assert_incremental(check(stack, name, http_version=http_version), http_version)

    def test_chunked_off_streams_close_delimited(self, stack: Stack) -> None:
        result = check(stack, "chunked_off", http_version="1.1")
        assert_incremental(result)
        assert "Transfer-Encoding" not in result.headers and "Content-Length" not in result.headers

    def test_limit_rate_does_not_throttle_an_unbuffered_stream(self, stack: Stack) -> None:
        result = check(stack, "limit_rate", "/api/probe/stream?tokens=20&interval_ms=50&big_kb=8", http_version="1.1")
        assert_incremental(result)
        # 8 KiB would take 16 s at 512 bytes/s: nginx does not apply limit_rate to an unbuffered response.
        assert result.elapsed_ms < 5000

    def test_proxy_cache_does_not_cache_the_stream(self, stack: Stack) -> None:
        first, second = check(stack, "cache_on", http_version="1.1"), check(stack, "cache_on", http_version="1.1")
        assert_incremental(first)
        assert_incremental(second)  # a cached copy would arrive in one burst

    def test_heartbeats_keep_a_short_read_timeout_open(self, stack: Stack) -> None:
        # The same 1 s proxy_read_timeout as in TestBreaks, but keepalives every 300 ms through the silence.
        result = check(
            stack,
            "short_read_timeout",
            "/api/probe/stream?tokens=20&interval_ms=50&silence_ms=1500&heartbeat_ms=300",
            http_version="1.1",
            expect_heartbeats=True,
            heartbeat_interval_ms=300.0,
        )
        assert_incremental(result)
        assert result.heartbeats >= 3


# --------------------------------------------------------------------------
# Misconfigurations the check must fail, with the diagnosis it gives
# --------------------------------------------------------------------------

TRUNCATED = (
    r"stream ended after 200 without a done event \({events} events over \d+ ms\); the connection broke "
    r"\(curl 18: transfer closed with outstanding read data remaining\): truncated by a timeout or a proxy "
    r"\(proxy_read_timeout, send_timeout, a worker shut down by a reload\) or the backend stopped early"
)


class TestBreaks:
    def test_ignored_x_accel_buffering_buffers_https_http11(self, stack: Stack) -> None:
        result = hops(stack, "buffering_ignored")
        assert (result.verdict, result.first_bad_hop) == ("buffered", "nginx-h1.1")
        assert re.fullmatch(
            rf"nginx-h1\.1 buffers: backend, nginx-h2 stream incrementally, but {HOP_BURST}: {BUFFER_ADVICE}",
            result.diagnosis,
        )
        h11 = result.hops[2]
        assert (h11.verdict, h11.largest_burst, h11.deliveries, h11.integrity) == ("buffered", 20, 1, "ok")

    def test_no_protocol_forced_checks_both_and_names_http11(self, stack: Stack) -> None:
        """What a user gets from bin/stream-check URL: both protocols, the buffering one named."""
        server = stack.nginx("buffering_ignored")
        outcome = check_path([Hop("", request(server), criteria(server))])
        assert isinstance(outcome, HopsResult)
        assert [(hop.name, hop.verdict, hop.http_version) for hop in outcome.hops] == [
            ("h2", "incremental", "2"),
            ("h1.1", "buffered", "1.1"),
        ]
        assert outcome.first_bad_hop == "h1.1"
        assert re.fullmatch(rf"h1\.1 buffers: h2 streams incrementally, but {ONE_BURST}: {BUFFER_ADVICE}", outcome.diagnosis)

    def test_hops_run_together_and_are_still_attributed(self, stack: Stack) -> None:
        """The role's three hops at once: the buffering one is still named, in the time of one hop, not three."""
        started = time.monotonic()
        result = hops(stack, "buffering_ignored")
        took_ms = (time.monotonic() - started) * 1000.0
        assert (result.verdict, result.first_bad_hop) == ("buffered", "nginx-h1.1")
        assert [hop.verdict for hop in result.hops] == ["incremental", "incremental", "buffered"]
        # Sequentially it would take the sum of the three (about 3 s); together, about the longest one.
        assert took_ms < 0.7 * sum(hop.elapsed_ms for hop in result.hops), (took_ms, [h.elapsed_ms for h in result.hops])

    def test_without_http2_every_client_gets_the_burst(self, stack: Stack) -> None:
        result = check(stack, "buffering_ignored_no_http2")  # curl offers h2 by ALPN; the server has none
        assert (result.verdict, result.http_version) == ("buffered", "1.1")
        assert re.fullmatch(f"{ONE_BURST}: {BUFFER_ADVICE}", result.diagnosis)
        assert (result.largest_burst, result.deliveries) == (20, 1)

    def test_gzip_on_the_stream_is_compressed(self, stack: Stack) -> None:
        result = check(stack, "gzip_sse")
        assert result.verdict == "compressed"
        # The advice follows what was measured: every event on its own, or held back in bunches.
        streamed = result.failures == [f"compressed: {result.diagnosis}"]
        measured, advice = (
            (
                "each arrived on its own",
                "it streams here only because every hop flushes each compressed chunk; one buffering hop makes gzip "
                "hold output until its buffer fills",
            )
            if streamed
            else (f"they arrived in {result.deliveries} bursts", "gzip holds output until its buffer fills unless every hop flushes")
        )
        assert result.diagnosis == f"response is gzip-compressed (20 events decoded; {measured}): {advice}; {GZIP_ADVICE}"
        # With proxy_buffering off nginx's gzip flushes after every upstream chunk: compressed, not held back
        # (the browser test shows a browser decoding it incrementally).
        assert result.failures == [f"compressed: {result.diagnosis}"]
        assert (result.integrity, result.deliveries >= 15) == ("ok", True)

    def test_gzip_with_buffering_is_compressed_and_buffered(self, stack: Stack) -> None:
        result = check(stack, "gzip_sse_buffering_ignored")
        assert result.verdict == "compressed"
        assert result.diagnosis.startswith("response is gzip-compressed (20 events decoded; all arrived in one burst)")
        assert re.fullmatch(f"buffered: {ONE_BURST}: {BUFFER_ADVICE}", result.failures[1])

    def test_wrong_upstream_port_is_a_502(self, stack: Stack) -> None:
        result = check(stack, "wrong_upstream_port")
        assert (result.verdict, result.status, result.events) == ("http_error", 502, 0)
        assert result.diagnosis == (
            "502 from the proxy: nothing listens on the upstream port "
            "(is the backend running on the port nginx proxies to?)"
        )
        log = stack.nginx("wrong_upstream_port").error_log()
        assert "(111: Connection refused) while connecting to upstream" in log
        assert f'upstream: "http://127.0.0.1:{stack.wrong_port}/api/probe/stream' in log

    def test_short_read_timeout_truncates_a_silent_stream(self, stack: Stack) -> None:
        # 1 s proxy_read_timeout, a 1.5 s silence mid-stream and no heartbeat (BACKEND_HEARTBEAT_S 15).
        result = check(stack, "short_read_timeout", "/api/probe/stream?tokens=20&interval_ms=50&silence_ms=1500", "1.1")
        assert result.verdict == "truncated"
        assert re.fullmatch(TRUNCATED.format(events=10), result.diagnosis)
        log = stack.nginx("short_read_timeout").error_log()
        assert "upstream timed out (110: Connection timed out) while reading upstream" in log

    def test_unrouted_path_is_a_404(self, stack: Stack) -> None:
        result = check(stack, "location_not_routed")
        assert (result.verdict, result.status) == ("http_error", 404)
        assert result.diagnosis == (
            "404 for /api/probe/stream: no location routes this path "
            "(is the site enabled and the location block present?)"
        )

    def test_front_end_fallback_serves_html(self, stack: Stack) -> None:
        result = check(stack, "spa_fallback")
        assert (result.verdict, result.status) == ("wrong_content_type", 200)
        assert result.diagnosis == (
            "Content-Type is text/html, not text/event-stream: the request did not reach the streaming handler "
            "(an index.html fallback such as try_files, or the wrong location)"
        )

    @pytest.mark.parametrize(
        ("name", "text"), [("spa_fallback", "<title>chat</title>"), ("location_not_routed", "404 Not Found")]
    )
    def test_body_excerpt_of_a_compressed_page_is_readable(self, stack: Stack, name: str, text: str) -> None:
        result = check(stack, name)
        assert result.content_encoding == "gzip"  # the role's gzip on; text/html is always compressed
        assert text in result.body_excerpt

    def test_sub_filter_alters_the_stream(self, stack: Stack) -> None:
        result = check(stack, "sub_filter")
        assert result.verdict == "integrity"
        assert re.fullmatch(
            r"the reassembled tokens do not match the done event \(sha256 [0-9a-f]{12}… != [0-9a-f]{12}…\): "
            r"bytes were lost or altered between the backend and the client \(a proxy filter such as sub_filter, "
            r"a charset conversion, or a dropped chunk\)",
            result.diagnosis,
        )
        assert result.deliveries >= 15  # it alters, it does not hold back

    def test_reload_with_short_worker_shutdown_cuts_the_stream(self, stack: Stack) -> None:
        result = check_across_reload(stack, "short_worker_shutdown")
        assert result.verdict == "truncated"
        assert re.fullmatch(TRUNCATED.format(events=r"\d+"), result.diagnosis)
        assert 10 <= result.events < 40
