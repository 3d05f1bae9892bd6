"""The operations through the kernel: a workspace mounted in a subprocess."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from expfs.store import Store
from expfs.tree.snapshot import snapshot_path
from expfs.workspace import Workspace

pytestmark = pytest.mark.fuse

SERVE = textwrap.dedent(
    """
    import sys, pyfuse3, trio
    from expfs.store import open_store
    from expfs.workspace import Workspace
    from expfs.fuse.ops import WorkspaceOperations
    store = open_store(sys.argv[1])
    workspace = Workspace.open(store, sys.argv[2])
    ops = WorkspaceOperations(workspace)
    pyfuse3.init(ops, sys.argv[3], {"fsname=expfs-test", "default_permissions"})
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=True)
        workspace.close()
    """
)


def _skip_reason() -> str | None:
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is not installed"
    return None


@pytest.fixture
def mounted(store: Store, tmp_path: Path) -> Iterator[Path]:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    base = tmp_path / "base"
    (base / "d" / "sub").mkdir(parents=True)
    (base / "d" / "sub" / "f").write_text("x\n")
    (base / "file.txt").write_text("old")
    Workspace.create(store, "m", snapshot_path(store, str(base))).close()
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE, store.root, "m", str(mountpoint)]
    )
    try:
        deadline = time.monotonic() + 10
        while not os.path.ismount(mountpoint):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("the workspace did not mount")
            time.sleep(0.05)
        yield mountpoint
    finally:
        subprocess.run(["fusermount3", "-uz", str(mountpoint)], check=False)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_rename_over_open_file(mounted: Path) -> None:
    path = mounted / "file.txt"
    keep = open(path)
    tmp = mounted / ".save-tmp"
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    os.write(fd, b"new")
    os.fsync(fd)
    os.rename(tmp, path)
    os.write(fd, b"!")
    os.close(fd)
    assert path.read_text() == "new!"
    assert keep.read() == "old"
    keep.close()


def test_unlinked_file_stays_usable(mounted: Path) -> None:
    with tempfile.TemporaryFile(dir=mounted) as f:
        f.write(b"abc")
        f.flush()
        f.seek(0)
        assert f.read() == b"abc"
        assert os.fstat(f.fileno()).st_nlink == 0
    assert set(os.listdir(mounted)) == {"d", "file.txt"}


def test_times_survive_close(mounted: Path) -> None:
    path = mounted / "x"
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o644)
    os.write(fd, b"a")
    os.utime(fd, ns=(10**18, 10**18))
    os.close(fd)
    assert os.stat(path).st_mtime_ns == 10**18


def test_link_counts(mounted: Path) -> None:
    (mounted / "a").touch()
    os.link(mounted / "a", mounted / "b")
    assert os.stat(mounted / "a").st_nlink == 2
    assert os.stat(mounted / "a").st_ino == os.stat(mounted / "b").st_ino
    os.unlink(mounted / "b")
    assert os.stat(mounted / "a").st_nlink == 1
    (mounted / "t" / "x" / "y").mkdir(parents=True)
    (mounted / "t" / "z").mkdir()
    assert os.stat(mounted / "t").st_nlink == 4
    assert os.stat(mounted / "t" / "x").st_nlink == 3


def test_delete_while_listing(mounted: Path) -> None:
    d = mounted / "many"
    d.mkdir()
    for i in range(2000):
        (d / f"f{i}").touch()
    with os.scandir(d) as entries:
        for entry in entries:
            os.unlink(entry.path)
    assert os.listdir(d) == []
    d.rmdir()


def test_rename_directory_keeps_inodes(mounted: Path) -> None:
    before = os.stat(mounted / "d" / "sub" / "f").st_ino
    os.rename(mounted / "d", mounted / "e")
    assert (mounted / "e" / "sub" / "f").read_text() == "x\n"
    assert os.stat(mounted / "e" / "sub" / "f").st_ino == before
