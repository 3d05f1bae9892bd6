"""The control socket of a mount daemon, its client, and the mount records.

Each daemon listens on `.expfs/run/NAME.sock` (mode 0600) and writes
`.expfs/run/NAME.json` (its pid and mount point) once its mount responds.
The protocol is JSON lines: one request object per line, one response per
line, in order. A request is `{"op": OP, ...arguments}`; a response is
`{"ok": true, "result": ...}` or `{"ok": false, "error": MESSAGE}`.

    ping                      -> {"pid": PID, "mountpoint": PATH}
    digest_of  path           -> digest of that path in the workspace
    snapshot                  -> root digest, after flushing the kernel's
                                 writeback cache and mmap writers (syncfs)
    graft      path digest [mode] -> null, sent only once the kernel has
                                 dropped the entries and attributes involved
    remove_path path          -> null, with the same invalidation
    stop                      -> null once unmounted; the daemon then exits

Paths are relative to the mount's root and travel as `os.fsdecode` text, so
names that are not UTF-8 survive as surrogate escapes (JSON keeps them).
This module imports neither trio nor pyfuse3 at load time, so the CLI's
client side stays fast to start.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from expfs.errors import ExpfsError
from expfs.store import layout
from expfs.store.trees import Digest

if TYPE_CHECKING:
    import trio

log = logging.getLogger(__name__)

MAX_LINE_BYTES = 1 << 20
DAEMON_MODULE = "expfs.fuse.daemon"


class ControlError(ExpfsError):
    """The daemon could not be reached or rejected a request."""


# -- runtime files ---------------------------------------------------------------


# Linux limits a Unix socket's path to 107 bytes (sun_path is 108 with NUL).
MAX_SOCKET_PATH_BYTES = 107


def socket_path(store_root: str, name: str) -> str:
    """Return the control socket of experiment `name`'s daemon.

    It lives in the store's `run/` folder unless that path is too long for
    a Unix socket, as in a deep repository or with a long name. Then it
    lives in a private folder under the system's temporary folder, named by
    a digest of the long path, so the daemon and its clients agree on it.
    """
    path = os.path.join(store_root, layout.RUN_DIR, f"{name}.sock")
    if len(os.fsencode(path)) <= MAX_SOCKET_PATH_BYTES:
        return path
    import tempfile

    import blake3

    folder = os.path.join(tempfile.gettempdir(), f"expfs-{os.getuid()}")
    os.makedirs(folder, mode=0o700, exist_ok=True)
    if os.stat(folder).st_uid != os.getuid():
        raise ControlError(
            f"{folder} belongs to another user: remove it, or set TMPDIR to a "
            "folder of your own"
        )
    digest = blake3.blake3(os.fsencode(path)).hexdigest()[:32]
    return os.path.join(folder, f"{digest}.sock")


def record_path(store_root: str, name: str) -> str:
    return os.path.join(store_root, layout.RUN_DIR, f"{name}.json")


def log_path(store_root: str, name: str) -> str:
    return os.path.join(store_root, layout.LOGS_DIR, f"{name}.log")


def write_record(store_root: str, name: str, record: dict[str, Any]) -> None:
    path = record_path(store_root, name)
    temp = f"{path}.{os.getpid()}.tmp"
    with open(temp, "w") as f:
        json.dump(record, f)
    os.rename(temp, path)


def read_record(store_root: str, name: str) -> dict[str, Any] | None:
    try:
        with open(record_path(store_root, name)) as f:
            record: dict[str, Any] = json.load(f)
            return record
    except (FileNotFoundError, ValueError):
        return None


def remove_runtime_files(store_root: str, name: str) -> None:
    for path in (socket_path(store_root, name), record_path(store_root, name)):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


# -- mount state -------------------------------------------------------------------


def _unescape_mountinfo(field: str) -> str:
    # /proc/self/mountinfo escapes space, tab, newline and backslash as \ooo.
    out, i = [], 0
    while i < len(field):
        if (
            field[i] == "\\"
            and i + 3 < len(field) + 1
            and field[i + 1 : i + 4].isdigit()
        ):
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mounted_fstype(path: str) -> str | None:
    """Return the filesystem type mounted exactly at `path`, or None.

    Only the parent folder is resolved: a stat of the mount point itself
    would wait on its daemon, which may be hung or be the caller.
    """
    absolute = os.path.abspath(path)
    parent, base = os.path.split(absolute)
    target = os.path.join(os.path.realpath(parent), base) if base else absolute
    found = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            separator = fields.index("-")
            if _unescape_mountinfo(fields[4]) == target:
                found = fields[separator + 1]
    return found


def daemon_alive(pid: int) -> bool:
    """Return whether `pid` is a running expfs mount daemon (not a reused pid)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    # A daemon is its own interpreter, or forked from the launcher or from
    # the expfs server (`expfs_cli.server`), whose command line it keeps.
    known = (DAEMON_MODULE.encode(), b"expfs.fuse.launcher", b"expfs_cli.server")
    return state != "Z" and any(module in cmdline for module in known)


@dataclass(frozen=True)
class MountStatus:
    """What is known about one experiment's mount.

    `state` is one of these words:

    - "mounted": the daemon runs and its mount is in the mount table.
    - "unmounted": no daemon runs.
    - "dead": the daemon is gone but left its runtime files.
    - "stale": the daemon is gone but its mount is still in the table.
    - "orphan": the daemon runs but nothing is mounted at its path.
    """

    name: str
    state: str
    pid: int | None = None
    mountpoint: str | None = None


def mount_status(store: Any, name: str) -> MountStatus:
    """Return the state of experiment `name`'s mount, from its runtime record."""
    record = read_record(store.root, name)
    if record is None:
        return MountStatus(name, "unmounted")
    pid = int(record["pid"])
    mountpoint = str(record["mountpoint"])
    alive = daemon_alive(pid)
    fstype = mounted_fstype(mountpoint)
    if alive:
        state = "mounted" if fstype is not None else "orphan"
    else:
        state = "stale" if fstype is not None else "dead"
    return MountStatus(name, state, pid, mountpoint)


# -- client ------------------------------------------------------------------------


class ControlClient:
    """A blocking client of one daemon's control socket."""

    def __init__(
        self, store_root: str, name: str, timeout_s: float | None = 30
    ) -> None:
        self.name = name
        self.path = socket_path(store_root, name)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout_s)
        try:
            self.sock.connect(self.path)
        except OSError as exc:
            self.sock.close()
            raise ControlError(
                f"cannot reach the daemon of experiment {name!r} at {self.path} "
                f"({exc.strerror or exc}): is it mounted? see `expfs mounts`"
            ) from None
        self.reader = self.sock.makefile("rb")

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self.reader.close()
        self.sock.close()

    def call(self, op: str, timeout_s: float | None = None, **args: Any) -> Any:
        """Send one request and return its result, or raise `ControlError`."""
        line = json.dumps({"op": op, **args}).encode() + b"\n"
        if timeout_s is not None:
            self.sock.settimeout(timeout_s)
        try:
            self.sock.sendall(line)
            reply = self.reader.readline(MAX_LINE_BYTES)
        except OSError as exc:
            raise ControlError(
                f"the daemon of experiment {self.name!r} did not respond to {op}: {exc}"
            ) from None
        if not reply:
            raise ControlError(
                f"the daemon of experiment {self.name!r} closed the connection "
                f"during {op}: see its log"
            )
        response = json.loads(reply)
        if not response.get("ok"):
            raise ControlError(
                f"experiment {self.name!r}: {op} failed: {response.get('error')}"
            )
        return response.get("result")

    def ping(self) -> dict[str, Any]:
        result: dict[str, Any] = self.call("ping")
        return result

    def digest_of(self, path: bytes) -> Digest:
        return Digest(self.call("digest_of", path=os.fsdecode(path)))

    def snapshot(self) -> Digest:
        return Digest(self.call("snapshot", timeout_s=None))

    def graft(self, path: bytes, digest: str, mode: int | None = None) -> None:
        """Replace `path` by a stored blob or tree; `mode` sets its permission bits."""
        self.call(
            "graft", timeout_s=None, path=os.fsdecode(path), digest=digest, mode=mode
        )

    def remove_path(self, path: bytes) -> None:
        self.call("remove_path", timeout_s=None, path=os.fsdecode(path))

    def stop(self) -> None:
        self.call("stop", timeout_s=120)


# -- server (runs inside the daemon's trio loop) --------------------------------------

Handler = Callable[[dict[str, Any]], Any]


class ControlServer:
    """Serves the control protocol on a Unix socket with one handler per op.

    A handler is an async function that takes the request and returns a
    JSON-serializable result. The message of an `ExpfsError`,
    `WorkspaceError` (a path not found), `OSError`, `KeyError` or
    `ValueError` it raises is sent back as the error. Any
    other exception is logged and reported as an internal error, and the
    daemon keeps serving.
    """

    def __init__(self, path: str, handlers: dict[str, Handler]) -> None:
        self.path = path
        self.handlers = handlers
        # Called once a successful `stop` reply has been sent.
        self.after_stop: Callable[[], None] | None = None

    async def serve(self, task_status: Any = None) -> None:
        import trio

        listener = await self._listen()
        if task_status is not None:
            task_status.started()
        try:
            await trio.serve_listeners(self._serve_connection, [listener])
        finally:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

    async def _listen(self) -> trio.SocketListener:
        import trio

        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            await sock.bind(self.path)
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)
        sock.listen(16)
        return trio.SocketListener(sock)

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        import trio

        buffer = b""
        async with stream:
            while True:
                try:
                    data = await stream.receive_some(65536)
                except trio.BrokenResourceError:
                    return
                if not data:
                    return
                buffer += data
                if len(buffer) > MAX_LINE_BYTES:
                    log.warning("closed a control connection: request too long")
                    return
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    response = await self._answer(line)
                    try:
                        await stream.send_all(json.dumps(response).encode() + b"\n")
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        return
                    finally:
                        if response.get("stopped") and self.after_stop is not None:
                            self.after_stop()

    async def _answer(self, line: bytes) -> dict[str, Any]:
        # Imported here: the CLI imports this module without the workspace.
        from expfs.workspace.errors import WorkspaceError

        started = time.monotonic()
        try:
            request = json.loads(line)
            op = request["op"]
            handler = self.handlers[op]
        except (ValueError, KeyError, TypeError):
            log.warning("rejected a malformed control request: %r", line[:200])
            return {"ok": False, "error": f"malformed request {line[:200]!r}"}
        try:
            result = await handler(request)
        except (ExpfsError, WorkspaceError, OSError, KeyError, ValueError) as exc:
            log.warning("control request %s failed: %s", op, exc)
            return {"ok": False, "error": str(exc)}
        except Exception:
            log.exception("control request %s failed with an internal error", op)
            return {"ok": False, "error": f"internal error in {op}: see the log"}
        log.debug("control %s returned in %.3f s", op, time.monotonic() - started)
        response = {"ok": True, "result": result}
        if op == "stop":
            response["stopped"] = True
        return response
