"""Promotion commands: exp promote, exp apply, checkout and gc.

`exp promote` and `exp apply` join the `exp` group through `register_exp`,
which `exp_cmds` calls; `checkout` and `gc` are top-level commands.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from expfs.text import plural
from expfs_cli.argtypes import non_negative_float

# `exp promote --into` writes a folder through `Materializer`, which has no
# symlink type.
LINK_TYPES = ("copy", "hardlink", "reflink")


def register(sub: Any) -> None:
    p = sub.add_parser(
        "checkout",
        help="restore the outputs that expfs.lock names from the store",
        description="Write every cached output named by the expfs.lock files of "
        "the current Git checkout (the user's, or a promoted branch's) from the "
        "store, verifying each blob. Outputs that already match are left alone.",
    )
    p.add_argument(
        "--link",
        metavar="TYPES",
        help="how outputs are written: reflink, hardlink, symlink or copy, or a "
        "comma-separated list tried in order (default: [cache] type in "
        ".expfs/config, else reflink,copy); linked files are read-only",
    )
    p.set_defaults(handler=cmd_checkout)

    p = sub.add_parser(
        "gc",
        help="remove objects that nothing needs any more",
        description="Remove the blobs and trees of the store that no experiment, "
        "workspace, run-cache entry, apply backup or expfs.lock in any branch, tag "
        "or checkout reaches. Objects younger than the grace period are kept, so gc "
        "is safe while experiments run. With --remote, clean a remote instead: "
        "its objects that no run-cache entry, experiment record or root mark on "
        "it, and no experiment or expfs.lock of this clone, reaches. Records stay "
        "until --experiments names them, because other clones may use them.",
    )
    p.add_argument(
        "--dry",
        "--dry-run",
        dest="dry_run",
        action="store_true",
        help="only report what would be removed (count and bytes)",
    )
    p.add_argument(
        "--list", action="store_true", help="print each object removed, one a line"
    )
    p.add_argument(
        "--grace",
        type=non_negative_float,
        default=None,
        metavar="HOURS",
        help="keep unreachable objects younger than this many hours (default: 1 "
        "for the local store, 24 with --remote; 0 removes them at once)",
    )
    p.add_argument(
        "--remote", metavar="NAME", help="clean this remote instead of the local store"
    )
    p.add_argument(
        "--experiments",
        nargs="+",
        metavar="EXP",
        help="with --remote, also remove these experiments' records (pushed by "
        "any clone), so that gc frees what only they kept: names, shell "
        "patterns such as 'sweep-*', or NAME@ID for one of several",
    )
    p.set_defaults(handler=cmd_gc)


def register_exp(exp_sub: Any) -> None:
    """Add `promote` and `apply` to the `exp` command group."""
    p = exp_sub.add_parser(
        "promote",
        help="commit an experiment on a new Git branch, or copy it to a folder",
        description="Commit experiment NAME on a new branch from its base commit, "
        "in a separate Git worktree, so your checkout and index stay as they are. "
        "Changed files are committed; outputs that Git ignores or that are large "
        "stay in the store, named with their digests by expfs.lock (`expfs "
        "checkout` restores them). With --into, copy the experiment's files to "
        "DIR/NAME instead.",
    )
    p.add_argument("name", help="experiment name")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--branch", "-b", help="name of the new branch")
    target.add_argument(
        "--into", metavar="DIR", help="copy the experiment's files to DIR/NAME"
    )
    p.add_argument(
        "--worktree",
        metavar="PATH",
        help="keep the Git worktree of the new branch at PATH (default: a "
        "temporary one, removed after the commit)",
    )
    p.add_argument("--tag", help="also tag the new commit (annotated tag)")
    p.add_argument(
        "--current",
        action="store_true",
        help="promote the workspace as it is now instead of its last run's result",
    )
    p.add_argument(
        "--max-git-mib",
        type=non_negative_float,
        default=10.0,
        metavar="MIB",
        help="outputs larger than this many MiB stay in the store even when Git "
        "does not ignore them (default: 10)",
    )
    p.add_argument(
        "--link",
        choices=LINK_TYPES,
        default="copy",
        help="with --into: how files are written (default: copy)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="with --into: write into DIR/NAME even if it is not empty",
    )
    p.set_defaults(handler=cmd_promote)

    p = exp_sub.add_parser(
        "apply",
        help="write an experiment's changes into the working tree",
        description="Write the files experiment NAME changed into your working "
        "tree, leaving every other path alone. Paths that you changed too are "
        "listed and nothing is written, unless --force. The previous state of "
        "what is written is saved first; --undo puts it back.",
    )
    p.add_argument("name", nargs="?", help="experiment name")
    p.add_argument(
        "--force",
        action="store_true",
        help="overwrite paths changed in the working tree too",
    )
    p.add_argument(
        "--current",
        action="store_true",
        help="apply the workspace as it is now instead of its last run's result",
    )
    p.add_argument(
        "--undo",
        nargs="?",
        const="",
        metavar="BACKUP",
        help="put back what an apply wrote, from its backup (default: the latest)",
    )
    p.set_defaults(handler=cmd_apply)


def _store() -> Any:
    from expfs.store.repo import store_for

    return store_for(".")


def cmd_promote(args: argparse.Namespace) -> int:
    from expfs.errors import UsageError
    from expfs.gitio import promote, promote_into

    store = _store()
    if args.into is not None:
        if args.worktree or args.tag:
            raise UsageError("--worktree and --tag go with --branch, not with --into")
        path, snapshot = promote_into(
            store,
            args.name,
            args.into,
            link=args.link,
            current=args.current,
            force=args.force,
        )
        print(f"wrote experiment {args.name} (snapshot {snapshot[:12]}) to {path}")
        return 0
    result = promote(
        store,
        args.name,
        args.branch,
        worktree=args.worktree,
        tag=args.tag,
        current=args.current,
        max_git_bytes=int(args.max_git_mib * (1 << 20)),
    )
    print(
        f"promoted experiment {args.name} to branch {result.branch} "
        f"(commit {result.commit[:12]})"
    )
    if result.carried_commits:
        carried = plural(len(result.carried_commits), "commit")
        print(f"  carried {carried} made with git inside the mount")
    if result.commits_left:
        print(
            f"  not carried: {result.commits_left}; the branch starts at the base "
            "commit and holds the workspace's files as they are"
        )
    if result.tag:
        print(f"tagged {result.tag}")
    for path, why in sorted(result.stored_outputs.items()):
        reason = "ignored by Git" if why == "ignored" else "too large for Git"
        print(f"  {path}: kept in the store ({reason}), named by expfs.lock")
    if result.worktree:
        print(f"worktree: {result.worktree}")
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    from expfs.busy import workspace_lock
    from expfs.errors import UsageError
    from expfs.experiments import reject_in_workspace
    from expfs.gitio import apply, undo_apply

    reject_in_workspace("exp apply", ".", action="writes into")
    store = _store()
    if args.undo is None and not args.name:
        raise UsageError("give the experiment to apply: `expfs exp apply NAME`")
    # Both write in the checkout that contains the store.
    with workspace_lock(store.root, os.path.dirname(store.root)):
        if args.undo is not None:
            backup, paths = undo_apply(store, args.undo or None)
            print(f"restored {plural(len(paths), 'path')} from backup {backup}")
            return 0
        result = apply(store, args.name, force=args.force, current=args.current)
    if not result.written:
        print(
            f"nothing to apply: the working tree has experiment {args.name}'s changes"
        )
        return 0
    for path in result.overwritten:
        print(f"overwrote {path} (it was changed in the working tree too)")
    print(
        f"applied experiment {args.name}: {plural(len(result.written), 'path')} "
        "written; "
        f"undo with `expfs exp apply --undo {result.backup}`"
    )
    return 0


def cmd_checkout(args: argparse.Namespace) -> int:
    from expfs.busy import checkout_state_dir, workspace_lock
    from expfs.errors import ExpfsError
    from expfs.gitio import checkout, store_for_worktree

    link_types = None
    if args.link is not None:
        from expfs.repro.checkout import parse_link_types

        link_types = parse_link_types(args.link, "--link")
    store, worktree = store_for_worktree(".")
    state_dir = checkout_state_dir(store.root, worktree)
    with workspace_lock(state_dir, worktree):
        result = checkout(store, worktree, link_types=link_types)
    print(
        f"restored {plural(len(result.restored), 'output')}, "
        f"{len(result.unchanged)} already up to date"
    )
    if result.missing:
        raise ExpfsError(
            f"the store lacks the objects of {plural(len(result.missing), 'output')} "
            "named by "
            f"expfs.lock, so they were not restored: {', '.join(result.missing)}; "
            "run `expfs repro` to make them again, or `expfs pull` to fetch them"
        )
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    from expfs.errors import UsageError
    from expfs.gc import DEFAULT_GRACE_S, gc

    if args.remote is not None:
        from expfs_cli.remote_cmds import cmd_gc_remote

        args.grace = 24.0 if args.grace is None else args.grace
        return int(cmd_gc_remote(args))
    if args.experiments:
        raise UsageError(
            "--experiments removes experiment records from a remote: give the "
            "remote with --remote NAME (`expfs exp remove` removes local experiments)"
        )
    grace_s = DEFAULT_GRACE_S if args.grace is None else args.grace * 3600
    report = gc(_store(), grace_s=grace_s, dry_run=args.dry_run)
    if args.list:
        for kind, digest, size in report.removed:
            print(f"{kind} {digest} {size}")
    verb = "would remove" if args.dry_run else "removed"
    print(
        f"{verb} {plural(report.blobs_removed, 'blob')} and "
        f"{plural(report.trees_removed, 'tree')}, {_size(report.bytes_removed)}; "
        f"kept {plural(report.blobs_kept, 'reachable blob')}, "
        f"{plural(report.trees_kept, 'tree')}, and "
        f"{plural(report.young_blobs_kept, 'unreachable blob')} and "
        f"{plural(report.young_trees_kept, 'tree')} younger than the grace period"
    )
    return 0


def _size(count: int) -> str:
    value = float(count)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            if unit == "bytes":
                return plural(count, "byte")
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} bytes"
