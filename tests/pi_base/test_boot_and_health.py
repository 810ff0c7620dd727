"""The Pi 5 boot settings, the detection that guards them, and the health report, on stand-in files.

The boot directory is a variable (pi_base_boot_dir), so the same tasks site.yml runs on a Pi 5 run
here on a copy of its boot partition; the reboot is off (and this machine is no Pi 5 anyway).
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.runner import ROOT, failures, make_inventory, messages, results, run_playbook

APPLY = ROOT / "tests" / "pi_base" / "apply_tasks.yml"
CMDLINE = "console=serial0,115200 console=tty1 root=PARTUUID=4e639091-02 rootfstype=ext4 fsck.repair=yes rootwait\n"
CONFIG_TXT = "# For more options and information see\n# http://rptl.io/configtxt\ndtparam=audio=on\n\n[cm5]\ndtoverlay=dwc2,dr_mode=host\n"


@pytest.fixture
def boot(tmp_path: Path) -> Path:
    directory = tmp_path / "firmware"
    directory.mkdir()
    (directory / "cmdline.txt").write_text(CMDLINE)
    (directory / "config.txt").write_text(CONFIG_TXT)
    return directory


def apply(tmp: Path, tasks: str | list[str], extra: dict[str, Any], env: dict[str, str] | None = None,
          flags: tuple[str, ...] = ()) -> dict[str, Any]:
    inventory = tmp / "inventory"
    hosts = inventory / "hosts.yml" if inventory.exists() else make_inventory(inventory)
    return run_playbook(APPLY, hosts, {"role": "pi_base", "tasks": tasks, **extra}, *flags, env=env)


def apply_boot(boot: Path, **extra: Any) -> dict[str, Any]:
    settings = {"pi_base_boot_dir": str(boot), "pi_base_reboot": False, "pi_base_page_size": 4096}
    # detect.yml reads the stand-in boot directory's cmdline.txt, as it reads the Pi's.
    report = apply(boot.parent, ["detect.yml", "boot.yml"], {**settings, **extra})
    assert report["returncode"] == 0 or extra.get("expect_failure"), failures(report) or report["stderr"]
    return report


def test_the_memory_cgroup_flags_are_added_once_to_the_one_line(boot: Path) -> None:
    first = apply_boot(boot)
    assert first["stats"]["preflight-target"]["changed"] >= 1
    # Only cgroup_enable=memory: the Pi kernels know no cgroup_memory=1.
    assert (boot / "cmdline.txt").read_text() == CMDLINE.rstrip("\n") + " cgroup_enable=memory\n"
    assert [p.name for p in boot.glob("cmdline.txt.*~")], "no dated backup of cmdline.txt"
    assert any("reboot the Pi yourself" in m for m in messages(first))
    second = apply_boot(boot)
    assert second["stats"]["preflight-target"]["changed"] == 0
    assert (boot / "cmdline.txt").read_text().count("cgroup_enable=memory") == 1


def test_a_cmdline_the_pi_cannot_boot_from_is_never_written(boot: Path) -> None:
    (boot / "cmdline.txt").write_text("console=tty1 quiet\n")  # no root=: broken already, or a wrong file
    report = apply_boot(boot, expect_failure=True)
    assert report["returncode"] != 0
    assert failures(report)[0][0] == "pi_base : Add the kernel flags that enable the memory cgroup (and any others configured)"
    assert (boot / "cmdline.txt").read_text() == "console=tty1 quiet\n"


def test_config_txt_settings_are_a_managed_block_under_all(boot: Path) -> None:
    apply_boot(boot, pi_base_config_txt=["dtparam=pciex1", "dtparam=pciex1_gen=3"], pi_base_kernel_4k_pages=True)
    text = (boot / "config.txt").read_text()
    assert text.startswith(CONFIG_TXT)
    assert ("[all]\ndtparam=pciex1\ndtparam=pciex1_gen=3\nkernel=kernel8.img\n"
            "# END pi5-streaming settings (Ansible role pi_base)") in text
    assert apply_boot(boot, pi_base_config_txt=["dtparam=pciex1", "dtparam=pciex1_gen=3"],
                      pi_base_kernel_4k_pages=True)["stats"]["preflight-target"]["changed"] == 0
    apply_boot(boot, pi_base_config_txt=[])
    assert (boot / "config.txt").read_text() == CONFIG_TXT


@pytest.mark.parametrize(("page_size", "warned"), [(16384, True), (4096, False)])
def test_the_16k_page_kernel_is_warned_about_for_images_that_need_4k(boot: Path, page_size: int, warned: bool) -> None:
    report = apply_boot(boot, pi_base_page_size=page_size, pi_base_images_needing_4k_pages=["example/jemalloc-app:1"])
    assert any("WARNING" in m and "example/jemalloc-app:1" in m for m in messages(report)) is warned


PROC_CGROUPS_HEAD = "#subsys_name\thierarchy\tnum_cgroups\tenabled\ncpu\t2\t90\t1\n"


@pytest.mark.parametrize(("controllers", "proc_cgroups", "on"), [
    ("cpuset cpu io memory pids\n", PROC_CGROUPS_HEAD, True),  # cgroup v2 (Raspberry Pi OS), memory on
    ("cpuset cpu io pids\n", PROC_CGROUPS_HEAD + "memory\t0\t90\t1\n", False),  # v2 without it: /proc/cgroups is not asked
    (None, PROC_CGROUPS_HEAD + "memory\t4\t90\t1\n", True),  # cgroup v1: /proc/cgroups alone tells
    (None, PROC_CGROUPS_HEAD + "memory\t0\t90\t0\n", False),
])
def test_the_memory_cgroup_is_checked_once_the_flag_is_booted(
        boot: Path, controllers: str | None, proc_cgroups: str, on: bool) -> None:
    """With the flag already on the command line (the Pi booted it), a kernel without the memory controller stops the play."""
    (boot / "cmdline.txt").write_text(CMDLINE.rstrip("\n") + " cgroup_enable=memory\n")
    if controllers is not None:
        (boot.parent / "cgroup.controllers").write_text(controllers)
    (boot.parent / "cgroups").write_text(proc_cgroups)
    report = apply(boot.parent, ["detect.yml", "boot.yml", "cgroup.yml"], {
        "pi_base_boot_dir": str(boot), "pi_base_reboot": False, "pi_base_page_size": 4096,
        "pi_base_cgroup_controllers_path": str(boot.parent / "cgroup.controllers"),
        "pi_base_proc_cgroups_path": str(boot.parent / "cgroups")})
    assert (report["returncode"] == 0) is on, failures(report)
    if not on:
        [(task, message)] = failures(report)
        assert task.startswith("pi_base : ") and "pi_base_cmdline_flags" in message and "memory" in message


def test_a_flag_just_added_is_not_checked_before_the_reboot(boot: Path) -> None:
    """pi_base_reboot false: the running kernel is the old one, so its missing controller is no failure yet."""
    (boot.parent / "cgroup.controllers").write_text("cpuset cpu io pids\n")
    report = apply(boot.parent, ["detect.yml", "boot.yml", "cgroup.yml"], {
        "pi_base_boot_dir": str(boot), "pi_base_reboot": False, "pi_base_page_size": 4096,
        "pi_base_cgroup_controllers_path": str(boot.parent / "cgroup.controllers")})
    assert report["returncode"] == 0, failures(report)


PI5 = ("Raspberry Pi 5 Model B Rev 1.0\0", "raspberrypi,5-model-b\0brcm,bcm2712\0")
CM5 = ("Raspberry Pi Compute Module 5 Rev 1.0\0", "raspberrypi,5-compute-module\0brcm,bcm2712\0")
PI4 = ("Raspberry Pi 4 Model B Rev 1.5\0", "raspberrypi,4-model-b\0brcm,bcm2711\0")


@pytest.mark.parametrize(("tree", "boot_partition", "pi5"), [
    (PI5, True, True),
    (CM5, True, True),  # a Compute Module 5: another model string, the same SoC
    (PI5, False, False),  # a container on a Pi 5 sees the host's device tree, not its boot partition
    (PI4, True, False),
    (None, True, False),  # no device tree: a PC, a VM
], ids=["pi5", "cm5", "container-on-pi5", "pi4", "no-device-tree"])
def test_boot_settings_are_managed_only_on_a_detected_pi_5(
        tmp_path: Path, tree: tuple[str, str] | None, boot_partition: bool, pi5: bool) -> None:
    device_tree = tmp_path / "device-tree"
    device_tree.mkdir()
    if tree is not None:
        (device_tree / "model").write_text(tree[0])
        (device_tree / "compatible").write_text(tree[1])
    firmware = tmp_path / "firmware"
    if boot_partition:
        firmware.mkdir()
        (firmware / "cmdline.txt").write_text(CMDLINE)
    report = apply(tmp_path, "detect.yml", {"pi_base_device_tree_dir": str(device_tree), "pi_base_boot_dir": str(firmware)})
    assert report["returncode"] == 0, failures(report)
    said = [m for m in messages(report) if "boot settings" in m]
    assert said and ("Pi 5 boot settings are managed" in said[0]) is pi5, said


def test_this_machine_is_detected_as_no_pi_5(tmp_path: Path) -> None:
    """The control: real detection here (a container or a PC) leaves any boot partition alone."""
    report = apply(tmp_path, "detect.yml", {})
    assert any("Not a Pi 5 host" in m and "boot settings are left alone" in m for m in messages(report)), messages(report)


def test_health_decodes_throttling_into_words(tmp_path: Path) -> None:
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "vcgencmd").write_text("#!/bin/sh\necho throttled=0x50005\n")
    (fake_bin / "vcgencmd").chmod(0o755)
    (tmp_path / "temp").write_text("52312\n")
    report = apply(tmp_path, "health.yml", {"pi_base_thermal_zone": str(tmp_path / "temp")},
                   env={"PATH": f"{fake_bin}:{os.environ['PATH']}"})
    assert report["returncode"] == 0, failures(report)
    [health] = [json.loads(m) for m in messages(report) if "Pi health" in m]
    assert health[0] == ("Pi health: temperature 52.3 °C; throttled=0x50005: under-voltage now, throttled now, "
                         "under-voltage has occurred, throttling has occurred")
    assert "power supply" in health[1]


def test_health_is_skipped_cleanly_where_the_tools_are_absent(tmp_path: Path) -> None:
    report = apply(tmp_path, "health.yml", {"pi_base_thermal_zone": str(tmp_path / "no-such-zone")},
                   env={"PATH": "/usr/bin:/bin"})
    assert report["returncode"] == 0, failures(report)
    [health] = [json.loads(m) for m in messages(report) if "Pi health" in m]
    assert health == ["Pi health: temperature unknown (no thermal zone); throttling unknown (no vcgencmd)"]


CLOUD_HOSTS_TEMPLATE = """## template:jinja
{#
This file (/etc/cloud/templates/hosts.debian.tmpl) is only utilized
if enabled in cloud-config.
-#}
# Your system has configured 'manage_etc_hosts' as True.
# As a result, if you wish for changes to this file to persist
# then you will need to either
# a.) make changes to the master file in /etc/cloud/templates/hosts.debian.tmpl
# b.) change or remove the value of 'manage_etc_hosts' in
#     /etc/cloud/cloud.cfg or cloud-config from user-data
#
{# The value '{{hostname}}' will be replaced with the local-hostname -#}
127.0.1.1 {{fqdn}} {{hostname}}
127.0.0.1 localhost
"""


def cloud_init_boot(template: Path, hosts: Path, imager_name: str = "raspberrypi") -> None:
    """What cloud-init's update_etc_hosts does at every boot with manage_etc_hosts: true (Raspberry Pi Imager's user-data)."""
    lines = [line for line in template.read_text().splitlines(keepends=True)
             if not line.startswith(("## template", "{#", "-#}", "This file", "if enabled"))]
    hosts.write_text("".join(lines).replace("{{fqdn}}", imager_name).replace("{{hostname}}", imager_name))


def test_the_host_name_survives_cloud_inits_rewrite_of_etc_hosts(tmp_path: Path) -> None:
    """With cloud-init managing /etc/hosts, the role's 127.0.1.1 line goes into its template too: after a reboot
    /etc/hosts still resolves the role's name, and the next run changes nothing."""
    template, hosts = tmp_path / "hosts.debian.tmpl", tmp_path / "hosts"
    template.write_text(CLOUD_HOSTS_TEMPLATE)
    cloud_init_boot(template, hosts)
    settings = {"pi_base_hostname": "pi5", "pi_base_hosts_file": str(hosts), "pi_base_cloud_hosts_template": str(template)}
    first = apply(tmp_path, ["detect.yml", "hosts.yml"], settings)
    assert first["returncode"] == 0, failures(first)
    assert "127.0.1.1\tpi5\n" in hosts.read_text() and "127.0.1.1\tpi5\n" in template.read_text()
    cloud_init_boot(template, hosts)  # the reboot
    assert "127.0.1.1\tpi5\n" in hosts.read_text() and "raspberrypi" not in hosts.read_text()
    second = apply(tmp_path, ["detect.yml", "hosts.yml"], settings)
    assert second["returncode"] == 0 and second["stats"]["preflight-target"]["changed"] == 0, failures(second)


def test_without_cloud_init_only_etc_hosts_is_edited(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1\tlocalhost\n127.0.1.1\traspberrypi\n")
    report = apply(tmp_path, ["detect.yml", "hosts.yml"], {
        "pi_base_hostname": "pi5", "pi_base_hosts_file": str(hosts), "pi_base_cloud_hosts_template": str(tmp_path / "none")})
    assert report["returncode"] == 0, failures(report)
    assert hosts.read_text() == "127.0.0.1\tlocalhost\n127.0.1.1\tpi5\n"
    assert not (tmp_path / "none").exists()


DOCKER_MOUNTINFO = ("2474 2456 0:25 / / rw,relatime master:1 - overlay overlay rw\n"
                    "2489 2474 8:1 /var/lib/docker/containers/0f3c/hostname /etc/hostname rw,relatime - ext4 /dev/sda1 rw\n")


@pytest.mark.parametrize(("mountinfo", "owned"), [
    (DOCKER_MOUNTINFO, True),  # Docker's (and Podman's) own /etc/hostname: the host name is the runtime's
    (DOCKER_MOUNTINFO.replace("/etc/hostname ", "/etc/hostname.old "), False),  # a Pi, or the simulated Pi's boot
])
def test_the_host_name_is_left_alone_only_where_a_runtime_mounts_etc_hostname(
        tmp_path: Path, mountinfo: str, owned: bool) -> None:
    (tmp_path / "mountinfo").write_text(mountinfo)
    report = apply(tmp_path, "detect.yml", {"pi_base_mountinfo_path": str(tmp_path / "mountinfo")})
    assert report["returncode"] == 0, failures(report)
    [detected] = [m for m in messages(report) if "page size" in m]
    assert ("whose runtime owns the host name" in detected) is owned, detected


def fake_tools(tmp: Path, **scripts: str) -> dict[str, str]:
    """Commands of a Pi (vcgencmd, journalctl...) as stand-in scripts first on PATH."""
    fake_bin = tmp / "bin"
    fake_bin.mkdir(exist_ok=True)
    for name, body in scripts.items():
        (fake_bin / name).write_text(f"#!/bin/sh\n{body}\n")
        (fake_bin / name).chmod(0o755)
    return {"PATH": f"{fake_bin}:{os.environ['PATH']}"}


def test_health_reads_back_what_the_timer_logged_over_the_day(tmp_path: Path) -> None:
    """A throttled hour this morning explains a stalled stream then, though the Pi is cool now."""
    logged = "temp_c=51.0 throttled=0x0\ntemp_c=83.4 throttled=0x80008\ntemp_c=62.2 throttled=0x80000\n"
    env = fake_tools(tmp_path, vcgencmd="echo throttled=0x0", journalctl=f"printf '{logged}'")
    (tmp_path / "temp").write_text("52312\n")
    report = apply(tmp_path, "health.yml", {"pi_base_thermal_zone": str(tmp_path / "temp")}, env=env)
    assert report["returncode"] == 0, failures(report)
    [health] = [json.loads(m) for m in messages(report) if "Pi health" in m]
    assert health[1] == ("Last 24 h (pi5-health journal): 3 readings, highest 83.4 °C, "
                         "throttled=0x80008, 0x80000")


def test_the_health_logger_logs_one_line_where_the_tools_are(tmp_path: Path) -> None:
    env = fake_tools(tmp_path, vcgencmd='case "$1" in get_throttled) echo throttled=0x50005;; measure_temp) echo "temp=61.2\'C";; esac')
    logger = ROOT / "roles" / "pi_base" / "files" / "pi5-health-log"
    line = subprocess.run(["sh", str(logger)], env=env, capture_output=True, text=True, check=True).stdout
    assert line == "temp_c=61.2 throttled=0x50005\n"
    bare = subprocess.run(["sh", str(logger)], env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True, check=True).stdout
    assert bare.endswith("throttled=unknown\n")


def hardware(tmp: Path, extra: dict[str, Any] | None = None, flags: tuple[str, ...] = (), **present: bool) -> dict[str, Any]:
    """hardware.yml against stand-in tools and devices under tmp: each file exists only when named present."""
    paths = {"pi_base_vcgencmd": tmp / "vcgencmd", "pi_base_eeprom_update_command": tmp / "rpi-eeprom-update",
             "pi_base_watchdog_device": tmp / "watchdog", "pi_base_thermal_zone": tmp / "temp"}
    for name, path in paths.items():
        if present.get(name.removeprefix("pi_base_")):
            # rpi-eeprom-update: exit 1 when an update is available; -a stages it.
            path.write_text("#!/bin/sh\n[ \"$1\" = -a ] && exit 0\necho 'BOOTLOADER: update available'\nexit 1\n"
                            if "eeprom" in name else "")
            path.chmod(0o755)
    settings: dict[str, Any] = {name: str(path) for name, path in paths.items()}
    # No health-log timer: its units would go into this machine's systemd (molecule proves that part).
    settings |= {"pi_base_watchdog_conf_path": str(tmp / "50-pi5-watchdog.conf"), "pi_base_reboot": False,
                 "pi_base_health_log_interval_min": 0,
                 # The checker system.yml installs on the Pi, from the checkout.
                 "pi_base_config_test_command": str(ROOT / "roles" / "pi_base" / "files" / "pi5-config-test")}
    return apply(tmp, ["detect.yml", "hardware.yml"], settings | (extra or {}), flags=flags)


def test_each_pi_5_extra_is_skipped_cleanly_where_its_hardware_is_absent(tmp_path: Path) -> None:
    report = hardware(tmp_path)
    assert report["returncode"] == 0, failures(report)
    assert report["stats"]["preflight-target"]["changed"] == 0
    assert not (tmp_path / "50-pi5-watchdog.conf").exists()


def test_a_watchdog_drop_in_systemd_could_not_parse_is_never_written(tmp_path: Path) -> None:
    report = hardware(tmp_path, {"pi_base_watchdog_conf": "RuntimeWatchdogSec=15\n"}, watchdog_device=True)
    assert report["returncode"] != 0
    assert any("no section headers" in str(result.get("msg", "")) + str(result.get("stderr", ""))
               for _, result in results(report)), failures(report)
    assert not (tmp_path / "50-pi5-watchdog.conf").exists()


def test_the_watchdog_is_fed_and_an_eeprom_update_is_staged_where_present(tmp_path: Path) -> None:
    report = hardware(tmp_path, watchdog_device=True, eeprom_update_command=True)
    assert report["returncode"] == 0, failures(report)
    assert (tmp_path / "50-pi5-watchdog.conf").read_text().endswith("[Manager]\nRuntimeWatchdogSec=15\n")
    staged = [task for task, result in results(report) if "Stage the bootloader update" in task["task"]["name"]
              and not result.get("skipped")]
    assert staged, "an available bootloader update was not staged"
    assert any("reboot the Pi yourself" in m for m in messages(report))


def eeprom(tmp: Path, settings: str) -> dict[str, str]:
    """rpi-eeprom-config as a stand-in: its EEPROM is a file under tmp, and each --apply is logged."""
    (tmp / "eeprom.conf").write_text(settings)
    tool = tmp / "rpi-eeprom-config"
    tool.write_text(f"#!/bin/sh\ncase \"$1\" in\n  '') cat {tmp}/eeprom.conf ;;\n"
                    f"  --apply) cat \"$2\" >{tmp}/eeprom.new && mv {tmp}/eeprom.new {tmp}/eeprom.conf; echo applied >>{tmp}/applied ;;\n"
                    "  *) exit 2 ;;\nesac\n")
    tool.chmod(0o755)
    return {"pi_base_eeprom_config_command": str(tool)}


FACTORY_EEPROM = "[all]\nBOOT_UART=1\nPOWER_OFF_ON_HALT=0\nBOOT_ORDER=0xf461\n"


def test_an_nvme_data_disk_is_booted_first_and_once_set_left_alone(tmp_path: Path) -> None:
    """BOOT_ORDER becomes NVMe, SD, USB (the other settings stay); the next run reads it and applies nothing."""
    settings = eeprom(tmp_path, FACTORY_EEPROM) | {"pi_base_data_disk_source": "/dev/nvme0n1p1"}
    first = hardware(tmp_path, settings)
    assert first["returncode"] == 0, failures(first)
    assert (tmp_path / "eeprom.conf").read_text() == "[all]\nBOOT_UART=1\nPOWER_OFF_ON_HALT=0\nBOOT_ORDER=0xf416\n"
    assert any("reboot the Pi yourself" in m for m in messages(first))
    second = hardware(tmp_path, settings)
    assert second["returncode"] == 0, failures(second)
    assert second["stats"]["preflight-target"]["changed"] == 0
    assert (tmp_path / "applied").read_text() == "applied\n"


def test_a_boot_order_the_settings_lack_is_added_under_all(tmp_path: Path) -> None:
    settings = eeprom(tmp_path, "[all]\nBOOT_UART=1\n[gpio4=0]\nBOOT_ORDER_X=1\n")
    report = hardware(tmp_path, settings | {"pi_base_data_disk_source": "/dev/disk/by-id/nvme-Samsung_SSD_980-part1"})
    assert report["returncode"] == 0, failures(report)
    assert (tmp_path / "eeprom.conf").read_text().endswith("[gpio4=0]\nBOOT_ORDER_X=1\n\n[all]\nBOOT_ORDER=0xf416\n")


@pytest.mark.parametrize("extra", [
    {"pi_base_data_disk_source": "/dev/sda1"},  # a USB disk: the card stays first
    {"pi_base_data_disk_source": ""},  # no data disk
    {"pi_base_data_disk_source": "/dev/nvme0n1p1", "pi_base_nvme_boot_order": ""},  # asked to leave it alone
    {"pi_base_data_disk_source": "/dev/nvme0n1p1", "--check": True},  # check mode changes nothing
])
def test_the_boot_order_is_left_alone_unless_an_nvme_disk_asks_for_it(tmp_path: Path, extra: dict[str, Any]) -> None:
    settings = eeprom(tmp_path, FACTORY_EEPROM) | {key: value for key, value in extra.items() if key != "--check"}
    report = hardware(tmp_path, settings, ("--check",) if "--check" in extra else ())
    assert report["returncode"] == 0, failures(report)
    assert (tmp_path / "eeprom.conf").read_text() == FACTORY_EEPROM
    assert not (tmp_path / "applied").exists()


def test_without_rpi_eeprom_config_the_boot_order_is_skipped_cleanly(tmp_path: Path) -> None:
    report = hardware(tmp_path, {"pi_base_data_disk_source": "/dev/nvme0n1p1",
                                 "pi_base_eeprom_config_command": str(tmp_path / "absent")})
    assert report["returncode"] == 0, failures(report)
    assert report["stats"]["preflight-target"]["changed"] == 0
