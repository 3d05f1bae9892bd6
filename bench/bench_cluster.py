"""Benchmark a sweep on `--cluster local` beside a local sweep and DVC's queue.

Run from the project root with the development environment:

    .venv/bin/python -m bench.bench_cluster [--reps N] [--quick]

Each rep times three sweeps of 10 trivial experiments, then three sweeps of
10 experiments whose stage sleeps one second, and starts the tools in a
different order each rep:

- `expfs exp run -S x=... -j 2 --cluster local`, which starts a Dask
  LocalCluster of 2 worker processes, runs the sweep on it and stops it;
- `expfs exp run -S x=... -j 2` in the same repository, which has the same
  default remote (a `file://` folder), so both commands push their results;
- `dvc exp run --queue` once per experiment and `dvc queue start -j 2`,
  timed until DVC has saved every experiment.

It reports the cluster's overhead per experiment, (cluster time - local
time) / sweep size, taken run by run. It also times a LocalCluster of 2
workers started and closed with nothing to run, the fixed part of that
overhead. Every param value is new, so no run-cache serves a stage. A run
counts only after each of its experiments is listed with status success and
score = 2 x its param. The expfs commands get a private TMPDIR, so the
workers' node-local store and Dask's scratch folder stay in this
benchmark's temporary folder. They also run with EXPFS_NO_SERVER=1, each
in its own process. An expfs server would inherit the marker variable by
which this script finds the processes a command left behind, so the
script would end it as one of them. Dask or mount processes still
running 10 s after a command exits are counted on the page and ended by
process id.
The script prints a summary and, unless `--quick`, rewrites the "Cluster"
section of bench/RESULTS.md between its markers.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # Run as a file (`python bench/bench_cluster.py`, as `python -m bench`
    # does), the project root is not on sys.path, and the bench package is in it.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_exp import SWEEP_JOBS, TRAIN_SCRIPT, Dvc, Expfs, fmt, spread  # noqa: E402
from bench.common import (  # noqa: E402
    EXPFS,
    PROJECT,
    Section,
    add_dvc_venv_option,
    add_results_option,
    describe_machine,
    load_before_after,
    measure_in_scratch,
    pair_ratios,
    run_timed,
    summary,
)
from expfs_cli.argtypes import positive_int  # noqa: E402

SECTION = Section("## Cluster", "bench_cluster.py")

SWEEP_SIZE = 10
QUICK_SWEEP_SIZE = 3
SLEEP_S = 1
WORKLOADS = {
    "trivial": ("trivial experiments", TRAIN_SCRIPT),
    "sleep": (
        f"experiments whose stage sleeps {SLEEP_S} s",
        f"sleep {SLEEP_S}\n{TRAIN_SCRIPT}",
    ),
}
TOOLS = ("cluster", "local", "dvc")
# How long processes started by an expfs command may outlive it before the
# benchmark counts them as left behind and ends them.
LEFTOVER_WAIT_S = 10.0
# Set in the environment of every expfs command, which its Dask worker
# processes and mount daemons inherit, so /proc finds them by this variable.
MARKER_VARIABLE = "EXPFS_BENCH_CLUSTER_RUN"
LOCAL_CLUSTER_ALONE = f"""\
import logging
from distributed import Client, LocalCluster
cluster = LocalCluster(n_workers={SWEEP_JOBS}, threads_per_worker=1, processes=True,
    host="127.0.0.1", dashboard_address=None, silence_logs=logging.ERROR)
Client(cluster).close()
cluster.close()
"""


# -- processes and mounts left behind ---------------------------------------------


def marked_pids(marker: str) -> list[int]:
    """Return the processes whose environment contains MARKER_VARIABLE=marker."""
    needle = f"{MARKER_VARIABLE}={marker}".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            pids.append(int(entry))
    return pids


def end_leftovers(marker: str) -> int:
    """Wait for processes started by expfs commands to exit, then end the rest by id.

    Returns how many were still running after LEFTOVER_WAIT_S.
    """
    deadline = time.monotonic() + LEFTOVER_WAIT_S
    while marked_pids(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = marked_pids(marker)
    for pid in left:
        print(f"ending process {pid}, still running after its command", flush=True)
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    return len(left)


def mounts_under(folders: list[Path]) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return [p for p in points if any(p.startswith(f"{d}/") for d in folders)]


def unmount_leftovers(folders: list[Path]) -> list[str]:
    """Unmount what expfs left mounted under `folders` and return those mount points."""
    left = mounts_under(folders)
    for point in left:
        print(f"unmounting {point}, left mounted by expfs", flush=True)
        subprocess.run(["fusermount3", "-u", "-z", point], check=False)
    return left


# -- the three tools ----------------------------------------------------------------


def commit_stage_script(root: Path, script: str, env: Mapping[str, str]) -> None:
    """Replace the stage script that make_repo committed, unless it is the same."""
    if script == TRAIN_SCRIPT:
        return
    (root / "train.sh").write_text(script)
    run_timed(["git", "commit", "-qam", "stage script"], root, env)


class Sweeps:
    """The repositories of one workload: one for expfs, with a remote, one for DVC."""

    def __init__(
        self,
        work: Path,
        script: str,
        expfs_env: Mapping[str, str],
        dvc_program: Path,
        dvc_env: Mapping[str, str],
    ) -> None:
        work.mkdir()
        self.expfs = Expfs(work / "expfs", expfs_env, work)
        commit_stage_script(self.expfs.root, script, expfs_env)
        remote = work / "remote"
        remote.mkdir()
        run_timed(
            [EXPFS, "remote", "add", "origin", remote.as_uri(), "--default"],
            self.expfs.root,
            expfs_env,
        )
        self.dvc = Dvc(work / "dvc", dvc_program, dvc_env)
        commit_stage_script(self.dvc.root, script, self.dvc.env)
        self.work = work

    def run(self, tool: str, values: list[int], name: str) -> float:
        """Run one sweep with `tool`, verify it and return its wall time."""
        if tool == "dvc":
            return self.dvc.sweep(values, name, self.work)
        argv = [EXPFS, "exp", "run", "-S", "x=" + ",".join(map(str, values))]
        argv += ["--name", name, "-j", str(SWEEP_JOBS)]
        if tool == "cluster":
            argv += ["--cluster", "local"]
        seconds, _ = run_timed(argv, self.expfs.root, self.expfs.env)
        self.expfs.verify(values, name)
        return seconds


def time_local_cluster_alone(env: Mapping[str, str], cwd: Path) -> float:
    seconds, _ = run_timed([sys.executable, "-c", LOCAL_CLUSTER_ALONE], cwd, env)
    return seconds


# -- measuring ------------------------------------------------------------------------


def measure(args: argparse.Namespace, work: Path, node_tmp: Path) -> dict[str, Any]:
    from bench.restore.env import base_env, dvc_env, install_dvc, machine, version_of

    dvc_program = install_dvc(args.dvc_venv)
    marker = str(work)
    expfs_env = {
        **base_env(),
        "TMPDIR": str(node_tmp),
        MARKER_VARIABLE: marker,
        "EXPFS_NO_SERVER": "1",
    }
    dvc_environment = dvc_env(work / "dvc-home")
    sweeps = {
        key: Sweeps(work / key, script, expfs_env, dvc_program, dvc_environment)
        for key, (_, script) in WORKLOADS.items()
    }
    record: dict[str, Any] = {
        "machine": machine(work, version_of([str(dvc_program), "--version"]), PROJECT),
        "load_before": os.getloadavg(),
        "sweep_size": args.sweep_size,
        "reps": args.reps,
        "leftover_processes": 0,
        "leftover_mounts": [],
    }
    values = iter(range(1, 1_000_000))

    def after_expfs() -> None:
        record["leftover_processes"] += end_leftovers(marker)
        record["leftover_mounts"] += unmount_leftovers([work, node_tmp])

    print("warm-up: a sweep of 2 with each expfs mode and one DVC run, untimed")
    trivial = sweeps["trivial"]
    for tool in ("cluster", "local"):
        trivial.run(tool, [next(values), next(values)], f"warm-up-{tool}")
        after_expfs()
    trivial.dvc.run(next(values), "warm-up")

    samples = {key: {tool: [] for tool in TOOLS} for key in WORKLOADS}
    alone: list[float] = []
    for rep in range(args.reps):
        order = TOOLS[rep % len(TOOLS) :] + TOOLS[: rep % len(TOOLS)]
        alone.append(time_local_cluster_alone(expfs_env, work))
        after_expfs()
        for key in WORKLOADS:
            for tool in order:
                batch = [next(values) for _ in range(args.sweep_size)]
                seconds = sweeps[key].run(tool, batch, f"{key}-{tool}-{rep}")
                samples[key][tool].append(seconds)
                if tool != "dvc":
                    after_expfs()
            got = samples[key]
            print(
                f"{key} sweep {rep + 1}/{args.reps}: cluster "
                f"{fmt(got['cluster'][-1])}, local {fmt(got['local'][-1])}, DVC "
                f"{fmt(got['dvc'][-1])}",
                flush=True,
            )

    record["local_cluster_alone"] = summary(alone)
    record["workloads"] = {
        key: summarize_workload(got, args.sweep_size) for key, got in samples.items()
    }
    record["load_after"] = os.getloadavg()
    return record


def summarize_workload(got: dict[str, list[float]], sweep_size: int) -> dict[str, Any]:
    """Summarize one workload's sweep times per tool, with the rep-by-rep ratios."""
    cluster, local, dvc = got["cluster"], got["local"], got["dvc"]
    return {
        "samples": got,
        **{tool: summary(got[tool]) for tool in TOOLS},
        "overhead_per_experiment": summary(
            [(c - lo) / sweep_size for c, lo in zip(cluster, local, strict=True)]
        ),
        "cluster_over_local": summary(pair_ratios(cluster, local)),
        "dvc_over_cluster": summary(pair_ratios(dvc, cluster)),
    }


# -- report ---------------------------------------------------------------------------


def ratio(stats: Mapping[str, float]) -> str:
    return f"{stats['median']:.1f} ({stats['min']:.1f}–{stats['max']:.1f})"


def render(record: dict[str, Any], argv: str) -> str:
    m = record["machine"]
    size, reps = record["sweep_size"], record["reps"]
    load = load_before_after(record)
    command = f"python -m bench.bench_cluster {argv}".strip()
    lines = [
        SECTION.heading,
        SECTION.begin,
        "",
        f"`{command}`, {m['date']}: medians of {reps} runs, (min–max) beside them. "
        f"{describe_machine(m, m['dvc'])} Load average {load} (1, 5 and 15 min, "
        "before / after): other work on the machine inflates every figure, so "
        "compare the ratios, taken run by run.",
        "",
        f"Each row is a sweep of {size} experiments with {SWEEP_JOBS} at a time: "
        f"`expfs exp run -S x=... -j {SWEEP_JOBS} --cluster local` (a Dask "
        f"LocalCluster of {SWEEP_JOBS} worker processes, started and stopped by "
        f"the command), `expfs exp run -S x=... -j {SWEEP_JOBS}` in the same "
        "repository and with the same default `file://` remote, and DVC's "
        f"`dvc exp run --queue` {size} times then `dvc queue start -j "
        f"{SWEEP_JOBS}`, timed until Git holds a ref for every experiment. The "
        "stage writes `metrics.json` = 2 × the param `x`, and every run sets new "
        "values, so the stage always runs. A run counts only after each of its "
        "experiments is listed with status success and that metric. The tools "
        "take turns, in a different order each rep.",
        "",
        f"| sweep of {size} | `--cluster local` | local `-j {SWEEP_JOBS}` | "
        "DVC queue | cluster ÷ local | DVC ÷ cluster | cluster overhead per "
        "experiment |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for key, (label, _) in WORKLOADS.items():
        w = record["workloads"][key]
        lines.append(
            f"| {label} | {spread(w['cluster'])} | {spread(w['local'])} | "
            f"{spread(w['dvc'])} | {ratio(w['cluster_over_local'])} | "
            f"{ratio(w['dvc_over_cluster'])} | "
            f"{spread(w['overhead_per_experiment'])} |"
        )
    lines += [
        "",
        "The overhead per experiment is (cluster time − local time) / "
        f"{size}, from the two runs of each rep. A LocalCluster of "
        f"{SWEEP_JOBS} workers started and closed with nothing to run (`python "
        "-c` with distributed's `LocalCluster` and `Client`) took "
        f"{spread(record['local_cluster_alone'])}.",
        "",
    ]
    for paragraph in findings(record):
        lines += [paragraph, ""]
    lines += [SECTION.end, ""]
    return "\n".join(lines)


def findings(record: dict[str, Any]) -> list[str]:
    size = record["sweep_size"]
    alone = record["local_cluster_alone"]["median"]
    trivial = record["workloads"]["trivial"]
    sleep = record["workloads"]["sleep"]
    fixed_share = alone / size

    # Each worker runs one stage at a time, so the busiest runs ceil(size / jobs).
    floor = -(-size // SWEEP_JOBS) * SLEEP_S
    trivial_overhead = trivial["overhead_per_experiment"]["median"]
    sleep_overhead = sleep["overhead_per_experiment"]["median"]

    lines = [
        "An estimate of the fixed part: the LocalCluster started and closed "
        f"alone, spread over a sweep of {size}, comes to {fmt(fixed_share)} per "
        "experiment. "
        f"The trivial sweep's overhead is {fmt(trivial_overhead)} per experiment "
        f"and the sleeping sweep's {fmt(sleep_overhead)}. This benchmark does "
        "not split the rest, which each task spends on its worker (a subprocess "
        "per experiment, the base snapshot fetched from the remote into the "
        "node-local store, the result pushed) and the user's side spends "
        "pulling each result back.",
        f"With {SWEEP_JOBS} jobs, {size} stages of {SLEEP_S} s cannot finish in "
        f"less than {fmt(floor)}: the sleeping sweep took "
        f"{fmt(sleep['cluster']['median'])} on the cluster and "
        f"{fmt(sleep['local']['median'])} locally.",
    ]

    leftover_processes = record["leftover_processes"]
    leftover_mounts = record["leftover_mounts"]
    if leftover_processes or leftover_mounts:
        lines.append(
            f"expfs left {leftover_processes} processes running more than "
            f"{LEFTOVER_WAIT_S:.0f} s after its commands exited, and "
            f"{len(leftover_mounts)} mounts. The benchmark ended and unmounted them."
        )
    else:
        lines.append(
            f"No process outlived an expfs command by more than {LEFTOVER_WAIT_S:.0f} s "
            "and no mount was left behind."
        )
    return lines


def print_summary(record: dict[str, Any]) -> None:
    for key, w in record["workloads"].items():
        print(
            f"{key}: cluster {spread(w['cluster'])}, local {spread(w['local'])}, "
            f"DVC {spread(w['dvc'])}, overhead per experiment "
            f"{spread(w['overhead_per_experiment'])}"
        )
    print(
        f"LocalCluster start and close alone: {spread(record['local_cluster_alone'])}"
    )
    print(
        f"left behind: {record['leftover_processes']} processes, "
        f"{len(record['leftover_mounts'])} mounts"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_cluster",
        description=f"Time sweeps of {SWEEP_SIZE} experiments (trivial, and "
        f"sleeping {SLEEP_S} s) on `--cluster local` with {SWEEP_JOBS} workers "
        f"beside a local `-j {SWEEP_JOBS}` sweep and DVC's queue; rewrite the "
        "Cluster section of bench/RESULTS.md.",
    )
    parser.add_argument(
        "--reps", type=positive_int, default=3, help="timed sweeps per tool (default 3)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"one rep with sweeps of {QUICK_SWEEP_SIZE}; print only, RESULTS.md "
        "unchanged",
    )
    add_dvc_venv_option(parser)
    add_results_option(parser)
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    args.sweep_size = QUICK_SWEEP_SIZE if args.quick else SWEEP_SIZE
    if args.quick:
        args.reps = 1
    if args.reps < 1:
        print("invalid --reps: give at least 1", file=sys.stderr)
        return 2
    # A short folder, because each worker mount's control socket lives under
    # TMPDIR and AF_UNIX socket paths are limited to 107 bytes on Linux.
    node_tmp = Path(tempfile.mkdtemp(prefix="ebc-"))

    def measure_and_clean_up(work: Path) -> dict[str, Any]:
        try:
            return measure(args, work, node_tmp)
        finally:
            end_leftovers(str(work))
            unmount_leftovers([work, node_tmp])

    record = measure_in_scratch("bench_cluster", measure_and_clean_up, [node_tmp])
    if record is None:
        return 1
    print_summary(record)
    if not args.quick:
        SECTION.write(render(record, " ".join(argv)), args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
