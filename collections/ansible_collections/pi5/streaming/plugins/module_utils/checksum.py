"""The one sha256 helper the collection's modules share (backups, their restore, the build context)."""
from __future__ import annotations

import hashlib


def sha256_of(path: str) -> str:
    """The file's sha256, read in chunks (the Pi's Python is 3.11+: bookworm 3.11, trixie 3.13)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def sha256_of_bytes(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()
