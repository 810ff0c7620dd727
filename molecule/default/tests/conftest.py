"""Shared fixtures for the simulated-Pi tests (run by molecule's testinfra verifier)."""
from __future__ import annotations

import json
from typing import Any

import pytest

BACKEND_PORT = 7776  # the product's contract: the backend is on 127.0.0.1:7776
PROBE = "/api/probe/stream?tokens=20&interval_ms=50"
CERT = "/etc/nginx/pi5-tls/cert.pem"  # the self-signed certificate the nginx role makes


@pytest.fixture
def backend_inspect(host: Any) -> dict[str, Any]:
    """`docker inspect` of the backend container, as the Pi's root sees it."""
    out = host.check_output("docker inspect backend")
    return json.loads(out)[0]  # type: ignore[no-any-return]


@pytest.fixture
def nginx_t(host: Any) -> str:
    """The effective nginx configuration (`nginx -T`), not the files on disk."""
    with host.sudo():
        return host.check_output("nginx -T 2>/dev/null")  # type: ignore[no-any-return]
