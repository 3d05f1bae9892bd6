"""`exp run --cluster`: the option, and the handler that sends a sweep to Dask."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def add_cluster_option(parser: Any) -> None:
    """Add `--cluster ADDRESS` to the `exp run` parser."""
    parser.add_argument(
        "--cluster",
        metavar="ADDRESS",
        help="run each experiment as a task on the Dask scheduler at ADDRESS "
        "(tcp://host:port), or on a local cluster of -j worker processes with "
        "`local`; needs a default remote and the cluster extra",
    )


def cmd_exp_run_cluster(args: argparse.Namespace) -> int:
    """Run `exp run` on a Dask cluster and print the usual summary."""
    from expfs.cluster.client import run_on_cluster
    from expfs.errors import UsageError
    from expfs.store.repo import store_for
    from expfs_cli.run_cmds import _check_jobs, _summary
    from expfs_cli.signals import exit_status, signal_of, stop_on_signals

    _check_jobs(args.jobs)
    for flag, given in (("--queue", args.queue), ("--keep-mounted", args.keep_mounted)):
        if given:
            raise UsageError(
                f"{flag} does not apply to --cluster: experiments run and unmount "
                "on the workers"
            )
    store = store_for(".")
    try:
        with stop_on_signals():
            experiments = run_on_cluster(
                store,
                args.overrides,
                address=args.cluster,
                name=args.name,
                jobs=args.jobs,
            )
    except KeyboardInterrupt as exc:
        print(
            f"expfs: interrupted by {signal_of(exc).name}: experiments running on "
            "the cluster were stopped",
            file=sys.stderr,
        )
        return exit_status(exc)
    return _summary(experiments)
