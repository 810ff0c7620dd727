"""The resume hop: a stream cut halfway with real curl, resumed with Last-Event-ID, the two parts judged together.

The stand-in server (stream_check_server: /resumable and /replies/<id>) serves the backend's contract for
resumable replies, and each way of breaking it (RESUME_MODES). The hop must pass on the first and fail on each
of the others, naming the break.
"""

from __future__ import annotations

import dataclasses
import time

import pytest

from ansible_collections.pi5.streaming.plugins.module_utils.stream_check import (
    CheckResult,
    Criteria,
    Hop,
    HopsResult,
    Request,
    ResumeResult,
    UsageError,
    check,
    render,
    resume_request,
)
from ansible_collections.pi5.streaming.plugins.module_utils.stream_check.resume import check_resume, id_ranges
from tests.stream_check.stream_check_server import RESUME_MODES, Reply, SseServer, TlsServer

N = 10
RESUME = Criteria(resume=True)


def url(server: SseServer | TlsServer, mode: str = "good", n: int = N, interval_ms: int = 30) -> str:
    return server.url(f"/resumable?n={n}&interval_ms={interval_ms}&resume={mode}")


def single(server: SseServer, mode: str, headers: tuple[str, ...] = (), interval_ms: int = 30) -> CheckResult:
    result = check([Hop("", Request(url=url(server, mode, interval_ms=interval_ms), headers=headers), RESUME)])
    assert isinstance(result, CheckResult)
    return result


def resumed(result: CheckResult) -> ResumeResult:
    assert result.resume is not None, result.notes
    return result.resume


def first_reply(server: SseServer) -> Reply:
    """The reply the last /resumable request started."""
    return list(server.replies.values())[-1]


class TestTheContract:
    def test_a_cut_reply_resumes_with_nothing_missing_or_twice(self, server: SseServer) -> None:
        before = len(server.seen)
        # Paced slowly enough that the server is still writing when curl stops, however loaded this machine is.
        result = single(server, "good", interval_ms=100)
        assert (result.verdict, result.incremental) == ("incremental", True), result.diagnosis
        resume = resumed(result)
        assert resume.ok, resume.diagnosis
        # The cut came after half the tokens the check counted (at least; a read may carry two events).
        assert resume.cut_after_tokens == N // 2 <= int(resume.last_event_id or 0) < N
        assert resume.ids_before[-1] == resume.last_event_id
        assert [int(i) for i in resume.ids_before + resume.ids_after] == list(range(1, N + 2))
        assert resume.tokens == N and resume.status == 200
        assert result.summary.endswith("; a cut stream resumes")
        stream, cut, again = server.seen[before:]
        assert (stream.path, cut.path) == ("/resumable", "/resumable")  # the check's own stream, then the one cut
        assert resume.resume_url == server.url(again.path)
        assert again.headers["last-event-id"] == resume.last_event_id
        assert again.client_port != cut.client_port  # a new connection
        reply = first_reply(server)
        deadline = time.monotonic() + 2
        while not reply.first_cut and time.monotonic() < deadline:  # the server sees the cut at its next write
            time.sleep(0.02)
        assert reply.first_cut and not reply.first_completed

    def test_the_report_shows_the_resume(self, server: SseServer) -> None:
        table = render(single(server, "good"))
        [row] = [line for line in table.splitlines() if line.split()[:1] == ["resume"]]
        assert row.split()[1:3] == ["ok:", "cut"] and "nothing missing or twice" in row and "sha256 matches" in row

    def test_the_resume_keeps_the_request_options(self, tls_server: TlsServer) -> None:
        """Same CA, --resolve, HTTP version and headers: the certificate is valid for pi5.test only, so a resume
        request without them fails."""
        token = "Bearer resume-token-0123"
        request = Request(
            url=url(tls_server), cacert=tls_server.cacert, resolve=(tls_server.resolve(),), http_version="1.1",
            headers=(f"Authorization: {token}",),
        )
        result = check([Hop("nginx", request, RESUME)])
        assert isinstance(result, CheckResult)
        assert resumed(result).ok, result.diagnosis
        again = tls_server.server.seen[-1]
        assert again.path.startswith("/replies/")
        assert (again.headers["authorization"], again.headers["host"]) == (token, f"pi5.test:{tls_server.server.port}")


BROKEN = {
    "none": "the response names no reply to resume (no Content-Location header): ",
    "foreign": "points to another origin: the check does not follow it",
    "lost": "answered HTTP 404 (<html><body>404 Not Found</body></html>)",
    "noid": "the events before the cut carry no id: line, so a reconnect has no Last-Event-ID to send",
    "textid": "the last id before the cut, 'x",
    "expired": "the resume URL answered `expired` (this reply has expired; reload the thread): the reply was gone",
    "alter": "the joined text of both connections does not match the done event: sha256 ",
}


class TestEachBreak:
    def test_every_break_of_the_server_is_tested(self) -> None:
        assert set(RESUME_MODES) == {"good", "replay", "again", "skip", *BROKEN}

    @pytest.mark.parametrize("mode", sorted(BROKEN))
    def test_fails_naming_the_break(self, server: SseServer, mode: str) -> None:
        result = single(server, mode)
        assert (result.verdict, result.incremental) == ("not_resumable", False)
        assert BROKEN[mode] in result.diagnosis, result.diagnosis
        assert not resumed(result).ok
        assert result.failures[0] == f"not_resumable: {result.diagnosis}"

    def test_a_replay_from_the_start_is_ids_twice(self, server: SseServer) -> None:
        result = single(server, "replay")
        last = resumed(result).last_event_id
        assert result.diagnosis.startswith(
            f"the resume sent events already received: Last-Event-ID: {last} was answered from id 1 (ids 1-{last} twice): "
            "the server (or a proxy that drops the header) ignored Last-Event-ID"
        ), result.diagnosis

    def test_resuming_at_the_id_instead_of_after_it_is_one_id_twice(self, server: SseServer) -> None:
        result = single(server, "again")
        last = resumed(result).last_event_id
        assert f"Last-Event-ID: {last} was answered from id {last} (ids {last} twice)" in result.diagnosis
        assert "resumes at the given id instead of after it" in result.diagnosis

    def test_skipped_events_are_a_gap(self, server: SseServer) -> None:
        result = single(server, "skip")
        last = int(resumed(result).last_event_id or 0)
        assert (
            f"the resume skipped events: Last-Event-ID: {last} was answered from id {last + 3} "
            f"(ids {last + 1}-{last + 2} never arrived)"
        ) in result.diagnosis

    def test_the_foreign_origin_is_never_asked(self, server: SseServer) -> None:
        before = len(server.seen)
        result = single(server, "foreign", headers=("Authorization: Bearer x",))
        assert result.verdict == "not_resumable"
        assert resumed(result).resume_url is None
        assert [seen.path for seen in server.seen[before:]] == ["/resumable", "/resumable"]

    def test_a_stream_shorter_than_the_cut(self, server: SseServer) -> None:
        resume = check_resume(Request(url=url(server, n=4)), expected_tokens=N)
        assert not resume.ok
        assert resume.diagnosis.startswith(f"the stream ended before {N // 2} tokens arrived, so it could not be cut")

    def test_a_stream_that_stalls_before_the_cut(self, server: SseServer) -> None:
        resume = check_resume(Request(url=server.url("/stall?seconds=3"), max_time=1.0), expected_tokens=N)
        assert (resume.ok, resume.diagnosis) == (False, f"{N // 2} tokens did not arrive within 1 s, so the stream was not cut")

    def test_too_few_tokens_to_cut(self) -> None:
        resume = check_resume(Request(url="http://127.0.0.1:9/never-asked"), expected_tokens=1)
        assert (resume.ok, resume.diagnosis) == (False, "the stream carries 1 token(s): too few to cut in two")


class TestHopByHop:
    def test_the_hop_that_does_not_resume_is_blamed(self, server: SseServer) -> None:
        hops = [Hop("backend", Request(url=url(server)), RESUME), Hop("nginx", Request(url=url(server, "replay")), RESUME)]
        result = check(hops)
        assert isinstance(result, HopsResult)
        assert (result.verdict, result.first_bad_hop) == ("not_resumable", "nginx")
        assert result.diagnosis.startswith(
            "nginx does not resume a cut stream: backend resumes a cut stream, but the resume sent events already received"
        ), result.diagnosis
        lines = render(result).splitlines()
        assert lines[-3].startswith("resume backend: ok: cut after ")
        assert lines[-2].startswith("resume nginx: FAILED: the resume sent events already received")

    def test_the_backend_that_does_not_resume_is_blamed_itself(self, server: SseServer) -> None:
        hops = [Hop("backend", Request(url=url(server, "none")), RESUME), Hop("nginx", Request(url=url(server)), RESUME)]
        result = check(hops)
        assert isinstance(result, HopsResult)
        assert result.first_bad_hop == "backend"
        assert result.diagnosis.startswith("backend itself does not resume a cut stream: the response names no reply")

    def test_every_hop_resumes(self, server: SseServer) -> None:
        hops = [Hop("backend", Request(url=url(server)), RESUME), Hop("nginx", Request(url=url(server)))]
        result = check(hops)
        assert isinstance(result, HopsResult) and result.incremental, result.diagnosis
        assert result.diagnosis == "every hop streams incrementally (backend, nginx); a cut stream resumes through backend"
        assert result.hops[1].resume is None  # nginx did not ask for it

    def test_the_resume_waits_for_the_stream_check(self, server: SseServer) -> None:
        """A hop that does not stream is not cut and resumed: its own diagnosis stands."""
        before = len(server.seen)
        hops = [Hop("backend", Request(url=url(server)), RESUME), Hop("nginx", Request(url=server.url("/burst?n=8")), RESUME)]
        result = check(hops)
        assert isinstance(result, HopsResult)
        assert (result.verdict, result.first_bad_hop) == ("buffered", "nginx")
        assert all(hop.resume is None for hop in result.hops)
        assert "the resume hop did not run: the stream check failed first" in result.hops[0].notes
        assert not any(seen.path.startswith("/replies/") for seen in server.seen[before:])


class TestPieces:
    def test_the_resume_request(self) -> None:
        first = Request(
            url="https://pi5.local:8443/api/chat/message?x=1", method="POST", data="{}", http_version="2",
            headers=("Authorization: Bearer t", "Last-Event-ID: 3"), cacert="/ca.pem",
            resolve=("pi5.local:8443:127.0.0.1",), max_time=7.0,
        )
        again = resume_request(first, "/api/chat/replies/0f3c#frag", "12")
        assert again.url == "https://pi5.local:8443/api/chat/replies/0f3c"
        assert (again.effective_method, again.data) == ("GET", None)
        assert again.headers == ("Authorization: Bearer t", "Last-Event-ID: 12")
        assert dataclasses.replace(again, url=first.url, method="POST", data="{}", headers=first.headers) == first

    def test_resume_needs_a_done_event(self) -> None:
        with pytest.raises(UsageError, match="resume needs a stream that ends with a done event"):
            Hop("x", Request(url="http://a/", watch=2.0), RESUME)
        with pytest.raises(UsageError, match="resume needs a stream that ends with a done event"):
            Hop("x", Request(url="http://a/"), Criteria(resume=True, expect_done=False))

    @pytest.mark.parametrize(
        ("ids", "shown"),
        [([], "none"), (["1"], "1"), (["1", "2", "3", "5", "6", "9"], "1-3, 5-6, 9"), (["2", "x", "3"], "2, 'x', 3")],
    )
    def test_id_ranges(self, ids: list[str], shown: str) -> None:
        assert id_ranges(ids) == shown
