"""`expfs.lock`: each stage's last run, beside `dvc.yaml`.

Shaped like `dvc.lock` (which expfs leaves to DVC, so both tools work in one
repository): per stage its command, deps and outs with digests, params with
values, and the run key. Written atomically (temporary file, fsync, rename).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import yaml

from expfs.errors import UsageError
from expfs.pipeline.loader import FastSafeDumper, safe_load
from expfs.runcache import OutputRecord
from expfs.store.trees import Digest, Kind

LOCK_NAME = "expfs.lock"
SCHEMA = "expfs-1"
_KIND_NAMES = {Kind.FILE: "file", Kind.DIRECTORY: "dir", Kind.SYMLINK: "symlink"}
_KINDS = {v: k for k, v in _KIND_NAMES.items()}


@dataclass
class LockedStage:
    cmd: str | list[str]
    run_key: Digest
    deps: dict[str, Digest | None] = field(default_factory=dict)
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    outs: list[OutputRecord] = field(default_factory=list)

    def to_yaml(self) -> dict[str, Any]:
        return {
            "cmd": self.cmd,
            "run_key": self.run_key,
            "deps": [{"path": p, "blake3": d} for p, d in sorted(self.deps.items())],
            "params": self.params,
            "outs": [
                {
                    "path": o.path,
                    "type": _KIND_NAMES[Kind(o.kind)],
                    "blake3": o.digest,
                    "mode": f"{o.mode:04o}",
                    "size": o.size,
                    **({} if o.cache else {"cache": False}),
                }
                for o in self.outs
            ],
        }

    @classmethod
    def from_yaml(cls, data: dict[str, Any], where: str) -> LockedStage:
        try:
            return cls(
                cmd=data["cmd"],
                run_key=Digest(data["run_key"]),
                deps={d["path"]: d.get("blake3") for d in data.get("deps") or []},
                params=data.get("params") or {},
                outs=[
                    OutputRecord(
                        path=o["path"],
                        kind=int(_KINDS[o["type"]]),
                        digest=Digest(o["blake3"]),
                        mode=int(str(o["mode"]), 8),
                        size=int(o["size"]),
                        cache=bool(o.get("cache", True)),
                    )
                    for o in data.get("outs") or []
                ],
            )
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise UsageError(
                f"{where} is malformed ({exc!r}): delete it and run `expfs repro` "
                "to write it again"
            ) from exc


class LockFile:
    def __init__(self, path: str) -> None:
        self.path = path
        self.stages: dict[str, LockedStage] = {}
        self._load()

    def _load(self) -> None:
        try:
            with open(self.path) as f:
                data = safe_load(f) or {}
        except FileNotFoundError:
            return
        except yaml.YAMLError as exc:
            raise UsageError(
                f"{self.path} is not valid YAML ({exc}): delete it and run "
                "`expfs repro` to write it again"
            ) from exc
        stages = data.get("stages") if isinstance(data, dict) else None
        if not isinstance(data, dict) or not isinstance(stages or {}, dict):
            raise UsageError(
                f"{self.path} is malformed (expected a mapping with a `stages` "
                "mapping): delete it and run `expfs repro` to write it again"
            )
        if data.get("schema", SCHEMA) != SCHEMA:
            raise UsageError(
                f"{self.path} has schema {data.get('schema')!r}, and this expfs "
                f"reads {SCHEMA!r}: delete it and run `expfs repro` to write it "
                "again, or use the expfs that wrote it"
            )
        for name, entry in (stages or {}).items():
            self.stages[name] = LockedStage.from_yaml(
                entry, f"{self.path}: stage {name}"
            )

    def save(self, fsync: bool = True) -> None:
        """Write the lock file atomically; `fsync=False` skips the flush to disk.

        Skipping is safe where a later step makes the file durable, as the
        snapshot of an experiment's result does.
        """
        data = {
            "schema": SCHEMA,
            "stages": {name: s.to_yaml() for name, s in sorted(self.stages.items())},
        }
        temp = f"{self.path}.tmp.{os.getpid()}"
        with open(temp, "w") as f:
            yaml.dump(data, f, Dumper=FastSafeDumper, sort_keys=False)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.rename(temp, self.path)
