"""Check a path hop by hop, every protocol a hop offers, all at the same time, and blame the first bad hop.

Each hop is still its own fresh curl connection; the hops run in threads, so a
three-hop check takes as long as its slowest hop, not the sum. A hop whose
``http_version`` is ``auto`` and whose URL is https is checked over HTTP/2 and
over HTTP/1.1 (siblings at one position of the path): a site that streams over
HTTP/2 but buffers over HTTP/1.1 fails, naming HTTP/1.1, because every CDN or
tunnel in front of it reaches it over HTTP/1.1.

Once every hop streams, the hops that ask for ``resume`` run the resume hop
(resume.py), again all at once; a hop whose cut stream does not resume fails
with the verdict ``not_resumable`` and is blamed like any other.
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
from ansible_collections.pi5.streaming.plugins.module_utils.stream_check.resume import ResumeResult, check_resume
from ansible_collections.pi5.streaming.plugins.module_utils.stream_check.verdict import CheckResult, check_stream

__all__ = ["HopsResult", "attribute", "check", "check_hops", "expand_protocols", "fold_resume"]

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
    "not_resumable": "does not resume a cut stream",
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
        resumed = [name for name, result in zip(names, results, strict=True) if result.resume is not None]
        also = f"; a cut stream resumes through {', '.join(resumed)}" if resumed else ""
        return None, f"every hop streams incrementally ({', '.join(names)}){also}"
    result, name = results[bad], names[bad]
    fault = _FAULT.get(result.verdict, f"fails ({result.verdict})")
    good = [_passes_where(other, result) for other in results]
    good_siblings = [names[i] for i in range(len(results)) if places[i] == places[bad] and i != bad and good[i]]
    first_place = places[bad] == places[0]
    positions = len(dict.fromkeys(places))
    if first_place and not good_siblings and (path_length or positions) > 1:
        if result.verdict == "buffered":
            return name, (
                f"{name} itself buffers: {result.observed}: the application holds its output "
                "(check that it flushes each event); every hop behind it inherits the burst"
            )
        return name, f"{name} itself {fault}: {result.diagnosis}"
    upstream = [names[i] for i in range(len(results)) if i != bad and good[i] and (i < bad or places[i] == places[bad])]
    if not upstream:
        return name, f"{name} {fault}: {result.diagnosis}"
    if result.verdict == "not_resumable":
        verb = "resumes a cut stream" if len(upstream) == 1 else "resume a cut stream"
    else:
        verb = "streams incrementally" if len(upstream) == 1 else "stream incrementally"
    return name, f"{name} {fault}: {', '.join(upstream)} {verb}, but {result.diagnosis}"


def _passes_where(other: CheckResult, bad: CheckResult) -> bool:
    """Whether ``other`` passed where ``bad`` failed: a resume failure is only told apart by a hop that resumed."""
    if bad.verdict == "not_resumable":
        return other.incremental and other.resume is not None and other.resume.ok
    return other.incremental


def _run(hop: Hop) -> CheckResult:
    # An unnamed URL's protocols are labelled in the table; its diagnosis names the proxy that answered.
    anonymous = hop.position == ""
    result = check_stream(hop.request, hop.criteria, name=None if anonymous else hop.name)
    if anonymous:
        result.name = hop.name
    return result


def fold_resume(result: CheckResult, resumed: ResumeResult) -> None:
    """Record the resume hop on its hop's result; a cut stream that does not resume fails the hop."""
    result.resume = resumed
    if resumed.ok:  # an incremental result, whose diagnosis is its summary
        result.summary += "; a cut stream resumes"
        result.diagnosis = result.summary
        return
    result.verdict = "not_resumable"
    result.incremental = False
    result.observed = resumed.observed
    result.diagnosis = resumed.diagnosis
    result.summary = f"not_resumable: {resumed.observed}"
    result.failures.insert(0, f"not_resumable: {resumed.diagnosis}")


def _resume(hop: Hop, result: CheckResult) -> ResumeResult:
    # Cut after half of what the stream check itself counted on this hop.
    return check_resume(hop.request, result.tokens)


def _resume_hops(
    pairs: Sequence[tuple[Hop, CheckResult]],
    resumer: Callable[[Hop, CheckResult], ResumeResult],
    *,
    stop_on_failure: bool,
) -> None:
    """The resume hop on every hop that asks for it, at the same time (one after another with stop_on_failure)."""
    if stop_on_failure:
        for hop, result in pairs:
            fold_resume(result, resumer(hop, result))
            if not result.incremental:
                return
        return
    with ThreadPoolExecutor(max_workers=len(pairs), thread_name_prefix="stream-check-resume") as pool:
        outcomes = list(pool.map(lambda pair: resumer(*pair), pairs))
    for (_, result), resumed in zip(pairs, outcomes, strict=True):
        fold_resume(result, resumed)


def check_hops(
    hops: Sequence[Hop],
    *,
    stop_on_failure: bool = False,
    runner: Callable[[Hop], CheckResult] | None = None,
    resumer: Callable[[Hop, CheckResult], ResumeResult] | None = None,
) -> HopsResult:
    """Check every hop (and protocol) at the same time and name the first one that breaks streaming; then,
    if every hop streams, the resume hop on the hops that ask for it.

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
    resumable = [(hop, result) for hop, result in zip(ran, results, strict=True) if hop.criteria.resume]
    if resumable and all(result.incremental for result in results):
        _resume_hops(resumable, resumer or _resume, stop_on_failure=stop_on_failure)
    else:
        for _, result in resumable:
            result.notes.append("the resume hop did not run: the stream check failed first")
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
