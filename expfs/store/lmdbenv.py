"""LMDB environments shared safely between the threads and processes of expfs.

Rules this module enforces for every caller:

- one `lmdb.Environment` per path per process, opened after any fork and
  never inherited by a child (the cache is cleared in the child);
- write transactions are short and retried when the map fills (the map is
  doubled) or when another process grew it (`MapResizedError`: adopt the
  new size with `set_mapsize(0)` and retry);
- read transactions are short too: they pin old pages while open.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable
from typing import TypeVar

import lmdb

log = logging.getLogger(__name__)

T = TypeVar("T")

# The data file is sparse on Linux, so a large map costs nothing until used.
INITIAL_MAP_SIZE_BYTES = 1 << 30
MAX_NAMED_DATABASES = 32
MAX_RETRIES = 8

_environments: dict[tuple[str, int], Environment] = {}
_environments_lock = threading.Lock()


def _forget_after_fork() -> None:
    # The child must never use the parent's handles (LMDB forbids it); it
    # opens its own on first use.
    global _environments_lock
    _environments.clear()
    _environments_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)


class Environment:
    """One LMDB environment with its named databases and retrying writers."""

    def __init__(
        self, path: str, databases: Iterable[bytes], *, sync: bool = True
    ) -> None:
        os.makedirs(path, mode=0o700, exist_ok=True)
        self.path = path
        self.env = lmdb.open(
            path,
            map_size=INITIAL_MAP_SIZE_BYTES,
            max_dbs=MAX_NAMED_DATABASES,
            max_readers=1024,
            subdir=True,
            lock=True,
            readahead=False,
            sync=sync,
        )
        self._grow_lock = threading.Lock()
        self.dbs: dict[bytes, lmdb._Database] = self._open_dbs(list(databases))

    def _open_dbs(self, names: list[bytes]) -> dict[bytes, lmdb._Database]:
        """Open (creating if needed) every named database in one transaction."""

        def create(txn: lmdb.Transaction) -> dict[bytes, lmdb._Database]:
            return {
                name: self.env.open_db(name, txn=txn, create=True) for name in names
            }

        return self._retry(lambda: self._in_write(create))

    def db(self, name: bytes) -> lmdb._Database:
        return self.dbs[name]

    def _in_write(self, fn: Callable[[lmdb.Transaction], T]) -> T:
        with self.env.begin(write=True) as txn:
            return fn(txn)

    def _retry(self, attempt: Callable[[], T]) -> T:
        for _ in range(MAX_RETRIES):
            try:
                return attempt()
            except lmdb.MapResizedError:
                self.env.set_mapsize(0)
            except lmdb.MapFullError:
                self._grow()
        return attempt()

    def _grow(self) -> None:
        with self._grow_lock:
            new_size = self.env.info()["map_size"] * 2
            log.info("growing LMDB map of %s to %d bytes", self.path, new_size)
            self.env.set_mapsize(new_size)

    def write(self, fn: Callable[[lmdb.Transaction], T]) -> T:
        """Run `fn` in one write transaction, retrying on a full or resized map.

        `fn` may run more than once, so it must not have side effects outside
        the transaction.
        """
        return self._retry(lambda: self._in_write(fn))

    def read(self, fn: Callable[[lmdb.Transaction], T]) -> T:
        """Run `fn` in one short read transaction."""

        def attempt() -> T:
            with self.env.begin(write=False, buffers=False) as txn:
                return fn(txn)

        return self._retry(attempt)

    def get(self, db: bytes, key: bytes) -> bytes | None:
        handle = self.dbs[db]
        value = self.read(lambda txn: txn.get(key, db=handle))
        return None if value is None else bytes(value)

    def put(self, db: bytes, key: bytes, value: bytes) -> None:
        handle = self.dbs[db]
        self.write(lambda txn: txn.put(key, value, db=handle))

    def sync(self) -> None:
        self.env.sync(True)

    def close(self) -> None:
        self.env.close()


def open_environment(
    path: str, databases: Iterable[bytes], *, sync: bool = True
) -> Environment:
    """Return this process's environment at `path`, opening it on first use.

    With `sync=False` a commit does not flush to disk. A killed process loses
    nothing, but a system crash can lose recent commits or corrupt the
    environment (LMDB's MDB_NOSYNC), so such a caller calls
    `Environment.sync()` wherever it promises durability.
    """
    key = (os.path.realpath(path), os.getpid())
    with _environments_lock:
        env = _environments.get(key)
        if env is None:
            env = Environment(path, databases, sync=sync)
            _environments[key] = env
        return env


def close_environment(path: str) -> None:
    """Close and forget this process's environment at `path`, if open."""
    key = (os.path.realpath(path), os.getpid())
    with _environments_lock:
        env = _environments.pop(key, None)
    if env is not None:
        env.close()
