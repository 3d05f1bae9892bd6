"""User-facing errors.

Each class carries its message and exit status; the CLI prints the message
without a traceback and exits with the status. Lower layers raise these
instead of printing, so library callers and tests see the same text.
"""

from __future__ import annotations


class ExpfsError(Exception):
    """An error a user can act on: the message names the value and the fix."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(ExpfsError):
    """Invalid arguments or input that the user can correct."""

    exit_code = 2


class NotARepository(ExpfsError):
    """The folder is not inside a Git work tree."""


class StoreNotFound(ExpfsError):
    """No `.expfs/` store exists for this repository yet."""


class StoreFormatError(ExpfsError):
    """The store on disk has a format version this expfs does not read."""


class UnknownDigest(ExpfsError):
    """A digest (or a prefix of one) names no object in the store."""


class CorruptObject(ExpfsError):
    """An object's bytes no longer hash to its name."""

    def __init__(self, digest: str, path: str, detail: str = "") -> None:
        why = f" ({detail})" if detail else ""
        super().__init__(
            f"corrupt object {digest} at {path}{why}: its content does not hash "
            "to its name; run `expfs fsck` to list every damaged object and "
            "restore it from a remote or re-create it"
        )
        self.digest = digest
        self.path = path


class MissingObject(ExpfsError):
    """An object that a tree or record references is not in the store."""

    def __init__(self, digest: str, where: str = "") -> None:
        at = f" (referenced by {where})" if where else ""
        super().__init__(
            f"missing object {digest}{at}: the store no longer has it; run "
            "`expfs fsck` to list what is missing and re-create or fetch it"
        )
        self.digest = digest


class SnapshotError(ExpfsError):
    """A folder changed or vanished while it was being snapshotted."""


class DestinationNotEmpty(ExpfsError):
    """A materialize target already holds files."""
