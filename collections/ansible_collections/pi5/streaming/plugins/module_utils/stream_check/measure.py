"""Measure the timed events: bursts, deliveries, spans, lateness, and the silences of the connection.

Pure functions of their input; times are ms since the request started.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from ansible_collections.pi5.streaming.plugins.module_utils.stream_check.curl import Capture
from ansible_collections.pi5.streaming.plugins.module_utils.stream_check.events import Reading

__all__ = ["Silence", "Timing", "delivery_groups", "largest_burst", "longest_silence", "measure", "relative_lateness", "silences"]


def largest_burst(arrivals_ms: Sequence[float], window_ms: float) -> int:
    """The most events that arrived within ``window_ms`` of each other."""
    times = sorted(arrivals_ms)
    best = 0
    first = 0
    for last, at in enumerate(times):
        while at - times[first] > window_ms:
            first += 1
        best = max(best, last - first + 1)
    return best


def delivery_groups(arrivals_ms: Sequence[float], emitted_ms: Sequence[float | None], window_ms: float) -> list[int]:
    """Sizes of the separate deliveries the events arrived in, in order.

    An event joins the previous delivery when it arrived within ``window_ms``
    of the event before it although it was emitted more than ``window_ms``
    after it (without ts, arriving close is enough): it was held back and
    released together. A fast emitter is therefore not mistaken for a buffer.
    """
    groups: list[int] = []
    for i, at in enumerate(arrivals_ms):
        if i and at - arrivals_ms[i - 1] <= window_ms and _emitted_apart(emitted_ms, i, window_ms):
            groups[-1] += 1
        else:
            groups.append(1)
    return groups


def _emitted_apart(emitted_ms: Sequence[float | None], i: int, window_ms: float) -> bool:
    if i >= len(emitted_ms):
        return True
    now, before = emitted_ms[i], emitted_ms[i - 1]
    return now is None or before is None or now - before > window_ms


def relative_lateness(arrivals_ms: Sequence[float], emitted_ms: Sequence[float | None]) -> list[float]:
    """How much later than the least-delayed event each event arrived (ms).

    delay_i = arrival_i - ts_i mixes in the client/server clock offset; it
    cancels out in delay_i - min(delay). The baseline is the least-delayed
    event rather than the first: when the first event is itself held in a
    buffer, a first-event baseline would hide exactly the delay we look for.
    """
    delays = [at - ts for at, ts in zip(arrivals_ms, emitted_ms, strict=True) if ts is not None]
    if len(delays) < 2:
        return []
    base = min(delays)
    return [delay - base for delay in delays]


@dataclass(frozen=True)
class Timing:
    arrivals_ms: tuple[float, ...]
    first_event_ms: float | None
    last_event_ms: float | None
    span_ms: float | None
    emission_span_ms: float | None
    span_ratio: float | None
    largest_burst: int
    burst_share: float | None
    groups: tuple[int, ...]
    delivery_ratio: float | None
    lateness_p50_ms: float | None
    lateness_max_ms: float | None


def measure(reading: Reading, window_ms: float) -> Timing:
    arrivals = tuple(event.at * 1000.0 for event in reading.events)
    count = len(arrivals)
    lateness = relative_lateness(arrivals, reading.emitted_ms)
    stamped = [(at, ts) for at, ts in zip(arrivals, reading.emitted_ms, strict=True) if ts is not None]
    emission_span = max(ts for _, ts in stamped) - min(ts for _, ts in stamped) if len(stamped) > 1 else None
    stamped_span = max(at for at, _ in stamped) - min(at for at, _ in stamped) if len(stamped) > 1 else None
    groups = delivery_groups(arrivals, reading.emitted_ms, window_ms)
    burst = largest_burst(arrivals, window_ms)
    return Timing(
        arrivals_ms=arrivals,
        first_event_ms=arrivals[0] if arrivals else None,
        last_event_ms=arrivals[-1] if arrivals else None,
        span_ms=arrivals[-1] - arrivals[0] if arrivals else None,
        emission_span_ms=emission_span,
        span_ratio=stamped_span / emission_span if emission_span and stamped_span is not None else None,
        largest_burst=burst,
        burst_share=burst / count if count else None,
        groups=tuple(groups),
        delivery_ratio=len(groups) / count if count else None,
        lateness_p50_ms=statistics.median(lateness) if lateness else None,
        lateness_max_ms=max(lateness) if lateness else None,
    )


@dataclass(frozen=True)
class Silence:
    """A stretch with nothing on the wire: from one mark to the next, and where in the response it fell."""

    start_ms: float
    end_ms: float
    where: str

    @property
    def ms(self) -> float:
        return self.end_ms - self.start_ms

    def describe(self) -> str:
        return f"{self.ms:.0f} ms {self.where} ({self.start_ms:.0f}-{self.end_ms:.0f} ms)"


def silences(capture: Capture) -> list[Silence]:
    """Every quiet stretch of the response: from the request to the headers, from the headers to the first
    byte of the body, between reads, and from the last byte to the end of the response.

    Measured from the request, not from the headers: a server that sends its headers only with its first
    write, after a long pause, was silent for that whole pause.
    """
    sent = (capture.sent_s or 0.0) * 1000.0
    headers = capture.ttfb_s * 1000.0 if capture.ttfb_s is not None else None
    reads = [chunk.at * 1000.0 for chunk in capture.chunks]
    end = max(capture.elapsed_s * 1000.0, reads[-1] if reads else 0.0)
    found: list[Silence] = []
    if headers is None:
        return [Silence(sent, end, "without any response")] if capture.status is None and end > sent else []
    found.append(Silence(sent, max(headers, sent), "before the response headers"))
    marks = [headers, *reads]
    for i, (begin, finish) in enumerate(itertools.pairwise(marks)):
        where = "between the headers and the first byte of the body" if i == 0 else "between two reads of the body"
        found.append(Silence(begin, max(finish, begin), where))
    found.append(Silence(marks[-1], max(end, marks[-1]), "after the last byte, until the response ended"))
    return found


def longest_silence(capture: Capture) -> Silence | None:
    return max(silences(capture), key=lambda silence: silence.ms, default=None)
