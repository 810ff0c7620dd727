"""Application factory."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from . import __version__
from .providers import Provider, build_provider
from .ratelimit import RateLimiter
from .routers import chat, health, probe
from .settings import Settings
from .state import AppState
from .storage import ThreadStore

log = logging.getLogger(__name__)

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
        store=ThreadStore(settings.data_dir),
        probe_limiter=RateLimiter(settings.probe_rate_per_s),
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        reason = state.store.not_writable_reason() or state.provider.not_ready_reason()
        log.info("provider %s, data dir %s", state.provider.name, settings.data_dir)
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
    for module in (health, chat, probe):
        app.include_router(module.router)
    return app
