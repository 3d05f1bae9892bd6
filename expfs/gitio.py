"""Promote experiments into Git, apply them to the checkout, restore outputs.

Everything here runs the `git` program. Promotion works in a separate `git
worktree` on a new branch, so the user's checkout, index and HEAD are never
touched. Git runs with the user's identity but with the settings that would
change the committed result pinned (`GIT_ISOLATION`): no line-ending
conversion, no hooks, no global attributes (filters, merge drivers), no
signing.

What a promoted commit holds:

- every file the experiment changed against its base commit, as Git content,
  unless `.gitignore` excludes it;
- the lock file `expfs.lock`, which names each cached output with its
  digest. An output that Git ignores, or one larger than `max_git_bytes`,
  is not committed: its bytes stay in the store (gc keeps what any branch's
  or tag's lock file names) and `expfs checkout` writes it back. A large
  output that Git does not ignore is added to the `.gitignore` of its folder
  in the commit, so a checkout of the branch shows a clean status;
- params and metrics in the commit message.

Commits made with git inside the experiment's mount stay below the
promotion commit on the branch when the promoted files contain their
changes (see `commits_in_mount`); otherwise the branch starts at the base
commit and the command prints why they were not carried.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from expfs.busy import checkout_state_dir, workspace_lock
from expfs.errors import ExpfsError, MissingObject, StoreNotFound, UsageError
from expfs.experiments import Experiment, get_experiment, repo_root
from expfs.refnames import ref_name_problem
from expfs.remote.lazy import ensure_local
from expfs.repro.checkout import CheckoutWriter, configured_link_types, remove_path
from expfs.repro.lockfile import LOCK_NAME, LockedStage
from expfs.runcache import OutputRecord
from expfs.store.lazy import is_available
from expfs.store.objects import Store
from expfs.store.trees import Digest, Entry, Kind
from expfs.text import plural
from expfs.tree.diff import Change, Status, diff_trees
from expfs.tree.materialize import Materializer, materialize

log = logging.getLogger(__name__)

# Settings given to every git command (`git -c`). They win over the user's
# and the repository's configuration, so promotion commits the same bytes
# whatever those contain.
GIT_ISOLATION = (
    "core.autocrlf=false",
    "core.safecrlf=false",
    "core.hooksPath=/dev/null",
    "core.attributesFile=/dev/null",
    "core.fsmonitor=false",
    "core.filemode=true",
    "core.symlinks=true",
    "commit.gpgsign=false",
    "tag.gpgsign=false",
    "advice.detachedHead=false",
)
# Environment variables that would point git at another repository or index.
_GIT_LOCATION_VARS = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_PREFIX")

# Outputs larger than this stay out of Git content even when Git does not
# ignore them. The store keeps them and the lock file names them.
DEFAULT_MAX_GIT_BYTES = 10 << 20
# Temporary worktrees of `exp promote` without --worktree, under the store.
PROMOTE_DIR = "promote"
# Records of `exp apply` backups (JSON, one file each), under the store.
BACKUPS_DIR = "backups"


class GitError(ExpfsError):
    """A git command failed."""


class BranchExists(ExpfsError):
    """The branch or tag that promotion would create exists already."""


class NothingToPromote(ExpfsError):
    """The experiment has no changes against its base commit."""


class ApplyConflict(ExpfsError):
    """Paths that the experiment changed were also changed in the checkout."""

    def __init__(self, name: str, paths: Sequence[str]) -> None:
        listing = "\n".join(f"  {p}" for p in paths)
        super().__init__(
            f"experiment {name!r} changes {plural(len(paths), 'path')} that "
            f"{'was' if len(paths) == 1 else 'were'} also changed in the working "
            f"tree since the experiment was created:\n{listing}\n"
            "commit or stash those changes first, or pass --force to overwrite them "
            "(a backup is kept either way)"
        )
        self.paths = list(paths)


# -- running git -----------------------------------------------------------------


def git_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in _GIT_LOCATION_VARS}


def run_git(
    cwd: str,
    *args: str,
    input: bytes | None = None,
    ok_codes: tuple[int, ...] = (0,),
) -> subprocess.CompletedProcess[bytes]:
    """Run git in `cwd` with `GIT_ISOLATION`; raise `GitError` on other exit codes."""
    pinned = [part for setting in GIT_ISOLATION for part in ("-c", setting)]
    try:
        proc = subprocess.run(
            ["git", *pinned, "-C", cwd, *args],
            input=input,
            capture_output=True,
            env=git_env(),
        )
    except FileNotFoundError:
        raise GitError("the `git` program is not installed: install Git") from None
    if proc.returncode not in ok_codes:
        message = proc.stderr.decode(errors="replace").strip()
        raise GitError(f"git {' '.join(args)} failed in {cwd}: {message}")
    return proc


def git_text(cwd: str, *args: str) -> str:
    return run_git(cwd, *args).stdout.decode().strip()


def ref_exists(repo: str, ref: str) -> str | None:
    """Return the commit `ref` names, or None."""
    proc = run_git(repo, "rev-parse", "--verify", "-q", ref, ok_codes=(0, 1))
    return proc.stdout.decode().strip() or None


# -- which snapshot an experiment stands for -------------------------------------


def experiment_snapshot(store: Store, experiment: Experiment, current: bool) -> Digest:
    """Return the experiment's result, or its workspace's state now.

    The current state is used when `current` is set or the experiment never
    ran. A mounted workspace is snapshotted by its daemon, which flushes the
    kernel's caches first. Every caller writes the snapshot out, so blobs
    that a lazy restore left on a remote are fetched before it returns.
    """
    snapshot = _snapshot_of(store, experiment, current)
    ensure_local(store, Kind.DIRECTORY, snapshot)
    return snapshot


def _snapshot_of(store: Store, experiment: Experiment, current: bool) -> Digest:
    if experiment.result and not current:
        if not store.has_tree(experiment.result):
            raise MissingObject(experiment.result, f"experiment {experiment.name!r}")
        return Digest(experiment.result)
    from expfs.experiments import hold_workspace
    from expfs.fuse.control import ControlClient, mount_status
    from expfs.workspace import Workspace

    # A repro running in the workspace would leave some outputs old and
    # some new in the snapshot, so this waits for no writer: it fails at once.
    with hold_workspace(store, experiment.name):
        if mount_status(store, experiment.name).state == "mounted":
            with ControlClient(store.root, experiment.name, timeout_s=None) as client:
                return client.snapshot()
        workspace = Workspace.open(store, experiment.name)
        try:
            return workspace.snapshot()
        finally:
            workspace.close()


# -- lock files inside a snapshot ------------------------------------------------


def entry_at(store: Store, root: str, path: str) -> Entry | None:
    """Return the entry at relative `path` inside snapshot `root`, or None."""
    from expfs.repro.place import entry_at as find

    return find(store, Digest(root), path)


def parse_lock(data: bytes, where: str) -> list[OutputRecord]:
    """Return the outputs that lock file content `data` names, for every stage."""
    try:
        document = yaml.safe_load(data) or {}
    except yaml.YAMLError as exc:
        raise UsageError(f"{where} is not valid YAML ({exc})") from exc
    stages = document.get("stages") if isinstance(document, dict) else None
    outputs: list[OutputRecord] = []
    for name, entry in (stages or {}).items():
        if isinstance(entry, dict):
            outputs += LockedStage.from_yaml(entry, f"{where}: stage {name}").outs
    return outputs


def snapshot_outputs(
    store: Store, root: str, lock_paths: Iterable[str]
) -> list[OutputRecord]:
    """Return the cached outputs named by the lock files present in snapshot `root`."""
    outputs: dict[str, OutputRecord] = {}
    for lock_path in sorted(set(lock_paths)):
        entry = entry_at(store, root, lock_path)
        if entry is None or entry.kind is not Kind.FILE:
            continue
        data = store.read_blob(entry.digest)
        for out in parse_lock(data, f"{lock_path} in snapshot {root[:12]}"):
            if out.cache:
                outputs[out.path] = out
    return list(outputs.values())


def _committed_lock_paths(repo: str, commit: str) -> list[str]:
    out = run_git(repo, "ls-tree", "-r", "-z", "--name-only", commit).stdout
    names = [os.fsdecode(p) for p in out.split(b"\0") if p]
    return [p for p in names if os.path.basename(p) == LOCK_NAME]


def _owning_output(path: str, outputs: dict[str, OutputRecord]) -> str | None:
    """Return the output path that is `path` or a folder above it."""
    probe = path
    while probe:
        if probe in outputs:
            return probe
        probe = os.path.dirname(probe)
    return None


# -- promote ---------------------------------------------------------------------


@dataclass
class PromoteResult:
    branch: str
    commit: str
    snapshot: Digest
    tag: str | None = None
    # The worktree left in place (--worktree), or None when it was removed.
    worktree: str | None = None
    # Outputs kept in the store instead of Git: path -> why ("ignored", "large").
    stored_outputs: dict[str, str] = field(default_factory=dict)
    files_written: int = 0
    # Commits made with git inside the experiment's mount, now on the branch
    # below the promotion commit, oldest first.
    carried_commits: list[str] = field(default_factory=list)
    # Why commits made inside the mount were not carried, or "".
    commits_left: str = ""


def check_new_branch(repo: str, branch: str, tag: str | None) -> None:
    """Raise unless `branch` (and `tag`) are valid names that do not exist yet."""
    problem = ref_name_problem(branch)
    if problem is None and branch.startswith("-"):
        problem = "it starts with '-'"
    if problem is None:
        proc = run_git(
            repo, "check-ref-format", "--branch", branch, ok_codes=(0, 1, 128)
        )
        if proc.returncode != 0:
            problem = "`git check-ref-format --branch` rejects it"
    if problem is not None:
        raise UsageError(
            f"invalid branch name {branch!r}: {problem}; give another --branch "
            "(see `git help check-ref-format`)"
        )
    existing = ref_exists(repo, f"refs/heads/{branch}")
    if existing is not None:
        raise BranchExists(
            f"branch {branch!r} exists already (at {existing[:12]}): choose another "
            f"name with --branch, or delete it first with `git branch -D {branch}`"
        )
    if tag is None:
        return
    problem = ref_name_problem(tag)
    if (
        problem is None
        and run_git(
            repo, "check-ref-format", f"refs/tags/{tag}", ok_codes=(0, 1)
        ).returncode
    ):
        problem = "`git check-ref-format` rejects it"
    if problem is not None:
        raise UsageError(
            f"invalid tag name {tag!r}: {problem}; give another --tag "
            "(see `git help check-ref-format`)"
        )
    existing = ref_exists(repo, f"refs/tags/{tag}")
    if existing is not None:
        raise BranchExists(
            f"tag {tag!r} exists already (at {existing[:12]}): choose another name "
            f"with --tag, or delete it first with `git tag -d {tag}`"
        )


# Statuses of experiments without a finished run, which need --current to promote.
UNFINISHED = ("failed", "stopped", "queued", "running")


def promote(
    store: Store,
    name: str,
    branch: str,
    *,
    worktree: str | None = None,
    tag: str | None = None,
    current: bool = False,
    max_git_bytes: int = DEFAULT_MAX_GIT_BYTES,
) -> PromoteResult:
    """Commit experiment `name` on a new branch `branch` from its base commit."""
    experiment = get_experiment(store, name)
    if experiment.status in UNFINISHED and not current:
        raise UsageError(
            f"experiment {name!r} is {experiment.status}"
            + (f" ({experiment.error})" if experiment.error else "")
            + ": promote a successful experiment, or pass --current to commit "
            "its workspace as it is"
        )
    repo = repo_root(store)
    check_new_branch(repo, branch, tag)
    if worktree is not None and os.path.lexists(worktree):
        if not os.path.isdir(worktree) or os.listdir(worktree):
            raise UsageError(
                f"{worktree} exists and is not an empty folder: give a new path "
                "with --worktree"
            )
    snapshot = experiment_snapshot(store, experiment, current)
    start, carried, left = commits_in_mount(store, repo, experiment, snapshot)
    changes = _changes_against_commit(
        store, repo, experiment, snapshot, start, allow_none=bool(carried)
    )

    keep = worktree is not None
    if worktree is not None:
        path = os.path.abspath(worktree)
    else:
        path = _temporary_worktree_path(store, name)
    run_git(repo, "worktree", "add", "-q", "-b", branch, path, start)
    result = PromoteResult(branch, "", snapshot, tag, path if keep else None)
    result.carried_commits, result.commits_left = carried, left
    try:
        # `checkout` or `repro` in the new worktree fails until the commit is made.
        with workspace_lock(checkout_state_dir(store.root, path), path):
            _commit_promotion(
                store, path, experiment, snapshot, changes, max_git_bytes, result
            )
    except BaseException:
        _remove_worktree(repo, path, temporary=not keep)
        run_git(repo, "branch", "-D", branch, ok_codes=(0, 1))
        raise
    if not keep:
        _remove_worktree(repo, path, temporary=True)
    log.info("promoted experiment %s to %s (%s)", name, branch, result.commit[:12])
    return result


def _commit_promotion(
    store: Store,
    path: str,
    experiment: Experiment,
    snapshot: Digest,
    changes: list[Change],
    max_git_bytes: int,
    result: PromoteResult,
) -> None:
    """Write the experiment into worktree `path` and commit it there."""
    name = experiment.name
    _fill_worktree(store, path, experiment, snapshot, changes, max_git_bytes, result)
    run_git(path, "add", "-A")
    staged = run_git(path, "diff", "--cached", "--quiet", ok_codes=(0, 1))
    if staged.returncode == 0 and not result.carried_commits:
        raise NothingToPromote(
            f"experiment {name!r} changes only files that Git ignores and no "
            "output is recorded in expfs.lock: nothing to commit"
        )
    message = commit_message(experiment, snapshot, result.stored_outputs)
    # With carried commits and nothing left to add, the commit is empty
    # but still records the params and metrics.
    run_git(
        path,
        "commit",
        "-q",
        "--no-verify",
        "--allow-empty",
        "-F",
        "-",
        input=message.encode(),
    )
    result.commit = git_text(path, "rev-parse", "HEAD")
    if result.tag is not None:
        run_git(path, "tag", "-a", result.tag, "-m", f"expfs experiment {name}")


def commits_in_mount(
    store: Store, repo: str, experiment: Experiment, snapshot: Digest
) -> tuple[str, list[str], str]:
    """Return the commit to promote onto, the commits made inside the mount, and
    why those commits are left out ("" when they are carried or there are none).

    Git inside a mount commits to the experiment's own worktree, whose HEAD
    starts at the base commit. Those commits are carried (the branch starts
    at that HEAD) when they descend from the base commit and `snapshot`, the
    files being promoted, still contains a change at every path they changed.
    Otherwise (HEAD reset or moved to another branch, or commits made after
    the run whose result is promoted) the branch starts at the base commit.
    """
    base = experiment.base_commit
    if not experiment.gitdir or not os.path.isdir(experiment.gitdir):
        return base, [], ""
    head = run_git(
        repo,
        "--git-dir",
        experiment.gitdir,
        "rev-parse",
        "--verify",
        "-q",
        "HEAD^{commit}",
        ok_codes=(0, 1, 128),
    )
    head_commit = head.stdout.decode().strip()
    if head.returncode != 0 or not head_commit or head_commit == base:
        return base, [], ""
    ancestor = run_git(
        repo, "merge-base", "--is-ancestor", base, head_commit, ok_codes=(0, 1)
    )
    if ancestor.returncode != 0:
        return (
            base,
            [],
            f"the mount's Git HEAD {head_commit[:12]} does not descend from the "
            f"base commit {base[:12]}",
        )
    missing = _commit_changes_missing(store, repo, base, head_commit, snapshot)
    if missing:
        return (
            base,
            [],
            f"the files promoted lack what the mount's commits changed in "
            f"{', '.join(missing[:5])} (commit after the run and promote with "
            "--current to keep them)",
        )
    listed = git_text(repo, "rev-list", "--reverse", f"{base}..{head_commit}")
    return head_commit, listed.split(), ""


def _commit_changes_missing(
    store: Store, repo: str, base: str, head: str, snapshot: Digest
) -> list[str]:
    """Return the paths that commits base..head changed but `snapshot` has as in base."""
    from expfs.tree.gitsnap import snapshot_commit

    base_tree = snapshot_commit(store, repo, base)
    committed = {
        c.path for c in diff_trees(store, base_tree, snapshot_commit(store, repo, head))
    }
    promoted = {c.path for c in diff_trees(store, base_tree, snapshot)}
    return sorted(os.fsdecode(p) for p in committed - promoted)


def _changes_against_commit(
    store: Store,
    repo: str,
    experiment: Experiment,
    snapshot: Digest,
    commit: str,
    allow_none: bool = False,
) -> list[Change]:
    from expfs.tree.gitsnap import snapshot_commit

    base_tree = snapshot_commit(store, repo, commit)
    changes = list(diff_trees(store, base_tree, snapshot))
    if not changes and not allow_none:
        raise NothingToPromote(
            f"experiment {experiment.name!r} has no changes against its base commit "
            f"{experiment.base_commit[:12]}: run it or change files in its mount first"
        )
    return changes


def _temporary_worktree_path(store: Store, name: str) -> str:
    parent = os.path.join(store.root, PROMOTE_DIR)
    os.makedirs(parent, mode=0o700, exist_ok=True)
    return os.path.join(tempfile.mkdtemp(prefix=f"{name}-", dir=parent), "tree")


def _remove_worktree(repo: str, path: str, *, temporary: bool) -> None:
    """Remove a promotion worktree; a temporary one goes with its parent folder."""
    run_git(repo, "worktree", "remove", "--force", path, ok_codes=(0, 128))
    if temporary:
        shutil.rmtree(os.path.dirname(path), ignore_errors=True)
    run_git(repo, "worktree", "prune", ok_codes=(0, 128))


def _fill_worktree(
    store: Store,
    path: str,
    experiment: Experiment,
    snapshot: Digest,
    changes: list[Change],
    max_git_bytes: int,
    result: PromoteResult,
) -> None:
    """Write the experiment's changes into a checkout of its base commit.

    `.gitignore` files go first, so that Git's ignore rules of the result
    decide which of the other paths are Git content.
    """
    lock_paths = _committed_lock_paths(path, "HEAD")
    lock_paths += [
        os.fsdecode(c.path)
        for c in changes
        if os.path.basename(c.path) == LOCK_NAME.encode()
    ]
    outputs = {o.path: o for o in snapshot_outputs(store, snapshot, lock_paths)}
    writer = Materializer(store, "copy", ensure=ensure_local)
    root = os.fsencode(path)
    first = [c for c in changes if os.path.basename(c.path) == b".gitignore"]
    for change in first:
        _write_change(writer, root, change)

    rest = [c for c in changes if os.path.basename(c.path) != b".gitignore"]
    queries = {os.fsdecode(c.path) for c in rest if c.new is not None}
    for out_path, out in outputs.items():
        queries.add(out_path + "/" if out.kind == Kind.DIRECTORY else out_path)
    ignored = _ignored(path, queries)
    decisions = {
        out_path: _output_decision(out, out_path, ignored, max_git_bytes)
        for out_path, out in outputs.items()
    }
    for out_path, why in decisions.items():
        if why:
            result.stored_outputs[out_path] = why
        if why == "large":
            _exclude_large_output(path, out_path)

    for change in rest:
        rel = os.fsdecode(change.path)
        owner = _owning_output(rel, outputs)
        if owner is not None and decisions[owner]:
            continue
        if change.new is not None and rel in ignored:
            continue
        _write_change(writer, root, change)
    result.files_written = writer.files
    missing = [p for p in outputs if entry_at(store, snapshot, p) is None]
    if missing:
        log.warning(
            "experiment %s: expfs.lock names outputs missing from its snapshot: %s",
            experiment.name,
            ", ".join(missing),
        )


def _output_decision(
    out: OutputRecord, out_path: str, ignored: set[str], max_git_bytes: int
) -> str:
    """Return why an output stays out of Git ("ignored", "large"), or ""."""
    query = out_path + "/" if out.kind == Kind.DIRECTORY else out_path
    if query in ignored:
        return "ignored"
    if out.size > max_git_bytes:
        return "large"
    return ""


def _ignored(worktree: str, paths: Iterable[str]) -> set[str]:
    """Return those of `paths` that Git ignores in `worktree` (tracked ones never)."""
    listed = sorted(paths)
    if not listed:
        return set()
    stdin = b"".join(os.fsencode(p) + b"\0" for p in listed)
    proc = run_git(
        worktree, "check-ignore", "-z", "--stdin", input=stdin, ok_codes=(0, 1)
    )
    return {os.fsdecode(p) for p in proc.stdout.split(b"\0") if p}


def _exclude_large_output(worktree: str, out_path: str) -> None:
    """Add a large output to its folder's .gitignore and drop it from the index."""
    folder, name = os.path.split(out_path)
    ignore_file = os.path.join(worktree, folder, ".gitignore")
    os.makedirs(os.path.dirname(ignore_file), exist_ok=True)
    line = "/" + name.replace("\\", "\\\\").replace("*", "\\*").replace("?", "\\?")
    existing = ""
    if os.path.exists(ignore_file):
        with open(ignore_file) as f:
            existing = f.read()
    if line not in existing.splitlines():
        with open(ignore_file, "a") as f:
            if existing and not existing.endswith("\n"):
                f.write("\n")
            f.write(f"{line}\n")
    run_git(worktree, "rm", "-r", "-q", "--cached", "--ignore-unmatch", "--", out_path)
    _remove_path(os.path.join(os.fsencode(worktree), os.fsencode(out_path)))


def _remove_path(path: bytes) -> None:
    remove_path(path)


def _write_change(writer: Materializer, root: bytes, change: Change) -> None:
    """Make `root/change.path` match the new side of the change."""
    target = os.path.join(root, change.path)
    if change.new is None:
        _remove_path(target)
        _prune_empty_parents(root, os.path.dirname(target))
        return
    _remove_path(target)
    parent = os.path.dirname(target)
    if os.path.lexists(parent) and not os.path.isdir(parent):
        os.unlink(parent)
    os.makedirs(parent, exist_ok=True)
    writer.write_entry(change.new, target)


def _prune_empty_parents(root: bytes, folder: bytes) -> None:
    while folder != root and folder.startswith(root):
        try:
            os.rmdir(folder)
        except OSError:
            return
        folder = os.path.dirname(folder)


def commit_message(
    experiment: Experiment, snapshot: Digest, stored: dict[str, str]
) -> str:
    """Return the commit message: subject, params, metrics and trailers."""
    lines = [f"Promote experiment {experiment.name}", ""]
    if experiment.params:
        lines += ["Params:", *_nested_lines(experiment.params), ""]
    elif experiment.overrides:
        lines += ["Params overrides:", *(f"  {o}" for o in experiment.overrides), ""]
    if experiment.metrics:
        lines += ["Metrics:", *_nested_lines(experiment.metrics), ""]
    if stored:
        lines.append("Outputs kept in the expfs store (see expfs.lock):")
        lines += [f"  {path} ({why})" for path, why in sorted(stored.items())]
        lines.append("")
    lines += [
        f"Expfs-Experiment: {experiment.name}",
        f"Expfs-Snapshot: {snapshot}",
        f"Expfs-Base: {experiment.base_commit}",
    ]
    return "\n".join(lines) + "\n"


def _nested_lines(values: dict[str, dict[str, Any]]) -> list[str]:
    lines = []
    for file, keys in sorted(values.items()):
        pairs = ", ".join(f"{k}={json.dumps(v)}" for k, v in sorted(keys.items()))
        lines.append(f"  {file}: {pairs}")
    return lines


def promote_into(
    store: Store,
    name: str,
    folder: str,
    *,
    link: str = "copy",
    current: bool = False,
    force: bool = False,
) -> tuple[str, Digest]:
    """Write experiment `name`'s snapshot to `folder/name`; return (path, snapshot)."""
    experiment = get_experiment(store, name)
    snapshot = experiment_snapshot(store, experiment, current)
    target = os.path.join(os.path.abspath(folder), name)
    materialize(store, snapshot, target, link=link, force=force, ensure=ensure_local)
    return target, snapshot


# -- apply -----------------------------------------------------------------------


@dataclass
class ApplyResult:
    snapshot: Digest
    written: list[str] = field(default_factory=list)
    already: list[str] = field(default_factory=list)
    overwritten: list[str] = field(default_factory=list)
    backup: str | None = None


@dataclass(frozen=True)
class _State:
    kind: Kind
    digest: str
    executable: bool


def _state_of_entry(entry: Entry | None) -> _State | None:
    if entry is None:
        return None
    if entry.kind is Kind.DIRECTORY:
        return _State(Kind.DIRECTORY, entry.digest, False)
    return _State(entry.kind, entry.digest, bool(entry.mode & 0o111))


def _state_on_disk(store: Store, path: str) -> _State | None | str:
    """Return the state of `path` in the checkout; "unreadable" when a parent is no folder."""
    from expfs.tree.fingerprint import fingerprint_path

    try:
        found = fingerprint_path(store, path)
    except (NotADirectoryError, FileNotFoundError):
        return "unreadable"
    if found is None:
        return None
    if found.kind is Kind.DIRECTORY:
        # Only empty folders are changes of their own; compare them as empty.
        return _State(Kind.DIRECTORY, found.digest, False)
    return _State(found.kind, found.digest, bool(found.mode & 0o111))


def apply(
    store: Store, name: str, *, force: bool = False, current: bool = False
) -> ApplyResult:
    """Write the changes of experiment `name` into the user's working tree.

    Only paths the experiment changed (its base against its snapshot) are
    written. A path whose content in the checkout is neither the base's nor
    the experiment's was changed on both sides: apply raises `ApplyConflict`
    listing them, unless `force`. The previous state of every path it writes
    is saved first as a backup snapshot (see `undo_apply`).
    """
    experiment = get_experiment(store, name)
    snapshot = experiment_snapshot(store, experiment, current)
    repo = repo_root(store)
    result = ApplyResult(snapshot)
    to_write: list[Change] = []
    conflicts: list[str] = []
    for change in diff_trees(store, experiment.base, snapshot):
        rel = os.fsdecode(change.path)
        now = _state_on_disk(store, os.path.join(repo, rel))
        if now == _state_of_entry(change.new):
            result.already.append(rel)
            continue
        if now != _state_of_entry(change.old):
            conflicts.append(rel)
            if not force:
                continue
            result.overwritten.append(rel)
        to_write.append(change)
    if conflicts and not force:
        raise ApplyConflict(name, conflicts)
    if not to_write:
        return result
    paths = [os.fsdecode(c.path) for c in to_write]
    result.backup = save_backup(store, repo, name, paths)
    writer = Materializer(store, "copy", ensure=ensure_local)
    root = os.fsencode(repo)
    for change in to_write:
        _write_change(writer, root, change)
        result.written.append(os.fsdecode(change.path))
    log.info("applied experiment %s: %s written", name, plural(len(to_write), "path"))
    return result


def backups_dir(store: Store) -> str:
    return os.path.join(store.root, BACKUPS_DIR)


def save_backup(store: Store, repo: str, name: str, paths: list[str]) -> str:
    """Snapshot the current state of `paths` in the checkout; return the backup id.

    The record (`<store>/backups/<id>.json`) lists every path, so undoing
    also removes paths that did not exist before. gc keeps the snapshot
    while the record exists.
    """
    from expfs.tree.build import build_trees
    from expfs.tree.snapshot import store_files, store_symlinks, walk_folder

    root = os.fsencode(repo)
    files: dict[bytes, os.stat_result] = {}
    links: dict[bytes, os.stat_result] = {}
    dir_modes: dict[bytes, int] = {}
    for rel in map(os.fsencode, paths):
        target = os.path.join(root, rel)
        try:
            st = os.lstat(target)
        except (FileNotFoundError, NotADirectoryError):
            continue
        if stat.S_ISDIR(st.st_mode):
            listing = walk_folder(target)
            files.update({os.path.join(rel, p): s for p, s in listing.files.items()})
            links.update({os.path.join(rel, p): s for p, s in listing.symlinks.items()})
            dir_modes.update(
                {os.path.join(rel, p): m for p, m in listing.dir_modes.items()}
            )
            dir_modes[rel] = stat.S_IMODE(st.st_mode)
        elif stat.S_ISLNK(st.st_mode):
            links[rel] = st
        elif stat.S_ISREG(st.st_mode):
            files[rel] = st
    entries = store_files(store, root, files)
    entries.update(store_symlinks(store, root, links))
    tree = build_trees(store, entries, dir_modes, dir_modes)
    backup_id = time.strftime("%Y%m%d-%H%M%S") + f"-{name}"
    folder = backups_dir(store)
    os.makedirs(folder, mode=0o700, exist_ok=True)
    while os.path.exists(os.path.join(folder, f"{backup_id}.json")):
        backup_id += "+"
    record = {
        "experiment": name,
        "snapshot": tree,
        "paths": paths,
        "created": time.time(),
    }
    temp = os.path.join(folder, f".{backup_id}.tmp")
    with open(temp, "w") as f:
        json.dump(record, f)
        f.flush()
        os.fsync(f.fileno())
    os.rename(temp, os.path.join(folder, f"{backup_id}.json"))
    return backup_id


def list_backups(store: Store) -> list[tuple[str, dict[str, Any]]]:
    """Return (id, record) of every apply backup, oldest first."""
    folder = backups_dir(store)
    try:
        names = sorted(n for n in os.listdir(folder) if n.endswith(".json"))
    except FileNotFoundError:
        return []
    found = []
    for file_name in names:
        with open(os.path.join(folder, file_name)) as f:
            found.append((file_name[: -len(".json")], json.load(f)))
    return found


def undo_apply(store: Store, backup_id: str | None = None) -> tuple[str, list[str]]:
    """Put back the paths an apply wrote, from its backup; return (id, paths).

    Without `backup_id` the latest backup is used. The backup record is
    removed afterwards.
    """
    backups = dict(list_backups(store))
    if not backups:
        raise UsageError("no apply backups to undo: `expfs exp apply` saves one")
    chosen = backup_id or max(backups)
    if chosen not in backups:
        raise UsageError(
            f"no apply backup {chosen!r}: the backups are {', '.join(sorted(backups))}"
        )
    record = backups[chosen]
    snapshot = Digest(record["snapshot"])
    root = os.fsencode(repo_root(store))
    writer = Materializer(store, "copy", ensure=ensure_local)
    for rel in record["paths"]:
        saved = entry_at(store, snapshot, rel)
        _write_change(
            writer, root, Change(Status.MODIFIED, os.fsencode(rel), None, saved)
        )
    os.unlink(os.path.join(backups_dir(store), f"{chosen}.json"))
    return chosen, list(record["paths"])


# -- checkout --------------------------------------------------------------------


@dataclass
class CheckoutResult:
    worktree: str
    restored: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


def store_for_worktree(start: str) -> tuple[Store, str]:
    """Return the store for the Git work tree containing `start`, and its root.

    A worktree outside the main repository (`exp promote --worktree /elsewhere`)
    has no `.expfs/` above it, so the store of the repository that owns its
    Git folder is used.
    """
    from expfs.store.repo import git_toplevel, open_store, store_for

    top = git_toplevel(start)
    try:
        return store_for(top), top
    except StoreNotFound:
        common = git_text(
            top, "rev-parse", "--path-format=absolute", "--git-common-dir"
        )
        owner = os.path.dirname(common)
        return open_store(os.path.join(owner, ".expfs")), top


def worktree_lock_files(worktree: str) -> list[str]:
    """Return the relative paths of the lock files in a checkout."""
    out = run_git(
        worktree, "ls-files", "-z", "--cached", "--others", "--exclude-standard"
    ).stdout
    found = [os.fsdecode(p) for p in out.split(b"\0") if p]
    found = [p for p in found if os.path.basename(p) == LOCK_NAME]
    if os.path.exists(os.path.join(worktree, LOCK_NAME)) and LOCK_NAME not in found:
        found.append(LOCK_NAME)
    return sorted(p for p in set(found) if os.path.isfile(os.path.join(worktree, p)))


def checkout(
    store: Store, worktree: str, *, link_types: Sequence[str] | None = None
) -> CheckoutResult:
    """Write the outputs named by the lock files of `worktree` from the store.

    Files are written with `link_types` (a list tried in order per file, as
    `expfs repro` restores), by default `[cache] type` of the store's
    config. Outputs whose content and mode already match are left alone.
    Every blob is checked as `expfs repro` checks it: hashed, unless its
    verification mark shows that it is unchanged since it was last hashed.
    An output whose objects are gone is listed in `missing` and the others
    are still restored.
    """
    from expfs.tree.fingerprint import fingerprint_path

    result = CheckoutResult(worktree)
    writer = CheckoutWriter(store, link_types or configured_link_types(store))
    for lock_path in worktree_lock_files(worktree):
        with open(os.path.join(worktree, lock_path), "rb") as f:
            outputs = parse_lock(f.read(), os.path.join(worktree, lock_path))
        for out in outputs:
            if not out.cache:
                continue
            target = os.path.join(worktree, out.path)
            found = fingerprint_path(store, target)
            if (
                found is not None
                and found.kind == out.kind
                and found.digest == out.digest
                and (found.mode == out.mode or found.kind is Kind.SYMLINK)
            ):
                result.unchanged.append(out.path)
                continue
            try:
                _restore_output(store, writer, worktree, out)
            except MissingObject:
                result.missing.append(out.path)
                continue
            result.restored.append(out.path)
    return result


def _restore_output(
    store: Store, writer: CheckoutWriter, worktree: str, out: OutputRecord
) -> None:
    kind = Kind(out.kind)
    if not is_available(store, kind, out.digest):
        raise MissingObject(out.digest, f"output {out.path}")
    # Blobs that a lazy restore left on a remote are fetched first.
    ensure_local(store, kind, out.digest)
    target = os.path.join(os.fsencode(worktree), os.fsencode(out.path))
    _remove_path(target)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    writer.write(out, os.fsdecode(target))
