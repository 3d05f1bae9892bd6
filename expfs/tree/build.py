"""Turn a flat listing of files into nested trees, stored in one transaction.

Both snapshot sources (a folder on disk and a Git commit) produce a mapping
from relative path to `Entry`; `build_trees` groups it by directory, encodes
every directory bottom-up and stores all new trees at once.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

from expfs.store.objects import Store
from expfs.store.trees import Digest, Entry, Kind, encode_tree, tree_digest


def _parent(path: bytes) -> bytes:
    head, _, _ = path.rpartition(b"/")
    return head


def build_trees(
    store: Store,
    files: Mapping[bytes, Entry],
    directories: Iterable[bytes] = (),
    dir_modes: Mapping[bytes, int] | None = None,
) -> Digest:
    """Store the trees for `files` (relative path -> entry) and return the root.

    An entry's own `name` is ignored: the last component of its path names
    it. `directories` lists extra (possibly empty) directories to keep, and
    `dir_modes` their permission bits (0o755 when absent).
    """
    modes = dir_modes or {}
    children: dict[bytes, list[tuple[bytes, Entry]]] = {b"": []}

    def ensure_dir(path: bytes) -> None:
        while path not in children:
            children[path] = []
            parent = _parent(path)
            children.setdefault(parent, [])
            path = parent

    for path in directories:
        if path:
            ensure_dir(path)
    for path, entry in files.items():
        parent = _parent(path)
        ensure_dir(parent)
        children[parent].append((path, entry))

    root: Digest | None = None
    new_trees: list[tuple[Digest, bytes]] = []
    # Deepest directories first, so every child tree exists before its parent.
    depth_first = sorted(children, key=lambda p: p.count(b"/") + bool(p), reverse=True)
    for dirpath in depth_first:
        entries = [_renamed(p, e) for p, e in children[dirpath]]
        encoded = encode_tree(entries)
        digest = tree_digest(encoded)
        new_trees.append((digest, encoded))
        if not dirpath:
            root = digest
            continue
        size = sum(e.size for e in entries)
        mode = modes.get(dirpath, 0o755)
        subtree = Entry(b"-", Kind.DIRECTORY, mode, digest, size)
        children[_parent(dirpath)].append((dirpath, subtree))
    store.put_trees(new_trees)
    assert root is not None
    return root


def _renamed(path: bytes, entry: Entry) -> Entry:
    name = os.path.basename(path)
    if entry.name == name:
        return entry
    return Entry(name, entry.kind, entry.mode, entry.digest, entry.size)
