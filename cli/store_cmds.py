"""Store commands: init, snapshot, ls, cat, diff, materialize, fsck."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from expfs.text import plural


def register(sub: Any) -> None:
    p = sub.add_parser(
        "init", help="create the store (.expfs/) at the Git repository root"
    )
    p.set_defaults(handler=cmd_init)

    p = sub.add_parser(
        "snapshot",
        help="store a folder, a file or a commit and print its digest",
        description="Store PATH (a folder or a file) or the commit REV and print "
        "the digest of its tree. With neither, snapshot the working tree as Git "
        "shows it: HEAD plus modified and untracked files that .gitignore keeps.",
    )
    p.add_argument("path", nargs="?", help="folder or file to snapshot")
    p.add_argument("--rev", help="snapshot this commit from Git's objects instead")
    p.set_defaults(handler=cmd_snapshot)

    p = sub.add_parser("ls", help="list the entries of a snapshot")
    p.add_argument(
        "digest", help="digest of a tree (a unique prefix of 4+ digits works)"
    )
    p.add_argument("path", nargs="?", default="", help="folder inside the snapshot")
    p.add_argument(
        "-r", "--recursive", action="store_true", help="list every entry below"
    )
    p.set_defaults(handler=cmd_ls)

    p = sub.add_parser("cat", help="print a blob, or a file inside a snapshot")
    p.add_argument("digest", help="digest of a blob, or of a tree with PATH")
    p.add_argument("path", nargs="?", default="", help="file inside the snapshot")
    p.set_defaults(handler=cmd_cat)

    p = sub.add_parser(
        "diff", help="list paths added, removed or modified between snapshots"
    )
    p.add_argument("old", help="digest of the old snapshot")
    p.add_argument("new", help="digest of the new snapshot")
    p.set_defaults(handler=cmd_diff)

    p = sub.add_parser("materialize", help="write a snapshot out as a real folder")
    p.add_argument("digest", help="digest of the snapshot")
    p.add_argument("dest", help="destination folder (new or empty)")
    p.add_argument(
        "--link",
        choices=("copy", "hardlink", "reflink"),
        default="copy",
        help="how files are written: copy (default), hardlink to read-only "
        "blobs where modes agree, or reflink where the filesystem supports it",
    )
    p.add_argument(
        "--force", action="store_true", help="write into a folder that is not empty"
    )
    p.set_defaults(handler=cmd_materialize)

    p = sub.add_parser(
        "fsck", help="re-hash every object and report damaged or missing ones"
    )
    p.set_defaults(handler=cmd_fsck)


def cmd_init(args: argparse.Namespace) -> int:
    from expfs.store.repo import init_store

    store, created = init_store(".")
    state = "created" if created else "already exists"
    print(f"expfs store {state} at {store.root}")
    return 0


def cmd_snapshot(args: argparse.Namespace) -> int:
    from expfs.store.repo import store_for

    store = store_for(".")
    if args.rev and args.path:
        from expfs.errors import UsageError

        raise UsageError("give either PATH or --rev, not both")
    if args.rev:
        from expfs.tree.gitsnap import snapshot_commit

        digest = snapshot_commit(store, os.path.dirname(store.root), args.rev)
    elif args.path:
        from expfs.tree.snapshot import snapshot_path

        digest = snapshot_path(store, args.path, progress=_progress("hashing"))
    else:
        from expfs.tree.gitsnap import snapshot_worktree

        digest = snapshot_worktree(
            store, os.path.dirname(store.root), progress=_progress("hashing")
        )
    _end_progress()
    print(digest)
    return 0


def _resolve_tree(store: Any, digest: str) -> str:
    """Expand `digest` and check that it names a tree, not a file's blob."""
    from expfs.errors import UsageError

    found = store.resolve(digest)
    if not store.has_tree(found):
        raise UsageError(
            f"{found} is a file, not a snapshot of a folder: use `expfs cat "
            f"{found[:12]}` to print it, or give the digest of a tree"
        )
    return str(found)


def _subtree(store: Any, digest: str, path: str) -> tuple[str, Any]:
    """Return (digest, entry or None) of `path` inside snapshot `digest`."""
    from expfs.errors import UsageError
    from expfs.store.trees import Kind, find_entry

    current = _resolve_tree(store, digest)
    entry = None
    for part in [p for p in os.fsencode(path).split(b"/") if p]:
        if entry is not None and entry.kind is not Kind.DIRECTORY:
            raise UsageError(f"{path}: {os.fsdecode(entry.name)} is not a folder")
        entry = find_entry(store.get_tree(current), part)
        if entry is None:
            raise UsageError(f"{path} is not in snapshot {digest}")
        current = entry.digest
    return current, entry


def cmd_ls(args: argparse.Namespace) -> int:
    from expfs.store.repo import store_for
    from expfs.store.trees import Kind

    store = store_for(".")
    digest, entry = _subtree(store, args.digest, args.path)
    if entry is not None and entry.kind is not Kind.DIRECTORY:
        _print_entry(entry, os.fsencode(args.path))
        return 0
    _list(store, digest, b"", args.recursive)
    return 0


def _list(store: Any, digest: str, prefix: bytes, recursive: bool) -> None:
    from expfs.store.trees import Kind

    for entry in store.get_tree(digest):
        path = prefix + entry.name
        _print_entry(entry, path)
        if recursive and entry.kind is Kind.DIRECTORY:
            _list(store, entry.digest, path + b"/", recursive)


def _print_entry(entry: Any, path: bytes) -> None:
    kind = {1: "file", 2: "dir ", 3: "link"}[int(entry.kind)]
    name = os.fsdecode(path) + ("/" if int(entry.kind) == 2 else "")
    sys.stdout.write(
        f"{kind} {entry.mode:04o} {entry.size:>12} {entry.digest}  {name}\n"
    )


def cmd_cat(args: argparse.Namespace) -> int:
    from expfs.errors import UsageError
    from expfs.remote.lazy import ensure_local
    from expfs.store.repo import store_for
    from expfs.store.trees import Kind

    store = store_for(".")
    if args.path:
        digest, entry = _subtree(store, args.digest, args.path)
        if entry is None or entry.kind is Kind.DIRECTORY:
            raise UsageError(f"{args.path} is a folder: use `expfs ls`")
        # A file of a tree restored lazily may still be on the remote.
        ensure_local(store, entry.kind, digest)
    else:
        digest = store.resolve(args.digest)
        if not store.has_blob(digest):
            raise UsageError(f"{digest} is a tree: use `expfs ls`")
    sys.stdout.buffer.write(store.read_blob(digest))
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    from expfs.store.repo import store_for
    from expfs.tree.diff import diff_trees

    store = store_for(".")
    old, new = _resolve_tree(store, args.old), _resolve_tree(store, args.new)
    for change in diff_trees(store, old, new):
        sys.stdout.write(f"{change.status.value} {os.fsdecode(change.path)}\n")
    return 0


def cmd_materialize(args: argparse.Namespace) -> int:
    from expfs.remote.lazy import ensure_local
    from expfs.store.repo import store_for
    from expfs.tree.materialize import materialize

    store = store_for(".")
    digest = store.resolve(args.digest)
    writer = materialize(
        store,
        digest,
        args.dest,
        link=args.link,
        force=args.force,
        progress=lambda files, size: _progress("writing")(files, 0, size),
        ensure=ensure_local,
    )
    _end_progress()
    files, size = plural(writer.files, "file"), plural(writer.bytes, "byte")
    print(f"wrote {files} ({size}) to {args.dest}")
    return 0


def cmd_fsck(args: argparse.Namespace) -> int:
    from expfs.store.fsck import fsck
    from expfs.store.repo import store_for

    store = store_for(".")
    report = fsck(store, progress=lambda n, size: _progress("checking")(n, 0, size))
    _end_progress()
    for problem in report.problems:
        print(problem)
    if report.reindexed:
        files = plural(report.reindexed, "blob file")
        print(f"re-indexed {files} that had no index entry")
    summary = (
        f"checked {plural(report.blobs_checked, 'blob')} "
        f"({plural(report.bytes_checked, 'byte')}) and "
        f"{plural(report.trees_checked, 'tree')}: "
        f"{plural(len(report.problems), 'problem')}"
    )
    if report.lazy_blobs:
        verb = "is" if report.lazy_blobs == 1 else "are"
        summary += (
            f"; {plural(report.lazy_blobs, 'blob')} restored lazily {verb} still "
            "only on a remote (fetched when a mounted file is opened, or by a "
            "checkout)"
        )
    print(summary)
    return 0 if report.ok else 1


_progress_shown = False


def _progress(verb: str) -> Any:
    """Return a callback that draws one progress line on a terminal's stderr."""

    def show(done: int, total: int, size: int) -> None:
        global _progress_shown
        if not sys.stderr.isatty():
            return
        counted = f"{done}/{total} files" if total else plural(done, "file")
        sys.stderr.write(f"\r{verb} {counted}, {size / 1e6:.1f} MB")
        sys.stderr.flush()
        _progress_shown = True

    return show


def _end_progress() -> None:
    if _progress_shown:
        sys.stderr.write("\n")
