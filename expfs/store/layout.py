"""The on-disk layout of a store: folders, files and LMDB databases.

This module is the one description of what lives under `.expfs/`. Other
modules take names from here instead of spelling paths or database names.

Folders under the store root (`<repo>/.expfs/`):

    FORMAT            the format version as text, beside the copy in `meta`
    objects/ab/cd…    blobs: file content named by its BLAKE3 hex digest,
                      sharded by the first two hex digits, mode 0444
    index/            the shared LMDB environment (data.mdb, lock.mdb)
    tmp/              blobs being written; a crash can leave files here,
                      and `expfs fsck` removes those older than a day
    workspaces/NAME/  one experiment's own LMDB environment and upper files,
                      and repro.lock, which a command writing in its mount
                      holds with flock (see `expfs.busy`)
    repro.lock        the same lock for the checkout itself
    run/              control sockets of running daemons (mode 0700)
    logs/             one log file per daemon
    mnt/              default mount points
    worktrees/NAME/   an experiment's Git worktree: only Git's `.git` file,
                      which a mount of the experiment links to
    worktree-index/   Git index files already built for a base snapshot,
                      copied into each new experiment's worktree

Named databases in the shared index. Keys are bytes; LMDB keys are at most
511 bytes, so anything keyed by a path or a name uses a digest of it.

    meta        ascii key -> ascii value. `format`: the store format version.
                Written by `expfs init`.
    blobs       digest (32 raw bytes) -> size (u64 big-endian). One entry per
                blob file, written after the file is renamed into place.
                The file on disk is the truth; this index lets fsck notice
                a blob that went missing.
    trees       digest (32 raw bytes) -> canonical tree encoding (see
                `expfs.store.trees`). A tree is written only after every
                object it references is stored, unless it is written with
                a mark in `lazy` in the same transaction. So a tree present
                without a mark is complete: everything below it is stored.
    statcache   BLAKE3(absolute path bytes) -> packed stat fields and the
                blob digest (see `expfs.store.statcache`). Lets a snapshot
                skip reading files whose size, mtime, ctime and inode did
                not change.
    gitmap      Git object id (20 or 32 raw bytes) -> digest (32 raw bytes)
                of the same blob or tree in this store, so a commit is
                read from Git's objects only once.
    experiments experiment name (UTF-8, at most 100 bytes) -> JSON record
                (see `expfs.experiments`): base digest, base commit,
                creation time, status and the git folder of its worktree.
                Written by `expfs exp new` and `expfs exp remove`.
    runs        run key (32 raw bytes) -> JSON `RunRecord` (see
                `expfs.runcache`): the outputs, metrics and timing of the
                last successful run with that key. Written by repro.
    lazy        digest (32 raw bytes) -> kind (u8), size (u64), time marked
                (f64, seconds since the epoch) and a remote's name (UTF-8,
                empty for the default remote); see `expfs.store.lazy`. A
                tree here was restored lazily: its blobs may be only on
                that remote, and a mounted workspace fetches each one, then
                verifies it, when a file is first opened. A blob here is a
                single-file output restored that way, with its size.
                Materializing and `expfs pull` fetch what is missing and
                remove the marks; gc drops marks of objects it removes.
    verified    blob digest (32 raw bytes) -> inode, size and mtime_ns of the
                blob file when its bytes last hashed to its name (three u64,
                big-endian; see `Store.check_blob`). A blob whose file still
                has these fields is not hashed again when it is checked out:
                any write changes its mtime. Written when a blob is stored
                and when a check-out verifies it.
    links       BLAKE3(absolute path bytes) -> how a checkout linked that
                path to a blob: kind, inode, size, mtime_ns, the mode the
                run recorded and the digest (see `expfs.tree.checkout`).
                Lets a fingerprint name a linked file by the digest and
                mode it was restored with, not by the blob's mode 0444 or
                a symlink's target. Written by repro's checkout restores.
    runinputs   run key (32 raw bytes) -> JSON of the inputs that the key
                hashes: command, wdir, dependency digests, params, output
                paths (see `expfs.remote.inputs`). Remote run-cache entries
                carry them so that readers can recompute the key. Written
                when an entry is pushed or pulled.

A workspace's own LMDB environment, `workspaces/NAME/lmdb/`, written only
by the process that serves the workspace (it holds `workspaces/NAME/lock`
with flock). Its upper files are `workspaces/NAME/upper/<ino>`. Integers
are big-endian; `expfs.workspace.inodes` encodes and decodes every value.

    meta        b"workspace" -> base tree digest (32 raw bytes), creation
                time (u64 ns), next inode number (u64), owner uid and gid
                (u32 each). Written once at creation, then the counter.
    inodes      ino (u64) -> inode record: mode, owner, size, times, link
                count, parent, flags (upper file, dirty directory) and the
                base blob or tree digest or a symlink target. Written only
                for inodes that changed; others come from base trees.
    dirents     parent ino (u64) + name -> child ino (u64), or 0 for a
                whiteout that hides a name of the parent's base tree.
    xattrs      ino (u64) + attribute name -> value.
    orphans     ino (u64) -> b"": inodes whose last name was removed while
                the kernel still used them; dropped once it releases and
                forgets them, or when the workspace is opened after a crash.
"""

from __future__ import annotations

FORMAT_VERSION = 1

STORE_DIRNAME = ".expfs"
FORMAT_FILE = "FORMAT"
OBJECTS_DIR = "objects"
INDEX_DIR = "index"
TMP_DIR = "tmp"
WORKSPACES_DIR = "workspaces"
RUN_DIR = "run"
LOGS_DIR = "logs"
MOUNTS_DIR = "mnt"
# Experiments' Git worktrees, `worktrees/NAME` (see `expfs.experiments`).
WORKTREES_DIR = "worktrees"

DB_META = b"meta"
DB_BLOBS = b"blobs"
DB_TREES = b"trees"
DB_STATCACHE = b"statcache"
DB_GITMAP = b"gitmap"
DB_EXPERIMENTS = b"experiments"
DB_RUNS = b"runs"
DB_RUN_INPUTS = b"runinputs"
DB_LAZY = b"lazy"
DB_VERIFIED = b"verified"
DB_LINKS = b"links"

# Every named database of the shared index, opened together at start-up.
SHARED_DATABASES = (
    DB_META,
    DB_BLOBS,
    DB_TREES,
    DB_STATCACHE,
    DB_GITMAP,
    DB_RUNS,
    DB_EXPERIMENTS,
    DB_RUN_INPUTS,
    DB_LAZY,
    DB_VERIFIED,
    DB_LINKS,
)

META_FORMAT_KEY = b"format"
