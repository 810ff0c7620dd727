"""The delivery spike's fault drill client: streams that resume the browser's way, and a fault meanwhile.

Runs inside the spike's container with its python3 (standard library only):

    python3 -m pi5bench.spike_client '<drill spec as JSON>'   # prints the drill's result as JSON

Each stream starts a reply (``GET /api/probe/stream``), remembers the ``Content-Location`` and the last
``id:``, and when the connection ends before ``done`` it waits and asks ``Content-Location`` again with
``Last-Event-ID``, as EventSource does. Whether anything went missing or came twice is judged by
:func:`judge` (pure) from ids and the ``done`` event's count and SHA-256.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from ansible_collections.pi5.streaming.plugins.module_utils import stream_check as core

from .sse_client import ChunkedDecoder, Target, _connect, _header, request_bytes


@dataclass
class Drill:
    url: str  # base URL of one design's nginx server
    streams: int = 200
    tokens: int = 200
    interval_ms: int = 50
    ramp_per_s: float = 250.0
    retry_s: float = 1.0  # the client's reconnect delay (EventSource: the server's retry:, or ~3 s)
    timeout_s: float = 90.0
    action_at_s: float | None = None
    action_argv: list[str] = field(default_factory=list)

    @classmethod
    def from_json(cls, text: str) -> Drill:
        return cls(**json.loads(text))


@dataclass
class Resumed:
    """One reply as one client saw it over all its connections."""

    outcome: str = "pending"  # done | timeout | restarted (cut before Content-Location: a new reply began)
    connections: int = 0
    statuses: list[int] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    contents: list[str] = field(default_factory=list)
    summary: dict[str, Any] | None = None
    other_events: list[str] = field(default_factory=list)  # error, expired: anything but token/done
    seen_data: set[str] = field(default_factory=set)
    data_twice: int = 0  # the same event (same ts) delivered under two ids: a re-delivery, not a re-publish
    detail: str = ""


def judge(stream: Resumed) -> dict[str, Any]:
    """Nothing missing, nothing twice: ids unique and the joined text matching ``done`` (pure)."""
    twice = sum(count - 1 for count in Counter(stream.ids).values() if count > 1)
    integrity = core.check_integrity(stream.contents, stream.summary)[0] if stream.summary else "no_done"
    expected = stream.summary.get("tokens") if stream.summary else None
    missing = expected - len(stream.contents) if isinstance(expected, int) else None
    return {
        "complete": stream.outcome == "done" and integrity == "ok" and twice == 0,
        "integrity": integrity,
        "ids_twice": twice,
        "tokens_missing": missing,
        "reconnects": max(stream.connections - 1, 0),
    }


async def _one_connection(target: Target, stream: Resumed, deadline: float) -> str | None:
    """One request: read events until done or the end; returns the reply's Content-Location."""
    reader, writer, path = await _connect(target, max(deadline - time.time(), 0.1), None)
    try:
        writer.write(request_bytes(target.endpoint()[0], path, target.headers))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), max(deadline - time.time(), 0.1))
        stream.statuses.append(int(head.split(b" ", 2)[1]))
        location = _header(head, b"content-location")
        if stream.statuses[-1] != 200:
            return location
        decoder = ChunkedDecoder() if b"transfer-encoding: chunked" in head.lower() else None
        parser = core.SseParser()
        seen = 0
        while stream.outcome != "done":
            data = await asyncio.wait_for(reader.read(65536), max(deadline - time.time(), 0.1))
            if not data:
                break
            parser.feed(decoder.feed(data) if decoder is not None else data, time.time() * 1000)
            for event in parser.events[seen:]:
                seen += 1
                _take(event, stream)
        return location
    finally:
        writer.close()


def _take(event: core.SseEvent, stream: Resumed) -> None:
    payload = json.loads(event.data) if event.data.startswith("{") else {}
    kind = payload.get("type")
    if event.id is not None and kind in ("token", "done"):
        if event.id in stream.ids:  # a duplicate: counted by judge(), its text not joined twice
            stream.ids.append(event.id)
            return
        stream.ids.append(event.id)
    if kind == "token":
        if event.data in stream.seen_data:
            stream.data_twice += 1
        stream.seen_data.add(event.data)
        stream.contents.append(str(payload.get("content", "")))
    elif kind == "done":
        stream.summary = payload.get("content") if isinstance(payload.get("content"), dict) else {}
        stream.outcome = "done"
    else:
        stream.other_events.append(str(kind))


async def resumable(drill: Drill, start_at: float, deadline: float) -> Resumed:
    """One reply, resumed with Last-Event-ID over as many connections as it takes."""
    await asyncio.sleep(max(start_at - time.time(), 0))
    stream = Resumed()
    base = drill.url
    url = f"{base}/api/probe/stream?tokens={drill.tokens}&interval_ms={drill.interval_ms}"
    location: str | None = None
    while stream.outcome != "done" and time.time() < deadline:
        headers: tuple[tuple[str, str], ...] = ()
        if location and stream.ids:
            headers = (("Last-Event-ID", stream.ids[-1]),)
        stream.connections += 1
        try:
            found = await _one_connection(Target(f"{base}{location}" if location else url, headers=headers), stream, deadline)
            if location is None and found is None:
                stream.outcome = "restarted"  # cut before the reply's URL was known: a client would POST again
                return stream
            location = location or found
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError, ValueError, TimeoutError) as exc:
            stream.detail = f"{type(exc).__name__}: {exc}"[:160]
        if stream.outcome != "done":
            await asyncio.sleep(drill.retry_s)
    if stream.outcome != "done":
        stream.outcome = "timeout"
    return stream


async def _action(drill: Drill, start: float) -> dict[str, Any]:
    if drill.action_at_s is None:
        return {}
    await asyncio.sleep(max(start + drill.action_at_s - time.time(), 0))
    began = time.time()
    proc = await asyncio.create_subprocess_exec(*drill.action_argv, stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    return {"argv": drill.action_argv, "at_s": round(began - start, 2), "took_s": round(time.time() - began, 2),
            "rc": proc.returncode, "stderr": err.decode(errors="replace")[-300:]}


async def run_drill(drill: Drill) -> dict[str, Any]:
    start = time.time() + 0.5
    deadline = start + drill.timeout_s
    action_task = asyncio.create_task(_action(drill, start))
    results: list[Resumed] = list(
        await asyncio.gather(*(resumable(drill, start + i / drill.ramp_per_s, deadline) for i in range(drill.streams)))
    )
    action = await action_task
    verdicts = [judge(r) for r in results]
    return {
        "streams": len(results),
        "complete": sum(1 for v in verdicts if v["complete"]),
        "outcomes": dict(Counter(r.outcome for r in results)),
        "integrity": dict(Counter(v["integrity"] for v in verdicts)),
        "ids_twice": sum(v["ids_twice"] for v in verdicts),
        "same_event_twice": sum(r.data_twice for r in results),
        "tokens_missing": sum(v["tokens_missing"] or 0 for v in verdicts),
        "reconnects": sum(v["reconnects"] for v in verdicts),
        "streams_reconnected": sum(1 for v in verdicts if v["reconnects"]),
        "statuses": dict(Counter(s for r in results for s in r.statuses)),
        "other_events": dict(Counter(e for r in results for e in r.other_events)),
        "details": sorted({r.detail for r in results if r.detail})[:5],
        "action": action,
        "example": {k: v for k, v in asdict(results[0]).items() if k not in ("ids", "contents", "seen_data")} if results else None,
    }


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    print(json.dumps(asyncio.run(run_drill(Drill.from_json(argv[0])))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
