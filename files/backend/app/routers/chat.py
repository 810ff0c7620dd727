"""Chat: stream a reply (POST or EventSource GET) and read stored threads."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException, Path, Query, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..auth import require_auth
from ..replies import REQUEST_ID_PATTERN, Job, QueueUnavailableError, new_reply_id
from ..sse import EventStreamResponse, now_ms, openapi_sse_response
from ..state import AppState, get_state
from ..storage import THREAD_ID_PATTERN, StoredMessage, StoreFullError, Thread, new_thread_id
from . import replies

log = logging.getLogger(__name__)

MAX_MESSAGE_CHARS = 8000
STREAM_DOC = (
    "SSE reply: `: open`, a `status` event, `token` events, then `done` "
    "(an `error` event precedes `done` when generation failed). `Content-Location` "
    "names the reply's URL, for resuming."
)
RECONNECT_DOC = (
    " With a `requestId` already used (EventSource reconnecting to this URL), the reply it "
    "started, after `Last-Event-ID`. With `Last-Event-ID` and no `requestId`, one `expired` "
    "event: the message is not sent twice."
)
RESUME_DOC = (
    "The reply's events after `Last-Event-ID` (all of them without it), live while it is "
    "generated, to `done`; or one `expired` event (no id) when the reply is gone."
)

router = APIRouter(prefix="/api/chat", tags=["chat"], dependencies=[Depends(require_auth)])

MessageText = Annotated[str, Field(min_length=1, max_length=MAX_MESSAGE_CHARS)]
ThreadIdQuery = Annotated[
    str | None,
    Query(alias="threadId", pattern=THREAD_ID_PATTERN, description="Omit to start a thread"),
]
RequestIdQuery = Annotated[
    str | None,
    Query(
        alias="requestId",
        pattern=REQUEST_ID_PATTERN,
        description="Client-chosen (e.g. `crypto.randomUUID()`): a GET with a requestId already "
        "used resumes that reply instead of sending the message again",
    ),
]
LastEventId = Annotated[str | None, Header(alias="Last-Event-ID")]
State = Annotated[AppState, Depends(get_state)]
THREAD_BUSY = "a reply is still being written in this thread; send the next message after its done"
NOT_RESUMABLE = (
    "this message was sent already and cannot be resumed without a requestId; reload the thread"
)


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
        return checked_message(value)


def checked_message(value: str) -> str:
    """Refuse a blank message, and one that is not valid Unicode (a lone surrogate)."""
    if not value.strip():
        raise ValueError("message must not be blank")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise ValueError("message must be valid Unicode text") from None
    return value


async def read_body(request: Request, max_bytes: int, timeout_s: float) -> bytes:
    """The body, refused past ``max_bytes`` (413) or ``timeout_s`` (408) as it arrives."""
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > max_bytes:
                    raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, "request body too large")
                chunks.append(chunk)
    except TimeoutError:
        raise HTTPException(status.HTTP_408_REQUEST_TIMEOUT, "request body too slow") from None
    return b"".join(chunks)


@router.post(
    "/message",
    summary="Send a message; the reply streams back as SSE",
    response_class=EventStreamResponse,
    responses={
        **openapi_sse_response(STREAM_DOC),
        413: {"description": "Body over BACKEND_MAX_BODY_KB, or the thread is full"},
        409: {"description": "A reply is still being written in this thread (its URL in Content-Location)"},
        429: {"description": "Over BACKEND_CHAT_RATE_PER_S for this client"},
        503: {"description": "The reply queue (Redis) is unavailable"},
        507: {"description": "The store is full (BACKEND_STORE_MAX_MB)"},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": ChatRequest.model_json_schema()}},
        }
    },
)
async def post_message(request: Request, state: State) -> EventStreamResponse:
    settings = state.settings
    raw = await read_body(request, settings.max_body_kb * 1024, settings.body_timeout_s)
    try:
        # pydantic's own JSON parser: NaN, lone surrogates and deep nesting are errors, not crashes.
        body = ChatRequest.model_validate_json(raw)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_input=False)) from None
    return await start_reply(state, body.message, body.thread_id)


@router.get(
    "/message/stream",
    summary="Same as POST /api/chat/message, for EventSource clients",
    response_class=EventStreamResponse,
    responses={
        **openapi_sse_response(STREAM_DOC + RECONNECT_DOC),
        409: {"description": "The requestId was used for another message or thread"},
        503: {"description": "The reply queue (Redis) is unavailable"},
    },
)
async def stream_message(
    message: Annotated[str, Query(min_length=1, max_length=MAX_MESSAGE_CHARS)],
    state: State,
    thread_id: ThreadIdQuery = None,
    request_id: RequestIdQuery = None,
    last_event_id: LastEventId = None,
) -> EventStreamResponse:
    try:
        checked_message(message)
    except ValueError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=str(exc)) from None
    if request_id is not None:
        return await reply_of_request(state, request_id, message, thread_id, last_event_id)
    if last_event_id is not None:
        # EventSource sends Last-Event-ID only when it reconnects to the URL it opened: this
        # message was sent already. Starting again would store it twice and start a second reply
        # whose ids the page has seen (its tokens would be dropped or mixed into the first's).
        return replies.expired(state, thread_id or "", NOT_RESUMABLE)
    return await start_reply(state, message, thread_id)


async def reply_of_request(
    state: AppState, request_id: str, message: str, thread_id: str | None, last_event_id: str | None
) -> EventStreamResponse:
    """The first request with this requestId starts the reply; every later one (EventSource's
    reconnection, a retry) resumes that reply after Last-Event-ID, or replays it."""
    reply, mark = new_reply_id(), fingerprint(message, thread_id)
    try:
        if last_event_id is None:
            earlier = await state.queue.claim_request(request_id, f"{reply} {mark}")
        else:  # a reconnection never starts a reply
            earlier = await state.queue.claimed_request(request_id)
            if earlier is None:  # the requestId expired with its reply
                return replies.expired(state, thread_id or "")
    except QueueUnavailableError as exc:
        raise replies.unavailable(exc) from None
    if earlier is None:
        try:
            return await start_reply(state, message, thread_id, reply)
        except HTTPException:
            await state.queue.release_request(request_id)  # a retry may start it again
            raise
    earlier_reply, _, earlier_mark = earlier.partition(" ")
    if earlier_mark != mark:
        raise HTTPException(status.HTTP_409_CONFLICT, detail="this requestId was used for another message")
    meta = await replies.meta_of(state, earlier_reply, "chat")
    return replies.resume(state, earlier_reply, "chat", meta, last_event_id)


def fingerprint(message: str, thread_id: str | None) -> str:
    """What a requestId was used for: its reuse with another message or thread is refused."""
    return hashlib.sha256(f"{thread_id or ''}\0{message}".encode()).hexdigest()[:32]


@router.get(
    "/replies/{replyId}",
    summary="A reply (the Content-Location of every chat stream): resume after Last-Event-ID, or replay it",
    response_class=EventStreamResponse,
    responses={
        **openapi_sse_response(RESUME_DOC),
        404: {"description": "Not a reply id (32 lowercase hex digits)"},
        503: {"description": "The reply queue (Redis) is unavailable"},
    },
)
async def get_reply(
    reply_id: Annotated[str, Path(alias="replyId")],
    state: State,
    last_event_id: LastEventId = None,
) -> EventStreamResponse:
    meta = await replies.meta_of(state, reply_id, "chat")
    return replies.resume(state, reply_id, "chat", meta, last_event_id)


@router.get(
    "/threads/{threadId}",
    summary="A stored thread, as persisted in the data dir",
    response_class=StreamingResponse,
    responses={200: {"model": Thread, "content": {"application/json": {}}}},
)
async def get_thread(
    thread_id: Annotated[str, Path(alias="threadId", pattern=THREAD_ID_PATTERN)], state: State
) -> StreamingResponse:
    if not await asyncio.to_thread(state.store.exists, thread_id):
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no thread {thread_id}")
    # A sync iterator: Starlette reads it in its thread pool, piece by piece.
    return StreamingResponse(state.store.thread_json(thread_id), media_type="application/json")


async def start_reply(
    state: AppState, message: str, thread_id: str | None, reply: str | None = None
) -> EventStreamResponse:
    """Persist the user message, queue the reply (``reply`` or a new id) for the worker, and stream it."""
    thread_id, reply = thread_id or new_thread_id(), reply or new_reply_id()
    try:
        busy = await state.queue.claim_thread(thread_id, reply)
    except QueueUnavailableError as exc:
        raise replies.unavailable(exc) from None
    if busy is not None:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=THREAD_BUSY,
                            headers={"Content-Location": replies.REPLY_URLS["chat"] + busy})  # fmt: skip
    try:
        await state.store.append(
            thread_id, StoredMessage(role="user", content=message, ts=now_ms())
        )
    except StoreFullError as exc:
        await state.queue.release_thread(reply)
        raise HTTPException(exc.status, detail=str(exc)) from None
    except OSError as exc:
        await state.queue.release_thread(reply)
        log.error("cannot store thread %s: %s", thread_id, exc)
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, detail=f"cannot store the message: {exc.strerror}"
        ) from exc
    try:
        return await replies.start(state, Job("chat", reply, thread_id, {}))
    except HTTPException:  # not queued (503): no reply will end, so nothing else frees the thread
        await state.queue.release_thread(reply)
        raise
