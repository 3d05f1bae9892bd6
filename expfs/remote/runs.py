"""What repro, the CLI and the FUSE layer call: look up, record, push, pull.

`remote_lookup` and `remote_record` never raise for a remote that is down
or damaged: a failed lookup is a miss and a failed record is a warning, so
a remote can only make a run faster, never make it fail.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from expfs.errors import CorruptObject, ExpfsError, MissingObject, UsageError
from expfs.remote.backend import RemoteError
from expfs.remote.config import config_files
from expfs.remote.entries import (
    InvalidEntry,
    entry_name,
    list_entries,
    publish_entry,
    read_entry,
    verify_listed,
)
from expfs.remote.inputs import (
    load_inputs,
    locked_outputs,
    remember_lock_inputs,
    save_inputs,
)
from expfs.remote.transfer import (
    CorruptRemoteObject,
    Remote,
    RemoteObjectMissing,
    Stats,
)
from expfs.runcache import RunCache, RunRecord
from expfs.store.lazy import mark_lazy_blob
from expfs.store.objects import Store
from expfs.store.trees import Digest, Kind

if TYPE_CHECKING:
    from expfs.experiments import Experiment

log = logging.getLogger(__name__)
decisions = logging.getLogger("expfs.runcache.decisions")

ROOTS_DIR = "roots"

_FAILURES = (RemoteError, CorruptRemoteObject, RemoteObjectMissing, OSError)


class ReadOnlyRemote(UsageError):
    """A write was requested on a remote configured `--read-only`."""


def open_remote(
    store: Store, name: str | None = None, *, progress: bool = False
) -> Remote:
    """Open the remote `name`, or the default one; raise `UsageError` if none."""
    files = config_files(store.root)
    remotes = files.remotes()
    chosen = name or files.default_name()
    if chosen is None:
        raise UsageError(
            "no remote given and no default remote: add one with "
            "`expfs remote add NAME URL --default`, or pass -r NAME"
        )
    if chosen not in remotes:
        known = ", ".join(sorted(remotes)) or "none"
        raise UsageError(
            f"no remote named {chosen!r} (remotes: {known}): add it with "
            "`expfs remote add`"
        )
    return Remote(remotes[chosen], progress=progress)


def default_remote(store: Store) -> Remote | None:
    """Open the default remote, or return None when there is none or it is unusable.

    For repro: a remote that cannot be opened (server down, backend package
    missing) is logged as a warning and the run goes on without it.
    """
    files = config_files(store.root)
    if files.default_name() is None:
        return None
    try:
        return open_remote(store)
    except ExpfsError as exc:
        log.warning("remote run-cache disabled for this command: %s", exc.message)
        return None


def output_roots(record: RunRecord) -> list[tuple[Kind, Digest]]:
    return [(Kind(o.kind), o.digest) for o in record.outputs]


# -- repro hooks ---------------------------------------------------------------


def remote_lookup(
    store: Store, remote: Remote, run_key: str, stage: str, *, fetch_blobs: bool = True
) -> RunRecord | None:
    """Look up `run_key` on a remote after a local miss; None is a miss.

    On a hit the entry has been verified against its run key, its objects
    fetched and verified, and the entry recorded in the local run-cache.
    With `fetch_blobs=False` (a mounted workspace, which fetches a blob
    when a file is first opened) only trees and symlink targets are
    fetched, and the outputs are stored marked lazy (`expfs.store.lazy`).
    """
    try:
        entry = read_entry(remote, run_key)
        if entry is None:
            decisions.info(
                "miss %s %s: not on remote %s", stage, run_key[:12], remote.name
            )
            return None
        roots = output_roots(entry.record)
        present = remote.has_objects(d for _, d in roots)
        absent = [o.path for o in entry.record.outputs if o.digest not in present]
        if absent:
            decisions.info(
                "incomplete %s %s: remote %s lacks the objects of %s; running instead",
                stage,
                run_key[:12],
                remote.name,
                ", ".join(absent),
            )
            return None
        remote.fetch_objects(store, roots, Stats(), blobs=fetch_blobs)
        if not fetch_blobs:
            for out in entry.record.outputs:
                if out.kind == Kind.FILE:
                    mark_lazy_blob(store, out.digest, out.size, remote.name)
    except _FAILURES as exc:
        log.warning(
            "remote run-cache lookup of stage %s (run key %s) failed, so it is "
            "a miss: %s",
            stage,
            run_key[:12],
            exc,
        )
        return None
    RunCache(store).record(entry.record)
    save_inputs(store, run_key, entry.inputs)
    lazily = "" if fetch_blobs else " (blobs fetched when files are opened)"
    decisions.info("hit %s %s on remote %s%s", stage, run_key[:12], remote.name, lazily)
    return entry.record


def remote_record(
    store: Store,
    remote: Remote,
    record: RunRecord,
    inputs: dict[str, Any] | None = None,
) -> bool:
    """Push a recorded run's objects, then its entry; return True when it is there.

    `inputs` is the document the run key hashes (see `expfs.remote.inputs`);
    without it the inputs saved for the key are used. Any failure is a
    warning naming the stage and run key, so the next push can send it.
    """
    if remote.read_only:
        log.debug(
            "remote %s is read-only: run %s not pushed", remote.name, record.key[:12]
        )
        return False
    if inputs is not None:
        save_inputs(store, record.key, inputs)
    else:
        inputs = load_inputs(store, record.key)
    if inputs is None:
        log.warning(
            "run of stage %s (run key %s) not pushed to remote %s: the inputs of "
            "its run key are unknown; run it again with the remote configured",
            record.stage,
            record.key[:12],
            remote.label,
        )
        return False
    try:
        remote.push_objects(store, output_roots(record), Stats())
        publish_entry(remote, record, inputs)
    except (*_FAILURES, MissingObject, CorruptObject) as exc:
        log.warning(
            "push of stage %s (run key %s) to remote %s failed; the next "
            "`expfs push --run-cache` sends it: %s",
            record.stage,
            record.key[:12],
            remote.label,
            exc,
        )
        return False
    return True


# -- push and pull ---------------------------------------------------------------


def repo_root(store: Store) -> str:
    return os.path.dirname(os.path.abspath(store.root))


def experiment_roots(store: Store, names: Sequence[str]) -> list[tuple[Kind, Digest]]:
    """Return the base and result snapshots of the named experiments (all when
    none named)."""
    return [root for e in _experiments(store, names) for root in _roots_of(e)]


def _experiments(store: Store, names: Sequence[str]) -> list[Experiment]:
    from expfs.experiments import get_experiment, list_experiments

    if names:
        return [get_experiment(store, n) for n in names]
    return list_experiments(store)


def _roots_of(experiment: Experiment) -> list[tuple[Kind, Digest]]:
    roots = [(Kind.DIRECTORY, experiment.base)]
    if experiment.result:
        roots.append((Kind.DIRECTORY, Digest(experiment.result)))
    return roots


def push(
    store: Store, remote: Remote, experiments: Sequence[str], *, run_cache: bool
) -> Stats:
    """Push experiments, the lock file's outputs and, optionally, the run-cache."""
    if remote.read_only:
        raise ReadOnlyRemote(
            f"remote {remote.label} is read-only: push to another remote with -r NAME"
        )
    stats = Stats()
    pushed = _experiments(store, experiments)
    roots = [root for e in pushed for root in _roots_of(e)]
    locked: list[tuple[Kind, Digest]] = []
    if not experiments:
        locked = [(Kind(k), d) for k, d in locked_outputs(repo_root(store))]
    roots = [(k, d) for k, d in roots + locked if _local(store, k, d)]
    remote.push_objects(store, roots, stats)
    # An experiment's record keeps its snapshots on the remote, so only the
    # lock file's outputs get a root mark.
    for kind, digest in locked:
        if kind == Kind.DIRECTORY and (kind, digest) in roots:
            _mark_root(remote, digest)
    _push_records(remote, pushed, set(roots), stats)
    if run_cache:
        _push_entries(store, remote, stats)
    return stats


def _push_records(
    remote: Remote,
    experiments: Sequence[Experiment],
    pushed_roots: set[tuple[Kind, Digest]],
    stats: Stats,
) -> None:
    """Push the record of each experiment whose snapshots are on the remote."""
    from expfs.remote.records import push_record

    for experiment in experiments:
        if not set(_roots_of(experiment)) <= pushed_roots:
            log.warning(
                "record of experiment %s not pushed: its snapshots are not all "
                "in the local store",
                experiment.name,
            )
            continue
        if push_record(remote, experiment):
            stats.experiments += 1


def _local(store: Store, kind: Kind, digest: str) -> bool:
    present = (
        store.has_tree(digest) if kind == Kind.DIRECTORY else store.has_blob(digest)
    )
    if not present:
        log.warning("object %s is not in the local store, so it is not pushed", digest)
    return present


def _mark_root(remote: Remote, digest: str) -> None:
    """Record a pushed snapshot so that `gc --remote` keeps it."""
    from expfs.remote.backend import RemoteFileExists

    try:
        remote.retry(
            "marking a root",
            lambda: remote.backend.put_bytes(f"{ROOTS_DIR}/{digest}", b""),
        )
    except RemoteFileExists:
        pass


def _push_entries(store: Store, remote: Remote, stats: Stats) -> None:
    remember_lock_inputs(store, repo_root(store))
    for record in RunCache(store):
        inputs = load_inputs(store, record.key)
        if inputs is None:
            log.warning(
                "run-cache entry of stage %s (run key %s) not pushed: the inputs "
                "of its run key are unknown (it was recorded before expfs kept "
                "them, and the lock file no longer names it)",
                record.stage,
                record.key[:12],
            )
            stats.entries_skipped += 1
            continue
        try:
            remote.push_objects(store, output_roots(record), stats)
        except (MissingObject, CorruptObject) as exc:
            log.warning(
                "run-cache entry of stage %s (run key %s) not pushed: %s",
                record.stage,
                record.key[:12],
                exc,
            )
            stats.entries_skipped += 1
            continue
        if publish_entry(remote, record, inputs):
            stats.entries += 1
        else:
            stats.entries_present += 1


def pull(
    store: Store,
    remote: Remote,
    experiments: Sequence[str],
    *,
    run_cache: bool,
    all_experiments: bool = False,
) -> Stats:
    """Pull experiments' objects, the lock file's outputs and, optionally, the run-cache.

    A named experiment that only the remote has (pushed by another clone) is
    created here from its record; with `all_experiments`, every one is.
    """
    from expfs.remote.records import pull_records, split_uid

    stats = Stats()
    pull_records(store, remote, experiments, stats, every=all_experiments)
    names = [split_uid(name)[0] for name in experiments]
    roots = experiment_roots(store, names)
    if not experiments:
        roots += [(Kind(k), d) for k, d in locked_outputs(repo_root(store))]
    remote.fetch_objects(store, roots, stats)
    if run_cache:
        _pull_entries(store, remote, stats)
    return stats


def _pull_entries(store: Store, remote: Remote, stats: Stats) -> None:
    runs = RunCache(store)
    chosen: dict[str, Any] = {}
    for rel, data in list_entries(remote):
        try:
            entry = verify_listed(data)
        except InvalidEntry as exc:
            log.warning(
                "rejected run-cache entry %s on remote %s: %s", rel, remote.label, exc
            )
            continue
        if entry_name(entry.record.key, remote.salt) not in rel:
            log.warning(
                "rejected run-cache entry %s on remote %s: it is not stored under "
                "its run key %s",
                rel,
                remote.label,
                entry.record.key[:12],
            )
            continue
        kept = chosen.get(entry.record.key)
        if kept is None or _before(entry, kept, rel):
            chosen[entry.record.key] = (entry, rel)
    for key, (entry, _) in sorted(chosen.items()):
        if runs.lookup(key, entry.record.stage) is not None:
            stats.entries_present += 1
            continue
        try:
            remote.fetch_objects(store, output_roots(entry.record), stats)
        except (CorruptRemoteObject, RemoteObjectMissing) as exc:
            log.warning(
                "run-cache entry of stage %s not pulled: %s", entry.record.stage, exc
            )
            stats.entries_skipped += 1
            continue
        runs.record(entry.record)
        save_inputs(store, key, entry.inputs)
        stats.entries += 1


def _before(entry: Any, kept: Any, rel: str) -> bool:
    """Order entries as readers do: a create-only entry, then the earliest pushed."""
    kept_entry, kept_rel = kept
    created_only = ".d/" not in rel
    kept_created_only = ".d/" not in kept_rel
    if created_only != kept_created_only:
        return created_only
    return (entry.pushed_at, entry.digest) < (kept_entry.pushed_at, kept_entry.digest)
