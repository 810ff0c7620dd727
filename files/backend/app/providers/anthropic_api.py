"""Anthropic Messages API provider (official SDK, streaming)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import anthropic
import httpx2
from anthropic.types import AssistantMessageParam, MessageParam, UserMessageParam

from ..settings import Settings
from .base import MISSING_KEY, ProviderError, Turn

MAX_HISTORY_TURNS = 40

# Most specific first: OverloadedError is an InternalServerError, etc.
_STATUS_MESSAGES: tuple[tuple[type[anthropic.APIStatusError], str], ...] = (
    (anthropic.AuthenticationError, "Anthropic rejected the API key; check ANTHROPIC_API_KEY"),
    (anthropic.PermissionDeniedError, "the API key may not use this model or feature"),
    (anthropic.NotFoundError, "unknown model or endpoint; check ANTHROPIC_MODEL"),
    (anthropic.RateLimitError, "rate limited by the Anthropic API; try again shortly"),
    (anthropic.OverloadedError, "the Anthropic API is overloaded; try again shortly"),
)
_ERROR_TYPE_MESSAGES = {  # errors sent inside a 200 stream carry only their type
    "overloaded_error": "the Anthropic API is overloaded; try again shortly",
    "rate_limit_error": "rate limited by the Anthropic API; try again shortly",
}


def to_messages(conversation: Sequence[Turn]) -> list[MessageParam]:
    """Recent non-empty turns, same-role neighbours merged, starting with a user turn."""
    merged: list[Turn] = []
    for turn in conversation[-MAX_HISTORY_TURNS:]:
        if not turn.content:
            continue
        if merged and merged[-1].role == turn.role:
            merged[-1] = Turn(turn.role, f"{merged[-1].content}\n\n{turn.content}")
        else:
            merged.append(turn)
    while merged and merged[0].role != "user":
        merged.pop(0)
    return [
        UserMessageParam(role="user", content=turn.content)
        if turn.role == "user"
        else AssistantMessageParam(role="assistant", content=turn.content)
        for turn in merged
    ]


def timed_out_message(timeout_s: float) -> str:
    return f"the Anthropic API timed out (nothing received for {timeout_s:g}s); try again"


def describe_error(exc: anthropic.APIError, timeout_s: float) -> str:
    """A clear, user-facing sentence for an SDK error (no secrets, no stack)."""
    if isinstance(exc, anthropic.APITimeoutError):
        return timed_out_message(timeout_s)
    if isinstance(exc, anthropic.APIConnectionError):
        return "could not reach the Anthropic API (connection error); try again"
    if not isinstance(exc, anthropic.APIStatusError):
        return f"Anthropic API error: {exc.message}"
    summary = next(
        (text for kind, text in _STATUS_MESSAGES if isinstance(exc, kind)),
        _ERROR_TYPE_MESSAGES.get(exc.type or "", "the Anthropic API returned an error"),
    )
    return f"{summary} ({exc.status_code} {exc.type or 'error'}: {exc.api_message or 'no details'})"


class AnthropicProvider:
    name = "anthropic"

    def __init__(self, settings: Settings) -> None:
        self.model = settings.anthropic_model
        self.max_tokens = settings.anthropic_max_tokens
        self.timeout_s = settings.provider_timeout_s
        self.client: anthropic.AsyncAnthropic | None = None
        if settings.anthropic_api_key:
            # The key is passed explicitly so the SDK never goes looking for
            # profiles or other credentials on disk (read-only image).
            self.client = anthropic.AsyncAnthropic(
                api_key=settings.anthropic_api_key,
                base_url=settings.anthropic_base_url,
                timeout=settings.provider_timeout_s,
                max_retries=settings.anthropic_max_retries,
            )

    def not_ready_reason(self) -> str | None:
        return None if self.client else MISSING_KEY

    async def stream(self, conversation: Sequence[Turn]) -> AsyncIterator[str]:
        if self.client is None:
            raise ProviderError("the anthropic provider is not configured: set ANTHROPIC_API_KEY")
        messages = to_messages(conversation)
        if not messages:
            raise ProviderError("nothing to send: the conversation has no user message")
        try:
            async with self.client.messages.stream(
                model=self.model, max_tokens=self.max_tokens, messages=messages
            ) as stream:
                async for text in stream.text_stream:
                    yield text
        except anthropic.APIError as exc:
            raise ProviderError(describe_error(exc, self.timeout_s)) from exc
        # The SDK maps transport errors of the initial request; ones raised
        # while reading the body come through as httpx2's own.
        except httpx2.TimeoutException as exc:
            raise ProviderError(timed_out_message(self.timeout_s)) from exc
        except httpx2.TransportError as exc:
            raise ProviderError(f"lost the connection to the Anthropic API ({exc!r})") from exc

    async def aclose(self) -> None:
        if self.client is not None:
            await self.client.close()
