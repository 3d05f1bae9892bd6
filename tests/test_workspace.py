"""The workspace without FUSE: lazy listings, copy-up, grafts, snapshots."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from expfs.store import Store
from expfs.store.fsck import fsck
from expfs.store.objects import hash_file
from expfs.store.trees import Digest, Entry, Kind
from expfs.tree.build import build_trees
from expfs.tree.materialize import materialize
from expfs.tree.snapshot import snapshot_path
from expfs.workspace import ROOT_INO, Workspace, WorkspaceBusy, WorkspaceExists
from expfs.workspace.errors import (
    AlreadyExists,
    DirectoryNotEmpty,
    NameTooLong,
    NotFound,
)
from expfs.workspace.inodes import DB_INODES, DERIVED_BIT, ino_key
from expfs.workspace.workspace import RENAME_EXCHANGE, RENAME_NOREPLACE

UID, GID = os.getuid(), os.getgid()


def make_base(store: Store, root: Path) -> Digest:
    (root / "src").mkdir(parents=True)
    (root / "src" / "main.py").write_text("print('hi')\n")
    (root / "src" / "deep" / "er").mkdir(parents=True)
    (root / "src" / "deep" / "er" / "leaf.txt").write_text("leaf\n")
    (root / "data.bin").write_bytes(b"0123456789" * 1000)
    (root / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(root / "run.sh", 0o755)
    (root / "empty").mkdir()
    os.symlink("src/main.py", root / "link")
    return snapshot_path(store, str(root))


@pytest.fixture
def base(store: Store, tmp_path: Path) -> Digest:
    return make_base(store, tmp_path / "base")


@pytest.fixture
def ws(store: Store, base: Digest) -> Iterator[Workspace]:
    workspace = Workspace.create(store, "exp1", base)
    blobs_before = {name: hash_file(path) for name, path in store.iter_blob_files()}
    yield workspace
    workspace.close()
    report = fsck(store)
    assert report.ok, report.problems
    for name, path in store.iter_blob_files():
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o444
        if name in blobs_before:
            assert hash_file(path) == blobs_before[name]


def lookup(ws: Workspace, path: bytes) -> int:
    """Resolve a path and hold a reference to it, as a kernel lookup does."""
    node = ws.resolve(path)
    ws.remember(node)
    return node.ino


def read_all(ws: Workspace, ino: int) -> bytes:
    fh = ws.open_file(ino, os.O_RDONLY)
    try:
        return ws.read(fh, 0, 1 << 20)
    finally:
        ws.release(fh)


def write_at(ws: Workspace, ino: int, offset: int, data: bytes, flags: int = 0) -> None:
    fh = ws.open_file(ino, os.O_RDWR | flags)
    try:
        ws.write(fh, offset, data)
    finally:
        ws.release(fh)


def names(ws: Workspace, ino: int) -> list[bytes]:
    return sorted(name for _, name in ws.listdir(ino))


def inode_records(ws: Workspace) -> int:
    handle = ws.env.db(DB_INODES)
    return int(ws.env.read(lambda txn: txn.stat(handle)["entries"]))


def test_create_writes_no_inodes(ws: Workspace) -> None:
    assert names(ws, ROOT_INO) == [b"data.bin", b"empty", b"link", b"run.sh", b"src"]
    assert names(ws, lookup(ws, b"src/deep")) == [b"er"]
    assert inode_records(ws) == 0


def test_create_twice_fails(ws: Workspace, store: Store, base: Digest) -> None:
    with pytest.raises(WorkspaceExists):
        Workspace.create(store, "exp1", base)


def test_open_while_open_fails(ws: Workspace, store: Store) -> None:
    with pytest.raises(WorkspaceBusy):
        Workspace.open(store, "exp1")


def test_clean_file_reads_from_blob(ws: Workspace) -> None:
    ino = lookup(ws, b"src/main.py")
    assert read_all(ws, ino) == b"print('hi')\n"
    assert not os.listdir(ws.upper.folder)


def test_attributes_of_base_entries(ws: Workspace) -> None:
    run = ws.resolve(b"run.sh").record
    assert stat.S_IMODE(run.mode) == 0o755
    assert run.mtime_ns == ws.meta.created_ns
    assert ws.readlink(lookup(ws, b"link")) == b"src/main.py"
    assert ws.nlink(ws.resolve(b"src")) == 3
    assert ws.nlink(ws.node(ROOT_INO)) == 4


def test_first_write_copies_up(ws: Workspace, store: Store) -> None:
    ino = lookup(ws, b"data.bin")
    write_at(ws, ino, 5, b"XX")
    expected = b"01234XX789" + b"0123456789" * 999
    assert read_all(ws, ino) == expected
    assert ws.digest_of(b"data.bin") == Digest(hash_file(ws.upper.path(ino)))


def test_open_truncate_copies_nothing(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    import expfs.workspace.workspace as module

    def no_copy(source: str, dest: str) -> None:
        raise AssertionError("O_TRUNC must not copy the blob")

    monkeypatch.setattr(module, "copy_file", no_copy)
    ino = lookup(ws, b"data.bin")
    write_at(ws, ino, 0, b"new", os.O_TRUNC)
    assert read_all(ws, ino) == b"new"
    ino2 = lookup(ws, b"src/main.py")
    ws.setattr(ino2, size=0)
    assert read_all(ws, ino2) == b""


def test_copy_up_switches_open_readers(ws: Workspace) -> None:
    ino = lookup(ws, b"src/main.py")
    reader = ws.open_file(ino, os.O_RDONLY)
    assert ws.read(reader, 0, 5) == b"print"
    write_at(ws, ino, 0, b"PRINT")
    assert ws.read(reader, 0, 5) == b"PRINT"
    ws.release(reader)


def test_truncate_extends_sparse(ws: Workspace) -> None:
    ino = ws.create_file(ROOT_INO, b"big", 0o644, UID, GID).ino
    ws.setattr(ino, size=5 << 30)
    path = ws.upper.path(ino)
    assert os.stat(path).st_size == 5 << 30
    assert os.stat(path).st_blocks == 0
    write_at(ws, ino, (5 << 30) - 3, b"end")
    fh = ws.open_file(ino, os.O_RDONLY)
    assert ws.read(fh, (5 << 30) - 3, 10) == b"end"
    assert ws.read(fh, 4 << 30, 4) == b"\0\0\0\0"
    ws.release(fh)
    assert ws.node(ino).record.size == 5 << 30


def test_graft_directory_is_constant_time(ws: Workspace, store: Store) -> None:
    files = {
        f"f{i:05d}".encode(): Entry(b"", Kind.FILE, 0o644, store.put_bytes(b"x"), 1)
        for i in range(10_000)
    }
    tree = build_trees(store, files)
    started = time.perf_counter()
    changed = ws.graft(b"src/out", tree)
    elapsed = time.perf_counter() - started
    assert elapsed < 0.05
    src = lookup(ws, b"src")
    assert changed == [(src, b"out", 0)]
    assert len(ws.listdir(lookup(ws, b"src/out"))) == 10_000
    assert read_all(ws, lookup(ws, b"src/out/f00042")) == b"x"


def test_graft_gives_new_inode_numbers(ws: Workspace, store: Store) -> None:
    old_dir = lookup(ws, b"src/deep")
    old_leaf = lookup(ws, b"src/deep/er/leaf.txt")
    new_tree = ws.digest_of(b"src")
    changed = ws.graft(b"src/deep", new_tree)
    assert changed == [(lookup(ws, b"src"), b"deep", old_dir)]
    assert lookup(ws, b"src/deep") != old_dir
    assert names(ws, lookup(ws, b"src/deep")) == [b"deep", b"main.py"]
    blob = store.put_bytes(b"fresh")
    ws.graft(b"src/deep/deep/er/leaf.txt", blob)
    assert lookup(ws, b"src/deep/deep/er/leaf.txt") != old_leaf
    assert read_all(ws, lookup(ws, b"src/deep/deep/er/leaf.txt")) == b"fresh"


def test_graft_creates_missing_parents(ws: Workspace, store: Store) -> None:
    blob = store.put_bytes(b"model")
    changed = ws.graft(b"models/v1/model.pkl", blob, mode=0o600)
    models = lookup(ws, b"models")
    v1 = lookup(ws, b"models/v1")
    assert changed == [
        (ROOT_INO, b"models", 0),
        (models, b"v1", 0),
        (v1, b"model.pkl", 0),
    ]
    node = ws.resolve(b"models/v1/model.pkl")
    assert stat.S_IMODE(node.record.mode) == 0o600
    assert node.record.size == 5


def test_remove_path_directory(ws: Workspace) -> None:
    src = lookup(ws, b"src")
    leaf = lookup(ws, b"src/deep/er/leaf.txt")
    write_at(ws, leaf, 0, b"changed")
    changed = ws.remove_path(b"src")
    assert changed == [(ROOT_INO, b"src", src)]
    assert b"src" not in names(ws, ROOT_INO)
    assert ws.nlink(ws.node(ROOT_INO)) == 3
    assert os.listdir(ws.upper.folder) == [str(leaf)]
    ws.forget(leaf, 1)
    assert not os.listdir(ws.upper.folder)


def test_inode_numbers_stable_across_reopen(ws: Workspace, store: Store) -> None:
    before = {p: lookup(ws, p) for p in (b"src", b"src/main.py", b"data.bin")}
    new = ws.create_file(lookup(ws, b"src"), b"new.txt", 0o644, UID, GID).ino
    ws.close()
    reopened = Workspace.open(store, "exp1")
    try:
        after = {p: lookup(reopened, p) for p in before}
        assert after == before
        assert lookup(reopened, b"src/new.txt") == new
        assert before[b"src"] & DERIVED_BIT
        assert not new & DERIVED_BIT
    finally:
        reopened.close()
    ws.__dict__.update(Workspace.open(store, "exp1").__dict__)


def test_rename_keeps_inode_and_children(ws: Workspace) -> None:
    src = lookup(ws, b"src")
    deep = lookup(ws, b"src/deep")
    leaf = lookup(ws, b"src/deep/er/leaf.txt")
    ws.mkdir(ROOT_INO, b"moved", 0o755, UID, GID)
    ws.rename(src, b"deep", lookup(ws, b"moved"), b"d")
    assert lookup(ws, b"moved/d") == deep
    assert lookup(ws, b"moved/d/er/leaf.txt") == leaf
    assert read_all(ws, leaf) == b"leaf\n"
    assert names(ws, src) == [b"main.py"]
    assert ws.nlink(ws.node(src)) == 2
    assert ws.nlink(ws.resolve(b"moved")) == 3


def test_rename_over_file_and_empty_dir(ws: Workspace) -> None:
    ws.rename(ROOT_INO, b"run.sh", ROOT_INO, b"data.bin")
    assert read_all(ws, lookup(ws, b"data.bin")) == b"#!/bin/sh\n"
    ws.mkdir(ROOT_INO, b"d", 0o755, UID, GID)
    ws.rename(ROOT_INO, b"d", ROOT_INO, b"empty")
    assert names(ws, ROOT_INO) == [b"data.bin", b"empty", b"link", b"src"]
    with pytest.raises(DirectoryNotEmpty):
        ws.rename(ROOT_INO, b"empty", ROOT_INO, b"src")


def test_rename_noreplace_and_exchange(ws: Workspace) -> None:
    with pytest.raises(AlreadyExists):
        ws.rename(ROOT_INO, b"run.sh", ROOT_INO, b"data.bin", RENAME_NOREPLACE)
    run, src = lookup(ws, b"run.sh"), lookup(ws, b"src")
    ws.rename(ROOT_INO, b"run.sh", ROOT_INO, b"src", RENAME_EXCHANGE)
    assert lookup(ws, b"src") == run
    assert lookup(ws, b"run.sh") == src
    assert names(ws, src) == [b"deep", b"main.py"]


def test_readdir_cookies_survive_deletes(ws: Workspace) -> None:
    d = ws.mkdir(ROOT_INO, b"d", 0o755, UID, GID).ino
    for i in range(2000):
        ws.create_file(d, f"f{i}".encode(), 0o644, UID, GID)
    seen: list[bytes] = []
    cookie = 0
    while True:
        batch = [(c, n) for c, n in ws.listdir(d) if c > cookie][:37]
        if not batch:
            break
        for c, name in batch:
            seen.append(name)
            ws.unlink(d, name)
            cookie = c
    assert len(seen) == 2000
    assert len(set(seen)) == 2000
    assert ws.listdir(d) == []
    ws.rmdir(ROOT_INO, b"d")


def test_hardlink_counts(ws: Workspace) -> None:
    a = ws.create_file(ROOT_INO, b"a", 0o644, UID, GID)
    ws.link(a.ino, ROOT_INO, b"b")
    assert lookup(ws, b"b") == a.ino
    assert ws.nlink(ws.resolve(b"b")) == 2
    ws.unlink(ROOT_INO, b"b")
    assert ws.nlink(ws.resolve(b"a")) == 1
    t = ws.mkdir(ROOT_INO, b"t", 0o755, UID, GID).ino
    x = ws.mkdir(t, b"x", 0o755, UID, GID).ino
    ws.mkdir(x, b"y", 0o755, UID, GID)
    ws.mkdir(t, b"z", 0o755, UID, GID)
    assert ws.nlink(ws.node(t)) == 4
    assert ws.nlink(ws.node(x)) == 3
    base_file = lookup(ws, b"src/main.py")
    ws.link(base_file, ROOT_INO, b"main2")
    assert ws.nlink(ws.resolve(b"src/main.py")) == 2


def test_unlink_while_open(ws: Workspace) -> None:
    node = ws.create_file(ROOT_INO, b"x", 0o600, UID, GID)
    ws.remember(node)
    fh = ws.open_file(node.ino, os.O_RDWR)
    ws.unlink(ROOT_INO, b"x")
    ws.write(fh, 0, b"hello")
    assert ws.read(fh, 0, 5) == b"hello"
    assert ws.nlink(node) == 0
    assert b"x" not in names(ws, ROOT_INO)
    snapshot_names = [e.name for e in ws.store.get_tree(ws.snapshot())]
    assert b"x" not in snapshot_names
    ws.release(fh)
    assert os.path.exists(ws.upper.path(node.ino))
    ws.forget(node.ino, 1)
    assert not os.listdir(ws.upper.folder)
    assert ws.env.get(DB_INODES, ino_key(node.ino)) is None


def test_orphans_removed_after_crash(ws: Workspace, store: Store) -> None:
    node = ws.create_file(ROOT_INO, b"tmp", 0o600, UID, GID)
    ws.remember(node)
    fh = ws.open_file(node.ino, os.O_RDWR)
    ws.write(fh, 0, b"data")
    ws.unlink(ROOT_INO, b"tmp")
    ws.handles.clear()
    ws.nodes.clear()
    ws.close()
    reopened = Workspace.open(store, "exp1")
    assert not os.listdir(reopened.upper.folder)
    ws.__dict__.update(reopened.__dict__)


def test_names_up_to_255_bytes(ws: Workspace) -> None:
    name = bytes(range(1, 47)).replace(b"/", b"_") * 5 + b"\xff" * 25
    assert len(name) == 255
    ws.create_file(ROOT_INO, name, 0o644, UID, GID)
    assert name in names(ws, ROOT_INO)
    with pytest.raises(NameTooLong):
        ws.create_file(ROOT_INO, name + b"x", 0o644, UID, GID)


def test_xattrs_stored(ws: Workspace) -> None:
    ino = lookup(ws, b"src/main.py")
    ws.setxattr(ino, b"user.note", b"v")
    assert ws.getxattr(ino, b"user.note") == b"v"
    assert ws.listxattr(ino) == [b"user.note"]
    ws.removexattr(ino, b"user.note")
    assert ws.listxattr(ino) == []


def test_snapshot_of_clean_workspace_is_base(ws: Workspace, base: Digest) -> None:
    assert ws.snapshot() == base


def test_snapshot_matches_materialized_copy(
    ws: Workspace, store: Store, tmp_path: Path
) -> None:
    write_at(ws, lookup(ws, b"src/deep/er/leaf.txt"), 0, b"LEAF")
    ws.setattr(lookup(ws, b"data.bin"), mode=0o600)
    ws.rename(ROOT_INO, b"run.sh", lookup(ws, b"empty"), b"run2.sh")
    new = ws.create_file(lookup(ws, b"src"), b"new.py", 0o644, UID, GID).ino
    write_at(ws, new, 0, b"x = 1\n")
    ws.symlink(ROOT_INO, b"l2", b"../elsewhere", UID, GID)
    ws.mkdir(ROOT_INO, b"fresh", 0o700, UID, GID)
    ws.unlink(ROOT_INO, b"link")
    digest = ws.snapshot()
    out = tmp_path / "out"
    materialize(store, digest, str(out))
    assert (out / "src" / "deep" / "er" / "leaf.txt").read_bytes() == b"LEAF\n"
    assert (out / "empty" / "run2.sh").read_bytes() == b"#!/bin/sh\n"
    assert snapshot_path(store, str(out)) == digest
    assert ws.digest_of(b"src") == snapshot_path(store, str(out / "src"))


def test_hidden_root_names_left_out(ws: Workspace, store: Store, base: Digest) -> None:
    ws.graft(b".git", store.put_bytes(b"gitdir: /elsewhere\n"))
    ws.hidden_root_names.add(b".git")
    assert b".git" not in names(ws, ROOT_INO)
    assert ws.snapshot() == base
    assert ws.resolve(b".git").record.size == 19


def test_remove_workspace(store: Store, base: Digest) -> None:
    created = Workspace.create(store, "gone", base)
    with pytest.raises(WorkspaceBusy):
        Workspace.remove(store, "gone")
    created.close()
    Workspace.remove(store, "gone")
    assert not Workspace.exists(store, "gone")


def test_unknown_name_not_found(ws: Workspace) -> None:
    with pytest.raises(NotFound):
        ws.resolve(b"nope")


class CountingDict(dict[int, object]):
    """A dict that counts full scans through `values()`."""

    scans = 0

    def values(self):  # type: ignore[override]
        self.scans += 1
        return super().values()


def test_forget_storm_scans_once(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    import expfs.workspace.workspace as workspace_module

    monkeypatch.setattr(workspace_module, "MAX_IDLE_NODES", 3)
    monkeypatch.setattr(ws, "_trim_at", 3)
    paths = [b"src", b"src/main.py", b"src/deep", b"src/deep/er", b"data.bin"]
    paths += [b"src/deep/er/leaf.txt", b"run.sh", b"empty", b"link"]
    inos = [lookup(ws, p) for p in paths]
    counting = CountingDict(ws.nodes)
    ws.nodes = counting  # type: ignore[assignment]
    for ino in inos:
        ws.forget(ino, 1)
    assert counting.scans == 1
    assert set(ws.nodes) == {ROOT_INO}


def test_upper_file_hashed_once_until_written(
    ws: Workspace, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A changed file left alone since its last hash is not read again."""
    import expfs.workspace.workspace as workspace_module

    reads: list[str] = []
    stores: list[str] = []
    real_hash, real_put = workspace_module.hash_file, store.put_file

    def counting_hash(path: str | bytes) -> Digest:
        reads.append(os.fsdecode(path))
        return real_hash(path)

    def counting_put(path: str | bytes, **kwargs: bool) -> Digest:
        stores.append(os.fsdecode(path))
        return real_put(path, **kwargs)

    monkeypatch.setattr(workspace_module, "hash_file", counting_hash)
    monkeypatch.setattr(store, "put_file", counting_put)
    ino = lookup(ws, b"data.bin")
    write_at(ws, ino, 0, b"changed")
    first = ws.digest_of(b"data.bin")
    assert ws.digest_of(b"data.bin") == first
    assert len(reads) == 1
    snap = ws.snapshot()
    assert ws.snapshot() == snap
    assert len(stores) == 1, "the second snapshot stored the unchanged file again"
    write_at(ws, ino, 0, b"CHANGED")
    second = ws.digest_of(b"data.bin")
    assert second != first
    assert second == hash_file(ws.upper.path(ino))
    assert len(reads) == 2
    assert ws.snapshot() != snap
    assert len(stores) == 2


def test_upper_file_restored_after_blob_loss(ws: Workspace, store: Store) -> None:
    ino = lookup(ws, b"data.bin")
    write_at(ws, ino, 0, b"changed")
    ws.snapshot()
    digest = ws.digest_of(b"data.bin")
    blob = store.blob_path(digest)
    os.chmod(os.path.dirname(blob), 0o755)
    os.unlink(blob)
    ws.snapshot()
    assert hash_file(blob) == digest
