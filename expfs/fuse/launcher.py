"""Start mount daemons by forking a process that has already imported them.

A new interpreter spends about 0.2 s importing trio, pyfuse3 and the daemon
before it can mount anything (measured by bench/bench_exp.py on 2 cores).
A sweep mounts one workspace per experiment, so it starts one launcher
that pays for those imports once and forks a daemon for each mount.

The launcher never opens the store or starts trio, so each forked child
starts clean: it calls `expfs.fuse.daemon.main` in a new session, with its
output sent to the daemon's log. Requests travel on a SOCK_SEQPACKET
socket pair, one datagram each, with the ready pipe and the log file
passed as file descriptors. The launcher exits when its socket closes,
and the daemons it forked live on in their own sessions.
"""

from __future__ import annotations

import json
import logging
import marshal
import os
import signal
import socket
import subprocess
import sys
import threading
import traceback
from collections.abc import Sequence
from typing import NoReturn

from expfs.errors import ExpfsError

log = logging.getLogger(__name__)

LAUNCHER_MODULE = "expfs.fuse.launcher"
MAX_REQUEST_BYTES = 1 << 16
START_TIMEOUT_S = 60.0


class LauncherError(ExpfsError):
    """The launcher process could not start a daemon."""


class Launcher:
    """The client side: owned by the process that mounts many workspaces."""

    def __init__(self, store_root: str) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                LAUNCHER_MODULE,
                "--store",
                store_root,
                str(theirs.fileno()),
            ],
            pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        theirs.close()
        ours.settimeout(START_TIMEOUT_S)
        self.sock = ours
        self.lock = threading.Lock()

    def spawn(self, argv: Sequence[str], ready_fd: int, log_fd: int) -> int:
        """Fork a daemon running `expfs.fuse.daemon.main(argv)`; return its pid.

        The daemon writes `ready` or its error to `ready_fd`, as a daemon
        started as its own process does.
        """
        request = json.dumps(list(argv)).encode()
        with self.lock:
            try:
                socket.send_fds(self.sock, [request], [ready_fd, log_fd])
                reply = self.sock.recv(MAX_REQUEST_BYTES)
            except OSError as exc:
                raise LauncherError(f"the mount launcher failed: {exc}") from None
        if not reply:
            code = self.proc.poll()
            raise LauncherError(f"the mount launcher exited (status {code})")
        answer = json.loads(reply)
        if "error" in answer:
            raise LauncherError(f"the mount launcher could not fork: {answer['error']}")
        pid: int = answer["pid"]
        return pid

    def close(self) -> None:
        self.sock.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# The socket of the expfs server that forked this process to run a command
# (see `expfs_cli.server`), which forks mount daemons on request too.
server_socket: str | None = None


class ServerLauncher:
    """The client side when daemons are forked by the expfs server.

    The server is the process this command was forked from, so it already
    runs. When it has gone (killed, or exited while idle), a private
    `Launcher` takes over for the rest of the command.
    """

    def __init__(self, socket_path: str, store_root: str) -> None:
        self.socket_path = socket_path
        self.store_root = store_root
        self.fallback: Launcher | None = None

    def spawn(self, argv: Sequence[str], ready_fd: int, log_fd: int) -> int:
        """Fork a daemon running `expfs.fuse.daemon.main(argv)`; return its pid."""
        if self.fallback is None:
            try:
                return self._spawn_in_server(argv, ready_fd, log_fd)
            except OSError as exc:
                log.warning(
                    "the expfs server at %s did not respond (%s): starting a "
                    "mount launcher",
                    self.socket_path,
                    exc,
                )
                self.fallback = Launcher(self.store_root)
        return self.fallback.spawn(argv, ready_fd, log_fd)

    def _spawn_in_server(self, argv: Sequence[str], ready_fd: int, log_fd: int) -> int:
        # The expfs server speaks marshal (see `expfs_cli.client`).
        request = marshal.dumps({"kind": "daemon", "argv": list(argv)})
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
            sock.settimeout(START_TIMEOUT_S)
            sock.connect(self.socket_path)
            socket.send_fds(sock, [request], [ready_fd, log_fd])
            reply = sock.recv(MAX_REQUEST_BYTES)
        if not reply:
            raise ConnectionResetError("the server closed the connection")
        answer = marshal.loads(reply)
        if "error" in answer:
            raise LauncherError(f"the expfs server could not fork: {answer['error']}")
        pid: int = answer["pid"]
        return pid

    def close(self) -> None:
        if self.fallback is not None:
            self.fallback.close()
            self.fallback = None


AnyLauncher = Launcher | ServerLauncher


def open_launcher(store_root: str) -> AnyLauncher:
    """Return the expfs server's launcher when it forked this process, else a new one."""
    if server_socket is not None:
        return ServerLauncher(server_socket, store_root)
    return Launcher(store_root)


class ForkedDaemon:
    """A daemon forked by the launcher: not our child, so watched by its pid."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def wait(self, timeout: float | None = None) -> int:
        """Wait until the process is gone; its status is not ours to read."""
        import time

        deadline = None if timeout is None else time.monotonic() + timeout
        while os.path.exists(f"/proc/{self.pid}") and not _is_zombie(self.pid):
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout or 0)
            time.sleep(0.01)
        return -1


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, IndexError):
        return True


# -- the launcher process ---------------------------------------------------------


def serve(fd: int) -> None:
    """Serve fork requests on socket `fd` until it closes."""
    import expfs.fuse.daemon  # noqa: F401  (the imports every child reuses)

    sock = socket.socket(fileno=fd)
    # Forked daemons are reaped automatically; each child restores the default.
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    while True:
        try:
            data, fds, _, _ = socket.recv_fds(sock, MAX_REQUEST_BYTES, 2)
        except OSError:
            return
        if not data:
            return
        reply = handle_spawn(json.loads(data), fds, [sock])
        sock.send(json.dumps(reply).encode())


def handle_spawn(
    argv: list[str], fds: list[int], sockets: Sequence[socket.socket]
) -> dict[str, object]:
    """Fork a daemon for one spawn request; return the reply to send.

    `fds` are the ready pipe and the log file, closed here in the parent.
    The child closes `sockets` and never returns.
    """
    if len(fds) != 2:
        for extra in fds:
            os.close(extra)
        return {"error": "a request needs two descriptors"}
    ready_fd, log_fd = fds
    try:
        pid = os.fork()
    except OSError as exc:
        os.close(ready_fd)
        os.close(log_fd)
        return {"error": str(exc)}
    if pid == 0:
        for sock in sockets:
            sock.close()
        _run_child(argv, ready_fd, log_fd)
    os.close(ready_fd)
    os.close(log_fd)
    return {"pid": pid}


def _run_child(argv: list[str], ready_fd: int, log_fd: int) -> NoReturn:
    """Become a daemon: new session, output to the log, then never return."""
    code = 1
    try:
        os.setsid()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.close(log_fd)
        from expfs.fuse.daemon import main

        code = main([*argv, "--ready-fd", str(ready_fd)])
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _main() -> None:
    import argparse

    parser = argparse.ArgumentParser(prog=f"python -m {LAUNCHER_MODULE}")
    parser.add_argument("--store", help="the .expfs/ folder (shown in process lists)")
    parser.add_argument("fd", type=int, help="the request socket")
    args = parser.parse_args()
    serve(args.fd)


if __name__ == "__main__":
    _main()
