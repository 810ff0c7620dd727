"""A stdlib SSE server for the stream check tests: each path is one way a stream can go.

Events look like the backend's (files/backend/app/sse.py): ``: open`` and
``retry:`` first, then ``id:``/``data:`` events whose JSON has type, content
and ts (ms since the epoch, taken right before the write), then a done event
with the {tokens, sha256, bytes} summary of the token contents.

Paths (query parameters in brackets, defaults in parentheses):
  /stream    incremental, one write per event  [n (10), interval_ms (30), rev, eol (lf|crlf|cr),
             split (0: 1 writes each event in two halves cut inside a character), pause_after,
             pause_ms, heartbeat_ms, done (1), drop (token index left out of the stream)]
  /burst     the same events, held and written in one go at the end (what buffering looks like)
  /bunches   held and released in [groups (3)] bunches
  /truncate  [mode: cut (connection dropped mid-body) | clean (ends without a done event)]
  /gzip      gzip-compressed (sync flush per event) when the client accepts gzip
  /badsha    a done event whose sha256 does not match
  /502       nginx's 502 page;  /html  an index.html;  /redirect  a 301;  /echo  the request back
  /stall     200 headers, then nothing;  /hang  no response at all
  /resumable a resumable reply, as the backend's contract has it (Content-Location: replies/<32 hex>, ids
             from 1, done with the summary)  [n (10), interval_ms (30), resume (good)]; a GET of
             replies/<id> with Last-Event-ID: k continues after event k, paced the same, or breaks the
             contract the way ``resume`` names (RESUME_MODES). Content-Location is relative to the request's
             path, so the same routes under /api/ (what nginx's stream location proxies) work alike.
"""

from __future__ import annotations

import hashlib
import json
import socket
import ssl
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

TLS_NAME = "pi5.test"
OPEN = b": open\n\nretry: 3000\n\n"
KEEPALIVE = b": keepalive\n\n"
EOLS = {"lf": "\n", "crlf": "\r\n", "cr": "\r"}
# How /replies/<id> answers: the contract, or one way of breaking it.
RESUME_MODES = {
    "good": "continues after Last-Event-ID",
    "none": "the stream carries no Content-Location",
    "replay": "ignores Last-Event-ID: the whole reply again from id 1",
    "again": "resumes AT Last-Event-ID instead of after it (one event twice)",
    "skip": "resumes two events too late (ids missing)",
    "alter": "right ids, other text (a reply generated again instead of replayed)",
    "expired": "answers the contract's expired event",
    "foreign": "Content-Location on another origin",
    "noid": "events without id: lines",
    "textid": "ids that are no numbers (x1, x2...)",
    "lost": "Content-Location names a path nothing serves (404)",
}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def token(i: int) -> str:
    """Token text with multi-byte characters, so splits and byte counts matter."""
    return f"tök{i} 🌍 "


def event(event_id: int, kind: str, content: object, eol: str = "\n", ts: int | None = None) -> bytes:
    payload = {"type": kind, "threadId": "t-1", "content": content, "ts": now_ms() if ts is None else ts}
    data = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return f"id: {event_id}{eol}data: {data}{eol}{eol}".encode()


def done_event(event_id: int, contents: list[str], eol: str = "\n", sha256: str | None = None) -> bytes:
    text = "".join(contents).encode()
    summary = {"tokens": len(contents), "sha256": sha256 or hashlib.sha256(text).hexdigest(), "bytes": len(text)}
    return event(event_id, "done", summary, eol)


def split_inside_character(data: bytes) -> tuple[bytes, bytes]:
    cut = next(i for i in range(len(data) // 2, len(data)) if data[i] & 0xC0 == 0x80)
    return data[:cut], data[cut:]


@dataclass
class Seen:
    """One request as the server saw it."""

    path: str
    method: str
    headers: dict[str, str]
    body: bytes
    client_port: int


@dataclass
class Params:
    query: dict[str, str]

    def int(self, name: str, default: int) -> int:
        return int(self.query.get(name, default))

    def str(self, name: str, default: str) -> str:
        return self.query.get(name, default)


@dataclass
class Reply:
    """One resumable reply, kept by the server so that /replies/<id> can continue it."""

    mode: str
    contents: list[str]
    interval_s: float
    first_completed: bool = False  # the first response got as far as its done event
    first_cut: bool = False  # the client went away while the first response was still being written


def reply_events(reply: Reply, after: int, *, alter: bool = False) -> Iterator[tuple[int, bytes]]:
    """(id, event) for every event of the reply with an id above ``after``: tokens 1..n, then done n+1."""
    for i, content in enumerate(reply.contents):
        if i + 1 > after:
            yield i + 1, event(i + 1, "token", content.replace("🌍", "🌎") if alter else content)
    done_id = len(reply.contents) + 1
    if done_id > after:
        yield done_id, done_event(done_id, reply.contents)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # each event leaves in its own segment, now
    server: SseServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def version_string(self) -> str:
        """The Server header; nginx's error pages say nginx."""
        return "nginx/1.22.1" if self.path.startswith("/502") or self.nginx_page else "sse-test-server"

    nginx_page = False

    # -- framing ----------------------------------------------------------
    def start_sse(self, extra: dict[str, str] | None = None, *, chunked: bool = True) -> None:
        self.chunked = chunked
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.flush()

    def send(self, data: bytes) -> None:
        if not data:
            return
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data) if self.chunked else data)
        self.wfile.flush()

    def finish_body(self) -> None:
        if self.chunked:
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        self.close_connection = True

    def plain(self, status: int, content_type: str, body: bytes, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    # -- dispatch ---------------------------------------------------------
    def do_GET(self) -> None:
        self.handle_any(b"")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.handle_any(self.rfile.read(length))

    do_PUT = do_POST  # noqa: N815  (http.server's handler naming)

    def handle_any(self, body: bytes) -> None:
        parts = urlsplit(self.path)
        params = Params({key: values[-1] for key, values in parse_qs(parts.query).items()})
        self.server.seen.append(
            Seen(
                parts.path, self.command, {k.lower(): v for k, v in self.headers.items()}, body, self.client_address[1]
            )
        )
        route: Callable[[Params], None] | None = getattr(self, "route_" + parts.path.strip("/").split("/")[0], None)
        if route is None:
            self.nginx_page = True
            self.plain(404, "text/html", b"<html><body>404 Not Found</body></html>")
            return
        try:
            route(params)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    # -- streams ----------------------------------------------------------
    def events(self, params: Params, contents: list[str]) -> Iterator[bytes]:
        """Yield each token event at its pace (pauses and heartbeats included); record each token in contents."""
        n, interval = params.int("n", 10), params.int("interval_ms", 30) / 1000
        pause_after, pause_ms = params.int("pause_after", -1), params.int("pause_ms", 0)
        heartbeat_ms, drop = params.int("heartbeat_ms", 0), params.int("drop", -1)
        eol = EOLS[params.str("eol", "lf")]
        for i in range(n):
            contents.append(token(i))
            if i != drop:
                yield event(i + 1, "token", token(i), eol)
            if i == pause_after:
                self.pause(pause_ms / 1000, heartbeat_ms / 1000)
            time.sleep(interval)

    def pause(self, seconds: float, heartbeat_s: float) -> None:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            time.sleep(min(left, heartbeat_s) if heartbeat_s else left)
            if heartbeat_s and time.monotonic() < end - 0.001:
                self.send(KEEPALIVE)

    def revision(self, params: Params) -> dict[str, str]:
        return {"X-Config-Revision": params.query["rev"]} if "rev" in params.query else {}

    def route_stream(self, params: Params) -> None:
        eol = EOLS[params.str("eol", "lf")]
        self.start_sse(self.revision(params), chunked=params.str("framing", "chunked") == "chunked")
        self.send(OPEN.replace(b"\n", eol.encode()))
        contents: list[str] = []
        for data in self.events(params, contents):
            if params.int("split", 0):
                first, second = split_inside_character(data)
                self.send(first)
                time.sleep(0.005)
                self.send(second)
            else:
                self.send(data)
        if params.int("done", 1):
            self.send(done_event(params.int("n", 10) + 1, contents, eol))
        self.finish_body()

    def route_burst(self, params: Params) -> None:
        self.start_sse(self.revision(params))
        contents: list[str] = []
        held = [OPEN, *self.events(params, contents)]
        held.append(done_event(params.int("n", 10) + 1, contents))
        self.send(b"".join(held))
        self.finish_body()

    def route_bunches(self, params: Params) -> None:
        self.start_sse()
        n, groups = params.int("n", 12), params.int("groups", 3)
        size = -(-n // groups)
        self.send(OPEN)
        held: list[bytes] = []
        contents: list[str] = []
        for data in self.events(params, contents):
            held.append(data)
            if len(held) == size:
                self.send(b"".join(held))
                held = []
        self.send(b"".join(held) + done_event(n + 1, contents))
        self.finish_body()

    def route_truncate(self, params: Params) -> None:
        self.start_sse()
        self.send(OPEN)
        for data in self.events(params, []):
            self.send(data)
        if params.str("mode", "cut") == "cut":
            self.connection.shutdown(socket.SHUT_RDWR)  # no terminating chunk: curl sees a cut body
            self.close_connection = True
        else:
            self.finish_body()

    def route_gzip(self, params: Params) -> None:
        if "gzip" not in self.headers.get("Accept-Encoding", ""):
            self.route_stream(params)
            return
        self.start_sse({"Content-Encoding": "gzip", "Vary": "Accept-Encoding"})
        compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
        self.send(compressor.compress(OPEN) + compressor.flush(zlib.Z_SYNC_FLUSH))
        contents: list[str] = []
        for data in self.events(params, contents):
            self.send(compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH))
        self.send(compressor.compress(done_event(params.int("n", 10) + 1, contents)) + compressor.flush())
        self.finish_body()

    def route_badsha(self, params: Params) -> None:
        self.start_sse()
        self.send(OPEN)
        contents: list[str] = []
        for data in self.events(params, contents):
            self.send(data)
        self.send(done_event(params.int("n", 10) + 1, contents, sha256="0" * 64))
        self.finish_body()

    def route_echo(self, params: Params) -> None:
        self.start_sse()
        seen = self.server.seen[-1]
        echo = {"method": seen.method, "headers": seen.headers, "body": seen.body.decode()}
        self.send(OPEN + f"data: {json.dumps(echo)}\n\n".encode())
        self.finish_body()

    def route_resumable(self, params: Params) -> None:
        mode = params.str("resume", "good")
        reply = Reply(mode, [token(i) for i in range(params.int("n", 10))], params.int("interval_ms", 30) / 1000)
        reply_id = uuid.uuid4().hex
        self.server.replies[reply_id] = reply
        location = {
            "none": None,
            "foreign": f"http://elsewhere.test:{self.server.port}/replies/{reply_id}",
            "lost": f"missing/{reply_id}",
        }.get(mode, f"replies/{reply_id}")
        self.start_sse({"Content-Location": location} if location else {})
        try:
            self.send(OPEN)
            for _, data in reply_events(reply, 0):
                self.send(self.strip_id(reply, data))
                time.sleep(reply.interval_s)
            reply.first_completed = True
            self.finish_body()
        except (BrokenPipeError, ConnectionResetError):
            reply.first_cut = True
            raise

    def route_replies(self, params: Params) -> None:
        reply_id = self.path.split("?")[0].rstrip("/").rsplit("/", 1)[-1]
        reply = self.server.replies.get(reply_id)
        self.start_sse({"Content-Location": reply_id})
        self.send(OPEN)
        if reply is None or reply.mode == "expired":
            expired = {"type": "expired", "threadId": "t-1", "content": "this reply has expired; reload the thread"}
            self.send(f"data: {json.dumps(expired)}\n\n".encode())
            self.finish_body()
            return
        last = int(self.headers.get("Last-Event-ID") or 0)
        after = {"replay": 0, "again": last - 1, "skip": last + 2}.get(reply.mode, last)
        for _, data in reply_events(reply, after, alter=reply.mode == "alter"):
            self.send(self.strip_id(reply, data))
            time.sleep(reply.interval_s)
        self.finish_body()

    def route_api(self, params: Params) -> None:
        """The routes again under /api/, as nginx's stream location passes them on."""
        segments = self.path.split("?")[0].split("/")
        name = segments[2] if len(segments) > 2 else ""
        route: Callable[[Params], None] | None = getattr(self, "route_" + name, None) if name != "api" else None
        if route is None:
            self.nginx_page = True
            self.plain(404, "text/html", b"<html><body>404 Not Found</body></html>")
            return
        route(params)

    @staticmethod
    def strip_id(reply: Reply, data: bytes) -> bytes:
        """The event as the mode has it: without its id: line, or with an id that is no number."""
        if reply.mode == "noid":
            return data.split(b"\n", 1)[1]
        return data.replace(b"id: ", b"id: x", 1) if reply.mode == "textid" else data

    def route_502(self, params: Params) -> None:
        body = b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1>"
        self.plain(502, "text/html", body + b"</center>\r\n<hr><center>nginx/1.22.1</center>\r\n</body>\r\n</html>\r\n")

    def route_html(self, params: Params) -> None:
        self.plain(200, "text/html", b"<!doctype html><html><body><div id=app></div></body></html>")

    def route_redirect(self, params: Params) -> None:
        self.plain(301, "text/html", b"moved", {"Location": "https://pi5.test/stream"})

    def route_stall(self, params: Params) -> None:
        self.start_sse()
        time.sleep(params.int("seconds", 3))
        self.close_connection = True

    def route_hang(self, params: Params) -> None:
        time.sleep(params.int("seconds", 3))
        self.close_connection = True


class SseServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, tls: ssl.SSLContext | None = None, port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), Handler)
        self.tls = tls
        self.seen: list[Seen] = []
        self.replies: dict[str, Reply] = {}
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{host}:{self.port}{path}"

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.tls is not None:
            try:  # handshake in the handler thread, so a failing client cannot block the server
                request = self.tls.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError):
                return
        super().finish_request(request, client_address)

    def __enter__(self) -> SseServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()


@dataclass(frozen=True)
class TlsServer:
    """An SseServer behind TLS whose certificate (cacert) is valid for TLS_NAME only."""

    server: SseServer
    cacert: str

    def url(self, path: str, host: str = TLS_NAME) -> str:
        return self.server.url(path, host)

    def resolve(self, host: str = TLS_NAME) -> str:
        """A curl --resolve entry sending ``host`` to this server."""
        return f"{host}:{self.server.port}:127.0.0.1"
