#!/usr/bin/env python3
"""Render each role README's variable section from its meta/argument_specs.yml.

The spec is the single source of a variable's type, default and meaning; the
README mirrors it in the same order. With --check, exit 1 if a README is stale
or if a default in the spec differs from the role's defaults/main.yml.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

import yaml

BEGIN = "<!-- BEGIN VARIABLES: generated from meta/argument_specs.yml by scripts/role_docs.py -->"
END = "<!-- END VARIABLES -->"
ROLES = Path(__file__).resolve().parent.parent / "roles"


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text()) if path.exists() else None


def describe(text: str | list[str]) -> str:
    """Join a spec description and turn Ansible's V()/C()/O() markup into Markdown code."""
    joined = " ".join(text) if isinstance(text, list) else text
    return re.sub(r"\b[VCOI]\(([^)]*)\)", r"`\1`", joined)


def render_option(name: str, spec: dict[str, Any], level: int = 3) -> list[str]:
    facts = [f"type `{spec.get('type', 'str')}`"]
    if spec.get("elements"):
        facts[0] += f" of `{spec['elements']}`"
    if spec.get("required"):
        facts.append("required")
    if "choices" in spec:
        facts.append("one of " + ", ".join(f"`{c}`" for c in spec["choices"]))
    if "default" in spec:
        default = yaml.safe_dump(spec["default"], default_flow_style=True, width=1000).strip().removesuffix("...").strip()
        facts.append(f"default `{default}`")
    if spec.get("no_log"):
        facts.append("secret (keep it in the vault)")
    summary = "; ".join(facts)
    # Not str.capitalize(): it lowercases the rest (a default of Etc/UTC would read etc/utc).
    lines = [f"{'#' * level} `{name}`", "", describe(spec.get("description", "")), "", summary[:1].upper() + summary[1:] + ".", ""]
    for sub_name, sub_spec in (spec.get("options") or {}).items():
        lines += render_option(f"{name}[].{sub_name}", sub_spec, level + 1)
    return lines


def render(options: dict[str, Any]) -> str:
    lines = [BEGIN, ""]
    for name, spec in options.items():
        lines += render_option(name, spec)
    return "\n".join([*lines, END])


def default_mismatches(role: Path, options: dict[str, Any]) -> list[str]:
    defaults = load_yaml(role / "defaults" / "main.yml") or {}
    problems = []
    for name, spec in options.items():
        if "default" in spec and spec["default"] != defaults.get(name):
            problems.append(f"{role.name}: {name} defaults to {defaults.get(name)!r} in defaults/main.yml "
                            f"but {spec['default']!r} in meta/argument_specs.yml")
        if name in defaults and "default" not in spec and not spec.get("required"):
            problems.append(f"{role.name}: {name} has a default in defaults/main.yml but none in the spec")
    return problems


def process(role: Path, check: bool) -> list[str]:
    spec = load_yaml(role / "meta" / "argument_specs.yml")
    if not spec:
        return [f"{role.name}: no meta/argument_specs.yml"]
    options = spec["argument_specs"]["main"].get("options", {})
    problems = default_mismatches(role, options)
    readme = role / "README.md"
    text = readme.read_text() if readme.exists() else ""
    if BEGIN not in text or END not in text:
        return [*problems, f"{role.name}: README.md lacks the generated variables section markers"]
    head, rest = text.split(BEGIN, 1)
    updated = head + render(options) + rest.split(END, 1)[1]
    if updated != text:
        if check:
            problems.append(f"{role.name}: README.md variables are stale; run scripts/role_docs.py")
        else:
            readme.write_text(updated)
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail instead of rewriting")
    args = parser.parse_args()
    problems = [p for role in sorted(ROLES.iterdir()) if role.is_dir() for p in process(role, args.check)]
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
