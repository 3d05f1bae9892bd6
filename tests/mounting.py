"""Mount an experiment for a test and unmount it afterwards, even on failure."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

EXPFS = [sys.executable, "-m", "expfs"]
FUSE_MISSING = "needs /dev/fuse and fusermount3 (apt-get install fuse3)"


def skip_without_fuse() -> None:
    """Skip the test, with the reason, where FUSE cannot be mounted."""
    if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
        pytest.skip(FUSE_MISSING)


def run_checked(cwd: Path, *args: str) -> None:
    """Run the expfs CLI in `cwd` and fail the test, with its stderr, on a non-zero exit."""
    proc = subprocess.run([*EXPFS, *args], cwd=cwd, capture_output=True, text=True)
    assert proc.returncode == 0, f"expfs {' '.join(args)} failed: {proc.stderr}"


def unmount(project: Path, name: str, mountpoint: Path) -> None:
    """Unmount experiment `name`, lazily with fusermount3 if `expfs umount` failed."""
    subprocess.run([*EXPFS, "umount", name], cwd=project, capture_output=True)
    if os.path.ismount(mountpoint):
        subprocess.run(["fusermount3", "-uz", str(mountpoint)], check=False)


@contextlib.contextmanager
def mounted_experiment(project: Path, name: str = "e1") -> Iterator[Path]:
    """Create experiment `name` of an initialized `project` and mount it.

    Yields the mount point, `.expfs/mnt/NAME`, and unmounts it on exit.
    """
    skip_without_fuse()
    run_checked(project, "exp", "new", name)
    mountpoint = project / ".expfs" / "mnt" / name
    try:
        run_checked(project, "mount", name)
        yield mountpoint
    finally:
        unmount(project, name, mountpoint)
