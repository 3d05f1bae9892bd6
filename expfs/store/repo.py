"""Finding, creating and opening the store of a Git repository."""

from __future__ import annotations

import os
import subprocess

from expfs.errors import NotARepository, StoreFormatError, StoreNotFound
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


def find_store_root(start: str = ".") -> str:
    """Return the `.expfs/` folder of the repository containing `start`.

    Looks upward for an existing `.expfs/` first, so commands work inside
    folders that Git does not see (and without starting `git`).
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

    Running it again on an existing store changes nothing.
    """
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
