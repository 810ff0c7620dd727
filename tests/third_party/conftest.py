"""One stack of third-party servers and proxies for the session (harness.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.third_party.harness import Stack, missing_binaries, running


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    missing = missing_binaries()
    if missing:
        message = f"missing: {', '.join(missing)} (bash scripts/install-host-deps.sh; make unit runs npm ci)"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI installs them: a missing one is a broken setup, not a reason to skip
        pytest.skip(message)
    with running(tmp_path_factory.mktemp("third-party")) as started:
        yield started
