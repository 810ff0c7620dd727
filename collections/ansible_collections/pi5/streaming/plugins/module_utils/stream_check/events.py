"""What the parsed events mean: tokens, the done event, heartbeats, errors, and when each was emitted.

Servers shape their streams differently; all of these are read:

- this project's backend: JSON ``{"type": "token", "content": ..., "ts": ms}``, then ``type: done`` with a
  ``{tokens, sha256, bytes}`` summary;
- OpenAI-style chunks (``choices[0].delta.content``) ending with ``data: [DONE]``;
- Anthropic's typed events (``message_start``, ``content_block_delta`` with ``delta.text``, ``ping``,
  ``message_stop``);
- sse-starlette's ``: ping`` comments, ``event:`` names, multi-line ``data:``, plain-text data.

Emission times are read from the first of :data:`TIMESTAMP_KEYS` the events carry, as numbers in seconds,
milliseconds, microseconds or nanoseconds, or as RFC 3339 strings. The unit is decided from the stream
itself (:func:`read_timestamps`), never from a flag: epoch values by their magnitude, relative ones (a
counter since the stream started) by the largest unit whose span still fits in the time the events took to
arrive. Without usable stamps the events are judged by their arrival alone, and the result says so.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

from ansible_collections.pi5.streaming.plugins.module_utils.stream_check.parse import (
    SseComment,
    SseEvent,
    SseStream,
)

__all__ = [
    "TIMESTAMP_KEYS",
    "Integrity",
    "Reading",
    "Stamps",
    "check_integrity",
    "event_content",
    "event_type",
    "read_events",
    "read_timestamps",
    "token_content",
]

Integrity = Literal["ok", "mismatch", "not_checked"]

# Where servers put an event's emission time, most specific first.
TIMESTAMP_KEYS: Final = ("ts", "timestamp", "time", "t", "sent_at", "emitted_at", "created_at", "createdAt", "created")
DONE_TYPES: Final = frozenset({"done", "message_stop", "response.completed"})
HEARTBEAT_TYPES: Final = frozenset({"ping", "heartbeat", "keepalive", "keep-alive"})
# Seconds per unit, largest first; and each unit's epoch band (years 2001-2100), which cannot overlap.
UNITS: Final[tuple[tuple[str, float], ...]] = (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6), ("ns", 1e-9))
UNIT_WORDS: Final[Mapping[str, str]] = {"s": "seconds", "ms": "milliseconds", "µs": "microseconds", "ns": "nanoseconds"}
EPOCH_S: Final = (1.0e9, 4.1e9)
# A relative clock's span may exceed the arrival window by this much (clock rates differ slightly).
SPAN_SLACK: Final = 1.5
SPAN_SLACK_S: Final = 0.05


@dataclass(frozen=True)
class Stamps:
    """Each event's emission time (ms on the server's clock, None where unknown) and how it was read."""

    emitted_ms: tuple[float | None, ...]
    key: str | None  # the JSON key they came from
    unit: str | None  # "s", "ms", "µs", "ns" or "RFC 3339"; None: not used
    how: str  # one line for the report

    @property
    def usable(self) -> bool:
        return self.unit is not None


@dataclass(frozen=True)
class Reading:
    events: tuple[SseEvent, ...]  # every event before done, heartbeat events excluded
    stamps: Stamps
    contents: tuple[str, ...]  # token contents, in order
    done: SseEvent | None
    done_summary: Mapping[str, Any] | None
    errors: tuple[str, ...]  # contents of "error" events
    comments: tuple[SseComment, ...]  # ":" comments and heartbeat events: the heartbeats
    incomplete_tail: bool

    @property
    def emitted_ms(self) -> tuple[float | None, ...]:
        return self.stamps.emitted_ms


def _json_object(data: str) -> dict[str, Any] | None:
    try:
        value = json.loads(data)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _kind(event: SseEvent, payload: Mapping[str, Any] | None) -> str:
    """The event's type: its JSON ``type`` if it has one, else its ``event:`` name."""
    kind = payload.get("type") if payload is not None else None
    return kind if isinstance(kind, str) else event.type


def _is_done(event: SseEvent, payload: Mapping[str, Any] | None) -> bool:
    if event.type in DONE_TYPES or event.data.strip() == "[DONE]":
        return True
    return payload is not None and (_kind(event, payload) in DONE_TYPES or payload.get("done") is True)


def _is_heartbeat(event: SseEvent, payload: Mapping[str, Any] | None) -> bool:
    return event.type in HEARTBEAT_TYPES or _kind(event, payload) in HEARTBEAT_TYPES


def _token_content(payload: Mapping[str, Any] | None) -> str | None:
    """The token text: ours is ``content`` of a token event; OpenAI's a delta; Anthropic's a text delta."""
    if payload is None:
        return None
    kind = payload.get("type", "token")
    if kind == "content_block_delta":
        delta = payload.get("delta")
        return str(delta["text"]) if isinstance(delta, dict) and isinstance(delta.get("text"), str) else None
    if kind != "token":
        return None
    content = payload.get("content")
    if isinstance(content, str):
        return content
    choices = payload.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        delta = choices[0].get("delta")
        if isinstance(delta, dict) and isinstance(delta.get("content"), str):
            return str(delta["content"])
    return None


def event_type(event: SseEvent) -> str:
    """The event's type as this module reads it: its JSON ``type``, else its ``event:`` name."""
    return _kind(event, _json_object(event.data))


def event_content(event: SseEvent) -> object:
    """The ``content`` of the event's JSON (None when it has none)."""
    payload = _json_object(event.data)
    return None if payload is None else payload.get("content")


def token_content(event: SseEvent) -> str | None:
    """The token text the event carries, if it is a token event (never the done or a heartbeat event)."""
    payload = _json_object(event.data)
    if _is_done(event, payload) or _is_heartbeat(event, payload):
        return None
    return _token_content(payload)


def _done_summary(payload: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """The done event's {tokens, sha256, bytes}: its ``content`` or the payload itself."""
    if payload is None:
        return None
    content = payload.get("content")
    return content if isinstance(content, dict) else payload


def read_events(stream: SseStream, window_s: float | None = None, burst_window_ms: float = 10.0) -> Reading:
    """The events before done, their tokens and emission times; ``window_s`` is when the last byte arrived."""
    events: list[SseEvent] = []
    payloads: list[Mapping[str, Any] | None] = []
    contents: list[str] = []
    errors: list[str] = []
    beats: list[SseComment] = list(stream.comments)
    done: SseEvent | None = None
    summary: Mapping[str, Any] | None = None
    for event in stream.events:
        payload = _json_object(event.data)
        if _is_done(event, payload):
            done, summary = event, _done_summary(payload)
            break
        if _is_heartbeat(event, payload):
            beats.append(SseComment(event.at, f"{event.type} event"))
            continue
        events.append(event)
        payloads.append(payload)
        content = _token_content(payload)
        if content is not None:
            contents.append(content)
        if event.type == "error" or _kind(event, payload) == "error":
            errors.append(str(payload.get("content") or payload.get("error") if payload else event.data))
    last_at = window_s if window_s is not None else max((event.at for event in events), default=0.0)
    stamps = read_timestamps(payloads, last_at, burst_window_ms)
    beats.sort(key=lambda beat: beat.at)
    return Reading(
        tuple(events), stamps, tuple(contents), done, summary, tuple(errors), tuple(beats), stream.incomplete_tail
    )


# --------------------------------------------------------------------------
# Emission times
# --------------------------------------------------------------------------


def _number(value: object) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _rfc3339_s(value: object) -> float | None:
    """Seconds since the epoch of an RFC 3339 / ISO 8601 date-time with a zone, else None."""
    if not isinstance(value, str) or len(value) < 19 or value[4:5] != "-":
        return None
    try:
        stamp = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    return stamp.timestamp() if stamp.tzinfo is not None else None


def _pick_key(payloads: Sequence[Mapping[str, Any] | None]) -> str | None:
    """The first timestamp key that at least half of the JSON events carry as a number or date-time string."""
    objects = [payload for payload in payloads if payload is not None]
    for key in TIMESTAMP_KEYS:
        parsed = [obj for obj in objects if _number(obj.get(key)) is not None or _rfc3339_s(obj.get(key)) is not None]
        if len(parsed) >= 2 and len(parsed) * 2 >= len(payloads):
            return key
    return None


def _unit(values: Sequence[float], window_s: float) -> tuple[str, str]:
    """(unit, why) for numeric stamps: the epoch band they fall in, else the largest unit that fits.

    Either way the span must fit the time the events took to arrive: a relative nanosecond clock
    (process.hrtime) can have the magnitude of epoch milliseconds, but not their span.
    """
    span = max(values) - min(values)
    fitting = [unit for unit, scale in UNITS if span * scale <= window_s * SPAN_SLACK + SPAN_SLACK_S]
    middle = statistics.median(values)
    for unit, scale in UNITS:
        if EPOCH_S[0] <= middle * scale <= EPOCH_S[1] and unit in fitting:
            return unit, "epoch values, by their magnitude"
    if fitting:
        return fitting[0], "a relative clock: the largest unit whose span fits the arrival"
    return "ns", "a relative clock"


def _none(count: int, how: str) -> Stamps:
    return Stamps((None,) * count, None, None, how)


def read_timestamps(
    payloads: Sequence[Mapping[str, Any] | None], window_s: float, burst_window_ms: float = 10.0
) -> Stamps:
    """Each event's emission time in ms, with the key and unit they were read in (see the module docstring)."""
    key = _pick_key(payloads)
    if key is None:
        return _none(len(payloads), "none in the events: judged by arrival alone")
    raw = [None if payload is None else payload.get(key) for payload in payloads]
    dates = [_rfc3339_s(value) for value in raw]
    if sum(date is not None for date in dates) >= 2:
        emitted = tuple(None if date is None else date * 1000.0 for date in dates)
        unit, why, fine = "RFC 3339", "date-time strings", True
    else:
        numbers = [_number(value) for value in raw]
        known = [number for number in numbers if number is not None]
        unit, why = _unit(known, window_s)
        scale_ms = dict(UNITS)[unit] * 1000.0
        emitted = tuple(None if number is None else number * scale_ms for number in numbers)
        # Whole numbers in a unit coarser than the burst window cannot time a delivery (int(time.time())).
        fine = not all(number.is_integer() for number in known) or scale_ms <= burst_window_ms
    stamped = [value for value in emitted if value is not None]
    if max(stamped) == min(stamped):
        return _none(len(payloads), f"`{key}` is the same in every event: judged by arrival alone")
    if not fine:
        return _none(len(payloads), f"`{key}` in whole {UNIT_WORDS[unit]} is too coarse: judged by arrival alone")
    return Stamps(emitted, key, unit, f"`{key}` in {UNIT_WORDS.get(unit, unit)} ({why})")


# --------------------------------------------------------------------------
# Integrity
# --------------------------------------------------------------------------


def check_integrity(contents: Sequence[str], summary: Mapping[str, Any] | None) -> tuple[Integrity, str]:
    """Compare the reassembled tokens with the done event's tokens/bytes/sha256."""
    if summary is None or not any(key in summary for key in ("tokens", "bytes", "sha256")):
        return "not_checked", "the done event carries no tokens/bytes/sha256 summary"
    text = "".join(contents).encode("utf-8")
    actual: dict[str, object] = {
        "tokens": len(contents),
        "bytes": len(text),
        "sha256": hashlib.sha256(text).hexdigest(),
    }
    wrong = [
        f"{key} {actual[key]} != {summary[key]}"
        if key != "sha256"
        else f"sha256 {str(actual[key])[:12]}… != {str(summary[key])[:12]}…"
        for key in ("tokens", "bytes", "sha256")
        if key in summary and summary[key] != actual[key]
    ]
    if wrong:
        return "mismatch", ", ".join(wrong)
    return "ok", f"{len(contents)} tokens, {len(text)} bytes, sha256 matches"
