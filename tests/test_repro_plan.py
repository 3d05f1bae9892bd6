"""What `expfs status` and `expfs repro --dry` plan.

Each test runs the real CLI in a real Git checkout with a real store.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import git
from waiting_stage import run_expfs

PIPELINE = """\
stages:
  prepare:
    cmd: mkdir -p out && cat data.txt > out/prepared.txt
    deps: [data.txt]
    outs: [out/prepared.txt]
  train:
    cmd: mkdir -p model && cat out/prepared.txt > model/model.txt
    deps: [out/prepared.txt]
    outs: [model]
"""


@pytest.fixture
def project(repo: Path) -> Path:
    """A committed two-stage pipeline whose outputs are gitignored, run once."""
    (repo / "dvc.yaml").write_text(PIPELINE)
    (repo / "data.txt").write_text("one\n")
    (repo / ".gitignore").write_text("out/\nmodel/\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "pipeline")
    assert run_expfs(repo, "init").returncode == 0
    done = run_expfs(repo, "repro")
    assert done.returncode == 0, done.stderr
    return repo


def ok(root: Path, *args: str) -> str:
    done = run_expfs(root, *args)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_plan_fresh_clone(project: Path, tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    subprocess.run(
        ["git", "clone", "-q", str(project), str(clone)], check=True, text=True
    )
    assert run_expfs(clone, "init").returncode == 0
    status = ok(clone, "status").splitlines()
    assert status[0].startswith("prepare: would ")
    assert status[1].startswith("train: ")
    assert "depends on 'prepare'" in status[1]
    dry = ok(clone, "repro", "--dry")
    assert "stage 'prepare': would " in dry
    assert "stage 'train': may run" in dry
    assert "depends on 'prepare'" in dry
    assert not (clone / "out").exists()
    assert not (clone / "model").exists()
    # The real repro does what the dry run announced.
    real = ok(clone, "repro")
    assert "stage 'prepare': " in real
    assert "stage 'train': " in real
    assert (clone / "model" / "model.txt").read_text() == "one\n"


def test_plan_upstream_output_removed(project: Path) -> None:
    shutil.rmtree(project / "out")
    shutil.rmtree(project / "model")
    status = ok(project, "status")
    assert "prepare: would restore" in status
    # The restore brings back the same prepared.txt, so train's run key is known.
    assert "train: would restore" in status
    assert "stage 'train': restored" in ok(project, "repro")
    shutil.rmtree(project / "out")
    status = ok(project, "status").splitlines()
    assert status == ["prepare: would restore (run-cache hit)"]
    real = ok(project, "repro")
    assert "stage 'prepare': restored" in real
    assert "stage 'train': skipped, up to date" in real


def test_plan_downstream_of_changed_stage(project: Path) -> None:
    (project / "data.txt").write_text("two\n")
    dry = ok(project, "repro", "--dry")
    assert "stage 'prepare': would run" in dry
    assert "skipped" not in dry
    assert "stage 'train': may run" in dry
    assert "depends on 'prepare', which would run" in dry
    status = ok(project, "status")
    assert "train: may run (depends on 'prepare', which would run)" in status
    real = ok(project, "repro")
    assert "stage 'train': ran" in real
    assert (project / "model" / "model.txt").read_text() == "two\n"


def test_plan_after_upstream_restore(project: Path) -> None:
    (project / "data.txt").write_text("two\n")
    ok(project, "repro")
    (project / "data.txt").write_text("one\n")
    dry = ok(project, "repro", "--dry")
    assert "stage 'prepare': would restore" in dry
    # The run-cache entry of prepare gives train's new input, run before too.
    assert "stage 'train': would restore" in dry
    real = ok(project, "repro")
    assert "stage 'prepare': restored" in real
    assert "stage 'train': restored" in real
    assert (project / "model" / "model.txt").read_text() == "one\n"
