"""Fetch the blobs that a lazy restore left on a remote.

Two callers: `fetch_missing` completes a lazy tree before it is
materialized (a checkout, a promotion), and `RemoteBlobSource` serves a
mount daemon, which fetches one blob when a file is first opened. Both
download through `Remote.download_blob`, which hashes while it streams
and renames into the store only a blob that matches its digest.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from expfs.errors import ExpfsError, MissingObject, UsageError
from expfs.store.lazy import Missing, clear_marks, lazy_mark, missing_below
from expfs.store.objects import Store
from expfs.store.trees import Kind
from expfs.text import plural

if TYPE_CHECKING:
    # The transfer machinery (fsspec, asyncio) is imported only when a blob
    # is actually missing, so that materializing costs no start-up time.
    from expfs.remote.transfer import Remote

log = logging.getLogger(__name__)


def open_named_remote(store: Store, name: str, digest: str) -> Remote:
    """Open remote `name`, or the default remote when `name` is "" or unknown.

    `digest` is a blob to fetch from it, named in the error when there is
    no remote at all.
    """
    from expfs.remote.config import config_files
    from expfs.remote.runs import open_remote

    files = config_files(store.root)
    known = files.remotes()
    chosen = name if name in known else None
    if name and chosen is None:
        log.warning(
            "remote %s, where lazily restored blobs were, is no longer "
            "configured: fetching them from the default remote",
            name,
        )
    if chosen is None and files.default_name() is None:
        raise MissingObject(
            digest,
            f"a lazy restore from remote {name or '(default)'}, and no default "
            "remote is configured to fetch it from",
        )
    try:
        return open_remote(store, chosen)
    except UsageError as exc:
        raise UsageError(
            f"cannot fetch blobs restored lazily from remote {name or '(default)'}: "
            f"{exc.message}"
        ) from None


def ensure_local(store: Store, kind: Kind, digest: str) -> None:
    """Fetch every blob that a lazy restore left on a remote below `digest`.

    Costs one index lookup for a complete tree. A blob without a mark of
    its own (a file inside a lazy tree) comes from the default remote.
    Raises `MissingObject` when a blob is absent and there is no remote to
    fetch it from, and the remote's errors (`CorruptRemoteObject`,
    `RemoteObjectMissing`, `RemoteError`) when a download fails. Nothing
    unverified enters the store.
    """
    missing = missing_below(store, kind, digest)
    if missing:
        fetch_missing(store, missing)


def fetch_missing(store: Store, missing: Missing) -> None:
    """Download the blobs in `missing`, verified, then clear its trees' marks."""
    by_remote: dict[str, list[str]] = {}
    for digest, name in sorted(missing.blobs.items()):
        by_remote.setdefault(name, []).append(digest)
    for name, digests in by_remote.items():
        _fetch_from(store, open_named_remote(store, name, digests[0]), digests)
    clear_marks(store, [*missing.trees, *missing.blobs])


def _fetch_from(store: Store, remote: Remote, digests: list[str]) -> None:
    from expfs.remote.transfer import Stats

    stats = Stats()
    log.info(
        "fetching %s restored lazily from remote %s",
        plural(len(digests), "blob"),
        remote.label,
    )
    remote.download_blobs(store, digests, stats)
    log.info("%s", stats.summary("fetched", remote.label))


class BlobFetchFailed(ExpfsError):
    """A blob that a mounted workspace needs could not be fetched from its remote."""


class RemoteBlobSource:
    """Fetches single blobs for a mount daemon, from worker threads.

    The remote is opened on the first fetch (importing fsspec and its
    backend costs a fraction of a second), once per remote name.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._remotes: dict[str, Remote] = {}
        self._lock = threading.Lock()

    def _remote(self, name: str, digest: str) -> Remote:
        with self._lock:
            remote = self._remotes.get(name)
            if remote is None:
                remote = open_named_remote(self.store, name, digest)
                self._remotes[name] = remote
            return remote

    def fetch(self, digest: str) -> None:
        """Download blob `digest` into the store, verified; raise `BlobFetchFailed`."""
        if self.store.has_blob(digest):
            return
        mark = lazy_mark(self.store, digest)
        name = "" if mark is None else mark.remote
        label = name or "(default)"
        started = time.monotonic()
        try:
            remote = self._remote(name, digest)
            label = remote.label
            size = remote.download_blob(self.store, digest)
        except (ExpfsError, OSError) as exc:
            raise BlobFetchFailed(
                f"fetching blob {digest} from remote {label} failed: {exc}"
            ) from exc
        if mark is not None:
            clear_marks(self.store, [digest])
        log.info(
            "fetched blob %s (%d bytes) from remote %s in %.2f s",
            digest,
            size,
            label,
            time.monotonic() - started,
        )


# The `--blob-source` of mount daemons that fetch from the remotes.
BLOB_SOURCE = f"{__name__}:{RemoteBlobSource.__name__}"
