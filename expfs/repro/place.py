"""Where a pipeline runs: the small interface repro needs, and a plain checkout.

Repro asks a place for four things: the digest of a path, a snapshot of an
output (storing it), putting stored content at a path, and removing a path.
A plain checkout answers from the disk and the store's stat cache and puts
content in place by copying from the store; a mounted workspace answers
from its daemon and grafts, which costs no bytes. Repro never asks which
kind it has.
"""

from __future__ import annotations

import os
import shutil
import stat
from typing import Protocol

from expfs.runcache import OutputRecord
from expfs.store.objects import Store
from expfs.store.trees import Digest, Kind
from expfs.tree.fingerprint import fingerprint_path
from expfs.tree.materialize import Materializer
from expfs.tree.snapshot import snapshot_path


class Place(Protocol):
    """A folder that a pipeline runs in, addressed by paths relative to `root`."""

    root: str

    def digest_of(self, path: str) -> tuple[Kind, Digest] | None:
        """Return the kind and digest of `path`, or None when it is absent."""
        ...

    def snapshot(self, path: str) -> OutputRecord | None:
        """Store the content at `path` and describe it, or None when absent."""
        ...

    def put(self, out: OutputRecord) -> None:
        """Replace whatever is at `out.path` with the stored content."""
        ...

    def remove(self, path: str) -> None:
        """Remove `path` (file or folder) if present."""
        ...


def _record(
    path: str, kind: Kind, digest: Digest, mode: int, size: int
) -> OutputRecord:
    return OutputRecord(path=path, kind=int(kind), digest=digest, mode=mode, size=size)


class CheckoutPlace:
    """A plain folder: a Git checkout outside any mount."""

    def __init__(self, store: Store, root: str) -> None:
        self.store = store
        self.root = os.path.abspath(root)

    def _abs(self, path: str) -> str:
        return os.path.join(self.root, path)

    def digest_of(self, path: str) -> tuple[Kind, Digest] | None:
        found = fingerprint_path(self.store, self._abs(path))
        return None if found is None else (found.kind, found.digest)

    def snapshot(self, path: str) -> OutputRecord | None:
        target = self._abs(path)
        try:
            st = os.lstat(target)
        except FileNotFoundError:
            return None
        if stat.S_ISLNK(st.st_mode):
            link = os.readlink(target)
            digest = self.store.put_bytes(os.fsencode(link))
            return _record(path, Kind.SYMLINK, digest, 0o777, len(os.fsencode(link)))
        digest = snapshot_path(self.store, target)
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISDIR(st.st_mode):
            size = sum(e.size for e in self.store.get_tree(digest))
            return _record(path, Kind.DIRECTORY, digest, mode, size)
        return _record(path, Kind.FILE, digest, mode, st.st_size)

    def put(self, out: OutputRecord) -> None:
        target = self._abs(out.path)
        self.remove(out.path)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        writer = Materializer(self.store, "copy")
        kind = Kind(out.kind)
        if kind is Kind.DIRECTORY:
            os.mkdir(target, 0o700)
            writer.write_tree(out.digest, os.fsencode(target))
            os.chmod(target, out.mode)
        elif kind is Kind.SYMLINK:
            os.symlink(self.store.read_blob(out.digest), target)
        else:
            self.store.copy_blob(out.digest, target, out.mode)

    def remove(self, path: str) -> None:
        target = self._abs(path)
        if os.path.isdir(target) and not os.path.islink(target):
            shutil.rmtree(target)
        elif os.path.lexists(target):
            os.unlink(target)
