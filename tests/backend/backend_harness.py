"""Run the real backend for tests, on free loopback ports.

Most tests run it exactly as the image does (``python -m app`` in a
subprocess) and talk to it over raw sockets. A few run it in-process (same
uvicorn server class, own thread) to inject a fake provider or to shrink the
server's socket buffers.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Protocol

import pytest

from app.main import create_app
from app.providers import Provider
from app.server import build_server
from app.settings import Settings
from tests.testkit import free_port

BACKEND_DIR = Path(__file__).resolve().parents[2] / "files" / "backend"

STARTUP_TIMEOUT_S = 20.0



def clean_env(overrides: Mapping[str, str]) -> dict[str, str]:
    """The test process's env minus backend/Anthropic settings, plus overrides."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BACKEND_", "ANTHROPIC_"))}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    if "BACKEND_AUTH_TOKEN" not in overrides:
        env["BACKEND_AUTH"] = "off"  # the tests of auth itself set a token
    env.update(overrides)
    return env


class Spawner(Protocol):
    """The ``spawn`` fixture: a backend process for these settings (not started)."""

    def __call__(self, data_dir: Path | None = None, /, **settings: str) -> BackendProcess: ...


class BackendProcess:
    """``python -m app`` in a subprocess, as the container runs it."""

    def __init__(self, data_dir: Path, log_path: Path, **settings: str) -> None:
        self.port = free_port()
        self.data_dir = data_dir
        self.log_path = log_path
        self.env = clean_env(
            {
                "BACKEND_HOST": "127.0.0.1",
                "BACKEND_PORT": str(self.port),
                "BACKEND_DATA_DIR": str(data_dir),
                **settings,
            }
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> BackendProcess:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "app"],
                cwd=BACKEND_DIR,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def wait_ready(self) -> BackendProcess:
        assert self.proc is not None
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"backend exited with {self.proc.returncode}:\n{self.log()}")
            try:
                url = f"http://127.0.0.1:{self.port}/api/health"
                with urllib.request.urlopen(url, timeout=1) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.05)
        pytest.fail(f"backend did not answer /api/health in {STARTUP_TIMEOUT_S}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM (what docker stop sends), then wait; returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise


@contextlib.contextmanager
def inprocess_backend(
    settings: Settings, provider: Provider | None = None, *, sndbuf: int | None = None
) -> Iterator[int]:
    """Serve create_app(settings, provider) with the production server class in a
    thread; ``sndbuf`` shrinks the send buffer of accepted sockets. Yields the port."""
    app = create_app(settings, provider)
    server = build_server(settings, app)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if sndbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)  # inherited on accept
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not server.started:
        assert thread.is_alive(), "in-process server thread died"
        assert time.monotonic() < deadline, "in-process server did not start"
        time.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()
