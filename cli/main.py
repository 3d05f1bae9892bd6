"""Entry point of the `expfs` command.

Start-up time matters (a cache-hit `repro` should end in a fraction of a
second), so this module imports only os and sys, and the commands served
by the expfs server start without argparse. Each command group lives in
its own module, which registers its parsers and imports the library inside
its handlers, so a store command never loads trio, pyfuse3 or YAML.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    # Annotations only, because importing typing costs start-up time.
    import argparse
    from collections.abc import Sequence

# Modules that register command groups, in the order `--help` lists them.
COMMAND_MODULES = (
    "expfs_cli.store_cmds",
    "expfs_cli.repro_cmds",
    "expfs_cli.exp_cmds",
    "expfs_cli.mount_cmds",
    "expfs_cli.stage_cmds",
    "expfs_cli.promote_cmds",
    "expfs_cli.remote_cmds",
    "expfs_cli.run_cmds",
)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Build the parser; with `command`, stop after the group that defines it.

    Building every group's parsers costs tens of milliseconds of start-up,
    which is a large part of a cache-hit `repro`.
    """
    import argparse
    import importlib

    parser = argparse.ArgumentParser(
        prog="expfs",
        description="Run many ML experiments side by side, each in its own "
        "copy-on-write folder over a content store.",
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="log more (repeat for debug)"
    )
    parser.add_argument(
        "-C", dest="cwd", metavar="DIR", help="run as if started in DIR"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
        if command is not None and command in sub.choices:
            break
    return parser


def command_of(argv: Sequence[str]) -> str | None:
    """Return the command word of `argv` (its first argument that is not an option)."""
    skip_value = False
    for arg in argv:
        if skip_value:
            skip_value = False
        elif arg == "-C":
            skip_value = True
        elif not arg.startswith("-"):
            return arg
    return None


def main(
    argv: Sequence[str] | None = None, parser: argparse.ArgumentParser | None = None
) -> int:
    """Run the `expfs` command `argv`; return its exit status.

    Run as the `expfs` program (no `argv`), the commands that mount run in
    the expfs server, which has their imports done (see `expfs_cli.server`).
    """
    if argv is None:
        from expfs_cli import client

        if client.served(sys.argv[1:]):
            served_code: int | None = client.run_in_server(sys.argv[1:])
            if served_code is not None:
                return served_code
    args_list = sys.argv[1:] if argv is None else list(argv)
    parser = parser or build_parser(command_of(args_list))
    args = parser.parse_args(args_list)
    if args.command is None:
        parser.print_help()
        return 2
    import logging

    level = logging.WARNING - 10 * args.verbose
    logging.basicConfig(
        level=max(level, logging.DEBUG), format="%(levelname)s: %(message)s"
    )
    if args.cwd:
        try:
            os.chdir(args.cwd)
        except OSError as exc:
            print(
                f"expfs: error: -C {args.cwd}: {exc.strerror}: give an existing folder",
                file=sys.stderr,
            )
            return 2
    from expfs.errors import ExpfsError

    try:
        code: int = args.handler(args)
        return code
    except ExpfsError as exc:
        print(f"expfs: error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        from expfs_cli.signals import exit_status

        print("expfs: interrupted", file=sys.stderr)
        return exit_status(exc)
    except BrokenPipeError:
        # The reader of our output went away (`expfs ls | head`).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
