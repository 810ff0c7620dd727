"""The one way the test suites run Ansible: the real playbooks and modules, against this machine as a stand-in Pi.

Every run uses the repository's ansible.cfg and the venv's Ansible, reports as JSON, and is read with the
helpers below. A failure is located by role (the ``role : `` prefix of its task name), never by a task's
exact wording, so renaming a task does not break a test.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / "site.yml"
HOST = "preflight-target"
TEST_TOKEN = "test-only-token"
TEST_REDIS_PASSWORD = "test-only-redis-password"
HOSTS = f"""\
all:
  children:
    pi5:
      hosts:
        {HOST}:
          ansible_connection: local
          ansible_python_interpreter: "{{{{ ansible_playbook_python }}}}"
"""


def make_inventory(directory: Path, vault: str = "") -> Path:
    """An inventory like the repository's (same shared settings), with this machine as its one Pi."""
    (directory / "group_vars" / "all").mkdir(parents=True)
    shutil.copy(ROOT / "inventory" / "group_vars" / "all" / "main.yml", directory / "group_vars" / "all" / "main.yml")
    # The backend requires a token: a stand-in vault gives one unless the test brings its own.
    (directory / "group_vars" / "all" / "vault.yml").write_text(vault or f"vault_backend_auth_token: {TEST_TOKEN}\n")
    # Redis requires a password too: a file of its own, so a test's vault (even one encrypted whole) stays as written.
    if "vault_redis_password" not in vault:
        (directory / "group_vars" / "all" / "vault_redis.yml").write_text(f"vault_redis_password: {TEST_REDIS_PASSWORD}\n")
    hosts = directory / "hosts.yml"
    hosts.write_text(HOSTS)
    return hosts


def _environment(env: dict[str, str] | None) -> dict[str, str]:
    env = env or {}
    return {
        **os.environ,
        **env,
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json",
        "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1",
        # The venv's ansible first; modules on a local connection see the rest of PATH.
        "PATH": f"{Path(sys.executable).parent}:{env.get('PATH', os.environ['PATH'])}",
    }


def _report(run: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    try:
        report: dict[str, Any] = json.loads(run.stdout)
    except json.JSONDecodeError:
        report = {"plays": [], "stats": {}}
    report["returncode"] = run.returncode
    report["stdout"] = run.stdout
    report["stderr"] = run.stderr
    return report


def run_playbook(playbook: Path, inventory: Path, extra_vars: dict[str, Any], *args: str,
                 env: dict[str, str] | None = None, timeout_s: float = 300) -> dict[str, Any]:
    """ansible-playbook with the JSON callback; the report, plus returncode, stdout and stderr."""
    run = subprocess.run(
        ["ansible-playbook", "-i", str(inventory), "-e", json.dumps(extra_vars), *args, str(playbook)],
        cwd=ROOT, env=_environment(env), capture_output=True, text=True, timeout=timeout_s, check=False,
    )
    return _report(run)


def run_module(module: str, args: dict[str, Any], *flags: str) -> dict[str, Any]:
    """One module on localhost (``ansible localhost -m``), as a task would run it; its result."""
    run = subprocess.run(
        ["ansible", "localhost", "-m", module, "-a", json.dumps(args), *flags],
        cwd=ROOT, env=_environment(None), capture_output=True, text=True, timeout=120, check=False,
    )
    report = _report(run)
    if not report["plays"]:
        raise RuntimeError(f"ansible -m {module} gave no report: {run.stderr[-2000:]}")
    result: dict[str, Any] = report["plays"][0]["tasks"][0]["hosts"]["localhost"]
    return result


def task_name(task: dict[str, Any]) -> str:
    """A task's name without the "role : " prefix the report adds."""
    return str(task["task"]["name"]).split(" : ", 1)[-1]


def task_role(task: dict[str, Any]) -> str:
    """The role a task belongs to ("" for a play's own tasks)."""
    name = str(task["task"]["name"])
    return name.split(" : ", 1)[0] if " : " in name else ""


def results(report: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(task, result) of every task result in the report, in order."""
    return [(task, result) for play in report["plays"] for task in play["tasks"] for result in task["hosts"].values()]


def failures(report: dict[str, Any]) -> list[tuple[str, str]]:
    """("role : task", message) of every failed task result, loop items' messages included."""
    found = []
    for task, result in results(report):
        if result.get("failed"):
            messages = [str(result.get("msg", ""))]
            messages += [str(r.get("msg", "")) for r in result.get("results", []) if r.get("failed")]
            found.append((str(task["task"]["name"]), " ".join(messages)))
    return found


def roles_run(report: dict[str, Any]) -> set[str]:
    """The roles that ran at least one task (skipped tasks do not count)."""
    return {task_role(task) for task, result in results(report) if not result.get("skipped")} - {""}


def messages(report: dict[str, Any]) -> list[str]:
    """Every msg a task result carried (debug output included), as text."""
    return [json.dumps(result.get("msg", "")) for _, result in results(report)]


def render_role_var(tmp: Path, role: str, name: str, inputs: dict[str, Any], *args: str) -> Any:
    """One variable of a role (its defaults, then its vars/main.yml) as Ansible renders it, given ``inputs``
    (what its host_state read, shared settings...) as extra vars; ``args`` go to ansible-playbook (``--check``)."""
    files = [ROOT / "roles" / role / part / "main.yml" for part in ("defaults", "vars")]
    playbook = tmp / "render.yml"
    playbook.write_text(json.dumps([{
        "name": "Render one role variable", "hosts": "all", "gather_facts": False,
        "vars_files": [str(f) for f in files if f.exists()],
        "tasks": [{"name": "Show it", "ansible.builtin.debug": {"msg": f"{{{{ {name} }}}}"}}],
    }]))
    report = run_playbook(playbook, make_inventory(tmp / "inventory"), inputs, *args)
    assert report["returncode"] == 0, report["stderr"][-3000:]
    return json.loads(messages(report)[0])
