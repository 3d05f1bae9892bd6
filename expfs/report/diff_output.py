"""Print an `exp diff` comparison as aligned text, Markdown or JSON."""

from __future__ import annotations

import json
from typing import Any

from expfs.report.compare import Comparison, ValueChange
from expfs.report.render import MISSING, json_safe, markdown_line
from expfs.report.table import DEFAULT_PRECISION, format_value

KIND_WORDS = {"params": "param", "metrics": "metric"}


def format_delta(delta: float | int | None, precision: int = DEFAULT_PRECISION) -> str:
    if delta is None:
        return MISSING
    if isinstance(delta, int):
        return f"{delta:+d}"
    return f"{delta:+.{precision}g}"


def _cells(
    comparison: Comparison, include_unchanged: bool, precision: int
) -> list[list[str]]:
    lines = []
    for kind in ("params", "metrics"):
        for change in comparison.of_kind(kind, include_unchanged=include_unchanged):
            lines.append(
                [
                    KIND_WORDS[kind],
                    change.column.label,
                    _side(change.old, change.old_present, precision),
                    _side(change.new, change.new_present, precision),
                    format_delta(change.delta, precision),
                ]
            )
    return lines


def _side(value: Any, present: bool, precision: int) -> str:
    return format_value(value, precision) if present else MISSING


def _header(comparison: Comparison) -> list[str]:
    return ["kind", "name", comparison.old.name, comparison.new.name, "change"]


def _files_summary(comparison: Comparison) -> str:
    if comparison.files is None:
        return (
            "files: not compared, because the baseline (the working tree) has "
            "no snapshot"
        )
    count = len(comparison.files)
    noun = "file differs" if count == 1 else "files differ"
    return (
        f"files: {count} {noun} between snapshot {comparison.old_snapshot} "
        f"({comparison.old.name}) and {comparison.new_snapshot} ({comparison.new.name})"
    )


def render_diff_text(
    comparison: Comparison,
    *,
    include_unchanged: bool = False,
    precision: int = DEFAULT_PRECISION,
) -> str:
    """Render params and metrics as an aligned table, then the changed files."""
    rows = _cells(comparison, include_unchanged, precision)
    out = []
    if rows:
        lines = [_header(comparison), *rows]
        widths = [max(len(line[i]) for line in lines) for i in range(5)]
        for line in lines:
            padded = [
                cell.ljust(width) for cell, width in zip(line, widths, strict=True)
            ]
            out.append("  ".join(padded).rstrip())
    else:
        out.append("params and metrics: no differences")
    out.append("")
    out.append(_files_summary(comparison))
    for change in comparison.files or []:
        out.append(f"{change.status}  {change.path}")
    return "\n".join(out) + "\n"


def render_diff_markdown(
    comparison: Comparison,
    *,
    include_unchanged: bool = False,
    precision: int = DEFAULT_PRECISION,
) -> str:
    """Render a Markdown table of params and metrics, then a list of changed files."""
    rows = _cells(comparison, include_unchanged, precision)
    out = []
    if rows:
        out.append(markdown_line(_header(comparison)))
        out.append(markdown_line(["---", "---", "---", "---", "---:"]))
        out.extend(markdown_line(row) for row in rows)
    else:
        out.append("Params and metrics: no differences.")
    out.append("")
    summary = _files_summary(comparison)
    out.append(summary[0].upper() + summary[1:] + ".")
    if comparison.files:
        out.append("")
        out.extend(f"- `{c.status}` `{c.path}`" for c in comparison.files)
    return "\n".join(out) + "\n"


def _change_json(change: ValueChange) -> dict[str, Any]:
    return {
        "file": change.column.file,
        "key": change.column.key,
        "old": change.old if change.old_present else None,
        "new": change.new if change.new_present else None,
        "old_present": change.old_present,
        "new_present": change.new_present,
        "delta": change.delta,
        "changed": change.changed,
    }


def render_diff_json(comparison: Comparison) -> str:
    """Render every param and metric (with `changed`) and the changed files as JSON."""
    files = comparison.files
    document = {
        "old": comparison.old.name,
        "new": comparison.new.name,
        "old_snapshot": comparison.old_snapshot,
        "new_snapshot": comparison.new_snapshot,
        "params": [
            _change_json(c)
            for c in comparison.of_kind("params", include_unchanged=True)
        ],
        "metrics": [
            _change_json(c)
            for c in comparison.of_kind("metrics", include_unchanged=True)
        ],
        "files": None
        if files is None
        else [{"status": c.status, "path": c.path} for c in files],
    }
    return json.dumps(json_safe(document), indent=2, default=str) + "\n"
