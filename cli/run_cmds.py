"""Running experiments: exp run, exp kill, and the queue commands."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from expfs.text import plural
from expfs_cli.argtypes import positive_int


def register_exp(exp_sub: Any) -> None:
    """Add `exp run` and `exp kill` to the `exp` command group."""
    p = exp_sub.add_parser(
        "run",
        help="run the pipeline in new experiments, one per combination of -S values",
        description="Create experiments from the working tree as you see it (HEAD "
        "plus uncommitted files, plus what the pipeline declares though Git ignores "
        "it), apply each combination of -S overrides in its own workspace (your "
        "files never change), mount it, run `expfs repro` there with the shared "
        "run-cache, record params and metrics, and unmount.",
    )
    p.add_argument(
        "-S",
        "--set-param",
        dest="overrides",
        action="append",
        default=[],
        metavar="[FILE:]KEY=VALUE",
        help="set a param (train.lr=0.1); comma lists and range(start, stop, step) "
        "make a sweep over every combination; +KEY=VALUE adds a missing key",
    )
    p.add_argument("-n", "--name", help="experiment name (a sweep appends -1, -2, ...)")
    p.add_argument(
        "-j",
        "--jobs",
        type=positive_int,
        default=1,
        metavar="N",
        help="run N experiments at once",
    )
    p.add_argument(
        "--queue",
        action="store_true",
        help="record the experiments without running them",
    )
    p.add_argument(
        "--no-remote",
        action="store_true",
        help="neither look up nor push runs on the default remote",
    )
    p.add_argument(
        "--max-experiments",
        type=positive_int,
        default=1000,
        metavar="N",
        help="reject a sweep of more than N experiments (default 1000)",
    )
    p.add_argument(
        "--keep-mounted",
        action="store_true",
        help="leave each workspace mounted afterwards",
    )
    # Sweeps on a Dask cluster: the option and its handler are in cluster_cmds.
    from expfs_cli.cluster_cmds import add_cluster_option

    add_cluster_option(p)
    p.set_defaults(handler=cmd_exp_run)

    p = exp_sub.add_parser("kill", help="stop running experiments")
    p.add_argument("names", nargs="+", metavar="NAME", help="experiments to stop")
    p.set_defaults(handler=cmd_exp_kill)


def register(sub: Any) -> None:
    queue = sub.add_parser("queue", help="run, inspect and stop queued experiments")
    queue_sub = queue.add_subparsers(
        dest="queue_command", metavar="COMMAND", required=True
    )

    p = queue_sub.add_parser(
        "start",
        help="run every queued experiment, including those queued while it runs",
    )
    p.add_argument(
        "-j",
        "--jobs",
        type=positive_int,
        default=1,
        metavar="N",
        help="run N experiments at once",
    )
    p.set_defaults(handler=cmd_queue_start)

    p = queue_sub.add_parser(
        "status", help="list queued, running and finished experiments"
    )
    p.set_defaults(handler=cmd_queue_status)

    p = queue_sub.add_parser("logs", help="print the output of an experiment's run")
    p.add_argument("name", help="experiment name")
    p.set_defaults(handler=cmd_queue_logs)

    p = queue_sub.add_parser(
        "stop",
        help="stop the queue: its running experiments stop, the rest stay queued",
        description="Stop `expfs queue start`: the experiments it is running are "
        "stopped and recorded as stopped, no more start, and the rest stay queued "
        "for the next `expfs queue start`. Experiments that `expfs exp run` runs "
        "are not in the queue: `expfs exp kill NAME` stops one.",
    )
    p.set_defaults(handler=cmd_queue_stop)


def _check_jobs(jobs: int) -> None:
    from expfs.errors import UsageError

    if jobs < 1:
        raise UsageError(f"-j {jobs} is invalid: give at least 1")


def _summary(experiments: list[Any]) -> int:
    failed = [e for e in experiments if e.status != "success"]
    for e in experiments:
        metrics = ", ".join(
            f"{key}={value}"
            for values in e.metrics.values()
            for key, value in values.items()
        )
        print(f"{e.name}: {e.status}{'  ' + metrics if metrics else ''}")
    if failed:
        names = ", ".join(e.name for e in failed)
        print(
            f"{len(failed)} of {plural(len(experiments), 'experiment')} did not "
            f"succeed ({names}): "
            "see `expfs queue logs NAME`",
            file=sys.stderr,
        )
        return 1
    return 0


def cmd_exp_run(args: argparse.Namespace) -> int:
    from expfs.experiments import reject_in_workspace
    from expfs.store.repo import store_for
    from expfs.sweep import run_experiments
    from expfs_cli.signals import stop_on_signals

    reject_in_workspace("exp run", ".")
    if args.cluster is not None:
        from expfs_cli.cluster_cmds import cmd_exp_run_cluster

        return cmd_exp_run_cluster(args)
    _check_jobs(args.jobs)
    store = store_for(".")
    try:
        with stop_on_signals():
            experiments = run_experiments(
                store,
                args.overrides,
                name=args.name,
                jobs=args.jobs,
                queue=args.queue,
                keep_mounted=args.keep_mounted,
                no_remote=args.no_remote,
                max_experiments=args.max_experiments,
            )
    except KeyboardInterrupt as exc:
        return _report_stop(exc)
    if args.queue:
        for e in experiments:
            print(f"queued {e.name} ({', '.join(e.overrides) or 'no overrides'})")
        return 0
    return _summary(experiments)


def _report_stop(exc: KeyboardInterrupt, rest: str = "") -> int:
    from expfs_cli.signals import exit_status, signal_of

    name = signal_of(exc).name
    print(
        f"expfs: interrupted by {name}: running experiments were stopped"
        + (f", {rest}" if rest else ""),
        file=sys.stderr,
    )
    return exit_status(exc)


def cmd_exp_kill(args: argparse.Namespace) -> int:
    from expfs.experiments import get_experiment
    from expfs.store.repo import store_for
    from expfs.sweep import stop_experiments

    store = store_for(".")
    for name in args.names:
        get_experiment(store, name)
    stopped = stop_experiments(store, args.names)
    for name in args.names:
        state = "stopped" if name in stopped else "was not running"
        print(f"{name}: {state}")
    return 0


def cmd_queue_start(args: argparse.Namespace) -> int:
    from expfs.queue import start_queue
    from expfs.store.repo import store_for
    from expfs_cli.signals import stop_on_signals

    _check_jobs(args.jobs)
    store = store_for(".")
    try:
        with stop_on_signals():
            experiments = start_queue(store, args.jobs)
    except KeyboardInterrupt as exc:
        return _report_stop(exc, "the others stay queued")
    code = _summary(experiments)
    left = _count_queued(store)
    if left:
        print(
            f"{plural(left, 'experiment')} still queued: `expfs queue start` runs them"
        )
    elif not experiments:
        print("no queued experiments")
    return code


def _count_queued(store: Any) -> int:
    from expfs.experiments import list_experiments
    from expfs.sweep import STATUS_QUEUED

    return sum(1 for e in list_experiments(store) if e.status == STATUS_QUEUED)


def cmd_queue_status(args: argparse.Namespace) -> int:
    from expfs.experiments import list_experiments
    from expfs.store.repo import store_for

    store = store_for(".")
    rows = sorted(list_experiments(store), key=lambda e: e.created)
    if not rows:
        print("no experiments")
        return 0
    print(f"{'NAME':<24} {'STATUS':<9} {'CREATED':<16} {'TIME':>8}  OVERRIDES / ERROR")
    for e in rows:
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.created))
        took = f"{e.finished - e.started:.1f} s" if e.started and e.finished else "-"
        detail = e.error or ", ".join(e.overrides)
        print(f"{e.name:<24} {e.status:<9} {created:<16} {took:>8}  {detail}")
    return 0


def cmd_queue_logs(args: argparse.Namespace) -> int:
    from expfs.errors import UsageError
    from expfs.experiments import get_experiment
    from expfs.store.repo import store_for
    from expfs.sweep import run_log_path

    store = store_for(".")
    get_experiment(store, args.name)
    path = run_log_path(store, args.name)
    if not os.path.exists(path):
        raise UsageError(f"experiment {args.name} has not run yet, so it has no log")
    with open(path) as f:
        sys.stdout.write(f.read())
    return 0


def cmd_queue_stop(args: argparse.Namespace) -> int:
    from expfs.queue import stop_queue
    from expfs.store.repo import store_for

    result = stop_queue(store_for("."))
    if result.runner_pid is None:
        print("no queue runner is running: nothing was stopped")
    else:
        who = f" (pid {result.runner_pid})" if result.runner_pid > 0 else ""
        names = f": {', '.join(result.stopped)}" if result.stopped else ""
        print(
            f"stopped the queue runner{who} and "
            f"{plural(len(result.stopped), 'running experiment')}{names}"
        )
    if result.still_queued:
        verb = "stays" if result.still_queued == 1 else "stay"
        print(
            f"{plural(result.still_queued, 'experiment')} {verb} queued: "
            "`expfs queue start` runs them"
        )
    if result.others_running:
        print(
            f"still running, started by `expfs exp run`: "
            f"{', '.join(result.others_running)}; stop them with `expfs exp kill "
            "NAME`"
        )
    return 0
