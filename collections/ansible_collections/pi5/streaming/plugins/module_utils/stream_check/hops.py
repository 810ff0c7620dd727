"""Check a path hop by hop, every protocol a hop offers, all at the same time, and blame the first bad hop.

Each hop is still its own fresh curl connection; the hops run in threads, so a
three-hop check takes as long as its slowest hop, not the sum. A hop whose
``http_version`` is ``auto`` and whose URL is https is checked over HTTP/2 and
over HTTP/1.1 (siblings at one position of the path): a site that streams over
HTTP/2 but buffers over HTTP/1.1 fails, naming HTTP/1.1, because every CDN or
tunnel in front of it reaches it over HTTP/1.1.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

from ansible_collections.pi5.streaming.plugins.module_utils.stream_check.judge import Verdict
from ansible_collections.pi5.streaming.plugins.module_utils.stream_check.options import Hop, UsageError
from ansible_collections.pi5.streaming.plugins.module_utils.stream_check.verdict import CheckResult, check_stream

__all__ = ["HopsResult", "attribute", "check", "check_hops", "expand_protocols"]

PROTOCOLS: Final = (("2", "h2"), ("1.1", "h1.1"))


@dataclass
class HopsResult:
    verdict: Verdict
    incremental: bool
    first_bad_hop: str | None
    diagnosis: str
    summary: str
    hops: list[CheckResult]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_FAULT: Final[Mapping[str, str]] = {
    "buffered": "buffers",
    "truncated": "truncates the stream",
    "http_error": "answers with an HTTP error",
    "wrong_content_type": "answers with the wrong Content-Type",
    "compressed": "compresses the stream",
    "integrity": "alters the stream",
    "heartbeat_missing": "drops the heartbeats",
    "connect_error": "is unreachable",
    "tls_error": "fails TLS",
    "timeout": "times out",
    "stale_config": "serves a stale config",
    "too_few_events": "sends too few events",
}


def expand_protocols(hop: Hop) -> list[Hop]:
    """The hop once per protocol to check: HTTP/2 and HTTP/1.1 for ``auto`` over https, else itself."""
    if hop.request.http_version != "auto" or urlsplit(hop.request.url).scheme != "https":
        return [hop]
    return [
        Hop(
            f"{hop.name}-{label}" if hop.name else label,
            dataclasses.replace(hop.request, http_version=version),
            hop.criteria,
            position=hop.place,
        )
        for version, label in PROTOCOLS
    ]


def _drop_unoffered(hops: Sequence[Hop], results: Sequence[CheckResult]) -> tuple[list[Hop], list[CheckResult]]:
    """When an HTTP/2 sibling was answered over HTTP/1.1, the server offers no HTTP/2: keep one result."""
    kept_hops: list[Hop] = []
    kept: list[CheckResult] = []
    for i, (hop, result) in enumerate(zip(hops, results, strict=True)):
        sibling = hops[i + 1] if i + 1 < len(hops) else None
        if (
            hop.position is not None
            and sibling is not None
            and sibling.position == hop.position
            and hop.request.http_version == "2"
            and result.status is not None
            and result.http_version not in (None, "2")
        ):
            results[i + 1].notes.append("the server offers no HTTP/2 (ALPN): checked over HTTP/1.1 only")
            continue
        kept_hops.append(hop)
        kept.append(result)
    return kept_hops, kept


def attribute(
    results: Sequence[CheckResult], path_length: int | None = None, hops: Sequence[Hop] = ()
) -> tuple[str | None, str]:
    """``(first_bad_hop, diagnosis)`` for per-hop results in path order.

    ``path_length`` is the number of hops of the path when fewer were checked
    (stop_on_failure); it decides whether the first hop is blamed "itself".
    ``hops`` tells which results are protocol siblings of one position: a sibling
    that streams proves the application flushes, so the bad one is not "itself".
    """
    names = [result.name or f"hop {i + 1}" for i, result in enumerate(results)]
    places = [hop.place for hop in hops] if len(hops) == len(results) else names
    bad = next((i for i, result in enumerate(results) if not result.incremental), None)
    if bad is None:
        return None, f"every hop streams incrementally ({', '.join(names)})"
    result, name = results[bad], names[bad]
    fault = _FAULT.get(result.verdict, f"fails ({result.verdict})")
    good_siblings = [
        names[i] for i, other in enumerate(results) if places[i] == places[bad] and i != bad and other.incremental
    ]
    first_place = places[bad] == places[0]
    positions = len(dict.fromkeys(places))
    if first_place and not good_siblings and (path_length or positions) > 1:
        if result.verdict == "buffered":
            return name, (
                f"{name} itself buffers: {result.observed}: the application holds its output "
                "(check that it flushes each event); every hop behind it inherits the burst"
            )
        return name, f"{name} itself {fault}: {result.diagnosis}"
    upstream = [
        names[i]
        for i, other in enumerate(results)
        if i != bad and other.incremental and (i < bad or places[i] == places[bad])
    ]
    if not upstream:
        return name, f"{name} {fault}: {result.diagnosis}"
    verb = "streams" if len(upstream) == 1 else "stream"
    return name, f"{name} {fault}: {', '.join(upstream)} {verb} incrementally, but {result.diagnosis}"


def _run(hop: Hop) -> CheckResult:
    # An unnamed URL's protocols are labelled in the table; its diagnosis names the proxy that answered.
    anonymous = hop.position == ""
    result = check_stream(hop.request, hop.criteria, name=None if anonymous else hop.name)
    if anonymous:
        result.name = hop.name
    return result


def check_hops(
    hops: Sequence[Hop],
    *,
    stop_on_failure: bool = False,
    runner: Callable[[Hop], CheckResult] | None = None,
) -> HopsResult:
    """Check every hop (and protocol) at the same time and name the first one that breaks streaming.

    With ``stop_on_failure`` the hops run one after another and the check stops at the first bad one.
    """
    if not hops:
        raise UsageError("hops must name at least one hop")
    run = runner or _run
    expanded = [each for hop in hops for each in expand_protocols(hop)]
    results: list[CheckResult] = []
    if stop_on_failure:
        for hop in expanded:
            results.append(run(hop))
            if not results[-1].incremental:
                break
    else:
        with ThreadPoolExecutor(max_workers=len(expanded), thread_name_prefix="stream-check") as pool:
            results = list(pool.map(run, expanded))
    ran, results = _drop_unoffered(expanded[: len(results)], results)
    positions = len(dict.fromkeys(hop.place for hop in expanded))
    first_bad, diagnosis = attribute(results, positions, ran)
    bad = next((result for result in results if not result.incremental), None)
    verdict: Verdict = bad.verdict if bad else "incremental"
    summary = "; ".join(f"{result.name}: {result.summary}" for result in results)
    return HopsResult(verdict, bad is None, first_bad, diagnosis, summary, results)


def check(hops: Sequence[Hop], *, stop_on_failure: bool = False) -> CheckResult | HopsResult:
    """What both faces run: one hop checked once gives its CheckResult, anything more a HopsResult."""
    outcome = check_hops(hops, stop_on_failure=stop_on_failure)
    if len(hops) == 1 and len(outcome.hops) == 1:
        single = outcome.hops[0]
        single.name = hops[0].name or None
        return single
    return outcome
