"""Programmatic uvicorn: settings in, a server that ends streams on shutdown."""

from __future__ import annotations

import logging
import socket

import uvicorn
from fastapi import FastAPI

from .asgi import TransportAbortMiddleware
from .settings import Settings
from .state import AppState


class BackendServer(uvicorn.Server):
    """Tell open streams the server is going away before uvicorn waits for them.

    Uvicorn only runs the lifespan shutdown after every connection closed or
    BACKEND_GRACEFUL_SHUTDOWN_S passed; streams that wait for that are cut
    without a final event. Setting the app's shutdown event first lets each
    stream send `error` + `done` and finish within the grace period.
    """

    def __init__(self, config: uvicorn.Config, state: AppState) -> None:
        super().__init__(config)
        self.app_state = state

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.app_state.begin_shutdown()
        await super().shutdown(sockets=sockets)


def build_server(settings: Settings, app: FastAPI) -> BackendServer:
    config = uvicorn.Config(
        TransportAbortMiddleware(app),
        host=settings.host,
        port=settings.port,
        http="h11",
        loop="asyncio",
        lifespan="on",
        proxy_headers=True,
        forwarded_allow_ips=settings.forwarded_allow_ips,
        timeout_keep_alive=settings.keepalive_s,
        timeout_graceful_shutdown=settings.graceful_shutdown_s,
        log_level=settings.log_level,
        access_log=settings.log_level == "debug",
        server_header=False,
        log_config=None,  # uvicorn logs through the root logger set up below
    )
    state: AppState = app.state.backend
    return BackendServer(config, state)


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if level != "debug":  # one INFO line per provider request is noise
        logging.getLogger("httpx2").setLevel(logging.WARNING)
