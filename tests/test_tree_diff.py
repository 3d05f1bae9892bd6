"""diff_trees: added, removed and modified paths, skipping equal subtrees."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from expfs.store import Store
from expfs.store.objects import Store as StoreClass
from expfs.tree.diff import Status, diff_trees
from expfs.tree.snapshot import snapshot_path


def changes(store: Store, old: str, new: str) -> list[tuple[str, bytes]]:
    return [(c.status.value, c.path) for c in diff_trees(store, old, new)]


@pytest.fixture
def folder(repo: Path) -> Path:
    data = repo / "data"
    for i in range(5):
        sub = data / f"dir{i}"
        sub.mkdir(parents=True)
        for j in range(5):
            (sub / f"f{j}.txt").write_text(f"{i}/{j}\n")
    return data


def test_identical_snapshots_no_changes(store: Store, folder: Path) -> None:
    digest = snapshot_path(store, str(folder))
    assert changes(store, digest, digest) == []


def test_add_remove_modify(store: Store, folder: Path) -> None:
    old = snapshot_path(store, str(folder))
    (folder / "dir0" / "f0.txt").write_text("edited\n")
    (folder / "dir1" / "f1.txt").unlink()
    (folder / "dir2" / "new.txt").write_text("new\n")
    new = snapshot_path(store, str(folder))
    assert changes(store, old, new) == [
        ("M", b"dir0/f0.txt"),
        ("D", b"dir1/f1.txt"),
        ("A", b"dir2/new.txt"),
    ]


def test_mode_change_is_modification(store: Store, folder: Path) -> None:
    old = snapshot_path(store, str(folder))
    (folder / "dir3" / "f3.txt").chmod(0o755)
    new = snapshot_path(store, str(folder))
    diff = list(diff_trees(store, old, new))
    assert [(c.status, c.path) for c in diff] == [(Status.MODIFIED, b"dir3/f3.txt")]
    assert diff[0].old is not None and diff[0].old.mode == 0o644
    assert diff[0].new is not None and diff[0].new.mode == 0o755


def test_removed_folder_lists_every_file(store: Store, folder: Path) -> None:
    old = snapshot_path(store, str(folder))
    for name in os.listdir(folder / "dir4"):
        (folder / "dir4" / name).unlink()
    (folder / "dir4").rmdir()
    new = snapshot_path(store, str(folder))
    assert changes(store, old, new) == [("D", b"dir4/f%d.txt" % j) for j in range(5)]


def test_empty_folder_added(store: Store, folder: Path) -> None:
    old = snapshot_path(store, str(folder))
    (folder / "empty").mkdir()
    new = snapshot_path(store, str(folder))
    assert changes(store, old, new) == [("A", b"empty")]


def test_file_replaced_by_folder(store: Store, folder: Path) -> None:
    old = snapshot_path(store, str(folder))
    (folder / "dir0" / "f0.txt").unlink()
    (folder / "dir0" / "f0.txt").mkdir()
    (folder / "dir0" / "f0.txt" / "inner").write_text("inner\n")
    new = snapshot_path(store, str(folder))
    assert changes(store, old, new) == [
        ("D", b"dir0/f0.txt"),
        ("A", b"dir0/f0.txt/inner"),
    ]


def test_equal_subtrees_not_read(
    store: Store, folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = snapshot_path(store, str(folder))
    (folder / "dir2" / "f2.txt").write_text("edited\n")
    new = snapshot_path(store, str(folder))
    read: list[str] = []
    original = StoreClass.get_tree

    def spy(self: Store, digest: str) -> list[object]:
        read.append(digest)
        return original(self, digest)  # type: ignore[return-value]

    monkeypatch.setattr(StoreClass, "get_tree", spy)
    assert changes(store, old, new) == [("M", b"dir2/f2.txt")]
    # Both roots and both versions of dir2; the four equal folders are skipped.
    assert len(read) == 4
