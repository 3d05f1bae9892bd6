"""Experiment records on a remote: pushed by one clone, pulled by another.

A record carries what `exp show`, `exp diff` and `exp promote` read: base
snapshot and commit, overrides, params, metrics, status and the result
snapshot. It is a JSON document (format `RECORD_FORMAT`) stored as

    experiments/<name>/<uid>/<digest>

`uid` names one experiment across clones: the BLAKE3 digest of its name,
base commit, base snapshot and creation time, so two clones' experiments of
the same name never share a folder. Each push of a changed record (after a
re-run) adds a version named by the digest of its bytes, written
create-only where the backend enforces it and never replaced. A reader
takes the version with the latest `pushed_at`, then the smallest digest.
A record is pushed only after the objects of its base and result.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import blake3

from expfs.errors import ExpfsError, UsageError
from expfs.experiments import Experiment, ExperimentExists, ExperimentNotFound
from expfs.remote.backend import RemoteFileExists
from expfs.remote.transfer import Remote, Stats
from expfs.store.objects import Store
from expfs.store.trees import Digest, Kind, raw

log = logging.getLogger(__name__)

RECORDS_DIR = "experiments"
RECORD_FORMAT = 1
_UID_MAGIC = b"expfs-experiment-uid"
UID_CHARS = 32
# `NAME@UID` picks one of several experiments of one name; a uid prefix of
# at least this many hex digits is accepted.
MIN_UID_PREFIX = 6
_UID_SUFFIX = re.compile(rf"^(.+)@([0-9a-f]{{{MIN_UID_PREFIX},{UID_CHARS}}})$")
# The fields of `Experiment` that a record carries; `gitdir` is local.
RECORD_FIELDS = (
    "name",
    "base",
    "base_commit",
    "created",
    "status",
    "overrides",
    "params",
    "metrics",
    "result",
    "started",
    "finished",
    "error",
)


class InvalidRecord(ValueError):
    """A record on a remote that readers must reject; the message gives the reason."""


@dataclass(frozen=True)
class RemoteRecord:
    """One verified experiment record read from a remote."""

    uid: str
    fields: dict[str, Any]
    pushed_at: float
    digest: str

    @property
    def name(self) -> str:
        return str(self.fields["name"])

    def roots(self) -> list[tuple[Kind, Digest]]:
        found = [(Kind.DIRECTORY, Digest(self.fields["base"]))]
        if self.fields.get("result"):
            found.append((Kind.DIRECTORY, Digest(self.fields["result"])))
        return found

    def describe(self) -> str:
        created = time.strftime(
            "%Y-%m-%d %H:%M", time.localtime(float(self.fields["created"]))
        )
        return (
            f"{self.name}@{self.uid[:12]} (base commit "
            f"{str(self.fields['base_commit'])[:12]}, created {created}, "
            f"{self.fields['status']})"
        )


def experiment_uid(name: str, base_commit: str, base: str, created: float) -> str:
    """Return the id that names an experiment on every remote and clone."""
    hasher = blake3.blake3(_UID_MAGIC)
    for part in (name, base_commit, base, repr(float(created))):
        encoded = part.encode()
        hasher.update(len(encoded).to_bytes(8, "big") + encoded)
    return hasher.hexdigest()[:UID_CHARS]


def uid_of(experiment: Experiment) -> str:
    return experiment_uid(
        experiment.name, experiment.base_commit, experiment.base, experiment.created
    )


def record_fields(experiment: Experiment) -> dict[str, Any]:
    fields = {key: getattr(experiment, key) for key in RECORD_FIELDS}
    fields["overrides"] = list(experiment.overrides)
    return fields


def encode_record(experiment: Experiment, pushed_at: float) -> bytes:
    document = {
        "format": RECORD_FORMAT,
        "uid": uid_of(experiment),
        "experiment": record_fields(experiment),
        "pushed_at": pushed_at,
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def decode_record(data: bytes, name: str, uid: str) -> RemoteRecord:
    """Parse and check a record found under `name`/`uid`; raise `InvalidRecord`."""
    try:
        doc = json.loads(data)
        fields = dict(doc["experiment"])
        pushed_at = float(doc["pushed_at"])
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidRecord(f"not an experiment record ({exc!r})") from None
    if doc.get("format") != RECORD_FORMAT:
        raise InvalidRecord(
            f"record format {doc.get('format')!r}, but this expfs reads format "
            f"{RECORD_FORMAT}"
        )
    missing = [key for key in RECORD_FIELDS if key not in fields]
    if missing:
        raise InvalidRecord(f"it lacks the fields {', '.join(missing)}")
    try:
        for key in ("base", "result"):
            if fields[key] is not None:
                raw(fields[key])
        recomputed = experiment_uid(
            str(fields["name"]),
            str(fields["base_commit"]),
            str(fields["base"]),
            float(fields["created"]),
        )
    except (TypeError, ValueError) as exc:
        raise InvalidRecord(f"malformed field ({exc!r})") from None
    if fields["name"] != name or recomputed != uid or doc.get("uid") != uid:
        raise InvalidRecord(
            f"it describes experiment {fields['name']!r} with id {recomputed}, "
            f"not {name!r} with id {uid}"
        )
    digest = blake3.blake3(data).hexdigest()
    return RemoteRecord(uid, fields, pushed_at, digest)


def same_content(a: RemoteRecord, experiment: Experiment) -> bool:
    # A JSON round trip turns tuples into lists, as in a record read back.
    ours: dict[str, Any] = json.loads(json.dumps(record_fields(experiment)))
    return a.fields == ours


# -- push --------------------------------------------------------------------------


def push_record(remote: Remote, experiment: Experiment) -> bool:
    """Write a new version of `experiment`'s record unless the latest matches.

    Call only after the objects of its base and result are on the remote.
    Returns True when this call wrote a version.
    """
    uid = uid_of(experiment)
    latest = read_versions(remote, experiment.name).get(uid)
    if latest is not None and same_content(latest, experiment):
        return False
    data = encode_record(experiment, time.time())
    digest = blake3.blake3(data).hexdigest()
    rel = f"{RECORDS_DIR}/{experiment.name}/{uid}/{digest}"
    create_only = remote.backend.enforces_create_only()
    try:
        remote.retry(
            "writing an experiment record",
            lambda: remote.backend.put_bytes(rel, data, create_only=create_only),
        )
    except RemoteFileExists:
        return False
    return True


# -- read ----------------------------------------------------------------------------


def read_versions(remote: Remote, name: str) -> dict[str, RemoteRecord]:
    """Return the latest valid record of each experiment named `name`, by uid."""
    folder = f"{RECORDS_DIR}/{name}"
    chosen: dict[str, RemoteRecord] = {}
    uids = remote.retry("listing records", lambda: remote.backend.list_names(folder))
    for uid in uids:
        versions = remote.retry(
            "listing records",
            partial(remote.backend.list_names, f"{folder}/{uid}"),
        )
        for version in versions:
            rel = f"{folder}/{uid}/{version}"
            try:
                data = remote.retry(
                    "reading a record", partial(remote.backend.read_bytes, rel)
                )
                record = decode_record(data, name, uid)
            except FileNotFoundError:
                continue
            except InvalidRecord as exc:
                log.warning(
                    "rejected experiment record %s on remote %s: %s",
                    rel,
                    remote.label,
                    exc,
                )
                continue
            kept = chosen.get(uid)
            if kept is None or _preferred(record, kept):
                chosen[uid] = record
    return chosen


def _preferred(record: RemoteRecord, kept: RemoteRecord) -> bool:
    """Order versions as every reader does: latest pushed, then lowest digest."""
    if record.pushed_at != kept.pushed_at:
        return record.pushed_at > kept.pushed_at
    return record.digest < kept.digest


@dataclass(frozen=True)
class RecordFile:
    """One version file of an experiment record on a remote, as gc lists it."""

    rel: str
    name: str
    uid: str
    mtime: float
    # None when the file is not a valid record of `name` and `uid`.
    record: RemoteRecord | None

    def describe(self) -> str:
        if self.record is not None:
            return self.record.describe()
        return f"{self.name}@{self.uid[:12]} (unreadable record {self.rel})"


def list_record_files(remote: Remote) -> list[RecordFile]:
    """Read every version file under `experiments/`, valid or not."""
    found: list[RecordFile] = []
    for rel, mtime in remote.backend.walk_files(RECORDS_DIR):
        parts = rel.split("/")
        if len(parts) != 4 or parts[0] != RECORDS_DIR:
            log.warning(
                "unexpected file %s under %s/ on remote %s left alone",
                rel,
                RECORDS_DIR,
                remote.label,
            )
            continue
        _, name, uid, _ = parts
        try:
            data = remote.retry(
                "reading a record", partial(remote.backend.read_bytes, rel)
            )
        except FileNotFoundError:
            continue
        try:
            record: RemoteRecord | None = decode_record(data, name, uid)
        except InvalidRecord as exc:
            log.warning(
                "invalid experiment record %s on remote %s: %s", rel, remote.label, exc
            )
            record = None
        found.append(RecordFile(rel, name, uid, mtime, record))
    return found


def latest(records: Sequence[RemoteRecord]) -> RemoteRecord:
    """Return the version of one experiment's record that every reader picks."""
    chosen = records[0]
    for record in records[1:]:
        if _preferred(record, chosen):
            chosen = record
    return chosen


def remote_names(remote: Remote) -> list[str]:
    return remote.retry(
        "listing records", lambda: remote.backend.list_names(RECORDS_DIR)
    )


# -- pull ----------------------------------------------------------------------------


def split_uid(requested: str) -> tuple[str, str | None]:
    """Split `NAME@UID` (a uid prefix of hex digits) into its parts."""
    match = _UID_SUFFIX.match(requested)
    if match is None:
        return requested, None
    return match.group(1), match.group(2)


def pick_record(
    remote: Remote, name: str, uid_prefix: str | None, local: Experiment | None
) -> RemoteRecord | None:
    """Choose the remote record that `name` (or `name@uid`) requests.

    Returns None when `local` is that same experiment and the remote has no
    other. Raises `ExperimentNotFound` when the remote has none by that name,
    `UsageError` when several match, and `ExperimentExists` when a local
    experiment of that name is another one.
    """
    versions = read_versions(remote, name)
    if uid_prefix is not None:
        versions = {u: r for u, r in versions.items() if u.startswith(uid_prefix)}
    if local is not None:
        mine = uid_of(local)
        if mine in versions or not versions:
            return None
        found = ", ".join(r.describe() for r in versions.values())
        raise ExperimentExists(
            f"experiment {name!r} here is not the one on remote {remote.label} "
            f"({found}): remove the local one with `expfs exp remove {name}` "
            "to pull it, or keep it and pull nothing"
        )
    if not versions:
        raise ExperimentNotFound(
            f"no experiment named {name!r} here or on remote {remote.label}: "
            "`expfs exp list` shows the local ones; push it from the clone "
            "that made it with `expfs push NAME`"
        )
    if len(versions) > 1:
        found = "; ".join(r.describe() for r in versions.values())
        raise UsageError(
            f"remote {remote.label} has {len(versions)} experiments named "
            f"{name!r}, made in different clones: {found}. Pull one as NAME@ID "
            f"with at least {MIN_UID_PREFIX} digits of its id"
        )
    return next(iter(versions.values()))


def import_record(
    store: Store, remote: Remote, record: RemoteRecord, stats: Stats
) -> Experiment:
    """Fetch an experiment's objects and create it here from its record.

    The workspace starts at the result snapshot (or the base when the
    experiment never finished a run), and the Git worktree at its base
    commit, which must already be in this repository.
    """
    from expfs.experiments import create_experiment, repo_root, update_experiment
    from expfs.tree.gitsnap import resolve_commit

    fields = record.fields
    repo = repo_root(store)
    commit = str(fields["base_commit"])
    try:
        resolve_commit(repo, commit)
    except UsageError:
        raise UsageError(
            f"experiment {record.describe()} on remote {remote.label} starts "
            f"from commit {commit[:12]}, which this repository lacks: fetch it "
            "with `git fetch` (or `git pull`), then pull the experiment again"
        ) from None
    remote.fetch_objects(store, record.roots(), stats)
    name = record.name
    create_experiment(
        store,
        repo,
        name,
        commit,
        base=Digest(fields["base"]),
        status=str(fields["status"]),
        overrides=tuple(fields["overrides"]),
        start=Digest(fields["result"]) if fields["result"] else None,
    )
    changes = {
        key: fields[key]
        for key in ("created", "params", "metrics", "result", "started", "finished")
    }
    experiment = update_experiment(
        store, name, error=str(fields["error"] or ""), **changes
    )
    log.info(
        "pulled experiment %s (id %s) from remote %s", name, record.uid, remote.label
    )
    return experiment


def pull_records(
    store: Store,
    remote: Remote,
    requested: Sequence[str],
    stats: Stats,
    *,
    every: bool = False,
) -> list[str]:
    """Create here the requested experiments (every one with `every`) that a
    remote has and this clone lacks; return the names of those created.

    With `every`, a name that clashes or is ambiguous is a warning and is
    skipped; a name the user gave raises instead.
    """
    from expfs.experiments import get_experiment

    names = list(requested)
    if every:
        names += [n for n in remote_names(remote) if n not in names]
    created: list[str] = []
    for wanted in names:
        name, uid_prefix = split_uid(wanted)
        try:
            local: Experiment | None = get_experiment(store, name)
        except ExperimentNotFound:
            local = None
        try:
            record = pick_record(remote, name, uid_prefix, local)
            if record is None:
                continue
            import_record(store, remote, record, stats)
        except ExperimentNotFound:
            if wanted in requested:
                raise
            # A folder left after gc removed the experiment's last record.
            log.debug("no record of experiment %s on remote %s", name, remote.label)
            continue
        except ExpfsError as exc:
            if not every or wanted in requested:
                raise
            log.warning("experiment %s not pulled: %s", name, exc.message)
            continue
        created.append(name)
        stats.experiments += 1
    return created
