"""An API process stops at once even when redis-py swallows the hub's cancellation.

Measured before the fix (tests/nginx/test_nginx_reconnect.py, and 25 restarts of
``python -m app`` with streams open): 7 SIGTERMs of 37 left the API running until
SIGKILL 10 s later, its hub cancelled inside XREAD, the cancellation surfacing as a
connection error, the hub then waiting for a next follower that never came. A browser
reconnecting after its 3 s retry met nginx's 502 and gave up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import cast

from redis.exceptions import ConnectionError as RedisConnectionError

from app.delivery import Hub
from app.replies import ReplyQueue


class SwallowingQueue:
    """A reply queue whose blocking read turns a cancellation into a connection error."""

    def __init__(self) -> None:
        self.reads = 0
        self.second_read = asyncio.Event()  # the hub is inside a read, past its first

    async def read(self, cursors: Mapping[str, int], *, count: int, block_ms: int) -> list[tuple[str, list[tuple[int, str]]]]:
        self.reads += 1
        if self.reads == 2:
            self.second_read.set()
        try:
            await asyncio.sleep(block_ms / 1000)
        except asyncio.CancelledError:
            raise RedisConnectionError("Connection closed by server.") from None
        return []


def test_closing_the_hub_ends_it_even_when_the_cancellation_is_swallowed() -> None:
    async def scenario() -> None:
        queue = SwallowingQueue()
        hub = Hub(cast("ReplyQueue", queue))
        follower = hub.follow("pi5:reply:" + "0" * 32, 0)
        await queue.second_read.wait()
        async with asyncio.timeout(2):
            await hub.close()
        assert follower.inbox.get_nowait() is None, "the delivery was told to end"
        assert hub._task is not None and hub._task.done()

    asyncio.run(scenario())
