"""The delivery spike's HTTP side: one raw ASGI app, run by uvicorn in one of three roles (SPIKE_ROLE).

- ``local``: today's design, one process generates and delivers (the probe's pace, no Redis): the baseline.
- ``sse``: design (a), a delivery process: a new reply is queued for the worker, then its Redis Stream is
  forwarded as SSE with blocking XREAD; ``GET /api/replies/<id>`` resumes after ``Last-Event-ID`` or replays.
- ``backend``: design (b)'s FastAPI stand-in: it queues the reply (or checks that it still exists) and hands
  the client to nchan with ``X-Accel-Redirect`` to an internal subscriber location; nchan streams it.

``GET /api/probe/stream?tokens=T&interval_ms=I`` stands for the POST that starts a reply (the bench's client
only does GET). Events are the backend's: ``id: n`` + ``data: {type, threadId, content, ts}``, ids from 1.
Runs on Debian's python3 with python3-redis and uvicorn only (the image in Dockerfile).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from pi5bench.spike_events import PROBE_TOKENS, done_summary, encode_event, resume_from, stream_id

Scope = dict[str, Any]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]

ROLE = os.environ.get("SPIKE_ROLE", "local")
SINK = os.environ.get("SPIKE_SINK", "stream")  # what the worker publishes to: a Redis Stream or nchan
READ = os.environ.get("SPIKE_READ", "each")  # design (a): one XREAD BLOCK per client, or one per process (hub)
HEARTBEAT_S = float(os.environ.get("SPIKE_HEARTBEAT_S", "15"))
REPLY_TTL_S = int(os.environ.get("SPIKE_REPLY_TTL_S", "600"))
REDIS = aioredis.Redis(host="127.0.0.1", port=6399, decode_responses=True, max_connections=100000)
OPEN = b": open\n\nretry: 3000\n\n"
KEEPALIVE = b": keepalive\n\n"


def _headers(reply: str, extra: list[tuple[bytes, bytes]] | None = None) -> list[tuple[bytes, bytes]]:
    return [
        (b"content-type", b"text/event-stream; charset=utf-8"),
        (b"cache-control", b"no-cache, no-transform"),
        (b"x-accel-buffering", b"no"),
        (b"content-location", f"/api/replies/{reply}".encode()),
        *(extra or []),
    ]


def _query(scope: Scope) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(scope.get("query_string", b"").decode()).items()}


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return str(value.decode())
    return None


async def _start(send: Send, status: int, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})


async def _body(send: Send, data: bytes, more: bool = True) -> None:
    await send({"type": "http.response.body", "body": data, "more_body": more})


async def _local(send: Send, tokens: int, interval_ms: int) -> None:
    """Today's design: generate and deliver in this process (the probe's content and pace)."""
    reply = uuid.uuid4().hex
    await _start(send, 200, _headers(reply))
    await _body(send, OPEN)
    contents: list[str] = []
    for index in range(tokens):
        if index:
            await asyncio.sleep(interval_ms / 1000)
        content = PROBE_TOKENS[index % len(PROBE_TOKENS)]
        contents.append(content)
        await _body(send, encode_event(index + 1, "token", reply, content, time.time() * 1000))
    await _body(send, encode_event(tokens + 1, "done", reply, done_summary(contents), time.time() * 1000), more=False)


async def _queue(tokens: int, interval_ms: int) -> str:
    """A new reply: its marker (so a GET can tell "not yet" from "expired"), then the worker's job."""
    reply = uuid.uuid4().hex
    job = {"reply": reply, "tokens": tokens, "interval_ms": interval_ms, "sink": SINK}
    async with REDIS.pipeline(transaction=False) as pipe:
        pipe.set(f"reply:{reply}:meta", "1", ex=REPLY_TTL_S)
        pipe.lpush("spike:jobs", json.dumps(job))
        await pipe.execute()
    return reply


Entries = list[tuple[str, dict[str, str]]]


class Hub:
    """Design (a), one reader per process: one XREAD BLOCK over every reply this process delivers.

    Each client registers its reply's key and cursor and gets a queue; the reader moves entries into the
    queues and advances the cursors. A new client waits at most ``POLL_MS`` for the next read to include it.
    One client per reply here (a second tab on one reply would need cursors per client: left to the build).
    """

    POLL_MS = 20

    def __init__(self) -> None:
        self.cursors: dict[str, str] = {}
        self.queues: dict[str, asyncio.Queue[Entries]] = {}
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def join(self, key: str, cursor: str) -> asyncio.Queue[Entries]:
        if self.task is None:
            self.task = asyncio.create_task(self.run())
        self.cursors[key] = cursor
        self.queues[key] = asyncio.Queue()
        self.wake.set()
        return self.queues[key]

    def leave(self, key: str) -> None:
        self.cursors.pop(key, None)
        self.queues.pop(key, None)

    async def run(self) -> None:
        while True:
            if not self.cursors:
                self.wake.clear()
                await self.wake.wait()
            try:
                found = await REDIS.xread(dict(self.cursors), count=100, block=self.POLL_MS)
            except (OSError, RedisConnectionError, RedisTimeoutError) as exc:  # Redis restarting: end every client's stream, they resume
                for queue in self.queues.values():
                    queue.put_nowait([("", {"lost": str(exc)})])
                self.cursors.clear()
                await asyncio.sleep(0.2)
                continue
            for key, entries in found or []:
                if key in self.queues:
                    self.cursors[key] = entries[-1][0]
                    self.queues[key].put_nowait(entries)


HUB = Hub()


async def _entries_each(key: str, cursor: str) -> AsyncIterator[Entries]:
    while True:
        found = await REDIS.xread({key: cursor}, count=100, block=int(HEARTBEAT_S * 1000))
        entries: Entries = found[0][1] if found else []
        if entries:
            cursor = entries[-1][0]
        yield entries


async def _entries_hub(key: str, cursor: str) -> AsyncIterator[Entries]:
    queue = HUB.join(key, cursor)
    try:
        while True:
            try:
                entries = await asyncio.wait_for(queue.get(), HEARTBEAT_S)
            except TimeoutError:
                entries = []
            if entries and "lost" in entries[0][1]:
                raise ConnectionError(entries[0][1]["lost"])
            yield entries
    finally:
        HUB.leave(key)


async def _forward(send: Send, reply: str, after: int) -> None:
    """Design (a): the reply's Redis Stream from after ``after`` as SSE, blocking XREAD, until done/error."""
    read = _entries_hub if READ == "hub" else _entries_each
    async for entries in read(f"reply:{reply}", stream_id(after)):
        if not entries:
            await _body(send, KEEPALIVE)
            continue
        chunk = bytearray()
        finished = False
        for entry_id, fields in entries:
            chunk += f"id: {entry_id.split('-', 1)[0]}\ndata: {fields['d']}\n\n".encode()
            finished = finished or fields.get("end") == "1"
        await _body(send, bytes(chunk), more=not finished)
        if finished:
            return


async def _expired(send: Send, reply: str) -> None:
    """A reply whose stream has expired (or never was): one clear event, then the end."""
    await _start(send, 200, _headers(reply))
    data = json.dumps({"type": "expired", "threadId": reply, "content": "reply expired", "ts": time.time() * 1000})
    await _body(send, OPEN + f"data: {data}\n\n".encode(), more=False)


async def _redirect(send: Send, reply: str) -> None:
    """Design (b): hand the client to nchan's internal subscriber location (empty 200, as nchan's README says)."""
    await _start(send, 200, [(b"x-accel-redirect", f"/internal/sub/{reply}".encode()), (b"x-accel-buffering", b"no")])
    await _body(send, b"", more=False)


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """Serve one request; stop its work when the client goes (uvicorn's send() after that is a silent no-op)."""
    if scope["type"] != "http":
        return
    work = asyncio.ensure_future(_serve(scope, send))
    gone = asyncio.ensure_future(_disconnected(receive))
    await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
    for task in (work, gone):
        task.cancel()
    if work.done() and not work.cancelled() and work.exception() is not None:
        raise work.exception()  # type: ignore[misc]


async def _serve(scope: Scope, send: Send) -> None:
    path: str = scope["path"]
    query = _query(scope)
    tokens = min(int(query.get("tokens", "20")), 5000)
    interval_ms = min(int(query.get("interval_ms", "50")), 30000)
    if path == "/api/probe/stream" and ROLE == "local":
        await _local(send, tokens, interval_ms)
        return
    if path == "/api/probe/stream":
        reply = await _queue(tokens, interval_ms)
        if ROLE == "backend":
            await _redirect(send, reply)
            return
        await _start(send, 200, _headers(reply))
        await _body(send, OPEN)
        await _forward(send, reply, 0)
        return
    if path.startswith("/api/replies/") and ROLE in ("sse", "backend"):
        reply = path.rsplit("/", 1)[1]
        if not reply.isalnum() or not await REDIS.exists(f"reply:{reply}:meta"):
            await _expired(send, reply)
            return
        if ROLE == "backend":
            await _redirect(send, reply)
            return
        await _start(send, 200, _headers(reply))
        await _body(send, OPEN)
        await _forward(send, reply, resume_from(_header(scope, b"last-event-id")))
        return
    await _start(send, 404, [(b"content-type", b"text/plain")])
    await _body(send, b"not found\n", more=False)

