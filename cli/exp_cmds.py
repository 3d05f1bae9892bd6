"""Experiment commands: exp new, exp list, exp remove.

Other modules add theirs to the `exp` group through `register_exp` hooks.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Any


def register(sub: Any) -> None:
    exp = sub.add_parser("exp", help="create, list and remove experiments")
    exp_sub = exp.add_subparsers(dest="exp_command", metavar="COMMAND", required=True)

    p = exp_sub.add_parser(
        "new",
        help="create an experiment",
        description="Create experiment NAME from the working tree as Git shows "
        "it (HEAD plus modified and untracked files that .gitignore keeps), or "
        "from commit REV. Creating one costs the same for any size of project.",
    )
    p.add_argument(
        "name",
        help="experiment name: a name `git check-ref-format` accepts, without '/' "
        "or '@', starting with a letter or digit",
    )
    p.add_argument("--from", dest="from_rev", metavar="REV", help="base commit")
    p.set_defaults(handler=cmd_new)

    p = exp_sub.add_parser("list", help="list experiments")
    p.set_defaults(handler=cmd_list)

    p = exp_sub.add_parser(
        "remove",
        help="remove experiments (mounted ones are kept)",
        description="Remove experiments: their records, workspaces and Git "
        "worktrees. Mounted experiments are not removed; they are listed, and "
        "the command exits with status 1. `expfs gc` frees their objects.",
    )
    p.add_argument("names", nargs="*", metavar="NAME", help="experiment names")
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--all-failed", action="store_true", help="remove every failed experiment"
    )
    which.add_argument("--all", action="store_true", help="remove every experiment")
    p.set_defaults(handler=cmd_remove)

    from expfs_cli import run_cmds

    run_cmds.register_exp(exp_sub)

    from expfs_cli import promote_cmds

    promote_cmds.register_exp(exp_sub)

    from expfs_cli import report_cmds

    report_cmds.register_exp(exp_sub)


def cmd_new(args: argparse.Namespace) -> int:
    from expfs.experiments import create_experiment, reject_in_workspace, repo_root
    from expfs.store.repo import store_for
    from expfs.sweep import record_base_params

    if args.from_rev is None:
        reject_in_workspace("exp new", ".", "or give a commit with --from REV")
    store = store_for(".")
    experiment = create_experiment(store, repo_root(store), args.name, args.from_rev)
    record_base_params(store, experiment)
    print(
        f"created experiment {experiment.name} on commit "
        f"{experiment.base_commit[:12]} (snapshot {experiment.base[:12]})"
    )
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from expfs.experiments import list_experiments
    from expfs.fuse.control import mount_status
    from expfs.store.repo import store_for

    store = store_for(".")
    rows = []
    for experiment in list_experiments(store):
        mount = mount_status(store, experiment.name)
        where = mount.mountpoint if mount.state == "mounted" else ""
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(experiment.created))
        rows.append(
            (
                experiment.name,
                experiment.status,
                experiment.base_commit[:12],
                created,
                where or "-",
            )
        )
    _print_table(("NAME", "STATUS", "COMMIT", "CREATED", "MOUNTED AT"), rows)
    return 0


FAILED_STATUS = "failed"


def cmd_remove(args: argparse.Namespace) -> int:
    from expfs.errors import UsageError
    from expfs.experiments import (
        ExperimentBusy,
        get_experiment,
        list_experiments,
        remove_experiment,
    )
    from expfs.fuse.control import mount_status
    from expfs.store.repo import store_for

    store = store_for(".")
    if args.names and (args.all or args.all_failed):
        raise UsageError("give experiment names or --all/--all-failed, not both")
    if args.all or args.all_failed:
        chosen = [
            e.name
            for e in list_experiments(store)
            if args.all or e.status == FAILED_STATUS
        ]
    elif args.names:
        chosen = [get_experiment(store, name).name for name in args.names]
    else:
        raise UsageError("give experiment names, --all-failed or --all")
    busy: list[str] = []
    for name in dict.fromkeys(chosen):
        mount = mount_status(store, name)
        if mount.state == "mounted":
            busy.append(f"{name} (mounted at {mount.mountpoint})")
            continue
        remove_experiment(store, name)
        print(f"removed experiment {name}")
    if busy:
        raise ExperimentBusy(
            f"not removed, because they are mounted: {', '.join(busy)}; run "
            "`expfs umount NAME` first"
        )
    return 0


def _print_table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> None:
    if not rows:
        return
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        cells = [str(c).ljust(w) for c, w in zip(row, widths, strict=True)]
        print("  ".join(cells).rstrip())
