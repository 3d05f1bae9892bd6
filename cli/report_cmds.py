"""Comparison commands under `exp`: exp show, exp diff, exp plot.

`cli/exp_cmds.py` calls `register_exp` with the `exp` group's subparsers.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

from expfs.text import plural
from expfs_cli.argtypes import int_in_range

# The same as expfs.report.DEFAULT_PRECISION and MAX_PRECISION, kept here
# so that `--help` does not import the library.
DEFAULT_PRECISION = 5
MAX_PRECISION = 17


def register_exp(exp_sub: Any) -> None:
    _register_show(exp_sub)
    _register_diff(exp_sub)
    _register_plot(exp_sub)


def _add_precision(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--precision",
        type=int_in_range(1, MAX_PRECISION),
        default=DEFAULT_PRECISION,
        metavar="N",
        help=f"significant digits of floats in tables, 1 to {MAX_PRECISION} (default: "
        f"{DEFAULT_PRECISION}); --json and --csv keep every digit",
    )


def _register_show(exp_sub: Any) -> None:
    p = exp_sub.add_parser(
        "show",
        help="show experiments with their params and metrics",
        description="Print one table: the working tree (baseline) and each "
        "experiment, with its status, the params that differ between rows and "
        "every metric. The table uses rich on a terminal and aligned plain "
        "text otherwise.",
    )
    p.add_argument(
        "--all-params",
        action="store_true",
        help="show every param, not only those that differ",
    )
    p.add_argument(
        "--sort-by",
        metavar="NAME",
        help="sort experiments by this metric or param (dotted key, or FILE:KEY). "
        "The baseline stays first and rows without the value go last",
    )
    p.add_argument(
        "--sort-order",
        choices=("asc", "desc"),
        default="asc",
        help="order for --sort-by (default: asc)",
    )
    formats = p.add_mutually_exclusive_group()
    formats.add_argument(
        "--json",
        action="store_const",
        const="json",
        dest="format",
        help="print a JSON list, one object per row with every param and metric",
    )
    formats.add_argument(
        "--csv", action="store_const", const="csv", dest="format", help="print CSV"
    )
    formats.add_argument(
        "--md",
        action="store_const",
        const="md",
        dest="format",
        help="print a Markdown table",
    )
    _add_precision(p)
    p.set_defaults(handler=cmd_show, format=None)


def _register_diff(exp_sub: Any) -> None:
    p = exp_sub.add_parser(
        "diff",
        help="compare two experiments",
        description="Show the params and metrics of OLD and NEW with their "
        "change (NEW minus OLD for numbers), then the files that differ "
        "between their result snapshots (or base snapshots, before a run). "
        "'workspace' names the working tree when no experiment has that name.",
    )
    p.add_argument("old", metavar="OLD", help="experiment name")
    p.add_argument("new", metavar="NEW", help="experiment name")
    p.add_argument(
        "--all", action="store_true", help="list unchanged params and metrics too"
    )
    formats = p.add_mutually_exclusive_group()
    formats.add_argument(
        "--json", action="store_const", const="json", dest="format", help="print JSON"
    )
    formats.add_argument(
        "--md", action="store_const", const="md", dest="format", help="print Markdown"
    )
    _add_precision(p)
    p.set_defaults(handler=cmd_diff, format=None)


def _register_plot(exp_sub: Any) -> None:
    p = exp_sub.add_parser(
        "plot",
        help="draw a metric across experiments (PNG, optionally HTML)",
        description="Write a PNG with a bar per experiment for METRIC, or a "
        "scatter of METRIC against a param with --x. Needs matplotlib "
        "(pip install 'expfs[plots]').",
    )
    p.add_argument(
        "metric", metavar="METRIC", help="metric name (dotted key, or FILE:KEY)"
    )
    p.add_argument("--x", metavar="PARAM", help="param (or metric) for the x axis")
    p.add_argument(
        "-o",
        "--output",
        metavar="FILE.png",
        help="where to write the PNG (default: exp-plot-METRIC.png here)",
    )
    p.add_argument(
        "--html",
        action="store_true",
        help="also write a self-contained HTML page (the PNG and the table) "
        "beside the PNG, with the suffix .html",
    )
    _add_precision(p)
    p.set_defaults(handler=cmd_plot)


def _open() -> tuple[Any, str]:
    from expfs.experiments import repo_root
    from expfs.store.repo import store_for

    store = store_for(".")
    return store, repo_root(store)


def cmd_show(args: argparse.Namespace) -> int:
    from expfs.report import build_table, load_rows, render
    from expfs.report.table import check_precision

    check_precision(args.precision)
    store, repo = _open()
    table = build_table(
        load_rows(store, repo),
        all_params=args.all_params,
        sort_by=args.sort_by,
        descending=args.sort_order == "desc",
    )
    if args.format == "json":
        sys.stdout.write(render.render_json(table))
    elif args.format == "csv":
        sys.stdout.write(render.render_csv(table))
    elif args.format == "md":
        sys.stdout.write(render.render_markdown(table, args.precision))
    elif sys.stdout.isatty():
        render.print_rich(table, args.precision)
    else:
        sys.stdout.write(render.render_text(table, args.precision))
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    from expfs.report import compare, diff_output
    from expfs.report.table import check_precision

    check_precision(args.precision)
    store, repo = _open()
    comparison = compare(store, repo, args.old, args.new)
    if args.format == "json":
        text = diff_output.render_diff_json(comparison)
    elif args.format == "md":
        text = diff_output.render_diff_markdown(
            comparison, include_unchanged=args.all, precision=args.precision
        )
    else:
        text = diff_output.render_diff_text(
            comparison, include_unchanged=args.all, precision=args.precision
        )
    sys.stdout.write(text)
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from expfs.report import build_table, find_column, load_rows
    from expfs.report.plot import plot_metric, write_html
    from expfs.report.table import check_precision

    check_precision(args.precision)
    store, repo = _open()
    rows = load_rows(store, repo)
    table = build_table(rows)
    metric = find_column(table.all_columns, args.metric, kinds=("metrics",))
    x = find_column(table.all_columns, args.x) if args.x else None
    output = Path(args.output or f"exp-plot-{_file_stem(metric.label)}.png")
    result = plot_metric(rows, metric, output, x=x)
    print(f"wrote {result.png} ({plural(result.plotted, 'row')})")
    if result.skipped:
        needed = f"a number for {metric.label}" + (f" and {x.label}" if x else "")
        print(f"left out (without {needed}): {', '.join(result.skipped)}")
    if args.html:
        title = f"{metric.label} across experiments"
        page = write_html(
            table,
            result.png,
            output.with_suffix(".html"),
            title=title,
            precision=args.precision,
        )
        print(f"wrote {page}")
    return 0


def _file_stem(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("._") or "metric"
