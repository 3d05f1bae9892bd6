"""Errors for bad stage files, params files and overrides.

Each is a `UsageError` (exit status 2) whose message names the file, the
line or stage, the value, and what to change.
"""

from __future__ import annotations

from expfs.errors import UsageError


class StageFileError(UsageError):
    """A stage file (`dvc.yaml`) that cannot be read as a pipeline."""


class TemplateError(StageFileError):
    """A `${...}` expression that does not resolve."""


class ParamsError(UsageError):
    """A params file that is missing, unreadable, or lacks a requested key."""


class PathOutsideWorkspace(StageFileError):
    """A path in a stage that is absolute or leaves the workspace."""


class DagError(StageFileError):
    """Stages whose outputs and dependencies do not form a valid graph."""


class OverrideError(UsageError):
    """A `-S [file:]key=value` override that is malformed or does not apply."""
