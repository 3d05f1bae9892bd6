"""A file that changes while the store copies it is rejected, and nothing is stored."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from expfs.errors import SnapshotError
from expfs.store import objects
from expfs.store.objects import KERNEL_COPY_MIN_BYTES, Store
from expfs.tree.snapshot import snapshot_path


def stored_files(store: Store) -> list[str]:
    """Return the names of blob files and temporary files in the store."""
    blobs = [name for name, _ in store.iter_blob_files()]
    return blobs + os.listdir(store.tmp_dir)


def change_after(real: Any, change: Callable[[], None]) -> Any:
    """Wrap a copy function so that `change` alters the source after it returns."""

    def copy(*args: Any, **kwargs: Any) -> Any:
        result = real(*args, **kwargs)
        change()
        return result

    return copy


def shrink(source: Path) -> Callable[[], None]:
    """Return a change that truncates `source` to half its size."""
    return lambda: os.truncate(source, source.stat().st_size // 2)


def grow(source: Path) -> Callable[[], None]:
    """Return a change that appends bytes to `source`."""

    def append() -> None:
        with open(source, "ab") as f:
            f.write(b"appended while copying")

    return append


def test_large_file_shrinking_rejected(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "model.bin"
    source.write_bytes(os.urandom(KERNEL_COPY_MIN_BYTES * 4))
    before = stored_files(store)
    monkeypatch.setattr(
        objects, "_kernel_copy", change_after(objects._kernel_copy, shrink(source))
    )
    with pytest.raises(SnapshotError) as raised:
        store.put_file(source)
    assert str(source) in str(raised.value)
    assert "changed while it was being stored" in str(raised.value)
    assert "its size went from 4,194,304 to 2,097,152 bytes" in str(raised.value)
    assert stored_files(store) == before


def test_small_file_growing_rejected(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "metrics.json"
    source.write_text('{"acc": 0.9}\n')
    before = stored_files(store)
    monkeypatch.setattr(
        objects,
        "copy_sparse_hashing",
        change_after(objects.copy_sparse_hashing, grow(source)),
    )
    with pytest.raises(SnapshotError) as raised:
        store.put_files([str(source)])
    assert str(source) in str(raised.value)
    assert stored_files(store) == before


def test_folder_snapshot_file_shrinking(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "small.txt").write_text("kept\n")
    large = folder / "weights.bin"
    large.write_bytes(os.urandom(KERNEL_COPY_MIN_BYTES * 2))
    before = stored_files(store)
    monkeypatch.setattr(
        objects, "_kernel_copy", change_after(objects._kernel_copy, shrink(large))
    )
    with pytest.raises(SnapshotError) as raised:
        snapshot_path(store, folder)
    assert "weights.bin" in str(raised.value)
    assert [name for name in stored_files(store) if name not in before] == []


def test_unchanged_large_file_stored(store: Store, tmp_path: Path) -> None:
    source = tmp_path / "model.bin"
    data = os.urandom(KERNEL_COPY_MIN_BYTES * 2)
    source.write_bytes(data)
    digest = store.put_file(source)
    assert store.read_blob(digest) == data
