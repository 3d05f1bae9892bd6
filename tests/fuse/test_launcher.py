"""Mount daemons forked from the launcher, as sweeps start them."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from fusehelpers import expfs, fuse_missing_reason, is_mounted, make_repo

from expfs.fuse.control import ControlClient, daemon_alive, mount_status
from expfs.fuse.launcher import Launcher
from expfs.fuse.mounts import MountError, start_mount, stop_mount
from expfs.store.repo import store_for


def test_forked_daemons_serve_and_stop(tmp_path: Path) -> None:
    reason = fuse_missing_reason()
    if reason:
        pytest.skip(reason)
    repo = make_repo(tmp_path / "repo")
    expfs(repo, "init")
    for name in ("a", "b"):
        expfs(repo, "exp", "new", name)
    store = store_for(str(repo))
    launcher = Launcher(store.root)
    mountpoints = {name: tmp_path / f"mnt-{name}" for name in ("a", "b")}
    try:
        for name, path in mountpoints.items():
            assert start_mount(store, name, str(path), launcher=launcher) == str(path)
        for name, path in mountpoints.items():
            status = mount_status(store, name)
            assert status.state == "mounted"
            assert status.pid is not None
            assert daemon_alive(status.pid)
            assert (path / "README").exists()
            (path / "new.txt").write_text(name)
            with ControlClient(store.root, name) as client:
                assert client.digest_of(b"new.txt")
        for name in mountpoints:
            stop_mount(store, name)
        for path in mountpoints.values():
            assert not is_mounted(path)
    finally:
        launcher.close()
        for path in mountpoints.values():
            if is_mounted(path):
                subprocess.run(["fusermount3", "-uz", str(path)], check=False)
    assert launcher.proc.returncode == 0


def test_forked_daemon_error_reaches_caller(tmp_path: Path) -> None:
    reason = fuse_missing_reason()
    if reason:
        pytest.skip(reason)
    repo = make_repo(tmp_path / "repo")
    expfs(repo, "init")
    expfs(repo, "exp", "new", "e")
    store = store_for(str(repo))
    lmdb_dir = Path(store.root) / "workspaces" / "e" / "lmdb"
    (lmdb_dir / "data.mdb").write_bytes(b"not an LMDB file" * 512)
    launcher = Launcher(store.root)
    try:
        with pytest.raises(MountError, match="mounting experiment 'e'"):
            start_mount(store, "e", str(tmp_path / "mnt"), launcher=launcher)
    finally:
        launcher.close()
    assert not is_mounted(tmp_path / "mnt")
