"""What people read: one check as a table, hops as one row each with the attribution."""

from __future__ import annotations

from ansible_collections.pi5.streaming.plugins.module_utils.stream_check.hops import HopsResult
from ansible_collections.pi5.streaming.plugins.module_utils.stream_check.verdict import CheckResult

__all__ = ["render", "render_hops_table", "render_table"]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def render_table(result: CheckResult) -> str:
    """A short human-readable table of one check."""
    protocol = f"HTTP/{result.http_version}" if result.http_version else "-"
    encoding = result.content_encoding or "none"
    span = _ms(result.span_ms)
    if result.emission_span_ms is not None:
        span += f" (emitted over {_ms(result.emission_span_ms)}, ratio {result.span_ratio or 0:.2f})"
    late = (
        "-"
        if result.lateness_max_ms is None
        else f"p50 {_ms(result.lateness_p50_ms)}, max {_ms(result.lateness_max_ms)}"
    )
    rows = [
        ("verdict", result.verdict.upper() if not result.incremental else result.verdict),
        ("url", result.url),
        ("response", f"{result.status or '-'} {protocol}  {result.content_type or '-'}  encoding {encoding}"),
        ("remote", result.remote or "-"),
        ("first byte", _ms(result.ttfb_ms)),
        ("first event", _ms(result.first_event_ms)),
        ("span", span),
        ("events", f"{result.events}, done {'yes' if result.done else 'no'}, heartbeats {result.heartbeats}"),
        ("bursts", f"largest {result.largest_burst} ({_pct(result.burst_share)}), {result.deliveries} deliveries"),
        ("lateness", late),
        ("integrity", f"{result.integrity} ({result.integrity_detail})" if result.done else result.integrity),
        ("timestamps", result.timestamps if result.events else "-"),
        ("silence", f"longest {result.longest_silence}" if result.longest_silence else "-"),
        ("proxies", ", ".join(result.proxies) or "none named in the headers"),
    ]
    if result.resume is not None:
        rows.append(("resume", _resume(result)))
    rows += [(name, value) for name, value in result.headers.items() if name.lower().startswith("x-")]
    rows.append(("summary" if result.incremental else "diagnosis", result.diagnosis))
    rows += [("note", note) for note in result.notes]
    title = f"stream check{f' [{result.name}]' if result.name else ''}"
    return "\n".join([title, *(f"  {label:<12} {value}" for label, value in rows)])


def _resume(result: CheckResult) -> str:
    resumed = result.resume
    if resumed is None:
        return "-"
    return f"ok: {resumed.diagnosis}" if resumed.ok else f"FAILED: {resumed.observed}"


def render_hops_table(result: HopsResult) -> str:
    """One row per hop, then the attribution."""
    header = ("hop", "verdict", "status", "events", "first", "span", "burst", "late")
    rows = [header]
    rows += [
        (
            hop.name or "-",
            hop.verdict,
            f"{hop.status or '-'}" + (f" h{hop.http_version}" if hop.http_version else ""),
            str(hop.events),
            _ms(hop.first_event_ms),
            _ms(hop.span_ms),
            f"{hop.largest_burst} ({_pct(hop.burst_share)})",
            _ms(hop.lateness_max_ms),
        )
        for hop in result.hops
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines += [f"resume {hop.name or '-'}: {_resume(hop)}" for hop in result.hops if hop.resume is not None]
    verdict = "incremental" if result.incremental else f"{result.verdict} at {result.first_bad_hop}"
    return "\n".join([*lines, f"=> {verdict}: {result.diagnosis}"])


def render(result: CheckResult | HopsResult) -> str:
    return render_hops_table(result) if isinstance(result, HopsResult) else render_table(result)
