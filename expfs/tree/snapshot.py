"""Snapshot a folder on disk into a root digest.

Files are read only when the stat cache cannot vouch for them. A file that
vanishes or changes while it is being stored makes the snapshot fail with a
message naming it, instead of recording a state that never existed.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from expfs.errors import SnapshotError, UsageError
from expfs.store.objects import Store
from expfs.store.statcache import RACY_WINDOW_NS, StatCache, stat_fields
from expfs.store.trees import Digest, Entry, Kind, check_name
from expfs.tree.build import build_trees

log = logging.getLogger(__name__)


ProgressFn = Callable[[int, int, int], None]
"""Called as progress(files_done, files_total, bytes_read)."""


@dataclass
class Listing:
    """Files (relative path -> lstat) and directories found under a root."""

    files: dict[bytes, os.stat_result] = field(default_factory=dict)
    symlinks: dict[bytes, os.stat_result] = field(default_factory=dict)
    dir_modes: dict[bytes, int] = field(default_factory=dict)
    skipped: list[bytes] = field(default_factory=list)


def walk_folder(root: bytes, exclude: Iterable[bytes] = ()) -> Listing:
    """List everything under `root` without following symlinks.

    Paths in `exclude` (absolute, real) are left out with everything below
    them. FIFOs, sockets and devices are listed in `skipped`.
    """
    excluded = {os.path.realpath(p) for p in exclude}
    listing = Listing()
    pending: list[bytes] = [b""]
    while pending:
        rel = pending.pop()
        folder = os.path.join(root, rel) if rel else root
        try:
            scanner = os.scandir(folder)
        except FileNotFoundError:
            raise _vanished(folder) from None
        with scanner:
            for item in scanner:
                path = os.path.join(rel, item.name) if rel else item.name
                check_name(item.name)
                try:
                    st = item.stat(follow_symlinks=False)
                except FileNotFoundError:
                    raise _vanished(item.path) from None
                if stat.S_ISDIR(st.st_mode):
                    if os.path.realpath(item.path) in excluded:
                        continue
                    listing.dir_modes[path] = stat.S_IMODE(st.st_mode)
                    pending.append(path)
                elif stat.S_ISREG(st.st_mode):
                    listing.files[path] = st
                elif stat.S_ISLNK(st.st_mode):
                    listing.symlinks[path] = st
                else:
                    listing.skipped.append(path)
    return listing


def _vanished(path: bytes | str) -> SnapshotError:
    return SnapshotError(
        f"{os.fsdecode(path)} vanished while it was being snapshotted: stop "
        "whatever is changing the folder and run the snapshot again"
    )


def _changed(path: bytes) -> SnapshotError:
    return SnapshotError(
        f"{os.fsdecode(path)} changed while it was being snapshotted: stop "
        "whatever is writing to it and run the snapshot again"
    )


# Files stored per batch: their fsyncs overlap and they are indexed in one
# transaction, while a crash leaves at most this many temporary files.
BATCH_FILES = 512
BATCH_BYTES = 256 << 20


def store_files(
    store: Store,
    root: bytes,
    files: dict[bytes, os.stat_result],
    progress: ProgressFn | None = None,
) -> dict[bytes, Entry]:
    """Store regular files (relative path -> lstat) and return their entries."""
    cache = StatCache(store.env)
    absolute = {rel: os.path.join(root, rel) for rel in files}
    known = cache.lookup_many((absolute[rel], st) for rel, st in files.items())
    digests: dict[bytes, Digest] = {}
    pending: list[bytes] = []
    for rel in files:
        digest = known.get(absolute[rel])
        if digest is not None and store.has_blob(digest):
            digests[rel] = digest
        else:
            pending.append(rel)

    fresh: list[tuple[bytes, os.stat_result, Digest]] = []
    started_ns = time.time_ns()
    bytes_read = 0
    for batch in _batches(pending, files):
        stored = _store_batch(store, [absolute[rel] for rel in batch], files, batch)
        for rel, digest in zip(batch, stored, strict=True):
            st = files[rel]
            digests[rel] = digest
            bytes_read += st.st_size
            if started_ns - st.st_ctime_ns > RACY_WINDOW_NS:
                fresh.append((absolute[rel], st, digest))
        if progress is not None:
            progress(len(digests), len(files), bytes_read)
    cache.record_many(fresh)

    entries: dict[bytes, Entry] = {}
    for rel, st in files.items():
        mode = stat.S_IMODE(st.st_mode)
        name = os.path.basename(rel)
        entries[rel] = Entry(name, Kind.FILE, mode, digests[rel], st.st_size)
    return entries


def _batches(
    pending: list[bytes], files: dict[bytes, os.stat_result]
) -> Iterator[list[bytes]]:
    batch: list[bytes] = []
    size = 0
    for rel in pending:
        batch.append(rel)
        size += files[rel].st_size
        if len(batch) >= BATCH_FILES or size >= BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _store_batch(
    store: Store,
    paths: list[bytes],
    files: dict[bytes, os.stat_result],
    batch: list[bytes],
) -> list[Digest]:
    """Store a batch of files, failing if any vanished or changed meanwhile."""
    try:
        digests = store.put_files(paths)
    except FileNotFoundError as exc:
        raise _vanished(exc.filename or paths[0]) from None
    for rel, path in zip(batch, paths, strict=True):
        try:
            after = os.lstat(path)
        except FileNotFoundError:
            raise _vanished(path) from None
        if stat_fields(after) != stat_fields(files[rel]):
            raise _changed(path)
    return digests


def _store_one(store: Store, path: bytes, before: os.stat_result) -> Digest:
    try:
        digest = store.put_file(path)
        after = os.lstat(path)
    except FileNotFoundError:
        raise _vanished(path) from None
    if stat_fields(after) != stat_fields(before):
        raise _changed(path)
    return digest


def store_symlinks(
    store: Store, root: bytes, links: dict[bytes, os.stat_result]
) -> dict[bytes, Entry]:
    """Store each symlink's target bytes as a blob; links are never followed."""
    entries: dict[bytes, Entry] = {}
    for rel in links:
        try:
            target = os.readlink(os.path.join(root, rel))
        except FileNotFoundError:
            raise _vanished(os.path.join(root, rel)) from None
        digest = store.put_bytes(target)
        entries[rel] = Entry(
            os.path.basename(rel), Kind.SYMLINK, 0o777, digest, len(target)
        )
    return entries


def snapshot_path(
    store: Store,
    path: str | bytes,
    *,
    exclude: Iterable[bytes] = (),
    progress: ProgressFn | None = None,
) -> Digest:
    """Snapshot a folder (into a tree) or a single file (into a blob)."""
    root = os.fsencode(os.path.abspath(path))
    try:
        st = os.stat(root)
    except FileNotFoundError:
        raise UsageError(
            f"{os.fsdecode(root)} does not exist: give a folder or a file"
        ) from None
    if stat.S_ISREG(st.st_mode):
        return _store_one(store, root, st)
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{os.fsdecode(root)} is neither a folder nor a regular file")
    always_excluded = [os.fsencode(store.root)]
    listing = walk_folder(root, [*always_excluded, *exclude])
    for rel in listing.skipped:
        log.warning("skipped %s: not a file, folder or symlink", os.fsdecode(rel))
    entries = store_files(store, root, listing.files, progress)
    entries.update(store_symlinks(store, root, listing.symlinks))
    return build_trees(store, entries, listing.dir_modes, listing.dir_modes)
