"""One SSE stream over asyncio: HTTP/1.1 (TLS optional), chunked decoding, per-event timing.

Runs on the Pi's system python3 (standard library only). Event parsing, relative
lateness and the integrity check are the stream check core's (``stream_check``):
its ``SseParser`` is incremental (``feed(bytes, at)``), so thousands of streams
share it as is. What the core does not have, because it reads curl's output, is
HTTP: the request, the status line and the chunked framing; those are here.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any
from urllib.parse import urljoin, urlsplit

from ansible_collections.pi5.streaming.plugins.module_utils import stream_check as core


class ChunkedDecoder:
    """Incremental decoder of HTTP/1.1 chunked transfer coding; ``finished`` after the last chunk."""

    def __init__(self) -> None:
        self._buffer = b""
        self._remaining = 0  # bytes of the current chunk still to come
        self._need_crlf = False
        self.finished = False

    def feed(self, data: bytes) -> bytes:
        self._buffer += data
        out = bytearray()
        while not self.finished:
            if self._remaining:
                take = self._buffer[: self._remaining]
                out += take
                self._buffer = self._buffer[len(take) :]
                self._remaining -= len(take)
                if self._remaining:
                    break
                self._need_crlf = True
            if self._need_crlf:
                if len(self._buffer) < 2:
                    break
                self._buffer = self._buffer[2:]
                self._need_crlf = False
            line_end = self._buffer.find(b"\r\n")
            if line_end < 0:
                break
            size = int(self._buffer[:line_end].split(b";", 1)[0].strip() or b"0", 16)
            self._buffer = self._buffer[line_end + 2 :]
            if size == 0:
                self.finished = True
            self._remaining = size
        return bytes(out)


@dataclass
class StreamResult:
    """What one stream delivered; lateness lists hold only events inside the measurement window."""

    outcome: str = "pending"  # done | error_done | eof | timeout | http_<status> | connect_error | held
    status: int | None = None
    tokens: int = 0
    done_tokens: int | None = None
    integrity: str = "not_checked"
    error_events: int = 0
    heartbeats: int = 0
    opened_at: float = 0.0
    ended_at: float = 0.0
    detail: str = ""
    lateness_ms: list[float] = field(default_factory=list)  # arrival - ts (one clock)
    relative_ms: list[float] = field(default_factory=list)  # the core's relative_lateness
    gap_ms: list[float] = field(default_factory=list)  # ts_i - ts_(i-1) - interval: the backend's own lag per event
    resumes: int = 0  # reconnections to the reply's Content-Location (resume mode)
    resume_statuses: list[str] = field(default_factory=list)  # what each reconnection got: "200", "502", "connect_error"
    ids_twice: int = 0  # events whose id: had come before (their text is not joined twice)
    ids_missing: int = 0  # ids from 1 to the done event's (or the last seen) that never came

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Target:
    url: str
    cafile: str | None = None
    server_name: str | None = None  # TLS name when it differs from the URL's host
    headers: tuple[tuple[str, str], ...] = ()

    def endpoint(self) -> tuple[str, int, bool, str]:
        parts = urlsplit(self.url)
        tls = parts.scheme == "https"
        port = parts.port or (443 if tls else 80)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        return parts.hostname or "localhost", port, tls, path


# A reconnection is retried while it meets these: the API restarting behind nginx (502), or refusing (503).
RESUMABLE = ("eof", "connect_error", "http_502", "http_503")


class _Parser(core.SseParser):
    """The core's parser, plus the ``retry:`` field (the reconnection delay the server asks for)."""

    def __init__(self) -> None:
        super().__init__()
        self.retry_ms: int | None = None

    def _line(self, line: str, at: float) -> None:
        name, sep, value = line.partition(":")
        if name == "retry" and sep:
            value = value.removeprefix(" ")
            if value.isdigit():  # the WHATWG rule: only ASCII digits set the delay
                self.retry_ms = int(value)
            return
        super()._line(line, at)


@dataclass
class _Reply:
    """One reply over all its connections: the text joined once per id, the ids as they came."""

    contents: list[str] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)  # the ids, for a constant-time check per event
    done_id: str | None = None
    location: str | None = None
    retry_ms: int | None = None
    heartbeats: int = 0


def account_ids(ids: Sequence[str], done_id: str | None) -> tuple[int, int]:
    """(ids twice, ids missing) of a reply's numbered events: 1..the done event's id must each come once (pure).

    Without a ``done`` the last id seen bounds the count; ids that are not numbers (another server's) are
    not counted.
    """
    numbers = [int(i) for i in ids if i.isdigit()]
    twice = len(numbers) - len(set(numbers))
    top = int(done_id) if done_id is not None and done_id.isdigit() else max(numbers, default=0)
    return twice, len(set(range(1, top + 1)) - set(numbers))


def resume_target(target: Target, location: str, last_id: str | None) -> Target | None:
    """The request that resumes a reply: its Content-Location on the same scheme and host, after ``last_id``.

    None when the Content-Location points elsewhere: a reply is resumed where it was started, never on a
    host the response named.
    """
    url = urljoin(target.url, location)
    if urlsplit(url)[:2] != urlsplit(target.url)[:2]:
        return None
    headers = tuple(h for h in target.headers if h[0].lower() != "last-event-id")
    if last_id is not None:
        headers += (("Last-Event-ID", last_id),)
    return replace(target, url=url, headers=headers)


def tls_context(cafile: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=cafile)
    if cafile is None:  # no certificate given: measure anyway, as curl -k
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["http/1.1"])
    return context


def request_bytes(host: str, path: str, headers: tuple[tuple[str, str], ...]) -> bytes:
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}", "Accept: text/event-stream", "Cache-Control: no-cache"]
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class _Timing:
    """Per-event lateness as the events arrive, kept only inside the window."""

    def __init__(self, result: StreamResult, interval_ms: float, window: tuple[float, float]) -> None:
        self.result = result
        self.interval_ms = interval_ms
        self.window = window
        self.arrivals: list[float] = []
        self.emitted: list[float] = []
        self.in_window: list[bool] = []

    def add(self, arrival_ms: float, ts_ms: float) -> None:
        self.arrivals.append(arrival_ms)
        self.emitted.append(ts_ms)
        self.in_window.append(self.window[0] <= arrival_ms / 1000.0 <= self.window[1])

    def finish(self) -> None:
        if not self.arrivals:
            return
        relative = core.relative_lateness(self.arrivals, list(self.emitted))
        for index, keep in enumerate(self.in_window):
            if not keep:
                continue
            self.result.lateness_ms.append(round(self.arrivals[index] - self.emitted[index], 2))
            if relative:
                self.result.relative_ms.append(round(relative[index], 2))
            if index:
                self.result.gap_ms.append(round(self.emitted[index] - self.emitted[index - 1] - self.interval_ms, 2))


async def _connect(
    target: Target, timeout_s: float, rcvbuf: int | None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, str]:
    host, port, tls, path = target.endpoint()
    context = tls_context(target.cafile) if tls else None
    sock = None
    if rcvbuf:  # a small receive buffer makes a client that stops reading push back sooner
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (host, port)), timeout_s)
    kwargs: dict[str, Any] = {"limit": 1 << 20}
    if context is not None:
        kwargs.update(ssl=context, server_hostname=target.server_name or host)
    opened = asyncio.open_connection(sock=sock, **kwargs) if sock is not None else asyncio.open_connection(host, port, **kwargs)
    reader, writer = await asyncio.wait_for(opened, timeout_s)
    return reader, writer, path


def _take(event: core.SseEvent, now_ms: float, result: StreamResult, timing: _Timing, reply: _Reply) -> None:
    """Count one event: a token (timed against its ``ts``), an error, or the closing ``done``.

    An event whose id came before is counted in the ids, not again in the text.
    """
    if event.own_id and event.id is not None:
        reply.ids.append(event.id)
        if event.id in reply.seen:
            return
        reply.seen.add(event.id)
    data = event.data
    payload = json.loads(data) if data.startswith("{") else {}
    kind = payload.get("type")
    if kind == "token":
        result.tokens += 1
        reply.contents.append(str(payload.get("content", "")))
        ts = payload.get("ts")
        if isinstance(ts, (int, float)):
            timing.add(now_ms, float(ts))
    elif kind == "error":
        result.error_events += 1
    elif kind == "done":
        reply.done_id = event.id if event.own_id else None
        summary = payload.get("content")
        if isinstance(summary, dict):
            result.done_tokens = summary.get("tokens")
            result.integrity = core.check_integrity(reply.contents, summary)[0]
        result.outcome = "error_done" if result.error_events else "done"


async def _read_events(
    reader: asyncio.StreamReader,
    decoder: ChunkedDecoder | None,
    *,
    deadline: float,
    parser: core.SseParser,
    result: StreamResult,
    timing: _Timing,
    reply: _Reply,
) -> None:
    """Read the body until ``done``, EOF or ``deadline`` (epoch s), counting each event as it arrives."""
    seen = 0
    while True:
        remaining = deadline - time.time()
        if remaining <= 0:
            result.outcome = "timeout"
            return
        data = await asyncio.wait_for(reader.read(65536), remaining)
        now_ms = time.time() * 1000.0
        if not data:
            result.outcome = "eof"
            return
        parser.feed(decoder.feed(data) if decoder is not None else data, now_ms)
        for event in parser.events[seen:]:
            seen += 1
            _take(event, now_ms, result, timing, reply)
        if result.outcome in ("done", "error_done"):
            return
        if decoder is not None and decoder.finished:
            result.outcome = "eof"
            return


def _header(head: bytes, name: bytes) -> str | None:
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip().decode(errors="replace")
    return None


async def _exchange(
    target: Target,
    *,
    result: StreamResult,
    reply: _Reply,
    timing: _Timing,
    deadline: float,
    hold_without_reading_s: float = 0.0,
    rcvbuf: int | None = None,
) -> None:
    """One request and its response, read until ``done``, EOF or ``deadline``; ``result.outcome`` says which."""
    parser = _Parser()
    writer: asyncio.StreamWriter | None = None
    result.status = None
    try:
        reader, writer, path = await _connect(target, max(deadline - time.time(), 0.1), rcvbuf)
        host = target.server_name or target.endpoint()[0]
        writer.write(request_bytes(host, path, target.headers))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), max(deadline - time.time(), 0.1))
        status_line, _, header_block = head.partition(b"\r\n")
        result.status = int(status_line.split(b" ", 2)[1])
        reply.location = reply.location or _header(head, b"content-location")
        if result.status != 200:
            result.outcome = f"http_{result.status}"
            return
        if hold_without_reading_s:
            await asyncio.sleep(hold_without_reading_s)
            result.outcome = "held"
            return
        chunked = b"transfer-encoding: chunked" in header_block.lower()
        await _read_events(
            reader,
            ChunkedDecoder() if chunked else None,
            deadline=deadline,
            parser=parser,
            result=result,
            timing=timing,
            reply=reply,
        )
    except TimeoutError:
        result.outcome = "timeout"
    except (OSError, ssl.SSLError, asyncio.IncompleteReadError, ValueError) as exc:
        result.outcome = "eof" if result.status == 200 else "connect_error"
        result.detail = f"{type(exc).__name__}: {exc}"[:200]
    finally:
        reply.heartbeats += sum(1 for comment in parser.comments if comment.text == "keepalive")
        reply.retry_ms = parser.retry_ms if parser.retry_ms is not None else reply.retry_ms
        if writer is not None:
            writer.close()


async def run_stream(
    target: Target,
    *,
    interval_ms: float,
    window: tuple[float, float] = (0.0, float("inf")),
    deadline: float,
    hold_without_reading_s: float = 0.0,
    rcvbuf: int | None = None,
    resume_attempts: int = 0,
    resume_delay_ms: int = 3000,
) -> StreamResult:
    """Open one stream, time every token event until ``done``, EOF or ``deadline`` (epoch s).

    With ``resume_attempts``, a stream cut before ``done`` is resumed as EventSource does: after the
    server's ``retry:`` delay (``resume_delay_ms`` when it sent none), a GET of the reply's
    ``Content-Location`` with ``Last-Event-ID``, tried again while it meets a restart (:data:`RESUMABLE`),
    at most ``resume_attempts`` times.
    """
    result = StreamResult(opened_at=time.time())
    timing = _Timing(result, interval_ms, window)
    reply = _Reply()
    await _exchange(
        target,
        result=result,
        reply=reply,
        timing=timing,
        deadline=deadline,
        hold_without_reading_s=hold_without_reading_s,
        rcvbuf=rcvbuf,
    )
    while result.outcome in RESUMABLE and result.resumes < resume_attempts and reply.location is not None:
        again = resume_target(target, reply.location, reply.ids[-1] if reply.ids else None)
        delay_s = (reply.retry_ms if reply.retry_ms is not None else resume_delay_ms) / 1000.0
        if again is None or time.time() + delay_s >= deadline:
            break
        await asyncio.sleep(delay_s)
        result.resumes += 1
        await _exchange(again, result=result, reply=reply, timing=timing, deadline=deadline)
        result.resume_statuses.append(str(result.status) if result.status is not None else result.outcome)
    result.ended_at = time.time()
    result.heartbeats = reply.heartbeats
    result.ids_twice, result.ids_missing = account_ids(reply.ids, reply.done_id)
    timing.finish()
    return result
