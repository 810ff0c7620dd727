"""Every module of the pi5.streaming collection documents exactly the options it accepts.

ansible-doc must parse each module's DOCUMENTATION (a YAML slip there hides the module's docs and breaks
ansible-lint's checks of the tasks that use it), and where the argument spec is written out in the module,
its options and the documented ones must be the same set.
"""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.runner import ROOT

MODULES = sorted((ROOT / "collections/ansible_collections/pi5/streaming/plugins/modules").glob("*.py"))


def documented_options(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    [doc] = [node.value for node in tree.body if isinstance(node, ast.Assign)
             and isinstance(node.targets[0], ast.Name) and node.targets[0].id == "DOCUMENTATION"]
    assert isinstance(doc, ast.Constant)
    return set(yaml.safe_load(doc.value).get("options", {}))


def spec_options(path: Path) -> set[str] | None:
    """The keys of AnsibleModule(argument_spec={...}) when the spec is a literal there, else None."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "AnsibleModule":
            spec = next((kw.value for kw in node.keywords if kw.arg == "argument_spec"), None)
            if isinstance(spec, ast.Dict):
                return {key.value for key in spec.keys if isinstance(key, ast.Constant) and isinstance(key.value, str)}
    return None


@pytest.mark.parametrize("module", MODULES, ids=lambda path: path.stem)
def test_ansible_doc_reads_the_module_documentation(module: Path) -> None:
    ansible_doc = Path(sys.executable).parent / "ansible-doc"
    run = subprocess.run([str(ansible_doc), "--json", f"pi5.streaming.{module.stem}"], cwd=ROOT, capture_output=True,
                         text=True, check=False, env={**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")})
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)[f"pi5.streaming.{module.stem}"]["doc"]
    assert doc["short_description"] and doc["description"]


@pytest.mark.parametrize("module", MODULES, ids=lambda path: path.stem)
def test_the_documented_options_are_the_accepted_ones(module: Path) -> None:
    accepted = spec_options(module)
    if accepted is None:
        pytest.skip("the argument spec is built, not written out (the module's own tests compare it with its docs)")
    assert documented_options(module) == accepted


def test_ansible_doc_reads_the_holds_test_documentation() -> None:
    ansible_doc = Path(sys.executable).parent / "ansible-doc"
    run = subprocess.run([str(ansible_doc), "-t", "test", "--json", "pi5.streaming.holds"], cwd=ROOT, capture_output=True,
                         text=True, check=False, env={**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")})
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["pi5.streaming.holds"]["doc"]["short_description"]
