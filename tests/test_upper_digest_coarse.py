"""Digests of changed files in a mount on a filesystem with coarse timestamps.

The daemon caches an upper file's digest under its size, mtime, ctime and
inode. On a filesystem whose timestamps tick in whole seconds (ext4 with
128-byte inodes, made here on a loop device), a second write of the same
size within the same second leaves all four unchanged.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mounting import mounted_experiment, skip_without_fuse

from expfs.fuse.control import ControlClient
from expfs.store.objects import new_hasher

EXPFS = [sys.executable, "-m", "expfs"]


def expfs(cwd: Path, *args: str) -> str:
    proc = subprocess.run([*EXPFS, *args], cwd=cwd, capture_output=True, text=True)
    assert proc.returncode == 0, f"expfs {' '.join(args)} failed: {proc.stderr}"
    return proc.stdout


def blake3_hex(data: bytes) -> str:
    return new_hasher(len(data)).update(data).hexdigest()


@pytest.fixture
def coarse_fs(tmp_path: Path) -> Iterator[Path]:
    """An ext4 with whole-second timestamps on a loop device, unmounted after."""
    needed = ("mount", "umount", "mkfs.ext4")
    if os.geteuid() != 0 or any(shutil.which(tool) is None for tool in needed):
        pytest.skip("needs root, mount(8) and mkfs.ext4 to make a loop filesystem")
    image = tmp_path / "coarse.img"
    with open(image, "wb") as f:
        f.truncate(64 << 20)
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-I", "128", str(image)],
        check=True,
        capture_output=True,
    )
    point = tmp_path / "coarse"
    point.mkdir()
    proc = subprocess.run(
        ["mount", "-o", "loop", str(image), str(point)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a loop filesystem: {proc.stderr.strip()}")
    try:
        yield point
    finally:
        unmount_loop(point)


def unmount_loop(point: Path) -> None:
    """Unmount the loop filesystem, waiting for a daemon that is still exiting."""
    for _ in range(50):
        if subprocess.run(["umount", str(point)], capture_output=True).returncode == 0:
            return
        time.sleep(0.1)
    subprocess.run(["umount", "--lazy", str(point)], check=False)


@pytest.fixture
def coarse_mount(coarse_fs: Path) -> Iterator[tuple[Path, Path]]:
    """(repository, mountpoint) of experiment e1, both on `coarse_fs`."""
    skip_without_fuse()
    repo = coarse_fs / "repo"
    repo.mkdir()
    subprocess.run(["git", "-C", str(repo), "init", "-q"], check=True)
    (repo / "README").write_text("seed\n")
    subprocess.run(["git", "-C", str(repo), "add", "README"], check=True)
    subprocess.run(["git", "-C", str(repo), "commit", "-qm", "seed"], check=True)
    expfs(repo, "init")
    with mounted_experiment(repo) as mountpoint:
        yield repo, mountpoint


def rewrite(path: Path, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.write(data)


@pytest.mark.fuse
def test_same_second_rewrite_seen(coarse_mount: tuple[Path, Path]) -> None:
    repo, mountpoint = coarse_mount
    store_root = str(repo / ".expfs")
    stale = []
    with ControlClient(store_root, "e1") as client:
        for attempt in range(3):
            started = int(time.time())
            name = f"out{attempt}.txt"
            path = mountpoint / name
            path.write_bytes(b"first")
            first = client.digest_of(name.encode())
            snapshot = client.snapshot()
            rewrite(path, b"SECON")
            again = client.digest_of(name.encode())
            after = client.snapshot()
            # Only a rewrite within the same second tests the cache.
            if int(time.time()) != started:
                continue
            assert first == blake3_hex(b"first")
            stored = expfs(repo, "cat", after, name)
            stale.append((again == first, after == snapshot, stored == "first"))
    assert stale, "every attempt crossed a second boundary"
    kept_digest, kept_snapshot, kept_bytes = stale[0]
    assert not kept_digest, "digest_of returned the digest from before the rewrite"
    assert not kept_snapshot, "the snapshot did not change after the rewrite"
    assert not kept_bytes, "the snapshot stored the bytes from before the rewrite"
