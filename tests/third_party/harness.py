"""Third-party SSE servers and reverse proxies from Debian, on 127.0.0.1, started once for the session.

Servers (each event's ``id`` carries the wall-clock ns it was written at; recorder.py reads it):
  node       Node.js ``http`` (server.js), with and without the ``compression`` middleware
  starlette  sse-starlette under uvicorn (starlette_app.py)
  flask      Flask under gunicorn, gthread workers (flask_app.py)

Proxies, each in front of node's /ms (it sends no Server header, so the proxy's own shows), in the
configuration it ships with and in one that changes its buffering:
  haproxy    default | ``option http-no-delay`` | ``http-response wait-for-body``
  apache     mod_proxy_http default | ModSecurity ``SecResponseBodyAccess On`` for text/event-stream
  lighttpd   default | ``server.stream-response-body = 2``
  caddy      default | ``buffer_responses``
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tests.testkit import free_port

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
NODE_DIR = HERE / "node"
VENV_BIN = REPO / ".venv" / "bin"
APACHE_MODULES = Path("/usr/lib/apache2/modules")
STARTUP_S = 20.0

BINARIES: Mapping[str, str] = {
    "node": "node",
    "haproxy": "haproxy",
    "apache": "apache2",
    "lighttpd": "lighttpd",
    "caddy": "caddy",
}


def missing_binaries() -> list[str]:
    found = [name for name, command in BINARIES.items() if shutil.which(command) is None]
    if not (APACHE_MODULES / "mod_security2.so").exists():
        found.append("libapache2-mod-security2")
    if not (NODE_DIR / "node_modules" / "compression").exists():
        found.append("tests/third_party/node/node_modules (npm ci)")
    return found


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited {proc.returncode}: {log.read_text(errors='replace')[-2000:]}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{proc.args!r} did not listen on {port}: {log.read_text(errors='replace')[-2000:]}")


@dataclass
class Stack:
    """Every server and proxy, by name, as a base URL."""

    workdir: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    bases: dict[str, str] = field(default_factory=dict)

    def url(self, where: str, path: str) -> str:
        return self.bases[where] + path

    def start(self, name: str, argv: list[str], ports: list[int], cwd: Path = REPO, env: dict[str, str] | None = None) -> None:
        log = self.workdir / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                argv, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                start_new_session=True,  # its own process group: stopped as a group, by its id
            )
        self.procs.append(proc)
        for port in ports:
            _wait_for_port(port, proc, log)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _servers(stack: Stack) -> int:
    node, starlette, flask = free_port(), free_port(), free_port()
    stack.start("node", ["node", "server.js", str(node)], [node], cwd=NODE_DIR)
    stack.start(
        "starlette",
        [str(VENV_BIN / "python"), "-m", "uvicorn", "tests.third_party.starlette_app:app", "--host", "127.0.0.1",
         "--port", str(starlette), "--log-level", "warning"],
        [starlette],
    )
    stack.start(
        "flask",
        [str(VENV_BIN / "gunicorn"), "-k", "gthread", "--threads", "16", "-b", f"127.0.0.1:{flask}",
         "tests.third_party.flask_app:app"],
        [flask],
    )
    stack.bases.update(node=f"http://127.0.0.1:{node}", starlette=f"http://127.0.0.1:{starlette}",
                       flask=f"http://127.0.0.1:{flask}")
    return node


def _haproxy(stack: Stack, upstream: int) -> None:
    ports = {name: free_port() for name in ("haproxy", "haproxy_nodelay", "haproxy_waitbody")}
    extra = {"haproxy": "", "haproxy_nodelay": "    option http-no-delay\n",
             "haproxy_waitbody": "    http-response wait-for-body time 10s\n"}
    frontends = "".join(
        f"frontend {name}\n    bind 127.0.0.1:{port}\n{extra[name]}    default_backend node\n"
        for name, port in ports.items()
    )
    config = stack.workdir / "haproxy.cfg"
    config.write_text(
        "global\n    log stderr format raw local0 err\ndefaults\n    mode http\n    timeout connect 5s\n"
        f"    timeout client 60s\n    timeout server 60s\n{frontends}backend node\n    server node 127.0.0.1:{upstream}\n"
    )
    stack.start("haproxy", ["haproxy", "-db", "-f", str(config)], list(ports.values()))
    stack.bases.update({name: f"http://127.0.0.1:{port}" for name, port in ports.items()})


def _apache(stack: Stack, upstream: int) -> None:
    plain, modsec = free_port(), free_port()
    folder = stack.workdir / "apache"
    folder.mkdir(mode=0o777)
    folder.chmod(0o777)  # ModSecurity's data directory, written by the www-data workers
    modules = ["mpm_event", "authz_core", "proxy", "proxy_http", "mime", "unique_id", "security2"]
    loads = "".join(f"LoadModule {name}_module {APACHE_MODULES}/mod_{name}.so\n" for name in modules)
    (folder / "httpd.conf").write_text(
        f'ServerRoot "/etc/apache2"\nDefaultRuntimeDir {folder}\nPidFile {folder}/httpd.pid\n'
        f"ErrorLog {folder}/error.log\nTypesConfig /etc/mime.types\n{loads}User www-data\nGroup www-data\n"
        f"ServerName localhost\nListen 127.0.0.1:{plain}\nListen 127.0.0.1:{modsec}\nSecDataDir {folder}\n"
        f"<VirtualHost 127.0.0.1:{plain}>\n    ProxyPass / http://127.0.0.1:{upstream}/\n</VirtualHost>\n"
        f"<VirtualHost 127.0.0.1:{modsec}>\n    SecRuleEngine On\n    SecResponseBodyAccess On\n"
        f"    SecResponseBodyMimeType text/event-stream\n    ProxyPass / http://127.0.0.1:{upstream}/\n</VirtualHost>\n"
    )
    stack.start("apache", ["apache2", "-X", "-f", str(folder / "httpd.conf")], [plain, modsec])
    stack.bases.update(apache=f"http://127.0.0.1:{plain}", apache_modsecurity=f"http://127.0.0.1:{modsec}")


def _lighttpd(stack: Stack, upstream: int) -> None:
    for name, extra in (("lighttpd", ""), ("lighttpd_stream", "server.stream-response-body = 2\n")):
        port = free_port()
        folder = stack.workdir / name
        folder.mkdir()
        (folder / "lighttpd.conf").write_text(
            f'server.document-root = "{folder}"\nserver.bind = "127.0.0.1"\nserver.port = {port}\n'
            f'server.modules += ("mod_proxy")\nserver.errorlog = "{folder}/error.log"\n{extra}'
            f'proxy.server = ("" => (("host" => "127.0.0.1", "port" => {upstream})))\n'
        )
        stack.start(name, ["lighttpd", "-D", "-f", str(folder / "lighttpd.conf")], [port])
        stack.bases[name] = f"http://127.0.0.1:{port}"


def _caddy(stack: Stack, upstream: int) -> None:
    plain, buffered = free_port(), free_port()
    folder = stack.workdir / "caddy"
    folder.mkdir()
    caddyfile = folder / "Caddyfile"
    caddyfile.write_text(
        "{\n\tadmin off\n\tauto_https off\n}\n"
        f"http://127.0.0.1:{plain} {{\n\treverse_proxy 127.0.0.1:{upstream}\n}}\n"
        f"http://127.0.0.1:{buffered} {{\n\treverse_proxy 127.0.0.1:{upstream} {{\n\t\tbuffer_responses\n\t}}\n}}\n"
    )
    home = {"HOME": str(folder), "XDG_DATA_HOME": str(folder), "XDG_CONFIG_HOME": str(folder)}
    stack.start("caddy", ["caddy", "run", "--config", str(caddyfile), "--adapter", "caddyfile"], [plain, buffered],
                env=home)
    stack.bases.update(caddy=f"http://127.0.0.1:{plain}", caddy_buffered=f"http://127.0.0.1:{buffered}")


@contextlib.contextmanager
def running(workdir: Path) -> Iterator[Stack]:
    stack = Stack(workdir)
    try:
        upstream = _servers(stack)
        _haproxy(stack, upstream)
        _apache(stack, upstream)
        _lighttpd(stack, upstream)
        _caddy(stack, upstream)
        yield stack
    finally:
        stack.stop()
