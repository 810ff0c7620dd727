"""The Pi 5 boot settings, the detection that guards them, and the health report, on stand-in files.

The boot directory is a variable (pi_base_boot_dir), so the same tasks site.yml runs on a Pi 5 run
here on a copy of its boot partition; the reboot is off (and this machine is no Pi 5 anyway).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.runner import ROOT, failures, make_inventory, messages, run_playbook

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


def apply(tmp: Path, tasks: str | list[str], extra: dict[str, Any], env: dict[str, str] | None = None) -> dict[str, Any]:
    inventory = tmp / "inventory"
    hosts = inventory / "hosts.yml" if inventory.exists() else make_inventory(inventory)
    return run_playbook(APPLY, hosts, {"role": "pi_base", "tasks": tasks, **extra}, env=env)


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
