"""Jinja test ``holds``: does a path, as ``pi5.streaming.host_state`` saw it, already hold this content and mode?"""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import Any

DOCUMENTATION = r"""
name: holds
short_description: Whether a file seen by host_state already has this content, mode and owner
description:
  - True when the path is a regular file whose sha256 and mode (and owner, root by default) are those given, so the
    task that would write it can be skipped; on a warm run that saves the write task's two round trips.
  - False whenever anything differs or is unknown (a missing file, a link, a file too large for host_state to hash),
    so the write task then runs and decides as it always does.
positional: content, mode
options:
  _input:
    description: The path's entry in C(host_state)'s RV(paths).
    type: dict
    required: true
  content:
    description: The content the file should have (a rendered template, a file's text).
    type: str
    required: true
  mode:
    description: The file's mode, as an octal string.
    type: str
    required: true
  uid:
    description: The file's owner.
    type: int
    default: 0
  gid:
    description: The file's group.
    type: int
    default: 0
"""

EXAMPLES = r"""
- name: Write the hardening drop-in (skipped when the Pi already has it as it should be)
  ansible.builtin.template:
    src: sshd-hardening.conf.j2
    dest: /etc/ssh/sshd_config.d/00-pi5-hardening.conf
    mode: "0644"
  when: pi_base_host.paths['/etc/ssh/sshd_config.d/00-pi5-hardening.conf']
        is not pi5.streaming.holds(lookup('ansible.builtin.template', 'sshd-hardening.conf.j2'), '0644')
"""

RETURN = r"""
_value:
  description: Whether the file is already as it should be.
  type: bool
"""


def holds(state: Mapping[str, Any], content: str, mode: str, uid: int = 0, gid: int = 0) -> bool:
    if not state or state.get("type") != "file" or not state.get("sha256"):
        return False
    same_content = state["sha256"] == hashlib.sha256(str(content).encode("utf-8")).hexdigest()
    same_mode = int(str(state.get("mode")), 8) == int(str(mode), 8)
    return bool(same_content and same_mode and state.get("uid") == int(uid) and state.get("gid") == int(gid))


class TestModule:
    def tests(self) -> dict[str, Callable[..., bool]]:
        return {"holds": holds}
