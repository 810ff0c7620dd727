"""bin/stream-check as a user runs it: a shell wrapper, the system python3, no Ansible, exit codes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.stream_check.stream_check_helpers import REPO
from tests.stream_check.stream_check_server import SseServer, TlsServer

CLI = REPO / "bin" / "stream-check"
# The Pi runs the CLI with its system python3, which has no Ansible: prove that works.
PYTHON = shutil.which("python3.11", path="/usr/bin") or sys.executable


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PYTHON", "ANSIBLE"))}
    return subprocess.run(
        [str(CLI), *args], capture_output=True, text=True, timeout=30, env={**env, "PYTHON": PYTHON}, check=False,
        cwd=cwd,
    )


def test_is_an_executable_shell_wrapper_around_the_core() -> None:
    assert os.access(CLI, os.X_OK)
    text = CLI.read_text(encoding="utf-8")
    assert text.startswith("#!/bin/sh\n")
    assert "-m ansible_collections.pi5.streaming.plugins.module_utils.stream_check.cli" in text


def test_runs_without_ansible() -> None:
    probe = subprocess.run([PYTHON, "-I", "-c", "import ansible"], capture_output=True, check=False)
    if probe.returncode == 0:
        pytest.skip(f"{PYTHON} has Ansible installed; cannot prove the CLI does without it")
    assert run("--help").returncode == 0


def test_runs_from_any_directory_and_through_a_symlink(tmp_path: Path) -> None:
    link = tmp_path / "stream-check"
    link.symlink_to(CLI)
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PYTHON", "ANSIBLE"))}
    done = subprocess.run(
        [str(link), "--help"], capture_output=True, text=True, timeout=30, env={**env, "PYTHON": PYTHON},
        check=False, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: stream-check")


def test_no_python_edits_sys_path() -> None:
    """One import name everywhere: nothing in the repository's Python reaches the core by editing sys.path."""
    sources = [path for top in ("bin", "collections", "bench", "scripts", "tests", "files") for path in (REPO / top).rglob("*.py")]
    offenders = [str(path) for path in sources if "sys.path." in path.read_text(encoding="utf-8", errors="replace")
                 and path != Path(__file__)]
    assert sources and offenders == []


def test_incremental_prints_the_table_and_exits_0(server: SseServer) -> None:
    done = run(server.url("/stream?n=10&interval_ms=30"))
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "stream check"
    assert lines[1].split() == ["verdict", "incremental"]
    assert any(line.split()[:2] == ["events", "10,"] for line in lines)
    assert done.stderr == ""


def test_buffered_exits_1_with_the_diagnosis(server: SseServer) -> None:
    done = run(server.url("/burst?n=10&interval_ms=20"))
    assert done.returncode == 1
    assert "verdict      BUFFERED" in done.stdout
    assert "delivers all 10 events in one burst" in done.stdout


def test_json_output(server: SseServer) -> None:
    done = run("--json", "--min-events", "3", server.url("/truncate?n=4&interval_ms=10&mode=clean"))
    assert done.returncode == 1
    result = json.loads(done.stdout)
    assert (result["verdict"], result["events"], result["status"]) == ("truncated", 4, 200)


def test_generic_endpoint_without_done(server: SseServer) -> None:
    done = run("--no-expect-done", server.url("/truncate?n=6&interval_ms=20&mode=clean"))
    assert done.returncode == 0, done.stdout


def test_post_json_with_headers(server: SseServer) -> None:
    before = len(server.seen)
    done = run(
        "-X",
        "PUT",
        "-d",
        '{"prompt": "hi"}',
        "-H",
        "X-Probe: 1",
        "--min-events",
        "1",
        "--no-expect-done",
        server.url("/echo"),
    )
    assert done.returncode == 1  # one event cannot show a spread; the request shape is what we check
    seen = server.seen[before]
    assert (seen.method, seen.body, seen.headers["x-probe"]) == ("PUT", b'{"prompt": "hi"}', "1")
    assert seen.headers["content-type"] == "application/json"


def test_resume(server: SseServer) -> None:
    good = run("--resume", server.url("/resumable?n=10&interval_ms=30"))
    assert good.returncode == 0, good.stdout + good.stderr
    assert any(line.split()[:2] == ["resume", "ok:"] for line in good.stdout.splitlines())
    replayed = run("--resume", "--json", server.url("/resumable?n=10&interval_ms=30&resume=replay"))
    assert replayed.returncode == 1
    result = json.loads(replayed.stdout)
    assert (result["verdict"], result["resume"]["ok"]) == ("not_resumable", False)
    assert "ignored Last-Event-ID and replayed the reply from the start" in result["diagnosis"]


def test_thresholds_reach_the_verdict(server: SseServer) -> None:
    done = run("--min-events", "50", server.url("/stream?n=6&interval_ms=10"))
    assert done.returncode == 1
    assert "only 6 events arrived (need at least 50)" in done.stdout


def test_expect_header(server: SseServer) -> None:
    url = server.url("/stream?n=6&interval_ms=10&rev=r2")
    assert run("--expect-header", "X-Config-Revision: r2", url).returncode == 0
    stale = run("--expect-header", "X-Config-Revision: r3", url)
    assert stale.returncode == 1 and "stale_config" in stale.stdout.lower()


def test_hops(server: SseServer) -> None:
    done = run(
        "--hop",
        f"backend={server.url('/stream?n=8&interval_ms=20')}",
        "--hop",
        f"nginx={server.url('/burst?n=8&interval_ms=20')}",
    )
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert lines[0].split()[:2] == ["hop", "verdict"]
    assert lines[1].split()[:2] == ["backend", "incremental"]
    assert lines[2].split()[:2] == ["nginx", "buffered"]
    assert lines[-1].startswith("=> buffered at nginx: nginx buffers: backend streams incrementally, but nginx ")


def test_hops_file_with_per_hop_options(server: SseServer, tls_server: TlsServer, tmp_path: Path) -> None:
    hops = [
        {"name": "backend", "url": server.url("/stream?n=6&interval_ms=20")},
        {
            "name": "nginx",
            "url": tls_server.url("/stream?n=6&interval_ms=20&rev=x"),
            "insecure": True,
            "resolve": [tls_server.resolve()],
            "expect_header": "X-Config-Revision: x",
        },
    ]
    path = tmp_path / "hops.json"
    path.write_text(json.dumps(hops), encoding="utf-8")
    done = run("--json", "--hops-file", str(path))
    assert done.returncode == 0, done.stdout
    result = json.loads(done.stdout)
    assert [hop["verdict"] for hop in result["hops"]] == ["incremental", "incremental"]
    assert result["first_bad_hop"] is None


def test_resolve_and_insecure(tls_server: TlsServer) -> None:
    url = tls_server.url("/stream?n=6&interval_ms=20")
    assert run("--resolve", tls_server.resolve(), "-k", "--http1.1", url).returncode == 0
    untrusted = run("--resolve", tls_server.resolve(), url)
    assert untrusted.returncode == 1 and "is not trusted" in untrusted.stdout


def test_unreachable_is_a_verdict_not_a_usage_error(closed_port: int) -> None:
    done = run(f"http://127.0.0.1:{closed_port}/")
    assert done.returncode == 1 and "connect_error" in done.stdout.lower()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "give either a URL or --hop"),
        (("http://a/", "--hop", "b=http://b/"), "give either a URL or --hop"),
        (("ftp://example.org/",), "url must be an http"),
        (("-d", "{not json", "http://a/"), "--data is not valid JSON"),
        (("-H", "no colon", "http://a/"), "header must look like"),
        (("--hop", "nourl"), "--hop must look like NAME=URL"),
        (("--max-burst-share", "2", "http://a/"), "max_burst_share must be between 0 and 1"),
        (("--http1.1", "--http2", "http://a/"), "not allowed with argument"),
        (("--min-events", "many", "http://a/"), "invalid int value"),
        (("--hops-file", "/nonexistent.json"), "--hops-file /nonexistent.json"),
        (("--curl", "/nonexistent/curl", "http://a/"), "curl not found"),
    ],
)
def test_usage_errors_exit_2(args: tuple[str, ...], message: str) -> None:
    done = run(*args)
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr
    assert done.stdout == ""


def test_help_lists_the_options_and_exit_codes() -> None:
    done = run("--help")
    assert done.returncode == 0
    for option in (
        "-X",
        "--data",
        "--header",
        "--insecure",
        "--max-time",
        "--json",
        "--http1.1",
        "--http2",
        "--resolve",
        "--min-events",
        "--max-burst-share",
        "--max-lateness-ms",
        "--hop",
        "--expect-header",
    ):
        assert option in done.stdout
    assert "exit status: 0 incremental, 1 buffered/broken" in done.stdout


def test_watch_judges_an_endless_feed_by_its_window(server: SseServer) -> None:
    feed = server.url("/stream?n=200&interval_ms=20&done=0")  # ten seconds, no done event: "endless" here
    done = run("--watch", "0.6", "--json", feed)
    assert done.returncode == 0, done.stdout
    result = json.loads(done.stdout)
    assert result["verdict"] == "incremental" and 10 <= result["events"] < 60
    assert result["elapsed_ms"] < 3000
    unwatched = run("--max-time", "0.6", feed)
    assert unwatched.returncode == 1 and "timeout" in unwatched.stdout.lower()


def test_https_without_a_forced_protocol_checks_what_the_server_offers(tls_server: TlsServer) -> None:
    # This server offers HTTP/1.1 only (no h2 in ALPN): one result, and it says why.
    done = run("--json", "-k", "--resolve", tls_server.resolve(), tls_server.url("/stream?n=6&interval_ms=20"))
    assert done.returncode == 0, done.stdout
    result = json.loads(done.stdout)
    assert result["http_version"] == "1.1"
    assert "the server offers no HTTP/2 (ALPN): checked over HTTP/1.1 only" in result["notes"]
