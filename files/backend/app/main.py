"""Application factory."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from . import __version__
from .guard import RequestGuard
from .providers import Provider, build_provider
from .ratelimit import RateLimiter
from .routers import chat, health, probe
from .settings import Settings
from .state import AppState
from .storage import ThreadStore

log = logging.getLogger(__name__)

# A 422 names at most this many errors, each cut short, and never echoes the input.
MAX_REPORTED_ERRORS = 5
MAX_ERROR_TEXT = 120

DESCRIPTION = """\
Streams chat replies as Server-Sent Events. Every stream starts with the comment
`: open`, carries events `id: <n>` + `data: {"type", "threadId", "content", "ts"}`
(no `event:` field), sends `: keepalive` comments during silences, and always ends
with a `done` event (after an `error` event when generation failed).
"""


def create_app(settings: Settings, provider: Provider | None = None) -> FastAPI:
    """Build the app; ``provider`` overrides the one chosen by the settings."""
    state = AppState(
        settings=settings,
        provider=provider or build_provider(settings),
        store=ThreadStore(
            settings.data_dir,
            thread_max_bytes=settings.thread_max_kb * 1024,
            store_max_bytes=settings.store_max_mb * 1024 * 1024,
        ),
        probe_limiter=RateLimiter(settings.probe_rate_per_s, max_keys=settings.rate_limit_clients),
        chat_limiter=RateLimiter(
            settings.chat_rate_per_s, burst=settings.chat_burst, max_keys=settings.rate_limit_clients
        ),
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        reason = state.store.not_writable_reason() or state.provider.not_ready_reason()
        log.info("provider %s, data dir %s", state.provider.name, settings.data_dir)
        if settings.auth_off:
            log.warning("BACKEND_AUTH=off: anyone who reaches this server can chat")
        if reason:
            log.warning("not ready: %s", reason)
        yield
        state.begin_shutdown()
        await state.provider.aclose()

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
