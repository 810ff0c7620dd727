"""Bad settings stop site.yml in its preflight, name the variable, and change nothing.

Each case runs the real site.yml, in check mode, against this machine as a stand-in Pi, with one bad
value (or a vault without its password): the play must fail, with a message naming the variable, after
zero changed tasks and before any role's own tasks began (Ansible validates a role's `main` entry point
as its first task: no such task may have run but the preflight role's). The control cases show the
same preflight passes good settings.
"""
from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.runner import HOST, SITE, failures, make_inventory, results, run_playbook, task_role

PRIVATE_KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA-not-a-real-key\n-----END OPENSSH PRIVATE KEY-----\n"
VAULT_PASSWORD = "rehearsal-only"
MAIN_STARTED = "Validating arguments against arg spec 'main'"


def public_key(tmp: Path) -> Path:
    key = tmp / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "test", "-f", str(key)], check=True)
    return key.with_suffix(".pub")


def private_key(tmp: Path) -> Path:
    key = tmp / "id_ed25519"
    key.write_text(PRIVATE_KEY)
    return key


def ansible_vault(tmp: Path, *args: str) -> str:
    password = tmp / "vault-password"
    password.write_text(VAULT_PASSWORD)
    vault = Path(sys.executable).parent / "ansible-vault"
    return subprocess.run([str(vault), *args, "--vault-password-file", str(password)],
                          capture_output=True, text=True, check=True).stdout


def encrypted_value(tmp: Path, name: str) -> str:
    """A vault file whose values are encrypted one by one (ansible-vault encrypt_string)."""
    return ansible_vault(tmp, "encrypt_string", "s3cret", "--name", name)


def encrypted_file(tmp: Path, content: str) -> str:
    """A vault file encrypted as a whole (ansible-vault encrypt)."""
    plain = tmp / "plain.yml"
    plain.write_text(content)
    ansible_vault(tmp, "encrypt", str(plain))
    return plain.read_text()


def settings(**extra: Any) -> Callable[[Path], tuple[dict[str, Any], str]]:
    return lambda _: (extra, "")


# Each case: (variable the message must name, a function of a temp dir giving (extra vars, vault text)).
Case = Callable[[Path], tuple[dict[str, Any], str]]
CASES: dict[str, tuple[str, Case]] = {
    # Types and choices (each role's argument spec, through its preflight entry point).
    "port not a number": ("backend_port", settings(backend_port="abc")),
    "http port zero": ("nginx_http_port", settings(nginx_http_port=0)),
    "timeout not a number": ("nginx_stream_read_timeout_s", settings(nginx_stream_read_timeout_s="abc")),
    "unknown location option": ("bogus", settings(nginx_stream_locations=[{"path": "/api", "bogus": 1}])),
    "location without path": ("path", settings(nginx_stream_locations=[{"read_timeout_s": 60}])),
    "unknown http version": ("nginx_proxy_http_version", settings(nginx_proxy_http_version="2.0")),
    "bool that is not one": ("nginx_proxy_buffering", settings(nginx_proxy_buffering="maybe")),
    "unknown docker source": ("docker_install_source", settings(docker_install_source="snap")),
    "log size not a number": ("docker_log_max_size_mb", settings(docker_log_max_size_mb="ten")),
    "unknown provider": ("backend_provider", settings(backend_provider="openai")),
    "memory not a number": ("backend_memory_mb", settings(backend_memory_mb="lots")),
    "unknown restart policy": ("backend_restart_policy", settings(backend_restart_policy="sometimes")),
    "unknown swap policy": ("pi_base_swap", settings(pi_base_swap="file")),
    "journal size not a number": ("pi_base_journal_max_use_mb", settings(pi_base_journal_max_use_mb="lots")),
    "Redis memory not a number": ("redis_maxmemory_mb", settings(redis_maxmemory_mb="lots")),
    "restore switch not a bool": ("backup_restore_missing_data", settings(backup_restore_missing_data="sometimes")),
    # Each role's own rules.
    "port out of range": ("backend_port", settings(backend_port=70000)),
    "heartbeat out of range": ("backend_heartbeat_s", settings(backend_heartbeat_s=1000)),
    "no streams": ("nginx_max_streams", settings(nginx_max_streams=0)),
    "location without slash": ("nginx_stream_locations", settings(nginx_stream_locations=[{"path": "api"}])),
    "gzip on event streams": ("nginx_gzip_types", settings(nginx_gzip_types=["text/css", "text/event-stream"])),
    "certificate without key": ("nginx_tls_key_file", settings(nginx_tls_certificate_file="/etc/ssl/pi.pem")),
    "log files out of range": ("docker_log_max_files", settings(docker_log_max_files=0)),
    "archive to restore that is not there": ("backup_restore_archive", settings(backup_restore_archive="/nowhere/pi5.tar.gz")),
    "unknown time zone": ("pi_base_timezone", settings(pi_base_timezone="Mars/Olympus_Mons")),
    "time zone outside the tz database": ("pi_base_timezone", settings(pi_base_timezone="../../etc/passwd")),
    "missing SSH public key file": (
        "pi_base_deploy_user_ssh_key_files", lambda t: ({"pi_base_deploy_user_ssh_key_files": [str(t / "nope.pub")]}, "")),
    "private key instead of the public one": (
        "pi_base_deploy_user_ssh_key_files", lambda t: ({"pi_base_deploy_user_ssh_key_files": [str(private_key(t))]}, "")),
    "key line that is no key": ("pi_base_deploy_user_ssh_keys", settings(pi_base_deploy_user_ssh_keys=["hello"])),
    "passwords off, no key, Ansible on SSH": (
        "pi_base_ssh_password_login",
        settings(pi_base_login_connection="ssh", ansible_user="nobody-here", pi_base_deploy_user="nobody-here")),
    "Ansible logs in as another user than the deploy user": (
        "pi_base_deploy_user", settings(pi_base_login_connection="ssh", ansible_user="alice")),
    "root login off while Ansible logs in as root": (
        "pi_base_ssh_root_login", settings(pi_base_login_connection="ssh", ansible_user="root")),
    "SSH moved to a port the firewall keeps closed": ("pi_base_ssh_extra_settings", settings(pi_base_ssh_extra_settings={"Port": 2222})),
    "host name taken from an IP address": ("pi_base_hostname", settings(pi_base_hostname="192")),
    "firewall closes SSH": ("pi_base_firewall_allowed_tcp_ports", settings(pi_base_firewall_allowed_tcp_ports=[80, 443])),
    "firewall port out of range": ("pi_base_firewall_allowed_tcp_ports", settings(pi_base_firewall_allowed_tcp_ports=[22, 80, 443, 70000])),
    "host name with an underscore": ("pi_base_hostname", settings(pi_base_hostname="pi_5")),
    "config.txt line without =": ("pi_base_config_txt", settings(pi_base_config_txt=["dtparam pciex1"])),
    "32-bit Raspberry Pi OS on the Pi 5's 64-bit kernel": ("64-bit userland", settings(pi_base_userspace_bits="32")),
    "an upgrade origin that ends the apt.conf string": (
        "pi_base_unattended_upgrades_origins", settings(pi_base_unattended_upgrades_origins=['origin=Evil";};APT::x "1'])),
    "two kernel flags in one": ("pi_base_cmdline_flags", settings(pi_base_cmdline_flags=["cgroup_enable=memory quiet"])),
    "a boot order that is no hex number": ("pi_base_nvme_boot_order", settings(pi_base_nvme_boot_order="nvme,sd")),
    # The rules between roles (the preflight role's own).
    "read timeout below heartbeat": ("nginx_stream_read_timeout_s", settings(nginx_stream_read_timeout_s=30)),
    "keepalive longer than backend's": ("nginx_upstream_keepalive_timeout_s", settings(nginx_upstream_keepalive_timeout_s=90)),
    "firewall closes nginx's HTTP port": ("pi_base_firewall_allowed_tcp_ports", settings(pi_base_firewall_allowed_tcp_ports=[22, 443])),
    "Docker data root off the data disk": (
        "docker_daemon_options",
        settings(pi_base_data_disk_source="UUID=0000", docker_daemon_options={"data-root": "/var/lib/docker2"})),
    "image layers on the card while data-root is on the disk": (
        "docker_containerd_image_store",
        settings(pi_base_data_disk_source="UUID=0000", docker_daemon_options={"data-root": "/mnt/data/docker"},
                 docker_containerd_image_store=True)),
    "containerd image store not a bool": ("docker_containerd_image_store", settings(docker_containerd_image_store="maybe")),
    "per-client streams above all streams": ("nginx_limit_conn_per_client", settings(nginx_limit_conn_per_client=2000)),
    "request rate not a number": ("nginx_limit_req_per_s", settings(nginx_limit_req_per_s="fast")),
    "header timeout zero": ("nginx_client_header_timeout_s", settings(nginx_client_header_timeout_s=0)),
    "body timeout past an hour": ("nginx_client_body_timeout_s", settings(nginx_client_body_timeout_s=7200)),
    "burst below zero": ("nginx_limit_req_burst", settings(nginx_limit_req_burst=-1)),
    "a probe of one token (nothing to cut in two and resume)": ("nginx_verify_probe_tokens", settings(nginx_verify_probe_tokens=1)),
    "limit zone of no size": ("nginx_limit_zone_mb", settings(nginx_limit_zone_mb=0)),
    "request body limit of no size": ("nginx_client_max_body_size_mb", settings(nginx_client_max_body_size_mb=0)),
    "request buffering not a bool": ("nginx_proxy_request_buffering", settings(nginx_proxy_request_buffering="sometimes")),
    "file handles below connections": ("backend_nofile", settings(backend_max_connections=4096, backend_nofile=4096)),
    "connection limit out of range": ("backend_max_connections", settings(backend_max_connections=0)),
    "pids limit out of range": ("backend_pids_limit", settings(backend_pids_limit=4)),
    "backend bound to every address of the Pi": ("backend_env", settings(backend_env={"BACKEND_HOST": "0.0.0.0"})),  # noqa: S104 (the hostile setting)
    "Redis password moved into the extra environment": ("backend_env", settings(backend_env={"BACKEND_REDIS_PASSWORD": "x" * 20})),
    "Redis elsewhere than on loopback": ("backend_env", settings(backend_env={"BACKEND_REDIS_HOST": "192.168.1.9"})),
    "process count in the extra environment": ("backend_env", settings(backend_env={"BACKEND_PROCESSES": "8"})),
    "reply lifetime in the extra environment": ("backend_env", settings(backend_env={"BACKEND_REPLY_TTL_S": "1"})),
    "processes not a number": ("backend_processes", settings(backend_processes="all")),
    "no delivery process": ("backend_processes", settings(backend_processes=0)),
    "more processes than the memory holds": ("backend_processes", settings(backend_processes=16)),
    "pids limit too small for the processes": (
        "backend_pids_limit", settings(backend_processes=8, backend_memory_mb=1024, backend_pids_limit=100)),
    "worker that generates nothing": ("backend_worker_concurrency", settings(backend_worker_concurrency=0)),
    "reply gone before a client can reconnect": ("backend_reply_ttl_s", settings(backend_reply_ttl_s=5)),
    "reply events not a number": ("backend_reply_max_events", settings(backend_reply_max_events="lots")),
    "reply of a handful of events": ("backend_reply_max_events", settings(backend_reply_max_events=10)),
    "worker memory out of range": ("backend_worker_memory_mb", settings(backend_worker_memory_mb=16)),
    "Redis memory out of range": ("redis_maxmemory_mb", settings(redis_maxmemory_mb=1)),
    "ACL rule that writes a config line of its own": ("redis_acl_rules", settings(redis_acl_rules=["+@all\nrequirepass x"])),
    "ACL rule that drops the password": ("redis_acl_rules", settings(redis_acl_rules=["~*", "+@all", "nopass"])),
    "ACL rule that adds a password": ("redis_acl_rules", settings(redis_acl_rules=["~*", "+@all", ">guessme"])),
    "Redis data off the data disk": ("redis_dir", settings(pi_base_data_disk_source="UUID=0000")),
    # Secrets and who may chat.
    "vault value without the vault password": ("vault_backend_auth_token", lambda t: ({}, encrypted_value(t, "vault_backend_auth_token"))),
    "no auth token": ("backend_auth_token", lambda _: ({}, 'vault_backend_auth_token: ""\n')),
    "auth token of spaces": ("backend_auth_token", lambda _: ({}, 'vault_backend_auth_token: "   "\n')),
    "auth token with a trailing space": ("backend_auth_token", lambda _: ({}, 'vault_backend_auth_token: "tok "\n')),
    "no Redis password": ("redis_password", lambda _: ({}, 'vault_backend_auth_token: tok\nvault_redis_password: ""\n')),
    "Redis password missing from the vault": (
        "redis_password", lambda _: ({}, "vault_backend_auth_token: tok\n# no vault_redis_password here\n")),
    "Redis password of spaces": ("redis_password", lambda _: ({}, f'vault_backend_auth_token: tok\nvault_redis_password: "{" " * 20}"\n')),
    "short Redis password": ("redis_password", lambda _: ({}, "vault_backend_auth_token: tok\nvault_redis_password: short\n")),
    # The backend's own rule, for a play whose preflight checks the backend but not the redis role.
    "backend without a Redis password": (
        "redis_password",
        lambda _: ({"preflight_roles": ["backend"]}, 'vault_backend_auth_token: tok\nvault_redis_password: " "\n')),
    "auth off with a token": ("backend_auth_off", settings(backend_auth_off=True)),
    "anthropic with auth off": (
        "backend_auth_token",
        lambda _: ({"backend_provider": "anthropic", "backend_auth_off": True}, 'vault_backend_auth_token: ""\n')),
}


def run_case(case: str, tmp: Path) -> dict[str, Any]:
    extra, vault = CASES[case][1](tmp)
    return run_playbook(SITE, make_inventory(tmp / "inventory", vault), extra, "--check")


def roles_started(report: dict[str, Any]) -> set[str]:
    """Roles whose own tasks began (Ansible validated their `main` entry point), the preflight role aside."""
    return {task_role(task) for task, _ in results(report) if MAIN_STARTED in str(task["task"]["name"])} - {"preflight"}


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    dirs = {case: tmp_path_factory.mktemp("case") for case in CASES}
    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(CASES, pool.map(lambda case: run_case(case, dirs[case]), CASES), strict=True))


@pytest.mark.parametrize("case", CASES)
def test_bad_input_stops_site_yml_in_its_preflight_naming_the_variable(case: str, reports: dict[str, dict[str, Any]]) -> None:
    variable = CASES[case][0]
    report = reports[case]
    assert report["returncode"] != 0, report["stdout"][-2000:]
    assert report["stats"][HOST]["changed"] == 0
    failed = failures(report)
    assert failed, f"the play failed without a failed task: {report['stderr'][-2000:]}"
    assert variable in failed[-1][1], failed[-1]
    assert not roles_started(report), f"failed after {roles_started(report)} began: {failed}"


def test_a_private_key_is_never_printed(reports: dict[str, dict[str, Any]]) -> None:
    report = reports["private key instead of the public one"]
    assert "PRIVATE KEY" not in report["stdout"] + report["stderr"]


def test_a_vault_file_encrypted_whole_stops_ansible_before_any_task(tmp_path: Path) -> None:
    """Ansible itself refuses to start the play; nothing runs, so nothing can change."""
    vault = encrypted_file(tmp_path, "vault_backend_auth_token: s3cret\n")
    report = run_playbook(SITE, make_inventory(tmp_path / "inventory", vault), {}, "--check")
    assert report["returncode"] != 0
    assert "Attempting to decrypt but no vault secrets found" in report["stderr"] + report["stdout"]
    assert not any(play["tasks"] for play in report["plays"])


@pytest.mark.parametrize("form", ["inline values", "whole file"])
def test_the_same_vault_passes_with_its_password(form: str, tmp_path: Path) -> None:
    vault = (encrypted_value(tmp_path, "vault_backend_auth_token") if form == "inline values"
             else encrypted_file(tmp_path, "vault_backend_auth_token: s3cret\n"))
    report = run_playbook(SITE, make_inventory(tmp_path / "inventory", vault), {}, "--check", "--tags", "preflight",
                          "--vault-password-file", str(tmp_path / "vault-password"))
    assert report["returncode"] == 0, failures(report)
    assert "s3cret" not in report["stdout"]


def test_the_shipped_settings_pass_the_preflight(tmp_path: Path) -> None:
    """The control case: the repository's settings pass, and every role's preflight ran, once."""
    report = run_playbook(SITE, make_inventory(tmp_path / "inventory"), {}, "--check", "--tags", "preflight")
    assert report["returncode"] == 0, failures(report)
    assert report["stats"][HOST]["changed"] == 0
    checked = [task_role(task) for task, _ in results(report) if "arg spec 'preflight'" in str(task["task"]["name"])]
    assert sorted(checked) == ["backend", "backup", "docker", "nginx", "pi_base", "redis"]


def test_auth_off_by_name_passes_the_preflight(tmp_path: Path) -> None:
    """The control case for the token rules: no token is fine when auth is off by name (demo provider)."""
    inventory = make_inventory(tmp_path / "inventory", 'vault_backend_auth_token: ""\n')
    report = run_playbook(SITE, inventory, {"backend_auth_off": True}, "--check", "--tags", "preflight")
    assert report["returncode"] == 0, failures(report)


def test_more_processes_with_the_memory_and_threads_they_need_pass_the_preflight(tmp_path: Path) -> None:
    """The control case for the process rules, and for backend_env: a name the role does not own passes."""
    good = {"backend_processes": 8, "backend_memory_mb": 1024, "backend_pids_limit": 256,
            "backend_env": {"BACKEND_WORKER_LEASE_MS": "8000", "BACKEND_REDIS_OUTAGE_S": "60"}}
    report = run_playbook(SITE, make_inventory(tmp_path / "inventory"), good, "--check", "--tags", "preflight")
    assert report["returncode"] == 0, failures(report)


def test_good_base_settings_pass_the_preflight(tmp_path: Path) -> None:
    """The control case for the base rules: a real public key file, a real time zone, the firewall open for SSH."""
    good = {"pi_base_deploy_user_ssh_key_files": [str(public_key(tmp_path))], "pi_base_timezone": "Europe/Berlin",
            "pi_base_config_txt": ["dtparam=pciex1_gen=3", "[pi5]", "dtparam=fan_temp0=45000"],
            "pi_base_login_connection": "ssh", "ansible_user": "pi", "pi_base_hostname": "pi5",
            # Docker's data root on the data disk, with the classic store that keeps image layers there too.
            "pi_base_data_disk_source": "UUID=0000", "docker_daemon_options": {"data-root": "/mnt/data/docker"},
            "pi_base_nvme_boot_order": "0xf461",
            # Redis's snapshot on the data disk too.
            "redis_dir": "/mnt/data/redis"}
    report = run_playbook(SITE, make_inventory(tmp_path / "inventory"), good, "--check", "--tags", "preflight")
    assert report["returncode"] == 0, failures(report)
