"""Compare two experiments: params and metrics with deltas, and changed files.

Files come from `diff_trees` on the two result snapshots (the base snapshot
for an experiment that has not run yet), so the cost is proportional to the
folders that differ.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

from expfs.experiments import ExperimentNotFound, get_experiment
from expfs.report.rows import baseline_row
from expfs.report.table import (
    BASELINE_NAME,
    KINDS,
    Column,
    Kind,
    Row,
    collect_columns,
    comparable,
    experiment_row,
)
from expfs.store.objects import Store


@dataclass(frozen=True)
class ValueChange:
    """One param or metric of both sides, with `new - old` when both are numbers."""

    column: Column
    old: Any
    new: Any
    old_present: bool
    new_present: bool
    delta: float | int | None

    @property
    def changed(self) -> bool:
        if self.old_present != self.new_present:
            return True
        return bool(comparable(self.old) != comparable(self.new))


@dataclass(frozen=True)
class FileChange:
    """A path that differs between the two snapshots: A, D or M, as in `git diff`."""

    status: str
    path: str


@dataclass(frozen=True)
class Comparison:
    old: Row
    new: Row
    values: list[ValueChange]
    # None when a side is the baseline, which has no snapshot to compare.
    files: list[FileChange] | None
    old_snapshot: str | None
    new_snapshot: str | None

    def of_kind(self, kind: Kind, *, include_unchanged: bool) -> list[ValueChange]:
        return [
            change
            for change in self.values
            if change.column.kind == kind and (include_unchanged or change.changed)
        ]


def resolve_row(store: Store, repo: str, name: str) -> Row:
    """Return the row of experiment `name`, or of the baseline for `workspace`.

    An experiment that is really named `workspace` wins over the baseline.
    """
    try:
        return experiment_row(get_experiment(store, name))
    except ExperimentNotFound:
        if name == BASELINE_NAME:
            return baseline_row(repo)
        raise


def compare(store: Store, repo: str, old_name: str, new_name: str) -> Comparison:
    """Compare experiment `old_name` with `new_name` (deltas are new minus old)."""
    old = resolve_row(store, repo, old_name)
    new = resolve_row(store, repo, new_name)
    values = [_value_change(old, new, column) for column in collect_columns([old, new])]
    values.sort(key=lambda change: KINDS.index(change.column.kind))
    old_snapshot = old.result or old.base
    new_snapshot = new.result or new.base
    files = None
    if old_snapshot is not None and new_snapshot is not None:
        files = changed_files(store, old_snapshot, new_snapshot)
    return Comparison(old, new, values, files, old_snapshot, new_snapshot)


def _value_change(old: Row, new: Row, column: Column) -> ValueChange:
    old_present, old_value = old.get(column)
    new_present, new_value = new.get(column)
    delta = None
    if old_present and new_present and _is_number(old_value) and _is_number(new_value):
        delta = new_value - old_value
    return ValueChange(column, old_value, new_value, old_present, new_present, delta)


def _is_number(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


def changed_files(store: Store, old: str, new: str) -> list[FileChange]:
    from expfs.tree.diff import diff_trees

    return [
        FileChange(change.status.value, os.fsdecode(change.path))
        for change in diff_trees(store, old, new)
    ]
