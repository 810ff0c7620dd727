"""Shared-token auth for the chat endpoints (BACKEND_AUTH_TOKEN, unless BACKEND_AUTH=off)."""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import Annotated

from fastapi import Depends, HTTPException, status
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBearer

from .settings import Settings
from .state import AppState, get_state

SESSION_COOKIE = "backend_session"
UNAUTHORIZED = "missing or invalid credentials"

_bearer = HTTPBearer(auto_error=False, description="BACKEND_AUTH_TOKEN")
_cookie = APIKeyCookie(
    name=SESSION_COOKIE, auto_error=False, description="BACKEND_AUTH_TOKEN, for EventSource"
)


def token_matches(supplied: str | None, expected: str) -> bool:
    return supplied is not None and hmac.compare_digest(supplied.encode(), expected.encode())


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else None."""
    scheme, _, token = (authorization or "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def authorized(settings: Settings, bearer: str | None, cookies: Mapping[str, str]) -> bool:
    """True when auth is off by name, or the bearer token or session cookie matches."""
    if settings.auth_off:
        return True
    expected = settings.auth_token
    if expected is None:  # never configured: nobody gets in
        return False
    return token_matches(bearer, expected) or token_matches(cookies.get(SESSION_COOKIE), expected)


def require_auth(
    state: Annotated[AppState, Depends(get_state)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    cookie: Annotated[str | None, Depends(_cookie)],
) -> None:
    """The same rule as the request guard, for the OpenAPI description and defence in depth."""
    cookies = {SESSION_COOKIE: cookie} if cookie is not None else {}
    if not authorized(state.settings, bearer.credentials if bearer else None, cookies):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail=UNAUTHORIZED,
            headers={"WWW-Authenticate": "Bearer"},
        )
