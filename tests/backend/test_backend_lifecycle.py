"""Stream lifecycles: client gone, client stalled, API or worker stopping, restart."""

from __future__ import annotations

import asyncio
import hashlib
import json
import select
import signal
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import redis

from app.providers import Turn
from app.settings import Settings
from app.streaming import SHUTDOWN_MESSAGE
from tests.backend.backend_client import Block, SSEConnection, comments, events, get_json, post_json
from tests.backend.backend_harness import Spawner, inprocess_backend


class EndlessProvider:
    """Yields a token every ``interval_s`` forever; records how far it got."""

    name = "fake"

    def __init__(self, interval_s: float = 0.02, first_delay_s: float = 0.0) -> None:
        self.interval_s = interval_s
        self.first_delay_s = first_delay_s
        self.yielded = 0
        self.closed = threading.Event()

    def not_ready_reason(self) -> str | None:
        return None

    async def stream(self, conversation: Sequence[Turn]) -> AsyncIterator[str]:
        try:
            await asyncio.sleep(self.first_delay_s)
            while True:
                self.yielded += 1
                yield f" t{self.yielded}"
                await asyncio.sleep(self.interval_s)
        finally:
            self.closed.set()

    async def aclose(self) -> None:
        return None


class FiniteProvider(EndlessProvider):
    """Yields ``count`` tokens, then ends."""

    def __init__(self, count: int, interval_s: float) -> None:
        super().__init__(interval_s)
        self.count = count

    async def stream(self, conversation: Sequence[Turn]) -> AsyncIterator[str]:
        async for token in super().stream(conversation):
            yield token
            if self.yielded == self.count:
                return


def test_a_client_that_leaves_does_not_stop_its_reply(tmp_path: Path) -> None:
    """The reply is generated apart from its delivery: it ends whole and is stored whole."""
    provider = FiniteProvider(count=30, interval_s=0.02)
    settings = Settings(data_dir=tmp_path, auth_off=True, heartbeat_s=5, chat_rate_per_s=0)
    with inprocess_backend(settings, provider) as port:
        conn = post_json(port, "/api/chat/message", {"message": "go", "threadId": "gone"})
        received = []
        for block in conn.iter_blocks():
            if block.is_event and block.data["type"] == "token":
                received.append(block.data["content"])
                if len(received) == 3:
                    break
        conn.close()
        deadline = time.monotonic() + 5
        while True:  # the whole reply is stored once the worker ends it
            _, _, thread = get_json(port, "/api/chat/threads/gone")
            if len(thread["messages"]) == 2 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    reply = thread["messages"][1]
    assert (reply["role"], reply["status"]) == ("assistant", "complete")
    assert reply["content"] == "".join(f" t{i}" for i in range(1, 31))
    assert received == [" t1", " t2", " t3"]
    assert provider.yielded == 30


def test_heartbeat_while_the_model_thinks_and_open_before_it(tmp_path: Path) -> None:
    provider = EndlessProvider(first_delay_s=1.0)
    settings = Settings(data_dir=tmp_path, auth_off=True, heartbeat_s=0.2, graceful_shutdown_s=0)
    with (
        inprocess_backend(settings, provider) as port,
        post_json(port, "/api/chat/message", {"message": "think"}) as conn,
    ):
        blocks = []
        for block in conn.iter_blocks():
            blocks.append(block)
            if block.is_event and block.data["type"] == "token":
                break
    assert blocks[0].raw == b": open"
    status = next(b for b in blocks if b.is_event)
    assert status.data == {**status.data, "type": "status", "content": "generating"}
    assert blocks[-1].at - blocks[0].at > 0.8, "open and status come before the first token"
    assert 3 <= comments(blocks).count("keepalive") <= 7


def test_client_that_stops_reading_is_dropped_after_send_timeout(
    tmp_path: Path,
) -> None:
    """A tiny receive window and a tiny server send buffer fill up at once; the
    server must give up after BACKEND_SEND_TIMEOUT_S and reset the connection."""
    send_timeout = 0.5
    settings = Settings(data_dir=tmp_path, auth_off=True, send_timeout_s=send_timeout, probe_rate_per_s=0)
    with inprocess_backend(settings, sndbuf=4096) as port:
        conn = SSEConnection(
            port,
            "GET",
            "/api/probe/stream?tokens=500&interval_ms=0&big_kb=256",
            rcvbuf=4096,
        )
        poller = select.poll()
        poller.register(conn.sock, select.POLLERR | select.POLLHUP | select.POLLRDHUP)
        ready = poller.poll(10_000)  # never read: wait for the server to hang up
        elapsed = time.monotonic() - conn.started
        conn.close()
    assert ready, "the stalled client was never dropped"
    assert send_timeout * 0.9 <= elapsed < send_timeout + 5


def test_slow_but_reading_client_is_not_dropped(tmp_path: Path) -> None:
    """The send timeout bounds each write, not the stream: ~0.9 s of stream > 0.3 s."""
    settings = Settings(data_dir=tmp_path, auth_off=True, send_timeout_s=0.3, probe_rate_per_s=0)
    with (
        inprocess_backend(settings, sndbuf=4096) as port,
        SSEConnection(port, "GET", "/api/probe/stream?tokens=12&interval_ms=80&big_kb=64") as conn,
    ):
        evts = events(conn.read_all())
    assert evts[-1].data["type"] == "done"
    assert evts[-1].data["content"]["tokens"] == 12


LONG_MESSAGE = " ".join(f"word{i}" for i in range(300))  # ~6 s of reply at 20 ms a token


def first_tokens(conn: SSEConnection, count: int) -> tuple[Iterator[Block], list[Block]]:
    """The stream's blocks from the start to its ``count``-th token, and the iterator for the rest."""
    blocks = conn.iter_blocks()
    seen: list[Block] = []
    for block in blocks:
        seen.append(block)
        if len([b for b in seen if b.is_event and b.data["type"] == "token"]) == count:
            break
    return blocks, seen


def test_stopping_the_api_ends_its_streams_and_the_reply_goes_on(spawn: Spawner) -> None:
    """docker stop of the API container mid-reply: the stream ends cleanly at once, without a
    final event of its own; the reply goes on in Redis and the client resumes on the restarted
    API with Last-Event-ID, getting the rest exactly once."""
    backend = spawn(BACKEND_TOKEN_INTERVAL_MS="20", BACKEND_GRACEFUL_SHUTDOWN_S="20")
    backend.start().wait_ready()
    with post_json(backend.port, "/api/chat/message", {"message": LONG_MESSAGE, "threadId": "api-restart"}) as conn:
        blocks, seen = first_tokens(conn, 3)
        stop_at = time.monotonic()
        assert backend.proc is not None
        backend.proc.terminate()  # SIGTERM, as docker stop
        seen += list(blocks)
        ended = time.monotonic() - stop_at
    assert conn.decoder.finished, "a clean end of the body, not a cut connection"
    assert ended < 8, "streams end at once, not at the graceful-shutdown deadline (20 s)"
    assert {e.data["type"] for e in events(seen)} <= {"status", "token"}, "no error, no done: the reply goes on"
    # uvicorn re-raises the SIGTERM after its graceful shutdown (as PID 1 in a container that is a no-op)
    assert backend.proc.wait(10) in {0, -signal.SIGTERM}

    backend.start_api().wait_ready()
    last_id = events(seen)[-1].id
    with SSEConnection(backend.port, "GET", conn.headers["content-location"],
                       headers={"Last-Event-ID": str(last_id)}) as resumed:
        rest = events(resumed.read_all())
    whole = events(seen) + rest
    assert [e.id for e in whole] == list(range(1, len(whole) + 1)), "nothing missing, nothing twice"
    assert rest[0].id == last_id + 1
    assert whole[-1].data["type"] == "done"
    text = "".join(e.data["content"] for e in whole if e.data["type"] == "token")
    assert whole[-1].data["content"]["sha256"] == hashlib.sha256(text.encode()).hexdigest()
    assert "Traceback" not in backend.log()


def test_stopping_the_worker_ends_running_replies_with_error_then_done(spawn: Spawner) -> None:
    backend = spawn(BACKEND_TOKEN_INTERVAL_MS="20", BACKEND_GRACEFUL_SHUTDOWN_S="1")
    backend.start().wait_ready()
    message = LONG_MESSAGE + " " + LONG_MESSAGE  # ~12 s of reply
    with post_json(backend.port, "/api/chat/message", {"message": message, "threadId": "worker-stop"}) as conn:
        blocks, _ = first_tokens(conn, 3)
        stop_at = time.monotonic()
        assert backend.worker is not None
        backend.worker.terminate()  # SIGTERM, as docker stop
        rest = events(list(blocks))
        ended = time.monotonic() - stop_at
    assert [e.data["type"] for e in rest][-2:] == ["error", "done"]
    assert rest[-2].data["content"] == SHUTDOWN_MESSAGE
    assert 0.9 < ended < 8, "the running reply had BACKEND_GRACEFUL_SHUTDOWN_S (1 s) to finish, then ended"
    assert backend.worker.wait(10) == 0
    lines = (backend.data_dir / "threads" / "worker-stop.jsonl").read_text().splitlines()
    stored = json.loads(lines[-1])  # one JSON line per message, the reply last
    assert (stored["status"], stored["error"]) == ("interrupted", SHUTDOWN_MESSAGE)
    assert "Traceback" not in backend.log()


def test_a_busy_worker_still_stops_within_its_grace(spawn: Spawner) -> None:
    """Every place taken (one chat running, one waiting for it): SIGTERM still ends both at once."""
    backend = spawn(BACKEND_TOKEN_INTERVAL_MS="20", BACKEND_GRACEFUL_SHUTDOWN_S="1",
                    BACKEND_WORKER_CONCURRENCY="1", BACKEND_CHAT_RATE_PER_S="0")  # fmt: skip
    backend.start().wait_ready()
    very_long = LONG_MESSAGE + " " + LONG_MESSAGE + " " + LONG_MESSAGE  # ~18 s of reply
    with post_json(backend.port, "/api/chat/message", {"message": very_long}) as running:
        first_tokens(running, 3)
        waiting = post_json(backend.port, "/api/chat/message", {"message": very_long})  # queued behind it
        waiting.read_head()
        jobs = redis.Redis(port=backend.redis.port, password=backend.redis.password)
        deadline = time.monotonic() + 5
        while jobs.xpending("pi5:jobs", "workers")["pending"] < 2:  # it waits for the only place
            assert time.monotonic() < deadline, "the worker never read the second job"
            time.sleep(0.05)
        stop_at = time.monotonic()
        assert backend.worker is not None
        backend.worker.terminate()
        assert backend.worker.wait(10) == 0
        took = time.monotonic() - stop_at
        ends = [[e.data["type"] for e in events(conn.read_all())][-2:] for conn in (running, waiting)]
        waiting.close()
    assert took < 8, "stopped within its grace (1 s), not when the running reply ended (~18 s)"
    assert ends == [["error", "done"], ["error", "done"]]


def test_a_probe_starts_while_every_chat_place_is_taken(spawn: Spawner) -> None:
    """The owner's stream check must not queue behind chat: one chat running and one waiting for
    the only place (the backlog full), a probe still gets its first token at once."""
    backend = spawn(BACKEND_TOKEN_INTERVAL_MS="20", BACKEND_WORKER_CONCURRENCY="1", BACKEND_CHAT_RATE_PER_S="0")
    backend.start().wait_ready()
    very_long = LONG_MESSAGE + " " + LONG_MESSAGE + " " + LONG_MESSAGE  # ~18 s of reply
    with post_json(backend.port, "/api/chat/message", {"message": very_long}) as running:
        first_tokens(running, 3)
        waiting = post_json(backend.port, "/api/chat/message", {"message": very_long})
        waiting.read_head()
        jobs = redis.Redis(port=backend.redis.port, password=backend.redis.password)
        deadline = time.monotonic() + 5
        while jobs.xpending("pi5:jobs", "workers")["pending"] < 2:  # the second holds the backlog place
            assert time.monotonic() < deadline, "the worker never read the second job"
            time.sleep(0.05)
        with SSEConnection(backend.port, "GET", "/api/probe/stream?tokens=3&interval_ms=0") as probe:
            asked = time.monotonic()
            first_tokens(probe, 1)
            took = time.monotonic() - asked
        waiting.close()
    assert took < 2, f"the probe waited {took:.1f} s behind the chat backlog"


def test_a_thread_takes_one_message_at_a_time(spawn: Spawner) -> None:
    """A message into a thread whose reply is still being written is 409 (with that reply's URL):
    not stored, so a flood into one thread cannot pile up replies its cap never counted. After
    done the thread takes the next; a message refused by the cap leaves the thread free."""
    backend = spawn(BACKEND_TOKEN_INTERVAL_MS="20", BACKEND_CHAT_RATE_PER_S="0", BACKEND_THREAD_MAX_KB="16")
    backend.start().wait_ready()
    with post_json(backend.port, "/api/chat/message", {"message": LONG_MESSAGE, "threadId": "one-at-a-time"}) as first:
        first_tokens(first, 2)
        with post_json(backend.port, "/api/chat/message", {"message": "me too", "threadId": "one-at-a-time"}) as second:
            second.read_head()
            assert second.status == 409
            assert second.headers["content-location"] == first.headers["content-location"]
        assert events(first.read_all())[-1].data["type"] == "done"
    with post_json(backend.port, "/api/chat/message", {"message": "after", "threadId": "one-at-a-time"}) as third:
        assert events(third.read_all())[-1].data["type"] == "done"
    refused = []
    for _ in range(3):  # 8000 characters at a time until the 16 KiB cap refuses one
        with post_json(backend.port, "/api/chat/message", {"message": "x" * 8000, "threadId": "one-at-a-time"}) as big:
            big.read_head()
            refused.append(big.status)
            if big.status == 200:
                big.read_all()
    assert refused[-1] == 413
    db = redis.Redis(port=backend.redis.port, password=backend.redis.password, decode_responses=True)
    claimed = db.get("pi5:thread:one-at-a-time:reply")
    assert isinstance(claimed, str)
    assert not db.exists(f"pi5:reply:{claimed}:meta"), "the refused message left the thread claimed"
    _, _, thread = get_json(backend.port, "/api/chat/threads/one-at-a-time")
    assert [m["content"][:5] for m in thread["messages"] if m["role"] == "user"][:2] == ["word0", "after"]


def test_threads_survive_a_restart_on_the_same_data_dir(spawn: Spawner, tmp_path: Path) -> None:
    """What backup/restore relies on: the data dir alone carries the threads."""
    first = spawn(tmp_path / "volume", BACKEND_TOKEN_INTERVAL_MS="0").start().wait_ready()
    with post_json(first.port, "/api/chat/message", {"message": "keep me"}) as conn:
        thread_id = events(conn.read_all())[0].data["threadId"]
    before = get_json(first.port, f"/api/chat/threads/{thread_id}")[2]
    assert first.stop() in {0, -signal.SIGTERM}

    second = spawn(tmp_path / "volume").start().wait_ready()
    status, _, after = get_json(second.port, f"/api/chat/threads/{thread_id}")
    assert status == 200
    assert after == before
    assert [m["role"] for m in after["messages"]] == ["user", "assistant"]
