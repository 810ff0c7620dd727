"""What the chat and probe routers share: start a reply, resume one, answer as SSE."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from fastapi import HTTPException, status

from ..delivery import EXPIRED, DeliveryOptions, deliver, expired_stream
from ..replies import Job, Kind, Meta, QueueUnavailableError, is_reply_id
from ..sse import EventStreamResponse, now_ms
from ..state import AppState

REPLY_URLS: dict[Kind, str] = {"chat": "/api/chat/replies/", "probe": "/api/probe/replies/"}
LAST_EVENT_ID_DIGITS = 9  # more than any reply has events (BACKEND_REPLY_MAX_EVENTS <= 1,000,000)


def unavailable(exc: QueueUnavailableError) -> HTTPException:
    return HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail=str(exc), headers={"Retry-After": "5"})


async def start(
    state: AppState, job: Job, *, heartbeat_s: float | None = None, on_close: Callable[[], None] | None = None
) -> EventStreamResponse:
    """Queue the job and stream its reply from the first event (503 when Redis is away)."""
    try:
        await state.queue.enqueue(job)
    except QueueUnavailableError as exc:
        raise unavailable(exc) from None
    meta = Meta(job.kind, job.thread_id, now_ms())
    return respond(state, job.reply, meta, 0, heartbeat_s=heartbeat_s, on_close=on_close)


async def meta_of(state: AppState, reply: str, kind: Kind) -> Meta | None:
    """The reply's meta when it is a live reply of this kind; 404 for an id that is none of ours."""
    if not is_reply_id(reply):
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="no such reply")
    try:
        meta = await state.queue.meta(reply)
    except QueueUnavailableError as exc:
        raise unavailable(exc) from None
    return meta if meta is not None and meta.kind == kind else None


def resume(
    state: AppState, reply: str, kind: Kind, meta: Meta | None, last_event_id: str | None,
    *, on_close: Callable[[], None] | None = None,
) -> EventStreamResponse:
    """The reply after ``Last-Event-ID`` (all of it without one), or the expired event."""
    if meta is None:
        return expired(state, headers=_location(kind, reply), on_close=on_close)
    return respond(state, reply, meta, after_event(last_event_id), on_close=on_close)


def expired(
    state: AppState, thread_id: str = "", content: str = EXPIRED,
    *, headers: dict[str, str] | None = None, on_close: Callable[[], None] | None = None,
) -> EventStreamResponse:
    """Open, one ``expired`` event without id (the client closes on it), and the end."""
    return EventStreamResponse(_once(expired_stream(thread_id, content)), send_timeout_s=state.settings.send_timeout_s,
                               headers=headers, on_close=on_close)  # fmt: skip


def respond(
    state: AppState, reply: str, meta: Meta, after: int,
    *, heartbeat_s: float | None = None, on_close: Callable[[], None] | None = None,
) -> EventStreamResponse:
    settings = state.settings
    options = DeliveryOptions(
        heartbeat_s=heartbeat_s or settings.heartbeat_s,
        lease_s=settings.worker_lease_ms / 1000,
        unclaimed_s=settings.provider_timeout_s,
        outage_s=settings.redis_outage_s,
        split_multibyte=meta.kind == "probe",
    )
    return EventStreamResponse(
        deliver(state.hub, reply, meta, after, options),
        send_timeout_s=settings.send_timeout_s,
        headers=_location(meta.kind, reply),
        on_close=on_close,
    )


def after_event(last_event_id: str | None) -> int:
    """The id to resume after; a value no browser sends (not a small number) replays from the start."""
    value = (last_event_id or "").strip()
    return int(value) if value.isascii() and value.isdigit() and len(value) <= LAST_EVENT_ID_DIGITS else 0


def _location(kind: Kind, reply: str) -> dict[str, str]:
    return {"Content-Location": REPLY_URLS[kind] + reply}


async def _once(body: bytes) -> AsyncIterator[bytes]:
    yield body
