"""`expfs repro` inside a mounted workspace: restores are grafts, not copies."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from mounting import mounted_experiment, skip_without_fuse
from sample_pipeline import SCRIPTS, THREE_STAGES

pytestmark = pytest.mark.fuse

EXPFS = [sys.executable, "-m", "expfs"]


def expfs(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*EXPFS, *args], cwd=cwd, capture_output=True, text=True)
    assert proc.returncode == 0, f"expfs {' '.join(args)} failed: {proc.stderr}"
    return proc


@pytest.fixture
def mounted(repo: Path) -> Iterator[Path]:
    """A repository with the three-stage pipeline, as experiment e1 mounted."""
    skip_without_fuse()
    import textwrap

    (repo / "dvc.yaml").write_text(THREE_STAGES)
    for name, body in SCRIPTS.items():
        (repo / name).write_text(textwrap.dedent(body))
    (repo / "params.yaml").write_text("prepare:\n  n: 5\ntrain:\n  lr: 0.1\n")
    subprocess.run(["git", "-C", str(repo), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(repo), "commit", "-qm", "pipeline"], check=True)
    expfs(repo, "init")
    with mounted_experiment(repo) as mountpoint:
        yield mountpoint


def set_lr(mount: Path, lr: float) -> None:
    (mount / "params.yaml").write_text(f"prepare:\n  n: 5\ntrain:\n  lr: {lr}\n")


def test_repro_in_mount_restores_by_graft(mounted: Path, repo: Path) -> None:
    first = expfs(mounted, "repro").stdout
    assert "stage 'train': ran" in first
    model = (mounted / "model.txt").read_text()
    set_lr(mounted, 0.2)
    expfs(mounted, "repro")
    set_lr(mounted, 0.1)
    again = expfs(mounted, "repro").stdout
    assert "stage 'train': restored from the run-cache" in again
    assert "stage 'evaluate': restored from the run-cache" in again
    assert (mounted / "model.txt").read_text() == model
    assert (mounted / "runs.log").read_text().split().count("train") == 2
    assert (mounted / "bin" / "tool").stat().st_mode & 0o777 == 0o755
    assert '"score": 0.5' in (mounted / "metrics.json").read_text()


def test_repro_in_mount_leaves_checkout_alone(mounted: Path, repo: Path) -> None:
    expfs(mounted, "repro")
    assert not (repo / "model.txt").exists()
    assert not (repo / "expfs.lock").exists()
    assert (mounted / "expfs.lock").exists()


def test_restore_then_read_through_kernel(mounted: Path, repo: Path) -> None:
    expfs(mounted, "repro")
    parts = {p.name: p.read_text() for p in (mounted / "data").iterdir()}
    (mounted / "params.yaml").write_text("prepare:\n  n: 8\ntrain:\n  lr: 0.1\n")
    expfs(mounted, "repro")
    assert len(os.listdir(mounted / "data")) == 8
    (mounted / "params.yaml").write_text("prepare:\n  n: 5\ntrain:\n  lr: 0.1\n")
    out = expfs(mounted, "repro").stdout
    assert "stage 'prepare': restored" in out
    assert sorted(os.listdir(mounted / "data")) == sorted(parts)
    for name, text in parts.items():
        assert (mounted / "data" / name).read_text() == text


def test_fsck_clean_after_mount_repro(mounted: Path, repo: Path) -> None:
    expfs(mounted, "repro")
    (mounted / "model.txt").write_text("edited in place\n")
    expfs(mounted, "repro")
    proc = subprocess.run([*EXPFS, "fsck"], cwd=repo, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


@pytest.mark.parametrize("op", ["digest_of", "remove_path"])
def test_control_missing_path_named(mounted: Path, repo: Path, op: str) -> None:
    from expfs.fuse.control import ControlClient, ControlError

    with ControlClient(str(repo / ".expfs"), "e1") as client:
        with pytest.raises(ControlError) as raised:
            client.call(op, path="no/such/file")
    assert "internal error" not in str(raised.value)
    assert "no/such/file not found in workspace e1" in str(raised.value)
