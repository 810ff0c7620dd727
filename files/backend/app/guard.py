"""Checks that cost nothing, made before a request's body is read (pure ASGI).

A hostile client's cheapest attacks are a big or slow body and many requests:
this answers them from the headers alone, before FastAPI reads a byte of the
body: the declared size, the credentials, the client's rate, and where a
browser says the request comes from.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from .auth import UNAUTHORIZED, authorized, bearer_token
from .ratelimit import client_key, retry_after_seconds
from .state import AppState

CHAT_PREFIX = "/api/chat/"
# What browsers send for a request of the page's own origin, or one the user typed.
SAME_SITE_FETCH = frozenset({"same-origin", "none"})


class RequestGuard:
    """Refuse, from the headers alone, what the app would refuse after reading the body."""

    def __init__(self, app: ASGIApp, state: AppState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refusal = self.refusal(Request(scope))
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def refusal(self, request: Request) -> Response | None:
        settings = self.state.settings
        declared = request.headers.get("content-length", "0")
        if not declared.isdigit() or int(declared) > settings.max_body_kb * 1024:
            return _error(413, f"request body over {settings.max_body_kb} KiB")
        if not request.url.path.startswith(CHAT_PREFIX):
            return None
        if not authorized(settings, bearer_token(request.headers.get("authorization")), request.cookies):
            return _error(401, UNAUTHORIZED, {"WWW-Authenticate": "Bearer"})
        if not _same_site(request):
            return _error(403, "cross-site request refused")
        wait_s = self.state.chat_limiter.acquire(client_key(request.client.host if request.client else None))
        if wait_s:
            return _error(429, "rate limit exceeded", {"Retry-After": str(retry_after_seconds(wait_s))})
        return None


def _same_site(request: Request) -> bool:
    """Chat requests come from the page's own origin or from no browser at all.

    A browser sends the session cookie with a cross-site navigation or form
    post; Sec-Fetch-Site (sent by every current browser) says where it came from.
    """
    site = request.headers.get("sec-fetch-site")
    return site is None or site in SAME_SITE_FETCH


def _error(status_code: int, detail: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"detail": detail}, status_code=status_code, headers=headers)
