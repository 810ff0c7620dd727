"""Prove that an HTTP endpoint delivers Server-Sent Events incrementally.

The one core behind the ``pi5.streaming.stream_check`` Ansible module, the
``bin/stream-check`` CLI and the tests. Standard library only (no Ansible
imports): it runs on the Pi's system python3 as is.

Pipeline; every step but :func:`fetch` is a pure function of its input::

    fetch(Request) -> Capture           curl -N in a subprocess; each read of its
                                        stdout is stamped with time.monotonic()
    decode_body(chunks, encoding)       undo gzip/deflate, keeping the stamps
    parse_sse(chunks) -> SseStream      WHATWG event-stream parsing; an event is
                                        stamped with the read that carried its
                                        terminating blank line
    analyse(Capture, Criteria)          measure, judge, diagnose -> CheckResult
    check_stream(Request, Criteria)     fetch + analyse
    check_hops([Hop, ...])              the same per hop + fault attribution
"""

from __future__ import annotations

import codecs
import dataclasses
import hashlib
import itertools
import json
import os
import re
import selectors
import shutil
import statistics
import subprocess
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, get_args
from urllib.parse import urlsplit

__all__ = [
    "BROWSER_ACCEPT_ENCODING",
    "CRITERIA_FIELDS",
    "OPTION_DEFAULTS",
    "REQUEST_FIELDS",
    "VERDICTS",
    "Capture",
    "CheckResult",
    "Chunk",
    "Criteria",
    "CurlMissing",
    "Hop",
    "HopsResult",
    "Request",
    "SseComment",
    "SseEvent",
    "SseStream",
    "StreamCheckError",
    "UsageError",
    "analyse",
    "attribute",
    "build_curl_argv",
    "check_hops",
    "check_integrity",
    "check_stream",
    "decode_body",
    "delivery_groups",
    "fetch",
    "hop_from_mapping",
    "largest_burst",
    "options_from_mapping",
    "parse_header_dump",
    "parse_sse",
    "parse_writeout",
    "relative_lateness",
    "render",
    "render_hops_table",
    "render_table",
]

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
]
# The same names as a tuple, for argument choices and docs (one list: the Literal above).
VERDICTS: Final[tuple[Verdict, ...]] = get_args(Verdict)
Integrity = Literal["ok", "mismatch", "not_checked"]
HTTP_VERSIONS: Final = ("auto", "1.1", "2")

# Exactly what browsers send. curl is NOT given --compressed: it would decode
# the body silently and hide a compressing proxy, which is a buffering cause.
BROWSER_ACCEPT_ENCODING: Final = "gzip, deflate, br"
USER_AGENT: Final = "stream-check/1.0 (+curl)"
WRITEOUT_MARKER: Final = "@@stream-check-writeout@@"
READ_SIZE: Final = 65536
# curl enforces --max-time itself; the watchdog only catches a wedged curl.
WATCHDOG_GRACE_S: Final = 5.0
# A heartbeat may come this much later than its interval before it counts as missing.
HEARTBEAT_TOLERANCE: Final = 1.5
HEARTBEAT_SLACK_MS: Final = 100.0
BODY_EXCERPT_CHARS: Final = 200

TLS_EXIT_CODES: Final = frozenset({35, 51, 53, 54, 58, 59, 60, 64, 66, 77, 80, 82, 83, 90, 91})
TIMEOUT_EXIT: Final = 28
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

_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_RESOLVE = re.compile(r"^\+?(\[[0-9A-Fa-f:.]+\]|[^:\s\[\]]+|\*):\d{1,5}:\S+$")
_METHOD = re.compile(r"^[A-Z]+$")
_STATUS_LINE = re.compile(r"^HTTP/(\d(?:\.\d)?)\s+(\d{3})")
_EOL = re.compile(r"\r\n|\r|\n")
_TLS_NAME = re.compile(r"target host ?name '([^']+)'|host name '([^']+)'")


class StreamCheckError(Exception):
    """The check could not run at all (as opposed to a failed verdict)."""


class UsageError(StreamCheckError, ValueError):
    """An option has an invalid value; the message names it."""


class CurlMissing(StreamCheckError):  # noqa: N818  (a condition, like FileNotFoundError's cousins)
    """The curl executable was not found."""


# --------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """How to fetch the stream: the curl side of the check."""

    url: str
    method: str | None = None  # None: GET, or POST when data is given
    data: str | None = None  # request body, sent as application/json
    headers: tuple[str, ...] = ()  # "Name: value"; replaces a default of that name
    insecure: bool = False
    cacert: str | None = None
    resolve: tuple[str, ...] = ()  # curl --resolve HOST:PORT:ADDR
    http_version: str = "auto"  # "auto", "1.1" or "2"
    max_time: float = 10.0  # seconds for the whole stream
    connect_timeout: float = 5.0
    curl: str = "curl"

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UsageError(f"url must be an http:// or https:// URL with a host, got {self.url!r}")
        if self.method is not None and not _METHOD.match(self.method):
            raise UsageError(f"method must be an upper-case HTTP method, got {self.method!r}")
        for header in self.headers:
            split_header(header)
        for entry in self.resolve:
            if not _RESOLVE.match(entry):
                raise UsageError(f"resolve must look like HOST:PORT:ADDRESS, got {entry!r}")
        if self.http_version not in HTTP_VERSIONS:
            raise UsageError(f"http_version must be one of {', '.join(HTTP_VERSIONS)}, got {self.http_version!r}")
        if not self.max_time > 0 or not self.connect_timeout > 0:
            raise UsageError("max_time and connect_timeout must be positive seconds")

    @property
    def effective_method(self) -> str:
        return self.method or ("POST" if self.data is not None else "GET")


@dataclass(frozen=True)
class Criteria:
    """What counts as incremental delivery: the judging side of the check."""

    min_events: int = 5
    expect_done: bool = True  # require the terminating done event
    min_span_ratio: float = 0.5  # arrival span / emission span (needs ts)
    max_burst_share: float = 0.5  # largest burst / events
    burst_window_ms: float = 10.0  # events this close together form a burst
    min_delivery_ratio: float = 0.5  # separate deliveries / events
    max_lateness_ms: float = 1000.0
    expect_heartbeats: bool = False
    heartbeat_interval_ms: float = 15000.0
    expect_header: str | None = None  # "Name: value" the response must carry

    def __post_init__(self) -> None:
        if self.min_events < 1:
            raise UsageError("min_events must be at least 1")
        for name in ("min_span_ratio", "max_burst_share", "min_delivery_ratio"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise UsageError(f"{name} must be between 0 and 1")
        for name in ("burst_window_ms", "max_lateness_ms", "heartbeat_interval_ms"):
            if not getattr(self, name) > 0:
                raise UsageError(f"{name} must be positive")
        if self.expect_header is not None:
            split_header(self.expect_header)

    @property
    def expected_header(self) -> tuple[str, str] | None:
        return None if self.expect_header is None else split_header(self.expect_header)


DEFAULT_CRITERIA: Final = Criteria()


def split_header(line: str) -> tuple[str, str]:
    """``"Name: value"`` -> ``("Name", "value")``; raise UsageError if malformed."""
    name, sep, value = line.partition(":")
    name, value = name.strip(), value.strip()
    if not sep or not _HEADER_NAME.match(name) or "\r" in value or "\n" in value:
        raise UsageError(f"header must look like 'Name: value', got {line!r}")
    return name, value


# --------------------------------------------------------------------------
# Running curl
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Chunk:
    """One read of curl's stdout: seconds since the request started, bytes."""

    at: float
    data: bytes


@dataclass(frozen=True)
class Capture:
    """Everything curl told us; :func:`analyse` needs nothing else."""

    request: Request
    chunks: tuple[Chunk, ...] = ()
    curl_exit: int = 0
    curl_error: str = ""
    status: int | None = None
    http_version: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)  # final response, lower-case names
    ttfb_s: float | None = None
    remote_ip: str | None = None
    remote_port: int | None = None
    elapsed_s: float = 0.0
    killed: bool = False  # the watchdog had to kill curl


def _default_headers(request: Request) -> dict[str, str]:
    headers = {
        "Accept": "text/event-stream",
        "Accept-Encoding": BROWSER_ACCEPT_ENCODING,
        "Cache-Control": "no-cache",
    }
    if request.data is not None:
        headers["Content-Type"] = "application/json"
    return headers


def request_headers(request: Request) -> list[str]:
    """The browser-like defaults, each replaced by a user header of the same name."""
    merged = {name.lower(): f"{name}: {value}" for name, value in _default_headers(request).items()}
    for line in request.headers:
        name, value = split_header(line)
        merged[name.lower()] = f"{name}: {value}"
    return list(merged.values())


def build_curl_argv(request: Request, header_file: str, curl: str | None = None) -> list[str]:
    """The curl command line for one check (headers dumped to ``header_file``)."""
    argv = [
        curl or request.curl,
        "--disable",  # must come first: ignore ~/.curlrc
        "--silent",
        "--show-error",
        "--no-buffer",  # -N: write each piece as it arrives
        "--globoff",
        "--proto",
        "=http,https",
        "--noproxy",
        "*",  # a proxy from the environment would buffer and hide the truth
        "--user-agent",
        USER_AGENT,
        "--max-time",
        f"{request.max_time:g}",
        "--connect-timeout",
        f"{request.connect_timeout:g}",
        "--dump-header",
        header_file,
        "--output",
        "-",
        "--write-out",
        "%{stderr}\n" + WRITEOUT_MARKER + "%{json}\n",
    ]
    implied = "POST" if request.data is not None else "GET"
    if request.effective_method != implied:
        argv += ["--request", request.effective_method]
    if request.http_version == "1.1":
        argv.append("--http1.1")
    elif request.http_version == "2":
        argv.append("--http2")
    if request.insecure:
        argv.append("--insecure")
    if request.cacert:
        argv += ["--cacert", request.cacert]
    for entry in request.resolve:
        argv += ["--resolve", entry]
    for header in request_headers(request):
        argv += ["--header", header]
    if request.data is not None:
        argv += ["--data-raw", request.data]  # --data-raw: a leading @ is not a file name
    argv += ["--url", request.url]
    return argv


def _pump(fd: int, start: float, deadline: float, chunks: list[Chunk]) -> bool:
    """Read ``fd`` to EOF, stamping each read; False if the deadline passed first."""
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if not selector.select(remaining):
                continue
            data = os.read(fd, READ_SIZE)
            # Stamp right after the read and keep parsing out of this loop, so
            # a slow Pi spends no time between reads that would skew the stamps.
            at = time.monotonic() - start
            if not data:
                return True
            chunks.append(Chunk(at, data))


def _run_curl(argv: Sequence[str], stderr: Any, budget_s: float) -> tuple[list[Chunk], int, float, bool]:
    chunks: list[Chunk] = []
    start = time.monotonic()
    # One curl process per check is one fresh connection: after an nginx reload
    # the old workers keep serving the connections they already hold, so only a
    # new connection proves what the new config does.
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr)
    finished = False
    try:
        if proc.stdout is not None:  # always, with stdout=PIPE
            finished = _pump(proc.stdout.fileno(), start, start + budget_s, chunks)
    finally:
        if not finished:
            proc.kill()
        try:
            exit_code = proc.wait(timeout=WATCHDOG_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            exit_code = proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    return chunks, exit_code, time.monotonic() - start, not finished


def fetch(request: Request) -> Capture:
    """Run curl once and capture the timed body, headers and curl's write-out."""
    curl = shutil.which(request.curl)
    if curl is None:
        raise CurlMissing(f"curl not found ({request.curl!r}): install curl on the host that runs the check")
    with tempfile.TemporaryDirectory(prefix="stream-check-") as tmp:
        header_path = os.path.join(tmp, "headers")
        stderr_path = os.path.join(tmp, "stderr")
        argv = build_curl_argv(request, header_path, curl)
        with open(stderr_path, "wb") as stderr:
            try:
                chunks, exit_code, elapsed, killed = _run_curl(argv, stderr, request.max_time + WATCHDOG_GRACE_S)
            except OSError as exc:
                raise StreamCheckError(f"cannot run {curl}: {exc}") from exc
        header_text = _read_text(header_path, "iso-8859-1")
        stderr_text = _read_text(stderr_path, "utf-8")
    writeout, messages = parse_writeout(stderr_text)
    dump_status, dump_version, headers = parse_header_dump(header_text)
    status = _int(writeout.get("response_code")) or dump_status
    version = str(writeout.get("http_version") or "") or dump_version
    return Capture(
        request=request,
        chunks=tuple(chunks),
        curl_exit=-9 if killed else exit_code,
        curl_error=_curl_error(writeout, messages, killed),
        status=status or None,
        http_version=None if version in ("", "0") else version,
        headers=headers,
        ttfb_s=_float(writeout.get("time_starttransfer")) or (chunks[0].at if chunks else None),
        remote_ip=str(writeout.get("remote_ip") or "") or None,
        remote_port=_int(writeout.get("remote_port")) or None,
        elapsed_s=elapsed,
        killed=killed,
    )


def _read_text(path: str, encoding: str) -> str:
    try:
        with open(path, "rb") as handle:
            return handle.read().decode(encoding, errors="replace")
    except FileNotFoundError:
        return ""


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _float(value: object) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


def _curl_error(writeout: Mapping[str, Any], messages: str, killed: bool) -> str:
    if killed:
        return "curl did not finish; killed by the watchdog"
    message = writeout.get("errormsg")
    if isinstance(message, str) and message:
        return message
    lines = [line for line in messages.splitlines() if line.startswith("curl:")]
    return lines[-1] if lines else ""


def parse_writeout(stderr: str) -> tuple[dict[str, Any], str]:
    """Split curl's stderr into its ``%{json}`` write-out and the other messages."""
    before, marker, after = stderr.rpartition(WRITEOUT_MARKER)
    if not marker:
        return {}, stderr.strip()
    line, _, rest = after.partition("\n")
    try:
        data = json.loads(line)
    except ValueError:
        data = None
    return (data if isinstance(data, dict) else {}), (before + rest).strip()


def parse_header_dump(text: str) -> tuple[int | None, str | None, dict[str, str]]:
    """Status, HTTP version and headers of the LAST response in a ``-D`` dump."""
    status: int | None = None
    version: str | None = None
    headers: dict[str, str] = {}
    for line in text.splitlines():
        match = _STATUS_LINE.match(line)
        if match:  # a new response (after 1xx or a proxy CONNECT) starts over
            status, version, headers = int(match.group(2)), match.group(1), {}
            continue
        name, sep, value = line.partition(":")
        if status is None or not sep or not name.strip() or line[:1].isspace():
            continue
        key = name.strip().lower()
        headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
    return status, version, headers


# --------------------------------------------------------------------------
# Decoding and SSE parsing
# --------------------------------------------------------------------------


def decode_body(chunks: Sequence[Chunk], encoding: str | None) -> tuple[list[Chunk], str | None]:
    """Undo a gzip/deflate Content-Encoding chunk by chunk, keeping arrival stamps.

    Returns the decoded chunks and an error text (None when decoding worked).
    Only used to measure a compressed stream: a compressed stream fails anyway.
    """
    if encoding in (None, "", "identity"):
        return list(chunks), None
    if encoding not in ("gzip", "x-gzip", "deflate"):
        return [], f"cannot decode Content-Encoding {encoding} with the standard library"
    # 32+15 accepts a gzip or zlib header; raw deflate ("deflate" done wrong) needs -15.
    for wbits in (47, -15):
        decoder = zlib.decompressobj(wbits)
        try:
            decoded = [Chunk(chunk.at, decoder.decompress(chunk.data)) for chunk in chunks]
        except zlib.error:
            continue
        return decoded, None
    return [], f"the {encoding} body does not decode"


@dataclass(frozen=True)
class SseEvent:
    """A dispatched event, stamped with the read carrying its blank line."""

    at: float
    data: str
    type: str = "message"
    id: str | None = None


@dataclass(frozen=True)
class SseComment:
    """A ``:`` comment line (heartbeat or open marker) and its arrival."""

    at: float
    text: str


@dataclass(frozen=True)
class SseStream:
    events: tuple[SseEvent, ...]
    comments: tuple[SseComment, ...]
    incomplete_tail: bool  # bytes after the last blank line: cut mid-event


class SseParser:
    """Incremental text/event-stream parser (the WHATWG algorithm).

    Lines end in CRLF, LF or CR, also when a CRLF is split across reads; UTF-8
    is decoded incrementally so a character split across reads survives.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8-sig")(errors="replace")
        self._pending = ""
        self._skip_lf = False
        self._data: list[str] = []
        self._type = ""
        self._last_id: str | None = None
        self.events: list[SseEvent] = []
        self.comments: list[SseComment] = []

    def feed(self, data: bytes, at: float) -> None:
        self._feed_text(self._decoder.decode(data), at)

    def close(self, at: float) -> SseStream:
        self._feed_text(self._decoder.decode(b"", final=True), at)
        # The spec discards an event that is not terminated by a blank line.
        tail = bool(self._pending or self._data)
        return SseStream(tuple(self.events), tuple(self.comments), tail)

    def _feed_text(self, text: str, at: float) -> None:
        if not text:
            return
        if self._skip_lf and text.startswith("\n"):
            text = text[1:]
        self._skip_lf = False
        buffer = self._pending + text
        position = 0
        for match in _EOL.finditer(buffer):
            self._line(buffer[position : match.start()], at)
            position = match.end()
        # A CR at the very end may be the first half of a CRLF split across reads.
        self._skip_lf = buffer.endswith("\r")
        self._pending = buffer[position:]

    def _line(self, line: str, at: float) -> None:
        if not line:
            self._dispatch(at)
        elif line.startswith(":"):
            self.comments.append(SseComment(at, line[1:].strip()))
        else:
            name, sep, value = line.partition(":")
            if sep and value.startswith(" "):
                value = value[1:]
            if name == "data":
                self._data.append(value)
            elif name == "event":
                self._type = value
            elif name == "id" and "\0" not in value:
                self._last_id = value

    def _dispatch(self, at: float) -> None:
        if self._data:
            self.events.append(SseEvent(at, "\n".join(self._data), self._type or "message", self._last_id))
        self._data = []
        self._type = ""


def parse_sse(chunks: Iterable[Chunk]) -> SseStream:
    """Parse timed chunks into events and comments, each with its arrival."""
    parser = SseParser()
    at = 0.0
    for chunk in chunks:
        parser.feed(chunk.data, chunk.at)
        at = chunk.at
    return parser.close(at)


# --------------------------------------------------------------------------
# Reading the events: tokens, ts, done
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Reading:
    events: tuple[SseEvent, ...]  # every event before done
    emitted_ms: tuple[float | None, ...]  # the "ts" of each event, if any
    contents: tuple[str, ...]  # token contents, in order
    done: SseEvent | None
    done_summary: Mapping[str, Any] | None
    errors: tuple[str, ...]  # contents of "error" events
    comments: tuple[SseComment, ...]
    incomplete_tail: bool


def _json_object(data: str) -> dict[str, Any] | None:
    try:
        value = json.loads(data)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _is_done(event: SseEvent, payload: Mapping[str, Any] | None) -> bool:
    if event.type == "done" or event.data.strip() == "[DONE]":
        return True
    return payload is not None and (payload.get("type") == "done" or payload.get("done") is True)


def _token_content(payload: Mapping[str, Any] | None) -> str | None:
    """The token text: ours is ``content`` of a token event; OpenAI's is a delta."""
    if payload is None or payload.get("type", "token") != "token":
        return None
    content = payload.get("content")
    if isinstance(content, str):
        return content
    choices = payload.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        delta = choices[0].get("delta")
        if isinstance(delta, dict) and isinstance(delta.get("content"), str):
            return str(delta["content"])
    return None


def _emitted_ms(payload: Mapping[str, Any] | None) -> float | None:
    value = None if payload is None else payload.get("ts")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _read_events(stream: SseStream) -> _Reading:
    events: list[SseEvent] = []
    emitted: list[float | None] = []
    contents: list[str] = []
    errors: list[str] = []
    done: SseEvent | None = None
    summary: Mapping[str, Any] | None = None
    for event in stream.events:
        payload = _json_object(event.data)
        if _is_done(event, payload):
            done, summary = event, _done_summary(payload)
            break
        events.append(event)
        emitted.append(_emitted_ms(payload))
        content = _token_content(payload)
        if content is not None:
            contents.append(content)
        if event.type == "error" or (payload is not None and payload.get("type") == "error"):
            errors.append(str(payload.get("content") if payload else event.data))
    return _Reading(
        tuple(events),
        tuple(emitted),
        tuple(contents),
        done,
        summary,
        tuple(errors),
        stream.comments,
        stream.incomplete_tail,
    )


def _done_summary(payload: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """The done event's {tokens, sha256, bytes}: its ``content`` or the payload itself."""
    if payload is None:
        return None
    content = payload.get("content")
    return content if isinstance(content, dict) else payload


def check_integrity(contents: Sequence[str], summary: Mapping[str, Any] | None) -> tuple[Integrity, str]:
    """Compare the reassembled tokens with the done event's tokens/bytes/sha256."""
    if summary is None or not any(key in summary for key in ("tokens", "bytes", "sha256")):
        return "not_checked", "the done event carries no tokens/bytes/sha256 summary"
    text = "".join(contents).encode("utf-8")
    actual: dict[str, object] = {
        "tokens": len(contents),
        "bytes": len(text),
        "sha256": hashlib.sha256(text).hexdigest(),
    }
    wrong = [
        f"{key} {actual[key]} != {summary[key]}"
        if key != "sha256"
        else f"sha256 {str(actual[key])[:12]}… != {str(summary[key])[:12]}…"
        for key in ("tokens", "bytes", "sha256")
        if key in summary and summary[key] != actual[key]
    ]
    if wrong:
        return "mismatch", ", ".join(wrong)
    return "ok", f"{len(contents)} tokens, {len(text)} bytes, sha256 matches"


# --------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------


def largest_burst(arrivals_ms: Sequence[float], window_ms: float) -> int:
    """The most events that arrived within ``window_ms`` of each other."""
    times = sorted(arrivals_ms)
    best = 0
    first = 0
    for last, at in enumerate(times):
        while at - times[first] > window_ms:
            first += 1
        best = max(best, last - first + 1)
    return best


def delivery_groups(arrivals_ms: Sequence[float], emitted_ms: Sequence[float | None], window_ms: float) -> list[int]:
    """Sizes of the separate deliveries the events arrived in, in order.

    An event joins the previous delivery when it arrived within ``window_ms``
    of the event before it although it was emitted more than ``window_ms``
    after it (without ts, arriving close is enough): it was held back and
    released together. A fast emitter is therefore not mistaken for a buffer.
    """
    groups: list[int] = []
    for i, at in enumerate(arrivals_ms):
        if i and at - arrivals_ms[i - 1] <= window_ms and _emitted_apart(emitted_ms, i, window_ms):
            groups[-1] += 1
        else:
            groups.append(1)
    return groups


def _emitted_apart(emitted_ms: Sequence[float | None], i: int, window_ms: float) -> bool:
    if i >= len(emitted_ms):
        return True
    now, before = emitted_ms[i], emitted_ms[i - 1]
    return now is None or before is None or now - before > window_ms


def relative_lateness(arrivals_ms: Sequence[float], emitted_ms: Sequence[float | None]) -> list[float]:
    """How much later than the least-delayed event each event arrived (ms).

    delay_i = arrival_i - ts_i mixes in the client/server clock offset; it
    cancels out in delay_i - min(delay). The baseline is the least-delayed
    event rather than the first: when the first event is itself held in a
    buffer, a first-event baseline would hide exactly the delay we look for.
    """
    delays = [at - ts for at, ts in zip(arrivals_ms, emitted_ms, strict=True) if ts is not None]
    if len(delays) < 2:
        return []
    base = min(delays)
    return [delay - base for delay in delays]


@dataclass(frozen=True)
class _Timing:
    arrivals_ms: tuple[float, ...]
    first_event_ms: float | None
    last_event_ms: float | None
    span_ms: float | None
    emission_span_ms: float | None
    span_ratio: float | None
    largest_burst: int
    burst_share: float | None
    groups: tuple[int, ...]
    delivery_ratio: float | None
    lateness_p50_ms: float | None
    lateness_max_ms: float | None


def _measure(reading: _Reading, window_ms: float) -> _Timing:
    arrivals = tuple(event.at * 1000.0 for event in reading.events)
    count = len(arrivals)
    lateness = relative_lateness(arrivals, reading.emitted_ms)
    stamped = [(at, ts) for at, ts in zip(arrivals, reading.emitted_ms, strict=True) if ts is not None]
    emission_span = max(ts for _, ts in stamped) - min(ts for _, ts in stamped) if len(stamped) > 1 else None
    stamped_span = max(at for at, _ in stamped) - min(at for at, _ in stamped) if len(stamped) > 1 else None
    groups = delivery_groups(arrivals, reading.emitted_ms, window_ms)
    burst = largest_burst(arrivals, window_ms)
    return _Timing(
        arrivals_ms=arrivals,
        first_event_ms=arrivals[0] if arrivals else None,
        last_event_ms=arrivals[-1] if arrivals else None,
        span_ms=arrivals[-1] - arrivals[0] if arrivals else None,
        emission_span_ms=emission_span,
        span_ratio=stamped_span / emission_span if emission_span and stamped_span is not None else None,
        largest_burst=burst,
        burst_share=burst / count if count else None,
        groups=tuple(groups),
        delivery_ratio=len(groups) / count if count else None,
        lateness_p50_ms=statistics.median(lateness) if lateness else None,
        lateness_max_ms=max(lateness) if lateness else None,
    )


def _silences(start_ms: float, marks_ms: Sequence[float]) -> list[tuple[float, float]]:
    """(from, to) of each quiet interval between ``start_ms`` and successive marks."""
    return list(itertools.pairwise([start_ms, *sorted(marks_ms)]))


# --------------------------------------------------------------------------
# Judging
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Finding:
    verdict: Verdict
    observed: str  # what happened, in plain words
    advice: str = ""  # the likely cause / what to check
    fatal: bool = False  # later checks would only repeat this one

    @property
    def diagnosis(self) -> str:
        return f"{self.observed}: {self.advice}" if self.advice else self.observed


@dataclass(frozen=True)
class _Context:
    capture: Capture
    criteria: Criteria
    reading: _Reading
    timing: _Timing
    integrity: Integrity
    integrity_detail: str
    who: str
    encoding: str | None
    decode_error: str | None

    @property
    def status(self) -> int | None:
        return self.capture.status

    @property
    def timed_out(self) -> bool:
        return self.capture.curl_exit == TIMEOUT_EXIT or self.capture.killed

    @property
    def count(self) -> int:
        return len(self.reading.events)

    @property
    def host_port(self) -> str:
        parts = urlsplit(self.capture.request.url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return f"{parts.hostname}:{port}"


def _who(name: str | None, headers: Mapping[str, str]) -> str:
    if name:
        return name
    return "nginx" if headers.get("server", "").lower().startswith("nginx") else "the server"


def _no_response(ctx: _Context) -> _Finding | None:
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
        return _Finding(
            "timeout",
            f"{ctx.host_port} did not {phase} within {limit:g} s ({message})",
            "a firewall drops the packets, the address is wrong, or the server hangs before sending headers",
            fatal=True,
        )
    if code == 6:
        host = urlsplit(cap.request.url).hostname
        return _Finding(
            "connect_error",
            f"cannot resolve {host}",
            "check DNS or /etc/hosts, or pin the name with resolve HOST:PORT:ADDRESS",
            fatal=True,
        )
    if code == 7:
        return _Finding(
            "connect_error",
            f"nothing accepts connections on {ctx.host_port} ({message})",
            "is the server running and listening on that address and port?",
            fatal=True,
        )
    if code == 52:
        return _Finding(
            "connect_error",
            f"{ctx.host_port} closed the connection without an HTTP response",
            "plain HTTP sent to a TLS port, or the server crashed on the request",
            fatal=True,
        )
    return _Finding("connect_error", f"no HTTP response from {ctx.host_port}: curl exit {code}: {message}", fatal=True)


def _tls_finding(ctx: _Context, message: str) -> _Finding:
    host = urlsplit(ctx.capture.request.url).hostname or "?"
    lowered = message.lower()
    name_match = _TLS_NAME.search(message)
    if name_match or "subject name" in lowered or "does not match" in lowered:
        name = next((group for group in (name_match.groups() if name_match else ()) if group), host)
        return _Finding(
            "tls_error",
            f"TLS certificate not valid for {name}",
            f"the certificate {ctx.host_port} presents does not list {name} in its subjectAltName "
            "(wrong certificate for this server_name, or the wrong server block answered)",
            fatal=True,
        )
    if "expired" in lowered:
        return _Finding("tls_error", f"TLS certificate of {host} has expired", "renew it", fatal=True)
    if "self-signed" in lowered or "self signed" in lowered or "issuer" in lowered or "ca cert" in lowered:
        return _Finding(
            "tls_error",
            f"TLS certificate of {host} is not trusted ({message})",
            "pass cacert with the issuing CA, or insecure to skip verification for a self-signed test certificate",
            fatal=True,
        )
    return _Finding(
        "tls_error",
        f"TLS handshake with {ctx.host_port} failed ({message})",
        "plain HTTP on the port, a protocol/cipher mismatch, or no certificate for this name",
        fatal=True,
    )


def _stale_mismatch(ctx: _Context) -> _Finding | None:
    expected = ctx.criteria.expected_header
    if expected is None or ctx.status is None:
        return None
    name, value = expected
    got = ctx.capture.headers.get(name.lower())
    if got is None or got == value:
        return None
    return _Finding(
        "stale_config",
        f"{name} is {got!r}, expected {value!r}",
        "a stale config answered: the reload has not taken effect (failed reload, old workers, "
        "or another server block answered)",
    )


def _stale_missing(ctx: _Context) -> _Finding | None:
    expected = ctx.criteria.expected_header
    if expected is None or ctx.status is None or expected[0].lower() in ctx.capture.headers:
        return None
    name, value = expected
    return _Finding(
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


def _http_status(ctx: _Context) -> _Finding | None:
    status = ctx.status
    if status is None or status == 200:
        return None
    path = urlsplit(ctx.capture.request.url).path or "/"
    headers = ctx.capture.headers
    if status == 502:
        return _Finding(
            "http_error",
            "502 from the proxy",
            "nothing listens on the upstream port (is the backend running on the port nginx proxies to?)",
            fatal=True,
        )
    if status == 504:
        return _Finding(
            "http_error",
            "504 from the proxy",
            "the upstream accepted the connection but sent no response headers within proxy_read_timeout "
            "(is the backend hung, or does it wait for the whole answer before it starts the response?)",
            fatal=True,
        )
    if status == 404:
        return _Finding(
            "http_error",
            f"404 for {path}",
            "no location routes this path (is the site enabled and the location block present?)",
            fatal=True,
        )
    if 300 <= status < 400:
        return _Finding(
            "http_error",
            f"{status} redirect to {headers.get('location', '?')}",
            "the check does not follow redirects: give it the final URL (https:// instead of http://?)",
            fatal=True,
        )
    advice = _STATUS_ADVICE.get(status, f"see the error log of {ctx.who}")
    return _Finding("http_error", f"HTTP {status} from {ctx.who}", advice, fatal=True)


def _content_type(ctx: _Context) -> _Finding | None:
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
    return _Finding("wrong_content_type", f"Content-Type is {shown}, not text/event-stream", advice, fatal=True)


def _compression(ctx: _Context) -> _Finding | None:
    encoding = ctx.encoding
    if encoding in (None, "", "identity"):
        return None
    name = {"x-gzip": "gzip", "br": "brotli"}.get(encoding or "", encoding or "")
    types = "brotli_types" if name == "brotli" else "gzip_types"
    deliveries = len(ctx.timing.groups)
    if ctx.count and deliveries >= ctx.count:
        # Measured: every event came on its own, so this path flushes each compressed chunk.
        advice = (
            f"it streams here only because every hop flushes each chunk; one buffering hop makes {name} hold "
            f"output until its buffer fills; exclude text/event-stream from {types}"
        )
    else:
        advice = f"{name} buffers until its buffer fills; exclude text/event-stream from {types}"
    measured = f" ({ctx.count} events decoded; they arrived in {deliveries} deliveries)" if ctx.count else ""
    return _Finding(
        "compressed",
        f"response is {encoding}-compressed{measured}",
        advice,
        fatal=ctx.decode_error is not None,
    )


def _timeout(ctx: _Context) -> _Finding | None:
    if ctx.status is None or not ctx.timed_out:
        return None
    limit = ctx.capture.request.max_time
    ttfb = ctx.capture.ttfb_s
    if not ctx.count:
        headers_at = f" after {ttfb * 1000:.0f} ms" if ttfb else ""
        return _Finding(
            "timeout",
            f"HTTP {ctx.status} headers arrived{headers_at}, then no event within {limit:g} s",
            "the body is held back (proxy buffering or gzip on a long stream) or the backend stalls",
        )
    return _Finding(
        "timeout",
        f"the stream was still open after {limit:g} s ({ctx.count} events arrived)",
        "raise max_time, or ask the endpoint for a shorter stream",
    )


def _truncation(ctx: _Context) -> _Finding | None:
    cap, reading = ctx.capture, ctx.reading
    if ctx.timed_out:
        return None
    broken = cap.curl_exit != 0
    if (not ctx.criteria.expect_done or reading.done is not None) and not broken:
        return None
    if reading.done is not None and broken:
        return None  # a complete stream; the broken close is only a note
    last = ctx.timing.last_event_ms
    after = f"{ctx.count} events over {last:.0f} ms" if last is not None else "no event"
    how = f"; the connection broke (curl {cap.curl_exit}: {cap.curl_error})" if broken else ""
    tail = "; the last event was cut off mid-way" if reading.incomplete_tail else ""
    missing = " without a done event" if ctx.criteria.expect_done else ""
    return _Finding(
        "truncated",
        f"stream ended after {ctx.status}{missing} ({after}){how}{tail}",
        "truncated by a timeout or a proxy (proxy_read_timeout, send_timeout, a worker shut down by a reload) "
        "or the backend stopped early",
    )


def _integrity(ctx: _Context) -> _Finding | None:
    if ctx.integrity != "mismatch":
        return None
    return _Finding(
        "integrity",
        f"the reassembled tokens do not match the done event ({ctx.integrity_detail})",
        "bytes were lost or altered between the backend and the client (a proxy filter such as sub_filter, "
        "a charset conversion, or a dropped chunk)",
    )


def _too_few(ctx: _Context) -> _Finding | None:
    if ctx.count >= ctx.criteria.min_events:
        return None
    return _Finding(
        "too_few_events",
        f"only {ctx.count} events arrived (need at least {ctx.criteria.min_events})",
        "too few to prove incremental delivery: ask the endpoint for a longer stream",
    )


_BUFFER_ADVICE: Final = "check proxy_buffering / gzip for text/event-stream"


def _buffering(ctx: _Context) -> _Finding | None:
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
    return _Finding("buffered", observed + hint, _BUFFER_ADVICE)


def _heartbeats(ctx: _Context) -> _Finding | None:
    criteria, reading = ctx.criteria, ctx.reading
    if not criteria.expect_heartbeats or not ctx.count:
        return None
    interval = criteria.heartbeat_interval_ms
    start = (ctx.capture.ttfb_s or 0.0) * 1000.0
    events = [event.at * 1000.0 for event in reading.events]
    if reading.done is not None:
        events.append(reading.done.at * 1000.0)
    beats = [comment.at * 1000.0 for comment in reading.comments]
    limit = interval * HEARTBEAT_TOLERANCE + HEARTBEAT_SLACK_MS
    quiet = [(a, b) for a, b in _silences(start, events + beats) if b - a > limit]
    if quiet:
        begin, end = max(quiet, key=lambda gap: gap[1] - gap[0])
        return _Finding(
            "heartbeat_missing",
            f"the stream was silent for {end - begin:.0f} ms ({begin:.0f}-{end:.0f} ms) without a "
            f"': keepalive' comment (heartbeat interval {interval:.0f} ms)",
            "the backend sends no heartbeats, or a proxy holds them back",
        )
    pauses = [b - a for a, b in _silences(start, events)]
    if not any(pause > interval for pause in pauses):
        return _Finding(
            "heartbeat_missing",
            f"heartbeats not proven: no pause between events was longer than the heartbeat interval "
            f"({interval:.0f} ms; the longest was {max(pauses, default=0.0):.0f} ms)",
            "make the probe pause longer than the interval",
        )
    return None


_CHECKS: Final[tuple[Callable[[_Context], _Finding | None], ...]] = (
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


def _judge(ctx: _Context) -> list[_Finding]:
    """Every failed criterion, most decisive first."""
    findings: list[_Finding] = []
    for check in _CHECKS:
        finding = check(ctx)
        if finding is not None:
            findings.append(finding)
            if finding.fatal:
                break
    return findings


# --------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------


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


def _summary(verdict: str, ctx: _Context, findings: Sequence[_Finding]) -> str:
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


def _notes(ctx: _Context) -> list[str]:
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
    return notes


def analyse(capture: Capture, criteria: Criteria = DEFAULT_CRITERIA, *, name: str | None = None) -> CheckResult:
    """Measure a captured stream, judge it against ``criteria`` and say why."""
    encoding = capture.headers.get("content-encoding", "").strip().lower() or None
    decoded, decode_error = decode_body(capture.chunks, encoding)
    reading = _read_events(parse_sse(decoded))
    integrity, integrity_detail = check_integrity(reading.contents, reading.done_summary)
    timing = _measure(reading, criteria.burst_window_ms)
    ctx = _Context(
        capture,
        criteria,
        reading,
        timing,
        integrity,
        integrity_detail,
        _who(name, capture.headers),
        encoding,
        decode_error,
    )
    findings = _judge(ctx)
    verdict: Verdict = findings[0].verdict if findings else "incremental"
    observed = findings[0].observed if findings else _summary(verdict, ctx, findings)
    summary = _summary(verdict, ctx, findings)
    ended_cleanly = reading.done is not None if criteria.expect_done else capture.curl_exit == 0
    content_type = capture.headers.get("content-type")
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
    )


def check_stream(request: Request, criteria: Criteria = DEFAULT_CRITERIA, *, name: str | None = None) -> CheckResult:
    """Fetch ``request`` once over a fresh connection and judge the stream."""
    return analyse(fetch(request), criteria, name=name)


# --------------------------------------------------------------------------
# Hops
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Hop:
    """One point on the path to the browser (backend, nginx, a tunnel...)."""

    name: str
    request: Request
    criteria: Criteria = DEFAULT_CRITERIA


@dataclass
class HopsResult:
    verdict: Verdict
    incremental: bool
    first_bad_hop: str | None
    diagnosis: str
    summary: str
    hops: list[CheckResult]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_FAULT: Final[Mapping[str, str]] = {
    "buffered": "buffers",
    "truncated": "truncates the stream",
    "http_error": "answers with an HTTP error",
    "wrong_content_type": "answers with the wrong Content-Type",
    "compressed": "compresses the stream",
    "integrity": "alters the stream",
    "heartbeat_missing": "drops the heartbeats",
    "connect_error": "is unreachable",
    "tls_error": "fails TLS",
    "timeout": "times out",
    "stale_config": "serves a stale config",
    "too_few_events": "sends too few events",
}


def attribute(results: Sequence[CheckResult], path_length: int | None = None) -> tuple[str | None, str]:
    """``(first_bad_hop, diagnosis)`` for per-hop results in path order.

    ``path_length`` is the number of hops of the path when fewer were checked
    (stop_on_failure); it decides whether the first hop is blamed "itself".
    """
    names = [result.name or f"hop {i + 1}" for i, result in enumerate(results)]
    bad = next((i for i, result in enumerate(results) if not result.incremental), None)
    if bad is None:
        return None, f"every hop streams incrementally ({', '.join(names)})"
    result, name = results[bad], names[bad]
    fault = _FAULT.get(result.verdict, f"fails ({result.verdict})")
    if bad == 0 and (path_length or len(results)) > 1:
        if result.verdict == "buffered":
            return name, (
                f"{name} itself buffers: {result.observed}: the application holds its output "
                "(check that it flushes each event); every hop behind it inherits the burst"
            )
        return name, f"{name} itself {fault}: {result.diagnosis}"
    if bad == 0:
        return name, f"{name} {fault}: {result.diagnosis}"
    upstream = ", ".join(names[:bad])
    verb = "streams" if bad == 1 else "stream"
    return name, f"{name} {fault}: {upstream} {verb} incrementally, but {result.diagnosis}"


def check_hops(
    hops: Sequence[Hop],
    *,
    stop_on_failure: bool = False,
    runner: Callable[[Hop], CheckResult] | None = None,
) -> HopsResult:
    """Check each hop in path order and name the first one that breaks streaming."""
    if not hops:
        raise UsageError("hops must name at least one hop")
    run = runner or (lambda hop: check_stream(hop.request, hop.criteria, name=hop.name))
    results: list[CheckResult] = []
    for hop in hops:
        results.append(run(hop))
        if stop_on_failure and not results[-1].incremental:
            break
    first_bad, diagnosis = attribute(results, len(hops))
    bad = next((result for result in results if not result.incremental), None)
    verdict: Verdict = bad.verdict if bad else "incremental"
    summary = "; ".join(f"{result.name}: {result.summary}" for result in results)
    return HopsResult(verdict, bad is None, first_bad, diagnosis, summary, results)


# --------------------------------------------------------------------------
# Options from plain data (the Ansible module, --hops-file)
# --------------------------------------------------------------------------

_KINDS: Final[Mapping[str, str]] = {
    "url": "str",
    "method": "str",
    "data": "body",
    "headers": "headers",
    "insecure": "bool",
    "cacert": "str",
    "resolve": "strings",
    "http_version": "version",
    "max_time": "number",
    "connect_timeout": "number",
    "curl": "str",
    "min_events": "int",
    "expect_done": "bool",
    "min_span_ratio": "number",
    "max_burst_share": "number",
    "burst_window_ms": "number",
    "min_delivery_ratio": "number",
    "max_lateness_ms": "number",
    "expect_heartbeats": "bool",
    "heartbeat_interval_ms": "number",
    "expect_header": "str",
}
REQUEST_FIELDS: Final = tuple(f.name for f in dataclasses.fields(Request))
CRITERIA_FIELDS: Final = tuple(f.name for f in dataclasses.fields(Criteria))
# Every option's default, for the faces (module argument spec, CLI) to share.
OPTION_DEFAULTS: Final[Mapping[str, object]] = {
    f.name: f.default
    for cls in (Request, Criteria)
    for f in dataclasses.fields(cls)
    if f.default is not dataclasses.MISSING
}


def _coerce(key: str, value: object) -> Any:  # Any: checked here, then typed by the dataclass
    kind = _KINDS[key]
    if kind == "bool" and isinstance(value, bool):
        return value
    if kind == "int" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind == "number" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind == "str" and isinstance(value, str):
        return value
    if kind == "version" and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return "2" if str(value) == "2.0" else str(value)
    if kind == "body":
        return value if isinstance(value, str) else json.dumps(value)
    if kind == "strings" and isinstance(value, str):
        return (value,)
    if kind in ("strings", "headers") and isinstance(value, (list, tuple)):
        return tuple(str(item) for item in value)
    if kind == "headers" and isinstance(value, Mapping):
        return tuple(f"{name}: {item}" for name, item in value.items())
    raise UsageError(f"{key} has the wrong type ({type(value).__name__}) for a {kind}")


def options_from_mapping(options: Mapping[str, object]) -> tuple[Request, Criteria]:
    """Request and Criteria from plain data (None means "the default")."""
    unknown = sorted(set(options) - set(_KINDS))
    if unknown:
        raise UsageError(f"unknown option(s): {', '.join(unknown)}")
    if not isinstance(options.get("url"), str):
        raise UsageError("url is required")
    given = {key: _coerce(key, value) for key, value in options.items() if value is not None}
    request = Request(**{key: value for key, value in given.items() if key in REQUEST_FIELDS})
    criteria = Criteria(**{key: value for key, value in given.items() if key in CRITERIA_FIELDS})
    return request, criteria


def hop_from_mapping(hop: Mapping[str, object], defaults: Mapping[str, object] | None = None) -> Hop:
    """A Hop from ``{"name", "url", <any option>}``; unset options come from ``defaults``."""
    name = hop.get("name")
    if not isinstance(name, str) or not name:
        raise UsageError(f"every hop needs a name, got {dict(hop)!r}")
    if not isinstance(hop.get("url"), str):
        raise UsageError(f"hop {name} needs a url")
    own = {key: value for key, value in hop.items() if key != "name" and value is not None}
    request, criteria = options_from_mapping({**(defaults or {}), **own})
    return Hop(name, request, criteria)


# --------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def render_table(result: CheckResult) -> str:
    """A short human-readable table of one check."""
    protocol = f"HTTP/{result.http_version}" if result.http_version else "-"
    encoding = result.content_encoding or "none"
    span = _ms(result.span_ms)
    if result.emission_span_ms is not None:
        span += f" (emitted over {_ms(result.emission_span_ms)}, ratio {result.span_ratio or 0:.2f})"
    late = (
        "-"
        if result.lateness_max_ms is None
        else f"p50 {_ms(result.lateness_p50_ms)}, max {_ms(result.lateness_max_ms)}"
    )
    rows = [
        ("verdict", result.verdict.upper() if not result.incremental else result.verdict),
        ("url", result.url),
        ("response", f"{result.status or '-'} {protocol}  {result.content_type or '-'}  encoding {encoding}"),
        ("remote", result.remote or "-"),
        ("first byte", _ms(result.ttfb_ms)),
        ("first event", _ms(result.first_event_ms)),
        ("span", span),
        ("events", f"{result.events}, done {'yes' if result.done else 'no'}, heartbeats {result.heartbeats}"),
        ("bursts", f"largest {result.largest_burst} ({_pct(result.burst_share)}), {result.deliveries} deliveries"),
        ("lateness", late),
        ("integrity", f"{result.integrity} ({result.integrity_detail})" if result.done else result.integrity),
    ]
    rows += [(name, value) for name, value in result.headers.items() if name.lower().startswith("x-")]
    rows.append(("summary" if result.incremental else "diagnosis", result.diagnosis))
    rows += [("note", note) for note in result.notes]
    title = f"stream check{f' [{result.name}]' if result.name else ''}"
    return "\n".join([title, *(f"  {label:<12} {value}" for label, value in rows)])


def render_hops_table(result: HopsResult) -> str:
    """One row per hop, then the attribution."""
    header = ("hop", "verdict", "status", "events", "first", "span", "burst", "late")
    rows = [header]
    rows += [
        (
            hop.name or "-",
            hop.verdict,
            f"{hop.status or '-'}" + (f" h{hop.http_version}" if hop.http_version else ""),
            str(hop.events),
            _ms(hop.first_event_ms),
            _ms(hop.span_ms),
            f"{hop.largest_burst} ({_pct(hop.burst_share)})",
            _ms(hop.lateness_max_ms),
        )
        for hop in result.hops
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    verdict = "incremental" if result.incremental else f"{result.verdict} at {result.first_bad_hop}"
    return "\n".join([*lines, f"=> {verdict}: {result.diagnosis}"])


def render(result: CheckResult | HopsResult) -> str:
    return render_hops_table(result) if isinstance(result, HopsResult) else render_table(result)
