"""What the nginx role's post-reload stream check asks for, rendered by Ansible from the role's own vars."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.runner import render_role_var

TOKEN = "a-token-of-the-vault-0123456789"
CDN = {"name": "cdn", "url": "https://chat.example.com/api/probe/stream"}


def verify_hops(tmp: Path, token: str) -> list[dict[str, Any]]:
    inputs = {"backend_auth_token": token, "nginx_verify_extra_hops": [CDN], "nginx_tls": False}
    hops: list[dict[str, Any]] = render_role_var(tmp, "nginx", "nginx_verify_hops", inputs)
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
