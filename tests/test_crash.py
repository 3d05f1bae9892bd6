"""Writers killed with SIGKILL at random points leave a store that fsck passes."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from expfs.store import Store
from expfs.store.fsck import fsck

# Each writer loops over every kind of store write until it is killed:
# blobs from bytes, copied files, moved files, trees and folder snapshots.
WRITER = r"""
import os, random, sys
from expfs.store import store_for, Entry, Kind
from expfs.tree.snapshot import snapshot_path

repo, tag, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
rng = random.Random(seed)
store = store_for(repo)
work = os.path.join(repo, "work-" + tag)
os.makedirs(os.path.join(work, "folder"), exist_ok=True)
print("ready", flush=True)
i = 0
while True:
    i += 1
    shared = b"shared %d" % rng.randrange(50)
    own = os.urandom(rng.randrange(1, 200_000))
    a = store.put_bytes(shared)
    b = store.put_bytes(own)
    path = os.path.join(work, "file-%d" % i)
    with open(path, "wb") as f:
        f.write(os.urandom(rng.randrange(1, 100_000)))
    c = store.put_file(path, move=rng.random() < 0.5)
    store.put_tree([
        Entry(b"a", Kind.FILE, 0o644, a, len(shared)),
        Entry(b"b", Kind.FILE, 0o644, b, len(own)),
    ])
    with open(os.path.join(work, "folder", "f%d" % (i % 20)), "wb") as f:
        f.write(os.urandom(rng.randrange(1, 5_000)))
    snapshot_path(store, os.path.join(work, "folder"))
    if os.path.exists(path):
        os.unlink(path)
"""

WRITERS = 4
ROUNDS = 5


def start_writer(repo: Path, tag: str, seed: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(repo), tag, str(seed)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"ready\n"
    return proc


@pytest.mark.slow
def test_killed_writers_leave_clean_store(store: Store, repo: Path) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    print(f"crash test seed {seed}")
    for round_number in range(ROUNDS):
        procs = [
            start_writer(repo, f"{round_number}-{n}", rng.randrange(1 << 30))
            for n in range(WRITERS)
        ]
        for proc in procs:
            time.sleep(rng.uniform(0.05, 0.6))
            assert proc.poll() is None, proc.stderr.read().decode()  # type: ignore[union-attr]
            os.kill(proc.pid, signal.SIGKILL)
        for proc in procs:
            proc.communicate(timeout=30)
            assert proc.returncode == -signal.SIGKILL

    report = fsck(store)
    assert report.problems == [], f"seed {seed}"
    assert report.blobs_checked > 0

    cli = subprocess.run(
        [sys.executable, "-m", "expfs", "fsck"], cwd=repo, capture_output=True
    )
    assert cli.returncode == 0, cli.stdout.decode()
    assert store.put_bytes(b"written after the crashes")
