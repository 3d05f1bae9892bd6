"""SIGINT, SIGTERM and SIGHUP stop `expfs repro` and every process of its stage.

Each signal ends the stage's process group, records nothing and exits with
128 + the signal's number, both when repro runs in its own process and
when the expfs server runs it for the client that received the signal.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from waiting_stage import (
    end_stage,
    ended,
    finish,
    read_pid,
    run_expfs,
    stage_started,
    start_expfs,
    start_time,
    wait_until,
    write_waiting_pipeline,
)

SIGNALS = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]
MODES = {"own process": {"EXPFS_NO_SERVER": "1"}, "served": {}}


@pytest.fixture
def checkout(repo: Path) -> Path:
    write_waiting_pipeline(repo)
    assert run_expfs(repo, "init").returncode == 0
    return repo


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("signum", SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_signal_stops_stage_group(checkout: Path, mode: str, signum: int) -> None:
    env = MODES[mode]
    proc = start_expfs(checkout, "repro", "slow", **env)
    try:
        assert wait_until(lambda: stage_started(checkout)), finish(proc)
        shell = read_pid(checkout / "shell.pid")
        sleeper = read_pid(checkout / "sleeper.pid")
        started = {pid: start_time(pid) for pid in (shell, sleeper)}
        proc.send_signal(signum)
        _, err = finish(proc)
        shell_ended = wait_until(ended(shell, started[shell]), 30.0)
        sleeper_ended = wait_until(ended(sleeper, started[sleeper]), 30.0)
    finally:
        end_stage(checkout)
    assert proc.returncode == 128 + signum, err
    assert signal.Signals(signum).name in err
    assert "stage 'slow' was stopped" in err
    assert shell_ended
    assert sleeper_ended
    assert not (checkout / "out.txt").exists()
    assert not (checkout / "expfs.lock").exists()
    runs = run_expfs(checkout, "runs", "--json")
    assert json.loads(runs.stdout) == []


def test_stopped_repro_releases_workspace(checkout: Path) -> None:
    proc = start_expfs(checkout, "repro", "slow")
    try:
        assert wait_until(lambda: stage_started(checkout)), finish(proc)
        proc.send_signal(signal.SIGTERM)
        finish(proc)
        (checkout / "go").touch()
        again = run_expfs(checkout, "repro", "slow")
    finally:
        end_stage(checkout)
    assert again.returncode == 0, again.stderr
    assert "stage 'slow': ran" in again.stdout
    assert wait_until(ended(read_pid(checkout / "sleeper.pid")), 15.0)
