"""Measure restores of cached stages, every tool interleaved in each run."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.restore.data import Case, manifest, write_variants
from bench.restore.env import base_env, free_bytes, free_inodes
from bench.restore.measure import ToolFailed, ToolPending, timed_run
from bench.restore.tools import (
    CpTool,
    DvcRepo,
    DvcTool,
    ExpfsCheckout,
    ExpfsMount,
    ExpfsRepo,
    RestoreTool,
    make_writable_and_remove,
)

# DVC's cache.type for each DVC tool; "reflink,copy" is DVC's default.
DVC_CACHE_TYPES = {
    "dvc-default": "reflink,copy",
    "dvc-copy": "copy",
    "dvc-hardlink": "hardlink",
    "dvc-symlink": "symlink",
}
# `expfs repro --link` of each expfs checkout tool; None is the default
# (reflink,copy, as DVC's).
EXPFS_LINK_TYPES = {
    "expfs-checkout": None,
    "expfs-copy": "copy",
    "expfs-hardlink": "hardlink",
    "expfs-symlink": "symlink",
}
# Each expfs checkout tool and the DVC tool it is compared with.
LIKE_FOR_LIKE = {
    "expfs-checkout": "dvc-default",
    "expfs-copy": "dvc-copy",
    "expfs-hardlink": "dvc-hardlink",
    "expfs-symlink": "dvc-symlink",
}
TOOL_ORDER = (
    "expfs-mount",
    *EXPFS_LINK_TYPES,
    *DVC_CACHE_TYPES,
    "cp-a",
    "cp-al",
)
TOOL_LABELS = {
    "expfs-mount": "expfs mount",
    "expfs-checkout": "expfs default",
    "expfs-copy": "expfs copy",
    "expfs-hardlink": "expfs hardlink",
    "expfs-symlink": "expfs symlink",
    "dvc-default": "DVC default",
    "dvc-copy": "DVC copy",
    "dvc-hardlink": "DVC hardlink",
    "dvc-symlink": "DVC symlink",
    "cp-a": "cp -a",
    "cp-al": "cp -al",
}
SPARE_BYTES = 1 << 30


@dataclass
class Dvc:
    """DVC as installed for the benchmark, or why it is missing."""

    program: Path | None
    env: dict[str, str]
    missing_reason: str = ""


@dataclass
class ToolResult:
    label: str
    status: str = "ok"
    reason: str = ""
    command_s: list[float] = field(default_factory=list)
    in_process_s: list[float] = field(default_factory=list)
    modes_kept: bool = True
    mode_problem: str = ""
    # Restores whose output matched the original, warm-ups included.
    verified: int = 0


def space_needed(case: Case) -> tuple[int, int]:
    """Estimate the bytes and inodes one case needs while every tool has a copy.

    Dense copies: the expfs store, the expfs checkout, DVC's cache and DVC's
    copy-type workspace; the source and `cp -a` keep a sparse file's holes.
    """
    copies = 4 if case.sparse else 6
    return copies * case.disk_bytes + SPARE_BYTES, 8 * case.files + 1000


def check_space(case: Case, work: Path) -> str:
    """Return why `case` does not fit on the disk of `work`, or ""."""
    need_bytes, need_inodes = space_needed(case)
    have_bytes, have_inodes = free_bytes(work), free_inodes(work)
    if have_bytes < need_bytes:
        return f"needs about {need_bytes / (1 << 30):.0f} GiB free in {work}, {have_bytes / (1 << 30):.0f} GiB are"
    if have_inodes < need_inodes:
        return f"needs {need_inodes:,} free inodes in {work}, {have_inodes:,} are"
    return ""


def rotate(items: list[RestoreTool], by: int) -> list[RestoreTool]:
    """Start each run with another tool, so none always goes first on a cold cache."""
    if not items:
        return items
    shift = by % len(items)
    return items[shift:] + items[:shift]


class CaseRun:
    """The tools of one case, their folders and what they measured."""

    def __init__(self, case: Case, folder: Path, dvc: Dvc) -> None:
        self.case = case
        self.folder = folder
        self.source = folder / "source"
        self.dvc = dvc
        self.tools: list[RestoreTool] = []
        self.results = {name: ToolResult(TOOL_LABELS[name]) for name in TOOL_ORDER}
        self.expfs_repo: ExpfsRepo | None = None
        self.dvc_repo: DvcRepo | None = None
        self.prepared: list[RestoreTool] = []

    def mark(self, name: str, status: str, reason: str) -> None:
        self.results[name].status = status
        self.results[name].reason = reason
        print(f"  {self.case.name}: {name} {status}: {reason}", flush=True)

    def set_up(self) -> None:
        make_writable_and_remove(self.folder)
        self.folder.mkdir(parents=True)
        write_variants(self.case, self.source)
        self.set_up_expfs()
        self.set_up_dvc()
        for flags in ("-a", "-al"):
            self.tools.append(
                CpTool(flags, self.source / "A" / "out", self.folder / f"cp{flags}")
            )
        self.prepared = list(self.tools)
        for tool in self.prepared:
            try:
                tool.prepare()
            except ToolPending as exc:
                self.mark(tool.name, "pending", str(exc))
                self.tools.remove(tool)
            except ToolFailed as exc:
                self.mark(tool.name, "failed", str(exc))
                self.tools.remove(tool)

    def set_up_expfs(self) -> None:
        repo = ExpfsRepo(self.folder / "expfs", self.source, base_env())
        try:
            repo.create()
        except ToolFailed as exc:
            for name in ("expfs-mount", *EXPFS_LINK_TYPES):
                self.mark(name, "failed", f"set-up failed: {exc}")
            return
        self.expfs_repo = repo
        self.tools.append(ExpfsMount(repo, f"bench-{self.case.name}"))
        for name, link in EXPFS_LINK_TYPES.items():
            self.tools.append(ExpfsCheckout(repo, name, TOOL_LABELS[name], link))

    def set_up_dvc(self) -> None:
        if self.dvc.program is None:
            for name in DVC_CACHE_TYPES:
                self.mark(name, "pending", self.dvc.missing_reason)
            return
        repo = DvcRepo(self.folder / "dvc", self.source, self.dvc.env, self.dvc.program)
        try:
            repo.create()
        except ToolFailed as exc:
            for name in DVC_CACHE_TYPES:
                self.mark(name, "failed", f"set-up failed: {exc}")
            return
        self.dvc_repo = repo
        self.tools.extend(
            DvcTool(repo, name, TOOL_LABELS[name], cache_type)
            for name, cache_type in DVC_CACHE_TYPES.items()
        )

    def measure(self, warmups: int, reps: int) -> None:
        expected = manifest(self.source / "A" / "out")
        for run in range(warmups + reps):
            for tool in rotate(list(self.tools), run):
                self.measure_tool(tool, expected, counted=run >= warmups)

    def measure_tool(self, tool: RestoreTool, expected: Any, counted: bool) -> None:
        result = self.results[tool.name]
        # Start every tool with no dirty pages: otherwise the tool that
        # crosses the kernel's dirty limit waits for the writes of the tools
        # before it (seen as 0.5 s to 12 s for 1 GiB copies here).
        os.sync()
        try:
            sample = tool.measure(expected)
        except ToolFailed as exc:
            self.mark(tool.name, "failed", str(exc))
            self.tools.remove(tool)
            return
        if not sample.check.content_ok:
            self.mark(
                tool.name, "failed", f"restored output is wrong: {sample.check.problem}"
            )
            self.tools.remove(tool)
            return
        result.verified += 1
        if not sample.check.modes_ok:
            result.modes_kept = False
            result.mode_problem = sample.check.problem
        if counted:
            result.command_s.append(sample.seconds["command"])
            if "in_process" in sample.seconds:
                result.in_process_s.append(sample.seconds["in_process"])

    def measure_noop(self, warmups: int, reps: int) -> dict[str, list[float]]:
        """Time `repro` with nothing to do: each program's start-up floor."""
        times: dict[str, list[float]] = {"expfs": [], "dvc": []}
        repos = {"expfs": self.expfs_repo, "dvc": self.dvc_repo}
        for run in range(warmups + reps):
            for name, repo in repos.items():
                if repo is None:
                    continue
                done = timed_run([repo.program, "repro"], repo.root, repo.env)
                if run >= warmups:
                    times[name].append(done.seconds)
        return times

    def close(self) -> None:
        for tool in self.prepared:
            tool.close()
        make_writable_and_remove(self.folder)

    def as_json(self) -> dict[str, Any]:
        return {
            "case": self.case.name,
            "label": self.case.label,
            "kind": self.case.kind,
            "size_bytes": self.case.size_bytes,
            "files": self.case.files,
            "file_bytes": self.case.file_bytes,
            "sparse": self.case.sparse,
            "tools": {name: vars(result) for name, result in self.results.items()},
        }


def run_case(
    case: Case, work: Path, dvc: Dvc, warmups: int, reps: int, noop: bool
) -> dict[str, Any]:
    """Set up every tool for `case`, measure the restores, clean up; return the record."""
    print(f"restore: {case.label}", flush=True)
    run = CaseRun(case, work / "restore" / case.name, dvc)
    record: dict[str, Any]
    try:
        run.set_up()
        run.measure(warmups, reps)
        record = run.as_json()
        if noop:
            record["noop_s"] = run.measure_noop(warmups, reps)
    finally:
        run.close()
    return record


def skipped_case(case: Case, reason: str) -> dict[str, Any]:
    print(f"restore: {case.label} skipped: {reason}", flush=True)
    return {
        "case": case.name,
        "label": case.label,
        "kind": case.kind,
        "size_bytes": case.size_bytes,
        "files": case.files,
        "file_bytes": case.file_bytes,
        "sparse": case.sparse,
        "skipped": reason,
        "tools": {},
    }
