"""Run `exp run`, `queue start` and `repro` in a process kept running between commands.

A new interpreter spends about 0.2 s importing YAML, LMDB, the pipeline and
repro code, and a mount daemon another 0.2 s importing trio and pyfuse3
(measured by bench/bench_exp.py on 2 cores). The expfs server imports all
of that once and waits. Each command is a fork of it: the child takes the
client's argv, working folder, environment, umask and its standard input,
output and error (passed as file descriptors over the socket), runs the
command and sends its exit status back. The child asks the server to fork
its mount daemons too, so a mount costs no imports either.

Lifecycle, one server per user and installation (the Python program and
this package's folder), found through a socket in `/tmp/expfs-UID`:

- The first command that needs it starts it, under a lock file so two
  commands racing start one server, and waits until it listens. When it
  cannot start, the command warns and runs in its own process.
- It exits after `EXPFS_SERVER_IDLE_S` seconds without a request (default
  600), on SIGTERM, or at the first request after its source files changed
  (an upgrade); the next command starts a new one. A socket left by a
  killed server refuses connections and is replaced.
- It opens no store and mounts nothing, so its death leaves nothing
  mounted: the commands and daemons it forked live on in their own
  sessions, and a command whose server is gone starts its own launcher.
- The client forwards SIGINT, SIGTERM, SIGHUP and SIGQUIT to the command.
  When the client dies, the command receives SIGINT, which stops its
  experiments and unmounts them as Ctrl-C does.
- `EXPFS_NO_SERVER=1` (or yes, true, on) runs every command in its own
  process; 0, no, false and off leave the server on.

The server logs its start, stop and every command to `server-KEY.log` next
to its socket. The client's side is `expfs_cli.client`.
"""

from __future__ import annotations

import marshal
import os
import signal
import socket
import struct
import sys

from expfs_cli.client import MAX_REQUEST_BYTES, idle_seconds

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any, NoReturn

DEFAULT_IDLE_S = 600.0
# Maximum time a connected client may take to send its request, in seconds.
REQUEST_TIMEOUT_S = 5.0


# Libraries the server keeps imported: installing or upgrading any package
# next to them must restart it, as a change to expfs does.
LIBRARIES = ("trio", "pyfuse3", "lmdb", "yaml", "blake3", "rich", "fsspec")
_library_folders: list[str] = []


def library_folders() -> list[str]:
    """Return the folders that hold LIBRARIES, such as the environment's site-packages.

    pip adds and removes a `NAME-VERSION.dist-info` folder in that folder at
    every install, so its mtime changes whenever a library does.
    """
    if not _library_folders:
        import importlib.util

        folders = set()
        for name in LIBRARIES:
            spec = importlib.util.find_spec(name)
            if spec is None or spec.origin is None:
                continue
            origin = spec.origin
            if spec.submodule_search_locations is not None:
                origin = os.path.dirname(origin)
            folders.add(os.path.dirname(origin))
        _library_folders.extend(sorted(folders))
    return _library_folders


def source_fingerprint() -> str:
    """Return a digest of expfs's source files and of the folders of its libraries.

    It covers the names, sizes and mtimes of expfs's files and the mtimes
    of the folders that hold its libraries. A change means expfs or a
    library was upgraded or edited, so a server that imported the old code
    must not run commands.
    """
    import hashlib

    import expfs

    digest = hashlib.blake2b(digest_size=16)
    roots = [os.path.dirname(expfs.__file__), os.path.dirname(__file__)]
    for root in roots:
        for folder, dirs, files in os.walk(root):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            for name in sorted(files):
                if not name.endswith(".py"):
                    continue
                info = os.stat(os.path.join(folder, name))
                digest.update(
                    f"{folder}/{name}\0{info.st_size}\0{info.st_mtime_ns}\n".encode()
                )
    for folder in library_folders():
        digest.update(f"{folder}\0{os.stat(folder).st_mtime_ns}\n".encode())
    return digest.hexdigest()


# -- the server ---------------------------------------------------------------------


# The modules an `exp run` imports, loaded once by the server.
PRELOADED_MODULES = (
    "expfs_cli.main",
    "expfs.sweep",
    "expfs.experiments",
    "expfs.fuse.daemon",
    "expfs.fuse.mounts",
    "expfs.fuse.control",
    "expfs.pipeline",
    "expfs.pipeline.overrides",
    "expfs.pipeline.params",
    "expfs.repro.engine",
    "expfs.repro.place",
    "expfs.store.repo",
    "expfs.tree.gitsnap",
    "expfs.workspace",
    "expfs.remote.runs",
    "expfs.remote.lazy",
    "rich.console",
    "rich.live",
    "rich.table",
)


class Server:
    """The server process: accepts requests and forks a child for each."""

    def __init__(self, path: str, idle_s: float) -> None:
        import importlib
        import logging

        self.path = path
        self.idle_s = idle_s
        self.log = logging.getLogger("expfs.server")
        self.fingerprint = source_fingerprint()
        for name in PRELOADED_MODULES:
            importlib.import_module(name)
        from expfs_cli.main import build_parser

        self.parser = build_parser()
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        self.listener.bind(path)
        self.listener.listen(16)
        self.inode = os.stat(path).st_ino

    def serve(self) -> None:
        import select

        signal.signal(signal.SIGCHLD, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, self._on_sigterm)
        self.log.info(
            "server pid %d listening on %s (code %s)",
            os.getpid(),
            self.path,
            self.fingerprint,
        )
        reason = "idle"
        try:
            while True:
                readable, _, _ = select.select([self.listener], [], [], self.idle_s)
                if not readable:
                    break
                conn, _ = self.listener.accept()
                with conn:
                    if not self._handle(conn):
                        reason = "its source files changed"
                        break
        except KeyboardInterrupt:
            reason = "SIGTERM"
        self._close()
        self.log.info("server pid %d stopped: %s", os.getpid(), reason)

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    def _close(self) -> None:
        """Stop listening; remove the socket unless a newer server owns the path."""
        import fcntl

        if self.listener.fileno() < 0:
            return
        with open(self.path.removesuffix(".sock") + ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                if os.stat(self.path).st_ino == self.inode:
                    os.unlink(self.path)
                    os.unlink(self.path.removesuffix(".sock") + ".pid")
            except FileNotFoundError:
                pass
            self.listener.close()

    def _handle(self, conn: socket.socket) -> bool:
        """Serve one connection; return False when the server must stop."""
        from expfs.fuse import launcher

        conn.settimeout(REQUEST_TIMEOUT_S)
        pid, uid, _ = struct.unpack(
            "3i",
            conn.getsockopt(
                socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")
            ),
        )
        try:
            data, fds, _, _ = socket.recv_fds(conn, MAX_REQUEST_BYTES, 3)
        except OSError as exc:
            self.log.warning("request from pid %d failed: %s", pid, exc)
            return True
        if uid != os.getuid() or not data:
            for fd in fds:
                os.close(fd)
            self.log.warning("rejected a request from pid %d of user %d", pid, uid)
            return True
        request = marshal.loads(data)
        reply: dict[str, object]
        if request.get("kind") == "daemon":
            reply = launcher.handle_spawn(request["argv"], fds, [conn, self.listener])
        elif request.get("kind") == "command":
            if source_fingerprint() != self.fingerprint:
                for fd in fds:
                    os.close(fd)
                # Stop listening first, so the client's retry starts a new server.
                self._close()
                conn.send(marshal.dumps({"error": "stale"}))
                return False
            self._fork_command(conn, request, fds)
            return True
        else:
            for fd in fds:
                os.close(fd)
            reply = {"error": f"unknown request kind {request.get('kind')!r}"}
        conn.send(marshal.dumps(reply))
        return True

    def _fork_command(
        self, conn: socket.socket, request: dict[str, Any], fds: list[int]
    ) -> None:
        try:
            pid = os.fork()
        except OSError as exc:
            for fd in fds:
                os.close(fd)
            conn.send(marshal.dumps({"error": f"fork failed: {exc}"}))
            return
        if pid == 0:
            self.listener.close()
            run_command(conn, request, fds, self.parser, self.path)
        for fd in fds:
            os.close(fd)
        self.log.info(
            "command pid %d: expfs %s in %s",
            pid,
            " ".join(request["argv"]),
            request["cwd"],
        )


def run_command(
    conn: socket.socket,
    request: dict[str, Any],
    fds: list[int],
    parser: Any,
    path: str,
) -> NoReturn:
    """Become the client's command: its files, folder, environment; never return."""
    import logging
    import threading
    import traceback

    code = 1
    try:
        try:
            conn.settimeout(None)
            conn.send(marshal.dumps({"pid": os.getpid()}))
            os.setsid()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            for target, fd in enumerate(fds):
                os.dup2(fd, target)
                os.close(fd)
            _reopen_std_streams(request["env"])
            os.chdir(request["cwd"])
            os.environ.clear()
            os.environ.update(request["env"])
            os.umask(request["umask"])
            sys.argv = ["expfs", *request["argv"]]
            for name in ("", "expfs.server"):
                for handler in logging.getLogger(name).handlers[:]:
                    logging.getLogger(name).removeHandler(handler)
            from expfs.fuse import launcher

            launcher.server_socket = path
            threading.Thread(target=_watch_client, args=(conn,), daemon=True).start()
            from expfs_cli.main import main

            code = main(request["argv"], parser=parser)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc()
        # From here on, a client that leaves after reading the status must
        # not interrupt the exit.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except OSError:
            pass
        conn.send(marshal.dumps({"exit": code}))
    finally:
        os._exit(code)


def _reopen_std_streams(env: dict[str, str]) -> None:
    """Rebuild sys.stdin/stdout/stderr, buffered as a new interpreter would."""
    import io

    unbuffered = bool(env.get("PYTHONUNBUFFERED"))
    for fd, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
        old = getattr(sys, name)
        raw = open(fd, "rb" if fd == 0 else "wb", closefd=False)  # noqa: SIM115
        stream = io.TextIOWrapper(
            raw,
            encoding=old.encoding,
            errors=old.errors,
            line_buffering=fd != 0 and (fd == 2 or os.isatty(fd)),
            write_through=unbuffered and fd != 0,
        )
        setattr(sys, name, stream)


def _watch_client(conn: socket.socket) -> None:
    """Interrupt the command when its client goes away (killed, or its terminal closed)."""
    try:
        data = conn.recv(1)
    except OSError:
        data = b""
    if not data:
        os.kill(os.getpid(), signal.SIGINT)


def _main(argv: Sequence[str]) -> int:
    import logging

    path, ready_fd = argv[0], int(argv[1])
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(process)d %(levelname)s %(message)s")
    )
    server_log = logging.getLogger("expfs.server")
    server_log.addHandler(handler)
    server_log.setLevel(logging.INFO)
    server_log.propagate = False
    idle_s = idle_seconds() or DEFAULT_IDLE_S
    try:
        server = Server(path, idle_s)
    except Exception as exc:
        server_log.exception("server failed to start on %s", path)
        os.write(ready_fd, f"error: {exc}\n".encode())
        return 1
    pid_path = path.removesuffix(".sock") + ".pid"
    with open(pid_path, "w") as f:
        f.write(f"{os.getpid()}\n")
    os.write(ready_fd, b"ready\n")
    os.close(ready_fd)
    server.serve()
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
