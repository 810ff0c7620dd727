"""Fixtures: the real backend, one real nginx per case (the role's templates rendered by Ansible), Chromium.

Everything runs on 127.0.0.1 with free ports and is stopped at the end of the
session. Run as root (nginx's workers run as root so they can use the private
temp paths); the system nginx service is not touched.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.nginx.browser_harness import PAGE, Collector, find_chromium
from tests.nginx.nginx_cases import CLASSIC_WRONG_PORT, catalogue
from tests.nginx.nginx_harness import ANSIBLE_PLAYBOOK, NGINX, Backend, Stack, make_certificate, port_is_closed, running
from tests.testkit import free_port


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The backend and every site of nginx_cases, started once for the session."""
    if not Path(NGINX).exists():
        pytest.skip(f"{NGINX} is missing (Debian's nginx package)")
    if not ANSIBLE_PLAYBOOK.exists():
        pytest.fail(f"{ANSIBLE_PLAYBOOK} is missing: run `make venv`")
    workdir = tmp_path_factory.mktemp("nginx-suite")
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed for the test certificate (the role serves HTTPS by default)")
    tls = make_certificate(workdir)
    # The classic wrong port, unless something happens to listen there on this machine.
    wrong_port = CLASSIC_WRONG_PORT if port_is_closed(CLASSIC_WRONG_PORT) else free_port()
    recorder_port = free_port()  # tests/nginx/test_nginx_limits.py listens there
    resume_port = free_port()  # tests/nginx/test_nginx_resume.py's stand-in for resumable replies listens there
    sites = catalogue(wrong_port, recorder_port, resume_port)
    backend = Backend(
        workdir / "backend",
        BACKEND_PROBE_RATE_PER_S="0",  # every check comes from 127.0.0.1 through nginx
        BACKEND_AUTH="off",  # these tests are about streaming; tests/backend proves the token
        BACKEND_HEARTBEAT_S="15",  # the default: a probe's silence_ms is really silent
        BACKEND_GRACEFUL_SHUTDOWN_S="1",
        BACKEND_TOKEN_INTERVAL_MS="40",  # test_nginx_reconnect's chat reply lasts ~7 s at this pace
    ).start()
    try:
        # The backend boots while Ansible renders the sites.
        with running(sites, backend.port, workdir, tls, PAGE) as servers:
            backend.wait_ready()
            yield Stack(backend, servers, tls, wrong_port, workdir, recorder_port, resume_port)
    finally:
        backend.stop()


@pytest.fixture(scope="session")
def chromium() -> str:
    found = find_chromium()
    if found is None:
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    return found


@pytest.fixture(scope="session")
def collector() -> Iterator[Collector]:
    with Collector() as running_collector:
        yield running_collector
