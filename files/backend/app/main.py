"""Application factory."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from . import __version__
from .delivery import Hub
from .guard import RequestGuard
from .providers import configuration_problem
from .ratelimit import RateLimiter
from .replies import ReplyQueue
from .routers import chat, health, probe
from .settings import Settings
from .state import AppState
from .storage import thread_store

log = logging.getLogger(__name__)

# A 422 names at most this many errors, each cut short, and never echoes the input.
MAX_REPORTED_ERRORS = 5
MAX_ERROR_TEXT = 120

DESCRIPTION = """\
Streams chat replies as Server-Sent Events. Every stream starts with the comment
`: open`, carries events `id: <n>` + `data: {"type", "threadId", "content", "ts"}`
(no `event:` field), sends `: keepalive` comments during silences, and ends with a
`done` event (after an `error` event when generation failed). Replies are generated
by a worker into Redis: every SSE response names its reply's URL in `Content-Location`,
and a GET of that URL with `Last-Event-ID` resumes after that event (without it, the
whole reply is replayed). A reply that expired answers one `expired` event.
"""


def create_app(settings: Settings, queue: ReplyQueue | None = None) -> FastAPI:
    """Build the app (one per server process); ``queue`` overrides the Redis client of the settings."""
    share = settings.one_process_share()
    queue = queue or ReplyQueue(settings)
    state = AppState(
        settings=share,
        store=thread_store(settings),
        queue=queue,
        hub=Hub(queue),
        probe_limiter=RateLimiter(share.probe_rate_per_s, max_keys=share.rate_limit_clients),
        chat_limiter=RateLimiter(
            share.chat_rate_per_s, burst=share.chat_burst, max_keys=share.rate_limit_clients
        ),
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        reason = (
            state.store.not_writable_reason()
            or configuration_problem(settings)
            or await state.queue.not_ready_reason()
        )
        log.info("provider %s (in the worker), data dir %s", settings.provider, settings.data_dir)
        if settings.auth_off:
            log.warning("BACKEND_AUTH=off: anyone who reaches this server can chat")
        if reason:
            log.warning("not ready: %s", reason)
        yield
        await state.hub.close()
        await state.queue.aclose()

    app = FastAPI(
        title="Chat backend",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        # No tracing/metrics wrappers around send: streams go straight out.
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
    )
    app.state.backend = state
    app.add_exception_handler(RequestValidationError, short_validation_error)  # type: ignore[arg-type]
    for module in (health, chat, probe):
        app.include_router(module.router)
    app.add_middleware(RequestGuard, state=state)
    return app


async def short_validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    """A 422 of bounded size that never echoes the input (FastAPI's default does both)."""
    errors = exc.errors()
    detail = [
        {
            "type": str(error.get("type", ""))[:MAX_ERROR_TEXT],
            "loc": _location(error),
            "msg": str(error.get("msg", ""))[:MAX_ERROR_TEXT],
        }
        for error in errors[:MAX_REPORTED_ERRORS]
    ]
    return JSONResponse({"detail": detail, "errors": len(errors)}, status_code=422)


def _location(error: dict[str, object]) -> list[str | int]:
    """Where the error is; an unknown key is the client's text, so it is not repeated."""
    loc = [part if isinstance(part, int) else str(part)[:MAX_ERROR_TEXT]
           for part in error.get("loc", ())][:8]  # type: ignore[attr-defined]  # fmt: skip
    if error.get("type") == "extra_forbidden" and loc:
        loc[-1] = "(unknown field)"
    return loc
