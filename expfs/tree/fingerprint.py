"""Digest a file or folder without storing it: the fingerprint of a dependency.

The digest is the one a snapshot would produce (a blob digest for a file, a
tree digest for a folder), so a dependency's fingerprint and a stored
output's digest compare directly. Nothing is written to the store except the
stat cache, which lets the next fingerprint skip files whose size, mtime,
ctime and inode did not change. A file that a checkout linked to a blob
(see `expfs.store.links`) is named by that blob's digest and the mode the
run recorded, as the output it restores.
"""

from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass

from expfs.store.links import LinkRecords
from expfs.store.objects import Store, hash_file
from expfs.store.statcache import RACY_WINDOW_NS, StatCache
from expfs.store.trees import (
    Digest,
    Entry,
    Kind,
    digest_bytes,
    encode_tree,
    tree_digest,
)
from expfs.tree.snapshot import Listing, walk_folder


@dataclass(frozen=True)
class Fingerprint:
    kind: Kind
    digest: Digest
    mode: int
    size: int


def fingerprint_path(store: Store, path: str | bytes) -> Fingerprint | None:
    """Return the digest of `path` as a snapshot would name it, or None if absent."""
    target = os.fsencode(os.path.abspath(path))
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        return None
    if not stat.S_ISDIR(st.st_mode):
        linked = LinkRecords(store).lookup_many({target: st})
        if target in linked:
            digest, mode = linked[target]
            return Fingerprint(Kind.FILE, digest, mode, os.stat(target).st_size)
    if stat.S_ISLNK(st.st_mode):
        link = os.readlink(target)
        return Fingerprint(Kind.SYMLINK, digest_bytes(link), 0o777, len(link))
    if stat.S_ISREG(st.st_mode):
        digest = _hash_files(store, {target: st})[target]
        return Fingerprint(Kind.FILE, digest, stat.S_IMODE(st.st_mode), st.st_size)
    listing = walk_folder(target, [os.fsencode(store.root)])
    entries = _linked_entries(store, target, listing)
    absolute = {
        os.path.join(target, rel): s
        for rel, s in listing.files.items()
        if rel not in entries
    }
    digests = _hash_files(store, absolute)
    for rel, s in listing.files.items():
        if rel in entries:
            continue
        digest = digests[os.path.join(target, rel)]
        entries[rel] = Entry(
            os.path.basename(rel), Kind.FILE, stat.S_IMODE(s.st_mode), digest, s.st_size
        )
    for rel in listing.symlinks:
        if rel in entries:
            continue
        link = os.readlink(os.path.join(target, rel))
        entries[rel] = Entry(
            os.path.basename(rel), Kind.SYMLINK, 0o777, digest_bytes(link), len(link)
        )
    digest, size = _tree_digest(entries, listing.dir_modes)
    return Fingerprint(Kind.DIRECTORY, digest, stat.S_IMODE(st.st_mode), size)


def _linked_entries(store: Store, root: bytes, listing: Listing) -> dict[bytes, Entry]:
    """Return entries for the files under `root` that a checkout linked to blobs."""
    candidates = {
        os.path.join(root, rel): st
        for rel, st in (*listing.files.items(), *listing.symlinks.items())
        if stat.S_ISLNK(st.st_mode) or st.st_nlink > 1
    }
    if not candidates:
        return {}
    entries: dict[bytes, Entry] = {}
    for path, (digest, mode) in LinkRecords(store).lookup_many(candidates).items():
        rel = os.path.relpath(path, root)
        size = os.stat(path).st_size
        entries[rel] = Entry(os.path.basename(rel), Kind.FILE, mode, digest, size)
    return entries


def _hash_files(
    store: Store, files: dict[bytes, os.stat_result]
) -> dict[bytes, Digest]:
    cache = StatCache(store.env)
    known = cache.lookup_many(files.items())
    started_ns = time.time_ns()
    fresh = []
    for path, st in files.items():
        if path not in known:
            known[path] = hash_file(path)
            if started_ns - st.st_ctime_ns > RACY_WINDOW_NS:
                fresh.append((path, st, known[path]))
    cache.record_many(fresh)
    return known


def _tree_digest(
    files: dict[bytes, Entry], dir_modes: dict[bytes, int]
) -> tuple[Digest, int]:
    """Compute the root tree digest that `build_trees` would store, storing nothing."""
    children: dict[bytes, list[Entry]] = {b"": []}
    for rel in dir_modes:
        children.setdefault(rel, [])
    for rel, entry in files.items():
        children.setdefault(os.path.dirname(rel), []).append(entry)
    for rel in sorted(children, key=lambda p: p.count(b"/") + bool(p), reverse=True):
        entries = children[rel]
        digest = tree_digest(encode_tree(entries))
        size = sum(e.size for e in entries)
        if not rel:
            return digest, size
        sub = Entry(
            os.path.basename(rel),
            Kind.DIRECTORY,
            dir_modes.get(rel, 0o755),
            digest,
            size,
        )
        children.setdefault(os.path.dirname(rel), []).append(sub)
    raise AssertionError("the root folder is always listed")
