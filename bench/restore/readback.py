"""Measure reading every byte of a large stored file through a mount, cold and warm.

The file is part of an experiment's base snapshot, so the mount serves the
same store blob that a restore by graft would point the output at. Native
ext4 reads of the original file are the reference.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.restore.data import hash_file, write_file
from bench.restore.env import EXPFS, base_env
from bench.restore.measure import ToolFailed, run_quiet
from bench.restore.tools import make_writable_and_remove

READ_CHUNK_BYTES = 1 << 20
EXPERIMENT = "readback"


def drop_cached_pages(path: Path) -> None:
    """Ask the kernel to drop the clean cached pages of one file."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def read_all(path: Path, size_bytes: int) -> float:
    buffer = bytearray(READ_CHUNK_BYTES)
    view = memoryview(buffer)
    total = 0
    start = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while count := f.readinto(view):
            total += count
    seconds = time.perf_counter() - start
    if total != size_bytes:
        raise ToolFailed(f"read {total} bytes of {path}, expected {size_bytes}")
    return seconds


def run_readback(
    size_bytes: int, work: Path, warmups: int, reps: int
) -> dict[str, Any]:
    print(f"read-back: {size_bytes} bytes", flush=True)
    folder = work / "readback"
    repo = folder / "repo"
    env = base_env()
    times: dict[str, list[float]] = {
        "native-cold": [],
        "native-warm": [],
        "mount-cold": [],
        "mount-warm": [],
    }
    record: dict[str, Any] = {
        "size_bytes": size_bytes,
        "seconds": times,
        "mount_status": "ok",
        "mount_reason": "",
    }
    make_writable_and_remove(folder)
    repo.mkdir(parents=True)
    mountpoint: Path | None = None
    try:
        run_quiet(["git", "init", "-q"], repo, env)
        (repo / "README").write_text("read-back benchmark\n")
        run_quiet(["git", "add", "README"], repo, env)
        run_quiet(["git", "commit", "-qm", "base"], repo, env)
        native = repo / "big.bin"
        write_file(native, size_bytes, False, 0o644)
        os.sync()
        digest = hash_file(native)
        try:
            run_quiet([EXPFS, "init"], repo, env)
            run_quiet([EXPFS, "exp", "new", EXPERIMENT], repo, env)
            mountpoint = Path(
                run_quiet([EXPFS, "mount", EXPERIMENT], repo, env)
                .strip()
                .splitlines()[-1]
            )
            if hash_file(mountpoint / "big.bin") != digest:
                raise ToolFailed(
                    "big.bin read through the mount differs from the original"
                )
        except ToolFailed as exc:
            record.update(mount_status="pending", mount_reason=str(exc))
            print(f"  read-back through the mount pending: {exc}", flush=True)
        blob = repo / ".expfs" / "objects" / digest[:2] / digest
        for run in range(warmups + reps):
            counted = run >= warmups
            sources = {"native": native}
            if record["mount_status"] == "ok" and mountpoint is not None:
                sources["mount"] = mountpoint / "big.bin"
            for name, path in sources.items():
                drop_cached_pages(path)
                if name == "mount" and blob.exists():
                    drop_cached_pages(blob)
                cold = read_all(path, size_bytes)
                warm = read_all(path, size_bytes)
                if counted:
                    times[f"{name}-cold"].append(cold)
                    times[f"{name}-warm"].append(warm)
    finally:
        if mountpoint is not None:
            subprocess.run(
                [EXPFS, "umount", EXPERIMENT], cwd=repo, env=env, capture_output=True
            )
        make_writable_and_remove(folder)
    return record
