"""Command line of the restore benchmark: `python -m bench.restore`."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.restore.data import (
    FILE_BYTES_IN_FOLDERS,
    GiB,
    file_case,
    folder_case,
    parse_size,
)
from bench.restore.env import (
    EXPFS,
    dvc_env,
    install_dvc,
    load_average,
    machine,
    version_of,
)
from bench.restore.measure import ToolPending
from bench.restore.readback import run_readback
from bench.restore.report import render, write_section
from bench.restore.restore_cases import Dvc, check_space, run_case, skipped_case
from bench.restore.workspace import run_workspace

BENCH_DIR = Path(__file__).resolve().parent.parent
PROJECT = BENCH_DIR.parent
FULL = {
    "sizes": "1K,1M,100M,1G,10G",
    "files": "100,10000,100000,100x10M",
    "bases": "1000,10000,100000",
    "reps": 5,
    "warmups": 1,
    "readback_size": "1G",
}
QUICK = {
    "sizes": "1K,1M",
    "files": "100",
    "bases": "100",
    "reps": 1,
    "warmups": 0,
    "readback_size": "1M",
}
PARTS = ("restore", "workspace", "readback")
# --skip-large drops cases above these, for small disks and short runs.
LARGE_BYTES = 1 * GiB
LARGE_FILES = 10_000


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.restore",
        description="Time restores of cached pipeline stages with expfs, DVC and cp, "
        "workspace creation, and reads through a mount; write the Restore section of "
        "bench/RESULTS.md and PNG plots.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small sizes, one run, no warm-up; results go under --work",
    )
    parser.add_argument(
        "--sizes",
        help=f"single-file output sizes, comma-separated, K/M/G binary units (default {FULL['sizes']})",
    )
    parser.add_argument(
        "--files",
        help="folder outputs: a file count (files of 4 KiB) or COUNTxSIZE, "
        f"comma-separated (default {FULL['files']})",
    )
    parser.add_argument(
        "--bases", help=f"file counts of workspace bases (default {FULL['bases']})"
    )
    parser.add_argument(
        "--reps", type=int, help=f"timed runs per figure (default {FULL['reps']})"
    )
    parser.add_argument(
        "--warmups",
        type=int,
        help=f"untimed runs before them (default {FULL['warmups']})",
    )
    parser.add_argument(
        "--readback-size",
        help=f"size of the file read through the mount (default {FULL['readback_size']})",
    )
    parser.add_argument(
        "--sparse-above",
        default="1G",
        help="single files larger than this are sparse: 1 MiB of data, then a hole (default 1G)",
    )
    parser.add_argument(
        "--skip-large",
        action="store_true",
        help="skip outputs above 1 GiB and above 10,000 files, for small disks",
    )
    parser.add_argument(
        "--large-reps",
        type=int,
        help="timed runs, with no warm-up, for outputs and bases above 1 GiB or "
        "10,000 files (default: as --reps, with the warm-ups)",
    )
    parser.add_argument(
        "--render-only",
        type=Path,
        metavar="RECORD",
        help="measure nothing: rewrite the results section and plots from a JSON "
        "record an earlier run wrote (bench/plots/restore.json)",
    )
    parser.add_argument(
        "--parts",
        default=",".join(PARTS),
        help=f"what to measure, comma-separated (default {','.join(PARTS)})",
    )
    parser.add_argument(
        "--work",
        type=Path,
        default=BENCH_DIR / "work",
        help="scratch folder, emptied of this run's files afterwards (default bench/work)",
    )
    parser.add_argument(
        "--dvc-venv",
        type=Path,
        help="virtual environment holding DVC, created if missing (default bench/work/dvc-venv)",
    )
    parser.add_argument(
        "--no-dvc", action="store_true", help="do not install or measure DVC"
    )
    parser.add_argument(
        "--results",
        type=Path,
        help="results page to update (default bench/RESULTS.md; with --quick, WORK/RESULTS.md)",
    )
    parser.add_argument(
        "--plots",
        type=Path,
        help="folder for the PNG plots and the JSON record (default bench/plots; with --quick, WORK/plots)",
    )
    return parser


def numbers(text: str) -> list[int]:
    return [int(part.replace("_", "")) for part in text.split(",") if part.strip()]


def folder_specs(text: str) -> list[tuple[int, int]]:
    """Parse folder outputs: `COUNT` (files of 4 KiB) or `COUNTxSIZE`, comma-separated."""
    specs = []
    for part in text.split(","):
        if not part.strip():
            continue
        count, _, size = part.strip().partition("x")
        if not count.replace("_", "").isdigit():
            raise SystemExit(
                f"invalid folder output {part!r} in --files: give a file count "
                "such as 10000, or a count and a file size such as 100x10M"
            )
        specs.append(
            (
                int(count.replace("_", "")),
                parse_size(size) if size else FILE_BYTES_IN_FOLDERS,
            )
        )
    return specs


def resolve(args: argparse.Namespace) -> dict[str, Any]:
    """Fill unset options from the full or quick defaults."""
    defaults = QUICK if args.quick else FULL
    config: dict[str, Any] = {
        key: getattr(args, key) if getattr(args, key) is not None else value
        for key, value in defaults.items()
    }
    config["sizes"] = [parse_size(s) for s in config["sizes"].split(",") if s.strip()]
    config["files"] = folder_specs(config["files"])
    config["bases"] = numbers(config["bases"])
    config["readback_size"] = parse_size(config["readback_size"])
    if args.skip_large:
        config["sizes"] = [s for s in config["sizes"] if s <= LARGE_BYTES]
        config["files"] = [
            (n, b)
            for n, b in config["files"]
            if n <= LARGE_FILES and n * b <= LARGE_BYTES
        ]
        config["bases"] = [n for n in config["bases"] if n <= LARGE_FILES]
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise SystemExit(
            f"unknown part {', '.join(unknown)}: choose from {', '.join(PARTS)}"
        )
    config["parts"] = parts
    config["large_reps"] = args.large_reps
    config["sparse_above"] = parse_size(args.sparse_above)
    return config


def prepare_dvc(args: argparse.Namespace, work: Path) -> Dvc:
    env = dvc_env(work / "dvc-home")
    if args.no_dvc:
        return Dvc(None, env, "not measured: --no-dvc")
    venv = args.dvc_venv or (BENCH_DIR / "work" / "dvc-venv")
    try:
        return Dvc(install_dvc(venv), env)
    except ToolPending as exc:
        return Dvc(None, env, str(exc))


def runs_for(config: dict[str, Any], size_bytes: int, files: int) -> tuple[int, int]:
    """Return the warm-up and timed runs for a case, fewer for large ones if asked."""
    large = size_bytes > LARGE_BYTES or files > LARGE_FILES
    if large and config["large_reps"] is not None:
        return 0, config["large_reps"]
    return config["warmups"], config["reps"]


def run_all(config: dict[str, Any], dvc: Dvc, work: Path) -> dict[str, Any]:
    record: dict[str, Any] = {}
    if "restore" in config["parts"]:
        cases = [file_case(s, config["sparse_above"]) for s in config["sizes"]]
        cases += [folder_case(n, b) for n, b in config["files"]]
        record["restore"] = []
        for index, case in enumerate(cases):
            reason = check_space(case, work)
            if reason:
                record["restore"].append(skipped_case(case, reason))
                continue
            warmups, reps = runs_for(config, case.disk_bytes, case.files)
            result = run_case(case, work, dvc, warmups, reps, noop=index == 0)
            result.update(warmups=warmups, reps=reps)
            record["restore"].append(result)
    if "workspace" in config["parts"]:
        record["workspace"] = []
        for files in config["bases"]:
            warmups, reps = runs_for(config, 0, files)
            result = run_workspace(files, work, dvc.program, dvc.env, warmups, reps)
            result.update(warmups=warmups, reps=reps)
            record["workspace"].append(result)
    if "readback" in config["parts"]:
        warmups, reps = config["warmups"], config["reps"]
        record["readback"] = run_readback(config["readback_size"], work, warmups, reps)
    return record


def compile_expfs() -> None:
    """Write the bytecode of expfs's own modules, as installing a package does.

    pip compiles every module of a package it installs (DVC's included), but
    an editable install under PYTHONDONTWRITEBYTECODE=1 never caches
    bytecode, so each `expfs` command would compile its modules again.
    """
    import compileall

    for folder in ("expfs", "cli"):
        compileall.compile_dir(str(PROJECT / folder), quiet=1)


def load_note(start: str, end: str) -> str:
    busiest = max(float(start.split()[0]), float(end.split()[0]))
    cores = os.cpu_count() or 1
    if busiest >= cores / 2:
        return "the machine was shared with other work during the run, so absolute times are noisy"
    return "the machine was mostly idle"


def leftover_mounts(work: Path) -> list[str]:
    """List mounts left under this benchmark's own folders of `work`.

    Other benchmarks share `work`, so their mounts are left alone.
    """
    prefixes = tuple(f"{work.resolve() / part}/" for part in PARTS)
    with open("/proc/mounts") as f:
        points = [line.split()[1].replace("\\040", " ") for line in f]
    return [p for p in points if p.startswith(prefixes)]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = resolve(args)
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    results = args.results or (
        work / "RESULTS.md" if args.quick else BENCH_DIR / "RESULTS.md"
    )
    plots_dir = args.plots or (work / "plots" if args.quick else BENCH_DIR / "plots")
    if args.render_only is not None:
        record = json.loads(args.render_only.read_text())
        return publish(record, results, plots_dir)
    compile_expfs()
    dvc = prepare_dvc(args, work)
    dvc_version = (
        version_of([str(dvc.program), "--version"], dvc.env)
        if dvc.program
        else dvc.missing_reason
    )
    record: dict[str, Any] = {
        "command": "python -m bench.restore"
        + "".join(
            f" {shlex.quote(a)}" for a in (argv if argv is not None else sys.argv[1:])
        ),
        "machine": machine(work, dvc_version, PROJECT),
        "config": {k: v for k, v in config.items()},
        "expfs_program": EXPFS,
    }
    try:
        record.update(run_all(config, dvc, work))
    finally:
        for point in leftover_mounts(work):
            print(f"unmounting {point}, left by a failed step", file=sys.stderr)
            subprocess.run(["fusermount3", "-u", point], check=False)
    remove_scratch(work)
    record["load_end"] = load_average()
    record["load_note"] = load_note(record["machine"]["load"], record["load_end"])
    carry_over(record, plots_dir / "restore.json")
    plots_dir.mkdir(parents=True, exist_ok=True)
    (plots_dir / "restore.json").write_text(json.dumps(record, indent=1) + "\n")
    return publish(record, results, plots_dir)


def carry_over(record: dict[str, Any], previous_path: Path) -> None:
    """Copy into `record` the parts this run did not measure, from the previous record.

    A run of `--parts restore` then keeps the workspace and read-back tables
    on the results page, each marked with the run that measured it.
    """
    try:
        previous = json.loads(previous_path.read_text())
    except (FileNotFoundError, ValueError):
        return
    earlier_runs = dict(previous.get("earlier_runs", {}))
    record["earlier_runs"] = {}
    for part in PARTS:
        if part in record["config"]["parts"] or part not in previous:
            continue
        record[part] = previous[part]
        record["earlier_runs"][part] = earlier_runs.get(part) or {
            "command": previous["command"],
            "date": previous["machine"].get("date", "?"),
            "expfs": previous["machine"].get("expfs", "?"),
        }


def remove_scratch(work: Path) -> None:
    """Remove DVC's private home and this run's emptied folders from `work`."""
    shutil.rmtree(work / "dvc-home", ignore_errors=True)
    for part in PARTS:
        with contextlib.suppress(OSError):
            (work / part).rmdir()


def publish(record: dict[str, Any], results: Path, plots_dir: Path) -> int:
    """Write the plots and the results section; return 1 if a tool failed."""
    plots = write_plots_if_possible(record, plots_dir)
    write_section(results, render(record, plots, results))
    print(f"wrote {results} and {len(plots)} plot(s) in {plots_dir}")
    return 1 if has_failures(record) else 0


def write_plots_if_possible(record: dict[str, Any], plots_dir: Path) -> list[Path]:
    try:
        from bench.plots import write_plots
    except ImportError as exc:
        print(
            f"no plots: {exc} (install the bench extra: pip install -e '.[bench]')",
            file=sys.stderr,
        )
        return []
    return write_plots(record, plots_dir)


def has_failures(record: dict[str, Any]) -> bool:
    statuses = [
        r["status"] for c in record.get("restore", []) for r in c["tools"].values()
    ]
    statuses += [
        r["status"] for b in record.get("workspace", []) for r in b["tools"].values()
    ]
    return "failed" in statuses
