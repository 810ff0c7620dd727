"""Run the real backend for tests, on free loopback ports, with a real Redis of its own.

Most tests run it exactly as the containers do (``python -m app`` and
``python -m app.worker`` in subprocesses, a redis-server beside them) and talk
to it over raw sockets. A few run it in-process (the same uvicorn server class
and worker, each in a thread of its own) to inject a fake provider or to
shrink the server's socket buffers.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import tempfile
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
from app.worker import Worker, build_worker, serve
from tests.redis_server import RedisServer
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
    """The backend as its two containers run it: ``python -m app`` (the API, on ``port``) and
    ``python -m app.worker``, beside a redis-server of their own."""

    def __init__(self, data_dir: Path, log_path: Path, **settings: str) -> None:
        self.port = free_port()
        self.data_dir = data_dir
        self.log_path = log_path
        self.worker_log_path = log_path.with_name("worker.log")
        self.redis = RedisServer(log_path.parent / "redis")
        self.env = clean_env(
            {
                "BACKEND_HOST": "127.0.0.1",
                "BACKEND_PORT": str(self.port),
                "BACKEND_DATA_DIR": str(data_dir),
                **self.redis.env(),
                **settings,
            }
        )
        self.proc: subprocess.Popen[bytes] | None = None  # the API
        self.worker: subprocess.Popen[bytes] | None = None

    def start(self) -> BackendProcess:
        """Redis (unless it runs), the worker and the API."""
        if self.redis.proc is None or self.redis.proc.poll() is not None:
            self.redis.start()
        self.start_worker()
        return self.start_api()

    def start_api(self) -> BackendProcess:
        self.proc = self._run("app", self.log_path)
        return self

    def start_worker(self) -> BackendProcess:
        self.worker = self._run("app.worker", self.worker_log_path)
        return self

    def _run(self, module: str, log_path: Path) -> subprocess.Popen[bytes]:
        with log_path.open("ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", module],
                cwd=BACKEND_DIR,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def wait_ready(self) -> BackendProcess:
        assert self.proc is not None
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            for name, proc in (("backend", self.proc), ("worker", self.worker)):
                if proc is not None and proc.poll() is not None:
                    pytest.fail(f"{name} exited with {proc.returncode}:\n{self.log()}")
            try:
                url = f"http://127.0.0.1:{self.port}/api/health"
                with urllib.request.urlopen(url, timeout=1) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.05)
        pytest.fail(f"backend did not answer /api/health in {STARTUP_TIMEOUT_S}s:\n{self.log()}")

    def log(self) -> str:
        """The API's log, then the worker's."""
        logs = (path.read_text(errors="replace") for path in (self.log_path, self.worker_log_path) if path.exists())
        return "\n".join(logs)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM (what docker stop sends) to the API, then the worker and Redis; the API's exit code."""
        assert self.proc is not None
        try:
            return stop_process(self.proc, timeout)
        finally:  # a hung API (TimeoutExpired) must not leave the worker and Redis behind
            try:
                if self.worker is not None:
                    stop_process(self.worker, timeout)
            finally:
                self.redis.stop()


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    """SIGTERM, then wait; SIGKILL after ``timeout`` (and TimeoutExpired raised)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


@contextlib.contextmanager
def inprocess_backend(
    settings: Settings, provider: Provider | None = None, *, sndbuf: int | None = None
) -> Iterator[int]:
    """Serve create_app(settings) with the production server class in a thread, and a worker
    (``provider`` overriding the settings' one) in another, on a new Redis; ``sndbuf``
    shrinks the send buffer of accepted sockets. Yields the API's port."""
    with tempfile.TemporaryDirectory(prefix="redis-") as folder:
        redis = RedisServer(Path(folder)).start()
        settings = dataclasses.replace(settings, redis_port=redis.port, redis_password=redis.password)
        try:
            with _worker_thread(build_worker(settings, provider)), _server_thread(settings, sndbuf) as port:
                yield port
        finally:
            redis.stop()


@contextlib.contextmanager
def _worker_thread(worker: Worker) -> Iterator[None]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(serve(worker),), daemon=True)
    thread.start()
    try:
        yield
    finally:
        loop.call_soon_threadsafe(worker.stop)
        thread.join(15)
        loop.close()


@contextlib.contextmanager
def _server_thread(settings: Settings, sndbuf: int | None) -> Iterator[int]:
    server = build_server(settings, create_app(settings))
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
