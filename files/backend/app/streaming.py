"""Turn an async iterator of text tokens into this backend's SSE byte stream.

The token source runs in its own task feeding an inbox, so the writer can
interleave keepalive comments, notice server shutdown, and enforce an idle
timeout without ever cancelling the source mid-token. When the byte stream is
closed or cancelled (client gone), the source task is cancelled with it.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Literal

from .providers import ProviderError
from .sse import KEEPALIVE, OPEN, Content, EventType, encode_event

log = logging.getLogger(__name__)

# Pause between the two halves of an event split inside a character, so each
# half leaves in its own write (and TCP segment), not coalesced into one.
SPLIT_PAUSE_S = 0.002
SHUTDOWN_MESSAGE = "the server is shutting down; reconnect to continue"

Outcome = Literal["complete", "error", "interrupted"]


@dataclass(slots=True)
class StreamResult:
    """What a stream produced; filled in as it goes, read after it ends."""

    parts: list[str] = field(default_factory=list)
    outcome: Outcome = "interrupted"  # until the stream ends on its own
    error: str | None = None

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def summary(self) -> dict[str, object]:
        """Content of the done event: lets a client verify what it reassembled."""
        data = self.text.encode()
        return {"tokens": len(self.parts), "sha256": hashlib.sha256(data).hexdigest(),
                "bytes": len(data)}  # fmt: skip


@dataclass(frozen=True, slots=True)
class StreamOptions:
    heartbeat_s: float
    idle_timeout_s: float | None = None  # max wait for the next token
    split_multibyte: bool = False  # write multi-byte events in two halves
    preface: Sequence[tuple[EventType, Content]] = ()  # events before the tokens


@dataclass(frozen=True, slots=True)
class _Token:
    text: str


@dataclass(frozen=True, slots=True)
class _End:
    outcome: Outcome = "complete"
    error: str | None = None


class _Keepalive:
    pass


_Item = _Token | _End


def split_inside_character(data: bytes) -> tuple[bytes, bytes] | None:
    """Split ``data`` at the UTF-8 continuation byte nearest its middle."""
    continuation = [i for i, byte in enumerate(data) if byte & 0xC0 == 0x80]
    if not continuation:
        return None
    cut = min(continuation, key=lambda i: abs(i - len(data) // 2))
    return data[:cut], data[cut:]


async def sse_stream(
    tokens: AsyncIterator[str],
    *,
    thread_id: str,
    options: StreamOptions,
    shutdown: asyncio.Event,
    result: StreamResult | None = None,
) -> AsyncIterator[bytes]:
    """Yield the complete SSE stream: open, events, keepalives, done."""
    result = StreamResult() if result is None else result
    inbox: asyncio.Queue[_Item] = asyncio.Queue()
    workers = (
        asyncio.create_task(_pump(tokens, inbox), name=f"tokens:{thread_id}"),
        asyncio.create_task(_on_shutdown(shutdown, inbox), name=f"shutdown:{thread_id}"),
    )
    ids = itertools.count(1)
    try:
        yield OPEN
        for kind, content in options.preface:
            yield encode_event(next(ids), kind, thread_id, content)
        end = _End()
        async with aclosing(_receive(inbox, options)) as items:
            async for item in items:
                if isinstance(item, _Keepalive):
                    yield KEEPALIVE
                elif isinstance(item, _Token):
                    result.parts.append(item.text)
                    event = encode_event(next(ids), "token", thread_id, item.text)
                    async for chunk in _writes(event, split=options.split_multibyte):
                        yield chunk
                else:
                    end = item
        if end.error is not None:
            yield encode_event(next(ids), "error", thread_id, end.error)
        yield encode_event(next(ids), "done", thread_id, result.summary())
        result.outcome, result.error = end.outcome, end.error
    finally:
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)


async def _receive(
    inbox: asyncio.Queue[_Item], options: StreamOptions
) -> AsyncGenerator[_Item | _Keepalive, None]:
    """Items from the inbox, a keepalive after each heartbeat of silence, then _End."""
    loop = asyncio.get_running_loop()
    last_write = last_token = loop.time()
    idle = options.idle_timeout_s
    while True:
        deadline = last_write + options.heartbeat_s
        if idle is not None:
            deadline = min(deadline, last_token + idle)
        try:
            async with asyncio.timeout_at(deadline):
                item = await inbox.get()
        except TimeoutError:
            if idle is not None and loop.time() - last_token >= idle:
                yield _End("error", f"the model timed out (nothing received for {idle:g}s)")
                return
            yield _Keepalive()
            last_write = loop.time()
            continue
        yield item
        if isinstance(item, _End):
            return
        last_write = last_token = loop.time()


async def _writes(event: bytes, *, split: bool) -> AsyncIterator[bytes]:
    """The event as one write, or as two split inside a multi-byte character."""
    halves = split_inside_character(event) if split else None
    if halves is None:
        yield event
        return
    yield halves[0]
    await asyncio.sleep(SPLIT_PAUSE_S)
    yield halves[1]


async def _pump(tokens: AsyncIterator[str], inbox: asyncio.Queue[_Item]) -> None:
    """Move tokens into the inbox, then exactly one _End (the inbox is unbounded)."""
    end = _End("error", "generation stopped unexpectedly")
    try:
        async for token in tokens:
            inbox.put_nowait(_Token(token))
        end = _End()
    except ProviderError as exc:
        end = _End("error", str(exc))
    except Exception as exc:  # a bug or unexpected failure: still end the stream cleanly
        log.exception("token source failed")
        end = _End("error", f"internal error while generating the reply ({type(exc).__name__})")
    finally:
        inbox.put_nowait(end)  # harmless after our own cancellation: nobody reads it
        aclose = getattr(tokens, "aclose", None)
        if aclose is not None:
            await aclose()


async def _on_shutdown(shutdown: asyncio.Event, inbox: asyncio.Queue[_Item]) -> None:
    await shutdown.wait()
    await inbox.put(_End("interrupted", SHUTDOWN_MESSAGE))
