"""`expfs queue start` and `queue stop` on real mounts: one runner, stop, signals.

Each test queues three experiments whose stage sleeps for SWEEP_SLEEP
seconds, starts a queue runner as a real process, and checks what another
command or a signal does to it and to the experiments' records.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_sweep import (
    EXPFS,
    TRAIN_SCRIPT,
    TRAIN_STAGE,
    mounted_below,
    run,
    show,
    unmount_all,
)

pytestmark = pytest.mark.fuse


@pytest.fixture
def queued(repo: Path) -> Iterator[Path]:
    """A project with three queued experiments, depth=11, 12 and 13, oldest first."""
    if not os.path.exists("/dev/fuse"):
        pytest.skip("needs /dev/fuse and fusermount3 (apt-get install fuse3)")
    (repo / "dvc.yaml").write_text(TRAIN_STAGE)
    (repo / "train.py").write_text(TRAIN_SCRIPT)
    (repo / "params.yaml").write_text("lr: 0.1\ndepth: 2\n")
    subprocess.run(["git", "-C", str(repo), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(repo), "commit", "-qm", "pipeline"], check=True)
    run(repo, "init")
    for depth in (11, 12, 13):
        run(repo, "exp", "run", "--queue", "-n", f"d{depth}", "-S", f"depth={depth}")
    try:
        yield repo
    finally:
        unmount_all(repo)


def start_runner(
    project: Path, counter: Path, *args: str, sleep_s: str = "60"
) -> subprocess.Popen[str]:
    """Start `queue start ARGS` in its own process and wait until a stage runs."""
    env = {
        **os.environ,
        "SWEEP_SLEEP": sleep_s,
        "SWEEP_COUNTER": str(counter),
        # Served, the runner would be a child of the expfs server; here its
        # pid is the one the lock's holder record names.
        "EXPFS_NO_SERVER": "1",
    }
    runner = subprocess.Popen(
        [*EXPFS, "queue", "start", *args],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while not counter.exists() and time.monotonic() < deadline:
        if runner.poll() is not None:
            break
        time.sleep(0.1)
    if not counter.exists():
        end(runner)
        raise AssertionError(f"no stage started: {runner.communicate()}")
    return runner


def end(runner: subprocess.Popen[str]) -> None:
    if runner.poll() is None:
        os.killpg(runner.pid, signal.SIGKILL)
    runner.communicate()


def statuses(project: Path) -> dict[str, str]:
    return {name: e.status for name, e in show(project).items()}


def test_second_queue_start_fails_naming_runner(queued: Path, tmp_path: Path) -> None:
    counter = tmp_path / "counter.txt"
    runner = start_runner(queued, counter)
    try:
        before = statuses(queued)
        second = run(queued, "queue", "start", check=False)
        after = statuses(queued)
    finally:
        end(runner)
    assert before == {"d11": "running", "d12": "queued", "d13": "queued"}
    assert second.returncode == 1
    assert f"pid {runner.pid}" in second.stderr
    assert "expfs queue start" in second.stderr
    assert "expfs queue stop" in second.stderr
    assert second.stdout == ""
    assert after == before
    assert counter.read_text().splitlines() == ["0.1 11"]


def test_queue_stop_keeps_unstarted_queued(queued: Path, tmp_path: Path) -> None:
    counter = tmp_path / "counter.txt"
    runner = start_runner(queued, counter)
    try:
        stop = run(queued, "queue", "stop", check=False)
        out, err = runner.communicate(timeout=60)
    finally:
        end(runner)
    assert stop.returncode == 0, stop.stderr
    assert f"pid {runner.pid}" in stop.stdout
    assert "d11" in stop.stdout
    assert "2 experiments stay queued" in stop.stdout
    assert runner.returncode == 1, err
    assert statuses(queued) == {"d11": "stopped", "d12": "queued", "d13": "queued"}
    assert counter.read_text().splitlines() == ["0.1 11"]
    assert mounted_below(queued) == []
    # A later `queue start` runs the ones left queued, and only those.
    again = run(queued, "queue", "start", SWEEP_COUNTER=str(counter))
    assert "d12: success" in again.stdout
    assert statuses(queued) == {"d11": "stopped", "d12": "success", "d13": "success"}
    assert counter.read_text().splitlines() == ["0.1 11", "0.1 12", "0.1 13"]


def test_queue_stop_without_runner(queued: Path) -> None:
    stop = run(queued, "queue", "stop")
    assert "no queue runner" in stop.stdout
    assert set(statuses(queued).values()) == {"queued"}


@pytest.mark.parametrize(
    "signum",
    [signal.SIGINT, signal.SIGTERM, signal.SIGHUP],
    ids=lambda s: signal.Signals(s).name,
)
def test_signal_leaves_unstarted_queued(
    queued: Path, tmp_path: Path, signum: int
) -> None:
    counter = tmp_path / "counter.txt"
    runner = start_runner(queued, counter)
    try:
        runner.send_signal(signum)
        runner.communicate(timeout=60)
    finally:
        end(runner)
    assert runner.returncode == 128 + signum
    assert statuses(queued) == {"d11": "stopped", "d12": "queued", "d13": "queued"}
    assert mounted_below(queued) == []


def test_runner_picks_up_later_queued(queued: Path, tmp_path: Path) -> None:
    counter = tmp_path / "counter.txt"
    runner = start_runner(queued, counter, sleep_s="2")
    try:
        run(queued, "exp", "run", "--queue", "-n", "late", "-S", "depth=14")
        out, err = runner.communicate(timeout=120)
    finally:
        end(runner)
    assert runner.returncode == 0, err
    assert "late: success" in out
    assert statuses(queued) == {
        "d11": "success",
        "d12": "success",
        "d13": "success",
        "late": "success",
    }
    assert sorted(counter.read_text().splitlines()) == [
        "0.1 11",
        "0.1 12",
        "0.1 13",
        "0.1 14",
    ]
