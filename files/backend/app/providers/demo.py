"""Deterministic offline provider: echoes the prompt word by word, paced."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Sequence

from .base import Turn

_WORD = re.compile(r"\s*\S+")


def demo_reply(prompt: str) -> str:
    return (
        f"You said: {prompt.strip()}\n\n"
        "This is the demo provider: a deterministic reply streamed word by word, "
        "with no model and no network behind it."
    )


def demo_tokens(prompt: str) -> list[str]:
    """Words with their leading whitespace, so ''.join() rebuilds the reply."""
    return _WORD.findall(demo_reply(prompt))


class DemoProvider:
    name = "demo"

    def __init__(self, interval_ms: int) -> None:
        self.interval_s = interval_ms / 1000

    def not_ready_reason(self) -> str | None:
        return None

    async def stream(self, conversation: Sequence[Turn]) -> AsyncIterator[str]:
        prompt = conversation[-1].content if conversation else ""
        for index, token in enumerate(demo_tokens(prompt)):
            if index:
                await asyncio.sleep(self.interval_s)
            yield token

    async def aclose(self) -> None:
        return None
