"""Pipeline commands: repro, status, runs."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser(
        "repro",
        help="run the pipeline, restoring stages the run-cache has seen",
        description="Run the stages of dvc.yaml in DAG order: skip what the lock "
        "file says is up to date, restore what the run-cache has, run the rest.",
    )
    p.add_argument(
        "targets",
        nargs="*",
        metavar="TARGET",
        help="stages to reproduce (default: all): STAGE, FILE:STAGE or DIR:STAGE "
        "for a stage of another stage file (DIR/dvc.yaml), or FILE for all of "
        "its stages",
    )
    p.add_argument(
        "-f", "--force", action="store_true", help="run every selected stage"
    )
    p.add_argument(
        "-s",
        "--single-item",
        action="store_true",
        help="run only the named stages, not their upstream",
    )
    p.add_argument(
        "--downstream",
        action="store_true",
        help="also run the stages that depend on the named ones",
    )
    p.add_argument(
        "--dry",
        action="store_true",
        help="print what would run or be restored, and why",
    )
    p.add_argument(
        "--no-run-cache", action="store_true", help="neither look up nor record runs"
    )
    p.add_argument(
        "-k",
        "--keep-going",
        action="store_true",
        help="run independent stages after a failure",
    )
    p.add_argument(
        "--no-remote",
        action="store_true",
        help="neither look up nor push runs on the default remote",
    )
    p.add_argument(
        "--link",
        metavar="TYPES",
        help="how a plain checkout restores outputs: reflink, hardlink, symlink "
        "or copy, or a comma-separated list tried in order (default: [cache] "
        "type in .expfs/config, else reflink,copy); linked files are read-only",
    )
    p.add_argument("--file", default="dvc.yaml", help="stage file (default: dvc.yaml)")
    loudness = p.add_mutually_exclusive_group()
    loudness.add_argument(
        "-v",
        "--verbose",
        dest="repro_verbose",
        action="store_true",
        help="log at DEBUG level, such as each run-cache decision",
    )
    loudness.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="print only errors and the stages' own output, not a line per stage",
    )
    p.set_defaults(handler=cmd_repro)

    p = sub.add_parser(
        "unprotect",
        help="replace outputs linked to the store by writable copies",
        description="Replace files that `expfs repro` or `expfs checkout` with "
        "--link hardlink or symlink linked to the store with private writable "
        "copies, as `dvc unprotect` "
        "does, so that writing to them cannot change stored content.",
    )
    p.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="outputs of stages, or files or folders inside them",
    )
    p.add_argument(
        "--file",
        help="stage file that declares the outputs (default: the dvc.yaml of the "
        "current folder or of its nearest parent)",
    )
    p.set_defaults(handler=cmd_unprotect)

    p = sub.add_parser("status", help="list the stages that are out of date, and why")
    p.add_argument("--file", default="dvc.yaml", help="stage file (default: dvc.yaml)")
    p.set_defaults(handler=cmd_status)

    p = sub.add_parser(
        "runs",
        help="list run-cache entries",
        description="List the runs the run-cache holds, oldest first, each with "
        "its outputs: kind (blob for a file, tree for a folder, symlink), "
        "permission bits in octal (such as 644), size and path.",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help='print a JSON list; "kind" is "blob", "tree" or "symlink" and '
        '"mode" an octal string such as "644"',
    )
    p.set_defaults(handler=cmd_runs)


def _repro(args: argparse.Namespace, **overrides: Any) -> Any:
    from expfs.repro.engine import Options, Repro
    from expfs.repro.place import place_for
    from expfs.store.repo import store_for

    store = store_for(".")
    link_types = None
    if getattr(args, "link", None):
        from expfs.repro.checkout import parse_link_types

        link_types = parse_link_types(args.link, "--link")
    place = place_for(store, os.getcwd(), link_types)
    root = place.root
    stage_file = os.path.relpath(os.path.abspath(args.file), root)
    options = Options(
        force=getattr(args, "force", False),
        single_item=getattr(args, "single_item", False),
        downstream=getattr(args, "downstream", False),
        dry=getattr(args, "dry", False),
        no_run_cache=getattr(args, "no_run_cache", False),
        keep_going=getattr(args, "keep_going", False),
        no_remote=getattr(args, "no_remote", False),
        quiet=getattr(args, "quiet", False),
    )
    for name, value in overrides.items():
        setattr(options, name, value)
    return Repro(store, place, stage_file, options)


def split_targets(targets: list[str], stage_file: str) -> tuple[str, list[str]]:
    """Resolve DVC's target forms into one stage file and the stage names in it.

    A target is STAGE, FILE:STAGE, DIR:STAGE (the stage file DIR/dvc.yaml)
    or the path of an existing .yaml stage file, which selects all its
    stages. One repro runs one stage file, so every target must name the
    same file.
    """
    from expfs.errors import UsageError

    chosen: str | None = None
    stages: list[str] = []
    whole_file = False
    for target in targets:
        path, colon, stage = target.rpartition(":")
        if not colon:
            path, stage = "", target
            if target.endswith((".yaml", ".yml")) and os.path.isfile(target):
                path, stage = target, ""
        if not path:
            path = stage_file
        elif os.path.isdir(path):
            path = os.path.join(path, "dvc.yaml")
        if chosen is None:
            chosen = path
        elif os.path.realpath(path) != os.path.realpath(chosen):
            raise UsageError(
                f"targets name two stage files, {chosen} and {path}: run repro "
                "once for each file"
            )
        if stage:
            stages.append(stage)
        else:
            whole_file = True
    if chosen is None:
        return stage_file, []
    if not os.path.exists(chosen):
        raise UsageError(
            f"stage file {chosen} not found: give a target as STAGE, "
            "path/to/dvc.yaml:STAGE or path/to/dir:STAGE"
        )
    return chosen, [] if whole_file else stages


def cmd_repro(args: argparse.Namespace) -> int:
    from expfs.busy import WorkspaceBusy
    from expfs.errors import ExpfsError, UsageError
    from expfs.repro.engine import StageStopped
    from expfs_cli.signals import exit_status, signal_of, stop_on_signals

    _set_log_level(args)
    args.file, args.targets = split_targets(args.targets, args.file)
    repro = _repro(args)
    if not repro.pipeline.stages and not args.targets:
        if not args.quiet:
            _report_no_stages(args.file)
        return 0
    started = time.time()
    outcome, error = "failed", ""
    try:
        with stop_on_signals():
            repro.run(args.targets)
        outcome = "success"
    except KeyboardInterrupt as exc:
        outcome = "stopped"
        name = signal_of(exc).name
        stage = repro.current_stage
        if stage is None:
            print(f"expfs: interrupted by {name} between stages", file=sys.stderr)
        else:
            message = StageStopped(stage).message
            print(f"expfs: interrupted by {name}: {message}", file=sys.stderr)
        return exit_status(exc)
    except (WorkspaceBusy, UsageError):
        # Nothing ran: another command has the workspace, or the request was invalid.
        outcome = ""
        raise
    except ExpfsError as exc:
        error = exc.message
        raise
    finally:
        if outcome:
            _record_in_experiment(repro, args, outcome, started, error)
    return 0


def _record_in_experiment(
    repro: Any, args: argparse.Namespace, outcome: str, started: float, error: str
) -> None:
    """Record a repro in a mounted experiment's record, as `exp run` does."""
    from pathlib import Path

    from expfs.repro.place import DaemonPlace

    if not isinstance(repro.place, DaemonPlace) or args.dry:
        return
    from expfs.sweep import record_workspace_run

    record_workspace_run(
        repro.store,
        repro.place.client.name,
        repro.pipeline,
        Path(repro.place.root),
        outcome,
        started=started,
        error=error,
    )


def _set_log_level(args: argparse.Namespace) -> None:
    """Apply repro's own -v and -q, which DVC users give after the command."""
    import logging

    if args.repro_verbose:
        logging.getLogger().setLevel(logging.DEBUG)
    elif args.quiet:
        logging.getLogger().setLevel(logging.ERROR)


def _report_no_stages(stage_file: str) -> None:
    # As DVC does, an empty pipeline is not an error: there is nothing to do.
    print(f"there are no stages in {stage_file}: nothing to do")


def cmd_unprotect(args: argparse.Namespace) -> int:
    from pathlib import Path

    from expfs.busy import workspace_lock
    from expfs.errors import UsageError
    from expfs.pipeline import load_pipeline
    from expfs.repro.checkout import check_unprotect_paths, unprotect
    from expfs.repro.place import place_for
    from expfs.store.repo import store_for

    store = store_for(".")
    place = place_for(store, os.getcwd())
    stage_file = args.file or _nearest_stage_file(place.root)
    if not os.path.exists(stage_file):
        raise UsageError(
            f"{stage_file} not found: unprotect changes only the outputs that a "
            "stage file declares; run it where dvc.yaml is, or give --file"
        )
    pipeline = load_pipeline(Path(os.path.abspath(stage_file)), Path(place.root))
    outputs = {
        out.workspace_path for stage in pipeline.stages.values() for out in stage.outs
    }
    check_unprotect_paths(place.root, outputs, args.paths, stage_file)
    with workspace_lock(place.state_dir, place.root):
        for path in args.paths:
            count = unprotect(store, path)
            print(f"{path}: {count} linked file(s) replaced by writable copies")
    return 0


def _nearest_stage_file(root: str) -> str:
    """Return the dvc.yaml of the current folder or of its nearest parent inside `root`."""
    here = os.getcwd()
    while True:
        candidate = os.path.join(here, "dvc.yaml")
        if os.path.exists(candidate):
            return os.path.relpath(candidate)
        if os.path.realpath(here) == os.path.realpath(root) or here == "/":
            return "dvc.yaml"
        here = os.path.dirname(here)


def cmd_status(args: argparse.Namespace) -> int:
    repro = _repro(args, dry=True)
    if not repro.pipeline.stages:
        _report_no_stages(args.file)
        return 0
    outcomes = repro.plan()
    stale = [o for o in outcomes if o.action not in ("skipped", "frozen")]
    for outcome in stale:
        print(f"{outcome.stage}: {outcome.action} ({outcome.reason})")
    if not stale:
        print("every stage is up to date")
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from expfs.runcache import RunCache
    from expfs.store.repo import store_for
    from expfs.text import plural

    records = sorted(RunCache(store_for(".")), key=lambda r: r.started)
    if args.json:
        rows = []
        for r in records:
            row = asdict(r)
            row["outputs"] = [_output_json(out) for out in row["outputs"]]
            rows.append(row)
        json.dump(rows, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    for r in records:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.started))
        print(
            f"{r.key[:12]}  {r.stage:<20} {when}  {r.duration_s:7.2f} s  restored {r.restored}x"
        )
        for out in r.outputs:
            size = plural(out.size, "byte")
            print(
                f"    {OUTPUT_KINDS[out.kind]:<7} {out.mode:o}  {size:>12}  {out.path}"
            )
    return 0


# The word for each output kind (Kind.FILE, DIRECTORY, SYMLINK): the type of
# object its digest names in the store.
OUTPUT_KINDS = {1: "blob", 2: "tree", 3: "symlink"}


def _output_json(out: dict[str, Any]) -> dict[str, Any]:
    return {**out, "kind": OUTPUT_KINDS[out["kind"]], "mode": f"{out['mode']:o}"}
