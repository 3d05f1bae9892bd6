"""Load the rows of `exp show`: the user's checkout, then every experiment.

The baseline is what the user has checked out now: params from the params
files the pipeline reads and metrics from the metrics files it declares,
both read from the working tree. A file that is missing contributes
nothing, and a file that cannot be parsed is skipped with a warning.
"""

from __future__ import annotations

import json
import logging
import subprocess
import tomllib
from pathlib import Path
from typing import Any

from expfs.errors import ExpfsError
from expfs.experiments import list_experiments
from expfs.report.table import (
    BASELINE_NAME,
    BASELINE_STATUS,
    Row,
    experiment_row,
    flatten,
)
from expfs.store.objects import Store

log = logging.getLogger(__name__)

STAGE_FILE = "dvc.yaml"
DEFAULT_PARAMS_FILE = "params.yaml"


def load_rows(store: Store, repo: str) -> list[Row]:
    """Return the baseline row, then one row per experiment, oldest first.

    Every record comes from one read transaction over the experiments index.
    """
    experiments = sorted(list_experiments(store), key=lambda e: (e.created, e.name))
    return [baseline_row(repo), *(experiment_row(e) for e in experiments)]


def baseline_row(repo: str) -> Row:
    """Build the row of the user's checkout at `repo`."""
    root = Path(repo)
    params_files, metrics_files = declared_files(root)
    params = {}
    for name in params_files:
        values = _read_params_file(root, name)
        if values is not None:
            params[name] = flatten(values)
    metrics = {}
    for name in metrics_files:
        values = read_metrics_file(root / name)
        if values is not None:
            metrics[name] = (
                flatten(values) if isinstance(values, dict) else {"": values}
            )
    return Row(
        name=BASELINE_NAME,
        status=BASELINE_STATUS,
        base_commit=head_commit(repo),
        created=None,
        params=params,
        metrics=metrics,
    )


def declared_files(root: Path) -> tuple[list[str], list[str]]:
    """Return the params files and metrics files that `root/dvc.yaml` names.

    `params.yaml` counts whenever it exists, because DVC 3.x reads it by default.
    """
    params_files: dict[str, None] = {}
    metrics_files: dict[str, None] = {}
    if (root / DEFAULT_PARAMS_FILE).is_file():
        params_files[DEFAULT_PARAMS_FILE] = None
    stage_file = root / STAGE_FILE
    if not stage_file.is_file():
        return list(params_files), list(metrics_files)

    # NOTE: only the stage file at the repository root is read, not
    # `dvc.yaml` files in subfolders.
    from expfs.pipeline import load_pipeline

    try:
        pipeline = load_pipeline(stage_file, root, check_graph=False)
    except ExpfsError as exc:
        log.warning("baseline params and metrics skipped: %s", exc)
        return list(params_files), list(metrics_files)
    for stage in pipeline.stages.values():
        for dep in stage.params:
            params_files.setdefault(dep.workspace_path, None)
        for out in stage.outs_of("metrics"):
            metrics_files.setdefault(out.workspace_path, None)
    for name in pipeline.params_files:
        params_files.setdefault(name, None)
    for name in pipeline.metrics:
        metrics_files.setdefault(name, None)
    return list(params_files), list(metrics_files)


def _read_params_file(root: Path, name: str) -> dict[str, Any] | None:
    from expfs.pipeline.params import read_params

    path = root / name
    if not path.is_file():
        return None
    try:
        return read_params(path)
    except ExpfsError as exc:
        log.warning("baseline params file skipped: %s", exc)
        return None


def read_metrics_file(path: Path) -> Any:
    """Read a JSON, YAML or TOML metrics file, or return None if it is missing or invalid."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        log.warning("metrics file %s skipped: %s", path, exc)
        return None
    try:
        if path.suffix == ".json":
            return json.loads(text)
        if path.suffix == ".toml":
            return tomllib.loads(text)
        return _load_yaml(text)
    except ValueError as exc:
        log.warning("metrics file %s skipped: %s", path, exc)
        return None


def _load_yaml(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"malformed YAML: {exc}") from exc


def head_commit(repo: str) -> str | None:
    """Return the commit id of HEAD, or None in a repository without commits."""
    proc = subprocess.run(
        ["git", "-C", repo, "rev-parse", "--verify", "--quiet", "HEAD^{commit}"],
        capture_output=True,
        text=True,
    )
    return proc.stdout.strip() or None
