"""Starting, stopping and listing mount daemons from another process.

`start_mount` runs `python -m expfs.fuse.daemon` in its own session and
waits on a pipe until the daemon reports `ready` (its mount responds) or
the error that stopped it. Before starting, it cleans up what a crashed
daemon left: a mount in the table whose daemon is gone (`fusermount3 -uz`)
and runtime files.
"""

from __future__ import annotations

import logging
import os
import select
import subprocess
import sys
import time
from typing import Any

from expfs.errors import ExpfsError
from expfs.fuse import control
from expfs.fuse.launcher import AnyLauncher, ForkedDaemon

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
# How often stop_mount checks whether the daemon has exited, in seconds.
STOP_POLL_S = 0.005


class MountError(ExpfsError):
    """A mount could not be started or stopped."""


def default_mountpoint(store: Any, name: str) -> str:
    from expfs.store import layout

    return os.path.join(store.root, layout.MOUNTS_DIR, name)


def _force_unmount(path: str) -> None:
    proc = subprocess.run(["fusermount3", "-u", "-z", path], capture_output=True)
    if proc.returncode != 0 and control.mounted_fstype(path) is not None:
        raise MountError(
            f"could not remove the stale mount at {path}: "
            f"{proc.stderr.decode(errors='replace').strip()}; run "
            f"`fusermount3 -uz {path}` and retry"
        )
    log.warning("removed the stale mount at %s", path)


def clean_up(store: Any, name: str) -> control.MountStatus:
    """Remove what a dead daemon of `name` left; return the status found."""
    status = control.mount_status(store, name)
    if status.state in ("stale", "dead"):
        assert status.mountpoint is not None
        if status.state == "stale":
            _force_unmount(status.mountpoint)
        control.remove_runtime_files(store.root, name)
        log.warning(
            "cleaned up after the dead daemon %s of experiment %s", status.pid, name
        )
    return status


def _stale_expfs_mount(path: str) -> bool:
    """Return whether `path` is an expfs mount whose daemon is gone."""
    if control.mounted_fstype(path) != "fuse.expfs":
        return False
    try:
        os.stat(path)
    except OSError as exc:
        return exc.errno == 107  # ENOTCONN: the daemon is gone
    return False


def start_mount(
    store: Any,
    name: str,
    mountpoint: str | None = None,
    allow_other: bool = False,
    launcher: AnyLauncher | None = None,
    gitdir: str | None = None,
    blob_source: str | None = None,
) -> str:
    """Start a daemon serving experiment `name`; return its mount point.

    With a `launcher` the daemon is forked from it, with its imports done,
    instead of started as a new interpreter. `gitdir`, the experiment's Git
    worktree folder, becomes the mount's `.git` file, so Git run inside
    the mount finds the experiment's branch. `blob_source` (MODULE:NAME)
    names the daemon's fetcher of blobs that a lazy restore left on a
    remote; without one, opening such a file fails with EIO.
    """
    from expfs.workspace import Workspace

    if not Workspace.exists(store, name):
        raise MountError(
            f"no experiment named {name!r}: `expfs exp list` shows the existing "
            "ones, `expfs exp new NAME` creates one"
        )
    status = clean_up(store, name)
    if status.state in ("mounted", "orphan"):
        raise MountError(
            f"experiment {name!r} is already served by daemon {status.pid} at "
            f"{status.mountpoint}: use that folder, or `expfs umount {name}` first"
        )
    path = os.path.abspath(mountpoint or default_mountpoint(store, name))
    if _stale_expfs_mount(path):
        _force_unmount(path)
    if control.mounted_fstype(path) is not None:
        raise MountError(
            f"something is already mounted at {path}: unmount it or pick another folder"
        )
    if os.path.lexists(path) and not os.path.isdir(path):
        raise MountError(f"cannot mount on {path}: it is not a folder")
    os.makedirs(path, exist_ok=True)
    read_fd, write_fd = os.pipe()
    command = [
        sys.executable,
        "-m",
        control.DAEMON_MODULE,
        "--store",
        store.root,
        "--name",
        name,
        "--mountpoint",
        path,
        "--ready-fd",
        str(write_fd),
    ]
    if allow_other:
        command.append("--allow-other")
    if gitdir:
        command += ["--gitdir", gitdir]
    if blob_source:
        command += ["--blob-source", blob_source]
    log_file = open(control.log_path(store.root, name), "ab")
    proc: subprocess.Popen[bytes] | ForkedDaemon
    try:
        if launcher is not None:
            argv = (
                command[3 : command.index("--ready-fd")]
                + command[command.index("--ready-fd") + 2 :]
            )
            proc = ForkedDaemon(launcher.spawn(argv, write_fd, log_file.fileno()))
        else:
            proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                pass_fds=(write_fd,),
                start_new_session=True,
            )
    finally:
        os.close(write_fd)
        log_file.close()
    try:
        message = _read_ready(read_fd, proc)
    finally:
        os.close(read_fd)
    if message != "ready":
        raise MountError(f"mounting experiment {name!r} at {path} failed: {message}")
    return path


def _read_ready(fd: int, proc: subprocess.Popen[bytes] | ForkedDaemon) -> str:
    deadline = time.monotonic() + READY_TIMEOUT_S
    data = b""
    while b"\n" not in data:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            proc.kill()
            proc.wait()
            return f"the daemon did not report ready within {READY_TIMEOUT_S:.0f} s"
        readable, _, _ = select.select([fd], [], [], remaining)
        if not readable:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            from expfs.text import exit_description

            code = proc.wait()
            return f"the daemon {exit_description(code)} before it was ready"
        data += chunk
    line = data.split(b"\n", 1)[0].decode(errors="replace")
    if line.startswith("error: "):
        proc.wait(timeout=STOP_TIMEOUT_S)
        return line[len("error: ") :]
    return line


def stop_mount(store: Any, name: str) -> control.MountStatus:
    """Flush and unmount experiment `name`, waiting for its daemon to exit."""
    status = clean_up(store, name)
    if status.state in ("unmounted", "stale", "dead"):
        return status
    assert status.pid is not None
    with control.ControlClient(store.root, name) as client:
        client.stop()
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while control.daemon_alive(status.pid):
        if time.monotonic() > deadline:
            raise MountError(
                f"the daemon {status.pid} of experiment {name!r} unmounted but did "
                f"not exit within {STOP_TIMEOUT_S:.0f} s: see its log at "
                f"{control.log_path(store.root, name)}"
            )
        time.sleep(STOP_POLL_S)
    return status


def list_mounts(store: Any) -> list[control.MountStatus]:
    """Return the status of every experiment that has runtime files."""
    from expfs.store import layout

    run_dir = os.path.join(store.root, layout.RUN_DIR)
    names = sorted(
        entry[: -len(".json")]
        for entry in os.listdir(run_dir)
        if entry.endswith(".json")
    )
    return [control.mount_status(store, name) for name in names]
