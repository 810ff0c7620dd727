"""Model providers behind one interface: an async iterator of text tokens."""

from __future__ import annotations

from ..settings import Settings
from .base import MISSING_KEY, Provider, ProviderError, Turn
from .demo import DemoProvider

__all__ = ["Provider", "ProviderError", "Turn", "build_provider", "configuration_problem"]


def configuration_problem(settings: Settings) -> str | None:
    """Why the configured provider cannot serve, told without building it (the API processes)."""
    if settings.provider == "anthropic" and not settings.anthropic_api_key:
        return MISSING_KEY
    return None


def build_provider(settings: Settings) -> Provider:
    if settings.provider == "anthropic":
        # Imported lazily: the SDK is slow to import and the demo needs none of it.
        from .anthropic_api import AnthropicProvider  # noqa: PLC0415

        return AnthropicProvider(settings)
    return DemoProvider(settings.token_interval_ms)
