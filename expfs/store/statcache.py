"""The stat cache: which files a snapshot can take without reading them.

Keyed by BLAKE3 of the absolute path bytes (LMDB keys are limited to 511
bytes). The value packs size, mtime_ns, ctime_ns, inode and the blob digest;
a file whose four stat fields all match is assumed unchanged. The ctime
catches writes that restore the mtime, and the inode catches a file
replaced by another of the same size and mtime.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable

import blake3

from expfs.store import layout
from expfs.store.lmdbenv import Environment
from expfs.store.trees import Digest

_VALUE = struct.Struct(">QqqQ32s")
# Files whose ctime is this close to the time they are hashed are not
# cached: another write in the same clock tick would leave size, mtime and
# ctime unchanged ("racy" files, as Git calls them).
RACY_WINDOW_NS = 2_000_000_000


def path_key(abspath: bytes) -> bytes:
    return blake3.blake3(abspath).digest()


def stat_fields(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


class StatCache:
    """Batched reads and writes of the `statcache` database."""

    def __init__(self, env: Environment) -> None:
        self.env = env
        self.handle = env.db(layout.DB_STATCACHE)

    def lookup_many(
        self, items: Iterable[tuple[bytes, os.stat_result]]
    ) -> dict[bytes, Digest]:
        """Return {abspath: digest} for each path whose stat still matches."""
        wanted = [(p, stat_fields(st)) for p, st in items]

        def scan(txn: object) -> dict[bytes, Digest]:
            found: dict[bytes, Digest] = {}
            for abspath, fields in wanted:
                value = txn.get(path_key(abspath), db=self.handle)  # type: ignore[attr-defined]
                if value is None:
                    continue
                *cached, digest = _VALUE.unpack(value)
                if tuple(cached) == fields:
                    found[abspath] = Digest(digest.hex())
            return found

        return self.env.read(scan)

    def record_many(
        self, items: Iterable[tuple[bytes, os.stat_result, Digest]]
    ) -> None:
        rows = [
            (path_key(p), _VALUE.pack(*stat_fields(st), bytes.fromhex(d)))
            for p, st, d in items
        ]
        if not rows:
            return

        def write(txn: object) -> None:
            for key, value in rows:
                txn.put(key, value, db=self.handle)  # type: ignore[attr-defined]

        self.env.write(write)
