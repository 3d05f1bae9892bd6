"""Diff two snapshots, skipping every subtree whose digest is equal on both sides.

The cost is proportional to the directories that differ, not to the size of
either snapshot.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass

from expfs.store.objects import Store
from expfs.store.trees import Entry, Kind


class Status(enum.Enum):
    ADDED = "A"
    REMOVED = "D"
    MODIFIED = "M"


@dataclass(frozen=True, slots=True)
class Change:
    status: Status
    path: bytes
    old: Entry | None
    new: Entry | None


def diff_trees(
    store: Store, old: str, new: str, prefix: bytes = b""
) -> Iterator[Change]:
    """Yield the files, links and empty folders added, removed or modified.

    A path whose kind changed (a file replaced by a folder) is reported as
    removed and then added. A folder added or removed is reported with every
    file below it.
    """
    if old == new:
        return
    a = {e.name: e for e in store.get_tree(old)}
    b = {e.name: e for e in store.get_tree(new)}
    for name in sorted(a.keys() | b.keys()):
        path = prefix + b"/" + name if prefix else name
        left, right = a.get(name), b.get(name)
        if left is not None and right is not None and left == right:
            continue
        if left is not None and right is not None and left.kind == right.kind:
            if left.kind is Kind.DIRECTORY:
                yield from diff_trees(store, left.digest, right.digest, path)
            else:
                yield Change(Status.MODIFIED, path, left, right)
            continue
        if left is not None:
            yield from _whole(store, Status.REMOVED, path, left)
        if right is not None:
            yield from _whole(store, Status.ADDED, path, right)


def _whole(store: Store, status: Status, path: bytes, entry: Entry) -> Iterator[Change]:
    if entry.kind is not Kind.DIRECTORY:
        old, new = (entry, None) if status is Status.REMOVED else (None, entry)
        yield Change(status, path, old, new)
        return
    children = store.get_tree(entry.digest)
    if not children:
        old, new = (entry, None) if status is Status.REMOVED else (None, entry)
        yield Change(status, path, old, new)
    for child in children:
        yield from _whole(store, status, path + b"/" + child.name, child)
