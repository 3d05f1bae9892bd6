"""pyfuse3 request handlers over a `Workspace`.

This module is the only place that raises `FUSEError`. The workspace raises
domain exceptions; `ERRNO_BY_ERROR` maps each to an errno, an `OSError` from
an upper file keeps its errno, and anything else is logged at ERROR with the
operation and inode and returned to the kernel as EIO, so the daemon keeps
serving.

Opening a file whose blob a lazy restore left on a remote first fetches
the blob through `blob_source`, in a worker thread; `stat`, `lookup` and
`readdir` never fetch, since sizes come from the trees.

Not supported, by design or because pyfuse3 3.5 has no handler for it:
O_TMPFILE (EOPNOTSUPP from the kernel), SEEK_HOLE/SEEK_DATA (no lseek
handler, so holes are not reported), device nodes (EPERM), POSIX ACLs
(EOPNOTSUPP). Locks are kept by the kernel, since there are no lock
handlers.
"""

from __future__ import annotations

import bisect
import errno
import functools
import itertools
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import pyfuse3
import trio

from expfs.errors import CorruptObject, MissingObject
from expfs.fuse.pins import PIN_MIN_BYTES, Pins
from expfs.store.trees import MAX_NAME_BYTES, Digest
from expfs.workspace import Node, Workspace
from expfs.workspace import errors as ws_errors
from expfs.workspace.data import copy_file
from expfs.workspace.workspace import (
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    THREADED_COPY_MIN_BYTES,
)

log = logging.getLogger(__name__)

# The daemon invalidates whatever it changes behind the kernel's back, so
# the kernel may keep entries and attributes for long.
TIMEOUT_S = 300.0
BLOCK_SIZE = 4096
_AFTER_EVERY_NAME = b"\xff" * (MAX_NAME_BYTES + 1)

ERRNO_BY_ERROR: dict[type[Exception], int] = {
    ws_errors.NotFound: errno.ENOENT,
    ws_errors.AlreadyExists: errno.EEXIST,
    ws_errors.NotADirectory: errno.ENOTDIR,
    ws_errors.IsADirectory: errno.EISDIR,
    ws_errors.DirectoryNotEmpty: errno.ENOTEMPTY,
    ws_errors.NameTooLong: errno.ENAMETOOLONG,
    ws_errors.InvalidArgument: errno.EINVAL,
    ws_errors.NotPermitted: errno.EPERM,
    ws_errors.NoAttribute: pyfuse3.ENOATTR,
    ws_errors.NotSupported: errno.EOPNOTSUPP,
    MissingObject: errno.EIO,
    CorruptObject: errno.EIO,
}

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def _fuse_error(operation: str, subject: object, exc: Exception) -> pyfuse3.FUSEError:
    for error_type, code in ERRNO_BY_ERROR.items():
        if isinstance(exc, error_type):
            if code == errno.EIO:
                log.error("%s on inode %s: %s", operation, subject, exc)
            return pyfuse3.FUSEError(code)
    if isinstance(exc, OSError) and exc.errno:
        log.warning("%s on inode %s failed: %s", operation, subject, exc)
        return pyfuse3.FUSEError(exc.errno)
    log.error("%s on inode %s failed", operation, subject, exc_info=exc)
    return pyfuse3.FUSEError(errno.EIO)


def operation(handler: F) -> F:
    """Log a request at DEBUG and turn its exceptions into `FUSEError`."""
    name = handler.__name__

    @functools.wraps(handler)
    async def wrapper(self: WorkspaceOperations, *args: Any) -> Any:
        # Every request passes here, so the log call is skipped, not just
        # filtered, unless DEBUG is on.
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s %s", name, args[0] if args else None)
        try:
            return await handler(self, *args)
        except pyfuse3.FUSEError:
            raise
        except Exception as exc:
            raise _fuse_error(name, args[0] if args else None, exc) from None

    return wrapper  # type: ignore[return-value]


class BlobSource(Protocol):
    """A downloader of blobs into the store, called from a worker thread.

    `fetch` blocks until the blob is in the store, verified, or raises.
    """

    def fetch(self, digest: str) -> None: ...


@dataclass
class _Fetch:
    """One download in flight, which later opens of the same blob wait for."""

    done: trio.Event = field(default_factory=trio.Event)
    failed: bool = False


@dataclass
class DirectoryHandle:
    """An open directory and the (cookie, name) listing of its last rewind."""

    ino: int
    listing: list[tuple[int, bytes]] | None = None


class WorkspaceOperations(pyfuse3.Operations):
    """The FUSE view of one workspace, served on trio by pyfuse3."""

    enable_writeback_cache = True

    def __init__(
        self, workspace: Workspace, blob_source: BlobSource | None = None
    ) -> None:
        super().__init__()
        self.workspace = workspace
        workspace.writeback_cache = self.enable_writeback_cache
        # Fetches blobs that a lazy restore left on a remote; without one,
        # opening such a file fails with EIO.
        self.blob_source = blob_source
        self._directories: dict[int, DirectoryHandle] = {}
        self._next_dir_fh = itertools.count(1)
        self._copy_locks: dict[int, trio.Lock] = {}
        self._fetches: dict[str, _Fetch] = {}
        # Names and large files the kernel holds, for grafts (see pins.py).
        self.pins = Pins()

    # -- helpers -------------------------------------------------------------

    def _attributes(self, node: Node) -> pyfuse3.EntryAttributes:
        record = node.record
        attrs = pyfuse3.EntryAttributes()
        attrs.st_ino = node.ino
        attrs.generation = 0
        attrs.entry_timeout = TIMEOUT_S
        attrs.attr_timeout = TIMEOUT_S
        attrs.st_mode = record.mode
        attrs.st_nlink = self.workspace.nlink(node)
        attrs.st_uid = record.uid
        attrs.st_gid = record.gid
        attrs.st_rdev = record.rdev
        attrs.st_size = BLOCK_SIZE if record.is_dir else record.size
        attrs.st_blksize = BLOCK_SIZE
        # NOTE: blocks follow the size, so a sparse upper file looks dense
        # to `du` though its holes take no disk space.
        attrs.st_blocks = (attrs.st_size + 511) // 512
        attrs.st_atime_ns = record.atime_ns
        attrs.st_mtime_ns = record.mtime_ns
        attrs.st_ctime_ns = record.ctime_ns
        return attrs

    def _entry(self, node: Node) -> pyfuse3.EntryAttributes:
        """Return a node's attributes and count the kernel's new reference."""
        self.workspace.remember(node)
        return self._attributes(node)

    async def _fetch_lacking_blob(self, ino: int) -> None:
        """Fetch a lazily restored file's blob from its remote, once per digest.

        The download runs in a worker thread, so other requests keep being
        served; concurrent opens of files with the same blob wait for one
        download. A failure is logged with the digest and the remote and
        becomes EIO, and nothing unverified enters the store.
        """
        digest = self.workspace.lacking_blob(ino)
        if digest is None:
            return
        pending = self._fetches.get(digest)
        if pending is None:
            pending = _Fetch()
            self._fetches[digest] = pending
            try:
                await self._download(digest, ino, pending)
            finally:
                pending.done.set()
                del self._fetches[digest]
        else:
            await pending.done.wait()
        if pending.failed:
            raise pyfuse3.FUSEError(errno.EIO)

    async def _download(self, digest: str, ino: int, pending: _Fetch) -> None:
        source = self.blob_source
        if source is None:
            log.error(
                "open of inode %d: blob %s is not in the store and this mount "
                "has no remote to fetch it from",
                ino,
                digest,
            )
            pending.failed = True
            return
        log.info("open of inode %d: fetching blob %s", ino, digest)
        try:
            await trio.to_thread.run_sync(source.fetch, digest)
        except Exception as exc:
            log.error("open of inode %d failed: %s", ino, exc)
            pending.failed = True

    async def _copy_up(self, ino: int) -> None:
        await self._fetch_lacking_blob(ino)
        lock = self._copy_locks.setdefault(ino, trio.Lock())
        async with lock:
            job = self.workspace.begin_copy_up(ino)
            if job is None:
                return
            if os.stat(job.source).st_size >= THREADED_COPY_MIN_BYTES:
                await trio.to_thread.run_sync(copy_file, job.source, job.temp)
            else:
                copy_file(job.source, job.temp)
            self.workspace.finish_copy_up(job)
        if not lock.statistics().tasks_waiting:
            self._copy_locks.pop(ino, None)

    async def invalidate(self, changed: list[tuple[int, bytes, int]]) -> None:
        """Make the kernel drop cached entries and attributes of `changed`.

        Returns only after the kernel has dropped them. ENOENT means the
        kernel had nothing cached.
        """
        for parent, name, _old in changed:
            await trio.to_thread.run_sync(_invalidate_entry, parent, name)
            await trio.to_thread.run_sync(_invalidate_attributes, parent)

    async def snapshot(self) -> Digest:
        """Snapshot the workspace on the event loop's thread.

        NOTE: dirty files are hashed on the event loop's thread, so requests
        wait while a snapshot stores large changed files.
        """
        return self.workspace.snapshot()

    # -- names ---------------------------------------------------------------

    @operation
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        workspace = self.workspace
        parent = workspace.node(parent_inode)
        if name == b".":
            return self._entry(parent)
        if name == b"..":
            return self._entry(workspace.node(parent.record.parent))
        if len(name) > MAX_NAME_BYTES:
            raise ws_errors.NameTooLong(f"name of {len(name)} bytes")
        node = workspace.child(parent, name)
        if node is None:
            negative = pyfuse3.EntryAttributes()
            negative.st_ino = 0
            negative.entry_timeout = TIMEOUT_S
            return negative
        self.pins.named(node.ino, parent_inode, name)
        return self._entry(node)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for ino, count in inode_list:
            try:
                self.workspace.forget(ino, count)
            except Exception:
                log.exception("forget of inode %d failed", ino)
            if ino not in self.workspace.nodes:
                self.pins.forgotten(ino)

    @operation
    async def getattr(
        self, inode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        return self._attributes(self.workspace.node(inode))

    @operation
    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        size = attr.st_size if fields.update_size else None
        if size:
            await self._copy_up(inode)
        node = self.workspace.setattr(
            inode,
            mode=attr.st_mode if fields.update_mode else None,
            uid=attr.st_uid if fields.update_uid else None,
            gid=attr.st_gid if fields.update_gid else None,
            size=size,
            atime_ns=attr.st_atime_ns if fields.update_atime else None,
            mtime_ns=attr.st_mtime_ns if fields.update_mtime else None,
            ctime_ns=attr.st_ctime_ns if fields.update_ctime else None,
        )
        return self._attributes(node)

    @operation
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        return self.workspace.readlink(inode)

    @operation
    async def mknod(
        self,
        parent_inode: int,
        name: bytes,
        mode: int,
        rdev: int,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        node = self.workspace.mknod(parent_inode, name, mode, rdev, ctx.uid, ctx.gid)
        self.pins.named(node.ino, parent_inode, name)
        return self._entry(node)

    @operation
    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        node = self.workspace.mkdir(parent_inode, name, mode, ctx.uid, ctx.gid)
        self.pins.named(node.ino, parent_inode, name)
        return self._entry(node)

    @operation
    async def symlink(
        self,
        parent_inode: int,
        name: bytes,
        target: bytes,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        node = self.workspace.symlink(parent_inode, name, target, ctx.uid, ctx.gid)
        self.pins.named(node.ino, parent_inode, name)
        return self._entry(node)

    @operation
    async def link(
        self,
        inode: int,
        new_parent_inode: int,
        new_name: bytes,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        node = self.workspace.link(inode, new_parent_inode, new_name)
        self.pins.named(node.ino, new_parent_inode, new_name)
        return self._entry(node)

    @operation
    async def unlink(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        self.workspace.unlink(parent_inode, name)

    @operation
    async def rmdir(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        self.workspace.rmdir(parent_inode, name)

    @operation
    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        mode = 0
        if flags & pyfuse3.RENAME_EXCHANGE:
            mode |= RENAME_EXCHANGE
        if flags & pyfuse3.RENAME_NOREPLACE:
            mode |= RENAME_NOREPLACE
        workspace = self.workspace
        workspace.rename(parent_inode_old, name_old, parent_inode_new, name_new, mode)
        for parent, name in (
            (parent_inode_new, name_new),
            (parent_inode_old, name_old),
        ):
            moved = workspace.child(workspace.node(parent), name)
            if moved is not None and moved.ino in self.pins.names:
                self.pins.named(moved.ino, parent, name)

    # -- files ---------------------------------------------------------------

    @operation
    async def open(
        self, inode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileInfo:
        truncating = flags & os.O_TRUNC and flags & os.O_ACCMODE != os.O_RDONLY
        if not truncating:
            await self._fetch_lacking_blob(inode)
        fh = self.workspace.open_file(inode, flags)
        # Content changes only through this mount (a graft makes a new
        # inode), so the kernel's page cache stays valid across opens.
        return pyfuse3.FileInfo(fh=fh, keep_cache=True)

    @operation
    async def create(
        self,
        parent_inode: int,
        name: bytes,
        mode: int,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        workspace = self.workspace
        parent = workspace.node(parent_inode)
        if len(name) > MAX_NAME_BYTES:
            raise ws_errors.NameTooLong(f"name of {len(name)} bytes")
        node = workspace.child(parent, name)
        if node is None:
            node = workspace.create_file(parent_inode, name, mode, ctx.uid, ctx.gid)
        elif flags & os.O_EXCL:
            raise ws_errors.AlreadyExists(f"{name!r} exists")
        fh = workspace.open_file(node.ino, flags)
        self.pins.named(node.ino, parent_inode, name)
        return pyfuse3.FileInfo(fh=fh, keep_cache=True), self._entry(node)

    @operation
    async def read(self, fh: int, off: int, size: int) -> bytes:
        # NOTE: reads run on the event loop's thread; a cold read from disk
        # makes other requests wait for it.
        if off + size >= PIN_MIN_BYTES:
            self.pins.touched(self.workspace.handle(fh).ino, off + size)
        return self.workspace.read(fh, off, size)

    @operation
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        workspace = self.workspace
        if workspace.needs_copy_up(fh):
            await self._copy_up(workspace.handle(fh).ino)
        if off + len(buf) >= PIN_MIN_BYTES:
            self.pins.touched(workspace.handle(fh).ino, off + len(buf))
        return workspace.write(fh, off, buf)

    @operation
    async def flush(self, fh: int) -> None:
        self.workspace.flush(fh)

    @operation
    async def release(self, fh: int) -> None:
        workspace = self.workspace
        ino = workspace.handle(fh).ino
        workspace.release(fh)
        # A file the kernel forgot while it was open leaves only now.
        if ino not in workspace.nodes:
            self.pins.forgotten(ino)

    @operation
    async def fsync(self, fh: int, datasync: bool) -> None:
        fd = self.workspace.fsync_prepare(fh)
        await trio.to_thread.run_sync(self.workspace.flush_to_disk, fd)

    # -- directories ---------------------------------------------------------

    @operation
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        node = self.workspace.node(inode)
        if not node.record.is_dir:
            raise ws_errors.NotADirectory(f"inode {inode} is not a directory")
        fh = next(self._next_dir_fh)
        self._directories[fh] = DirectoryHandle(inode)
        return fh

    @operation
    async def readdir(
        self, fh: int, start_id: int, token: pyfuse3.ReaddirToken
    ) -> None:
        handle = self._directories[fh]
        workspace = self.workspace
        if start_id == 0 or handle.listing is None:
            handle.listing = workspace.listdir(handle.ino)
        listing = handle.listing
        directory = workspace.node(handle.ino)
        # Offsets are name cookies, so removed entries shift nothing.
        first = bisect.bisect_right(listing, (start_id, _AFTER_EVERY_NAME))
        for cookie, name in itertools.islice(listing, first, None):
            node = workspace.child(directory, name)
            if node is None:
                continue
            if not pyfuse3.readdir_reply(token, name, self._attributes(node), cookie):
                return
            workspace.remember(node)
            self.pins.named(node.ino, handle.ino, name)

    @operation
    async def releasedir(self, fh: int) -> None:
        self._directories.pop(fh, None)

    @operation
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        await trio.to_thread.run_sync(self.workspace.flush_to_disk, None)

    @operation
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        st = os.statvfs(self.workspace.store.root)
        data = pyfuse3.StatvfsData()
        data.f_bsize = st.f_bsize
        data.f_frsize = st.f_frsize
        data.f_blocks = st.f_blocks
        data.f_bfree = st.f_bfree
        data.f_bavail = st.f_bavail
        data.f_files = st.f_files
        data.f_ffree = st.f_ffree
        data.f_favail = st.f_favail
        data.f_namemax = MAX_NAME_BYTES
        return data

    # -- extended attributes -------------------------------------------------

    @operation
    async def setxattr(
        self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        self.workspace.setxattr(inode, name, value)

    @operation
    async def getxattr(
        self, inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> bytes:
        # The kernel asks for security.capability before every write() call,
        # so the usual answer, no such attribute, skips the exception table.
        value = self.workspace.find_xattr(inode, name)
        if value is None:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return value

    @operation
    async def listxattr(
        self, inode: int, ctx: pyfuse3.RequestContext
    ) -> Sequence[bytes]:
        return self.workspace.listxattr(inode)

    @operation
    async def removexattr(
        self, inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        self.workspace.removexattr(inode, name)


def _invalidate_entry(parent: int, name: bytes) -> None:
    try:
        pyfuse3.invalidate_entry(parent, name)
    except FileNotFoundError:
        pass


def _invalidate_attributes(ino: int) -> None:
    try:
        pyfuse3.invalidate_inode(ino, attr_only=True)
    except FileNotFoundError:
        pass
