"""pi5.streaming.build_context: the same content gives the same bytes, and only then.

A regression here shows on the Pi as a rebuild of the image on every run (idempotence lost) or as a
context that silently misses a change (a stale image).
"""
from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from tests.runner import run_module


def pack(source: Path, wheels: Path, dest: Path, *flags: str) -> str:
    """Run the module as the backend role does; "written" when it changed the archive, else "unchanged"."""
    result = run_module("pi5.streaming.build_context", {"source": str(source), "wheels": str(wheels), "dest": str(dest)}, *flags)
    assert not result.get("failed"), result
    return "written" if result["changed"] else "unchanged"


@pytest.fixture
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


def test_check_mode_says_it_would_write_and_writes_nothing(tree: tuple[Path, Path], tmp_path: Path) -> None:
    source, wheels = tree
    dest = tmp_path / "context.tar"
    assert pack(source, wheels, dest, "--check") == "written"
    assert not dest.exists()


def test_a_missing_source_fails_naming_the_option(tree: tuple[Path, Path], tmp_path: Path) -> None:
    _, wheels = tree
    result = run_module("pi5.streaming.build_context",
                        {"source": str(tmp_path / "nowhere"), "wheels": str(wheels), "dest": str(tmp_path / "c.tar")})
    assert result["failed"]
    assert result["msg"].startswith("source:")
