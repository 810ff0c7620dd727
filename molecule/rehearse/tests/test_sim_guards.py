"""Guards checked on the rehearsal's simulated Pi, after site.yml (scripts/rehearse.sh sets PI5_SIM_INSTANCE).

Each pairs the broken case with the good one: a port the firewall does not list is dropped while
HTTP gets in; the deploy key logs in while a password or root cannot; a sshd setting sshd -t refuses
or a rule nft refuses stops the play before the live file changes, and the service keeps working.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
INSTANCE = os.environ.get("PI5_SIM_INSTANCE", "")
KEY = ROOT / ".cache" / "sim-ssh" / "id_ed25519"
SSH_OPTS = ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "ConnectTimeout=5", "-o", "LogLevel=ERROR"]

pytestmark = pytest.mark.skipif(not INSTANCE, reason="needs the rehearsal's simulated Pi (scripts/rehearse.sh)")


def on_pi(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", "exec", INSTANCE, *argv], capture_output=True, text=True, timeout=60, check=check)


@pytest.fixture(scope="module")
def address() -> str:
    out = subprocess.run(["docker", "inspect", INSTANCE], capture_output=True, text=True, check=True).stdout
    networks = json.loads(out)[0]["NetworkSettings"]["Networks"]
    return str(next(iter(networks.values()))["IPAddress"])


def connects(address: str, port: int, timeout: float = 3.0) -> str:
    """'open', 'refused' or 'dropped' (no answer at all: what the firewall does)."""
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return "open"
    except ConnectionRefusedError:
        return "refused"
    except OSError:
        return "dropped"


def apply_tasks(tasks: str, extra: dict[str, object]) -> subprocess.CompletedProcess[str]:
    """Run one pi_base task file on the Pi with extra settings, after the detection it builds on, as site.yml would."""
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    return subprocess.run(
        ["ansible-playbook", "-i", f"{INSTANCE},", str(ROOT / "tests" / "pi_base" / "apply_tasks.yml"),
         "-e", json.dumps({"ansible_connection": "community.docker.docker", "role": "pi_base", "tasks": ["detect.yml", tasks], **extra})],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )


def test_firewall_is_a_table_of_its_own_beside_dockers() -> None:
    tables = on_pi("nft", "list", "tables").stdout.split("\n")
    assert "table inet pi5_firewall" in tables
    # Docker's own tables (iptables-nft) are still there; the backend, on the host's network, needs no NAT rule.
    assert {"table ip nat", "table ip filter"} <= set(tables)
    assert "chain DOCKER" in on_pi("nft", "list", "table", "ip", "nat").stdout
    ours = on_pi("nft", "-s", "list", "table", "inet", "pi5_firewall").stdout
    assert "hook input" in ours and "policy drop" in ours
    assert "hook forward" not in ours, "the firewall must leave forwarded (container) traffic to Docker"


def test_firewall_lets_http_in_and_drops_a_port_it_does_not_list(address: str) -> None:
    on_pi("sh", "-c", "nohup python3 -m http.server 8081 --bind 0.0.0.0 >/dev/null 2>&1 &")
    try:
        for _ in range(20):  # the listener is up when the Pi itself can reach it
            if on_pi("curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:8081/", check=False).returncode == 0:
                break
            time.sleep(0.25)
        else:
            pytest.fail("the test listener on :8081 did not come up")
        assert connects(address, 80) == "open"
        assert connects(address, 22) == "open"
        assert connects(address, 8081) == "dropped"
    finally:
        on_pi("pkill", "-f", "http.server 8081", check=False)


def test_ssh_takes_the_deploy_key_and_refuses_passwords_and_root(address: str) -> None:
    ok = subprocess.run(["ssh", *SSH_OPTS, "-i", str(KEY), f"pi@{address}", "id", "-un"],
                        capture_output=True, text=True, timeout=30, check=False)
    assert ok.returncode == 0 and ok.stdout.strip() == "pi", ok.stderr
    password = subprocess.run(
        ["ssh", *SSH_OPTS, "-o", "PubkeyAuthentication=no", "-o", "PreferredAuthentications=password,keyboard-interactive",
         f"pi@{address}", "true"], capture_output=True, text=True, timeout=30, check=False)
    assert password.returncode == 255 and "Permission denied (publickey)" in password.stderr, password.stderr
    # Even with a key root has, sshd refuses root.
    on_pi("sh", "-c", f"install -d -m 700 /root/.ssh && echo '{KEY.with_suffix('.pub').read_text().strip()}' >/root/.ssh/authorized_keys")
    try:
        root = subprocess.run(["ssh", *SSH_OPTS, "-i", str(KEY), f"root@{address}", "true"],
                              capture_output=True, text=True, timeout=30, check=False)
        assert root.returncode == 255 and "Permission denied" in root.stderr, root.stderr
    finally:
        on_pi("rm", "-f", "/root/.ssh/authorized_keys")


def test_a_setting_sshd_refuses_never_goes_live(address: str) -> None:
    dropin = "/etc/ssh/sshd_config.d/00-pi5-hardening.conf"
    before = on_pi("sha256sum", dropin).stdout
    run = apply_tasks("ssh.yml", {"pi_base_ssh_extra_settings": {"NoSuchKeyword": "yes"}})
    assert run.returncode != 0, run.stdout[-2000:]
    assert "Write the SSH hardening drop-in and check the whole config with sshd -t" in run.stdout
    assert "Bad configuration option: NoSuchKeyword" in run.stdout + run.stderr
    assert on_pi("sha256sum", dropin).stdout == before
    assert on_pi("systemctl", "is-active", "ssh").stdout.strip() == "active"
    assert connects(address, 22) == "open"


def test_a_rule_nft_refuses_never_goes_live(address: str) -> None:
    before = on_pi("nft", "-s", "list", "table", "inet", "pi5_firewall").stdout
    rules = on_pi("sha256sum", "/etc/pi5-firewall.nft").stdout
    run = apply_tasks("firewall.yml", {"pi_base_firewall_allowed_tcp_ports": [22, 80, 443, 70000]})
    assert run.returncode != 0, run.stdout[-2000:]
    assert "Write the firewall rules and check them with nft -c before they go live" in run.stdout
    assert "70000" in run.stdout + run.stderr
    assert on_pi("sha256sum", "/etc/pi5-firewall.nft").stdout == rules
    assert on_pi("nft", "-s", "list", "table", "inet", "pi5_firewall").stdout == before
    assert connects(address, 80) == "open"
