"""The canonical tree encoding: stable bytes, stable digests, strict parsing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import blake3
import pytest

from expfs.store.trees import (
    EMPTY_TREE,
    EMPTY_TREE_DIGEST,
    Digest,
    Entry,
    Kind,
    TreeFormatError,
    decode_tree,
    encode_tree,
    find_entry,
    tree_digest,
)


def content_digest(data: bytes) -> Digest:
    return Digest(blake3.blake3(data).hexdigest())


SAMPLE = [
    Entry(b"b.txt", Kind.FILE, 0o644, content_digest(b"hello\n"), 6),
    Entry(b"a", Kind.DIRECTORY, 0o755, EMPTY_TREE_DIGEST, 0),
    Entry(b"run.sh", Kind.FILE, 0o755, content_digest(b"#!/bin/sh\n"), 10),
    Entry(b"link", Kind.SYMLINK, 0o777, content_digest(b"b.txt"), 5),
]

# Computed once from SAMPLE with encoding version 1. A change here means
# every stored snapshot changes its name: bump TREE_ENCODING_VERSION instead.
GOLDEN_SAMPLE_DIGEST = (
    "5c67256214b1463f049d300e63f6515102e3c4a4866d6146d1515610a8e0c3ae"
)
GOLDEN_EMPTY_DIGEST = "21c3f7cf6efe8783ddd257b775b6e7145de9ef9575c1f57b7dcee18ad908e66a"


def test_sample_digest_is_golden() -> None:
    assert tree_digest(encode_tree(SAMPLE)) == GOLDEN_SAMPLE_DIGEST


def test_empty_tree_digest_is_golden() -> None:
    assert EMPTY_TREE == bytes.fromhex("4558540100000000")
    assert EMPTY_TREE_DIGEST == GOLDEN_EMPTY_DIGEST


def test_digest_stable_across_processes() -> None:
    code = (
        "import tests.test_tree_encoding as t\n"
        "from expfs.store.trees import encode_tree, tree_digest\n"
        "print(tree_digest(encode_tree(reversed(t.SAMPLE))))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).parent.parent,
        capture_output=True,
        text=True,
        check=True,
    )
    assert proc.stdout.strip() == GOLDEN_SAMPLE_DIGEST


def test_input_order_does_not_matter() -> None:
    assert encode_tree(SAMPLE) == encode_tree(list(reversed(SAMPLE)))


def test_encoding_layout() -> None:
    encoded = encode_tree([SAMPLE[0]])
    assert encoded[:4] == b"EXT\x01"
    assert encoded[4:8] == (1).to_bytes(4, "big")
    assert encoded[8:10] == (5).to_bytes(2, "big")
    assert encoded[10:15] == b"b.txt"
    assert encoded[15] == Kind.FILE
    assert encoded[16:20] == (0o644).to_bytes(4, "big")
    assert encoded[20:52] == bytes.fromhex(SAMPLE[0].digest)
    assert encoded[52:60] == (6).to_bytes(8, "big")
    assert len(encoded) == 60


def test_round_trip_sorts_by_name_bytes() -> None:
    decoded = decode_tree(encode_tree(SAMPLE))
    assert [e.name for e in decoded] == [b"a", b"b.txt", b"link", b"run.sh"]
    assert sorted(decoded, key=lambda e: e.name) == sorted(SAMPLE, key=lambda e: e.name)


@pytest.mark.parametrize("field", ["name", "kind", "mode", "digest", "size"])
def test_every_field_changes_digest(field: str) -> None:
    entry = SAMPLE[0]
    changed = {
        "name": Entry(b"c.txt", entry.kind, entry.mode, entry.digest, entry.size),
        "kind": Entry(entry.name, Kind.SYMLINK, entry.mode, entry.digest, entry.size),
        "mode": Entry(entry.name, entry.kind, 0o755, entry.digest, entry.size),
        "digest": Entry(
            entry.name, entry.kind, entry.mode, content_digest(b"x"), entry.size
        ),
        "size": Entry(entry.name, entry.kind, entry.mode, entry.digest, 7),
    }[field]
    assert tree_digest(encode_tree([changed])) != tree_digest(encode_tree([entry]))


def test_non_utf8_name_round_trips() -> None:
    name = b"caf\xe9-\xff.bin"
    entry = Entry(name, Kind.FILE, 0o644, content_digest(b""), 0)
    assert decode_tree(encode_tree([entry])) == [entry]


@pytest.mark.parametrize(
    "name", [b"", b".", b"..", b"a/b", b"nul\0", b"x" * 256], ids=repr
)
def test_invalid_names_rejected(name: bytes) -> None:
    entry = Entry(name, Kind.FILE, 0o644, content_digest(b""), 0)
    with pytest.raises(TreeFormatError):
        encode_tree([entry])


def test_duplicate_names_rejected() -> None:
    with pytest.raises(TreeFormatError, match="duplicate"):
        encode_tree([SAMPLE[0], SAMPLE[0]])


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b[:-1],
        lambda b: b + b"\0",
        lambda b: b"XYZ" + b[3:],
        lambda b: b[:3] + b"\x02" + b[4:],
        lambda b: b[:2],
    ],
    ids=["truncated", "trailing", "magic", "version", "short-header"],
)
def test_damaged_encoding_rejected(damage: object) -> None:
    encoded = encode_tree(SAMPLE)
    with pytest.raises(TreeFormatError):
        decode_tree(damage(encoded))  # type: ignore[operator]


def test_find_entry_binary_search() -> None:
    decoded = decode_tree(encode_tree(SAMPLE))
    for entry in SAMPLE:
        assert find_entry(decoded, entry.name) == entry
    assert find_entry(decoded, b"missing") is None
