"""Fixtures: backends started once per session, the Anthropic stand-in."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.backend.anthropic_standin import VALID_KEY, StandIn
from tests.backend.backend_harness import BackendProcess, Spawner


@pytest.fixture(scope="session")
def spawn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Spawner]:
    """Start backends (``spawn(**settings)``); all are stopped at session end."""
    started: list[BackendProcess] = []

    def _spawn(data_dir: Path | None = None, /, **settings: str) -> BackendProcess:
        base = tmp_path_factory.mktemp("backend")
        backend = BackendProcess(data_dir or base / "data", base / "backend.log", **settings)
        started.append(backend)
        return backend

    yield _spawn
    running = [b for b in started if b.proc is not None]
    for backend in running:  # signal all first, then wait: they stop in parallel
        for proc in (backend.proc, backend.worker):
            if proc is not None and proc.poll() is None:
                proc.terminate()
    for backend in running:
        with contextlib.suppress(subprocess.TimeoutExpired):
            backend.stop()


@pytest.fixture(scope="session")
def demo_backend(spawn: Spawner) -> BackendProcess:
    """Demo provider, 20 ms tokens, 0.2 s heartbeats, no probe or chat rate limit."""
    return (
        spawn(
            BACKEND_CHAT_RATE_PER_S="0",
            BACKEND_TOKEN_INTERVAL_MS="20",
            BACKEND_HEARTBEAT_S="0.2",
            BACKEND_SEND_TIMEOUT_S="2",
            BACKEND_PROBE_RATE_PER_S="0",
        )
        .start()
        .wait_ready()
    )


@pytest.fixture(scope="session")
def standin() -> Iterator[StandIn]:
    with StandIn() as server:
        yield server


@pytest.fixture(scope="session")
def anthropic_backend(spawn: Spawner, standin: StandIn) -> BackendProcess:
    """Anthropic provider against the stand-in, 1 s provider timeout, no retries."""
    return (
        spawn(
            BACKEND_PROVIDER="anthropic",
            ANTHROPIC_API_KEY=VALID_KEY,
            ANTHROPIC_BASE_URL=standin.base_url,
            ANTHROPIC_MODEL="claude-standin-1",
            ANTHROPIC_MAX_RETRIES="0",
            BACKEND_PROVIDER_TIMEOUT_S="1",
            BACKEND_HEARTBEAT_S="0.2",
        )
        .start()
        .wait_ready()
    )
