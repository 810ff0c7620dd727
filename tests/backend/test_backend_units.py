"""Pure units: encoding, splitting, rate limiting, storage, the reply core."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app.delivery import split_inside_character
from app.probe import PROBE_TOKENS, ProbeParams, probe_contents
from app.providers import ProviderError, Turn
from app.providers.anthropic_api import to_messages
from app.providers.demo import demo_reply, demo_tokens
from app.ratelimit import RateLimiter, client_key, retry_after_seconds
from app.sse import EventType, event_json, frame
from app.storage import StoredMessage, StoreFullError, ThreadStore
from app.streaming import SHUTDOWN_MESSAGE, StreamOptions, StreamResult, reply_events


def encode_event(event_id: int, kind: EventType, thread_id: str, content: str) -> bytes:
    return frame(event_id, event_json(kind, thread_id, content))


def test_an_event_is_one_compact_utf8_data_line() -> None:
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


def test_an_event_outside_the_order_has_no_id() -> None:
    assert frame(None, '{"type":"expired"}') == b'data: {"type":"expired"}\n\n'


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
    limiter = RateLimiter(1, max_keys=10, clock=lambda: 0.0)
    for i in range(1000):
        limiter.acquire(f"k{i}")
    assert len(limiter) == 10


def test_rate_limiter_flood_of_new_keys_does_not_reset_a_busy_client() -> None:
    """The old table was cleared whole when full: a flood of keys reset everyone's limit."""
    limiter = RateLimiter(1, burst=1, max_keys=100, clock=lambda: 0.0)
    assert limiter.acquire("attacker") == 0.0
    assert limiter.acquire("attacker") > 0  # limited
    for i in range(99):  # fill the table, the limited key seen again in between
        limiter.acquire(f"spoof{i}")
        assert limiter.acquire("attacker") > 0
    for i in range(1000):  # a flood evicts the least recently seen, not the active key
        limiter.acquire(f"flood{i}")
        assert limiter.acquire("attacker") > 0


@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
        ("::ffff:203.0.113.7", "203.0.113.7"),
        (None, "unknown"),
        ("testclient", "testclient"),
    ],
)
def test_client_key_collapses_ipv6_to_its_64(host: str | None, key: str) -> None:
    assert client_key(host) == key


def test_one_ipv6_64_shares_one_bucket() -> None:
    limiter = RateLimiter(1, burst=3, clock=lambda: 0.0)
    waits = [limiter.acquire(client_key(f"2001:db8:0:1::{i:x}")) for i in range(1, 50)]
    assert waits[:3] == [0.0, 0.0, 0.0]
    assert all(w > 0 for w in waits[3:])


def test_probe_duration_counts_pauses_and_silence() -> None:
    assert ProbeParams(tokens=500, interval_ms=2000, silence_ms=30_000).duration_ms() == 1_028_000


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
        assert await store.turns("t1") == []
        await store.append("t1", StoredMessage(role="user", content="héllo", ts=1))
        await asyncio.gather(  # concurrent appends to one thread all land
            *(
                store.append("t1", StoredMessage(role="assistant", content=str(i), ts=2 + i))
                for i in range(10)
            )
        )

    asyncio.run(scenario())
    messages = list(store.messages("t1"))
    assert messages[0].content == "héllo"
    assert sorted(m.content for m in messages[1:]) == [str(i) for i in range(10)]
    files = sorted(p.name for p in (tmp_path / "threads").iterdir())
    assert files == ["t1.jsonl"]  # no temporary files left behind
    lines = (tmp_path / "threads" / "t1.jsonl").read_bytes().splitlines()
    assert len(lines) == 11  # one line per message: appends never rewrite the thread
    served = json.loads(b"".join(store.thread_json("t1")))
    assert set(served) == {"threadId", "createdAt", "updatedAt", "messages"}
    assert (served["createdAt"], served["updatedAt"], len(served["messages"])) == (1, 11, 11)


def test_thread_store_skips_a_torn_line_and_keeps_appending(tmp_path: Path) -> None:
    store = ThreadStore(tmp_path)
    asyncio.run(store.append("t", StoredMessage(role="user", content="a", ts=1)))
    with (tmp_path / "threads" / "t.jsonl").open("ab") as handle:
        handle.write(b'{"role": "assistant", "cont')  # power cut mid-append
    asyncio.run(store.append("t", StoredMessage(role="user", content="b", ts=2)))
    assert [m.content for m in store.messages("t")] == ["a", "b"]


def test_thread_store_reads_and_converts_a_legacy_whole_file_thread(tmp_path: Path) -> None:
    (tmp_path / "threads").mkdir()
    legacy = {"threadId": "old", "createdAt": 1, "updatedAt": 2, "messages": [
        {"role": "user", "content": "x", "ts": 1}, {"role": "assistant", "content": "y", "ts": 2}]}
    (tmp_path / "threads" / "old.json").write_text(json.dumps(legacy))
    store = ThreadStore(tmp_path)
    assert [m.content for m in store.messages("old")] == ["x", "y"]
    asyncio.run(store.append("old", StoredMessage(role="user", content="z", ts=3)))
    assert [m.content for m in store.messages("old")] == ["x", "y", "z"]
    assert sorted(p.name for p in (tmp_path / "threads").iterdir()) == ["old.jsonl"]


def test_thread_store_caps_a_thread_413_and_the_store_507(tmp_path: Path) -> None:
    store = ThreadStore(tmp_path, thread_max_bytes=2000, store_max_bytes=5000)
    big = StoredMessage(role="user", content="x" * 900, ts=1)

    async def fill(thread_id: str, count: int) -> None:
        for _ in range(count):
            await store.append(thread_id, big)

    asyncio.run(fill("a", 2))
    with pytest.raises(StoreFullError) as full_thread:
        asyncio.run(fill("a", 1))
    assert full_thread.value.status == 413
    asyncio.run(store.append("a", big, capped=False))  # the reply to an accepted message
    asyncio.run(fill("b", 2))
    with pytest.raises(StoreFullError) as full_store:
        asyncio.run(fill("c", 1))
    assert full_store.value.status == 507
    assert ThreadStore(tmp_path).used_bytes() == store.used_bytes()  # the count matches the disk


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
) -> tuple[list[dict[str, object]], StreamResult]:
    """The reply's events as their JSON reads (the worker writes exactly that), and its result."""
    result = StreamResult()
    events = [
        json.loads(event_json(event.kind, "t", event.content))
        async for event in reply_events(tokens, options=options, shutdown=shutdown or asyncio.Event(), result=result)
    ]
    return events, result


def test_core_provider_error_becomes_error_then_done() -> None:
    async def failing() -> AsyncIterator[str]:
        yield "partial"
        raise ProviderError("the model refused")

    evts, result = asyncio.run(collect(failing(), StreamOptions()))
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

    evts, result = asyncio.run(collect(buggy(), StreamOptions()))
    assert [e["type"] for e in evts] == ["token", "error", "done"]
    assert "KeyError" in str(evts[1]["content"])
    assert result.outcome == "error"


def test_core_idle_timeout_gives_up() -> None:
    async def silent() -> AsyncIterator[str]:
        yield "first"
        await asyncio.sleep(30)
        yield "never"

    started = time.monotonic()
    evts, result = asyncio.run(collect(silent(), StreamOptions(idle_timeout_s=0.3)))
    assert 0.25 < time.monotonic() - started < 2
    assert [e["type"] for e in evts] == ["token", "error", "done"]
    assert "timed out" in str(evts[1]["content"])
    assert result.outcome == "error"


def test_core_preface_comes_first() -> None:
    async def one() -> AsyncIterator[str]:
        yield "a"

    evts, _ = asyncio.run(collect(one(), StreamOptions(preface=(("status", "generating"),))))
    assert [(e["type"], e["content"]) for e in evts[:2]] == [("status", "generating"), ("token", "a")]


def test_core_a_reply_past_max_events_is_cut_with_an_error() -> None:
    async def endless() -> AsyncIterator[str]:
        while True:
            yield "t"
            await asyncio.sleep(0)

    options = StreamOptions(preface=(("status", "generating"),), max_events=12)
    evts, result = asyncio.run(collect(endless(), options))
    assert len(evts) == 12  # status, 9 tokens, error, done: never more than the cap
    assert [e["type"] for e in evts[-2:]] == ["error", "done"]
    assert "too long" in str(evts[-2]["content"])
    assert evts[-1]["content"]["tokens"] == 9  # type: ignore[index]
    assert result.outcome == "error"


def test_core_shutdown_interrupts_a_reply() -> None:
    async def scenario() -> tuple[list[dict[str, object]], StreamResult]:
        shutdown = asyncio.Event()

        async def endless() -> AsyncIterator[str]:
            while True:
                yield "tok"
                await asyncio.sleep(0.01)

        asyncio.get_running_loop().call_later(0.1, shutdown.set)
        return await collect(endless(), StreamOptions(), shutdown)

    evts, result = asyncio.run(scenario())
    assert [e["type"] for e in evts][-2:] == ["error", "done"]
    assert evts[-2]["content"] == SHUTDOWN_MESSAGE
    assert result.outcome == "interrupted"


def test_core_source_dying_without_an_exception_still_ends_with_done() -> None:
    async def cancelled_inside() -> AsyncIterator[str]:
        yield "x"
        raise asyncio.CancelledError  # e.g. a library cancelling its own work

    evts, result = asyncio.run(collect(cancelled_inside(), StreamOptions()))
    assert [e["type"] for e in evts] == ["token", "error", "done"]
    assert evts[1]["content"] == "generation stopped unexpectedly"
    assert result.outcome == "error"
