"""Chat: stream a reply (POST or EventSource GET) and read stored threads."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Query, status
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..auth import require_auth
from ..providers import Turn
from ..sse import EventStreamResponse, now_ms, openapi_sse_response
from ..state import AppState, get_state
from ..storage import THREAD_ID_PATTERN, StoredMessage, Thread, ThreadStore, new_thread_id
from ..streaming import StreamOptions, StreamResult, sse_stream

log = logging.getLogger(__name__)

MAX_MESSAGE_CHARS = 8000
STREAM_DOC = (
    "SSE reply: `: open`, a `status` event, `token` events, then `done` "
    "(an `error` event precedes `done` when generation failed)."
)

router = APIRouter(prefix="/api/chat", tags=["chat"], dependencies=[Depends(require_auth)])

MessageText = Annotated[str, Field(min_length=1, max_length=MAX_MESSAGE_CHARS)]
ThreadIdQuery = Annotated[
    str | None,
    Query(alias="threadId", pattern=THREAD_ID_PATTERN, description="Omit to start a thread"),
]
State = Annotated[AppState, Depends(get_state)]


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message: MessageText
    thread_id: Annotated[
        str | None,
        Field(alias="threadId", pattern=THREAD_ID_PATTERN, description="Omit to start a thread"),
    ] = None

    @field_validator("message")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("message must not be blank")
        return value


@router.post(
    "/message",
    summary="Send a message; the reply streams back as SSE",
    response_class=EventStreamResponse,
    responses=openapi_sse_response(STREAM_DOC),
)
async def post_message(body: ChatRequest, state: State) -> EventStreamResponse:
    return await start_reply(state, body.message, body.thread_id)


@router.get(
    "/message/stream",
    summary="Same as POST /api/chat/message, for EventSource clients",
    response_class=EventStreamResponse,
    responses=openapi_sse_response(STREAM_DOC),
)
async def stream_message(
    message: Annotated[str, Query(min_length=1, max_length=MAX_MESSAGE_CHARS)],
    state: State,
    thread_id: ThreadIdQuery = None,
) -> EventStreamResponse:
    if not message.strip():
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, detail="message must not be blank"
        )
    return await start_reply(state, message, thread_id)


@router.get("/threads/{threadId}", summary="A stored thread, as persisted in the data dir")
async def get_thread(
    thread_id: Annotated[str, Path(alias="threadId", pattern=THREAD_ID_PATTERN)], state: State
) -> Thread:
    thread = await state.store.load(thread_id)
    if thread is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no thread {thread_id}")
    return thread


async def start_reply(state: AppState, message: str, thread_id: str | None) -> EventStreamResponse:
    """Persist the user message, then stream the reply (persisted when it ends)."""
    thread_id = thread_id or new_thread_id()
    try:
        thread = await state.store.load(thread_id)
        await state.store.append(
            thread_id, StoredMessage(role="user", content=message, ts=now_ms())
        )
    except OSError as exc:
        log.error("cannot store thread %s: %s", thread_id, exc)
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, detail=f"cannot store the message: {exc.strerror}"
        ) from exc
    history = thread.turns() if thread else []
    events = reply_events(state, thread_id, [*history, Turn("user", message)])
    return EventStreamResponse(events, send_timeout_s=state.settings.send_timeout_s)


async def reply_events(
    state: AppState, thread_id: str, conversation: Sequence[Turn]
) -> AsyncIterator[bytes]:
    settings = state.settings
    options = StreamOptions(
        heartbeat_s=settings.heartbeat_s,
        idle_timeout_s=settings.provider_timeout_s,
        preface=(("status", "generating"),),
    )
    result = StreamResult()
    tokens = state.provider.stream(conversation)
    try:
        async for chunk in sse_stream(
            tokens,
            thread_id=thread_id,
            options=options,
            shutdown=state.shutting_down,
            result=result,
        ):
            yield chunk
    finally:
        # Shielded: runs to the end even when the client is gone (cancelled).
        await asyncio.shield(save_reply(state.store, thread_id, result))


async def save_reply(store: ThreadStore, thread_id: str, result: StreamResult) -> None:
    reply = StoredMessage(
        role="assistant",
        content=result.text,
        ts=now_ms(),
        status=result.outcome,
        error=result.error,
    )
    try:
        await store.append(thread_id, reply)
    except OSError:
        log.exception("cannot store the reply of thread %s", thread_id)
