"""Expressions in pi_base's vars/main.yml, rendered by Ansible from the file site.yml uses, on stand-in inputs."""
from __future__ import annotations

from pathlib import Path

from tests.runner import render_role_var


def test_each_line_of_authorized_keys_is_one_key(tmp_path: Path) -> None:
    """Two keys on the Pi are two entries: one string of both would make the key task run on every warm run."""
    home = "/home/pi"
    keys = "ssh-ed25519 AAAA1 imager@pi5-sim\nssh-ed25519 AAAA2 owner@laptop\n"
    inputs = {"pi_base_deploy_user": "pi",
              "pi_base_host": {"users": {"pi": {"exists": True, "home": home}},
                               "read": {f"{home}/.ssh/authorized_keys": keys}}}
    assert render_role_var(tmp_path, "pi_base", "pi_base_keys_authorized", inputs) == [
        "ssh-ed25519 AAAA1 imager@pi5-sim", "ssh-ed25519 AAAA2 owner@laptop"]


def test_a_missing_deploy_user_has_no_keys(tmp_path: Path) -> None:
    inputs = {"pi_base_deploy_user": "pi", "pi_base_host": {"users": {"pi": {"exists": False}}, "read": {}}}
    assert render_role_var(tmp_path, "pi_base", "pi_base_keys_authorized", inputs) == []
