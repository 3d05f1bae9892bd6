"""Run-cache records and the fingerprint of dependencies."""

from __future__ import annotations

import os
from pathlib import Path

from expfs.runcache import OutputRecord, RunCache, RunRecord
from expfs.store.objects import Store
from expfs.store.trees import Digest, Kind
from expfs.tree.fingerprint import fingerprint_path
from expfs.tree.snapshot import snapshot_path

KEY = Digest("ab" * 32)


def make_tree(root: Path) -> None:
    (root / "d" / "e").mkdir(parents=True)
    (root / "d" / "empty").mkdir()
    (root / "d" / "a.txt").write_text("a\n" * 100)
    (root / "d" / "e" / "run.sh").write_text("#!/bin/sh\n")
    (root / "d" / "e" / "run.sh").chmod(0o755)
    os.symlink("a.txt", root / "d" / "link")


def test_fingerprint_matches_snapshot(store: Store, repo: Path) -> None:
    make_tree(repo)
    found = fingerprint_path(store, repo / "d")
    assert found is not None
    assert found.kind is Kind.DIRECTORY
    assert found.digest == snapshot_path(store, repo / "d")


def test_fingerprint_stores_nothing(store: Store, repo: Path) -> None:
    make_tree(repo)
    found = fingerprint_path(store, repo / "d")
    assert found is not None
    assert not store.has_tree(found.digest)
    assert list(store.iter_blob_files()) == []


def test_fingerprint_of_file_and_absent_path(store: Store, repo: Path) -> None:
    make_tree(repo)
    found = fingerprint_path(store, repo / "d" / "a.txt")
    assert found is not None
    assert found.kind is Kind.FILE
    assert found.digest == snapshot_path(store, repo / "d" / "a.txt")
    assert fingerprint_path(store, repo / "missing") is None


def test_fingerprint_sees_edit(store: Store, repo: Path) -> None:
    make_tree(repo)
    before = fingerprint_path(store, repo / "d")
    (repo / "d" / "a.txt").write_text("changed\n")
    after = fingerprint_path(store, repo / "d")
    assert before is not None and after is not None
    assert before.digest != after.digest


def record_for(store: Store, data: bytes) -> RunRecord:
    digest = store.put_bytes(data)
    out = OutputRecord("out.txt", int(Kind.FILE), digest, 0o644, len(data))
    return RunRecord(
        key=KEY, stage="train", outputs=[out], metrics={"m.json": {"acc": 1}}
    )


def test_record_and_lookup(store: Store) -> None:
    cache = RunCache(store)
    cache.record(record_for(store, b"model"))
    found = cache.lookup(KEY, "train")
    assert found is not None
    assert found.outputs[0].path == "out.txt"
    assert found.metrics == {"m.json": {"acc": 1}}


def test_lookup_with_missing_object_is_miss(store: Store) -> None:
    cache = RunCache(store)
    record = record_for(store, b"model")
    cache.record(record)
    store.remove_blob(record.outputs[0].digest)
    assert cache.lookup(KEY, "train") is None
    assert cache.get(KEY) is not None


def test_lookup_of_tree_output_checks_tree(store: Store, repo: Path) -> None:
    make_tree(repo)
    tree = snapshot_path(store, repo / "d")
    out = OutputRecord("d", int(Kind.DIRECTORY), tree, 0o755, 0)
    RunCache(store).record(RunRecord(key=KEY, stage="s", outputs=[out]))
    assert RunCache(store).lookup(KEY, "s") is not None
    store.delete_tree(tree)
    assert RunCache(store).lookup(KEY, "s") is None


def test_failed_run_is_not_recorded(store: Store) -> None:
    record = record_for(store, b"x")
    record.exit_status = 2
    cache = RunCache(store)
    try:
        cache.record(record)
    except ValueError:
        pass
    assert cache.get(KEY) is None


def test_restore_count_and_listing(store: Store) -> None:
    cache = RunCache(store)
    cache.record(record_for(store, b"model"))
    cache.count_restore(KEY)
    cache.count_restore(KEY)
    records = list(cache)
    assert len(records) == 1
    assert records[0].restored == 2
