"""The resume hop: cut a stream halfway, reconnect with Last-Event-ID, and prove that the two parts join up.

A browser's EventSource whose connection drops reconnects with the last ``id`` it received in
``Last-Event-ID``. This project's replies are built for it (README, "Resumable replies"): every SSE response
names its reply's GET URL in ``Content-Location``, a GET of that URL with ``Last-Event-ID: n`` continues after
event n, ids count 1, 2, 3..., the done event sums up the whole reply ({tokens, sha256, bytes}), and a reply
that has expired answers one ``expired`` event without an id. The hop proves it with real curl:

1. stream the URL with the hop's own request (headers, CA, resolve, HTTP version) and kill curl once half the
   tokens the stream check counted have arrived: the kernel closes the connection, as a dropped network does;
2. read ``Content-Location`` from the cut response's headers and resolve it against the URL (same origin
   only: the resume request carries the first one's credentials);
3. GET it with ``Last-Event-ID: <the last id received>`` and read to the done event;
4. judge (:func:`judge_resume`, a pure function of both captures): every id one above the previous one across
   both parts, and the joined token text equal to the done event's summary.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, Final
from urllib.parse import urljoin, urlsplit

from ansible_collections.pi5.streaming.plugins.module_utils.stream_check.curl import Capture, Chunk, fetch
from ansible_collections.pi5.streaming.plugins.module_utils.stream_check.events import (
    HEARTBEAT_TYPES,
    check_integrity,
    event_content,
    event_type,
    read_events,
    token_content,
)
from ansible_collections.pi5.streaming.plugins.module_utils.stream_check.judge import TIMEOUT_EXIT
from ansible_collections.pi5.streaming.plugins.module_utils.stream_check.options import Request
from ansible_collections.pi5.streaming.plugins.module_utils.stream_check.parse import SseEvent, SseParser, parse_sse

__all__ = ["Problem", "ResumeResult", "check_resume", "cut_after", "id_ranges", "judge_cut", "judge_resume", "resume_request"]

EXPIRED_TYPE: Final = "expired"
_DECIMAL = re.compile(r"^[0-9]{1,18}$")
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}


@dataclass(frozen=True)
class Problem:
    observed: str  # what happened
    advice: str = ""  # the likely cause

    @property
    def diagnosis(self) -> str:
        return f"{self.observed}: {self.advice}" if self.advice else self.observed


@dataclass
class ResumeResult:
    """One resume hop; :meth:`to_dict` is JSON-serialisable."""

    ok: bool
    observed: str  # what happened, without the advice
    diagnosis: str  # the summary when ok, else what broke and the likely cause
    resume_url: str | None  # Content-Location resolved against the URL
    cut_after_tokens: int
    last_event_id: str | None  # what the resume request sent in Last-Event-ID
    ids_before: list[str]  # the ids of the events before the cut, as received
    ids_after: list[str]  # and of the resumed response
    tokens: int  # token events of both parts together
    status: int | None  # the resumed response's HTTP status
    elapsed_ms: float  # both connections

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def cut_after(expected_tokens: int) -> int:
    """Cut once this many tokens arrived: about half of what the stream check counted (0: too few to cut)."""
    return expected_tokens // 2


def id_ranges(ids: Sequence[str]) -> str:
    """``["1", "2", "3", "5"]`` -> ``"1-3, 5"``; ids that are not numbers are shown as they are."""
    parts: list[str] = []
    run: list[int] = []
    for raw in ids:
        number = int(raw) if _DECIMAL.match(raw) else None
        if number is not None and run and number == run[-1] + 1:
            run.append(number)
            continue
        if run:
            parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [] if number is None else [number]
        if number is None:
            parts.append(repr(raw))
    if run:
        parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ", ".join(parts) or "none"


def _after_tokens(count: int) -> Callable[[Chunk], bool]:
    """An ``until`` for :func:`fetch`: true once ``count`` token events have arrived."""
    parser = SseParser()
    seen = 0

    def enough(chunk: Chunk) -> bool:
        nonlocal seen
        known = len(parser.events)
        parser.feed(chunk.data, chunk.at)
        seen += sum(token_content(event) is not None for event in parser.events[known:])
        return seen >= count

    return enough


def _origin(url: str) -> tuple[str, str | None, int | None]:
    parts = urlsplit(url)
    return parts.scheme, parts.hostname, parts.port or _DEFAULT_PORTS.get(parts.scheme)


def resume_request(request: Request, location: str, last_id: str) -> Request:
    """The reconnect: a GET of ``location`` (resolved against the URL) with the request's own options."""
    url = urljoin(request.url, location.strip()).partition("#")[0]
    headers = tuple(line for line in request.headers if not line.lower().startswith("last-event-id:"))
    return dataclasses.replace(request, url=url, method=None, data=None, headers=(*headers, f"Last-Event-ID: {last_id}"))


def _ids(events: Sequence[SseEvent]) -> list[SseEvent]:
    """The events that must carry ids: all but heartbeat events (heartbeat comments are no events)."""
    return [event for event in events if event.type not in HEARTBEAT_TYPES and event_type(event) not in HEARTBEAT_TYPES]


def _response_problem(capture: Capture, what: str) -> Problem | None:
    if capture.status is None:
        return Problem(f"{what} failed: {capture.curl_error or 'no response'}")
    content_type = capture.headers.get("content-type", "")
    if capture.status != 200:
        excerpt = b"".join(chunk.data for chunk in capture.chunks)[:200].decode("utf-8", errors="replace").strip()
        return Problem(f"{what} answered HTTP {capture.status}" + (f" ({excerpt})" if excerpt else ""))
    if not content_type.startswith("text/event-stream"):
        return Problem(f"{what} answered {content_type or 'no Content-Type'}, not text/event-stream")
    encoding = capture.headers.get("content-encoding", "").strip().lower()
    if encoding not in ("", "identity"):
        return Problem(f"{what} is {encoding}-compressed", "nothing may compress text/event-stream")
    return None


def _id_problem(before: Sequence[SseEvent], after: Sequence[SseEvent]) -> Problem | None:
    """Integer ids, each one above the previous one, across the cut: nothing missing, nothing twice."""
    for part, events in (("before the cut", before), ("after the cut", after)):
        for index, event in enumerate(events, 1):
            if not event.own_id:
                return Problem(
                    f"event {index} {part} ({event_type(event)}) carries no id: line",
                    "a reconnecting client resumes from the last id it saw, so every event needs one",
                )
            if not _DECIMAL.match(event.id or ""):
                return Problem(f"id {event.id!r} {part} is not a decimal number")
    if not after:
        return Problem("the resumed response carried no events")
    for part, events in (("before the cut", before), ("after the cut", after)):
        for previous, following in pairwise(int(event.id or 0) for event in events):
            if following <= previous:
                return Problem(f"{part}, id {following} came after id {previous}", "ids must only grow")
            if following != previous + 1:
                return Problem(
                    f"{part}, the ids jump from {previous} to {following} "
                    f"(ids {id_ranges([str(i) for i in range(previous + 1, following)])} never arrived)"
                )
    last, first = int(before[-1].id or 0), int(after[0].id or 0)
    if first <= last:
        twice = id_ranges([event.id or "" for event in after if int(event.id or 0) <= last])
        cause = (
            "the server (or a proxy that drops the header) ignored Last-Event-ID and replayed the reply from the start"
            if first == 1
            else "the server resumes at the given id instead of after it"
        )
        return Problem(
            f"the resume sent events already received: Last-Event-ID: {last} was answered from id {first} "
            f"(ids {twice} twice)",
            cause,
        )
    if first > last + 1:
        return Problem(
            f"the resume skipped events: Last-Event-ID: {last} was answered from id {first} "
            f"(ids {id_ranges([str(i) for i in range(last + 1, first)])} never arrived)",
            "the server lost the events between the cut and the resume",
        )
    return None


def judge_resume(first: Capture, second: Capture, cut_at: int) -> tuple[Problem | None, str]:
    """``(problem or None, summary)`` for the cut response ``first`` (which passed :func:`judge_cut`) and the
    resumed ``second``."""
    before = _ids(parse_sse(first.chunks).events)
    after_stream = parse_sse(second.chunks)
    after = _ids(after_stream.events)
    problem = _response_problem(second, f"the resume URL {second.request.url}")
    if problem is not None:
        return problem, ""
    expired = next((event for event in after if event_type(event) == EXPIRED_TYPE), None)
    if expired is not None:
        return Problem(
            f"the resume URL answered `expired` ({event_content(expired)})",
            f"the reply was gone {second.elapsed_s + first.elapsed_s:.1f} s after it started: its TTL, or Redis "
            "evicting or losing it",
        ), ""
    problem = _id_problem(before, after)
    if problem is not None:
        return problem, ""
    reading = read_events(after_stream)
    if reading.done is None:
        ending = second.curl_error or "a clean end"
        return Problem(f"the resumed response ended without a done event ({ending})"), ""
    contents = [*read_events(parse_sse(first.chunks)).contents, *reading.contents]
    integrity, detail = check_integrity(contents, reading.done_summary)
    if integrity != "ok":
        return Problem(
            f"the joined text of both connections does not match the done event: {detail}",
            "the ids join up, but the resumed part carries other text than the reply had"
            if integrity == "mismatch"
            else "nothing to compare the joined text with",
        ), ""
    last = before[-1].id
    summary = (
        f"cut after {cut_at} tokens (id {last}), resumed with Last-Event-ID: {last}: ids "
        f"{id_ranges([e.id or '' for e in before])} + {id_ranges([e.id or '' for e in after])}, "
        f"nothing missing or twice, {detail}"
    )
    return None, summary


def judge_cut(first: Capture, cut_at: int) -> Problem | None:
    """What stops the resume before it starts: the cut response's status, no cut, no Content-Location or ids."""
    before = _ids(parse_sse(first.chunks).events)
    problem = _response_problem(first, "the stream to cut")
    if problem is not None:
        return problem
    if not first.cut and (first.killed or first.curl_exit == TIMEOUT_EXIT):
        return Problem(f"{cut_at} tokens did not arrive within {first.request.deadline_s:g} s, so the stream was not cut")
    if not first.cut:
        return Problem(
            f"the stream ended before {cut_at} tokens arrived, so it could not be cut",
            "the resume hop needs a stream that lasts (the probe's tokens and interval_ms)",
        )
    location = first.headers.get("content-location", "").strip()
    if not location:
        return Problem(
            "the response names no reply to resume (no Content-Location header)",
            "every SSE response must carry its reply's GET URL there; a proxy may drop it "
            "(nginx: proxy_hide_header Content-Location), or the backend has no resumable replies",
        )
    target = urljoin(first.request.url, location)
    if _origin(target) != _origin(first.request.url):
        return Problem(
            f"Content-Location {location} points to another origin",
            "the check does not follow it, as the resume request would carry this request's credentials there",
        )
    if not before or not before[-1].own_id:
        return Problem("the events before the cut carry no id: line, so a reconnect has no Last-Event-ID to send")
    # Checked before it is sent back: the resume request carries no header a server made up.
    if not _DECIMAL.match(before[-1].id or ""):
        return Problem(f"the last id before the cut, {(before[-1].id or '')[:40]!r}, is not a decimal number")
    return None


def check_resume(request: Request, expected_tokens: int) -> ResumeResult:
    """Cut ``request``'s stream after half its ``expected_tokens``, resume it, and judge the two parts."""
    started = time.monotonic()
    cut_at = cut_after(expected_tokens)
    if cut_at < 1:
        too_few = Problem(f"the stream carries {expected_tokens} token(s): too few to cut in two")
        return _result(too_few, "", cut_at, None, None, started=started)
    first = fetch(request, until=_after_tokens(cut_at))
    stopped = judge_cut(first, cut_at)
    if stopped is not None:
        return _result(stopped, "", cut_at, first, None, started=started)
    last_id = _ids(parse_sse(first.chunks).events)[-1].id or ""
    second = fetch(resume_request(request, first.headers["content-location"], last_id))
    problem, summary = judge_resume(first, second, cut_at)
    return _result(problem, summary, cut_at, first, second, started=started)


def _result(
    problem: Problem | None, summary: str, cut_at: int, first: Capture | None, second: Capture | None, *, started: float
) -> ResumeResult:
    before = _ids(parse_sse(first.chunks).events) if first is not None else []
    after = _ids(parse_sse(second.chunks).events) if second is not None else []
    return ResumeResult(
        ok=problem is None,
        observed=summary if problem is None else problem.observed,
        diagnosis=summary if problem is None else problem.diagnosis,
        resume_url=second.request.url if second is not None else None,
        cut_after_tokens=cut_at,
        last_event_id=before[-1].id if second is not None and before else None,
        ids_before=[event.id or "" for event in before],
        ids_after=[event.id or "" for event in after],
        tokens=sum(token_content(event) is not None for event in (*before, *after)),
        status=second.status if second is not None else None,
        elapsed_ms=round((time.monotonic() - started) * 1000.0, 1),
    )
