"""A raw HTTP/1.1 + SSE client for the backend tests.

Reads the socket directly so that what the tests see is what was on the wire:
the arrival time of every read, every HTTP chunk (one per ASGI send), and
every SSE block (event or comment), undisturbed by client-side buffering.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

READ_SIZE = 65536


class ChunkedDecoder:
    """Incremental decoder of ``Transfer-Encoding: chunked`` bodies."""

    def __init__(self) -> None:
        self._buffer = b""
        self._remaining: int | None = None  # bytes left in the current chunk's data
        self._current = b""
        self.payload = bytearray()  # all body bytes decoded so far
        self.chunks: list[bytes] = []  # completed chunks, in order
        self.finished = False

    def feed(self, data: bytes) -> list[bytes]:
        """Decode ``data``; return the chunks it completed."""
        self._buffer += data
        completed: list[bytes] = []
        while not self.finished and self._step(completed):
            pass
        return completed

    def _step(self, completed: list[bytes]) -> bool:
        if self._remaining is None:  # expecting a size line
            line, sep, rest = self._buffer.partition(b"\r\n")
            if not sep:
                return False
            self._buffer = rest
            self._remaining = int(line.split(b";")[0], 16)
            if self._remaining == 0:
                self.finished = True
            return True
        if self._remaining > 0:
            take = self._buffer[: self._remaining]
            if not take:
                return False
            self._buffer = self._buffer[len(take) :]
            self._remaining -= len(take)
            self._current += take
            self.payload += take
            return True
        if len(self._buffer) < 2:
            return False
        assert self._buffer[:2] == b"\r\n", "chunk not followed by CRLF"
        self._buffer = self._buffer[2:]
        completed.append(self._current)
        self.chunks.append(self._current)
        self._current = b""
        self._remaining = None
        return True


@dataclass(frozen=True)
class Block:
    """One SSE block (the bytes between blank lines) and when it completed."""

    raw: bytes
    at: float

    @property
    def lines(self) -> list[str]:
        return self.raw.decode("utf-8").split("\n")

    @property
    def is_comment(self) -> bool:
        return all(line.startswith(":") for line in self.lines)

    @property
    def comment(self) -> str:
        return "\n".join(line[1:].strip() for line in self.lines)

    @property
    def fields(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for line in self.lines:
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            assert name not in out, f"field {name} repeated in {self.raw!r}"
            out[name] = value.removeprefix(" ")
        return out

    @property
    def is_event(self) -> bool:
        return "data" in self.fields

    @property
    def id(self) -> int:
        return int(self.fields["id"])

    @property
    def data(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.fields["data"])
        return value


@dataclass
class Reads:
    """What each recv() delivered: body bytes decoded so far, and when."""

    marks: list[tuple[int, float]] = field(default_factory=list)


class SSEConnection:
    """One request on a raw socket; the response is read incrementally."""

    def __init__(
        self,
        port: int,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        rcvbuf: int | None = None,
        timeout: float = 15.0,
    ) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:  # before connect, so the window is small from the start
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        self.started = time.monotonic()
        lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
        all_headers = dict(headers or {})
        if body is not None:
            all_headers.setdefault("Content-Type", "application/json")
            all_headers["Content-Length"] = str(len(body))
        lines += [f"{name}: {value}" for name, value in all_headers.items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b""))
        self.status = 0
        self.headers: dict[str, str] = {}
        self.decoder = ChunkedDecoder()
        self.reads = Reads()
        self.eof = False
        self._pending = b""

    def read_head(self) -> None:
        """Read the status line and headers (called by the helpers below)."""
        buffer = b""
        while b"\r\n\r\n" not in buffer:
            data = self.sock.recv(READ_SIZE)
            assert data, "connection closed before the response head"
            buffer += data
        head, _, rest = buffer.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split()[1])
        for line in header_lines:
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()
        self._pending = rest

    def _recv(self) -> bytes:
        if self._pending:
            data, self._pending = self._pending, b""
            return data
        try:
            return self.sock.recv(READ_SIZE)
        except ConnectionResetError:
            return b""

    def iter_chunks(self) -> Iterator[tuple[bytes, float]]:
        """HTTP chunks as they complete, with their arrival time."""
        if not self.status:
            self.read_head()
        assert self.headers.get("transfer-encoding") == "chunked", self.headers
        while not self.decoder.finished:
            data = self._recv()
            now = time.monotonic()
            if not data:
                self.eof = True
                return
            completed = self.decoder.feed(data)
            self.reads.marks.append((len(self.decoder.payload), now))
            for chunk in completed:
                yield chunk, now

    def iter_blocks(self) -> Iterator[Block]:
        """SSE blocks (events and comments) as they complete."""
        buffer = b""
        for chunk, at in self.iter_chunks():
            buffer += chunk
            while b"\n\n" in buffer:
                raw, _, buffer = buffer.partition(b"\n\n")
                yield Block(raw, at)
        assert not buffer or self.eof, f"stream ended inside a block: {buffer[:200]!r}"

    def read_all(self) -> list[Block]:
        return list(self.iter_blocks())

    def read_body(self) -> bytes:
        """A non-streamed body (e.g. a JSON error), read to the end."""
        if not self.status:
            self.read_head()
        if self.headers.get("transfer-encoding") == "chunked":
            return b"".join(chunk for chunk, _ in self.iter_chunks())
        body = self._pending
        length = int(self.headers.get("content-length", "-1"))
        while len(body) < length or length < 0:
            data = self._recv()
            if not data:
                break
            body += data
        return body

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> SSEConnection:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def events(blocks: list[Block]) -> list[Block]:
    return [block for block in blocks if block.is_event]


def comments(blocks: list[Block]) -> list[str]:
    return [block.comment for block in blocks if block.is_comment]


def post_json(port: int, path: str, payload: object, **kwargs: Any) -> SSEConnection:
    body = json.dumps(payload).encode()
    return SSEConnection(port, "POST", path, body=body, **kwargs)


def get_json(
    port: int, path: str, headers: Mapping[str, str] | None = None
) -> tuple[int, dict[str, str], Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=dict(headers or {}))
        response = conn.getresponse()
        body = response.read()
        head = {name.lower(): value for name, value in response.getheaders()}
        return response.status, head, json.loads(body) if body else None
    finally:
        conn.close()
