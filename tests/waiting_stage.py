"""A one-stage pipeline whose command waits, for tests of concurrent or stopped runs.

Stage `slow` appends `start` to runs.log, writes the pid of its shell to
shell.pid and of a background `sleep` to sleeper.pid, then waits until a
file named `go` exists (at most 60 s) before it writes its output out.txt.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

EXPFS = [sys.executable, "-m", "expfs"]

STAGE_FILE = """\
stages:
  slow:
    cmd: sh slow.sh
    deps: [slow.sh]
    outs: [out.txt]
"""

SCRIPT = """\
echo start >> runs.log
echo $$ > shell.pid
sleep 60 &
echo $! > sleeper.pid
i=0
while [ ! -e go ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i + 1)); done
kill $! 2>/dev/null
echo done > out.txt
"""

# Files the stage writes besides its output, kept out of `git status`.
IGNORED = "runs.log\nout.txt\ngo\nshell.pid\nsleeper.pid\n"


def write_waiting_pipeline(root: Path) -> None:
    """Write and commit the stage file, its script and a .gitignore in `root`."""
    (root / "dvc.yaml").write_text(STAGE_FILE)
    (root / "slow.sh").write_text(SCRIPT)
    (root / ".gitignore").write_text(IGNORED)
    subprocess.run(["git", "-C", str(root), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(root), "commit", "-qm", "slow"], check=True)


def start_expfs(cwd: Path, *args: str, **env: str) -> subprocess.Popen[str]:
    """Start `expfs ARGS` in `cwd` with its output piped."""
    return subprocess.Popen(
        [*EXPFS, *args],
        cwd=cwd,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_expfs(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*EXPFS, *args],
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
    )


def wait_until(condition: Callable[[], bool], timeout_s: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def alive(pid: int, started: int | None = None) -> bool:
    """Return whether process `pid` exists and is not a zombie.

    With `started` (its start time, from `start_time`), a process that
    reused the pid does not count.
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return False
    if started is not None and int(fields[19]) != started:
        return False
    return fields[0] != "Z"


def start_time(pid: int) -> int | None:
    """Return the start time of process `pid` in clock ticks after boot, or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except FileNotFoundError:
        return None


def stage_started(root: Path) -> bool:
    return (root / "sleeper.pid").exists() and (root / "sleeper.pid").read_text() != ""


def read_pid(path: Path) -> int:
    return int(path.read_text().split()[0])


def end_stage(root: Path) -> None:
    """Let the stage finish, or end its processes if the test left them running."""
    (root / "go").touch()
    for name in ("sleeper.pid", "shell.pid"):
        try:
            pid = read_pid(root / name)
        except (FileNotFoundError, ValueError):
            continue
        if alive(pid) and not wait_until(ended(pid), 10.0) and runs_in(pid, root):
            os.kill(pid, 9)


def runs_in(pid: int, root: Path) -> bool:
    """Return whether process `pid` works in folder `root`, as the stage's do."""
    try:
        return os.readlink(f"/proc/{pid}/cwd") == str(root.resolve())
    except OSError:
        return False


def ended(pid: int, started: int | None = None) -> Callable[[], bool]:
    return lambda: not alive(pid, started)


def finish(proc: subprocess.Popen[str]) -> tuple[str, str]:
    """Wait for `proc` (killing it after 60 s) and return its output and error."""
    try:
        return proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()
