"""What the nginx role's post-reload stream check asks for, rendered by Ansible from the role's own vars."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.runner import render_role_var

TOKEN = "a-token-of-the-vault-0123456789"
CDN = {"name": "cdn", "url": "https://chat.example.com/api/probe/stream"}


def verify_hops(tmp: Path, token: str, *args: str) -> list[dict[str, Any]]:
    inputs = {"backend_auth_token": token, "nginx_verify_extra_hops": [CDN], "nginx_tls": False}
    hops: list[dict[str, Any]] = render_role_var(tmp, "nginx", "nginx_verify_hops", inputs, *args)
    return hops


def test_the_pis_own_hops_carry_the_token_and_the_extra_hops_do_not(tmp_path: Path) -> None:
    """A probe flood holds every anonymous probe place; the check's probe, with the token, still gets one."""
    hops = {hop["name"]: hop for hop in verify_hops(tmp_path, TOKEN)}
    assert list(hops) == ["backend", "nginx", "cdn"]
    for name in ("backend", "nginx"):
        assert hops[name]["headers"] == {"Authorization": f"Bearer {TOKEN}"}, hops[name]
    assert "headers" not in hops["cdn"]  # the user's CDN is not the Pi: the token does not leave it


def test_no_token_no_header(tmp_path: Path) -> None:
    """backend_auth_off: nothing to send, and no `Bearer ` with an empty credential."""
    assert all("headers" not in hop for hop in verify_hops(tmp_path, ""))


def test_the_pis_own_hops_resume_a_cut_probe(tmp_path: Path) -> None:
    """After the hop-by-hop check, the backend's and nginx's probes are cut halfway and resumed (issue 14)."""
    hops = verify_hops(tmp_path, TOKEN)
    assert [hop["name"] for hop in hops if hop.get("resume") is True] == ["backend", "nginx"]
    assert "resume" not in hops[-1]  # the user's CDN: the module's default (off) unless the hop says otherwise


def test_check_mode_does_not_resume(tmp_path: Path) -> None:
    """In check mode the live backend may be the one the run would replace, as the revision may be."""
    hops = verify_hops(tmp_path, TOKEN, "--check")
    assert [hop["name"] for hop in hops] == ["backend", "nginx", "cdn"]
    assert not any("resume" in hop or "expect_header" in hop for hop in hops)
