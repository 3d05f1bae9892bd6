"""Write a snapshot out as a real folder: copy, hardlink or reflink.

Every blob is verified while it is written, so a corrupt object fails with
an error naming it instead of being copied silently. Hardlinks point at the
read-only blob itself, so they are used only where the entry's mode is the
blob's (0444); other files are copied. A reflink shares extents on
filesystems that support it (Btrfs, XFS) and falls back to a copy, saying
so once.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
from collections.abc import Callable

from expfs.errors import CorruptObject, DestinationNotEmpty, UsageError
from expfs.store.objects import BLOB_MODE, Store, hash_file
from expfs.store.trees import Entry, Kind

log = logging.getLogger(__name__)

MODES = ("copy", "hardlink", "reflink")
FICLONE = 0x40049409  # _IOW(0x94, 9, int) from linux/fs.h

ProgressFn = Callable[[int, int], None]
"""Called as progress(files_written, bytes_written)."""

EnsureFn = Callable[[Store, Kind, str], None]
"""Called as ensure(store, kind, digest) before an object is written, to
fetch what a lazy restore left on a remote (`expfs.remote.lazy.ensure_local`,
passed in by callers above the remote layer). Without it a missing blob
fails with `MissingObject`."""


class Materializer:
    def __init__(
        self,
        store: Store,
        link: str = "copy",
        progress: ProgressFn | None = None,
        ensure: EnsureFn | None = None,
    ):
        if link not in MODES:
            raise UsageError(
                f"unknown link type {link!r}: use one of {', '.join(MODES)}"
            )
        self.store = store
        self.link = link
        self.progress = progress
        self.ensure = ensure
        self.files = 0
        self.bytes = 0
        self.reflink_failed = False

    def write_tree(self, digest: str, dest: bytes) -> None:
        """Fill the existing folder `dest` with the tree `digest`.

        Blobs that a lazy restore left on a remote are fetched first.
        """
        if self.ensure is not None:
            self.ensure(self.store, Kind.DIRECTORY, digest)
        self._write_tree(digest, dest)

    def write_entry(self, entry: Entry, path: bytes) -> None:
        """Write one entry at `path`, fetching what a lazy restore left remote."""
        if self.ensure is not None:
            self.ensure(self.store, entry.kind, entry.digest)
        self._write_entry(entry, path)

    def _write_tree(self, digest: str, dest: bytes) -> None:
        for entry in self.store.get_tree(digest):
            self._write_entry(entry, os.path.join(dest, entry.name))

    def _write_entry(self, entry: Entry, path: bytes) -> None:
        if entry.kind is Kind.DIRECTORY:
            os.mkdir(path, 0o700)
            self._write_tree(entry.digest, path)
            os.chmod(path, entry.mode)
        elif entry.kind is Kind.SYMLINK:
            target = self.store.read_blob(entry.digest)
            os.symlink(target, path)
        else:
            self.write_file(entry, path)
            self.files += 1
            self.bytes += entry.size
            if self.progress is not None and self.files % 256 == 0:
                self.progress(self.files, self.bytes)

    def write_file(self, entry: Entry, path: bytes) -> None:
        if self.link == "hardlink" and entry.mode == BLOB_MODE:
            self._check(entry.digest)
            os.link(self.store.blob_path(entry.digest), path)
        elif self.link == "reflink" and not self.reflink_failed:
            self._reflink(entry, path)
        else:
            self.store.copy_blob(entry.digest, path, entry.mode)

    def _check(self, digest: str) -> None:
        if hash_file(self.store.blob_path(digest)) != digest:
            raise CorruptObject(digest, self.store.blob_path(digest))

    def _reflink(self, entry: Entry, path: bytes) -> None:
        self._check(entry.digest)
        with self.store.open_blob(entry.digest) as src:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                fcntl.ioctl(fd, FICLONE, src.fileno())
                os.fchmod(fd, entry.mode)
                return
            except OSError as exc:
                if exc.errno not in (
                    errno.EOPNOTSUPP,
                    errno.EXDEV,
                    errno.EINVAL,
                    errno.ENOTTY,
                ):
                    raise
                self.reflink_failed = True
                log.warning(
                    "reflink is not supported here (%s): copying instead",
                    os.strerror(exc.errno),
                )
            finally:
                os.close(fd)
        os.unlink(path)
        self.store.copy_blob(entry.digest, path, entry.mode)


def materialize(
    store: Store,
    digest: str,
    dest: str | bytes,
    *,
    link: str = "copy",
    force: bool = False,
    progress: ProgressFn | None = None,
    ensure: EnsureFn | None = None,
) -> Materializer:
    """Write snapshot `digest` into `dest`, creating the folder if needed.

    `dest` must be missing or empty unless `force` is set; with `force`,
    entries already there are left alone except those the snapshot
    replaces. `ensure` fetches what a lazy restore left on a remote.
    """
    target = os.fsencode(os.path.abspath(dest))
    writer = Materializer(store, link, progress, ensure)
    if not store.has_tree(digest):
        if store.has_blob(digest):
            raise UsageError(
                f"{digest} is a file, not a snapshot of a folder: use `expfs cat` "
                "or give the digest of a tree"
            )
        store.get_tree(digest)  # raises MissingObject
    if ensure is not None:
        ensure(store, Kind.DIRECTORY, digest)
    if os.path.lexists(target) and not os.path.isdir(target):
        raise DestinationNotEmpty(f"{os.fsdecode(target)} exists and is not a folder")
    if os.path.isdir(target) and os.listdir(target):
        if not force:
            raise DestinationNotEmpty(
                f"{os.fsdecode(target)} is not empty: choose an empty or new folder, "
                "or pass --force to write over what is there"
            )
        _write_over(writer, digest, target)
        return writer
    os.makedirs(target, exist_ok=True)
    writer.write_tree(digest, target)
    return writer


def _write_over(writer: Materializer, digest: str, dest: bytes) -> None:
    import shutil

    for entry in writer.store.get_tree(digest):
        path = os.path.join(dest, entry.name)
        if (
            entry.kind is Kind.DIRECTORY
            and os.path.isdir(path)
            and not os.path.islink(path)
        ):
            _write_over(writer, entry.digest, path)
            os.chmod(path, entry.mode)
            continue
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.unlink(path)
        writer.write_entry(entry, path)
