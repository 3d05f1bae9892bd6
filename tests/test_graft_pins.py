"""Restores over large outputs that were read: eviction waits for the reply.

A graft replaces an output's name. The daemon keeps the large files below
it open across the invalidation and closes them after replying (see
expfs/fuse/pins.py). These tests check that the restored content is what
the kernel shows, that a reader of the old file keeps it, and that the
mount unmounts at once after a restore.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from mounting import mounted_experiment, skip_without_fuse

from expfs.fuse.pins import PIN_MIN_BYTES, Pins
from expfs.workspace.inodes import ROOT_INO

EXPFS = [sys.executable, "-m", "expfs"]

STAGE = """\
stages:
  gen:
    cmd: python3 gen.py
    params: [seed]
    outs: [big.bin, parts]
"""

GEN = """\
import os, random, yaml
seed = yaml.safe_load(open("params.yaml"))["seed"]
rng = random.Random(seed)
with open("big.bin", "wb") as f:
    f.write(rng.randbytes(3 << 20))
os.makedirs("parts/inner", exist_ok=True)
for i in range(3):
    with open(f"parts/inner/p{i}.bin", "wb") as f:
        f.write(rng.randbytes(2 << 20))
"""


def expfs(cwd: Path, *args: str) -> str:
    proc = subprocess.run([*EXPFS, *args], cwd=cwd, capture_output=True, text=True)
    assert proc.returncode == 0, f"expfs {' '.join(args)} failed: {proc.stderr}"
    return proc.stdout


def digests(root: Path) -> dict[str, str]:
    found = {}
    for path in sorted([root / "big.bin", *sorted((root / "parts").rglob("*.bin"))]):
        found[str(path.relative_to(root))] = hashlib.sha256(
            path.read_bytes()
        ).hexdigest()
    return found


@pytest.fixture
def mounted(repo: Path) -> Iterator[Path]:
    skip_without_fuse()
    (repo / "dvc.yaml").write_text(STAGE)
    (repo / "gen.py").write_text(GEN)
    (repo / "params.yaml").write_text("seed: 1\n")
    subprocess.run(["git", "-C", str(repo), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(repo), "commit", "-qm", "pipeline"], check=True)
    expfs(repo, "init")
    with mounted_experiment(repo) as mountpoint:
        yield mountpoint


@pytest.mark.fuse
def test_restore_over_read_outputs_shows_new_content(mounted: Path, repo: Path) -> None:
    expfs(mounted, "repro")
    first = digests(mounted)
    (mounted / "params.yaml").write_text("seed: 2\n")
    expfs(mounted, "repro")
    second = digests(mounted)
    assert second != first
    with open(mounted / "big.bin", "rb") as old_reader:
        (mounted / "params.yaml").write_text("seed: 1\n")
        out = expfs(mounted, "repro")
        assert "restored from the run-cache" in out
        assert digests(mounted) == first
        old = hashlib.sha256(old_reader.read()).hexdigest()
        assert old == second["big.bin"], "an open reader lost the replaced file"
    (mounted / "params.yaml").write_text("seed: 2\n")
    expfs(mounted, "repro")
    assert digests(mounted) == second
    log = (repo / ".expfs" / "logs" / "e1.log").read_text()
    assert "at big.bin in e1 (evicting 1 large file after the reply)" in log
    assert "at parts in e1 (evicting 3 large files after the reply)" in log
    # Right after a restore, held files must not make the mount busy.
    expfs(repo, "umount", "e1")
    assert not os.path.ismount(mounted)


def test_paths_below_follow_known_names() -> None:
    pins = Pins()
    pins.named(10, ROOT_INO, b"out")
    pins.named(11, 10, b"inner")
    pins.named(12, 11, b"big.bin")
    pins.named(13, 11, b"small.bin")
    pins.named(20, ROOT_INO, b"other.bin")
    pins.touched(12, PIN_MIN_BYTES)
    pins.touched(13, PIN_MIN_BYTES - 1)
    pins.touched(20, 5 * PIN_MIN_BYTES)
    assert pins.paths_below([10]) == [("out/inner/big.bin", 12)]
    assert pins.paths_below([12]) == [("out/inner/big.bin", 12)]
    assert set(pins.paths_below([11, 20])) == {
        ("out/inner/big.bin", 12),
        ("other.bin", 20),
    }
    assert pins.paths_below([13]) == []
    assert pins.paths_below([]) == []


def test_paths_below_skip_unknown_chains() -> None:
    pins = Pins()
    pins.named(12, 11, b"big.bin")
    pins.touched(12, 2 * PIN_MIN_BYTES)
    # The kernel never named directory 11: no path can be built.
    assert pins.paths_below([11]) == []
    pins.named(11, ROOT_INO, b"d")
    assert pins.paths_below([11]) == [("d/big.bin", 12)]
    pins.forgotten(12)
    assert pins.paths_below([11]) == []
