"""Per-application state shared by the routers (one instance per app)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import cast

from fastapi import Request

from .providers import Provider
from .ratelimit import RateLimiter
from .settings import Settings
from .storage import ThreadStore


@dataclass(slots=True)
class AppState:
    settings: Settings
    provider: Provider
    store: ThreadStore
    probe_limiter: RateLimiter
    chat_limiter: RateLimiter
    open_probes: int = 0
    # Set when the server starts shutting down; open streams end with an
    # error event telling the client to reconnect, then done.
    shutting_down: asyncio.Event = field(default_factory=asyncio.Event)

    def begin_shutdown(self) -> None:
        self.shutting_down.set()

    def open_probe(self) -> bool:
        """Count one more open probe stream, unless BACKEND_PROBE_MAX_STREAMS are open."""
        if self.open_probes >= self.settings.probe_max_streams:
            return False
        self.open_probes += 1
        return True

    def close_probe(self) -> None:
        self.open_probes -= 1


def get_state(request: Request) -> AppState:
    return cast("AppState", request.app.state.backend)
