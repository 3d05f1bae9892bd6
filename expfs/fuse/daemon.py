"""The mount daemon: serves one experiment's workspace at a mount point.

Run as `python -m expfs.fuse.daemon --store ROOT --name NAME --mountpoint
PATH [--ready-fd FD] [--blob-source MODULE:NAME]`; `expfs mount` starts it
in the background. The
daemon mounts, waits until the mount responds to a `stat`, raises the mount's
read-ahead, writes its runtime record and only then reports `ready` on the
pipe `--ready-fd` (or `error: MESSAGE` when anything failed), so the
parent returns only once the folder is usable.

It stops when the mount goes away (`fusermount3 -u` by anyone), on the
control socket's `stop` (unmounting first, and refusing while the mount is
busy) or on SIGTERM, SIGINT or SIGHUP (flushing, then a lazy unmount). In
each case it flushes the kernel's writeback cache into the workspace,
closes the workspace and removes its runtime files. Everything goes to
`.expfs/logs/NAME.log`.

Files that a lazy restore left on a remote are fetched on first open by a
blob source that the caller supplies: `--blob-source MODULE:NAME` names a
callable that takes the store and returns one (the remotes layer has
`expfs.remote.lazy.RemoteBlobSource`), or `main` takes the callable
itself. The FUSE layer never imports the remotes layer, which sits above
it. Without a blob source, opening such a file fails with EIO.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import errno
import functools
import importlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import pyfuse3
import trio

from expfs.fuse import control
from expfs.fuse.gitlink import with_gitlink
from expfs.text import plural

if TYPE_CHECKING:
    from expfs.fuse.ops import BlobSource

log = logging.getLogger(__name__)

# A callable that builds a mount's blob source from its store.
BlobSourceFactory = Callable[[Any], "BlobSource"]

READY_TIMEOUT_S = 30.0
READ_AHEAD_KB = 1024
# Time a `stop` reply gets to reach its client after the unmount ends the
# FUSE session, before the daemon cancels everything and exits.
STOP_REPLY_GRACE_S = 5.0


_libc = ctypes.CDLL(None, use_errno=True)


def syncfs(path: str) -> None:
    """Flush the filesystem holding `path` (syncfs(2)), releasing the GIL.

    pyfuse3.syncfs (3.5) keeps the GIL during the call, so the event loop
    thread could not serve the writeback requests that syncfs waits for,
    and a snapshot taken while a tool wrote into the mount hung. A ctypes
    call releases the GIL.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _libc.syncfs(fd) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), path)
    finally:
        os.close(fd)


class ReadyPipe:
    """The write end of the pipe on which the parent waits for the mount."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd

    def _send(self, line: str) -> None:
        if self.fd is None:
            return
        try:
            os.write(self.fd, line.encode(errors="replace") + b"\n")
        except OSError as exc:
            log.warning("could not tell the parent %r: %s", line, exc)
        os.close(self.fd)
        self.fd = None

    def ok(self) -> None:
        self._send("ready")

    def fail(self, message: str) -> None:
        self._send("error: " + " ".join(message.split()))


class Daemon:
    """One mounted workspace, its control socket and its lifecycle."""

    def __init__(
        self,
        store: Any,
        name: str,
        mountpoint: str,
        allow_other: bool,
        gitdir: str | None = None,
        blob_source: BlobSource | None = None,
    ) -> None:
        self.store = store
        self.name = name
        self.gitdir = gitdir
        self.blob_source = blob_source
        self.mountpoint = os.path.abspath(mountpoint)
        self.allow_other = allow_other
        self.workspace: Any = None
        self.ops: Any = None
        self.initialized = False
        self.stopping = False
        self.stop_answered = trio.Event()
        self.nursery: trio.Nursery | None = None

    # -- start ---------------------------------------------------------------------

    def mount(self) -> None:
        """Open the workspace and mount it; the kernel waits for `serve`."""
        from expfs.fuse.ops import WorkspaceOperations
        from expfs.workspace import Workspace

        if not os.path.isdir(self.mountpoint):
            raise control.ControlError(
                f"mount point {self.mountpoint} is not a folder: create it first"
            )
        self.workspace = Workspace.open(self.store, self.name)
        self.ops = with_gitlink(WorkspaceOperations)(self.workspace, self.blob_source)
        if self.gitdir:
            self.ops.set_gitlink(self.gitdir)
        self.ops.pins.mountpoint = self.mountpoint
        options = set(pyfuse3.default_options)
        options |= {"fsname=expfs", "subtype=expfs", "auto_unmount"}
        if self.allow_other:
            options.add("allow_other")
        pyfuse3.init(self.ops, self.mountpoint, options)
        self.initialized = True
        log.info("mounted experiment %s at %s", self.name, self.mountpoint)

    async def serve(self, ready: ReadyPipe) -> None:
        """Serve FUSE requests and the control socket until the mount ends."""
        server = control.ControlServer(
            control.socket_path(self.store.root, self.name), self._handlers()
        )
        server.after_stop = self.stop_answered.set
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            nursery.start_soon(self._run_fuse, name="fuse main loop")
            await nursery.start(server.serve)
            nursery.start_soon(self._watch_signals, name="signals")
            try:
                # The stat must not run on this thread: it waits for the
                # FUSE loop, which this thread runs.
                with trio.fail_after(READY_TIMEOUT_S):
                    root = await trio.to_thread.run_sync(os.stat, self.mountpoint)
            except (trio.TooSlowError, OSError) as exc:
                message = f"the mount at {self.mountpoint} did not respond: {exc}"
                log.error("%s", message)
                ready.fail(message)
                await self._unmount(lazy=True)
                return
            self._raise_read_ahead(root.st_dev)
            control.write_record(
                self.store.root,
                self.name,
                {
                    "pid": os.getpid(),
                    "mountpoint": self.mountpoint,
                    "started": time.time(),
                    "allow_other": self.allow_other,
                },
            )
            ready.ok()
            log.info("serving experiment %s at %s", self.name, self.mountpoint)

    async def _run_fuse(self) -> None:
        await pyfuse3.main()
        log.info("the FUSE session at %s ended", self.mountpoint)
        if self.stopping:
            with trio.move_on_after(STOP_REPLY_GRACE_S):
                await self.stop_answered.wait()
        assert self.nursery is not None
        self.nursery.cancel_scope.cancel()

    def _raise_read_ahead(self, dev: int) -> None:
        # Measured with pyfuse3 3.5: 1 MiB of read-ahead doubles cold
        # sequential reads through the daemon compared with the default.
        path = f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb"
        try:
            with open(path, "w") as f:
                f.write(str(READ_AHEAD_KB))
        except OSError as exc:
            log.warning("could not raise read-ahead at %s: %s", path, exc)

    # -- stop ----------------------------------------------------------------------

    async def _watch_signals(self) -> None:
        signals = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        with trio.open_signal_receiver(*signals) as received:
            async for signum in received:
                log.info(
                    "received %s: flushing and unmounting", signal.strsignal(signum)
                )
                self.stopping = True
                self.stop_answered.set()
                await self._flush()
                await self._unmount(lazy=True)

    async def _flush(self) -> None:
        try:
            await trio.to_thread.run_sync(syncfs, self.mountpoint)
        except OSError as exc:
            log.warning("syncfs of %s failed: %s", self.mountpoint, exc)

    async def _unmount(self, lazy: bool) -> None:
        if self.ops is not None:
            # A file held or still being evicted would make the mount busy.
            await self.ops.pins.settle()
        command = ["fusermount3", "-u", *(["-z"] if lazy else []), self.mountpoint]
        proc = await trio.run_process(command, capture_stderr=True, check=False)
        if proc.returncode != 0:
            message = proc.stderr.decode(errors="replace").strip()
            log.warning("%s failed: %s", " ".join(command), message)
            if "busy" in message.lower():
                raise OSError(
                    errno.EBUSY,
                    f"the mount at {self.mountpoint} is busy: a process has a file "
                    f"open or its working folder there (see `fuser -vm "
                    f"{self.mountpoint}`); close it and retry",
                )
            raise OSError(errno.EIO, f"unmounting {self.mountpoint} failed: {message}")

    def close(self) -> None:
        """Close the workspace and the FUSE session; remove runtime files."""
        if self.workspace is not None:
            try:
                self.workspace.close()
            except Exception:
                log.exception("closing workspace %s failed", self.name)
        if self.initialized:
            still_mounted = control.mounted_fstype(self.mountpoint) is not None
            pyfuse3.close(unmount=still_mounted)
        control.remove_runtime_files(self.store.root, self.name)

    # -- control requests ------------------------------------------------------------

    def _handlers(self) -> dict[str, Any]:
        return {
            "ping": self._ping,
            "digest_of": self._digest_of,
            "snapshot": self._snapshot,
            "graft": self._graft,
            "remove_path": self._remove_path,
            "stop": self._stop,
        }

    async def _ping(self, request: dict[str, Any]) -> Any:
        return {"pid": os.getpid(), "mountpoint": self.mountpoint}

    async def _digest_of(self, request: dict[str, Any]) -> Any:
        path = _workspace_path(request["path"])
        await self._flush()
        return str(self.workspace.digest_of(path))

    async def _snapshot(self, request: dict[str, Any]) -> Any:
        await self._flush()
        digest = self.workspace.snapshot()
        log.info("snapshot of %s: %s", self.name, digest)
        return str(digest)

    async def _graft(self, request: dict[str, Any]) -> Any:
        path = _workspace_path(request["path"])
        digest = self._resolve(request["digest"])
        mode = request.get("mode")
        changed = self.workspace.graft(
            path, digest, None if mode is None else int(mode)
        )
        eviction_note = await self._invalidate_replaced(changed)
        log.info(
            "grafted %s at %s in %s%s",
            digest,
            os.fsdecode(path),
            self.name,
            eviction_note,
        )
        return None

    def _resolve(self, name: str) -> Any:
        """Expand a digest; a blob restored lazily from a remote counts too."""
        from expfs.store.lazy import lazy_mark

        if len(name) == 64 and lazy_mark(self.store, name.lower()) is not None:
            return name.lower()
        return self.store.resolve(name)

    async def _remove_path(self, request: dict[str, Any]) -> Any:
        path = _workspace_path(request["path"])
        changed = self.workspace.remove_path(path)
        eviction_note = await self._invalidate_replaced(changed)
        log.info("removed %s from %s%s", os.fsdecode(path), self.name, eviction_note)
        return None

    async def _invalidate_replaced(self, changed: list[tuple[int, bytes, int]]) -> str:
        """Drop the kernel's entries for `changed`, evicting the old inodes later.

        Returns the words the log line adds about held files.

        The large files below the replaced names are held open across the
        invalidation and closed after the reply, in a worker thread, so
        freeing their cached pages does not delay the caller (see pins.py).
        """
        pins = self.ops.pins
        held_fds = await pins.hold([old for _parent, _name, old in changed if old])
        try:
            await self.ops.invalidate(changed)
        finally:
            if held_fds and self.nursery is not None:
                self.nursery.start_soon(pins.release, held_fds)
            elif held_fds:
                await pins.release(held_fds)
        if not held_fds:
            return ""
        return f" (evicting {plural(len(held_fds), 'large file')} after the reply)"

    async def _stop(self, request: dict[str, Any]) -> Any:
        log.info("stop requested over the control socket")
        await self._flush()
        self.stopping = True
        try:
            await self._unmount(lazy=False)
        except OSError:
            self.stopping = False
            raise
        return None


def _workspace_path(text: str) -> bytes:
    """Return a workspace path from a control request, rejecting escapes."""
    parts = [p for p in os.fsencode(text).split(b"/") if p and p != b"."]
    if not parts or b".." in parts:
        raise ValueError(f"invalid path {text!r}: give a path inside the mount")
    if parts[0] == b".git":
        raise ValueError(f"invalid path {text!r}: the root .git is not in workspaces")
    return b"/".join(parts)


def _setup_logging(store_root: str, name: str, debug: bool, foreground: bool) -> None:
    path = control.log_path(store_root, name)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    handlers: list[logging.Handler] = [logging.FileHandler(path)]
    if foreground:
        handlers.append(logging.StreamHandler(sys.stderr))
    formatter = logging.Formatter(
        "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"
    )
    root = logging.getLogger()
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)


def count_requests(ops: Any, counts: collections.Counter[str]) -> None:
    """Make every FUSE handler of `ops` count its calls in `counts`.

    The counting wrappers are set on the instance, so an unprofiled daemon
    pays nothing for them.
    """
    for name in dir(pyfuse3.Operations):
        if name.startswith("_") or name in ("init", "stacktrace"):
            continue
        handler = getattr(ops, name, None)
        if callable(handler):
            setattr(ops, name, _counted(handler, name, counts))


def _counted(handler: Any, name: str, counts: collections.Counter[str]) -> Any:
    @functools.wraps(handler)
    async def wrapper(*args: Any) -> Any:
        counts[name] += 1
        return await handler(*args)

    return wrapper


def write_request_counts(path: str, counts: collections.Counter[str]) -> None:
    total = sum(counts.values())
    log.info(
        "FUSE requests served: %d (%s)",
        total,
        ", ".join(f"{name} {n}" for name, n in counts.most_common()),
    )
    with open(path, "w") as f:
        json.dump(dict(counts.most_common()), f, indent=1)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m expfs.fuse.daemon",
        description="Serve one experiment's workspace as a FUSE mount.",
    )
    parser.add_argument("--store", required=True, help="the .expfs/ folder")
    parser.add_argument("--name", required=True, help="the experiment's name")
    parser.add_argument("--mountpoint", required=True, help="folder to mount on")
    parser.add_argument(
        "--gitdir",
        help="the experiment's Git worktree folder, shown as the mount's `.git` file",
    )
    parser.add_argument(
        "--allow-other", action="store_true", help="let other users see the mount"
    )
    parser.add_argument(
        "--ready-fd", type=int, help="pipe on which to report ready or the error"
    )
    parser.add_argument(
        "--foreground", action="store_true", help="also log to standard error"
    )
    parser.add_argument("--debug", action="store_true", help="log every operation")
    parser.add_argument(
        "--blob-source",
        metavar="MODULE:NAME",
        help="a callable that takes the store and returns the fetcher of blobs "
        "that a lazy restore left on a remote (without it, opening such a file "
        "fails with EIO)",
    )
    parser.add_argument(
        "--profile",
        metavar="FILE",
        default=os.environ.get("EXPFS_DAEMON_PROFILE"),
        help="write cProfile statistics of the daemon to FILE and the number "
        "of FUSE requests of each kind to FILE.requests.json at exit "
        "(default: $EXPFS_DAEMON_PROFILE)",
    )
    return parser.parse_args(argv)


def load_blob_source_factory(spec: str) -> BlobSourceFactory:
    """Import the callable that `spec` (MODULE:NAME) names; raise ValueError."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(
            f"invalid --blob-source {spec!r}: give MODULE:NAME of a callable "
            "that takes the store"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"invalid --blob-source {spec!r}: {exc}") from None
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise ValueError(
            f"invalid --blob-source {spec!r}: module {module_name} has no "
            f"callable {attribute}"
        )
    loaded: BlobSourceFactory = factory
    return loaded


def main(
    argv: Sequence[str] | None = None,
    blob_source_factory: BlobSourceFactory | None = None,
) -> int:
    """Run the daemon; return its exit status.

    `blob_source_factory` builds the fetcher of lazily restored blobs from
    the store, in place of `--blob-source`.
    """
    args = parse_args(argv)
    from expfs.store.repo import open_store

    ready = ReadyPipe(args.ready_fd)
    try:
        store = open_store(args.store)
        if blob_source_factory is None and args.blob_source:
            blob_source_factory = load_blob_source_factory(args.blob_source)
    except Exception as exc:
        ready.fail(str(exc))
        return 1
    _setup_logging(store.root, args.name, args.debug, args.foreground)
    log.info(
        "starting daemon pid %d for experiment %s at %s",
        os.getpid(),
        args.name,
        args.mountpoint,
    )
    daemon = Daemon(store, args.name, args.mountpoint, args.allow_other, args.gitdir)
    try:
        if blob_source_factory is not None:
            daemon.blob_source = blob_source_factory(store)
        daemon.mount()
    except Exception as exc:
        log.exception("mounting experiment %s failed", args.name)
        ready.fail(str(exc) or type(exc).__name__)
        daemon.close()
        return 1
    profiler = None
    requests: collections.Counter[str] = collections.Counter()
    if args.profile:
        import cProfile

        count_requests(daemon.ops, requests)
        profiler = cProfile.Profile()
        profiler.enable()
    try:
        trio.run(daemon.serve, ready)
    except BaseException as exc:
        log.exception("daemon of experiment %s failed", args.name)
        ready.fail(f"the daemon failed: {exc}")
        return 1
    finally:
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(args.profile)
            write_request_counts(args.profile + ".requests.json", requests)
        daemon.close()
        log.info("stopped daemon pid %d of experiment %s", os.getpid(), args.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
