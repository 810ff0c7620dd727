"""Fetch the stream once with curl, stamping every read of its output.

One run = one ``curl --no-buffer`` process = one fresh connection: after an
nginx reload the old workers keep the connections they hold, so only a new one
proves the new config. The request is what a browser sends (``Accept:
text/event-stream``, ``Cache-Control: no-cache``), and it advertises only the
encodings this Python can decode (:func:`accepted_encodings`): curl is not given
``--compressed``, which would decode silently and hide a compressing proxy.
"""

from __future__ import annotations

import json
import os
import re
import selectors
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from ansible_collections.pi5.streaming.plugins.module_utils.stream_check.options import (
    CurlMissing,
    Request,
    StreamCheckError,
    split_header,
)

__all__ = [
    "USER_AGENT",
    "Capture",
    "Chunk",
    "accepted_encodings",
    "brotli_decompressor",
    "build_curl_argv",
    "fetch",
    "header_names",
    "parse_header_dump",
    "parse_writeout",
    "request_headers",
]

USER_AGENT: Final = "stream-check/2.0 (+curl)"
WRITEOUT_MARKER: Final = "@@stream-check-writeout@@"
READ_SIZE: Final = 65536
# curl enforces --max-time itself; the watchdog only catches a wedged curl.
WATCHDOG_GRACE_S: Final = 5.0
_STATUS_LINE = re.compile(r"^HTTP/(\d(?:\.\d)?)\s+(\d{3})")


def brotli_decompressor() -> Any | None:
    """A new brotli decompressor (``.process(bytes) -> bytes``), or None when no brotli module is importable.

    The standard library has none; Debian's python3-brotli or PyPI's brotli provide it.
    """
    try:
        import brotli  # noqa: PLC0415  (optional: probed at run time, absent on a bare Pi)
    except ImportError:
        return None
    return brotli.Decompressor()


def accepted_encodings() -> str:
    """What the check advertises in Accept-Encoding: what browsers send, less what it cannot decode."""
    return "gzip, deflate, br" if brotli_decompressor() is not None else "gzip, deflate"


@dataclass(frozen=True)
class Chunk:
    """One read of curl's stdout: seconds since the request started, bytes."""

    at: float
    data: bytes


@dataclass(frozen=True)
class Capture:
    """Everything curl told us; :func:`analyse` needs nothing else."""

    request: Request
    chunks: tuple[Chunk, ...] = ()
    curl_exit: int = 0
    curl_error: str = ""
    status: int | None = None
    http_version: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)  # final response, lower-case names
    header_names: tuple[str, ...] = ()  # the names as the server spelled them (HTTP/1.x keeps their case)
    ttfb_s: float | None = None  # the response headers arrived
    sent_s: float | None = None  # the request was sent (curl's time_pretransfer)
    remote_ip: str | None = None
    remote_port: int | None = None
    elapsed_s: float = 0.0
    killed: bool = False  # the watchdog had to kill curl
    cut: bool = False  # the caller's ``until`` stopped curl mid-stream (the resume hop's cut connection)


def _default_headers(request: Request) -> dict[str, str]:
    headers = {
        "Accept": "text/event-stream",
        "Accept-Encoding": accepted_encodings(),
        "Cache-Control": "no-cache",
    }
    if request.data is not None:
        headers["Content-Type"] = "application/json"
    return headers


def request_headers(request: Request) -> list[str]:
    """The browser-like defaults, each replaced by a user header of the same name."""
    merged = {name.lower(): f"{name}: {value}" for name, value in _default_headers(request).items()}
    for line in request.headers:
        name, value = split_header(line)
        merged[name.lower()] = f"{name}: {value}"
    return list(merged.values())


def build_curl_argv(request: Request, header_file: str, curl: str | None = None) -> list[str]:
    """The curl command line for one check (headers dumped to ``header_file``)."""
    argv = [
        curl or request.curl,
        "--disable",  # must come first: ignore ~/.curlrc
        "--silent",
        "--show-error",
        "--no-buffer",  # -N: write each piece as it arrives
        "--globoff",
        "--proto",
        "=http,https",
        "--noproxy",
        "*",  # a proxy from the environment would buffer and hide the truth
        "--user-agent",
        USER_AGENT,
        "--max-time",
        f"{request.deadline_s:g}",
        "--connect-timeout",
        f"{request.connect_timeout:g}",
        "--dump-header",
        header_file,
        "--output",
        "-",
        "--write-out",
        "%{stderr}\n" + WRITEOUT_MARKER + "%{json}\n",
    ]
    implied = "POST" if request.data is not None else "GET"
    if request.effective_method != implied:
        argv += ["--request", request.effective_method]
    if request.http_version == "1.1":
        argv.append("--http1.1")
    elif request.http_version == "2":
        argv.append("--http2")
    if request.insecure:
        argv.append("--insecure")
    if request.cacert:
        argv += ["--cacert", request.cacert]
    for entry in request.resolve:
        argv += ["--resolve", entry]
    for header in request_headers(request):
        argv += ["--header", header]
    if request.data is not None:
        argv += ["--data-raw", request.data]  # --data-raw: a leading @ is not a file name
    argv += ["--url", request.url]
    return argv


# How a read loop ended: the body's end, the deadline, or the caller's ``until``.
Ending = Literal["eof", "deadline", "cut"]


def _pump(
    fd: int, start: float, deadline: float, chunks: list[Chunk], until: Callable[[Chunk], bool] | None
) -> Ending:
    """Read ``fd`` to EOF, stamping each read; stop early at the deadline or once ``until`` says so."""
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "deadline"
            if not selector.select(remaining):
                continue
            data = os.read(fd, READ_SIZE)
            # Stamp right after the read and keep parsing out of this loop, so
            # a slow Pi spends no time between reads that would skew the stamps.
            at = time.monotonic() - start
            if not data:
                return "eof"
            chunks.append(Chunk(at, data))
            if until is not None and until(chunks[-1]):
                return "cut"


def _run_curl(
    argv: Sequence[str], stderr: Any, budget_s: float, until: Callable[[Chunk], bool] | None = None
) -> tuple[list[Chunk], int, float, Ending]:
    chunks: list[Chunk] = []
    start = time.monotonic()
    # One curl process per check is one fresh connection: after an nginx reload
    # the old workers keep serving the connections they already hold, so only a
    # new connection proves what the new config does.
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr)
    ending: Ending = "deadline"
    try:
        if proc.stdout is not None:  # always, with stdout=PIPE
            ending = _pump(proc.stdout.fileno(), start, start + budget_s, chunks, until)
    finally:
        if ending != "eof":
            proc.kill()  # a cut: the kernel closes curl's socket, as when a phone drops off Wi-Fi
        try:
            exit_code = proc.wait(timeout=WATCHDOG_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            exit_code = proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    return chunks, exit_code, time.monotonic() - start, ending


def fetch(request: Request, until: Callable[[Chunk], bool] | None = None) -> Capture:
    """Run curl once and capture the timed body, headers and curl's write-out.

    ``until`` sees every read as it arrives; once it returns True, curl is killed mid-stream (``cut``). curl
    writes each header line to its dump as it arrives, so the headers of a cut response are complete.
    """
    curl = shutil.which(request.curl)
    if curl is None:
        raise CurlMissing(f"curl not found ({request.curl!r}): install curl on the host that runs the check")
    with tempfile.TemporaryDirectory(prefix="stream-check-") as tmp:
        header_path = os.path.join(tmp, "headers")
        stderr_path = os.path.join(tmp, "stderr")
        argv = build_curl_argv(request, header_path, curl)
        with open(stderr_path, "wb") as stderr:
            try:
                chunks, exit_code, elapsed, ending = _run_curl(
                    argv, stderr, request.deadline_s + WATCHDOG_GRACE_S, until
                )
            except OSError as exc:
                raise StreamCheckError(f"cannot run {curl}: {exc}") from exc
        header_text = _read_text(header_path, "iso-8859-1")
        stderr_text = _read_text(stderr_path, "utf-8")
    killed = ending == "deadline"
    writeout, messages = parse_writeout(stderr_text)
    dump_status, dump_version, headers = parse_header_dump(header_text)
    status = _int(writeout.get("response_code")) or dump_status
    version = str(writeout.get("http_version") or "") or dump_version
    return Capture(
        request=request,
        chunks=tuple(chunks),
        curl_exit=-9 if killed else exit_code,
        curl_error=_curl_error(writeout, messages, killed),
        status=status or None,
        http_version=None if version in ("", "0") else version,
        headers=headers,
        header_names=header_names(header_text),
        sent_s=_float(writeout.get("time_pretransfer")) or None,
        ttfb_s=_float(writeout.get("time_starttransfer")) or (chunks[0].at if chunks else None),
        remote_ip=str(writeout.get("remote_ip") or "") or None,
        remote_port=_int(writeout.get("remote_port")) or None,
        elapsed_s=elapsed,
        killed=killed,
        cut=ending == "cut",
    )


def _read_text(path: str, encoding: str) -> str:
    try:
        with open(path, "rb") as handle:
            return handle.read().decode(encoding, errors="replace")
    except FileNotFoundError:
        return ""


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _float(value: object) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


def _curl_error(writeout: Mapping[str, Any], messages: str, killed: bool) -> str:
    if killed:
        return "curl did not finish; killed by the watchdog"
    message = writeout.get("errormsg")
    if isinstance(message, str) and message:
        return message
    lines = [line for line in messages.splitlines() if line.startswith("curl:")]
    return lines[-1] if lines else ""


def parse_writeout(stderr: str) -> tuple[dict[str, Any], str]:
    """Split curl's stderr into its ``%{json}`` write-out and the other messages."""
    before, marker, after = stderr.rpartition(WRITEOUT_MARKER)
    if not marker:
        return {}, stderr.strip()
    line, _, rest = after.partition("\n")
    try:
        data = json.loads(line)
    except ValueError:
        data = None
    return (data if isinstance(data, dict) else {}), (before + rest).strip()


def parse_header_dump(text: str) -> tuple[int | None, str | None, dict[str, str]]:
    """Status, HTTP version and headers of the LAST response in a ``-D`` dump."""
    status: int | None = None
    version: str | None = None
    headers: dict[str, str] = {}
    for line in text.splitlines():
        match = _STATUS_LINE.match(line)
        if match:  # a new response (after 1xx or a proxy CONNECT) starts over
            status, version, headers = int(match.group(2)), match.group(1), {}
            continue
        name, sep, value = line.partition(":")
        if status is None or not sep or not name.strip() or line[:1].isspace():
            continue
        key = name.strip().lower()
        headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
    return status, version, headers


def header_names(text: str) -> tuple[str, ...]:
    """The header names of the LAST response in a ``-D`` dump, spelled as the server sent them."""
    names: list[str] = []
    for line in text.splitlines():
        if _STATUS_LINE.match(line):
            names = []
            continue
        name, sep, _ = line.partition(":")
        if sep and name.strip() and not line[:1].isspace():
            names.append(name.strip())
    return tuple(names)


