"""What the role does to spare the SD card, on stand-in files: dphys-swapfile's swap file (bookworm)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.pi_base.test_boot_and_health import apply, fake_tools
from tests.runner import failures


def dphys_swapfile(tmp: Path) -> tuple[dict[str, str], dict[str, Any]]:
    """A bookworm Pi's dphys-swapfile as a stand-in whose swap file is under tmp: `uninstall` swaps off and deletes it."""
    swap = tmp / "swap"
    swap.write_bytes(b"\0" * 4096)
    env = fake_tools(tmp, **{"dphys-swapfile": f'[ "$1" = uninstall ] && rm -f {swap} && echo "$1" >>{tmp}/calls'})
    # swap none: no zram generator is installed on this machine; the swap file goes whatever replaces it.
    settings: dict[str, Any] = {"pi_base_swap_manager": "dphys-swapfile", "pi_base_dphys_swapfile_path": str(swap), "pi_base_swap": "none",
                "pi_base_reboot": False}
    return env, settings


def test_dphys_swapfiles_swap_file_is_removed_from_the_card_once(tmp_path: Path) -> None:
    """Stopping dphys-swapfile only swaps off: its file (/var/swap, often 512 MiB to 2 GiB) would stay on the card."""
    env, settings = dphys_swapfile(tmp_path)
    first = apply(tmp_path, ["detect.yml", "swap.yml"], settings, env=env)
    assert first["returncode"] == 0, failures(first)
    assert not (tmp_path / "swap").exists()
    second = apply(tmp_path, ["detect.yml", "swap.yml"], settings, env=env)
    assert second["returncode"] == 0, failures(second)
    assert second["stats"]["preflight-target"]["changed"] == 0
    assert (tmp_path / "calls").read_text() == "uninstall\n"


def test_a_swap_file_is_left_where_dphys_swapfile_is_not_the_swap_manager(tmp_path: Path) -> None:
    """A file at that path that is no dphys-swapfile's (no swap manager here) is not the role's to delete."""
    env, settings = dphys_swapfile(tmp_path)
    report = apply(tmp_path, ["detect.yml", "swap.yml"], settings | {"pi_base_swap_manager": "none"}, env=env)
    assert report["returncode"] == 0, failures(report)
    assert (tmp_path / "swap").exists()
