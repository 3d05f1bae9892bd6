"""fsck: re-hashing finds damaged and missing objects and re-indexes orphans."""

from __future__ import annotations

import os
import time
from pathlib import Path

from expfs.store import Entry, Kind, Store, layout
from expfs.store.fsck import TMP_MAX_AGE_S, fsck
from expfs.store.trees import raw


def fill(store: Store) -> tuple[str, str, str]:
    """Store two blobs and a tree of them; return (blob a, blob b, tree)."""
    a = store.put_bytes(b"alpha\n")
    b = store.put_bytes(b"beta\n")
    tree = store.put_tree(
        [
            Entry(b"a", Kind.FILE, 0o644, a, 6),
            Entry(b"b", Kind.FILE, 0o644, b, 5),
        ]
    )
    return a, b, tree


def test_healthy_store_is_clean(store: Store) -> None:
    fill(store)
    report = fsck(store)
    assert report.ok
    assert report.blobs_checked == 2
    assert report.trees_checked == 1


def test_corrupt_blob_reported(store: Store) -> None:
    a, _, _ = fill(store)
    path = store.blob_path(a)
    os.chmod(path, 0o644)
    Path(path).write_bytes(b"bit rot\n")
    report = fsck(store)
    assert [(p.kind, p.digest, p.path) for p in report.problems] == [
        ("corrupt", a, path)
    ]


def test_missing_blob_reported(store: Store) -> None:
    _, b, tree = fill(store)
    os.unlink(store.blob_path(b))
    report = fsck(store)
    kinds = sorted((p.kind, p.digest) for p in report.problems)
    # Once as an indexed blob without a file, once as a tree's reference.
    assert kinds == [("missing", b), ("missing", b)]
    assert any(tree in p.detail for p in report.problems)


def test_missing_subtree_reported(store: Store) -> None:
    _, _, tree = fill(store)
    parent = store.put_tree([Entry(b"sub", Kind.DIRECTORY, 0o755, tree, 11)])
    store.delete_tree(tree)
    report = fsck(store)
    assert [(p.kind, p.digest) for p in report.problems] == [("missing", tree)]
    assert parent in report.problems[0].detail


def test_corrupt_tree_reported(store: Store) -> None:
    _, _, tree = fill(store)
    handle = store.env.db(layout.DB_TREES)
    store.env.write(lambda txn: txn.put(raw(tree), b"EXT\x01garbage", db=handle))
    report = fsck(store)
    assert [(p.kind, p.digest) for p in report.problems] == [("corrupt", tree)]


def test_unindexed_blob_file_reindexed(store: Store) -> None:
    a, _, _ = fill(store)
    handle = store.env.db(layout.DB_BLOBS)
    store.env.write(lambda txn: txn.delete(raw(a), db=handle))
    report = fsck(store)
    assert report.ok
    assert report.reindexed == 1
    assert (a, 6) in store.indexed_blobs()


def test_corrupt_unindexed_blob_not_reindexed(store: Store) -> None:
    a, _, _ = fill(store)
    handle = store.env.db(layout.DB_BLOBS)
    store.env.write(lambda txn: txn.delete(raw(a), db=handle))
    os.chmod(store.blob_path(a), 0o644)
    Path(store.blob_path(a)).write_bytes(b"bad")
    report = fsck(store)
    assert report.reindexed == 0
    assert [p.kind for p in report.problems] == ["corrupt"]


def test_stray_file_reported(store: Store) -> None:
    fill(store)
    stray = os.path.join(store.root, "objects", "zz", "notes.txt")
    os.makedirs(os.path.dirname(stray))
    Path(stray).write_text("not an object")
    report = fsck(store)
    assert [(p.kind, p.path) for p in report.problems] == [("stray", stray)]


def test_old_temporary_files_removed(store: Store) -> None:
    tmp = Path(store.root, "tmp")
    old, new = tmp / "old", tmp / "new"
    old.write_bytes(b"left by a crash")
    new.write_bytes(b"being written now")
    past = time.time() - TMP_MAX_AGE_S - 60
    os.utime(old, (past, past))
    report = fsck(store)
    assert report.tmp_removed == 1
    assert not old.exists()
    assert new.exists()
