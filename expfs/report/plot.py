"""Draw a metric across experiments as a PNG, and an HTML page around it.

matplotlib is an optional dependency (the `plots` extra), imported only here.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from expfs.errors import ExpfsError, UsageError
from expfs.report.table import (
    DEFAULT_PRECISION,
    Column,
    Row,
    Table,
)

INSTALL_HINT = "pip install 'expfs[plots]'"
BAR_COLOR = "#4c72b0"
BASELINE_COLOR = "#999999"
POINT_COLOR = "#dd8452"


class PlottingUnavailable(ExpfsError):
    """matplotlib is not installed."""


@dataclass(frozen=True)
class PlotResult:
    png: Path
    # Rows left out because they lack the metric (or the x param) as a number.
    skipped: list[str]
    plotted: int


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise PlottingUnavailable(
            f"exp plot needs matplotlib, which is not installed: run `{INSTALL_HINT}` "
            "(or `pip install matplotlib`) and try again"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_metric(
    rows: Sequence[Row],
    metric: Column,
    output: Path,
    *,
    x: Column | None = None,
) -> PlotResult:
    """Write a PNG: a bar per row, or a scatter of `metric` against param `x`.

    Rows without a finite number for the metric (or a value for `x`) are
    skipped; raise `UsageError` if no row is left.
    """
    points, skipped = _points(rows, metric, x)
    if not points:
        raise UsageError(
            f"no experiment has a number for {metric.label!r}"
            + (f" together with {x.label!r}" if x is not None else "")
            + ": run the experiments first (`expfs exp show` lists their metrics)"
        )
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(max(6.0, 0.5 * len(points) + 2), 4.5))
    try:
        if x is None:
            baseline = next((row.name for row in rows if row.is_baseline), None)
            _bars(axes, points, metric, baseline)
        else:
            _scatter(axes, points, metric, x)
        figure.tight_layout()
        output.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(output, format="png", dpi=100)
    finally:
        plt.close(figure)
    return PlotResult(output, skipped, len(points))


def _points(
    rows: Sequence[Row], metric: Column, x: Column | None
) -> tuple[list[tuple[str, Any, float]], list[str]]:
    """Return (name, x value, metric value) per usable row, and the skipped names."""
    points = []
    skipped = []
    for row in rows:
        _, raw = row.get(metric)
        value = _number(raw)
        x_present, x_value = row.get(x) if x is not None else (True, None)
        if value is None or not x_present:
            skipped.append(row.name)
            continue
        points.append((row.name, x_value, value))
    return points, skipped


def _bars(
    axes: Any,
    points: list[tuple[str, Any, float]],
    metric: Column,
    baseline: str | None,
) -> None:
    names = [name for name, _, _ in points]
    values = [value for _, _, value in points]
    positions = range(len(points))
    # The baseline is grey, so the experiments stand out against it.
    colors = [
        BASELINE_COLOR if name == baseline else BAR_COLOR for name, _, _ in points
    ]
    axes.bar(positions, values, color=colors)
    axes.set_xticks(list(positions), names, rotation=45, ha="right")
    axes.set_ylabel(metric.label)
    axes.set_title(f"{metric.label} by experiment")


def _scatter(
    axes: Any, points: list[tuple[str, Any, float]], metric: Column, x: Column
) -> None:
    x_values = [x_value for _, x_value, _ in points]
    numeric = all(_number(v) is not None for v in x_values)
    if numeric:
        positions = [float(v) for v in x_values]
    else:
        # Text (or mixed) values of the param become evenly spaced categories.
        categories = sorted({str(v) for v in x_values})
        positions = [float(categories.index(str(v))) for v in x_values]
        axes.set_xticks(range(len(categories)), categories)
    values = [value for _, _, value in points]
    axes.scatter(positions, values, color=POINT_COLOR, zorder=3)
    # Rows at the same point share one label, so their names stay readable.
    labels: dict[tuple[float, float], list[str]] = {}
    for (name, _, value), position in zip(points, positions, strict=True):
        labels.setdefault((position, value), []).append(name)
    for point, names in labels.items():
        axes.annotate(
            ", ".join(names),
            point,
            textcoords="offset points",
            xytext=(4, 4),
            fontsize=8,
        )
    axes.set_xlabel(x.label)
    axes.set_ylabel(metric.label)
    axes.set_title(f"{metric.label} against {x.label}")
    axes.grid(True, alpha=0.3)


def write_html(
    table: Table,
    png: Path,
    output: Path,
    *,
    title: str,
    precision: int = DEFAULT_PRECISION,
) -> Path:
    """Write a self-contained page: the PNG embedded as a data URL, then the table."""
    from expfs.report.render import headers, table_cells

    image = base64.b64encode(png.read_bytes()).decode("ascii")
    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in headers(table))
    body = "\n".join(
        "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in cells) + "</tr>"
        for cells in table_cells(table, precision)
    )
    page = PAGE.format(
        title=html.escape(title),
        image=image,
        head=head,
        body=body,
    )
    output.write_text(page, encoding="utf-8")
    return output


PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; }}
th, td {{ border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; }}
th {{ background: #f3f3f3; }}
</style>
</head>
<body>
<h1>{title}</h1>
<img alt="{title}" src="data:image/png;base64,{image}">
<table>
<thead><tr>{head}</tr></thead>
<tbody>
{body}
</tbody>
</table>
</body>
</html>
"""
