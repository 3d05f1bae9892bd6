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

import datetime
import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO, TypeVar

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


class RemoteError(ExpfsError):
    """A remote could not be reached, or an operation on it failed."""


class RemoteFileExists(Exception):
    """A create-only write found the name taken."""


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

        def names() -> list[str]:
            try:
                found = self.fs.ls(self.path(rel_dir), detail=False)
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
            name = str(name)
            rel = name[len(prefix) :] if name.startswith(prefix) else name
            yield rel, _mtime(info)

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
