"""Bad settings stop site.yml in its preflight, name the variable, and change nothing.

Each case runs the real site.yml (against this machine as a stand-in Pi) with one
bad value and reads the JSON play report: the play must fail in a preflight task,
with a message naming the variable, after zero changed tasks.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
INVENTORY = Path(__file__).with_name("inventory.yml")
PREFLIGHT_TASKS = {
    "Check every role's settings before anything on the Pi changes",
    "Refuse settings that break streaming even though nginx would accept them",
    "Refuse numbers outside their sane range",
}

# (variable the message must name, extra vars): each a distinct kind of bad input.
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "port not a number": ("backend_port", {"backend_port": "abc"}),
    "port out of range": ("backend_port", {"backend_port": 70000}),
    "http port zero": ("nginx_http_port", {"nginx_http_port": 0}),
    "timeout not a number": ("nginx_stream_read_timeout_s", {"nginx_stream_read_timeout_s": "abc"}),
    "unknown location option": ("bogus", {"nginx_stream_locations": [{"path": "/api", "bogus": 1}]}),
    "location without slash": ("nginx_stream_locations", {"nginx_stream_locations": [{"path": "api"}]}),
    "location without path": ("path", {"nginx_stream_locations": [{"read_timeout_s": 60}]}),
    "unknown http version": ("nginx_proxy_http_version", {"nginx_proxy_http_version": "2.0"}),
    "bool that is not one": ("nginx_proxy_buffering", {"nginx_proxy_buffering": "maybe"}),
    "gzip on event streams": ("nginx_gzip_types", {"nginx_gzip_types": ["text/css", "text/event-stream"]}),
    "upstream port mismatch": ("nginx_upstream_port", {"nginx_upstream_port": 8000}),
    "read timeout below heartbeat": ("nginx_stream_read_timeout_s", {"nginx_stream_read_timeout_s": 30}),
    "keepalive longer than backend's": ("nginx_upstream_keepalive_timeout_s", {"nginx_upstream_keepalive_timeout_s": 90}),
    "certificate without key": ("nginx_tls_key_file", {"nginx_tls_certificate_file": "/etc/ssl/pi.pem"}),
    "no streams": ("nginx_max_streams", {"nginx_max_streams": 0}),
    "unknown docker source": ("docker_install_source", {"docker_install_source": "snap"}),
    "log size not a number": ("docker_log_max_size_mb", {"docker_log_max_size_mb": "ten"}),
    "unknown provider": ("backend_provider", {"backend_provider": "openai"}),
    "memory not a number": ("backend_memory_mb", {"backend_memory_mb": "lots"}),
    "unknown restart policy": ("backend_restart_policy", {"backend_restart_policy": "sometimes"}),
}


def run_site(extra_vars: dict[str, Any], *args: str) -> dict[str, Any]:
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json",
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    run = subprocess.run(
        ["ansible-playbook", "-i", str(INVENTORY), "-e", json.dumps(extra_vars), *args, str(ROOT / "site.yml")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )
    report: dict[str, Any] = json.loads(run.stdout)
    report["returncode"] = run.returncode
    return report


@pytest.fixture(scope="module")
def reports() -> dict[str, dict[str, Any]]:
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = pool.map(lambda case: run_site(case[1]), CASES.values())
        return dict(zip(CASES, results, strict=True))


def task_name(task: dict[str, Any]) -> str:
    """A task's name without the "role : " prefix the report adds."""
    return str(task["task"]["name"]).split(" : ", 1)[-1]


def failures(report: dict[str, Any]) -> list[tuple[str, str]]:
    """(task name, message) of every failed task result in the report."""
    found = []
    for play in report["plays"]:
        for task in play["tasks"]:
            for result in task["hosts"].values():
                if result.get("failed"):
                    messages = [str(result.get("msg", ""))]
                    messages += [str(r.get("msg", "")) for r in result.get("results", []) if r.get("failed")]
                    found.append((task_name(task), " ".join(messages)))
    return found


@pytest.mark.parametrize("case", CASES)
def test_bad_input_stops_the_play_in_preflight_naming_the_variable(case: str, reports: dict[str, dict[str, Any]]) -> None:
    variable, _ = CASES[case]
    report = reports[case]
    assert report["returncode"] != 0
    stats = report["stats"]["preflight-target"]
    assert stats["changed"] == 0
    failed = failures(report)
    assert failed, "the play failed without a failed task"
    task, message = failed[0]
    assert task in PREFLIGHT_TASKS, f"failed in {task!r}, not in the preflight"
    assert variable in message, message


def test_shipped_settings_pass_the_preflight() -> None:
    """The control case: the same preflight accepts the shipped settings (only the preflight
    runs, by its tag: the rest of site.yml would provision this machine)."""
    report = run_site({}, "--tags", "preflight")
    assert report["returncode"] == 0, failures(report)
    assert report["stats"]["preflight-target"]["changed"] == 0
    ran = {task_name(task) for play in report["plays"] for task in play["tasks"]}
    assert {"Check every role's settings before anything on the Pi changes",
            "Refuse settings that break streaming even though nginx would accept them"} <= ran
