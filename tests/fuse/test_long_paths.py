"""Mounts of repositories whose control socket path would exceed 107 bytes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from fusehelpers import fuse_missing_reason

pytestmark = pytest.mark.fuse

EXPFS = [sys.executable, "-m", "expfs"]


def test_deep_repository_mounts(tmp_path: Path) -> None:
    reason = fuse_missing_reason()
    if reason:
        pytest.skip(reason)
    repo = tmp_path / ("deep-folder-" * 6) / "repo"
    repo.mkdir(parents=True)
    for args in (["init", "-q"], ["commit", "-q", "--allow-empty", "-m", "x"]):
        subprocess.run(["git", "-C", str(repo), *args], check=True)
    name = "an-experiment-with-a-long-name"
    natural = repo / ".expfs" / "run" / f"{name}.sock"
    assert len(os.fsencode(str(natural))) > 107
    mountpoint = repo / ".expfs" / "mnt" / name
    try:
        for args in (["init"], ["exp", "new", name], ["mount", name]):
            proc = subprocess.run(
                [*EXPFS, *args], cwd=repo, capture_output=True, text=True
            )
            assert proc.returncode == 0, proc.stderr
        assert os.path.ismount(mountpoint)
        proc = subprocess.run(
            [*EXPFS, "umount", name], cwd=repo, capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stderr
        assert not os.path.ismount(mountpoint)
    finally:
        if os.path.ismount(mountpoint):
            subprocess.run(["fusermount3", "-uz", str(mountpoint)], check=False)
