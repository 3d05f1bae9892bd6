"""Measure making a fresh workspace from a base of many files.

Compared: `expfs exp new` (and, measured apart, `expfs mount` until the
folder responds), `git worktree add`, `cp -r` and `dvc exp run --temp`. The
DVC figure is the whole command with a one-line stage, because DVC has no
command that only prepares its temporary workspace.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.restore.data import hash_file, write_folder
from bench.restore.env import EXPFS, base_env
from bench.restore.measure import ToolFailed, ToolPending, run_quiet, timed_run
from bench.restore.tools import INPROCESS, make_writable_and_remove
from expfs.store.statcache import RACY_WINDOW_NS

TRIVIAL_STAGE = """\
stages:
  touch:
    cmd: echo done > done.txt
    outs: [done.txt]
"""
WORKSPACE_TOOLS = {
    "expfs-exp-new": "`expfs exp new`",
    "expfs-create-in-process": "expfs create, in-process",
    "expfs-mount": "`expfs mount` until it responds",
    "git-worktree": "`git worktree add`",
    "cp-r": "`cp -r`",
    "dvc-exp-temp": "`dvc exp run --temp`",
}


def count_files(root: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(root))


class WorkspaceBench:
    """One base of `files` files and every way of making a workspace from it."""

    def __init__(
        self, folder: Path, files: int, dvc: Path | None, dvc_env: dict[str, str]
    ) -> None:
        self.folder = folder
        self.files = files
        self.base = folder / "base"
        self.expfs_base = folder / "expfs-base"
        self.dvc = dvc
        self.dvc_env = dvc_env
        self.env = base_env()
        self.results: dict[str, dict[str, Any]] = {
            name: {"label": label, "status": "ok", "reason": "", "seconds": []}
            for name, label in WORKSPACE_TOOLS.items()
        }
        self.sample_file = ""
        self.sample_digest = ""

    def set_up(self) -> None:
        make_writable_and_remove(self.folder)
        self.folder.mkdir(parents=True)
        self.base.mkdir()
        run_quiet(["git", "init", "-q"], self.base, self.env)
        write_folder(self.base / "data", self.files)
        self.sample_file = "data/d0000/f000000.bin"
        self.sample_digest = hash_file(self.base / self.sample_file)
        (self.base / "dvc.yaml").write_text(TRIVIAL_STAGE)
        if self.dvc is not None:
            run_quiet([str(self.dvc), "init", "-q"], self.base, self.dvc_env)
            (self.base / ".dvc" / "config.local").write_text(
                "[core]\n    analytics = false\n"
            )
        run_quiet(["git", "add", "-A"], self.base, self.env)
        run_quiet(["git", "commit", "-qm", "base"], self.base, self.env)
        run_quiet(
            ["git", "clone", "-q", str(self.base), str(self.expfs_base)], env=self.env
        )
        run_quiet([EXPFS, "init"], self.expfs_base, self.env)
        # The first experiment hashes every file; later ones find them in
        # the stat cache, which is the state the timed runs measure. The
        # cache skips files changed within its racy window before the hash.
        # Without this wait the first timed run hashes the clone's files
        # again: 22 s by hand at 100,000 files, against 2.0 s with it.
        time.sleep(RACY_WINDOW_NS / 1e9 + 0.1)
        self.expfs(["exp", "new", "warm-up"])
        self.expfs(["exp", "remove", "warm-up"])

    def expfs(self, args: list[str]) -> float:
        try:
            return timed_run([EXPFS, *args], self.expfs_base, self.env).seconds
        except ToolFailed as exc:
            raise ToolPending(f"`expfs {' '.join(args)}` failed: {exc}") from exc

    def expect_files(self, root: Path, what: str) -> None:
        found = count_files(root / "data")
        if found != self.files:
            raise ToolFailed(f"{what} has {found} files under data/, not {self.files}")

    def git_worktree(self, run: int) -> float:
        target = self.folder / f"worktree-{run}"
        seconds = timed_run(
            ["git", "worktree", "add", "-q", "--detach", str(target), "HEAD"],
            self.base,
            self.env,
        ).seconds
        self.expect_files(target, "the worktree")
        run_quiet(
            ["git", "worktree", "remove", "--force", str(target)], self.base, self.env
        )
        return seconds

    def cp_r(self, run: int) -> float:
        target = self.folder / f"copy-{run}"
        seconds = timed_run(["cp", "-r", str(self.base), str(target)]).seconds
        self.expect_files(target, "the copy")
        make_writable_and_remove(target)
        return seconds

    def dvc_exp_temp(self, run: int) -> float:
        if self.dvc is None:
            raise ToolPending("DVC is not installed")
        done = timed_run(
            [str(self.dvc), "exp", "run", "--temp"], self.base, self.dvc_env
        )
        if "Ran experiment" not in done.output:
            raise ToolFailed(
                f"dvc exp run --temp printed {done.output.strip()[-300:]!r}"
            )
        return done.seconds

    def expfs_exp_new(self, run: int) -> float:
        name = f"ws-{run}"
        seconds = self.expfs(["exp", "new", name])
        try:
            mount_s = self.expfs(["mount", name])
            self.check_mount(name, full=run == 0)
            self.results["expfs-mount"]["seconds"].append(mount_s)
        except (ToolPending, ToolFailed) as exc:
            self.results["expfs-mount"].update(status="pending", reason=str(exc))
        finally:
            subprocess.run(
                [EXPFS, "umount", name],
                cwd=self.expfs_base,
                env=self.env,
                capture_output=True,
            )
        self.expfs(["exp", "remove", name])
        return seconds

    def check_mount(self, name: str, full: bool) -> None:
        """Check a file's digest through the mount, and on the first run count them all."""
        mountpoint = self.expfs_base / ".expfs" / "mnt" / name
        if hash_file(mountpoint / self.sample_file) != self.sample_digest:
            raise ToolFailed(f"{self.sample_file} differs through the mount of {name}")
        if full:
            self.expect_files(mountpoint, f"the mount of {name}")

    def expfs_in_process(self, run: int) -> float:
        name = f"ip-{run}"
        try:
            done = timed_run(
                [sys.executable, INPROCESS, "create", str(self.expfs_base), name],
                env=self.env,
            )
        except ToolFailed as exc:
            raise ToolPending(f"in-process create_experiment failed: {exc}") from exc
        self.expfs(["exp", "remove", name])
        return float(json.loads(done.output.strip().splitlines()[-1])["seconds"])

    def measure(self, warmups: int, reps: int) -> None:
        steps: dict[str, Callable[[int], float]] = {
            "expfs-exp-new": self.expfs_exp_new,
            "expfs-create-in-process": self.expfs_in_process,
            "git-worktree": self.git_worktree,
            "cp-r": self.cp_r,
            "dvc-exp-temp": self.dvc_exp_temp,
        }
        for run in range(warmups + reps):
            names = list(steps)
            shift = run % len(names)
            for name in names[shift:] + names[:shift]:
                self.measure_step(name, steps, run, counted=run >= warmups)
        if warmups:
            mount = self.results["expfs-mount"]["seconds"]
            del mount[: max(0, len(mount) - reps)]

    def measure_step(
        self,
        name: str,
        steps: dict[str, Callable[[int], float]],
        run: int,
        counted: bool,
    ) -> None:
        result = self.results[name]
        if result["status"] != "ok":
            return
        try:
            seconds = steps[name](run)
        except ToolPending as exc:
            result.update(status="pending", reason=str(exc))
            print(f"  workspace {self.files}: {name} pending: {exc}", flush=True)
            return
        except ToolFailed as exc:
            result.update(status="failed", reason=str(exc))
            print(f"  workspace {self.files}: {name} failed: {exc}", flush=True)
            return
        if counted:
            result["seconds"].append(seconds)

    def close(self) -> None:
        mounts = self.expfs_base / ".expfs" / "mnt"
        if mounts.is_dir():
            for name in os.listdir(mounts):
                subprocess.run(
                    [EXPFS, "umount", name],
                    cwd=self.expfs_base,
                    env=self.env,
                    capture_output=True,
                )
        make_writable_and_remove(self.folder)


def run_workspace(
    files: int,
    work: Path,
    dvc: Path | None,
    dvc_env: dict[str, str],
    warmups: int,
    reps: int,
) -> dict[str, Any]:
    print(f"workspace: base of {files:,} files", flush=True)
    bench = WorkspaceBench(work / "workspace" / str(files), files, dvc, dvc_env)
    try:
        try:
            bench.set_up()
        except ToolPending as exc:
            for name in ("expfs-exp-new", "expfs-create-in-process", "expfs-mount"):
                bench.results[name].update(status="pending", reason=str(exc))
        bench.measure(warmups, reps)
    finally:
        bench.close()
    return {"files": files, "tools": bench.results}
