"""pi5.streaming.holds: a write may be skipped only when the Pi already has exactly this file."""
from __future__ import annotations

import hashlib
from typing import Any

import pytest

from ansible_collections.pi5.streaming.plugins.test.holds import holds

CONTENT = "PasswordAuthentication no\n"


def seen(**changes: Any) -> dict[str, Any]:
    """A path as host_state reports it: a root-owned 0644 file holding CONTENT, with changes."""
    state = {"exists": True, "type": "file", "mode": "0644", "uid": 0, "gid": 0, "size": len(CONTENT),
             "target": None, "sha256": hashlib.sha256(CONTENT.encode()).hexdigest()}
    return {**state, **changes}


def test_the_same_file_holds() -> None:
    assert holds(seen(), CONTENT, "0644")
    assert holds(seen(uid=10001, gid=10001), CONTENT, "644", uid=10001, gid=10001)


@pytest.mark.parametrize(("state", "why"), [
    (seen(sha256=hashlib.sha256(b"PasswordAuthentication yes\n").hexdigest()), "other content"),
    (seen(mode="0666"), "world-writable"),
    (seen(uid=1000), "owned by a user"),
    (seen(gid=1000), "group of a user"),
    (seen(type="link", target="/tmp/x", sha256=None), "a link in its place"),
    (seen(exists=False, type=None, sha256=None), "missing"),
    (seen(sha256=None), "too large to hash"),
    ({}, "not read at all"),
])
def test_anything_else_does_not(state: dict[str, Any], why: str) -> None:
    assert not holds(state, CONTENT, "0644"), why


def test_a_trailing_newline_counts() -> None:
    assert not holds(seen(), CONTENT.rstrip("\n"), "0644")
