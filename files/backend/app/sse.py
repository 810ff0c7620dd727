"""Server-Sent Events wire format and the ASGI response that writes it.

Wire format (what every stream of this backend looks like):

    : open\\n\\n                 comment sent as soon as the response starts
    retry: 3000\\n\\n            EventSource reconnect delay
    id: 1\\ndata: {...}\\n\\n     one JSON event; ids count from 1, no ``event:``
    : keepalive\\n\\n            comment after BACKEND_HEARTBEAT_S of silence

Each event's JSON is compact UTF-8 with keys type, threadId, content, ts. An
event outside the reply's order (``expired``, or the error of a Redis outage)
has no ``id:``, so a browser's Last-Event-ID stays the last real one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Literal

from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from .asgi import ABORT_EXTENSION

log = logging.getLogger(__name__)

EventType = Literal["token", "status", "done", "error", "expired"]
Content = str | Mapping[str, object]

OPEN = b": open\n\nretry: 3000\n\n"
KEEPALIVE = b": keepalive\n\n"
MEDIA_TYPE = "text/event-stream"
HEADERS: Mapping[str, str] = {
    "Cache-Control": "no-cache, no-transform",
    "X-Accel-Buffering": "no",
}


def now_ms() -> int:
    """Integer milliseconds since the Unix epoch."""
    return time.time_ns() // 1_000_000


def event_json(kind: EventType, thread_id: str, content: Content) -> str:
    """An event's compact UTF-8 JSON, its ``ts`` taken now (right before the write)."""
    payload = {"type": kind, "threadId": thread_id, "content": content, "ts": now_ms()}
    # json.dumps escapes control characters, so the result is a single line.
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"))


def frame(event_id: int | None, data: str) -> bytes:
    """An event as written: ``id:`` (none for events outside the reply's order), then ``data:``."""
    head = "" if event_id is None else f"id: {event_id}\n"
    return f"{head}data: {data}\n\n".encode()


class SendTimeoutError(Exception):
    """The client stopped reading: a write did not complete in time."""


class EventStreamResponse(Response):
    """Stream pre-encoded SSE chunks; every chunk is its own ASGI send.

    Unlike Starlette's StreamingResponse it bounds each send: a client that
    keeps the connection open but stops reading (full socket buffers) is
    dropped after ``send_timeout_s`` instead of pinning the generator forever.
    A client disconnect cancels the body iterator: its delivery stops, the
    reply goes on in the worker.
    """

    media_type = MEDIA_TYPE
    charset = "utf-8"

    def __init__(
        self,
        chunks: AsyncIterator[bytes],
        *,
        send_timeout_s: float,
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self.chunks = chunks
        self.on_close = on_close  # runs once the response ends, however it ends
        self.send_timeout_s = send_timeout_s
        self.status_code = status_code
        self.background = None
        self.init_headers({**HEADERS, **(headers or {})})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        stream = asyncio.ensure_future(self._stream(send))
        disconnect = asyncio.ensure_future(_wait_for_disconnect(receive))
        try:
            await asyncio.wait({stream, disconnect}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (stream, disconnect):
                task.cancel()
            await asyncio.gather(stream, disconnect, return_exceptions=True)
            if self.on_close is not None:
                self.on_close()
        if stream.cancelled():
            log.info("client disconnected; stream cancelled")
            return
        error = stream.exception()
        if isinstance(error, SendTimeoutError):
            log.warning("client stopped reading for %ss; dropping it", self.send_timeout_s)
            await _abort(scope)
        elif error is not None:
            raise error

    async def _stream(self, send: Send) -> None:
        async def bounded_send(message: Message) -> None:
            try:
                async with asyncio.timeout(self.send_timeout_s):
                    await send(message)
            except TimeoutError:
                raise SendTimeoutError from None

        start: Message = {"type": "http.response.start", "status": self.status_code}
        await bounded_send({**start, "headers": self.raw_headers})
        try:
            async for chunk in self.chunks:
                await bounded_send({"type": "http.response.body", "body": chunk, "more_body": True})
        finally:
            await _aclose(self.chunks)
        await bounded_send({"type": "http.response.body", "body": b"", "more_body": False})


async def _wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _aclose(chunks: AsyncIterator[bytes]) -> None:
    aclose = getattr(chunks, "aclose", None)
    if aclose is not None:
        await aclose()


async def _abort(scope: Scope) -> None:
    abort = scope.get("extensions", {}).get(ABORT_EXTENSION, {}).get("abort")
    if callable(abort):
        abort()
        await asyncio.sleep(0)  # let the server see connection_lost before we return


def openapi_sse_response(description: str) -> dict[int | str, dict[str, object]]:
    """OpenAPI ``responses`` entry documenting a text/event-stream body."""
    return {
        200: {
            "description": description,
            "content": {
                MEDIA_TYPE: {
                    "schema": {"type": "string"},
                    "example": (
                        ": open\n\nretry: 3000\n\n"
                        'id: 1\ndata: {"type":"token","threadId":"t1","content":"Hi","ts":1}\n\n'
                    ),
                }
            },
        }
    }
