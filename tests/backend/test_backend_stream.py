"""The SSE wire contract, observed on a raw socket against ``python -m app``."""

from __future__ import annotations

import hashlib
import itertools
import statistics
import time
from typing import Any

import pytest

from tests.backend.backend_client import Block, SSEConnection, comments, events, get_json, post_json
from tests.backend.backend_harness import BackendProcess

PROBE = "/api/probe/stream"
EVENT_KEYS = {"type", "threadId", "content", "ts"}


def probe(backend: BackendProcess, query: str, **kwargs: Any) -> SSEConnection:
    return SSEConnection(backend.port, "GET", f"{PROBE}?{query}", **kwargs)


def assert_well_formed(blocks: list[Block]) -> list[Block]:
    """Checks every stream must pass; returns its events."""
    assert blocks[0].raw == b": open", "the stream must start with the open comment"
    evts = events(blocks)
    assert [e.id for e in evts] == list(range(1, len(evts) + 1))
    now_ms = time.time() * 1000
    thread_ids = {e.data["threadId"] for e in evts}
    assert len(thread_ids) == 1
    assert all(isinstance(t, str) and t for t in thread_ids)
    previous_ts = 0
    for event in evts:
        assert set(event.fields) == {"id", "data"}, "no event: field (EventSource onmessage)"
        assert set(event.data) == EVENT_KEYS
        assert event.data["type"] in {"token", "status", "done", "error"}
        ts = event.data["ts"]
        assert isinstance(ts, int)
        assert now_ms - 60_000 < ts <= now_ms + 1000, "ts is epoch milliseconds"
        assert ts >= previous_ts
        previous_ts = ts
        # compact, UTF-8 JSON (no \\u escapes, no spaces after separators)
        assert b'", "' not in event.raw
        assert b"\\u" not in event.raw
    kinds = [e.data["type"] for e in evts]
    assert kinds[-1] == "done"
    assert kinds.count("done") == 1
    assert kinds.count("error") <= 1
    if "error" in kinds:
        assert kinds[-2] == "error"
    return evts


def token_text(evts: list[Block]) -> str:
    return "".join(e.data["content"] for e in evts if e.data["type"] == "token")


def test_headers_and_open_comment_first(demo_backend: BackendProcess) -> None:
    with probe(demo_backend, "tokens=3&interval_ms=0", headers={"Accept-Encoding": "gzip"}) as conn:
        blocks = conn.read_all()
        headers = conn.headers
    assert conn.status == 200
    assert headers["content-type"] == "text/event-stream; charset=utf-8"
    assert headers["cache-control"] == "no-cache, no-transform"
    assert headers["x-accel-buffering"] == "no"
    assert "content-encoding" not in headers
    assert "content-length" not in headers
    assert blocks[1].fields == {"retry": "3000"}
    evts = assert_well_formed(blocks)
    assert [e.data["type"] for e in evts] == ["token", "token", "token", "done"]


def test_open_comment_is_not_held_until_the_first_token(
    demo_backend: BackendProcess,
) -> None:
    # tokens=1: the silence sits before the only token
    with probe(demo_backend, "tokens=1&silence_ms=800&heartbeat_ms=5000") as conn:
        blocks = conn.read_all()
    first_token = next(b for b in blocks if b.is_event)
    assert blocks[0].raw == b": open"
    assert first_token.at - blocks[0].at > 0.5


def test_probe_tokens_are_paced_not_burst(demo_backend: BackendProcess) -> None:
    with probe(demo_backend, "tokens=20&interval_ms=50") as conn:
        evts = assert_well_formed(conn.read_all())
    arrivals = [e.at for e in evts if e.data["type"] == "token"]
    assert len(arrivals) == 20
    assert arrivals[-1] - arrivals[0] > 0.5  # ideal 0.95 s
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert statistics.median(gaps) > 0.025


def test_probe_done_verifies_the_reassembled_text(demo_backend: BackendProcess) -> None:
    with probe(demo_backend, "tokens=24&interval_ms=0") as conn:
        evts = assert_well_formed(conn.read_all())
    text = token_text(evts)
    done = evts[-1].data["content"]
    assert done == {
        "tokens": 24,
        "sha256": hashlib.sha256(text.encode()).hexdigest(),
        "bytes": len(text.encode()),
    }
    for sample in ("Hello", "مرحبا", "🚀", "👩\u200d💻", "你好世界"):
        assert sample in text


def test_multibyte_events_are_split_inside_a_character(
    demo_backend: BackendProcess,
) -> None:
    with probe(demo_backend, "tokens=16&interval_ms=10") as conn:
        chunks = [chunk for chunk, _ in conn.iter_chunks()]
    assert chunks[0] == b": open\n\nretry: 3000\n\n"
    # Group the HTTP chunks (one per write) into events.
    groups: list[list[bytes]] = [[]]
    for chunk in chunks[1:]:
        groups[-1].append(chunk)
        if chunk.endswith(b"\n\n"):
            groups.append([])
    assert groups.pop() == []
    split = 0
    for parts in groups:
        event = b"".join(parts)
        if event.isascii():
            assert len(parts) == 1, "ASCII events are written whole"
            continue
        assert len(parts) == 2, f"multi-byte event written as {len(parts)} writes"
        with pytest.raises(UnicodeDecodeError, match="unexpected end of data"):
            parts[0].decode("utf-8")  # the first write ends inside a character
        split += 1
    assert split >= 8


def test_split_writes_leave_as_separate_reads(demo_backend: BackendProcess) -> None:
    """On the wire, not just in the HTTP framing: some recv() ends mid-character."""
    with probe(demo_backend, "tokens=30&interval_ms=15") as conn:
        assert_well_formed(conn.read_all())
        payload = bytes(conn.decoder.payload)
        marks = [position for position, _ in conn.reads.marks]
    inside = [p for p in marks if p < len(payload) and payload[p] & 0xC0 == 0x80]
    assert inside, "every read ended on a character boundary: halves were coalesced"


def test_big_event_in_the_middle(demo_backend: BackendProcess) -> None:
    with probe(demo_backend, "tokens=5&interval_ms=0&big_kb=256") as conn:
        evts = assert_well_formed(conn.read_all())
    sizes = [len(e.data["content"].encode()) for e in evts if e.data["type"] == "token"]
    assert sizes[2] == 256 * 1024
    assert max(sizes[:2] + sizes[3:]) < 64
    text = token_text(evts)
    assert evts[-1].data["content"]["sha256"] == hashlib.sha256(text.encode()).hexdigest()
    assert evts[-1].data["content"]["bytes"] == len(text.encode())


def test_heartbeats_during_silence(demo_backend: BackendProcess) -> None:
    """BACKEND_HEARTBEAT_S=0.2: a 1 s silence mid-stream carries keepalives."""
    with probe(demo_backend, "tokens=4&interval_ms=0&silence_ms=1000") as conn:
        blocks = conn.read_all()
    assert_well_formed(blocks)
    kinds = ["e" if b.is_event else "k" for b in blocks if b.is_event or b.comment == "keepalive"]
    assert 3 <= kinds.count("k") <= 7  # ideal 4-5
    # all of them in the middle: after token 2, before token 3
    assert "".join(kinds).strip("k") == "ee" + "k" * kinds.count("k") + "eee"
    keepalive_times = [b.at for b in blocks if b.comment == "keepalive"]
    assert keepalive_times[-1] - keepalive_times[0] > 0.4


def test_probe_heartbeat_ms_overrides_the_setting(demo_backend: BackendProcess) -> None:
    with probe(demo_backend, "tokens=2&interval_ms=0&silence_ms=700&heartbeat_ms=500") as conn:
        blocks = conn.read_all()
    assert comments(blocks).count("keepalive") == 1


@pytest.mark.parametrize(
    "query",
    [
        "tokens=0",
        "tokens=501",
        "interval_ms=2001",
        "interval_ms=-1",
        "silence_ms=30001",
        "big_kb=257",
        "heartbeat_ms=5",
        "tokens=abc",
    ],
)
def test_probe_rejects_out_of_range_parameters(demo_backend: BackendProcess, query: str) -> None:
    with probe(demo_backend, query) as conn:
        conn.read_body()
    assert conn.status == 422


def test_chat_post_streams_and_persists_the_thread(
    demo_backend: BackendProcess,
) -> None:
    with post_json(demo_backend.port, "/api/chat/message", {"message": "ping 🏓"}) as conn:
        evts = assert_well_formed(conn.read_all())
    assert conn.status == 200
    assert conn.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert evts[0].data["type"] == "status"
    tokens = [e for e in evts if e.data["type"] == "token"]
    assert len(tokens) > 10
    assert tokens[-1].at - tokens[0].at > 0.5 * 0.02 * (len(tokens) - 1)  # 20 ms pacing
    reply = token_text(evts)
    assert reply.startswith("You said: ping 🏓")
    thread_id = evts[0].data["threadId"]

    status, _, thread = get_thread(demo_backend, thread_id)
    assert status == 200
    assert thread["threadId"] == thread_id
    assert [(m["role"], m["content"], m["status"]) for m in thread["messages"]] == [
        ("user", "ping 🏓", "complete"),
        ("assistant", reply, "complete"),
    ]


def test_chat_get_stream_continues_an_existing_thread(
    demo_backend: BackendProcess,
) -> None:
    path = "/api/chat/message/stream?threadId=eventsource-1&message="
    for word in ("first", "second"):
        with SSEConnection(demo_backend.port, "GET", path + word) as conn:
            evts = assert_well_formed(conn.read_all())
        assert {e.data["threadId"] for e in evts} == {"eventsource-1"}
    _, _, thread = get_thread(demo_backend, "eventsource-1")
    roles = [m["role"] for m in thread["messages"]]
    assert roles == ["user", "assistant", "user", "assistant"]
    assert thread["messages"][2]["content"] == "second"
    assert thread["createdAt"] <= thread["updatedAt"]


@pytest.mark.parametrize(
    "payload",
    [
        {"message": ""},
        {"message": "   "},
        {"message": "x" * 8001},
        {"message": "hi", "threadId": "../../etc/passwd"},
        {"message": "hi", "unexpected": 1},
        {},
    ],
)
def test_chat_rejects_invalid_requests(demo_backend: BackendProcess, payload: object) -> None:
    with post_json(demo_backend.port, "/api/chat/message", payload) as conn:
        conn.read_body()
    assert conn.status == 422


def test_chat_accepts_the_longest_message(demo_backend: BackendProcess) -> None:
    with post_json(demo_backend.port, "/api/chat/message", {"message": "y" * 8000}) as conn:
        conn.read_head()
        assert conn.status == 200


def test_unknown_thread_is_404(demo_backend: BackendProcess) -> None:
    assert get_thread(demo_backend, "never-created")[0] == 404
    assert get_thread(demo_backend, "bad..id")[0] == 422


def test_health_ready_and_openapi(demo_backend: BackendProcess) -> None:
    assert get_json(demo_backend.port, "/api/health")[::2] == (200, {"status": "ok"})
    status, _, ready = get_json(demo_backend.port, "/api/ready")
    assert (status, ready["status"], ready["provider"]) == (200, "ready", "demo")
    status, _, spec = get_json(demo_backend.port, "/openapi.json")
    assert status == 200
    for path in (
        "/api/health",
        "/api/ready",
        "/api/chat/message",
        "/api/chat/message/stream",
        "/api/chat/threads/{threadId}",
        "/api/chat/replies/{replyId}",
        "/api/probe/stream",
        "/api/probe/replies/{replyId}",
    ):
        assert path in spec["paths"]
    assert (
        "text/event-stream"
        in spec["paths"]["/api/probe/stream"]["get"]["responses"]["200"]["content"]
    )


def get_thread(backend: BackendProcess, thread_id: str) -> tuple[int, dict[str, str], Any]:
    return get_json(backend.port, f"/api/chat/threads/{thread_id}")
