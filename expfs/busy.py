"""One writing command at a time per workspace, through an flock.

Each workspace has a lock file in its private state, where Git does not
track it and a mount's snapshot does not see it. It is `.expfs/repro.lock`
for a plain checkout and `.expfs/workspaces/NAME/repro.lock` for a mounted
experiment. A worktree outside the repository keeps it in its Git folder. A
command that writes in the workspace (`repro`, `unprotect`, `checkout`,
`exp apply`) takes it with `flock(LOCK_EX | LOCK_NB)` and fails at once
when another process has it. The kernel releases an flock when its holder exits, even
by SIGKILL, so a lock is never left stale. The file's text (pid, command,
start time) only names the holder in the error.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from expfs.errors import ExpfsError

LOCK_FILE = "repro.lock"
# How long to wait for a holder that has just taken the lock to write its name.
HOLDER_WRITE_WAIT_S = 0.5
MAX_HOLDER_BYTES = 4096


class WorkspaceBusy(ExpfsError):
    """Another process holds the workspace's lock."""


def checkout_state_dir(store_root: str, worktree: str) -> str:
    """Return the folder for the lock of Git checkout `worktree`.

    That is the store itself for the checkout that contains it, and the
    worktree's own Git folder for a worktree elsewhere (`exp promote
    --worktree`), which has no `.expfs/`.
    """
    if os.path.realpath(os.path.dirname(store_root)) == os.path.realpath(worktree):
        return store_root
    import subprocess

    proc = subprocess.run(
        ["git", "-C", worktree, "rev-parse", "--absolute-git-dir"],
        capture_output=True,
        text=True,
        check=True,
    )
    return proc.stdout.strip()


def current_command() -> str:
    """Return this process's expfs command line, as the user typed it."""
    return shlex.join(["expfs", *sys.argv[1:]])


@contextlib.contextmanager
def workspace_lock(
    state_dir: str, root: str, command: str | None = None
) -> Iterator[int]:
    """Hold the lock of the workspace at `root`, whose private state is `state_dir`.

    Yields the lock's file descriptor: a stage process that inherits it
    holds the lock too, so a stage orphaned by a killed repro keeps other
    writers out until it ends. Raises WorkspaceBusy, having changed
    nothing, when another process has it.
    """
    path = os.path.join(state_dir, LOCK_FILE)
    with exclusive_lock(
        path, lambda fd: WorkspaceBusy(busy_message(fd, root)), command
    ) as fd:
        yield fd


@contextlib.contextmanager
def exclusive_lock(
    path: str,
    busy_error: Callable[[int], ExpfsError],
    command: str | None = None,
) -> Iterator[int]:
    """Hold an flock on `path`, recording this process as its holder in the file.

    When another process has it, raises `busy_error(fd)` at once: that
    function reads the holder with `read_holder(fd)` and names it.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise busy_error(fd) from None
        holder = {
            "pid": os.getpid(),
            "command": command or current_command(),
            "started": time.time(),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        yield fd
    finally:
        os.close(fd)


def busy_message(fd: int, root: str) -> str:
    """Describe the holder of the lock open as `fd`, and what the user can do."""
    holder = read_holder(fd)
    if holder is None:
        return (
            f"workspace {root} is busy: another expfs command, or a process that "
            "a stage of an ended one started, is writing in it (it holds "
            f"{os.readlink(f'/proc/self/fd/{fd}')} open). Wait for it to "
            "finish, or stop it. Nothing was changed"
        )
    pid = holder["pid"]
    age_s = max(0.0, time.time() - float(holder.get("started", time.time())))
    command = holder.get("command", "expfs")
    return (
        f"workspace {root} is busy: pid {pid} (`{command}`, started "
        f"{age_s:.0f} s ago) is writing in it. Wait for it to finish, or stop it "
        f"with `kill {pid}`, which also stops its stage. Nothing was changed"
    )


def read_holder(fd: int) -> dict[str, Any] | None:
    """Return the live holder's record, waiting briefly while a new holder writes it."""
    deadline = time.monotonic() + HOLDER_WRITE_WAIT_S
    while True:
        text = os.pread(fd, MAX_HOLDER_BYTES, 0)
        try:
            holder = json.loads(text)
        except ValueError:
            holder = None
        # A dead pid is the record of an earlier holder, not yet overwritten.
        if isinstance(holder, dict) and _alive(holder.get("pid")):
            return holder
        if time.monotonic() > deadline:
            return None
        time.sleep(0.02)


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
