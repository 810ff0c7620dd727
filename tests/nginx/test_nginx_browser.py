"""A real browser: headless Chromium opens an EventSource through the real nginx.

The page (stream-page.html) is served by the nginx under test, so the
EventSource is same-origin, as in the chat UI; it records ``performance.now()``
for every message and POSTs the list to a loopback collector once done. The
arrival times are judged by the stream check core itself (``analyse`` on the
browser's view, ``largest_burst``), never by a second implementation here.

What the browser sees differs from curl's view in two places, both tested:
Chromium negotiates HTTP/2 whenever nginx offers it (so buffering that only
hurts HTTP/1.1 over TLS is invisible to it), and it decodes gzip as it arrives
(so a gzip that flushes per chunk, which the check fails as "compressed", still
streams for the user).
"""

from __future__ import annotations

import re

import pytest

from ansible_collections.pi5.streaming.plugins.module_utils.stream_check import (
    CheckResult,
    Criteria,
    analyse,
    largest_burst,
)
from tests.nginx.browser_harness import BrowserReport, Collector, as_capture, open_in_chromium
from tests.nginx.nginx_cases import PROBE
from tests.nginx.nginx_harness import Stack

WINDOW_MS = Criteria().burst_window_ms  # the core's own burst window


def browse(stack: Stack, chromium: str, collector: Collector, name: str) -> tuple[BrowserReport, CheckResult]:
    report = open_in_chromium(chromium, stack.nginx(name), collector, workdir=stack.workdir, stream=PROBE)
    assert report.reason == "done", report
    assert len(report.events) == 21  # 20 tokens and done, nothing dropped, no reconnect
    return report, analyse(as_capture(report), Criteria(), name="the browser")


@pytest.mark.parametrize(("name", "protocol"), [("shipped", "h2"), ("shipped_plain", "http/1.1")])
def test_the_shipped_site_streams_in_the_browser(
    stack: Stack, chromium: str, collector: Collector, name: str, protocol: str
) -> None:
    report, result = browse(stack, chromium, collector, name)
    assert report.protocol == protocol
    assert result.verdict == "incremental", f"{result.diagnosis}: {report.arrivals_ms}"
    assert result.integrity == "ok"  # every multi-byte token survived the browser's decoding
    # The arrivals span at least half the emission span and no burst holds most of the events.
    assert result.span_ratio is not None and result.span_ratio >= 0.5, report.arrivals_ms
    tokens = report.arrivals_ms[:-1]
    assert largest_burst(tokens, WINDOW_MS) <= len(tokens) // 2, tokens


@pytest.mark.parametrize(
    ("name", "protocol"),
    [
        ("gzip_sse_buffering_ignored", "h2"),  # gzip without flushes: held until the response ends
        ("buffering_ignored_no_http2", "http/1.1"),  # TLS record buffer, no HTTP/2 to flush per frame
    ],
)
def test_a_misconfigured_site_bunches_the_events_in_the_browser(
    stack: Stack, chromium: str, collector: Collector, name: str, protocol: str
) -> None:
    report, result = browse(stack, chromium, collector, name)
    assert report.protocol == protocol
    assert result.verdict == "buffered", report.arrivals_ms
    assert re.fullmatch(
        r"the browser delivers all 20 events in one burst after \d+\.\d s: "
        r"check proxy_buffering / gzip for text/event-stream",
        result.diagnosis,
    )
    assert largest_burst(report.arrivals_ms[:-1], WINDOW_MS) == 20


def test_gzip_that_flushes_still_streams_in_the_browser(stack: Stack, chromium: str, collector: Collector) -> None:
    # The check fails this site as "compressed" (test_nginx_streaming); the browser still gets every event on time.
    report, result = browse(stack, chromium, collector, "gzip_sse")
    assert result.verdict == "incremental", f"{result.diagnosis}: {report.arrivals_ms}"
    assert result.span_ratio is not None and result.span_ratio >= 0.5
