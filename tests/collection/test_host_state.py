"""pi5.streaming.host_state: what the roles' skips rest on, so a wrong answer must not pass.

A package dpkg lists as removed, a unit that is active but not enabled, a link instead of a directory: each
would let a role skip a task whose state does not hold. These cases use stand-ins (a dpkg status file, a
systemctl that prints what systemd prints) next to the real thing on this machine.
"""
from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from ansible_collections.pi5.streaming.plugins.modules import host_state
from tests.runner import run_module

STATUS = textwrap.dedent("""\
    Package: nginx
    Status: install ok installed
    Version: 1.22.1-9+deb12u9
    Description: small, powerful, scalable web/proxy server
     with a continuation line: Status: install ok installed

    Package: docker.io
    Status: deinstall ok config-files
    Version: 20.10.24+dfsg1-1+b3

    Package: curl
    Status: install ok half-installed
    Version: 7.88.1-10

    Package: nftables
    Status: install ok installed
    Version: 1.0.6-2+deb12u2
    """)

# What `systemctl show --property=Id,LoadState,ActiveState,UnitFileState` prints for three units.
SYSTEMCTL = textwrap.dedent("""\
    #!/bin/sh
    cat <<'EOF'
    Id=nginx.service
    LoadState=loaded
    ActiveState=active
    UnitFileState=enabled

    Id=ssh.service
    LoadState=loaded
    ActiveState=active
    UnitFileState=disabled

    Id=nope.service
    LoadState=not-found
    ActiveState=inactive
    UnitFileState=
    EOF
    """)


def test_only_installed_packages_count(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text(STATUS)
    found = host_state.installed_packages(["nginx", "docker.io", "curl", "nftables", "tzdata"], str(status))
    assert found == {"nginx": "1.22.1-9+deb12u9", "nftables": "1.0.6-2+deb12u2"}


def test_a_unit_must_be_active_and_enabled_to_be_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "systemctl"
    fake.write_text(SYSTEMCTL)
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    states = host_state.service_states(["nginx", "ssh", "nope"])
    assert states == {
        "nginx": {"exists": True, "active": True, "enabled": True},
        "ssh": {"exists": True, "active": True, "enabled": False},
        "nope": {"exists": False, "active": False, "enabled": False},
    }


def test_paths_are_seen_as_they_are_not_as_they_point(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir(mode=0o700)
    (tmp_path / "dir").chmod(0o700)
    (tmp_path / "link").symlink_to(tmp_path / "dir")
    (tmp_path / "file").write_text("hello\n")
    assert host_state.path_state(str(tmp_path / "dir"))["type"] == "directory"
    assert host_state.path_state(str(tmp_path / "dir"))["mode"] == "0700"
    link = host_state.path_state(str(tmp_path / "link"))
    assert (link["type"], link["target"]) == ("link", str(tmp_path / "dir"))
    assert host_state.path_state(str(tmp_path / "file"))["size"] == 6
    assert host_state.path_state(str(tmp_path / "missing"))["exists"] is False


def test_users_carry_their_groups() -> None:
    root = host_state.user_state("root")
    assert root["exists"] and root["uid"] == 0 and root["gid"] == 0 and "root" in root["groups"]
    assert host_state.user_state("no-such-user-here") == {"exists": False, "uid": None, "gid": None, "home": None, "groups": []}


def test_the_module_reads_this_machine_in_one_call(tmp_path: Path) -> None:
    (tmp_path / "model").write_bytes(b"Raspberry Pi 5 Model B Rev 1.0\0")
    (tmp_path / "compatible").write_bytes(b"raspberrypi,5-model-b\0brcm,bcm2712\0")
    result = run_module("pi5.streaming.host_state", {
        "packages": ["dpkg", "no-such-package"], "paths": [str(tmp_path)], "users": ["root"],
        "read": [str(tmp_path / "model"), str(tmp_path / "compatible"), str(tmp_path / "nothing")], "system": True,
    }, "--check")
    assert not result.get("failed"), result
    assert result["changed"] is False
    assert "dpkg" in result["packages"] and result["packages_missing"] == ["no-such-package"]
    assert result["paths"][str(tmp_path)]["type"] == "directory"
    # A device-tree string list: each NUL ends a line.
    assert result["read"] == {str(tmp_path / "model"): "Raspberry Pi 5 Model B Rev 1.0\n",
                              str(tmp_path / "compatible"): "raspberrypi,5-model-b\nbrcm,bcm2712\n",
                              str(tmp_path / "nothing"): None}
    assert result["system"]["page_size"] == os.sysconf("SC_PAGE_SIZE")
    assert result["system"]["throttled"] is None  # no vcgencmd off a Pi
