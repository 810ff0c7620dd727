#!/usr/bin/python
"""Pack a Docker build context (a source directory and a wheel directory) into one reproducible tar."""
from __future__ import annotations

DOCUMENTATION = r"""
module: build_context
short_description: Pack a build context into one reproducible tar, rewritten only when its content changed
description:
  - With O(requirements), first downloads the pinned, hashed wheels of that file for O(platform) into O(wheels), once
    (a marker holding the file's sha256 says the download completed; a changed file downloads again).
  - Archives every regular file of O(source) at the top of the tar and every file of O(wheels) under C(wheels/).
  - The same content gives the same bytes (names sorted, mtime 0, owner root, modes 0644/0755, tool caches and
    C(*.pyc) left out), so a copy of the archive to a host, and the image build that follows it, happen only when
    the content changed; one file to compare instead of one per source file and wheel.
  - The archive is written next to O(dest) and renamed into place, so concurrent runs for several hosts write
    identical bytes without tearing it. Meant to run on the controller, delegated to localhost.
options:
  source:
    description: Directory with the Dockerfile and the application.
    type: path
    required: true
  wheels:
    description: Directory of wheels for the target platform; packed as C(wheels/).
    type: path
    required: true
  requirements:
    description: A pip requirements file with hashes whose wheels are downloaded into O(wheels) first; empty downloads nothing.
    type: path
    default: ""
  platform:
    description: The pip platform tag of the wheels to download (C(manylinux2014_aarch64) for a Pi 5).
    type: str
    default: manylinux2014_aarch64
  python_version:
    description: The Python version of the image the wheels are for.
    type: str
    default: "3.11"
  dest:
    description: The archive to write.
    type: path
    required: true
attributes:
  check_mode:
    support: full
    description: Reports whether the archive would change; writes nothing (downloads wheels into the controller's cache).
author: pi5-streaming maintainers
"""

EXAMPLES = r"""
- name: Pack the backend's source and wheels on the controller
  pi5.streaming.build_context:
    source: "{{ playbook_dir }}/files/backend"
    wheels: ~/.cache/pi5-streaming/wheels/aarch64-0123456789ab
    requirements: "{{ playbook_dir }}/files/backend/requirements.txt"
    platform: manylinux2014_aarch64
    dest: ~/.cache/pi5-streaming/contexts/backend-aarch64.tar
  delegate_to: localhost
"""

RETURN = r"""
dest:
  description: Path of the archive.
  type: str
  returned: always
downloaded:
  description: Whether wheels were downloaded in this run.
  type: bool
  returned: always
sha256:
  description: sha256 of the archive's content.
  type: str
  returned: always
files:
  description: Number of files in the archive.
  type: int
  returned: always
"""

import io
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.pi5.streaming.plugins.module_utils.checksum import sha256_of, sha256_of_bytes

# Written by tools on the controller, never part of the image.
SKIP_PARTS = frozenset({"__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache"})
MARKER = ".complete"  # the wheel cache's own marker: the sha256 of the requirements it holds
SKIP_NAMES = frozenset({MARKER})


def download_wheels(requirements: Path, wheels: Path, platform: str, python_version: str) -> bool:
    """Fill ``wheels`` with the hashed wheels of ``requirements`` for the platform, unless the marker says it holds them."""
    marker, digest = wheels / MARKER, sha256_of(str(requirements))
    if marker.is_file() and marker.read_text().strip() == digest:
        return False
    wheels.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--require-hashes",
         "--only-binary=:all:", f"--platform={platform}", f"--python-version={python_version}", "--implementation=cp",
         f"--dest={wheels}", f"--requirement={requirements}"],
        check=True, capture_output=True, text=True,
    )
    marker.write_text(digest + "\n")
    return True


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


def write(dest: Path, content: bytes) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    with os.fdopen(fd, "wb") as handle:
        handle.write(content)
    os.chmod(tmp, 0o644)
    os.replace(tmp, dest)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "source": {"type": "path", "required": True},
            "wheels": {"type": "path", "required": True},
            "dest": {"type": "path", "required": True},
            "requirements": {"type": "path", "default": ""},
            "platform": {"type": "str", "default": "manylinux2014_aarch64"},
            "python_version": {"type": "str", "default": "3.11"},
        },
        supports_check_mode=True,
    )
    source, wheels, dest = (Path(module.params[key]) for key in ("source", "wheels", "dest"))
    if not source.is_dir():
        module.fail_json(msg=f"source: {source} is not a directory")
    downloaded = False
    if module.params["requirements"]:
        try:
            downloaded = download_wheels(Path(module.params["requirements"]), wheels, module.params["platform"],
                                         module.params["python_version"])
        except (OSError, subprocess.CalledProcessError) as error:
            detail = getattr(error, "stderr", "") or str(error)
            module.fail_json(msg=f"requirements: cannot download the wheels for {module.params['platform']}: {detail}")
    entries = files_of(source, "") + files_of(wheels, "wheels/")
    content = tar_bytes(entries)
    changed = not (dest.is_file() and dest.read_bytes() == content)
    if changed and not module.check_mode:
        try:
            write(dest, content)
        except OSError as error:
            module.fail_json(msg=f"dest: cannot write {dest}: {error}")
    module.exit_json(changed=changed, dest=str(dest), sha256=sha256_of_bytes(content), files=len(entries), downloaded=downloaded)


if __name__ == "__main__":
    main()
