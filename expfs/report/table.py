"""Rows and columns of the experiments table that `exp show` prints.

A row is the baseline (the user's checkout) or one experiment record, with
its params and metrics flattened to `{file: {dotted.key: value}}`. A column
is one (params or metrics, file, key) triple, labelled by its key alone
unless two files share that key.
"""

from __future__ import annotations

import datetime
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from expfs.errors import UsageError
from expfs.experiments import Experiment

Kind = Literal["params", "metrics"]
KINDS: tuple[Kind, ...] = ("params", "metrics")

# The baseline row's name and status, as `exp show` and `exp diff` use them.
BASELINE_NAME = "workspace"
BASELINE_STATUS = "baseline"

DEFAULT_PRECISION = 5
# A float64 has at most 17 significant decimal digits.
MAX_PRECISION = 17


class UnknownColumn(UsageError):
    """A metric or param name that no row has, or that several files share."""


@dataclass(frozen=True)
class Row:
    """One line of the table: the baseline or an experiment."""

    name: str
    status: str
    base_commit: str | None
    # Seconds since the epoch, or None for the baseline.
    created: float | None
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    result: str | None = None
    base: str | None = None
    error: str = ""

    @property
    def is_baseline(self) -> bool:
        return self.status == BASELINE_STATUS

    def values(self, kind: Kind) -> dict[str, dict[str, Any]]:
        return self.params if kind == "params" else self.metrics

    def get(self, column: Column) -> tuple[bool, Any]:
        """Return (present, value) of `column` in this row."""
        by_file = self.params if column.kind == "params" else self.metrics
        by_key = by_file.get(column.file)
        if by_key is None or column.key not in by_key:
            return False, None
        return True, by_key[column.key]


@dataclass(frozen=True)
class Column:
    """One param or metric: the file it comes from and its dotted key."""

    kind: Kind
    file: str
    key: str
    label: str

    @property
    def qualified(self) -> str:
        return f"{self.file}:{self.key}"


@dataclass(frozen=True)
class Table:
    """Rows in display order (the baseline first) and the columns to show."""

    rows: list[Row]
    columns: list[Column]
    # Every param and metric column, shown or not, for name lookups.
    all_columns: list[Column]


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested mappings into dotted keys; lists and scalars are leaves."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, dotted))
        else:
            flat[dotted] = value
    return flat


def flatten_by_file(values: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Flatten `{file: nested}` into `{file: {dotted.key: value}}`.

    Records written by sweeps are flat already; metrics read straight from a
    JSON or YAML file are nested, so both shapes are accepted.
    """
    flat: dict[str, dict[str, Any]] = {}
    for file, nested in values.items():
        if isinstance(nested, Mapping):
            flat[file] = flatten(nested)
        else:
            # A metrics file holding one bare number, such as `0.93`.
            flat[file] = {"": nested}
    return flat


def experiment_row(experiment: Experiment) -> Row:
    return Row(
        name=experiment.name,
        status=experiment.status,
        base_commit=experiment.base_commit,
        created=experiment.created,
        params=flatten_by_file(experiment.params),
        metrics=flatten_by_file(experiment.metrics),
        result=experiment.result,
        base=experiment.base,
        error=experiment.error,
    )


def collect_columns(rows: Iterable[Row]) -> list[Column]:
    """Return every params column, then every metrics column, in first-seen order."""
    seen: dict[tuple[Kind, str, str], None] = {}
    rows = list(rows)
    for kind in KINDS:
        for row in rows:
            for file, by_key in row.values(kind).items():
                for key in by_key:
                    seen.setdefault((kind, file, key), None)
    files_by_key: dict[str, set[str]] = {}
    for _, file, key in seen:
        files_by_key.setdefault(key, set()).add(file)
    columns = []
    for kind, file, key in seen:
        ambiguous = len(files_by_key[key]) > 1 or not key
        label = f"{file}:{key}" if ambiguous else key
        columns.append(Column(kind, file, key, label.rstrip(":")))
    return columns


def comparable(value: Any) -> Any:
    """Return a hashable stand-in for `value` that keeps 1 == 1.0 but not True == 1."""
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, float) and math.isnan(value):
        return ("nan",)
    if isinstance(value, int | float | str) or value is None:
        return value
    return ("json", json.dumps(value, sort_keys=True, default=str))


def param_differs(rows: Sequence[Row], column: Column) -> bool:
    """Tell whether a param takes two values, or is set in some experiments only.

    The baseline reads whole params files while a sweep may record only the
    keys its stages declare, so a key missing from the baseline, or present
    only there, does not count as a difference on its own.
    """
    values = set()
    present_in_experiments = 0
    experiments = 0
    for row in rows:
        present, value = row.get(column)
        if not row.is_baseline:
            experiments += 1
            present_in_experiments += present
        if present:
            values.add(comparable(value))
    partial = 0 < present_in_experiments < experiments
    return len(values) > 1 or partial


def build_table(
    rows: Sequence[Row],
    *,
    all_params: bool = False,
    sort_by: str | None = None,
    descending: bool = False,
) -> Table:
    """Choose the columns (params that differ, or all of them, then metrics) and sort."""
    columns = collect_columns(rows)
    shown = [
        column
        for column in columns
        if column.kind == "metrics" or all_params or param_differs(rows, column)
    ]
    ordered = list(rows)
    if sort_by is not None:
        key_column = find_column(columns, sort_by)
        ordered = sort_rows(ordered, key_column, descending=descending)
        if key_column not in shown:
            # A param that all rows share is shown when the rows sort by it.
            boundary = sum(1 for column in shown if column.kind == "params")
            shown.insert(boundary, key_column)
    return Table(ordered, shown, columns)


def find_column(
    columns: Sequence[Column], name: str, kinds: Sequence[Kind] = KINDS
) -> Column:
    """Return the column that `name` (`key`, `file:key` or a label) names.

    Metrics win over params of the same name. Raise `UnknownColumn`, listing
    the known names, when none or several files match.
    """
    for kind in ("metrics", "params"):
        if kind not in kinds:
            continue
        candidates = [c for c in columns if c.kind == kind]
        matches = [c for c in candidates if name in (c.label, c.qualified)]
        if not matches:
            matches = [c for c in candidates if c.key == name]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            options = ", ".join(c.qualified for c in matches)
            raise UnknownColumn(
                f"{name!r} is ambiguous because it names {options}: give one "
                "of them as FILE:KEY"
            )
    raise UnknownColumn(_unknown_message(columns, name, kinds))


def _unknown_message(
    columns: Sequence[Column], name: str, kinds: Sequence[Kind]
) -> str:
    what = " or ".join("metric" if kind == "metrics" else "param" for kind in kinds)
    known = []
    for kind in kinds:
        labels = [column.label for column in columns if column.kind == kind]
        listed = ", ".join(labels) if labels else "none"
        known.append(f"Known {kind}: {listed}.")
    return f"unknown {what} {name!r}. {' '.join(known)}"


def sort_rows(rows: Sequence[Row], column: Column, *, descending: bool) -> list[Row]:
    """Sort experiments by `column`, keeping the baseline first.

    Rows without the value come last in either order. Numbers sort before
    strings, and values of other types sort by their JSON text.
    """
    baseline = [row for row in rows if row.is_baseline]
    present: list[tuple[Any, Row]] = []
    missing: list[Row] = []
    for row in rows:
        if row.is_baseline:
            continue
        found, value = row.get(column)
        if found and value is not None:
            present.append((_sort_key(value), row))
        else:
            missing.append(row)
    present.sort(key=lambda pair: pair[0], reverse=descending)
    return [*baseline, *(row for _, row in present), *missing]


def _sort_key(value: Any) -> tuple[int, Any]:
    if isinstance(value, bool):
        return (1, int(value))
    if isinstance(value, int | float):
        return (0, value) if not math.isnan(value) else (3, 0)
    if isinstance(value, str):
        return (2, value)
    return (3, json.dumps(value, sort_keys=True, default=str))


def check_precision(precision: int) -> None:
    if not 1 <= precision <= MAX_PRECISION:
        raise UsageError(
            f"invalid precision {precision}: give a number of significant "
            f"digits from 1 to {MAX_PRECISION}"
        )


def format_value(value: Any, precision: int = DEFAULT_PRECISION) -> str:
    """Format a param or metric for a table cell, floats to `precision` digits."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.{precision}g}"
    if isinstance(value, int | str):
        return str(value)
    return json.dumps(value, separators=(",", ":"), default=str)


def format_created(created: float | None) -> str:
    """Format a record's creation time in local time for a table cell."""
    if created is None:
        return "-"
    moment = datetime.datetime.fromtimestamp(created)
    return moment.strftime("%Y-%m-%d %H:%M")


def iso_created(created: float | None) -> str | None:
    """Format a creation time as ISO 8601 in UTC, for `--json` and `--csv`."""
    if created is None:
        return None
    moment = datetime.datetime.fromtimestamp(created, tz=datetime.UTC)
    return moment.isoformat(timespec="milliseconds")
