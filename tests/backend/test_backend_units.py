"""Pure units: encoding, splitting, rate limiting, storage, the stream core."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app.probe import PROBE_TOKENS, ProbeParams, probe_contents
from app.providers import ProviderError, Turn
from app.providers.anthropic_api import to_messages
from app.providers.demo import demo_reply, demo_tokens
from app.ratelimit import RateLimiter, retry_after_seconds
from app.sse import encode_event
from app.storage import StoredMessage, ThreadStore
from app.streaming import (
    SHUTDOWN_MESSAGE,
    StreamOptions,
    StreamResult,
    split_inside_character,
    sse_stream,
)


def test_encode_event_is_one_compact_utf8_data_line() -> None:
    raw = encode_event(7, "token", "t1", 'a\nb 🚀 "q"')
    head, data_line, *rest = raw.split(b"\n")
    assert head == b"id: 7"
    assert rest == [b"", b""]
    assert data_line.startswith(b"data: {")
    payload = json.loads(data_line.removeprefix(b"data: "))
    assert payload["content"] == 'a\nb 🚀 "q"'
    assert "🚀".encode() in data_line  # not \\ud83d escapes
    assert b'"type":"token","threadId":"t1"' in data_line


@pytest.mark.parametrize("text", ["é", "مرحبا", "🚀", "👩\u200d💻", "你好世界", "ab🚀cd"])
def test_split_lands_inside_a_character(text: str) -> None:
    data = encode_event(1, "token", "t", text)
    halves = split_inside_character(data)
    assert halves is not None
    first, second = halves
    assert first + second == data
    with pytest.raises(UnicodeDecodeError):
        first.decode()
    with pytest.raises(UnicodeDecodeError):
        second.decode()


def test_ascii_is_not_split() -> None:
    assert split_inside_character(b"id: 1\ndata: {}\n\n") is None


def test_rate_limiter_bursts_then_refills() -> None:
    now = [100.0]
    limiter = RateLimiter(2, clock=lambda: now[0])
    assert [limiter.acquire("a") for _ in range(2)] == [0.0, 0.0]
    wait = limiter.acquire("a")
    assert wait == pytest.approx(0.5)
    assert retry_after_seconds(wait) == 1
    assert limiter.acquire("b") == 0.0  # per key
    now[0] += 0.5
    assert limiter.acquire("a") == 0.0
    assert limiter.acquire("a") > 0


def test_rate_limiter_zero_disables_and_table_is_bounded() -> None:
    assert all(RateLimiter(0).acquire("x") == 0.0 for _ in range(100))
    now = [0.0]
    limiter = RateLimiter(1, max_keys=10, clock=lambda: now[0])
    for i in range(10):
        limiter.acquire(f"k{i}")
    now[0] += 5  # all buckets refilled: idle clients are forgotten first
    limiter.acquire("new")
    assert len(limiter._buckets) == 1


def test_probe_contents_cycle_and_big_token() -> None:
    contents = probe_contents(ProbeParams(tokens=10, big_kb=2))
    assert contents[:5] == list(PROBE_TOKENS[:5])
    assert len(contents[5].encode()) == 2048
    assert contents[6:] == [PROBE_TOKENS[i % len(PROBE_TOKENS)] for i in range(6, 10)]
    assert any(not t.isascii() for t in PROBE_TOKENS)


def test_demo_tokens_rebuild_the_reply() -> None:
    tokens = demo_tokens("  hello\nthere ")
    assert "".join(tokens) == demo_reply("  hello\nthere ")
    assert all(token.strip() for token in tokens)


def test_anthropic_messages_merge_and_skip_empty_turns() -> None:
    turns = [
        Turn("assistant", "orphan"),
        Turn("user", "a"),
        Turn("assistant", ""),  # a failed reply
        Turn("user", "b"),
        Turn("assistant", "c"),
        Turn("user", "d"),
    ]
    assert to_messages(turns) == [
        {"role": "user", "content": "a\n\nb"},
        {"role": "assistant", "content": "c"},
        {"role": "user", "content": "d"},
    ]


def test_thread_store_round_trip_and_atomic_files(tmp_path: Path) -> None:
    store = ThreadStore(tmp_path)
    assert store.not_writable_reason() is None

    async def scenario() -> None:
        assert await store.load("t1") is None
        await store.append("t1", StoredMessage(role="user", content="héllo", ts=1))
        await asyncio.gather(  # concurrent appends to one thread all land
            *(
                store.append("t1", StoredMessage(role="assistant", content=str(i), ts=2))
                for i in range(10)
            )
        )
        thread = await store.load("t1")
        assert thread is not None
        assert thread.messages[0].content == "héllo"
        assert sorted(m.content for m in thread.messages[1:]) == [str(i) for i in range(10)]

    asyncio.run(scenario())
    files = sorted(p.name for p in (tmp_path / "threads").iterdir())
    assert files == ["t1.json"]  # no temporary files left behind
    on_disk = json.loads((tmp_path / "threads" / "t1.json").read_text())
    assert set(on_disk) == {"threadId", "createdAt", "updatedAt", "messages"}


def test_thread_store_refuses_path_like_ids(tmp_path: Path) -> None:
    store = ThreadStore(tmp_path)
    with pytest.raises(ValueError, match="invalid thread id"):
        asyncio.run(store.append("../x", StoredMessage(role="user", content="x", ts=1)))


def test_unwritable_data_dir_is_reported(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    reason = ThreadStore(tmp_path / "file" / "data").not_writable_reason()
    assert reason is not None
    assert "not writable" in reason


async def collect(
    tokens: AsyncIterator[str],
    options: StreamOptions,
    shutdown: asyncio.Event | None = None,
) -> tuple[list[bytes], StreamResult]:
    result = StreamResult()
    chunks = [
        chunk
        async for chunk in sse_stream(
            tokens,
            thread_id="t",
            options=options,
            shutdown=shutdown or asyncio.Event(),
            result=result,
        )
    ]
    return chunks, result


def parse(chunks: list[bytes]) -> list[dict[str, object]]:
    blocks = b"".join(chunks).split(b"\n\n")
    return [json.loads(b.split(b"data: ", 1)[1]) for b in blocks if b.startswith(b"id: ")]


def test_core_provider_error_becomes_error_then_done() -> None:
    async def failing() -> AsyncIterator[str]:
        yield "partial"
        raise ProviderError("the model refused")

    chunks, result = asyncio.run(collect(failing(), StreamOptions(heartbeat_s=5)))
    evts = parse(chunks)
    assert [e["type"] for e in evts] == ["token", "error", "done"]
    assert evts[1]["content"] == "the model refused"
    assert evts[2]["content"] == {
        "tokens": 1,
        "sha256": hashlib.sha256(b"partial").hexdigest(),
        "bytes": 7,
    }
    assert (result.outcome, result.error, result.text) == (
        "error",
        "the model refused",
        "partial",
    )


def test_core_unexpected_exception_still_ends_with_done() -> None:
    async def buggy() -> AsyncIterator[str]:
        yield "x"
        raise KeyError("boom")

    chunks, result = asyncio.run(collect(buggy(), StreamOptions(heartbeat_s=5)))
    evts = parse(chunks)
    assert [e["type"] for e in evts] == ["token", "error", "done"]
    assert "KeyError" in str(evts[1]["content"])
    assert result.outcome == "error"


def test_core_idle_timeout_gives_up_with_keepalives_before() -> None:
    async def silent() -> AsyncIterator[str]:
        await asyncio.sleep(30)
        yield "never"

    options = StreamOptions(heartbeat_s=0.1, idle_timeout_s=0.45)
    chunks, result = asyncio.run(collect(silent(), options))
    assert 3 <= chunks.count(b": keepalive\n\n") <= 5
    evts = parse(chunks)
    assert [e["type"] for e in evts] == ["error", "done"]
    assert "timed out" in str(evts[0]["content"])
    assert result.outcome == "error"


def test_core_shutdown_interrupts_a_stream() -> None:
    async def scenario() -> tuple[list[bytes], StreamResult]:
        shutdown = asyncio.Event()

        async def endless() -> AsyncIterator[str]:
            while True:
                yield "tok"
                await asyncio.sleep(0.01)

        asyncio.get_running_loop().call_later(0.1, shutdown.set)
        return await collect(endless(), StreamOptions(heartbeat_s=5), shutdown)

    chunks, result = asyncio.run(scenario())
    evts = parse(chunks)
    assert [e["type"] for e in evts][-2:] == ["error", "done"]
    assert evts[-2]["content"] == SHUTDOWN_MESSAGE
    assert result.outcome == "interrupted"
    assert chunks[0] == b": open\n\nretry: 3000\n\n"


def test_core_source_dying_without_an_exception_still_ends_with_done() -> None:
    async def cancelled_inside() -> AsyncIterator[str]:
        yield "x"
        raise asyncio.CancelledError  # e.g. a library cancelling its own work

    chunks, result = asyncio.run(collect(cancelled_inside(), StreamOptions(heartbeat_s=5)))
    evts = parse(chunks)
    assert [e["type"] for e in evts] == ["token", "error", "done"]
    assert evts[1]["content"] == "generation stopped unexpectedly"
    assert result.outcome == "error"
