"""Inode records and the keys of a workspace's own LMDB environment.

The layout is described with the rest of the store in `expfs.store.layout`.
This module encodes and decodes it:

    meta     b"workspace" -> base digest (32 raw bytes), created_ns u64,
             next_ino u64, owner uid u32, owner gid u32
    inodes   ino u64 -> `Record` (see `encode_record`)
    dirents  parent ino u64 + name -> child ino u64; 0 is a whiteout that
             hides a name of the parent's base tree
    xattrs   ino u64 + attribute name -> value
    orphans  ino u64 -> b"": records whose last name is gone while the
             kernel still uses them; removed at the last forget, or when
             the workspace is opened again

Inode numbers of entries that come unchanged from a base tree are derived
from (parent ino, name), so they are stable without being written. Numbers
of new entries come from the `next_ino` counter. The two ranges never meet:
derived numbers have the top bit set, counted ones do not.
"""

from __future__ import annotations

import stat
import struct
from dataclasses import dataclass
from typing import NewType

import blake3

from expfs.store.trees import Digest, Entry, Kind

Ino = NewType("Ino", int)

ROOT_INO = Ino(1)
FIRST_COUNTED_INO = 2
DERIVED_BIT = 1 << 63
WHITEOUT = 0

DB_META = b"meta"
DB_INODES = b"inodes"
DB_DIRENTS = b"dirents"
DB_XATTRS = b"xattrs"
DB_ORPHANS = b"orphans"
WORKSPACE_DATABASES = (DB_META, DB_INODES, DB_DIRENTS, DB_XATTRS, DB_ORPHANS)
META_KEY = b"workspace"

_U64 = struct.Struct(">Q")
_META = struct.Struct(">32sQQII")
_RECORD = struct.Struct(">BIIIQqqqIQQB")
_RECORD_VERSION = 1

FLAG_DIGEST = 1  # a 32-byte digest follows the fixed fields
FLAG_UPPER = 2  # file content lives in the upper file, not the digest
FLAG_DIRTY = 4  # directory: its listing or something below it changed
FLAG_TARGET = 8  # symlink target bytes follow (after the digest, if any)


def ino_key(ino: int) -> bytes:
    return _U64.pack(ino)


def key_ino(key: bytes) -> Ino:
    return Ino(_U64.unpack_from(key, 0)[0])


def dirent_key(parent: int, name: bytes) -> bytes:
    return _U64.pack(parent) + name


def derived_ino(parent: int, name: bytes) -> Ino:
    """Return the stable number of base entry `name` in directory `parent`."""
    digest = blake3.blake3(_U64.pack(parent) + name).digest(length=8)
    return Ino(_U64.unpack(digest)[0] | DERIVED_BIT)


def name_cookie(name: bytes) -> int:
    """Return the readdir offset of `name`: 63 bits of its hash, never 0.

    The offset depends on the name alone, so it stays valid while other
    entries come and go during a listing.
    """
    digest = blake3.blake3(name).digest(length=8)
    return (_U64.unpack(digest)[0] >> 1) or 1


@dataclass(frozen=True, slots=True)
class Meta:
    """The workspace record written once at creation, then only the counter."""

    base: Digest
    created_ns: int
    next_ino: int
    uid: int
    gid: int

    def encode(self) -> bytes:
        return _META.pack(
            bytes.fromhex(self.base), self.created_ns, self.next_ino, self.uid, self.gid
        )

    @classmethod
    def decode(cls, data: bytes) -> Meta:
        base, created_ns, next_ino, uid, gid = _META.unpack(data)
        return cls(Digest(base.hex()), created_ns, next_ino, uid, gid)


@dataclass(slots=True)
class Record:
    """Attributes and content source of one inode.

    `digest` is the blob of a clean file or symlink, or the base tree of a
    directory (None for a directory made in the workspace). A file with
    `upper` set reads its bytes from `upper/<ino>` and ignores `digest`.
    A directory's `nlink` is 0 until its subdirectories have been counted.
    `parent` is the directory of the first name, used to mark ancestors
    dirty; for directories it is always the current parent.
    """

    mode: int
    uid: int
    gid: int
    size: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    nlink: int
    rdev: int
    parent: int
    digest: Digest | None = None
    upper: bool = False
    dirty: bool = False
    target: bytes | None = None

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_file(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)


def encode_record(record: Record) -> bytes:
    flags = 0
    tail = b""
    if record.digest is not None:
        flags |= FLAG_DIGEST
        tail += bytes.fromhex(record.digest)
    if record.upper:
        flags |= FLAG_UPPER
    if record.dirty:
        flags |= FLAG_DIRTY
    if record.target is not None:
        flags |= FLAG_TARGET
        tail += record.target
    head = _RECORD.pack(
        _RECORD_VERSION,
        record.mode,
        record.uid,
        record.gid,
        record.size,
        record.atime_ns,
        record.mtime_ns,
        record.ctime_ns,
        record.nlink,
        record.rdev,
        record.parent,
        flags,
    )
    return head + tail


def decode_record(data: bytes) -> Record:
    fields = _RECORD.unpack_from(data, 0)
    version, mode, uid, gid, size, atime, mtime, ctime, nlink, rdev, parent, flags = (
        fields
    )
    if version != _RECORD_VERSION:
        raise ValueError(f"inode record version {version} is not supported")
    offset = _RECORD.size
    digest = None
    if flags & FLAG_DIGEST:
        digest = Digest(bytes(data[offset : offset + 32]).hex())
        offset += 32
    target = bytes(data[offset:]) if flags & FLAG_TARGET else None
    return Record(
        mode,
        uid,
        gid,
        size,
        atime,
        mtime,
        ctime,
        nlink,
        rdev,
        parent,
        digest,
        bool(flags & FLAG_UPPER),
        bool(flags & FLAG_DIRTY),
        target,
    )


_TYPE_BITS = {
    Kind.FILE: stat.S_IFREG,
    Kind.DIRECTORY: stat.S_IFDIR,
    Kind.SYMLINK: stat.S_IFLNK,
}


def record_from_entry(entry: Entry, parent: int, meta: Meta) -> Record:
    """Return the record of a base entry that has not changed yet.

    Its times are the workspace's creation time, so they stay the same
    across remounts without being stored.
    """
    mode = _TYPE_BITS[entry.kind] | (entry.mode & 0o7777)
    if entry.kind is Kind.SYMLINK:
        mode = stat.S_IFLNK | 0o777
    t = meta.created_ns
    # A directory's link count needs its tree, so it is counted on demand.
    nlink = 0 if entry.kind is Kind.DIRECTORY else 1
    return Record(
        mode,
        meta.uid,
        meta.gid,
        entry.size if entry.kind is not Kind.DIRECTORY else 0,
        t,
        t,
        t,
        nlink,
        0,
        parent,
        entry.digest,
    )
