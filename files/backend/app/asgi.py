"""Pure ASGI middleware (no BaseHTTPMiddleware: it would buffer streams)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

ABORT_EXTENSION = "backend.transport_abort"
_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST


def reset_connection(transport: asyncio.Transport) -> None:
    """Drop the connection now: RST, kernel and asyncio buffers discarded."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    transport.abort()


def _abort_for(send: Send) -> Callable[[], None] | None:
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if not isinstance(transport, asyncio.Transport):
        return None
    return lambda: reset_connection(transport)


class TransportAbortMiddleware:
    """Expose ``scope["extensions"][ABORT_EXTENSION]["abort"]`` for HTTP requests.

    Closing a connection whose peer stopped reading is not enough: asyncio
    keeps the socket until its write buffer drains, and then the kernel keeps
    the orphaned socket while unsent data remains, i.e. for as long as the
    peer advertises a zero window. Uvicorn hands the app the bound ``send`` of
    its per-request cycle, which holds the asyncio transport; when it does,
    an abort callable (RST) is published so a stream can really drop a stalled
    client. With another server the extension is absent and the response
    falls back to returning early. Must wrap the app outermost, where ``send``
    is still the server's own.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (abort := _abort_for(send)) is not None:
            scope.setdefault("extensions", {})[ABORT_EXTENSION] = {"abort": abort}
        await self.app(scope, receive, send)
