"""Pure helpers: percentiles, summaries, connection ramps, the capacity search.

No I/O here, so tests/bench checks them without Docker.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) by linear interpolation between ranks (numpy's default)."""
    if not values:
        return None
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile {q} is not within 0..100")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(values: Sequence[float]) -> dict[str, float | int | None]:
    """count, p50, p99 and max of a sample (None when it is empty), rounded to 0.1 ms."""

    def r(x: float | None) -> float | None:
        return None if x is None else round(x, 1)

    return {
        "count": len(values),
        "p50": r(percentile(values, 50)),
        "p99": r(percentile(values, 99)),
        "max": r(max(values) if values else None),
    }


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, None when either is missing; a zero denominator counts as 0.1 ms."""
    if numerator is None or denominator is None:
        return None
    return round(numerator / max(denominator, 0.1), 2)


def ramp_offsets(count: int, per_second: float) -> list[float]:
    """Start time (s from the phase's start) of each of ``count`` connections, ``per_second`` apart."""
    if count < 0 or per_second <= 0:
        raise ValueError("count must be >= 0 and per_second > 0")
    return [index / per_second for index in range(count)]


def deal(offsets: Sequence[float], workers: int) -> list[list[float]]:
    """Deal the ramp round-robin to ``workers`` processes so each ramps at an even pace."""
    if workers < 1:
        raise ValueError("workers must be >= 1")
    return [list(offsets[worker::workers]) for worker in range(workers)]


@dataclass(frozen=True)
class PhasePlan:
    """Timing of one load phase: ramp, then a window in which every stream is open."""

    ramp_s: float
    window_start_s: float
    window_end_s: float
    tokens: int  # per stream: long enough to stay open through the window


def plan_phase(
    streams: int, ramp_per_s: float, window_s: float, interval_ms: int, *, settle_s: float = 1.0, max_tokens: int = 500
) -> PhasePlan:
    """Streams opened over the ramp stay open until the window ends (the probe allows at most 500 tokens)."""
    ramp_s = max(streams - 1, 0) / ramp_per_s
    window_start = ramp_s + settle_s
    window_end = window_start + window_s
    tokens = math.ceil(window_end * 1000.0 / max(interval_ms, 1)) + 2
    if tokens > max_tokens:
        raise ValueError(
            f"{streams} streams at {ramp_per_s}/s need {tokens} tokens of {interval_ms} ms (max {max_tokens}):"
            " raise the ramp rate or shorten the window"
        )
    return PhasePlan(ramp_s, window_start, window_end, tokens)


def capacity_search(
    passes: Callable[[int], bool],
    low: int,
    high: int,
    *,
    max_steps: int,
    resolution: int = 50,
    high_fails: bool = False,
) -> tuple[int, list[tuple[int, bool]]]:
    """Largest N in [low, high] for which ``passes(N)`` holds, by bisection, at most ``max_steps`` trials.

    Assumes ``passes`` is monotone (true up to capacity, then false). ``low`` is
    assumed to pass unless tried and failed; ``high_fails`` says ``high`` is
    already known to fail (bisect at once). Returns (capacity, trials); the
    capacity is 0 when even ``low`` fails.
    """
    trials: list[tuple[int, bool]] = []

    def trial(streams: int) -> bool:
        ok = passes(streams)
        trials.append((streams, ok))
        return ok

    if not trial(low):
        return 0, trials
    good, bad = low, high + 1
    if high_fails:
        bad = high
    elif len(trials) < max_steps:
        if trial(high):
            return high, trials
        bad = high
    while len(trials) < max_steps and bad - good > resolution:
        middle = (good + bad) // 2
        if trial(middle):
            good = middle
        else:
            bad = middle
    return good, trials
