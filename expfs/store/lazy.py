"""Objects restored lazily from a remote: trees whose blobs may be remote.

A mounted workspace restores a stage from a remote by fetching only its
trees (and symlink targets, which are tiny) and grafting them. Each file's
blob stays on the remote until the file is first opened. Such trees are
stored in the `trees` database like any other, and each gets a mark in
the `lazy` database, so three states can be distinguished:

- complete: a tree without a mark. Every object below it is in the store,
  and every tree below it is complete too.
- lazy: a tree with a mark. Its encoding is in the store, but blobs below
  it may be on the remote that the mark names.
- absent: no encoding in the store.

A single-file output restored lazily gets a mark too, which carries its
size, since there is no tree entry to carry it. A tree that references a
lazy tree or an absent blob is itself stored with a mark (a workspace
snapshot over a lazy graft does this), so "unmarked means complete" holds.

`missing_below` lists what a lazy tree or blob lacks. The remote layer
(`expfs.remote.lazy.ensure_local`) fetches it and clears the marks before
anything is materialized, and `expfs pull` does the same. A mark never becomes wrong
by itself: a blob fetched later only makes the mark conservative.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from expfs.errors import MissingObject
from expfs.store import layout
from expfs.store.objects import Store
from expfs.store.trees import Digest, Kind, decode_tree, raw

# kind:u8 size:u64 marked_at:f64, then the remote's name as UTF-8.
_MARK = struct.Struct(">BQd")


@dataclass(frozen=True)
class LazyMark:
    """The remote that holds the blobs missing below a tree, or one missing blob."""

    kind: Kind
    remote: str  # a remote's name; "" means the default remote
    size: int  # bytes of a blob; 0 for a tree
    marked_at: float  # seconds since the epoch

    def encode(self) -> bytes:
        head = _MARK.pack(int(self.kind), self.size, self.marked_at)
        return head + self.remote.encode()

    @classmethod
    def decode(cls, data: bytes) -> LazyMark:
        kind, size, marked_at = _MARK.unpack_from(data)
        return cls(Kind(kind), data[_MARK.size :].decode(), size, marked_at)


def lazy_mark(store: Store, digest: str) -> LazyMark | None:
    data = store.env.get(layout.DB_LAZY, raw(digest))
    return None if data is None else LazyMark.decode(data)


def is_complete(store: Store, kind: Kind, digest: str) -> bool:
    """Return True when the object and everything below it is in the store."""
    if kind is Kind.DIRECTORY:
        return store.has_tree(digest) and lazy_mark(store, digest) is None
    return store.has_blob(digest)


def is_available(store: Store, kind: Kind, digest: str) -> bool:
    """Return True when the object is complete or restorable lazily from a remote."""
    if kind is Kind.DIRECTORY:
        return store.has_tree(digest)
    return store.has_blob(digest) or lazy_mark(store, digest) is not None


def put_lazy_trees(
    store: Store, trees: Iterable[tuple[Digest, bytes]], remote: str
) -> None:
    """Store trees fetched without their blobs, each marked lazy, in one transaction.

    A tree already stored without a mark is complete and stays unmarked.
    """
    items = [(raw(d), data) for d, data in trees]
    mark = LazyMark(Kind.DIRECTORY, remote, 0, time.time()).encode()
    trees_db = store.env.db(layout.DB_TREES)
    lazy_db = store.env.db(layout.DB_LAZY)

    def write(txn: Any) -> None:
        for key, data in items:
            if txn.put(key, data, db=trees_db, overwrite=False):
                txn.put(key, mark, db=lazy_db)

    store.env.write(write)


def put_marked_trees(
    store: Store, trees: Iterable[tuple[Digest, bytes]], marks: dict[Digest, str]
) -> None:
    """Store trees in one transaction, those in `marks` (digest -> remote) lazy.

    The others are complete, so a mark left on one of them is removed.
    """
    items = [(raw(d), data, marks.get(d)) for d, data in trees]
    now = time.time()
    trees_db = store.env.db(layout.DB_TREES)
    lazy_db = store.env.db(layout.DB_LAZY)

    def write(txn: Any) -> None:
        for key, data, remote in items:
            added = txn.put(key, data, db=trees_db, overwrite=False)
            if remote is None:
                txn.delete(key, db=lazy_db)
            elif added:
                mark = LazyMark(Kind.DIRECTORY, remote, 0, now)
                txn.put(key, mark.encode(), db=lazy_db)

    store.env.write(write)


def mark_lazy_blob(store: Store, digest: str, size: int, remote: str) -> None:
    """Record that blob `digest` of `size` bytes is on `remote`, not here yet."""
    if store.has_blob(digest):
        return
    mark = LazyMark(Kind.FILE, remote, size, time.time())
    store.env.put(layout.DB_LAZY, raw(digest), mark.encode())


def clear_marks(store: Store, digests: Iterable[str]) -> None:
    keys = [raw(d) for d in digests]
    if not keys:
        return
    handle = store.env.db(layout.DB_LAZY)

    def write(txn: Any) -> None:
        for key in keys:
            txn.delete(key, db=handle)

    store.env.write(write)


def iter_marks(store: Store) -> Iterator[tuple[Digest, LazyMark]]:
    handle = store.env.db(layout.DB_LAZY)

    def collect(txn: Any) -> list[tuple[bytes, bytes]]:
        return [(bytes(k), bytes(v)) for k, v in txn.cursor(db=handle)]

    for key, value in store.env.read(collect):
        yield Digest(key.hex()), LazyMark.decode(value)


@dataclass
class Missing:
    """The blobs a lazy object lacks, and the lazy trees walked to find them."""

    blobs: dict[Digest, str]  # digest -> remote name ("" for the default)
    trees: list[Digest]

    def __bool__(self) -> bool:
        return bool(self.blobs or self.trees)


def missing_below(store: Store, kind: Kind, digest: str) -> Missing:
    """Return the blobs absent below `digest` and the lazy trees on the way.

    Only lazy trees are read: a tree without a mark is complete, so the
    walk never visits a complete part.
    """
    missing = Missing({}, [])
    if kind is not Kind.DIRECTORY:
        if not store.has_blob(digest):
            mark = lazy_mark(store, digest)
            missing.blobs[Digest(digest)] = "" if mark is None else mark.remote
        return missing
    pending = [Digest(digest)]
    seen: set[str] = set()
    while pending:
        tree = pending.pop()
        if tree in seen:
            continue
        seen.add(tree)
        mark = lazy_mark(store, tree)
        if mark is None:
            continue
        missing.trees.append(tree)
        data = store.tree_bytes(tree)
        if data is None:
            raise MissingObject(tree, "a lazy restore's mark")
        for entry in decode_tree(data):
            if entry.kind is Kind.DIRECTORY:
                pending.append(entry.digest)
            elif not store.has_blob(entry.digest):
                missing.blobs.setdefault(entry.digest, mark.remote)
    return missing
