"""Repository paths and synthetic captures (exact, noise-free timelines without curl or a server)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from ansible_collections.pi5.streaming.plugins.module_utils.stream_check import Capture, Chunk, Request

REPO = Path(__file__).resolve().parents[2]
COLLECTIONS = REPO / "collections"

URL = "http://127.0.0.1:7776/api/probe/stream?tokens=20&interval_ms=50"
SSE_HEADERS: Mapping[str, str] = {"content-type": "text/event-stream; charset=utf-8"}
# The server's clock runs this far from ours; lateness must not care.
CLOCK_OFFSET_MS = 1_700_000_000_000 - 123_456


def token(i: int) -> str:
    return f"tök{i} "


def sse_event(i: int, ts_ms: float | None, content: str | None = None) -> bytes:
    payload: dict[str, object] = {"type": "token", "content": token(i) if content is None else content}
    if ts_ms is not None:
        payload["ts"] = int(ts_ms)
    return f"id: {i + 1}\ndata: {json.dumps(payload)}\n\n".encode()


def done_event(contents: Sequence[str]) -> bytes:
    text = "".join(contents).encode()
    summary = {"tokens": len(contents), "sha256": hashlib.sha256(text).hexdigest(), "bytes": len(text)}
    return f"data: {json.dumps({'type': 'done', 'content': summary})}\n\n".encode()


def paced(n: int, interval_ms: float, start_ms: float = 40.0) -> list[float]:
    """Arrival (and emission) times of n events at an even pace, in ms."""
    return [start_ms + i * interval_ms for i in range(n)]


def capture(
    arrivals_ms: Sequence[float],
    *,
    emitted_ms: Sequence[float | None] | None = None,
    done: bool = True,
    done_bytes: bytes | None = None,
    comments_ms: Sequence[float] = (),
    status: int | None = 200,
    headers: Mapping[str, str] = SSE_HEADERS,
    curl_exit: int = 0,
    curl_error: str = "",
    ttfb_ms: float = 5.0,
    url: str = URL,
    http_version: str | None = "1.1",
) -> Capture:
    """A Capture whose events arrive at ``arrivals_ms``; same-time events share a read.

    ``emitted_ms`` are the events' ts on the server's clock minus CLOCK_OFFSET_MS
    (default: emitted exactly when they arrived, i.e. perfectly incremental).
    """
    emitted = list(arrivals_ms) if emitted_ms is None else list(emitted_ms)
    pieces: list[tuple[float, bytes]] = [(ttfb_ms, b": open\n\nretry: 3000\n\n")]
    pieces += [(at, b": keepalive\n\n") for at in comments_ms]
    pieces += [
        (at, sse_event(i, None if ts is None else ts + CLOCK_OFFSET_MS))
        for i, (at, ts) in enumerate(zip(arrivals_ms, emitted, strict=True))
    ]
    if done:
        last = max(arrivals_ms, default=ttfb_ms)
        pieces.append((last, done_bytes or done_event([token(i) for i in range(len(arrivals_ms))])))
    chunks: list[Chunk] = []
    for at, data in sorted(pieces, key=lambda piece: piece[0]):
        if chunks and chunks[-1].at == at / 1000.0:
            chunks[-1] = Chunk(chunks[-1].at, chunks[-1].data + data)
        else:
            chunks.append(Chunk(at / 1000.0, data))
    if status is None:
        chunks = []
    return Capture(
        request=Request(url=url),
        chunks=tuple(chunks),
        curl_exit=curl_exit,
        curl_error=curl_error,
        status=status,
        http_version=http_version if status else None,
        headers=dict(headers) if status else {},
        ttfb_s=ttfb_ms / 1000.0 if status else None,
        remote_ip="127.0.0.1" if status else None,
        remote_port=7776 if status else None,
        elapsed_s=(max(arrivals_ms, default=0.0) + 1.0) / 1000.0,
    )
