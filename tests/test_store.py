"""The store: blobs and trees round trip, stay immutable and survive sharing."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import blake3
import pytest

from expfs.errors import CorruptObject, MissingObject, UnknownDigest
from expfs.store import EMPTY_TREE_DIGEST, Entry, Kind, Store, hash_file
from expfs.store.objects import MULTITHREAD_MIN_BYTES


def blake3_hex(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


def test_put_bytes_round_trip(store: Store) -> None:
    digest = store.put_bytes(b"hello\n")
    assert digest == blake3_hex(b"hello\n")
    assert store.read_blob(digest) == b"hello\n"


def test_blob_file_sharded_and_read_only(store: Store) -> None:
    digest = store.put_bytes(b"content")
    path = store.blob_path(digest)
    assert path == os.path.join(store.root, "objects", digest[:2], digest)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o444


def test_blob_recorded_in_index(store: Store) -> None:
    digest = store.put_bytes(b"12345")
    assert (digest, 5) in store.indexed_blobs()


def test_same_content_stored_once(store: Store) -> None:
    first = store.put_bytes(b"same")
    second = store.put_bytes(b"same")
    assert first == second
    assert [name for name, _ in store.iter_blob_files()] == [first]


def test_empty_blob(store: Store) -> None:
    digest = store.put_bytes(b"")
    assert store.read_blob(digest) == b""


def test_put_file_copy_keeps_source(store: Store, tmp_path: Path) -> None:
    source = tmp_path / "data.bin"
    source.write_bytes(b"x" * 100_000)
    digest = store.put_file(str(source))
    assert source.exists()
    assert digest == blake3_hex(b"x" * 100_000)
    assert store.read_blob(digest) == b"x" * 100_000


def test_put_file_move_renames_same_inode(store: Store, repo: Path) -> None:
    source = repo / "given-up.bin"
    source.write_bytes(b"moved content")
    inode = source.stat().st_ino
    digest = store.put_file(str(source), move=True)
    assert not source.exists()
    assert os.stat(store.blob_path(digest)).st_ino == inode
    assert store.read_blob(digest) == b"moved content"


def test_put_file_move_existing_blob_drops_source(store: Store, repo: Path) -> None:
    digest = store.put_bytes(b"already stored")
    source = repo / "dup.bin"
    source.write_bytes(b"already stored")
    assert store.put_file(str(source), move=True) == digest
    assert not source.exists()


def test_no_temporary_files_left(store: Store, tmp_path: Path) -> None:
    source = tmp_path / "f"
    source.write_bytes(b"abc")
    store.put_file(str(source))
    store.put_bytes(b"def")
    assert os.listdir(os.path.join(store.root, "tmp")) == []


def test_large_file_multithreaded_hash(tmp_path: Path) -> None:
    data = os.urandom(MULTITHREAD_MIN_BYTES + 12345)
    raw_path = os.fsencode(tmp_path) + b"/big\xff.bin"
    with open(raw_path, "wb") as f:
        f.write(data)
    assert hash_file(raw_path) == blake3_hex(data)
    assert hash_file(os.fsdecode(raw_path)) == blake3_hex(data)


def test_large_file_put_file(store: Store, tmp_path: Path) -> None:
    data = os.urandom(MULTITHREAD_MIN_BYTES * 2)
    source = tmp_path / "big.bin"
    source.write_bytes(data)
    digest = store.put_file(str(source))
    assert digest == blake3_hex(data)
    assert store.verify_blob(digest)


def corrupt(store: Store, digest: str, data: bytes = b"damaged") -> None:
    path = store.blob_path(digest)
    os.chmod(path, 0o644)
    with open(path, "wb") as f:
        f.write(data)


def test_read_blob_detects_corruption(store: Store) -> None:
    digest = store.put_bytes(b"original")
    corrupt(store, digest)
    with pytest.raises(CorruptObject) as exc:
        store.read_blob(digest)
    assert digest in str(exc.value)


@pytest.mark.parametrize("how", ["put_bytes", "put_file", "put_file_move", "put_files"])
def test_corrupt_blob_replaced_by_next_put(
    store: Store, repo: Path, tmp_path: Path, how: str
) -> None:
    data = b"the right bytes " * 64
    digest = store.put_bytes(data)
    corrupt(store, digest)
    source = (repo if how == "put_file_move" else tmp_path) / "again.bin"
    source.write_bytes(data)
    if how == "put_bytes":
        stored = store.put_bytes(data)
    elif how == "put_file":
        stored = store.put_file(str(source))
    elif how == "put_file_move":
        stored = store.put_file(str(source), move=True)
    else:
        (stored,) = store.put_files([str(source)])
    assert stored == digest
    assert store.read_blob(digest) == data
    assert store.verify_blob(digest)


def test_intact_blob_not_rewritten(store: Store, tmp_path: Path) -> None:
    digest = store.put_bytes(b"stays")
    inode = os.stat(store.blob_path(digest)).st_ino
    source = tmp_path / "same.bin"
    source.write_bytes(b"stays")
    store.put_file(str(source))
    assert os.stat(store.blob_path(digest)).st_ino == inode


def test_copy_blob_corrupt_removes_partial(store: Store, tmp_path: Path) -> None:
    digest = store.put_bytes(b"original")
    corrupt(store, digest)
    dest = tmp_path / "out"
    with pytest.raises(CorruptObject):
        store.copy_blob(digest, str(dest), 0o644)
    assert not dest.exists()


def test_missing_blob(store: Store) -> None:
    with pytest.raises(MissingObject):
        store.read_blob(blake3_hex(b"never stored"))


def test_tree_round_trip(store: Store) -> None:
    blob = store.put_bytes(b"hi")
    entries = [Entry(b"f", Kind.FILE, 0o644, blob, 2)]
    digest = store.put_tree(entries)
    assert store.get_tree(digest) == entries
    assert store.has_tree(digest)


def test_empty_tree_always_present(store: Store) -> None:
    assert store.get_tree(EMPTY_TREE_DIGEST) == []


def test_missing_tree(store: Store) -> None:
    with pytest.raises(MissingObject):
        store.get_tree(blake3_hex(b"no such tree"))


def test_resolve_prefix(store: Store) -> None:
    digest = store.put_bytes(b"prefix me")
    assert store.resolve(digest[:6]) == digest
    assert store.resolve(digest.upper()) == digest


@pytest.mark.parametrize("name", ["abc", "xyz123", "0" * 65])
def test_resolve_rejects_non_digest(store: Store, name: str) -> None:
    with pytest.raises(UnknownDigest, match="not a digest"):
        store.resolve(name)


def test_resolve_unknown_digest(store: Store) -> None:
    with pytest.raises(UnknownDigest, match="no object"):
        store.resolve(blake3_hex(b"absent"))


def test_resolve_ambiguous_prefix(store: Store) -> None:
    digests = [store.put_bytes(str(i).encode()) for i in range(400)]
    by_prefix: dict[str, list[str]] = {}
    for digest in digests:
        by_prefix.setdefault(digest[:4], []).append(digest)
    shared = next(p for p, ds in by_prefix.items() if len(ds) > 1)
    with pytest.raises(UnknownDigest, match="ambiguous"):
        store.resolve(shared)


def test_map_grows_when_full(monkeypatch: pytest.MonkeyPatch, repo: Path) -> None:
    from expfs.store import init_store, lmdbenv

    small = 64 * 1024
    monkeypatch.setattr(lmdbenv, "INITIAL_MAP_SIZE_BYTES", small)
    store, _ = init_store(str(repo))
    try:
        blob = store.put_bytes(b"x")
        digests = [
            store.put_tree(
                [Entry(b"n%05d" % i + b"p" * 200, Kind.FILE, 0o644, blob, 1)]
            )
            for i in range(2000)
        ]
        assert store.env.env.info()["map_size"] > small
        assert all(store.has_tree(d) for d in digests)
    finally:
        lmdbenv.close_environment(store.env.path)


WRITER = """
import sys
from expfs.store import store_for, Entry, Kind
store = store_for(sys.argv[1])
tag, count = sys.argv[2], int(sys.argv[3])
for i in range(count):
    shared = store.put_bytes(b"shared %d" % i)
    own = store.put_bytes(("%s %d" % (tag, i)).encode() * 50)
    store.put_tree([
        Entry(b"shared", Kind.FILE, 0o644, shared, len(b"shared %d" % i)),
        Entry(tag.encode(), Kind.FILE, 0o644, own, 0),
    ])
print("done")
"""


def test_other_process_grows_map(monkeypatch: pytest.MonkeyPatch, repo: Path) -> None:
    from expfs.store import init_store, lmdbenv

    monkeypatch.setattr(lmdbenv, "INITIAL_MAP_SIZE_BYTES", 64 * 1024)
    store, _ = init_store(str(repo))
    try:
        store.put_bytes(b"before")
        subprocess.run(
            [sys.executable, "-c", WRITER, str(repo), "other", "600"], check=True
        )
        digest = store.put_bytes(b"after the other process grew the map")
        assert (digest, 36) in store.indexed_blobs()
        assert len(store.indexed_blobs()) == 1 + 1 + 1200
    finally:
        lmdbenv.close_environment(store.env.path)


def test_concurrent_writers_two_processes(store: Store, repo: Path) -> None:
    from expfs.store.fsck import fsck

    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(repo), tag, "300"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for tag in ("left", "right")
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
        assert out.strip() == b"done"
    report = fsck(store)
    assert report.problems == []
    assert report.blobs_checked == 300 + 2 * 300
    assert report.trees_checked == 2 * 300
    assert report.reindexed == 0
