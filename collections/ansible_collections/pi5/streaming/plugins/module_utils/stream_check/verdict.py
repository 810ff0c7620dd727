"""One check of one URL: fetch, decode, parse, read, measure, judge, and the result every face shows."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from ansible_collections.pi5.streaming.plugins.module_utils.stream_check.curl import (
    Capture,
    Chunk,
    fetch,
    request_headers,
)
from ansible_collections.pi5.streaming.plugins.module_utils.stream_check.events import (
    Integrity,
    check_integrity,
    read_events,
)
from ansible_collections.pi5.streaming.plugins.module_utils.stream_check.judge import (
    TIMEOUT_EXIT,
    Context,
    Finding,
    Verdict,
    judge,
)
from ansible_collections.pi5.streaming.plugins.module_utils.stream_check.measure import longest_silence, measure
from ansible_collections.pi5.streaming.plugins.module_utils.stream_check.options import (
    DEFAULT_CRITERIA,
    Criteria,
    Request,
)
from ansible_collections.pi5.streaming.plugins.module_utils.stream_check.parse import decode_body, parse_sse
from ansible_collections.pi5.streaming.plugins.module_utils.stream_check.proxies import fingerprint
from ansible_collections.pi5.streaming.plugins.module_utils.stream_check.resume import ResumeResult

__all__ = ["HEADERS_OF_INTEREST", "CheckResult", "analyse", "check_stream"]

BODY_EXCERPT_CHARS: Final = 200
HEADERS_OF_INTEREST: Final = (
    "content-type",
    "content-encoding",
    "content-length",
    "transfer-encoding",
    "cache-control",
    "x-accel-buffering",
    "x-config-revision",
    "server",
    "via",
    "location",
)


@dataclass
class CheckResult:
    """One check of one URL; :meth:`to_dict` is JSON-serialisable."""

    url: str
    name: str | None
    verdict: Verdict
    incremental: bool
    diagnosis: str
    observed: str  # the diagnosis without the advice
    summary: str
    failures: list[str]  # every failed criterion, the verdict's first
    notes: list[str]
    status: int | None
    http_version: str | None
    remote: str | None
    content_type: str | None
    content_encoding: str | None
    headers: dict[str, str]
    ttfb_ms: float | None
    first_event_ms: float | None
    last_event_ms: float | None
    span_ms: float | None
    emission_span_ms: float | None
    span_ratio: float | None
    events: int
    heartbeats: int
    largest_burst: int
    burst_share: float | None
    deliveries: int
    delivery_ratio: float | None
    lateness_p50_ms: float | None
    lateness_max_ms: float | None
    ended_cleanly: bool
    done: bool
    integrity: Integrity
    integrity_detail: str
    tokens: int
    arrivals_ms: list[float]
    heartbeat_arrivals_ms: list[float]
    curl_exit: int
    curl_error: str
    elapsed_ms: float
    body_excerpt: str
    proxies: list[str]  # every proxy or CDN the headers name, outermost first, with the evidence
    timestamps: str  # where the emission times came from, and their unit (or why none were used)
    longest_silence_ms: float | None
    longest_silence: str  # where it fell
    resume: ResumeResult | None = None  # the resume hop, when asked for and the stream check passed

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def _header_title(name: str) -> str:
    return "-".join(part.capitalize() for part in name.split("-"))


def _interesting_headers(headers: Mapping[str, str], criteria: Criteria) -> dict[str, str]:
    names = list(HEADERS_OF_INTEREST)
    if criteria.expected_header is not None:
        names.append(criteria.expected_header[0].lower())
    return {_header_title(name): headers[name] for name in names if name in headers}


def _body_excerpt(chunks: Sequence[Chunk], status: int | None, content_type: str | None) -> str:
    if status == 200 and content_type and content_type.startswith("text/event-stream"):
        return ""
    raw = b"".join(chunk.data for chunk in chunks)[: BODY_EXCERPT_CHARS * 4]
    text = re.sub(r"\s+", " ", raw.decode("utf-8", errors="replace")).strip()
    return text[:BODY_EXCERPT_CHARS]


def _summary(verdict: str, ctx: Context, findings: Sequence[Finding]) -> str:
    version = f" (HTTP/{ctx.capture.http_version})" if ctx.capture.http_version else ""
    if ctx.status is None:
        return f"{verdict}: {findings[0].observed if findings else 'no response'}"
    if not ctx.count:
        return f"{verdict}: HTTP {ctx.status}, 0 events{version}"
    timing = ctx.timing
    parts = [
        f"{ctx.count} events",
        f"first after {timing.first_event_ms or 0:.0f} ms",
        f"spread over {timing.span_ms or 0:.0f} ms",
        f"largest burst {timing.largest_burst} ({timing.burst_share or 0:.0%})",
    ]
    if timing.lateness_max_ms is not None:
        parts.append(f"max lateness {timing.lateness_max_ms:.0f} ms")
    status = "" if ctx.status == 200 else f"HTTP {ctx.status}, "
    return f"{verdict}: {status}{', '.join(parts)}{version}"


def _notes(ctx: Context) -> list[str]:
    cap, reading = ctx.capture, ctx.reading
    notes = [f"the stream carried an error event: {error}" for error in reading.errors]
    if cap.request.http_version == "2" and cap.http_version not in (None, "2"):
        notes.append(f"HTTP/2 was asked for but the server answered HTTP/{cap.http_version}")
    if reading.done is not None and cap.curl_exit not in (0, TIMEOUT_EXIT):
        notes.append(f"the connection broke after the done event (curl {cap.curl_exit}: {cap.curl_error})")
    if ctx.decode_error:
        notes.append(ctx.decode_error)
    if ctx.integrity == "not_checked" and reading.done is not None:
        notes.append(f"integrity not checked: {ctx.integrity_detail}")
    if ctx.count and not reading.stamps.usable:
        notes.append(f"emission times: {reading.stamps.how}")
    asked = _asked_encodings(cap)
    if ctx.encoding and ctx.encoding not in ("identity", "x-gzip") and ctx.encoding not in asked:
        notes.append(f"the server sent Content-Encoding {ctx.encoding}, which was not asked for ({', '.join(asked)})")
    return notes


def _asked_encodings(capture: Capture) -> list[str]:
    value = next(
        (line.partition(":")[2] for line in request_headers(capture.request) if line.lower().startswith("accept-encoding:")),
        "",
    )
    return [part.strip().split(";")[0] for part in value.split(",") if part.strip()]


def analyse(capture: Capture, criteria: Criteria = DEFAULT_CRITERIA, *, name: str | None = None) -> CheckResult:
    """Measure a captured stream, judge it against ``criteria`` and say why."""
    encoding = capture.headers.get("content-encoding", "").strip().lower() or None
    decoded, decode_error = decode_body(capture.chunks, encoding)
    last_byte_s = capture.chunks[-1].at if capture.chunks else capture.elapsed_s
    reading = read_events(parse_sse(decoded), last_byte_s, criteria.burst_window_ms)
    integrity, integrity_detail = check_integrity(reading.contents, reading.done_summary)
    timing = measure(reading, criteria.burst_window_ms)
    layers = tuple(fingerprint(capture.headers, capture.header_names, capture.http_version))
    ctx = Context(
        capture, criteria, reading, timing, integrity, integrity_detail, name, layers, encoding, decode_error
    )
    findings = judge(ctx)
    verdict: Verdict = findings[0].verdict if findings else "incremental"
    summary = _summary(verdict, ctx, findings)
    observed = findings[0].observed if findings else summary
    ended_cleanly = reading.done is not None if ctx.expects_done else ctx.ended
    content_type = capture.headers.get("content-type")
    quiet = longest_silence(capture)
    return CheckResult(
        url=capture.request.url,
        name=name,
        verdict=verdict,
        incremental=not findings,
        diagnosis=findings[0].diagnosis if findings else summary,
        observed=observed,
        summary=summary,
        failures=[f"{finding.verdict}: {finding.diagnosis}" for finding in findings],
        notes=_notes(ctx),
        status=capture.status,
        http_version=capture.http_version,
        remote=f"{capture.remote_ip}:{capture.remote_port}" if capture.remote_ip else None,
        content_type=content_type,
        content_encoding=encoding,
        headers=_interesting_headers(capture.headers, criteria),
        ttfb_ms=_round(capture.ttfb_s * 1000.0 if capture.ttfb_s else None),
        first_event_ms=_round(timing.first_event_ms),
        last_event_ms=_round(timing.last_event_ms),
        span_ms=_round(timing.span_ms),
        emission_span_ms=_round(timing.emission_span_ms),
        span_ratio=_round(timing.span_ratio, 3),
        events=ctx.count,
        heartbeats=len(reading.comments),
        largest_burst=timing.largest_burst,
        burst_share=_round(timing.burst_share, 3),
        deliveries=len(timing.groups),
        delivery_ratio=_round(timing.delivery_ratio, 3),
        lateness_p50_ms=_round(timing.lateness_p50_ms),
        lateness_max_ms=_round(timing.lateness_max_ms),
        ended_cleanly=ended_cleanly,
        done=reading.done is not None,
        integrity=ctx.integrity,
        integrity_detail=integrity_detail,
        tokens=len(reading.contents),
        arrivals_ms=[round(at, 1) for at in timing.arrivals_ms],
        heartbeat_arrivals_ms=[round(comment.at * 1000.0, 1) for comment in reading.comments],
        curl_exit=capture.curl_exit,
        curl_error=capture.curl_error,
        elapsed_ms=round(capture.elapsed_s * 1000.0, 1),
        # An error page can be gzipped too (the check asks like a browser): show it decoded.
        body_excerpt=_body_excerpt(capture.chunks if decode_error else decoded, capture.status, content_type),
        proxies=[f"{layer.name} ({layer.evidence})" for layer in layers],
        timestamps=reading.stamps.how,
        longest_silence_ms=_round(quiet.ms) if quiet else None,
        longest_silence=quiet.describe() if quiet else "",
    )


def check_stream(request: Request, criteria: Criteria = DEFAULT_CRITERIA, *, name: str | None = None) -> CheckResult:
    """Fetch ``request`` once over a fresh connection and judge the stream."""
    return analyse(fetch(request), criteria, name=name)
