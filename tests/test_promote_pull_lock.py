"""Promote, pull and remove respect the workspace lock of `expfs.busy`.

A process that holds an experiment's workspace lock (a repro, or a stage
it left running) makes `exp promote --current`, `exp remove` and a `pull`
or `exp new` that would replace that workspace fail at once, naming it,
with nothing changed. `exp promote --worktree` holds the new worktree's
lock until its commit is made.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_sweep import TRAIN_SCRIPT, TRAIN_STAGE, run, show, unmount_all

pytestmark = pytest.mark.fuse

HOLDER = """\
import sys
from expfs.busy import workspace_lock

with workspace_lock(sys.argv[1], sys.argv[1], command="lock-holder-for-test"):
    print("held", flush=True)
    sys.stdin.read()
"""


@pytest.fixture
def project(repo: Path) -> Iterator[Path]:
    """The train pipeline with experiment e1 run by `exp run`."""
    if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
        pytest.skip("needs /dev/fuse and fusermount3 (apt-get install fuse3)")
    (repo / "dvc.yaml").write_text(TRAIN_STAGE)
    (repo / "train.py").write_text(TRAIN_SCRIPT)
    (repo / "params.yaml").write_text("lr: 0.1\ndepth: 2\n")
    subprocess.run(["git", "-C", str(repo), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(repo), "commit", "-qm", "pipeline"], check=True)
    run(repo, "init")
    run(repo, "exp", "run", "-n", "e1", "-S", "lr=0.5")
    try:
        yield repo
    finally:
        unmount_all(repo)


@pytest.fixture
def hold() -> Iterator[object]:
    """Return a function that holds the lock in a folder from another process."""
    holders: list[subprocess.Popen[str]] = []

    def start(folder: Path) -> subprocess.Popen[str]:
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(folder)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        holders.append(holder)
        assert holder.stdout is not None
        assert holder.stdout.readline() == "held\n"
        return holder

    yield start
    for holder in holders:
        holder.communicate(timeout=30)


def workspace_folder(project: Path, name: str) -> Path:
    return project / ".expfs" / "workspaces" / name


def branches(project: Path) -> str:
    return subprocess.run(
        ["git", "-C", str(project), "branch", "--list"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def assert_names_holder(done: subprocess.CompletedProcess[str], pid: int) -> None:
    assert done.returncode == 1
    assert f"pid {pid}" in done.stderr
    assert "lock-holder-for-test" in done.stderr
    assert "Nothing was changed" in done.stderr


def test_promote_current_fails_while_held(project: Path, tmp_path: Path, hold) -> None:
    holder = hold(workspace_folder(project, "e1"))
    worktree = tmp_path / "promoted"
    done = run(
        project,
        "exp",
        "promote",
        "e1",
        "--current",
        "--branch",
        "exp/e1",
        "--worktree",
        str(worktree),
        check=False,
    )
    assert_names_holder(done, holder.pid)
    assert "exp/e1" not in branches(project)
    assert not worktree.exists()


def test_promote_worktree_locked_until_commit(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from expfs import gitio
    from expfs.store.lmdbenv import close_environment
    from expfs.store.repo import store_for

    # `expfs checkout` runs in the new worktree while promote fills it.
    worktree = tmp_path / "promoted"
    seen: list[subprocess.CompletedProcess[str]] = []
    fill = gitio._fill_worktree

    def fill_and_check(*args: object, **kwargs: object) -> None:
        seen.append(
            subprocess.run(
                [sys.executable, "-m", "expfs", "checkout"],
                cwd=worktree,
                capture_output=True,
                text=True,
                env={**os.environ, "EXPFS_NO_SERVER": "1"},
            )
        )
        fill(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(gitio, "_fill_worktree", fill_and_check)
    store = store_for(str(project))
    try:
        gitio.promote(store, "e1", "exp/e1", worktree=str(worktree))
    finally:
        close_environment(os.path.join(store.root, "index"))
    [checkout] = seen
    assert checkout.returncode == 1
    assert f"workspace {worktree} is busy: pid {os.getpid()}" in checkout.stderr
    assert "exp/e1" in branches(project)
    # Once promote has returned, the worktree is free.
    assert run(worktree, "checkout").returncode == 0


def test_remove_fails_while_held(project: Path, hold) -> None:
    holder = hold(workspace_folder(project, "e1"))
    done = run(project, "exp", "remove", "e1", check=False)
    assert_names_holder(done, holder.pid)
    assert sorted(show(project)) == ["e1"]
    assert workspace_folder(project, "e1").is_dir()


def orphan_workspace(project: Path, name: str) -> Path:
    """Make a workspace no record names, as a crash while creating one leaves."""
    from expfs.store.lmdbenv import close_environment
    from expfs.store.repo import store_for
    from expfs.workspace import Workspace

    store = store_for(str(project))
    try:
        Workspace.create(store, name, store.put_tree([])).close()
    finally:
        close_environment(os.path.join(store.root, "index"))
    return workspace_folder(project, name)


def test_exp_new_over_held_orphan_fails(project: Path, hold) -> None:
    folder = orphan_workspace(project, "e2")
    holder = hold(folder)
    done = run(project, "exp", "new", "e2", check=False)
    assert_names_holder(done, holder.pid)
    assert sorted(show(project)) == ["e1"]
    assert folder.is_dir()


def test_pull_over_held_orphan_fails(project: Path, tmp_path: Path, hold) -> None:
    run(
        project, "remote", "add", "origin", f"file://{tmp_path / 'remote'}", "--default"
    )
    run(project, "push", "e1")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(project), str(clone)], check=True)
    run(clone, "init")
    run(clone, "remote", "add", "origin", f"file://{tmp_path / 'remote'}", "--default")
    folder = orphan_workspace(clone, "e1")
    holder = hold(folder)
    try:
        done = run(clone, "pull", "e1", check=False)
    finally:
        unmount_all(clone)
    assert_names_holder(done, holder.pid)
    assert show(clone) == {}
    assert folder.is_dir()
    holder.communicate(timeout=30)
    run(clone, "pull", "e1")
    assert show(clone)["e1"].result == show(project)["e1"].result  # type: ignore[attr-defined]
