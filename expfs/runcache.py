"""The run-cache: run key -> the outputs, metrics and timing of a successful run.

Only successful runs are recorded. A lookup is a hit only when every
recorded output object is complete: a blob file, or a tree in the index
without a lazy mark (such trees are stored only after everything they
reference, and gc never keeps a tree while freeing what it references).
With `lazy_ok`, an output restored lazily from a remote counts too (a
lazy tree, or a marked blob; see `expfs.store.lazy`): repro accepts it,
since a mount fetches blobs when files are opened and a checkout fetches
them before it materializes. That is one check per output, never one per
file. A hit whose objects are gone is reported as a miss; the next
successful run rewrites the entry.

Entries live in the `runs` database of the shared index, keyed by the 32 raw
bytes of the run key, valued by JSON (see `RunRecord`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from expfs.store import layout
from expfs.store.lazy import is_available, is_complete
from expfs.store.objects import Store
from expfs.store.trees import Digest, Kind, raw

# Run-cache decisions get their own logger and fixed outcome words
# (hit, miss, incomplete, recorded, skipped), so a user can ask why a stage ran.
decisions = logging.getLogger("expfs.runcache.decisions")

# How much of a run's output its record keeps.
LOG_TAIL_CHARS = 64 * 1024


@dataclass(frozen=True)
class OutputRecord:
    """One output of a run: its path relative to the stage's workspace root."""

    path: str
    kind: int  # Kind.FILE, Kind.DIRECTORY or Kind.SYMLINK
    digest: Digest
    mode: int
    size: int
    cache: bool = True


@dataclass
class RunRecord:
    """The outputs, metrics and timing of one successful stage run."""

    key: Digest
    stage: str
    outputs: list[OutputRecord]
    metrics: dict[str, Any] = field(default_factory=dict)
    started: float = 0.0
    duration_s: float = 0.0
    exit_status: int = 0
    restored: int = 0
    # The end of the commands' output (at most LOG_TAIL_CHARS characters).
    log: str = ""

    def to_json(self) -> bytes:
        data = asdict(self)
        return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> RunRecord:
        fields = json.loads(data)
        fields["outputs"] = [OutputRecord(**o) for o in fields["outputs"]]
        known = {k: v for k, v in fields.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def _present(store: Store, out: OutputRecord, lazy_ok: bool) -> bool:
    if lazy_ok:
        return is_available(store, Kind(out.kind), out.digest)
    return is_complete(store, Kind(out.kind), out.digest)


class RunCache:
    """Lookups and records of stage runs in one store."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.env = store.env
        self.handle = store.env.db(layout.DB_RUNS)

    def get(self, key: str) -> RunRecord | None:
        data = self.env.get(layout.DB_RUNS, raw(key))
        return None if data is None else RunRecord.from_json(data)

    def lookup(
        self, key: str, stage: str, *, lazy_ok: bool = False
    ) -> RunRecord | None:
        """Return the record of `key` when every object it needs is present.

        With `lazy_ok`, objects restored lazily from a remote count as present.
        """
        record = self.get(key)
        if record is None:
            decisions.info("miss %s %s: no run with this key", stage, key[:12])
            return None
        missing = [
            o.path for o in record.outputs if not _present(self.store, o, lazy_ok)
        ]
        if missing:
            decisions.info(
                "incomplete %s %s: objects of %s are not in the store; running instead",
                stage,
                key[:12],
                ", ".join(missing),
            )
            return None
        decisions.info("hit %s %s", stage, key[:12])
        return record

    def record(self, record: RunRecord) -> None:
        """Store a successful run, replacing any entry with the same key."""
        if record.exit_status != 0:
            raise ValueError("only successful runs are recorded")
        key, value = raw(record.key), record.to_json()
        self.env.write(lambda txn: txn.put(key, value, db=self.handle))
        decisions.info("recorded %s %s", record.stage, record.key[:12])

    def count_restore(self, key: str) -> None:
        """Add one to the restore count of an entry, if it still exists."""
        raw_key = raw(key)

        def bump(txn: Any) -> None:
            data = txn.get(raw_key, db=self.handle)
            if data is None:
                return
            record = RunRecord.from_json(data)
            record.restored += 1
            txn.put(raw_key, record.to_json(), db=self.handle)

        self.env.write(bump)

    def __iter__(self) -> Iterator[RunRecord]:
        def collect(txn: Any) -> list[bytes]:
            return [bytes(v) for _, v in txn.cursor(db=self.handle)]

        for data in self.env.read(collect):
            yield RunRecord.from_json(data)

    def delete(self, key: str) -> None:
        raw_key = raw(key)
        self.env.write(lambda txn: txn.delete(raw_key, db=self.handle))
