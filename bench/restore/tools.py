"""The restore tools: expfs, DVC with each cache type, and cp as the floor.

Every pipeline tool runs the same one-stage pipeline, whose command copies
variant A or B of the case's output (chosen by the `variant` param) into
`out` and appends a line to `runs.log`. Set-up runs it once per variant, so
the run-cache has both; from then on a param flip must restore `out`
without running the command, and a third line in `runs.log` fails the run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.restore.data import Check, Manifest, compare
from bench.restore.env import EXPFS
from bench.restore.measure import (
    Completed,
    ToolFailed,
    ToolPending,
    run_quiet,
    timed_run,
)

STAGE_FILE = """\
stages:
  make:
    cmd: sh make.sh
    deps: [make.sh]
    params: [variant]
    outs: [out]
"""
MAKE_SCRIPT = """\
variant=$(sed -n 's/^variant: //p' params.yaml)
cp -a "{source}/$variant/out" out
echo "$variant" >> runs.log
"""
EXPFS_RESTORED = "restored from the run-cache"
DVC_RESTORED = "is cached - skipping run, checking out outputs"
INPROCESS = str(Path(__file__).with_name("inprocess.py"))


@dataclass
class Sample:
    """One verified restore: its times by measure, and the result of the check."""

    seconds: dict[str, float]
    check: Check


def write_pipeline(repo: Path, source: Path) -> None:
    (repo / "dvc.yaml").write_text(STAGE_FILE)
    (repo / "make.sh").write_text(MAKE_SCRIPT.format(source=source))
    (repo / "params.yaml").write_text("variant: A\n")


def set_variant(repo: Path, variant: str) -> None:
    (repo / "params.yaml").write_text(f"variant: {variant}\n")


def count_runs(repo: Path) -> int:
    try:
        return len((repo / "runs.log").read_text().splitlines())
    except FileNotFoundError:
        return 0


def make_writable_and_remove(path: Path) -> None:
    """Remove `path`, including the read-only folders DVC and the store leave."""
    if not os.path.lexists(path):
        return
    if path.is_dir() and not path.is_symlink():
        subprocess.run(["chmod", "-R", "u+w", str(path)], check=False)
        shutil.rmtree(path)
    else:
        path.unlink()


class PipelineRepo:
    """A Git repository holding the benchmark's pipeline, run once per variant."""

    program = ""
    ran_marker = ""

    def __init__(self, root: Path, source: Path, env: dict[str, str]) -> None:
        self.root = root
        self.source = source
        self.env = env

    def repro(self, variant: str, *extra: str) -> Completed:
        set_variant(self.root, variant)
        return timed_run([self.program, "repro", *extra], self.root, self.env)

    def create(self) -> None:
        self.root.mkdir(parents=True)
        run_quiet(["git", "init", "-q"], self.root, self.env)
        self.init_tool()
        write_pipeline(self.root, self.source)
        for variant in ("A", "B"):
            self.repro(variant)
        if count_runs(self.root) != 2:
            raise ToolFailed(
                f"set-up in {self.root} ran the stage {count_runs(self.root)} times, not 2"
            )

    def init_tool(self) -> None:
        raise NotImplementedError


class ExpfsRepo(PipelineRepo):
    program = EXPFS

    def init_tool(self) -> None:
        run_quiet([EXPFS, "init"], self.root, self.env)
        (self.root / ".gitignore").write_text("out\nruns.log\n")

    def commit(self) -> None:
        run_quiet(["git", "add", "-A"], self.root, self.env)
        run_quiet(["git", "commit", "-qm", "benchmark pipeline"], self.root, self.env)


class DvcRepo(PipelineRepo):
    def __init__(
        self, root: Path, source: Path, env: dict[str, str], dvc: Path
    ) -> None:
        super().__init__(root, source, env)
        self.program = str(dvc)

    def init_tool(self) -> None:
        run_quiet([self.program, "init", "-q"], self.root, self.env)
        (self.root / ".gitignore").write_text("runs.log\n")
        self.set_cache_type("copy")

    def set_cache_type(self, cache_type: str) -> None:
        (self.root / ".dvc" / "config.local").write_text(
            f"[core]\n    analytics = false\n[cache]\n    type = {cache_type}\n"
        )


class RestoreTool:
    """A way to get a cached stage's output back, measured one restore at a time."""

    name = ""
    label = ""

    def prepare(self) -> None:
        """Do untimed set-up; raise ToolPending when the tool cannot be measured."""

    def measure(self, expected: Manifest) -> Sample:
        raise NotImplementedError

    def close(self) -> None:
        """Undo what `prepare` set up that outlives the case folder (mounts)."""


class PipelineTool(RestoreTool):
    marker = ""
    # Arguments after `repro`.
    repro_args: tuple[str, ...] = ()

    def __init__(self, repo: PipelineRepo) -> None:
        self.repo = repo

    @property
    def cwd(self) -> Path:
        return self.repo.root

    def flip(self, variant: str, timed: bool = True) -> float:
        """Set the param to `variant` and reproduce; a timed flip must restore.

        An untimed flip may also find the output up to date, as when set-up
        left that variant in place.
        """
        runs_before = count_runs(self.cwd)
        set_variant(self.cwd, variant)
        done = timed_run(
            [self.repo.program, "repro", *self.repro_args], self.cwd, self.repo.env
        )
        if timed or count_runs(self.cwd) != runs_before:
            self.expect_restored(done.output, runs_before)
        return done.seconds

    def expect_restored(self, output: str, runs_before: int) -> None:
        if self.marker not in output:
            raise ToolFailed(
                f"{self.label}: repro did not restore from the run-cache: {output.strip()[-500:]}"
            )
        if count_runs(self.cwd) != runs_before:
            raise ToolFailed(f"{self.label}: the stage's command ran during a restore")

    def measure(self, expected: Manifest) -> Sample:
        """Time a restore of variant A that replaces this tool's own copy of A.

        The checkout tools of one program share a repository, so `out`
        first contains what the previous tool wrote, perhaps links whose
        removal frees no memory. A copy restore then needs a fresh
        gigabyte of page cache. On this virtual machine that took up to
        12 s, against 0.35 s when the tool's own earlier copy had just
        been freed. Writing once to each page of 12 GiB of fresh memory
        took 78 s here, so the host seems to supply each page at its first
        touch (an estimate from that one measurement).
        Restoring A once with this tool first makes every tool's timed
        restore replace its own earlier output, as a user flipping a
        param back and forth with one link type does.
        """
        self.flip("B", timed=False)
        self.flip("A", timed=False)
        self.flip("B", timed=False)
        seconds = self.flip("A")
        return Sample({"command": seconds}, compare(expected, self.cwd / "out"))


class ExpfsCheckout(PipelineTool):
    """`expfs repro` in a plain checkout with a link type, as a command.

    The default link type is also timed in-process.
    """

    marker = EXPFS_RESTORED

    def __init__(
        self, repo: PipelineRepo, name: str, label: str, link: str | None
    ) -> None:
        super().__init__(repo)
        self.name = name
        self.label = label
        self.link = link
        self.repro_args = ("--link", link) if link else ()

    def flip_in_process(self, variant: str, timed: bool = True) -> float:
        runs_before = count_runs(self.cwd)
        set_variant(self.cwd, variant)
        done = timed_run(
            [sys.executable, INPROCESS, "repro", str(self.cwd)], env=self.repo.env
        )
        result = json.loads(done.output.strip().splitlines()[-1])
        allowed = [["restored"]] if timed else [["restored"], ["skipped"]]
        if result["actions"] not in allowed or count_runs(self.cwd) != runs_before:
            raise ToolFailed(
                f"{self.label}: in-process repro did {result['actions']}, not a restore"
            )
        return float(result["seconds"])

    def measure(self, expected: Manifest) -> Sample:
        sample = super().measure(expected)
        if not sample.check.content_ok or self.link is not None:
            return sample
        self.flip_in_process("B", timed=False)
        sample.seconds["in_process"] = self.flip_in_process("A")
        second = compare(expected, self.cwd / "out")
        if not second.content_ok or not second.modes_ok:
            return Sample(sample.seconds, second)
        return sample


class ExpfsMount(PipelineTool):
    """`expfs repro` inside a mounted experiment, which grafts instead of copying."""

    name = "expfs-mount"
    label = "expfs mount"
    marker = EXPFS_RESTORED

    def __init__(self, repo: ExpfsRepo, experiment: str) -> None:
        super().__init__(repo)
        self.experiment = experiment
        self.mountpoint: Path | None = None

    @property
    def cwd(self) -> Path:
        if self.mountpoint is None:
            raise ToolPending("the experiment is not mounted")
        return self.mountpoint

    def prepare(self) -> None:
        assert isinstance(self.repo, ExpfsRepo)
        env = self.repo.env
        try:
            self.repo.commit()
            run_quiet([EXPFS, "exp", "new", self.experiment], self.repo.root, env)
            printed = run_quiet([EXPFS, "mount", self.experiment], self.repo.root, env)
        except ToolFailed as exc:
            raise ToolPending(
                f"creating or mounting an experiment failed: {exc}"
            ) from exc
        self.mountpoint = Path(printed.strip().splitlines()[-1])
        set_variant(self.mountpoint, "A")
        done = timed_run([EXPFS, "repro"], self.mountpoint, env)
        if self.marker not in done.output:
            # NOTE: an expfs without repro through the mount's daemon runs the
            # command instead, and this reports the tool as pending.
            raise ToolPending(
                "`expfs repro` inside a mount printed "
                f"{done.output.strip()[-300:]!r} instead of restoring from the run-cache"
            )

    def close(self) -> None:
        if self.mountpoint is None:
            return
        env = self.repo.env
        subprocess.run(
            [EXPFS, "umount", self.experiment],
            cwd=self.repo.root,
            env=env,
            capture_output=True,
        )
        subprocess.run(
            [EXPFS, "exp", "remove", self.experiment],
            cwd=self.repo.root,
            env=env,
            capture_output=True,
        )
        self.mountpoint = None


class DvcTool(PipelineTool):
    """DVC's own run-cache restore with one cache type."""

    marker = DVC_RESTORED

    def __init__(self, repo: DvcRepo, name: str, label: str, cache_type: str) -> None:
        super().__init__(repo)
        self.cache_type = cache_type
        self.name = name
        self.label = label

    def measure(self, expected: Manifest) -> Sample:
        assert isinstance(self.repo, DvcRepo)
        self.repo.set_cache_type(self.cache_type)
        return super().measure(expected)


class CpTool(RestoreTool):
    """`cp` with some flags from the original output, the floor a script could reach."""

    def __init__(self, flags: str, source: Path, dest: Path) -> None:
        self.flags = flags
        self.source = source
        self.dest = dest
        self.name = f"cp{flags}"
        self.label = f"cp {flags}"

    def prepare(self) -> None:
        self.dest.mkdir(parents=True, exist_ok=True)

    def measure(self, expected: Manifest) -> Sample:
        target = self.dest / "out"
        make_writable_and_remove(target)
        done = timed_run(["cp", self.flags, str(self.source), str(target)])
        return Sample({"command": done.seconds}, compare(expected, target))
