"""Optional shared-token auth for the chat endpoints (BACKEND_AUTH_TOKEN)."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, status
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBearer

from .state import AppState, get_state

SESSION_COOKIE = "backend_session"

_bearer = HTTPBearer(auto_error=False, description="BACKEND_AUTH_TOKEN, when set")
_cookie = APIKeyCookie(
    name=SESSION_COOKIE, auto_error=False, description="BACKEND_AUTH_TOKEN, for EventSource"
)


def token_matches(supplied: str | None, expected: str) -> bool:
    return supplied is not None and hmac.compare_digest(supplied.encode(), expected.encode())


def require_auth(
    state: Annotated[AppState, Depends(get_state)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    cookie: Annotated[str | None, Depends(_cookie)],
) -> None:
    """Pass when auth is off, or the bearer token or session cookie matches."""
    expected = state.settings.auth_token
    if expected is None:
        return
    if token_matches(bearer.credentials if bearer else None, expected):
        return
    if token_matches(cookie, expected):
        return
    raise HTTPException(
        status.HTTP_401_UNAUTHORIZED,
        detail="missing or invalid credentials",
        headers={"WWW-Authenticate": "Bearer"},
    )
