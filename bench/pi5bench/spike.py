"""The delivery spike (issue 14): today's single process against two worker -> Redis -> SSE designs, one run.

    python -m pi5bench.spike [--levels 100,300,600] [--capacity-steps 3] [--rounds 1] [--dist bookworm]

Builds ``pi5bench-spike:<dist>`` (bench/spike/Dockerfile: the simulated Pi's Debian with nginx, nchan, Redis,
uvicorn from Debian's archive), starts one container with every part of all three designs
(bench/spike/start.sh), and measures from inside it, through the same nginx, one design after the other at
each load: lateness, pace, capacity, CPU and memory per group of processes, then the fault drills with
clients that resume by Last-Event-ID, and the client contract. Writes bench/results/spike.json and spike.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .remote import REMOTE_DIR, REPO, Pi
from .run import Bench
from .stats import capacity_search, plan_phase, ratio

SPIKE_DIR = REPO / "bench/spike"
# Each design behind its own nginx server (bench/spike/nginx.conf); the same nginx, workers and machine.
DESIGNS: dict[str, int] = {"single": 8401, "a_sse": 8402, "a_hub": 8404, "b_nchan": 8403}
TITLES = {
    "single": "today: one process generates and delivers",
    "a_sse": "(a) worker -> Redis Streams -> N uvicorn SSE processes (XREAD BLOCK)",
    "a_hub": "(a') as (a), one XREAD BLOCK per process for all its clients",
    "b_nchan": "(b) worker -> nchan publisher -> Redis -> nchan in nginx's workers",
}
# Process groups the load generator watches (cmdline prefixes set by start.sh), and who delivers in each design.
WATCH = {"redis": "spike-redis", "worker": "spike-worker", "single": "spike-local", "sse_a": "spike-sse-a", "hub_a": "spike-hub-a",
         "backend_b": "spike-backend-b"}
DELIVERY = {"single": ["single", "nginx"], "a_sse": ["sse_a", "nginx", "redis", "worker"],
            "a_hub": ["hub_a", "nginx", "redis", "worker"],
            "b_nchan": ["nginx", "redis", "worker", "backend_b"]}
# The drills: what each one does, per design (start.sh's SPIKE_ACTION).
DRILLS: dict[str, dict[str, str]] = {
    "nginx_reload": {"a_sse": "reload", "a_hub": "reload", "b_nchan": "reload"},
    "delivery_restart": {"a_sse": "restart-sse", "a_hub": "restart-sse", "b_nchan": "restart-backend"},
    "redis_restart": {"a_sse": "restart-redis", "a_hub": "restart-redis", "b_nchan": "restart-redis"},
}


def log(message: str) -> None:
    print(f"[spike {dt.datetime.now(dt.UTC):%H:%M:%S}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# Pure parts (tests/bench/test_spike.py)
# --------------------------------------------------------------------------


def group_memory(figures: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per watched group: RSS idle (KiB), at mid-window, and per open stream ((mid - idle) / N, KiB)."""
    samples = figures.get("samples") or []
    idle = figures.get("idle", {}).get("rss_kb", {})
    if not samples or not figures.get("streams"):
        return {}
    mid = samples[len(samples) // 2]
    groups = {**mid.get("rss_kb", {}), "nginx": mid.get("nginx_rss_kb", 0)}
    idle = {**idle, "nginx": figures["idle"].get("nginx_rss_kb", 0)}
    return {
        name: {"idle_kb": idle.get(name, 0), "active_kb": value,
               "per_stream_kb": round((value - idle.get(name, 0)) / figures["streams"], 1)}
        for name, value in groups.items()
    }


def design_cost(figures: dict[str, Any], design: str) -> dict[str, float | None]:
    """The cores and KiB per stream of the processes a design needs to deliver (its DELIVERY groups)."""
    cores = figures.get("cpu_cores") or {}
    memory = group_memory(figures)
    names = DELIVERY[design]
    return {
        "cores": round(sum(cores.get(name, 0.0) for name in names), 2) if cores else None,
        "kib_per_stream": round(sum(memory[name]["per_stream_kb"] for name in names if name in memory), 1)
        if memory else None,
    }


def us_per_event(figures: dict[str, Any], design: str) -> dict[str, float] | None:
    """CPU microseconds per delivered event, per process group of the design and in all (pure).

    Less sensitive to a busy machine than lateness: a process that waits for a core does not burn CPU
    meanwhile, so this is what carries over to another machine (scaled by its per-core speed).
    """
    cores = figures.get("cpu_cores") or {}
    share, streams = figures.get("delivered_share"), figures.get("streams")
    interval = figures.get("interval_ms", 50)
    if not cores or not share or not streams:
        return None
    events_per_s = share * streams * 1000.0 / interval
    out = {name: round(cores.get(name, 0.0) * 1e6 / events_per_s, 1) for name in DELIVERY[design]}
    out["all"] = round(sum(out.values()), 1)
    return out


def seed_bounds(results: dict[int, bool], low: int, high: int) -> tuple[int, int, bool]:
    """Capacity search bounds from the levels already measured: (largest pass, smallest fail, fail known)."""
    passed = [n for n, ok in results.items() if ok]
    failed = [n for n, ok in results.items() if not ok]
    good = max(passed, default=low)
    bad = min((n for n in failed if n > good), default=None)
    return good, (bad if bad is not None else high), bad is not None


def added_lateness(design: dict[str, Any], base: dict[str, Any]) -> dict[str, float | None]:
    """What the Redis hop adds to the baseline's lateness at the same load: p50 and p99 differences (ms)."""
    out: dict[str, float | None] = {}
    for q in ("p50", "p99"):
        a, b = design["lateness_ms"].get(q), base["lateness_ms"].get(q)
        out[q] = None if a is None or b is None else round(a - b, 1)
    return out


def fmt(value: object) -> str:
    return "-" if value is None else str(value)


def _us(per: dict[str, float] | None) -> str:
    if not per:
        return "-"
    return f"**{per['all']}** (" + ", ".join(f"{name} {value}" for name, value in per.items() if name != "all") + ")"


def markdown(results: dict[str, Any]) -> str:
    """The README-ready tables from spike.json."""
    lines = [f"Run {results['started']} on {results['target']} (machine: {results['cores']} cores,"
             f" load before {results['load_before']}).", "",
             "| design | capacity (p99 < 100 ms, pace >= 0.9) | vs today |", "| --- | ---: | ---: |"]
    capacity = results.get("capacity", {})
    base = capacity.get("single", {}).get("streams")
    for design in DESIGNS:
        if design in capacity:
            streams = capacity[design]["streams"]
            lines.append(f"| {TITLES[design]} | {streams} | {fmt(ratio(streams, base))} |")
    lines += ["", "| streams | design | p50 | p99 | added p50 / p99 | pace | cores (delivery) | CPU us/event"
              " | KiB/stream | done |", "| ---: | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |"]
    for level in results.get("levels", []):
        for design, fig in level["designs"].items():
            added = level["added"].get(design, {})
            cost = level["cost"].get(design, {})
            lines.append(
                f"| {level['streams']} | {design} | {fmt(fig['lateness_ms']['p50'])} | {fmt(fig['lateness_ms']['p99'])}"
                f" | {fmt(added.get('p50'))} / {fmt(added.get('p99'))} | {fmt(fig['delivered_share'])}"
                f" | {fmt(cost.get('cores'))} | {_us(us_per_event(fig, design))} | {fmt(cost.get('kib_per_stream'))}"
                f" | {fig['outcomes'].get('done', 0)}/{fig['streams']} |")
    lines += ["", "| drill | design | complete | ids twice | same event twice | tokens missing | reconnected"
              " | publishes retried | statuses |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for drill, per in results.get("drills", {}).items():
        for design, got in per.items():
            lines.append(f"| {drill} | {design} | {got['complete']}/{got['streams']} | {got['ids_twice']}"
                         f" | {got.get('same_event_twice')} | {got['tokens_missing']} | {got['streams_reconnected']}"
                         f" | {got.get('worker_publish_retries')} | {got['statuses']} |")
    contract = results.get("contract", {})
    if contract:
        lines += ["", "| contract | " + " | ".join(contract) + " |", "| --- |" + " --- |" * len(contract)]
        keys = sorted({k for v in contract.values() for k in v})
        lines += [f"| {key} | " + " | ".join(fmt(contract[d].get(key)) for d in contract) + " |" for key in keys]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------


class Spike:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.pi = Pi(container=args.container)
        self.results: dict[str, Any] = {
            "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "target": f"container {args.container} (pi5bench-spike:{args.dist})",
            "cores": os.cpu_count(), "load_before": [round(x, 2) for x in os.getloadavg()],
            "settings": {"ports": DESIGNS, "sse_processes": args.sse_processes, "interval_ms": args.interval_ms,
                         "ramp_per_s": args.ramp_per_s, "window_s": args.window_s, "rounds": args.rounds},
        }

    def sh(self, action: str) -> subprocess.CompletedProcess[str]:
        return self.pi.run(["bash", "-c", f"SPIKE_ACTION={action} /opt/spike/start.sh {self.args.sse_processes}"],
                           timeout_s=120)

    def setup(self) -> None:
        image = f"pi5bench-spike:{self.args.dist}"
        subprocess.run(["docker", "build", "-q", "-t", image, "--build-arg", f"BASE=pi5-sim:{self.args.dist}",
                        str(SPIKE_DIR)], check=True, capture_output=True, timeout=1200)
        subprocess.run(["docker", "rm", "-f", self.args.container], capture_output=True, check=False)
        subprocess.run(["docker", "run", "-d", "--name", self.args.container, "--entrypoint", "sleep", image,
                        "infinity"], check=True, capture_output=True)
        self.pi.copy_in(SPIKE_DIR, "/opt/spike")
        self.pi.install_bench()
        started = self.sh("all")
        if started.returncode:
            raise RuntimeError(f"start.sh failed: {started.stderr[-2000:]}")
        time.sleep(2)

    def load(self, design: str, streams: int) -> dict[str, Any]:
        plan = plan_phase(streams, self.args.ramp_per_s, self.args.window_s, self.args.interval_ms)
        mid = (plan.window_start_s + plan.window_end_s) / 2
        spec = {"url": f"http://127.0.0.1:{DESIGNS[design]}", "streams": streams, "ramp_per_s": self.args.ramp_per_s,
                "interval_ms": self.args.interval_ms, "workers": self.args.workers, "tokens": plan.tokens,
                "window": [plan.window_start_s, plan.window_end_s], "timeout_s": plan.window_end_s + plan.ramp_s + 20,
                "sample_at_s": [plan.window_start_s, mid, plan.window_end_s], "watch": WATCH}
        figures = self.pi.loadgen(spec, timeout_s=spec["timeout_s"] + 90)
        late = figures["lateness_ms"]
        log(f"{design:8} {streams:5}: p50 {late['p50']} p99 {late['p99']} pace {figures['delivered_share']}"
            f" outcomes {figures['outcomes']} cost {design_cost(figures, design)}")
        self.settle()
        return figures

    def settle(self, timeout_s: float = 240) -> None:
        """Wait until the workers generate nothing: replies outlive their clients, and would load the next phase."""
        waited = self.pi.wait_until(["bash", "-c", "[ \"$(redis-cli -p 6399 scard spike:active)\" = 0 ]"], timeout_s)
        if waited is None:
            log(f"workers still busy after {timeout_s} s")
        time.sleep(2)

    def median_load(self, design: str, streams: int) -> dict[str, Any]:
        rounds = [self.load(design, streams) for _ in range(self.args.rounds)]
        rounds.sort(key=lambda f: f["lateness_ms"]["p99"] if f["lateness_ms"]["p99"] is not None else 1e9)
        chosen = rounds[len(rounds) // 2]
        if len(rounds) > 1:
            chosen["rounds_p99"] = [f["lateness_ms"]["p99"] for f in rounds]
        return chosen

    def levels(self) -> dict[str, dict[int, bool]]:
        verdicts: dict[str, dict[int, bool]] = {d: {} for d in DESIGNS}
        self.results["levels"] = []
        for streams in self.args.levels:
            level: dict[str, Any] = {"streams": streams, "designs": {}, "added": {}, "cost": {}}
            for design in DESIGNS:  # one after the other at each load: the same conditions for all three
                figures = self.median_load(design, streams)
                level["designs"][design] = figures
                level["cost"][design] = design_cost(figures, design)
                level.setdefault("memory", {})[design] = group_memory(figures)
                verdicts[design][streams] = Bench.passes(figures)
            for design in ("a_sse", "a_hub", "b_nchan"):
                level["added"][design] = added_lateness(level["designs"][design], level["designs"]["single"])
            self.results["levels"].append(level)
            self.save()
        return verdicts

    def capacity(self, verdicts: dict[str, dict[int, bool]]) -> None:
        self.results["capacity"] = {}
        for design in DESIGNS:
            good, bad, bad_known = seed_bounds(verdicts[design], self.args.capacity_low, self.args.capacity_high)
            def passes(streams: int, design: str = design) -> bool:
                return Bench.passes(self.load(design, streams))

            streams, trials = capacity_search(passes, good, bad,
                                              max_steps=self.args.capacity_steps + 1,
                                              resolution=self.args.capacity_resolution, high_fails=bad_known)
            self.results["capacity"][design] = {"streams": streams, "trials": trials,
                                                "levels": {str(k): v for k, v in verdicts[design].items()}}
            log(f"capacity {design}: {streams} ({trials})")
            self.save()

    def drills(self) -> None:
        self.results["drills"] = {}
        for drill, per in DRILLS.items():
            if drill not in self.args.drills:
                continue
            for design, action in per.items():
                if design not in self.args.drill_designs:
                    continue
                if action == "restart-redis":  # the same small AOF for every design: its replay is the restart's time
                    self.pi.run(["bash", "-c", "redis-cli -p 6399 flushall && redis-cli -p 6399 bgrewriteaof"])
                    time.sleep(2)
                spec = {"url": f"http://127.0.0.1:{DESIGNS[design]}", "streams": self.args.drill_streams,
                        "tokens": 200, "interval_ms": self.args.interval_ms, "action_at_s": 4.0, "timeout_s": 60,
                        "action_argv": ["bash", "-c", f"SPIKE_ACTION={action} /opt/spike/start.sh "
                                                      f"{self.args.sse_processes}"]}
                retries = self.publish_retries()
                got = self.drill(spec)
                got["worker_publish_retries"] = self.publish_retries() - retries
                self.results["drills"].setdefault(drill, {})[design] = got
                log(f"drill {drill} {design}: {got['complete']}/{got['streams']} complete, twice {got['ids_twice']}"
                    f" (same event {got['same_event_twice']}, publishes retried {got['worker_publish_retries']}),"
                    f" missing {got['tokens_missing']}, reconnected {got['streams_reconnected']}, {got['statuses']}")
                self.settle()
                self.save()

    def publish_retries(self) -> int:
        """Publishes the workers retried so far (worker.py logs each): a retried HTTP publish may publish twice."""
        out = self.pi.run(["bash", "-c", "cat /var/log/spike/spike-worker*.log | grep -c 'publish retried' || true"])
        return int(out.stdout.strip() or 0)

    def drill(self, spec: dict[str, Any]) -> dict[str, Any]:
        proc = self.pi.run(["python3", "-m", "pi5bench.spike_client", json.dumps(spec)], timeout_s=spec["timeout_s"] + 60,
                           env={"PYTHONPATH": f"{REMOTE_DIR}:{REMOTE_DIR}/collections"})
        if proc.returncode:
            raise RuntimeError(f"spike_client failed: {proc.stderr[-2000:]}")
        result: dict[str, Any] = json.loads(proc.stdout)
        return result

    def contract(self) -> None:
        """What a client sees: headers, ids, retry:, resume, replay, expired, heartbeats (one 17 s silence)."""
        script = Path(SPIKE_DIR, "contract.sh").read_text()
        proc = self.pi.run(["bash", "-c", script], timeout_s=120)
        self.results["contract"] = json.loads(proc.stdout) if proc.returncode == 0 else {"error": {"stderr": proc.stderr[-500:]}}
        log(f"contract: {self.results['contract']}")

    def save(self) -> None:
        out = Path(self.args.results_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "spike.json").write_text(json.dumps(self.results, indent=1))
        (out / "spike.md").write_text(markdown(self.results))

    def run(self) -> int:
        if self.args.report_only:
            self.results = json.loads(Path(self.args.results_dir, "spike.json").read_text())
            self.save()
            return 0
        self.setup()
        try:
            if "contract" in self.args.only:
                self.contract()
            verdicts = self.levels() if "load" in self.args.only else {}
            if "load" in self.args.only and self.args.capacity_steps:
                self.capacity(verdicts)
            if "drills" in self.args.only:
                self.drills()
            self.results["load_after"] = [round(x, 2) for x in os.getloadavg()]
            self.results["statistics"] = {"median_p99": {
                d: statistics.median(lv["designs"][d]["lateness_ms"]["p99"] or 0 for lv in self.results.get("levels", []))
                for d in DESIGNS} if self.results.get("levels") else None}
        finally:
            self.save()
            if not self.args.keep:
                subprocess.run(["docker", "rm", "-f", self.args.container], capture_output=True, check=False)
        return 0


def parse_args(argv: list[str]) -> argparse.Namespace:
    def ints(text: str) -> list[int]:
        return [int(x) for x in text.split(",") if x]

    p = argparse.ArgumentParser(prog="python -m pi5bench.spike", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--container", default=f"{os.environ.get('PI5_SIM', 'pi5')}-delivery-spike")
    p.add_argument("--dist", default="bookworm", choices=["bookworm", "trixie"])
    p.add_argument("--only", default="contract,load,drills", type=lambda s: set(s.split(",")))
    p.add_argument("--levels", type=ints, default=[100, 300, 600])
    p.add_argument("--rounds", type=int, default=1, help="rounds per level and design, median p99 kept")
    p.add_argument("--sse-processes", type=int, default=os.cpu_count() or 2, help="design (a)'s processes (cores)")
    p.add_argument("--workers", type=int, default=2, help="load generator processes")
    p.add_argument("--interval-ms", type=int, default=50)
    p.add_argument("--ramp-per-s", type=float, default=250.0)
    p.add_argument("--window-s", type=float, default=6.0)
    p.add_argument("--capacity-low", type=int, default=25)
    p.add_argument("--capacity-high", type=int, default=2000)
    p.add_argument("--capacity-steps", type=int, default=3)
    p.add_argument("--capacity-resolution", type=int, default=25)
    p.add_argument("--drill-streams", type=int, default=200)
    p.add_argument("--drills", default=",".join(DRILLS), type=lambda s: set(s.split(",")))
    p.add_argument("--drill-designs", default="a_sse,a_hub,b_nchan", type=lambda s: set(s.split(",")))
    p.add_argument("--results-dir", default=str(REPO / "bench/results"))
    p.add_argument("--keep", action="store_true", help="leave the container running afterwards")
    p.add_argument("--report-only", action="store_true", help="write spike.md again from spike.json, measure nothing")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return Spike(parse_args(sys.argv[1:] if argv is None else argv)).run()


if __name__ == "__main__":
    sys.exit(main())
