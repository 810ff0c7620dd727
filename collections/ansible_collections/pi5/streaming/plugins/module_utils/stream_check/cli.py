"""bin/stream-check: the check as a command, its options and --help built from the option table.

Run as ``python3 -m ansible_collections.pi5.streaming.plugins.module_utils.stream_check.cli`` with the
repository's ``collections`` directory on PYTHONPATH (what ``bin/stream-check`` does); standard library
and curl only.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from ansible_collections.pi5.streaming.plugins.module_utils.stream_check.hops import HopsResult, check
from ansible_collections.pi5.streaming.plugins.module_utils.stream_check.options import (
    FACE_OPTIONS,
    OPTIONS,
    Hop,
    Option,
    StreamCheckError,
    UsageError,
    hop_from_mapping,
)
from ansible_collections.pi5.streaming.plugins.module_utils.stream_check.report import render
from ansible_collections.pi5.streaming.plugins.module_utils.stream_check.verdict import CheckResult

EXIT_INCREMENTAL = 0
EXIT_NOT_INCREMENTAL = 1
EXIT_USAGE = 2

EPILOG = """\
exit status: 0 incremental, 1 buffered/broken (any other verdict), 2 usage error.

examples:
  stream-check 'http://127.0.0.1:7776/api/probe/stream?tokens=20&interval_ms=50'
  stream-check --resolve pi5.local:443:127.0.0.1 -k \\
      --expect-header 'X-Config-Revision: 3f2a9c' 'https://pi5.local/api/probe/stream'
  stream-check --hop backend='http://127.0.0.1:7776/api/probe/stream' \\
               --hop nginx='http://127.0.0.1/api/probe/stream'
  stream-check --resume --hop backend='http://127.0.0.1:7776/api/probe/stream' \\
               --hop nginx='http://127.0.0.1/api/probe/stream'   # then cut each halfway and resume it
  stream-check --no-expect-done -X POST -d '{"prompt": "hi"}' https://example.org/v1/stream
  stream-check --watch 5 https://example.org/v1/feed        # an endless feed: judge 5 s of it
"""

_MARKUP = re.compile(r"([OVCI])\(([^()]*)\)")


def plain(text: str) -> str:
    """Ansible doc markup as command-line text: O(max_time) -> --max-time, V(x)/C(x) -> x."""

    def one(match: re.Match[str]) -> str:
        kind, inner = match.group(1), match.group(2)
        if kind == "O":
            name = inner.split("=")[0].split(".")[-1].split("[")[0]
            known = {opt.ansible_name: opt.cli_flags[-1] for opt in (*OPTIONS, *FACE_OPTIONS)}
            return {**known, "hops": "--hop", "url": "URL"}.get(name, inner)
        return inner

    return _MARKUP.sub(one, text).replace("%", "%%")


def _help(opt: Option) -> str:
    text = plain(" ".join(opt.description))
    if opt.default not in (None, (), False):
        text += f" (default {opt.default:g})" if isinstance(opt.default, float) else f" (default {opt.default})"
    return text


def _add(group: argparse._ArgumentGroup, opt: Option) -> None:
    """One option of the table as an argparse argument, by its Ansible type."""
    kwargs: dict[str, object] = {"dest": opt.name, "help": _help(opt)}
    if opt.type == "bool":
        kwargs["action"] = argparse.BooleanOptionalAction if opt.default else "store_true"
        kwargs["default"] = opt.default
    elif opt.type in ("list", "dict"):
        kwargs.update(action="append", default=[], metavar=opt.metavar)
    else:
        converter = {"int": int, "float": float}.get(opt.type, str)
        kwargs.update(type=converter, default=opt.default, metavar=opt.metavar)
        if opt.choices:
            kwargs["choices"] = list(opt.choices)
    group.add_argument(*opt.cli_flags, **kwargs)  # type: ignore[arg-type]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stream-check",
        description="Fetch an SSE endpoint with curl -N like a browser and prove the events arrive incrementally.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    face = {opt.name: opt for opt in FACE_OPTIONS}
    parser.add_argument("url", nargs="?", help=plain(face["url"].description[0]))
    hops = parser.add_argument_group("hop by hop")
    hops.add_argument(
        "--hop",
        action="append",
        default=[],
        metavar="NAME=URL",
        help="check hops in this order and blame the first bad one (repeatable); every option applies to "
        "every hop, use --hops-file for per-hop options such as --expect-header on the nginx hop only",
    )
    hops.add_argument(
        "--hops-file",
        metavar="FILE",
        help='JSON list of hops with per-hop options: [{"name": "nginx", "url": "...", "insecure": true}]',
    )
    hops.add_argument("--stop-on-failure", action="store_true", help=plain(face["stop_on_failure"].description[0]))
    groups = {
        "request": parser.add_argument_group("request"),
        "criteria": parser.add_argument_group("criteria (incremental needs all of them)"),
    }
    for opt in OPTIONS:
        _add(groups[opt.scope], opt)
    version = groups["request"]
    version.add_argument("--http1.1", dest="http_version", action="store_const", const="1.1", help="--http-version 1.1")
    version.add_argument("--http2", dest="http_version", action="store_const", const="2", help="--http-version 2")
    parser.add_argument("--json", action="store_true", help="print the full result as JSON")
    return parser


def _options(args: argparse.Namespace) -> dict[str, object]:
    """Every request and criteria option but the URL, in the core's terms."""
    if args.data is not None:
        try:
            json.loads(args.data)
        except ValueError as exc:
            raise UsageError(f"--data is not valid JSON: {exc}") from None
    return {opt.name: getattr(args, opt.name) for opt in OPTIONS}


def _hop(spec: str) -> dict[str, object]:
    name, sep, url = spec.partition("=")
    if not sep or not name or not url:
        raise UsageError(f"--hop must look like NAME=URL, got {spec!r}")
    return {"name": name, "url": url}


def _hops_file(path: str) -> list[dict[str, object]]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"--hops-file {path}: {exc}") from None
    if not isinstance(data, list) or not data or not all(isinstance(hop, dict) for hop in data):
        raise UsageError(f"--hops-file {path} must hold a non-empty JSON list of objects")
    return data


def _conflicting_versions(argv: Sequence[str]) -> bool:
    return "--http1.1" in argv and "--http2" in argv


def run(args: argparse.Namespace) -> CheckResult | HopsResult:
    """The check the arguments ask for; raises UsageError for bad arguments."""
    if bool(args.url) == bool(args.hop or args.hops_file):
        raise UsageError("give either a URL or --hop/--hops-file")
    options = _options(args)
    if args.url:
        hops = [hop_from_mapping({"name": "-", "url": args.url}, options)]
        hops = [Hop("", hops[0].request, hops[0].criteria)]
    else:
        specs = [_hop(spec) for spec in args.hop] + (_hops_file(args.hops_file) if args.hops_file else [])
        hops = [hop_from_mapping(spec, options) for spec in specs]
    return check(hops, stop_on_failure=args.stop_on_failure)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    given = list(sys.argv[1:] if argv is None else argv)
    if _conflicting_versions(given):
        parser.print_usage(sys.stderr)
        print("stream-check: error: argument --http2: not allowed with argument --http1.1", file=sys.stderr)
        return EXIT_USAGE
    args = parser.parse_args(given)
    try:
        result = run(args)
    except UsageError as exc:
        parser.print_usage(sys.stderr)
        print(f"stream-check: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except StreamCheckError as exc:
        print(f"stream-check: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(render(result))
    return EXIT_INCREMENTAL if result.incremental else EXIT_NOT_INCREMENTAL


if __name__ == "__main__":
    sys.exit(main())
