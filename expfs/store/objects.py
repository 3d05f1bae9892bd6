"""The content store: immutable blobs on disk and trees in the shared index.

A blob is written to `tmp/` under a unique name, fsynced, renamed to
`objects/ab/<digest>`, made read-only, and only then recorded in the
`blobs` database. Readers never see a partial blob. Two writers of the same
content race harmlessly: the rename is atomic and both files are identical.
"""

from __future__ import annotations

import errno
import logging
import os
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import BinaryIO

import blake3

from expfs.errors import CorruptObject, MissingObject, SnapshotError, UnknownDigest
from expfs.store import layout
from expfs.store.lmdbenv import Environment
from expfs.store.trees import (
    EMPTY_TREE,
    EMPTY_TREE_DIGEST,
    Digest,
    Entry,
    decode_tree,
    encode_tree,
    raw,
    tree_digest,
)

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
# Files at least this large are hashed with BLAKE3's multithreaded mode;
# below it, starting threads costs more than it saves.
MULTITHREAD_MIN_BYTES = 8 << 20
# Hashing a sparse file feeds zeros and data in pieces of this size.
SPARSE_CHUNK_BYTES = 16 << 20
BLOB_MODE = 0o444
_SIZE = struct.Struct(">Q")
# A verification mark: inode, size and mtime_ns of a blob file whose bytes
# hashed to its name. A write through a hard link changes the mtime, so a
# blob whose file still has these fields is not hashed again on check-out.
_MARK = struct.Struct(">QQQ")


def mark_of(st: os.stat_result) -> bytes:
    return _MARK.pack(st.st_ino, st.st_size, st.st_mtime_ns)


def new_hasher(size_hint: int = 0) -> blake3.blake3:
    if size_hint >= MULTITHREAD_MIN_BYTES:
        return blake3.blake3(max_threads=blake3.blake3.AUTO)
    return blake3.blake3()


def hash_file(path: str | bytes) -> Digest:
    """Return the BLAKE3 digest of a file's bytes, multithreaded when large."""
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        size = st.st_size
        hasher = new_hasher(size)
        if size >= MULTITHREAD_MIN_BYTES and st.st_blocks * 512 < size:
            _feed_sparse(hasher, f.fileno(), size)
        elif size >= MULTITHREAD_MIN_BYTES:
            # update_mmap takes only str paths; fsdecode keeps non-UTF-8
            # bytes as surrogate escapes, which blake3 maps back.
            hasher.update_mmap(os.fsdecode(path))
        else:
            _feed(hasher, f)
    return Digest(hasher.hexdigest())


def _feed_sparse(hasher: blake3.blake3, fd: int, size: int) -> None:
    """Hash a file with holes: data read in chunks, holes as zeros in memory.

    Mapping a hole costs a page fault per 4 KiB: hashing a 4 GiB sparse
    file that way took 1 to 7 s here. Zeros from memory take a tenth of
    that.
    """
    zeros = memoryview(bytes(SPARSE_CHUNK_BYTES))
    offset = 0
    while offset < size:
        try:
            data = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno != errno.ENXIO:  # ENXIO: no data after `offset`
                raise
            data = size
        data = min(data, size)
        while offset < data:
            step = min(SPARSE_CHUNK_BYTES, data - offset)
            hasher.update(zeros[:step])
            offset += step
        if offset >= size:
            break
        hole = min(os.lseek(fd, offset, os.SEEK_HOLE), size)
        while offset < hole:
            chunk = os.pread(fd, min(SPARSE_CHUNK_BYTES, hole - offset), offset)
            if not chunk:
                raise OSError(errno.EIO, f"file shrank while hashed at {offset}")
            hasher.update(chunk)
            offset += len(chunk)


def _feed(hasher: blake3.blake3, f: BinaryIO) -> None:
    while chunk := f.read(CHUNK_BYTES):
        hasher.update(chunk)


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_if_present(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


# fsync mostly waits for the disk, so threads overlap the waits and let the
# filesystem commit several files in one journal transaction.
FSYNC_THREADS = 8


def _in_threads(fn: Callable[[str], None], paths: Sequence[str]) -> None:
    """Call `fn` on every path, in a thread pool when there are several."""
    if len(paths) <= 1:
        for path in paths:
            fn(path)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(min(FSYNC_THREADS, len(paths))) as pool:
        list(pool.map(fn, paths))


# Blobs at least this large are restored by the kernel (copy_file_range)
# after a separate verification pass; smaller ones in one read-hash-write pass.
KERNEL_COPY_MIN_BYTES = 1 << 20
_ZEROS = bytes(CHUNK_BYTES)


def copy_sparse_hashing(src: BinaryIO, dst: BinaryIO, hasher: blake3.blake3) -> int:
    """Copy `src` to `dst` while hashing it, seeking over all-zero chunks.

    Skipping zero chunks keeps a sparse file sparse (as `cp --sparse=auto`
    does). Returns the number of bytes copied.
    """
    size = 0
    while chunk := src.read(CHUNK_BYTES):
        hasher.update(chunk)
        if chunk == _ZEROS[: len(chunk)]:
            dst.seek(len(chunk), os.SEEK_CUR)
        else:
            dst.write(chunk)
        size += len(chunk)
    dst.truncate(size)
    return size


def copy_data_extents(src_fd: int, dst_fd: int, size: int) -> None:
    """Copy a file's data extents in the kernel; holes are left as holes."""
    offset = 0
    while offset < size:
        try:
            start = os.lseek(src_fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no data after `offset`
                break
            raise
        end = min(os.lseek(src_fd, start, os.SEEK_HOLE), size)
        position = start
        while position < end:
            copied = os.copy_file_range(
                src_fd, dst_fd, end - position, position, position
            )
            if copied == 0:
                break
            position += copied
        offset = end
    os.ftruncate(dst_fd, size)


# Errors of copy_file_range that mean it cannot copy between the two files.
_NO_KERNEL_COPY = {errno.EXDEV, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


def _kernel_copy(src_fd: int, temp: str | bytes, size: int) -> bool:
    """Copy `size` bytes of `src_fd` to a new file `temp` in the kernel.

    Returns False, leaving no file behind, when the kernel cannot copy
    between the two filesystems; other errors propagate.
    """
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        copy_data_extents(src_fd, fd, size)
    except OSError as exc:
        os.close(fd)
        os.unlink(temp)
        if exc.errno in _NO_KERNEL_COPY:
            return False
        raise
    except BaseException:
        os.close(fd)
        os.unlink(temp)
        raise
    os.close(fd)
    return True


def _check_unchanged(
    path: str | bytes, before: os.stat_result, after: os.stat_result
) -> None:
    """Raise SnapshotError if a file's size or mtime changed while it was copied.

    The kernel copy pads a file that shrank to the size it had at the
    start, and a one-pass copy may mix old and new bytes, so such a copy
    must not enter the store. A write that keeps the size within one
    timestamp tick is not seen here.
    """
    if (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns):
        return
    if after.st_size != before.st_size:
        change = f"its size went from {before.st_size:,} to {after.st_size:,} bytes"
    else:
        change = "its modification time changed"
    raise SnapshotError(
        f"{os.fsdecode(path)} changed while it was being stored ({change}): "
        "stop whatever is writing to it and try again"
    )


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Store:
    """Blobs and trees under one `.expfs/` folder."""

    def __init__(self, root: str, env: Environment) -> None:
        self.root = root
        self.env = env
        self.objects_dir = os.path.join(root, layout.OBJECTS_DIR)
        self.tmp_dir = os.path.join(root, layout.TMP_DIR)

    # -- blobs ---------------------------------------------------------------

    def blob_path(self, digest: str) -> str:
        return os.path.join(self.objects_dir, digest[:2], digest)

    def has_blob(self, digest: str) -> bool:
        return os.path.exists(self.blob_path(digest))

    def _temp_path(self) -> str:
        # 128 random bits, as uuid4 has, without importing uuid (and platform)
        # at start-up.
        return os.path.join(self.tmp_dir, os.urandom(16).hex())

    def _install(self, temp: str, digest: Digest, size: int) -> Digest:
        """Rename a fsynced temporary file into place as blob `digest`."""
        final = self.blob_path(digest)
        if self._intact(digest):
            os.unlink(temp)
        else:
            shard = os.path.dirname(final)
            try:
                os.mkdir(shard, 0o755)
            except FileExistsError:
                pass
            os.chmod(temp, BLOB_MODE)
            os.rename(temp, final)
            fsync_dir(shard)
            self._index_marked([(digest, size, os.stat(final))])
            return digest
        self.index_blob(digest, size)
        return digest

    def _index_marked(self, rows: Sequence[tuple[str, int, os.stat_result]]) -> None:
        """Index freshly written blobs with their verification marks, at once."""
        blobs = self.env.db(layout.DB_BLOBS)
        marks = self.env.db(layout.DB_VERIFIED)
        packed = [(raw(d), _SIZE.pack(size), mark_of(st)) for d, size, st in rows]

        def write(txn: object) -> None:
            for key, size, mark in packed:
                txn.put(key, size, db=blobs)  # type: ignore[attr-defined]
                txn.put(key, mark, db=marks)  # type: ignore[attr-defined]

        self.env.write(write)

    def _intact(self, digest: str) -> bool:
        """Return True when blob `digest` is in place and hashes to its name.

        A corrupt blob (written through a hard-linked checkout, say) counts
        as absent, so that the caller's verified copy replaces it.
        """
        try:
            self.check_blob(digest)
        except MissingObject:
            return False
        except CorruptObject:
            log.warning("blob %s is corrupt: replacing it with a verified copy", digest)
            return False
        return True

    def index_blob(self, digest: str, size: int) -> None:
        """Record a blob file that is in place in the `blobs` database."""
        self.env.put(layout.DB_BLOBS, raw(digest), _SIZE.pack(size))

    def put_bytes(self, data: bytes) -> Digest:
        digest = Digest(new_hasher(len(data)).update(data).hexdigest())
        if self._intact(digest):
            return digest
        temp = self._temp_path()
        with open(temp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return self._install(temp, digest, len(data))

    def put_file(self, path: str | bytes, *, move: bool = False) -> Digest:
        """Store a file's content and return its digest.

        With `move=True` the caller gives the file up: when it lives on the
        store's filesystem it is renamed into the store instead of copied.
        Otherwise the bytes are hashed while they are copied, in one pass.
        """
        if move and self._same_filesystem(path):
            digest = hash_file(path)
            if self._intact(digest):
                os.unlink(path)
                return digest
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
                size = os.fstat(fd).st_size
            finally:
                os.close(fd)
            return self._install(os.fsdecode(path), digest, size)
        return self._copy_in(path)

    def _same_filesystem(self, path: str | bytes) -> bool:
        try:
            return os.stat(path).st_dev == os.stat(self.tmp_dir).st_dev
        except FileNotFoundError:
            return False

    def _copy_in(self, path: str | bytes) -> Digest:
        temp, digest, size = self._copy_to_temp(path)
        try:
            _fsync_file(temp)
        except BaseException:
            os.unlink(temp)
            raise
        return self._install(temp, digest, size)

    def _copy_to_temp(self, path: str | bytes) -> tuple[str, Digest, int]:
        """Copy a file into `tmp/`, hashing what was copied; nothing is fsynced.

        A large file is copied by the kernel over its data extents, then
        the copy is hashed with several threads: on one filesystem that is
        about ten times faster than reading it through Python. A smaller
        file, or one the kernel cannot copy, is copied and hashed in one
        pass. Either way the digest is that of the copy, the bytes that
        enter the store. Returns (temporary path, digest, size in bytes).
        On any error the temporary file is removed.
        """
        temp = self._temp_path()
        with open(path, "rb") as src:
            before = os.fstat(src.fileno())
            size = before.st_size
            if size >= KERNEL_COPY_MIN_BYTES and _kernel_copy(src.fileno(), temp, size):
                try:
                    _check_unchanged(path, before, os.fstat(src.fileno()))
                    return temp, hash_file(temp), os.stat(temp).st_size
                except BaseException:
                    os.unlink(temp)
                    raise
            # The kernel copy's lseeks (SEEK_DATA, SEEK_HOLE) moved the file
            # position; the one-pass copy reads from the current position.
            src.seek(0)
            hasher = new_hasher(size)
            with open(temp, "xb") as dst:
                try:
                    size = copy_sparse_hashing(src, dst, hasher)
                    _check_unchanged(path, before, os.fstat(src.fileno()))
                except BaseException:
                    os.unlink(temp)
                    raise
        return temp, Digest(hasher.hexdigest()), size

    def put_files(self, paths: Sequence[str | bytes]) -> list[Digest]:
        """Store several files' content; return their digests in order.

        Same result as `put_file` on each path, with the disk waits batched:
        all copies are written first, fsynced together in a thread pool,
        then renamed into place, then each shard folder is fsynced once and
        one transaction indexes them all. A blob is still durable before it
        is renamed into place.
        """
        staged: list[tuple[str, Digest, int]] = []
        try:
            for path in paths:
                staged.append(self._copy_to_temp(path))
            _in_threads(_fsync_file, [temp for temp, _, _ in staged])
        except BaseException:
            for temp, _, _ in staged:
                _unlink_if_present(temp)
            raise
        self._install_many(staged)
        return [digest for _, digest, _ in staged]

    def install_verified(self, staged: Sequence[tuple[str, Digest, int]]) -> None:
        """Store files in `tmp/` that the caller hashed while writing them.

        `staged` contains (temporary path, digest, size in bytes) for files
        written under `tmp_dir`, each already checked against its digest
        (a download hashed while it streamed). They are fsynced together,
        renamed into place, and indexed in one transaction, as in
        `put_files`. On an error before the renames every file is removed.
        """
        try:
            _in_threads(_fsync_file, [temp for temp, _, _ in staged])
        except BaseException:
            for temp, _, _ in staged:
                _unlink_if_present(temp)
            raise
        self._install_many(staged)

    def _install_many(self, staged: Sequence[tuple[str, Digest, int]]) -> None:
        """Rename fsynced temporary files into place and index them at once."""
        shards: set[str] = set()
        written: list[tuple[str, int, os.stat_result]] = []
        present: list[tuple[str, int]] = []
        for temp, digest, size in staged:
            final = self.blob_path(digest)
            if self._intact(digest):
                os.unlink(temp)
                present.append((digest, size))
                continue
            shard = os.path.dirname(final)
            if shard not in shards:
                os.makedirs(shard, 0o755, exist_ok=True)
                shards.add(shard)
            os.chmod(temp, BLOB_MODE)
            os.rename(temp, final)
            written.append((digest, size, os.stat(final)))
        _in_threads(fsync_dir, sorted(shards))
        self._index_marked(written)
        rows = [(raw(digest), _SIZE.pack(size)) for digest, size in present]
        handle = self.env.db(layout.DB_BLOBS)

        def write(txn: object) -> None:
            for key, value in rows:
                txn.put(key, value, db=handle)  # type: ignore[attr-defined]

        if rows:
            self.env.write(write)

    def open_blob(self, digest: str) -> BinaryIO:
        try:
            return open(self.blob_path(digest), "rb")
        except FileNotFoundError:
            raise MissingObject(digest) from None

    def read_blob(self, digest: str) -> bytes:
        """Return a blob's bytes, verified against its digest."""
        with self.open_blob(digest) as f:
            data = f.read()
        if Digest(new_hasher(len(data)).update(data).hexdigest()) != digest:
            raise CorruptObject(digest, self.blob_path(digest))
        return data

    def copy_blob(self, digest: str, dest: str | bytes, mode: int) -> None:
        """Write blob `digest` to a new file `dest`, verifying it on the way.

        On a mismatch the partial file is removed and `CorruptObject` names
        the blob, so a damaged object is never copied silently.
        """
        with self.open_blob(digest) as src:
            size = os.fstat(src.fileno()).st_size
            if size >= KERNEL_COPY_MIN_BYTES:
                # Verify first (or trust the blob's verification mark), then
                # let the kernel copy only the data extents, so holes stay holes.
                self.check_blob(digest, os.fstat(src.fileno()))
                if _kernel_copy(src.fileno(), dest, size):
                    try:
                        os.chmod(dest, mode)
                    except BaseException:
                        os.unlink(dest)
                        raise
                    return
                # `dest` is on a filesystem the kernel cannot copy to (a
                # tmpfs from ext4): copy in one pass from the start.
                src.seek(0)
            hasher = new_hasher(size)
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                with os.fdopen(fd, "wb") as dst:
                    copy_sparse_hashing(src, dst, hasher)
                    os.fchmod(dst.fileno(), mode)
            except BaseException:
                os.unlink(dest)
                raise
        if hasher.hexdigest() != digest:
            os.unlink(dest)
            raise CorruptObject(digest, self.blob_path(digest))

    def check_blob(self, digest: str, st: os.stat_result | None = None) -> None:
        """Raise `CorruptObject` unless blob `digest` hashes to its name.

        A blob whose file still has the inode, size and mtime of its
        verification mark is trusted without reading it. Otherwise it is
        hashed and, when it matches, marked again. `st` is the blob file's
        stat when the caller has it. Damage that leaves the mtime alone
        (a failing disk) is found by `expfs fsck`, which hashes every blob.
        """
        path = self.blob_path(digest)
        if st is None:
            try:
                st = os.stat(path)
            except FileNotFoundError:
                raise MissingObject(digest) from None
        if self.env.get(layout.DB_VERIFIED, raw(digest)) == mark_of(st):
            return
        self.hash_blob(digest, st)
        self.record_marks({digest: mark_of(st)})

    def hash_blob(self, digest: str, st: os.stat_result) -> bytes:
        """Hash blob `digest`, raise `CorruptObject` on a mismatch; return its mark.

        `st` is the blob file's stat taken before hashing, so a write during
        the hash leaves a mark that no longer matches.
        """
        path = self.blob_path(digest)
        if hash_file(path) != digest:
            raise CorruptObject(digest, path)
        return mark_of(st)

    def record_marks(self, marks: dict[str, bytes]) -> None:
        """Store verification marks, as `hash_blob` returns them, in one transaction."""
        handle = self.env.db(layout.DB_VERIFIED)
        rows = [(raw(digest), mark) for digest, mark in marks.items()]

        def write(txn: object) -> None:
            for key, value in rows:
                txn.put(key, value, db=handle)  # type: ignore[attr-defined]

        if rows:
            self.env.write(write)

    def verified_marks(self, digests: Iterable[str]) -> dict[str, bytes]:
        """Return the verification mark of each of `digests` that has one."""
        handle = self.env.db(layout.DB_VERIFIED)
        wanted = sorted(set(digests))

        def scan(txn: object) -> dict[str, bytes]:
            found: dict[str, bytes] = {}
            for digest in wanted:
                value = txn.get(raw(digest), db=handle)  # type: ignore[attr-defined]
                if value is not None:
                    found[digest] = bytes(value)
            return found

        return self.env.read(scan)

    def verify_blob(self, digest: str) -> bool:
        """Return True when the blob exists and hashes to its name."""
        try:
            return hash_file(self.blob_path(digest)) == digest
        except FileNotFoundError:
            return False

    def iter_blob_files(self) -> Iterator[tuple[str, str]]:
        """Yield (name, path) of every file under `objects/`."""
        try:
            shards = sorted(os.listdir(self.objects_dir))
        except FileNotFoundError:
            return
        for shard in shards:
            shard_path = os.path.join(self.objects_dir, shard)
            if not os.path.isdir(shard_path):
                continue
            for name in sorted(os.listdir(shard_path)):
                yield name, os.path.join(shard_path, name)

    def indexed_blobs(self) -> list[tuple[Digest, int]]:
        handle = self.env.db(layout.DB_BLOBS)

        def collect(txn: object) -> list[tuple[Digest, int]]:
            cursor = txn.cursor(db=handle)  # type: ignore[attr-defined]
            return [(Digest(k.hex()), _SIZE.unpack(v)[0]) for k, v in cursor]

        return self.env.read(collect)

    # -- trees ---------------------------------------------------------------

    def put_tree(self, entries: Iterable[Entry]) -> Digest:
        """Store a tree whose referenced objects are already stored."""
        encoded = encode_tree(entries)
        digest = tree_digest(encoded)
        self.put_trees([(digest, encoded)])
        return digest

    def put_trees(self, encoded_trees: Iterable[tuple[Digest, bytes]]) -> None:
        """Store several already-encoded, complete trees in one transaction.

        The caller has stored everything they reference, so a lazy mark
        that an earlier restore left on one of them is removed.
        """
        items = [(raw(d), data) for d, data in encoded_trees]
        handle = self.env.db(layout.DB_TREES)
        lazy = self.env.db(layout.DB_LAZY)

        def write(txn: object) -> None:
            for key, data in items:
                txn.put(key, data, db=handle, overwrite=False)  # type: ignore[attr-defined]
                txn.delete(key, db=lazy)  # type: ignore[attr-defined]

        self.env.write(write)

    def tree_bytes(self, digest: str) -> bytes | None:
        if digest == EMPTY_TREE_DIGEST:
            return EMPTY_TREE
        return self.env.get(layout.DB_TREES, raw(digest))

    def has_tree(self, digest: str) -> bool:
        return self.tree_bytes(digest) is not None

    def get_tree(self, digest: str) -> list[Entry]:
        data = self.tree_bytes(digest)
        if data is None:
            raise MissingObject(digest)
        if tree_digest(data) != digest:
            raise CorruptObject(digest, f"{self.root}/index (trees)")
        return decode_tree(data)

    def iter_trees(self) -> Iterator[tuple[Digest, bytes]]:
        handle = self.env.db(layout.DB_TREES)

        def collect(txn: object) -> list[tuple[Digest, bytes]]:
            cursor = txn.cursor(db=handle)  # type: ignore[attr-defined]
            return [(Digest(k.hex()), bytes(v)) for k, v in cursor]

        yield from self.env.read(collect)

    def delete_tree(self, digest: str) -> None:
        handle = self.env.db(layout.DB_TREES)
        self.env.write(lambda txn: txn.delete(raw(digest), db=handle))

    # -- names ---------------------------------------------------------------

    def resolve(self, name: str) -> Digest:
        """Expand a digest or a unique prefix of at least 4 hex digits."""
        name = name.strip().lower()
        if not 4 <= len(name) <= 64 or any(c not in "0123456789abcdef" for c in name):
            raise UnknownDigest(
                f"{name!r} is not a digest: give 4 to 64 hex digits, as printed "
                "by `expfs snapshot`"
            )
        if len(name) == 64:
            if self.has_tree(name) or self.has_blob(name):
                return Digest(name)
            raise UnknownDigest(f"no object {name} in the store at {self.root}")
        matches = set(self._tree_prefix_matches(name))
        shard = os.path.join(self.objects_dir, name[:2])
        if os.path.isdir(shard):
            matches.update(Digest(n) for n in os.listdir(shard) if n.startswith(name))
        if not matches:
            raise UnknownDigest(f"no object starting with {name} in {self.root}")
        if len(matches) > 1:
            raise UnknownDigest(
                f"digest prefix {name} is ambiguous ({len(matches)} objects): "
                "give more digits"
            )
        return matches.pop()

    def _tree_prefix_matches(self, prefix: str) -> list[Digest]:
        handle = self.env.db(layout.DB_TREES)
        low = bytes.fromhex(prefix + "0" * (len(prefix) % 2))

        def scan(txn: object) -> list[Digest]:
            cursor = txn.cursor(db=handle)  # type: ignore[attr-defined]
            found: list[Digest] = []
            if not cursor.set_range(low):
                return found
            for key in cursor.iternext(keys=True, values=False):
                hexkey = key.hex()
                if not hexkey.startswith(prefix):
                    if hexkey > prefix:
                        break
                    continue
                found.append(Digest(hexkey))
            return found

        return self.env.read(scan)

    # -- housekeeping --------------------------------------------------------

    def remove_blob(self, digest: str) -> None:
        path = self.blob_path(digest)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        blobs = self.env.db(layout.DB_BLOBS)
        marks = self.env.db(layout.DB_VERIFIED)

        def write(txn: object) -> None:
            txn.delete(raw(digest), db=blobs)  # type: ignore[attr-defined]
            txn.delete(raw(digest), db=marks)  # type: ignore[attr-defined]

        self.env.write(write)

    def clean_tmp(self, older_than_s: float) -> int:
        """Remove temporary files left by crashed writers; return how many."""
        import shutil
        import time

        removed = 0
        cutoff = time.time() - older_than_s
        for entry in os.scandir(self.tmp_dir):
            try:
                if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                    if entry.is_dir(follow_symlinks=False):
                        shutil.rmtree(entry.path)
                    else:
                        os.unlink(entry.path)
                    removed += 1
            except FileNotFoundError:
                continue
        return removed
