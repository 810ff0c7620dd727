#!/usr/bin/env python3
"""Pack the backend's build context (source and wheels) into one reproducible tar, on the controller.

The same content gives the same bytes (names sorted, mtime 0, owner root, modes 0644/0755, caches left
out), so the role's copy of it to the Pi, and the image rebuild that follows a change, happen only when
the content changed: one file to compare instead of one per source file and wheel. Concurrent runs for
several Pis write identical bytes and replace the file atomically.

Prints "written" when the archive changed, "unchanged" when it already held this content.
"""
from __future__ import annotations

import argparse
import io
import os
import tarfile
import tempfile
from pathlib import Path

# Written by tools on the controller, never part of the image.
SKIP_PARTS = frozenset({"__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache"})
SKIP_NAMES = frozenset({".complete"})  # the wheel cache's own marker


def files_of(root: Path, prefix: str) -> list[tuple[Path, str]]:
    """(path, name in the archive) of every regular file under root, sorted, caches left out."""
    found = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if not path.is_file() or SKIP_PARTS.intersection(rel.parts) or rel.name in SKIP_NAMES or path.suffix == ".pyc":
            continue
        found.append((path, prefix + rel.as_posix()))
    return found


def tar_bytes(entries: list[tuple[Path, str]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for path, name in entries:
            content = path.read_bytes()
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.uid, info.gid = len(content), 0, 0, 0
            info.uname = info.gname = "root"
            info.mode = 0o755 if os.access(path, os.X_OK) else 0o644
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def write_if_changed(dest: Path, content: bytes) -> bool:
    if dest.is_file() and dest.read_bytes() == content:
        return False
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    with os.fdopen(fd, "wb") as handle:
        handle.write(content)
    os.chmod(tmp, 0o644)
    os.replace(tmp, dest)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True, help="the backend's directory (Dockerfile, app/)")
    parser.add_argument("--wheels", type=Path, required=True, help="the wheels for the Pi's architecture (-> wheels/)")
    parser.add_argument("--dest", type=Path, required=True, help="the archive to write")
    args = parser.parse_args()
    entries = files_of(args.source, "") + files_of(args.wheels, "wheels/")
    print("written" if write_if_changed(args.dest, tar_bytes(entries)) else "unchanged")


if __name__ == "__main__":
    main()
