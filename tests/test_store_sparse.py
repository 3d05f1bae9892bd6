"""Sparse files stay sparse through the store, and large restores are verified."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from expfs.errors import CorruptObject
from expfs.store.objects import KERNEL_COPY_MIN_BYTES, Store, hash_file

GIB = 1 << 30


def make_sparse(path: Path, size: int, data_at: int) -> None:
    with open(path, "wb") as f:
        f.truncate(size)
        f.seek(data_at)
        f.write(b"payload" * 1000)


def allocated_bytes(path: Path | str) -> int:
    return os.stat(path).st_blocks * 512


def test_sparse_file_stored_sparse(store: Store, tmp_path: Path) -> None:
    source = tmp_path / "sparse.bin"
    make_sparse(source, GIB, GIB // 2)
    digest = store.put_file(source)
    assert digest == hash_file(source)
    assert os.path.getsize(store.blob_path(digest)) == GIB
    assert allocated_bytes(store.blob_path(digest)) <= 2 << 20


def test_sparse_blob_restored_sparse(store: Store, tmp_path: Path) -> None:
    source = tmp_path / "sparse.bin"
    make_sparse(source, GIB, 3 * GIB // 4)
    digest = store.put_file(source)
    dest = tmp_path / "restored.bin"
    store.copy_blob(digest, dest, 0o640)
    assert hash_file(dest) == digest
    assert allocated_bytes(dest) <= 2 << 20
    assert dest.stat().st_mode & 0o777 == 0o640


def test_trailing_hole_keeps_size(store: Store, tmp_path: Path) -> None:
    source = tmp_path / "tail.bin"
    with open(source, "wb") as f:
        f.write(b"head")
        f.truncate(5 << 20)
    digest = store.put_file(source)
    dest = tmp_path / "restored.bin"
    store.copy_blob(digest, dest, 0o644)
    assert os.path.getsize(dest) == 5 << 20
    assert hash_file(dest) == digest


@pytest.mark.parametrize("size", [4096, KERNEL_COPY_MIN_BYTES * 3])
def test_corrupt_blob_never_copied(store: Store, tmp_path: Path, size: int) -> None:
    source = tmp_path / "data.bin"
    source.write_bytes(os.urandom(size))
    digest = store.put_file(source)
    blob = store.blob_path(digest)
    os.chmod(blob, 0o644)
    with open(blob, "r+b") as f:
        f.seek(size // 2)
        f.write(b"X")
    dest = tmp_path / "restored.bin"
    with pytest.raises(CorruptObject) as caught:
        store.copy_blob(digest, dest, 0o644)
    assert digest in caught.value.message
    assert not dest.exists()


@pytest.mark.parametrize(
    "layout",
    [
        "hole-data-hole",
        "data-hole",
        "hole-data-at-end",
        "all-hole",
        "many-extents",
    ],
)
def test_sparse_hash_matches_dense_hash(tmp_path: Path, layout: str) -> None:
    """Hashing holes as zeros from memory gives the digest of every byte."""
    import blake3

    size = 40 << 20
    path = tmp_path / "sparse.bin"
    with open(path, "wb") as f:
        f.truncate(size)
        if layout == "hole-data-hole":
            f.seek(17 << 20)
            f.write(os.urandom(3 << 20))
        elif layout == "data-hole":
            f.write(os.urandom(5 << 20))
        elif layout == "hole-data-at-end":
            f.seek(size - 12345)
            f.write(os.urandom(12345))
        elif layout == "many-extents":
            for start in range(0, size, 9 << 20):
                f.seek(start + 4096 * 3)
                f.write(os.urandom(70000))
    assert allocated_bytes(path) < size, "this filesystem did not keep the holes"
    dense = blake3.blake3(path.read_bytes()).hexdigest()
    assert hash_file(path) == dense


def test_large_file_copied_in_by_the_kernel_verified(
    store: Store, tmp_path: Path
) -> None:
    source = tmp_path / "sparse.bin"
    make_sparse(source, GIB, GIB // 3)
    digest = store.put_file(source)
    assert digest == hash_file(source)
    assert hash_file(store.blob_path(digest)) == digest
    assert allocated_bytes(store.blob_path(digest)) <= 2 << 20
