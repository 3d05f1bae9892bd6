"""Decoded base trees, kept in memory while directories are in use."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from expfs.store.objects import Store
from expfs.store.trees import Digest, Entry, Kind

TREE_CACHE_SIZE = 1024


@dataclass(frozen=True, slots=True)
class BaseListing:
    """One decoded tree: entries by name and how many are directories."""

    entries: dict[bytes, Entry]
    subdirs: int


class TreeCache:
    """Least-recently-used cache of decoded trees, keyed by digest."""

    def __init__(self, store: Store, capacity: int = TREE_CACHE_SIZE) -> None:
        self.store = store
        self.capacity = capacity
        self._trees: OrderedDict[Digest, BaseListing] = OrderedDict()

    def get(self, digest: Digest) -> BaseListing:
        listing = self._trees.get(digest)
        if listing is not None:
            self._trees.move_to_end(digest)
            return listing
        entries = {e.name: e for e in self.store.get_tree(digest)}
        subdirs = sum(1 for e in entries.values() if e.kind is Kind.DIRECTORY)
        listing = BaseListing(entries, subdirs)
        self._trees[digest] = listing
        if len(self._trees) > self.capacity:
            self._trees.popitem(last=False)
        return listing
