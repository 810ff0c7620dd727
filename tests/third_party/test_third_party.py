"""The stream check against SSE servers and reverse proxies this project did not write.

Servers: sse-starlette (uvicorn), Flask under gunicorn, a Node.js ``http`` server with and without the
``compression`` middleware; proxies from Debian: HAProxy, Apache ``mod_proxy_http`` (+ ModSecurity),
lighttpd and Caddy, each as shipped and in a configuration that changes its buffering (harness.py).
Emission times come in seconds (sse-starlette, ``time.time()``), microseconds (Flask), milliseconds
(Node, ``Date.now()``), nanoseconds on a relative clock (``process.hrtime``), RFC 3339 strings, or not at
all (Anthropic's typed events).

Ground truth, independent of the core: every server writes, in each event's ``id:``, the wall-clock
time at which it wrote that event; recorder.py, a raw-socket HTTP/1.1 client that shares no code with
the check, stamps each ``recv`` with the same clock and derives each event's real delay, then classifies
the stream as ``streams`` (90% of the events within 30 ms of being written) or ``buffers`` (half of them
60 ms late or more). The recorder and the check each open their own connection at the same time. The
test asserts the ground truth we measured (the README's proxies table), then that the check's verdict
agrees with it: it says ``buffered`` (as its verdict, or among its failures for a compressed stream)
exactly when the recorder saw the events held back, and, where a proxy held them, it names that proxy
from its headers and gives that proxy's own fix.

All cases run once, four at a time, when the first test asks for them (``outcomes``); a case whose
ground truth is unclear (a loaded machine) is measured again, alone.
"""

from __future__ import annotations

import json
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest

from ansible_collections.pi5.streaming.plugins.module_utils.stream_check import (
    CheckResult,
    Criteria,
    Request,
    accepted_encodings,
    check_stream,
)
from tests.runner import run_module
from tests.third_party.harness import REPO, Stack
from tests.third_party.recorder import Recording, classify, record

CLI = REPO / "bin" / "stream-check"

PROBE = "?n=20&interval_ms=50"
PARALLEL = 4


@dataclass(frozen=True)
class Case:
    id: str
    where: str  # a server or proxy of the stack
    path: str
    truth: str  # what the recorder measured: "streams" or "buffers"
    verdict: str  # what the check must say
    timestamps: str = ""  # the start of the check's account of the emission times
    proxy: str = ""  # the proxy the fingerprint must name
    fix: str = ""  # words of that proxy's own fix the advice must carry


CASES = (
    # --- third-party servers, every unit -------------------------------------------------------
    Case("starlette-seconds", "starlette", "/seconds", "streams", "incremental", "`ts` in seconds (epoch"),
    Case("starlette-anthropic", "starlette", "/anthropic", "streams", "incremental", "none in the events"),
    Case("starlette-rfc3339", "starlette", "/rfc3339", "streams", "incremental", "`timestamp` in RFC 3339"),
    Case("flask-gunicorn-microseconds", "flask", "/micro", "streams", "incremental", "`ts` in microseconds (epoch"),
    Case("node-milliseconds", "node", "/ms", "streams", "incremental", "`ts` in milliseconds (epoch"),
    Case("node-hrtime-nanoseconds", "node", "/hrtime", "streams", "incremental", "`ts` in nanoseconds (a relative"),
    Case("node-compression", "node", "/compressed", "buffers", "compressed", "`ts` in milliseconds"),
    Case("node-compression-flushed", "node", "/compressed-flush", "streams", "compressed", "`ts` in milliseconds"),
    # --- proxies from Debian, as shipped and reconfigured ----------------------------------------
    Case("haproxy-default", "haproxy", "/ms", "buffers", "buffered", proxy="HAProxy", fix="option http-no-delay"),
    Case("haproxy-http-no-delay", "haproxy_nodelay", "/ms", "streams", "incremental"),
    Case("haproxy-wait-for-body", "haproxy_waitbody", "/ms", "buffers", "buffered", proxy="HAProxy",
         fix="http-response wait-for-body"),
    Case("apache-default", "apache", "/ms", "streams", "incremental"),
    Case("apache-modsecurity", "apache_modsecurity", "/ms", "buffers", "buffered", proxy="Apache httpd",
         fix="SecResponseBodyAccess"),
    Case("lighttpd-default", "lighttpd", "/ms", "buffers", "buffered", proxy="lighttpd",
         fix="server.stream-response-body = 2"),
    Case("lighttpd-stream-response-body", "lighttpd_stream", "/ms", "streams", "incremental"),
    Case("caddy-default", "caddy", "/ms", "streams", "incremental"),
    Case("caddy-buffer-responses", "caddy_buffered", "/ms", "buffers", "buffered", proxy="Caddy", fix="buffer_responses"),
)


@dataclass
class Outcome:
    truth: str
    recording: Recording
    result: CheckResult


def _measure(stack: Stack, case: Case) -> Outcome:
    url = stack.url(case.where, case.path + PROBE)
    with ThreadPoolExecutor(2) as pool:
        recorded = pool.submit(record, url, accepted_encodings())
        result = pool.submit(check_stream, Request(url=url, max_time=15), Criteria())
        return Outcome(classify(recorded.result()), recorded.result(), result.result())


@pytest.fixture(scope="module")
def outcomes(stack: Stack) -> dict[str, Outcome]:
    with ThreadPoolExecutor(PARALLEL) as pool:
        measured = dict(zip((case.id for case in CASES), pool.map(lambda case: _measure(stack, case), CASES), strict=True))
    for case in CASES:
        if measured[case.id].truth == "unclear":
            measured[case.id] = _measure(stack, case)  # alone this time
    return measured


def held_back(result: CheckResult) -> bool:
    """The check's own word on buffering: its verdict, or a failure behind a compressed verdict."""
    return result.verdict == "buffered" or any(failure.startswith("buffered:") for failure in result.failures)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_the_verdict_matches_the_ground_truth(case: Case, outcomes: dict[str, Outcome]) -> None:
    outcome = outcomes[case.id]
    delays = [round(delay) for delay in outcome.recording.delays_ms()]
    assert outcome.truth == case.truth, f"measured {outcome.truth}: delays {delays} ms"
    result = outcome.result
    assert held_back(result) == (outcome.truth == "buffers"), f"{result.failures} / delays {delays}"
    assert result.verdict == case.verdict, result.diagnosis
    assert result.events >= 20, result.to_dict()
    if case.timestamps:
        assert result.timestamps.startswith(case.timestamps), result.timestamps


@pytest.mark.parametrize("case", [case for case in CASES if case.proxy], ids=lambda case: case.id)
def test_a_buffering_proxy_is_named_with_its_own_fix(case: Case, outcomes: dict[str, Outcome]) -> None:
    result = outcomes[case.id].result
    assert any(name.startswith(case.proxy) for name in result.proxies), result.proxies
    assert result.diagnosis.startswith(f"{case.proxy} delivers "), result.diagnosis
    assert case.fix in result.diagnosis, result.diagnosis
    assert "check proxy_buffering / gzip" not in result.diagnosis  # not nginx's advice


def test_compression_is_decoded_in_whatever_encoding_was_advertised(outcomes: dict[str, Outcome]) -> None:
    """The compression middleware answers with what the request offers: br when this Python can decode it."""
    for case_id in ("node-compression", "node-compression-flushed"):
        result = outcomes[case_id].result
        assert result.content_encoding in accepted_encodings().split(", ")
        assert result.events == 20 and result.integrity != "mismatch"


def test_headers_held_until_the_first_write_are_the_longest_silence(stack: Stack) -> None:
    """Node sends a response's headers with its first write: 1.5 s of nothing, then the stream."""
    url = stack.url("node", "/think" + PROBE + "&think_ms=1500")
    with ThreadPoolExecutor(2) as pool:
        recorded = pool.submit(record, url)
        result = pool.submit(check_stream, Request(url=url), Criteria(expect_heartbeats=True, heartbeat_interval_ms=500))
    first_byte_ms = recorded.result().first_byte_after_ms()
    assert first_byte_ms is not None and first_byte_ms >= 1400  # ground truth: nothing at all for 1.5 s
    check = result.result()
    assert check.longest_silence_ms is not None and check.longest_silence_ms >= 0.9 * first_byte_ms
    assert "before the response headers" in check.longest_silence
    assert check.verdict == "heartbeat_missing"
    assert "before the response headers" in check.diagnosis


FACES = ("lighttpd", "caddy", "haproxy")


@pytest.mark.parametrize("where", FACES)
def test_module_and_cli_give_the_same_verdict_on_the_same_stream(stack: Stack, where: str) -> None:
    """One core, two faces: ``ansible -m pi5.streaming.stream_check`` and ``bin/stream-check --json``."""
    url = stack.url(where, "/ms" + PROBE)
    with ThreadPoolExecutor(2) as pool:
        module = pool.submit(run_module, "pi5.streaming.stream_check", {"url": url, "max_time": 15})
        cli = pool.submit(
            subprocess.run, [str(CLI), "--json", url], capture_output=True, text=True, timeout=60, check=False
        )
    by_module, by_cli = module.result(), json.loads(cli.result().stdout)
    assert (by_module["verdict"], by_module["proxies"]) == (by_cli["verdict"], by_cli["proxies"])
    observed = {"buffered": True, "incremental": False}
    assert by_module["verdict"] in observed  # these three are one or the other (ground truth above)
    assert by_module.get("failed", False) == observed[by_module["verdict"]]
    # The same words; the measured figures differ (each face opened its own connection at its own moment).
    assert wording(by_module["msg" if by_module.get("failed") else "diagnosis"]) == wording(by_cli["diagnosis"])


def wording(diagnosis: str) -> str:
    """A diagnosis without its measured figures: numbers, and the burst sizes in parentheses (4+5+5+5+1)."""
    return re.sub(r"\d+(\.\d+)?", "N", re.sub(r"\(\d+(\+\d+)+\)", "", diagnosis))
