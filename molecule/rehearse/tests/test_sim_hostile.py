"""Issue 13's hostile clients against the simulated Pi that site.yml converged (scripts/rehearse.sh sets PI5_SIM_INSTANCE).

Each attack runs twice on the same Pi: against the shipped stack (the Pi's own nginx on 443 and its
backend container) and against the old settings beside it (a second nginx master on 8443 whose
config is the live one with the limits taken out, and a second container of the same image with
the old backend settings, on 7777, with a worker and a Redis of its own on 6380, so that an attack
on the old stack never fills the shipped stack's Redis or keeps its worker busy). During each attack a legitimate client on the Pi
(127.0.0.1; the attacker comes from other addresses, as the limits key on the address) asks
/api/health every 0.2 s and runs the stream check over a probe, while the backend container's
memory and the connections its port holds are sampled (molecule/rehearse/hostile_agent.py).

The shipped stack must pass every criterion; the old one must fail the criterion of the defence
the attack targets, so this suite can fail. Figures go to .cache/hostile/figures.json (README,
"Security").
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[3]
INSTANCE = os.environ.get("PI5_SIM_INSTANCE", "")
ON_PI = "/tmp/pi5-hostile"
OLD_DIR = f"{ON_PI}/old"
IPV6_PREFIX = "2001:db8:64:1::"  # one /64 (documentation range) on the Pi's loopback
IPV6_ATTACKERS = 150
FIGURES = ROOT / ".cache" / "hostile" / "figures.json"
MIB = 1024 * 1024
MAX_ANSWER = 64 * 1024  # issue 13: bad input answers 4xx with a body under 64 KiB
OVER_THE_BODY_LIMIT = ("unknown keys", "10 MB", "deep nesting")  # the agent's bombs over the backend's 64 KiB
HEALTH_BOUND_S = 1.0  # issue 13: the legitimate client's /api/health within 1 s during each attack
MEMORY_GROWTH_BOUND = 64 * MIB  # what one attack may add to the backend's memory: an eighth of its limit
LOG_GROWTH_BOUND = 64 * 1024
# The legitimate client's stream: 4 s, so a passing stall of the shared CPU is a small share of it.
PROBE = "/api/probe/stream?tokens=40&interval_ms=100"

pytestmark = pytest.mark.skipif(not INSTANCE, reason="needs the rehearsal's simulated Pi (scripts/rehearse.sh)")

# The old settings (issue 13's "before"): the live nginx config with these edits, each of which
# must still apply (a changed template fails here instead of silently testing something else).
OLD_NGINX_SITE_EDITS = [
    ("listen 443 ssl", "listen 8443 ssl"),
    ("listen [::]:443 ssl", "listen [::]:8443 ssl"),
    ("listen 80 default_server", "listen 8080 default_server"),
    ("listen [::]:80 default_server", "listen [::]:8080 default_server"),
    ("server 127.0.0.1:7776", "server 127.0.0.1:7777"),
    ("proxy_request_buffering on;", "proxy_request_buffering off;"),
    ("client_header_timeout 10s;", "client_header_timeout 60s;"),
    ("client_body_timeout 10s;", "client_body_timeout 60s;"),
]
OLD_NGINX_DROPPED = ("limit_conn ", "limit_req ", "limit_conn_status", "limit_req_status")
OLD_NGINX_MAIN_EDITS = [
    ("pid /run/nginx.pid;", f"pid {OLD_DIR}/nginx.pid;"),
    ("error_log /var/log/nginx/error.log;", f"error_log {OLD_DIR}/error.log;"),
    ("access_log /var/log/nginx/access.log pi5_no_query;", f"access_log {OLD_DIR}/access.log combined;"),
    ("include /etc/nginx/sites-enabled/*;", f"include {OLD_DIR}/site.conf;"),
]
# The backend's settings before issue 13 (BACKEND_* are read by files/backend/app/settings.py), and
# the container without its nofile and pids limits.
OLD_BACKEND_ENV = {
    "BACKEND_AUTH": "off",
    "BACKEND_MAX_BODY_KB": "10240",
    "BACKEND_BODY_TIMEOUT_S": "3600",
    "BACKEND_HEADER_TIMEOUT_S": "3600",
    "BACKEND_MAX_CONNECTIONS": "1000000",
    "BACKEND_CHAT_RATE_PER_S": "0",
    "BACKEND_PROBE_MAX_STREAMS": "1000000",
    "BACKEND_PROBE_MAX_S": "3600",
    "BACKEND_THREAD_MAX_KB": "1048576",
    # Not a limit: the demo provider's pace. A thread takes one message at a time, so the flood's posts
    # follow each other; at once, they can carry the old stack's thread past the cap within the attack.
    "BACKEND_TOKEN_INTERVAL_MS": "0",
}


def on_pi(*argv: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", "exec", INSTANCE, *argv], capture_output=True, text=True, timeout=timeout, check=check)


def sh(script: str, check: bool = True) -> str:
    return on_pi("sh", "-c", script, check=check).stdout


@dataclass(frozen=True)
class Stack:
    name: str
    nginx_port: int
    container: str
    backend_port: int
    data_dir: str
    access_log: str

    def url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.nginx_port}{path}"


SHIPPED = Stack("shipped", 443, "backend", 7776, "/var/lib/pi5-backend", "/var/log/nginx/access.log")
OLD = Stack("old", 8443, "backend-old", 7777, f"{OLD_DIR}/data", f"{OLD_DIR}/access.log")
OLD_WORKER = "worker-old"
OLD_REDIS_PORT = 6380


def edited(text: str, edits: list[tuple[str, str]], dropped: tuple[str, ...] = ()) -> str:
    for old, new in edits:
        assert old in text, f"the live nginx config no longer contains {old!r}"
        text = text.replace(old, new)
    return "".join(line for line in text.splitlines(keepends=True) if not line.strip().startswith(dropped))


def start_old_stack(token: str) -> None:
    """The old settings beside the shipped ones, on the same Pi: nginx on 8443, the backend on 7777."""
    site = edited(sh("cat /etc/nginx/sites-enabled/*"), OLD_NGINX_SITE_EDITS, OLD_NGINX_DROPPED)
    main = edited(sh("cat /etc/nginx/nginx.conf"), OLD_NGINX_MAIN_EDITS)
    live = json.loads(sh("docker inspect backend"))[0]
    sh(f"rm -rf {OLD_DIR} && mkdir -p {OLD_DIR}/data && chown {live['Config']['User']} {OLD_DIR}/data")
    for name, text in (("site.conf", site), ("nginx.conf", main)):
        subprocess.run(["docker", "exec", "-i", INSTANCE, "sh", "-c", f"cat >{OLD_DIR}/{name}"], input=text, text=True, check=True)
    env = {k: v for k, v in (e.split("=", 1) for e in live["Config"]["Env"]) if k.startswith("BACKEND_")}
    env.pop("BACKEND_AUTH_TOKEN", None)
    # Beside the shipped backend on the host's network (as site.yml runs it), on its own loopback port.
    env |= OLD_BACKEND_ENV | {"BACKEND_PORT": str(OLD.backend_port), "BACKEND_REDIS_PORT": str(OLD_REDIS_PORT)}
    assert token not in json.dumps(env)
    start_old_redis(env["BACKEND_REDIS_PASSWORD"])
    sh(f"docker rm -f {OLD.container} {OLD_WORKER} >/dev/null 2>&1", check=False)
    common = ["--network", "host", "--user", live["Config"]["User"], "-v", f"{OLD_DIR}/data:/data", "--read-only",
              "--tmpfs", "/tmp:size=16m", "--init", *(f"--env={k}={v}" for k, v in env.items())]
    on_pi("docker", "run", "-d", "--name", OLD.container, *common,
          "--memory", f"{live['HostConfig']['Memory']}", "--memory-swap", f"{live['HostConfig']['Memory']}",
          live["Config"]["Image"])
    on_pi("docker", "run", "-d", "--name", OLD_WORKER, "--no-healthcheck", *common, live["Config"]["Image"],
          "python", "-m", "app.worker")
    on_pi("nginx", "-t", "-q", "-c", f"{OLD_DIR}/nginx.conf")
    on_pi("nginx", "-c", f"{OLD_DIR}/nginx.conf")
    for _ in range(60):
        if all(sh(f"curl -sk -o /dev/null -w '%{{http_code}}' {stack.url('/api/health')}", check=False) == "200"
               for stack in (SHIPPED, OLD)):
            return
        time.sleep(0.5)
    pytest.fail("the old stack did not come up: " + sh(
        f"docker logs {OLD.container} 2>&1 | tail -5; docker logs {OLD_WORKER} 2>&1 | tail -5; tail -5 {OLD_DIR}/error.log",
        check=False))


def start_old_redis(password: str) -> None:
    """A throwaway redis-server (the Pi's binary) for the old stack on 127.0.0.1:6380, its config on stdin."""
    config = (f"port {OLD_REDIS_PORT}\nbind 127.0.0.1\nsave \"\"\nappendonly no\ndaemonize yes\n"
              f"dir {OLD_DIR}\npidfile {OLD_DIR}/redis.pid\nrequirepass \"{password}\"\n")
    subprocess.run(["docker", "exec", "-i", INSTANCE, "redis-server", "-"], input=config, text=True, check=True,
                   capture_output=True)


def stop_old_stack() -> None:
    sh(f"nginx -s quit -c {OLD_DIR}/nginx.conf; docker rm -f {OLD.container} {OLD_WORKER}; "
       f"kill $(cat {OLD_DIR}/redis.pid)", check=False)


def ipv6_loopback_prefix() -> None:
    """A /64 on the Pi's loopback: Docker starts containers with IPv6 off; a Pi has it on (nginx listens on [::])."""
    pid = subprocess.run(["docker", "inspect", "-f", "{{.State.Pid}}", INSTANCE], capture_output=True, text=True, check=True).stdout.strip()
    # /proc/sys is read-only in the container: set the sysctl from the controller, in the Pi's network namespace only.
    subprocess.run(["nsenter", "-t", pid, "-n", "sh", "-c", "echo 0 >/proc/sys/net/ipv6/conf/lo/disable_ipv6"], check=True)
    # The attackers' addresses (::2 ...) and nginx's (::1), all of one /64.
    batch = "".join(f"addr replace {IPV6_PREFIX}{i:x}/128 dev lo nodad\n" for i in range(1, IPV6_ATTACKERS + 2))
    subprocess.run(["docker", "exec", "-i", INSTANCE, "ip", "-batch", "-"], input=batch, text=True, check=True)


@pytest.fixture(scope="module")
def token() -> str:
    return (ROOT / ".cache" / "sim-auth-token").read_text().split()[0]


@pytest.fixture(scope="module")
def pi(token: str) -> Iterator[None]:
    sh(f"rm -rf {ON_PI} && mkdir -p {ON_PI}")
    agent_file = Path(__file__).resolve().parents[1] / "hostile_agent.py"
    subprocess.run(["docker", "cp", str(agent_file), f"{INSTANCE}:{ON_PI}/agent.py"], check=True)
    subprocess.run(["docker", "cp", str(ROOT / "collections"), f"{INSTANCE}:{ON_PI}/collections"], check=True)
    ipv6_loopback_prefix()
    start_old_stack(token)
    yield
    stop_old_stack()


@dataclass
class Run:
    """What one attack did to one stack, and what the legitimate client saw meanwhile."""

    attack: Any
    watch: Any
    stream: Any
    log_growth: int
    store_growth: int
    memory_limit: int
    held_before: int
    extra: dict[str, Any] = field(default_factory=dict)

    def latencies(self) -> list[float]:
        return [seconds for _, seconds in self.watch["health"]]

    def criteria(self) -> dict[str, bool]:
        """The checks every attack must pass on the shipped stack."""
        health = self.watch["health"]
        return {
            "health 200 within 1 s": all(status == 200 and s < HEALTH_BOUND_S for status, s in health),
            "stream incremental": self.stream.get("verdict") == "incremental",
            "memory under its limit": self.watch["memory_max"] < self.memory_limit,
            "memory growth under 64 MiB": self.watch["memory_max"] - self.watch["memory_first"] < MEMORY_GROWTH_BOUND,
            "log growth under 64 KiB": self.log_growth < LOG_GROWTH_BOUND,
        }

    def figures(self) -> dict[str, Any]:
        latencies = self.latencies()
        return {
            "health_p50_ms": round(statistics.median(latencies) * 1000, 1),
            "health_max_ms": round(max(latencies) * 1000, 1),
            "health_not_200": sum(status != 200 for status, _ in self.watch["health"]),
            "stream": self.stream.get("verdict"),
            "stream_summary": self.stream.get("summary", self.stream.get("stderr")),
            "memory_peak_mib": round(self.watch["memory_max"] / MIB, 1),
            "memory_growth_mib": round((self.watch["memory_max"] - self.watch["memory_first"]) / MIB, 1),
            "memory_limit_mib": round(self.memory_limit / MIB),
            "log_growth_bytes": self.log_growth,
            "store_growth_bytes": self.store_growth,
            "backend_connections_added": self.watch["held_max"] - self.held_before,
            "attack": self.attack,
            **self.extra,
        }


STOP_FILE = f"{ON_PI}/stop-watching"


def agent(mode: str, params: dict[str, Any]) -> subprocess.Popen[str]:
    return subprocess.Popen(["docker", "exec", INSTANCE, "python3", f"{ON_PI}/agent.py", mode, json.dumps(params)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def result(process: subprocess.Popen[str], timeout: float) -> Any:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err[-3000:]
    return json.loads(out)


def stream_check(stack: Stack, token: str) -> Any:
    """The stream check's CLI (the core in the collection) on the Pi, from 127.0.0.1, over the probe."""
    run = on_pi("env", f"PYTHONPATH={ON_PI}/collections", "python3", "-P", "-s", "-m",
                "ansible_collections.pi5.streaming.plugins.module_utils.stream_check.cli",
                "--json", "-k", "--http1.1", "-H", f"Authorization: Bearer {token}", stack.url(PROBE), check=False)
    try:
        return json.loads(run.stdout)
    except json.JSONDecodeError:
        return {"verdict": "no answer", "stderr": run.stderr[-500:]}


def byte_count(command: str) -> int:
    return int(sh(command).split()[0] or 0)


def attack(stack: Stack, token: str, mode: str, params: dict[str, Any], *, seconds: float, ramp_s: float = 3.0) -> Run:
    """Run ``mode`` against ``stack`` for about ``seconds``, with the legitimate client and the meters beside it."""
    logs = f"docker logs {stack.container} 2>&1 | wc -c"
    store = f"du -sb {stack.data_dir}"
    live = json.loads(sh(f"docker inspect {stack.container}"))[0]
    logs_before, store_before = byte_count(logs), byte_count(store)
    held_before = int(sh(f"ss -Htn state established '( sport = :{stack.backend_port} )' | wc -l; rm -f {STOP_FILE}"))
    watcher = agent("watch", {
        "stop_file": STOP_FILE, "backend_pid": live["State"]["Pid"], "backend_port": stack.backend_port,
        "health": {"host": "127.0.0.1", "port": stack.nginx_port, "tls": True}})
    target = {"host": params.pop("host", "127.0.0.1"), "port": params.pop("port", stack.nginx_port),
              "tls": params.pop("tls", True)}
    attacker = agent(mode, {"target": target, "seconds": seconds - 2, **params})
    time.sleep(ramp_s)  # the attack under way
    stream = stream_check(stack, token)
    attacked = result(attacker, seconds + 90)
    sh(f"touch {STOP_FILE}")  # the legitimate client watched the whole attack
    watched = result(watcher, 30)
    time.sleep(1)  # the backend logs what ended
    return Run(attack=attacked, watch=watched, stream=stream, log_growth=byte_count(logs) - logs_before,
               store_growth=byte_count(store) - store_before, memory_limit=int(live["HostConfig"]["Memory"]),
               held_before=held_before)


def record(name: str, stack: Stack, run: Run) -> None:
    FIGURES.parent.mkdir(parents=True, exist_ok=True)
    figures = json.loads(FIGURES.read_text()) if FIGURES.exists() else {}
    figures.setdefault(name, {})[stack.name] = run.figures()
    FIGURES.write_text(json.dumps(figures, indent=1, sort_keys=True))


def judge(name: str, stack: Stack, run: Run, defence: str, holds: Callable[[Run], bool]) -> None:
    """Shipped: every criterion and the attack's defence hold. Old: the defence fails (the attack worked)."""
    record(name, stack, run)
    checks = {**run.criteria(), defence: holds(run)}
    if stack is SHIPPED:
        failed = [check for check, ok in checks.items() if not ok]
        assert not failed, f"{name}: {failed}\n{json.dumps(run.figures(), indent=1)[:4000]}"
    else:
        assert not checks[defence], f"{name} under the old settings: '{defence}' held\n{json.dumps(run.figures(), indent=1)[:4000]}"


STACKS = [pytest.param(SHIPPED, id="shipped"), pytest.param(OLD, id="old")]


@pytest.mark.parametrize("stack", STACKS)
def test_slow_bodies_from_one_address_never_reach_the_backend(pi: None, token: str, stack: Stack) -> None:
    run = attack(stack, token, "slow_bodies", {"connections": 150}, seconds=12)
    judge("slow bodies", stack, run, "the backend holds at most 32 more connections",
          lambda r: r.watch["held_max"] - r.held_before <= 32)


@pytest.mark.parametrize("stack", STACKS)
def test_slowloris_headers_on_nginx_are_closed(pi: None, token: str, stack: Stack) -> None:
    run = attack(stack, token, "slowloris", {"connections": 100}, seconds=14)
    judge("slowloris on nginx", stack, run, "every dripping connection closed",
          lambda r: "open" not in r.attack["outcomes"])


@pytest.mark.parametrize("stack", STACKS)
def test_slowloris_headers_on_the_backend_port_are_closed(pi: None, token: str, stack: Stack) -> None:
    run = attack(stack, token, "slowloris", {"connections": 100, "port": stack.backend_port, "tls": False}, seconds=14)
    judge("slowloris on the backend port", stack, run, "every dripping connection closed",
          lambda r: "open" not in r.attack["outcomes"])


@pytest.mark.parametrize("stack", STACKS)
def test_a_probe_flood_is_capped(pi: None, token: str, stack: Stack) -> None:
    # 50 probes from 10 addresses, within each one's rate: the cap is full before the legitimate check starts.
    run = attack(stack, token, "probe_flood", {"sources": 10, "per_source": 5}, seconds=12, ramp_s=5)
    judge("probe flood", stack, run, "at most 32 probes open",
          lambda r: r.attack["statuses"].get("200", 0) <= 32)


@pytest.mark.parametrize("stack", STACKS)
def test_an_unauthenticated_chat_flood_writes_nothing(pi: None, token: str, stack: Stack) -> None:
    run = attack(stack, token, "chat_flood", {"per_source": 150}, seconds=6)
    judge("unauthenticated chat flood", stack, run, "nothing stored", lambda r: r.store_growth <= 0)


@pytest.mark.parametrize("stack", STACKS)
def test_a_thread_stops_growing_at_its_cap(pi: None, token: str, stack: Stack) -> None:
    thread = f"hostile-{stack.name}-{int(time.time())}"
    run = attack(stack, token, "thread_growth", {"thread": thread, "sources": 40, "per_source": 4, "readers": 40,
                                                 "headers": {"Authorization": f"Bearer {token}"}}, seconds=14)
    run.extra["thread_bytes"] = byte_count(f"du -sb {stack.data_dir}/threads/{thread}.jsonl 2>/dev/null || du -sb {stack.data_dir}")
    judge("thread growth and concurrent reads", stack, run, "the thread stops near its 1 MiB cap and every read answers",
          lambda r: r.extra["thread_bytes"] <= 1.25 * MIB and set(r.attack["reads"]) == {"200"})


# Through nginx its 1 MiB body limit answers the biggest bombs, and it held before issue 13 too: the old
# setting that fails is the backend's own body limit, met on its port.
@pytest.mark.parametrize(("stack", "direct"), [
    pytest.param(SHIPPED, False, id="shipped-through nginx"),
    pytest.param(SHIPPED, True, id="shipped-on the backend port"),
    pytest.param(OLD, True, id="old-on the backend port"),
])
def test_validation_bombs_are_small_4xx(pi: None, token: str, stack: Stack, direct: bool) -> None:
    target = {"port": stack.backend_port, "tls": False} if direct else {}
    run = attack(stack, token, "bombs", {"rounds": 3, "headers": {"Authorization": f"Bearer {token}"}, **target}, seconds=14)
    answers = run.attack["answers"]
    judge(f"validation bombs ({'backend port' if direct else 'nginx'})", stack, run,
          "every bomb a 4xx under 64 KiB, those over 64 KiB refused unread (413)",
          lambda _: all(400 <= status < 500 and size < MAX_ANSWER for results in answers.values() for status, size, _ in results)
          and all(status == 413 for bomb in OVER_THE_BODY_LIMIT for status, _, _ in answers[bomb]))


@pytest.mark.parametrize("stack", STACKS)
def test_many_ipv6_addresses_of_one_64_are_one_client(pi: None, token: str, stack: Stack) -> None:
    run = attack(stack, token, "chat_flood", {"prefix": IPV6_PREFIX, "sources": IPV6_ATTACKERS, "per_source": 1,
                                              "host": f"{IPV6_PREFIX}1", "headers": {"Authorization": f"Bearer {token}"}},
                 seconds=6)
    # One client's share: the backend's chat burst (10) and rate (1/s) over the attack's length, plus a margin.
    judge(f"key flood: {IPV6_ATTACKERS} IPv6 addresses of one /64", stack, run, "the /64 is limited like one client",
          lambda r: r.attack["statuses"].get("200", 0) <= 15 + r.attack["took_s"])


@pytest.mark.parametrize("stack", STACKS)
def test_a_cross_site_get_with_the_cookie_writes_nothing_and_logs_no_text(pi: None, token: str, stack: Stack) -> None:
    marker, thread = f"csrf-{stack.name}-marker", f"csrf-{stack.name}"
    run = attack(stack, token, "cross_site", {"marker": marker, "thread": thread, "token": token, "rounds": 5}, seconds=6)
    run.extra["logged"] = marker in sh(f"cat {stack.access_log}")
    run.extra["written"] = sh(f"ls {stack.data_dir}/threads/ 2>/dev/null", check=False).count(thread)
    judge("cross-site GET with the cookie", stack, run, "refused, nothing written, no text in the access log",
          lambda r: set(r.attack["statuses"]) == {"403"} and not r.extra["written"] and not r.extra["logged"])
