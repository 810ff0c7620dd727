"""The EventSource GET's requestId: a reconnection resumes the reply instead of sending the message again.

EventSource reconnects to the URL it was opened with and sends ``Last-Event-ID``; for
``GET /api/chat/message/stream?message=…`` that URL sends a message. Each test runs the real
stack (redis-server, ``python -m app.worker``, ``python -m app``) and counts what the thread
stored, so a second message or a second reply shows.
"""

from __future__ import annotations

import uuid
from urllib.parse import urlencode

import pytest
import redis

from app.delivery import EXPIRED
from app.replies import meta_key, reply_key, request_key
from app.routers.chat import NOT_RESUMABLE
from tests.backend.backend_client import Block, SSEConnection, events, get_json
from tests.backend.backend_harness import BackendProcess
from tests.backend.test_backend_replies import CHAT_LOCATION, LONG, assert_whole, read_until_token, store


def stream_path(message: str, thread: str, request_id: str | None = None) -> str:
    query = {"message": message, "threadId": thread}
    if request_id is not None:
        query["requestId"] = request_id
    return "/api/chat/message/stream?" + urlencode(query)


def new_thread() -> str:
    return f"rid-{uuid.uuid4().hex[:12]}"


def stored_roles(backend: BackendProcess, thread: str) -> list[str]:
    """The roles of the thread's stored messages; [] when the thread was never written."""
    status, _, body = get_json(backend.port, f"/api/chat/threads/{thread}")
    if status == 404:
        return []
    assert status == 200, body
    return [message["role"] for message in body["messages"]]


def the_expired_event(conn: SSEConnection) -> Block:
    """The whole response is open, retry and one event without id; that event."""
    blocks = conn.read_all()
    assert conn.status == 200
    assert [b.raw for b in blocks[:2]] == [b": open", b"retry: 3000"]
    (event,) = blocks[2:]
    assert set(event.fields) == {"data"}, "no id: the browser's Last-Event-ID stays the last real one"
    assert event.data["type"] == "expired"
    assert conn.decoder.finished
    return event


def test_a_reconnection_with_the_request_id_resumes_the_one_reply(demo_backend: BackendProcess) -> None:
    thread, request_id = new_thread(), str(uuid.uuid4())
    path = stream_path(LONG, thread, request_id)
    with SSEConnection(demo_backend.port, "GET", path) as first:
        head = events(read_until_token(first, 10))
        location = first.headers["content-location"]
    # What EventSource does after a cut: the same URL, with the last id it received.
    with SSEConnection(demo_backend.port, "GET", path, headers={"Last-Event-ID": str(head[-1].id)}) as again:
        rest = events(again.read_all())
        assert again.headers["content-location"] == location
    assert CHAT_LOCATION.match(location)
    assert_whole(head + rest)  # ids 1..n once each; the joined tokens are done's sha256
    assert stored_roles(demo_backend, thread) == ["user", "assistant"], "one message, one reply"
    # Without Last-Event-ID (a page that opened a new EventSource), the same reply from id 1.
    with SSEConnection(demo_backend.port, "GET", path) as replay:
        assert [b.raw for b in events(replay.read_all())] == [b.raw for b in head + rest]
    assert stored_roles(demo_backend, thread) == ["user", "assistant"]


@pytest.mark.parametrize(
    "request_id",
    [
        "ECHO1xy",  # 7 characters
        "ECHO" + "x" * 61,  # 65
        "ECHO/../x",
        "ECHO<b>hi</b>",
        "ECHO xyz 123",
        "ECHO\u00e9xyz123",  # a letter, but not ASCII
    ],
)
def test_a_bad_request_id_is_422_without_echo_and_sends_nothing(demo_backend: BackendProcess, request_id: str) -> None:
    thread = new_thread()
    status, _, body = get_json(demo_backend.port, stream_path("hello", thread, request_id))
    assert status == 422
    assert body["detail"][0]["loc"] == ["query", "requestId"]
    assert "ECHO" not in str(body), "the input is never echoed"
    assert stored_roles(demo_backend, thread) == []


def test_last_event_id_without_request_id_ends_clearly_and_sends_nothing(demo_backend: BackendProcess) -> None:
    thread = new_thread()
    path = stream_path("sent once", thread)
    with SSEConnection(demo_backend.port, "GET", path, headers={"Last-Event-ID": "7"}) as conn:
        event = the_expired_event(conn)
    assert event.data["content"] == NOT_RESUMABLE
    assert event.data["threadId"] == thread
    assert "content-location" not in conn.headers, "there is no reply to name"
    assert stored_roles(demo_backend, thread) == []


def test_a_reconnection_whose_request_id_expired_ends_clearly(demo_backend: BackendProcess) -> None:
    thread, request_id = new_thread(), str(uuid.uuid4())
    path = stream_path("short", thread, request_id)
    # A requestId never seen (or expired), with Last-Event-ID: a reconnection, never a new message.
    with SSEConnection(demo_backend.port, "GET", path, headers={"Last-Event-ID": "3"}) as conn:
        assert the_expired_event(conn).data["content"] == EXPIRED
    assert stored_roles(demo_backend, thread) == []
    # Its reply expires before its requestId (a Redis restart without its data): expired too.
    with SSEConnection(demo_backend.port, "GET", path) as conn:
        assert_whole(events(conn.read_all()))
        reply = conn.headers["content-location"].rpartition("/")[2]
    client: redis.Redis = store(demo_backend)
    assert client.ttl(request_key(request_id)) > 0, "the claim expires like its reply"
    client.delete(reply_key(reply), meta_key(reply))
    with SSEConnection(demo_backend.port, "GET", path, headers={"Last-Event-ID": "3"}) as conn:
        assert the_expired_event(conn).data["content"] == EXPIRED
    assert stored_roles(demo_backend, thread) == ["user", "assistant"]


def test_a_request_id_used_for_another_message_is_refused(demo_backend: BackendProcess) -> None:
    thread, request_id = new_thread(), str(uuid.uuid4())
    with SSEConnection(demo_backend.port, "GET", stream_path("first", thread, request_id)) as conn:
        assert_whole(events(conn.read_all()))
    for other in (stream_path("ECHO second", thread, request_id), stream_path("first", new_thread(), request_id)):
        status, _, body = get_json(demo_backend.port, other)
        assert status == 409, body
        assert "ECHO" not in str(body)
    assert stored_roles(demo_backend, thread) == ["user", "assistant"]
