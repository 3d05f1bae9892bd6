"""One `expfs repro` at a time per workspace: a checkout or a mounted experiment.

A second repro in the same workspace fails at once, naming the process that
holds the workspace, and writes nothing. Commands that only read run beside
it, and a killed repro leaves no lock behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from mounting import mounted_experiment
from waiting_stage import (
    end_stage,
    finish,
    read_pid,
    run_expfs,
    stage_started,
    start_expfs,
    wait_until,
    write_waiting_pipeline,
)


@pytest.fixture
def checkout(repo: Path) -> Path:
    write_waiting_pipeline(repo)
    assert run_expfs(repo, "init").returncode == 0
    return repo


def hold(root: Path, **env: str) -> subprocess.Popen[str]:
    """Start `expfs repro -f slow` in `root` and wait until its stage runs."""
    first = start_expfs(root, "repro", "-f", "slow", **env)
    if not wait_until(lambda: stage_started(root)):
        first.kill()
        raise AssertionError(
            f"the first repro never started its stage: {finish(first)}"
        )
    return first


def test_second_repro_fails_naming_holder(checkout: Path) -> None:
    first = hold(checkout, EXPFS_NO_SERVER="1")
    try:
        second = run_expfs(checkout, "repro", "-f", "slow", EXPFS_NO_SERVER="1")
        runs_log = (checkout / "runs.log").read_text()
    finally:
        end_stage(checkout)
        out, err = finish(first)
    assert second.returncode == 1
    assert f"pid {first.pid}" in second.stderr
    assert "expfs repro -f slow" in second.stderr
    assert "Wait for it to finish" in second.stderr
    assert "Nothing was changed" in second.stderr
    assert second.stdout == ""
    assert runs_log.split() == ["start"]
    assert first.returncode == 0, err
    assert "stage 'slow': ran" in out
    assert (checkout / "out.txt").read_text() == "done\n"


def test_lock_released_after_repro(checkout: Path) -> None:
    (checkout / "go").touch()
    for _ in range(2):
        done = run_expfs(checkout, "repro", "-f", "slow")
        assert done.returncode == 0, done.stderr
    assert (checkout / "runs.log").read_text().split() == ["start", "start"]


def test_lock_file_not_in_git_status(checkout: Path) -> None:
    first = hold(checkout)
    try:
        status = subprocess.run(
            ["git", "-C", str(checkout), "status", "--porcelain"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        end_stage(checkout)
        finish(first)
    assert status == ""


def test_reading_commands_run_beside_repro(checkout: Path) -> None:
    first = hold(checkout)
    try:
        reads = {
            "status": run_expfs(checkout, "status"),
            "stage list": run_expfs(checkout, "stage", "list"),
            "repro --dry": run_expfs(checkout, "repro", "--dry"),
        }
    finally:
        end_stage(checkout)
        finish(first)
    for command, done in reads.items():
        assert done.returncode == 0, f"expfs {command}: {done.stderr}"
    assert "slow" in reads["status"].stdout
    assert "stage 'slow': would run" in reads["repro --dry"].stdout


def test_unprotect_fails_during_repro(checkout: Path) -> None:
    first = hold(checkout)
    try:
        (checkout / "out.txt").write_text("written during the run\n")
        unprotect = run_expfs(checkout, "unprotect", "out.txt")
    finally:
        end_stage(checkout)
        finish(first)
    assert unprotect.returncode == 1
    assert "expfs repro -f slow" in unprotect.stderr
    assert unprotect.stdout == ""


@pytest.mark.parametrize(
    "command", [["checkout"], ["exp", "apply", "e1"], ["exp", "apply", "--undo"]]
)
def test_checkout_writers_fail_during_repro(checkout: Path, command: list[str]) -> None:
    assert run_expfs(checkout, "exp", "new", "e1").returncode == 0
    first = hold(checkout)
    try:
        writer = run_expfs(checkout, *command)
    finally:
        end_stage(checkout)
        finish(first)
    assert writer.returncode == 1
    assert "expfs repro -f slow" in writer.stderr
    assert writer.stdout == ""


def test_killed_repro_leaves_no_lock(checkout: Path) -> None:
    first = hold(checkout, EXPFS_NO_SERVER="1")
    try:
        first.send_signal(signal.SIGKILL)
        finish(first)
        # SIGKILL gives expfs no chance to stop its stage: end it here.
        os.killpg(os.getpgid(read_pid(checkout / "shell.pid")), signal.SIGKILL)
        (checkout / "go").touch()
        again = run_expfs(checkout, "repro", "-f", "slow")
    finally:
        end_stage(checkout)
    assert again.returncode == 0, again.stderr
    assert "stage 'slow': ran" in again.stdout


def test_orphaned_stage_keeps_workspace_busy(checkout: Path) -> None:
    # A repro killed by SIGKILL cannot stop its stage, which keeps running
    # and writing: it holds the lock it inherited, so no second run starts.
    first = hold(checkout, EXPFS_NO_SERVER="1")
    try:
        first.send_signal(signal.SIGKILL)
        finish(first)
        second = run_expfs(checkout, "repro", "-f", "slow", EXPFS_NO_SERVER="1")
    finally:
        end_stage(checkout)
    assert second.returncode == 1
    assert "a process that a stage of an ended one started" in second.stderr
    assert "repro.lock open" in second.stderr
    third = run_expfs(checkout, "repro", "-f", "slow")
    assert third.returncode == 0, third.stderr


@pytest.fixture
def mounted(checkout: Path) -> Iterator[Path]:
    """Experiment e1 of `checkout`, mounted at its default mount point."""
    with mounted_experiment(checkout) as mountpoint:
        try:
            yield mountpoint
        finally:
            end_stage(mountpoint)


@pytest.mark.fuse
def test_second_repro_in_mount_fails(mounted: Path, checkout: Path) -> None:
    before = set(os.listdir(mounted))
    first = hold(mounted)
    try:
        second = run_expfs(mounted, "repro", "-f", "slow")
        during = set(os.listdir(mounted))
        (checkout / "go").touch()
        beside = run_expfs(checkout, "repro", "-f", "slow")
    finally:
        end_stage(mounted)
        out, err = finish(first)
    assert second.returncode == 1
    assert "expfs repro -f slow" in second.stderr
    assert (mounted / "runs.log").read_text().split() == ["start"]
    # The lock lives outside the workspace: only the stage's files appeared.
    assert during - before == {"runs.log", "shell.pid", "sleeper.pid"}
    # The checkout is another workspace, with its own lock.
    assert beside.returncode == 0, beside.stderr
    assert first.returncode == 0, err
    assert "stage 'slow': ran" in out
