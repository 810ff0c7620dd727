"""Programmatic uvicorn: settings in, a server that ends streams on shutdown."""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
from typing import Any

import h11
import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

from .asgi import TransportAbortMiddleware
from .settings import Settings, SettingsError
from .state import AppState


class BackendServer(uvicorn.Server):
    """End open streams before uvicorn waits for them.

    Uvicorn only runs the lifespan shutdown after every connection closed or
    BACKEND_GRACEFUL_SHUTDOWN_S passed. The replies themselves go on in Redis,
    so each stream just ends at once (a clean end of the chunked body); the
    client reconnects with Last-Event-ID to another process or the restarted one.
    """

    def __init__(self, config: uvicorn.Config, state: AppState) -> None:
        super().__init__(config)
        self.app_state = state

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await self.app_state.hub.close()
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
        limit_concurrency=settings.one_process_share().max_connections,
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


def load_settings() -> Settings | None:
    """The settings from the environment, or None after saying on stderr which one is wrong."""
    try:
        return Settings.from_env()
    except SettingsError as exc:
        print(f"backend: invalid configuration: {exc}", file=sys.stderr)
        return None


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A listening socket that the other processes bind too: the kernel spreads connections over them."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if level != "debug":  # one INFO line per provider request is noise
        logging.getLogger("httpx2").setLevel(logging.WARNING)
