"""Deliver replies from Redis as SSE: one blocking XREAD per process (the hub) for all its clients.

Each client follows one reply with a cursor of its own (the last id it was sent), so two
clients on one reply, or one resuming and one live, each get every event once. The hub reads
every followed reply from the smallest cursor on it and hands each client what lies past its
own. A client joining waits at most HUB_BLOCK_MS for the next read to include it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal

from redis.exceptions import RedisError

from .replies import DONE_PREFIX, Meta, QueueUnavailableError, ReplyQueue, reply_key
from .sse import KEEPALIVE, OPEN, event_json, frame, now_ms
from .streaming import StreamResult

log = logging.getLogger(__name__)

HUB_BLOCK_MS = 20
HUB_COUNT = 500  # entries per reply and read: a long replay comes in a few reads
BACKOFF_S = (0.1, 0.2, 0.5, 1.0, 2.0)  # between reads while Redis is away, the last one repeated
# Pause between the two halves of an event split inside a character, so each
# half leaves in its own write (and TCP segment), not coalesced into one.
SPLIT_PAUSE_S = 0.002
WORKER_GONE = "the worker stopped while generating this reply"
NOT_TAKEN = "no worker took this reply in time; try again"
REDIS_GONE = "the reply queue (Redis) is unavailable; reconnect to continue"
EXPIRED = "this reply has expired; reload the thread"

Entries = list[tuple[int, str]]
ReplyState = Literal["gone", "finished", "ended", "running"]


@dataclass(eq=False, slots=True)
class Follower:
    """One client's place in one reply: entries past ``cursor`` arrive in ``inbox``; None ends it."""

    key: str
    cursor: int
    inbox: asyncio.Queue[Entries | None] = field(default_factory=asyncio.Queue)


class Hub:
    """One XREAD BLOCK over every reply this process delivers."""

    def __init__(self, queue: ReplyQueue) -> None:
        self.queue = queue
        self.followers: dict[str, set[Follower]] = {}
        self.down_since: float | None = None  # loop time of the first failed read of an outage
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def follow(self, key: str, cursor: int) -> Follower:
        follower = Follower(key, cursor)
        if self._closed:
            follower.inbox.put_nowait(None)
            return follower
        self.followers.setdefault(key, set()).add(follower)
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="hub")
        self._wake.set()
        return follower

    def leave(self, follower: Follower) -> None:
        group = self.followers.get(follower.key)
        if group is not None:
            group.discard(follower)
            if not group:
                del self.followers[follower.key]

    async def close(self) -> None:
        """End every delivery now (the process is stopping); the replies go on in Redis."""
        self._closed = True
        for group in self.followers.values():
            for follower in group:
                follower.inbox.put_nowait(None)
        self.followers.clear()
        self._wake.set()
        if self._task is not None:
            # The loop ends on _closed too: a cancellation that lands inside redis-py's XREAD is
            # at times swallowed (it surfaces as a connection error), and the hub then waited for
            # its next follower forever; uvicorn never shut down and docker stop killed it.
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        failures = 0
        loop = asyncio.get_running_loop()
        while not self._closed:
            if not self.followers:
                self._wake.clear()
                await self._wake.wait()
                continue  # closed, or a follower came (and may have left again)
            cursors = {key: min(f.cursor for f in group) for key, group in self.followers.items()}
            try:
                found = await self.queue.read(cursors, count=HUB_COUNT, block_ms=HUB_BLOCK_MS)
            except (RedisError, OSError) as exc:
                if self.down_since is None:
                    self.down_since = loop.time()
                    log.warning("redis unavailable, retrying: %s", exc)
                await asyncio.sleep(BACKOFF_S[min(failures, len(BACKOFF_S) - 1)])
                failures += 1
                continue
            except Exception:  # a bug must not leave every delivery of this process waiting forever
                log.exception("hub read failed")
                await asyncio.sleep(BACKOFF_S[-1])
                continue
            if self.down_since is not None:
                log.info("redis is back")
            self.down_since, failures = None, 0
            for key, entries in found:
                self._hand_out(key, entries)

    def _hand_out(self, key: str, entries: Entries) -> None:
        for follower in self.followers.get(key, ()):
            fresh = [entry for entry in entries if entry[0] > follower.cursor]
            # Ids follow each other; a follower that joined during this read (behind its first
            # entry) waits for the next one, which starts from its cursor.
            if fresh and fresh[0][0] == follower.cursor + 1:
                follower.cursor = fresh[-1][0]
                follower.inbox.put_nowait(fresh)


@dataclass(frozen=True, slots=True)
class DeliveryOptions:
    heartbeat_s: float
    lease_s: float  # silence after which a reply's worker is checked on
    unclaimed_s: float  # how long a reply may wait for a worker to take it
    outage_s: float  # how long Redis may be away before the stream ends with an error
    split_multibyte: bool = False  # write multi-byte events in two halves (the probe)


async def deliver(
    hub: Hub, reply: str, meta: Meta, after: int, options: DeliveryOptions
) -> AsyncIterator[bytes]:
    """The SSE stream of a reply from after event ``after``: open, events, keepalives, to done.

    Ends early without done when the process stops (the client resumes elsewhere) or
    Redis stays away longer than ``outage_s`` (an error event without id).
    """
    follower = hub.follow(reply_key(reply), after)
    watch = _Watch(hub, reply, meta, follower, options, asyncio.get_running_loop())
    try:
        yield OPEN
        while True:
            try:
                async with asyncio.timeout_at(watch.deadline()):
                    entries = await follower.inbox.get()
            except TimeoutError:
                chunk, end = await watch.silence()
                if chunk:
                    yield chunk
                if end:
                    return
                continue
            if entries is None:
                return
            for event_id, data in entries:
                async for chunk in _writes(frame(event_id, data), split=options.split_multibyte):
                    yield chunk
                if data.startswith(DONE_PREFIX):
                    return
            watch.wrote(quiet=False)
    finally:
        hub.leave(follower)


@dataclass(slots=True)
class _Watch:
    """What a delivery does when nothing arrives: heartbeats, a look at the reply, an outage's end."""

    hub: Hub
    reply: str
    meta: Meta
    follower: Follower
    options: DeliveryOptions
    loop: asyncio.AbstractEventLoop
    last_write: float = 0.0
    quiet_since: float = 0.0  # the last entry, or the last look at the reply

    def __post_init__(self) -> None:
        self.last_write = self.quiet_since = self.loop.time()

    def wrote(self, *, quiet: bool) -> None:
        self.last_write = self.loop.time()
        if not quiet:
            self.quiet_since = self.last_write

    def deadline(self) -> float:
        deadline = min(self.last_write + self.options.heartbeat_s, self.quiet_since + self.options.lease_s)
        if self.hub.down_since is not None:
            deadline = min(deadline, self.hub.down_since + self.options.outage_s)
        return deadline

    async def silence(self) -> tuple[bytes | None, bool]:
        """(what to write, whether the stream ends) once a deadline passed."""
        now, thread = self.loop.time(), self.meta.thread_id
        if self.hub.down_since is not None and now - self.hub.down_since >= self.options.outage_s:
            return frame(None, event_json("error", thread, REDIS_GONE)), True
        if now - self.quiet_since >= self.options.lease_s:
            self.quiet_since = now  # while Redis is away, the next look waits for it
            if self.hub.down_since is None:
                state = await _check_on(self.hub.queue, self.reply, self.follower.cursor, self.options)
                if state is not None:
                    return (frame(None, event_json("expired", thread, EXPIRED)) if state == "gone" else None), True
        if now - self.last_write >= self.options.heartbeat_s:
            self.wrote(quiet=True)
            return KEEPALIVE, False
        return None, False


def expired_stream(thread_id: str, content: str = EXPIRED) -> bytes:
    """The whole body for a reply that expired or never was: open, one event without id."""
    return OPEN + frame(None, event_json("expired", thread_id, content))


async def _check_on(queue: ReplyQueue, reply: str, cursor: int, options: DeliveryOptions) -> Literal["gone", "past the end"] | None:
    """A quiet reply, looked at: gone from Redis (a restart without its data), or already sent
    to its done (a client that resumed after it); else ended if it was abandoned (which the
    hub then delivers)."""
    try:
        state, last = await settle(queue, reply, unclaimed_s=options.unclaimed_s)
    except (RedisError, OSError, QueueUnavailableError) as exc:  # the hub notices the outage too
        log.warning("reply %s: cannot check on its worker: %s", reply, exc)
        return None
    if state == "gone":
        return "gone"
    if state == "finished" and cursor >= last:
        return "past the end"
    return None


async def settle(queue: ReplyQueue, reply: str, *, unclaimed_s: float) -> tuple[ReplyState, int]:
    """Where a reply stands, and the n of its last entry: gone from Redis, finished (``done``
    last), ended by this call, or still running.

    An unfinished reply is ended with error + done when its worker is gone (no lease) or none
    took it within ``unclaimed_s``. Whoever finds such a reply first ends it: a delivery process
    whose client waits on it, or a worker's sweep when no client does. The rescue append
    refuses while a lease is held and when the reply moved past ``last``, so a live worker
    keeps its reply and it ends once.
    """
    meta = await queue.meta(reply)
    if meta is None:
        return "gone", 0
    last, data = await queue.last_entry(reply)
    if data is not None and data.startswith(DONE_PREFIX):
        return "finished", last
    ended = await _end_abandoned(queue, reply, meta, last, unclaimed_s=unclaimed_s)
    return ("ended" if ended else "running"), last


async def _end_abandoned(queue: ReplyQueue, reply: str, meta: Meta, last: int, *, unclaimed_s: float) -> bool:
    """End an unfinished reply with error + done if abandoned (see settle); True when this call did."""
    if await queue.lease_held(reply):
        return False
    waited_s = (now_ms() - meta.created_ms) / 1000
    if last == 0 and waited_s < unclaimed_s:
        return False
    message = NOT_TAKEN if last == 0 else WORKER_GONE
    result = StreamResult(parts=_tokens(await queue.events(reply)))
    closing = [event_json("error", meta.thread_id, message), event_json("done", meta.thread_id, result.summary())]
    if not (await queue.append(reply, last, closing, rescue=True)).ok:
        return False
    log.warning("reply %s: %s; ended it", reply, message)
    return True


def _tokens(events: list[str]) -> list[str]:
    parts = []
    for data in events:
        event = json.loads(data)
        if event.get("type") == "token":
            parts.append(str(event["content"]))
    return parts


def split_inside_character(data: bytes) -> tuple[bytes, bytes] | None:
    """Split ``data`` at the UTF-8 continuation byte nearest its middle."""
    continuation = [i for i, byte in enumerate(data) if byte & 0xC0 == 0x80]
    if not continuation:
        return None
    cut = min(continuation, key=lambda i: abs(i - len(data) // 2))
    return data[:cut], data[cut:]


async def _writes(event: bytes, *, split: bool) -> AsyncIterator[bytes]:
    """The event as one write, or as two split inside a multi-byte character."""
    halves = split_inside_character(event) if split else None
    if halves is None:
        yield event
        return
    yield halves[0]
    await asyncio.sleep(SPLIT_PAUSE_S)
    yield halves[1]
