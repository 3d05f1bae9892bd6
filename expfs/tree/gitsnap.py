"""Snapshot a Git commit from Git's objects, or the working tree as seen.

A commit is read with `git ls-tree` and `git cat-file --batch`; each Git
object id is remembered with its expfs digest in the `gitmap` database, so
the same content is read from Git only once. The working tree is HEAD plus
modified and untracked files that `.gitignore` does not exclude, read from
disk through the stat cache.
"""

from __future__ import annotations

import logging
import os
import stat
import subprocess
from collections.abc import Iterable

from expfs.errors import NotARepository, UsageError
from expfs.store import layout
from expfs.store.objects import Store
from expfs.store.trees import Digest, Entry, Kind, raw
from expfs.tree.build import build_trees
from expfs.tree.snapshot import ProgressFn, store_files, store_symlinks, walk_folder

log = logging.getLogger(__name__)

_GIT_MODES = {
    b"100644": (Kind.FILE, 0o644),
    b"100755": (Kind.FILE, 0o755),
    b"120000": (Kind.SYMLINK, 0o777),
}


def git(repo: str, *args: str, input: bytes | None = None) -> bytes:
    proc = subprocess.run(["git", "-C", repo, *args], input=input, capture_output=True)
    if proc.returncode != 0:
        message = proc.stderr.decode(errors="replace").strip()
        raise NotARepository(f"git {' '.join(args)} failed in {repo}: {message}")
    return proc.stdout


def resolve_commit(repo: str, rev: str) -> str:
    proc = subprocess.run(
        ["git", "-C", repo, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise UsageError(
            f"{rev!r} names no commit in {repo}: give a branch, tag or commit id "
            "(see `git log --oneline`)"
        )
    return proc.stdout.strip()


def _ls_tree(repo: str, commit: str) -> list[tuple[bytes, bytes, bytes, int]]:
    """Return (mode, oid, path, size) of every blob and link in a commit."""
    out = git(repo, "ls-tree", "-r", "-z", "-l", "--full-tree", commit)
    rows = []
    for record in out.split(b"\0"):
        if not record:
            continue
        meta, _, path = record.partition(b"\t")
        mode, kind, oid, size = meta.split()
        if kind != b"blob":
            log.warning(
                "skipped %s in %s: %s entries are not snapshotted",
                os.fsdecode(path),
                commit[:12],
                kind.decode(),
            )
            continue
        rows.append((mode, oid, path, int(size)))
    return rows


def _cat_blobs(store: Store, repo: str, oids: list[bytes]) -> dict[bytes, Digest]:
    """Store the content of Git blobs; return {oid: digest}."""
    found: dict[bytes, Digest] = {}
    if not oids:
        return found
    # Leaving the `with` block closes both pipes and waits for git, also
    # when a read fails halfway.
    with subprocess.Popen(
        ["git", "-C", repo, "cat-file", "--batch"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    ) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        for oid in oids:
            proc.stdin.write(oid + b"\n")
            proc.stdin.flush()
            header = proc.stdout.readline().split()
            if len(header) != 3:
                raise UsageError(f"git cat-file could not read object {oid.decode()}")
            size = int(header[2])
            data = proc.stdout.read(size)
            proc.stdout.read(1)
            found[oid] = store.put_bytes(data)
    return found


def _gitmap_lookup(store: Store, oids: Iterable[bytes]) -> dict[bytes, Digest]:
    handle = store.env.db(layout.DB_GITMAP)
    wanted = list(oids)

    def scan(txn: object) -> dict[bytes, Digest]:
        found: dict[bytes, Digest] = {}
        for oid in wanted:
            value = txn.get(bytes.fromhex(oid.decode()), db=handle)  # type: ignore[attr-defined]
            if value is not None:
                found[oid] = Digest(value.hex())
        return found

    return store.env.read(scan)


def _gitmap_record(store: Store, pairs: dict[bytes, Digest]) -> None:
    handle = store.env.db(layout.DB_GITMAP)
    rows = [(bytes.fromhex(oid.decode()), raw(d)) for oid, d in pairs.items()]

    def write(txn: object) -> None:
        for key, value in rows:
            txn.put(key, value, db=handle)  # type: ignore[attr-defined]

    store.env.write(write)


def snapshot_commit(store: Store, repo: str, rev: str) -> Digest:
    """Snapshot the tree of commit `rev` straight from Git's objects."""
    commit = resolve_commit(repo, rev)
    tree_oid = git(repo, "rev-parse", f"{commit}^{{tree}}").strip()
    cached = _gitmap_lookup(store, [tree_oid]).get(tree_oid)
    if cached is not None and store.has_tree(cached):
        return cached
    rows = _ls_tree(repo, commit)
    known = _gitmap_lookup(store, {oid for _, oid, _, _ in rows})
    known = {oid: d for oid, d in known.items() if store.has_blob(d)}
    missing = sorted({oid for _, oid, _, _ in rows} - known.keys())
    fetched = _cat_blobs(store, repo, missing)
    known.update(fetched)
    entries: dict[bytes, Entry] = {}
    for mode, oid, path, size in rows:
        kind, perm = _GIT_MODES.get(mode, (Kind.FILE, 0o644))
        entries[path] = Entry(os.path.basename(path), kind, perm, known[oid], size)
    root = build_trees(store, entries)
    _gitmap_record(store, {**fetched, tree_oid: root})
    return root


def worktree_paths(repo: str) -> tuple[list[bytes], list[bytes]]:
    """Return (present, ignored-but-listed) paths of the working tree as seen.

    Present: tracked files that still exist plus untracked files that
    `.gitignore` does not exclude.
    """
    # One git call: with -t each path comes with a tag, "R" for a tracked
    # file deleted from the working tree (which --cached lists too).
    out = git(
        repo,
        "ls-files",
        "-z",
        "-t",
        "--cached",
        "--others",
        "--deleted",
        "--exclude-standard",
    )
    listed: list[bytes] = []
    deleted: set[bytes] = set()
    for record in out.split(b"\0"):
        if not record:
            continue
        tag, path = record[:1], record[2:]
        if tag == b"R":
            deleted.add(path)
        else:
            listed.append(path)
    paths = [p for p in dict.fromkeys(listed) if p not in deleted]
    return paths, sorted(deleted)


def snapshot_worktree(
    store: Store,
    repo: str,
    extra_paths: Iterable[bytes] = (),
    progress: ProgressFn | None = None,
) -> Digest:
    """Snapshot HEAD plus modified and untracked, non-ignored files, from disk.

    `extra_paths` (relative) are taken from disk whether Git lists them or
    not. A folder among them is taken whole: every file below it, ignored
    or not, with its empty folders and folder modes, which Git does not
    record.
    """
    root = os.fsencode(os.path.abspath(repo))
    paths, _ = worktree_paths(repo)
    extra = set(extra_paths)
    files: dict[bytes, os.stat_result] = {}
    links: dict[bytes, os.stat_result] = {}
    for rel in paths:
        if rel.split(b"/", 1)[0] == layout.STORE_DIRNAME.encode():
            continue
        if _inside_any(rel, extra):
            continue  # the walk of `extra_paths` below stats it
        st = os.lstat(os.path.join(root, rel))
        if stat.S_ISLNK(st.st_mode):
            links[rel] = st
        elif stat.S_ISREG(st.st_mode):
            files[rel] = st
    dir_modes: dict[bytes, int] = {}
    for rel in sorted(extra):
        path = os.path.join(root, rel)
        if os.path.isdir(path) and not os.path.islink(path):
            listing = walk_folder(path)
            files.update({os.path.join(rel, p): s for p, s in listing.files.items()})
            links.update({os.path.join(rel, p): s for p, s in listing.symlinks.items()})
            dir_modes.update(
                {os.path.join(rel, p): m for p, m in listing.dir_modes.items()}
            )
            dir_modes[rel] = os.stat(path).st_mode & 0o7777
        elif os.path.lexists(path):
            st = os.lstat(path)
            (links if stat.S_ISLNK(st.st_mode) else files)[rel] = st
    entries = store_files(store, root, files, progress)
    entries.update(store_symlinks(store, root, links))
    return build_trees(store, entries, dir_modes, dir_modes)


def _inside_any(path: bytes, folders: set[bytes]) -> bool:
    """Tell whether `path` is one of `folders` or lies below one of them."""
    while path:
        if path in folders:
            return True
        path = path.rpartition(b"/")[0]
    return False
