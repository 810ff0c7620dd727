"""Expressions in pi_base's vars/main.yml, rendered by Ansible from the file site.yml uses, on stand-in inputs."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.runner import ROOT, failures, make_inventory, messages, run_playbook

VARS = ROOT / "roles" / "pi_base" / "vars" / "main.yml"


def render(tmp: Path, name: str, inputs: dict[str, Any]) -> Any:
    """The value of one of the role's variables, given what host_state read (pi_base_host) and settings."""
    playbook = tmp / "render.yml"
    playbook.write_text(json.dumps([{
        "name": "Render one role variable", "hosts": "all", "gather_facts": False, "vars_files": [str(VARS)],
        "tasks": [{"name": "Show it", "ansible.builtin.debug": {"msg": f"{{{{ {name} }}}}"}}],
    }]))
    report = run_playbook(playbook, make_inventory(tmp / "inventory"), inputs)
    assert report["returncode"] == 0, failures(report) or report["stderr"]
    return json.loads(messages(report)[0])


def test_each_line_of_authorized_keys_is_one_key(tmp_path: Path) -> None:
    """Two keys on the Pi are two entries: one string of both would make the key task run on every warm run."""
    home = "/home/pi"
    keys = "ssh-ed25519 AAAA1 imager@pi5-sim\nssh-ed25519 AAAA2 owner@laptop\n"
    inputs = {"pi_base_deploy_user": "pi",
              "pi_base_host": {"users": {"pi": {"exists": True, "home": home}},
                               "read": {f"{home}/.ssh/authorized_keys": keys}}}
    assert render(tmp_path, "pi_base_keys_authorized", inputs) == [
        "ssh-ed25519 AAAA1 imager@pi5-sim", "ssh-ed25519 AAAA2 owner@laptop"]


def test_a_missing_deploy_user_has_no_keys(tmp_path: Path) -> None:
    inputs = {"pi_base_deploy_user": "pi", "pi_base_host": {"users": {"pi": {"exists": False}}, "read": {}}}
    assert render(tmp_path, "pi_base_keys_authorized", inputs) == []
