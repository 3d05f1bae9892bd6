"""Outputs to restore: their generation, manifests and verification.

A case is one output shape: a single file of some size, or a folder of
files of one size (4 KiB unless given). Its variant A is the output being measured and variant B a
tiny one of the same kind, so flipping a param from B back to A makes every
tool restore exactly A, having first removed B.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

import blake3

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
FILE_BYTES_IN_FOLDERS = 4 * KiB
FILES_PER_SUBFOLDER = 100
# Every this many files in a folder output one is executable, so a tool
# that drops or invents mode bits fails the mode check.
EXECUTABLE_EVERY = 100
WRITE_CHUNK_BYTES = 16 * MiB
# A sparse file starts with this much random data and is a hole after it.
SPARSE_HEAD_BYTES = 1 * MiB

UNITS = {
    "": 1,
    "B": 1,
    "K": KiB,
    "KIB": KiB,
    "M": MiB,
    "MIB": MiB,
    "G": GiB,
    "GIB": GiB,
}


def parse_size(text: str) -> int:
    """Parse `1K`, `100M`, `10G` or a plain byte count (binary units)."""
    cleaned = text.strip().upper()
    digits = cleaned.rstrip("KMGIB")
    unit = cleaned[len(digits) :]
    if not digits.isdigit() or unit not in UNITS:
        raise ValueError(
            f"invalid size {text!r}: use a number with K, M or G, like 100M"
        )
    return int(digits) * UNITS[unit]


def size_label(size_bytes: int) -> str:
    for unit, factor in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if size_bytes >= factor and size_bytes % factor == 0:
            return f"{size_bytes // factor} {unit}"
    return f"{size_bytes} B"


@dataclass(frozen=True)
class Case:
    """One output shape: a file of `size_bytes`, or a folder of `files` files.

    A folder's files are each `size_bytes // files` bytes.
    """

    kind: str
    size_bytes: int
    files: int
    sparse: bool = False

    @property
    def name(self) -> str:
        if self.kind == "file":
            return f"file-{size_label(self.size_bytes).replace(' ', '')}"
        if self.file_bytes == FILE_BYTES_IN_FOLDERS:
            return f"folder-{self.files}"
        return f"folder-{self.files}x{size_label(self.file_bytes).replace(' ', '')}"

    @property
    def file_bytes(self) -> int:
        """Bytes of each file: the whole output, or one file of a folder."""
        return self.size_bytes if self.kind == "file" else self.size_bytes // self.files

    @property
    def label(self) -> str:
        if self.kind == "file":
            sparse = ", sparse" if self.sparse else ""
            return f"1 file of {size_label(self.size_bytes)}{sparse}"
        return f"{self.files:,} files of {size_label(self.file_bytes)}"

    @property
    def disk_bytes(self) -> int:
        """Bytes one full copy of variant A takes once a tool has written its holes."""
        return self.size_bytes


def file_case(size_bytes: int, sparse_above: int) -> Case:
    return Case("file", size_bytes, 1, sparse=size_bytes > sparse_above)


def folder_case(files: int, file_bytes: int = FILE_BYTES_IN_FOLDERS) -> Case:
    return Case("folder", files * file_bytes, files)


def write_file(path: Path, size_bytes: int, sparse: bool, mode: int) -> None:
    """Write random bytes; a sparse file gets a random head and a hole after it."""
    dense = min(size_bytes, SPARSE_HEAD_BYTES) if sparse else size_bytes
    with open(path, "wb") as f:
        left = dense
        while left > 0:
            chunk = min(left, WRITE_CHUNK_BYTES)
            f.write(os.urandom(chunk))
            left -= chunk
        f.truncate(size_bytes)
    os.chmod(path, mode)


def write_folder(
    path: Path, files: int, file_bytes: int = FILE_BYTES_IN_FOLDERS
) -> None:
    path.mkdir()
    for i in range(files):
        sub = path / f"d{i // FILES_PER_SUBFOLDER:04}"
        if i % FILES_PER_SUBFOLDER == 0:
            sub.mkdir()
        mode = 0o755 if i % EXECUTABLE_EVERY == EXECUTABLE_EVERY - 1 else 0o644
        target = sub / f"f{i:06}.bin"
        target.write_bytes(os.urandom(file_bytes))
        os.chmod(target, mode)


def write_variants(case: Case, root: Path) -> None:
    """Write `root/A/out` (the measured output) and `root/B/out` (a tiny one)."""
    for variant in ("A", "B"):
        (root / variant).mkdir(parents=True)
    if case.kind == "file":
        write_file(root / "A" / "out", case.size_bytes, case.sparse, 0o644)
        write_file(root / "B" / "out", 16, False, 0o644)
    else:
        write_folder(root / "A" / "out", case.files, case.file_bytes)
        write_folder(root / "B" / "out", 1)


# relative path -> (kind, permission bits, BLAKE3 hex digest or "")
Manifest = dict[str, tuple[str, int, str]]


def hash_file(path: Path) -> str:
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    hasher.update_mmap(path)
    return hasher.hexdigest()


def manifest(root: Path) -> Manifest:
    """Describe every file and folder under `root`, following symbolic links.

    Links are followed because DVC's symlink cache type restores files as
    links into its cache: what a user reads through them is what counts.
    """
    entries: Manifest = {}
    top = os.stat(root)
    if not stat.S_ISDIR(top.st_mode):
        entries["."] = ("file", stat.S_IMODE(top.st_mode), hash_file(root))
        return entries
    entries["."] = ("folder", 0, "")
    for folder, dirs, files in os.walk(root, followlinks=True):
        base = Path(folder)
        for name in dirs:
            entries[str((base / name).relative_to(root))] = ("folder", 0, "")
        for name in files:
            path = base / name
            st = os.stat(path)
            entries[str(path.relative_to(root))] = (
                "file",
                stat.S_IMODE(st.st_mode),
                hash_file(path),
            )
    return entries


@dataclass(frozen=True)
class Check:
    content_ok: bool
    modes_ok: bool
    problem: str


def compare(expected: Manifest, restored_root: Path) -> Check:
    """Compare what a tool restored with the original output."""
    if not os.path.exists(restored_root):
        return Check(False, False, f"{restored_root} is missing")
    found = manifest(restored_root)
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    if missing or extra:
        return Check(
            False,
            False,
            f"missing {missing[:3]}, unexpected {extra[:3]} in {restored_root}",
        )
    wrong = [p for p in expected if expected[p][::2] != found[p][::2]]
    if wrong:
        return Check(False, False, f"content differs: {wrong[:3]} in {restored_root}")
    modes = [
        f"{restored_root.name if p == '.' else p} {found[p][1]:o} instead of {expected[p][1]:o}"
        for p in expected
        if expected[p][0] == "file" and expected[p][1] != found[p][1]
    ]
    if modes:
        return Check(True, False, f"{len(modes)} modes differ, e.g. {modes[0]}")
    return Check(True, True, "")
