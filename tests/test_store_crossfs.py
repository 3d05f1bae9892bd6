"""Storing files from a filesystem the kernel cannot copy from.

copy_file_range fails with EXDEV between filesystems of different types
(ext4 and tmpfs here). The store then falls back to reading the file; the
kernel copy's attempt must not change the bytes that read returns.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from mounting import mounted_experiment, skip_without_fuse

from expfs.store.objects import KERNEL_COPY_MIN_BYTES, Store, hash_file

EXPFS = [sys.executable, "-m", "expfs"]


def expfs(cwd: Path, *args: str) -> bytes:
    proc = subprocess.run([*EXPFS, *args], cwd=cwd, capture_output=True)
    assert proc.returncode == 0, f"expfs {' '.join(args)} failed: {proc.stderr!r}"
    return proc.stdout


@pytest.fixture
def other_fs(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs mounted in the test's folder, unmounted afterwards."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root and mount(8) to mount a tmpfs")
    point = tmp_path / "tmpfs"
    point.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(point)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {proc.stderr.strip()}")
    try:
        yield point
    finally:
        subprocess.run(["umount", str(point)], check=False)


def kernel_copy_fails(source: Path, store: Store, make: bool = False) -> bool:
    """Return whether copy_file_range fails between `source` and the store."""
    if make:
        source.write_bytes(b"x")
    probe = os.path.join(store.tmp_dir, "probe")
    try:
        with open(source, "rb") as src, open(probe, "wb") as dst:
            os.copy_file_range(src.fileno(), dst.fileno(), 1, 0, 0)
    except OSError:
        return True
    finally:
        os.unlink(probe)
        if make:
            source.unlink()
    return False


@pytest.mark.parametrize(
    "layout", ["dense", "hole first", "hole last"], ids=lambda s: s.replace(" ", "-")
)
def test_file_from_other_filesystem_stored_whole(
    store: Store, other_fs: Path, layout: str
) -> None:
    source = other_fs / "big.bin"
    size = 3 * KERNEL_COPY_MIN_BYTES + 4097
    with open(source, "wb") as f:
        if layout == "hole first":
            f.seek(KERNEL_COPY_MIN_BYTES + 11)
        f.write(os.urandom(KERNEL_COPY_MIN_BYTES + 5))
        f.truncate(size)
        if layout != "hole last":
            f.seek(size - 3)
            f.write(b"end")
    if not kernel_copy_fails(source, store):
        pytest.skip("copy_file_range works from tmpfs to the store here")
    digest = store.put_file(str(source))
    assert digest == hash_file(str(source))
    assert os.path.getsize(store.blob_path(digest)) == size
    assert hash_file(store.blob_path(digest)) == digest


def test_blob_restored_to_other_filesystem(store: Store, other_fs: Path) -> None:
    source = store.tmp_dir + "/source.bin"
    size = 2 * KERNEL_COPY_MIN_BYTES + 7
    with open(source, "wb") as f:
        f.write(os.urandom(KERNEL_COPY_MIN_BYTES))
        f.truncate(size)
    digest = store.put_file(source, move=True)
    dest = other_fs / "restored.bin"
    if not kernel_copy_fails(dest.parent / "probe-source", store, make=True):
        pytest.skip("copy_file_range works from the store to tmpfs here")
    store.copy_blob(digest, str(dest), 0o640)
    assert hash_file(str(dest)) == digest
    assert dest.stat().st_size == size
    assert dest.stat().st_mode & 0o777 == 0o640


@pytest.fixture
def mounted(repo: Path) -> Iterator[Path]:
    skip_without_fuse()
    expfs(repo, "init")
    with mounted_experiment(repo) as mountpoint:
        yield mountpoint


@pytest.mark.fuse
def test_snapshot_of_file_in_mount(mounted: Path, repo: Path) -> None:
    """A file read through FUSE cannot be copied to ext4 by copy_file_range."""
    data = os.urandom(3 * KERNEL_COPY_MIN_BYTES)
    (mounted / "big.bin").write_bytes(data)
    digest = expfs(repo, "snapshot", str(mounted / "big.bin")).decode().strip()
    stored = expfs(repo, "cat", digest)
    assert len(stored) == len(data)
    assert hashlib.sha256(stored).digest() == hashlib.sha256(data).digest()
    report = expfs(repo, "fsck").decode()
    assert " 0 problems" in report
