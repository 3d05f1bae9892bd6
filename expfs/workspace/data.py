"""Upper files: the private copies of files changed in a workspace.

`upper/<ino>` contains the bytes of a file once it has been written to. It is
created empty (a new file, or an open with O_TRUNC) or as a copy of the
file's blob, written under `upper/<ino>.tmp` and renamed into place, so a
crash never leaves a partial copy under the final name. Blobs are only ever
opened read-only here.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

log = logging.getLogger(__name__)

COPY_CHUNK_BYTES = 8 << 20
_TEMP_SUFFIX = ".tmp"


@dataclass(frozen=True, slots=True)
class CopyUp:
    """A pending copy of blob `source` into the upper file of `ino`."""

    ino: int
    source: str
    temp: str


class UpperFiles:
    """The `upper/` folder of one workspace."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        os.makedirs(folder, mode=0o700, exist_ok=True)

    def path(self, ino: int) -> str:
        return os.path.join(self.folder, str(ino))

    def temp_path(self, ino: int) -> str:
        return self.path(ino) + _TEMP_SUFFIX

    def create_empty(self, ino: int) -> None:
        fd = os.open(self.path(ino), os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        os.close(fd)

    def open(self, ino: int) -> int:
        # Never O_APPEND: the kernel sends writes with their offsets.
        return os.open(self.path(ino), os.O_RDWR)

    def size(self, ino: int) -> int:
        return os.stat(self.path(ino)).st_size

    def install(self, job: CopyUp) -> None:
        os.rename(job.temp, self.path(job.ino))

    def remove(self, ino: int) -> None:
        for path in (self.path(ino), self.temp_path(ino)):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def remove_strays(self, keep: set[int]) -> int:
        """Delete temporary files and files of inodes not in `keep`."""
        removed = 0
        for name in os.listdir(self.folder):
            stem = name.removesuffix(_TEMP_SUFFIX)
            if name == stem and stem.isdigit() and int(stem) in keep:
                continue
            os.unlink(os.path.join(self.folder, name))
            removed += 1
        return removed


def copy_file(source: str, dest: str) -> None:
    """Copy `source` into the new file `dest` (mode 0600) in the kernel.

    Runs in a worker thread for large files; it touches no workspace state.
    """
    with open(source, "rb") as src:
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            remaining = os.fstat(src.fileno()).st_size
            while remaining > 0:
                count = min(remaining, COPY_CHUNK_BYTES)
                copied = os.copy_file_range(src.fileno(), fd, count)
                if copied == 0:
                    break
                remaining -= copied
        except BaseException:
            os.close(fd)
            os.unlink(dest)
            raise
        os.close(fd)
