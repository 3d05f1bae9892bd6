"""Finding, creating and opening the store of a Git repository."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass

from expfs.errors import NotARepository, StoreFormatError, StoreNotFound, UsageError
from expfs.store import layout
from expfs.store.lmdbenv import open_environment
from expfs.store.objects import Store


def git_toplevel(start: str) -> str:
    """Return the root of the Git work tree containing `start`."""
    try:
        proc = subprocess.run(
            ["git", "-C", start, "rev-parse", "--show-toplevel"],
            capture_output=True,
            text=True,
        )
    except FileNotFoundError:
        raise NotARepository(
            "the `git` program is not installed; install Git"
        ) from None
    except NotADirectoryError:
        raise NotARepository(f"{start} is not a folder") from None
    if proc.returncode != 0 or not proc.stdout.strip():
        raise NotARepository(
            f"{os.path.abspath(start)} is not inside a Git work tree: run "
            "`git init` there first, or change to your project's folder"
        )
    return proc.stdout.strip()


@dataclass(frozen=True)
class MountedWorkspace:
    """A mounted experiment's workspace, found from a path inside it."""

    store_root: str
    name: str
    mountpoint: str

    @property
    def project(self) -> str:
        return os.path.dirname(self.store_root)


def mounted_workspace(start: str = ".") -> MountedWorkspace | None:
    """Return the mounted experiment that `start` lies in, or None.

    A mount shows a `.git` file at its root naming the experiment's Git
    folder, whose `gitdir` file names the experiment's worktree in the
    store, `<store>/worktrees/NAME`. Reads those two files, starts no
    program, and works wherever the mount is.
    """
    here = os.path.abspath(start)
    while True:
        if os.path.ismount(here):
            found = _workspace_of_mount(here)
            if found is not None:
                return found
        parent = os.path.dirname(here)
        if parent == here:
            return None
        here = parent


def _workspace_of_mount(mountpoint: str) -> MountedWorkspace | None:
    gitdir = _read_link(os.path.join(mountpoint, ".git"), "gitdir: ")
    if gitdir is None:
        return None
    gitdir = os.path.join(mountpoint, gitdir)
    dot_git = _read_link(os.path.join(gitdir, "gitdir"), "")
    if dot_git is None:
        return None
    worktree = os.path.dirname(os.path.normpath(os.path.join(gitdir, dot_git)))
    worktrees = os.path.dirname(worktree)
    store_root = os.path.dirname(worktrees)
    if os.path.basename(worktrees) != layout.WORKTREES_DIR:
        return None
    if not os.path.isfile(os.path.join(store_root, layout.FORMAT_FILE)):
        return None
    return MountedWorkspace(store_root, os.path.basename(worktree), mountpoint)


def _read_link(path: str, prefix: str) -> str | None:
    """Return the path that a Git link file at `path` names after `prefix`."""
    try:
        with open(path) as f:
            text = f.read(4096).strip()
    except (OSError, UnicodeDecodeError):
        return None
    if not text.startswith(prefix) or "\n" in text:
        return None
    return text[len(prefix) :]


def find_store_root(start: str = ".") -> str:
    """Return the `.expfs/` folder of the repository containing `start`.

    Looks upward for an existing `.expfs/` first, so commands work inside
    folders that Git does not see (and without starting `git`). In a
    mounted experiment elsewhere, that is the store of the experiment.
    """
    here = os.path.abspath(start)
    while True:
        candidate = os.path.join(here, layout.STORE_DIRNAME)
        if os.path.isfile(os.path.join(candidate, layout.FORMAT_FILE)):
            return candidate
        parent = os.path.dirname(here)
        if parent == here:
            break
        here = parent
    mounted = mounted_workspace(start)
    if mounted is not None:
        return mounted.store_root
    top = git_toplevel(start)
    raise StoreNotFound(f"no expfs store in {top}: run `expfs init` there first")


def _add_to_git_exclude(repo_root: str) -> None:
    proc = subprocess.run(
        ["git", "-C", repo_root, "rev-parse", "--git-path", "info/exclude"],
        capture_output=True,
        text=True,
        check=True,
    )
    exclude = os.path.join(repo_root, proc.stdout.strip())
    line = f"/{layout.STORE_DIRNAME}/"
    try:
        with open(exclude) as f:
            if line in f.read().splitlines():
                return
    except FileNotFoundError:
        os.makedirs(os.path.dirname(exclude), exist_ok=True)
    with open(exclude, "a") as f:
        f.write(f"{line}\n")


def _make_folders(root: str) -> None:
    for name in (
        layout.OBJECTS_DIR,
        layout.TMP_DIR,
        layout.WORKSPACES_DIR,
        layout.RUN_DIR,
        layout.LOGS_DIR,
        layout.MOUNTS_DIR,
    ):
        os.makedirs(os.path.join(root, name), mode=0o700, exist_ok=True)


def init_store(start: str = ".") -> tuple[Store, bool]:
    """Create `.expfs/` at the repository root; return (store, created).

    Running it again on an existing store changes nothing. Inside a mounted
    experiment it raises UsageError: the experiment has a store already.
    """
    mounted = mounted_workspace(start)
    if mounted is not None:
        raise UsageError(
            f"{os.path.abspath(start)} is in the workspace of experiment "
            f"{mounted.name} (mounted at {mounted.mountpoint}), which belongs to "
            f"project {mounted.project} with the store {mounted.store_root}: "
            "expfs commands here already use that store, so there is nothing to "
            "initialize. Run `expfs init` in a Git repository outside any mount"
        )
    top = git_toplevel(start)
    root = os.path.join(top, layout.STORE_DIRNAME)
    format_path = os.path.join(root, layout.FORMAT_FILE)
    created = not os.path.exists(format_path)
    if not created:
        return open_store(root), False
    os.makedirs(root, mode=0o700, exist_ok=True)
    os.chmod(root, 0o700)
    _make_folders(root)
    env = open_environment(
        os.path.join(root, layout.INDEX_DIR), layout.SHARED_DATABASES
    )
    version = str(layout.FORMAT_VERSION).encode()
    env.put(layout.DB_META, layout.META_FORMAT_KEY, version)
    temp = format_path + ".tmp"
    with open(temp, "w") as f:
        f.write(f"{layout.FORMAT_VERSION}\n")
        f.flush()
        os.fsync(f.fileno())
    os.rename(temp, format_path)
    _add_to_git_exclude(top)
    return Store(root, env), True


def open_store(root: str) -> Store:
    """Open the store at `root` (a `.expfs/` folder), checking its format."""
    format_path = os.path.join(root, layout.FORMAT_FILE)
    try:
        with open(format_path) as f:
            text = f.read().strip()
    except FileNotFoundError:
        raise StoreNotFound(
            f"{root} is not an expfs store (no {layout.FORMAT_FILE} file): "
            "run `expfs init` in the repository"
        ) from None
    if text != str(layout.FORMAT_VERSION):
        raise StoreFormatError(
            f"the store at {root} has format version {text!r}, but this expfs "
            f"reads version {layout.FORMAT_VERSION}: install the expfs release "
            "that wrote it, or move the folder away and run `expfs init`"
        )
    _make_folders(root)
    env = open_environment(
        os.path.join(root, layout.INDEX_DIR), layout.SHARED_DATABASES
    )
    stored = env.get(layout.DB_META, layout.META_FORMAT_KEY)
    if stored is not None and stored.decode() != text:
        raise StoreFormatError(
            f"the store at {root} is inconsistent: {layout.FORMAT_FILE} says "
            f"version {text} but its index says {stored.decode()}; run `expfs fsck`"
        )
    return Store(root, env)


def store_for(start: str = ".") -> Store:
    """Open the store of the repository containing `start`."""
    return open_store(find_store_root(start))
