"""The `.git` file a mount shows at its root, pointing Git at the experiment.

The file contains `gitdir: <the experiment's worktree git folder>`, so Git run
anywhere in the mount works on that worktree (detached at the base commit,
with its own index) and stops walking up there instead of reaching the
user's repository when the mount sits inside it. The daemon synthesizes
the file: it is in no workspace, so no snapshot contains it, and it is left
out of directory listings so that `cp -a`, `tar` and `rm -rf` of the mount
root do not meet it. Git finds it by lookup, which is all Git needs.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from typing import Any

import pyfuse3

GIT_NAME = b".git"
# Inode and file handle numbers that the workspace never hands out: the
# workspace counts up from 1, so the top of the 63-bit range stays free.
GITLINK_INODE = (1 << 63) - 2
GITLINK_HANDLE = (1 << 63) - 2
ATTR_TIMEOUT_S = 300.0


class GitLinkMixin:
    """Operations mixin that serves one read-only `.git` file at the root.

    Put it before the workspace's operations class in the bases; every call
    that is not about the `.git` file goes to that class unchanged.
    """

    gitlink_content: bytes = b""
    _gitlink_time_ns: int = 0

    def set_gitlink(self, gitdir: str) -> None:
        self.gitlink_content = b"gitdir: " + os.fsencode(gitdir) + b"\n"
        self._gitlink_time_ns = time.time_ns()

    def _gitlink_attrs(self) -> pyfuse3.EntryAttributes:
        attrs = pyfuse3.EntryAttributes()
        attrs.st_ino = pyfuse3.InodeT(GITLINK_INODE)
        attrs.st_mode = stat.S_IFREG | 0o444
        attrs.st_nlink = 1
        attrs.st_uid = os.getuid()
        attrs.st_gid = os.getgid()
        attrs.st_size = len(self.gitlink_content)
        attrs.st_blksize = 4096
        attrs.st_blocks = 1
        attrs.st_atime_ns = attrs.st_mtime_ns = attrs.st_ctime_ns = (
            self._gitlink_time_ns
        )
        attrs.entry_timeout = ATTR_TIMEOUT_S
        attrs.attr_timeout = ATTR_TIMEOUT_S
        return attrs

    def _is_gitlink(self, parent_inode: int, name: bytes) -> bool:
        return (
            bool(self.gitlink_content)
            and parent_inode == pyfuse3.ROOT_INODE
            and name == GIT_NAME
        )

    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> Any:
        if self._is_gitlink(parent_inode, name):
            return self._gitlink_attrs()
        return await super().lookup(parent_inode, name, ctx)  # type: ignore[misc]

    async def getattr(self, inode: int, ctx: Any = None) -> Any:
        if inode == GITLINK_INODE:
            return self._gitlink_attrs()
        return await super().getattr(inode, ctx)  # type: ignore[misc]

    async def setattr(
        self, inode: int, attr: Any, fields: Any, fh: Any, ctx: Any
    ) -> Any:
        if inode == GITLINK_INODE:
            raise pyfuse3.FUSEError(errno.EPERM)
        return await super().setattr(inode, attr, fields, fh, ctx)  # type: ignore[misc]

    async def forget(self, inode_list: Any) -> None:
        rest = [(ino, n) for ino, n in inode_list if ino != GITLINK_INODE]
        if rest:
            await super().forget(rest)  # type: ignore[misc]

    async def open(self, inode: int, flags: int, ctx: Any) -> Any:
        if inode == GITLINK_INODE:
            if flags & os.O_ACCMODE != os.O_RDONLY:
                raise pyfuse3.FUSEError(errno.EPERM)
            return pyfuse3.FileInfo(fh=GITLINK_HANDLE, keep_cache=True)
        return await super().open(inode, flags, ctx)  # type: ignore[misc]

    async def read(self, fh: int, off: int, size: int) -> bytes:
        if fh == GITLINK_HANDLE:
            return self.gitlink_content[off : off + size]
        result: bytes = await super().read(fh, off, size)  # type: ignore[misc]
        return result

    async def flush(self, fh: int) -> None:
        if fh != GITLINK_HANDLE:
            await super().flush(fh)  # type: ignore[misc]

    async def fsync(self, fh: int, datasync: bool) -> None:
        if fh != GITLINK_HANDLE:
            await super().fsync(fh, datasync)  # type: ignore[misc]

    async def release(self, fh: int) -> None:
        if fh != GITLINK_HANDLE:
            await super().release(fh)  # type: ignore[misc]

    async def getxattr(self, inode: int, name: bytes, ctx: Any) -> bytes:
        if inode == GITLINK_INODE:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        value: bytes = await super().getxattr(inode, name, ctx)  # type: ignore[misc]
        return value

    async def listxattr(self, inode: int, ctx: Any) -> Any:
        if inode == GITLINK_INODE:
            return []
        return await super().listxattr(inode, ctx)  # type: ignore[misc]

    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: Any) -> None:
        if inode == GITLINK_INODE:
            raise pyfuse3.FUSEError(errno.EPERM)
        await super().setxattr(inode, name, value, ctx)  # type: ignore[misc]

    async def removexattr(self, inode: int, name: bytes, ctx: Any) -> None:
        if inode == GITLINK_INODE:
            raise pyfuse3.FUSEError(errno.EPERM)
        await super().removexattr(inode, name, ctx)  # type: ignore[misc]

    def _reject_gitlink(self, parent_inode: int, name: bytes) -> None:
        if self._is_gitlink(parent_inode, name):
            raise pyfuse3.FUSEError(errno.EPERM)

    async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        self._reject_gitlink(parent_inode, name)
        await super().unlink(parent_inode, name, ctx)  # type: ignore[misc]

    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        self._reject_gitlink(parent_inode, name)
        await super().rmdir(parent_inode, name, ctx)  # type: ignore[misc]

    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: Any,
    ) -> None:
        self._reject_gitlink(parent_inode_old, name_old)
        self._reject_gitlink(parent_inode_new, name_new)
        await super().rename(  # type: ignore[misc]
            parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx
        )

    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: Any
    ) -> Any:
        if inode == GITLINK_INODE:
            raise pyfuse3.FUSEError(errno.EPERM)
        self._reject_gitlink(new_parent_inode, new_name)
        return await super().link(inode, new_parent_inode, new_name, ctx)  # type: ignore[misc]


def with_gitlink(operations_class: type) -> type:
    """Return a subclass of `operations_class` that shows the `.git` file."""
    return type(
        f"GitLink{operations_class.__name__}", (GitLinkMixin, operations_class), {}
    )
