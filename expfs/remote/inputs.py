"""The inputs of a run key, kept so that remote entries can carry them.

A run key is a digest, so a reader cannot check it alone. A remote entry
carries the document the key hashes (`cmd`, `wdir`, `deps`, `params`,
`outs`, as `expfs.pipeline.runkey.run_key` takes them), and the reader
recomputes the key from it. The local `runinputs` database remembers that
document for every run key whose inputs are known: pushed and pulled
entries, and stages whose `expfs.lock` entry records them.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from expfs.pipeline.runkey import run_key
from expfs.store import layout
from expfs.store.objects import Store
from expfs.store.trees import Digest, raw

log = logging.getLogger(__name__)

LOCK_NAME = "expfs.lock"
INPUT_FIELDS = ("cmd", "deps", "outs", "params", "wdir")


def make_inputs(
    cmd: str | Sequence[str],
    deps: Mapping[str, str],
    params: Mapping[str, Mapping[str, Any]],
    outs: Sequence[str],
    wdir: str = ".",
) -> dict[str, Any]:
    """Return the inputs document of a run, in the form that `key_of` hashes."""
    return {
        "cmd": [cmd] if isinstance(cmd, str) else list(cmd),
        "deps": {str(path): str(digest) for path, digest in deps.items()},
        "params": {file: dict(values) for file, values in params.items()},
        "outs": sorted(outs),
        "wdir": wdir,
    }


def stage_inputs(
    stage: Any, deps: Mapping[str, str], params: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
    """Return the inputs document of a `Stage` run, as `stage_run_key` hashes it."""
    return make_inputs(
        stage.cmd,
        {dep.workspace_path: deps[dep.workspace_path] for dep in stage.deps},
        params,
        [out.workspace_path for out in stage.outs],
        stage.workspace_wdir,
    )


def key_of(inputs: Mapping[str, Any]) -> Digest:
    """Recompute the run key of an inputs document.

    Raises `ValueError` when the document does not have the expected shape.
    """
    if not isinstance(inputs, Mapping) or sorted(inputs) != list(INPUT_FIELDS):
        raise ValueError(f"run inputs must have exactly the fields {INPUT_FIELDS}")
    deps, params, outs = inputs["deps"], inputs["params"], inputs["outs"]
    if not isinstance(deps, Mapping) or not isinstance(params, Mapping):
        raise ValueError("deps and params of run inputs must be mappings")
    if not isinstance(outs, list) or not all(isinstance(o, str) for o in outs):
        raise ValueError("outs of run inputs must be a list of paths")
    if not isinstance(inputs["wdir"], str):
        raise ValueError("wdir of run inputs must be a string")
    try:
        return run_key(
            inputs["cmd"],
            {p: Digest(d) for p, d in deps.items()},
            params,
            outs,
            wdir=inputs["wdir"],
        )
    except TypeError as exc:
        raise ValueError(str(exc)) from None


def encode_inputs(inputs: Mapping[str, Any]) -> bytes:
    return json.dumps(inputs, sort_keys=True, separators=(",", ":")).encode()


def save_inputs(store: Store, key: str, inputs: Mapping[str, Any]) -> None:
    """Remember the inputs of run `key`; raises `ValueError` if they hash elsewhere."""
    if key_of(inputs) != key:
        raise ValueError(f"run inputs do not hash to run key {key}")
    store.env.put(layout.DB_RUN_INPUTS, raw(key), encode_inputs(inputs))


def load_inputs(store: Store, key: str) -> dict[str, Any] | None:
    data = store.env.get(layout.DB_RUN_INPUTS, raw(key))
    if data is None:
        return None
    inputs: dict[str, Any] = json.loads(data)
    return inputs


def remember_lock_inputs(store: Store, repo_root: str) -> int:
    """Save the run inputs that `expfs.lock` files record; return how many.

    The lock file records each stage's command, dependency digests, params
    and outputs, and its run key. The stage's `wdir` comes from the stage
    file. Entries whose inputs do not hash to their recorded key (an older
    lock, a stage file edited since) are skipped.
    """
    saved = 0
    for lock_path in _lock_files(repo_root):
        for name, entry in _locked_stages(lock_path).items():
            inputs = _inputs_of_lock_entry(
                entry, _wdirs(lock_path, repo_root).get(name, ".")
            )
            key = entry.get("run_key") if isinstance(entry, dict) else None
            if inputs is None or not isinstance(key, str):
                continue
            try:
                save_inputs(store, key, inputs)
            except ValueError:
                log.debug(
                    "lock entry of stage %s in %s does not match its run key",
                    name,
                    lock_path,
                )
                continue
            saved += 1
    return saved


def _lock_files(repo_root: str) -> list[str]:
    path = os.path.join(repo_root, LOCK_NAME)
    return [path] if os.path.exists(path) else []


def _locked_stages(path: str) -> dict[str, Any]:
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as exc:
        log.warning("cannot read %s: %s", path, exc)
        return {}
    stages = data.get("stages") if isinstance(data, dict) else None
    return stages if isinstance(stages, dict) else {}


def _wdirs(lock_path: str, repo_root: str) -> dict[str, str]:
    """Return each stage's workspace wdir from the stage file beside a lock."""
    from expfs.errors import ExpfsError
    from expfs.pipeline import load_pipeline

    stage_file = os.path.join(os.path.dirname(lock_path), "dvc.yaml")
    try:
        pipeline = load_pipeline(stage_file, repo_root)
    except (ExpfsError, OSError) as exc:
        log.debug("cannot load %s for stage folders: %s", stage_file, exc)
        return {}
    return {name: stage.workspace_wdir for name, stage in pipeline.stages.items()}


def _inputs_of_lock_entry(entry: Any, wdir: str) -> dict[str, Any] | None:
    try:
        deps = {d["path"]: d["blake3"] for d in entry.get("deps") or []}
        outs = [o["path"] for o in entry.get("outs") or []]
        return make_inputs(entry["cmd"], deps, entry.get("params") or {}, outs, wdir)
    except (KeyError, TypeError, AttributeError):
        return None


def locked_outputs(repo_root: str) -> list[tuple[int, Digest]]:
    """Return (kind number, digest) of every cached output in `expfs.lock` files."""
    kinds = {"file": 1, "dir": 2, "symlink": 3}
    found: list[tuple[int, Digest]] = []
    for lock_path in _lock_files(repo_root):
        for entry in _locked_stages(lock_path).values():
            for out in (entry.get("outs") or []) if isinstance(entry, dict) else []:
                if not out.get("cache", True) or out.get("type") not in kinds:
                    continue
                found.append((kinds[out["type"]], Digest(str(out["blake3"]))))
    return found
