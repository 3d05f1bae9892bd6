"""exp promote, exp apply and checkout on real Git repositories and real mounts."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import git

pytestmark = pytest.mark.fuse

EXPFS = [sys.executable, "-m", "expfs"]

STAGES = """\
stages:
  train:
    cmd: python3 train.py
    deps: [train.py]
    params: [lr]
    outs: [model.txt, tool.sh, outdir]
    metrics: [{score.json: {cache: false}}]
"""

TRAIN = """
    import json, os, yaml
    lr = yaml.safe_load(open("params.yaml"))["lr"]
    open("model.txt", "w").write(f"model {lr}\\n")
    open("tool.sh", "w").write("#!/bin/sh\\necho tool\\n")
    os.chmod("tool.sh", 0o755)
    os.makedirs("outdir", exist_ok=True)
    open("outdir/part.txt", "w").write(f"part {lr}\\n")
    json.dump({"score": lr * 2}, open("score.json", "w"))
"""


def expfs(
    cwd: Path, *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*EXPFS, *args], cwd=cwd, capture_output=True, text=True)
    if check:
        assert proc.returncode == 0, f"expfs {' '.join(args)}: {proc.stderr}"
    return proc


def tree_state(root: Path) -> dict[str, tuple[str, int]]:
    """Hash and mode of every file in a checkout, outside .git and .expfs."""
    state = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in (".git", ".expfs")]
        for name in files:
            path = Path(folder) / name
            data = path.read_bytes() if not path.is_symlink() else b""
            rel = str(path.relative_to(root))
            state[rel] = (hashlib.sha256(data).hexdigest(), path.lstat().st_mode)
    return state


def user_state(repo: Path) -> tuple[object, ...]:
    """Everything of the user's checkout that promotion must not change."""
    index = (repo / ".git" / "index").read_bytes()
    head = git(repo, "rev-parse", "HEAD")
    symbolic = git(repo, "symbolic-ref", "HEAD")
    status = git(repo, "status", "--porcelain", "--ignored")
    return tree_state(repo), index, head, symbolic, status


@pytest.fixture
def project(repo: Path) -> Path:
    """A repository with a one-stage pipeline and experiment e1 run with lr=0.5."""
    if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
        pytest.skip("needs /dev/fuse and fusermount3 (apt-get install fuse3)")
    (repo / "dvc.yaml").write_text(STAGES)
    (repo / "train.py").write_text(textwrap.dedent(TRAIN))
    (repo / "params.yaml").write_text("lr: 0.1\n")
    (repo / ".gitignore").write_text("/model.txt\n/tool.sh\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "pipeline")
    expfs(repo, "init")
    try:
        expfs(repo, "exp", "run", "-S", "lr=0.5", "-n", "e1")
    finally:
        unmount_all(repo)
    return repo


def unmount_all(repo: Path) -> None:
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    for point in points:
        if point.startswith(str(repo) + "/"):
            subprocess.run(["fusermount3", "-uz", point], check=False)


def test_promote_commits_on_new_branch(project: Path) -> None:
    before = user_state(project)
    out = expfs(project, "exp", "promote", "e1", "--branch", "exp/e1").stdout
    assert "promoted experiment e1 to branch exp/e1" in out
    assert user_state(project) == before
    assert git(project, "show", "exp/e1:params.yaml") == "lr: 0.5\n"
    assert '"score": 1.0' in git(project, "show", "exp/e1:score.json")
    assert git(project, "show", "exp/e1:outdir/part.txt") == "part 0.5\n"
    lock = git(project, "show", "exp/e1:expfs.lock")
    assert "path: model.txt" in lock
    assert "path: tool.sh" in lock
    files = git(project, "ls-tree", "-r", "--name-only", "exp/e1").split()
    assert "model.txt" not in files
    assert "tool.sh" not in files
    parent = git(project, "rev-parse", "exp/e1^").strip()
    assert parent == git(project, "rev-parse", "HEAD").strip()


def test_promote_message_and_cleanup(project: Path) -> None:
    expfs(project, "exp", "promote", "e1", "--branch", "exp/e1")
    message = git(project, "log", "-1", "--format=%B", "exp/e1")
    assert message.startswith("Promote experiment e1\n")
    assert "lr=0.5" in message
    assert "score=1.0" in message
    assert "Expfs-Experiment: e1" in message
    worktrees = git(project, "worktree", "list", "--porcelain")
    assert "/promote/" not in worktrees
    assert os.listdir(project / ".expfs" / "promote") == []


def test_promote_tag_and_kept_worktree(project: Path, tmp_path: Path) -> None:
    worktree = tmp_path / "wt"
    expfs(
        project,
        "exp",
        "promote",
        "e1",
        "--branch",
        "exp/e1",
        "--tag",
        "best-v1",
        "--worktree",
        str(worktree),
    )
    commit = git(project, "rev-parse", "exp/e1").strip()
    assert git(project, "rev-parse", "best-v1^{commit}").strip() == commit
    assert git(project, "cat-file", "-t", "best-v1").strip() == "tag"
    assert (worktree / "params.yaml").read_text() == "lr: 0.5\n"
    assert git(worktree, "status", "--porcelain") == ""
    assert git(worktree, "rev-parse", "--abbrev-ref", "HEAD").strip() == "exp/e1"


def test_checkout_restores_outputs_with_modes(project: Path, tmp_path: Path) -> None:
    worktree = tmp_path / "wt"
    expfs(project, "exp", "promote", "e1", "-b", "exp/e1", "--worktree", str(worktree))
    assert not (worktree / "model.txt").exists()
    out = expfs(worktree, "checkout").stdout
    assert "restored 2 outputs" in out
    assert (worktree / "model.txt").read_text() == "model 0.5\n"
    assert (worktree / "tool.sh").stat().st_mode & 0o777 == 0o755
    assert (worktree / "model.txt").stat().st_mode & 0o777 == 0o644
    assert git(worktree, "status", "--porcelain") == ""
    again = expfs(worktree, "checkout").stdout
    assert "restored 0 outputs, 3 already up to date" in again


def test_checkout_hardlink_and_corrupt_blob(project: Path, tmp_path: Path) -> None:
    worktree = tmp_path / "wt"
    expfs(project, "exp", "promote", "e1", "-b", "exp/e1", "--worktree", str(worktree))
    expfs(worktree, "checkout", "--link", "hardlink")
    assert (worktree / "model.txt").read_text() == "model 0.5\n"
    (worktree / "model.txt").unlink()
    digest = blob_of(project, "exp/e1", "model.txt")
    blob = project / ".expfs" / "objects" / digest[:2] / digest
    blob.chmod(0o644)
    blob.write_text("tampered\n")
    proc = expfs(worktree, "checkout", check=False)
    assert proc.returncode != 0
    assert f"corrupt object {digest}" in proc.stderr
    assert not (worktree / "model.txt").exists()


def blob_of(repo: Path, ref: str, path: str) -> str:
    import yaml

    lock = yaml.safe_load(git(repo, "show", f"{ref}:expfs.lock"))
    for stage in lock["stages"].values():
        for out in stage["outs"]:
            if out["path"] == path:
                return str(out["blake3"])
    raise AssertionError(f"{path} is not in the lock file of {ref}")


def test_promote_large_output_stays_in_store(project: Path, tmp_path: Path) -> None:
    worktree = tmp_path / "wt"
    expfs(
        project,
        "exp",
        "promote",
        "e1",
        "-b",
        "exp/e1",
        "--worktree",
        str(worktree),
        "--max-git-mib",
        "0.000001",
    )
    files = git(project, "ls-tree", "-r", "--name-only", "exp/e1").split()
    assert "outdir/part.txt" not in files
    assert "/outdir" in git(project, "show", "exp/e1:.gitignore").splitlines()
    expfs(worktree, "checkout")
    assert (worktree / "outdir" / "part.txt").read_text() == "part 0.5\n"
    assert git(worktree, "status", "--porcelain") == ""


def test_promote_existing_branch_fails(project: Path) -> None:
    expfs(project, "exp", "promote", "e1", "--branch", "exp/e1")
    proc = expfs(project, "exp", "promote", "e1", "--branch", "exp/e1", check=False)
    assert proc.returncode == 1
    assert "branch 'exp/e1' exists already" in proc.stderr
    assert "--branch" in proc.stderr


def test_promote_unknown_experiment_fails(project: Path) -> None:
    proc = expfs(project, "exp", "promote", "nope", "--branch", "x", check=False)
    assert proc.returncode == 1
    assert "no experiment named 'nope'" in proc.stderr
    assert git(project, "branch", "--list", "x") == ""


def test_promote_without_changes_fails(project: Path) -> None:
    expfs(project, "exp", "new", "e0", "--from", "HEAD")
    proc = expfs(project, "exp", "promote", "e0", "--branch", "exp/e0", check=False)
    assert proc.returncode == 1
    assert "has no changes against its base commit" in proc.stderr
    assert git(project, "branch", "--list", "exp/e0") == ""


def commit_in_mount(project: Path, name: str, files: dict[str, str]) -> str:
    """Mount experiment `name`, write `files` and commit them with git there."""
    mount = project / ".expfs" / "mnt" / name
    expfs(project, "mount", name)
    try:
        for rel, text in files.items():
            (mount / rel).write_text(text)
        git(mount, "add", *files)
        git(mount, "commit", "-qm", f"edit in {name}")
        return git(mount, "rev-parse", "HEAD").strip()
    finally:
        expfs(project, "umount", name)


def test_promote_carries_commit_from_mount(project: Path) -> None:
    commit = commit_in_mount(project, "e1", {"notes.txt": "why lr=0.5\n"})
    out = expfs(
        project, "exp", "promote", "e1", "--branch", "exp/c", "--current"
    ).stdout
    assert "carried 1 commit made with git inside the mount" in out
    assert git(project, "rev-parse", "exp/c^").strip() == commit
    assert git(project, "log", "-1", "--format=%s", "exp/c^") == "edit in e1\n"
    assert git(project, "show", "exp/c:notes.txt") == "why lr=0.5\n"
    assert git(project, "show", "exp/c:params.yaml") == "lr: 0.5\n"
    base = git(project, "rev-parse", "HEAD").strip()
    assert git(project, "rev-parse", "exp/c^^").strip() == base


def test_promote_result_leaves_later_commit(project: Path) -> None:
    # The result snapshot was taken before the commit, so the commit's file
    # is not among the promoted files and the commit is not carried.
    commit_in_mount(project, "e1", {"notes.txt": "later\n"})
    out = expfs(project, "exp", "promote", "e1", "--branch", "exp/r").stdout
    assert "not carried" in out
    assert "notes.txt" in out
    base = git(project, "rev-parse", "HEAD").strip()
    assert git(project, "rev-parse", "exp/r^").strip() == base
    files = git(project, "ls-tree", "-r", "--name-only", "exp/r").split()
    assert "notes.txt" not in files


def test_promote_commit_only_changes(project: Path) -> None:
    # Everything the workspace changed is committed inside the mount: the
    # promotion commit is empty but carries the params and metrics.
    mount = project / ".expfs" / "mnt" / "e1"
    expfs(project, "mount", "e1")
    try:
        git(mount, "add", "-A")
        git(mount, "commit", "-qm", "all of it")
    finally:
        expfs(project, "umount", "e1")
    expfs(project, "exp", "promote", "e1", "--branch", "exp/a", "--current")
    assert git(project, "diff", "--stat", "exp/a^", "exp/a") == ""
    assert "Expfs-Experiment: e1" in git(project, "log", "-1", "--format=%B", "exp/a")
    assert git(project, "log", "-1", "--format=%s", "exp/a^") == "all of it\n"


def test_promote_into_folder(project: Path, tmp_path: Path) -> None:
    before = user_state(project)
    expfs(project, "exp", "promote", "e1", "--into", str(tmp_path / "results"))
    folder = tmp_path / "results" / "e1"
    assert (folder / "model.txt").read_text() == "model 0.5\n"
    assert (folder / "params.yaml").read_text() == "lr: 0.5\n"
    assert (folder / "tool.sh").stat().st_mode & 0o777 == 0o755
    assert user_state(project) == before
    again = expfs(
        project,
        "exp",
        "promote",
        "e1",
        "--into",
        str(tmp_path / "results"),
        check=False,
    )
    assert again.returncode != 0
    assert "is not empty" in again.stderr


def test_apply_writes_changed_paths_only(project: Path) -> None:
    (project / "README").write_text("my unrelated edit\n")
    out = expfs(project, "exp", "apply", "e1").stdout
    assert "applied experiment e1" in out
    assert (project / "params.yaml").read_text() == "lr: 0.5\n"
    assert (project / "model.txt").read_text() == "model 0.5\n"
    assert (project / "tool.sh").stat().st_mode & 0o777 == 0o755
    assert (project / "README").read_text() == "my unrelated edit\n"
    assert git(project, "rev-parse", "--abbrev-ref", "HEAD").strip() == "main"
    expfs(project, "exp", "apply", "--undo")
    assert (project / "params.yaml").read_text() == "lr: 0.1\n"
    assert not (project / "model.txt").exists()
    assert not (project / "outdir").exists()
    assert (project / "README").read_text() == "my unrelated edit\n"
    assert git(project, "status", "--porcelain") == " M README\n"


def test_apply_conflict_lists_paths(project: Path) -> None:
    (project / "params.yaml").write_text("lr: 0.3\n")
    before = tree_state(project)
    proc = expfs(project, "exp", "apply", "e1", check=False)
    assert proc.returncode == 1
    assert "  params.yaml" in proc.stderr
    assert "--force" in proc.stderr
    assert tree_state(project) == before


def test_apply_force_keeps_backup(project: Path) -> None:
    (project / "params.yaml").write_text("lr: 0.3\n")
    out = expfs(project, "exp", "apply", "e1", "--force").stdout
    assert "overwrote params.yaml" in out
    assert (project / "params.yaml").read_text() == "lr: 0.5\n"
    backup = out.rsplit("--undo ", 1)[1].split("`")[0]
    expfs(project, "exp", "apply", "--undo", backup)
    assert (project / "params.yaml").read_text() == "lr: 0.3\n"
    assert not (project / "model.txt").exists()


def test_apply_twice_is_a_no_op(project: Path) -> None:
    expfs(project, "exp", "apply", "e1")
    out = expfs(project, "exp", "apply", "e1").stdout
    assert out.startswith("nothing to apply")


def test_checkout_in_user_checkout(project: Path) -> None:
    expfs(project, "exp", "apply", "e1")
    (project / "model.txt").unlink()
    (project / "tool.sh").chmod(0o600)
    out = expfs(project, "checkout").stdout
    assert "restored 2 outputs" in out
    assert (project / "model.txt").read_text() == "model 0.5\n"
    assert (project / "tool.sh").stat().st_mode & 0o777 == 0o755


def test_exp_remove_all_failed_and_all(project: Path) -> None:
    from expfs.experiments import update_experiment
    from expfs.store.repo import store_for

    expfs(project, "exp", "new", "bad")
    expfs(project, "exp", "new", "ok")
    update_experiment(store_for(str(project)), "bad", status="failed")
    out = expfs(project, "exp", "remove", "--all-failed").stdout
    assert out == "removed experiment bad\n"
    both = expfs(project, "exp", "remove", "e1", "--all", check=False)
    assert both.returncode == 2
    out = expfs(project, "exp", "remove", "--all").stdout
    assert out.splitlines() == ["removed experiment e1", "removed experiment ok"]
    unknown = expfs(project, "exp", "remove", "nope", check=False)
    assert "no experiment named 'nope'" in unknown.stderr


def test_promote_failed_experiment_rejected(project: Path) -> None:
    from expfs.experiments import update_experiment
    from expfs.store.repo import store_for

    update_experiment(store_for(str(project)), "e1", status="failed", error="boom")
    proc = expfs(project, "exp", "promote", "e1", "--branch", "exp/f", check=False)
    assert proc.returncode == 2
    assert "experiment 'e1' is failed (boom)" in proc.stderr
    assert "--current" in proc.stderr
    assert git(project, "branch", "--list", "exp/f") == ""
    expfs(project, "exp", "promote", "e1", "--branch", "exp/f", "--current")
    assert git(project, "branch", "--list", "exp/f").strip() == "exp/f"
