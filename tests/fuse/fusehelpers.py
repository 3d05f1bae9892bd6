"""Helpers for tests on real mounts: run expfs, check and undo mounts."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

EXPFS = [sys.executable, "-m", "expfs"]


def fuse_missing_reason() -> str | None:
    if not os.path.exists("/dev/fuse"):
        return (
            "/dev/fuse is missing: load the fuse module or run with --device /dev/fuse"
        )
    if shutil.which("fusermount3") is None:
        return "fusermount3 is missing: apt-get install fuse3"
    return None


def expfs(
    cwd: Path | str, *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*EXPFS, *args], cwd=cwd, capture_output=True, text=True)
    if check:
        assert proc.returncode == 0, f"expfs {' '.join(args)} failed: {proc.stderr}"
    return proc


def is_mounted(path: Path | str) -> bool:
    target = os.path.abspath(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == target for line in f)


@dataclass
class Mount:
    """A mounted experiment: its repository, name and mount point."""

    repo: Path
    name: str
    path: Path

    @property
    def store_root(self) -> Path:
        return self.repo / ".expfs"

    def daemon_pid(self) -> int | None:
        from expfs.fuse.control import read_record

        record = read_record(str(self.store_root), self.name)
        return int(record["pid"]) if record else None

    def mount(self) -> None:
        expfs(self.repo, "mount", self.name, str(self.path))

    def umount(self) -> None:
        expfs(self.repo, "umount", self.name)


def force_unmount(mount: Mount, pid: int | None) -> None:
    """Unmount by every means, ending only the daemon this test started."""
    subprocess.run([*EXPFS, "umount", mount.name], cwd=mount.repo, capture_output=True)
    if is_mounted(mount.path):
        subprocess.run(["fusermount3", "-uz", str(mount.path)], capture_output=True)
    if pid is not None:
        from expfs.fuse.control import daemon_alive

        if daemon_alive(pid):
            os.kill(pid, signal.SIGKILL)


def make_repo(root: Path) -> Path:
    root.mkdir()
    run = lambda *a: subprocess.run(["git", "-C", str(root), *a], check=True)  # noqa: E731
    run("init", "-q")
    (root / "README").write_text("seed\n")
    (root / "data").mkdir()
    (root / "data" / "base.txt").write_text("".join(f"{i}\n" for i in range(1000)))
    (root / "bin").mkdir()
    (root / "bin" / "tool").write_text("#!/bin/sh\necho tool\n")
    (root / "bin" / "tool").chmod(0o755)
    run("add", "-A")
    run("commit", "-qm", "seed")
    return root
