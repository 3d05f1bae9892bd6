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
from dataclasses import dataclass, field
from typing import BinaryIO, TypeVar

from expfs.errors import ExpfsError
from expfs.remote.backend import Backend, Batch, RemoteError, RemoteFileExists
from expfs.remote.config import RemoteConfig
from expfs.store.lazy import clear_marks, lazy_mark, put_lazy_trees
from expfs.store.objects import Store, new_hasher
from expfs.store.trees import Digest, Kind, TreeFormatError, decode_tree, tree_digest
from expfs.text import plural

log = logging.getLogger(__name__)

T = TypeVar("T")

OBJECTS_DIR = "objects"
ATTEMPTS = 3
RETRY_DELAY_S = 0.2
DEFAULT_JOBS = 8
# Above this many digests, existence is checked by listing shard folders
# (at most 256 requests) instead of one request per object.
LIST_THRESHOLD = 64
# Downloaded blobs are fsynced, renamed into place and indexed this many at
# a time.
INSTALL_BATCH = 2000


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
    experiments: int = 0
    started: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    # Digests this command sent or found on the remote, so that an object
    # shared by several roots is counted once.
    counted: set[str] = field(default_factory=set, repr=False)

    def add(self, size_bytes: int, digest: str | None = None) -> None:
        with self.lock:
            self.objects += 1
            self.size_bytes += size_bytes
            if digest is not None:
                self.counted.add(digest)

    def add_present(self, digests: Iterable[str]) -> None:
        """Count objects found on the remote that this command has not counted yet."""
        with self.lock:
            new = set(digests) - self.counted
            self.present += len(new)
            self.counted |= new

    def summary(self, verb: str, remote: str) -> str:
        elapsed = time.monotonic() - self.started
        line = (
            f"{verb} {plural(self.objects, 'object')} ({_human(self.size_bytes)}) "
            f"and {plural(self.entries, 'run-cache entry', 'run-cache entries')}, "
            f"{remote}, in {elapsed:.2f} s"
        )
        if self.present or self.entries_present:
            line += (
                f"; {plural(self.present, 'object')} and "
                f"{plural(self.entries_present, 'entry', 'entries')} were already there"
            )
        if self.entries_skipped:
            skipped = plural(self.entries_skipped, "entry", "entries")
            line += f"; {skipped} skipped (see the warnings)"
        if self.experiments:
            line += f"; {verb} {plural(self.experiments, 'experiment record')}"
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
        pool = self.backend.pool(self.jobs)
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
        # One listing of `objects/` names the shards that exist, so a new or
        # small remote costs one request instead of up to 256.
        existing = set(
            self.retry("listing objects", lambda: self.backend.list_names(OBJECTS_DIR))
        )
        shards = sorted({d[:2] for d in wanted} & existing)
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

        def uploaded(rel: str) -> None:
            digest = _digest_of(rel)
            stats.add(os.path.getsize(store.blob_path(digest)), digest)
            progress.update()

        def upload_blobs(pending: list[str]) -> Batch:
            files = [
                (store.blob_path(_digest_of(r)), r, _digest_of(r)) for r in pending
            ]
            return self.backend.put_many(files, uploaded, self.jobs)

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
            stats.add(len(data), digest)
            progress.update()

        try:
            self.in_rounds("uploading", [object_rel(d) for d in blobs], upload_blobs)
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
            stats.add_present(present)
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

    # -- rounds ----------------------------------------------------------------

    def in_rounds(
        self, verb: str, rels: Sequence[str], transfer: Callable[[list[str]], Batch]
    ) -> None:
        """Call `transfer` on the paths not yet done until every one is done.

        A batch stops at its first network error; the paths it did not finish
        go into the next round, after a pause. `ATTEMPTS` rounds in a row
        that finish nothing raise that error. A path that is not on the
        remote raises `RemoteObjectMissing` at once.
        """
        pending = list(rels)
        idle_rounds = 0
        while pending:
            batch = transfer(pending)
            for rel, exc in sorted(batch.errors.items()):
                if isinstance(exc, FileNotFoundError):
                    raise RemoteObjectMissing(_digest_of(rel), self.label)
            done = set(batch.done)
            pending = [rel for rel in pending if rel not in done]
            if not batch.errors:
                continue
            idle_rounds = 0 if done else idle_rounds + 1
            error = next(iter(batch.errors.values()))
            if idle_rounds >= ATTEMPTS:
                raise error
            log.warning(
                "%s %s on remote %s failed (%d left, attempt %d of %d), retrying: %s",
                verb,
                plural(len(rels), "object"),
                self.label,
                len(pending),
                idle_rounds + 1,
                ATTEMPTS,
                error,
            )
            time.sleep(RETRY_DELAY_S * 2**idle_rounds)

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
        if wanted_blobs:
            self.download_blobs(store, wanted_blobs, stats)
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

        def keep(digest: str, sink: _Sink) -> None:
            found.append((Digest(digest), sink.data()))

        self._download_verified(digests, lambda: _Sink(None), keep)
        return sorted(found)

    def download_blobs(
        self, store: Store, digests: Sequence[str], stats: Stats
    ) -> None:
        """Download blobs into the local store, each verified before it is stored.

        Each download is hashed while it streams into a temporary file in the
        store's `tmp/`. The files that match their digest are fsynced and
        renamed into place `INSTALL_BATCH` at a time, and each batch is
        indexed in one transaction. A blob that does not match is downloaded again
        and never stored.
        """
        progress = Progress("pulling", stats, len(digests), self.show_progress)
        try:
            for start in range(0, len(digests), INSTALL_BATCH):
                batch = digests[start : start + INSTALL_BATCH]
                self._download_batch(store, batch, stats, progress)
        finally:
            progress.close()

    def _download_batch(
        self, store: Store, digests: Sequence[str], stats: Stats, progress: Progress
    ) -> None:
        staged: list[tuple[str, Digest, int]] = []

        def stage(digest: str, sink: _Sink) -> None:
            staged.append((sink.close(), Digest(digest), sink.size))
            stats.add(sink.size)
            progress.update()

        try:
            self._download_verified(digests, lambda: _Sink(store.tmp_dir), stage)
        finally:
            # Verified blobs are kept even when the batch failed, so that the
            # next pull does not download them again.
            store.install_verified(staged)

    def download_blob(self, store: Store, digest: str) -> int:
        """Download one blob into the local store, verified; return its size."""
        sizes: list[int] = []

        def install(found: str, sink: _Sink) -> None:
            store.install_verified([(sink.close(), Digest(found), sink.size)])
            sizes.append(sink.size)

        self._download_verified([digest], lambda: _Sink(store.tmp_dir), install)
        return sizes[0]

    def _download_verified(
        self,
        digests: Sequence[str],
        new_sink: Callable[[], _Sink],
        accept: Callable[[str, _Sink], None],
    ) -> None:
        """Stream objects into sinks and pass each one that matches its digest.

        A download that does not hash to its name is dropped and tried again;
        after `ATTEMPTS` mismatches of one object `CorruptRemoteObject` is
        raised. Every sink that was not accepted is discarded.
        """
        mismatches: dict[str, int] = {}

        def transfer(pending: list[str]) -> Batch:
            sinks: dict[str, _Sink] = {}

            def open_sink(rel: str) -> _Sink:
                sinks[rel] = new_sink()
                return sinks[rel]

            def finish(rel: str) -> bool:
                digest = _digest_of(rel)
                sink = sinks.pop(rel)
                if sink.matches(digest):
                    accept(digest, sink)
                    return True
                sink.discard()
                self._mismatch(digest, mismatches)
                return False

            try:
                return self.backend.get_many(pending, open_sink, finish, self.jobs)
            finally:
                for sink in sinks.values():
                    sink.discard()

        self.in_rounds("downloading", [object_rel(d) for d in digests], transfer)

    def _mismatch(self, digest: str, mismatches: dict[str, int]) -> None:
        mismatches[digest] = number = mismatches.get(digest, 0) + 1
        log.warning(
            "object %s from remote %s does not hash to its name (download %d of %d)",
            digest,
            self.label,
            number,
            ATTEMPTS,
        )
        if number >= ATTEMPTS:
            raise CorruptRemoteObject(digest, self.label)


def _digest_of(rel: str) -> str:
    return rel.rsplit("/", 1)[-1]


class StoreWriteError(ExpfsError):
    """A download could not be written to the local store."""


class _Sink:
    """One download, hashed while it is written to `tmp/` (or kept in memory).

    A tree (folder None) stays in memory and must also decode. A blob goes
    to a new file in the store's temporary folder, which the caller renames
    into place or discards.
    """

    def __init__(self, folder: str | None) -> None:
        self.hasher = new_hasher()
        self.size = 0
        self.path = (
            None
            if folder is None
            else os.path.join(folder, f"remote-{uuid.uuid4().hex}")
        )
        self.file: BinaryIO | None = None
        self.chunks: list[bytes] = []
        if self.path is not None:
            try:
                self.file = open(self.path, "xb")
            except OSError as exc:
                raise StoreWriteError(
                    f"cannot create {self.path} for a download: {exc}"
                ) from None

    def write(self, chunk: bytes) -> None:
        self.hasher.update(chunk)
        self.size += len(chunk)
        if self.file is None:
            self.chunks.append(chunk)
            return
        try:
            self.file.write(chunk)
        except OSError as exc:
            raise StoreWriteError(
                f"writing a download to {self.path} failed: {exc}"
            ) from None

    def data(self) -> bytes:
        return b"".join(self.chunks)

    def matches(self, digest: str) -> bool:
        if self.hasher.hexdigest() != digest:
            return False
        if self.file is None:
            try:
                decode_tree(self.data())
            except TreeFormatError:
                return False
        return True

    def close(self) -> str:
        """Close the file and return its path (blobs only)."""
        assert self.file is not None and self.path is not None
        self.file.close()
        return self.path

    def discard(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.path is not None:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
