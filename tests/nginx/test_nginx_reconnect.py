"""A real browser's EventSource survives a backend restart mid-reply (issue 14's Done-when).

Headless Chromium loads the stream page through the real nginx (the role's templates) in front
of the real backend, and opens ``new EventSource('/api/chat/message/stream?message=…&requestId=<uuid>')``
with no code of its own for reconnecting. Once a few tokens are in, the test restarts the
API process (Redis and the worker keep running, as with ``docker restart chat-backend``). The
browser reconnects by itself to the same URL with ``Last-Event-ID``; the requestId makes that a
resumption of the reply, not the message sent again. The page counts every event it receives
(an id twice is reported, never merged), its reconnects and its own loads.

The negative control is the same page without a requestId: its reconnection must end with the
``expired`` event and store nothing twice, and the checks of the first test fail on it.
"""

from __future__ import annotations

import hashlib
import json
import time
import urllib.request
from collections import Counter
from typing import Any
from urllib.parse import urlencode

import pytest

from tests.nginx.browser_harness import Collector, chromium_page
from tests.nginx.nginx_harness import Backend, Stack

MESSAGE = " ".join(f"w{i}" for i in range(150))  # ~170 tokens: ~7 s at BACKEND_TOKEN_INTERVAL_MS=40
PROGRESS_TOKENS = 5  # the restart starts once the browser has this many tokens
RETRY_S = 3.0  # the backend's `retry: 3000`: the browser's wait before reconnecting
LIMIT_MS = 25_000
STORED_TIMEOUT_S = 15.0
POLL_S = 1.0  # within the backend's chat rate (BACKEND_CHAT_RATE_PER_S, 1/s by default)


def run_page(stack: Stack, chromium: str, collector: Collector, site: str, *, request_id: bool) -> tuple[dict[str, Any], float]:
    """The page's final report, and how long the API's restart took."""
    page = {
        "src": "/api/chat/message/stream?" + urlencode({"message": MESSAGE}),
        "limit_ms": str(LIMIT_MS),
        "reconnect": "1",
        "progress_after": str(PROGRESS_TOKENS),
    }
    if request_id:
        page["request_id"] = "new"
    with chromium_page(chromium, stack.nginx(site), collector, workdir=stack.workdir, page=page) as next_report:
        assert next_report() == {"progress": PROGRESS_TOKENS}
        restart_s = stack.backend.restart_api()
        return next_report(), restart_s


def payloads(report: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(lastEventId, event) of every message the page received, in order."""
    return [(str(e["id"]), json.loads(e["data"])) for e in report["events"]]


def problems(report: dict[str, Any]) -> list[str]:
    """What differs from "the complete reply, once": empty when the browser showed it whole."""
    seen = payloads(report)
    found = []
    dones = [event for _, event in seen if event["type"] == "done"]
    if report["reason"] != "done" or len(dones) != 1:
        found.append(f"ended with {report['reason']}, {len(dones)} done")
    # An event without an id (expired) keeps the previous lastEventId: only events with ids count.
    ids = Counter(int(last_id) for last_id, event in seen if event["type"] != "expired")
    if sorted(ids) != list(range(1, len(ids) + 1)) or any(count != 1 for count in ids.values()):
        twice = sorted(n for n, count in ids.items() if count > 1)
        found.append(f"ids not 1..n once each (twice: {twice}, {len(ids)} distinct)")
    tokens = "".join(event["content"] for _, event in seen if event["type"] == "token")
    if dones and dones[-1]["content"]["sha256"] != hashlib.sha256(tokens.encode()).hexdigest():
        found.append("the joined tokens are not what done summarises")
    return found


def stored_roles(backend: Backend, thread: str) -> list[str]:
    """The thread's stored messages' roles, once the worker has stored the reply (or timed out)."""
    deadline = time.monotonic() + STORED_TIMEOUT_S
    while True:
        with urllib.request.urlopen(backend.url(f"/api/chat/threads/{thread}"), timeout=5) as response:
            roles = [message["role"] for message in json.load(response)["messages"]]
        if "assistant" in roles or time.monotonic() > deadline:
            return roles
        time.sleep(POLL_S)


def tokens_before_the_cut(report: dict[str, Any]) -> int:
    cut_ms = report["errors"][0]["at_ms"]
    return sum(1 for e in report["events"] if e["at_ms"] < cut_ms and json.loads(e["data"])["type"] == "token")


@pytest.mark.parametrize("site", ["shipped", "shipped_plain"])
def test_a_restart_mid_reply_shows_the_whole_reply_once_without_a_reload(
    stack: Stack, chromium: str, collector: Collector, site: str
) -> None:
    report, restart_s = run_page(stack, chromium, collector, site, request_id=True)
    assert restart_s < RETRY_S, f"the restart took {restart_s:.1f} s: the browser would have met nginx's 502"
    assert problems(report) == [], report
    assert report["errors"], "the restart cut the stream"
    assert report["opens"] >= 2, "EventSource reconnected by itself"
    assert report["loads"] == 1, "no page reload"
    done = payloads(report)[-1][1]
    assert PROGRESS_TOKENS <= tokens_before_the_cut(report) < done["content"]["tokens"], "the cut landed mid-reply"
    assert "requestId=" in report["src"]
    assert stored_roles(stack.backend, done["threadId"]) == ["user", "assistant"], "one message, one reply"


def test_without_a_request_id_the_reconnection_ends_with_expired_and_sends_nothing_twice(
    stack: Stack, chromium: str, collector: Collector
) -> None:
    report, restart_s = run_page(stack, chromium, collector, "shipped", request_id=False)
    assert restart_s < RETRY_S, f"the restart took {restart_s:.1f} s: the browser would have met nginx's 502"
    assert report["errors"] and report["opens"] >= 2, "the browser did reconnect"
    seen = payloads(report)
    expired = seen[-1][1]
    assert report["reason"] == "expired"
    assert "without a requestId" in expired["content"]
    assert problems(report) == ["ended with expired, 0 done"], "the first test's checks catch an incomplete reply"
    thread = seen[0][1]["threadId"]  # the query had none: the status event names the new thread
    assert stored_roles(stack.backend, thread) == ["user", "assistant"], "the message was not sent twice"
