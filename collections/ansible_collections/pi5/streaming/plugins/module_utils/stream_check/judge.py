"""Judge a measured stream: every criterion as a check that returns a finding (or nothing).

A finding says what happened (``observed``) and what to do (``advice``), worded
for the proxy the response's headers name (proxies.py). The checks run most
decisive first; a fatal one stops the rest (a 502 is not also "too few events").
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final, Literal, get_args
from urllib.parse import urlsplit

from ansible_collections.pi5.streaming.plugins.module_utils.stream_check.curl import Capture
from ansible_collections.pi5.streaming.plugins.module_utils.stream_check.events import Integrity, Reading
from ansible_collections.pi5.streaming.plugins.module_utils.stream_check.measure import Timing, silences
from ansible_collections.pi5.streaming.plugins.module_utils.stream_check.options import Criteria
from ansible_collections.pi5.streaming.plugins.module_utils.stream_check.proxies import Layer, advice, primary

__all__ = ["TIMEOUT_EXIT", "VERDICTS", "Context", "Finding", "Verdict", "judge"]

Verdict = Literal[
    "incremental",
    "buffered",
    "truncated",
    "http_error",
    "wrong_content_type",
    "compressed",
    "integrity",
    "heartbeat_missing",
    "connect_error",
    "tls_error",
    "timeout",
    "stale_config",
    "too_few_events",
    "not_resumable",
]
# The same names as a tuple, for argument choices and docs (one list: the Literal above).
VERDICTS: Final[tuple[Verdict, ...]] = get_args(Verdict)

TLS_EXIT_CODES: Final = frozenset({35, 51, 53, 54, 58, 59, 60, 64, 66, 77, 80, 82, 83, 90, 91})
TIMEOUT_EXIT: Final = 28
# A heartbeat may come this much later than its interval before it counts as missing.
HEARTBEAT_TOLERANCE: Final = 1.5
HEARTBEAT_SLACK_MS: Final = 100.0
_TLS_NAME = re.compile(r"target host ?name '([^']+)'|host name '([^']+)'")


@dataclass(frozen=True)
class Finding:
    verdict: Verdict
    observed: str  # what happened, in plain words
    advice: str = ""  # the likely cause / what to check
    fatal: bool = False  # later checks would only repeat this one

    @property
    def diagnosis(self) -> str:
        return f"{self.observed}: {self.advice}" if self.advice else self.observed


@dataclass(frozen=True)
class Context:
    capture: Capture
    criteria: Criteria
    reading: Reading
    timing: Timing
    integrity: Integrity
    integrity_detail: str
    name: str | None  # the hop's name, if it has one
    layers: tuple[Layer, ...]  # the proxies the headers name, outermost first
    encoding: str | None
    decode_error: str | None

    @property
    def status(self) -> int | None:
        return self.capture.status

    @property
    def watching(self) -> bool:
        return self.capture.request.watch is not None

    @property
    def timed_out(self) -> bool:
        """curl gave up before the response ended; the end of a watch window is no timeout."""
        if self.capture.killed:
            return True
        return self.capture.curl_exit == TIMEOUT_EXIT and not (self.watching and self.status is not None)

    @property
    def ended(self) -> bool:
        """The response ended cleanly, or the watch window closed on an open stream."""
        return self.capture.curl_exit == 0 or (self.watching and self.capture.curl_exit == TIMEOUT_EXIT)

    @property
    def expects_done(self) -> bool:
        return self.criteria.expect_done and not self.watching

    @property
    def who(self) -> str:
        """Who delivered the stream, for the diagnosis: the hop's name, else the proxy its headers name."""
        layer = primary(self.layers)
        return self.name or (layer.name if layer else "the server")

    @property
    def count(self) -> int:
        return len(self.reading.events)

    @property
    def host_port(self) -> str:
        parts = urlsplit(self.capture.request.url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return f"{parts.hostname}:{port}"


def _no_response(ctx: Context) -> Finding | None:
    """curl got no HTTP response at all: DNS, TCP, TLS or a timeout."""
    cap = ctx.capture
    if ctx.status is not None:
        return None
    code, message = cap.curl_exit, cap.curl_error or f"curl exit {cap.curl_exit}"
    if code in TLS_EXIT_CODES:
        return _tls_finding(ctx, message)
    if ctx.timed_out:
        phase = "connect" if "connect" in message.lower() else "answer"
        limit = cap.request.connect_timeout if phase == "connect" else cap.request.max_time
        return Finding(
            "timeout",
            f"{ctx.host_port} did not {phase} within {limit:g} s ({message})",
            "a firewall drops the packets, the address is wrong, or the server hangs before sending headers",
            fatal=True,
        )
    if code == 6:
        host = urlsplit(cap.request.url).hostname
        return Finding(
            "connect_error",
            f"cannot resolve {host}",
            "check DNS or /etc/hosts, or pin the name with resolve HOST:PORT:ADDRESS",
            fatal=True,
        )
    if code == 7:
        return Finding(
            "connect_error",
            f"nothing accepts connections on {ctx.host_port} ({message})",
            "is the server running and listening on that address and port?",
            fatal=True,
        )
    if code == 52:
        return Finding(
            "connect_error",
            f"{ctx.host_port} closed the connection without an HTTP response",
            "plain HTTP sent to a TLS port, or the server crashed on the request",
            fatal=True,
        )
    return Finding("connect_error", f"no HTTP response from {ctx.host_port}: curl exit {code}: {message}", fatal=True)


def _tls_finding(ctx: Context, message: str) -> Finding:
    host = urlsplit(ctx.capture.request.url).hostname or "?"
    lowered = message.lower()
    name_match = _TLS_NAME.search(message)
    if name_match or "subject name" in lowered or "does not match" in lowered:
        name = next((group for group in (name_match.groups() if name_match else ()) if group), host)
        return Finding(
            "tls_error",
            f"TLS certificate not valid for {name}",
            f"the certificate {ctx.host_port} presents does not list {name} in its subjectAltName "
            "(wrong certificate for this server_name, or the wrong server block answered)",
            fatal=True,
        )
    if "expired" in lowered:
        return Finding("tls_error", f"TLS certificate of {host} has expired", "renew it", fatal=True)
    if "self-signed" in lowered or "self signed" in lowered or "issuer" in lowered or "ca cert" in lowered:
        return Finding(
            "tls_error",
            f"TLS certificate of {host} is not trusted ({message})",
            "pass cacert with the issuing CA, or insecure to skip verification for a self-signed test certificate",
            fatal=True,
        )
    return Finding(
        "tls_error",
        f"TLS handshake with {ctx.host_port} failed ({message})",
        "plain HTTP on the port, a protocol/cipher mismatch, or no certificate for this name",
        fatal=True,
    )


def _stale_mismatch(ctx: Context) -> Finding | None:
    expected = ctx.criteria.expected_header
    if expected is None or ctx.status is None:
        return None
    name, value = expected
    got = ctx.capture.headers.get(name.lower())
    if got is None or got == value:
        return None
    return Finding(
        "stale_config",
        f"{name} is {got!r}, expected {value!r}",
        "a stale config answered: the reload has not taken effect (failed reload, old workers, "
        "or another server block answered)",
    )


def _stale_missing(ctx: Context) -> Finding | None:
    expected = ctx.criteria.expected_header
    if expected is None or ctx.status is None or expected[0].lower() in ctx.capture.headers:
        return None
    name, value = expected
    return Finding(
        "stale_config",
        f"the response lacks {name} (expected {value!r})",
        "the answering config does not set it: the reload has not taken effect, or this location "
        "lacks the add_header (a location's add_header replaces the server's; errors need 'always')",
    )


_STATUS_ADVICE: Final[Mapping[int, str]] = {
    400: "the request is malformed for this server (Host header, HTTP on an HTTPS port?)",
    401: "the endpoint wants credentials: pass an Authorization header",
    403: "access denied: allow/deny rules, auth, or file permissions",
    405: "the method is not allowed here: check method",
    413: "the request body is larger than client_max_body_size",
    429: "rate limited (limit_req or the backend's own limit): wait and retry, or raise the limit",
    500: "the backend failed on the request: see its log",
    503: "the upstream is marked down, or limit_req/limit_conn rejected the request",
}


def _http_status(ctx: Context) -> Finding | None:
    status = ctx.status
    if status is None or status == 200:
        return None
    path = urlsplit(ctx.capture.request.url).path or "/"
    headers = ctx.capture.headers
    if status == 502:
        return Finding(
            "http_error",
            "502 from the proxy",
            "nothing listens on the upstream port (is the backend running on the port nginx proxies to?)",
            fatal=True,
        )
    if status == 504:
        return Finding(
            "http_error",
            "504 from the proxy",
            "the upstream accepted the connection but sent no response headers within proxy_read_timeout "
            "(is the backend hung, or does it wait for the whole answer before it starts the response?)",
            fatal=True,
        )
    if status == 404:
        return Finding(
            "http_error",
            f"404 for {path}",
            "no location routes this path (is the site enabled and the location block present?)",
            fatal=True,
        )
    if 300 <= status < 400:
        return Finding(
            "http_error",
            f"{status} redirect to {headers.get('location', '?')}",
            "the check does not follow redirects: give it the final URL (https:// instead of http://?)",
            fatal=True,
        )
    advice = _STATUS_ADVICE.get(status, f"see the error log of {ctx.who}")
    return Finding("http_error", f"HTTP {status} from {ctx.who}", advice, fatal=True)


def _content_type(ctx: Context) -> Finding | None:
    content_type = ctx.capture.headers.get("content-type")
    if content_type is not None and content_type.split(";")[0].strip().lower() == "text/event-stream":
        return None
    shown = content_type or "missing"
    advice = (
        "the request did not reach the streaming handler (an index.html fallback such as try_files, "
        "or the wrong location)"
        if content_type and content_type.startswith("text/html")
        else "the request did not reach a streaming handler (wrong URL or location, or a non-streaming endpoint)"
    )
    return Finding("wrong_content_type", f"Content-Type is {shown}, not text/event-stream", advice, fatal=True)


def _compression(ctx: Context) -> Finding | None:
    encoding = ctx.encoding
    if encoding in (None, "", "identity"):
        return None
    name = {"x-gzip": "gzip", "br": "brotli"}.get(encoding or "", encoding or "")
    types = "brotli_types" if name == "brotli" else "gzip_types"
    fix = advice(ctx.layers, "compression") or f"exclude text/event-stream from {types}"
    if ctx.decode_error is not None:
        return Finding("compressed", f"response is {encoding}-compressed ({ctx.decode_error})", fix, fatal=True)
    if not ctx.count:
        return Finding("compressed", f"response is {encoding}-compressed", fix)
    # Worded by what was measured: the same burst measure as the buffering check.
    groups = ctx.timing.groups
    if _buffering(ctx) is None:
        return Finding(
            "compressed",
            f"response is {encoding}-compressed ({ctx.count} events decoded; each arrived on its own)",
            f"it streams here only because every hop flushes each compressed chunk; one buffering hop makes "
            f"{name} hold output until its buffer fills; {fix}",
        )
    held = "all arrived in one burst" if len(groups) == 1 else f"they arrived in {len(groups)} bursts"
    return Finding(
        "compressed",
        f"response is {encoding}-compressed ({ctx.count} events decoded; {held})",
        f"{name} holds output until its buffer fills unless every hop flushes; {fix}",
    )


def _timeout(ctx: Context) -> Finding | None:
    if ctx.status is None or not ctx.timed_out:
        return None
    limit = ctx.capture.request.deadline_s
    ttfb = ctx.capture.ttfb_s
    if not ctx.count:
        headers_at = f" after {ttfb * 1000:.0f} ms" if ttfb else ""
        return Finding(
            "timeout",
            f"HTTP {ctx.status} headers arrived{headers_at}, then no event within {limit:g} s",
            "the body is held back (proxy buffering or gzip on a long stream) or the backend stalls",
        )
    return Finding(
        "timeout",
        f"the stream was still open after {limit:g} s ({ctx.count} events arrived)",
        "raise max_time, or ask the endpoint for a shorter stream",
    )


def _truncation(ctx: Context) -> Finding | None:
    cap, reading = ctx.capture, ctx.reading
    if ctx.timed_out:
        return None
    broken = not ctx.ended
    if (not ctx.expects_done or reading.done is not None) and not broken:
        return None
    if reading.done is not None and broken:
        return None  # a complete stream; the broken close is only a note
    last = ctx.timing.last_event_ms
    after = f"{ctx.count} events over {last:.0f} ms" if last is not None else "no event"
    how = f"; the connection broke (curl {cap.curl_exit}: {cap.curl_error})" if broken else ""
    tail = "; the last event was cut off mid-way" if reading.incomplete_tail else ""
    missing = " without a done event" if ctx.expects_done else ""
    return Finding(
        "truncated",
        f"stream ended after {ctx.status}{missing} ({after}){how}{tail}",
        "truncated by a timeout or a proxy (proxy_read_timeout, send_timeout, a worker shut down by a reload) "
        "or the backend stopped early",
    )


def _integrity(ctx: Context) -> Finding | None:
    if ctx.integrity != "mismatch":
        return None
    return Finding(
        "integrity",
        f"the reassembled tokens do not match the done event ({ctx.integrity_detail})",
        "bytes were lost or altered between the backend and the client (a proxy filter such as sub_filter, "
        "a charset conversion, or a dropped chunk)",
    )


def _too_few(ctx: Context) -> Finding | None:
    if ctx.count >= ctx.criteria.min_events:
        return None
    return Finding(
        "too_few_events",
        f"only {ctx.count} events arrived (need at least {ctx.criteria.min_events})",
        "too few to prove incremental delivery: ask the endpoint for a longer stream",
    )


_BUFFER_ADVICE: Final = "check proxy_buffering / gzip for text/event-stream"


def _buffering(ctx: Context) -> Finding | None:
    timing, criteria, count = ctx.timing, ctx.criteria, ctx.count
    if count < criteria.min_events:
        return None
    who = ctx.who
    groups = timing.groups
    first_s = (timing.first_event_ms or 0.0) / 1000.0
    observed: str | None = None
    if len(groups) == 1 or timing.largest_burst == count:
        observed = f"{who} delivers all {count} events in one burst after {first_s:.1f} s"
    elif timing.delivery_ratio is not None and timing.delivery_ratio < criteria.min_delivery_ratio:
        sizes = "+".join(str(size) for size in groups) if len(groups) <= 8 else f"largest {max(groups)}"
        observed = f"{who} delivers {count} events in only {len(groups)} bursts ({sizes})"
    elif timing.burst_share is not None and timing.burst_share > criteria.max_burst_share:
        observed = f"{who} delivers {timing.largest_burst} of {count} events ({timing.burst_share:.0%}) in one burst"
    elif timing.span_ratio is not None and timing.span_ratio < criteria.min_span_ratio:
        observed = (
            f"{who} delivers events emitted over {timing.emission_span_ms or 0:.0f} ms "
            f"within {timing.span_ms or 0:.0f} ms ({timing.span_ratio:.0%} of the emission span)"
        )
    elif timing.span_ratio is None and not timing.span_ms:
        observed = f"{who} delivers all {count} events at the same instant"
    elif timing.lateness_max_ms is not None and timing.lateness_max_ms > criteria.max_lateness_ms:
        observed = (
            f"{who} delivers events up to {timing.lateness_max_ms:.0f} ms late "
            f"(limit {criteria.max_lateness_ms:.0f} ms)"
        )
    if observed is None:
        return None
    length = ctx.capture.headers.get("content-length")
    hint = f" (the response has Content-Length {length}: something held the whole body)" if length else ""
    return Finding("buffered", observed + hint, advice(ctx.layers, "buffering") or _BUFFER_ADVICE)


def _heartbeats(ctx: Context) -> Finding | None:
    criteria, reading = ctx.criteria, ctx.reading
    if not criteria.expect_heartbeats or not ctx.count:
        return None
    interval = criteria.heartbeat_interval_ms
    limit = interval * HEARTBEAT_TOLERANCE + HEARTBEAT_SLACK_MS
    # Nothing on the wire at all, counted from the request: headers held back are silence too.
    quiet = [silence for silence in silences(ctx.capture) if silence.ms > limit]
    if quiet:
        worst = max(quiet, key=lambda silence: silence.ms)
        return Finding(
            "heartbeat_missing",
            f"the stream was silent for {worst.ms:.0f} ms ({worst.start_ms:.0f}-{worst.end_ms:.0f} ms, "
            f"{worst.where}) without a ': keepalive' comment (heartbeat interval {interval:.0f} ms)",
            "the server sends no heartbeats (or sends its headers only with its first event), or a proxy "
            "holds them back",
        )
    start = (ctx.capture.sent_s or 0.0) * 1000.0
    events = [event.at * 1000.0 for event in reading.events]
    if reading.done is not None:
        events.append(reading.done.at * 1000.0)
    pauses = [b - a for a, b in itertools.pairwise([start, *sorted(events)])]
    if not any(pause > interval for pause in pauses):
        return Finding(
            "heartbeat_missing",
            f"heartbeats not proven: no pause between events was longer than the heartbeat interval "
            f"({interval:.0f} ms; the longest was {max(pauses, default=0.0):.0f} ms)",
            "make the probe pause longer than the interval",
        )
    return None


_CHECKS: Final[tuple[Callable[[Context], Finding | None], ...]] = (
    _no_response,
    _stale_mismatch,
    _http_status,
    _stale_missing,
    _content_type,
    _compression,
    _timeout,
    _truncation,
    _integrity,
    _too_few,
    _buffering,
    _heartbeats,
)


def judge(ctx: Context) -> list[Finding]:
    """Every failed criterion, most decisive first."""
    findings: list[Finding] = []
    for check in _CHECKS:
        finding = check(ctx)
        if finding is not None:
            findings.append(finding)
            if finding.fatal:
                break
    return findings
