"""The resume hop through the role's real nginx: a cut stream resumes through it, and two snippets that break
resuming are caught, each named.

Upstream of the resume_* sites is the stream check's stand-in for resumable replies
(tests/stream_check/stream_check_server.py): it serves the backend's contract (Content-Location, Last-Event-ID,
ids from 1, done's summary), so what differs between the sites is nginx alone.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ansible_collections.pi5.streaming.plugins.module_utils.stream_check import (
    Criteria,
    Hop,
    HopsResult,
    Request,
    check_hops,
)
from tests.nginx.nginx_cases import PROBE
from tests.nginx.nginx_harness import Nginx, Stack
from tests.stream_check.stream_check_server import SseServer

# The role's probe shape: 20 tokens 50 ms apart.
PATH = "/api/resumable?n=20&interval_ms=50"
RESUME = Criteria(resume=True)


@pytest.fixture(scope="module")
def replies(stack: Stack) -> Iterator[SseServer]:
    with SseServer(port=stack.resume_port) as server:
        yield server


def through(server: Nginx, http_version: str) -> Request:
    return Request(url=server.url(PATH), resolve=server.resolve, cacert=server.cacert, http_version=http_version)


def path(stack: Stack, replies: SseServer, site: str) -> HopsResult:
    """What the role's post-reload check runs: the upstream alone, then nginx over HTTP/2 and HTTP/1.1, each resumed."""
    server = stack.nginx(site)
    hops = [
        Hop("backend", Request(url=replies.url(PATH)), RESUME),
        Hop("nginx-h2", through(server, "2"), RESUME),
        Hop("nginx-h1.1", through(server, "1.1"), RESUME),
    ]
    return check_hops(hops)


def test_a_cut_stream_resumes_through_the_shipped_nginx(stack: Stack, replies: SseServer) -> None:
    before = len(replies.seen)
    result = path(stack, replies, "resume_shipped")
    assert result.incremental, result.diagnosis
    assert [(hop.name, hop.http_version) for hop in result.hops] == [("backend", "1.1"), ("nginx-h2", "2"),
                                                                      ("nginx-h1.1", "1.1")]
    for hop in result.hops:
        assert hop.resume is not None and hop.resume.ok, hop.resume
        assert hop.resume.resume_url is not None and hop.resume.resume_url.startswith(hop.url.split("/api/")[0])
    resumes = [seen for seen in replies.seen[before:] if seen.path.startswith("/api/replies/")]
    assert sorted(seen.headers["last-event-id"] for seen in resumes) == sorted(
        hop.resume.last_event_id or "" for hop in result.hops if hop.resume
    )
    via_nginx = [seen for seen in resumes if "x-real-ip" in seen.headers]  # nginx's proxy_set_header X-Real-IP
    assert (len(resumes), len(via_nginx)) == (3, 2)


@pytest.mark.parametrize(
    ("site", "observed"),
    [
        ("resume_hidden_location", "the response names no reply to resume (no Content-Location header)"),
        ("resume_no_request_headers", "the resume sent events already received: Last-Event-ID: "),
    ],
)
def test_nginx_that_breaks_resuming_is_blamed(stack: Stack, replies: SseServer, site: str, observed: str) -> None:
    result = path(stack, replies, site)
    assert (result.verdict, result.first_bad_hop) == ("not_resumable", "nginx-h2"), result.diagnosis
    assert result.diagnosis.startswith(f"nginx-h2 does not resume a cut stream: backend resumes a cut stream, but {observed}")
    assert [hop.verdict for hop in result.hops] == ["incremental", "not_resumable", "not_resumable"]


def test_the_real_backend_resumes_through_the_shipped_nginx(stack: Stack) -> None:
    """The role's post-reload check, on the backend with Redis and its worker: the probe cut halfway joins up."""
    server = stack.nginx("shipped")
    revision = Criteria(resume=True, expect_header=f"X-Config-Revision: {server.site.revision}")
    hops = [Hop("backend", Request(url=stack.backend.url(PROBE)), RESUME)] + [
        Hop(name, Request(url=server.url(PROBE), resolve=server.resolve, cacert=server.cacert, http_version=version),
            revision)
        for name, version in (("nginx-h2", "2"), ("nginx-h1.1", "1.1"))
    ]
    result = check_hops(hops)
    assert result.incremental, result.diagnosis
    for hop in result.hops:
        assert hop.resume is not None and hop.resume.ok, hop.resume
        assert hop.resume.resume_url is not None and "/api/probe/replies/" in hop.resume.resume_url
