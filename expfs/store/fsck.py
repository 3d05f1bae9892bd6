"""Check a store: re-hash every object and find what trees reference but lack."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field

from expfs.store.lazy import iter_marks
from expfs.store.objects import Store, hash_file
from expfs.store.trees import Kind, TreeFormatError, decode_tree, tree_digest

log = logging.getLogger(__name__)

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
TMP_MAX_AGE_S = 24 * 3600


@dataclass(frozen=True)
class Problem:
    kind: str  # "corrupt", "missing" or "stray"
    digest: str
    path: str
    detail: str

    def __str__(self) -> str:
        return f"{self.kind} {self.digest} {self.path}: {self.detail}"


@dataclass
class Report:
    blobs_checked: int = 0
    trees_checked: int = 0
    bytes_checked: int = 0
    tmp_removed: int = 0
    reindexed: int = 0
    # Blobs restored lazily that are still only on a remote (not problems):
    # below lazy trees, or single-file outputs with a mark of their own.
    lazy_blobs: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def fsck(store: Store, progress: Callable[[int, int], None] | None = None) -> Report:
    """Re-hash every blob and tree and report each corrupt or missing object."""
    report = Report()
    report.tmp_removed = store.clean_tmp(TMP_MAX_AGE_S)
    on_disk = _check_blob_files(store, report, progress)
    indexed = dict(store.indexed_blobs())
    for digest in indexed:
        if digest not in on_disk:
            report.problems.append(
                Problem(
                    "missing",
                    digest,
                    store.blob_path(digest),
                    "indexed blob has no file",
                )
            )
    _reindex_blobs(store, report, on_disk.keys() - indexed.keys())
    _check_trees(store, report, on_disk.keys())
    return report


def _reindex_blobs(store: Store, report: Report, digests: Iterable[str]) -> None:
    """Index blob files that a writer renamed into place but did not record.

    A writer killed between the rename and the index write leaves such a
    file. It was fsynced before the rename, so its content is complete.
    """
    corrupt = {p.digest for p in report.problems if p.kind == "corrupt"}
    healthy = sorted(d for d in digests if d not in corrupt)
    for digest in healthy:
        size = os.path.getsize(store.blob_path(digest))
        store.index_blob(digest, size)
        log.info(
            "re-indexed blob %s (%d bytes): its file had no index entry", digest, size
        )
    report.reindexed = len(healthy)


def _check_blob_files(
    store: Store, report: Report, progress: Callable[[int, int], None] | None
) -> dict[str, str]:
    """Re-hash every blob file; return {digest: path} of those with object names."""
    on_disk: dict[str, str] = {}
    for name, path in store.iter_blob_files():
        if (
            not _HEX64.match(name)
            or os.path.basename(os.path.dirname(path)) != name[:2]
        ):
            report.problems.append(Problem("stray", name, path, "not an object name"))
            continue
        on_disk[name] = path
        try:
            actual = hash_file(path)
        except OSError as exc:
            report.problems.append(Problem("corrupt", name, path, f"unreadable: {exc}"))
            continue
        report.blobs_checked += 1
        report.bytes_checked += os.path.getsize(path)
        if actual != name:
            report.problems.append(
                Problem("corrupt", name, path, f"content hashes to {actual}")
            )
        if progress is not None:
            progress(report.blobs_checked, report.bytes_checked)
    return on_disk


def _check_trees(store: Store, report: Report, blobs: Collection[str]) -> None:
    """Check every tree; a lazy tree may lack blobs, a complete one may not.

    A complete tree (one without a lazy mark) that references a lazy tree
    breaks the rule that everything below a complete tree is stored.
    """
    trees: dict[str, bytes] = dict(store.iter_trees())
    marks = dict(iter_marks(store))
    lazy = {d for d, mark in marks.items() if mark.kind is Kind.DIRECTORY}
    lazy_blobs = {
        d for d, mark in marks.items() if mark.kind is Kind.FILE and d not in blobs
    }
    where = f"{store.root}/index (trees)"
    for digest, data in trees.items():
        report.trees_checked += 1
        if tree_digest(data) != digest:
            report.problems.append(
                Problem(
                    "corrupt", digest, where, "tree encoding does not hash to its key"
                )
            )
            continue
        try:
            entries = decode_tree(data)
        except TreeFormatError as exc:
            report.problems.append(Problem("corrupt", digest, where, str(exc)))
            continue
        for entry in entries:
            present = (
                entry.digest in trees or store.has_tree(entry.digest)
                if entry.kind is Kind.DIRECTORY
                else entry.digest in blobs
            )
            if not present and digest in lazy and entry.kind is Kind.FILE:
                lazy_blobs.add(entry.digest)
                continue
            if present and digest not in lazy and entry.digest in lazy:
                report.problems.append(
                    Problem(
                        "missing",
                        entry.digest,
                        where,
                        f"lazy tree referenced as {os.fsdecode(entry.name)!r} by "
                        f"tree {digest}, which is marked complete",
                    )
                )
            if not present:
                name = os.fsdecode(entry.name)
                report.problems.append(
                    Problem(
                        "missing",
                        entry.digest,
                        store.blob_path(entry.digest)
                        if entry.kind is not Kind.DIRECTORY
                        else where,
                        f"referenced as {name!r} by tree {digest}",
                    )
                )
    report.lazy_blobs = len(lazy_blobs)
