"""The delivery spike's event format, shared by bench/spike/app.py and worker.py (tests/bench/test_spike.py)."""

from __future__ import annotations

import hashlib
import json

# The probe's kind of text: ASCII, right-to-left, emoji with a ZWJ, CJK (multi-byte UTF-8 through every hop).
PROBE_TOKENS = ("Hello", " world", " مرحبا", " 🚀", " 👩‍💻", " 你好世界", " stream", " ok")


def event_data(kind: str, reply: str, content: object, ts_ms: float) -> str:
    """The event schema's JSON: {type, threadId, content, ts}."""
    return json.dumps({"type": kind, "threadId": reply, "content": content, "ts": round(ts_ms, 3)},
                      ensure_ascii=False, separators=(",", ":"))


def encode_event(event_id: int, kind: str, reply: str, content: object, ts_ms: float) -> bytes:
    """One SSE event as the backend writes it: ``id: n`` and one ``data:`` line."""
    return f"id: {event_id}\ndata: {event_data(kind, reply, content, ts_ms)}\n\n".encode()


def done_summary(contents: list[str]) -> dict[str, object]:
    """The done event's content: what the client checks its joined text against."""
    text = "".join(contents).encode()
    return {"tokens": len(contents), "bytes": len(text), "sha256": hashlib.sha256(text).hexdigest()}


def stream_id(seq: int) -> str:
    """Redis Stream entry id of event ``seq``: the event id is the id's first part, so XREAD resumes after it."""
    if seq < 0:
        raise ValueError("event ids start at 1 (0 means: from the start)")
    return f"{seq}-0"


def resume_from(last_event_id: str | None) -> int:
    """The event to resume after: Last-Event-ID when it is a plain event id, else 0 (replay from the start)."""
    if last_event_id is None or not last_event_id.strip().isdigit() or len(last_event_id.strip()) > 12:
        return 0
    return int(last_event_id.strip())
