"""Access control: optional token auth on the chat endpoints, probe rate limit."""

from __future__ import annotations

import time

import pytest

from tests.backend.backend_client import SSEConnection, events, get_json, post_json
from tests.backend.backend_harness import BackendProcess, Spawner

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def auth_backend(spawn: Spawner) -> BackendProcess:
    return spawn(BACKEND_AUTH_TOKEN=TOKEN, BACKEND_TOKEN_INTERVAL_MS="0").start().wait_ready()


@pytest.fixture(scope="module")
def limited_backend(spawn: Spawner) -> BackendProcess:
    return spawn(BACKEND_PROBE_RATE_PER_S="2").start().wait_ready()


def chat_status(backend: BackendProcess, headers: dict[str, str]) -> int:
    with post_json(backend.port, "/api/chat/message", {"message": "hi"}, headers=headers) as conn:
        conn.read_head()
        if conn.status == 200:
            assert events(conn.read_all())[-1].data["type"] == "done"
        else:
            conn.read_body()
        return conn.status


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, 401),
        ({"Authorization": "Bearer wrong"}, 401),
        ({"Authorization": f"Basic {TOKEN}"}, 401),
        ({"Cookie": "backend_session=wrong"}, 401),
        ({"Authorization": f"Bearer {TOKEN}"}, 200),
        ({"Cookie": f"backend_session={TOKEN}"}, 200),
        ({"Cookie": f"other=1; backend_session={TOKEN}"}, 200),
    ],
)
def test_chat_requires_the_token_when_set(
    auth_backend: BackendProcess, headers: dict[str, str], expected: int
) -> None:
    assert chat_status(auth_backend, headers) == expected


def test_unauthorized_answer_is_json_with_a_challenge(
    auth_backend: BackendProcess,
) -> None:
    status, headers, body = get_json(auth_backend.port, "/api/chat/threads/whatever")
    assert status == 401
    assert headers["www-authenticate"] == "Bearer"
    assert body == {"detail": "missing or invalid credentials"}


def test_eventsource_stream_authenticates_with_the_cookie(
    auth_backend: BackendProcess,
) -> None:
    path = "/api/chat/message/stream?message=hello&threadId=cookie-thread"
    with SSEConnection(auth_backend.port, "GET", path) as conn:
        conn.read_body()
    assert conn.status == 401
    cookie = {"Cookie": f"backend_session={TOKEN}"}
    with SSEConnection(auth_backend.port, "GET", path, headers=cookie) as conn:
        assert events(conn.read_all())[-1].data["type"] == "done"
    assert get_json(auth_backend.port, "/api/chat/threads/cookie-thread", cookie)[0] == 200


def test_health_ready_and_probe_are_exempt(auth_backend: BackendProcess) -> None:
    assert get_json(auth_backend.port, "/api/health")[0] == 200
    assert get_json(auth_backend.port, "/api/ready")[0] == 200
    with SSEConnection(
        auth_backend.port, "GET", "/api/probe/stream?tokens=2&interval_ms=0"
    ) as conn:
        assert events(conn.read_all())[-1].data["type"] == "done"
    assert conn.status == 200


def test_chat_is_open_when_no_token_is_set(demo_backend: BackendProcess) -> None:
    assert chat_status(demo_backend, {}) == 200


def probe_status(backend: BackendProcess, headers: dict[str, str] | None = None) -> SSEConnection:
    with SSEConnection(
        backend.port, "GET", "/api/probe/stream?tokens=1&interval_ms=0", headers=headers
    ) as conn:
        conn.read_body()
    return conn


def test_probe_is_rate_limited_per_client(limited_backend: BackendProcess) -> None:
    answers = [probe_status(limited_backend) for _ in range(8)]
    statuses = [conn.status for conn in answers]
    assert statuses[:2] == [200, 200], "a burst of BACKEND_PROBE_RATE_PER_S is allowed"
    assert statuses.count(429) >= 4
    limited = next(conn for conn in answers if conn.status == 429)
    assert int(limited.headers["retry-after"]) >= 1
    # another client (its address from X-Forwarded-For: the peer, 127.0.0.1,
    # is a trusted proxy by default) has its own bucket
    other = probe_status(limited_backend, {"X-Forwarded-For": "198.51.100.7"})
    assert other.status == 200
    time.sleep(0.6)  # refills one request at 2/s
    assert probe_status(limited_backend).status == 200
