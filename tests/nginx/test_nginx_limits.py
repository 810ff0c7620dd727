"""nginx against a hostile client: the role's per-client limits and timeouts, and the old settings beside them.

Real nginx with the role's own templates (tests/nginx/nginx_cases.py: ``limits`` shrinks the role's
limits so a test reaches them in a second; ``limits_old`` is what issue 13 attacked). nginx takes the
client's address from X-Real-IP in these sites, so one machine plays many clients, IPv6 ones too.
Each attack is run against both: the limit must hold, and the old setting must let it through, so
a test that passes here can also fail.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack

import pytest

from tests.nginx.nginx_harness import Stack

LONG_PROBE = "/api/probe/stream?tokens=30&interval_ms=100"  # 3 s: held open while the test runs


def get(stack: Stack, site: str, path: str, client: str) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", stack.nginx(site).ports.http, timeout=10)
    try:
        connection.request("GET", path, headers={"X-Real-IP": client})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def held_stream(stack: Stack, site: str, client: str) -> http.client.HTTPConnection:
    """A probe stream from ``client``, its headers read and its body left open."""
    connection = http.client.HTTPConnection("127.0.0.1", stack.nginx(site).ports.http, timeout=10)
    connection.request("GET", LONG_PROBE, headers={"X-Real-IP": client})
    response = connection.getresponse()
    assert response.status == 200
    return connection


def third_stream_status(stack: Stack, site: str, first: str, third: str) -> int:
    """Two streams held from ``first``, then one more from ``third``: its status."""
    with ExitStack() as held:
        for _ in range(2):
            held.callback(held_stream(stack, site, first).close)
        return get(stack, site, LONG_PROBE.replace("tokens=30", "tokens=1"), third)


@pytest.mark.parametrize(
    ("attacker", "other", "refused"),
    [
        # Each case its own addresses: they also count against the request rate.
        ("203.0.113.7", "203.0.113.7", True),
        ("203.0.113.17", "203.0.113.18", False),  # IPv4: each address is its own client
        ("2001:db8:1:2::a", "2001:db8:1:2:ffff::b", True),  # IPv6: one /64 is one client
        ("2001:db8:1:4::a", "2001:db8:1:5::a", False),
    ],
)
def test_streams_per_client_are_limited_ipv6_by_its_64(
    stack: Stack, attacker: str, other: str, refused: bool
) -> None:
    assert third_stream_status(stack, "limits", attacker, other) == (429 if refused else 200)


def test_without_limit_conn_one_client_holds_any_number_of_streams(stack: Stack) -> None:
    assert third_stream_status(stack, "limits_old", "203.0.113.7", "203.0.113.7") == 200
    assert third_stream_status(stack, "limits_old", "2001:db8:1:2::a", "2001:db8:1:2::b") == 200


@pytest.mark.parametrize(("site", "refused"), [("limits", True), ("limits_old", False)])
def test_requests_per_second_are_limited(stack: Stack, site: str, refused: bool) -> None:
    client = f"198.51.100.{1 if refused else 2}"
    statuses = [get(stack, site, "/api/health", client) for _ in range(8)]
    assert statuses[:4] == [200] * 4  # 1 + the burst of 3
    assert (429 in statuses[4:]) is refused
    assert get(stack, site, "/api/health", "198.51.100.99") == 200  # another client is not slowed


def closes_within(stack: Stack, site: str, seconds: float) -> bool:
    """Slowloris: request headers one byte at a time; True if nginx closes the connection in time."""
    sock = socket.create_connection(("127.0.0.1", stack.nginx(site).ports.http), timeout=0.3)
    start = time.monotonic()
    try:
        sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: pi\r\nX-Slow: ")
        while time.monotonic() - start < seconds:
            try:
                sock.sendall(b"a")
                if sock.recv(4096) == b"":
                    return True
            except TimeoutError:
                continue
            except OSError:
                return True
        return False
    finally:
        sock.close()


@pytest.mark.parametrize(("site", "closed"), [("limits", True), ("limits_old", False)])
def test_slow_headers_are_cut_at_the_header_timeout(stack: Stack, site: str, closed: bool) -> None:
    assert closes_within(stack, site, 3.0) is closed


class Recorder:
    """The upstream of the *_recorder sites: accepts, records what arrives, never answers."""

    def __init__(self, port: int) -> None:
        self.server = socket.create_server(("127.0.0.1", port))
        self.received: list[bytes] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            try:
                while data := conn.recv(65536):
                    with self.lock:
                        self.received.append(data)
            except OSError:
                return

    def seen(self) -> bytes:
        with self.lock:
            return b"".join(self.received)

    def clear(self) -> None:
        with self.lock:
            self.received.clear()


@pytest.fixture(scope="module")
def recorder(stack: Stack) -> Iterator[Recorder]:
    server = Recorder(stack.recorder_port)
    yield server
    server.server.close()


@pytest.mark.parametrize(("site", "buffered"), [("limits_recorder", True), ("limits_old_recorder", False)])
def test_a_slow_body_never_reaches_the_backend_until_it_is_whole(
    stack: Stack, recorder: Recorder, site: str, buffered: bool
) -> None:
    """Issue 13: 1,030 slow bodies each held a backend socket; buffered, the backend sees none of them."""
    recorder.clear()
    sock = socket.create_connection(("127.0.0.1", stack.nginx(site).ports.http), timeout=5)
    try:
        sock.sendall(b"POST /api/chat/message HTTP/1.1\r\nHost: pi\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100000\r\n\r\n" + b"x" * 100)
        time.sleep(0.6)  # within the body timeout: the client is still "sending"
        seen = recorder.seen()
    finally:
        sock.close()
    if buffered:
        assert seen == b"", seen[:200]
    else:
        assert seen.startswith(b"POST /api/chat/message"), seen[:200]


def test_a_chat_message_sent_by_get_stays_out_of_the_access_log(stack: Stack) -> None:
    server = stack.nginx("limits")
    get(stack, "limits", "/api/chat/message/stream?message=my-secret-words", "192.0.2.44")
    deadline = time.monotonic() + 5
    log = ""
    while "192.0.2.44" not in log and time.monotonic() < deadline:  # nginx writes the line when the request ends
        time.sleep(0.1)
        log = (server.prefix / "access.log").read_text()
    line = next(line for line in log.splitlines() if "192.0.2.44" in line)
    assert '"GET /api/chat/message/stream HTTP/1.1"' in line
    assert "my-secret-words" not in log
