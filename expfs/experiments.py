"""The experiment registry: named workspaces over a base snapshot.

An experiment is a JSON record in the `experiments` database of the shared
index (see `expfs.store.layout`), a workspace of the same name, and a Git
worktree of the user's repository at the experiment's base commit. The
worktree has no files of its own: a mount shows a `.git` file pointing at
its git folder, so Git inside the mount compares the experiment with its
base and never touches the user's checkout or index.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from expfs.errors import ExpfsError, UsageError
from expfs.refnames import ref_name_problem
from expfs.store import layout
from expfs.store.objects import Store
from expfs.store.trees import Digest
from expfs.tree.gitsnap import resolve_commit, snapshot_commit, snapshot_worktree

log = logging.getLogger(__name__)

MAX_NAME_BYTES = 100
# Worktrees of experiments live here, one empty folder (but for Git's `.git`
# file) per experiment, so `git worktree prune` keeps their git folders.
WORKTREES_DIR = layout.WORKTREES_DIR
# Worktree indexes already built, one per (base commit, base snapshot).
INDEX_CACHE_DIR = "worktree-index"

STATUS_CREATED = "created"


class ExperimentNotFound(ExpfsError):
    """No experiment of that name exists."""


class ExperimentExists(ExpfsError):
    """An experiment of that name already exists."""


class ExperimentBusy(ExpfsError):
    """The experiment is mounted, so it cannot be removed."""


@dataclass(frozen=True)
class Experiment:
    """One experiment's record."""

    name: str
    base: Digest
    base_commit: str
    created: float
    status: str
    # The git folder of the experiment's worktree (`<repo>/.git/worktrees/ID`),
    # named by the `.git` file a mount shows at its root.
    gitdir: str
    # The `-S` overrides applied in the workspace, as the user wrote them.
    overrides: tuple[str, ...] = ()
    # Params and metrics after the last run: {file: {dotted.key: value}}.
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Snapshot of the workspace after its last run, and when that ran.
    result: str | None = None
    started: float | None = None
    finished: float | None = None
    # Why the last run failed or stopped, for `exp show` and `queue status`.
    error: str = ""

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Experiment:
        fields = json.loads(data)
        known = {k: fields[k] for k in cls.__dataclass_fields__ if k in fields}
        if "overrides" in known:
            known["overrides"] = tuple(known["overrides"])
        return cls(**known)


def validate_name(name: str) -> None:
    """Raise `UsageError` unless `name` can name an experiment.

    A name must pass `git check-ref-format`, and also be one path component
    (it names the mount folder) without '@' (NAME@ID picks one of several
    records of a name) or a leading '-' (it would read as an option).
    """
    problem = ref_name_problem(name) or _folder_name_problem(name)
    if problem is not None:
        raise UsageError(
            f"invalid experiment name {name!r}: {problem}; use letters, digits, "
            "'_', '-' and '.', starting with a letter or digit"
        )


def reject_in_workspace(
    command: str,
    cwd: str,
    other_fix: str = "",
    action: str = "makes experiments from",
) -> None:
    """Raise UsageError when `cwd` is in a mounted experiment's workspace.

    `command` works on the project's checkout (`action` names what it does there), whatever
    folder it runs in, so run inside a workspace it would silently ignore
    the files the user sees there, or change others.
    """
    from expfs.store.repo import mounted_workspace

    mounted = mounted_workspace(cwd)
    if mounted is None:
        return
    raise UsageError(
        f"{os.path.abspath(cwd)} is in the workspace of experiment {mounted.name} "
        f"(mounted at {mounted.mountpoint}), but `expfs {command}` {action} "
        f"the project's checkout {mounted.project}, not this workspace. Run "
        f"`expfs repro` here to run the pipeline in {mounted.name}, or run "
        f"`expfs {command}` in {mounted.project}"
        + (f", {other_fix}" if other_fix else "")
    )


def _folder_name_problem(name: str) -> str | None:
    size = len(os.fsencode(name))
    if "/" in name:
        return "it contains '/', and the name must be one folder name"
    if "@" in name:
        return "it contains '@', which separates a name from its id in NAME@ID"
    if name.startswith("-"):
        return "it starts with '-'"
    if size > MAX_NAME_BYTES:
        return f"it is {size} bytes long (the limit is {MAX_NAME_BYTES})"
    return None


def repo_root(store: Store) -> str:
    return os.path.dirname(os.path.abspath(store.root))


def _db(store: Store) -> Any:
    return store.env.db(layout.DB_EXPERIMENTS)


def get_experiment(store: Store, name: str) -> Experiment:
    """Return the record of experiment `name`, or raise `ExperimentNotFound`."""
    data = store.env.get(layout.DB_EXPERIMENTS, os.fsencode(name))
    if data is None:
        raise ExperimentNotFound(
            f"no experiment named {name!r}: `expfs exp list` shows the existing "
            "ones, `expfs exp new NAME` creates one"
        )
    return Experiment.from_json(data)


def list_experiments(store: Store) -> list[Experiment]:
    """Return every experiment's record, sorted by name."""
    handle = _db(store)

    def collect(txn: object) -> list[bytes]:
        cursor = txn.cursor(db=handle)  # type: ignore[attr-defined]
        return [bytes(value) for _, value in cursor]

    return [Experiment.from_json(v) for v in store.env.read(collect)]


def update_experiment(store: Store, name: str, **changes: Any) -> Experiment:
    """Change fields of experiment `name`'s record in one transaction; return it."""
    key = os.fsencode(name)
    handle = _db(store)

    def write(txn: Any) -> Experiment:
        data = txn.get(key, db=handle)
        if data is None:
            raise ExperimentNotFound(f"experiment {name!r} was removed")
        updated = replace(Experiment.from_json(data), **changes)
        txn.put(key, updated.to_json(), db=handle)
        return updated

    result: Experiment = store.env.write(write)
    return result


def update_experiment_if(
    store: Store, name: str, expected_status: str, **changes: Any
) -> Experiment | None:
    """Change fields of experiment `name` if its status is `expected_status`.

    Returns the changed record, or None when the status differs.

    The check and the change happen in one transaction, so of several
    processes that try, one gets the record and the others get None.
    """
    key = os.fsencode(name)
    handle = _db(store)

    def write(txn: Any) -> Experiment | None:
        data = txn.get(key, db=handle)
        if data is None:
            return None
        current = Experiment.from_json(data)
        if current.status != expected_status:
            return None
        updated = replace(current, **changes)
        txn.put(key, updated.to_json(), db=handle)
        return updated

    result: Experiment | None = store.env.write(write)
    return result


def _put(store: Store, experiment: Experiment) -> None:
    key = os.fsencode(experiment.name)
    store.env.put(layout.DB_EXPERIMENTS, key, experiment.to_json())


def _delete(store: Store, name: str) -> None:
    handle = _db(store)
    store.env.write(lambda txn: txn.delete(os.fsencode(name), db=handle))


def create_experiment(
    store: Store,
    repo: str,
    name: str,
    from_rev: str | None = None,
    *,
    base: Digest | None = None,
    status: str = STATUS_CREATED,
    overrides: tuple[str, ...] = (),
    commit: str | None = None,
    params: dict[str, dict[str, Any]] | None = None,
    start: Digest | None = None,
) -> Experiment:
    """Create experiment `name` from commit `from_rev` or the working tree.

    Without `from_rev` the base is the working tree as the user sees it:
    HEAD plus modified and untracked files that `.gitignore` keeps, plus
    every path the pipeline declares, whole from disk (see `declared_paths`).
    A sweep snapshots once and passes that `base` to every experiment, with
    the `commit` that `from_rev` (or HEAD) names, and the `params` its
    overrides will give, which the run records again once it has read them.
    The workspace starts at snapshot `start` (default: the base), as for an
    experiment pulled from a remote after it ran elsewhere.
    """
    from expfs.workspace import Workspace

    validate_name(name)
    if store.env.get(layout.DB_EXPERIMENTS, os.fsencode(name)) is not None:
        raise ExperimentExists(
            f"an experiment named {name!r} already exists: pick another name or "
            f"remove it first with `expfs exp remove {name}`"
        )
    if commit is None:
        commit = resolve_commit(repo, from_rev or "HEAD")
    if base is None:
        base = snapshot_base(store, repo, from_rev)
    if Workspace.exists(store, name):
        with hold_workspace(store, name):
            log.warning("removing the orphan workspace %s left without a record", name)
            Workspace.remove(store, name)
    Workspace.create(store, name, start or base).close()
    gitdir = None
    try:
        gitdir = add_worktree(
            store, repo, name, commit, from_worktree=from_rev is None, base=base
        )
        experiment = Experiment(
            name,
            base,
            commit,
            time.time(),
            status,
            gitdir,
            overrides=overrides,
            params=params or {},
        )
        _put(store, experiment)
    except BaseException:
        # Ctrl-C or an error half-way leaves neither a worktree nor a
        # workspace that no record names.
        remove_worktree(store, repo, name, gitdir)
        Workspace.remove(store, name)
        raise
    log.info("created experiment %s on base %s (commit %s)", name, base, commit[:12])
    return experiment


def snapshot_base(store: Store, repo: str, from_rev: str | None = None) -> Digest:
    """Snapshot what a new experiment starts from: a commit or the working tree."""
    if from_rev is not None:
        return snapshot_commit(store, repo, resolve_commit(repo, from_rev))
    return snapshot_worktree(store, repo, declared_paths(repo))


def declared_paths(repo: str) -> list[bytes]:
    """Return the existing paths that the pipeline or `.dvc` files declare.

    An experiment takes each of them whole from disk, whether Git tracks
    it, ignores it or has not seen it. DVC users keep data and outputs out
    of Git, and without them the stages would find nothing. Git also
    records neither empty folders nor folder modes, and it leaves out
    ignored files inside a folder. A declared path taken through Git could
    thus differ from the checkout's, and the stages that write or read it
    would run or restore again in the experiment.
    """
    inputs, outputs = _pipeline_paths(repo)
    candidates = inputs | outputs
    candidates.update(_dvc_tracked_paths(repo))
    # The whole project is the base already, and its walk would take in
    # .git and the store.
    candidates -= {".", ""}
    existing = [p for p in sorted(candidates) if os.path.lexists(os.path.join(repo, p))]
    return [os.fsencode(p) for p in existing]


def _pipeline_paths(repo: str) -> tuple[set[str], set[str]]:
    """Return the deps and params files, and the outputs, of the stages in `repo`."""
    from pathlib import Path

    from expfs.errors import ExpfsError
    from expfs.pipeline import load_pipeline

    inputs: set[str] = set()
    outputs: set[str] = set()
    stage_file = Path(repo, "dvc.yaml")
    if not stage_file.exists():
        return inputs, outputs
    try:
        pipeline = load_pipeline(stage_file, repo, check_graph=False)
    except ExpfsError as exc:
        log.warning("cannot read %s for declared paths: %s", stage_file, exc)
        return inputs, outputs
    for stage in pipeline.stages.values():
        inputs.update(d.workspace_path for d in stage.deps)
        inputs.update(p.workspace_path for p in stage.params)
        outputs.update(o.workspace_path for o in stage.outs)
    return inputs, outputs


def _dvc_tracked_paths(repo: str) -> list[str]:
    """Return the paths that `.dvc` files track, relative to `repo`.

    The walk skips `.git`, `.expfs` and DVC's `.dvc` folder, whose object
    caches are the largest trees in a repository and hold no `.dvc` files.
    """
    found = []
    for folder, dirs, files in os.walk(repo):
        dirs[:] = [d for d in dirs if d not in (".git", ".expfs", ".dvc")]
        for name in files:
            if name.endswith(".dvc") and name != ".dvc":
                path = os.path.join(folder, name.removesuffix(".dvc"))
                found.append(os.path.relpath(path, repo))
    return found


def remove_experiment(store: Store, name: str) -> None:
    """Remove experiment `name`: its record, workspace and Git worktree."""
    from expfs.fuse.control import mount_status
    from expfs.workspace import Workspace

    experiment = get_experiment(store, name)
    status = mount_status(store, name)
    if status.state == "mounted":
        raise ExperimentBusy(
            f"experiment {name!r} is mounted at {status.mountpoint} (daemon pid "
            f"{status.pid}): run `expfs umount {name}` first"
        )
    lock = hold_workspace(store, name) if Workspace.exists(store, name) else None
    with lock or contextlib.nullcontext():
        remove_worktree(store, repo_root(store), name, experiment.gitdir)
        if Workspace.exists(store, name):
            Workspace.remove(store, name)
        _delete(store, name)
    log.info("removed experiment %s", name)


def hold_workspace(store: Store, name: str) -> contextlib.AbstractContextManager[int]:
    """Hold the lock of experiment `name`'s workspace, which must exist.

    `repro`, `unprotect` and a stage they started hold it while they write
    there, so a command that would replace or read the whole workspace
    fails at once, naming them, instead (see `expfs.busy`).
    """
    from expfs.busy import workspace_lock
    from expfs.fuse.control import mount_status
    from expfs.workspace import Workspace

    folder = Workspace.folder_of(store, name)
    mount = mount_status(store, name)
    where = mount.mountpoint if mount.state == "mounted" else None
    return workspace_lock(folder, where or f"{folder} (experiment {name})")


# -- the Git worktree a mount links to -----------------------------------------


def _git(repo: str, *args: str, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        ["git", "-C", repo, *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env} if env else None,
    )
    if proc.returncode != 0:
        raise ExpfsError(
            f"git {' '.join(args)} failed in {repo}: {proc.stderr.strip()}"
        )
    return proc.stdout


def worktree_path(store: Store, name: str) -> str:
    return os.path.join(store.root, WORKTREES_DIR, name)


def add_worktree(
    store: Store,
    repo: str,
    name: str,
    commit: str,
    *,
    from_worktree: bool,
    base: str = "",
) -> str:
    """Add a detached, empty Git worktree at `commit`; return its git folder.

    Its index lists the experiment's base: the commit, plus the user's
    uncommitted changes when the base is the working tree, so `git status`
    in a mount shows those as staged and the experiment's own changes as
    not staged. Stage outputs that the user's index does not track stay
    untracked.
    """
    path = worktree_path(store, name)
    if os.path.lexists(path):
        remove_worktree(store, repo, name, None)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    _git(
        repo,
        "worktree",
        "add",
        "--detach",
        "--no-checkout",
        "--lock",
        "--reason",
        f"expfs experiment {name}",
        path,
        commit,
    )
    # The `.git` file git just wrote names the git folder; git is asked only
    # when that path is relative (worktree.useRelativePaths) or missing.
    gitdir = _gitdir_of(path) or ""
    if not os.path.isabs(gitdir):
        gitdir = _git(path, "rev-parse", "--absolute-git-dir").strip()
    index = os.path.join(gitdir, "index")
    cached = _cached_index_path(store, commit, base, from_worktree)
    if os.path.exists(cached):
        shutil.copyfile(cached, index)
        return gitdir
    if from_worktree:
        _stage_working_tree(repo, index)
    else:
        _git(repo, "read-tree", commit, env={"GIT_INDEX_FILE": index})
    temp = f"{cached}.{os.getpid()}.tmp"
    shutil.copyfile(index, temp)
    os.rename(temp, cached)
    return gitdir


def _cached_index_path(
    store: Store, commit: str, base: str, from_worktree: bool
) -> str:
    """Return where the worktree index of (commit, base snapshot) is kept.

    Building an index costs time in the number of files (`git add -A` over
    the user's checkout), so it is built once per base and copied for every
    other experiment of that base: a sweep pays for it once.
    """
    folder = os.path.join(store.root, INDEX_CACHE_DIR)
    os.makedirs(folder, mode=0o700, exist_ok=True)
    kind = "worktree" if from_worktree else "commit"
    return os.path.join(folder, f"{commit}-{base}-{kind}.index")


def _stage_working_tree(repo: str, index: str) -> None:
    """Write into `index` what `git add -A` would stage in the user's checkout.

    Starting from a copy of the user's index lets Git skip hashing files
    whose stat data did not change.
    """
    user_index = _git(repo, "rev-parse", "--git-path", "index").strip()
    user_index = os.path.join(repo, user_index)
    if os.path.exists(user_index):
        shutil.copyfile(user_index, index)
    else:
        _git(repo, "read-tree", "HEAD", env={"GIT_INDEX_FILE": index})
    untracked = _untracked_outputs(repo, index)
    # `git add` fails when a pathspec names an ignored path, even one that
    # excludes it; ignored outputs stay out of the index without one.
    ignored = _ignored(repo, untracked, index)
    excluded = [f":(exclude,literal){p}" for p in untracked if p not in ignored]
    _git(repo, "add", "-A", "--", ".", *excluded, env={"GIT_INDEX_FILE": index})


def _ignored(repo: str, paths: list[str], index: str) -> set[str]:
    """Return which of `paths` Git ignores, given the index file `index`."""
    if not paths:
        return set()
    proc = subprocess.run(
        ["git", "-C", repo, "check-ignore", "-z", "--stdin"],
        input="\0".join(paths) + "\0",
        capture_output=True,
        text=True,
        env={**os.environ, "GIT_INDEX_FILE": index},
    )
    if proc.returncode not in (0, 1):  # 1: none of them is ignored
        raise ExpfsError(f"git check-ignore failed in {repo}: {proc.stderr.strip()}")
    return {p for p in proc.stdout.split("\0") if p}


def _untracked_outputs(repo: str, index: str) -> list[str]:
    """Return the stage outputs that have no file in the Git index file `index`.

    Such outputs stay untracked in the experiment, as in the checkout: a
    stage whose output Git tracks is rejected, because a run deletes it.
    """
    _, outputs = _pipeline_paths(repo)
    if not outputs:
        return []
    listed = _git(
        repo,
        "--literal-pathspecs",
        "ls-files",
        "-z",
        "--",
        *sorted(outputs),
        env={"GIT_INDEX_FILE": index},
    )
    tracked = [p for p in listed.split("\0") if p]
    return [
        out
        for out in sorted(outputs)
        if not any(t == out or t.startswith(out + "/") for t in tracked)
    ]


def remove_worktree(store: Store, repo: str, name: str, gitdir: str | None) -> None:
    """Remove the experiment's Git worktree and its git folder, if present."""
    path = worktree_path(store, name)
    if not gitdir:
        gitdir = _gitdir_of(path)
    shutil.rmtree(path, ignore_errors=True)
    if gitdir and os.path.isdir(gitdir):
        shutil.rmtree(gitdir, ignore_errors=True)
    subprocess.run(["git", "-C", repo, "worktree", "prune"], capture_output=True)


def _gitdir_of(worktree: str) -> str | None:
    """Read the git folder a worktree's `.git` file names, if there is one."""
    try:
        with open(os.path.join(worktree, ".git")) as f:
            text = f.read().strip()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None
    prefix = "gitdir: "
    return text[len(prefix) :] if text.startswith(prefix) else None
