"""Turn an async iterator of text tokens into a reply's events (the worker's side).

The token source runs in its own task feeding an inbox, so the reader can
notice shutdown and enforce an idle timeout without ever cancelling the
source mid-token. When the event iterator is closed or cancelled, the source
task is cancelled with it. Every reply ends with exactly one ``done``,
preceded by ``error`` when generation failed or was stopped.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

from .providers import ProviderError
from .sse import Content, EventType

log = logging.getLogger(__name__)

SHUTDOWN_MESSAGE = "the worker stopped before this reply was finished; send the message again"

Outcome = Literal["complete", "error", "interrupted"]


@dataclass(slots=True)
class StreamResult:
    """What a reply produced; filled in as it goes, read after it ends."""

    parts: list[str] = field(default_factory=list)
    outcome: Outcome = "interrupted"  # until the reply ends on its own
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
    idle_timeout_s: float | None = None  # max wait for the next token
    preface: Sequence[tuple[EventType, Content]] = ()  # events before the tokens
    max_events: int | None = None  # stop with an error past this many events (done included)
    shutdown_message: str = SHUTDOWN_MESSAGE


@dataclass(frozen=True, slots=True)
class Event:
    kind: EventType
    content: Content


@dataclass(frozen=True, slots=True)
class _Token:
    text: str


@dataclass(frozen=True, slots=True)
class _End:
    outcome: Outcome = "complete"
    error: str | None = None


_Item = _Token | _End


async def reply_events(
    tokens: AsyncIterator[str],
    *,
    options: StreamOptions,
    shutdown: asyncio.Event,
    result: StreamResult | None = None,
) -> AsyncGenerator[Event, None]:
    """Yield the reply's events as they come: preface, tokens, optional error, done."""
    result = StreamResult() if result is None else result
    inbox: asyncio.Queue[_Item] = asyncio.Queue()
    workers = (
        asyncio.create_task(_pump(tokens, inbox)),
        asyncio.create_task(_on_shutdown(shutdown, inbox, options.shutdown_message)),
    )
    # Room for the tokens once the preface, an error and done are counted.
    room = None if options.max_events is None else options.max_events - len(options.preface) - 2
    try:
        for kind, content in options.preface:
            yield Event(kind, content)
        end = _End()
        async for item in _receive(inbox, options.idle_timeout_s):
            if isinstance(item, _End):
                end = item
            elif room is not None and len(result.parts) >= room:
                end = _End("error", f"the reply is too long (over {room} tokens); it ends here")
                break
            else:
                result.parts.append(item.text)
                yield Event("token", item.text)
        result.outcome, result.error = end.outcome, end.error  # known before done, for whoever stores it
        if end.error is not None:
            yield Event("error", end.error)
        yield Event("done", result.summary())
    finally:
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)


async def _receive(inbox: asyncio.Queue[_Item], idle: float | None) -> AsyncIterator[_Item]:
    """Items from the inbox up to and including the _End (one of timeout when idle too long)."""
    while True:
        try:
            async with asyncio.timeout(idle):
                item = await inbox.get()
        except TimeoutError:
            yield _End("error", f"the model timed out (nothing received for {idle:g}s)")
            return
        yield item
        if isinstance(item, _End):
            return


async def _pump(tokens: AsyncIterator[str], inbox: asyncio.Queue[_Item]) -> None:
    """Move tokens into the inbox, then exactly one _End (the inbox is unbounded)."""
    end = _End("error", "generation stopped unexpectedly")
    try:
        async for token in tokens:
            inbox.put_nowait(_Token(token))
        end = _End()
    except ProviderError as exc:
        end = _End("error", str(exc))
    except Exception as exc:  # a bug or unexpected failure: still end the reply cleanly
        log.exception("token source failed")
        end = _End("error", f"internal error while generating the reply ({type(exc).__name__})")
    finally:
        inbox.put_nowait(end)  # harmless after our own cancellation: nobody reads it
        aclose = getattr(tokens, "aclose", None)
        if aclose is not None:
            await aclose()


async def _on_shutdown(shutdown: asyncio.Event, inbox: asyncio.Queue[_Item], message: str) -> None:
    await shutdown.wait()
    await inbox.put(_End("interrupted", message))
