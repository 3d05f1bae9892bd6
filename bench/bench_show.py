"""Benchmark `expfs exp show` with many experiments, start-up included.

Run from the project root after `make test` (or `make venv`):

    .venv/bin/python bench/bench_show.py [--experiments N] [--runs N] [--quick]

It writes N experiment records (500 by default) with the params and metrics
a sweep leaves, then times `expfs exp show` (plain text, as when piped),
`--json` and `--md` as commands, the same work in-process, and Python's own
start-up beside them. It prints a table and rewrites the "exp show" section
of bench/RESULTS.md, leaving other sections alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    # Run as a file (`python bench/bench_show.py`), the project root is not
    # on sys.path, and the bench package is in it.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    EXPFS,
    Section,
    add_results_option,
    cpu_model,
    median_time,
)
from expfs_cli.argtypes import positive_int  # noqa: E402

SECTION = Section("## exp show")
# Target for `exp show` and `--json` with 500 experiments, start-up included.
TARGET_S = 0.5

STAGE_FILE = """\
stages:
  train:
    cmd: python3 train.py
    deps: [train.py]
    params: [train, model]
    outs: [model.bin]
    metrics: [{metrics.json: {cache: false}}]
"""
PARAMS_FILE = """\
train:
  lr: 0.01
  epochs: 20
  batch_size: 64
model:
  depth: 4
  width: 128
  dropout: 0.1
"""


def git(repo: Path, *args: str) -> None:
    subprocess.run(
        [
            "git",
            "-C",
            str(repo),
            "-c",
            "user.name=bench",
            "-c",
            "user.email=bench@example.invalid",
            *args,
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def make_project(repo: Path, experiments: int) -> None:
    """Create a repository with a pipeline, a store and `experiments` records."""
    from expfs.experiments import Experiment
    from expfs.store import EMPTY_TREE_DIGEST, init_store, layout
    from expfs.store.lmdbenv import close_environment

    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "dvc.yaml").write_text(STAGE_FILE)
    (repo / "params.yaml").write_text(PARAMS_FILE)
    (repo / "train.py").write_text("print('train')\n")
    (repo / "metrics.json").write_text(json.dumps({"loss": 0.5, "acc": 0.8}))
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "pipeline")
    store, _ = init_store(str(repo))
    commit = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    for index in range(experiments):
        lr = [0.001, 0.003, 0.01, 0.03, 0.1][index % 5]
        depth = 2 + index % 7
        record = Experiment(
            f"exp-{index:04d}",
            EMPTY_TREE_DIGEST,
            commit,
            1_800_000_000.0 + index,
            "success" if index % 10 else "failed",
            str(repo / ".git" / "worktrees" / f"exp-{index:04d}"),
            overrides=(f"train.lr={lr}", f"model.depth={depth}"),
            params={
                "params.yaml": {
                    "train.lr": lr,
                    "train.epochs": 20,
                    "train.batch_size": 64,
                    "model.depth": depth,
                    "model.width": 128,
                    "model.dropout": 0.1,
                }
            },
            metrics={
                "metrics.json": {
                    "loss": 1 / (1 + index),
                    "acc": 0.5 + index / (2 * experiments),
                    "eval.f1": 0.4 + index / (3 * experiments),
                    "eval.auc": 0.6 + index / (4 * experiments),
                }
            },
            result=EMPTY_TREE_DIGEST,
            started=1_800_000_000.0 + index,
            finished=1_800_000_010.0 + index,
        )
        store.env.put(layout.DB_EXPERIMENTS, record.name.encode(), record.to_json())
    close_environment(os.path.join(store.root, "index"))


def run_quiet(*args: str, cwd: Path) -> None:
    subprocess.run(args, cwd=cwd, check=True, stdout=subprocess.DEVNULL)


def in_process(repo: Path) -> None:
    """Do what `exp show` does after start-up: read, build and render the table."""
    from expfs.experiments import repo_root
    from expfs.report import build_table, load_rows
    from expfs.report.render import render_text
    from expfs.store.repo import store_for

    store = store_for(str(repo))
    render_text(build_table(load_rows(store, repo_root(store))))


def check_output(repo: Path, experiments: int) -> None:
    """Fail unless `exp show --json` lists the baseline and every experiment."""
    proc = subprocess.run(
        [EXPFS, "exp", "show", "--json"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    )
    rows = json.loads(proc.stdout)
    if len(rows) != experiments + 1:
        raise SystemExit(
            f"exp show --json printed {len(rows)} rows, not {experiments + 1}"
        )


def measure(repo: Path, runs: int) -> dict[str, float]:
    return {
        "load": os.getloadavg()[0],
        "python": median_time(
            lambda: run_quiet(sys.executable, "-c", "pass", cwd=repo), runs
        ),
        "help": median_time(lambda: run_quiet(EXPFS, "--help", cwd=repo), runs),
        "show": median_time(lambda: run_quiet(EXPFS, "exp", "show", cwd=repo), runs),
        "json": median_time(
            lambda: run_quiet(EXPFS, "exp", "show", "--json", cwd=repo), runs
        ),
        "md": median_time(
            lambda: run_quiet(EXPFS, "exp", "show", "--md", cwd=repo), runs
        ),
        "inprocess": median_time(lambda: in_process(repo), runs),
    }


def hardware() -> str:
    return (
        f"{os.cpu_count()} cores ({cpu_model()}), Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}"
    )


def render(times: dict[str, float], experiments: int, runs: int, argv: str) -> str:
    python = times["python"]

    def row(what: str, key: str) -> str:
        seconds = times[key]
        return f"| {what} | {seconds * 1000:.0f} ms | {seconds / python:.1f} |"

    verdict = (
        "under" if times["show"] < TARGET_S and times["json"] < TARGET_S else "over"
    )
    lines = [
        SECTION.heading,
        "",
        f"`bench/bench_show.py {argv}`, {time.strftime('%Y-%m-%d')}: each figure is "
        f"the median of {runs} runs. Machine: {hardware()}, load average "
        f"{times['load']:.1f} when the runs began (other work on the machine "
        "inflates every figure, start-up most).",
        "",
        f"{experiments} experiment records (6 params and 4 metrics each) plus the "
        "baseline, read from the store's index; each command's output goes to a "
        "pipe, so `exp show` prints plain text:",
        "",
        "| what | median | ratio to `python -c pass` |",
        "| --- | ---: | ---: |",
        row("`python -c pass` (the same interpreter)", "python"),
        row("`expfs --help`", "help"),
        row("`expfs exp show`", "show"),
        row("`expfs exp show --json`", "json"),
        row("`expfs exp show --md`", "md"),
        row("read, build and render in-process (no start-up)", "inprocess"),
        "",
        f"Both `exp show` and `--json` are {verdict} the {TARGET_S} s target. "
        "DVC's `dvc exp show` is not measured beside it, because one `dvc exp "
        "run` takes about 1.5 s on this kind of machine, so making 500 DVC "
        "experiments would take over 12 minutes.",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--experiments",
        type=positive_int,
        default=500,
        help="experiment records to write",
    )
    parser.add_argument(
        "--runs", type=positive_int, default=10, help="timed runs per figure"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="3 runs, and print the table without rewriting RESULTS.md",
    )
    parser.add_argument("--work", help="folder for the test repository")
    add_results_option(parser)
    args = parser.parse_args()
    runs = 3 if args.quick else args.runs

    work = Path(tempfile.mkdtemp(prefix="expfs-bench-show.", dir=args.work))
    try:
        repo = work / "repo"
        make_project(repo, args.experiments)
        check_output(repo, args.experiments)
        times = measure(repo, runs)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    argv = " ".join(sys.argv[1:]) or f"--experiments {args.experiments} --runs {runs}"
    section = render(times, args.experiments, runs, argv)
    print(section)
    if not args.quick:
        SECTION.write(section, args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
