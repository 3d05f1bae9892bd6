"""POSIX cases that tools rely on, through a mount served by the real daemon."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.fuse


def test_hardlink_counts(ws: Path) -> None:
    (ws / "a").touch()
    os.link(ws / "a", ws / "b")
    a, b = os.stat(ws / "a"), os.stat(ws / "b")
    assert a.st_nlink == 2
    assert b.st_nlink == 2
    assert a.st_ino == b.st_ino
    os.unlink(ws / "b")
    assert os.stat(ws / "a").st_nlink == 1
    (ws / "t" / "x" / "y").mkdir(parents=True)
    (ws / "t" / "z").mkdir()
    assert os.stat(ws / "t").st_nlink == 4
    assert os.stat(ws / "t" / "x").st_nlink == 3


def test_preserve_times_survive_close(ws: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_text("data\n")
    os.utime(src, ns=(1_480_681_350_500_000_000, 1_480_681_350_500_000_000))
    subprocess.run(
        ["cp", "--preserve=timestamps", str(src), str(ws / "dst")], check=True
    )
    assert os.stat(ws / "dst").st_mtime_ns == os.stat(src).st_mtime_ns
    fd = os.open(ws / "x", os.O_CREAT | os.O_WRONLY, 0o644)
    os.write(fd, b"a")
    os.utime(fd, ns=(10**18, 10**18))
    os.close(fd)
    assert os.stat(ws / "x").st_mtime_ns == 10**18


def test_readdir_while_deleting(ws: Path) -> None:
    folder = ws / "d"
    folder.mkdir()
    for i in range(2000):
        (folder / f"f{i}").touch()
    with os.scandir(folder) as entries:
        for entry in entries:
            os.unlink(entry.path)
    assert len(os.listdir(folder)) == 0
    folder.rmdir()
    tree = ws / "rmrf"
    for i in range(30):
        (tree / f"sub{i}").mkdir(parents=True)
        for j in range(50):
            (tree / f"sub{i}" / f"f{j}").touch()
    proc = subprocess.run(["rm", "-rf", str(tree)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert not tree.exists()


def test_rename_keeps_reachable(ws: Path) -> None:
    (ws / "tmp.xyz").write_text("atomic\n")
    os.rename(ws / "tmp.xyz", ws / "renamed.txt")
    assert (ws / "renamed.txt").read_text() == "atomic\n"
    (ws / "d" / "sub").mkdir(parents=True)
    (ws / "d" / "sub" / "f").write_text("x\n")
    os.rename(ws / "d", ws / "e")
    assert (ws / "e" / "sub" / "f").read_text() == "x\n"
    os.rename(ws / "data", ws / "data2")
    assert (ws / "data2" / "base.txt").read_text().startswith("0\n1\n")
    subprocess.run(["git", "init", "-q", "r"], cwd=ws, check=True)
    subprocess.run(
        ["git", "-C", "r", "commit", "-q", "--allow-empty", "-m", "x"],
        cwd=ws,
        check=True,
    )
    log = subprocess.run(
        ["git", "-C", "r", "log", "--format=%s"], cwd=ws, capture_output=True, text=True
    )
    assert log.stdout == "x\n"


def test_rename_over_open_file(ws: Path) -> None:
    path = ws / "file.txt"
    path.write_text("old")
    keep = open(path)
    tmp = ws / ".save-tmp"
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    os.write(fd, b"new")
    os.fsync(fd)
    os.rename(tmp, path)
    os.write(fd, b"!")
    os.close(fd)
    assert path.read_text() == "new!"
    assert keep.read() == "old"
    keep.close()


def test_unlink_open_file(ws: Path, mounted: object) -> None:
    with tempfile.TemporaryFile(dir=ws) as f:
        f.write(b"abc")
        f.flush()
        f.seek(0)
        assert f.read() == b"abc"
        assert os.fstat(f.fileno()).st_nlink == 0
    fd = os.open(ws / "x", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        os.unlink(ws / "x")
        os.write(fd, b"hello")
        os.lseek(fd, 0, 0)
        assert os.read(fd, 5) == b"hello"
        assert "x" not in os.listdir(ws)
    finally:
        os.close(fd)
    from expfs.fuse.control import ControlClient
    from expfs.store.repo import open_store

    store_root = str(mounted.store_root)  # type: ignore[attr-defined]
    with ControlClient(store_root, "e1") as client:
        root = client.snapshot()
    names = {e.name for e in open_store(store_root).get_tree(root)}
    assert names == {b"README", b"bin", b"data"}
