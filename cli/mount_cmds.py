"""Mount commands: mount, umount, mounts, shell."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser(
        "mount",
        help="show an experiment as a copy-on-write folder",
        description="Start a daemon that serves experiment NAME at PATH "
        "(default .expfs/mnt/NAME) and return once the folder answers. Git "
        "inside the folder works on the experiment, never on your checkout.",
    )
    p.add_argument("name", help="experiment name")
    p.add_argument("path", nargs="?", help="mount point (created if missing)")
    p.add_argument(
        "--allow-other",
        action="store_true",
        help="let other users see the mount (needs user_allow_other in "
        "/etc/fuse.conf unless root)",
    )
    p.add_argument(
        "--foreground",
        action="store_true",
        help="run the daemon in this process and log to standard error",
    )
    p.add_argument(
        "--nonempty",
        action="store_true",
        help="mount on PATH even if it is not empty, hiding its files until "
        "the unmount (FUSE's nonempty option)",
    )
    p.set_defaults(handler=cmd_mount)

    p = sub.add_parser(
        "umount", help="flush and unmount an experiment, waiting for its daemon"
    )
    p.add_argument("name", help="experiment name")
    p.set_defaults(handler=cmd_umount)

    p = sub.add_parser(
        "mounts", help="list running mounts and notice dead daemons and stale mounts"
    )
    p.set_defaults(handler=cmd_mounts)

    p = sub.add_parser(
        "shell", help="open a shell inside an experiment's mount, mounting it first"
    )
    p.add_argument("name", help="experiment name")
    p.set_defaults(handler=cmd_shell)


def cmd_mount(args: argparse.Namespace) -> int:
    from expfs.fuse.mounts import clean_up, default_mountpoint, start_mount
    from expfs.remote.lazy import BLOB_SOURCE, RemoteBlobSource
    from expfs.store.repo import store_for

    store = store_for(".")
    if args.path is not None and not args.nonempty:
        _check_empty(args.path)
    if args.foreground:
        from expfs.experiments import get_experiment
        from expfs.fuse import daemon

        experiment = get_experiment(store, args.name)
        clean_up(store, args.name)
        path = os.path.abspath(args.path or default_mountpoint(store, args.name))
        os.makedirs(path, exist_ok=True)
        argv = ["--store", store.root, "--name", args.name, "--mountpoint", path]
        argv.append("--foreground")
        if experiment.gitdir:
            argv += ["--gitdir", experiment.gitdir]
        if args.allow_other:
            argv.append("--allow-other")
        return daemon.main(argv, blob_source_factory=RemoteBlobSource)
    path = start_mount(
        store,
        args.name,
        args.path,
        args.allow_other,
        gitdir=_gitdir(store, args.name),
        blob_source=BLOB_SOURCE,
    )
    print(path)
    return 0


def _check_empty(path: str) -> None:
    """Raise UsageError if `path` is a folder with entries, which a mount would hide.

    A mount point, live or stale, is left to `start_mount`, which reports it.
    """
    from expfs.errors import UsageError

    if os.path.ismount(path):
        return
    try:
        entries = os.listdir(path)
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError:
        # A stale FUSE mount fails with ENOTCONN: start_mount cleans it up.
        return
    if entries:
        from expfs.text import plural

        count = plural(len(entries), "entry", "entries")
        raise UsageError(
            f"mount point {path} is not empty ({count}): a mount "
            "would hide its files until the unmount; give an empty or new "
            "folder, or pass --nonempty to mount over them"
        )


def cmd_umount(args: argparse.Namespace) -> int:
    from expfs.fuse.mounts import stop_mount
    from expfs.store.repo import store_for

    store = store_for(".")
    status = stop_mount(store, args.name)
    if status.state == "unmounted":
        print(f"experiment {args.name} is not mounted")
    elif status.state in ("stale", "dead"):
        print(f"cleaned up after the dead daemon {status.pid} of {args.name}")
    else:
        print(f"unmounted {args.name} from {status.mountpoint}")
    return 0


def cmd_mounts(args: argparse.Namespace) -> int:
    from expfs.fuse.mounts import list_mounts
    from expfs.store.repo import store_for

    store = store_for(".")
    rows = [
        (s.name, str(s.pid), s.state, s.mountpoint or "-") for s in list_mounts(store)
    ]
    if not rows:
        return 0
    header = ("NAME", "PID", "STATE", "PATH")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
    for row in [header, *rows]:
        cells = [c.ljust(w) for c, w in zip(row[:3], widths, strict=True)]
        print("  ".join([*cells, row[3]]))
    if any(s.state in ("stale", "dead", "orphan") for s in list_mounts(store)):
        print(
            "expfs: a daemon died or lost its mount: `expfs umount NAME` cleans up",
            file=sys.stderr,
        )
    return 0


def cmd_shell(args: argparse.Namespace) -> int:
    from expfs.fuse.control import mount_status
    from expfs.fuse.mounts import start_mount
    from expfs.remote.lazy import BLOB_SOURCE
    from expfs.store.repo import store_for

    store = store_for(".")
    status = mount_status(store, args.name)
    if status.state == "mounted" and status.mountpoint is not None:
        path = status.mountpoint
    else:
        path = start_mount(
            store, args.name, gitdir=_gitdir(store, args.name), blob_source=BLOB_SOURCE
        )
        print(f"mounted {args.name} at {path}", file=sys.stderr)
    shell = os.environ.get("SHELL") or "/bin/sh"
    os.chdir(path)
    os.environ["EXPFS_EXPERIMENT"] = args.name
    sys.stdout.flush()
    os.execvp(shell, [shell])


def _gitdir(store: Any, name: str) -> str | None:
    """Return experiment `name`'s Git worktree folder, or None for a bare workspace."""
    from expfs.experiments import ExperimentNotFound, get_experiment

    try:
        return get_experiment(store, name).gitdir or None
    except ExperimentNotFound:
        return None  # start_mount names the missing experiment
