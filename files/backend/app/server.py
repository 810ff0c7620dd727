"""Programmatic uvicorn: settings in, a server that ends streams on shutdown."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import h11
import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

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


class HeaderTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose request headers take too long.

    Uvicorn times out idle keep-alive connections but not a request begun and
    never finished (slowloris): each such connection would hold a socket forever.
    """

    header_timeout_s = 10.0  # set per server by build_server

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None

    def data_received(self, data: bytes) -> None:
        if self._header_timer is None and self.conn.their_state is h11.IDLE:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_late)
        super().data_received(data)
        if self._header_timer is not None and self.conn.their_state is not h11.IDLE:
            self._header_timer.cancel()
            self._header_timer = None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        super().connection_lost(exc)

    def _headers_late(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


def build_server(settings: Settings, app: FastAPI) -> BackendServer:
    protocol = type(
        "BackendHttpProtocol", (HeaderTimeoutProtocol,), {"header_timeout_s": settings.header_timeout_s}
    )
    config = uvicorn.Config(
        TransportAbortMiddleware(app),
        host=settings.host,
        port=settings.port,
        http=protocol,
        limit_concurrency=settings.max_connections,
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
