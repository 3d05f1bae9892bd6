"""`expfs gc --remote`: remove objects that nothing on a remote reaches.

Roots are every valid run-cache entry on the remote, every valid experiment
record on it, every snapshot marked as a root (`roots/<digest>`: lock-file
outputs that push sends, results of cluster workers, and every experiment
snapshot that push sent before records kept their own), and what this
clone's experiments and lock file name. Objects below them are kept.
Anything else, and any temporary upload, is removed only when it is older
than the grace period, so an upload in flight (objects first, its entry or
record last) is never removed before its entry or record lands. Leases
that ended before the grace period are removed too.

A remote is shared, and one clone cannot tell whether another still uses
an experiment's record, so records stay until a user names them
(`experiments`): then every version of each is removed, with the root
marks of its snapshots unless another root names them. A version that a
newer version of the same record replaced is never read again, so it goes
once it is older than the grace period.

NOTE: a pusher that finds an old, unreachable object already on the remote
(so it does not upload it again) and writes its entry or record after gc
listed the roots can still lose that object.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from expfs.errors import UsageError
from expfs.remote.backend import TMP_DIR
from expfs.remote.entries import InvalidEntry, list_entries, verify_listed
from expfs.remote.inputs import locked_outputs
from expfs.remote.lease import ended_lease_files
from expfs.remote.records import RecordFile, latest, list_record_files, split_uid
from expfs.remote.runs import ROOTS_DIR, experiment_roots, output_roots, repo_root
from expfs.remote.transfer import OBJECTS_DIR, Remote, object_rel
from expfs.store.objects import Store
from expfs.store.trees import Digest, Kind, TreeFormatError, decode_tree, tree_digest

log = logging.getLogger(__name__)

DEFAULT_GRACE_S = 24 * 3600

Root = tuple[Kind, Digest]


@dataclass
class GcReport:
    kept: int = 0
    removed: int = 0
    too_new: int = 0
    temporary_removed: int = 0
    lease_files_removed: int = 0
    # The latest version of each experiment record removed on request.
    records_removed: list[RecordFile] = field(default_factory=list)
    record_versions_removed: int = 0
    root_marks_removed: int = 0


@dataclass
class RecordPlan:
    """The record files that gc removes, and the snapshots of those it keeps."""

    requested: list[RecordFile] = field(default_factory=list)
    superseded: list[RecordFile] = field(default_factory=list)
    kept_roots: list[Root] = field(default_factory=list)

    def released(self) -> set[str]:
        """Return the snapshots named by the record files that go."""
        return {
            digest
            for file in (*self.requested, *self.superseded)
            if file.record is not None
            for _, digest in file.record.roots()
        }


def plan_records(
    remote: Remote, requested: Sequence[str], cutoff: float
) -> tuple[RecordPlan, list[RecordFile]]:
    """Sort the remote's record files into removed and kept.

    `requested` contains names, shell-style patterns or NAME@ID; every version
    of each experiment they match goes. Raises `UsageError` when one
    matches nothing, before anything is removed. Also returns the latest
    version of each requested experiment, for the report.
    """
    groups: dict[tuple[str, str], list[RecordFile]] = {}
    for file in list_record_files(remote):
        groups.setdefault((file.name, file.uid), []).append(file)
    chosen = _match(remote, groups, requested)
    plan = RecordPlan()
    latest_removed: list[RecordFile] = []
    for key, files in sorted(groups.items()):
        if key in chosen:
            plan.requested += files
            latest_removed.append(_newest(files))
            continue
        valid = [f.record for f in files if f.record is not None]
        if not valid:
            continue
        newest = latest(valid)
        plan.kept_roots += newest.roots()
        for file in files:
            if file.record is None or file.record is newest:
                continue
            if file.mtime <= cutoff:
                plan.superseded.append(file)
            else:
                plan.kept_roots += file.record.roots()
    return plan, latest_removed


def _match(
    remote: Remote,
    groups: dict[tuple[str, str], list[RecordFile]],
    requested: Sequence[str],
) -> set[tuple[str, str]]:
    chosen: set[tuple[str, str]] = set()
    unmatched: list[str] = []
    for pattern in requested:
        name_pattern, uid_prefix = split_uid(pattern)
        found = {
            (name, uid)
            for name, uid in groups
            if fnmatchcase(name, name_pattern)
            and (uid_prefix is None or uid.startswith(uid_prefix))
        }
        if not found:
            unmatched.append(pattern)
        chosen |= found
    if unmatched and not groups:
        raise UsageError(
            f"remote {remote.label} has no experiment records, so nothing was "
            "removed: `expfs push EXP` puts them there"
        )
    if unmatched:
        listed = ", ".join(repr(p) for p in unmatched)
        raise UsageError(
            f"no experiment record on remote {remote.label} matches {listed}, so "
            f"nothing was removed: `expfs gc --remote {remote.name} --experiments "
            "'*' --dry-run` lists the records there"
        )
    return chosen


def _newest(files: list[RecordFile]) -> RecordFile:
    valid = [f.record for f in files if f.record is not None]
    if not valid:
        return files[0]
    newest = latest(valid)
    return next(f for f in files if f.record is newest)


def collect_roots(
    store: Store, remote: Remote, plan: RecordPlan | None = None
) -> tuple[list[Root], set[str]]:
    """Return the roots gc keeps, and the root marks it removes.

    Without `plan`, every valid record is a root and no mark goes.
    """
    if plan is None:
        plan, _ = plan_records(remote, (), cutoff=float("-inf"))
    roots: list[Root] = []
    for rel, data in list_entries(remote):
        try:
            roots += output_roots(verify_listed(data).record)
        except InvalidEntry as exc:
            log.warning(
                "gc: invalid entry %s on remote %s kept as is: %s",
                rel,
                remote.label,
                exc,
            )
    roots += plan.kept_roots
    roots += experiment_roots(store, [])
    roots += [(Kind(k), d) for k, d in locked_outputs(repo_root(store))]
    named = {digest for _, digest in roots}
    released = plan.released() - named
    dropped: set[str] = set()
    for rel, _ in remote.backend.walk_files(ROOTS_DIR):
        name = rel.rsplit("/", 1)[-1]
        if len(name) != 64:
            continue
        if name in released:
            dropped.add(name)
        else:
            roots.append((Kind.DIRECTORY, Digest(name)))
    return roots, dropped


def reachable(store: Store, remote: Remote, roots: list[Root]) -> set[str]:
    """Return every digest below `roots`, reading trees locally or from the remote."""
    seen: set[str] = set()
    pending = list(roots)
    while pending:
        kind, digest = pending.pop()
        if digest in seen:
            continue
        seen.add(digest)
        if kind != Kind.DIRECTORY:
            continue
        data = store.tree_bytes(digest)
        if data is None:
            try:
                data = remote.backend.read_bytes(object_rel(digest))
            except FileNotFoundError:
                continue
        try:
            if tree_digest(data) != digest:
                raise TreeFormatError("digest mismatch")
            entries = decode_tree(data)
        except TreeFormatError:
            log.warning(
                "gc: tree %s on remote %s is corrupt; its children may be removed",
                digest,
                remote.label,
            )
            continue
        pending += [(e.kind, e.digest) for e in entries]
    return seen


def gc_remote(
    store: Store,
    remote: Remote,
    *,
    grace_s: float = DEFAULT_GRACE_S,
    dry_run: bool = False,
    experiments: Sequence[str] = (),
) -> GcReport:
    """Remove unreachable objects older than `grace_s` seconds from a remote.

    With `experiments` (names, patterns or NAME@ID), remove those
    experiments' records first, so that what only they kept goes too.
    """
    cutoff = time.time() - grace_s
    plan, latest_removed = plan_records(remote, experiments, cutoff)
    roots, dropped = collect_roots(store, remote, plan)
    keep = reachable(store, remote, roots)
    report = GcReport(
        records_removed=latest_removed,
        record_versions_removed=len(plan.superseded),
        root_marks_removed=len(dropped),
    )
    if not dry_run:
        _remove_records(remote, plan, dropped)
    for rel, mtime in list(remote.backend.walk_files(OBJECTS_DIR)):
        digest = rel.rsplit("/", 1)[-1]
        if digest in keep:
            report.kept += 1
        elif mtime > cutoff:
            report.too_new += 1
        else:
            report.removed += 1
            if not dry_run:
                remote.backend.delete(rel)
    for rel, mtime in list(remote.backend.walk_files(TMP_DIR)):
        if mtime <= cutoff:
            report.temporary_removed += 1
            if not dry_run:
                remote.backend.delete(rel)
    for rel in ended_lease_files(remote, cutoff):
        report.lease_files_removed += 1
        if not dry_run:
            remote.backend.delete(rel)
    return report


def _remove_records(remote: Remote, plan: RecordPlan, dropped: set[str]) -> None:
    # Marks go before records: a gc stopped in between leaves records that
    # still keep their snapshots, never marks that keep them forever.
    for digest in sorted(dropped):
        remote.backend.delete(f"{ROOTS_DIR}/{digest}")
    for file in plan.requested:
        remote.backend.delete(file.rel)
        log.info("removed experiment record %s from remote %s", file.rel, remote.label)
    folders = {file.rel.rsplit("/", 1)[0] for file in plan.requested}
    for folder in sorted(folders):
        remote.backend.remove_empty_folder(folder)
    for folder in sorted({f.rsplit("/", 1)[0] for f in folders}):
        remote.backend.remove_empty_folder(folder)
    for file in plan.superseded:
        remote.backend.delete(file.rel)
        log.info(
            "removed record version %s from remote %s: a newer version replaced it",
            file.rel,
            remote.label,
        )
