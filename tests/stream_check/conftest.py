"""Fixtures for the stream check tests: live SSE servers on 127.0.0.1 (plain and TLS)."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
from collections.abc import Iterator

import pytest

import stream_check_helpers  # noqa: F401  (first: puts the in-repo collection on sys.path)
from stream_check_server import TLS_NAME, SseServer, TlsServer


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
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "2",
            "-subj",
            f"/CN={TLS_NAME}",
            "-addext",
            f"subjectAltName=DNS:{TLS_NAME}",
        ],
        check=True,
        capture_output=True,
    )
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
