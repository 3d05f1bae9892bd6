"""`expfs gc`: remove the objects that nothing reaches.

Roots, each kept with everything below it:

- each experiment's base and result snapshots;
- each workspace's inode table: its base tree and every digest an inode
  record names (a clean file's blob, a directory's base tree, a grafted
  blob or tree, restored lazily or not). Upper files belong to the
  workspace and are not objects;
- the outputs of every run-cache entry;
- the outputs and dependencies named by every `expfs.lock` in any ref
  (`git for-each-ref`: branches, tags, remote branches, the stash), in HEAD
  and in the checkout of every Git worktree;
- the backups `expfs exp apply` saved.

Safety while experiments run. The store's writers (blob puts, snapshots,
grafts) take no lock that gc could hold, so gc protects what is being
written by age, with a grace period (default one hour):

- a blob file younger than the grace period is kept. Its age comes from
  its ctime, which the store's chmod and rename into place set;
- a tree has no time of its own in the index, so gc records when it first
  saw each tree (`gc/trees-seen` under the store). A tree first seen less
  than the grace period ago is kept, with everything below it. So the first
  gc of a store removes no trees unless `--grace 0` is given.

A writer that has stored some objects but not yet the record that
references them (a snapshot being taken, a stage whose run-cache entry is
not written yet) loses nothing as long as it finishes within the grace
period. The roots are read a second time after marking, and what they
reach is kept too, so a record written while gc was marking counts.

Marks of lazy restores (see `expfs.store.lazy`) go with their objects: a
removed tree's mark is removed with it, and a blob's mark once the blob is
fetched or, past the grace period, when nothing reaches it. A mark only
records where blobs are, and gc never fetches.

NOTE: a writer that finds an old, unreachable object already present (so
it does not write it again) and records a reference to it after gc's second
look can still lose it. Closing that gap needs the store's put paths to
refresh the time of an object they find present, or to check a gc lock.
"""

from __future__ import annotations

import logging
import os
import struct
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import yaml

from expfs.errors import ExpfsError
from expfs.store import layout
from expfs.store.lazy import clear_marks, iter_marks
from expfs.store.objects import Store
from expfs.store.trees import Digest, Kind, TreeFormatError, decode_tree, raw
from expfs.text import plural

log = logging.getLogger(__name__)

DEFAULT_GRACE_S = 3600.0
GC_DIR = "gc"
TREES_SEEN_FILE = "trees-seen"
_SEEN_RECORD = struct.Struct(">32sd")


class CorruptTreeDuringGc(ExpfsError):
    """A tree that gc must read is corrupt, so gc cannot know what it needs."""


@dataclass
class GcReport:
    """Counts of the objects gc removed (or would remove, with `dry_run`) and kept."""

    blobs_removed: int = 0
    blob_bytes_removed: int = 0
    trees_removed: int = 0
    tree_bytes_removed: int = 0
    blobs_kept: int = 0
    trees_kept: int = 0
    young_blobs_kept: int = 0
    young_trees_kept: int = 0
    # (kind, digest, size in bytes) of every removed object, blobs and trees.
    removed: list[tuple[str, Digest, int]] = field(default_factory=list)

    @property
    def bytes_removed(self) -> int:
        return self.blob_bytes_removed + self.tree_bytes_removed


# -- roots -----------------------------------------------------------------------


def experiment_roots(store: Store) -> Iterator[str]:
    from expfs.experiments import list_experiments

    for experiment in list_experiments(store):
        yield experiment.base
        if experiment.result:
            yield experiment.result


def workspace_roots(store: Store) -> Iterator[str]:
    """Yield every digest that a workspace's inode table names.

    A mounted workspace's table is read while its daemon writes it: LMDB
    readers see the last committed state, and a graft commits its digest in
    the same transaction as the entry that names it.
    """
    from expfs.store.lmdbenv import open_environment
    from expfs.workspace.inodes import (
        DB_INODES,
        DB_META,
        META_KEY,
        WORKSPACE_DATABASES,
        Meta,
        decode_record,
    )

    folder = os.path.join(store.root, layout.WORKSPACES_DIR)
    try:
        names = sorted(os.listdir(folder))
    except FileNotFoundError:
        return
    for name in names:
        lmdb_dir = os.path.join(folder, name, "lmdb")
        if not os.path.isfile(os.path.join(lmdb_dir, "data.mdb")):
            continue
        # NOTE: the environment stays open for the rest of the process: this
        # process may already serve the workspace, and LMDB forbids opening
        # one environment twice in a process.
        env = open_environment(lmdb_dir, WORKSPACE_DATABASES, sync=False)
        meta = env.get(DB_META, META_KEY)
        if meta is not None:
            yield Meta.decode(meta).base
        for value in env.read(partial(_inode_values, handle=env.db(DB_INODES))):
            record = decode_record(value)
            if record.digest is not None:
                yield record.digest


def _inode_values(txn: Any, handle: Any) -> list[bytes]:
    return [bytes(v) for _, v in txn.cursor(db=handle)]


def run_cache_roots(store: Store) -> Iterator[str]:
    from expfs.runcache import RunCache

    for record in RunCache(store):
        for out in record.outputs:
            yield out.digest


def lock_file_digests(data: bytes, where: str) -> list[str]:
    """Return the digests of the outputs and dependencies a lock file names."""
    try:
        document = yaml.safe_load(data) or {}
    except yaml.YAMLError as exc:
        log.warning("gc: %s is not valid YAML, so it keeps nothing: %s", where, exc)
        return []
    stages = document.get("stages") if isinstance(document, dict) else None
    found: list[str] = []
    for stage in (stages or {}).values():
        if not isinstance(stage, dict):
            continue
        for key in ("outs", "deps"):
            for item in stage.get(key) or []:
                if isinstance(item, dict) and isinstance(item.get("blake3"), str):
                    found.append(item["blake3"])
    return found


def promoted_lock_roots(repo: str) -> Iterator[str]:
    """Yield the digests named by lock files in refs, HEAD and worktree checkouts."""
    from expfs.gitio import run_git, worktree_lock_files
    from expfs.repro.lockfile import LOCK_NAME

    refs = run_git(repo, "for-each-ref", "--format=%(refname)").stdout.split()
    trees: set[bytes] = set()
    for ref in [b"HEAD", *refs]:
        proc = run_git(
            repo,
            "rev-parse",
            "-q",
            "--verify",
            ref.decode() + "^{tree}",
            ok_codes=(0, 1),
        )
        if proc.returncode == 0:
            trees.add(proc.stdout.strip())
    oids: dict[bytes, str] = {}
    for tree in sorted(trees):
        out = run_git(repo, "ls-tree", "-r", "-z", tree.decode()).stdout
        for row in out.split(b"\0"):
            meta, _, path = row.partition(b"\t")
            if os.path.basename(path) != LOCK_NAME.encode():
                continue
            _, kind, oid = meta.split()
            if kind == b"blob":
                where = f"{os.fsdecode(path)} in tree {tree[:12].decode()}"
                oids.setdefault(oid, where)
    for oid, where in oids.items():
        data = run_git(repo, "cat-file", "blob", oid.decode()).stdout
        yield from lock_file_digests(data, where)
    for worktree in _worktree_paths(repo):
        for rel in worktree_lock_files(worktree):
            lock_path = os.path.join(worktree, rel)
            with open(lock_path, "rb") as f:
                yield from lock_file_digests(f.read(), lock_path)


def _worktree_paths(repo: str) -> list[str]:
    from expfs.gitio import run_git

    out = run_git(repo, "worktree", "list", "--porcelain").stdout.decode()
    paths = [
        line[len("worktree ") :]
        for line in out.splitlines()
        if line.startswith("worktree ")
    ]
    return [p for p in paths if os.path.isdir(p)]


def backup_roots(store: Store) -> Iterator[str]:
    from expfs.gitio import list_backups

    for _, record in list_backups(store):
        yield record["snapshot"]


def collect_roots(store: Store) -> set[str]:
    """Return every digest that gc must keep with everything below it."""
    from expfs.experiments import repo_root

    roots: set[str] = set()
    roots.update(experiment_roots(store))
    roots.update(workspace_roots(store))
    roots.update(run_cache_roots(store))
    roots.update(promoted_lock_roots(repo_root(store)))
    roots.update(backup_roots(store))
    return roots


# -- mark ------------------------------------------------------------------------


def mark(
    store: Store,
    roots: Iterable[str],
    trees: dict[Digest, bytes],
    seen: set[str] | None = None,
) -> set[str]:
    """Return the digests of every object reachable from `roots`, added to `seen`.

    `trees` is the index's trees read at the start; a tree written since is
    read from the index. A root that names no object is skipped.
    """
    seen = set() if seen is None else seen
    pending = list(roots)
    while pending:
        digest = pending.pop()
        if digest in seen:
            continue
        seen.add(digest)
        data = trees.get(Digest(digest))
        if data is None:
            data = store.tree_bytes(digest)
        if data is None:
            continue  # a blob, or an object that is gone
        try:
            entries = decode_tree(data)
        except TreeFormatError as exc:
            raise CorruptTreeDuringGc(
                f"tree {digest} is corrupt ({exc}): gc removed nothing; run "
                "`expfs fsck` to list the damage"
            ) from exc
        pending += [e.digest for e in entries if e.digest not in seen]
    return seen


# -- first-seen times of trees ---------------------------------------------------


def _seen_path(store: Store) -> str:
    return os.path.join(store.root, GC_DIR, TREES_SEEN_FILE)


def read_trees_seen(store: Store) -> dict[Digest, float]:
    try:
        with open(_seen_path(store), "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return {}
    usable = len(data) - len(data) % _SEEN_RECORD.size
    return {
        Digest(key.hex()): when for key, when in _SEEN_RECORD.iter_unpack(data[:usable])
    }


def write_trees_seen(store: Store, seen: dict[Digest, float]) -> None:
    path = _seen_path(store)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    temp = f"{path}.tmp.{os.getpid()}"
    with open(temp, "wb") as f:
        for digest, when in seen.items():
            f.write(_SEEN_RECORD.pack(raw(digest), when))
        f.flush()
        os.fsync(f.fileno())
    os.rename(temp, path)


# -- sweep -----------------------------------------------------------------------


def _blob_age_s(path: str, now: float) -> float | None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return now - max(st.st_ctime, st.st_mtime)


def gc(
    store: Store, *, grace_s: float = DEFAULT_GRACE_S, dry_run: bool = False
) -> GcReport:
    """Remove blobs and trees that no root reaches and that are older than `grace_s`."""
    now = time.time()
    trees = dict(store.iter_trees())
    seen = read_trees_seen(store)
    seen = {d: seen.get(d, now) for d in trees}

    young_trees = {d for d, first in seen.items() if now - first < grace_s}
    reached = mark(store, collect_roots(store), trees)
    report = GcReport()
    report.young_trees_kept = len(young_trees - reached)
    keep = mark(store, young_trees, trees, set(reached))
    doomed_trees = [d for d in trees if d not in keep]
    doomed_blobs: list[tuple[Digest, str, int]] = []
    for name, path in store.iter_blob_files():
        if name in reached:
            report.blobs_kept += 1
            continue
        age = _blob_age_s(path, now)
        if age is None:
            continue
        if name in keep or age < grace_s:
            report.young_blobs_kept += 1
            continue
        doomed_blobs.append((Digest(name), path, os.lstat(path).st_size))

    # Records written while gc marked: what they reach is kept after all.
    second = mark(store, collect_roots(store), trees)
    doomed_trees = [d for d in doomed_trees if d not in second]
    doomed_blobs = [b for b in doomed_blobs if b[0] not in second]
    report.trees_kept = len(trees) - len(doomed_trees)

    for digest in doomed_trees:
        report.trees_removed += 1
        report.tree_bytes_removed += len(trees[digest])
        report.removed.append(("tree", digest, len(trees[digest])))
    for digest, _, size in doomed_blobs:
        report.blobs_removed += 1
        report.blob_bytes_removed += size
        report.removed.append(("blob", digest, size))
    doomed_marks = _doomed_marks(store, second | keep, set(doomed_trees), now, grace_s)
    if dry_run:
        return report

    _delete_trees(store, doomed_trees)
    _delete_blobs(store, doomed_blobs)
    clear_marks(store, doomed_marks)
    for digest in doomed_trees:
        seen.pop(digest, None)
    write_trees_seen(store, seen)
    log.info(
        "gc removed %s (%s) and %s",
        plural(report.blobs_removed, "blob"),
        plural(report.blob_bytes_removed, "byte"),
        plural(report.trees_removed, "tree"),
    )
    return report


def _doomed_marks(
    store: Store, kept: set[str], doomed_trees: set[Digest], now: float, grace_s: float
) -> list[Digest]:
    """Return the lazy marks to drop: those of removed trees, fetched blobs,
    and blobs nothing reaches once the grace period has passed."""
    doomed: list[Digest] = []
    for digest, mark in iter_marks(store):
        if mark.kind is Kind.DIRECTORY:
            if digest in doomed_trees or not store.has_tree(digest):
                doomed.append(digest)
        elif store.has_blob(digest):
            doomed.append(digest)
        elif digest not in kept and now - mark.marked_at >= grace_s:
            doomed.append(digest)
    return doomed


def _delete_trees(store: Store, digests: list[Digest]) -> None:
    handle = store.env.db(layout.DB_TREES)
    keys = [raw(d) for d in digests]

    def write(txn: Any) -> None:
        for key in keys:
            txn.delete(key, db=handle)

    store.env.write(write)


def _delete_blobs(store: Store, blobs: list[tuple[Digest, str, int]]) -> None:
    """Drop blobs from the index, then unlink their files.

    In that order, a crash between the two leaves files without index
    entries, which `expfs fsck` indexes again, never entries without files.
    """
    handle = store.env.db(layout.DB_BLOBS)
    keys = [raw(d) for d, _, _ in blobs]

    def write(txn: Any) -> None:
        for key in keys:
            txn.delete(key, db=handle)

    store.env.write(write)
    for _, path, _ in blobs:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
