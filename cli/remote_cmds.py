"""Remote commands: remote add/list/remove, push, pull; `gc --remote` runs here."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from expfs_cli.argtypes import positive_int


def register(sub: Any) -> None:
    remote = sub.add_parser(
        "remote",
        help="add, list and remove remotes (stores reached through fsspec URLs)",
        description="Remotes live in .expfs/config, which Git ignores, so adding "
        "one never changes your working tree; with --project they go to "
        ".expfs.toml at the repository root, meant to be committed so that every "
        "clone knows the team's remotes. Secrets come from each backend's own "
        "environment variables and files.",
    )
    remote_sub = remote.add_subparsers(dest="remote_command", metavar="COMMAND")
    remote_sub.required = True

    p = remote_sub.add_parser(
        "add",
        help="add a remote (--force replaces one of the same name)",
        description="Add a remote. A name that either config file defines "
        "already is an error unless --force is given, because a remote in "
        ".expfs/config hides one of the same name in .expfs.toml.",
    )
    p.add_argument("name", help="remote name, such as origin")
    p.add_argument(
        "url",
        help="/abs/path or file:///abs/path, sftp://[user@]host[:port]/path or "
        "s3://bucket/path (other fsspec protocols need their package)",
    )
    p.add_argument("--default", action="store_true", help="make it the default remote")
    p.add_argument(
        "-f",
        "--force",
        action="store_true",
        help="replace a remote of the same name in the file written, or override "
        "one in the other file",
    )
    p.add_argument(
        "--read-only",
        action="store_true",
        help="never write to it (pull and look up only)",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--project",
        action="store_true",
        help="keep it in .expfs.toml at the repository root, to be committed",
    )
    where.add_argument(
        "--local",
        action="store_true",
        help="keep it in .expfs/config, which Git ignores (the default)",
    )
    p.add_argument(
        "-o",
        dest="options",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="backend option (endpoint_url, key_filename, port, ...) or expfs option: "
        "salt (mixed into entry names), entries (create-only or append-only), "
        "jobs (parallel transfers)",
    )
    p.set_defaults(handler=cmd_remote_add)

    p = remote_sub.add_parser("list", help="list remotes")
    p.set_defaults(handler=cmd_remote_list)

    p = remote_sub.add_parser("remove", help="remove a remote from both config files")
    p.add_argument("name", help="remote name")
    p.set_defaults(handler=cmd_remote_remove)

    for verb, what in (("push", "upload to"), ("pull", "download from")):
        p = sub.add_parser(
            verb,
            help=f"{what} a remote the objects of experiments and the lock file",
            description=f"{what.capitalize()} a remote the objects that experiments "
            "and expfs.lock reach (all experiments when none is named), and with "
            "--run-cache every run-cache entry and its objects; only what the other "
            "side lacks is sent. Push also sends each experiment's record (params, "
            "metrics, status, snapshots), so that pull can create in another clone "
            "an experiment by name (NAME@ID when several clones made one of that "
            "name).",
        )
        p.add_argument("experiments", nargs="*", metavar="EXP", help="experiment names")
        p.add_argument(
            "-r", "--remote", help="remote name (default: the default remote)"
        )
        p.add_argument(
            "--run-cache", action="store_true", help="also transfer run-cache entries"
        )
        p.add_argument(
            "-j",
            "--jobs",
            type=positive_int,
            metavar="N",
            help="parallel transfers (default: 8)",
        )
        if verb == "pull":
            p.add_argument(
                "--all-experiments",
                action="store_true",
                help="also create here every experiment the remote has a record "
                "of and this clone lacks",
            )
        p.set_defaults(handler=cmd_push if verb == "push" else cmd_pull)


def _store() -> Any:
    from expfs.store.repo import store_for

    return store_for(".")


def _parse_options(pairs: list[str]) -> dict[str, str]:
    from expfs.errors import UsageError

    options: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"invalid option {pair!r}: write -o KEY=VALUE")
        options[key] = value
    return options


def cmd_remote_add(args: argparse.Namespace) -> int:
    from expfs.remote.config import RemoteConfig, config_files

    store = _store()
    local = not args.project
    # A plain absolute path names a local folder.
    url = f"file://{args.url}" if args.url.startswith("/") else args.url
    remote = RemoteConfig(
        args.name, url, args.read_only, _parse_options(args.options), local
    )
    files = config_files(store.root)
    before = files.definitions(remote.name)
    default_before = files.default_name()
    files.add(remote, default=args.default, force=args.force)
    where = files.path(local)
    replaced = [old for path, old in before if path == where]
    if replaced:
        print(
            f"replaced remote {remote.name} ({replaced[0].display_url}) in {where} "
            f"with {remote.display_url}"
        )
    else:
        print(f"added remote {remote.name} ({remote.display_url}) to {where}")
    for path, old in before:
        if path == where:
            continue
        if local:
            print(
                f"it overrides remote {old.name} ({old.display_url}) of {path} "
                "in this clone"
            )
        else:
            print(
                f"remote {old.name} in {path} ({old.display_url}) still overrides "
                "it in this clone; remove that one with `expfs remote remove` and "
                "add this one again to use it"
            )
    if args.default:
        _report_default(files, remote.name, default_before)
    return 0


def _report_default(files: Any, name: str, before: str | None) -> None:
    source, now = files.default_setting()
    if now != name:
        print(
            f"the default remote of this clone stays {now}, set in {source}; "
            f'set `remote = "{name}"` under [core] there to make {name} the default'
        )
    elif before is not None and before != name:
        print(f"default remote changed from {before} to {name}")


def cmd_remote_list(args: argparse.Namespace) -> int:
    from expfs.remote.config import config_files

    files = config_files(_store().root)
    default = files.default_name()
    for name, remote in sorted(files.remotes().items()):
        flags = [
            flag
            for flag, on in (
                ("default", name == default),
                ("read-only", remote.read_only),
                ("local", remote.local),
            )
            if on
        ]
        options = " ".join(
            f"{k}={v}" for k, v in sorted(remote.display_options().items())
        )
        line = f"{name}\t{remote.display_url}"
        if flags:
            line += f"\t({', '.join(flags)})"
        if options:
            line += f"\t{options}"
        print(line)
    return 0


def cmd_remote_remove(args: argparse.Namespace) -> int:
    from expfs.errors import UsageError
    from expfs.remote.config import config_files

    removed = config_files(_store().root).remove(args.name)
    if not removed:
        raise UsageError(f"no remote named {args.name!r}: see `expfs remote list`")
    print(f"removed remote {args.name} from {', '.join(removed)}")
    return 0


def _open(args: argparse.Namespace, store: Any) -> Any:
    from expfs.remote.runs import open_remote

    remote = open_remote(store, args.remote, progress=True)
    if getattr(args, "jobs", None):
        remote.jobs = args.jobs
    return remote


def cmd_push(args: argparse.Namespace) -> int:
    from expfs.remote.runs import push

    store = _store()
    remote = _open(args, store)
    stats = push(store, remote, args.experiments, run_cache=args.run_cache)
    print(stats.summary("pushed", f"to {remote.label}"), file=sys.stderr)
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    from expfs.remote.runs import pull

    store = _store()
    remote = _open(args, store)
    stats = pull(
        store,
        remote,
        args.experiments,
        run_cache=args.run_cache,
        all_experiments=args.all_experiments,
    )
    print(stats.summary("pulled", f"from {remote.label}"), file=sys.stderr)
    return 0


def cmd_gc_remote(args: argparse.Namespace) -> int:
    """Run `expfs gc --remote`, which `expfs_cli.promote_cmds` parses."""
    from expfs.remote.gc import gc_remote
    from expfs.remote.runs import ReadOnlyRemote, open_remote
    from expfs.text import plural

    store = _store()
    remote = open_remote(store, args.remote)
    if remote.read_only and not args.dry_run:
        raise ReadOnlyRemote(
            f"remote {remote.label} is read-only: gc does not write to it"
        )
    report = gc_remote(
        store,
        remote,
        grace_s=args.grace * 3600,
        dry_run=args.dry_run,
        experiments=args.experiments or (),
    )
    verb = "would remove" if args.dry_run else "removed"
    for file in report.records_removed:
        print(f"{verb} experiment record {file.describe()}")
    print(
        f"{verb} {plural(len(report.records_removed), 'experiment record')}, "
        f"{plural(report.record_versions_removed, 'older record version')}, "
        f"{plural(report.removed, 'object')}, "
        f"{plural(report.temporary_removed, 'temporary file')} and "
        f"{plural(report.lease_files_removed, 'file')} of ended leases from "
        f"{remote.label}; kept {report.kept} reachable and {report.too_new} "
        f"younger than {args.grace:g} h"
    )
    return 0
