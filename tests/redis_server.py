"""A real redis-server for the backend's tests: loopback, a free port, a password, nothing on disk.

Its only user has the redis role's default ACL (every command but the ``@dangerous`` ones,
plus ``INFO``), so a backend that needed more would fail here first. Stdlib only: the
nginx suite (controller venv) and the backend suite (.venv-backend) both start one.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.testkit import free_port

# The redis role's default redis_acl_rules (roles/redis/defaults/main.yml).
ROLE_ACL = "~* &* +@all -@dangerous +info"
START_TIMEOUT_S = 10.0


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found is None:
        raise RuntimeError("redis-server is missing: the backend's tests need it (make deps, or apt-get install redis-server)")
    return found


class RedisServer:
    """``redis-server`` in a folder of its own; stop and start it again on the same port."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.password = secrets.token_hex(16)
        self.proc: subprocess.Popen[bytes] | None = None
        self.conf = folder / "redis.conf"
        self.conf.write_text(
            f"bind 127.0.0.1\nport {self.port}\nsave \"\"\nappendonly no\ndir {folder}\n"
            f"user default reset on >{self.password} {ROLE_ACL}\n"
        )

    def env(self) -> dict[str, str]:
        """The backend's settings for this server."""
        return {"BACKEND_REDIS_HOST": "127.0.0.1", "BACKEND_REDIS_PORT": str(self.port),
                "BACKEND_REDIS_PASSWORD": self.password}  # fmt: skip

    def start(self) -> RedisServer:
        with (self.folder / "redis.log").open("ab") as log:
            self.proc = subprocess.Popen([redis_server_binary(), str(self.conf)], stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start:\n{(self.folder / 'redis.log').read_text()}")
            time.sleep(0.02)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop it (SIGKILL: at once, as a crash) and wait until it is gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def answers(self) -> bool:
        """True when it answers PING after AUTH with the password."""
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
            sock.sendall(f"AUTH {self.password}\r\nPING\r\n".encode())
            reply = b""
            while reply.count(b"\r\n") < 2:
                data = sock.recv(256)
                if not data:
                    break
                reply += data
            return reply == b"+OK\r\n+PONG\r\n"
        return False
