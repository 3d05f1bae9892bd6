"""Records of files that a checkout linked to blobs, for fingerprints.

A hard link to a blob has the blob's mode (0444) and a symlink to a blob is
a symlink, so neither looks like the output the run recorded. The `links`
database stores, per absolute path, which blob a checkout linked there and
the mode the run recorded. A fingerprint then names the file as the
restored output, so the lock file matches it and downstream stages get the
same run keys as after a copy.

A record counts only while the path still is that link: a hard link with
the recorded inode, size and mtime, or a symlink to the blob's path whose
target still has them (a write through either changes the mtime).
"""

from __future__ import annotations

import os
import stat
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from expfs.store import layout
from expfs.store.objects import Store
from expfs.store.statcache import path_key
from expfs.store.trees import Digest, raw

HARDLINK = 1
SYMLINK = 2
# kind, inode, size and mtime_ns of the blob file, recorded mode, digest.
_VALUE = struct.Struct(">BQQQI32s")


@dataclass(frozen=True)
class Link:
    """A path that a checkout linked to a blob."""

    path: bytes  # absolute
    kind: int  # HARDLINK or SYMLINK
    blob: os.stat_result
    mode: int  # as the run recorded it
    digest: Digest


class LinkRecords:
    """Batched reads and writes of the `links` database."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.handle = store.env.db(layout.DB_LINKS)

    def record_many(self, links: Iterable[Link]) -> None:
        rows = [
            (
                path_key(link.path),
                _VALUE.pack(
                    link.kind,
                    link.blob.st_ino,
                    link.blob.st_size,
                    link.blob.st_mtime_ns,
                    link.mode,
                    raw(link.digest),
                ),
            )
            for link in links
        ]
        if not rows:
            return

        def write(txn: object) -> None:
            for key, value in rows:
                txn.put(key, value, db=self.handle)  # type: ignore[attr-defined]

        self.store.env.write(write)

    def lookup_many(
        self, items: Mapping[bytes, os.stat_result]
    ) -> dict[bytes, tuple[Digest, int]]:
        """Return {path: (digest, recorded mode)} for each path still linked.

        `items` maps absolute paths to their `lstat`; only symlinks and
        regular files with more than one link can match.
        """
        candidates = {
            path: st
            for path, st in items.items()
            if stat.S_ISLNK(st.st_mode)
            or (stat.S_ISREG(st.st_mode) and st.st_nlink > 1)
        }
        if not candidates:
            return {}

        def scan(txn: object) -> dict[bytes, bytes]:
            found: dict[bytes, bytes] = {}
            for path in candidates:
                value = txn.get(path_key(path), db=self.handle)  # type: ignore[attr-defined]
                if value is not None:
                    found[path] = bytes(value)
            return found

        found: dict[bytes, tuple[Digest, int]] = {}
        for path, value in self.store.env.read(scan).items():
            kind, ino, size, mtime_ns, mode, digest_raw = _VALUE.unpack(value)
            digest = Digest(digest_raw.hex())
            if self._still_linked(
                path, candidates[path], kind, (ino, size, mtime_ns), digest
            ):
                found[path] = (digest, mode)
        return found

    def _still_linked(
        self,
        path: bytes,
        st: os.stat_result,
        kind: int,
        blob_fields: tuple[int, int, int],
        digest: Digest,
    ) -> bool:
        if kind == HARDLINK:
            return stat.S_ISREG(st.st_mode) and _fields(st) == blob_fields
        if kind != SYMLINK or not stat.S_ISLNK(st.st_mode):
            return False
        if os.readlink(path) != os.fsencode(self.store.blob_path(digest)):
            return False
        try:
            return _fields(os.stat(path)) == blob_fields
        except FileNotFoundError:
            return False


def _fields(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_ino, st.st_size, st.st_mtime_ns)
