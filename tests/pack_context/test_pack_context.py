"""The backend role's build-context archive: the same content gives the same bytes, and only then.

A regression here shows on the Pi as a rebuild of the image on every run (idempotence lost) or as a
context that silently misses a change (a stale image).
"""
from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "roles" / "backend" / "files" / "pack_context.py"


def pack(source: Path, wheels: Path, dest: Path) -> str:
    run = subprocess.run([sys.executable, str(SCRIPT), f"--source={source}", f"--wheels={wheels}", f"--dest={dest}"],
                         capture_output=True, text=True, check=True)
    return run.stdout.strip()


@pytest.fixture()
def tree(tmp_path: Path) -> tuple[Path, Path]:
    source, wheels = tmp_path / "backend", tmp_path / "wheels"
    (source / "app").mkdir(parents=True)
    wheels.mkdir()
    (source / "Dockerfile").write_text("FROM scratch\n")
    (source / "app" / "main.py").write_text("print('hi')\n")
    (wheels / "fastapi-1-py3-none-any.whl").write_bytes(b"wheel")
    (wheels / ".complete").write_text("sha\n")
    return source, wheels


def names(archive: Path) -> list[str]:
    with tarfile.open(archive) as tar:
        return tar.getnames()


def test_same_content_is_the_same_archive_whatever_the_files_times(tree: tuple[Path, Path], tmp_path: Path) -> None:
    source, wheels = tree
    first, second = tmp_path / "a.tar", tmp_path / "b.tar"
    assert pack(source, wheels, first) == "written"
    (source / "Dockerfile").touch()  # a fresh clone has new mtimes
    (source / "app" / "main.py").chmod(0o600)  # and the umask of whoever cloned it
    assert pack(source, wheels, second) == "written"
    assert first.read_bytes() == second.read_bytes()
    assert pack(source, wheels, first) == "unchanged"


def test_a_changed_file_changes_the_archive(tree: tuple[Path, Path], tmp_path: Path) -> None:
    source, wheels = tree
    dest = tmp_path / "context.tar"
    pack(source, wheels, dest)
    before = dest.read_bytes()
    (source / "app" / "main.py").write_text("print('bye')\n")
    assert pack(source, wheels, dest) == "written"
    assert dest.read_bytes() != before


def test_wheels_go_under_wheels_and_caches_stay_out(tree: tuple[Path, Path], tmp_path: Path) -> None:
    source, wheels = tree
    (source / "app" / "__pycache__").mkdir()
    (source / "app" / "__pycache__" / "main.cpython-311.pyc").write_bytes(b"\0")
    (source / ".mypy_cache").mkdir()
    (source / ".mypy_cache" / "x.json").write_text("{}")
    dest = tmp_path / "context.tar"
    pack(source, wheels, dest)
    assert names(dest) == ["Dockerfile", "app/main.py", "wheels/fastapi-1-py3-none-any.whl"]
    with tarfile.open(dest) as tar:
        assert {(m.uid, m.mtime, m.mode) for m in tar.getmembers()} == {(0, 0, 0o644)}
