"""One remote's files through fsspec, with atomic publishing per backend.

Paths given to a `Backend` are relative to the remote's root folder. Every
write publishes atomically, so a reader sees a whole file or none:

- `file://`: write a temporary file under `tmp/`, fsync it, then `link()`
  it to its final name, which fails instead of overwriting.
- `sftp://`: write under `tmp/`, then SFTP's plain rename request, which
  OpenSSH's sftp-server performs with `link()` and so never overwrites.
- `s3://`: a single PUT; run-cache entries add `If-None-Match: *` so that
  the first writer wins where the server enforces it.
- anything else fsspec reads: a single `pipe_file`, with entries stored
  append-only because nothing stops a second writer.

fsspec and the backend packages are imported only when a remote is opened.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Protocol, TypeVar

from expfs.errors import ExpfsError, UsageError
from expfs.remote.config import RemoteConfig, url_password
from expfs.store.objects import CHUNK_BYTES, new_hasher

log = logging.getLogger(__name__)

T = TypeVar("T")

# Options that expfs reads itself; the rest go to the fsspec backend.
EXPFS_OPTIONS = ("salt", "entries", "jobs")
ENTRY_MODES = ("create-only", "append-only")
TMP_DIR = "tmp"
CONNECT_TIMEOUT_S = 10
# S3 objects up to this size are sent in one PUT; larger ones as a multipart
# upload of PART_BYTES parts, several at once.
SINGLE_PUT_MAX_BYTES = 16 << 20
PART_BYTES = 16 << 20


class RemoteError(ExpfsError):
    """A remote could not be reached, or an operation on it failed."""


class RemoteFileExists(Exception):
    """A create-only write found the name taken."""


class Sink(Protocol):
    """Destination into which `Backend.get_many` streams one file's bytes."""

    def write(self, chunk: bytes, /) -> object: ...


@dataclass
class Batch:
    """The outcome of one `get_many` or `put_many` call.

    `done` lists the paths transferred; `errors` maps the failed ones to a
    `FileNotFoundError` or a `RemoteError`. Paths in neither were not tried,
    because the batch stops starting transfers after its first network error.
    """

    done: list[str] = field(default_factory=list)
    errors: dict[str, BaseException] = field(default_factory=dict)


def _typed(value: str) -> Any:
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    if value.isdigit():
        return int(value)
    return value


def storage_options(config: RemoteConfig) -> dict[str, Any]:
    """Return the fsspec keyword arguments for a remote's options."""
    scheme = config.url.split("://", 1)[0]
    options: dict[str, Any] = {}
    for key, value in config.options.items():
        if key in EXPFS_OPTIONS:
            continue
        if scheme in ("s3", "s3a") and key in ("endpoint_url", "region_name"):
            options.setdefault("client_kwargs", {})[key] = value
        else:
            options[key] = _typed(value)
    if scheme in ("s3", "s3a"):
        # Fail fast on a server that is down instead of botocore's long retries.
        config_kwargs = options.setdefault("config_kwargs", {})
        config_kwargs.setdefault("connect_timeout", CONNECT_TIMEOUT_S)
        config_kwargs.setdefault("retries", {"max_attempts": 2})
    if scheme == "sftp":
        options.setdefault("timeout", CONNECT_TIMEOUT_S)
    return options


class Backend:
    """The files of one remote, addressed by paths relative to its root."""

    def __init__(self, config: RemoteConfig) -> None:
        self.config = config
        self.label = f"{config.name} ({config.display_url})"
        self.scheme = config.url.split("://", 1)[0].lower()
        self._password = url_password(config.url)
        self._options = storage_options(config)
        self._local = threading.local()
        self._shared_fs: Any = None
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._pool_size = 0
        fs, root = self._open()
        self.root = root.rstrip("/")
        if self.scheme != "sftp":
            self._shared_fs = fs
        else:
            self._local.fs = fs
        mode = config.options.get("entries")
        if mode is not None and mode not in ENTRY_MODES:
            raise UsageError(
                f"invalid option entries={mode!r} of remote {config.name!r}: "
                f"use one of {', '.join(ENTRY_MODES)}"
            )
        self._create_only: bool | None = None if mode is None else mode == "create-only"

    # -- connections -----------------------------------------------------------

    def _open(self) -> tuple[Any, str]:
        import fsspec

        try:
            # sftp gets one connection per thread: paramiko's SFTP client is
            # not meant to be shared by threads that each wait on a reply.
            skip = self.scheme == "sftp"
            found: tuple[Any, str] = fsspec.core.url_to_fs(
                self.config.url, skip_instance_cache=skip, **self._options
            )
        except ImportError as exc:
            raise UsageError(
                f"remote {self.label} needs a backend package that is not "
                f"installed ({exc}): install expfs with the extra for it, "
                "such as `pip install expfs[s3]` or `expfs[sftp]`"
            ) from None
        except ValueError as exc:
            raise UsageError(
                f"remote {self.label}: {self.redact(str(exc))}; check its URL"
            ) from None
        except Exception as exc:
            raise RemoteError(
                f"cannot connect to remote {self.label}: {self.redact(str(exc))}"
            ) from None
        return found

    @property
    def fs(self) -> Any:
        if self._shared_fs is not None:
            return self._shared_fs
        fs = getattr(self._local, "fs", None)
        if fs is None:
            fs, _ = self._open()
            self._local.fs = fs
        return fs

    def pool(self, jobs: int) -> ThreadPoolExecutor:
        """Return this remote's thread pool, with at least `jobs` threads.

        One pool serves every transfer, so that its threads keep their
        connections (one per thread on SFTP) from batch to batch. A task run
        in the pool must not wait on other tasks of the pool.
        """
        with self._lock:
            if self._pool is None or self._pool_size < jobs:
                if self._pool is not None:
                    self._pool.shutdown(wait=False)
                self._pool = ThreadPoolExecutor(jobs, thread_name_prefix="remote")
                self._pool_size = jobs
            return self._pool

    def redact(self, text: str) -> str:
        """Remove the URL's password from a message, wherever it appears."""
        if self._password:
            text = text.replace(self._password, "***")
        return text

    def path(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def call(self, what: str, fn: Callable[[], T]) -> T:
        """Run one operation, turning backend errors into `RemoteError`."""
        try:
            return fn()
        except (FileNotFoundError, RemoteFileExists, ExpfsError):
            raise
        except Exception as exc:
            if self.scheme == "sftp":
                # The connection may be dead (server restarted): the next
                # call on this thread opens a new one.
                self._local.fs = None
            detail = self.redact(f"{type(exc).__name__}: {exc}")
            raise RemoteError(
                f"{what} on remote {self.label} failed: {detail}"
            ) from exc

    # -- reads -------------------------------------------------------------------

    def exists(self, rel: str) -> bool:
        return self.call(
            f"checking {rel}", lambda: bool(self.fs.exists(self.path(rel)))
        )

    def read_bytes(self, rel: str) -> bytes:
        return self.call(
            f"reading {rel}", lambda: bytes(self.fs.cat_file(self.path(rel)))
        )

    def open_read(self, rel: str) -> BinaryIO:
        if self.scheme == "file":
            return open(self.path(rel), "rb")
        handle: BinaryIO = self.call(
            f"opening {rel}",
            lambda: self.fs.open(self.path(rel), "rb", block_size=CHUNK_BYTES),
        )
        return handle

    def list_names(self, rel_dir: str) -> list[str]:
        """Return the names in a folder (or under an S3 prefix); [] when absent."""

        # s3fs caches listings per instance, and writes made through
        # `_call_s3` do not invalidate them, so S3 listings are always fresh.
        fresh = {"refresh": True} if self.scheme in ("s3", "s3a") else {}

        def names() -> list[str]:
            try:
                found = self.fs.ls(self.path(rel_dir), detail=False, **fresh)
            except FileNotFoundError:
                return []
            return sorted(os.path.basename(str(p).rstrip("/")) for p in found)

        return self.call(f"listing {rel_dir}", names)

    def walk_files(self, rel_dir: str) -> Iterator[tuple[str, float]]:
        """Yield (path relative to the root, mtime in seconds) below a folder."""

        def find() -> dict[str, Any]:
            try:
                found: dict[str, Any] = self.fs.find(self.path(rel_dir), detail=True)
                return found
            except FileNotFoundError:
                return {}

        prefix = self.fs._strip_protocol(self.root).rstrip("/") + "/"
        for name, info in self.call(f"listing {rel_dir}", find).items():
            # s3fs lists a folder that a filer-backed S3 server such as
            # SeaweedFS keeps after its last file is deleted.
            if info.get("type") == "directory":
                continue
            name = str(name)
            rel = name[len(prefix) :] if name.startswith(prefix) else name
            yield rel, _mtime(info)

    # -- bulk transfers --------------------------------------------------------

    def _async_s3(self) -> bool:
        return self.scheme in ("s3", "s3a") and hasattr(self.fs, "_call_s3")

    def remote_error(self, what: str, exc: BaseException) -> RemoteError:
        detail = self.redact(f"{type(exc).__name__}: {exc}")
        return RemoteError(f"{what} on remote {self.label} failed: {detail}")

    def get_many(
        self,
        rels: Sequence[str],
        open_sink: Callable[[str], Sink],
        finish: Callable[[str], bool],
        jobs: int,
    ) -> Batch:
        """Stream each file of `rels` into the sink that `open_sink(rel)` returns.

        Up to `jobs` files are read at once: on S3 as concurrent requests on
        s3fs's event loop, one GET per file and no HEAD before it, elsewhere
        in a thread pool. `open_sink` is called once the file is found, and
        `finish(rel)` once it is read; a path counts as done only when
        `finish` returns True. Both run in the event loop's thread on S3, so
        they must not block for long. They raise only `ExpfsError`, which
        stops the batch and is raised here once the requests in flight end.
        """
        if self._async_s3():
            from fsspec.asyn import sync

            batch: Batch = sync(
                self.fs.loop, self._get_many_s3, rels, open_sink, finish, jobs
            )
            return batch

        def get(rel: str) -> bool:
            self._get_one(rel, open_sink)
            return finish(rel)

        return self._in_pool(rels, get, jobs)

    def _get_one(self, rel: str, open_sink: Callable[[str], Sink]) -> None:
        def copy() -> None:
            with self.open_read(rel) as src:
                sink = open_sink(rel)
                while chunk := src.read(CHUNK_BYTES):
                    sink.write(chunk)

        self.call(f"downloading {rel}", copy)

    async def _get_many_s3(
        self,
        rels: Sequence[str],
        open_sink: Callable[[str], Sink],
        finish: Callable[[str], bool],
        jobs: int,
    ) -> Batch:
        fs = self.fs
        batch = Batch()
        gate = asyncio.Semaphore(jobs)
        fatal: list[BaseException] = []

        async def get(rel: str) -> None:
            async with gate:
                if fatal or batch.errors:
                    return
                bucket, key, _ = fs.split_path(self.path(rel))
                try:
                    response = await fs._call_s3("get_object", Bucket=bucket, Key=key)
                    body = response["Body"]
                    try:
                        sink = open_sink(rel)
                        while chunk := await body.read(CHUNK_BYTES):
                            sink.write(chunk)
                    finally:
                        body.close()
                except FileNotFoundError as exc:
                    batch.errors[rel] = exc
                    return
                except ExpfsError as exc:
                    fatal.append(exc)
                    return
                except Exception as exc:
                    batch.errors[rel] = self.remote_error(f"downloading {rel}", exc)
                    return
                try:
                    if finish(rel):
                        batch.done.append(rel)
                except ExpfsError as exc:
                    fatal.append(exc)

        await asyncio.gather(*(get(rel) for rel in rels))
        if fatal:
            raise fatal[0]
        return batch

    def put_many(
        self,
        files: Sequence[tuple[str, str, str]],
        finish: Callable[[str], object],
        jobs: int,
    ) -> Batch:
        """Publish local files, given as (local path, rel, digest), `jobs` at a time.

        Each file is checked against its digest before it is sent, and a name
        that is already taken counts as done (objects are named by digest).
        `finish(rel)` is called as each file is published. The batch is keyed
        by `rel`. On S3 the requests run concurrently on s3fs's event loop,
        elsewhere in a thread pool.
        """
        if self._async_s3():
            from fsspec.asyn import sync

            try:
                batch: Batch = sync(
                    self.fs.loop, self._put_many_s3, files, finish, jobs
                )
            finally:
                # Direct `put_object` calls leave s3fs's listing cache stale.
                self.fs.invalidate_cache()
            return batch
        by_rel = {rel: (path, digest) for path, rel, digest in files}

        def upload(rel: str) -> bool:
            path, digest = by_rel[rel]
            self.upload_file(path, rel, digest)
            finish(rel)
            return True

        return self._in_pool(list(by_rel), upload, jobs)

    async def _put_many_s3(
        self,
        files: Sequence[tuple[str, str, str]],
        finish: Callable[[str], object],
        jobs: int,
    ) -> Batch:
        batch = Batch()
        gate = asyncio.Semaphore(jobs)
        fatal: list[BaseException] = []

        async def put(local_path: str, rel: str, digest: str) -> None:
            async with gate:
                if fatal or batch.errors:
                    return
                try:
                    await self._put_one_s3(local_path, rel, digest)
                except ExpfsError as exc:
                    fatal.append(exc)
                except Exception as exc:
                    batch.errors[rel] = self.remote_error(f"uploading {rel}", exc)
                else:
                    finish(rel)
                    batch.done.append(rel)

        await asyncio.gather(*(put(*file) for file in files))
        if fatal:
            raise fatal[0]
        return batch

    async def _put_one_s3(self, local_path: str, rel: str, digest: str) -> None:
        fs = self.fs
        size = os.path.getsize(local_path)
        if size > SINGLE_PUT_MAX_BYTES:
            await asyncio.to_thread(_check_local, local_path, digest)
            await fs._put_file(local_path, self.path(rel), chunksize=PART_BYTES)
            return
        # Read once, then hash and send the same bytes.
        with open(local_path, "rb") as f:
            data = f.read()
        if new_hasher(size).update(data).hexdigest() != digest:
            from expfs.errors import CorruptObject

            raise CorruptObject(digest, local_path, "found while uploading it")
        bucket, key, _ = fs.split_path(self.path(rel))
        await fs._call_s3("put_object", Bucket=bucket, Key=key, Body=data)

    def _in_pool(
        self, rels: Sequence[str], fn: Callable[[str], bool], jobs: int
    ) -> Batch:
        """Call `fn` on each path in a thread pool; True from it means done."""
        batch = Batch()
        lock = threading.Lock()
        fatal: list[BaseException] = []

        def run(rel: str) -> None:
            with lock:
                if fatal or batch.errors:
                    return
            try:
                done = fn(rel)
            except FileNotFoundError as exc:
                outcome: BaseException | None = exc
            except (RemoteError, ConnectionError, TimeoutError) as exc:
                outcome = exc
            except ExpfsError as exc:
                with lock:
                    fatal.append(exc)
                return
            except OSError as exc:
                # file:// remotes raise plain OSError; other local errors
                # arrive wrapped in an ExpfsError.
                outcome = self.remote_error(f"transferring {rel}", exc)
            except BaseException as exc:
                with lock:
                    fatal.append(exc)
                return
            else:
                outcome = None
            with lock:
                if outcome is not None:
                    batch.errors[rel] = outcome
                elif done:
                    batch.done.append(rel)

        if jobs <= 1 or len(rels) <= 1:
            for rel in rels:
                run(rel)
        else:
            list(self.pool(jobs).map(run, rels))
        if fatal:
            raise fatal[0]
        return batch

    # -- writes ------------------------------------------------------------------

    def _temp_name(self) -> str:
        return f"{TMP_DIR}/{uuid.uuid4().hex}"

    def upload_file(self, local_path: str, rel: str, digest: str) -> None:
        """Publish a local file as `rel`, verifying that it hashes to `digest`.

        A name that is already taken contains the same bytes (objects are named
        by digest), so losing that race is success.
        """
        if self.scheme in ("file", "sftp"):
            try:
                self._upload_via_temp(local_path, rel, digest)
            except RemoteFileExists:
                pass
            return
        _check_local(local_path, digest)
        self.call(
            f"uploading {rel}", lambda: self.fs.put_file(local_path, self.path(rel))
        )

    def put_bytes(self, rel: str, data: bytes, *, create_only: bool = False) -> None:
        """Publish `data` as `rel`; with `create_only`, never replace a file.

        Raises `RemoteFileExists` when `create_only` finds the name taken.
        """
        if self.scheme in ("file", "sftp"):
            self._publish(rel, lambda f: f.write(data))
            return
        if not create_only:
            self.call(f"writing {rel}", lambda: self.fs.pipe_file(self.path(rel), data))
            return
        try:
            self.fs.pipe_file(self.path(rel), data, mode="create")
        except Exception as exc:
            if self.exists(rel):
                raise RemoteFileExists(rel) from None
            detail = self.redact(f"{type(exc).__name__}: {exc}")
            raise RemoteError(
                f"writing {rel} on remote {self.label} failed: {detail}"
            ) from exc

    def _upload_via_temp(self, local_path: str, rel: str, digest: str) -> None:
        def copy(dst: BinaryIO) -> None:
            with open(local_path, "rb") as src:
                hasher = new_hasher(os.fstat(src.fileno()).st_size)
                while chunk := src.read(CHUNK_BYTES):
                    hasher.update(chunk)
                    dst.write(chunk)
            if hasher.hexdigest() != digest:
                from expfs.errors import CorruptObject

                raise CorruptObject(digest, local_path, "found while uploading it")

        self._publish(rel, copy)

    def _publish(self, rel: str, write: Callable[[BinaryIO], object]) -> None:
        """Write a temporary file, then link it to `rel` without overwriting."""
        if self.scheme == "file":
            self._publish_local(rel, write)
        else:
            self.call(f"writing {rel}", lambda: self._publish_sftp(rel, write))

    def _publish_local(self, rel: str, write: Callable[[BinaryIO], object]) -> None:
        temp = self.path(self._temp_name())
        final = self.path(rel)
        os.makedirs(os.path.dirname(temp), exist_ok=True)
        os.makedirs(os.path.dirname(final), exist_ok=True)
        try:
            with open(temp, "xb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(temp, 0o444)
            os.link(temp, final)
        except FileExistsError:
            raise RemoteFileExists(rel) from None
        finally:
            _unlink_quietly(temp)

    def _publish_sftp(self, rel: str, write: Callable[[BinaryIO], object]) -> None:
        fs = self.fs
        temp = self.path(self._temp_name())
        final = self.path(rel)
        fs.makedirs(os.path.dirname(temp), exist_ok=True)
        fs.makedirs(os.path.dirname(final), exist_ok=True)
        try:
            with fs.ftp.open(temp, "wb") as f:
                f.set_pipelined(True)
                write(f)
            try:
                # SSH_FXP_RENAME, not the posix-rename extension: it fails
                # when `final` exists instead of replacing it.
                fs.ftp.rename(temp, final)
            except OSError:
                if fs.exists(final):
                    raise RemoteFileExists(rel) from None
                raise
        finally:
            try:
                fs.ftp.remove(temp)
            except OSError:
                pass

    def delete(self, rel: str) -> None:
        def remove() -> None:
            try:
                self.fs.rm_file(self.path(rel))
            except FileNotFoundError:
                pass

        self.call(f"deleting {rel}", remove)

    def remove_empty_folder(self, rel: str) -> None:
        """Remove the folder `rel` when it is empty, on file:// and sftp://.

        S3 has no folders of its own, so there this does nothing.
        """
        if self.scheme not in ("file", "sftp"):
            return

        def remove() -> None:
            try:
                self.fs.rmdir(self.path(rel))
            except OSError:
                # Not empty, or gone already.
                pass

        self.call(f"removing folder {rel}", remove)

    # -- capabilities ------------------------------------------------------------

    def enforces_create_only(self) -> bool:
        """Return True when a second create-only write of one name fails.

        `file://` and SFTP publish by a link that cannot overwrite. On S3 it
        depends on the server (AWS and SeaweedFS honour `If-None-Match: *`,
        `rclone serve s3` ignores it), so two writes of a probe file find out
        once per process. The `entries` option overrides the answer.
        """
        with self._lock:
            if self._create_only is None:
                self._create_only = self._probe_create_only()
            return self._create_only

    def _probe_create_only(self) -> bool:
        if self.scheme in ("file", "sftp"):
            return True
        if self.scheme not in ("s3", "s3a"):
            return False
        probe = f"{TMP_DIR}/probe-{uuid.uuid4().hex}"
        self.put_bytes(probe, b"1", create_only=True)
        try:
            self.put_bytes(probe, b"2", create_only=True)
        except RemoteFileExists:
            return True
        finally:
            self.delete(probe)
        log.info(
            "remote %s ignores If-None-Match: run-cache entries are appended",
            self.label,
        )
        return False


def _check_local(path: str, digest: str) -> None:
    from expfs.errors import CorruptObject
    from expfs.store.objects import hash_file

    if hash_file(path) != digest:
        raise CorruptObject(digest, path, "found while uploading it")


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _mtime(info: dict[str, Any]) -> float:
    for key in ("mtime", "LastModified", "last_modified", "created"):
        value = info.get(key)
        if isinstance(value, datetime.datetime):
            return value.timestamp()
        if isinstance(value, int | float):
            return float(value)
    return 0.0
