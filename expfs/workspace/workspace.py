"""A mutable inode table over a base snapshot, copy-on-write.

A directory's entries are its base tree overlaid by the `dirents` database:
a dirent adds or replaces a name, a whiteout hides a base name. An inode
gets a record only when something about it changes; until then its
attributes come from its base tree entry. A directory whose listing or
anything below it changed is marked dirty, up to the root, so a snapshot
re-encodes only dirty directories and reuses every other tree digest.

Concurrency: a workspace belongs to one thread (the FUSE daemon's event
loop). Methods that may take long (`copy_file` between `begin_copy_up` and
`finish_copy_up`, `flush_to_disk`) are split so the slow part touches no
workspace state and can run in a worker thread.
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import logging
import os
import shutil
import stat
import time
from dataclasses import dataclass, field

import lmdb

from expfs.errors import MissingObject
from expfs.store import layout
from expfs.store.lazy import is_available, lazy_mark, put_marked_trees
from expfs.store.lmdbenv import close_environment, open_environment
from expfs.store.objects import Store, hash_file
from expfs.store.statcache import RACY_WINDOW_NS, StatCache, stat_fields
from expfs.store.trees import (
    MAX_NAME_BYTES,
    Digest,
    Entry,
    Kind,
    digest_bytes,
    encode_tree,
    tree_digest,
)
from expfs.text import plural
from expfs.workspace.data import CopyUp, UpperFiles, copy_file
from expfs.workspace.errors import (
    AlreadyExists,
    DirectoryNotEmpty,
    InvalidArgument,
    IsADirectory,
    NameTooLong,
    NoAttribute,
    NotADirectory,
    NotFound,
    NotPermitted,
    NotSupported,
    WorkspaceBusy,
    WorkspaceExists,
    WorkspaceNotFound,
)
from expfs.workspace.inodes import (
    DB_DIRENTS,
    DB_INODES,
    DB_META,
    DB_ORPHANS,
    DB_XATTRS,
    FIRST_COUNTED_INO,
    META_KEY,
    ROOT_INO,
    WHITEOUT,
    WORKSPACE_DATABASES,
    Ino,
    Meta,
    Record,
    decode_record,
    derived_ino,
    dirent_key,
    encode_record,
    ino_key,
    key_ino,
    name_cookie,
    record_from_entry,
)
from expfs.workspace.listing import TreeCache

log = logging.getLogger(__name__)

LMDB_DIR = "lmdb"
UPPER_DIR = "upper"
LOCK_FILE = "lock"
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
# Files at least this large are copied up in a worker thread by the FUSE
# layer; smaller ones are copied inline.
THREADED_COPY_MIN_BYTES = 1 << 20
# Backing files at least this large get POSIX_FADV_SEQUENTIAL, which doubles
# the kernel's read-ahead on them. The kernel reads through the daemon in
# 1 MiB requests, more than the default read-ahead, so without the hint
# each request waits for the disk (bench/bench_fs.py: cold reads went from
# 0.55 to 0.60 of native on 2 cores, ext4 on a virtio disk).
SEQUENTIAL_HINT_MIN_BYTES = 1 << 20
# Inodes kept in memory without a kernel reference, before `forget` trims.
MAX_IDLE_NODES = 100_000
_ACL_XATTRS = (b"system.posix_acl_access", b"system.posix_acl_default")


@dataclass(eq=False)
class Node:
    """An inode in memory: its record, kernel references and open handles."""

    ino: Ino
    record: Record
    stored: bool = False
    lookups: int = 0
    opens: int = 0
    fd: int | None = None
    unsaved: bool = False
    orphan: bool = False


@dataclass
class Batch:
    """LMDB changes of one operation, committed in one transaction."""

    ops: list[tuple[str, bytes, bytes, bytes | Node | None]] = field(
        default_factory=list
    )
    uppers_to_remove: list[int] = field(default_factory=list)

    def put(self, db: bytes, key: bytes, value: bytes) -> None:
        self.ops.append(("put", db, key, value))

    def delete(self, db: bytes, key: bytes) -> None:
        self.ops.append(("delete", db, key, None))

    def stage(self, node: Node) -> None:
        """Write the node's record as it is at commit time."""
        self.ops.append(("record", DB_INODES, ino_key(node.ino), node))


def _now_ns() -> int:
    return time.time_ns()


def check_name(name: bytes) -> None:
    if len(name) > MAX_NAME_BYTES:
        raise NameTooLong(f"name of {len(name)} bytes exceeds {MAX_NAME_BYTES}")
    if not name or name in (b".", b"..") or b"/" in name or b"\0" in name:
        raise InvalidArgument(f"invalid name {name!r}")


def split_path(path: bytes) -> list[bytes]:
    parts = [p for p in path.split(b"/") if p]
    for part in parts:
        check_name(part)
    return parts


class Workspace:
    """One experiment's files: a base snapshot plus copy-on-write changes.

    `hidden_root_names` are names at the root that listings and snapshots
    leave out (the mount's link to Git, added by the daemon).
    """

    def __init__(self, store: Store, name: str, folder: str, lock_fd: int) -> None:
        self.store = store
        self.name = name
        self.path = folder
        self._lock_fd: int | None = lock_fd
        self.env = open_environment(
            os.path.join(folder, LMDB_DIR), WORKSPACE_DATABASES, sync=False
        )
        data = self.env.get(DB_META, META_KEY)
        if data is None:
            raise WorkspaceNotFound(
                f"workspace {name!r} at {folder} has no record: remove the "
                "folder and create the experiment again"
            )
        self.meta = Meta.decode(data)
        self.base: Digest = self.meta.base
        self.upper = UpperFiles(os.path.join(folder, UPPER_DIR))
        self.trees = TreeCache(store)
        self.nodes: dict[int, Node] = {}
        # `_trim` scans every node in memory, so it runs again only once the
        # table has grown past this size (see there).
        self._trim_at = MAX_IDLE_NODES
        self.handles: dict[int, Node] = {}
        self._next_fh = itertools.count(1)
        self._clean_dirs: dict[int, tuple[int, bytes]] = {}
        # Digests of upper files not written since they were hashed; every
        # write path drops the entry (see `_upper_digest`).
        self._upper_digests: dict[int, Digest] = {}
        self.hidden_root_names: set[bytes] = set()
        self.writeback_cache = False
        self._recover()

    # -- lifecycle -----------------------------------------------------------

    @staticmethod
    def folder_of(store: Store, name: str) -> str:
        if not name or "/" in name or "\0" in name or name in (".", ".."):
            raise InvalidArgument(f"invalid workspace name {name!r}")
        return os.path.join(store.root, layout.WORKSPACES_DIR, name)

    @staticmethod
    def exists(store: Store, name: str) -> bool:
        folder = Workspace.folder_of(store, name)
        return os.path.isdir(os.path.join(folder, LMDB_DIR))

    @classmethod
    def create(cls, store: Store, name: str, base: Digest) -> Workspace:
        """Create a workspace over tree `base`: one folder and one record."""
        folder = cls.folder_of(store, name)
        if not store.has_tree(base):
            raise MissingObject(base, f"the base of workspace {name!r}")
        try:
            os.makedirs(folder, mode=0o700)
        except FileExistsError:
            raise WorkspaceExists(
                f"workspace {name!r} exists already: choose another name or "
                "remove it first"
            ) from None
        meta = Meta(base, _now_ns(), FIRST_COUNTED_INO, os.getuid(), os.getgid())
        env = open_environment(
            os.path.join(folder, LMDB_DIR), WORKSPACE_DATABASES, sync=False
        )
        env.put(DB_META, META_KEY, meta.encode())
        env.sync()
        return cls(store, name, folder, _lock(folder, name))

    @classmethod
    def open(cls, store: Store, name: str) -> Workspace:
        """Open a workspace for this process alone (it serves or edits it)."""
        folder = cls.folder_of(store, name)
        if not cls.exists(store, name):
            raise WorkspaceNotFound(
                f"no workspace {name!r} in {store.root}: create it first"
            )
        return cls(store, name, folder, _lock(folder, name))

    @staticmethod
    def remove(store: Store, name: str) -> None:
        """Delete a workspace's folder; fails while a process serves it."""
        folder = Workspace.folder_of(store, name)
        if not os.path.isdir(folder):
            raise WorkspaceNotFound(f"no workspace {name!r} in {store.root}")
        os.close(_lock(folder, name))
        close_environment(os.path.join(folder, LMDB_DIR))
        shutil.rmtree(folder)

    def close(self) -> None:
        """Save what is only in memory, close files and release the lock."""
        for node in list(self.nodes.values()):
            self._save_if_unsaved(node)
            self._close_fd(node)
        self.env.sync()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        close_environment(os.path.join(self.path, LMDB_DIR))

    def _recover(self) -> None:
        """Drop inodes orphaned by a daemon that died and stray upper files."""
        handle = self.env.db(DB_ORPHANS)
        orphans = self.env.read(
            lambda txn: [
                key_ino(bytes(k)) for k in txn.cursor(db=handle).iternext(values=False)
            ]
        )
        if orphans:
            batch = Batch()
            for ino in orphans:
                self._drop_record(batch, ino)
            self._commit(batch)
            log.warning(
                "workspace %s: removed %s unlinked while open",
                self.name,
                plural(len(orphans), "inode"),
            )
        keep = set(self._upper_inos())
        removed = self.upper.remove_strays(keep)
        if removed:
            log.warning(
                "workspace %s: removed %d stray upper files", self.name, removed
            )

    def _upper_inos(self) -> list[int]:
        handle = self.env.db(DB_INODES)

        def collect(txn: lmdb.Transaction) -> list[int]:
            found: list[int] = []
            for key, value in txn.cursor(db=handle):
                if decode_record(bytes(value)).upper:
                    found.append(key_ino(bytes(key)))
            return found

        return self.env.read(collect)

    # -- LMDB ----------------------------------------------------------------

    def _get(self, db: bytes, key: bytes) -> bytes | None:
        return self.env.get(db, key)

    def _prefix_items(self, db: bytes, prefix: bytes) -> list[tuple[bytes, bytes]]:
        handle = self.env.db(db)

        def scan(txn: lmdb.Transaction) -> list[tuple[bytes, bytes]]:
            cursor = txn.cursor(db=handle)
            items: list[tuple[bytes, bytes]] = []
            if cursor.set_range(prefix):
                for key, value in cursor:
                    key = bytes(key)
                    if not key.startswith(prefix):
                        break
                    items.append((key[len(prefix) :], bytes(value)))
            return items

        return self.env.read(scan)

    def _commit(self, batch: Batch) -> None:
        ops: list[tuple[str, bytes, bytes, bytes | None]] = []
        staged: list[Node] = []
        for kind, db, key, value in batch.ops:
            if kind == "record":
                assert isinstance(value, Node)
                ops.append(("put", db, key, encode_record(value.record)))
                staged.append(value)
            else:
                assert not isinstance(value, Node)
                ops.append((kind, db, key, value))
        handles = {db: self.env.db(db) for db in WORKSPACE_DATABASES}

        def apply(txn: lmdb.Transaction) -> None:
            for kind, db, key, value in ops:
                if kind == "put":
                    assert value is not None
                    txn.put(key, value, db=handles[db])
                else:
                    txn.delete(key, db=handles[db])

        self.env.write(apply)
        for node in staged:
            node.stored = True
            node.unsaved = False
        for ino in batch.uppers_to_remove:
            self.upper.remove(ino)

    def _allocate(self, batch: Batch) -> Ino:
        ino = Ino(self.meta.next_ino)
        self.meta = Meta(
            self.meta.base, self.meta.created_ns, ino + 1, self.meta.uid, self.meta.gid
        )
        batch.put(DB_META, META_KEY, self.meta.encode())
        return ino

    # -- finding inodes ------------------------------------------------------

    def _root(self) -> Node:
        t = self.meta.created_ns
        record = Record(
            stat.S_IFDIR | 0o755,
            self.meta.uid,
            self.meta.gid,
            0,
            t,
            t,
            t,
            0,
            0,
            ROOT_INO,
            self.base,
        )
        return Node(ROOT_INO, record)

    def _keep(self, node: Node) -> Node:
        # Every inode loaded stays in memory until `_trim` drops it, so all
        # steps of all operations change the same object.
        self.nodes[node.ino] = node
        return node

    def _trim(self) -> None:
        """Drop unreferenced, saved inodes once too many are in memory.

        A scan that leaves many inodes (the kernel still references them)
        sets the next one at twice the size left, so a kernel forgetting a
        large tree inode by inode pays for one scan, not one per inode.
        """
        if len(self.nodes) <= MAX_IDLE_NODES:
            self._trim_at = MAX_IDLE_NODES
            return
        if len(self.nodes) <= self._trim_at:
            return
        for node in list(self.nodes.values()):
            if not (node.lookups or node.opens or node.unsaved or node.orphan):
                if node.ino != ROOT_INO:
                    del self.nodes[node.ino]
        self._trim_at = max(MAX_IDLE_NODES, 2 * len(self.nodes))

    def _loaded(self, ino: int, data: bytes) -> Node:
        record = decode_record(data)
        if record.upper:
            try:
                record.size = self.upper.size(ino)
            except FileNotFoundError:
                log.warning(
                    "workspace %s: upper file of inode %d is missing; it reads "
                    "as empty",
                    self.name,
                    ino,
                )
                self.upper.create_empty(ino)
                record.size = 0
        return self._keep(Node(Ino(ino), record, stored=True))

    def node(self, ino: int) -> Node:
        """Return inode `ino`, from memory, its record or its base entry."""
        node = self.nodes.get(ino)
        if node is not None:
            return node
        data = self._get(DB_INODES, ino_key(ino))
        if data is not None:
            return self._loaded(ino, data)
        if ino == ROOT_INO:
            return self._keep(self._root())
        place = self._clean_dirs.get(ino)
        if place is not None:
            found = self.child(self.node(place[0]), place[1])
            if found is not None and found.ino == ino:
                return found
        raise NotFound(f"inode {ino} is not known in workspace {self.name}")

    def child(self, parent: Node, name: bytes) -> Node | None:
        """Return the entry `name` of directory `parent`, or None."""
        if not parent.record.is_dir:
            raise NotADirectory(f"inode {parent.ino} is not a directory")
        value = self._get(DB_DIRENTS, dirent_key(parent.ino, name))
        if value is not None:
            ino = key_ino(value)
            return None if ino == WHITEOUT else self.node(ino)
        entry = self._base_entry(parent, name)
        if entry is None:
            return None
        return self._base_node(parent.ino, entry)

    def _base_entry(self, parent: Node, name: bytes) -> Entry | None:
        digest = parent.record.digest
        if digest is None:
            return None
        return self.trees.get(digest).entries.get(name)

    def _base_node(self, parent_ino: int, entry: Entry) -> Node:
        ino = derived_ino(parent_ino, entry.name)
        node = self.nodes.get(ino)
        if node is not None:
            return node
        data = self._get(DB_INODES, ino_key(ino))
        if data is not None:
            return self._loaded(ino, data)
        if entry.kind is Kind.DIRECTORY:
            self._clean_dirs[ino] = (parent_ino, entry.name)
        return self._keep(Node(ino, record_from_entry(entry, parent_ino, self.meta)))

    def _directory(self, ino: int) -> Node:
        node = self.node(ino)
        if not node.record.is_dir:
            raise NotADirectory(f"inode {ino} is not a directory")
        return node

    def resolve(self, path: bytes) -> Node:
        """Return the inode at a relative path (b"" is the root)."""
        node = self.node(ROOT_INO)
        for part in split_path(path):
            found = self.child(node, part)
            if found is None:
                raise NotFound(
                    f"{os.fsdecode(path)} not found in workspace {self.name}"
                )
            node = found
        return node

    def overlay(self, directory: Node) -> dict[bytes, int]:
        """Return the directory's dirents: name -> inode, 0 for a whiteout."""
        items = self._prefix_items(DB_DIRENTS, ino_key(directory.ino))
        return {name: key_ino(value) for name, value in items}

    def entries(self, directory: Node) -> dict[bytes, Entry | int]:
        """Return every name of a directory: base entries or inode numbers."""
        merged: dict[bytes, Entry | int] = {}
        if directory.record.digest is not None:
            merged.update(self.trees.get(directory.record.digest).entries)
        for name, ino in self.overlay(directory).items():
            if ino == WHITEOUT:
                merged.pop(name, None)
            else:
                merged[name] = ino
        return merged

    def _entry_node(self, directory: Node, item: Entry | int) -> Node:
        if isinstance(item, Entry):
            return self._base_node(directory.ino, item)
        return self.node(item)

    def listdir(self, ino: int) -> list[tuple[int, bytes]]:
        """Return (cookie, name) of every entry, sorted by cookie."""
        directory = self._directory(ino)
        names = self.entries(directory)
        if ino == ROOT_INO:
            for hidden in self.hidden_root_names:
                names.pop(hidden, None)
        return sorted((name_cookie(name), name) for name in names)

    def is_empty(self, directory: Node) -> bool:
        overlay = self.overlay(directory)
        if any(ino != WHITEOUT for ino in overlay.values()):
            return False
        if directory.record.digest is None:
            return True
        base = self.trees.get(directory.record.digest).entries
        return all(name in overlay for name in base)

    # -- link counts ---------------------------------------------------------

    def nlink(self, node: Node) -> int:
        """Return st_nlink: names of a file, 2 + subdirectories of a directory."""
        if not node.record.is_dir:
            return node.record.nlink
        if node.orphan:
            return 0
        if node.record.nlink == 0:
            node.record.nlink = 2 + self._count_subdirs(node)
        return node.record.nlink

    def _count_subdirs(self, directory: Node) -> int:
        count = 0
        base: dict[bytes, Entry] = {}
        if directory.record.digest is not None:
            listing = self.trees.get(directory.record.digest)
            base = listing.entries
            count = listing.subdirs
        for name, ino in self.overlay(directory).items():
            entry = base.get(name)
            if entry is not None and entry.kind is Kind.DIRECTORY:
                count -= 1
            if ino != WHITEOUT and self.node(ino).record.is_dir:
                count += 1
        return count

    def _adjust_nlink(self, batch: Batch, directory: Node, delta: int) -> None:
        # Counted before the batch commits, so the count is the old state.
        self.nlink(directory)
        directory.record.nlink += delta
        batch.stage(directory)

    # -- kernel references ---------------------------------------------------

    def remember(self, node: Node) -> None:
        """Count one more kernel reference (a lookup) to `node`."""
        node.lookups += 1
        self.nodes[node.ino] = node

    def forget(self, ino: int, count: int) -> None:
        node = self.nodes.get(ino)
        if node is None:
            return
        node.lookups = max(0, node.lookups - count)
        self._release_if_unused(node)
        self._trim()

    def _release_if_unused(self, node: Node) -> None:
        if node.lookups or node.opens or node.ino == ROOT_INO:
            return
        self.nodes.pop(node.ino, None)
        self._close_fd(node)
        if node.orphan:
            batch = Batch()
            self._drop_record(batch, node.ino)
            self._commit(batch)
        else:
            self._save_if_unsaved(node)

    # -- changing entries ----------------------------------------------------

    def _touch(self, node: Node, *, modified: bool = True) -> None:
        now = _now_ns()
        node.record.ctime_ns = now
        if modified:
            node.record.mtime_ns = now

    def _mark_dirty(self, batch: Batch, directory: Node) -> None:
        """Mark a directory and its ancestors as differing from their trees."""
        node = directory
        while not node.record.dirty:
            node.record.dirty = True
            batch.stage(node)
            if node.ino == ROOT_INO:
                return
            try:
                node = self.node(node.record.parent)
            except NotFound:
                log.warning(
                    "workspace %s: parent %d of inode %d is gone",
                    self.name,
                    node.record.parent,
                    node.ino,
                )
                return

    def _mark_content_changed(self, batch: Batch, node: Node) -> None:
        if node.ino == ROOT_INO:
            return
        try:
            parent = self.node(node.record.parent)
        except NotFound:
            return
        if parent.record.is_dir:
            self._mark_dirty(batch, parent)

    def _add_entry(self, batch: Batch, parent: Node, name: bytes, node: Node) -> None:
        batch.put(DB_DIRENTS, dirent_key(parent.ino, name), ino_key(node.ino))
        self._touch(parent)
        batch.stage(parent)
        self._mark_dirty(batch, parent)

    def _remove_entry(self, batch: Batch, parent: Node, name: bytes) -> None:
        key = dirent_key(parent.ino, name)
        if self._base_entry(parent, name) is not None:
            batch.put(DB_DIRENTS, key, ino_key(WHITEOUT))
        else:
            batch.delete(DB_DIRENTS, key)
        self._touch(parent)
        batch.stage(parent)
        self._mark_dirty(batch, parent)

    def _new_node(
        self, batch: Batch, parent: Node, mode: int, uid: int, gid: int
    ) -> Node:
        if parent.record.mode & stat.S_ISGID:
            gid = parent.record.gid
            if stat.S_ISDIR(mode):
                mode |= stat.S_ISGID
        now = _now_ns()
        nlink = 2 if stat.S_ISDIR(mode) else 1
        record = Record(mode, uid, gid, 0, now, now, now, nlink, 0, parent.ino)
        node = self._keep(Node(self._allocate(batch), record))
        batch.stage(node)
        return node

    def _drop_name(self, batch: Batch, node: Node) -> None:
        """Take one name away from `node`; drop it when none is left."""
        if node.record.is_dir:
            self._drop_tree(batch, node)
            node.orphan = True
        else:
            node.record.nlink = max(0, node.record.nlink - 1)
            self._touch(node, modified=False)
            node.orphan = node.record.nlink == 0
        if not node.orphan:
            batch.stage(node)
        elif node.lookups or node.opens:
            batch.stage(node)
            batch.put(DB_ORPHANS, ino_key(node.ino), b"")
        else:
            self._drop_record(batch, node.ino)
            self.nodes.pop(node.ino, None)
            self._close_fd(node)

    def _drop_tree(self, batch: Batch, directory: Node) -> None:
        """Drop the overlay records and dirents below a directory being removed."""
        if directory.record.dirty or directory.record.digest is None:
            for item in self.entries(directory).values():
                child = self._entry_node(directory, item)
                if child.stored or child.ino in self.nodes or isinstance(item, int):
                    self._drop_name(batch, child)
        for name, _ in self.overlay(directory).items():
            batch.delete(DB_DIRENTS, dirent_key(directory.ino, name))

    def _drop_record(self, batch: Batch, ino: int) -> None:
        self._upper_digests.pop(ino, None)
        batch.delete(DB_INODES, ino_key(ino))
        batch.delete(DB_ORPHANS, ino_key(ino))
        for name, _ in self._prefix_items(DB_XATTRS, ino_key(ino)):
            batch.delete(DB_XATTRS, ino_key(ino) + name)
        batch.uppers_to_remove.append(ino)

    def _check_free(self, parent: Node, name: bytes) -> None:
        check_name(name)
        if self.child(parent, name) is not None:
            raise AlreadyExists(f"{name!r} exists in inode {parent.ino}")

    def mkdir(
        self, parent_ino: int, name: bytes, mode: int, uid: int, gid: int
    ) -> Node:
        parent = self._directory(parent_ino)
        self._check_free(parent, name)
        batch = Batch()
        node = self._make_dir(batch, parent, name, mode, uid, gid)
        self._commit(batch)
        return node

    def _make_dir(
        self, batch: Batch, parent: Node, name: bytes, mode: int, uid: int, gid: int
    ) -> Node:
        node = self._new_node(batch, parent, stat.S_IFDIR | (mode & 0o7777), uid, gid)
        node.record.dirty = True
        self._adjust_nlink(batch, parent, 1)
        self._add_entry(batch, parent, name, node)
        return node

    def mknod(
        self, parent_ino: int, name: bytes, mode: int, rdev: int, uid: int, gid: int
    ) -> Node:
        """Create a regular file, a FIFO or a socket; devices are rejected."""
        kind = stat.S_IFMT(mode)
        if kind not in (stat.S_IFREG, stat.S_IFIFO, stat.S_IFSOCK):
            raise NotPermitted(f"cannot create device {name!r} in a workspace")
        parent = self._directory(parent_ino)
        self._check_free(parent, name)
        batch = Batch()
        node = self._new_node(batch, parent, kind | (mode & 0o7777), uid, gid)
        if kind == stat.S_IFREG:
            self.upper.create_empty(node.ino)
            node.record.upper = True
        self._add_entry(batch, parent, name, node)
        self._commit(batch)
        return node

    def create_file(
        self, parent_ino: int, name: bytes, mode: int, uid: int, gid: int
    ) -> Node:
        """Create an empty regular file."""
        return self.mknod(parent_ino, name, stat.S_IFREG | (mode & 0o7777), 0, uid, gid)

    def symlink(
        self, parent_ino: int, name: bytes, target: bytes, uid: int, gid: int
    ) -> Node:
        parent = self._directory(parent_ino)
        self._check_free(parent, name)
        batch = Batch()
        node = self._new_node(batch, parent, stat.S_IFLNK | 0o777, uid, gid)
        node.record.target = target
        node.record.size = len(target)
        self._add_entry(batch, parent, name, node)
        self._commit(batch)
        return node

    def readlink(self, ino: int) -> bytes:
        node = self.node(ino)
        if not node.record.is_symlink:
            raise InvalidArgument(f"inode {ino} is not a symlink")
        if node.record.target is not None:
            return node.record.target
        assert node.record.digest is not None
        return self.store.read_blob(node.record.digest)

    def link(self, ino: int, parent_ino: int, name: bytes) -> Node:
        node = self.node(ino)
        if node.record.is_dir:
            raise NotPermitted(f"cannot hard-link directory inode {ino}")
        parent = self._directory(parent_ino)
        self._check_free(parent, name)
        batch = Batch()
        node.record.nlink += 1
        if node.orphan:
            node.orphan = False
            batch.delete(DB_ORPHANS, ino_key(ino))
        self._touch(node, modified=False)
        batch.stage(node)
        self._add_entry(batch, parent, name, node)
        self._commit(batch)
        return node

    def unlink(self, parent_ino: int, name: bytes) -> Node:
        parent = self._directory(parent_ino)
        node = self.child(parent, name)
        if node is None:
            raise NotFound(f"{name!r} not found in inode {parent_ino}")
        if node.record.is_dir:
            raise IsADirectory(f"{name!r} is a directory")
        batch = Batch()
        self._remove_entry(batch, parent, name)
        self._drop_name(batch, node)
        self._commit(batch)
        return node

    def rmdir(self, parent_ino: int, name: bytes) -> Node:
        parent = self._directory(parent_ino)
        node = self.child(parent, name)
        if node is None:
            raise NotFound(f"{name!r} not found in inode {parent_ino}")
        if not node.record.is_dir:
            raise NotADirectory(f"{name!r} is not a directory")
        if not self.is_empty(node):
            raise DirectoryNotEmpty(f"{name!r} is not empty")
        batch = Batch()
        self._adjust_nlink(batch, parent, -1)
        self._remove_entry(batch, parent, name)
        self._drop_name(batch, node)
        self._commit(batch)
        return node

    def rename(
        self,
        old_parent_ino: int,
        old_name: bytes,
        new_parent_ino: int,
        new_name: bytes,
        flags: int = 0,
    ) -> Node | None:
        """Move an entry; return the inode it replaced, if any.

        The moved inode keeps its number, and so does everything below a
        moved directory. Only the two (parent, name) entries change.
        """
        check_name(new_name)
        old_parent = self._directory(old_parent_ino)
        new_parent = self._directory(new_parent_ino)
        source = self.child(old_parent, old_name)
        if source is None:
            raise NotFound(f"{old_name!r} not found in inode {old_parent_ino}")
        target = self.child(new_parent, new_name)
        if flags & RENAME_EXCHANGE:
            if target is None:
                raise NotFound(f"{new_name!r} not found in inode {new_parent_ino}")
            self._exchange(old_parent, old_name, source, new_parent, new_name, target)
            return None
        if target is not None:
            if flags & RENAME_NOREPLACE:
                raise AlreadyExists(f"{new_name!r} exists in inode {new_parent_ino}")
            if target.ino == source.ino:
                return None
            self._check_replaceable(source, target, new_name)
        batch = Batch()
        if source.record.is_dir and old_parent.ino != new_parent.ino:
            self._adjust_nlink(batch, old_parent, -1)
            self._adjust_nlink(batch, new_parent, 1)
        if target is not None and target.record.is_dir:
            self._adjust_nlink(batch, new_parent, -1)
        self._remove_entry(batch, old_parent, old_name)
        if target is not None:
            self._drop_name(batch, target)
        self._move(batch, source, new_parent)
        self._add_entry(batch, new_parent, new_name, source)
        self._commit(batch)
        return target

    def _check_replaceable(self, source: Node, target: Node, name: bytes) -> None:
        if source.record.is_dir and not target.record.is_dir:
            raise NotADirectory(f"{name!r} is not a directory")
        if not source.record.is_dir and target.record.is_dir:
            raise IsADirectory(f"{name!r} is a directory")
        if target.record.is_dir and not self.is_empty(target):
            raise DirectoryNotEmpty(f"{name!r} is not empty")

    def _move(self, batch: Batch, node: Node, new_parent: Node) -> None:
        node.record.parent = new_parent.ino
        self._touch(node, modified=False)
        batch.stage(node)
        self._clean_dirs.pop(node.ino, None)

    def _exchange(
        self,
        parent_a: Node,
        name_a: bytes,
        node_a: Node,
        parent_b: Node,
        name_b: bytes,
        node_b: Node,
    ) -> None:
        batch = Batch()
        if parent_a.ino != parent_b.ino:
            delta = int(node_b.record.is_dir) - int(node_a.record.is_dir)
            if delta:
                self._adjust_nlink(batch, parent_a, delta)
                self._adjust_nlink(batch, parent_b, -delta)
        self._move(batch, node_a, parent_b)
        self._move(batch, node_b, parent_a)
        self._add_entry(batch, parent_a, name_a, node_b)
        self._add_entry(batch, parent_b, name_b, node_a)
        self._commit(batch)

    # -- attributes ----------------------------------------------------------

    def setattr(
        self,
        ino: int,
        *,
        mode: int | None = None,
        uid: int | None = None,
        gid: int | None = None,
        size: int | None = None,
        atime_ns: int | None = None,
        mtime_ns: int | None = None,
        ctime_ns: int | None = None,
    ) -> Node:
        """Change attributes; a size change truncates or extends the file."""
        node = self.node(ino)
        record = node.record
        batch = Batch()
        if size is not None:
            if record.is_dir:
                raise IsADirectory(f"inode {ino} is a directory")
            self._truncate(batch, node, size)
        if mode is not None and (mode & 0o7777) != (record.mode & 0o7777):
            record.mode = stat.S_IFMT(record.mode) | (mode & 0o7777)
            self._mark_content_changed(batch, node)
        if uid is not None:
            record.uid = uid
        if gid is not None:
            record.gid = gid
        if atime_ns is not None:
            record.atime_ns = atime_ns
        if mtime_ns is not None:
            record.mtime_ns = mtime_ns
        record.ctime_ns = ctime_ns if ctime_ns is not None else _now_ns()
        batch.stage(node)
        self._commit(batch)
        return node

    # -- file content --------------------------------------------------------

    def open_file(self, ino: int, flags: int) -> int:
        """Open a file and return a handle; O_TRUNC empties it without a copy."""
        node = self.node(ino)
        if node.record.is_dir:
            raise IsADirectory(f"inode {ino} is a directory")
        if not node.record.is_file:
            raise InvalidArgument(f"inode {ino} is not a regular file")
        writing = flags & os.O_ACCMODE != os.O_RDONLY
        if flags & os.O_TRUNC and writing and node.record.size > 0:
            batch = Batch()
            self._truncate(batch, node, 0)
            batch.stage(node)
            self._commit(batch)
        node.opens += 1
        self.nodes[node.ino] = node
        fh = next(self._next_fh)
        self.handles[fh] = node
        return fh

    def handle(self, fh: int) -> Node:
        node = self.handles.get(fh)
        if node is None:
            raise InvalidArgument(f"file handle {fh} is not open")
        return node

    def release(self, fh: int) -> None:
        node = self.handles.pop(fh, None)
        if node is None:
            return
        node.opens -= 1
        self._save_if_unsaved(node)
        if node.opens == 0:
            self._close_fd(node)
        self._release_if_unused(node)

    def _backing_fd(self, node: Node) -> int:
        if node.fd is None:
            if node.record.upper:
                node.fd = self.upper.open(node.ino)
            else:
                assert node.record.digest is not None
                try:
                    node.fd = os.open(
                        self.store.blob_path(node.record.digest), os.O_RDONLY
                    )
                except FileNotFoundError:
                    raise MissingObject(
                        node.record.digest, f"inode {node.ino} of {self.name}"
                    ) from None
            if node.record.size >= SEQUENTIAL_HINT_MIN_BYTES:
                os.posix_fadvise(node.fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        return node.fd

    def _close_fd(self, node: Node) -> None:
        if node.fd is not None:
            os.close(node.fd)
            node.fd = None

    def read(self, fh: int, offset: int, size: int) -> bytes:
        return os.pread(self._backing_fd(self.handle(fh)), size, offset)

    def needs_copy_up(self, fh: int) -> bool:
        return not self.handle(fh).record.upper

    def write(self, fh: int, offset: int, data: bytes) -> int:
        node = self.handle(fh)
        if not node.record.upper:
            self.copy_up(node.ino)
        self._upper_digests.pop(node.ino, None)
        written = os.pwrite(self._backing_fd(node), data, offset)
        record = node.record
        record.size = max(record.size, offset + written)
        if not self.writeback_cache:
            # With the writeback cache the kernel owns mtime and sends it.
            self._touch(node)
        node.unsaved = True
        return written

    def begin_copy_up(self, ino: int) -> CopyUp | None:
        """Return the copy that gives a clean file its upper file, if needed."""
        node = self.node(ino)
        if node.record.upper:
            return None
        assert node.record.digest is not None
        source = self.store.blob_path(node.record.digest)
        if not os.path.exists(source):
            raise MissingObject(node.record.digest, f"inode {ino} of {self.name}")
        return CopyUp(ino, source, self.upper.temp_path(ino))

    def finish_copy_up(self, job: CopyUp) -> None:
        node = self.node(job.ino)
        if node.record.upper:
            _unlink_quietly(job.temp)
            return
        self.upper.install(job)
        batch = Batch()
        self._become_upper(batch, node)
        batch.stage(node)
        self._commit(batch)

    def copy_up(self, ino: int) -> None:
        job = self.begin_copy_up(ino)
        if job is not None:
            copy_file(job.source, job.temp)
            self.finish_copy_up(job)

    def _become_upper(self, batch: Batch, node: Node) -> None:
        self._upper_digests.pop(node.ino, None)
        node.record.upper = True
        if node.fd is not None:
            # Handles share this descriptor, so readers switch to the copy.
            self._close_fd(node)
            node.fd = self.upper.open(node.ino)
        self._mark_content_changed(batch, node)

    def _truncate(self, batch: Batch, node: Node, size: int) -> None:
        if not node.record.upper:
            if size == 0:
                self.upper.create_empty(node.ino)
                self._become_upper(batch, node)
            else:
                self.copy_up(node.ino)
        self._upper_digests.pop(node.ino, None)
        os.truncate(self.upper.path(node.ino), size)
        node.record.size = size
        self._touch(node)

    def _save_if_unsaved(self, node: Node) -> None:
        if node.unsaved and not (node.orphan and not node.stored):
            batch = Batch()
            batch.stage(node)
            self._commit(batch)

    def flush(self, fh: int) -> None:
        self._save_if_unsaved(self.handle(fh))

    def fsync_prepare(self, fh: int | None) -> int | None:
        """Save a handle's record; return a descriptor to fsync, or None.

        The caller passes the result to `flush_to_disk`, possibly in a
        worker thread.
        """
        if fh is None:
            return None
        node = self.handle(fh)
        self._save_if_unsaved(node)
        if not node.record.upper:
            return None
        return os.dup(self._backing_fd(node))

    def flush_to_disk(self, fd: int | None) -> None:
        """Make a file's data and the whole inode table durable."""
        if fd is not None:
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        self.env.sync()

    def fsync(self, fh: int | None) -> None:
        self.flush_to_disk(self.fsync_prepare(fh))

    # -- extended attributes -------------------------------------------------

    def getxattr(self, ino: int, name: bytes) -> bytes:
        value = self.find_xattr(ino, name)
        if value is None:
            raise NoAttribute(f"inode {ino} has no attribute {name!r}")
        return value

    def find_xattr(self, ino: int, name: bytes) -> bytes | None:
        """Return an extended attribute's value, or None if it is not set."""
        self.node(ino)
        return self._get(DB_XATTRS, ino_key(ino) + name)

    def setxattr(self, ino: int, name: bytes, value: bytes) -> None:
        if name in _ACL_XATTRS:
            raise NotSupported(f"POSIX ACLs are not stored ({name!r})")
        if not name or len(name) > MAX_NAME_BYTES:
            raise InvalidArgument(f"invalid attribute name {name!r}")
        node = self.node(ino)
        batch = Batch()
        batch.put(DB_XATTRS, ino_key(ino) + name, value)
        self._touch(node, modified=False)
        batch.stage(node)
        self._commit(batch)

    def listxattr(self, ino: int) -> list[bytes]:
        self.node(ino)
        return [name for name, _ in self._prefix_items(DB_XATTRS, ino_key(ino))]

    def removexattr(self, ino: int, name: bytes) -> None:
        self.getxattr(ino, name)
        node = self.node(ino)
        batch = Batch()
        batch.delete(DB_XATTRS, ino_key(ino) + name)
        self._touch(node, modified=False)
        batch.stage(node)
        self._commit(batch)

    # -- grafts --------------------------------------------------------------

    def graft(
        self, path: bytes, digest: Digest, mode: int | None = None
    ) -> list[tuple[int, bytes, int]]:
        """Replace `path` by a stored blob or tree in one transaction.

        Missing parent directories are created. Returns (parent inode, name,
        replaced inode or 0) for each entry that changed, so the FUSE layer
        can drop the kernel's cached entries, negative ones included.
        """
        parts = split_path(path)
        if not parts:
            raise InvalidArgument("cannot graft over the workspace root")
        is_tree = self.store.has_tree(digest)
        if not is_tree and not is_available(self.store, Kind.FILE, digest):
            raise MissingObject(digest, f"a graft at {path!r} in {self.name}")
        batch = Batch()
        changed: list[tuple[int, bytes, int]] = []
        parent = self._parents_for(batch, parts[:-1], changed)
        name = parts[-1]
        old = self.child(parent, name)
        new = self._grafted_node(batch, parent, digest, is_tree, mode, old)
        if old is not None:
            if old.record.is_dir:
                self._adjust_nlink(batch, parent, -1)
            self._drop_name(batch, old)
        if is_tree:
            self._adjust_nlink(batch, parent, 1)
        self._add_entry(batch, parent, name, new)
        self._commit(batch)
        changed.append((parent.ino, name, old.ino if old is not None else 0))
        log.debug("workspace %s: grafted %s at %r", self.name, digest, path)
        return changed

    def _parents_for(
        self, batch: Batch, parts: list[bytes], changed: list[tuple[int, bytes, int]]
    ) -> Node:
        parent = self.node(ROOT_INO)
        created = False
        for part in parts:
            found = None if created else self.child(parent, part)
            if found is None:
                uid, gid = self.meta.uid, self.meta.gid
                found = self._make_dir(batch, parent, part, 0o755, uid, gid)
                changed.append((parent.ino, part, 0))
                created = True
            elif not found.record.is_dir:
                raise NotADirectory(f"{part!r} in the graft path is not a directory")
            parent = found
        return parent

    def _grafted_node(
        self,
        batch: Batch,
        parent: Node,
        digest: Digest,
        is_tree: bool,
        mode: int | None,
        old: Node | None,
    ) -> Node:
        uid, gid = self.meta.uid, self.meta.gid
        if is_tree:
            default = 0o755
            if old is not None and old.record.is_dir:
                default = old.record.mode & 0o7777
            bits = default if mode is None else mode & 0o7777
            node = self._new_node(batch, parent, stat.S_IFDIR | bits, uid, gid)
            node.record.nlink = 0
        else:
            default = 0o644
            if old is not None and old.record.is_file:
                default = old.record.mode & 0o7777
            bits = default if mode is None else mode & 0o7777
            node = self._new_node(batch, parent, stat.S_IFREG | bits, uid, gid)
            node.record.size = self._blob_size(digest)
        node.record.digest = digest
        return node

    def _blob_size(self, digest: Digest) -> int:
        """Return a blob's size; a blob restored lazily has it in its mark."""
        try:
            return os.stat(self.store.blob_path(digest)).st_size
        except FileNotFoundError:
            mark = lazy_mark(self.store, digest)
            if mark is None:
                raise MissingObject(digest, f"a graft in {self.name}") from None
            return mark.size

    def lacking_blob(self, ino: int) -> Digest | None:
        """Return the digest of a clean file's blob when the store lacks it.

        That is a file restored lazily from a remote: the FUSE layer fetches
        the blob before the file is read or copied up.
        """
        record = self.node(ino).record
        if not record.is_file or record.upper or record.digest is None:
            return None
        if self.store.has_blob(record.digest):
            return None
        return record.digest

    def remove_path(self, path: bytes) -> list[tuple[int, bytes, int]]:
        """Remove a file or a whole directory in one transaction."""
        parts = split_path(path)
        if not parts:
            raise InvalidArgument("cannot remove the workspace root")
        missing = NotFound(f"{os.fsdecode(path)} not found in workspace {self.name}")
        try:
            parent = self.resolve(b"/".join(parts[:-1]))
        except NotFound:
            raise missing from None
        if not parent.record.is_dir:
            raise NotADirectory(f"{path!r}: a parent is not a directory")
        name = parts[-1]
        node = self.child(parent, name)
        if node is None:
            raise missing
        batch = Batch()
        if node.record.is_dir:
            self._adjust_nlink(batch, parent, -1)
        self._remove_entry(batch, parent, name)
        self._drop_name(batch, node)
        self._commit(batch)
        return [(parent.ino, name, node.ino)]

    # -- snapshots -----------------------------------------------------------

    def snapshot(self) -> Digest:
        """Store the workspace's current state and return its root digest.

        Only upper files are read; clean files and untouched directories
        keep the digests of their base entries.
        """
        trees = _NewTrees()
        digest, _ = self._snapshot_dir(self.node(ROOT_INO), trees)
        trees.store_in(self.store)
        return digest

    def digest_of(self, path: bytes) -> Digest:
        """Return the digest of a path; clean files are not read."""
        node = self.resolve(path)
        record = node.record
        if record.is_dir:
            if not record.dirty and record.digest is not None:
                return record.digest
            trees = _NewTrees()
            digest, _ = self._snapshot_dir(node, trees)
            trees.store_in(self.store)
            return digest
        if record.is_symlink:
            if record.target is not None:
                return digest_bytes(record.target)
        elif record.upper:
            return self._upper_digest(node, store=False)
        if record.digest is None:
            raise InvalidArgument(f"{path!r} is not a file, directory or symlink")
        return record.digest

    def _upper_digest(self, node: Node, *, store: bool) -> Digest:
        """Return an upper file's digest, storing its blob when `store` is set.

        A file left alone since it was last hashed is not read again, so a
        snapshot or an up-to-date check costs only the files written since.
        Every write reaches upper files through this workspace and drops
        the file's entry in `_upper_digests`, so that memo is exact. The
        store's stat cache carries digests over to the next daemon, but only
        for files whose ctime is older than the racy window: a second write
        within one clock tick leaves size, mtime and ctime unchanged.
        """
        path = os.path.abspath(self.upper.path(node.ino))
        known = self._upper_digests.get(node.ino)
        cache = StatCache(self.store.env)
        key = os.fsencode(path)
        before = os.stat(path)
        if known is None:
            known = cache.lookup_many([(key, before)]).get(key)
        if known is not None and (not store or self.store.has_blob(known)):
            self._upper_digests[node.ino] = known
            return known
        digest = self.store.put_file(path) if store else hash_file(path)
        if stat_fields(os.stat(path)) != stat_fields(before):
            return digest
        self._upper_digests[node.ino] = digest
        if time.time_ns() - before.st_ctime_ns > RACY_WINDOW_NS:
            cache.record_many([(key, before, digest)])
        return digest

    def _snapshot_dir(self, directory: Node, trees: _NewTrees) -> tuple[Digest, int]:
        entries: list[Entry] = []
        # A lazy base tree makes the new tree lazy when it keeps any of
        # its entries unchanged, since their blobs may be remote.
        base_mark = None
        if directory.record.digest is not None:
            base_mark = lazy_mark(self.store, directory.record.digest)
        lazy_from: str | None = None
        items = self.entries(directory)
        if directory.ino == ROOT_INO:
            for hidden in self.hidden_root_names:
                items.pop(hidden, None)
        for name, item in items.items():
            if isinstance(item, Entry):
                ino = derived_ino(directory.ino, name)
                if ino not in self.nodes and self._get(DB_INODES, ino_key(ino)) is None:
                    entries.append(item)
                    if base_mark is not None:
                        lazy_from = base_mark.remote
                    continue
            entry = self._snapshot_entry(name, self._entry_node(directory, item), trees)
            if entry is not None:
                entries.append(entry)
                remote = trees.lazy_remote(self.store, entry)
                if remote is not None:
                    lazy_from = remote
        encoded = encode_tree(entries)
        digest = tree_digest(encoded)
        trees.add(digest, encoded, lazy_from)
        return digest, sum(e.size for e in entries)

    def _snapshot_entry(
        self, name: bytes, node: Node, trees: _NewTrees
    ) -> Entry | None:
        record = node.record
        bits = record.mode & 0o7777
        if record.is_dir:
            if record.dirty or record.digest is None:
                digest, size = self._snapshot_dir(node, trees)
            else:
                digest = record.digest
                size = sum(e.size for e in self.trees.get(digest).entries.values())
            return Entry(name, Kind.DIRECTORY, bits, digest, size)
        if record.is_symlink:
            target = self.readlink(node.ino)
            digest = self.store.put_bytes(target)
            return Entry(name, Kind.SYMLINK, 0o777, digest, len(target))
        if record.is_file:
            if record.upper:
                digest = self._upper_digest(node, store=True)
                size = os.stat(self.store.blob_path(digest)).st_size
            else:
                assert record.digest is not None
                digest, size = record.digest, record.size
            return Entry(name, Kind.FILE, bits, digest, size)
        log.warning(
            "workspace %s: snapshot leaves out %r (inode %d): not a file, "
            "directory or symlink",
            self.name,
            name,
            node.ino,
        )
        return None


class _NewTrees:
    """Trees a snapshot encodes, and which of them must be stored marked lazy."""

    def __init__(self) -> None:
        self.encoded: list[tuple[Digest, bytes]] = []
        self.marks: dict[Digest, str] = {}

    def add(self, digest: Digest, encoded: bytes, lazy_from: str | None) -> None:
        self.encoded.append((digest, encoded))
        if lazy_from is not None:
            self.marks[digest] = lazy_from

    def lazy_remote(self, store: Store, entry: Entry) -> str | None:
        """Return the remote an entry's content may lack blobs on, or None."""
        if entry.kind is Kind.DIRECTORY:
            if entry.digest in self.marks:
                return self.marks[entry.digest]
            mark = lazy_mark(store, entry.digest)
            return None if mark is None else mark.remote
        if entry.kind is Kind.FILE and not store.has_blob(entry.digest):
            mark = lazy_mark(store, entry.digest)
            return "" if mark is None else mark.remote
        return None

    def store_in(self, store: Store) -> None:
        put_marked_trees(store, self.encoded, self.marks)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _lock(folder: str, name: str) -> int:
    fd = os.open(os.path.join(folder, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
            raise WorkspaceBusy(
                f"workspace {name!r} is in use by another process: unmount it "
                "(`expfs umount`) or wait for that process to finish"
            ) from None
        raise
    return fd
