"""`expfs gc --remote`: remove objects that nothing on a remote reaches.

Roots are every valid run-cache entry on the remote, every snapshot pushed
as a root (`roots/<digest>`), and what this clone's experiments and lock
file name. Objects below them are kept. Anything else, and any temporary
upload, is removed only when it is older than the grace period, so an
upload in flight (objects first, its entry last) is never removed before
its entry lands. Leases that ended before the grace period are removed too.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from expfs.remote.backend import TMP_DIR
from expfs.remote.entries import InvalidEntry, list_entries, verify_listed
from expfs.remote.inputs import locked_outputs
from expfs.remote.lease import ended_lease_files
from expfs.remote.runs import ROOTS_DIR, experiment_roots, output_roots, repo_root
from expfs.remote.transfer import OBJECTS_DIR, Remote, object_rel
from expfs.store.objects import Store
from expfs.store.trees import Digest, Kind, TreeFormatError, decode_tree, tree_digest

log = logging.getLogger(__name__)

DEFAULT_GRACE_S = 24 * 3600


@dataclass
class GcReport:
    kept: int = 0
    removed: int = 0
    too_new: int = 0
    temporary_removed: int = 0
    lease_files_removed: int = 0


def collect_roots(store: Store, remote: Remote) -> list[tuple[Kind, Digest]]:
    roots: list[tuple[Kind, Digest]] = []
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
    for rel, _ in remote.backend.walk_files(ROOTS_DIR):
        name = rel.rsplit("/", 1)[-1]
        if len(name) == 64:
            roots.append((Kind.DIRECTORY, Digest(name)))
    roots += experiment_roots(store, [])
    roots += [(Kind(k), d) for k, d in locked_outputs(repo_root(store))]
    return roots


def reachable(
    store: Store, remote: Remote, roots: list[tuple[Kind, Digest]]
) -> set[str]:
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
) -> GcReport:
    """Remove unreachable objects older than `grace_s` seconds from a remote."""
    keep = reachable(store, remote, collect_roots(store, remote))
    cutoff = time.time() - grace_s
    report = GcReport()
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
