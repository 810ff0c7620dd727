"""Model providers behind one interface: an async iterator of text tokens."""

from __future__ import annotations

from ..settings import Settings
from .base import Provider, ProviderError, Turn
from .demo import DemoProvider

__all__ = ["Provider", "ProviderError", "Turn", "build_provider"]


def build_provider(settings: Settings) -> Provider:
    if settings.provider == "anthropic":
        # Imported lazily: the SDK is slow to import and the demo needs none of it.
        from .anthropic_api import AnthropicProvider  # noqa: PLC0415

        return AnthropicProvider(settings)
    return DemoProvider(settings.token_interval_ms)
