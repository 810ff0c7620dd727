"""Fixtures for the stream check tests: live SSE servers on 127.0.0.1 (plain and TLS)."""

from __future__ import annotations

import shutil
import socket
import ssl
from collections.abc import Iterator

import pytest

from tests.stream_check.stream_check_server import TLS_NAME, SseServer, TlsServer
from tests.testkit import self_signed_certificate


@pytest.fixture(scope="session")
def server() -> Iterator[SseServer]:
    """A threaded plain-HTTP SSE server shared by the session (see stream_check_server)."""
    with SseServer() as running:
        yield running


@pytest.fixture(scope="session")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsServer]:
    """The same server behind TLS with a throw-away certificate valid only for pi5.test."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = self_signed_certificate(folder, TLS_NAME, openssl)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    with SseServer(tls=context) as running:
        yield TlsServer(running, str(cert))


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
