"""Ground truth, measured without the stream check: when did each event's bytes arrive, and how late.

A raw-socket HTTP/1.1 client (no curl, no code of the core): it sends a GET, reads the socket,
stamps every ``recv`` with the wall clock, undoes chunked framing and gzip/br itself, and finds each
event by its ``id: <n>-<ns>`` line, where every test server writes the wall-clock time (ns) at which
it wrote that event. Server and recorder share this machine's clock, so ``arrival - written`` is the
event's real delay. :func:`classify` turns the delays into the ground truth:

- ``streams``: at least 90% of the events arrived within ``fast_ms`` of being written;
- ``buffers``: at least half of them arrived ``held_ms`` or more after being written;
- ``unclear`` otherwise (the test then measures again).
"""

from __future__ import annotations

import re
import socket
import time
import zlib
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

_ID = re.compile(rb"^id: ?(\d+)-(\d+)\r?$", re.MULTILINE)


@dataclass
class Recording:
    sent_ns: int = 0
    first_byte_ns: int | None = None
    written_ns: dict[int, int] = field(default_factory=dict)
    arrived_ns: dict[int, int] = field(default_factory=dict)
    encoding: str = ""

    def delays_ms(self) -> list[float]:
        return [(self.arrived_ns[n] - self.written_ns[n]) / 1e6 for n in sorted(self.arrived_ns)]

    def first_byte_after_ms(self) -> float | None:
        return None if self.first_byte_ns is None else (self.first_byte_ns - self.sent_ns) / 1e6


class _Dechunker:
    """HTTP/1.1 chunked transfer coding, undone incrementally."""

    def __init__(self, chunked: bool) -> None:
        self.chunked = chunked
        self.buffer = b""
        self.state = "size"  # size -> data -> crlf -> size ... -> done
        self.left = 0

    def feed(self, data: bytes) -> bytes:
        if not self.chunked:
            return data
        self.buffer += data
        out = bytearray()
        while self.state != "done":
            if self.state == "size":
                end = self.buffer.find(b"\r\n")
                if end < 0:
                    break
                self.left = int(self.buffer[:end].split(b";")[0] or b"0", 16)
                self.buffer = self.buffer[end + 2 :]
                self.state = "data" if self.left else "done"
            elif self.state == "data":
                take = self.buffer[: self.left]
                out += take
                self.buffer, self.left = self.buffer[len(take) :], self.left - len(take)
                if self.left:
                    break
                self.state = "crlf"
            else:
                if len(self.buffer) < 2:
                    break
                self.buffer, self.state = self.buffer[2:], "size"
        return bytes(out)


def _decoder(encoding: str) -> Any:
    if encoding in ("gzip", "deflate"):
        return zlib.decompressobj(47)
    if encoding == "br":
        import brotli  # noqa: PLC0415  (only the br case needs it)

        return brotli.Decompressor()
    return None


def record(url: str, accept_encoding: str = "gzip, deflate", timeout_s: float = 15.0) -> Recording:
    """GET ``url`` over HTTP/1.1 on a fresh socket and time every event by its id."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    request = (
        f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n"
        f"Accept-Encoding: {accept_encoding}\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n"
    ).encode()
    recording = Recording()
    deadline = time.monotonic() + timeout_s
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        recording.sent_ns = time.time_ns()
        sock.sendall(request)
        _read(sock, recording, deadline)
    return recording


def _read(sock: socket.socket, recording: Recording, deadline: float) -> None:
    head = b""
    body = b""
    dechunk: _Dechunker | None = None
    decoder: Any = None
    while time.monotonic() < deadline:
        data = sock.recv(65536)
        now = time.time_ns()
        if not data:
            return
        if recording.first_byte_ns is None:
            recording.first_byte_ns = now
        if dechunk is None:
            head += data
            if b"\r\n\r\n" not in head:
                continue
            head, _, data = head.partition(b"\r\n\r\n")
            fields = [line.split(b":", 1) for line in head.split(b"\r\n")[1:] if b":" in line]
            headers = {name.strip().lower(): value.strip().lower() for name, value in fields}
            dechunk = _Dechunker(headers.get(b"transfer-encoding", b"") == b"chunked")
            recording.encoding = headers.get(b"content-encoding", b"").decode()
            decoder = _decoder(recording.encoding)
        payload = dechunk.feed(data)
        if decoder is not None:
            payload = decoder.decompress(payload) if hasattr(decoder, "decompress") else decoder.process(payload)
        body += payload
        for match in _ID.finditer(body):
            n = int(match.group(1))
            recording.written_ns.setdefault(n, int(match.group(2)))
            recording.arrived_ns.setdefault(n, now)
        body = body[body.rfind(b"\n") + 1 :]
        if dechunk.state == "done":
            return


def classify(recording: Recording, fast_ms: float = 30.0, held_ms: float = 60.0) -> str:
    delays = recording.delays_ms()
    if len(delays) < 5:
        return "unclear"
    if sum(delay <= fast_ms for delay in delays) >= 0.9 * len(delays):
        return "streams"
    if sum(delay >= held_ms for delay in delays) >= 0.5 * len(delays):
        return "buffers"
    return "unclear"
