"""Restore an output into a plain folder by link type, as DVC's `cache.type` does.

Link types are `reflink`, `hardlink`, `symlink` and `copy`. A list is tried
in order for each file, and a type that fails with "not supported here"
(ext4 has no reflink, a hard link cannot cross filesystems) is dropped for
the rest of the restore. The default is DVC's: `reflink,copy`. The list
comes from `--link` of `expfs repro` or `expfs checkout`, else `[cache] type`
in `.expfs/config`, else in `.expfs.toml`.

Safety. A hard link or a symlink points at the blob file itself, which is
read-only (0444), so a user other than root gets "permission denied" when
writing to it. An editor that saves by rename replaces the link and leaves
the blob alone. Root ignores mode bits, so a write by root does
reach the blob. It then changes the blob's mtime, which voids its
verification mark: the next restore hashes the blob, finds the damage and
runs the stage instead, and `expfs fsck` lists it. `expfs unprotect PATH`
replaces linked files with private writable copies, as `dvc unprotect`.

Modes. Copies and reflinks get the mode the run recorded. A linked file
has the blob's mode 0444 on disk (a fingerprint still reports the recorded
mode, see `expfs.store.links`), and a file whose recorded mode has an
execute bit is copied instead of linked, so that it stays executable.
Folders are real folders with their recorded modes, and symlinks inside
an output are real symlinks.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import shutil
import stat
import threading
import tomllib
from collections.abc import Collection, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from expfs.errors import CorruptObject, MissingObject, UsageError
from expfs.runcache import OutputRecord
from expfs.store.links import HARDLINK, SYMLINK, Link, LinkRecords
from expfs.store.objects import KERNEL_COPY_MIN_BYTES, Store, mark_of, new_hasher
from expfs.store.trees import Digest, Kind

log = logging.getLogger(__name__)

LINK_TYPES = ("reflink", "hardlink", "symlink", "copy")
DEFAULT_LINK_TYPES = ("reflink", "copy")
FICLONE = 0x40049409  # _IOW(0x94, 9, int) from linux/fs.h
# errno values meaning "this link type does not work on this filesystem".
UNSUPPORTED = {
    "reflink": {errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.ENOTTY},
    "hardlink": {errno.EXDEV, errno.EPERM, errno.EOPNOTSUPP},
    "symlink": {errno.EPERM, errno.EOPNOTSUPP},
}
# Small files are written by a pool of threads: the system calls release
# the GIL, so opens, writes and closes of several files overlap.
WRITER_THREADS = 4
BATCH_FILES = 256


def parse_link_types(text: str, source: str) -> tuple[str, ...]:
    """Parse a comma-separated list of link types, naming `source` on error."""
    types = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [t for t in types if t not in LINK_TYPES]
    if unknown or not types:
        raise UsageError(
            f"invalid link type {text!r} in {source}: give one or more of "
            f"{', '.join(LINK_TYPES)}, comma-separated (such as reflink,copy)"
        )
    return types


def configured_link_types(store: Store) -> tuple[str, ...]:
    """Return `[cache] type` from the store's config or the project's, or DVC's default."""
    repo_root = os.path.dirname(os.path.abspath(store.root))
    for path in (
        os.path.join(store.root, "config"),
        os.path.join(repo_root, ".expfs.toml"),
    ):
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except FileNotFoundError:
            continue
        except tomllib.TOMLDecodeError as exc:
            raise UsageError(
                f"invalid TOML in {path}: {exc}; fix or remove the file"
            ) from None
        value = data.get("cache", {}).get("type")
        if value is None:
            continue
        if not isinstance(value, str):
            raise UsageError(
                f"invalid [cache] type {value!r} in {path}: give a string such "
                'as "reflink,copy"'
            )
        return parse_link_types(value, f"[cache] type of {path}")
    return DEFAULT_LINK_TYPES


@dataclass(frozen=True)
class _FileJob:
    digest: Digest
    mode: int
    size: int
    path: bytes


class CheckoutWriter:
    """Write stored outputs into a folder with a list of link types."""

    def __init__(self, store: Store, link_types: Sequence[str] = DEFAULT_LINK_TYPES):
        self.store = store
        self.link_types = tuple(link_types)
        self.unsupported: set[str] = set()
        self._warned = threading.Lock()
        self.marks: dict[str, bytes] = {}
        self.new_marks: dict[str, bytes] = {}
        self.links: list[Link] = []

    def write(self, out: OutputRecord, target: str) -> None:
        """Write output `out` at `target`, which must not exist."""
        path = os.fsencode(target)
        kind = Kind(out.kind)
        if kind is Kind.SYMLINK:
            os.symlink(self.store.read_blob(out.digest), path)
            return
        if kind is Kind.FILE:
            jobs = [_FileJob(out.digest, out.mode, out.size, path)]
            self._write_files(jobs)
            return
        folders: list[tuple[bytes, int]] = []
        jobs = []
        os.mkdir(path, 0o700)
        folders.append((path, out.mode))
        self._plan_tree(out.digest, path, folders, jobs)
        self._write_files(jobs)
        # Deepest first, so that a read-only folder is closed after its children.
        for folder, mode in reversed(folders):
            os.chmod(folder, mode)

    def _plan_tree(
        self,
        digest: str,
        path: bytes,
        folders: list[tuple[bytes, int]],
        jobs: list[_FileJob],
    ) -> None:
        """Create the folders and symlinks of tree `digest`; list its files."""
        for entry in self.store.get_tree(digest):
            child = os.path.join(path, entry.name)
            if entry.kind is Kind.DIRECTORY:
                os.mkdir(child, 0o700)
                folders.append((child, entry.mode))
                self._plan_tree(entry.digest, child, folders, jobs)
            elif entry.kind is Kind.SYMLINK:
                os.symlink(self.store.read_blob(entry.digest), child)
            else:
                jobs.append(_FileJob(entry.digest, entry.mode, entry.size, child))

    def _write_files(self, jobs: list[_FileJob]) -> None:
        if any(t != "copy" for t in self.link_types) or any(
            j.size >= KERNEL_COPY_MIN_BYTES for j in jobs
        ):
            self.marks = self.store.verified_marks(j.digest for j in jobs)
        if len(jobs) <= BATCH_FILES:
            self._write_batch(jobs)
        else:
            with ThreadPoolExecutor(WRITER_THREADS) as pool:
                list(pool.map(self._write_batch, _batches(jobs, BATCH_FILES)))
        LinkRecords(self.store).record_many(self.links)
        self.store.record_marks(self.new_marks)
        self.links = []
        self.new_marks = {}

    def _write_batch(self, jobs: Sequence[_FileJob]) -> None:
        for job in jobs:
            self._write_file(job)

    def _write_file(self, job: _FileJob) -> None:
        for link_type in self.link_types:
            if link_type in self.unsupported:
                continue
            if link_type in ("hardlink", "symlink") and job.mode & 0o111:
                continue  # a link would have the blob's mode 0444: copy instead
            try:
                self._write_as(link_type, job)
                return
            except OSError as exc:
                if link_type == "hardlink" and exc.errno == errno.EMLINK:
                    continue  # this blob has the maximum links: next type
                if exc.errno not in UNSUPPORTED.get(link_type, set()):
                    raise
                self._drop(link_type, exc)
        self._copy(job)

    def _drop(self, link_type: str, exc: OSError) -> None:
        with self._warned:
            if link_type in self.unsupported:
                return
            self.unsupported.add(link_type)
        level = logging.INFO if link_type == "reflink" else logging.WARNING
        log.log(
            level,
            "%s is not supported here (%s): trying the next link type",
            link_type,
            os.strerror(exc.errno or 0),
        )

    def _write_as(self, link_type: str, job: _FileJob) -> None:
        if link_type == "copy":
            self._copy(job)
            return
        blob_path = self.store.blob_path(job.digest)
        blob = self._verified(job.digest)
        if link_type == "reflink":
            self._reflink(blob_path, job)
        elif link_type == "hardlink":
            os.link(blob_path, job.path)
            self.links.append(Link(job.path, HARDLINK, blob, job.mode, job.digest))
        else:
            os.symlink(blob_path, job.path)
            self.links.append(Link(job.path, SYMLINK, blob, job.mode, job.digest))

    def _verified(self, digest: Digest) -> os.stat_result:
        """Check blob `digest` (by its mark when it has one); return its stat."""
        try:
            st = os.stat(self.store.blob_path(digest))
        except FileNotFoundError:
            raise MissingObject(digest) from None
        if self.marks.get(digest) != mark_of(st):
            self.new_marks[digest] = self.store.hash_blob(digest, st)
        return st

    def _reflink(self, blob_path: str, job: _FileJob) -> None:
        src = os.open(blob_path, os.O_RDONLY)
        try:
            dst = os.open(job.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                fcntl.ioctl(dst, FICLONE, src)
                os.fchmod(dst, job.mode)
            except BaseException:
                os.close(dst)
                os.unlink(job.path)
                raise
            os.close(dst)
        finally:
            os.close(src)

    def _copy(self, job: _FileJob) -> None:
        if job.size >= KERNEL_COPY_MIN_BYTES:
            self.store.copy_blob(job.digest, job.path, job.mode)
            return
        data = self._read_verified(job.digest)
        fd = os.open(job.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fchmod(fd, job.mode)
        except BaseException:
            os.close(fd)
            os.unlink(job.path)
            raise
        os.close(fd)

    def _read_verified(self, digest: Digest) -> bytes:
        """Return a small blob's bytes after checking them against `digest`."""
        path = self.store.blob_path(digest)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise MissingObject(digest) from None
        try:
            parts = []
            while chunk := os.read(fd, KERNEL_COPY_MIN_BYTES):
                parts.append(chunk)
        finally:
            os.close(fd)
        data = b"".join(parts)
        if new_hasher(len(data)).update(data).hexdigest() != digest:
            raise CorruptObject(digest, path)
        return data


def _batches(jobs: list[_FileJob], size: int) -> Iterator[list[_FileJob]]:
    for start in range(0, len(jobs), size):
        yield jobs[start : start + size]


def unprotect(store: Store, path: str) -> int:
    """Replace linked files at or under `path` by private writable copies.

    Returns how many files were replaced. A hard link or symlink to a blob
    becomes a regular file with the same bytes and the mode the run
    recorded, so writing to it leaves the store alone.
    """
    target = os.fsencode(os.path.abspath(path))
    found = _walk(target)
    linked = LinkRecords(store).lookup_many(found)
    for file_path, (digest, mode) in sorted(linked.items()):
        temp = file_path + b".expfs-unprotect"
        job = _FileJob(digest, mode, os.stat(file_path).st_size, temp)
        CheckoutWriter(store, ("copy",))._copy(job)
        os.rename(temp, file_path)
    return len(linked)


def remove_path(path: str | bytes) -> None:
    """Remove the file, symlink or folder at `path`, if present.

    A folder may contain read-only or unreadable folders, which a stage
    can write and a restore gives back with their modes. Removing their
    contents needs write and search permission on them, so when the
    owner lacks it, owner permissions are added to each folder below and
    the removal is tried again. Root needs neither.
    """
    if not os.path.isdir(path) or os.path.islink(path):
        if os.path.lexists(path):
            os.unlink(path)
        return
    try:
        shutil.rmtree(path)
    except PermissionError:
        _add_owner_permissions(os.fsencode(path))
        shutil.rmtree(path)


def _add_owner_permissions(root: bytes) -> None:
    """Give the owner read, write and search permission on every folder below `root`."""
    pending = [root]
    while pending:
        folder = pending.pop()
        if not os.path.lexists(folder):
            continue  # removed by the first attempt
        mode = stat.S_IMODE(os.lstat(folder).st_mode)
        if mode & stat.S_IRWXU != stat.S_IRWXU:
            os.chmod(folder, mode | stat.S_IRWXU)
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    pending.append(os.fsencode(entry.path))


def check_unprotect_paths(
    root: str, outputs: Collection[str], paths: Sequence[str], stage_file: str
) -> None:
    """Raise UsageError unless each of `paths` lies inside one of `outputs`.

    `outputs` are the declared outputs' paths relative to the workspace
    `root`, and `paths` are given relative to the current folder. A path
    must also stay inside `root` once its symlinks are resolved.
    """
    how = "`expfs stage list` lists each stage's outputs"
    real_root = os.path.realpath(root)
    for path in paths:
        if not os.path.lexists(path):
            raise UsageError(f"{path} not found: give an output's file or folder")
        relative = os.path.relpath(os.path.abspath(path), root)
        real = os.path.realpath(path)
        if relative.split(os.sep)[0] == ".." or (
            real != real_root and not real.startswith(real_root + os.sep)
        ):
            raise UsageError(
                f"{path} is outside the project {root}: unprotect changes only "
                f"outputs of its stages, and {how}"
            )
        if not any(relative == o or relative.startswith(o + "/") for o in outputs):
            raise UsageError(
                f"{path} is not an output of any stage in {stage_file}: unprotect "
                f"changes only outputs, and {how}"
            )


def _walk(root: bytes) -> dict[bytes, os.stat_result]:
    """Return {path: lstat} of every non-folder at or under `root`."""
    st = os.lstat(root)
    if not os.path.isdir(root) or os.path.islink(root):
        return {root: st}
    found: dict[bytes, os.stat_result] = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            found[path] = os.lstat(path)
    return found
