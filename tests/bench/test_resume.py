"""The load generator's resume mode (backend_restart drill): a real socket server cuts each reply, the client
resumes at its Content-Location with Last-Event-ID, and the accounting tells complete from doubled or lost."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from pi5bench.loadgen import Phase, aggregate, redis_auth, used_memory_kb
from pi5bench.run import restart_verdict
from pi5bench.sse_client import StreamResult, Target, _Parser, account_ids, resume_target, run_stream

TOKENS = [f"t{i} é" for i in range(1, 6)]  # ids 1..5, done is id 6


def _event(event_id: int, payload: dict[str, Any]) -> bytes:
    return f"id: {event_id}\ndata: {json.dumps(payload)}\n\n".encode()


def _reply(first: int, last: int) -> bytes:
    """Events first..last of the reply; the done event (id 6) when last reaches it."""
    body = b""
    for n in range(first, last + 1):
        if n <= len(TOKENS):
            body += _event(n, {"type": "token", "content": TOKENS[n - 1], "ts": time.time() * 1000})
        else:
            text = "".join(TOKENS).encode()
            summary = {"tokens": len(TOKENS), "bytes": len(text), "sha256": hashlib.sha256(text).hexdigest()}
            body += _event(n, {"type": "done", "content": summary, "ts": time.time() * 1000})
    return body


# How the server resumes after Last-Event-ID n: from n + shift (1 = right, 0 = one event twice, 2 = one lost).
Server = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any]


def _server(shift: int, refusals: int, location: str = "/api/probe/replies/abc") -> tuple[Server, list[str]]:
    """A stream cut after id 3, then ``refusals`` 502s (the API restarting), then the rest from Last-Event-ID."""
    seen: list[str] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        seen.append(head)
        last = next((int(line.split(":", 1)[1]) for line in head.split("\r\n") if line.startswith("Last-Event-ID:")), 0)
        if "/stream" in head.split("\r\n", 1)[0]:
            body, status = b": open\nretry: 20\n\n" + _reply(1, 3), 200
        elif sum("/replies/" in h for h in seen) <= refusals:
            body, status = b"bad gateway", 502
        else:
            body, status = _reply(last + shift, len(TOKENS) + 1), 200
        writer.write(
            f"HTTP/1.1 {status} X\r\nContent-Type: text/event-stream\r\nContent-Location: {location}\r\n"
            "Connection: close\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        writer.close()

    return handle, seen


@asynccontextmanager
async def _serving(handle: Server) -> AsyncIterator[str]:
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


async def _stream(shift: int, refusals: int = 0, attempts: int = 5, **server: Any) -> tuple[StreamResult, list[str]]:
    handle, seen = _server(shift, refusals, **server)
    async with _serving(handle) as base:
        result = await run_stream(
            Target(f"{base}/api/probe/stream?tokens=5"),
            interval_ms=50,
            deadline=time.time() + 10,
            resume_attempts=attempts,
        )
    return result, seen


def test_a_cut_stream_resumes_after_its_last_id_through_502s() -> None:
    result, seen = asyncio.run(_stream(shift=1, refusals=2))
    assert result.outcome == "done" and result.integrity == "ok"
    assert (result.tokens, result.ids_twice, result.ids_missing) == (5, 0, 0)
    assert result.resumes == 3 and result.resume_statuses == ["502", "502", "200"]
    assert all("Last-Event-ID: 3" in head for head in seen[1:])  # the Content-Location, after the last id
    assert seen[-1].startswith("GET /api/probe/replies/abc HTTP/1.1")


def test_an_event_resent_on_resume_is_counted_twice_and_not_joined() -> None:
    result, _ = asyncio.run(_stream(shift=0))
    assert (result.ids_twice, result.ids_missing, result.integrity) == (1, 0, "ok")


def test_an_event_skipped_on_resume_is_missing_and_breaks_integrity() -> None:
    result, _ = asyncio.run(_stream(shift=2))
    assert (result.ids_twice, result.ids_missing, result.integrity) == (0, 1, "mismatch")


def test_without_resume_mode_a_cut_stream_stays_cut() -> None:
    result, seen = asyncio.run(_stream(shift=1, attempts=0))
    assert (result.outcome, result.resumes, len(seen)) == ("eof", 0, 1)


def test_resumes_are_bounded() -> None:
    result, _ = asyncio.run(_stream(shift=1, refusals=10, attempts=3))
    assert result.outcome == "http_502" and result.resumes == 3


def test_a_reply_is_never_resumed_on_a_host_the_response_named() -> None:
    result, seen = asyncio.run(_stream(shift=1, location="http://elsewhere.example/api/probe/replies/abc"))
    assert (result.outcome, result.resumes, len(seen)) == ("eof", 0, 1)


def test_resume_target_keeps_scheme_host_and_tls_settings() -> None:
    target = Target("https://localhost:443/api/probe/stream?x=1", "/ca.pem", "pi5.local", (("Last-Event-ID", "1"),))
    again = resume_target(target, "/api/probe/replies/ab", "7")
    assert again == Target("https://localhost:443/api/probe/replies/ab", "/ca.pem", "pi5.local", (("Last-Event-ID", "7"),))
    assert resume_target(target, "/api/probe/replies/ab", None) == Target(
        "https://localhost:443/api/probe/replies/ab", "/ca.pem", "pi5.local"
    )
    assert resume_target(target, "http://localhost:443/x", "1") is None  # another scheme


def test_account_ids_counts_twice_and_missing_up_to_done() -> None:
    assert account_ids(["1", "2", "3", "4"], "4") == (0, 0)
    assert account_ids(["1", "2", "2", "3", "4"], "4") == (1, 0)
    assert account_ids(["1", "3", "4"], "4") == (0, 1)
    assert account_ids(["1", "2", "5"], "5") == (0, 2)  # the ids up to done that never came
    assert account_ids(["1", "3"], None) == (0, 1)  # no done: bounded by the last seen
    assert account_ids(["1700000000:1"], None) == (0, 0)  # not numbers: not counted


def test_parser_reads_retry_and_ignores_a_bad_one() -> None:
    parser = _Parser()
    parser.feed(b"retry: 3000\nretry: 12x\nid: 1\ndata: {}\n\n", 0.0)
    assert parser.retry_ms == 3000 and len(parser.events) == 1


def _drill(**changes: Any) -> dict[str, Any]:
    results = []
    for _ in range(3):
        r = StreamResult(outcome="done", tokens=10, done_tokens=10, integrity="ok", resumes=1, resume_statuses=["200"])
        results.append(r.to_dict())
    figures = aggregate(Phase(url="https://x", streams=3, tokens=10), results)
    figures["action"] = {"rc": 0, "took_s": 1.2, "new_stream_ok_after_s": 2.5}
    for key, value in changes.items():
        figures[key] = value
    return figures


def test_restart_verdict_passes_only_when_every_event_came_once() -> None:
    assert restart_verdict(_drill(), 3).startswith("PASS: 3/3 streams ended with done")
    assert "3 resumed (3 reconnections" in restart_verdict(_drill(), 3)
    assert restart_verdict(_drill(ids_twice=1), 3).startswith("FAIL")
    assert restart_verdict(_drill(ids_missing=1), 3).startswith("FAIL")
    assert restart_verdict(_drill(integrity={"ok": 2, "mismatch": 1}), 3).startswith("FAIL")
    assert restart_verdict(_drill(outcomes={"done": 2, "http_502": 1}), 3).startswith("FAIL")
    assert restart_verdict(_drill(action={"rc": 0, "new_stream_ok_after_s": None}), 3).startswith("FAIL")
    assert restart_verdict(_drill(action={"rc": 1, "new_stream_ok_after_s": 1.0}), 3).startswith("FAIL")


def test_aggregate_sums_resumes_and_ids() -> None:
    one = StreamResult(outcome="done", tokens=2, done_tokens=2, resumes=2, resume_statuses=["502", "200"], ids_twice=1)
    two = StreamResult(outcome="done", tokens=2, done_tokens=3, ids_missing=1)
    figures = aggregate(Phase(url="http://x", streams=2), [one.to_dict(), two.to_dict()])
    assert (figures["streams_resumed"], figures["resumes"]) == (1, 2)
    assert figures["resume_statuses"] == {"502": 1, "200": 1}
    assert (figures["ids_twice"], figures["ids_missing"], figures["events_lost"]) == (1, 1, 1)


def test_redis_auth_and_used_memory_parse() -> None:
    env = ["PATH=/usr/bin", "BACKEND_REDIS_PORT=6379", "BACKEND_REDIS_PASSWORD=s=cret"]
    assert redis_auth(env) == ("6379", "s=cret")
    assert redis_auth(["PATH=/usr/bin"]) is None  # the one-process design: no Redis
    assert used_memory_kb("# Memory\r\nused_memory:2048000\r\nused_memory_human:1.95M\r\n") == 2000
    assert used_memory_kb("NOAUTH Authentication required.") is None


@pytest.mark.parametrize("shift", [0, 2])
def test_a_drill_with_one_id_twice_or_missing_fails(shift: int) -> None:
    result, _ = asyncio.run(_stream(shift=shift))
    figures = aggregate(Phase(url="http://x", streams=1, tokens=5), [result.to_dict()])
    figures["action"] = {"rc": 0, "new_stream_ok_after_s": 1.0}
    assert restart_verdict(figures, 1).startswith("FAIL")
