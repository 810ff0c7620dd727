"""The helper that checks a candidate config file before it goes live (`validate:`), on stand-in files."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.runner import ROOT

HELPER = ROOT / "roles" / "pi_base" / "files" / "pi5-config-test"


def config_test(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", str(HELPER), *args], capture_output=True, text=True, check=False)


def test_an_ini_drop_in_with_sections_and_settings_passes(tmp_path: Path) -> None:
    candidate = tmp_path / "candidate"
    candidate.write_text("# Managed by Ansible (role pi_base).\n[Manager]\nRuntimeWatchdogSec=15\n")
    run = config_test("ini", str(candidate), "50-pi5-watchdog.conf")
    assert run.returncode == 0, run.stderr


@pytest.mark.parametrize(("content", "error"), [
    ("RuntimeWatchdogSec=15\n", "no section headers"),
    ("[connection]\nwifi.powersave 2\n", "50-pi5-watchdog.conf"),
    ("[Manager\nRuntimeWatchdogSec=15\n", "no section headers"),
])
def test_a_broken_ini_drop_in_is_refused_naming_the_file(tmp_path: Path, content: str, error: str) -> None:
    candidate = tmp_path / "candidate"
    candidate.write_text(content)
    run = config_test("ini", str(candidate), "50-pi5-watchdog.conf")
    assert run.returncode != 0
    assert error in run.stderr, run.stderr


def test_an_unknown_kind_is_refused_with_the_usage() -> None:
    run = config_test("yaml", "/dev/null", "x")
    assert run.returncode == 2 and "sshd|unit|ini" in run.stderr
