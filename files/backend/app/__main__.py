"""Entry point: ``python -m app`` reads settings from the environment and serves.

With BACKEND_PROCESSES above 1 this process binds that many SO_REUSEPORT sockets on the
one address and listens on them, forks a server per socket and supervises them:
SIGTERM/SIGINT are passed on (each server ends its streams and drains within
BACKEND_GRACEFUL_SHUTDOWN_S), and a server that dies is replaced on the same socket, whose
waiting connections it then accepts (the socket stays open here, so none is refused).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import time
from types import FrameType

from .main import create_app
from .server import build_server, configure_logging, load_settings, reuse_port_socket
from .settings import Settings

log = logging.getLogger("app")

RESTART_PAUSE_S = 1.0  # between a server's death and its replacement: no tight crash loop
BACKLOG = 2048  # uvicorn's default; connections wait there while their server starts


def main() -> int:
    settings = load_settings()
    if settings is None:
        return 2
    configure_logging(settings.log_level)
    if settings.processes == 1:
        return serve(settings)
    try:
        sockets = [reuse_port_socket(settings.host, settings.port) for _ in range(settings.processes)]
        for sock in sockets:  # all in the kernel's group before any server runs: none is skipped
            sock.listen(BACKLOG)
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", settings.host, settings.port, exc)
        return 1
    return supervise(settings, sockets)


def serve(settings: Settings, sock: socket.socket | None = None) -> int:
    server = build_server(settings, create_app(settings))
    server.run(sockets=None if sock is None else [sock])
    return 0 if server.started else 1


def supervise(settings: Settings, sockets: list[socket.socket]) -> int:
    children: dict[int, int] = {}  # pid -> index of its socket
    stopping = False

    def start(index: int) -> None:
        pid = os.fork()
        if pid == 0:  # the server: uvicorn installs its own signal handlers
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            code = 1
            try:
                code = serve(settings, sockets[index])
            finally:
                os._exit(code)
        children[pid] = index

    def forward(signum: int, _: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for pid in children:
            os.kill(pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for index in range(len(sockets)):
        start(index)
    log.info("serving on %s:%d with %d processes", settings.host, settings.port, len(sockets))
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        index = children.pop(pid)
        if not stopping:
            log.warning("server process %d ended (status %d); starting another", pid, status)
            time.sleep(RESTART_PAUSE_S)
            if not stopping:
                start(index)
    return 0


if __name__ == "__main__":
    sys.exit(main())
