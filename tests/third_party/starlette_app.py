"""An sse-starlette app under uvicorn, as Python servers write them: ``time.time()`` stamps in seconds.

Each event's ``id`` is ``"<n>-<wall clock ns when written>"``: the ground truth the tests' own
recorder reads (the stream check does not look at ids).

  /seconds     token events stamped with time.time() (seconds), sse-starlette's ": ping" comments
  /anthropic   Anthropic's typed events (message_start, content_block_delta, ping, message_stop), no stamps
  /rfc3339     typed events stamped with an RFC 3339 string, multi-line data

Query: n (20), interval_ms (50). Run: ``python -m uvicorn tests.third_party.starlette_app:app``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


def _ids(i: int) -> str:
    return f"{i}-{time.time_ns()}"


def _params(request: Request) -> tuple[int, float]:
    return int(request.query_params.get("n", 20)), int(request.query_params.get("interval_ms", 50)) / 1000


async def _seconds(n: int, interval: float) -> AsyncIterator[ServerSentEvent]:
    for i in range(n):
        payload = {"type": "token", "content": f"tok{i} ", "ts": time.time()}
        yield ServerSentEvent(data=json.dumps(payload), id=_ids(i))
        await asyncio.sleep(interval)
    yield ServerSentEvent(data=json.dumps({"type": "done"}), event="done")


async def seconds(request: Request) -> Response:
    n, interval = _params(request)
    return EventSourceResponse(_seconds(n, interval), ping=0.3)


async def _anthropic(n: int, interval: float) -> AsyncIterator[ServerSentEvent]:
    def typed(kind: str, i: int = 0, **body: object) -> ServerSentEvent:
        return ServerSentEvent(data=json.dumps({"type": kind, **body}), event=kind, id=_ids(i))

    yield typed("message_start", message={"id": "msg_1", "role": "assistant"})
    yield typed("content_block_start", index=0, content_block={"type": "text", "text": ""})
    for i in range(n):
        yield typed("content_block_delta", i, index=0, delta={"type": "text_delta", "text": f"tok{i} "})
        if i == n // 2:
            yield typed("ping")
        await asyncio.sleep(interval)
    yield typed("content_block_stop", index=0)
    yield typed("message_stop")


async def anthropic(request: Request) -> Response:
    n, interval = _params(request)
    return EventSourceResponse(_anthropic(n, interval), ping=600)


async def _rfc3339(n: int, interval: float) -> AsyncIterator[ServerSentEvent]:
    for i in range(n):
        stamp = datetime.now(UTC).isoformat()
        yield ServerSentEvent(data=f'{{"timestamp": "{stamp}",\n"text": "tok{i} "}}', event="delta", id=_ids(i))
        await asyncio.sleep(interval)
    yield ServerSentEvent(data="[DONE]")


async def rfc3339(request: Request) -> Response:
    n, interval = _params(request)
    return EventSourceResponse(_rfc3339(n, interval), ping=600)


app = Starlette(
    routes=[
        Route("/seconds", seconds),
        Route("/anthropic", anthropic),
        Route("/rfc3339", rfc3339),
    ]
)
