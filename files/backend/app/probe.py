"""Token source of the stream probe: known content, so clients can verify it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

# ASCII, right-to-left Arabic, emoji (one a ZWJ sequence), CJK: the multi-byte
# ones are written in two halves split inside a character.
PROBE_TOKENS: tuple[str, ...] = (
    "Hello",
    " world",
    " مرحبا",
    " 🚀",
    " 👩‍💻",
    " 你好世界",
    " stream",
    " ok",
)
_FILLER = b"0123456789abcdefghijklmnopqrstuvwxyz"


@dataclass(frozen=True, slots=True)
class ProbeParams:
    tokens: int = 20
    interval_ms: int = 50
    silence_ms: int = 0
    big_kb: int = 0

    def duration_ms(self) -> int:
        """How long the stream lasts, pauses and silence together."""
        return (self.tokens - 1) * self.interval_ms + self.silence_ms


def big_content(kib: int) -> str:
    """ASCII text of exactly ``kib`` KiB."""
    size = kib * 1024
    return (_FILLER * (size // len(_FILLER) + 1))[:size].decode()


def probe_content(params: ProbeParams, index: int) -> str:
    """The content of token ``index`` (the big one replaces the middle token)."""
    if params.big_kb and index == params.tokens // 2:
        return big_content(params.big_kb)
    return PROBE_TOKENS[index % len(PROBE_TOKENS)]


def probe_contents(params: ProbeParams) -> list[str]:
    """Every token's content, in order."""
    return [probe_content(params, i) for i in range(params.tokens)]


async def probe_tokens(params: ProbeParams) -> AsyncIterator[str]:
    """Yield the contents paced by interval_ms, silent silence_ms in the middle.

    Each content is built when it is sent: a stream waiting for its big event
    holds none of it (many open probes cost no memory up front).
    """
    middle = params.tokens // 2
    for index in range(params.tokens):
        if index:
            await asyncio.sleep(params.interval_ms / 1000)
        if index == middle and params.silence_ms:
            await asyncio.sleep(params.silence_ms / 1000)
        yield probe_content(params, index)
