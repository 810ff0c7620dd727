"""Backup and restore through the real playbooks, against this machine as a stand-in Pi.

playbooks/backup.yml and playbooks/restore.yml (and the backup role's restore tasks, which site.yml
runs before the backend starts) with the Pi's paths pointed into a temporary directory. The good
path round-trips data and config with owner and mode; the guards each get their broken case: data on
the Pi is never overwritten, and an archive that fails its sidecar checksum or its manifest, or
reaches outside its directories, restores nothing at all.
"""
from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.runner import ROOT, failures, make_inventory, messages, run_playbook

BACKUP = ROOT / "playbooks" / "backup.yml"
RESTORE = ROOT / "playbooks" / "restore.yml"
APPLY = ROOT / "tests" / "pi_base" / "apply_tasks.yml"
UID = 10001


class Pi:
    """The stand-in Pi's paths and the controller's backup directory, all under one temp dir."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.data = tmp / "pi" / "var" / "lib" / "pi5-backend"
        self.tls = tmp / "pi" / "etc" / "nginx" / "pi5-tls"
        self.daemon_json = tmp / "pi" / "etc" / "docker" / "daemon.json"
        self.backups = tmp / "backups"
        self.host_backups = self.backups / "preflight-target"
        self.inventory = make_inventory(tmp / "inventory")
        (tmp / "pi-tmp").mkdir()

    @property
    def settings(self) -> dict[str, Any]:
        return {"backend_data_dir": str(self.data), "backend_uid": UID, "backup_controller_dir": str(self.backups),
                "backup_config_paths": [str(self.tls), str(self.daemon_json)],
                "backup_remote_tmp_dir": str(self.tmp / "pi-tmp")}

    def write_data(self) -> None:
        for name, text in {"threads/a1.json": '{"threadId": "a1"}', "threads/b2.json": '{"threadId": "b2"}'}.items():
            path = self.data / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            path.chmod(0o640)
        for path in [self.data, *self.data.rglob("*")]:
            os.chown(path, UID, UID)
        self.data.chmod(0o750)
        self.tls.mkdir(parents=True)
        self.tls.chmod(0o700)
        (self.tls / "key.pem").write_text("-----BEGIN PRIVATE KEY-----\nnot-real\n-----END PRIVATE KEY-----\n")
        (self.tls / "key.pem").chmod(0o600)
        self.daemon_json.parent.mkdir(parents=True)
        self.daemon_json.write_text('{"log-driver": "json-file"}\n')

    def state(self) -> dict[str, tuple[str, int, int, int]]:
        """sha256, uid, gid and mode of every file and directory of the Pi."""
        found = {}
        for path in sorted((self.tmp / "pi").rglob("*")):
            st = path.lstat()
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
            found[str(path.relative_to(self.tmp))] = (digest, st.st_uid, st.st_gid, st.st_mode & 0o7777)
        return found

    def wipe(self) -> None:
        """The SD card dies: the Pi's files are gone (the controller's backups stay)."""
        for path in sorted((self.tmp / "pi").rglob("*"), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()

    def run(self, playbook: Path, env: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
        return run_playbook(playbook, self.inventory, {**self.settings, **extra}, env=env)

    def archives(self) -> list[Path]:
        return sorted(self.host_backups.glob("*.tar.gz"))


@pytest.fixture
def pi(tmp_path: Path) -> Pi:
    return Pi(tmp_path)


@pytest.fixture
def backed_up(pi: Pi) -> Pi:
    pi.write_data()
    report = pi.run(BACKUP)
    assert report["returncode"] == 0, failures(report) or report["stderr"]
    return pi


def rewrite_archive(archive: Path, change: dict[str, bytes]) -> None:
    """Rewrite an archive with some members' content changed (or added), then fix its sidecar, as a forger would."""
    with tarfile.open(archive, "r:gz") as tar:
        members = [(m, tar.extractfile(m).read() if m.isfile() else b"") for m in tar.getmembers()]  # type: ignore[union-attr]
    names = {m.name for m, _ in members}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for member, original in members:
            content = change.get(member.name, original)
            member.size = len(content)
            tar.addfile(member, io.BytesIO(content) if member.isfile() else None)
        for name, content in change.items():
            if name not in names:
                info = tarfile.TarInfo(name)
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    archive.write_bytes(buffer.getvalue())
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    Path(f"{archive}.sha256").write_text(f"{digest}  {archive.name}\n")


def test_backup_writes_a_dated_private_archive_with_a_manifest_and_a_sidecar(backed_up: Pi) -> None:
    [archive] = backed_up.archives()
    assert archive.name.endswith("Z.tar.gz") and len(archive.name) == len("20261121T083000Z.tar.gz")
    sidecar = Path(f"{archive}.sha256").read_text().split()
    assert sidecar == [hashlib.sha256(archive.read_bytes()).hexdigest(), archive.name]
    assert archive.stat().st_mode & 0o777 == 0o600 and backed_up.host_backups.stat().st_mode & 0o777 == 0o700
    with tarfile.open(archive) as tar:
        manifest = tar.extractfile("MANIFEST.sha256").read().decode().splitlines()  # type: ignore[union-attr]
        files = {m.name: hashlib.sha256(tar.extractfile(m).read()).hexdigest()  # type: ignore[union-attr]
                 for m in tar.getmembers() if m.isfile() and m.name != "MANIFEST.sha256"}
    assert {name: digest for digest, name in (line.split("  ", 1) for line in manifest)} == files
    assert {"data/threads/a1.json", "data/threads/b2.json", "INFO.json"} <= files.keys()
    assert any(name.endswith("etc/nginx/pi5-tls/key.pem") for name in files)
    assert not list((backed_up.tmp / "pi-tmp").iterdir()), "the archive must not stay on the Pi"


def test_restore_brings_back_every_file_with_its_owner_and_mode(backed_up: Pi) -> None:
    before = backed_up.state()
    backed_up.wipe()
    report = backed_up.run(RESTORE)
    assert report["returncode"] == 0, [m for _, m in failures(report)]
    assert backed_up.state() == before
    assert any("restored 2 data file(s)" in m and "verified against the manifest" in m for m in messages(report))


def test_a_controller_without_sha256sum_backs_up_and_restores(pi: Pi) -> None:
    """macOS has no sha256sum: the controller's checksums are Ansible's own (here sha256sum fails as if absent)."""
    fake_bin = pi.tmp / "bin"
    fake_bin.mkdir()
    (fake_bin / "sha256sum").write_text("#!/bin/sh\necho 'sha256sum: command not found' >&2\nexit 127\n")
    (fake_bin / "sha256sum").chmod(0o755)
    env = {"PATH": f"{fake_bin}:{os.environ['PATH']}"}
    pi.write_data()
    backup = pi.run(BACKUP, env=env)
    assert backup["returncode"] == 0, [m for _, m in failures(backup)] or backup["stderr"][-2000:]
    before = pi.state()
    pi.wipe()
    restore = pi.run(RESTORE, env=env)
    assert restore["returncode"] == 0, [m for _, m in failures(restore)]
    assert pi.state() == before


def test_restore_picks_the_newest_backup(backed_up: Pi) -> None:
    [first] = backed_up.archives()
    (backed_up.data / "threads" / "c3.json").write_text('{"threadId": "c3"}')
    newer = first.with_name("29991231T235959Z.tar.gz")
    assert backed_up.run(BACKUP)["returncode"] == 0
    [_, second] = backed_up.archives()
    second.rename(newer)
    Path(f"{second}.sha256").write_text(Path(f"{second}.sha256").read_text().replace(second.name, newer.name))
    Path(f"{second}.sha256").rename(f"{newer}.sha256")
    backed_up.wipe()
    assert backed_up.run(RESTORE)["returncode"] == 0
    assert (backed_up.data / "threads" / "c3.json").exists()


def test_restore_never_overwrites_data_on_the_pi(backed_up: Pi) -> None:
    newer = backed_up.data / "threads" / "a1.json"
    newer.write_text('{"threadId": "a1", "newer": true}')
    (backed_up.tls / "key.pem").unlink()
    before = backed_up.state()
    report = backed_up.run(RESTORE)
    assert report["returncode"] == 0
    assert report["stats"]["preflight-target"]["changed"] == 0
    assert backed_up.state() == before, "a file on the Pi changed"
    assert any("nothing restored" in m and "never overwritten" in m for m in messages(report))


def test_restore_refuses_an_archive_that_fails_its_sidecar_checksum(backed_up: Pi) -> None:
    [archive] = backed_up.archives()
    archive.write_bytes(archive.read_bytes() + b"\0")
    backed_up.wipe()
    report = backed_up.run(RESTORE)
    assert report["returncode"] != 0
    [(task, message)] = failures(report)
    assert task.startswith("backup : ")
    assert "does not match its sidecar" in message
    assert not backed_up.data.exists() and not backed_up.tls.exists()


def test_restore_refuses_an_archive_whose_files_fail_the_manifest(backed_up: Pi) -> None:
    [archive] = backed_up.archives()
    rewrite_archive(archive, {"data/threads/a1.json": b'{"threadId": "a1", "forged": true}'})
    backed_up.wipe()
    report = backed_up.run(RESTORE)
    assert report["returncode"] != 0
    task, message = failures(report)[0]
    assert task.startswith("backup : ")
    assert "Nothing restored: checksum mismatch for data/threads/a1.json" in message
    assert not backed_up.data.exists(), "a partial restore was left behind"
    assert not list((backed_up.tmp / "pi" / "var" / "lib").iterdir()), "the staging directory was left behind"


@pytest.mark.parametrize("member", ["../../etc/evil", "data/../../evil", "extra.txt"])
def test_restore_refuses_members_outside_the_archive_layout(backed_up: Pi, member: str) -> None:
    [archive] = backed_up.archives()
    rewrite_archive(archive, {member: b"x"})
    backed_up.wipe()
    report = backed_up.run(RESTORE)
    assert report["returncode"] != 0
    assert "unexpected member" in failures(report)[0][1] or "not in the manifest" in failures(report)[0][1]
    assert not backed_up.data.exists()
    assert not (backed_up.tmp / "evil").exists() and not (backed_up.tmp.parent / "evil").exists()


def test_site_yml_can_opt_out_of_the_restore(backed_up: Pi) -> None:
    backed_up.wipe()
    report = run_playbook(APPLY, backed_up.inventory, {**backed_up.settings, "role": "backup", "tasks": "restore.yml",
                                                       "backup_restore_missing_data": False})
    assert report["returncode"] == 0 and report["stats"]["preflight-target"]["changed"] == 0
    assert not backed_up.data.exists()
    assert any("backup_restore_missing_data is false" in m for m in messages(report))


def test_site_yml_restores_before_the_backend_starts() -> None:
    [play] = yaml.safe_load((ROOT / "playbooks" / "site.yml").read_text())
    roles = [entry["role"] for entry in play["roles"]]
    assert roles[:2] == ["preflight", "pi_base"]
    assert roles.index("backup") < roles.index("backend")


def test_a_writers_temporary_files_are_not_backed_up(pi: Pi) -> None:
    pi.write_data()
    (pi.data / "threads" / ".c3.json.8f2a.tmp").write_text('{"threadId": "c3"')  # half-written, renamed later
    assert pi.run(BACKUP)["returncode"] == 0
    [archive] = pi.archives()
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert "data/threads/a1.json" in names
    assert not [name for name in names if name.endswith(".tmp")]


def test_an_archive_without_its_sidecar_is_never_the_newest(backed_up: Pi) -> None:
    [good] = backed_up.archives()
    (backed_up.host_backups / "29991231T235959Z.tar.gz").write_bytes(b"a fetch that failed its check")
    backed_up.wipe()
    report = backed_up.run(RESTORE)
    assert report["returncode"] == 0, [m for _, m in failures(report)]
    assert any(f"restoring {good}" in m for m in messages(report))
    assert (backed_up.data / "threads" / "a1.json").exists()


def test_a_chosen_archive_may_be_named_relative_to_where_the_playbook_runs(backed_up: Pi) -> None:
    [archive] = backed_up.archives()
    backed_up.wipe()
    report = run_playbook(RESTORE, backed_up.inventory,
                          {**backed_up.settings, "backup_restore_archive": str(archive.relative_to(backed_up.tmp))},
                          env={"PWD": str(backed_up.tmp)})
    assert report["returncode"] == 0, [m for _, m in failures(report)]
    assert (backed_up.data / "threads" / "b2.json").exists()


def test_config_is_restored_only_under_backup_config_paths(backed_up: Pi) -> None:
    """An archive (or a changed inventory) cannot make the restore write config anywhere on the Pi."""
    backed_up.wipe()
    report = backed_up.run(RESTORE, backup_config_paths=[str(backed_up.tls)])
    assert report["returncode"] == 0, [m for _, m in failures(report)]
    assert (backed_up.tls / "key.pem").exists()
    assert not backed_up.daemon_json.exists()
    assert any("outside backup_config_paths, not restored" in m and "daemon.json" in m for m in messages(report))
