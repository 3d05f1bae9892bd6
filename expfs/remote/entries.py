"""Run-cache entries on a remote: written once, verified on every read.

An entry is a JSON document (format `ENTRY_FORMAT`) holding the run key, the
inputs that the key hashes, and the record of the run: stage name, outputs,
metrics and timing. It is stored under a name derived from the run key,
a key-format version and the remote's optional salt, so changing the salt
abandons a bad generation of entries without deleting anything:

    runs/ab/<name>              the entry, where writes can be create-only
    runs/ab/<name>.d/<digest>   entries appended under their own digest,
                                where the backend cannot refuse a second
                                writer (such as `rclone serve s3`)

Entries are never overwritten. With create-only writes the first writer
wins. With appended entries every reader picks the same one by a fixed
rule: the earliest `pushed_at`, then the smallest digest. A writer whose
outputs differ from the chosen entry's logs a non-determinism warning.
A reader recomputes the run key from the carried inputs and rejects an
entry stored under another key, or of another format.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import blake3

from expfs.remote.backend import RemoteFileExists
from expfs.remote.inputs import key_of
from expfs.remote.transfer import Remote
from expfs.runcache import OutputRecord, RunRecord
from expfs.store.trees import Digest, Kind, raw

log = logging.getLogger(__name__)
decisions = logging.getLogger("expfs.runcache.decisions")

RUNS_DIR = "runs"
ENTRY_FORMAT = 1
ENTRY_NAME_VERSION = 1
_NAME_MAGIC = b"expfs-remote-entry"


class InvalidEntry(ValueError):
    """An entry that a reader must reject; the message says why."""


@dataclass(frozen=True)
class RemoteEntry:
    """One verified entry read from a remote."""

    record: RunRecord
    inputs: dict[str, Any]
    pushed_at: float
    digest: str


def entry_name(run_key: str, salt: str = "") -> str:
    """Return the name of a run key's entries on a remote with `salt`."""
    hasher = blake3.blake3(_NAME_MAGIC + bytes([ENTRY_NAME_VERSION]))
    hasher.update(len(salt.encode()).to_bytes(8, "big") + salt.encode())
    hasher.update(raw(run_key))
    return hasher.hexdigest()


def entry_rel(name: str) -> str:
    return f"{RUNS_DIR}/{name[:2]}/{name}"


def appended_rel(name: str) -> str:
    return f"{RUNS_DIR}/{name[:2]}/{name}.d"


def encode_entry(record: RunRecord, inputs: dict[str, Any], pushed_at: float) -> bytes:
    document = {
        "format": ENTRY_FORMAT,
        "run_key": record.key,
        "inputs": inputs,
        "stage": record.stage,
        "outputs": [asdict(o) for o in record.outputs],
        "metrics": record.metrics,
        "started": record.started,
        "duration_s": record.duration_s,
        "pushed_at": pushed_at,
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def decode_entry(data: bytes, run_key: str) -> RemoteEntry:
    """Parse and verify an entry read under `run_key`; raise `InvalidEntry`."""
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise InvalidEntry(f"not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise InvalidEntry("not a JSON object")
    if doc.get("format") != ENTRY_FORMAT:
        raise InvalidEntry(
            f"entry format {doc.get('format')!r}, but this expfs reads format {ENTRY_FORMAT}"
        )
    try:
        recomputed = key_of(doc["inputs"])
    except (KeyError, ValueError) as exc:
        raise InvalidEntry(f"its run inputs are invalid ({exc})") from None
    if recomputed != run_key or doc.get("run_key") != run_key:
        raise InvalidEntry(f"its inputs hash to run key {recomputed}, not {run_key}")
    try:
        outputs = [OutputRecord(**o) for o in doc["outputs"]]
        for out in outputs:
            Kind(out.kind)
            raw(out.digest)
        record = RunRecord(
            key=Digest(run_key),
            stage=str(doc["stage"]),
            outputs=outputs,
            metrics=dict(doc.get("metrics") or {}),
            started=float(doc.get("started", 0.0)),
            duration_s=float(doc.get("duration_s", 0.0)),
        )
        pushed_at = float(doc["pushed_at"])
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidEntry(f"malformed record ({exc!r})") from None
    if sorted(o.path for o in outputs) != sorted(doc["inputs"]["outs"]):
        raise InvalidEntry("its outputs are not the outputs its inputs declare")
    digest = blake3.blake3(data).hexdigest()
    return RemoteEntry(record, doc["inputs"], pushed_at, digest)


def same_outputs(a: RunRecord, b: RunRecord) -> bool:
    def key(r: RunRecord) -> list[tuple[str, int, str]]:
        return sorted((o.path, o.kind, o.digest) for o in r.outputs)

    return key(a) == key(b)


def read_entry(remote: Remote, run_key: str) -> RemoteEntry | None:
    """Return the entry a remote holds for `run_key`, verified, or None.

    An invalid entry is logged as a warning and treated as absent.
    Raises `RemoteError` when the remote cannot be read.
    """
    name = entry_name(run_key, remote.salt)
    try:
        data = remote.retry(
            "reading an entry", lambda: remote.backend.read_bytes(entry_rel(name))
        )
    except FileNotFoundError:
        data = None
    if data is not None:
        return _verified(remote, data, run_key, entry_rel(name))
    candidates: list[RemoteEntry] = []
    folder = appended_rel(name)
    names = remote.retry("listing entries", lambda: remote.backend.list_names(folder))
    for digest in names:
        rel = f"{folder}/{digest}"
        try:
            data = remote.retry(
                "reading an entry", partial(remote.backend.read_bytes, rel)
            )
        except FileNotFoundError:
            continue
        entry = _verified(remote, data, run_key, rel)
        if entry is not None:
            candidates.append(entry)
    return choose(candidates)


def choose(candidates: list[RemoteEntry]) -> RemoteEntry | None:
    """Pick one of several appended entries: earliest pushed, then lowest digest."""
    if not candidates:
        return None
    return min(candidates, key=lambda e: (e.pushed_at, e.digest))


def _verified(
    remote: Remote, data: bytes, run_key: str, rel: str
) -> RemoteEntry | None:
    try:
        return decode_entry(data, run_key)
    except InvalidEntry as exc:
        log.warning(
            "rejected run-cache entry %s on remote %s for run key %s: %s",
            rel,
            remote.label,
            run_key[:12],
            exc,
        )
        return None


def publish_entry(remote: Remote, record: RunRecord, inputs: dict[str, Any]) -> bool:
    """Write an entry unless one exists; return True when this call wrote it.

    Call only after every object the record references is on the remote.
    """
    existing = read_entry(remote, record.key)
    if existing is not None:
        _compare(remote, existing.record, record)
        return False
    name = entry_name(record.key, remote.salt)
    data = encode_entry(record, inputs, time.time())
    if remote.backend.enforces_create_only():
        try:
            remote.retry(
                "writing an entry",
                lambda: remote.backend.put_bytes(
                    entry_rel(name), data, create_only=True
                ),
            )
        except RemoteFileExists:
            winner = read_entry(remote, record.key)
            if winner is not None:
                _compare(remote, winner.record, record)
            return False
        return True
    digest = blake3.blake3(data).hexdigest()
    rel = f"{appended_rel(name)}/{digest}"
    try:
        remote.retry("writing an entry", lambda: remote.backend.put_bytes(rel, data))
    except RemoteFileExists:
        return False
    chosen = read_entry(remote, record.key)
    if chosen is not None and chosen.digest != digest:
        _compare(remote, chosen.record, record)
        return False
    return True


def _compare(remote: Remote, kept: RunRecord, ours: RunRecord) -> None:
    if same_outputs(kept, ours):
        return
    log.warning(
        "non-deterministic stage %s: run key %s has other outputs on remote %s "
        "than this run made; the remote keeps its entry, and clones restore that one",
        ours.stage,
        ours.key[:12],
        remote.label,
    )
    decisions.info("nondeterministic %s %s", ours.stage, ours.key[:12])


def list_entries(remote: Remote) -> list[tuple[str, bytes]]:
    """Return (relative path, bytes) of every entry file on a remote."""
    found: list[tuple[str, bytes]] = []
    for rel, _ in remote.backend.walk_files(RUNS_DIR):
        try:
            data = remote.retry(
                "reading an entry", partial(remote.backend.read_bytes, rel)
            )
        except FileNotFoundError:
            continue
        found.append((rel, data))
    return found


def verify_listed(data: bytes) -> RemoteEntry:
    """Verify an entry found by listing, against the run key it names."""
    try:
        doc = json.loads(data)
        run_key = str(doc["run_key"])
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidEntry(f"not an entry ({exc!r})") from None
    return decode_entry(data, run_key)
