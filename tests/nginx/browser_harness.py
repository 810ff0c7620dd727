"""Headless Chromium opening the stream page through nginx, and a loopback collector for its report.

The page (stream-page.html, served by the nginx under test so its EventSource
is same-origin) stamps every message with ``performance.now()`` and POSTs the
list to :class:`Collector` when the done event arrives. No browser automation
library: Chromium is started with the page's URL and stopped once the report is in.

:func:`as_capture` turns the report into the stream check core's ``Capture``
(one read per message, at the browser's arrival time), so the browser's view is
judged by the core's own ``analyse`` and measured with its ``largest_burst``:
the judgement "is this incremental?" exists once in the repository.
"""

from __future__ import annotations

import contextlib
import json
import queue
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlencode

from ansible_collections.pi5.streaming.plugins.module_utils.stream_check import Capture, Chunk, Request
from tests.nginx.nginx_harness import TLS_NAME, Nginx, stop

PAGE = Path(__file__).resolve().parent / "stream-page.html"
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser")
REPORT_TIMEOUT_S = 30.0


def find_chromium() -> str | None:
    for candidate in CHROMIUM_CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    return None


class _ReportHandler(BaseHTTPRequestHandler):
    server: Collector

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(204)
        self.end_headers()
        self.server.reports.put(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class Collector(ThreadingHTTPServer):
    """Receives the page's JSON report on 127.0.0.1 (a no-cors text/plain POST)."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ReportHandler)
        self.reports: queue.Queue[bytes] = queue.Queue()
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/report"

    def __enter__(self) -> Collector:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(5)


@dataclass(frozen=True)
class BrowserEvent:
    at_ms: float  # performance.now() when onmessage ran, relative to new EventSource()
    data: str
    id: str


@dataclass(frozen=True)
class BrowserReport:
    reason: str  # "done", "error" or "limit"
    events: tuple[BrowserEvent, ...]
    protocol: str | None  # the page's nextHopProtocol: "http/1.1" or "h2"
    user_agent: str
    url: str  # the stream's URL

    @property
    def arrivals_ms(self) -> list[float]:
        return [event.at_ms for event in self.events]


def open_in_chromium(
    chromium: str, server: Nginx, collector: Collector, *, workdir: Path, stream: str, limit_ms: int = 15000
) -> BrowserReport:
    """Load the stream page from ``server`` in a fresh headless Chromium; return its report."""
    page = {"src": stream, "limit_ms": str(limit_ms)}
    with chromium_page(chromium, server, collector, workdir=workdir, page=page) as next_report:
        raw = next_report()
    return parse_report(raw, server.url(stream))


@contextlib.contextmanager
def chromium_page(
    chromium: str, server: Nginx, collector: Collector, *, workdir: Path, page: Mapping[str, str]
) -> Iterator[Callable[[], dict[str, Any]]]:
    """A fresh headless Chromium on the stream page (query ``page`` plus where to report), until
    the block ends; yields the function that waits for the page's next report (parsed JSON)."""
    query = urlencode({**page, "report": collector.url})
    page_url = server.url(f"/stream-page.html?{query}")
    profile = tempfile.mkdtemp(prefix="chromium-", dir=workdir)
    argv = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--no-proxy-server",  # a proxy from the environment would sit in the path
        f"--user-data-dir={profile}",
        # TLS sites: pi5.test is 127.0.0.1 and the throw-away certificate is not in NSS.
        f"--host-resolver-rules=MAP {TLS_NAME} 127.0.0.1",
        "--ignore-certificate-errors",
        page_url,
    ]
    log = workdir / "chromium.log"
    while not collector.reports.empty():  # a late report of an earlier run
        collector.reports.get_nowait()
    with log.open("ab") as err:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=err, stderr=subprocess.STDOUT, start_new_session=True
        )

    def next_report() -> dict[str, Any]:
        try:
            body = collector.reports.get(timeout=REPORT_TIMEOUT_S)
        except queue.Empty:
            code = proc.poll()
            raise AssertionError(
                f"no report from Chromium within {REPORT_TIMEOUT_S:g} s (exit {code}); {log}:\n"
                + log.read_text(errors="replace")[-3000:]
            ) from None
        report: dict[str, Any] = json.loads(body)
        return report

    try:
        yield next_report
    finally:
        stop(proc, timeout=5)
        with contextlib.suppress(OSError):
            shutil.rmtree(profile)


def parse_report(raw: dict[str, Any], url: str) -> BrowserReport:
    events = tuple(BrowserEvent(float(e["at_ms"]), str(e["data"]), str(e["id"])) for e in raw["events"])
    return BrowserReport(str(raw["reason"]), events, raw.get("protocol"), str(raw.get("userAgent", "")), url)


def as_capture(report: BrowserReport) -> Capture:
    """The browser's report as the core's Capture: one read per message, at its arrival time.

    The body is re-serialised from what EventSource dispatched (id and data
    lines), so the core's parser, integrity check and timing judgement see
    exactly the events, contents and arrival times the page saw. Content-Type is
    text/event-stream because EventSource refuses anything else; the encoding is
    none because the browser already decoded any gzip.
    """
    chunks = []
    for event in report.events:
        lines = [f"id: {event.id}"] if event.id else []
        lines += [f"data: {line}" for line in event.data.split("\n")]
        chunks.append(Chunk(event.at_ms / 1000.0, ("\n".join(lines) + "\n\n").encode()))
    version = {"h2": "2", "http/1.1": "1.1"}.get(report.protocol or "")
    return Capture(
        request=Request(url=report.url),
        chunks=tuple(chunks),
        status=200,
        http_version=version,
        headers={"content-type": "text/event-stream"},
        elapsed_s=(report.events[-1].at_ms / 1000.0) if report.events else 0.0,
    )
