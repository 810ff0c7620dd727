"""The collections Ansible loads here satisfy requirements.yml, whose floors are the releases the roles need."""
from __future__ import annotations

import json
import operator
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tests.runner import ROOT

REQUIREMENTS: list[dict[str, str]] = yaml.safe_load((ROOT / "requirements.yml").read_text())["collections"]
COMPARE: dict[str, Callable[[tuple[int, ...], tuple[int, ...]], bool]] = {
    ">=": operator.ge, "<=": operator.le, "==": operator.eq, "!=": operator.ne, ">": operator.gt, "<": operator.lt}
# community.docker 4.8.3 is the first release that talks to Docker 29, which raised its minimum API
# version (community.docker's changelog; moby#50517): anything older fails against the Pi's engine.
DOCKER_29_FIRST, DOCKER_29_LAST_BROKEN = "4.8.3", "4.8.2"


def release(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def satisfies(version: str, spec: str) -> bool:
    """ansible-galaxy's range syntax: comma-separated clauses, each an operator and a version (none: ==)."""
    for clause in (clause.strip() for clause in spec.split(",")):
        op = next((op for op in sorted(COMPARE, key=len, reverse=True) if clause.startswith(op)), "==")
        if not COMPARE[op](release(version), release(clause.removeprefix(op).strip())):
            return False
    return True


def requirement(name: str) -> str:
    return next(entry["version"] for entry in REQUIREMENTS if entry["name"] == name)


def loaded_versions() -> dict[str, str]:
    """Each collection's version as Ansible resolves it with the project's ansible.cfg (the first path that has it)."""
    galaxy = Path(sys.executable).parent / "ansible-galaxy"
    listed = subprocess.run([str(galaxy), "collection", "list", "--format", "json"], cwd=ROOT, capture_output=True,
                            text=True, check=True, env={**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")}).stdout
    versions: dict[str, str] = {}
    for collections in json.loads(listed).values():
        for name, info in collections.items():
            versions.setdefault(name, info["version"])
    return versions


@pytest.mark.parametrize(("version", "spec", "ok"), [
    ("4.8.5", ">=4.8.3,<5.0.0", True), ("4.8.0", ">=4.8.3,<5.0.0", False), ("5.0.0", ">=4.8.3,<5.0.0", False),
    ("4.10.0", ">=4.8.3", True), ("2.0.0", "2.0.0", True), ("2.0.1", "==2.0.0", False),
])
def test_the_range_check_reads_ansible_galaxys_syntax(version: str, spec: str, ok: bool) -> None:
    assert satisfies(version, spec) is ok


def test_community_docker_is_required_from_its_first_release_that_talks_to_docker_29() -> None:
    spec = requirement("community.docker")
    assert satisfies(DOCKER_29_FIRST, spec)
    assert not satisfies(DOCKER_29_LAST_BROKEN, spec), f"community.docker {spec} allows releases that fail on Docker 29"


@pytest.mark.parametrize("entry", REQUIREMENTS, ids=[entry["name"] for entry in REQUIREMENTS])
def test_the_collection_ansible_loads_satisfies_requirements_yml(entry: dict[str, str]) -> None:
    loaded = loaded_versions()
    assert entry["name"] in loaded, f"{entry['name']} is not installed (make venv)"
    assert satisfies(loaded[entry["name"]], entry["version"]), (entry, loaded[entry["name"]])
