"""Stage commands: `expfs stage list`."""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(sub: Any) -> None:
    stage = sub.add_parser("stage", help="inspect the stages of a pipeline")
    stage_sub = stage.add_subparsers(dest="stage_command", metavar="COMMAND")
    stage.set_defaults(handler=lambda args: _usage(stage))

    p = stage_sub.add_parser(
        "list",
        help="list every stage after templating, foreach and matrix",
        description="Print each stage of the stage file as DVC reads it: name, "
        "commands, wdir, deps, params by file, outs, metrics and plots with "
        "their flags, frozen, always_changed, desc and meta.",
    )
    p.add_argument(
        "--file",
        default="dvc.yaml",
        metavar="PATH",
        help="stage file to read (default: dvc.yaml in the current folder)",
    )
    p.add_argument("--json", action="store_true", help="print a JSON list of stages")
    p.set_defaults(handler=cmd_list)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def cmd_list(args: argparse.Namespace) -> int:
    from expfs.pipeline import load_pipeline

    pipeline = load_pipeline(args.file)
    stages = [stage.to_json() for stage in pipeline.stages.values()]
    if args.json:
        print(json.dumps(stages, indent=2, default=str))
        return 0
    for entry in stages:
        print(_describe(entry))
    return 0


def _describe(entry: dict[str, Any]) -> str:
    cmd = entry["cmd"]
    commands = [cmd] if isinstance(cmd, str) else cmd
    lines = [entry["name"] + (" (frozen)" if entry["frozen"] else "")]
    if entry["desc"]:
        lines.append(f"  desc: {entry['desc']}")
    lines.extend(f"  cmd: {command}" for command in commands)
    if entry["wdir"] != ".":
        lines.append(f"  wdir: {entry['wdir']}")
    if entry["deps"]:
        lines.append(f"  deps: {', '.join(entry['deps'])}")
    for file_name, keys in entry["params"].items():
        lines.append(f"  params {file_name}: {', '.join(keys) or '(all)'}")
    for kind in ("outs", "metrics", "plots"):
        if entry[kind]:
            lines.append(f"  {kind}: {', '.join(_out_text(o) for o in entry[kind])}")
    if entry["always_changed"]:
        lines.append("  always_changed: true")
    return "\n".join(lines)


def _out_text(out: dict[str, Any]) -> str:
    flags = []
    if not out["cache"]:
        flags.append("cache: false")
    if out["persist"]:
        flags.append("persist: true")
    return out["path"] + (f" ({', '.join(flags)})" if flags else "")
