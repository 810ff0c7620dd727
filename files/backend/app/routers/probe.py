"""Stream probe: known tokens with tricky bytes, for end-to-end stream checks."""

from __future__ import annotations

import uuid
from dataclasses import asdict
from typing import Annotated, Self

from fastapi import APIRouter, Depends, Header, HTTPException, Path, Query, Request, status
from pydantic import BaseModel, Field, model_validator

from ..auth import authorized, bearer_token
from ..probe import ProbeParams
from ..ratelimit import client_key, retry_after_seconds
from ..replies import Job, new_reply_id
from ..sse import EventStreamResponse, openapi_sse_response
from ..state import AppState, get_state
from . import replies

MIN_HEARTBEAT_MS = 20
DONE_DOC = (
    '`tokens` token events, then `done` whose content is `{"tokens": N, "sha256": '
    '<hex sha256 of the UTF-8 concatenation of all token contents>, "bytes": <its length>}`.'
)

router = APIRouter(prefix="/api/probe", tags=["probe"])


class ProbeQuery(BaseModel):
    # Unknown parameters (cache busters such as `_=...`) are ignored.
    tokens: int = Field(20, ge=1, le=500, description="Number of token events")
    interval_ms: int = Field(50, ge=0, le=2000, description="Pause between token events")
    silence_ms: int = Field(0, ge=0, le=30_000, description="Silence in the middle of the stream")
    heartbeat_ms: int = Field(
        0,
        ge=0,
        le=60_000,
        description=f"Keepalive period: 0 = BACKEND_HEARTBEAT_S, else >= {MIN_HEARTBEAT_MS}",
    )
    big_kb: int = Field(0, ge=0, le=256, description="KiB of content in one mid-stream token event")

    @model_validator(mode="after")
    def _heartbeat_not_too_fast(self) -> Self:
        if 0 < self.heartbeat_ms < MIN_HEARTBEAT_MS:
            raise ValueError(f"heartbeat_ms must be 0 or at least {MIN_HEARTBEAT_MS}")
        return self

    def params(self) -> ProbeParams:
        return ProbeParams(self.tokens, self.interval_ms, self.silence_ms, self.big_kb)


@router.get(
    "/stream",
    summary="Probe stream: paced tokens, multi-byte splits, optional big event and silence",
    response_class=EventStreamResponse,
    responses={
        **openapi_sse_response(DONE_DOC),
        422: {"description": "Bad parameters, or longer than BACKEND_PROBE_MAX_S"},
        429: {"description": "Rate limit (BACKEND_PROBE_RATE_PER_S per client) exceeded"},
        503: {"description": "BACKEND_PROBE_MAX_STREAMS probes are already open (never for the owner's token)"},
    },
)
async def probe_stream(
    request: Request,
    query: Annotated[ProbeQuery, Query()],
    state: Annotated[AppState, Depends(get_state)],
) -> EventStreamResponse:
    params = query.params()
    settings = state.settings
    if params.duration_ms() > settings.probe_max_s * 1000:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            detail=f"the probe would last longer than {settings.probe_max_s}s",
        )
    owner = is_owner(request, state)
    if not owner:
        admit_anonymous_probe(request, state)
    heartbeat_s = query.heartbeat_ms / 1000 if query.heartbeat_ms else None
    job = Job("probe", new_reply_id(), f"probe-{uuid.uuid4().hex[:12]}", asdict(params))
    close = None if owner else state.close_probe
    try:
        return await replies.start(state, job, heartbeat_s=heartbeat_s, on_close=close)
    except HTTPException:
        if close is not None:
            close()
        raise


@router.get(
    "/replies/{replyId}",
    summary="A probe reply (its Content-Location): resume after Last-Event-ID, or replay it",
    response_class=EventStreamResponse,
    responses={
        **openapi_sse_response(DONE_DOC),
        404: {"description": "Not a reply id (32 lowercase hex digits)"},
        429: {"description": "Rate limit (BACKEND_PROBE_RATE_PER_S per client) exceeded"},
        503: {"description": "Too many probes open, or the reply queue (Redis) is unavailable"},
    },
)
async def get_probe_reply(
    request: Request,
    reply_id: Annotated[str, Path(alias="replyId")],
    state: Annotated[AppState, Depends(get_state)],
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> EventStreamResponse:
    meta = await replies.meta_of(state, reply_id, "probe")
    owner = is_owner(request, state)
    if not owner:
        admit_anonymous_probe(request, state)
    return replies.resume(state, reply_id, "probe", meta, last_event_id,
                          on_close=None if owner else state.close_probe)  # fmt: skip


def is_owner(request: Request, state: AppState) -> bool:
    """The owner's check carries the token: it is never crowded out by anonymous probes."""
    settings = state.settings
    return not settings.auth_off and authorized(
        settings, bearer_token(request.headers.get("authorization")), request.cookies
    )


def admit_anonymous_probe(request: Request, state: AppState) -> None:
    """A probe without the token: within its client's rate (429) and the global cap (503)."""
    wait_s = state.probe_limiter.acquire(client_key(request.client.host if request.client else None))
    if wait_s:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            detail="probe rate limit exceeded",
            headers={"Retry-After": str(retry_after_seconds(wait_s))},
        )
    if not state.open_probe():  # this process's share of BACKEND_PROBE_MAX_STREAMS
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            detail="too many probes open; try again shortly",
            headers={"Retry-After": "5"},
        )
