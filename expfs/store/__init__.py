"""The content store: blobs on disk, trees and indexes in LMDB."""

from expfs.store.objects import Store, hash_file
from expfs.store.repo import find_store_root, init_store, open_store, store_for
from expfs.store.trees import EMPTY_TREE_DIGEST, Digest, Entry, Kind

__all__ = [
    "EMPTY_TREE_DIGEST",
    "Digest",
    "Entry",
    "Kind",
    "Store",
    "find_store_root",
    "hash_file",
    "init_store",
    "open_store",
    "store_for",
]
