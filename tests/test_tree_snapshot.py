"""Snapshots of folders: kinds, modes, odd names, the stat cache, races."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

import blake3
import pytest

from expfs.errors import SnapshotError, UsageError
from expfs.store import Kind, Store
from expfs.store.objects import Store as StoreClass
from expfs.tree.snapshot import snapshot_path


def make_folder(root: Path) -> Path:
    data = root / "data"
    (data / "sub" / "deeper").mkdir(parents=True)
    (data / "empty").mkdir()
    (data / "a.txt").write_text("alpha\n")
    (data / "sub" / "b.txt").write_text("beta\n")
    script = data / "sub" / "run.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o755)
    (data / "sub" / "deeper" / "c.bin").write_bytes(bytes(range(256)))
    (data / "link").symlink_to("a.txt")
    return data


def test_snapshot_lists_kinds_and_modes(store: Store, repo: Path) -> None:
    data = make_folder(repo)
    root = snapshot_path(store, str(data))
    top = {e.name: e for e in store.get_tree(root)}
    assert sorted(top) == [b"a.txt", b"empty", b"link", b"sub"]
    assert top[b"a.txt"].kind is Kind.FILE
    assert top[b"a.txt"].digest == blake3.blake3(b"alpha\n").hexdigest()
    assert top[b"empty"].kind is Kind.DIRECTORY
    assert store.get_tree(top[b"empty"].digest) == []
    assert top[b"link"].kind is Kind.SYMLINK
    assert store.read_blob(top[b"link"].digest) == b"a.txt"
    sub = {e.name: e for e in store.get_tree(top[b"sub"].digest)}
    assert sub[b"run.sh"].mode == 0o755
    assert sub[b"b.txt"].mode == 0o644


def test_directory_size_sums_files(store: Store, repo: Path) -> None:
    data = make_folder(repo)
    top = {e.name: e for e in store.get_tree(snapshot_path(store, str(data)))}
    assert top[b"sub"].size == len("beta\n") + len("#!/bin/sh\necho hi\n") + 256


def test_same_content_same_digest(store: Store, repo: Path, tmp_path: Path) -> None:
    first = snapshot_path(store, str(make_folder(repo)))
    other = tmp_path / "elsewhere"
    other.mkdir()
    second = snapshot_path(store, str(make_folder(other)))
    assert first == second


def test_exec_bit_changes_digest(store: Store, repo: Path) -> None:
    data = make_folder(repo)
    before = snapshot_path(store, str(data))
    (data / "a.txt").chmod(0o755)
    assert snapshot_path(store, str(data)) != before


def test_symlink_out_of_folder_not_followed(store: Store, repo: Path) -> None:
    data = make_folder(repo)
    secret = repo / "outside"
    secret.mkdir()
    (secret / "private.txt").write_text("do not copy\n")
    (data / "escape").symlink_to(secret)
    top = {e.name: e for e in store.get_tree(snapshot_path(store, str(data)))}
    assert top[b"escape"].kind is Kind.SYMLINK
    assert store.read_blob(top[b"escape"].digest) == os.fsencode(secret)
    assert not store.has_blob(blake3.blake3(b"do not copy\n").hexdigest())


def test_non_utf8_names(store: Store, tmp_path: Path) -> None:
    root = os.fsencode(tmp_path) + b"/odd"
    os.mkdir(root)
    os.mkdir(root + b"/dir-\xe9")
    with open(root + b"/dir-\xe9/file-\xff.txt", "wb") as f:
        f.write(b"latin-1 name\n")
    os.symlink(b"dir-\xe9/file-\xff.txt", root + b"/link-\xfe")
    digest = snapshot_path(store, root)
    names = sorted(e.name for e in store.get_tree(digest))
    assert names == [b"dir-\xe9", b"link-\xfe"]
    folder = next(e for e in store.get_tree(digest) if e.kind is Kind.DIRECTORY)
    assert [e.name for e in store.get_tree(folder.digest)] == [b"file-\xff.txt"]


def test_store_folder_excluded(store: Store, repo: Path) -> None:
    (repo / "file.txt").write_text("x\n")
    names = [e.name for e in store.get_tree(snapshot_path(store, str(repo)))]
    assert b".expfs" not in names
    assert b"file.txt" in names


def test_single_file_snapshot_is_blob(store: Store, repo: Path) -> None:
    path = repo / "one.txt"
    path.write_text("one\n")
    assert snapshot_path(store, str(path)) == blake3.blake3(b"one\n").hexdigest()


def test_missing_path_is_usage_error(store: Store, repo: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        snapshot_path(store, str(repo / "nope"))


def test_socket_skipped_with_warning(
    store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "s"
    folder.mkdir()
    (folder / "f").write_text("f\n")
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(folder / "sock"))
        with caplog.at_level(logging.WARNING):
            digest = snapshot_path(store, str(folder))
    finally:
        sock.close()
    assert [e.name for e in store.get_tree(digest)] == [b"f"]
    assert "sock" in caplog.text


def count_reads(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Record every file that the store reads (copies into tmp/) from now on."""
    reads: list[bytes] = []
    original = StoreClass._copy_to_temp

    def spy(self: Store, path: str | bytes) -> tuple[str, str, int]:
        reads.append(os.fsencode(path))
        return original(self, path)

    monkeypatch.setattr(StoreClass, "_copy_to_temp", spy)
    return reads


def test_second_snapshot_reads_nothing(
    store: Store, repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = make_folder(repo)
    first = snapshot_path(store, str(data))
    # Files changed within the racy window are not cached; wait it out.
    monkeypatch.setattr("expfs.tree.snapshot.RACY_WINDOW_NS", 0)
    snapshot_path(store, str(data))
    reads = count_reads(monkeypatch)
    assert snapshot_path(store, str(data)) == first
    assert reads == []


def test_changed_file_read_again(
    store: Store, repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("expfs.tree.snapshot.RACY_WINDOW_NS", 0)
    data = make_folder(repo)
    first = snapshot_path(store, str(data))
    (data / "sub" / "b.txt").write_text("beta, edited\n")
    reads = count_reads(monkeypatch)
    assert snapshot_path(store, str(data)) != first
    assert reads == [os.fsencode(data / "sub" / "b.txt")]


def test_same_size_same_mtime_edit_detected(
    store: Store, repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("expfs.tree.snapshot.RACY_WINDOW_NS", 0)
    data = make_folder(repo)
    target = data / "a.txt"
    st = target.stat()
    first = snapshot_path(store, str(data))
    target.write_text("ALPHA\n")
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert snapshot_path(store, str(data)) != first


def test_racy_file_not_cached(
    store: Store, repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = make_folder(repo)
    snapshot_path(store, str(data))
    reads = count_reads(monkeypatch)
    snapshot_path(store, str(data))
    assert len(reads) == 4


def test_vanishing_file_fails_snapshot(
    store: Store, repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = make_folder(repo)
    original = StoreClass._copy_to_temp

    def vanish(self: Store, path: str | bytes) -> tuple[str, str, int]:
        if os.path.basename(path) == b"b.txt":
            os.unlink(path)
        return original(self, path)

    monkeypatch.setattr(StoreClass, "_copy_to_temp", vanish)
    trees_before = len(list(store.iter_trees()))
    with pytest.raises(SnapshotError, match="b.txt vanished"):
        snapshot_path(store, str(data))
    assert len(list(store.iter_trees())) == trees_before
    assert os.listdir(os.path.join(store.root, "tmp")) == []


def test_file_changed_during_read_fails(
    store: Store, repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = make_folder(repo)
    original = StoreClass._copy_to_temp

    def grow(self: Store, path: str | bytes) -> tuple[str, str, int]:
        staged = original(self, path)
        with open(path, "ab") as f:
            f.write(b"appended while reading\n")
        return staged

    monkeypatch.setattr(StoreClass, "_copy_to_temp", grow)
    with pytest.raises(SnapshotError, match="changed while"):
        snapshot_path(store, str(data))


def test_many_files_in_batches(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("expfs.tree.snapshot.BATCH_FILES", 7)
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(50):
        (folder / f"f{i:02}").write_text(f"file {i}\n" if i % 10 else "same\n")
    digest = snapshot_path(store, str(folder))
    entries = store.get_tree(digest)
    assert len(entries) == 50
    for entry in entries:
        i = int(entry.name[1:])
        expected = f"file {i}\n" if i % 10 else "same\n"
        assert store.read_blob(entry.digest) == expected.encode()
    assert (blake3.blake3(b"same\n").hexdigest(), 5) in store.indexed_blobs()
    assert os.listdir(os.path.join(store.root, "tmp")) == []
