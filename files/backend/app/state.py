"""Per-application state shared by the routers (one instance per app, i.e. per process)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from fastapi import Request

from .delivery import Hub
from .ratelimit import RateLimiter
from .replies import ReplyQueue
from .settings import Settings
from .storage import ThreadStore


@dataclass(slots=True)
class AppState:
    settings: Settings  # this process's share of the limits (Settings.one_process_share)
    store: ThreadStore
    queue: ReplyQueue
    hub: Hub
    probe_limiter: RateLimiter
    chat_limiter: RateLimiter
    open_probes: int = 0

    def open_probe(self) -> bool:
        """Count one more open probe stream, unless this process's share of the cap is open."""
        if self.open_probes >= self.settings.probe_max_streams:
            return False
        self.open_probes += 1
        return True

    def close_probe(self) -> None:
        self.open_probes -= 1


def get_state(request: Request) -> AppState:
    return cast("AppState", request.app.state.backend)
