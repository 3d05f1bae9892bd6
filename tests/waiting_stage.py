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


def alive(pid: int) -> bool:
    """Return whether process `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


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
        if alive(pid) and not wait_until(ended(pid), 10.0):
            os.kill(pid, 9)


def ended(pid: int) -> Callable[[], bool]:
    return lambda: not alive(pid)


def finish(proc: subprocess.Popen[str]) -> tuple[str, str]:
    """Wait for `proc` (killing it after 60 s) and return its output and error."""
    try:
        return proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()
