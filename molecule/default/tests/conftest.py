"""Shared fixtures for the simulated-Pi tests (run by molecule's testinfra verifier)."""
from __future__ import annotations

import json
from typing import Any

import pytest


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
