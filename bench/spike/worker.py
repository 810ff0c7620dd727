"""The spike's worker stand-in: takes replies off ``spike:jobs`` and publishes each token as it is "generated".

Sink ``stream`` (design a): XADD to the reply's Redis Stream, entry id ``<event id>-0``, capped, TTL after done.
Sink ``nchan`` (design b): HTTP POST of the event's JSON to nchan's publisher location, which stores it in
Redis and fans it out to nginx's workers. ``ts`` is taken right before the publish, as the probe does before
its write, so the client's lateness covers the whole hop: worker -> Redis (-> nchan) -> delivery -> nginx.
A publish that fails (Redis restarting) is retried for up to 20 s, so the drill sees what delivery makes of it.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from pi5bench.spike_events import PROBE_TOKENS, done_summary, event_data, stream_id

TTL_S = int(os.environ.get("SPIKE_REPLY_TTL_S", "600"))
PUB = ("127.0.0.1", 8409)
REDIS = aioredis.Redis(host="127.0.0.1", port=6399, decode_responses=True, max_connections=100000)
RETRY_S = 20.0


class NchanPublisher:
    """One keep-alive HTTP/1.1 connection to nchan's publisher location, one POST per event."""

    def __init__(self, reply: str) -> None:
        self.reply = reply
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, data: str) -> None:
        if self.writer is None or self.reader is None:
            self.reader, self.writer = await asyncio.open_connection(*PUB)
        body = data.encode()
        head = (f"POST /pub/{self.reply} HTTP/1.1\r\nHost: pub\r\nContent-Type: application/json\r\n"
                f"Accept: text/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
        self.writer.write(head + body)
        headers = await self.reader.readuntil(b"\r\n\r\n")
        status = int(headers.split(b" ", 2)[1])
        length = 0
        for line in headers.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        await self.reader.readexactly(length)
        if status >= 300:
            raise ConnectionError(f"nchan publisher answered {status}")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


async def _retrying(publish: object, *args: object) -> None:
    give_up = time.monotonic() + RETRY_S
    while True:
        try:
            await publish(*args)  # type: ignore[operator]
            return
        except (OSError, ConnectionError, RedisConnectionError, RedisTimeoutError, asyncio.IncompleteReadError) as exc:
            print(f"publish retried: {type(exc).__name__}", file=sys.stderr, flush=True)  # the drills count these
            if time.monotonic() > give_up:
                raise
            await asyncio.sleep(0.1)


async def _xadd(reply: str, seq: int, data: str, end: bool) -> None:
    fields = {"d": data, "end": "1"} if end else {"d": data}
    try:
        await REDIS.xadd(f"reply:{reply}", fields, id=stream_id(seq), maxlen=10000, approximate=True)
    except ResponseError as exc:  # the entry is there already: a retry after a lost answer
        if "equal or smaller" not in str(exc):
            raise
    if end:
        await REDIS.expire(f"reply:{reply}", TTL_S)


async def generate(job: dict[str, object]) -> None:
    reply, tokens, interval = str(job["reply"]), int(job["tokens"]), int(job["interval_ms"])  # type: ignore[call-overload]
    nchan = NchanPublisher(reply) if job.get("sink") == "nchan" else None

    async def publish(seq: int, kind: str, content: object) -> None:
        async def once() -> None:
            data = event_data(kind, reply, content, time.time() * 1000)
            if nchan is not None:
                try:
                    await nchan.post(data)
                except BaseException:
                    nchan.close()
                    raise
            else:
                await _xadd(reply, seq, data, kind == "done")
        await _retrying(once)

    contents: list[str] = []
    await _retrying(REDIS.sadd, "spike:active", reply)  # replies in generation (a set: a retried add counts once)
    try:
        for index in range(tokens):
            if index:
                await asyncio.sleep(interval / 1000)
            content = PROBE_TOKENS[index % len(PROBE_TOKENS)]
            contents.append(content)
            await publish(index + 1, "token", content)
        await publish(tokens + 1, "done", done_summary(contents))
    except Exception as exc:  # the spike counts it; the real worker publishes an error event
        print(f"reply {reply}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
    finally:
        if nchan is not None:
            nchan.close()
        await _retrying(REDIS.srem, "spike:active", reply)


async def main() -> None:
    tasks: set[asyncio.Task[None]] = set()
    while True:
        try:
            popped = await REDIS.blpop("spike:jobs", timeout=1)
        except (RedisConnectionError, RedisTimeoutError, OSError):
            await asyncio.sleep(0.2)
            continue
        if popped:
            task = asyncio.create_task(generate(json.loads(popped[1])))
            tasks.add(task)
            task.add_done_callback(tasks.discard)


if __name__ == "__main__":
    asyncio.run(main())
