"""Fixtures that mount a real experiment through the real daemon.

Every mount lives below the test's `tmp_path` and is unmounted in
teardown even when the test fails: `expfs umount` first, then
`fusermount3 -uz`, then SIGKILL of the daemon this test started. After
unmounting, the store must pass `expfs fsck`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fusehelpers import (
    Mount,
    expfs,
    force_unmount,
    fuse_missing_reason,
    is_mounted,
    make_repo,
)


@pytest.fixture
def mounted(tmp_path: Path) -> Iterator[Mount]:
    """Experiment `e1` of a small repository, mounted at `tmp_path/mnt`."""
    reason = fuse_missing_reason()
    if reason:
        pytest.skip(reason)
    repo = make_repo(tmp_path / "repo")
    expfs(repo, "init")
    expfs(repo, "exp", "new", "e1")
    mount = Mount(repo, "e1", tmp_path / "mnt")
    pids: list[int] = []
    try:
        mount.mount()
        pid = mount.daemon_pid()
        assert pid is not None
        pids.append(pid)
        yield mount
    finally:
        pid = mount.daemon_pid() or (pids[-1] if pids else None)
        force_unmount(mount, pid)
    assert not is_mounted(mount.path), f"{mount.path} is still mounted"
    fsck = expfs(repo, "fsck", check=False)
    assert fsck.returncode == 0, f"fsck after the test: {fsck.stdout}{fsck.stderr}"


@pytest.fixture
def ws(mounted: Mount) -> Path:
    """The mount point of `mounted`."""
    return mounted.path
