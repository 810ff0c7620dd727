"""The one interface every model provider implements."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

Role = Literal["user", "assistant"]
MISSING_KEY = "ANTHROPIC_API_KEY is not set"


@dataclass(frozen=True, slots=True)
class Turn:
    """One message of the conversation handed to a provider."""

    role: Role
    content: str


class ProviderError(Exception):
    """A failure whose message is safe and useful to show the end user."""


class Provider(Protocol):
    name: str

    def not_ready_reason(self) -> str | None:
        """Why the provider cannot serve requests, or None when it can."""

    def stream(self, conversation: Sequence[Turn]) -> AsyncIterator[str]:
        """Yield the reply's text tokens; raise ProviderError on failure.

        Must stop promptly when the iterator is closed or its task cancelled.
        """

    async def aclose(self) -> None:
        """Release network resources at shutdown."""
