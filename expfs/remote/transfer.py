"""Objects between the local store and a remote: push, pull, verify, retry.

A remote holds the same immutable objects as a store, blobs and tree
encodings alike, at `objects/ab/<digest>`. Pushes walk from the roots down
and stop at every object the remote already has: trees are uploaded only
after everything below them, so a tree present on the remote means its
whole content is there, as in the local store. Pulls stream each download
into the local store's `tmp/`, hashing it on the way, and rename it into
place only when its BLAKE3 digest matches; sizes and ETags are never
trusted. Transfers run in a thread pool, and network failures are retried
a few times before they become a `RemoteError`.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from expfs.errors import ExpfsError
from expfs.remote.backend import Backend, RemoteError, RemoteFileExists
from expfs.remote.config import RemoteConfig
from expfs.store.lazy import clear_marks, lazy_mark, put_lazy_trees
from expfs.store.objects import CHUNK_BYTES, Store, new_hasher
from expfs.store.trees import Digest, Kind, TreeFormatError, decode_tree, tree_digest

log = logging.getLogger(__name__)

T = TypeVar("T")

OBJECTS_DIR = "objects"
ATTEMPTS = 3
RETRY_DELAY_S = 0.2
DEFAULT_JOBS = 8
# Above this many digests, existence is checked by listing shard folders
# (at most 256 requests) instead of one request per object.
LIST_THRESHOLD = 64


class CorruptRemoteObject(ExpfsError):
    """An object on a remote does not hash to its name."""

    def __init__(self, digest: str, remote: str) -> None:
        super().__init__(
            f"corrupt object {digest} on remote {remote}: its content does not "
            f"hash to its name after {ATTEMPTS} downloads; it was not stored. "
            "Push it again from a clone that has it, or remove it from the remote"
        )
        self.digest = digest


class RemoteObjectMissing(ExpfsError):
    """An object that a remote tree or run-cache entry references is absent."""

    def __init__(self, digest: str, remote: str) -> None:
        super().__init__(
            f"missing object {digest} on remote {remote}: push it again from a "
            "clone that has it"
        )
        self.digest = digest


def lazy_trees_among(
    store: Store, level: dict[str, Kind], walked: list[Digest]
) -> list[tuple[Digest, bytes]]:
    """Return the local encodings of the lazy trees in `level`, adding them to `walked`."""
    found: list[tuple[Digest, bytes]] = []
    for digest, kind in sorted(level.items()):
        if kind != Kind.DIRECTORY or lazy_mark(store, digest) is None:
            continue
        data = store.tree_bytes(digest)
        if data is not None:
            found.append((Digest(digest), data))
            walked.append(Digest(digest))
    return found


def object_rel(digest: str) -> str:
    return f"{OBJECTS_DIR}/{digest[:2]}/{digest}"


@dataclass
class Stats:
    """Counts of one push or pull, for its summary line."""

    objects: int = 0
    size_bytes: int = 0
    present: int = 0
    entries: int = 0
    entries_present: int = 0
    entries_skipped: int = 0
    started: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, size_bytes: int) -> None:
        with self.lock:
            self.objects += 1
            self.size_bytes += size_bytes

    def summary(self, verb: str, remote: str) -> str:
        elapsed = time.monotonic() - self.started
        line = (
            f"{verb} {self.objects} objects ({_human(self.size_bytes)}) and "
            f"{self.entries} run-cache entries, {remote}, in {elapsed:.2f} s; "
            f"{self.present} objects and {self.entries_present} entries were "
            "already there"
        )
        if self.entries_skipped:
            line += f"; {self.entries_skipped} entries skipped (see the warnings)"
        return line


def _human(size_bytes: int) -> str:
    size = float(size_bytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size_bytes} B"


class Progress:
    """A one-line progress bar on stderr, drawn only when stderr is a terminal."""

    def __init__(self, verb: str, stats: Stats, total: int, enabled: bool) -> None:
        self.verb = verb
        self.stats = stats
        self.total = total
        self.enabled = enabled and total > 0 and sys.stderr.isatty()
        self._last = 0.0

    def update(self) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last < 0.1 and self.stats.objects < self.total:
            return
        self._last = now
        done = self.stats.objects
        width = 30
        filled = width * done // max(self.total, 1)
        bar = "#" * filled + "." * (width - filled)
        print(
            f"\r{self.verb} [{bar}] {done}/{self.total} objects, "
            f"{_human(self.stats.size_bytes)}",
            end="",
            file=sys.stderr,
            flush=True,
        )

    def close(self) -> None:
        if self.enabled:
            print(file=sys.stderr, flush=True)


class Remote:
    """A remote store: objects and run-cache entries behind one fsspec URL."""

    def __init__(self, config: RemoteConfig, *, progress: bool = False) -> None:
        self.config = config
        self.name = config.name
        self.read_only = config.read_only
        self.salt = config.options.get("salt", "")
        self.jobs = int(config.options.get("jobs", DEFAULT_JOBS))
        self.show_progress = progress
        self.backend = Backend(config)
        self.label = self.backend.label

    # -- helpers ---------------------------------------------------------------

    def retry(self, what: str, fn: Callable[[], T]) -> T:
        """Run `fn`, retrying network failures; a missing file is not retried."""
        for attempt in range(1, ATTEMPTS + 1):
            try:
                return fn()
            except (RemoteError, ConnectionError, TimeoutError) as exc:
                if attempt == ATTEMPTS:
                    raise
                log.warning(
                    "%s on remote %s failed (attempt %d of %d), retrying: %s",
                    what,
                    self.label,
                    attempt,
                    ATTEMPTS,
                    exc,
                )
                time.sleep(RETRY_DELAY_S * 2 ** (attempt - 1))
        raise AssertionError("unreachable")

    def parallel(self, fn: Callable[[str], object], items: Sequence[str]) -> None:
        """Call `fn` on every item in the thread pool; re-raise the first error."""
        if len(items) <= 1:
            for item in items:
                fn(item)
            return
        with ThreadPoolExecutor(min(self.jobs, len(items))) as pool:
            futures = [pool.submit(fn, item) for item in items]
            errors: list[BaseException] = []
            for future in futures:
                if future.cancelled():
                    continue
                exc = future.exception()
                if exc is not None:
                    errors.append(exc)
                    for other in futures:
                        other.cancel()
            if errors:
                raise errors[0]

    def has_objects(self, digests: Iterable[str]) -> set[str]:
        """Return the digests among `digests` that the remote holds."""
        wanted = sorted(set(digests))
        if len(wanted) <= LIST_THRESHOLD:
            found: set[str] = set()
            lock = threading.Lock()

            def check(digest: str) -> None:
                if self.retry(
                    "checking an object",
                    lambda: self.backend.exists(object_rel(digest)),
                ):
                    with lock:
                        found.add(digest)

            self.parallel(check, wanted)
            return found
        shards = sorted({d[:2] for d in wanted})
        names: set[str] = set()
        lock = threading.Lock()

        def list_shard(shard: str) -> None:
            listed = self.retry(
                "listing objects",
                lambda: self.backend.list_names(f"{OBJECTS_DIR}/{shard}"),
            )
            with lock:
                names.update(listed)

        self.parallel(list_shard, shards)
        return {d for d in wanted if d in names}

    # -- push ------------------------------------------------------------------

    def push_objects(
        self, store: Store, roots: Iterable[tuple[Kind, Digest]], stats: Stats
    ) -> None:
        """Upload every object below `roots` that the remote lacks.

        Raises `MissingObject` or `CorruptObject` when the local store lacks
        or has damaged an object it needs, before anything is uploaded.
        """
        blobs, trees_by_depth = self._plan_push(store, roots, stats)
        total = len(blobs) + sum(len(t) for t in trees_by_depth)
        progress = Progress("pushing", stats, total, self.show_progress)

        def upload_blob(digest: str) -> None:
            path = store.blob_path(digest)
            size = os.path.getsize(path)
            self.retry(
                "uploading an object",
                lambda: self.backend.upload_file(path, object_rel(digest), digest),
            )
            stats.add(size)
            progress.update()

        def upload_tree(digest: str) -> None:
            data = store.tree_bytes(digest)
            assert data is not None and tree_digest(data) == digest
            try:
                self.retry(
                    "uploading a tree",
                    lambda: self.backend.put_bytes(object_rel(digest), data),
                )
            except RemoteFileExists:
                pass
            stats.add(len(data))
            progress.update()

        try:
            self.parallel(upload_blob, blobs)
            # Deepest trees first, so a tree is published after its subtrees.
            for level in reversed(trees_by_depth):
                self.parallel(upload_tree, level)
        finally:
            progress.close()

    def _plan_push(
        self, store: Store, roots: Iterable[tuple[Kind, Digest]], stats: Stats
    ) -> tuple[list[str], list[list[str]]]:
        from expfs.errors import MissingObject

        level: dict[str, bool] = {
            digest: kind == Kind.DIRECTORY for kind, digest in roots
        }
        seen = set(level)
        blobs: list[str] = []
        trees_by_depth: list[list[str]] = []
        while level:
            present = self.has_objects(level)
            stats.present += len(present)
            trees: list[str] = []
            below: dict[str, bool] = {}
            for digest, is_tree in sorted(level.items()):
                if digest in present:
                    continue
                if not is_tree:
                    if not store.has_blob(digest):
                        raise MissingObject(digest)
                    blobs.append(digest)
                    continue
                trees.append(digest)
                for entry in store.get_tree(digest):
                    if entry.digest not in seen:
                        seen.add(entry.digest)
                        below[entry.digest] = entry.kind == Kind.DIRECTORY
            if trees:
                trees_by_depth.append(trees)
            level = below
        return blobs, trees_by_depth

    # -- pull ------------------------------------------------------------------

    def fetch_objects(
        self,
        store: Store,
        roots: Iterable[tuple[Kind, Digest]],
        stats: Stats,
        *,
        blobs: bool = True,
    ) -> None:
        """Download every object below `roots` that the local store lacks.

        Trees are stored only after every blob below them, so a local tree
        stays complete; a tree restored lazily before is walked too, and
        its mark removed once its blobs are here. With `blobs=False` only
        trees and symlink targets are fetched, and the new trees are
        stored marked lazy (a mounted workspace fetches each file's blob
        when it is first opened; see `expfs.store.lazy`).
        """
        wanted_blobs: list[str] = []
        fetched_trees: list[tuple[Digest, bytes]] = []
        walked_lazy: list[Digest] = []
        level: dict[str, Kind] = {d: k for k, d in roots}
        seen = set(level)
        while level:
            trees = [
                d
                for d, kind in sorted(level.items())
                if kind == Kind.DIRECTORY and not store.has_tree(d)
            ]
            for digest, kind in sorted(level.items()):
                if kind == Kind.DIRECTORY or store.has_blob(digest):
                    continue
                if blobs or kind == Kind.SYMLINK:
                    wanted_blobs.append(digest)
            got = self._download_trees(trees)
            fetched_trees.extend(got)
            if blobs:
                got += lazy_trees_among(store, level, walked_lazy)
            below: dict[str, Kind] = {}
            for _, data in got:
                for entry in decode_tree(data):
                    if entry.digest not in seen:
                        seen.add(entry.digest)
                        below[entry.digest] = entry.kind
            level = below
        progress = Progress("pulling", stats, len(wanted_blobs), self.show_progress)
        try:
            self.parallel(
                lambda d: stats.add(self.download_blob(store, d)), wanted_blobs
            )
        finally:
            progress.close()
        if fetched_trees:
            if blobs:
                store.put_trees(fetched_trees)
            else:
                put_lazy_trees(store, fetched_trees, self.name)
            for _, data in fetched_trees:
                stats.add(len(data))
        clear_marks(store, walked_lazy)

    def _download_trees(self, digests: Sequence[str]) -> list[tuple[Digest, bytes]]:
        found: list[tuple[Digest, bytes]] = []
        lock = threading.Lock()

        def fetch(digest: str) -> None:
            data = self._download_verified(digest, self._read_tree)
            with lock:
                found.append((Digest(digest), data))

        self.parallel(fetch, digests)
        return sorted(found)

    def _read_tree(self, digest: str) -> bytes | None:
        """Return a tree's bytes, or None when they do not match `digest`."""
        data = self.backend.read_bytes(object_rel(digest))
        if tree_digest(data) != digest:
            return None
        try:
            decode_tree(data)
        except TreeFormatError:
            return None
        return data

    def download_blob(self, store: Store, digest: str) -> int:
        """Download one blob into the local store, verified; return its size."""

        def attempt(_: str) -> int | None:
            temp = os.path.join(store.tmp_dir, f"remote-{uuid.uuid4().hex}")
            try:
                size = self.backend.call(
                    f"downloading object {digest}",
                    lambda: self._stream_to(temp, digest),
                )
                if size is None:
                    return None
                store.put_file(temp, move=True)
                return size
            finally:
                if os.path.exists(temp):
                    os.unlink(temp)

        return self._download_verified(digest, attempt)

    def _stream_to(self, temp: str, digest: str) -> int | None:
        """Copy an object into `temp`, hashing it; None when it does not match."""
        hasher = new_hasher()
        size = 0
        with self.backend.open_read(object_rel(digest)) as src, open(temp, "xb") as dst:
            while chunk := src.read(CHUNK_BYTES):
                hasher.update(chunk)
                dst.write(chunk)
                size += len(chunk)
            dst.flush()
            os.fsync(dst.fileno())
        return size if hasher.hexdigest() == digest else None

    def _download_verified(self, digest: str, attempt: Callable[[str], T | None]) -> T:
        for number in range(1, ATTEMPTS + 1):
            try:
                result = self.retry("downloading an object", lambda: attempt(digest))
            except FileNotFoundError:
                raise RemoteObjectMissing(digest, self.label) from None
            if result is not None:
                return result
            log.warning(
                "object %s from remote %s does not hash to its name (download %d of %d)",
                digest,
                self.label,
                number,
                ATTEMPTS,
            )
        raise CorruptRemoteObject(digest, self.label)
