#!/usr/bin/python
"""Pack the backend's data and the Pi's own config into a tar.gz with a sha256 manifest."""
from __future__ import annotations

DOCUMENTATION = r"""
module: backup_pack
short_description: Pack a data directory and config paths into a tar.gz with a sha256 manifest
description:
  - Archives O(data_dir) as C(data/) and each existing path of O(config_paths) as C(config/<path>), with
    C(MANIFEST.sha256) (the sha256 of every other file in the archive, in C(sha256sum -c) format) and C(INFO.json).
  - Each file is read once, and hashed and archived from that read, so a file the backend appends to while the
    backup runs (one line per message) is archived as that read saw it and matches its manifest line; at worst
    its last line is torn, and the backend's reader skips a torn last line.
  - The archive is written next to O(dest) and renamed into place, mode 0600 (it may hold TLS keys).
options:
  data_dir:
    description: Directory whose contents become C(data/) in the archive; a missing one archives no data.
    type: path
    required: true
  config_paths:
    description: Files or directories archived under C(config/) with their absolute path; missing ones are skipped.
    type: list
    elements: path
    default: []
  dest:
    description: Path of the archive to write on the host.
    type: path
    required: true
  info:
    description: Facts stored in the archive's C(INFO.json) (host, time, data directory, owner).
    type: dict
    default: {}
attributes:
  check_mode:
    support: full
    description: Reports what would be archived and writes nothing.
author: pi5-streaming maintainers
"""

EXAMPLES = r"""
- name: Pack the backend's data and the TLS key into an archive
  pi5.streaming.backup_pack:
    data_dir: /var/lib/pi5-backend
    config_paths: [/etc/nginx/pi5-tls, /etc/docker/daemon.json]
    dest: /var/tmp/pi5-backup.tar.gz
"""

RETURN = r"""
dest:
  description: Path of the archive.
  type: str
  returned: always
sha256:
  description: sha256 of the archive (empty in check mode).
  type: str
  returned: always
data_files:
  description: Number of files archived from O(data_dir).
  type: int
  returned: always
config_files:
  description: Config files archived.
  type: list
  elements: str
  returned: always
missing_config_paths:
  description: Paths of O(config_paths) that do not exist on the host (skipped).
  type: list
  elements: str
  returned: always
"""

import io
import json
import os
import stat
import tarfile
import tempfile
import time
from typing import Any

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.pi5.streaming.plugins.module_utils.checksum import sha256_of, sha256_of_bytes

MANIFEST = "MANIFEST.sha256"
INFO = "INFO.json"


def walk(root: str, arc_root: str) -> list[tuple[str, str]]:
    """(host path, archive name) of root and everything under it, directories before their contents."""
    entries = [(root, arc_root)]
    if os.path.isdir(root) and not os.path.islink(root):
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            rel = os.path.relpath(dirpath, root)
            arc_dir = arc_root if rel == "." else f"{arc_root}/{rel}"
            entries += [(os.path.join(dirpath, d), f"{arc_dir}/{d}") for d in dirnames]
            entries += [(os.path.join(dirpath, f), f"{arc_dir}/{f}") for f in sorted(filenames)]
    return entries


def add_entry(tar: tarfile.TarFile | None, path: str, name: str, manifest: list[str]) -> bool:
    """Archive one directory or regular file; return True for a file.

    Other types are skipped, and so are a writer's temporary files (``*.tmp``) and files that vanished
    since the directory was listed (the backend renames its temporary files into place while it runs).
    """
    if path.endswith(".tmp"):
        return False
    try:
        return _add_existing(tar, path, name, manifest)
    except FileNotFoundError:
        return False


def _add_existing(tar: tarfile.TarFile | None, path: str, name: str, manifest: list[str]) -> bool:
    st = os.lstat(path)
    info = tarfile.TarInfo(name)
    info.mode, info.uid, info.gid, info.mtime = stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, int(st.st_mtime)
    if stat.S_ISDIR(st.st_mode):
        info.type = tarfile.DIRTYPE
        if tar is not None:
            tar.addfile(info)
        return False
    if not stat.S_ISREG(st.st_mode):
        return False
    with open(path, "rb") as handle:
        content = handle.read()
    manifest.append(f"{sha256_of_bytes(content)}  {name}")
    info.size = len(content)
    if tar is not None:
        tar.addfile(info, io.BytesIO(content))
    return True


def add_bytes(tar: tarfile.TarFile, name: str, content: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(content), 0o600, int(time.time())
    tar.addfile(info, io.BytesIO(content))


def pack(data_dir: str, config_paths: list[str], dest: str, info: dict[str, Any], write: bool) -> dict[str, Any]:
    sources: list[tuple[str, str]] = []
    if os.path.isdir(data_dir):
        sources += walk(data_dir, "data")
    missing = [p for p in config_paths if not os.path.lexists(p)]
    for path in config_paths:
        if path not in missing:
            sources += walk(path, "config/" + os.path.normpath(path).lstrip("/"))
    manifest: list[str] = []
    result: dict[str, Any] = {"dest": dest, "sha256": "", "missing_config_paths": missing}
    if not write:
        files = [name for path, name in sources
                 if os.path.isfile(path) and not os.path.islink(path) and not path.endswith(".tmp")]
    else:
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(dest), prefix=".pi5-backup-")
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
                files = [name for path, name in sources if add_entry(tar, path, name, manifest)]
                info_json = json.dumps({**info, "files": len(files) + 1}, indent=2, sort_keys=True).encode() + b"\n"
                manifest.append(f"{sha256_of_bytes(info_json)}  {INFO}")
                add_bytes(tar, INFO, info_json)
                add_bytes(tar, MANIFEST, ("\n".join(sorted(manifest, key=lambda line: line[66:])) + "\n").encode())
            os.replace(tmp, dest)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        result["sha256"] = sha256_of(dest)
    result["data_files"] = len([f for f in files if f.startswith("data/")])
    result["config_files"] = [f for f in files if f.startswith("config/")]
    return result


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "data_dir": {"type": "path", "required": True},
            "config_paths": {"type": "list", "elements": "path", "default": []},
            "dest": {"type": "path", "required": True},
            "info": {"type": "dict", "default": {}},
        },
        supports_check_mode=True,
    )
    params = module.params
    try:
        result = pack(params["data_dir"], params["config_paths"], params["dest"], params["info"], not module.check_mode)
    except OSError as error:
        module.fail_json(msg=f"cannot write the backup archive {params['dest']}: {error}")
    module.exit_json(changed=True, **result)


if __name__ == "__main__":
    main()
