"""Lazy restores from a file:// remote, without FUSE: marks, lookups, fetches, gc.

A second store looks a run up with `fetch_blobs=False`, as repro does in a
mounted workspace: only trees come over, and they are stored marked lazy.
These tests check that every consumer of the store tells lazy from complete.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from expfs.errors import MissingObject
from expfs.gc import gc
from expfs.remote.config import RemoteConfig, config_files
from expfs.remote.inputs import key_of, make_inputs
from expfs.remote.lazy import ensure_local
from expfs.remote.runs import push, remote_lookup, remote_record
from expfs.remote.transfer import Remote, Stats, object_rel
from expfs.runcache import OutputRecord, RunCache, RunRecord
from expfs.store import Store
from expfs.store.fsck import fsck
from expfs.store.lazy import is_available, is_complete, lazy_mark
from expfs.store.trees import Digest, Kind
from expfs.tree.materialize import materialize
from expfs.tree.snapshot import snapshot_path
from expfs.workspace import Workspace
from expfs_cli.main import main
from tests.test_remote import make_run, second_store

__all__ = ["second_store"]

FILES = {"a": "1" * 100, "b": "2" * 50, "c": "3" * 70}


def add_default_remote(store: Store, path: Path) -> Remote:
    config = RemoteConfig("origin", f"file://{path}")
    config_files(store.root).add(config, default=True)
    return Remote(config)


def pushed_run(store: Store, tmp_path: Path, remote: Remote) -> RunRecord:
    """A run with a folder output and a single-file output, pushed to `remote`."""
    folder, _ = make_run(store, tmp_path / "w", FILES)
    single = tmp_path / "w" / "model.bin"
    single.write_bytes(b"weights" * 1000)
    digest = store.put_file(str(single))
    inputs = make_inputs(
        "python gen.py",
        {"gen.py": "ab" * 32},
        {"params.yaml": {"n": 1}},
        ["out", "model.bin"],
    )
    outputs = [
        folder.outputs[0],
        OutputRecord("model.bin", int(Kind.FILE), digest, 0o644, 7000),
    ]
    record = RunRecord(key=key_of(inputs), stage="gen", outputs=outputs)
    assert remote_record(store, remote, record, inputs)
    return record


def blobs_of(store: Store, tree: str) -> list[Digest]:
    return [e.digest for e in store.get_tree(tree)]


def test_lazy_lookup_fetches_trees_only(
    store: Store, second_store: Store, tmp_path: Path
) -> None:
    remote = add_default_remote(second_store, tmp_path / "remote")
    record = pushed_run(store, tmp_path, remote)
    found = remote_lookup(second_store, remote, record.key, "gen", fetch_blobs=False)
    assert found is not None
    tree, single = record.outputs[0].digest, record.outputs[1].digest
    assert second_store.has_tree(tree)
    assert not is_complete(second_store, Kind.DIRECTORY, tree)
    assert is_available(second_store, Kind.DIRECTORY, tree)
    for blob in blobs_of(second_store, tree):
        assert not second_store.has_blob(blob)
    assert not second_store.has_blob(single)
    mark = lazy_mark(second_store, single)
    assert mark is not None
    assert mark.size == 7000
    assert mark.remote == "origin"
    runs = RunCache(second_store)
    assert runs.lookup(record.key, "gen") is None
    assert runs.lookup(record.key, "gen", lazy_ok=True) is not None


def test_fsck_counts_lazy_blobs_as_no_problem(
    store: Store, second_store: Store, tmp_path: Path
) -> None:
    remote = add_default_remote(second_store, tmp_path / "remote")
    record = pushed_run(store, tmp_path, remote)
    remote_lookup(second_store, remote, record.key, "gen", fetch_blobs=False)
    report = fsck(second_store)
    assert report.ok, [str(p) for p in report.problems]
    # The folder's blobs and the single-file output.
    assert report.lazy_blobs == len(FILES) + 1


def test_fsck_summary_shows_lazy_count(
    store: Store,
    second_store: Store,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    remote = add_default_remote(second_store, tmp_path / "remote")
    record = pushed_run(store, tmp_path, remote)
    remote_lookup(second_store, remote, record.key, "gen", fetch_blobs=False)
    root = os.path.dirname(second_store.root)
    capsys.readouterr()
    assert main(["-C", root, "fsck"]) == 0
    assert capsys.readouterr().out == (
        "checked 0 blobs (0 bytes) and 1 tree: 0 problems; 4 blobs restored "
        "lazily are still only on a remote (fetched when a mounted file is "
        "opened, or by a checkout)\n"
    )

    tree = record.outputs[0].digest
    materialize(second_store, tree, str(tmp_path / "out"), ensure=ensure_local)
    assert main(["-C", root, "fsck"]) == 0
    assert capsys.readouterr().out == (
        "checked 3 blobs (220 bytes) and 1 tree: 0 problems; 1 blob restored "
        "lazily is still only on a remote (fetched when a mounted file is "
        "opened, or by a checkout)\n"
    )


def test_materialize_fetches_then_clears_marks(
    store: Store, second_store: Store, tmp_path: Path
) -> None:
    remote = add_default_remote(second_store, tmp_path / "remote")
    record = pushed_run(store, tmp_path, remote)
    remote_lookup(second_store, remote, record.key, "gen", fetch_blobs=False)
    tree = record.outputs[0].digest
    target = tmp_path / "out"
    materialize(second_store, tree, str(target), ensure=ensure_local)
    for name, text in FILES.items():
        assert (target / name).read_text() == text
    assert is_complete(second_store, Kind.DIRECTORY, tree)
    assert lazy_mark(second_store, tree) is None
    for blob in blobs_of(second_store, tree):
        assert second_store.verify_blob(blob)
    # Only the single-file output is still on the remote.
    assert fsck(second_store).lazy_blobs == 1


def test_single_file_fetched_by_ensure_local(
    store: Store, second_store: Store, tmp_path: Path
) -> None:
    remote = add_default_remote(second_store, tmp_path / "remote")
    record = pushed_run(store, tmp_path, remote)
    remote_lookup(second_store, remote, record.key, "gen", fetch_blobs=False)
    single = record.outputs[1].digest
    ensure_local(second_store, Kind.FILE, single)
    assert second_store.verify_blob(single)
    assert lazy_mark(second_store, single) is None


def test_eager_fetch_completes_lazy_tree(
    store: Store, second_store: Store, tmp_path: Path
) -> None:
    remote = add_default_remote(second_store, tmp_path / "remote")
    record = pushed_run(store, tmp_path, remote)
    remote_lookup(second_store, remote, record.key, "gen", fetch_blobs=False)
    tree = record.outputs[0].digest
    remote.fetch_objects(second_store, [(Kind.DIRECTORY, tree)], Stats())
    assert is_complete(second_store, Kind.DIRECTORY, tree)
    for blob in blobs_of(second_store, tree):
        assert second_store.verify_blob(blob)


def test_lazy_fetch_with_corrupt_object_stores_nothing_bad(
    store: Store, second_store: Store, tmp_path: Path
) -> None:
    remote = add_default_remote(second_store, tmp_path / "remote")
    record = pushed_run(store, tmp_path, remote)
    remote_lookup(second_store, remote, record.key, "gen", fetch_blobs=False)
    tree = record.outputs[0].digest
    victim = blobs_of(second_store, tree)[0]
    path = tmp_path / "remote" / object_rel(victim)
    os.chmod(path, 0o644)
    path.write_text("corrupt")
    with pytest.raises(Exception, match=victim):
        materialize(second_store, tree, str(tmp_path / "out"), ensure=ensure_local)
    assert not second_store.has_blob(victim)
    assert lazy_mark(second_store, tree) is not None
    assert os.listdir(second_store.tmp_dir) == []


def test_push_elsewhere_skips_entry_it_lacks(
    store: Store, second_store: Store, tmp_path: Path
) -> None:
    remote = add_default_remote(second_store, tmp_path / "remote")
    record = pushed_run(store, tmp_path, remote)
    remote_lookup(second_store, remote, record.key, "gen", fetch_blobs=False)
    other = Remote(RemoteConfig("other", f"file://{tmp_path / 'other'}"))
    stats = push(second_store, other, [], run_cache=True)
    assert stats.entries == 0
    assert stats.entries_skipped == 1
    tree = record.outputs[0].digest
    assert not (tmp_path / "other" / object_rel(tree)).exists()
    # The remote it came from has every object, so pushing there claims nothing new.
    again = push(second_store, remote, [], run_cache=True)
    assert again.entries_skipped == 0


def test_snapshot_over_lazy_graft_is_lazy(
    store: Store, second_store: Store, tmp_path: Path
) -> None:
    remote = add_default_remote(second_store, tmp_path / "remote")
    record = pushed_run(store, tmp_path, remote)
    remote_lookup(second_store, remote, record.key, "gen", fetch_blobs=False)
    tree, single = record.outputs[0].digest, record.outputs[1].digest
    base = second_store.put_tree([])
    workspace = Workspace.create(second_store, "e1", base)
    try:
        workspace.graft(b"out", tree)
        workspace.graft(b"model.bin", single)
        assert workspace.resolve(b"model.bin").record.size == 7000
        root = workspace.snapshot()
    finally:
        workspace.close()
    assert lazy_mark(second_store, root) is not None
    report = fsck(second_store)
    assert report.ok, [str(p) for p in report.problems]
    target = tmp_path / "materialized"
    materialize(second_store, root, str(target), ensure=ensure_local)
    assert (target / "model.bin").read_bytes() == b"weights" * 1000
    assert (target / "out" / "a").read_text() == FILES["a"]
    assert lazy_mark(second_store, root) is None


def test_gc_keeps_lazy_graft_then_drops_marks(
    store: Store, second_store: Store, tmp_path: Path
) -> None:
    remote = add_default_remote(second_store, tmp_path / "remote")
    record = pushed_run(store, tmp_path, remote)
    remote_lookup(second_store, remote, record.key, "gen", fetch_blobs=False)
    tree, single = record.outputs[0].digest, record.outputs[1].digest
    gc(second_store, grace_s=0)
    assert second_store.has_tree(tree)
    assert lazy_mark(second_store, tree) is not None
    assert lazy_mark(second_store, single) is not None
    RunCache(second_store).delete(record.key)
    gc(second_store, grace_s=0)
    assert not second_store.has_tree(tree)
    assert lazy_mark(second_store, tree) is None
    assert lazy_mark(second_store, single) is None


def test_graft_of_unknown_blob_is_rejected(second_store: Store) -> None:
    workspace = Workspace.create(second_store, "e1", second_store.put_tree([]))
    try:
        with pytest.raises(MissingObject):
            workspace.graft(b"x", Digest("ab" * 32))
    finally:
        workspace.close()


def test_complete_store_of_same_tree_clears_mark(
    store: Store, second_store: Store, tmp_path: Path
) -> None:
    remote = add_default_remote(second_store, tmp_path / "remote")
    record = pushed_run(store, tmp_path, remote)
    remote_lookup(second_store, remote, record.key, "gen", fetch_blobs=False)
    tree = record.outputs[0].digest
    folder = tmp_path / "same" / "out"
    folder.mkdir(parents=True)
    for name, text in FILES.items():
        (folder / name).write_text(text)
    assert snapshot_path(second_store, str(folder)) == tree
    assert lazy_mark(second_store, tree) is None
    assert is_complete(second_store, Kind.DIRECTORY, tree)
