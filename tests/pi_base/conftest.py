"""Run the real playbooks against this machine as a stand-in Pi (connection local), and read their reports."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
HOSTS = """\
all:
  children:
    pi5:
      hosts:
        preflight-target:
          ansible_connection: local
          ansible_python_interpreter: "{{ ansible_playbook_python }}"
"""


def make_inventory(directory: Path, vault: str = "") -> Path:
    """An inventory like the repository's (same shared settings), with this machine as its one Pi."""
    (directory / "group_vars" / "all").mkdir(parents=True)
    shutil.copy(ROOT / "inventory" / "group_vars" / "all" / "main.yml", directory / "group_vars" / "all" / "main.yml")
    if vault:
        (directory / "group_vars" / "all" / "vault.yml").write_text(vault)
    hosts = directory / "hosts.yml"
    hosts.write_text(HOSTS)
    return hosts


def run_playbook(playbook: Path, inventory: Path, extra_vars: dict[str, Any], *args: str,
                 env: dict[str, str] | None = None) -> dict[str, Any]:
    """ansible-playbook with the JSON callback; the report, plus returncode and stderr."""
    env = env or {}
    environment = {
        **os.environ,
        **env,
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json",
        # The venv's ansible first; modules on a local connection see the rest of PATH.
        "PATH": f"{Path(sys.executable).parent}:{env.get('PATH', os.environ['PATH'])}",
    }
    run = subprocess.run(
        ["ansible-playbook", "-i", str(inventory), "-e", json.dumps(extra_vars), *args, str(playbook)],
        cwd=ROOT, env=environment, capture_output=True, text=True, timeout=180, check=False,
    )
    try:
        report: dict[str, Any] = json.loads(run.stdout)
    except json.JSONDecodeError:
        report = {"plays": [], "stats": {}}
    report["returncode"] = run.returncode
    report["stdout"] = run.stdout
    report["stderr"] = run.stderr
    return report


def task_name(task: dict[str, Any]) -> str:
    """A task's name without the "role : " prefix the report adds."""
    return str(task["task"]["name"]).split(" : ", 1)[-1]


def results(report: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(task name, result) of every task result in the report, in order."""
    return [(task_name(task), result) for play in report["plays"] for task in play["tasks"]
            for result in task["hosts"].values()]


def failures(report: dict[str, Any]) -> list[tuple[str, str]]:
    """(task name, message) of every failed task result, loop items' messages included."""
    found = []
    for name, result in results(report):
        if result.get("failed"):
            messages = [str(result.get("msg", ""))]
            messages += [str(r.get("msg", "")) for r in result.get("results", []) if r.get("failed")]
            found.append((name, " ".join(messages)))
    return found


def messages(report: dict[str, Any]) -> list[str]:
    """Every msg a task result carried (debug output included), as text."""
    return [json.dumps(result.get("msg", "")) for _, result in results(report)]
