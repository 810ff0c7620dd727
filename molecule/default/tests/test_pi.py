"""What a person would check by hand on a freshly provisioned Pi.

Each test fails on a real regression: a stopped service, a backend reachable
from the LAN, a wrong port, nginx buffering the stream, a broken config live.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from conftest import BACKEND_PORT, PROBE

PROJECT = Path(os.environ.get("MOLECULE_PROJECT_DIRECTORY", Path(__file__).parents[3]))


def stream_check(host: Any, url: str) -> dict[str, Any]:
    """Run the project's stream check module on the Pi; return its result, failed or not."""
    result = host.ansible("pi5.streaming.stream_check", f"url={url}", check=False, become=True)
    return result  # type: ignore[no-any-return]


# --- Docker -----------------------------------------------------------------

def test_docker_engine_is_enabled_and_running(host: Any) -> None:
    docker = host.service("docker")
    assert docker.is_enabled
    assert docker.is_running


def test_container_logs_are_rotated(host: Any) -> None:
    daemon = json.loads(host.file("/etc/docker/daemon.json").content_string)
    assert daemon["log-driver"] == "json-file"
    assert daemon["log-opts"]["max-size"] == "10m"
    assert int(daemon["log-opts"]["max-file"]) >= 1


def test_deploy_user_may_use_docker(host: Any) -> None:
    assert "docker" in host.user("pi").groups


# --- Backend ----------------------------------------------------------------

def test_backend_container_is_hardened_and_restarts(backend_inspect: dict[str, Any]) -> None:
    config, hostcfg = backend_inspect["Config"], backend_inspect["HostConfig"]
    assert backend_inspect["State"]["Running"]
    assert hostcfg["RestartPolicy"]["Name"] == "unless-stopped"
    assert config["User"] not in ("", "0", "root", "0:0")
    assert hostcfg["ReadonlyRootfs"] is True
    assert hostcfg["Memory"] > 0


def test_backend_is_published_on_loopback_7776_only(backend_inspect: dict[str, Any]) -> None:
    bindings = backend_inspect["HostConfig"]["PortBindings"]
    assert bindings == {f"{BACKEND_PORT}/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(BACKEND_PORT)}]}


def test_nothing_listens_on_the_backend_port_beyond_loopback(host: Any) -> None:
    listeners = host.check_output(f"ss -Hltn 'sport = :{BACKEND_PORT}'").splitlines()
    local = [line.split()[3] for line in listeners]
    assert local, f"nothing listens on :{BACKEND_PORT}"
    assert all(addr.startswith("127.0.0.1:") for addr in local), local


def test_backend_answers_health_on_7776(host: Any) -> None:
    body = host.check_output(f"curl -fsS http://127.0.0.1:{BACKEND_PORT}/api/health")
    assert json.loads(body)["status"] == "ok"


# --- nginx ------------------------------------------------------------------

def test_nginx_is_enabled_and_running(host: Any) -> None:
    nginx = host.service("nginx")
    assert nginx.is_enabled
    assert nginx.is_running


def test_effective_config_proxies_to_the_backend_port(nginx_t: str) -> None:
    assert re.search(rf"server 127\.0\.0\.1:{BACKEND_PORT};", nginx_t)


def api_location(nginx_t: str) -> str:
    match = re.search(r"location /api \{(.*?)\n    \}", nginx_t, re.DOTALL)
    assert match, "no location /api in nginx -T"
    return match.group(1)


def test_effective_config_streams(nginx_t: str) -> None:
    location = api_location(nginx_t)
    for directive in (
        "proxy_buffering off;",
        "proxy_cache off;",
        "proxy_request_buffering off;",
        "proxy_http_version 1.1;",
        'proxy_set_header Connection "";',
        "gzip off;",
        "proxy_read_timeout 3600s;",
    ):
        assert directive in location, f"{directive} missing from location /api"


def test_default_site_is_gone(host: Any, nginx_t: str) -> None:
    assert not host.file("/etc/nginx/sites-enabled/default").exists
    assert "# configuration file /etc/nginx/sites-enabled/default" not in nginx_t


def test_nginx_listens_for_browsers(host: Any) -> None:
    assert host.socket("tcp://0.0.0.0:80").is_listening


# --- The stream itself ------------------------------------------------------

def test_tokens_stream_incrementally_through_nginx(host: Any) -> None:
    result = stream_check(host, f"http://127.0.0.1{PROBE}")
    assert result.get("verdict") == "incremental", result.get("msg")
    assert result["events"] >= 20
    # Spread like the emission (20 x 50 ms), not one burst.
    assert result["span_ms"] >= 500
    assert result["burst_share"] <= 0.5


def test_chat_endpoint_streams_sse_through_nginx(host: Any) -> None:
    out = host.check_output(
        "curl -sS -N --max-time 20 -D - -X POST http://127.0.0.1/api/chat/message "
        "-H 'Content-Type: application/json' -d '{\"message\": \"hello\"}'"
    )
    assert re.search(r"(?im)^content-type: text/event-stream", out)
    events = [json.loads(line[6:]) for line in out.splitlines() if line.startswith("data: ")]
    assert len([e for e in events if e["type"] == "token"]) >= 2
    assert events[-1]["type"] == "done"


# --- A broken change never goes live ---------------------------------------

def test_broken_site_template_fails_before_the_live_config_changes(host: Any, tmp_path: Path) -> None:
    live = "/etc/nginx/sites-available/pi5-streaming.conf"
    before = host.file(live).sha256sum
    roles = tmp_path / "roles"
    shutil.copytree(PROJECT / "roles", roles)
    for shared in ("files", ".cache"):  # the roles reach these relative to themselves
        (tmp_path / shared).symlink_to(PROJECT / shared)
    template = roles / "nginx" / "templates" / "streaming-site.conf.j2"
    template.write_text(template.read_text().replace("proxy_buffering {{", "proxy_bufering {{"))
    env = {**os.environ, "ANSIBLE_ROLES_PATH": str(roles), "ANSIBLE_CONFIG": str(PROJECT / "ansible.cfg")}
    env.pop("ANSIBLE_ROLES_PATH_OVERRIDE", None)
    run = subprocess.run(
        ["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"], "--limit", host.backend.host,
         str(PROJECT / "site.yml")],
        env=env, capture_output=True, text=True, timeout=600, check=False,
    )
    assert run.returncode != 0, run.stdout[-2000:]
    assert "Render the streaming site and check it with nginx -t" in run.stdout
    assert 'unknown directive "proxy_bufering"' in run.stdout + run.stderr
    assert host.file(live).sha256sum == before
    assert stream_check(host, f"http://127.0.0.1{PROBE}").get("verdict") == "incremental"
