#!/usr/bin/env python3
"""Write the stream_check module's DOCUMENTATION options from the core's one option table.

The table (``module_utils/stream_check/options.py``) is the single source of every
option's type, default, choices and meaning; the CLI's --help is built from it at
run time, and this script renders the same options into the module file's
DOCUMENTATION (ansible-doc and ansible-lint read that string statically, so it
must be in the file). With --check, exit 1 if the module file is stale.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from ansible_collections.pi5.streaming.plugins.module_utils.stream_check.options import (
    FACE_OPTIONS,
    OPTIONS,
    Option,
    argument_spec,
)

MODULE = (
    Path(__file__).resolve().parent.parent / "collections/ansible_collections/pi5/streaming/plugins/modules/stream_check.py"
)
BEGIN = "# BEGIN OPTIONS: generated from module_utils/stream_check/options.py by scripts/module_docs.py\n"
END = "# END OPTIONS\n"
INDENT = "  "


def _doc(opt: Option, *, top: bool) -> dict[str, Any]:
    spec = argument_spec()
    source = spec[opt.ansible_name] if top else spec["hops"]["options"][opt.ansible_name]
    doc: dict[str, Any] = {"description": list(opt.description) if top else [f"Overrides O({opt.ansible_name})."]}
    doc.update({key: source[key] for key in ("type", "elements", "choices", "default", "aliases") if key in source})
    return doc


def options_doc() -> dict[str, Any]:
    """The DOCUMENTATION ``options`` mapping, in the table's order."""
    face = {opt.name: opt for opt in FACE_OPTIONS}
    hop_options: dict[str, Any] = {
        "name": {"description": "Hop name used in the diagnosis (V(backend), V(nginx), V(tunnel)).", "type": "str",
                 "required": True},
        "url": {"description": "The hop's URL.", "type": "str", "required": True},
        **{opt.ansible_name: _doc(opt, top=False) for opt in OPTIONS if opt.per_hop},
    }
    return {
        "url": {"description": list(face["url"].description), "type": "str"},
        "name": {"description": list(face["name"].description), "type": "str"},
        "hops": {
            "description": [
                "Ordered hops of the path to the browser, first the backend alone. Each hop takes O(hops[].name) "
                "and O(hops[].url) plus any of the request and criteria options of this module, which override "
                "the top-level values for that hop only (unset ones inherit them).",
                "The hops are checked at the same time, each over its own fresh connection; the module result "
                "names the RV(first_bad_hop) and attributes the fault to it.",
            ],
            "type": "list",
            "elements": "dict",
            "suboptions": hop_options,
        },
        "stop_on_failure": {"description": list(face["stop_on_failure"].description), "type": "bool", "default": False},
        **{opt.ansible_name: _doc(opt, top=True) for opt in OPTIONS},
    }


def render() -> str:
    text: str = yaml.safe_dump({"options": options_doc()}, sort_keys=False, width=110, allow_unicode=True)
    return BEGIN + text + END


def updated(source: str) -> str:
    start, end = source.index(BEGIN), source.index(END) + len(END)
    return source[:start] + render() + source[end:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if the module's DOCUMENTATION is stale")
    args = parser.parse_args()
    source = MODULE.read_text(encoding="utf-8")
    fresh = updated(source)
    if args.check:
        if fresh != source:
            print(f"{MODULE}: DOCUMENTATION options are stale; run: python scripts/module_docs.py", file=sys.stderr)
            return 1
        return 0
    if fresh != source:
        MODULE.write_text(fresh, encoding="utf-8")
        print(f"updated {MODULE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
