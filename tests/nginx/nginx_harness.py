"""Real nginx and the real backend on 127.0.0.1, for the stream check's nginx suite.

- :class:`Backend`: ``files/backend`` run as ``python -m app`` and ``python -m app.worker`` from
  ``.venv-backend``, with a redis-server of its own.
- :func:`render_sites`: the nginx role's ``streaming-site.conf.j2`` and
  ``nginx.conf.j2`` rendered by ``ansible-playbook`` (``render_sites.yml``),
  one run for every case.
- :class:`Site` / :class:`Nginx`: one nginx master per case, in its own prefix:
  the role's rendered nginx.conf with only its /etc, /run and /var paths moved.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.redis_server import RedisServer
from tests.testkit import free_port, self_signed_certificate

REPO = Path(__file__).resolve().parents[2]

BACKEND_DIR = REPO / "files" / "backend"
BACKEND_PYTHON = REPO / ".venv-backend" / "bin" / "python"
ANSIBLE_PLAYBOOK = REPO / ".venv" / "bin" / "ansible-playbook"
RENDER_PLAYBOOK = Path(__file__).resolve().parent / "render_sites.yml"
NGINX = "/usr/sbin/nginx"
TLS_NAME = "pi5.test"
STARTUP_TIMEOUT_S = 20.0



def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports (all held open while choosing, so none repeats)."""
    with contextlib.ExitStack() as held:
        ports = []
        for _ in range(count):
            sock = held.enter_context(socket.socket())
            sock.bind(("127.0.0.1", 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def port_is_closed(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def read_log(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else "(no log)"


def stop(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM a process we started (it leads its own process group), SIGKILL the group if it hangs."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def executable(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} is not installed")
    return found


def nginx_version() -> str:
    """What the role's install.yml reads with ``nginx -v`` (its HTTP/2 syntax depends on it)."""
    out = subprocess.run([NGINX, "-v"], capture_output=True, text=True, check=True).stderr
    match = re.search(r"nginx/([0-9.]+)", out)
    if match is None:
        raise RuntimeError(f"cannot read the nginx version from {out!r}")
    return match.group(1)


# --------------------------------------------------------------------------
# The backend
# --------------------------------------------------------------------------


class Backend:
    """The reference backend as the containers run it: ``python -m app`` (the API) and
    ``python -m app.worker`` in ``files/backend``, beside a redis-server of their own."""

    def __init__(self, folder: Path, **settings: str) -> None:
        self.port = free_port()
        self.log_path = folder / "backend.log"
        self.worker_log_path = folder / "worker.log"
        self.redis = RedisServer(folder / "redis")
        data = folder / "data"
        data.mkdir(parents=True, exist_ok=True)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("BACKEND_", "ANTHROPIC_"))}
        self.env.update(
            {
                "PYTHONDONTWRITEBYTECODE": "1",  # keep files/backend (the image's build context) clean
                "BACKEND_HOST": "127.0.0.1",
                "BACKEND_PORT": str(self.port),
                "BACKEND_DATA_DIR": str(data),
                **self.redis.env(),
                **settings,
            }
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.worker: subprocess.Popen[bytes] | None = None

    def start(self) -> Backend:
        """Start it (after making sure .venv-backend is current); :meth:`wait_ready` waits for it."""
        venv = subprocess.run(
            [executable("bash"), str(REPO / "scripts" / "backend-venv.sh")], capture_output=True, text=True, check=False
        )
        if venv.returncode != 0:
            raise RuntimeError(f"scripts/backend-venv.sh failed:\n{venv.stdout}{venv.stderr}")
        self.redis.start()
        self.worker = self._run("app.worker", self.worker_log_path)
        self.proc = self._run("app", self.log_path)
        return self

    def _run(self, module: str, log_path: Path) -> subprocess.Popen[bytes]:
        with log_path.open("ab") as log:
            return subprocess.Popen(
                [str(BACKEND_PYTHON), "-m", module],
                cwd=BACKEND_DIR,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self) -> Backend:
        assert self.proc is not None, "start() first"
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            for name, proc, log in (("backend", self.proc, self.log_path), ("worker", self.worker, self.worker_log_path)):
                if proc is not None and proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}:\n{read_log(log)}")
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(self.url("/api/health"), timeout=1) as response,
            ):
                if response.status == 200:
                    return self
            time.sleep(0.05)
        raise RuntimeError(f"backend did not answer /api/health in {STARTUP_TIMEOUT_S:g} s:\n{read_log(self.log_path)}")

    def restart_api(self) -> float:
        """Stop the API (SIGTERM, as ``docker restart`` does) and start it again, Redis and the
        worker left running; the seconds from the signal until it answers again."""
        assert self.proc is not None, "start() first"
        began = time.monotonic()
        stop(self.proc)
        self.proc = self._run("app", self.log_path)
        self.wait_ready()
        return time.monotonic() - began

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def stop(self) -> None:
        for proc in (self.proc, self.worker):
            if proc is not None:
                stop(proc)
        self.redis.stop()


# --------------------------------------------------------------------------
# Sites: the role's templates, rendered by Ansible, plus the case's variant
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Site:
    """One nginx under test: the role's templates with a case's variables and (rarely) edits.

    ``overrides`` are role variables (what an inventory could set). What the
    templates cannot express goes in ``edits`` (exact text replacements in the
    rendered site, each of which must match) or ``http`` (directives added to
    the ``http {}`` block where the role's nginx.conf includes conf.d). All
    three may say ``{prefix}`` for the instance's private directory. ``why``
    names the real-world misconfiguration the site reproduces.
    """

    name: str
    why: str
    overrides: Mapping[str, object] = field(default_factory=dict)
    edits: tuple[tuple[str, str], ...] = ()
    http: str = ""
    page: bool = False  # also serve the browser test's page at /stream-page.html
    files: Mapping[str, str] = field(default_factory=dict)  # written into the prefix before nginx starts

    @property
    def revision(self) -> str:
        return f"case-{self.name}"


@dataclass(frozen=True)
class TlsFiles:
    cert: str
    key: str


def make_certificate(folder: Path) -> TlsFiles:
    """A throw-away self-signed certificate valid only for ``TLS_NAME`` (given to the role as its files)."""
    cert, key = self_signed_certificate(folder, TLS_NAME, executable("openssl"))
    return TlsFiles(str(cert), str(key))


@dataclass(frozen=True)
class Ports:
    http: int
    https: int


@dataclass(frozen=True)
class Rendered:
    site: str  # streaming-site.conf.j2
    main: str  # nginx.conf.j2


def _with_prefix(value: object, prefix: Path) -> object:
    return value.replace("{prefix}", str(prefix)) if isinstance(value, str) else value


def render_sites(
    sites: Sequence[Site],
    *,
    ports: Mapping[str, Ports],
    prefixes: Mapping[str, Path],
    backend_port: int,
    tls: TlsFiles,
    folder: Path,
) -> dict[str, Rendered]:
    """Render the role's two templates for every site with ansible-playbook, in ONE run."""
    folder.mkdir(parents=True, exist_ok=True)
    for site in sites:
        variables = {
            # What the inventory's group_vars set once for the backend and nginx.
            "backend_port": backend_port,
            "nginx_http_port": ports[site.name].http,
            "nginx_https_port": ports[site.name].https,
            "nginx_listen_ipv6": False,
            "nginx_site_revision": site.revision,
            # The role's "files" TLS source (e.g. certbot's files), here the session's test certificate.
            "nginx_tls_certificate_file": tls.cert,
            "nginx_tls_key_file": tls.key,
            **{key: _with_prefix(value, prefixes[site.name]) for key, value in site.overrides.items()},
        }
        (folder / f"{site.name}.json").write_text(json.dumps(variables))
    inventory = {
        "all": {
            "hosts": {site.name: {} for site in sites},
            "vars": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable},
        }
    }
    (folder / "inventory.json").write_text(json.dumps(inventory))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(
        {
            "ANSIBLE_CONFIG": str(folder / "none.cfg"),  # not the repo's: nothing but this inventory
            "ANSIBLE_FORKS": str(min(len(sites), 10)),
            "ANSIBLE_LOCAL_TEMP": str(folder / "tmp"),
            "ANSIBLE_NOCOLOR": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
    )
    extra = {"repo": str(REPO), "case_dir": str(folder), "nginx_version": nginx_version()}
    argv = [str(ANSIBLE_PLAYBOOK), "-i", str(folder / "inventory.json"), str(RENDER_PLAYBOOK), "-e", json.dumps(extra)]
    run = subprocess.run(argv, cwd=folder, env=env, capture_output=True, text=True, check=False)
    if run.returncode != 0:
        raise RuntimeError(f"ansible-playbook failed ({run.returncode}):\n{run.stdout}\n{run.stderr}")
    rendered = json.loads((folder / "rendered.json").read_text())
    return {site.name: Rendered(str(rendered[site.name]["site"]), str(rendered[site.name]["main"])) for site in sites}


def apply_edits(text: str, edits: Sequence[tuple[str, str]], name: str) -> str:
    for old, new in edits:
        if old not in text:
            raise AssertionError(f"{name}: the rendered template no longer contains {old!r}")
        text = text.replace(old, new)
    return text


PAGE_LOCATION = """\
    # Test only: the browser test's page, same origin as the stream.
    location = /stream-page.html {{
        alias {page};
        default_type text/html;
    }}

    location / {{"""


def main_conf(rendered: str, prefix: Path, site_file: Path, http: str) -> str:
    """The role's rendered nginx.conf, moved into a private prefix.

    Only what ties it to /etc, /run and /var changes; every http-level setting
    the role ships (sendfile, tcp_nopush, gzip and its types...) stays.
    """
    kinds = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    temps = "".join(f"    {kind}_temp_path {prefix / 'temp' / kind};\n" for kind in kinds)
    extra = f"    # The case's http-level settings (what a conf.d file would add).\n{http}" if http else ""
    edits = [
        ("user www-data;", "daemon off;\nuser root;"),
        ("worker_processes auto;", "worker_processes 1;"),
        ("pid /run/nginx.pid;", f"pid {prefix / 'nginx.pid'};"),
        ("error_log /var/log/nginx/error.log;", f"error_log {prefix / 'error.log'} info;"),
        ("include /etc/nginx/modules-enabled/*.conf;\n", ""),
        ("access_log /var/log/nginx/access.log pi5_no_query;", f"access_log {prefix / 'access.log'} pi5_no_query;\n{temps}"),
        ("    include /etc/nginx/conf.d/*.conf;\n", extra),
        ("include /etc/nginx/sites-enabled/*;", f"include {site_file};"),
    ]
    return apply_edits(rendered, edits, "nginx.conf")


class Nginx:
    """One nginx master for one site, in its own prefix; ``daemon off`` so we own the process."""

    def __init__(
        self, site: Site, *, ports: Ports, rendered: Rendered, prefix: Path, tls: TlsFiles, page: Path
    ) -> None:
        self.site = site
        self.ports = ports
        self.prefix = prefix
        self.tls = tls
        prefix.mkdir(parents=True, exist_ok=True)
        (prefix / "temp").mkdir(exist_ok=True)
        for relative, content in site.files.items():
            (prefix / relative).parent.mkdir(parents=True, exist_ok=True)
            (prefix / relative).write_text(content)
        edits = [(old, str(_with_prefix(new, prefix))) for old, new in site.edits]
        if site.page:
            edits.append(("    location / {", PAGE_LOCATION.format(page=page)))
        self.site_text = apply_edits(rendered.site, edits, f"site {site.name}")
        # What was rendered decides how to reach it: the role's TLS server, or plain HTTP.
        self.is_tls = f"listen {ports.https} ssl" in self.site_text
        site_file = prefix / "site.conf"
        site_file.write_text(self.site_text)
        self.conf = prefix / "nginx.conf"
        self.conf.write_text(main_conf(rendered.main, prefix, site_file, str(_with_prefix(site.http, prefix))))
        self.proc: subprocess.Popen[bytes] | None = None
        self.output = prefix / "nginx.out"

    def start(self) -> Nginx:
        with self.output.open("ab") as out:
            self.proc = subprocess.Popen(
                [NGINX, "-p", str(self.prefix), "-c", str(self.conf)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def wait(self) -> Nginx:
        assert self.proc is not None, "start() first"
        port = self.ports.https if self.is_tls else self.ports.http
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"nginx for {self.site.name} exited with {self.proc.returncode}:\n{read_log(self.output)}"
                )
            if not port_is_closed(port):
                return self
            time.sleep(0.02)
        raise RuntimeError(f"nginx for {self.site.name} did not listen on {port}:\n{read_log(self.output)}")

    def url(self, path: str) -> str:
        """Where a browser reaches the site: HTTPS by name when the role rendered TLS, else plain HTTP."""
        if self.is_tls:
            return f"https://{TLS_NAME}:{self.ports.https}{path}"
        return self.plain_url(path)

    def plain_url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.ports.http}{path}"

    @property
    def resolve(self) -> tuple[str, ...]:
        return (f"{TLS_NAME}:{self.ports.https}:127.0.0.1",) if self.is_tls else ()

    @property
    def cacert(self) -> str | None:
        return self.tls.cert if self.is_tls else None

    def reload(self) -> None:
        """``nginx -s reload``: SIGHUP to our master; the old workers finish their connections."""
        assert self.proc is not None and self.proc.poll() is None
        os.kill(self.proc.pid, signal.SIGHUP)

    def error_log(self) -> str:
        return read_log(self.prefix / "error.log")

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)


@dataclass(frozen=True)
class Stack:
    """What the session fixture ``stack`` yields."""

    backend: Backend
    servers: dict[str, Nginx]
    tls: TlsFiles
    wrong_port: int  # the upstream port of wrong_upstream_port (8000 unless in use here)
    workdir: Path
    recorder_port: int = 0  # the upstream port of the limits_*recorder sites
    resume_port: int = 0  # the upstream port of the resume_* sites

    def nginx(self, name: str) -> Nginx:
        server = self.servers.get(name)
        if server is None:
            pytest.fail(f"no site {name} in nginx_cases")
        return server


@contextlib.contextmanager
def running(
    sites: Sequence[Site], backend_port: int, folder: Path, tls: TlsFiles, page: Path
) -> Iterator[dict[str, Nginx]]:
    """Render all sites in one Ansible run, start one nginx per site (in parallel), stop them all."""
    names = [site.name for site in sites]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate site names: {names}")
    numbers = free_ports(2 * len(sites))
    ports = {site.name: Ports(numbers[2 * i], numbers[2 * i + 1]) for i, site in enumerate(sites)}
    prefixes = {site.name: folder / site.name for site in sites}
    rendered = render_sites(
        sites, ports=ports, prefixes=prefixes, backend_port=backend_port, tls=tls, folder=folder / "rendered"
    )
    servers = {
        site.name: Nginx(
            site, ports=ports[site.name], rendered=rendered[site.name], prefix=prefixes[site.name], tls=tls, page=page
        )
        for site in sites
    }
    try:
        for server in servers.values():
            server.start()
        for server in servers.values():
            server.wait()
        yield servers
    finally:
        for server in servers.values():  # signal all, then wait: they stop in parallel
            if server.proc is not None and server.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(server.proc.pid, signal.SIGTERM)
        for server in servers.values():
            server.stop()
