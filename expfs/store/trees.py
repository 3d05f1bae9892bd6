"""Trees: the canonical, versioned encoding of a directory listing.

A tree lists entries sorted by name bytes. Each entry has a name (any bytes
but `/` and NUL), a kind (file, directory or symlink), a mode (permission
bits, including the exec bit), a digest and a size. There are no times and
no owners, so a tree's digest depends only on names, kinds, modes and
content. A symlink's digest is the digest of its target bytes, stored as a
blob; a directory's digest is the digest of its own tree and its size is
the sum of the sizes of the files below it.

Encoding, version 1 (all integers big-endian):

    b"EXT" version:u8 count:u32
    per entry, sorted by name:
        name_len:u16 name kind:u8 mode:u32 digest:32 bytes size:u64
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NewType

import blake3

Digest = NewType("Digest", str)
"""A BLAKE3 digest as 64 lower-case hex digits."""

DIGEST_SIZE = 32
TREE_ENCODING_VERSION = 1
MAX_NAME_BYTES = 255

_MAGIC = b"EXT"
_HEADER = struct.Struct(">3sBI")
_ENTRY_TAIL = struct.Struct(">BI32sQ")
_NAME_LEN = struct.Struct(">H")


class Kind(enum.IntEnum):
    FILE = 1
    DIRECTORY = 2
    SYMLINK = 3


@dataclass(frozen=True, slots=True)
class Entry:
    """One name in a tree."""

    name: bytes
    kind: Kind
    mode: int
    digest: Digest
    size: int

    @property
    def is_dir(self) -> bool:
        return self.kind is Kind.DIRECTORY


class TreeFormatError(ValueError):
    """Bytes that are not a valid tree encoding."""


def digest_bytes(data: bytes) -> Digest:
    return Digest(blake3.blake3(data).hexdigest())


def raw(digest: str) -> bytes:
    """Return the 32 raw bytes of a hex digest (the form used as LMDB keys)."""
    return bytes.fromhex(digest)


def check_name(name: bytes) -> None:
    if not name or name in (b".", b".."):
        raise TreeFormatError(f"invalid entry name {name!r}")
    if b"/" in name or b"\0" in name:
        raise TreeFormatError(f"entry name {name!r} contains '/' or NUL")
    if len(name) > MAX_NAME_BYTES:
        raise TreeFormatError(f"entry name of {len(name)} bytes exceeds 255")


def encode_tree(entries: Iterable[Entry]) -> bytes:
    """Return the canonical encoding of `entries` (sorted here, names unique)."""
    ordered = sorted(entries, key=lambda e: e.name)
    parts = [_HEADER.pack(_MAGIC, TREE_ENCODING_VERSION, len(ordered))]
    previous: bytes | None = None
    for entry in ordered:
        check_name(entry.name)
        if entry.name == previous:
            raise TreeFormatError(f"duplicate entry name {entry.name!r}")
        previous = entry.name
        parts.append(_NAME_LEN.pack(len(entry.name)))
        parts.append(entry.name)
        parts.append(
            _ENTRY_TAIL.pack(
                int(entry.kind), entry.mode & 0o7777, raw(entry.digest), entry.size
            )
        )
    return b"".join(parts)


def decode_tree(data: bytes) -> list[Entry]:
    """Parse a tree encoding into its entries, in name order."""
    if len(data) < _HEADER.size:
        raise TreeFormatError("tree encoding is shorter than its header")
    magic, version, count = _HEADER.unpack_from(data, 0)
    if magic != _MAGIC:
        raise TreeFormatError("tree encoding does not start with b'EXT'")
    if version != TREE_ENCODING_VERSION:
        raise TreeFormatError(f"tree encoding version {version} is not supported")
    offset = _HEADER.size
    entries: list[Entry] = []
    try:
        for _ in range(count):
            (name_len,) = _NAME_LEN.unpack_from(data, offset)
            offset += _NAME_LEN.size
            name = bytes(data[offset : offset + name_len])
            offset += name_len
            kind, mode, digest, size = _ENTRY_TAIL.unpack_from(data, offset)
            offset += _ENTRY_TAIL.size
            entries.append(Entry(name, Kind(kind), mode, Digest(digest.hex()), size))
    except (struct.error, ValueError) as exc:
        raise TreeFormatError(f"truncated or invalid tree encoding: {exc}") from exc
    if offset != len(data):
        raise TreeFormatError("tree encoding has trailing bytes")
    return entries


def tree_digest(encoded: bytes) -> Digest:
    return digest_bytes(encoded)


EMPTY_TREE = encode_tree([])
EMPTY_TREE_DIGEST = tree_digest(EMPTY_TREE)


def find_entry(entries: Sequence[Entry], name: bytes) -> Entry | None:
    """Binary-search a name in a decoded (sorted) tree."""
    lo, hi = 0, len(entries)
    while lo < hi:
        mid = (lo + hi) // 2
        mid_name = entries[mid].name
        if mid_name < name:
            lo = mid + 1
        elif mid_name > name:
            hi = mid
        else:
            return entries[mid]
    return None
