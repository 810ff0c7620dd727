#!/usr/bin/python
"""Restore a backup_pack archive onto a host whose data directory holds no files, never over data."""
from __future__ import annotations

DOCUMENTATION = r"""
module: backup_restore
short_description: Restore a backup archive, verified against its manifest, only where the host has no data
description:
  - Does nothing (and says so) when O(data_dir) already holds a file. Never replaces a file on the host; each
    restored file is created next to its place and linked in, which fails rather than overwrite.
  - Checks the archive's sha256 (O(sha256)), refuses members outside C(data/) and C(config/), extracts into a
    staging directory beside O(data_dir), and verifies every file against C(MANIFEST.sha256) before anything is
    put in place; a mismatch or a file missing from the manifest fails with nothing restored.
  - Puts C(data/) into O(data_dir) owned by O(owner):O(group), and each C(config/) file at its path only where
    none exists. After placing, the data files are hashed again and compared with the manifest.
options:
  archive:
    description: Path of the archive on the host.
    type: path
    required: true
  sha256:
    description: Expected sha256 of the archive (from its sidecar on the controller); empty skips the check.
    type: str
    default: ""
  data_dir:
    description: Directory the archive's C(data/) is restored into.
    type: path
    required: true
  owner:
    description: Numeric user that owns the restored data (the backend container's user).
    type: int
    required: true
  group:
    description: Numeric group of the restored data.
    type: int
    required: true
  restore_config:
    description: Also restore the archive's C(config/) files, each only where none exists on the host.
    type: bool
    default: true
  config_paths:
    description:
      - The config files and directories a restore may write (the backup's C(backup_config_paths)).
      - Config files in the archive outside them are not restored (RV(config_skipped)); empty restores no config.
    type: list
    elements: path
    default: []
attributes:
  check_mode:
    support: full
    description: Verifies the archive and reports what would be restored; writes nothing.
author: pi5-streaming maintainers
"""

EXAMPLES = r"""
- name: Restore the backend's data from a backup, never over existing data
  pi5.streaming.backup_restore:
    archive: /var/tmp/pi5-restore.tar.gz
    sha256: "{{ sidecar_sha256 }}"
    data_dir: /var/lib/pi5-backend
    owner: 10001
    group: 10001
"""

RETURN = r"""
restored:
  description: Whether data was restored (false when the host already had data).
  type: bool
  returned: always
data_files:
  description: Files restored into O(data_dir) (or that would be, in check mode).
  type: int
  returned: always
config_restored:
  description: Config paths restored.
  type: list
  elements: str
  returned: always
config_kept:
  description: Config paths in the archive left alone because the host has them.
  type: list
  elements: str
  returned: always
config_skipped:
  description: Config paths in the archive outside O(config_paths), not restored.
  type: list
  elements: str
  returned: always
verified:
  description: Files verified against the manifest.
  type: int
  returned: always
"""

import os
import shutil
import tarfile
import tempfile
from typing import Any

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.pi5.streaming.plugins.module_utils.checksum import sha256_of

MANIFEST = "MANIFEST.sha256"
TOP_LEVEL = ("data", "config")


class RestoreError(Exception):
    """A reason to stop restoring; partial when files were already in place."""

    def __init__(self, message: str, partial: bool = False) -> None:
        super().__init__(message)
        self.partial = partial


def files_under(root: str) -> list[str]:
    """Regular files under root, relative to it (empty when root is missing)."""
    found = []
    for dirpath, _, filenames in os.walk(root):
        found += [os.path.relpath(os.path.join(dirpath, f), root) for f in filenames]
    return sorted(found)


def check_members(tar: tarfile.TarFile) -> None:
    """Only plain files and directories under data/ and config/, plus the manifest and info, no escapes."""
    for member in tar.getmembers():
        name = os.path.normpath(member.name)
        top = name.split("/", 1)[0]
        if name.startswith(("/", "..")) or not (top in TOP_LEVEL or name in (MANIFEST, "INFO.json")):
            raise RestoreError(f"unexpected member {member.name!r}: not a pi5 backup archive")
        if not (member.isfile() or member.isdir()):
            raise RestoreError(f"member {member.name!r} is neither a file nor a directory")


def read_manifest(staging: str) -> dict[str, str]:
    path = os.path.join(staging, MANIFEST)
    if not os.path.isfile(path):
        raise RestoreError(f"the archive has no {MANIFEST}")
    entries = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle.read().splitlines():
            digest, sep, name = line.partition("  ")
            if not sep or len(digest) != 64:
                raise RestoreError(f"malformed manifest line {line!r}")
            entries[name] = digest
    return entries


def verify(staging: str, manifest: dict[str, str]) -> int:
    """Every extracted file matches its manifest line and every manifest line has its file."""
    extracted = set(files_under(staging)) - {MANIFEST}
    if extracted - manifest.keys():
        raise RestoreError(f"files not in the manifest: {sorted(extracted - manifest.keys())}")
    for name, digest in sorted(manifest.items()):
        path = os.path.join(staging, name)
        if not os.path.isfile(path):
            raise RestoreError(f"{name} is in the manifest but not in the archive")
        if sha256_of(path) != digest:
            raise RestoreError(f"checksum mismatch for {name}: the archive is corrupt or was altered")
    return len(manifest)


def place(source: str, target: str, uid: int, gid: int) -> None:
    """Copy source to target with its mode, owned by uid:gid; never replaces an existing target."""
    directory = os.path.dirname(target)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".pi5-restore-")
    os.close(fd)
    try:
        shutil.copyfile(source, tmp)
        os.chmod(tmp, os.stat(source).st_mode & 0o7777)
        os.chown(tmp, uid, gid)
        try:
            os.link(tmp, target)  # fails rather than overwrite
        except FileExistsError as error:
            raise RestoreError(f"{target} appeared on the host during the restore: kept it", partial=True) from error
    finally:
        os.unlink(tmp)


def under_any(path: str, roots: list[str]) -> bool:
    """Whether path is one of roots or below one (an archive may only write where the backup read)."""
    return any(path == os.path.normpath(root) or path.startswith(os.path.normpath(root).rstrip("/") + "/")
               for root in roots)


def make_dirs(staged_root: str, target_root: str, uid: int | None, gid: int | None) -> None:
    """Create target_root and the directories under it as they are staged (mode; owner uid:gid or the archive's)."""
    for dirpath, _, _ in os.walk(staged_root):
        rel = os.path.relpath(dirpath, staged_root)
        target = os.path.normpath(os.path.join(target_root, rel))
        st = os.stat(dirpath)
        if not os.path.isdir(target):
            os.makedirs(target, exist_ok=True)
            os.chmod(target, st.st_mode & 0o7777)
            os.chown(target, st.st_uid if uid is None else uid, st.st_gid if gid is None else gid)


def extract(archive: str, staging: str) -> None:
    """Unpack a checked archive into staging (members are checked first: no escapes, files and dirs only)."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            check_members(tar)
            # Ownership and modes are the archive's (this runs as root). Python 3.11.4+ has extraction
            # filters (bookworm's 3.11.2 has not); the members are already checked either way.
            if hasattr(tarfile, "data_filter"):
                tar.extractall(staging, filter="fully_trusted")  # noqa: S202
            else:
                tar.extractall(staging)  # noqa: S202
    except (tarfile.TarError, EOFError, OSError) as error:
        raise RestoreError(f"cannot read {archive}: {error}") from error


def plan_config(staged_config: str, params: dict[str, Any], result: dict[str, Any]) -> None:
    """Sort the archive's config files into restored (the host lacks them), kept (it has them) and skipped."""
    for rel in files_under(staged_config) if params["restore_config"] else []:
        if not under_any("/" + rel, params["config_paths"]):
            result["config_skipped"].append("/" + rel)
        else:
            result["config_kept" if os.path.lexists("/" + rel) else "config_restored"].append("/" + rel)


def put_in_place(staging: str, data_files: list[str], manifest: dict[str, str], params: dict[str, Any],
                 config_paths: list[str]) -> None:
    """Place the staged data (owned by the backend's uid) and config files, then hash the data again."""
    data_dir, uid, gid = params["data_dir"], params["owner"], params["group"]
    staged_data, staged_config = os.path.join(staging, "data"), os.path.join(staging, "config")
    if os.path.isdir(staged_data):
        make_dirs(staged_data, data_dir, uid, gid)
        for rel in data_files:
            place(os.path.join(staged_data, rel), os.path.join(data_dir, rel), uid, gid)
    for path in config_paths:
        rel = path.lstrip("/")
        staged = os.path.join(staged_config, rel)
        top = rel.split("/", 1)[0]
        make_dirs(os.path.join(staged_config, top), "/" + top, None, None)
        st = os.stat(staged)
        place(staged, path, st.st_uid, st.st_gid)
    for rel in data_files:
        if sha256_of(os.path.join(data_dir, rel)) != manifest["data/" + rel]:
            raise RestoreError(f"{os.path.join(data_dir, rel)} does not match the manifest after restoring", partial=True)


def restore(params: dict[str, Any], check_mode: bool) -> dict[str, Any]:
    data_dir = params["data_dir"]
    result: dict[str, Any] = {"restored": False, "data_files": 0, "config_restored": [], "config_kept": [],
                              "config_skipped": [], "verified": 0}
    present = files_under(data_dir)
    if present:
        result["msg"] = f"{data_dir} already holds {len(present)} file(s): nothing restored (data on the host is never overwritten)"
        return result
    if params["sha256"] and sha256_of(params["archive"]) != params["sha256"].lower():
        raise RestoreError(f"{params['archive']} does not match its sha256 {params['sha256']}: corrupt or altered in transfer")
    parent = os.path.dirname(os.path.normpath(data_dir))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(data_dir)}.restore-")
    try:
        extract(params["archive"], staging)
        manifest = read_manifest(staging)
        result["verified"] = verify(staging, manifest)
        data_files = files_under(os.path.join(staging, "data"))
        result["data_files"] = len(data_files)
        plan_config(os.path.join(staging, "config"), params, result)
        result["restored"] = bool(data_files or result["config_restored"])
        if check_mode:
            return result
        put_in_place(staging, data_files, manifest, params, result["config_restored"])
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    result["msg"] = (f"restored {len(data_files)} data file(s) into {data_dir} and {len(result['config_restored'])} config file(s); "
                     f"{result['verified']} file(s) verified against the manifest")
    return result


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "archive": {"type": "path", "required": True},
            "sha256": {"type": "str", "default": ""},
            "data_dir": {"type": "path", "required": True},
            "owner": {"type": "int", "required": True},
            "group": {"type": "int", "required": True},
            "restore_config": {"type": "bool", "default": True},
            "config_paths": {"type": "list", "elements": "path", "default": []},
        },
        supports_check_mode=True,
    )
    try:
        result = restore(module.params, module.check_mode)
    except RestoreError as error:
        module.fail_json(msg=f"{'Restore stopped (files already restored stay)' if error.partial else 'Nothing restored'}: {error}")
    module.exit_json(changed=result["restored"], **result)


if __name__ == "__main__":
    main()
