"""Results: latest.json (everything + summary), latest.md (the table), latency.png (the plot)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .stats import ratio

PATHS = ("direct", "nginx")


def _p(figures: Mapping[str, Any] | None, metric: str, key: str) -> float | None:
    if not figures:
        return None
    value = figures.get(metric, {}).get(key)
    return float(value) if isinstance(value, (int, float)) else None


def latency_rows(latency: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per concurrency level: p50/p99/max lateness per path and the nginx/direct p99 ratio."""
    rows = []
    for level in sorted(latency, key=int):
        paths = latency[level]
        row: dict[str, Any] = {"streams": int(level)}
        for path in PATHS:
            figures = paths.get(path)
            for key in ("p50", "p99", "max"):
                row[f"{path}_{key}"] = _p(figures, "lateness_ms", key)
            row[f"{path}_pace"] = figures.get("delivered_share") if figures else None
            row[f"{path}_gap_p99"] = _p(figures, "emission_gap_ms", "p99")
            row[f"{path}_rel_p99"] = _p(figures, "relative_lateness_ms", "p99")
            row[f"{path}_ok"] = figures.get("outcomes", {}).get("done", 0) if figures else None
            row[f"{path}_cpu"] = figures.get("cpu_cores") if figures else None
        rounds = paths.get("rounds") or {}
        row["p99_ratio"] = rounds.get("median_ratio") or ratio(row["nginx_p99"], row["direct_p99"])
        row["rounds"] = len(rounds.get("p99_ratios", [])) or 1
        rows.append(row)
    return rows


def summary(results: Mapping[str, Any]) -> dict[str, Any]:
    rows = {row["streams"]: row for row in latency_rows(results.get("latency", {}))}
    at_1000 = rows.get(1000, {})
    capacity = results.get("capacity", {})
    return {
        "p99_ratio_at_1000": at_1000.get("p99_ratio"),
        "p99_direct_at_1000_ms": at_1000.get("direct_p99"),
        "p99_nginx_at_1000_ms": at_1000.get("nginx_p99"),
        "capacity_direct": capacity.get("direct", {}).get("streams"),
        "capacity_nginx": capacity.get("nginx", {}).get("streams"),
        "memory_per_stream_kb": results.get("memory_per_stream_kb"),
        "capacity_nginx_vs_baseline": results.get("comparison", {}).get("capacity_nginx"),
        "lateness_reported": "absolute: arrival minus the event's ts (client and server share one clock)",
    }


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and abs(value) < 10 and value != int(value):
        return f"{value:.2f}{unit}"
    if isinstance(value, float):
        return f"{value:.1f}{unit}" if abs(value) < 100 else f"{value:.0f}{unit}"
    return f"{value}{unit}"


def markdown(results: Mapping[str, Any]) -> str:
    summ = results.get("summary", {})
    lines = [
        f"# Bench results ({results.get('started', '?')}, target {results.get('target', '?')})",
        "",
        "Lateness = arrival minus the event's emission `ts`, per event, in ms (client on the Pi: one clock)."
        " Each path's figures: the round with the median p99; the ratio: the median of the rounds' ratios"
        " (direct and nginx measured back to back in each round).",
        "Pace = events delivered in the window / what N streams at 20 events/s would deliver"
        " (1.0 = the backend keeps up).",
        "",
        "| streams (rounds) | direct p50 / p99 / max | nginx p50 / p99 / max | p99 nginx/direct"
        " | pace direct / nginx | done direct / nginx |",
        "| ---: | --- | --- | ---: | --- | --- |",
    ]
    lines += [
        f"| {row['streams']} ({row['rounds']}) "
        f"| {_fmt(row['direct_p50'])} / {_fmt(row['direct_p99'])} / {_fmt(row['direct_max'])} "
        f"| {_fmt(row['nginx_p50'])} / {_fmt(row['nginx_p99'])} / {_fmt(row['nginx_max'])} "
        f"| {_fmt(row['p99_ratio'])} "
        f"| {_fmt(row['direct_pace'])} / {_fmt(row['nginx_pace'])} "
        f"| {_fmt(row['direct_ok'])} / {_fmt(row['nginx_ok'])} |"
        for row in latency_rows(results.get("latency", {}))
    ]
    lines += [
        "",
        f"- p99 ratio nginx/direct at 1000 streams: **{_fmt(summ.get('p99_ratio_at_1000'))}**",
        "- capacity (p99 lateness < 100 ms, pace >= 0.9, every stream done):"
        f" direct **{_fmt(summ.get('capacity_direct'))}**,"
        f" nginx **{_fmt(summ.get('capacity_nginx'))}** streams",
    ]
    memory = summ.get("memory_per_stream_kb") or {}
    if memory:
        lines.append(
            "- memory per open stream: " + ", ".join(f"{k} {_fmt(v, ' KiB')}" for k, v in sorted(memory.items()))
        )
    lines += baseline_lines(results)
    provisioning = results.get("provisioning", {})
    if provisioning:
        lines += ["", "| provisioning | seconds |", "| --- | ---: |"]
        for name, value in provisioning.items():
            if isinstance(value, (int, float)):
                lines.append(f"| {name} | {_fmt(float(value))} |")
    rerun = results.get("rerun", {})
    if rerun.get("playbook_median_s"):
        medians = rerun["playbook_median_s"]
        lines += [
            "",
            "| warm site.yml, nothing to change (median playbook s) | this checkout | against |",
            "| --- | ---: | ---: |",
            f"| {rerun.get('against', '?')} | {_fmt(medians.get('this'))} | {_fmt(medians.get('against'))} |",
            f"- ratio this/against: **{_fmt(rerun.get('ratio_this_to_against'))}**",
        ]
    drills = results.get("drills", {})
    if drills:
        lines += ["", "| drill | result |", "| --- | --- |"]
        for name, drill in drills.items():
            lines.append(f"| {name} | {drill.get('verdict', '-')} |")
    return "\n".join(lines) + "\n"


def _pair(figures: Mapping[str, Any] | None) -> str:
    return f"{_fmt(_p(figures, 'lateness_ms', 'p50'))} / {_fmt(_p(figures, 'lateness_ms', 'p99'))}"


def baseline_lines(results: Mapping[str, Any]) -> list[str]:
    """The previous design in the same run: its lateness, the Redis hop's added lateness, the capacity ratio."""
    baseline = results.get("baseline") or {}
    comparison = results.get("comparison") or {}
    if not baseline.get("latency") or not comparison:
        return []
    added = comparison.get("added_lateness_ms", {})
    commit = str(baseline.get("commit", "?"))[:12]
    lines = [
        "",
        f"Previous design ({commit}: one process generates and delivers), measured after this one in the same run"
        f"{'' if comparison.get('same_run', True) else ' (this design measured in an earlier run)'}:"
        " p50 / p99 ms; Redis hop added = this design minus the previous one, same level and path.",
        "",
        "| streams | previous direct | previous nginx | Redis hop added direct | Redis hop added nginx"
        " | pace direct / nginx (previous) |",
        "| ---: | --- | --- | --- | --- | --- |",
    ]
    for level in sorted(baseline["latency"], key=int):
        old = baseline["latency"][level]
        more = added.get(level, {})
        lines.append(
            f"| {level} | {_pair(old.get('direct'))} | {_pair(old.get('nginx'))} "
            f"| {_fmt(more.get('direct_added_p50_ms'))} / {_fmt(more.get('direct_added_p99_ms'))} "
            f"| {_fmt(more.get('nginx_added_p50_ms'))} / {_fmt(more.get('nginx_added_p99_ms'))} "
            f"| {_fmt((old.get('direct') or {}).get('delivered_share'))}"
            f" / {_fmt((old.get('nginx') or {}).get('delivered_share'))} |"
        )
    capacity = comparison.get("capacity_nginx", {})
    lines.append(
        f"- capacity through nginx: this design **{_fmt(capacity.get('pipeline'))}**, previous"
        f" **{_fmt(capacity.get('baseline'))}** streams: ratio **{_fmt(capacity.get('ratio'))}**"
        f" (issue 14: >= {_fmt(capacity.get('target'))}): **{capacity.get('verdict', '-')}**"
    )
    memory = baseline.get("memory_per_stream_kb") or {}
    if memory:
        lines.append(
            "- previous design, memory per open stream: "
            + ", ".join(f"{k} {_fmt(v, ' KiB')}" for k, v in sorted(memory.items()))
        )
    return lines


def plot(results: Mapping[str, Any], path: Path) -> bool:
    """Lateness (p50 and p99) against concurrency, direct vs nginx; False without matplotlib."""
    try:
        import matplotlib  # noqa: PLC0415  (optional: only `make bench` installs it)

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return False
    rows = latency_rows(results.get("latency", {}))
    fig, (ax, pace_ax) = plt.subplots(
        2, 1, figsize=(8, 6.5), dpi=110, sharex=True, gridspec_kw={"height_ratios": [3, 1.3]}
    )
    styles = {"direct": ("tab:blue", "direct to the backend"), "nginx": ("tab:orange", "through nginx (HTTPS)")}
    for path_name, (colour, label) in styles.items():
        for key, line in (("p99", "-"), ("p50", ":")):
            points = [(r["streams"], r[f"{path_name}_{key}"]) for r in rows if r[f"{path_name}_{key}"] is not None]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, [max(y, 0.5) for y in ys], line, marker="o", color=colour, label=f"{label}, {key}")
        paces = [(r["streams"], r[f"{path_name}_pace"]) for r in rows if r[f"{path_name}_pace"] is not None]
        if paces:
            xs, ys = zip(*paces, strict=True)
            pace_ax.plot(xs, ys, "-", marker="o", color=colour, label=label)
    ax.axhline(100, color="grey", linewidth=0.8, linestyle="--")
    ax.text(1.05, 110, "100 ms", color="grey")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylabel("lateness: arrival - emission (ms)")
    ax.set_title(f"SSE lateness vs concurrency, same run ({results.get('target', '')})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    pace_ax.axhline(0.9, color="grey", linewidth=0.8, linestyle="--")
    pace_ax.set_ylim(0, 1.1)
    pace_ax.set_ylabel("pace\n(share of 20 ev/s)")
    pace_ax.set_xlabel("concurrent streams (20 events/s each)")
    pace_ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def write(results: dict[str, Any], directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    results["summary"] = summary(results)
    written = [directory / "latest.json", directory / "latest.md"]
    written[0].write_text(json.dumps(results, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    written[1].write_text(markdown(results), encoding="utf-8")
    if plot(results, directory / "latency.png"):
        written.append(directory / "latency.png")
    return written


def merge(old: Mapping[str, Any], new: Mapping[str, Any], sections: Sequence[str]) -> dict[str, Any]:
    """Keep the previous run's sections that this run did not measure (``--only``); the run's metadata is new."""
    merged = {k: v for k, v in old.items() if k not in sections}
    merged.update(new)
    return merged
