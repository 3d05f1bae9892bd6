"""Snapshots of Git commits and of the working tree as Git shows it."""

from __future__ import annotations

import os
from pathlib import Path

import blake3
import pytest

from expfs.errors import UsageError
from expfs.store import Entry, Kind, Store
from expfs.tree.diff import diff_trees
from expfs.tree.gitsnap import snapshot_commit, snapshot_worktree
from tests.conftest import git


def blake3_hex(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


def flatten(store: Store, digest: str, prefix: bytes = b"") -> dict[bytes, Entry]:
    """Return {relative path: entry} of every file and link below a tree."""
    found: dict[bytes, Entry] = {}
    for entry in store.get_tree(digest):
        path = prefix + entry.name
        if entry.kind is Kind.DIRECTORY:
            found.update(flatten(store, entry.digest, path + b"/"))
        else:
            found[path] = entry
    return found


@pytest.fixture
def project(repo: Path) -> Path:
    """A repository whose commit has a script, a symlink and an ignore rule."""
    (repo / "src").mkdir()
    (repo / "src" / "train.py").write_text("print('train')\n")
    script = repo / "run.sh"
    script.write_text("#!/bin/sh\npython src/train.py\n")
    script.chmod(0o755)
    (repo / "latest").symlink_to("src/train.py")
    (repo / ".gitignore").write_text("*.log\ncache/\n")
    (repo / "gone.txt").write_text("deleted later\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "project")
    return repo


def test_commit_snapshot_modes_and_links(store: Store, project: Path) -> None:
    files = flatten(store, snapshot_commit(store, str(project), "HEAD"))
    assert sorted(files) == [
        b".gitignore",
        b"README",
        b"gone.txt",
        b"latest",
        b"run.sh",
        b"src/train.py",
    ]
    assert files[b"run.sh"].mode == 0o755
    assert files[b"src/train.py"].mode == 0o644
    assert files[b"latest"].kind is Kind.SYMLINK
    assert store.read_blob(files[b"latest"].digest) == b"src/train.py"
    assert files[b"src/train.py"].digest == blake3_hex(b"print('train')\n")


def test_clean_worktree_equals_commit(store: Store, project: Path) -> None:
    assert snapshot_worktree(store, str(project)) == snapshot_commit(
        store, str(project), "HEAD"
    )


def test_worktree_sees_changes(store: Store, project: Path) -> None:
    (project / "src" / "train.py").write_text("print('modified')\n")
    (project / "notes.md").write_text("untracked\n")
    (project / "train.log").write_text("ignored\n")
    (project / "cache").mkdir()
    (project / "cache" / "big.bin").write_bytes(b"ignored folder\n")
    (project / "gone.txt").unlink()
    (project / "tool.sh").write_text("#!/bin/sh\n")
    (project / "tool.sh").chmod(0o755)
    (project / "docs").symlink_to("src")
    files = flatten(store, snapshot_worktree(store, str(project)))
    assert files[b"src/train.py"].digest == blake3_hex(b"print('modified')\n")
    assert b"notes.md" in files
    assert b"train.log" not in files
    assert b"cache/big.bin" not in files
    assert b"gone.txt" not in files
    assert files[b"tool.sh"].mode == 0o755
    assert files[b"docs"].kind is Kind.SYMLINK
    assert b".expfs/FORMAT" not in files


def test_worktree_diff_against_commit(store: Store, project: Path) -> None:
    head = snapshot_commit(store, str(project), "HEAD")
    (project / "src" / "train.py").write_text("print('modified')\n")
    (project / "notes.md").write_text("untracked\n")
    (project / "gone.txt").unlink()
    (project / "train.log").write_text("ignored\n")
    changes = [
        (c.status.value, c.path)
        for c in diff_trees(store, head, snapshot_worktree(store, str(project)))
    ]
    assert changes == [("D", b"gone.txt"), ("A", b"notes.md"), ("M", b"src/train.py")]


def test_extra_paths_include_ignored(store: Store, project: Path) -> None:
    (project / "cache").mkdir()
    (project / "cache" / "big.bin").write_bytes(b"declared output\n")
    (project / "train.log").write_text("declared log\n")
    digest = snapshot_worktree(
        store, str(project), extra_paths=[b"cache", b"train.log"]
    )
    files = flatten(store, digest)
    assert files[b"cache/big.bin"].digest == blake3_hex(b"declared output\n")
    assert b"train.log" in files


def test_commit_of_older_revision(store: Store, project: Path) -> None:
    first = git(project, "rev-parse", "HEAD").strip()
    (project / "src" / "train.py").write_text("print('v2')\n")
    git(project, "commit", "-qam", "v2")
    old = flatten(store, snapshot_commit(store, str(project), first))
    new = flatten(store, snapshot_commit(store, str(project), "HEAD"))
    assert old[b"src/train.py"].digest == blake3_hex(b"print('train')\n")
    assert new[b"src/train.py"].digest == blake3_hex(b"print('v2')\n")


def test_commit_snapshot_cached_by_tree_id(
    store: Store, project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = snapshot_commit(store, str(project), "HEAD")

    def fail(*args: object) -> object:
        raise AssertionError("Git objects were read again")

    monkeypatch.setattr("expfs.tree.gitsnap._cat_blobs", fail)
    assert snapshot_commit(store, str(project), "HEAD") == first


def test_unknown_revision(store: Store, project: Path) -> None:
    with pytest.raises(UsageError, match="names no commit"):
        snapshot_commit(store, str(project), "no-such-branch")


def test_non_utf8_names_in_git(store: Store, repo: Path) -> None:
    root = os.fsencode(repo)
    with open(root + b"/caf\xe9.txt", "wb") as f:
        f.write(b"latin-1\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "odd name")
    with open(root + b"/new-\xff.txt", "wb") as f:
        f.write(b"untracked\n")
    committed = flatten(store, snapshot_commit(store, str(repo), "HEAD"))
    worktree = flatten(store, snapshot_worktree(store, str(repo)))
    assert committed[b"caf\xe9.txt"].digest == blake3_hex(b"latin-1\n")
    assert worktree[b"caf\xe9.txt"].digest == blake3_hex(b"latin-1\n")
    assert worktree[b"new-\xff.txt"].digest == blake3_hex(b"untracked\n")
