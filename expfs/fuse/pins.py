"""Keep a graft from paying for the eviction of the output it replaces.

FUSE drops an inode from the kernel as soon as the kernel's last reference
to it goes; a disk file system would keep it cached. Invalidating the name
of a replaced output drops that reference. The kernel then evicts the old
inode and frees its cached pages inside the invalidation call, and the
graft's caller waits for that: 0.5 s for a 10 GiB file read in full.

`Pins` avoids that. It tracks the names the kernel has looked up and the files read or
written through the mount up to at least `PIN_MIN_BYTES`. Before the
daemon invalidates replaced names, it opens those large files below them
with O_PATH, which holds the inode without a FUSE open. It closes them
after it has replied, in a worker thread, so the eviction happens there.
"""

from __future__ import annotations

import logging
import os

import trio

from expfs.workspace.inodes import ROOT_INO

log = logging.getLogger(__name__)

# A smaller file has few pages to drop, too few to be worth an open.
PIN_MIN_BYTES = 1 << 20
# Deeper name chains than this are treated as unknown.
MAX_DEPTH = 4096


class Pins:
    """Names the kernel holds, and the large files it may have cached."""

    def __init__(self, mountpoint: str = "") -> None:
        # Where the kernel shows the workspace; the daemon sets it at mount.
        self.mountpoint = mountpoint
        # inode -> (parent inode, name) of the last name the kernel got it by.
        self.names: dict[int, tuple[int, bytes]] = {}
        # Files whose reads or writes reached PIN_MIN_BYTES.
        self.large: set[int] = set()
        # Descriptors opened by `hold` and not yet closed by `release`.
        self.held: set[int] = set()
        # Closes under way in worker threads, and an event set when they end.
        self.closing = 0
        self.closed = trio.Event()

    def named(self, ino: int, parent: int, name: bytes) -> None:
        """Record that the kernel got `ino` as `name` in `parent`."""
        self.names[ino] = (parent, name)

    def touched(self, ino: int, end: int) -> None:
        """Record a read or write through the mount that ended at `end`."""
        if end >= PIN_MIN_BYTES:
            self.large.add(ino)

    def forgotten(self, ino: int) -> None:
        """Drop what is known of an inode the kernel no longer holds."""
        self.names.pop(ino, None)
        self.large.discard(ino)

    def paths_below(self, replaced: list[int]) -> list[tuple[str, int]]:
        """Return (path in the mount, inode) of large files at or below `replaced`."""
        if not self.large or not replaced:
            return []
        tops = set(replaced)
        found = []
        for ino in self.large:
            parts = self._path_parts(ino, tops)
            if parts is not None:
                found.append((os.fsdecode(b"/".join(parts)), ino))
        return found

    def _path_parts(self, ino: int, tops: set[int]) -> list[bytes] | None:
        """Return the names from the root to `ino` when it lies below `tops`."""
        parts: list[bytes] = []
        below = False
        current = ino
        for _ in range(MAX_DEPTH):
            if current == ROOT_INO:
                parts.reverse()
                return parts if below else None
            below = below or current in tops
            entry = self.names.get(current)
            if entry is None:
                return None
            current, name = entry
            parts.append(name)
        return None

    async def hold(self, replaced: list[int]) -> list[int]:
        """Open the large files at or below `replaced`; return the descriptors.

        Runs before the names are invalidated, so the kernel's cached
        entries still lead to the old inodes. A path that leads elsewhere
        (an entry that had expired) is closed again.
        """
        paths = self.paths_below(replaced)
        if not paths or not self.mountpoint:
            return []
        fds = await trio.to_thread.run_sync(self._open_all, paths)
        self.held.update(fds)
        return fds

    def _open_all(self, paths: list[tuple[str, int]]) -> list[int]:
        fds = []
        for path, ino in paths:
            try:
                fd = os.open(
                    os.path.join(self.mountpoint, path), os.O_PATH | os.O_NOFOLLOW
                )
            except OSError as exc:
                log.debug("could not hold %s (inode %d): %s", path, ino, exc)
                continue
            if os.fstat(fd).st_ino == ino:
                fds.append(fd)
            else:
                os.close(fd)
        return fds

    async def release(self, fds: list[int]) -> None:
        """Close held descriptors in a worker thread, where eviction happens.

        Descriptors that `settle` closed meanwhile are skipped; the set is
        changed on the event loop's thread only, so no descriptor is closed
        twice.
        """
        mine = [fd for fd in fds if fd in self.held]
        self.held.difference_update(mine)
        if not mine:
            return
        self.closing += 1
        try:
            await trio.to_thread.run_sync(_close_all, mine)
        finally:
            self.closing -= 1
            if not self.closing:
                self.closed.set()
                self.closed = trio.Event()

    async def settle(self) -> None:
        """Close every held descriptor and wait for closes under way.

        An unmount calls this first: a file still held, or still being
        evicted, makes the mount busy.
        """
        fds = list(self.held)
        self.held.clear()
        if fds:
            await trio.to_thread.run_sync(_close_all, fds)
        while self.closing:
            await self.closed.wait()


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)
