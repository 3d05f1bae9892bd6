"""Errors a workspace operation raises; the FUSE layer maps each to an errno."""

from __future__ import annotations

from expfs.errors import ExpfsError


class WorkspaceError(Exception):
    """A filesystem operation that cannot be done, as POSIX defines it."""


class NotFound(WorkspaceError):
    """No entry of that name, or an inode the workspace does not know."""


class AlreadyExists(WorkspaceError):
    """The name is taken and the operation may not replace it."""


class NotADirectory(WorkspaceError):
    """A directory was expected."""


class IsADirectory(WorkspaceError):
    """A non-directory was expected."""


class DirectoryNotEmpty(WorkspaceError):
    """The directory still has entries."""


class NameTooLong(WorkspaceError):
    """A name of more than 255 bytes."""


class InvalidArgument(WorkspaceError):
    """A name, flag or value the operation does not accept."""


class NotPermitted(WorkspaceError):
    """The workspace does not support this kind of file (devices)."""


class NoAttribute(WorkspaceError):
    """No extended attribute of that name."""


class NotSupported(WorkspaceError):
    """An extended attribute namespace the workspace does not store."""


class WorkspaceNotFound(ExpfsError):
    """No workspace of that name in the store."""


class WorkspaceExists(ExpfsError):
    """A workspace of that name exists already."""


class WorkspaceBusy(ExpfsError):
    """Another process serves the workspace."""
