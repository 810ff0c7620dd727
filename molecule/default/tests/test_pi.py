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

import pytest

BACKEND_PORT = 7776  # the product's contract: the backend is on 127.0.0.1:7776
PROBE = "/api/probe/stream?tokens=20&interval_ms=50"
CERT = "/etc/nginx/pi5-tls/cert.pem"  # the self-signed certificate the nginx role makes

PROJECT = Path(os.environ.get("MOLECULE_PROJECT_DIRECTORY", Path(__file__).parents[3]))
# The simulated Pis' chat token (molecule/resources/group_vars/pi5.yml makes it once).
TOKEN = (PROJECT / ".cache" / "sim-auth-token").read_text().split()[0] if (PROJECT / ".cache" / "sim-auth-token").exists() else ""
REDIS_PORT = 6379  # inventory/group_vars/all/main.yml
REDIS_DIR = "/var/lib/pi5-redis"  # molecule/resources/group_vars/pi5.yml: not Debian's default, on purpose
REDIS_PASSWORD_FILE = PROJECT / ".cache" / "sim-redis-password"


def stream_check(host: Any, http_version: str = "2", **options: Any) -> dict[str, Any]:
    """Run the project's stream check module on the Pi, as a browser would ask: HTTPS with the
    certificate's name; return its result, failed or not."""
    name = host.backend.host
    args = {
        "url": f"https://{name}{PROBE}",
        "resolve": [f"{name}:443:127.0.0.1"],
        "cacert": CERT,
        "http_version": http_version,
        **options,
    }
    return host.ansible("pi5.streaming.stream_check", json.dumps(args), check=False, become=True)  # type: ignore[no-any-return]


def playbook(host: Any, *args: str, roles: Path | None = None, report: bool = False) -> subprocess.CompletedProcess[str]:
    """Run site.yml (or what args name) from the controller against this simulated Pi only (report: JSON on stdout)."""
    env = {**os.environ, "ANSIBLE_CONFIG": str(PROJECT / "ansible.cfg")}
    if roles:
        env["ANSIBLE_ROLES_PATH"] = str(roles)
    if report:
        env |= {"ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json", "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1"}
    return subprocess.run(
        ["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"], "--limit", host.backend.host, *args,
         str(PROJECT / "site.yml")],
        env=env, capture_output=True, text=True, timeout=600, check=False,
    )


def wait_until_healthy(host: Any, timeout_s: int = 120) -> str:
    """The backend container's health once it leaves `starting` (or what it still is after timeout_s)."""
    with host.sudo():
        return host.check_output(  # type: ignore[no-any-return]
            f"for i in $(seq {timeout_s}); do s=$(docker inspect -f '{{{{.State.Health.Status}}}}' backend 2>/dev/null);"
            " case $s in healthy|unhealthy) break;; esac; sleep 1; done; echo $s")


def pi_address(host: Any) -> str:
    """The Pi's own address on its network (what another machine on the LAN connects to)."""
    return host.check_output("ip -4 -o addr show scope global | awk '{print $4}' | cut -d/ -f1 | head -n1")  # type: ignore[no-any-return]


def answers_on(host: Any, address: str, port: int) -> bool:
    """Whether something accepts TCP on address:port, asked from the Pi itself (the firewall lets its own traffic in:
    a refusal means nothing listens there, whatever the firewall would do)."""
    return host.run(f"timeout 3 bash -c '</dev/tcp/{address}/{port}'").rc == 0  # type: ignore[no-any-return]


def redis_cli(host: Any, *args: str, password: str | None = None) -> str:
    """redis-cli on the Pi, with the password in its environment (never on the command line); what it printed."""
    auth = f"REDISCLI_AUTH='{password}' " if password is not None else ""
    run = host.run(f"{auth}redis-cli --no-auth-warning -h 127.0.0.1 -p {REDIS_PORT} {' '.join(args)}")
    return f"{run.stdout}{run.stderr}".strip()


@pytest.fixture
def redis_password() -> str:
    return REDIS_PASSWORD_FILE.read_text().split()[0]


# --- Base system (pi_base) --------------------------------------------------

def test_the_pi_5_boot_paths_were_taken(host: Any) -> None:
    """The simulated Pi is detected as a Pi 5 (bookworm) or Compute Module 5 (trixie): its cmdline.txt got the memory
    cgroup flag, still one line, and config.txt is Raspberry Pi OS's own."""
    cmdline = host.file("/boot/firmware/cmdline.txt").content_string
    assert cmdline.count("\n") == 1 and cmdline.split()[-1] == "cgroup_enable=memory", cmdline
    assert "cgroup_memory=1" not in cmdline
    assert host.file("/boot/firmware/config.txt").content_string.startswith("# For more options and information see")



def test_the_bootloader_keeps_booting_the_card_first_without_an_nvme_data_disk(host: Any) -> None:
    """The NVMe boot order is for a Pi whose data disk is NVMe; this one has none (rpi-eeprom-config is a stand-in)."""
    with host.sudo():
        assert "BOOT_ORDER=0xf461" in host.check_output("rpi-eeprom-config").splitlines()


def test_power_and_heat_are_logged_to_the_journal_over_time(host: Any) -> None:
    """The Pi 5 extras where the tools are (the simulated Pi has Raspberry Pi OS's vcgencmd as a stand-in): a timer logs
    temperature and throttling, and the health report reads it back; no watchdog or Wi-Fi here, so none configured."""
    assert host.service("pi5-health-log.timer").is_enabled
    assert host.service("pi5-health-log.timer").is_running
    with host.sudo():
        host.check_output("systemctl start pi5-health-log.service")
        logged = host.check_output("journalctl --identifier pi5-health --output cat --quiet --no-pager")
    assert "temp_c=48.3 throttled=0x0" in logged
    assert not host.file("/etc/systemd/system.conf.d/50-pi5-watchdog.conf").exists
    assert not host.file("/etc/NetworkManager/conf.d/50-pi5-wifi-powersave.conf").exists


def test_the_host_name_is_the_inventorys_and_resolves_locally(host: Any) -> None:
    """The simulated Pi owns /etc/hostname and /etc/hosts as a Pi does (Raspberry Pi OS's stock ones name it
    raspberrypi): the role renames it to its inventory name and 127.0.1.1 resolves that name, not the old one."""
    name = host.backend.host
    assert host.check_output("hostname") == name
    assert host.file("/etc/hostname").content_string.strip() == name
    hosts = host.file("/etc/hosts").content_string
    assert f"127.0.1.1\t{name}\n" in hosts and "raspberrypi" not in hosts, hosts


def test_trixies_first_boot_ran_raspberry_pi_imagers_cloud_init(host: Any) -> None:
    """trixie's first boot is cloud-init with the NoCloud seed Imager writes on the boot partition: it installed
    avahi-daemon (apt, while the role waited), made the user pi with Imager's key, and renders /etc/hosts itself."""
    if host.system_info.codename != "trixie":
        pytest.skip("Raspberry Pi OS bookworm configures its first boot with firstrun.sh, not cloud-init")
    with host.sudo():
        status = host.run("cloud-init status --long")
        assert status.rc == 0 and "status: done" in status.stdout, status.stdout
        assert "DataSourceNoCloud" in status.stdout and "/boot/firmware" in status.stdout, status.stdout
        assert "imager@pi5-sim" in host.file("/home/pi/.ssh/authorized_keys").content_string
    assert host.package("avahi-daemon").is_installed
    assert "configured 'manage_etc_hosts' as True" in host.file("/etc/hosts").content_string
    assert f"127.0.1.1\t{host.backend.host}\n" in host.file("/etc/cloud/templates/hosts.debian.tmpl").content_string


def test_the_locale_is_set_through_trixies_link(host: Any) -> None:
    """trixie links /etc/default/locale to ../locale.conf (systemd reads one, PAM the other): the link must stay."""
    locale = host.file("/etc/default/locale")
    if host.system_info.codename == "trixie":
        assert locale.is_symlink and locale.linked_to == "/etc/locale.conf"
    assert "LANG=en_GB.UTF-8" in locale.content_string


def test_sshd_takes_keys_only_and_refuses_root(host: Any) -> None:
    effective = host.run("sshd -T -C user=pi,host=pi5,addr=127.0.0.1")
    assert effective.rc == 0, effective.stderr
    settings = dict(line.split(" ", 1) for line in effective.stdout.splitlines() if " " in line)
    assert settings["passwordauthentication"] == "no"
    assert settings["kbdinteractiveauthentication"] == "no"
    assert settings["permitrootlogin"] == "no"


def test_firewall_drops_by_default_and_leaves_dockers_tables_alone(host: Any) -> None:
    ours = host.run("nft -s list table inet pi5_firewall")
    assert ours.rc == 0, ours.stderr
    assert "hook input" in ours.stdout and "policy drop" in ours.stdout
    assert "hook forward" not in ours.stdout
    allowed = re.search(r"tcp dport \{ ([0-9, ]+) \}", ours.stdout)
    assert allowed and {int(p) for p in allowed.group(1).split(",")} == {22, 80, 443}
    # The backend is on the host's network: no published port, so no NAT rule for it and no docker-proxy.
    assert f"dport {BACKEND_PORT}" not in host.run("nft list table ip nat").stdout
    assert host.run("pgrep -x docker-proxy").rc == 1


def test_journal_is_capped_to_spare_the_sd_card(host: Any) -> None:
    conf = host.file("/etc/systemd/journald.conf.d/50-pi5-sdcard.conf").content_string
    assert "SystemMaxUse=64M" in conf
    assert host.run("systemd-analyze cat-config systemd/journald.conf").stdout.count("SystemMaxUse=64M") == 1


# --- Docker -----------------------------------------------------------------

def test_docker_engine_is_enabled_and_running(host: Any) -> None:
    docker = host.service("docker")
    assert docker.is_enabled
    assert docker.is_running


def test_dockerd_starts_only_once_its_data_root_is_mounted(host: Any) -> None:
    """A data root on a disk of its own (bookworm's Pi: the volume at /var/lib/docker stands in for the data disk):
    systemd orders docker.service after that mount and requires it, so dockerd never starts on the card's empty
    directory before a slow USB disk is there. Without a data root (trixie's Pi) there is no such drop-in."""
    dropin = host.file("/etc/systemd/system/docker.service.d/50-pi5-data-root.conf")
    shown = dict(line.split("=", 1) for line in host.check_output(
        "systemctl show docker.service -p RequiresMountsFor -p After").splitlines())
    if "data_root_on_a_mount" in host.ansible.get_variables()["group_names"]:
        assert "RequiresMountsFor=/var/lib/docker" in dropin.content_string.splitlines()
        assert shown["RequiresMountsFor"] == "/var/lib/docker"
        assert "var-lib-docker.mount" in shown["After"].split()
    else:
        assert not dropin.exists
        assert shown["RequiresMountsFor"] == ""


def test_container_logs_are_rotated(host: Any) -> None:
    daemon = json.loads(host.file("/etc/docker/daemon.json").content_string)
    assert daemon["log-driver"] == "json-file"
    assert daemon["log-opts"]["max-size"] == "10m"
    assert int(daemon["log-opts"]["max-file"]) >= 1


def test_deploy_user_may_use_docker(host: Any) -> None:
    """By default (docker_users): the runbook's `ssh pi@pi5.local 'docker stop backend'` is allowed."""
    assert "docker" in host.user("pi").groups
    assert host.run("su - pi -c 'docker inspect -f {{.State.Status}} backend'").stdout.strip() == "running"


def test_images_live_where_the_image_store_puts_them(host: Any) -> None:
    """The store is pinned in daemon.json (Docker 29 would pick containerd's on a new install); the classic store
    keeps the backend's layers under data-root, containerd's under /var/lib/containerd."""
    containerd = "containerd_image_store" in host.ansible.get_variables()["group_names"]
    daemon = json.loads(host.file("/etc/docker/daemon.json").content_string)
    assert daemon["features"]["containerd-snapshotter"] is containerd
    with host.sudo():
        info = json.loads(host.check_output("docker info --format '{{json .}}'"))
        layers = host.check_output("docker image inspect -f '{{json .GraphDriver}}' pi5-streaming-backend:local")
    assert info["DockerRootDir"] == "/var/lib/docker"
    driver_status = dict(info.get("DriverStatus") or [])
    if containerd:
        assert driver_status.get("driver-type") == "io.containerd.snapshotter.v1", info["Driver"]
        assert host.file("/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots").is_directory
    else:
        assert info["Driver"] == "overlay2"
        assert "/var/lib/docker/overlay2/" in layers


def test_unattended_upgrades_take_the_raspberry_pi_archive_and_dockers(host: Any) -> None:
    """The Pi's own archive (kernel, firmware, rpi-eeprom) is among the allowed origins, and it is a real origin here."""
    patterns = host.check_output("apt-config dump Unattended-Upgrade::Origins-Pattern")
    assert "origin=Raspberry Pi Foundation,codename=${distro_codename},label=Raspberry Pi Foundation" in patterns
    assert "origin=Docker,label=Docker CE" in patterns
    codename = host.system_info.codename
    assert f"o=Raspberry Pi Foundation,a={codename},n={codename},l=Raspberry Pi Foundation" in host.check_output("apt-cache policy")


# --- Redis ------------------------------------------------------------------

def test_redis_is_enabled_running_and_answers_with_the_password_only(host: Any, redis_password: str) -> None:
    assert host.service("redis-server").is_enabled
    assert host.service("redis-server").is_running
    assert redis_cli(host, "ping", password=redis_password) == "PONG"
    assert redis_cli(host, "ping").startswith("NOAUTH")
    assert "WRONGPASS" in redis_cli(host, "ping", password="not-" + redis_password)


def test_redis_refuses_dangerous_commands_even_with_the_password(host: Any, redis_password: str) -> None:
    """A backend that is taken over cannot wipe, reconfigure or crash Redis, nor watch every reply."""
    for command in ("flushall", "config get dir", "keys '*'", "shutdown nosave", "monitor", "client list", "acl list"):
        assert redis_cli(host, command, password=redis_password).startswith("NOPERM"), command
    # DEBUG: Redis 7 refuses it to every client before the ACL is asked (enable-debug-command no).
    assert redis_cli(host, "debug sleep 0", password=redis_password).startswith(("NOPERM", "ERR DEBUG command not allowed"))
    # What the app and a person need still works.
    assert redis_cli(host, "set pi5:probe ok ex 60", password=redis_password) == "OK"
    assert "redis_version:" in redis_cli(host, "info server", password=redis_password)


def test_redis_listens_on_loopback_only(host: Any) -> None:
    listeners = [line.split()[3] for line in host.check_output(f"ss -Hltn 'sport = :{REDIS_PORT}'").splitlines()]
    assert listeners, f"nothing listens on :{REDIS_PORT}"
    assert all(addr.startswith(("127.0.0.1:", "[::1]:")) for addr in listeners), listeners
    assert not answers_on(host, pi_address(host), REDIS_PORT)


def test_redis_memory_is_capped_without_eviction_and_its_data_is_in_its_dir(host: Any, redis_password: str) -> None:
    memory = dict(line.split(":", 1) for line in redis_cli(host, "info memory", password=redis_password).splitlines() if ":" in line)
    assert memory["maxmemory"].strip() == str(128 * 1024 * 1024)
    assert memory["maxmemory_policy"].strip() == "noeviction"
    with host.sudo():
        assert host.check_output("readlink /proc/$(systemctl show -p MainPID --value redis-server)/cwd") == REDIS_DIR
    directory = host.file(REDIS_DIR)
    assert (directory.user, directory.group, directory.mode) == ("redis", "redis", 0o750)


def test_redis_keeps_its_data_across_a_restart_through_one_snapshot(host: Any, redis_password: str) -> None:
    """shutdown-on-sigterm save: an upgrade or a clean reboot keeps replies in flight; nothing is written while running."""
    assert redis_cli(host, "set pi5:survives yes ex 300", password=redis_password) == "OK"
    with host.sudo():
        host.check_output("systemctl restart redis-server")
    host.run(f"for i in $(seq 30); do REDISCLI_AUTH='{redis_password}' redis-cli --no-auth-warning -p {REDIS_PORT} ping"
             " | grep -q PONG && break; sleep 1; done")
    assert redis_cli(host, "get pi5:survives", password=redis_password) == "yes"
    assert host.file(f"{REDIS_DIR}/dump.rdb").exists
    persistence = redis_cli(host, "info persistence", password=redis_password)
    assert "aof_enabled:0" in persistence


def test_redis_config_is_readable_by_redis_only_and_holds_no_plain_password(host: Any, redis_password: str) -> None:
    config = host.file("/etc/redis/pi5.conf")
    assert (config.user, config.group, config.mode) == ("root", "redis", 0o640)
    with host.sudo():
        assert redis_password not in config.content_string
    # Debian's own file is as shipped (security updates never stop at a conffile prompt).
    assert host.run("dpkg --verify redis-server").stdout.strip() == ""


def test_a_config_redis_refuses_never_goes_live(host: Any) -> None:
    """The role's validate: a check that starts redis-server on the candidate, on a private socket."""
    with host.sudo():
        good = host.run("/usr/local/sbin/pi5-redis-check-config /etc/redis/pi5.conf")
        host.check_output("sed 's/^maxmemory-policy .*/maxmemory-policy sometimes/' /etc/redis/pi5.conf > /tmp/bad-policy.conf")
        host.check_output("sed 's/^user default .*/& +nosuchcommand/' /etc/redis/pi5.conf > /tmp/bad-acl.conf")
        bad_policy = host.run("/usr/local/sbin/pi5-redis-check-config /tmp/bad-policy.conf")
        bad_acl = host.run("/usr/local/sbin/pi5-redis-check-config /tmp/bad-acl.conf")
        host.run("rm -f /tmp/bad-policy.conf /tmp/bad-acl.conf")
    assert good.rc == 0, good.stderr
    assert bad_policy.rc != 0 and "maxmemory-policy" in bad_policy.stderr
    assert bad_acl.rc != 0 and "nosuchcommand" in bad_acl.stderr
    # The live Redis was never touched by the checks.
    assert host.service("redis-server").is_running


# --- Backend ----------------------------------------------------------------

def test_backend_container_is_hardened_and_restarts(backend_inspect: dict[str, Any]) -> None:
    config, hostcfg = backend_inspect["Config"], backend_inspect["HostConfig"]
    assert backend_inspect["State"]["Running"]
    assert hostcfg["RestartPolicy"]["Name"] == "unless-stopped"
    assert config["User"] not in ("", "0", "root", "0:0")
    assert hostcfg["ReadonlyRootfs"] is True
    assert hostcfg["Memory"] > 0


def test_backend_container_reports_healthy(host: Any) -> None:
    """Its Docker healthcheck runs `docker exec` as uid 10001: it passes, as on a real Pi (root may enter it)."""
    assert wait_until_healthy(host) == "healthy"


def test_backend_runs_on_the_hosts_network_with_no_published_port(backend_inspect: dict[str, Any]) -> None:
    """No docker-proxy between nginx and the backend (roles/backend/README.md), hardening kept."""
    hostcfg = backend_inspect["HostConfig"]
    assert hostcfg["NetworkMode"] == "host"
    assert not hostcfg["PortBindings"]
    assert hostcfg["CapDrop"] == ["ALL"] and "no-new-privileges:true" in hostcfg["SecurityOpt"]
    env = dict(item.split("=", 1) for item in backend_inspect["Config"]["Env"])
    assert env["BACKEND_HOST"] == "127.0.0.1"


def test_nothing_listens_on_the_backend_port_beyond_loopback(host: Any) -> None:
    listeners = host.check_output(f"ss -Hltn 'sport = :{BACKEND_PORT}'").splitlines()
    local = [line.split()[3] for line in listeners]
    assert local, f"nothing listens on :{BACKEND_PORT}"
    assert all(addr.startswith("127.0.0.1:") for addr in local), local
    assert answers_on(host, "127.0.0.1", BACKEND_PORT)
    assert not answers_on(host, pi_address(host), BACKEND_PORT), "the backend answers on the Pi's LAN address"


def test_the_address_check_sees_a_server_listening_on_every_address(host: Any) -> None:
    """The broken case of the checks above: a server on 0.0.0.0 answers on the Pi's address, one on loopback does not."""
    with host.sudo():
        host.run("nohup python3 -m http.server 7797 --bind 0.0.0.0 >/dev/null 2>&1 & "
                 "nohup python3 -m http.server 7798 --bind 127.0.0.1 >/dev/null 2>&1 &")
    try:
        host.run("for i in $(seq 40); do curl -fs -o /dev/null http://127.0.0.1:7797/ && curl -fs -o /dev/null"
                 " http://127.0.0.1:7798/ && break; sleep 0.25; done")
        address = pi_address(host)
        assert answers_on(host, address, 7797)
        assert not answers_on(host, address, 7798)
    finally:
        with host.sudo():
            host.run("pkill -f 'http.server 779[78]'")


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
        "proxy_request_buffering on;",  # the request body: bounded before the backend sees it
        "proxy_http_version 1.1;",
        'proxy_set_header Connection "";',
        "gzip off;",
        "proxy_read_timeout 3600s;",
        "limit_conn pi5_conn 32;",
        "limit_req zone=pi5_req burst=40 nodelay;",
    ):
        assert directive in location, f"{directive} missing from location /api"
    for directive in ("client_header_timeout 10s;", "client_body_timeout 10s;", "access_log /var/log/nginx/access.log pi5_no_query;"):
        assert directive in nginx_t, f"{directive} missing from nginx -T"


def test_default_site_is_gone(host: Any, nginx_t: str) -> None:
    assert not host.file("/etc/nginx/sites-enabled/default").exists
    assert "# configuration file /etc/nginx/sites-enabled/default" not in nginx_t


def test_nginx_listens_for_browsers_on_http_and_https(host: Any) -> None:
    assert host.socket("tcp://0.0.0.0:80").is_listening
    assert host.socket("tcp://0.0.0.0:443").is_listening


def test_plain_http_redirects_to_https(host: Any) -> None:
    out = host.check_output("curl -sS -o /dev/null -w '%{http_code} %{redirect_url}' http://127.0.0.1/api/health")
    assert out == "301 https://127.0.0.1/api/health"


def test_certificate_is_valid_for_the_pi_name(host: Any) -> None:
    name = host.backend.host
    ok = host.run(f"curl -fsS --cacert {CERT} --resolve {name}:443:127.0.0.1 https://{name}/api/health")
    assert ok.rc == 0, ok.stderr
    wrong = host.run(f"curl -fsS --cacert {CERT} --resolve not-{name}:443:127.0.0.1 https://not-{name}/api/health")
    assert wrong.rc == 60, "a name the certificate does not carry must not verify"


def test_https_offers_http2_and_hides_the_version(host: Any) -> None:
    out = host.check_output("curl -skS -D - -o /dev/null --http2 https://127.0.0.1/api/health")
    assert out.startswith("HTTP/2 200")
    assert not re.search(r"(?im)^server: nginx/", out)


# --- The stream itself ------------------------------------------------------

def test_tokens_stream_incrementally_through_nginx_over_http2_and_http11(host: Any) -> None:
    for version, wire in (("2", "2"), ("1.1", "1.1")):
        result = stream_check(host, http_version=version)
        assert result.get("verdict") == "incremental", result.get("msg")
        assert result["http_version"] == wire
        assert result["events"] >= 20
        # Spread like the emission (20 x 50 ms), not one burst.
        assert result["span_ms"] >= 500
        assert result["burst_share"] <= 0.5
        assert result["integrity"] == "ok"


def test_a_probe_cut_halfway_resumes_through_nginx_over_http2_and_http11(host: Any) -> None:
    """Issue 14's resume hop, as the role's post-reload check runs it: the reply joins up across the cut."""
    for version in ("2", "1.1"):
        result = stream_check(host, http_version=version, resume=True,
                              headers={"Authorization": f"Bearer {TOKEN}"} if TOKEN else {})
        assert result.get("verdict") == "incremental", result.get("msg")
        resume = result["resume"]
        assert resume["ok"] is True and resume["status"] == 200, resume
        assert resume["resume_url"].startswith(f"https://{host.backend.host}/api/probe/replies/")
        ids = [int(i) for i in resume["ids_before"] + resume["ids_after"]]
        assert ids == list(range(1, result["events"] + 2))  # tokens, then done: nothing missing, nothing twice


def test_chat_endpoint_streams_sse_through_nginx(host: Any) -> None:
    out = host.check_output(
        "curl -skS -N --max-time 20 -D - -X POST https://127.0.0.1/api/chat/message "
        f"-H 'Authorization: Bearer {TOKEN}' -H 'Content-Type: application/json' -d '{{\"message\": \"hello\"}}'"
    )
    assert re.search(r"(?im)^content-type: text/event-stream", out)
    events = [json.loads(line[6:]) for line in out.splitlines() if line.startswith("data: ")]
    assert len([e for e in events if e["type"] == "token"]) >= 2
    assert events[-1]["type"] == "done"
    refused = host.run("curl -sk -o /dev/null -w '%{http_code}' -X POST https://127.0.0.1/api/chat/message "
                       "-H 'Content-Type: application/json' -d '{\"message\": \"hello\"}'")
    assert refused.stdout == "401"  # the shipped posture: no token, no chat


# --- A broken change never goes live ---------------------------------------

def test_broken_site_template_fails_before_the_live_config_changes(host: Any, tmp_path: Path) -> None:
    live = "/etc/nginx/sites-available/pi5-streaming.conf"
    before = host.file(live).sha256sum
    roles = tmp_path / "roles"
    # A copy of the roles somewhere else runs as well: they name what they share, they do not reach for it.
    shutil.copytree(PROJECT / "roles", roles)
    template = roles / "nginx" / "templates" / "streaming-site.conf.j2"
    template.write_text(template.read_text().replace("proxy_buffering {{", "proxy_bufering {{"))
    run = playbook(host, roles=roles)
    assert run.returncode != 0, run.stdout[-2000:]
    assert "Render the streaming site and check it with nginx -t" in run.stdout
    assert 'unknown directive "proxy_bufering"' in run.stdout + run.stderr
    assert host.file(live).sha256sum == before
    assert stream_check(host).get("verdict") == "incremental"


def test_change_that_passes_nginx_t_but_breaks_the_stream_is_rolled_back(host: Any) -> None:
    live = "/etc/nginx/sites-available/pi5-streaming.conf"
    before = host.file(live).sha256sum
    # Narrowing the stream location is valid nginx, but the probe then gets 404.
    run = playbook(host, "-e", json.dumps({"nginx_stream_locations": [{"path": "/api/chat"}]}))
    assert run.returncode != 0, run.stdout[-2000:]
    assert "Tokens do not stream" in run.stdout
    assert "The previous config was restored and reloaded" in run.stdout
    assert host.file(live).sha256sum == before
    assert stream_check(host).get("verdict") == "incremental"


def events_across(host: Any, action: str, tokens: int, after_s: int, max_time_s: int) -> list[dict[str, Any]]:
    """The probe's SSE events, streamed through nginx on the Pi while `action` runs after_s into the stream."""
    url = f"https://127.0.0.1/api/probe/stream?tokens={tokens}&interval_ms=50"
    with host.sudo():
        out = host.check_output(
            f"sh -c 'curl -skN --max-time {max_time_s} \"{url}\" > /tmp/across-stream.txt & "
            f"sleep {after_s}; {action} >/dev/null; wait; cat /tmp/across-stream.txt'"
        )
    return [json.loads(line[6:]) for line in out.splitlines() if line.startswith("data: ")]


def test_streams_in_flight_survive_a_reload(host: Any) -> None:
    """Old workers finish open streams after a graceful reload; nothing is lost."""
    events = events_across(host, "systemctl reload nginx", tokens=60, after_s=1, max_time_s=30)
    tokens = [e for e in events if e["type"] == "token"]
    assert len(tokens) == 60
    assert events[-1]["type"] == "done"
    assert events[-1]["content"]["tokens"] == 60


# --- The backend's contract -------------------------------------------------

def test_backend_restart_cuts_open_streams_but_not_their_replies_and_recovers(host: Any) -> None:
    """A restart (upgrade, crash) of the API container cuts its connections; the reply goes on in the worker and
    Redis, so the stream ends with no `done` (a client reconnects to its Content-Location for the rest:
    test_replies.py) and no `error` (nothing went wrong with the reply)."""
    events = events_across(host, "docker restart backend", tokens=400, after_s=2, max_time_s=60)
    assert 0 < len([e for e in events if e["type"] == "token"]) < 400, "the stream was not open across the restart"
    assert not {"done", "error"} & {e["type"] for e in events}, events[-3:]
    host.run("for i in $(seq 60); do curl -fs http://127.0.0.1:7776/api/health && break; sleep 1; done")
    assert stream_check(host).get("verdict") == "incremental"


def test_another_image_with_the_same_contract_runs_without_editing_the_role(host: Any) -> None:
    if not host.backend.host.endswith("-bookworm"):
        pytest.skip("the image contract does not depend on the Debian release; one Pi proves it")
    with host.sudo():
        host.check_output("docker tag pi5-streaming-backend:local example.org/team/chat-backend:1.0")
    try:
        run = playbook(host, "-e", "backend_image=example.org/team/chat-backend:1.0")
        assert run.returncode == 0, run.stdout[-3000:]
        with host.sudo():
            image = host.check_output("docker inspect -f '{{.Config.Image}}' backend")
        assert image == "example.org/team/chat-backend:1.0"
        assert stream_check(host).get("verdict") == "incremental"
    finally:
        assert playbook(host).returncode == 0  # back to the reference image for the other tests


# Modules that write to the Pi: on a run with nothing to change, none of them may run at all.
WRITERS = {"ansible.builtin.apt", "ansible.builtin.copy", "ansible.builtin.template", "ansible.builtin.file",
           "ansible.builtin.systemd_service", "ansible.builtin.user", "ansible.builtin.lineinfile",
           "ansible.posix.authorized_key", "community.general.timezone", "community.general.locale_gen",
           "ansible.builtin.deb822_repository", "ansible.builtin.unarchive", "community.docker.docker_image_load"}


def test_a_warm_run_writes_nothing_and_reads_each_role_once(host: Any) -> None:
    """The warm path stays cheap: every role read the Pi once (host_state) and skipped each write whose state held."""
    run = playbook(host, report=True)
    assert run.returncode == 0, run.stderr[-3000:]
    results = [(task["task"]["name"], result) for play in json.loads(run.stdout)["plays"] for task in play["tasks"]
               for result in task["hosts"].values()]
    ran = [(name, result.get("action")) for name, result in results if not result.get("skipped")]
    assert [name for name, action in ran if action in WRITERS] == []
    reads = [name.split(" : ")[0] for name, action in ran if action == "pi5.streaming.host_state"]
    # One read per role, the preflight's look at the time zone and keys, and the health report at the end.
    assert sorted(reads) == ["backend", "docker", "nginx", "pi_base", "pi_base", "pi_base", "redis"]


def test_check_mode_shows_the_change_and_changes_nothing(host: Any) -> None:
    live = "/etc/nginx/sites-available/pi5-streaming.conf"
    before = host.file(live).sha256sum
    run = playbook(host, "--check", "--diff", "-e", "nginx_stream_read_timeout_s=1800")
    assert run.returncode == 0, run.stdout[-3000:]
    assert "-        proxy_read_timeout 3600s;" in run.stdout
    assert "+        proxy_read_timeout 1800s;" in run.stdout
    assert host.file(live).sha256sum == before
    assert "proxy_read_timeout 3600s;" in host.file(live).content_string


# --- The Pi reboots ---------------------------------------------------------

def test_after_a_reboot_the_backend_is_healthy_and_a_run_changes_nothing(host: Any) -> None:
    """Power cut or `sudo reboot`: systemd brings Docker and the backend back by themselves, and site.yml then finds
    nothing to change (the simulated Pi's container ends with its systemd and Docker starts it again)."""
    name = host.backend.host
    before = host.check_output("cut -d ' ' -f 22 /proc/1/stat")
    with host.sudo():
        container = host.check_output("docker inspect -f '{{.Id}}' backend")
    with host.sudo():
        host.run("systemctl reboot")
    # Until PID 1 is a new one and systemd has finished booting.
    subprocess.run(["sh", "-c", f"for i in $(seq 180); do s=$(docker exec {name} cut -d ' ' -f 22 /proc/1/stat 2>/dev/null);"
                    f" [ -n \"$s\" ] && [ \"$s\" != {before} ] && docker exec {name} systemctl is-system-running --wait"
                    " 2>/dev/null | grep -qE '^(running|degraded)$' && break; sleep 1; done"], check=False, timeout=400)
    assert host.check_output("cut -d ' ' -f 22 /proc/1/stat") != before, "the simulated Pi did not reboot"
    assert wait_until_healthy(host) == "healthy"
    if host.system_info.codename == "trixie":
        # cloud-init ran in this boot (its /run is new) and rendered /etc/hosts again from its template.
        with host.sudo():
            assert host.run("cloud-init status --wait").rc == 0
        assert host.file("/run/cloud-init/status.json").exists
        assert "configured 'manage_etc_hosts' as True" in host.file("/etc/hosts").content_string
    assert f"127.0.1.1\t{name}\n" in host.file("/etc/hosts").content_string
    assert host.check_output("hostname") == name
    run = playbook(host, report=True)
    assert run.returncode == 0, run.stderr[-3000:]
    stats = json.loads(run.stdout)["stats"][name]
    assert stats["changed"] == 0 and stats["failures"] == 0, stats
    with host.sudo():
        assert host.check_output("docker inspect -f '{{.Id}}' backend") == container, "the backend was recreated"
    assert stream_check(host).get("verdict") == "incremental"
