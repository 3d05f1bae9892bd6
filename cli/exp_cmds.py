"""Experiment commands: exp new, exp list, exp remove."""

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
    p.add_argument("name", help="experiment name: no '/', not starting with '-' or '.'")
    p.add_argument("--from", dest="from_rev", metavar="REV", help="base commit")
    p.set_defaults(handler=cmd_new)

    p = exp_sub.add_parser("list", help="list experiments")
    p.set_defaults(handler=cmd_list)

    p = exp_sub.add_parser(
        "remove", help="remove an experiment (it must not be mounted)"
    )
    p.add_argument("name", help="experiment name")
    p.set_defaults(handler=cmd_remove)

    from expfs_cli import run_cmds

    run_cmds.register_exp(exp_sub)

    from expfs_cli import report_cmds

    report_cmds.register_exp(exp_sub)


def cmd_new(args: argparse.Namespace) -> int:
    from expfs.experiments import create_experiment, repo_root
    from expfs.store.repo import store_for

    store = store_for(".")
    experiment = create_experiment(store, repo_root(store), args.name, args.from_rev)
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


def cmd_remove(args: argparse.Namespace) -> int:
    from expfs.experiments import remove_experiment
    from expfs.store.repo import store_for

    store = store_for(".")
    remove_experiment(store, args.name)
    print(f"removed experiment {args.name}")
    return 0


def _print_table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> None:
    if not rows:
        return
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        cells = [str(c).ljust(w) for c, w in zip(row, widths, strict=True)]
        print("  ".join(cells).rstrip())
