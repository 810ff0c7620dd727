"""The bench: provisioning times, latency at several concurrencies, capacity, fault drills.

    python -m pi5bench [--only latency,capacity,...] [--levels 1,100,1000,2000] ...

Every load phase runs the load generator on the Pi (docker exec into the
simulated Pi, or ssh to a real one), so the direct path (the backend on
127.0.0.1:7776) and the nginx path (HTTPS on localhost:443) are measured from
the same place in the same run. Every phase and drill is bounded in time.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import report
from .remote import REMOTE_DIR, REPO, Pi
from .stats import capacity_search, plan_phase, ratio

SECTIONS = ("provisioning", "latency", "capacity", "baseline", "drills", "rerun")
DRILLS = ("reload", "backend_restart", "slow_reader", "idle_heartbeats", "reboot")
# The bench's settings for the simulated Pi (one converge, every phase and drill):
# no probe rate limit, a 10 s send timeout, 1 s heartbeats under a 5 s read
# timeout (the role's 4 x rule), and nginx sized for 2500 streams. The limits
# against a hostile client (README, "Security") are raised past the load, which
# comes from one address: no cap on open probes or their length, 4096 connections,
# no per-client limit in nginx.
BENCH_VARS: dict[str, Any] = {
    "backend_env": {"BACKEND_PROBE_RATE_PER_S": "0", "BACKEND_SEND_TIMEOUT_S": "10",
                    "BACKEND_PROBE_MAX_STREAMS": "1000000", "BACKEND_PROBE_MAX_S": "3600"},
    "backend_max_connections": 4096,
    "backend_nofile": 8192,
    "nginx_limit_conn_per_client": 0,
    "nginx_limit_req_per_s": 0,
    "backend_heartbeat_s": 1,
    "nginx_stream_read_timeout_s": 5,
    "nginx_max_streams": 2500,
    # Finished replies stay in Redis for backend_reply_ttl_s (600 s) for reconnecting clients: at 1,000
    # streams of 20 events/s (~150 B each) they fill the default 128 MiB within a minute, and Redis then
    # refuses new replies (503), which would measure the cap, not delivery (2026-12-07's first run).
    "redis_maxmemory_mb": 2048,
    "backend_reply_ttl_s": 60,
}
LATENESS_LIMIT_MS = 100.0
# A saturated backend emits late but stamps ts at the write, so lateness alone
# would not see it: it must also deliver 90 % of the probe's 20 events/s.
MIN_PACE = 0.9
# Issue 14: capacity through nginx at least 1.8 x the previous design's, measured in the same run.
CAPACITY_TARGET = 1.8
# The previous design: main before issue 14 (one process generates and delivers each reply).
BASELINE_REF = "dc525e0"
# Streams per path that warm a freshly started backend and nginx before the first level.
WARM_UP_STREAMS = 20


def log(message: str) -> None:
    print(f"[bench {dt.datetime.now(dt.UTC):%H:%M:%S}] {message}", file=sys.stderr, flush=True)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.pi = Pi(container=None if args.ssh else args.container, ssh=args.ssh)
        self.results: dict[str, Any] = {
            "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "target": args.ssh or f"container {args.container}",
            "settings": {
                "direct_url": args.direct_url,
                "nginx_url": args.nginx_url,
                "nginx_protocol": "HTTP/1.1 over TLS (ALPN http/1.1), certificate checked against " + args.cafile,
                "interval_ms": args.interval_ms,
                "ramp_per_s": args.ramp_per_s,
                "window_s": args.window_s,
                "workers": args.workers,
                "bench_vars": BENCH_VARS,
                "load": os.getloadavg(),
            },
        }
        self.deadline = time.monotonic() + args.budget_s

    # -- helpers ----------------------------------------------------------

    def out_of_time(self, what: str) -> bool:
        if time.monotonic() > self.deadline:
            log(f"time budget spent: skipping {what}")
            self.results.setdefault("skipped", []).append(what)
            return True
        return False

    def phase(self, url: str, streams: int, pi: Pi | None = None, **extra: Any) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "url": url,
            "streams": streams,
            "ramp_per_s": self.args.ramp_per_s,
            "interval_ms": self.args.interval_ms,
            "workers": self.args.workers,
            "backend_container": self.args.backend_container,
            "worker_container": self.args.worker_container,
        }
        if url.startswith("https"):
            spec.update(cafile=self.args.cafile, server_name=self.args.server_name)
        spec.update(extra)
        return (pi or self.pi).loadgen(spec, timeout_s=spec.get("timeout_s", 60) + 90)

    def load_phase(self, path: str, streams: int, pi: Pi | None = None) -> dict[str, Any]:
        plan = plan_phase(streams, self.args.ramp_per_s, self.args.window_s, self.args.interval_ms)
        url = self.args.direct_url if path == "direct" else self.args.nginx_url
        window_mid = (plan.window_start_s + plan.window_end_s) / 2
        figures = self.phase(
            url,
            streams,
            pi,
            tokens=plan.tokens,
            window=[plan.window_start_s, plan.window_end_s],
            timeout_s=plan.window_end_s + plan.ramp_s + 20,
            sample_at_s=[plan.window_start_s, window_mid, plan.window_end_s],
        )
        figures["plan"] = plan.__dict__
        lateness = figures["lateness_ms"]
        label = "baseline " if pi not in (None, self.pi) else ""
        log(
            f"{label}{path:6} {streams:5} streams: lateness p50 {lateness['p50']} p99 {lateness['p99']}"
            f" max {lateness['max']} ms, pace {figures['delivered_share']},"
            f" gap p99 {figures['emission_gap_ms']['p99']} ms, outcomes {figures['outcomes']},"
            f" cpu {figures.get('cpu_cores')}"
        )
        return figures

    @staticmethod
    def passes(figures: dict[str, Any]) -> bool:
        p99 = figures["lateness_ms"]["p99"]
        pace = figures.get("delivered_share")
        return (
            p99 is not None
            and p99 < LATENESS_LIMIT_MS
            and (pace is None or pace >= MIN_PACE)
            and figures["outcomes"].get("done", 0) == figures["streams"]
        )

    # -- sections ---------------------------------------------------------

    def converge(self, label: str, project_dir: str | None = None, env: dict[str, str] | None = None,
                 *, bench_vars: bool = True) -> dict[str, Any]:
        """molecule converge of the demo scenario (with the bench's settings); seconds, the playbook's, changed count."""
        project_dir = project_dir or self.args.project_dir
        extra = ["--", "-e", json.dumps(BENCH_VARS)] if bench_vars else []
        start = time.monotonic()
        proc = subprocess.run(
            ["molecule", "converge", "-s", "demo", *extra],
            cwd=project_dir,
            # profile_tasks ends with the playbook's own run time: site.yml alone, without molecule around it.
            env={**tool_env(project_dir), "ANSIBLE_CALLBACKS_ENABLED": "ansible.posix.profile_tasks",
                 "PROFILE_TASKS_TASK_OUTPUT_LIMIT": "5", **(env or {})},
            capture_output=True,
            text=True,
            timeout=1200,
            check=False,
        )
        took = round(time.monotonic() - start, 1)
        recap = re.findall(
            r"changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)",
            re.sub(r"\x1b\[[0-9;]*m", "", proc.stdout + proc.stderr),
        )
        result = {"seconds": took, "playbook_s": playbook_seconds(proc.stdout + proc.stderr), "rc": proc.returncode,
                  "recap": recap[-1] if recap else None}
        log(f"{label} converge: {result}")
        if proc.returncode != 0:
            saved = Path(self.args.results_dir, f"converge-{label}.log")
            saved.write_text(proc.stdout[-20000:] + proc.stderr[-5000:])
            # Figures from a Pi that site.yml did not converge would measure something else: stop here.
            raise SystemExit(f"{label} converge failed (rc {proc.returncode}): {saved}")
        return result

    def provisioning(self) -> None:
        prov: dict[str, Any] = {}
        state = subprocess.run(
            ["docker", "inspect", "-f", "{{.State.Running}}", str(self.args.container)],
            capture_output=True, text=True, check=False,
        )
        exists = state.returncode == 0
        if exists and state.stdout.strip() != "true" and not self.args.ssh:
            # A Pi left powered off (e.g. the host's Docker restarted): boot it, as its owner would.
            log(f"{self.args.container} is stopped: starting it")
            subprocess.run(["docker", "start", str(self.args.container)], check=True, capture_output=True)
        if not self.args.ssh and self.args.converge != "none":
            if self.args.converge == "cold" or (self.args.converge == "auto" and not exists):
                if exists:
                    subprocess.run(
                        ["molecule", "destroy", "-s", "demo"],
                        cwd=self.args.project_dir,
                        env=tool_env(self.args.project_dir),
                        capture_output=True,
                        check=False,
                    )
                    subprocess.run(["docker", "volume", "rm", "-f", "pi5-sim-docker"], capture_output=True, check=False)
                prov["cold_converge"] = self.converge("cold")
                prov["cold_converge_s"] = prov["cold_converge"]["seconds"]
            elif self.args.converge == "warm":
                # Another checkout (--project-dir) or other settings may have converged it last: settle first.
                prov["settle_converge"] = self.converge("settle")
            warm = [self.converge(f"warm-{i + 1}") for i in range(self.args.warm_runs)]
            prov["warm_converges"] = warm
            if warm:
                prov["warm_converge_median_s"] = statistics.median(w["seconds"] for w in warm)
                playbook = [w["playbook_s"] for w in warm if w["playbook_s"] is not None]
                if playbook:
                    prov["warm_playbook_median_s"] = statistics.median(playbook)
        if self.args.cold_converge_s is not None and "cold_converge_s" not in prov:
            prov["cold_converge_s"] = self.args.cold_converge_s
            prov["cold_converge_note"] = "timed outside this run (--cold-converge-s), same command"
        self.install()
        prov.update(self.stream_check_times())
        self.results["provisioning"] = prov

    def rerun(self) -> None:
        """A warm site.yml (nothing to change, the shipped settings), this checkout against --rerun-against's.

        Each checkout converges its own demo Pi (PI5_SIM names them apart; a checkout older than that
        variable uses pi5-sim), once untimed to settle, then the timed runs alternate between the two so
        that both see the same load on this shared machine.
        """
        if not self.args.rerun_against:
            log("rerun: no --rerun-against checkout given; skipped")
            return
        pis = {"this": (self.args.project_dir, {"PI5_SIM": "rerun-this", "PI5_DEMO_HTTP_PORT": "48080",
                                                "PI5_DEMO_HTTPS_PORT": "48443"}),
               "against": (self.args.rerun_against, {"PI5_SIM": "rerun-against", "PI5_DEMO_HTTP_PORT": "48081",
                                                     "PI5_DEMO_HTTPS_PORT": "48444"})}
        for directory, env in pis.values():
            names_its_pi = "PI5_SIM" in Path(directory, "molecule/demo/molecule.yml").read_text()
            pi = f"{env['PI5_SIM']}-sim" if names_its_pi else "pi5-sim"
            if subprocess.run(["docker", "inspect", pi], capture_output=True, check=False).returncode:
                # Molecule keeps one state per scenario: a Pi of another name may be recorded as created.
                # (Not `molecule reset`: the docker driver's reset removes every container molecule ever made.)
                subprocess.run(["molecule", "destroy", "-s", "demo"], cwd=directory, env={**tool_env(directory), **env},
                               capture_output=True, check=False)
        settle = {name: self.converge(f"rerun {name} settle", directory, env, bench_vars=False)
                  for name, (directory, env) in pis.items()}
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in pis}
        for i in range(self.args.rerun_runs):
            for name, (directory, env) in pis.items():
                runs[name].append(self.converge(f"rerun {name} {i + 1}", directory, env, bench_vars=False))
        medians = {name: statistics.median(r["playbook_s"] for r in found if r["playbook_s"] is not None)
                   for name, found in runs.items()}
        self.results["rerun"] = {
            "this": self.args.project_dir, "against": self.args.rerun_against, "settle": settle, "runs": runs,
            "playbook_median_s": medians, "ratio_this_to_against": ratio(medians["this"], medians["against"]),
            "load": os.getloadavg(),
        }
        log(f"rerun: median playbook seconds {medians}")

    def install(self) -> None:
        """The bench on the Pi, and the hops of playbooks/verify.yml for bin/stream-check."""
        self.pi.install_bench()
        probe = f"/api/probe/stream?tokens=20&interval_ms={self.args.interval_ms}"
        hops = [
            {"name": "backend", "url": self.args.direct_url + probe},
            {"name": "nginx-h2", "url": self.args.nginx_url + probe, "cacert": self.args.cafile, "http_version": "2"},
            {
                "name": "nginx-h1.1",
                "url": self.args.nginx_url + probe,
                "cacert": self.args.cafile,
                "http_version": "1.1",
            },
        ]
        self.pi.run(["sh", "-c", f"cat > {REMOTE_DIR}/hops.json <<'EOF'\n{json.dumps(hops)}\nEOF"])

    def stream_check_times(self) -> dict[str, Any]:
        """bin/stream-check on the Pi over the same hops as playbooks/verify.yml, 5 runs."""
        times, verdicts = [], []
        for _ in range(self.args.check_runs):
            start = time.monotonic()
            proc = self.pi.run(["sh", f"{REMOTE_DIR}/bin/stream-check", "--hops-file", f"{REMOTE_DIR}/hops.json"])
            times.append(round(time.monotonic() - start, 2))
            verdicts.append(proc.returncode)
        log(f"stream check (3 hops, on the Pi): {times} s, exit codes {verdicts}")
        return {
            "stream_check_runs_s": times,
            "stream_check_median_s": statistics.median(times) if times else None,
            "stream_check_exit_codes": verdicts,
        }

    def latency(self) -> None:
        self.results["latency"] = self.measure_levels(self.pi, "latency")
        self.results["memory_per_stream_kb"] = memory_per_stream(self.results["latency"])

    def measure_levels(self, pi: Pi, section: str) -> dict[str, dict[str, Any]]:
        """Each level's rounds (direct, then nginx, back to back); saved after each level under ``section``."""
        latency: dict[str, dict[str, Any]] = {}
        where = self.results if section == "latency" else self.results.setdefault(section, {})
        where["fresh_start_s"] = self.fresh_start(pi)
        for streams in self.args.levels:
            if self.out_of_time(f"{section} latency at {streams}"):
                break
            rounds = self.args.repeat if streams <= self.args.repeat_up_to else 1
            runs = [{path: self.load_phase(path, streams, pi) for path in ("direct", "nginx")} for _ in range(rounds)]
            latency[str(streams)] = {**median_round(runs), "first_round": first_round(runs[0])}
            where["latency"] = latency
            self.save()
        return latency

    def fresh_start(self, pi: Pi) -> float | None:
        """Restart the backend's containers before the first level; seconds until a probe stream works again.

        Memory per stream is the first round's rise from idle, and a Python heap keeps its high-water mark:
        a backend that carried streams before (an earlier run, a drill) would show none, and nginx's workers
        likewise (a reload starts new ones). The worker restarts after the API, as the role replaces them; a
        design without a worker has no such container (no-op).
        """
        for name in (self.args.backend_container, self.args.worker_container):
            pi.run(["docker", "restart", name], timeout_s=120)
        pi.run(["systemctl", "reload", "nginx"])
        probe = f"{self.args.direct_url}/api/probe/stream?tokens=2&interval_ms=10"
        waited = pi.wait_until(["curl", "-sfN", "-o", "/dev/null", "--max-time", "10", probe], timeout_s=120)
        # A warm-up, not measured: a new process's first connections touch its libraries' and TLS's pages once
        # (RSS it keeps whatever the load), which divided by N would pass for memory per stream.
        for url in (self.args.direct_url, self.args.nginx_url):
            self.phase(url, WARM_UP_STREAMS, pi, tokens=10, interval_ms=20, timeout_s=30)
        log(f"fresh start of {pi.container or pi.ssh}'s backend and nginx: a probe stream worked after {waited} s")
        return waited

    def capacity(self) -> None:
        capacity: dict[str, Any] = {}
        for path in ("direct", "nginx"):
            capacity[path] = self.search_capacity(path, self.results.get("latency", {}), self.pi)
            self.results["capacity"] = capacity
            self.save()

    def search_capacity(self, path: str, latency: dict[str, dict[str, Any]], pi: Pi) -> dict[str, Any]:
        """The bisection over N for one path, seeded by the latency levels measured on the same Pi."""
        known = {int(n): self.passes(p[path]) for n, p in latency.items() if path in p}
        measured: dict[int, dict[str, Any]] = {}

        def passes(streams: int) -> bool:
            if streams in known:
                return known[streams]
            if self.out_of_time(f"capacity {path} {streams}"):
                return False
            figures = self.load_phase(path, streams, pi)
            measured[streams] = {
                k: figures[k]
                for k in ("lateness_ms", "delivered_share", "emission_gap_ms", "outcomes", "cpu_cores")
                if k in figures
            }
            return self.passes(figures)

        passing = [n for n, ok in known.items() if ok]
        failing = [n for n, ok in known.items() if not ok and n > max(passing, default=0)]
        low = max(passing, default=self.args.capacity_low)
        high = min(failing, default=self.args.capacity_high)
        found, trials = capacity_search(
            passes,
            low,
            max(high, low),
            # --capacity-steps counts load phases: the known low end is a trial of the search but costs none.
            max_steps=self.args.capacity_steps + (low in known),
            resolution=self.args.capacity_resolution,
            high_fails=bool(failing),
        )
        log(f"capacity {path}{' (baseline)' if pi is not self.pi else ''}: {found} streams (trials {trials})")
        return {"streams": found, "trials": trials, "measured": measured, "bounds": [low, high]}

    # -- the previous design, measured in the same run ---------------------

    def baseline(self) -> None:
        """The previous design's checkout on a Pi of its own: latency at the same levels, capacity through nginx.

        Measured after this design's sections, with this Pi idle (the machine is shared: one Pi loaded at a
        time), by the same load generator; the Pi is stopped afterwards. The comparison (capacity ratio, the
        Redis hop's added lateness per level) is in ``comparison``.
        """
        if self.args.ssh:
            log("baseline: not on a real Pi (it needs a second one); skipped")
            return
        directory = self.baseline_checkout()
        if directory is None:
            log("baseline: no --baseline or --baseline-ref; skipped")
            return
        if self.out_of_time("baseline"):
            return
        sim = self.args.baseline_sim
        http_port, https_port = self.args.baseline_ports
        env = {"PI5_SIM": sim, "PI5_DEMO_HTTP_PORT": str(http_port), "PI5_DEMO_HTTPS_PORT": str(https_port)}
        container = f"{sim}-sim"
        state = subprocess.run(["docker", "inspect", "-f", "{{.State.Running}}", container],
                               capture_output=True, text=True, check=False)
        if not state.returncode and state.stdout.strip() != "true":
            # Stopped by the last run: start it (a start that fails, e.g. its port taken, means a new Pi).
            state = subprocess.run(["docker", "start", container], capture_output=True, text=True, check=False)
        if state.returncode:
            # Molecule keeps one state per scenario and checkout name: a Pi of another name may be recorded.
            subprocess.run(["molecule", "destroy", "-s", "demo"], cwd=directory, env={**tool_env(directory), **env},
                           capture_output=True, check=False)
        found: dict[str, Any] = {"checkout": directory, "commit": git(["rev-parse", "HEAD"], directory), "pi": container}
        self.results["baseline"] = found
        found["converge"] = self.converge("baseline", directory, env)
        pi = Pi(container=container)
        pi.install_bench()
        try:
            found["latency"] = self.measure_levels(pi, "baseline")
            if not self.out_of_time("baseline capacity"):
                found["capacity"] = {"nginx": self.search_capacity("nginx", found["latency"], pi)}
        finally:
            subprocess.run(["docker", "stop", container], capture_output=True, check=False, timeout=120)
        found["memory_per_stream_kb"] = memory_per_stream(found["latency"])
        self.results["comparison"] = compare(
            self.results.get("latency", {}),
            found["latency"],
            self.results.get("capacity", {}).get("nginx", {}).get("streams"),
            found.get("capacity", {}).get("nginx", {}).get("streams"),
        )
        self.results["comparison"]["same_run"] = bool({"latency", "capacity"} <= set(self.args.only or SECTIONS))
        log(f"baseline: {self.results['comparison']['capacity_nginx']}")
        self.save()

    def baseline_checkout(self) -> str | None:
        """--baseline as given, or a worktree of --baseline-ref in .cache/ (made once per commit)."""
        if self.args.baseline:
            return str(self.args.baseline)
        if not self.args.baseline_ref:
            return None
        commit = git(["rev-parse", "--verify", f"{self.args.baseline_ref}^{{commit}}"], str(REPO))
        directory = REPO / ".cache" / f"bench-baseline-{commit[:12]}"
        if not directory.exists():
            log(f"baseline: git worktree add {directory} {commit[:12]}")
            git(["worktree", "add", "--detach", str(directory), commit], str(REPO))
        elif git(["rev-parse", "HEAD"], str(directory)) != commit:
            raise SystemExit(f"baseline: {directory} is not at {commit}; remove it (git worktree remove) and rerun")
        # Its demo Pi loads the python stand-in from its own .cache/images: the archive `make images` saved here.
        images = directory / ".cache" / "images"
        if not images.exists():
            images.parent.mkdir(parents=True, exist_ok=True)
            images.symlink_to(REPO / ".cache" / "images")
        return str(directory)

    # -- drills -----------------------------------------------------------

    def drills(self) -> None:
        drills: dict[str, Any] = self.results.setdefault("drills", {})
        table: dict[str, Callable[[], dict[str, Any]]] = {
            "reload": self.drill_reload,
            "backend_restart": self.drill_backend_restart,
            "slow_reader": self.drill_slow_reader,
            "idle_heartbeats": self.drill_idle_heartbeats,
            "reboot": self.drill_reboot,
        }
        for name in self.args.drills:
            if self.out_of_time(f"drill {name}"):
                break
            log(f"drill {name} ...")
            try:
                drills[name] = table[name]()
            except (RuntimeError, subprocess.SubprocessError, ValueError, KeyError) as exc:
                drills[name] = {"verdict": f"FAILED to run: {exc}"[:300]}
            log(f"drill {name}: {drills[name].get('verdict')}")
            self.save()

    def drill_reload(self) -> dict[str, Any]:
        streams = self.args.drill_streams
        figures = self.phase(
            self.args.nginx_url,
            streams,
            tokens=100,
            timeout_s=40,
            action_at_s=streams / self.args.ramp_per_s + 1.0,
            action_argv=["systemctl", "reload", "nginx"],
            sample_at_s=[0.5],
        )
        ok = figures["events_lost"] == 0 and figures["streams_dropped"] == 0 and figures["integrity"] == {"ok": streams}
        figures["verdict"] = (
            f"{'PASS' if ok else 'FAIL'}: {streams} streams through nginx across a reload:"
            f" {figures['events_lost']} events lost,"
            f" {figures['streams_dropped']} streams dropped, integrity {figures['integrity']}"
        )
        return figures

    def drill_backend_restart(self) -> dict[str, Any]:
        """The API container restarts under open streams: each is cut and resumes at its Content-Location."""
        streams = self.args.drill_streams
        figures = self.phase(
            self.args.nginx_url,
            streams,
            tokens=300,
            timeout_s=60,
            action_at_s=streams / self.args.ramp_per_s + 1.0,
            action_argv=["docker", "restart", self.args.backend_container],
            recover_url=self.args.nginx_url,
            recover_timeout_s=90,
            resume_attempts=self.args.resume_attempts,
        )
        figures["verdict"] = restart_verdict(figures, streams)
        return figures

    def drill_slow_reader(self) -> dict[str, Any]:
        """Clients that read the headers, then nothing: memory over time must stay flat."""
        hold_s = self.args.slow_hold_s
        results: dict[str, Any] = {}
        for path, url in (("nginx", self.args.nginx_url), ("direct", self.args.direct_url)):
            since = dt.datetime.now(dt.UTC).isoformat()
            figures = self.phase(
                url,
                self.args.slow_streams,
                tokens=500,
                interval_ms=0,
                query="&big_kb=256",
                hold_without_reading_s=hold_s,
                rcvbuf=4096,
                timeout_s=hold_s + 15,
                sample_at_s=[round(i * hold_s / 10, 1) for i in range(11)],
            )
            logs = self.pi.run(["docker", "logs", "--since", since, self.args.backend_container], timeout_s=30)
            figures["backend_dropped_slow_clients"] = (logs.stdout + logs.stderr).count("stopped reading")
            figures["series"] = [
                {
                    "t_s": s["t_s"],
                    "nginx_rss_kb": s["nginx_rss_kb"],
                    "backend_rss_kb": s["backend_rss_kb"],
                    "backend_cgroup_kb": s["backend_cgroup_kb"],
                }
                for s in figures["samples"]
            ]
            results[path] = {k: figures[k] for k in ("outcomes", "series", "backend_dropped_slow_clients", "idle")}
        verdicts = []
        for path, figures in results.items():
            series = figures["series"]
            first, peak, last = series[0], max(series, key=lambda s: s["backend_rss_kb"]), series[-1]
            verdicts.append(
                f"{path}: nginx RSS {first['nginx_rss_kb']}->{last['nginx_rss_kb']} KiB, backend RSS"
                f" {first['backend_rss_kb']}->{peak['backend_rss_kb']} (peak)->{last['backend_rss_kb']} KiB,"
                f" backend dropped {figures['backend_dropped_slow_clients']}/{self.args.slow_streams} slow clients"
            )
        results["verdict"] = f"{self.args.slow_streams} non-reading clients for {hold_s} s: " + "; ".join(verdicts)
        return results

    def drill_idle_heartbeats(self) -> dict[str, Any]:
        nginx_t = self.pi.run(["sh", "-c", "nginx -T 2>/dev/null | grep -m1 proxy_read_timeout"]).stdout.strip()
        streams = self.args.idle_streams
        silence_ms = self.args.idle_silence_ms
        alive = self.phase(
            self.args.nginx_url,
            streams,
            tokens=2,
            query=f"&silence_ms={silence_ms}&heartbeat_ms=1000",
            timeout_s=streams / self.args.ramp_per_s + silence_ms / 1000 + 20,
            sample_at_s=[streams / self.args.ramp_per_s + 3],
        )
        # The control: heartbeats slower than the read timeout must be cut, or the timeout was not live.
        control = self.phase(
            self.args.nginx_url,
            10,
            tokens=2,
            query=f"&silence_ms={silence_ms}&heartbeat_ms=20000",
            timeout_s=silence_ms / 1000 + 20,
        )
        ok = alive["outcomes"].get("done", 0) == streams and control["outcomes"].get("done", 0) == 0
        return {
            "nginx_read_timeout": nginx_t,
            "alive": alive,
            "control_no_heartbeat": control,
            "verdict": (
                f"{'PASS' if ok else 'FAIL'}: {alive['outcomes'].get('done', 0)}/{streams} streams"
                f" silent for {silence_ms / 1000:.0f} s"
                f" ({nginx_t}) kept alive by 1 s heartbeats (min {alive['heartbeats_min']} heartbeats each);"
                f" control with 20 s heartbeats: {control['outcomes']}"
            ),
        }

    def drill_reboot(self) -> dict[str, Any]:
        if self.args.ssh:
            return {"verdict": "skipped on a real Pi (run it by hand: sudo reboot, then bin/stream-check)"}
        start = time.monotonic()
        subprocess.run(["docker", "restart", str(self.args.container)], check=True, capture_output=True, timeout=120)
        restarted = round(time.monotonic() - start, 1)
        check = ["sh", f"{REMOTE_DIR}/bin/stream-check", "--hops-file", f"{REMOTE_DIR}/hops.json"]
        waited = self.pi.wait_until(check, timeout_s=self.args.reboot_timeout_s)
        total = None if waited is None else round(time.monotonic() - start, 1)
        port = os.environ.get("PI5_DEMO_HTTPS_PORT", "8443")  # where molecule/demo publishes nginx on the host
        host_check = subprocess.run(
            [
                str(REPO / "bin/stream-check"),
                "--cacert",
                str(self.cert()),
                "--http2",
                f"https://localhost:{port}/api/probe/stream?tokens=20&interval_ms={self.args.interval_ms}",
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        ok = total is not None and host_check.returncode == 0
        return {
            "docker_restart_s": restarted,
            "to_passing_check_s": total,
            "host_check_rc": host_check.returncode,
            "verdict": (
                f"{'PASS' if ok else 'FAIL'}: after `docker restart {self.args.container}` ({restarted} s)"
                f" the 3-hop stream check passed on its own {total} s after the restart began;"
                f" from the host through {port}: exit {host_check.returncode}"
            ),
        }

    def cert(self) -> Path:
        path = Path(self.args.results_dir).parent / ".cache" / "pi5-sim-cert.pem"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.pi.run(["cat", self.args.cafile]).stdout)
        return path

    # -- output -----------------------------------------------------------

    def save(self) -> None:
        directory = Path(self.args.results_dir)
        previous = directory / "latest.json"
        results = self.results
        if self.args.only and previous.exists():
            results = report.merge(json.loads(previous.read_text()), self.results, self.args.only)
        if results.get("latency"):
            results["memory_per_stream_kb"] = memory_per_stream(results["latency"])
        report.write(results, directory)

    def run(self) -> int:
        sections = self.args.only or list(SECTIONS)
        previous = Path(self.args.results_dir, "latest.json")
        if self.args.only and previous.exists():  # e.g. a capacity search seeded by the last latency run
            kept = json.loads(previous.read_text())
            keep = (*SECTIONS, "memory_per_stream_kb", "comparison")
            self.results.update({k: kept[k] for k in keep if k in kept and k not in sections})
            self.results["drills"] = kept.get("drills", {})  # drills not rerun keep their last result
        if "provisioning" in sections:
            self.provisioning()
        elif set(sections) - {"rerun", "baseline"}:
            self.install()
        for name in ("latency", "capacity", "baseline", "drills", "rerun"):
            if name in sections:
                getattr(self, name)()
        self.results["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        self.save()
        print(Path(self.args.results_dir, "latest.md").read_text())
        return 0


def git(args: list[str], directory: str) -> str:
    proc = subprocess.run(["git", "-C", directory, *args], capture_output=True, text=True, check=False, timeout=120)
    if proc.returncode:
        raise SystemExit(f"git {' '.join(args)} in {directory}: {proc.stderr.strip()[-300:]}")
    return proc.stdout.strip()


def added_ms(new: dict[str, Any] | None, old: dict[str, Any] | None, key: str) -> float | None:
    """``key`` lateness of one phase minus another's (pure): what the pipeline adds at the same load."""
    values = [(figures or {}).get("lateness_ms", {}).get(key) for figures in (new, old)]
    if not all(isinstance(v, (int, float)) for v in values):
        return None
    return round(float(values[0]) - float(values[1]), 1)


def compare(
    latency: dict[str, dict[str, Any]],
    baseline: dict[str, dict[str, Any]],
    capacity_nginx: int | None,
    baseline_capacity_nginx: int | None,
) -> dict[str, Any]:
    """This design against the previous one (pure): the capacity ratio through nginx against issue 14's
    1.8 x, and per level and path the added p50/p99 lateness (this minus the previous, same level)."""
    capacity_ratio = ratio(capacity_nginx, baseline_capacity_nginx)
    added = {
        level: {
            f"{path}_added_{key}_ms": added_ms(latency[level].get(path), baseline[level].get(path), key)
            for path in ("direct", "nginx")
            for key in ("p50", "p99")
        }
        for level in sorted(set(latency) & set(baseline), key=int)
    }
    return {
        "capacity_nginx": {
            "pipeline": capacity_nginx,
            "baseline": baseline_capacity_nginx,
            "ratio": capacity_ratio,
            "target": CAPACITY_TARGET,
            "verdict": "PASS" if capacity_ratio is not None and capacity_ratio >= CAPACITY_TARGET else "FAIL",
        },
        "added_lateness_ms": added,
    }


def restart_verdict(figures: dict[str, Any], streams: int) -> str:
    """PASS when the restart happened and every stream resumed to its end: all events, once, intact (pure).

    A stream counts as complete when it ended with ``done`` (no ``error``), its text matches the ``done``
    event's count and SHA-256, and its ids 1..done each came exactly once; and a new stream worked after.
    """
    action = figures.get("action", {})
    recovered = action.get("new_stream_ok_after_s")
    complete = figures["outcomes"].get("done", 0) == streams and figures["integrity"] == {"ok": streams}
    ok = (
        action.get("rc") == 0
        and complete
        and figures["ids_twice"] == 0
        and figures["ids_missing"] == 0
        and figures["events_lost"] == 0
        and recovered is not None
    )
    return (
        f"{'PASS' if ok else 'FAIL'}: {figures['outcomes'].get('done', 0)}/{streams} streams ended with done"
        f" across `docker restart` of the API ({action.get('took_s')} s, rc {action.get('rc')});"
        f" {figures['streams_resumed']} resumed ({figures['resumes']} reconnections:"
        f" {figures['resume_statuses']}), {figures['ids_twice']} ids twice, {figures['ids_missing']} ids missing,"
        f" {figures['events_lost']} events lost, integrity {figures['integrity']};"
        f" a new stream through nginx worked {recovered} s after the restart began"
    )


def median_round(runs: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Of several direct+nginx rounds at one level, each path's round with the median p99, and every round's p99s.

    The ratio nginx/direct is taken per round (both paths measured back to back) and its median kept.
    """
    chosen: dict[str, Any] = {}
    for path in ("direct", "nginx"):
        ordered = sorted(runs, key=lambda r: r[path]["lateness_ms"]["p99"] or 0.0)
        chosen[path] = ordered[(len(ordered) - 1) // 2][path]
    p99s = {path: [r[path]["lateness_ms"]["p99"] for r in runs] for path in ("direct", "nginx")}
    ratios = [ratio(n, d) for n, d in zip(p99s["nginx"], p99s["direct"], strict=True)]
    known = [r for r in ratios if r is not None]
    chosen["rounds"] = {
        "p99_ms": p99s,
        "p99_ratios": ratios,
        "median_ratio": statistics.median(known) if known else None,
    }
    return chosen


def playbook_seconds(output: str) -> float | None:
    """The playbook's run time from profile_tasks' last line (``... (0:00:00.058)       0:00:21.019``)."""
    stamps = re.findall(r"\)\s+(\d+):(\d\d):(\d\d(?:\.\d+)?)\s", re.sub(r"\x1b\[[0-9;]*m", "", output) + " ")
    if not stamps:
        return None
    hours, minutes, seconds = stamps[-1]
    return round(int(hours) * 3600 + int(minutes) * 60 + float(seconds), 2)


def tool_env(project_dir: str) -> dict[str, str]:
    """molecule and ansible from the repository's venv (as make runs them), with the project's ansible.cfg."""
    path = f"{REPO / '.venv/bin'}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "PATH": path, "ANSIBLE_CONFIG": str(Path(project_dir, "ansible.cfg"))}


# Memory per stream: group -> (the path whose phase measures it, the snapshot's key). The API processes,
# the worker and Redis from the direct phase (no nginx in between), nginx's workers from the nginx phase.
MEMORY_GROUPS = {
    "nginx_rss": ("nginx", "nginx_rss_kb"),
    "backend_rss": ("direct", "backend_rss_kb"),
    "backend_cgroup": ("direct", "backend_cgroup_kb"),
    "worker_rss": ("direct", "worker_rss_kb"),
    "redis_used": ("direct", "redis_used_kb"),
    "redis_rss": ("direct", "redis_rss_kb"),
}


def first_round(run: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """What memory_per_stream needs of a level's first round: outcomes, the idle snapshot, the samples."""
    return {path: {k: run[path].get(k) for k in ("outcomes", "idle", "samples")} for path in ("direct", "nginx")}


def memory_per_stream(latency: dict[str, dict[str, Any]]) -> dict[str, float]:
    """(mid-window minus idle) / N per process group, from the first round of the largest N where every stream ended.

    The first round, not the median one: a Python heap keeps its high-water mark, so a later round at the
    same N starts from a heap already grown for N streams and shows ~0 per stream. Groups that are absent
    (no worker, no Redis in the one-process design) are left out.
    """
    out: dict[str, float] = {}
    for level in sorted(latency, key=int, reverse=True):
        streams = int(level)
        if streams < 100:
            continue
        entry = latency[level]
        measured = entry.get("first_round") or {path: entry.get(path, {}) for path in ("direct", "nginx")}
        if any((measured.get(p) or {}).get("outcomes", {}).get("done", 0) != streams for p in ("direct", "nginx")):
            continue  # streams that failed or never opened hold no memory: not a per-stream figure
        for name, (path, key) in MEMORY_GROUPS.items():
            figures = measured[path]
            samples = figures.get("samples") or []
            if len(samples) < 2:
                continue
            mid, idle = samples[1].get(key), (figures.get("idle") or {}).get(key)
            if isinstance(mid, (int, float)) and isinstance(idle, (int, float)) and (mid or idle):
                out[f"{name}_at_{streams}"] = round((mid - idle) / streams, 1) + 0.0  # + 0.0: no "-0.0"
        if out:
            break
    return out


def baseline_options(group: argparse._ArgumentGroup, ints: Callable[[str], list[int]]) -> None:
    """The options of the baseline section (parse_args stays within ruff's statement limit)."""
    group.add_argument(
        "--baseline-ref", default=BASELINE_REF,
        help=f"baseline: the previous design's commit, checked out into .cache/ ({BASELINE_REF}); '' = none",
    )
    group.add_argument("--baseline", help="baseline: an existing checkout of the previous design instead")
    group.add_argument(
        "--baseline-sim", default=f"{os.environ.get('PI5_SIM', 'pi5')}-base",
        help="baseline: its Pi's PI5_SIM (container <name>-sim) ($PI5_SIM-base)",
    )
    group.add_argument(
        "--baseline-ports", type=ints, default=[48082, 48445], help="baseline: its Pi's HTTP,HTTPS ports (48082,48445)"
    )


def parse_args(argv: list[str]) -> argparse.Namespace:
    def ints(text: str) -> list[int]:
        return [int(x) for x in text.split(",") if x]

    def names(allowed: tuple[str, ...]) -> Callable[[str], list[str]]:
        def parse(text: str) -> list[str]:
            chosen = [x for x in text.split(",") if x]
            unknown = set(chosen) - set(allowed)
            if unknown:
                raise argparse.ArgumentTypeError(f"unknown: {sorted(unknown)}; choose from {allowed}")
            return chosen

        return parse

    p = argparse.ArgumentParser(
        prog="python -m pi5bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    target = p.add_argument_group("target")
    target.add_argument("--container", default="pi5-sim", help="the simulated Pi (docker exec) (pi5-sim)")
    target.add_argument(
        "--ssh", help="a real Pi instead: user@host with passwordless sudo; no converge, no reboot drill"
    )
    target.add_argument("--direct-url", default="http://127.0.0.1:7776", help="the backend, as seen on the Pi")
    target.add_argument("--nginx-url", default="https://localhost:443", help="nginx, as seen on the Pi")
    target.add_argument("--cafile", default="/etc/nginx/pi5-tls/cert.pem", help="CA for nginx's certificate, on the Pi")
    target.add_argument("--server-name", default="localhost", help="TLS name to ask nginx for")
    target.add_argument("--backend-container", default="backend", help="the backend's container on the Pi")
    target.add_argument(
        "--worker-container", default="chat-worker", help="the container that generates replies (none before issue 14)"
    )
    target.add_argument("--project-dir", default=str(REPO), help="where `molecule converge -s demo` runs")
    run = p.add_argument_group("what and how long")
    run.add_argument("--only", type=names(SECTIONS), default=None, help=f"comma list of {','.join(SECTIONS)}")
    run.add_argument(
        "--converge",
        choices=("auto", "cold", "warm", "none"),
        default="auto",
        help="auto: cold when pi5-sim is missing, else one converge with the bench settings; "
        "warm: one untimed converge to settle, then the timed ones",
    )
    run.add_argument("--cold-converge-s", type=float, help="record a cold converge timed outside this run")
    run.add_argument("--warm-runs", type=int, default=2, help="timed re-runs that must change nothing (2)")
    run.add_argument("--check-runs", type=int, default=5, help="timed stream checks (5)")
    run.add_argument("--levels", type=ints, default=[1, 100, 1000, 2000], help="concurrent streams (1,100,1000,2000)")
    run.add_argument("--repeat", type=int, default=3, help="rounds per level, median kept (3)")
    run.add_argument("--repeat-up-to", type=int, default=1000, help="levels above this run once (1000)")
    run.add_argument("--interval-ms", type=int, default=50, help="probe interval: 50 = 20 events/s per stream")
    run.add_argument("--ramp-per-s", type=float, default=250.0, help="new connections per second (250)")
    run.add_argument("--window-s", type=float, default=6.0, help="measurement window with every stream open (6)")
    run.add_argument("--workers", type=int, default=2, help="load generator processes (2)")
    run.add_argument("--capacity-low", type=int, default=100)
    run.add_argument("--capacity-high", type=int, default=2000)
    run.add_argument("--capacity-steps", type=int, default=3, help="extra load phases per path for the search (3)")
    run.add_argument("--capacity-resolution", type=int, default=100)
    run.add_argument("--drills", type=names(DRILLS), default=list(DRILLS), help=f"comma list of {','.join(DRILLS)}")
    run.add_argument("--drill-streams", type=int, default=200, help="streams open during reload/restart (200)")
    run.add_argument(
        "--resume-attempts", type=int, default=20, help="backend_restart: reconnections per stream at most (20)"
    )
    run.add_argument("--slow-streams", type=int, default=50)
    run.add_argument("--slow-hold-s", type=float, default=25.0)
    run.add_argument("--idle-streams", type=int, default=1000)
    run.add_argument("--idle-silence-ms", type=int, default=15000, help="3 x the bench's 5 s read timeout (15000)")
    run.add_argument("--reboot-timeout-s", type=float, default=240)
    run.add_argument("--budget-s", type=float, default=1800, help="stop starting new phases after this long (1800)")
    run.add_argument("--rerun-against", help="rerun: another checkout (e.g. a worktree of an older commit) to time against")
    run.add_argument("--rerun-runs", type=int, default=3, help="rerun: timed warm runs of each checkout (3)")
    run.add_argument("--results-dir", default=str(Path(__file__).resolve().parents[1] / "results"))
    baseline_options(p.add_argument_group("baseline: the previous design, in the same run"), ints)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return Bench(parse_args(sys.argv[1:] if argv is None else argv)).run()
