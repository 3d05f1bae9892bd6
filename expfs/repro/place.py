"""Where a pipeline runs: the small interface repro needs, and a plain checkout.

Repro asks a place for four things: the digest of a path, a snapshot of an
output (storing it), putting stored content at a path, and removing a path.
A plain checkout answers from the disk and the store's stat cache and puts
content in place by its link types (see `expfs.repro.checkout`); a mounted
workspace answers
from its daemon and grafts, which costs no bytes. Repro never asks which
kind it has.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from typing import Protocol

from expfs.runcache import OutputRecord
from expfs.store.objects import Store
from expfs.store.trees import Digest, Entry, Kind, find_entry


class Place(Protocol):
    """A folder that a pipeline runs in, addressed by paths relative to `root`."""

    root: str
    # True when blobs may stay on the remote until a file is opened (a
    # mount); False when `put` needs them in the store (a checkout).
    lazy_restore: bool
    # The folder of the workspace's private state, which Git does not track
    # and a mount's snapshot does not see. The workspace's lock file is there.
    state_dir: str

    def digest_of(self, path: str) -> tuple[Kind, Digest] | None:
        """Return the kind and digest of `path`, or None when it is absent."""
        ...

    def snapshot(self, paths: list[str]) -> dict[str, OutputRecord]:
        """Store the content at each of `paths` and describe it; absent paths are left out."""
        ...

    def put(self, out: OutputRecord) -> None:
        """Replace whatever is at `out.path` with the stored content."""
        ...

    def remove(self, path: str) -> None:
        """Remove `path` (file or folder) if present."""
        ...

    def adopt(self, outputs: list[OutputRecord]) -> None:
        """Make outputs a run just stored look as a restore would write them."""
        ...


def _record(
    path: str, kind: Kind, digest: Digest, mode: int, size: int
) -> OutputRecord:
    return OutputRecord(path=path, kind=int(kind), digest=digest, mode=mode, size=size)


def links_first(link_types: Sequence[str]) -> bool:
    """Return True when a hard link or a symlink comes before any copy."""
    for link_type in link_types:
        if link_type in ("hardlink", "symlink"):
            return True
        if link_type == "copy":
            return False
    return False


class CheckoutPlace:
    """A plain folder: a Git checkout outside any mount.

    Outputs are restored with `link_types` (a list tried in order per file),
    by default those configured for the store.
    """

    lazy_restore = False

    def __init__(
        self, store: Store, root: str, link_types: Sequence[str] | None = None
    ) -> None:
        from expfs.repro.checkout import configured_link_types

        self.store = store
        self.root = os.path.abspath(root)
        self.state_dir = store.root
        self.link_types = tuple(link_types or configured_link_types(store))

    def _abs(self, path: str) -> str:
        return os.path.join(self.root, path)

    def digest_of(self, path: str) -> tuple[Kind, Digest] | None:
        from expfs.tree.fingerprint import fingerprint_path

        found = fingerprint_path(self.store, self._abs(path))
        return None if found is None else (found.kind, found.digest)

    def snapshot(self, paths: list[str]) -> dict[str, OutputRecord]:
        found = {path: self._snapshot_one(path) for path in paths}
        return {path: record for path, record in found.items() if record is not None}

    def _snapshot_one(self, path: str) -> OutputRecord | None:
        target = self._abs(path)
        try:
            st = os.lstat(target)
        except FileNotFoundError:
            return None
        if stat.S_ISLNK(st.st_mode):
            link = os.readlink(target)
            digest = self.store.put_bytes(os.fsencode(link))
            return _record(path, Kind.SYMLINK, digest, 0o777, len(os.fsencode(link)))
        from expfs.tree.snapshot import snapshot_path

        digest = snapshot_path(self.store, target)
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISDIR(st.st_mode):
            size = sum(e.size for e in self.store.get_tree(digest))
            return _record(path, Kind.DIRECTORY, digest, mode, size)
        return _record(path, Kind.FILE, digest, mode, st.st_size)

    def put(self, out: OutputRecord) -> None:
        from expfs.remote.lazy import ensure_local
        from expfs.repro.checkout import CheckoutWriter

        target = self._abs(out.path)
        # Blobs that a lazy restore left on a remote are fetched first.
        ensure_local(self.store, Kind(out.kind), out.digest)
        self.remove(out.path)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        CheckoutWriter(self.store, self.link_types).write(out, target)

    def adopt(self, outputs: list[OutputRecord]) -> None:
        """Replace a run's outputs by links to the store, as DVC does.

        Only when the link types put a hard link or a symlink before any
        copy: a fresh file already is what a copy or a reflink would give.
        The output is then kept once, in the store, and read-only until
        `expfs unprotect`, as a restored one is.
        """
        if not links_first(self.link_types):
            return
        for out in outputs:
            self.put(out)

    def remove(self, path: str) -> None:
        from expfs.repro.checkout import remove_path

        remove_path(self._abs(path))


class DaemonPlace:
    """A mounted workspace, reached through its daemon's control socket.

    Digests of clean files come from the base tree without reading them,
    outputs are snapshotted by the daemon (which flushes the kernel's caches
    first), and a restore is a graft: no bytes are copied, whatever the size.
    Blobs restored from a remote are fetched by the daemon when a file is
    first opened.
    """

    lazy_restore = True

    def __init__(self, store: Store, root: str, client: ControlClientLike) -> None:
        from expfs.store import layout

        self.store = store
        self.root = os.path.abspath(root)
        self.client = client
        self.state_dir = os.path.join(store.root, layout.WORKSPACES_DIR, client.name)

    def digest_of(self, path: str) -> tuple[Kind, Digest] | None:
        target = os.path.join(self.root, path)
        try:
            st = os.lstat(target)
        except FileNotFoundError:
            return None
        digest = self.client.digest_of(os.fsencode(path))
        if stat.S_ISDIR(st.st_mode):
            return Kind.DIRECTORY, digest
        if stat.S_ISLNK(st.st_mode):
            return Kind.SYMLINK, digest
        return Kind.FILE, digest

    def snapshot(self, paths: list[str]) -> dict[str, OutputRecord]:
        root = self.client.snapshot()
        found: dict[str, OutputRecord] = {}
        for path in paths:
            entry = entry_at(self.store, root, path)
            if entry is not None:
                found[path] = _record(
                    path, entry.kind, entry.digest, entry.mode, entry.size
                )
        return found

    def put(self, out: OutputRecord) -> None:
        self.client.graft(os.fsencode(out.path), out.digest, out.mode)

    def remove(self, path: str) -> None:
        if os.path.lexists(os.path.join(self.root, path)):
            self.client.remove_path(os.fsencode(path))

    def adopt(self, outputs: list[OutputRecord]) -> None:
        """Nothing to do: a mount's outputs already share the store's blobs."""


class ControlClientLike(Protocol):
    """The requests `DaemonPlace` sends to a mount daemon."""

    # The name of the experiment whose workspace the daemon serves.
    name: str

    def digest_of(self, path: bytes) -> Digest: ...

    def snapshot(self) -> Digest: ...

    def graft(self, path: bytes, digest: str, mode: int | None = None) -> None: ...

    def remove_path(self, path: bytes) -> None: ...


def entry_at(store: Store, root: Digest, path: str) -> Entry | None:
    """Return the entry at `path` inside snapshot `root`, or None."""
    entry: Entry | None = None
    current = root
    for part in os.fsencode(path).split(b"/"):
        if not part or part == b".":
            continue
        if entry is not None and entry.kind is not Kind.DIRECTORY:
            return None
        entry = find_entry(store.get_tree(current), part)
        if entry is None:
            return None
        current = entry.digest
    return entry


def mount_containing(store: Store, path: str) -> tuple[str, str] | None:
    """Return (experiment name, mount point) of the live mount holding `path`."""
    from expfs.fuse.control import read_record

    run_dir = os.path.join(store.root, "run")
    target = os.path.realpath(path)
    try:
        names = [n[: -len(".json")] for n in os.listdir(run_dir) if n.endswith(".json")]
    except FileNotFoundError:
        return None
    for name in names:
        record = read_record(store.root, name)
        if record is None:
            continue
        mountpoint = os.path.realpath(str(record["mountpoint"]))
        if target == mountpoint or target.startswith(mountpoint + os.sep):
            return name, mountpoint
    return None


def place_for(store: Store, cwd: str, link_types: Sequence[str] | None = None) -> Place:
    """Return the place that `cwd` lies in: a mounted workspace or the checkout.

    `link_types` applies to a checkout; a mount grafts outputs instead.
    """
    found = mount_containing(store, cwd)
    if found is None:
        return CheckoutPlace(store, os.path.dirname(store.root), link_types)
    from expfs.fuse.control import ControlClient

    name, mountpoint = found
    client = ControlClient(store.root, name, timeout_s=None)
    return DaemonPlace(store, mountpoint, client)
