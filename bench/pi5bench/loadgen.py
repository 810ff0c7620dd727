"""The load generator: N ramped SSE streams from worker processes, plus what the Pi is doing meanwhile.

Runs where the streams start (inside the simulated Pi, or on a real Pi over SSH),
with the system python3 and the standard library only:

    python3 -m pi5bench.loadgen '<phase spec as JSON>'   # prints the phase's result as JSON

The spec's keys are those of :class:`Phase`. Worker processes (not threads) carry
the streams, so the client is measured apart from nginx and the backend.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import resource
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field, fields
from multiprocessing.connection import Connection
from typing import Any

from .sse_client import StreamResult, Target, run_stream
from .stats import deal, ramp_offsets, summarize

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


@dataclass
class Phase:
    url: str  # base URL, e.g. http://127.0.0.1:7776 or https://localhost:443
    streams: int
    ramp_per_s: float = 250.0
    tokens: int = 20
    interval_ms: int = 50
    query: str = ""  # extra probe parameters, e.g. "&silence_ms=15000&heartbeat_ms=1000"
    window: tuple[float, float] = (0.0, 1e9)  # s after the start: events kept for lateness
    timeout_s: float = 60.0
    workers: int = 2
    cafile: str | None = None
    server_name: str | None = None
    hold_without_reading_s: float = 0.0
    rcvbuf: int | None = None
    action_at_s: float | None = None
    action_argv: list[str] = field(default_factory=list)
    recover_url: str | None = None  # after the action: probe until a stream works again
    recover_timeout_s: float = 90.0
    sample_at_s: list[float] = field(default_factory=list)  # CPU/memory snapshots, s after start
    backend_container: str = "backend"
    worker_container: str = "chat-worker"  # the pipeline's generator (none in the one-process design)
    resume_attempts: int = 0  # > 0: a stream cut before done resumes at its Content-Location (sse_client)
    resume_delay_ms: int = 3000  # when the server sent no retry:
    watch: dict[str, str] = field(default_factory=dict)  # more process groups: name -> cmdline prefix

    @classmethod
    def from_json(cls, text: str) -> Phase:
        raw = json.loads(text)
        known = {f.name for f in fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise SystemExit(f"unknown phase keys: {sorted(unknown)}")
        if "window" in raw:
            raw["window"] = tuple(raw["window"])
        return cls(**raw)

    def stream_url(self, base: str | None = None) -> str:
        return f"{base or self.url}/api/probe/stream?tokens={self.tokens}&interval_ms={self.interval_ms}{self.query}"


# --------------------------------------------------------------------------
# What the Pi is doing: CPU seconds and resident memory of nginx, the backend, the client
# --------------------------------------------------------------------------


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError:
        return ""


def _pids_named(prefix: str) -> list[int]:
    return [
        int(entry)
        for entry in os.listdir("/proc")
        if entry.isdigit() and _read(f"/proc/{entry}/cmdline").replace("\0", " ").startswith(prefix)
    ]


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _read(f"/proc/{entry}/stat")
            if stat:
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def _cpu_s(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        stat = _read(f"/proc/{pid}/stat")
        if stat:
            parts = stat.rsplit(")", 1)[1].split()
            total += int(parts[11]) + int(parts[12])  # utime, stime
    return total / CLOCK_TICKS


def _rss_kb(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        statm = _read(f"/proc/{pid}/statm").split()
        if len(statm) > 1:
            total += int(statm[1]) * PAGE_KB
    return total


def _host_busy() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine (/proc/stat is not namespaced)."""
    values = [int(v) for v in _read("/proc/stat").split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def backend_pids(container: str) -> list[int]:
    try:
        out = subprocess.run(
            ["docker", "inspect", "-f", "{{.State.Pid}}", container], capture_output=True, text=True, timeout=10, check=False
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return []
    return _descendants(int(out)) if out.isdigit() and out != "0" else []


def backend_cgroup_kb(pids: list[int]) -> int | None:
    """memory.current of the backend container's cgroup (v2), when visible here."""
    if not pids:
        return None
    for line in _read(f"/proc/{pids[0]}/cgroup").splitlines():
        if line.startswith("0::"):
            value = _read(f"/sys/fs/cgroup{line[3:]}/memory.current").strip()
            return int(value) // 1024 if value.isdigit() else None
    return None


def redis_auth(env: list[str]) -> tuple[str, str] | None:
    """(port, password) of the backend's Redis from its container's environment (pure); None without Redis."""
    values = dict(item.partition("=")[::2] for item in env)
    if "BACKEND_REDIS_PORT" not in values:
        return None
    return values["BACKEND_REDIS_PORT"], values.get("BACKEND_REDIS_PASSWORD", "")


def used_memory_kb(info: str) -> int | None:
    """``used_memory`` (bytes) of ``INFO memory`` in KiB (pure): what Redis's allocator holds for its data."""
    for line in info.splitlines():
        name, _, value = line.strip().partition(":")
        if name == "used_memory" and value.isdigit():
            return int(value) // 1024
    return None


def backend_redis(container: str) -> tuple[str, str] | None:
    try:
        out = subprocess.run(
            ["docker", "inspect", "-f", "{{json .Config.Env}}", container],
            capture_output=True, text=True, timeout=10, check=False,
        ).stdout
        env = json.loads(out) if out.strip() else []
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return None
    return redis_auth(env) if isinstance(env, list) else None


def redis_used_kb(auth: tuple[str, str] | None) -> int | None:
    """Redis's used_memory, asked with redis-cli (the password in the environment, not on the command line)."""
    if auth is None:
        return None
    port, password = auth
    try:
        proc = subprocess.run(
            ["redis-cli", "-h", "127.0.0.1", "-p", port, "INFO", "memory"],
            capture_output=True, text=True, timeout=5, check=False,
            env={**os.environ, "REDISCLI_AUTH": password},
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return used_memory_kb(proc.stdout)


@dataclass
class Probe:
    """Process groups to watch; looked up once per phase (and again after an action)."""

    backend_container: str
    client: list[int]
    worker_container: str = "chat-worker"
    nginx: list[int] = field(default_factory=list)
    backend: list[int] = field(default_factory=list)
    worker: list[int] = field(default_factory=list)
    redis: list[int] = field(default_factory=list)
    redis_auth: tuple[str, str] | None = None
    docker_proxy: list[int] = field(default_factory=list)
    watch: dict[str, str] = field(default_factory=dict)
    watched: dict[str, list[int]] = field(default_factory=dict)

    def refresh(self) -> None:
        self.nginx = _pids_named("nginx: worker process")
        # Docker's userland proxy, if the backend's port is published (none since the backend is on the host's network).
        self.docker_proxy = _pids_named("/usr/sbin/docker-proxy") + _pids_named("/usr/bin/docker-proxy")
        self.backend = backend_pids(self.backend_container)
        self.worker = backend_pids(self.worker_container)
        self.redis = _pids_named("/usr/bin/redis-server")
        self.redis_auth = backend_redis(self.backend_container) if self.redis else None
        self.watched = {name: _pids_named(prefix) for name, prefix in self.watch.items()}

    def snapshot(self, started: float) -> dict[str, Any]:
        busy, total = _host_busy()
        return {
            "t_s": round(time.time() - started, 2),
            "nginx_workers": len(self.nginx),
            "nginx_rss_kb": _rss_kb(self.nginx),
            "backend_rss_kb": _rss_kb(self.backend),
            "backend_cgroup_kb": backend_cgroup_kb(self.backend),
            "worker_rss_kb": _rss_kb(self.worker),
            "redis_rss_kb": _rss_kb(self.redis),
            "redis_used_kb": redis_used_kb(self.redis_auth),
            "cpu_s": {
                "nginx": _cpu_s(self.nginx),
                "backend": _cpu_s(self.backend),
                "worker": _cpu_s(self.worker),
                "redis": _cpu_s(self.redis),
                "client": _cpu_s(self.client),
                "docker_proxy": _cpu_s(self.docker_proxy),
                **{name: _cpu_s(pids) for name, pids in self.watched.items()},
            },
            "rss_kb": {name: _rss_kb(pids) for name, pids in self.watched.items()},
            "host_jiffies": [busy, total],
        }


def cpu_between(first: dict[str, Any], last: dict[str, Any]) -> dict[str, float]:
    """Cores used by each group between two snapshots, and the machine's busy share."""
    elapsed = max(last["t_s"] - first["t_s"], 1e-3)
    cores = {name: round((last["cpu_s"][name] - first["cpu_s"][name]) / elapsed, 2) for name in first["cpu_s"]}
    busy = last["host_jiffies"][0] - first["host_jiffies"][0]
    total = last["host_jiffies"][1] - first["host_jiffies"][1]
    cores["machine_busy_share"] = round(busy / total, 2) if total else 0.0
    return cores


# --------------------------------------------------------------------------
# Workers and the phase
# --------------------------------------------------------------------------


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def _worker(phase: Phase, offsets: list[float], start: float) -> list[dict[str, Any]]:
    target = Target(phase.stream_url(), phase.cafile, phase.server_name)
    window = (start + phase.window[0], start + phase.window[1])
    deadline = start + phase.timeout_s

    async def one(offset: float) -> StreamResult:
        await asyncio.sleep(max(start + offset - time.time(), 0))
        return await run_stream(
            target,
            interval_ms=phase.interval_ms,
            window=window,
            deadline=deadline,
            hold_without_reading_s=phase.hold_without_reading_s,
            rcvbuf=phase.rcvbuf,
            resume_attempts=phase.resume_attempts,
            resume_delay_ms=phase.resume_delay_ms,
        )

    results = await asyncio.gather(*(one(offset) for offset in offsets))
    return [result.to_dict() for result in results]


def _worker_main(phase: Phase, offsets: list[float], start: float, conn: Connection) -> None:
    _raise_nofile()
    conn.send(asyncio.run(_worker(phase, offsets, start)))
    conn.close()


async def _recover(phase: Phase, since: float) -> float | None:
    """Seconds from ``since`` until a new short stream ends with done and intact text."""
    target = Target(f"{phase.recover_url}/api/probe/stream?tokens=5&interval_ms=20", phase.cafile, phase.server_name)
    give_up = since + phase.recover_timeout_s
    while time.time() < give_up:
        result = await run_stream(target, interval_ms=20, deadline=min(time.time() + 5, give_up))
        if result.outcome == "done" and result.integrity == "ok":
            return round(result.ended_at - since, 2)
        await asyncio.sleep(0.25)
    return None


async def _conduct(phase: Phase, probe: Probe, start: float) -> dict[str, Any]:
    """Snapshots at the requested times, the action, and the recovery probe."""
    out: dict[str, Any] = {"samples": []}
    events: list[tuple[float, str]] = [(t, "sample") for t in phase.sample_at_s]
    if phase.action_at_s is not None:
        events.append((phase.action_at_s, "action"))
    for at, what in sorted(events):
        await asyncio.sleep(max(start + at - time.time(), 0))
        if what == "sample":
            out["samples"].append(probe.snapshot(start))
            continue
        began = time.time()
        proc = await asyncio.create_subprocess_exec(
            *phase.action_argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
        _, err = await proc.communicate()
        ended = time.time()
        out["action"] = {
            "argv": phase.action_argv,
            "at_s": round(began - start, 2),
            "took_s": round(ended - began, 2),
            "rc": proc.returncode,
            "stderr": err.decode(errors="replace")[-300:],
        }
        if phase.recover_url:
            recovered = await _recover(phase, began)
            out["action"]["new_stream_ok_after_s"] = recovered
        probe.refresh()
    return out


def delivered_share(phase: Phase, events: int, streams: int) -> float | None:
    """Events that arrived in the window over what N streams at the probe's pace would deliver (1.0 = on pace)."""
    span = phase.window[1] - phase.window[0]
    if not streams or span > 1e6 or phase.interval_ms <= 0:
        return None
    return round(events / (streams * span * 1000.0 / phase.interval_ms), 3)


def aggregate(phase: Phase, results: list[dict[str, Any]]) -> dict[str, Any]:
    """One phase's figures from every stream's result (pure)."""
    lateness = [v for r in results for v in r["lateness_ms"]]
    relative = [v for r in results for v in r["relative_ms"]]
    gaps = [v for r in results for v in r["gap_ms"]]
    outcomes = Counter(r["outcome"] for r in results)
    received = sum(r["tokens"] for r in results)
    expected = sum(r["done_tokens"] if r["done_tokens"] is not None else phase.tokens for r in results)
    return {
        "streams": len(results),
        "outcomes": dict(outcomes),
        "integrity": dict(Counter(r["integrity"] for r in results)),
        "tokens_received": received,
        "tokens_expected": expected,
        "events_lost": expected - received,
        "streams_dropped": sum(1 for r in results if r["outcome"] not in ("done", "error_done", "held")),
        "streams_error_done": outcomes.get("error_done", 0),
        "streams_resumed": sum(1 for r in results if r["resumes"]),
        "resumes": sum(r["resumes"] for r in results),
        "resume_statuses": dict(Counter(s for r in results for s in r["resume_statuses"])),
        "ids_twice": sum(r["ids_twice"] for r in results),
        "ids_missing": sum(r["ids_missing"] for r in results),
        "heartbeats_min": min((r["heartbeats"] for r in results), default=0),
        "lateness_ms": summarize(lateness),
        "relative_lateness_ms": summarize(relative),
        "emission_gap_ms": summarize(gaps),
        "delivered_share": delivered_share(phase, len(lateness), len(results)),
        "details": sorted({r["detail"] for r in results if r["detail"]})[:5],
    }


def run_phase(phase: Phase) -> dict[str, Any]:
    _raise_nofile()
    start = time.time() + 0.5 + phase.streams / 2000  # workers fork and build their tasks first
    parts = deal(ramp_offsets(phase.streams, phase.ramp_per_s), max(1, min(phase.workers, phase.streams or 1)))
    context = multiprocessing.get_context("fork")
    workers = []
    for offsets in parts:
        receiver, sender = context.Pipe(duplex=False)
        process = context.Process(target=_worker_main, args=(phase, offsets, start, sender), daemon=True)
        process.start()
        sender.close()
        workers.append((process, receiver))
    probe = Probe(
        phase.backend_container,
        [p.pid for p, _ in workers if p.pid is not None],
        worker_container=phase.worker_container,
        watch=phase.watch,
    )
    probe.refresh()
    idle = probe.snapshot(start)
    conducted = asyncio.run(_conduct(phase, probe, start))
    results: list[dict[str, Any]] = []
    for process, receiver in workers:
        if receiver.poll(max(start + phase.timeout_s + 30 - time.time(), 1)):
            results.extend(receiver.recv())
        process.join(5)
        if process.is_alive():
            process.kill()
    figures = aggregate(phase, results)
    figures["idle"] = idle
    figures.update(conducted)
    samples = conducted["samples"]
    if len(samples) >= 2:
        figures["cpu_cores"] = cpu_between(samples[0], samples[-1])
    figures["ramp_s"] = round(max(phase.streams - 1, 0) / phase.ramp_per_s, 2)
    figures["nofile_limit"] = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return figures


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    print(json.dumps(run_phase(Phase.from_json(argv[0]))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
