"""Paths in stage files: normalising them and keeping them inside the workspace."""

from __future__ import annotations

import os
import posixpath
from pathlib import Path, PurePosixPath

from expfs.pipeline.errors import PathOutsideWorkspace


def workspace_path(base: str, path: str) -> str | None:
    """Join `path` to the workspace-relative folder `base` and normalise it.

    Returns the POSIX path relative to the workspace root ("." for the root
    itself), or None when `path` is absolute or climbs out with `..`.
    """
    if PurePosixPath(path).is_absolute() or path.startswith("~"):
        return None
    joined = posixpath.normpath(posixpath.join(base or ".", path))
    if joined == ".." or joined.startswith("../") or joined.startswith("/"):
        return None
    return joined


def is_within(inner: str, outer: str) -> bool:
    """Tell whether workspace path `inner` is `outer` or lies below it."""
    if outer == ".":
        return True
    return inner == outer or inner.startswith(outer.rstrip("/") + "/")


def check_inside(root: Path | str, path: Path | str) -> Path:
    """Resolve `path` (relative to `root`) through symlinks and check it stays inside.

    Returns the resolved absolute path. Components that do not exist yet are
    kept as written, so an output that a command has not created is checked
    through the folders above it. Raises PathOutsideWorkspace otherwise.
    """
    real_root = Path(os.path.realpath(root))
    candidate = Path(root, path)
    resolved = Path(os.path.realpath(candidate))
    if resolved != real_root and real_root not in resolved.parents:
        raise PathOutsideWorkspace(
            f"path '{path}' resolves to '{resolved}', outside the workspace "
            f"'{real_root}' (through a symlink or '..'); point it at a path "
            "inside the workspace"
        )
    return resolved
