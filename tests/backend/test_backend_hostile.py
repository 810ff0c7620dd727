"""The backend played by a hostile client: each limit refuses cheaply, and says little.

Every test here is an attack from issue 13 run against the real server
(``python -m app`` on loopback); the nginx and simulated-Pi suites repeat the
ones nginx answers first.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import time
import tracemalloc
from collections.abc import Iterator

import pytest

from app.probe import ProbeParams, probe_tokens
from tests.backend.backend_client import SSEConnection, events, get_json, post_json
from tests.backend.backend_harness import BackendProcess, Spawner

TOKEN = "hostile-suite-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_ANSWER = 64 * 1024  # issue 13: every refusal of bad input is smaller than this


@pytest.fixture(scope="module")
def guarded(spawn: Spawner) -> BackendProcess:
    """The shipped limits, shrunk where a test would otherwise wait (timeouts, caps)."""
    return (
        spawn(
            BACKEND_AUTH_TOKEN=TOKEN,
            BACKEND_TOKEN_INTERVAL_MS="0",
            BACKEND_HEADER_TIMEOUT_S="0.5",
            BACKEND_BODY_TIMEOUT_S="0.5",
            BACKEND_CHAT_RATE_PER_S="0",
            BACKEND_PROBE_RATE_PER_S="0",
            BACKEND_PROBE_MAX_STREAMS="3",
            BACKEND_THREAD_MAX_KB="16",
            BACKEND_MAX_CONNECTIONS="40",
        )
        .start()
        .wait_ready()
    )


def raw(port: int, head: str, body: bytes = b"", timeout: float = 5) -> tuple[int, bytes, float]:
    """Send ``head`` + ``body`` as is; (status, body, seconds to the answer)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        start = time.monotonic()
        sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
        response = http.client.HTTPResponse(sock)
        response.begin()
        data = response.read()
        return response.status, data, time.monotonic() - start
    finally:
        sock.close()


def status_of(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str]]:
    """The status and headers of a GET, whatever its body."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}
    finally:
        connection.close()


def post_head(path: str, length: int | None, headers: dict[str, str] | None = None) -> str:
    lines = [f"POST {path} HTTP/1.1", "Host: pi", "Content-Type: application/json"]
    lines += ["Transfer-Encoding: chunked"] if length is None else [f"Content-Length: {length}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return "\n".join(lines) + "\n"


def test_a_huge_declared_body_is_refused_before_a_byte_of_it_is_read(guarded: BackendProcess) -> None:
    status, body, took = raw(guarded.port, post_head("/api/chat/message", 10_000_000, AUTH))
    assert status == 413
    assert took < 2, "answered from the headers, not after waiting for 10 MB"
    assert len(body) < MAX_ANSWER


def test_no_token_is_refused_before_the_body(guarded: BackendProcess) -> None:
    """Issue 13's slow-body attack with auth on: the backend read the body before the token."""
    status, _, took = raw(guarded.port, post_head("/api/chat/message", 60_000))  # no body follows
    assert (status, took < 2) == (401, True)


def test_a_chunked_body_past_the_limit_is_cut_off(guarded: BackendProcess) -> None:
    chunk = b"x" * 16384
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(8)) + b"0\r\n\r\n"
    status, answer, _ = raw(guarded.port, post_head("/api/chat/message", None, AUTH), body)
    assert status == 413
    assert len(answer) < MAX_ANSWER


def test_a_slow_body_is_given_up_on(guarded: BackendProcess) -> None:
    status, _, took = raw(guarded.port, post_head("/api/chat/message", 100, AUTH), b'{"mess')
    assert status == 408
    assert 0.4 < took < 3


def test_slowloris_headers_are_closed_after_the_header_timeout(guarded: BackendProcess) -> None:
    sock = socket.create_connection(("127.0.0.1", guarded.port), timeout=5)
    start = time.monotonic()
    sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: pi\r\nX-a: ")
    closed = False
    while time.monotonic() - start < 4:
        try:
            sock.sendall(b"a")  # one byte now and then, never the blank line
            if sock.recv(1024) == b"":
                closed = True
                break
        except TimeoutError:
            continue
        except OSError:
            closed = True
            break
    sock.close()
    assert closed
    assert time.monotonic() - start < 3


def test_an_idle_keepalive_connection_is_not_cut_by_the_header_timeout(guarded: BackendProcess) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", guarded.port, timeout=5)
    for _ in range(2):
        connection.request("GET", "/api/health")
        assert connection.getresponse().read() == b'{"status":"ok"}'
        time.sleep(0.8)  # longer than the header timeout, shorter than keep-alive
    connection.close()


HOSTILE_BODIES = {
    "NaN": b'{"message": NaN}',
    "lone surrogate": b'{"message": "\\ud800"}',
    "deep nesting": b'{"message": ' + b"[" * 20_000 + b"]" * 20_000 + b"}",
    "unknown keys": b'{"message": "hi", ' + b",".join(b'"k%d": 1' % i for i in range(5000)) + b"}",
    "a long unknown key": b'{"message": "hi", "' + b"k" * 50_000 + b'": 1}',
    "not JSON": b"\xff\xfe<html>",
    "blank": b'{"message": "   "}',
    "wrong type": b'{"message": {"$gt": ""}}',
}


@pytest.mark.parametrize("name", HOSTILE_BODIES)
def test_bad_input_is_a_short_422_without_echo(guarded: BackendProcess, name: str) -> None:
    body = HOSTILE_BODIES[name]
    status, answer, _ = raw(guarded.port, post_head("/api/chat/message", len(body), AUTH), body)
    assert status == 422
    assert len(answer) < 2048, len(answer)
    assert b"kkkkkkkk" not in answer and b"$gt" not in answer and b"k4999" not in answer
    assert json.loads(answer)["errors"] >= 1


def test_a_lone_surrogate_in_the_eventsource_query_is_refused(guarded: BackendProcess) -> None:
    status, _ = status_of(guarded.port, "/api/chat/message/stream?message=%ED%A0%80", AUTH)
    assert status in {200, 422}  # undecodable bytes arrive replaced, never as a 500


@pytest.mark.parametrize(("site", "expected"), [("cross-site", 403), ("same-site", 403),
                                                ("same-origin", 200), ("none", 200)])
def test_a_cross_site_request_with_the_cookie_writes_nothing(
    guarded: BackendProcess, site: str, expected: int
) -> None:
    """A top-level navigation from another site carries the cookie: it must not post a message."""
    headers = {"Cookie": f"backend_session={TOKEN}", "Sec-Fetch-Site": site}
    thread = f"csrf-{site}"
    with SSEConnection(guarded.port, "GET", f"/api/chat/message/stream?message=hi&threadId={thread}",
                       headers=headers) as conn:
        conn.read_head()
        assert conn.status == expected
    assert get_json(guarded.port, f"/api/chat/threads/{thread}", headers=AUTH)[0] == (
        200 if expected == 200 else 404)


def test_a_thread_is_capped_with_413(guarded: BackendProcess) -> None:
    statuses = []
    for _ in range(6):
        with post_json(guarded.port, "/api/chat/message", {"message": "y" * 4000, "threadId": "full"},
                       headers=AUTH) as conn:
            conn.read_head()
            statuses.append(conn.status)
            conn.read_body()
    assert statuses[0] == 200
    assert statuses[-1] == 413
    status, _, thread = get_json(guarded.port, "/api/chat/threads/full", headers=AUTH)
    assert status == 200
    assert thread["messages"][-1]["role"] == "assistant"  # each accepted message got its reply


def test_probe_lifetime_and_global_cap(guarded: BackendProcess) -> None:
    status, _, body = get_json(guarded.port, "/api/probe/stream?tokens=500&interval_ms=2000&silence_ms=30000")
    assert status == 422
    assert "longer than 60s" in body["detail"]
    held = [SSEConnection(guarded.port, "GET", "/api/probe/stream?tokens=3&interval_ms=2000")
            for _ in range(3)]
    try:
        for conn in held:
            conn.read_head()
            assert conn.status == 200
        status, headers = status_of(guarded.port, "/api/probe/stream?tokens=2&interval_ms=1")
        assert (status, headers.get("retry-after")) == (503, "5")
        # Anonymous probes holding every place never shut out the owner's check (it carries the token).
        assert status_of(guarded.port, "/api/probe/stream?tokens=2&interval_ms=1", AUTH)[0] == 200
        assert status_of(guarded.port, "/api/probe/stream?tokens=2&interval_ms=1",
                         {"Authorization": "Bearer not-the-token"})[0] == 503
    finally:
        for conn in held:
            conn.close()
    deadline = time.monotonic() + 5  # closed streams give their places back
    while status_of(guarded.port, "/api/probe/stream?tokens=1")[0] != 200:
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_probe_memory_is_not_taken_up_front() -> None:
    """1,500 open probes with big events reached 487 MB: each built its 256 KiB at start."""
    tracemalloc.start()
    try:
        tokens = probe_tokens(ProbeParams(tokens=4, interval_ms=0, big_kb=256))

        async def first() -> str:
            return await anext(tokens)

        asyncio.run(first())
        assert tracemalloc.get_traced_memory()[1] < 64 * 1024
    finally:
        tracemalloc.stop()


def test_the_chat_rate_limit_answers_429(spawn: Spawner) -> None:
    backend = spawn(BACKEND_AUTH="off", BACKEND_CHAT_RATE_PER_S="1", BACKEND_CHAT_BURST="3",
                    BACKEND_TOKEN_INTERVAL_MS="0").start().wait_ready()
    statuses = [get_json(backend.port, "/api/chat/threads/x")[0] for _ in range(8)]
    assert statuses[:3] == [404, 404, 404]
    assert set(statuses[3:]) == {429}
    assert get_json(backend.port, "/api/health")[0] == 200  # health is never limited


def test_connections_past_the_limit_get_503_and_health_recovers(guarded: BackendProcess) -> None:
    held = list(_open_streams(guarded.port, 45))
    try:
        assert status_of(guarded.port, "/api/health")[0] == 503
    finally:
        for conn in held:
            conn.close()
    deadline = time.monotonic() + 5
    while status_of(guarded.port, "/api/health")[0] != 200:
        assert time.monotonic() < deadline
        time.sleep(0.1)


def _open_streams(port: int, count: int) -> Iterator[socket.socket]:
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: pi\r\n\r\n")  # keep-alive: held open
        sock.recv(4096)  # answered: the server has counted this connection
        yield sock


def test_stream_works_after_the_attacks(guarded: BackendProcess) -> None:
    with post_json(guarded.port, "/api/chat/message", {"message": "still here"}, headers=AUTH) as conn:
        conn.read_head()
        assert conn.status == 200
        assert events(conn.read_all())[-1].data["type"] == "done"
    assert "Traceback" not in guarded.log()
