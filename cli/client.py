"""The client of the expfs server: the `expfs` process the user started.

A cache-hit `repro` in a mount does a few milliseconds of work in the
server (see `expfs_cli.server`), so the client's own start-up is most of
what the user waits for. This module therefore imports only modules built
into the interpreter. It uses `_socket` and `_signal`, because the
`socket` and `signal` wrappers build enum classes at import (about 10 ms
together, measured on 2 cores). It uses `marshal` rather than `json`, and
`_blake2` rather than `hashlib`, which loads OpenSSL. Starting a server,
the rare path, may import anything.

Requests and replies are single `marshal` datagrams on a SOCK_SEQPACKET
socket. The server accepts them only from its own user (SO_PEERCRED), and
both ends run the same interpreter, because the socket's name includes it.
"""

from __future__ import annotations

import _signal
import _socket
import marshal
import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    # Annotations only, because the client imports as little as it can.
    from collections.abc import Sequence
    from typing import Any

# Commands served by the server: those that mount workspaces, and `repro`,
# whose cache-hit restore is otherwise mostly interpreter start-up.
SERVED_COMMANDS = (("exp", "run"), ("queue", "start"), ("repro",))
# Options that make a command print help or leave this machine, so it runs
# in its own process.
UNSERVED_OPTIONS = ("-h", "--help", "--cluster")
MAX_REQUEST_BYTES = 1 << 20
START_TIMEOUT_S = 30.0
MAX_LOG_BYTES = 1 << 20
FORWARDED_SIGNALS = (
    _signal.SIGINT,
    _signal.SIGTERM,
    _signal.SIGHUP,
    _signal.SIGQUIT,
)
# Environment variables that configure the server.
IDLE_VARIABLE = "EXPFS_SERVER_IDLE_S"
DIR_VARIABLE = "EXPFS_SERVER_DIR"
NO_SERVER_VARIABLE = "EXPFS_NO_SERVER"


class ServerUnavailable(Exception):
    """The server could not be reached or started; the command runs in-process."""


class ServerSettingError(Exception):
    """An EXPFS_SERVER_* variable has a value the user must fix."""


# -- where the server lives ------------------------------------------------------


def server_dir() -> str:
    """Return the folder of this user's server sockets, created private if missing.

    Raises ServerSettingError when EXPFS_SERVER_DIR names an unusable folder
    and ServerUnavailable when the default folder is not private.
    """
    configured = os.environ.get(DIR_VARIABLE)
    if configured and not os.path.isabs(configured):
        raise ServerSettingError(
            f"{DIR_VARIABLE}={configured!r} is a relative path: give an absolute "
            f"folder, or unset {DIR_VARIABLE}"
        )
    path = configured or os.path.join(
        os.environ.get("TMPDIR", "/tmp"), f"expfs-{os.getuid()}"
    )
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        problem = f"cannot create {path}: {exc.strerror}"
        if configured:
            raise ServerSettingError(
                f"{DIR_VARIABLE}: {problem}: give a folder you can create"
            ) from None
        raise ServerUnavailable(problem) from None
    unsafe = _unsafe_folder(path, configured is not None)
    if unsafe is not None:
        problem, fix = unsafe
        if configured:
            raise ServerSettingError(f"{DIR_VARIABLE}: {problem}: {fix}")
        raise ServerUnavailable(f"{problem}: {fix}")
    return path


# File type bits of st_mode (the `stat` module is not built in, see above).
_S_IFMT = 0o170000
_S_IFDIR = 0o040000
_S_IFLNK = 0o120000


def _unsafe_folder(path: str, configured: bool) -> tuple[str, str] | None:
    """Return why `path` cannot hold the server's socket, and the fix, or None.

    The folder must be a real folder of this user that no one else can
    open, because another user could otherwise make it first, or swap a
    symbolic link, to receive our commands.
    """
    info = os.lstat(path)
    kind = info.st_mode & _S_IFMT
    if configured:
        other = f"set {DIR_VARIABLE} to another folder"
    else:
        other = f"set {DIR_VARIABLE} to a private folder of yours"
    prefix = f"{path} is not a private folder of user {os.getuid()}"
    if kind == _S_IFLNK:
        target = os.path.realpath(path)
        return (
            f"{prefix}: it is a symbolic link to {target}",
            f"set {DIR_VARIABLE} to {target} if that folder is yours and private, "
            + ("or choose another folder" if configured else "or remove the link"),
        )
    if kind != _S_IFDIR:
        return (
            f"{prefix}: it is not a folder",
            f"{other}, or remove the file {path}",
        )
    if info.st_uid != os.getuid():
        return (
            f"{prefix}: it belongs to user {info.st_uid}",
            f"{other}, or ask user {info.st_uid} to remove it",
        )
    if info.st_mode & 0o077:
        return (
            f"{prefix}: other users can open it (mode {info.st_mode & 0o7777:o})",
            f"run `chmod 700 {path}`, or {other}",
        )
    return None


def server_disabled() -> bool:
    """Return whether EXPFS_NO_SERVER turns the server off.

    Raises ServerSettingError for a value that is neither true nor false.
    """
    text = os.environ.get(NO_SERVER_VARIABLE, "")
    word = text.strip().lower()
    if word in ("1", "yes", "true", "on"):
        return True
    if word in ("", "0", "no", "false", "off"):
        return False
    raise ServerSettingError(
        f"{NO_SERVER_VARIABLE}={text!r} is neither true nor false: set it to 1 "
        "to run commands without the server, or to 0 (or unset it) to use it"
    )


def idle_seconds() -> float | None:
    """Return EXPFS_SERVER_IDLE_S as seconds, or None when unset."""
    text = os.environ.get(IDLE_VARIABLE)
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise ServerSettingError(
            f"{IDLE_VARIABLE}={text!r} is not a positive number of seconds: "
            f"set it to, for example, 600, or unset it"
        )
    return value


def installation_key() -> str:
    """Return a short key naming this installation: environment, interpreter, package.

    `python` and `python3` of one virtual environment share a server, since
    the key resolves the interpreter's symbolic links and names the
    environment by its prefix.
    """
    from _blake2 import blake2b

    interpreter = os.path.realpath(sys.executable)
    package = os.path.dirname(os.path.abspath(__file__))
    text = f"{sys.prefix}\0{interpreter}\0{package}"
    return blake2b(text.encode(), digest_size=8).hexdigest()


def socket_path(folder: str) -> str:
    return os.path.join(folder, f"server-{installation_key()}.sock")


def log_path(folder: str) -> str:
    return socket_path(folder).removesuffix(".sock") + ".log"


# -- running a command in the server ---------------------------------------------


def served(argv: Sequence[str]) -> bool:
    """Return whether CLI arguments `argv` name a command the server runs."""
    try:
        if server_disabled():
            return False
    except ServerSettingError:
        pass  # run_in_server reports the invalid value.
    if any(arg in UNSERVED_OPTIONS or arg.startswith("--cluster=") for arg in argv):
        return False
    words = list(argv)
    while words and words[0].startswith("-"):
        option = words.pop(0)
        if option == "-C" and words:
            words.pop(0)
    return any(tuple(words[: len(command)]) == command for command in SERVED_COMMANDS)


def run_in_server(argv: Sequence[str]) -> int | None:
    """Run CLI arguments `argv` in the server; return None where it cannot run them.

    A bad EXPFS_SERVER_* setting is an error (status 2). A server that
    cannot be used is a warning, and the command then runs in its own
    process.
    """
    try:
        server_disabled()
        idle_seconds()
        folder = server_dir()
        for _ in range(3):
            sock = _connect_or_start(folder)
            try:
                pid = _send_command(sock, argv)
            except ConnectionResetError:
                # The server closed before accepting (idle exit or stale code):
                # nothing ran, so start a new one.
                sock.close()
                continue
            return _wait_for_exit(sock, pid)
    except ServerSettingError as exc:
        print(f"expfs: error: {exc}", file=sys.stderr)
        return 2
    except ServerUnavailable as exc:
        print(
            f"expfs: warning: the expfs server is not available ({exc}); "
            "running this command in its own process, which is slower to start",
            file=sys.stderr,
        )
        return None
    return None


def _connect(path: str) -> _socket.socket:
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        raise
    return sock


def _connect_or_start(folder: str) -> _socket.socket:
    path = socket_path(folder)
    try:
        return _connect(path)
    except OSError:
        pass
    import fcntl

    with open(path.removesuffix(".sock") + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        # Another client may have started it while this one waited.
        try:
            return _connect(path)
        except OSError:
            pass
        _start_server(path)
        try:
            return _connect(path)
        except OSError as exc:
            raise ServerUnavailable(f"the new server does not respond: {exc}") from None


def _start_server(path: str) -> None:
    """Start a server on `path` and wait until it listens; the caller holds the lock."""
    import select
    import subprocess
    import time

    log = path.removesuffix(".sock") + ".log"
    _rotate(log)
    read_fd, write_fd = os.pipe()
    try:
        with open(log, "ab") as log_file:
            subprocess.Popen(
                [sys.executable, "-m", "expfs_cli.server", path, str(write_fd)],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                pass_fds=(write_fd,),
                start_new_session=True,
                cwd="/",
            )
        os.close(write_fd)
        write_fd = -1
        deadline = time.monotonic() + START_TIMEOUT_S
        data = b""
        while b"\n" not in data:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ServerUnavailable(f"the server did not start: see {log}")
            readable, _, _ = select.select([read_fd], [], [], remaining)
            if readable:
                chunk = os.read(read_fd, 4096)
                if not chunk:
                    raise ServerUnavailable(f"the server exited: see {log}")
                data += chunk
        if not data.startswith(b"ready\n"):
            raise ServerUnavailable(f"the server did not start: see {log}")
    finally:
        os.close(read_fd)
        if write_fd >= 0:
            os.close(write_fd)


def _rotate(log: str) -> None:
    try:
        if os.path.getsize(log) > MAX_LOG_BYTES:
            os.replace(log, log + ".1")
    except OSError:
        pass


def _std_fds() -> list[int]:
    """Return descriptors for standard input, output and error, /dev/null if closed."""
    fds = []
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
            fds.append(fd)
        except OSError:
            fds.append(os.open(os.devnull, os.O_RDWR))
    return fds


def send_with_fds(sock: _socket.socket, data: bytes, fds: Sequence[int]) -> None:
    """Send `data` as one datagram with `fds` attached (SCM_RIGHTS)."""
    rights = b"".join(fd.to_bytes(4, sys.byteorder, signed=True) for fd in fds)
    sock.sendmsg([data], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, rights)])


def _send_command(sock: _socket.socket, argv: Sequence[str]) -> int:
    """Send the command; return the pid of the child that runs it."""
    umask = os.umask(0)
    os.umask(umask)
    request = {
        "kind": "command",
        "argv": list(argv),
        "cwd": os.getcwd(),
        "env": dict(os.environ),
        "umask": umask,
    }
    try:
        send_with_fds(sock, marshal.dumps(request), _std_fds())
        reply = sock.recv(MAX_REQUEST_BYTES)
    except (ConnectionResetError, BrokenPipeError):
        raise ConnectionResetError("the server closed the connection") from None
    except OSError as exc:
        raise ServerUnavailable(f"the server failed: {exc}") from None
    if not reply:
        raise ConnectionResetError("the server closed the connection")
    answer = marshal.loads(reply)
    if answer.get("error") == "stale":
        raise ConnectionResetError("the server runs older code")
    if "error" in answer:
        raise ServerUnavailable(answer["error"])
    pid: int = answer["pid"]
    return pid


def _wait_for_exit(sock: _socket.socket, pid: int) -> int:
    """Forward signals to the command's process `pid` until it sends its status."""
    forwarded: list[int] = []

    def forward(signum: int, frame: Any) -> None:
        forwarded.append(signum)
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    for signum in FORWARDED_SIGNALS:
        _signal.signal(signum, forward)
    reply = b""
    while True:
        try:
            reply = sock.recv(MAX_REQUEST_BYTES)
            break
        except ConnectionResetError:
            break
    sock.close()
    if reply:
        code: int = marshal.loads(reply)["exit"]
        return code
    if forwarded:
        # The command died of the signal we passed on: die of it too.
        _signal.signal(forwarded[-1], _signal.SIG_DFL)
        os.kill(os.getpid(), forwarded[-1])
    print(
        f"expfs: error: the process {pid} that ran this command ended without "
        f"an exit status; see {log_path(server_dir())}",
        file=sys.stderr,
    )
    return 1
