"""The anthropic provider against a local stand-in of the Messages API."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest

from app.settings import Settings
from tests.backend.anthropic_standin import (
    GOOD_TOKENS,
    SCENARIO_BAD_KEY,
    SCENARIO_MIDSTREAM_ERROR,
    SCENARIO_OVERLOADED,
    SCENARIO_SLOW,
    VALID_KEY,
    StandIn,
)
from tests.backend.backend_client import Block, events, get_json, post_json
from tests.backend.backend_harness import BackendProcess, inprocess_backend


def chat(backend: BackendProcess, message: str, thread_id: str | None = None) -> list[Block]:
    payload = {"message": message} | ({"threadId": thread_id} if thread_id else {})
    with post_json(backend.port, "/api/chat/message", payload) as conn:
        evts = events(conn.read_all())
    assert conn.status == 200
    assert evts[-1].data["type"] == "done"
    return evts


def error_of(evts: list[Block]) -> str:
    kinds = [e.data["type"] for e in evts]
    assert kinds[-2:] == ["error", "done"], kinds
    message: str = evts[-2].data["content"]
    return message


@pytest.fixture
def good(anthropic_backend: BackendProcess) -> BackendProcess:
    return anthropic_backend


def test_good_stream_relays_the_text_deltas(good: BackendProcess, standin: StandIn) -> None:
    evts = chat(good, "hello", thread_id="anthropic-good")
    tokens = [e.data["content"] for e in evts if e.data["type"] == "token"]
    assert tokens == list(GOOD_TOKENS)
    text = "".join(GOOD_TOKENS)
    assert evts[-1].data["content"]["sha256"] == hashlib.sha256(text.encode()).hexdigest()

    request = standin.requests[-1]
    assert request["path"] == "/v1/messages"
    sent = request["headers"].get("x-api-key") or request["headers"]["authorization"]
    assert sent.removeprefix("Bearer ") == VALID_KEY
    assert request["body"]["model"] == "claude-standin-1"
    assert request["body"]["stream"] is True
    assert request["body"]["messages"] == [{"role": "user", "content": "hello"}]

    _, _, thread = get_json(good.port, "/api/chat/threads/anthropic-good")
    assert thread["messages"][-1]["content"] == text


def test_history_is_sent_with_the_next_message(good: BackendProcess, standin: StandIn) -> None:
    chat(good, "first", thread_id="anthropic-history")
    chat(good, "second", thread_id="anthropic-history")
    assert standin.requests[-1]["body"]["messages"] == [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "".join(GOOD_TOKENS)},
        {"role": "user", "content": "second"},
    ]


def test_rejected_key_becomes_an_error_event(good: BackendProcess) -> None:
    """The stand-in answers 401 authentication_error, as for a revoked key."""
    message = error_of(chat(good, SCENARIO_BAD_KEY, thread_id="anthropic-401"))
    assert "ANTHROPIC_API_KEY" in message
    assert "401" in message
    _, _, thread = get_json(good.port, "/api/chat/threads/anthropic-401")
    assert thread["messages"][-1]["status"] == "error"
    assert thread["messages"][-1]["error"] == message


def test_overloaded_becomes_an_error_event(good: BackendProcess) -> None:
    message = error_of(chat(good, SCENARIO_OVERLOADED))
    assert "overloaded" in message
    assert "529" in message


def test_error_inside_the_stream_keeps_the_partial_reply(good: BackendProcess) -> None:
    evts = chat(good, SCENARIO_MIDSTREAM_ERROR)
    assert [e.data["content"] for e in evts if e.data["type"] == "token"] == list(GOOD_TOKENS[:2])
    assert "overloaded" in error_of(evts)


def test_stalled_api_times_out_into_an_error_event(good: BackendProcess) -> None:
    """BACKEND_PROVIDER_TIMEOUT_S=1 against a stand-in that stalls for 5 s."""
    started = time.monotonic()
    evts = chat(good, SCENARIO_SLOW)
    elapsed = time.monotonic() - started
    assert "timed out" in error_of(evts)
    assert 0.9 < elapsed < 4.5


def test_missing_key_and_unwritable_data_dir_are_not_ready(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    settings = Settings(provider="anthropic", auth_off=True, data_dir=blocker / "data")
    with inprocess_backend(settings) as port:
        assert get_json(port, "/api/health")[0] == 200
        status, _, body = get_json(port, "/api/ready")
        with post_json(port, "/api/chat/message", {"message": "hi"}) as conn:
            body_bytes = conn.read_body()
    assert status == 503
    assert body["status"] == "unavailable"
    assert body["provider"] == "anthropic"
    assert any("ANTHROPIC_API_KEY" in reason for reason in body["reasons"])
    assert any("not writable" in reason for reason in body["reasons"])
    assert conn.status == 503
    assert b"cannot store the message" in body_bytes


def test_provider_without_key_explains_itself_in_the_stream(tmp_path: Path) -> None:
    with (
        inprocess_backend(Settings(provider="anthropic", auth_off=True, data_dir=tmp_path)) as port,
        post_json(port, "/api/chat/message", {"message": "hi"}) as conn,
    ):
        message = error_of(events(conn.read_all()))
    assert "ANTHROPIC_API_KEY" in message
