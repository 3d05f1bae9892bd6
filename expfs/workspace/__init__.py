"""Workspaces: a mutable inode table over a base snapshot, copy-on-write."""

from expfs.workspace.errors import (
    WorkspaceBusy,
    WorkspaceError,
    WorkspaceExists,
    WorkspaceNotFound,
)
from expfs.workspace.inodes import ROOT_INO, Ino
from expfs.workspace.workspace import Node, Workspace

__all__ = [
    "ROOT_INO",
    "Ino",
    "Node",
    "Workspace",
    "WorkspaceBusy",
    "WorkspaceError",
    "WorkspaceExists",
    "WorkspaceNotFound",
]
