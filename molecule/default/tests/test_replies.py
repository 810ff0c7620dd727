"""Replies apart from the connection that asked for them (issue 14), on the simulated Pi with its real Redis and nginx.

The API container delivers, the worker container generates, Redis holds the reply between them: each test breaks
one part while a reply streams through nginx and checks what the client gets, played by an EventSource-like client
on the Pi (molecule/default/sse_client.py: it reconnects to the reply's Content-Location with Last-Event-ID).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

PROJECT = Path(os.environ.get("MOLECULE_PROJECT_DIRECTORY", Path(__file__).parents[3]))
TOKEN_FILE = PROJECT / ".cache" / "sim-auth-token"
REDIS_PASSWORD_FILE = PROJECT / ".cache" / "sim-redis-password"
CLIENT = Path(__file__).resolve().parents[1] / "sse_client.py"
ON_PI = "/root/sse_client.py"
API, WORKER = "backend", "chat-worker"
BACKEND_PORT = 7776
QUEUE_DOWN = "the reply queue is unavailable (Redis); try again shortly"
# The demo provider echoes the message word by word, 40 ms apart: about 8 s of reply to break things in.
MESSAGE = " ".join(f"word{i}" for i in range(200))

Events = list[dict[str, Any]]


@pytest.fixture(scope="module")
def token() -> str:
    return TOKEN_FILE.read_text().split()[0]


@pytest.fixture(scope="module")
def client_on_pi(host: Any) -> Iterator[None]:
    """The client's file on the Pi (docker cp: the simulated Pi is a container on this machine)."""
    subprocess.run(["docker", "cp", str(CLIENT), f"{host.backend.host}:{ON_PI}"], check=True, timeout=60)
    yield
    host.run(f"rm -f {ON_PI}")


def sse(host: Any, **params: Any) -> dict[str, Any]:
    """Run the client on the Pi as root (its actions use docker and systemctl); what it printed."""
    with host.sudo():
        run = host.run(f"python3 {ON_PI} {shlex.quote(json.dumps(params))}")
    assert run.rc == 0, run.stderr[-3000:]
    return json.loads(run.stdout)  # type: ignore[no-any-return]


def chat(host: Any, token: str, **params: Any) -> dict[str, Any]:
    return sse(host, method="POST", path="/api/chat/message", body={"message": MESSAGE}, token=token, **params)


def events_of(responses: list[dict[str, Any]]) -> Events:
    return [event for response in responses for event in response["events"]]


def assert_one_whole_reply(events: Events) -> None:
    """Ids 1, 2, 3, ... with none missing or twice, ending in one `done` whose sha256, bytes and token count are
    those of the token text the client joined."""
    ids = [int(event["id"]) for event in events]
    assert ids == list(range(1, len(ids) + 1)), ids
    kinds = [event["data"]["type"] for event in events]
    assert kinds.count("done") == 1 and kinds[-1] == "done", kinds
    text = "".join(event["data"]["content"] for event in events if event["data"]["type"] == "token")
    done = events[-1]["data"]["content"]
    assert done["sha256"] == hashlib.sha256(text.encode()).hexdigest()
    assert (done["bytes"], done["tokens"]) == (len(text.encode()), kinds.count("token"))


def replay(host: Any, token: str, location: str) -> Events:
    """The whole reply from Redis, as a client that asks its URL without Last-Event-ID gets it."""
    return events_of(sse(host, method="GET", path=location, token=token, max_s=30)["responses"])


def same_events(one: Events, other: Events) -> bool:
    return [(e["id"], e["data"]) for e in one] == [(e["id"], e["data"]) for e in other]


def wait_for(host: Any, command: str, timeout_s: int = 60) -> bool:
    """Whether `command` (as root on the Pi) succeeded within timeout_s."""
    with host.sudo():
        return host.run(f"for i in $(seq {timeout_s}); do {command} && exit 0; sleep 1; done; exit 1").rc == 0  # type: ignore[no-any-return]


def inspect(host: Any, name: str) -> dict[str, Any]:
    with host.sudo():
        return json.loads(host.check_output(f"docker inspect {name}"))[0]  # type: ignore[no-any-return]


# --- The two containers ------------------------------------------------------

def test_the_worker_runs_beside_the_api_with_the_same_image_data_and_hardening(host: Any) -> None:
    api, worker = inspect(host, API), inspect(host, WORKER)
    config, hostcfg = worker["Config"], worker["HostConfig"]
    assert worker["State"]["Running"] and not worker["State"]["Restarting"]
    assert config["Cmd"] == ["python", "-m", "app.worker"]
    assert worker["Image"] == api["Image"]
    assert hostcfg["NetworkMode"] == "host" and not hostcfg["PortBindings"]
    assert config["User"] == api["Config"]["User"] and config["User"] not in ("", "0", "root", "0:0")
    assert hostcfg["ReadonlyRootfs"] is True
    assert hostcfg["CapDrop"] == ["ALL"] and "no-new-privileges:true" in hostcfg["SecurityOpt"]
    assert hostcfg["Memory"] == 256 * 1024 * 1024 and hostcfg["MemorySwap"] == hostcfg["Memory"]
    assert hostcfg["PidsLimit"] == api["HostConfig"]["PidsLimit"] > 0
    assert hostcfg["Ulimits"] == api["HostConfig"]["Ulimits"] and hostcfg["Ulimits"]
    assert hostcfg["RestartPolicy"]["Name"] == "unless-stopped"
    assert [(m["Source"], m["Destination"]) for m in worker["Mounts"]] == [
        (m["Source"], m["Destination"]) for m in api["Mounts"]]
    # The image's health check asks the API's port: on the host's network it would call a dead worker healthy.
    assert config["Healthcheck"]["Test"] == ["NONE"]


def test_both_containers_log_in_to_redis_with_the_shared_port_and_password(host: Any) -> None:
    password = REDIS_PASSWORD_FILE.read_text().split()[0]
    for name in (API, WORKER):
        env = dict(item.split("=", 1) for item in inspect(host, name)["Config"]["Env"])
        assert (env["BACKEND_REDIS_HOST"], env["BACKEND_REDIS_PORT"], env["BACKEND_REDIS_PASSWORD"]) == (
            "127.0.0.1", "6379", password), name


def test_the_api_runs_one_delivery_process_per_core_each_on_its_own_socket(host: Any) -> None:
    """BACKEND_PROCESSES is the Pi's core count (2 on this machine's simulated Pis: more than one, so a role that
    left it at the backend's default of 1 fails here): one SO_REUSEPORT socket per process on the one port, and as
    many server processes, forked by the one that made the sockets."""
    cores = int(host.check_output("grep -c ^processor /proc/cpuinfo"))
    env = dict(item.split("=", 1) for item in inspect(host, API)["Config"]["Env"])
    assert env["BACKEND_PROCESSES"] == str(cores) and cores >= 2, (env["BACKEND_PROCESSES"], cores)
    with host.sudo():
        listeners = host.check_output(f"ss -Hltnp 'sport = :{BACKEND_PORT}'").splitlines()
        processes = [line.split() for line in host.check_output(f"docker top {API} -eo pid,ppid,comm").splitlines()[1:]]
    python = {pid for pid, _, command in processes if command.startswith("python")}
    servers = {pid for pid, parent, command in processes if command.startswith("python") and parent in python}
    assert len(listeners) == cores, listeners
    assert len(servers) == cores, processes
    # Each server holds the sockets (it serves one of them): they are the API's listeners, not another program's.
    assert all(servers <= set(re.findall(r"pid=(\d+)", line)) for line in listeners), listeners


def listening_pids(host: Any) -> set[str]:
    with host.sudo():
        listeners = host.check_output("ss -Hltnup")
    return {part.split("=")[1] for part in listeners.replace(",", " ").replace(")", " ").split() if part.startswith("pid=")}


def container_pids(host: Any, name: str) -> set[str]:
    with host.sudo():
        return set(host.check_output(f"docker top {name} -eo pid").split()[1:])


def test_the_worker_listens_on_no_port(host: Any) -> None:
    """On the host's network a listening worker would be one more service on the Pi; the API's listener shows the
    check sees a container's sockets at all (its broken case)."""
    listening = listening_pids(host)
    assert container_pids(host, API) & listening, "the check cannot see the API listening"
    assert not container_pids(host, WORKER) & listening


# --- Faults, each with a defined outcome ---------------------------------------

def test_a_reply_survives_a_restart_of_the_api_container_mid_reply(host: Any, token: str, client_on_pi: None) -> None:
    """The container serving 7776 restarts while the reply streams through nginx: the worker goes on writing it to
    Redis, and the client that reconnects with Last-Event-ID gets the rest, nothing missing, nothing twice."""
    result = chat(host, token, action_at=15, action=f"docker restart {API}", max_s=150)
    assert result["action"] and result["action"]["rc"] == 0, result["action"]
    responses = result["responses"]
    assert responses[0]["status"] == 200 and result["location"].startswith("/api/chat/replies/")
    cut = responses[0]["events"]
    assert cut and cut[-1]["data"]["type"] not in ("done", "error"), "the first response was not cut mid-reply"
    resumed = [r for r in responses[1:] if r["status"] == 200]
    assert resumed and resumed[0]["last_event_id"] == cut[-1]["id"], [r["last_event_id"] for r in responses]
    events = events_of(responses)
    assert_one_whole_reply(events)
    assert "error" not in [event["data"]["type"] for event in events]
    assert same_events(events, replay(host, token, result["location"]))


def kill_the_worker_process() -> str:
    """The worker's Python killed as the kernel's OOM killer would: `docker kill` would mark the container stopped by
    hand, and Docker's restart policy would then leave it down."""
    return f"kill -KILL $(pgrep -P $(docker inspect -f '{{{{.State.Pid}}}}' {WORKER}))"


def test_a_worker_that_dies_mid_reply_ends_it_with_error_then_done_and_the_next_reply_works(
        host: Any, token: str, client_on_pi: None) -> None:
    restarts = inspect(host, WORKER)["RestartCount"]
    result = chat(host, token, action_at=10, action=kill_the_worker_process(), max_s=120)
    assert result["action"] and result["action"]["rc"] == 0, result["action"]
    events = events_of(result["responses"])
    assert [event["data"]["type"] for event in events[-2:]] == ["error", "done"], events[-3:]
    assert "worker stopped" in events[-2]["data"]["content"]
    assert_one_whole_reply(events)
    assert wait_for(host, f"[ \"$(docker inspect -f '{{{{.RestartCount}}}} {{{{.State.Running}}}}' {WORKER})\" = '{restarts + 1} true' ]")
    after = events_of(chat(host, token, max_s=90)["responses"])
    assert_one_whole_reply(after)
    assert "error" not in [event["data"]["type"] for event in after]


def ready(host: Any) -> tuple[int, str]:
    run = host.run("curl -s -o /tmp/ready.json -w '%{http_code}' http://127.0.0.1:7776/api/ready; cat /tmp/ready.json")
    return int(run.stdout[:3]), run.stdout[3:]


def test_with_redis_down_the_api_says_so_and_recovers_by_itself_when_redis_is_back(
        host: Any, token: str, client_on_pi: None) -> None:
    try:
        with host.sudo():
            host.check_output("systemctl stop redis-server")
        status, body = ready(host)
        assert status == 503 and "redis" in body, body
        refused = sse(host, method="POST", path="/api/chat/message", body={"message": "hello"}, token=token, max_s=20)
        first = refused["responses"][0]
        assert first["status"] == 503 and json.loads(first["body"]) == {"detail": QUEUE_DOWN}, first
    finally:
        with host.sudo():
            host.check_output("systemctl start redis-server")
    # No person restarts anything: the API and the worker find Redis again on their own.
    assert wait_for(host, "curl -fs -o /dev/null http://127.0.0.1:7776/api/ready", timeout_s=60)
    deadline = time.monotonic() + 60
    while True:
        result = chat(host, token, max_s=90)
        if result["responses"][0]["status"] == 200 or time.monotonic() > deadline:
            break
        time.sleep(2)
    events = events_of(result["responses"])
    assert_one_whole_reply(events)
    assert "error" not in [event["data"]["type"] for event in events]


def test_two_clients_on_one_reply_get_the_same_events(host: Any, token: str, client_on_pi: None) -> None:
    """A second tab opens the reply's URL (no Last-Event-ID) while the first streams it: it gets the reply from its
    first event and then follows it live, event for event what the first one gets."""
    result = chat(host, token, follower_at=5, max_s=90)
    first, second = events_of(result["responses"]), events_of(result["follower"])
    assert result["follower"] and result["follower"][0]["last_event_id"] is None
    assert_one_whole_reply(first)
    assert same_events(first, second)
    # Live: the second client had its last event about when the first did, not a replay after the end.
    assert abs(second[-1]["at"] - first[-1]["at"]) < 2.0
