"""expfs gc: what it keeps, what it frees, and gc beside a mounted experiment."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
from test_gitio import EXPFS, STAGES, TRAIN, blob_of, expfs, unmount_all

from expfs.store import EMPTY_TREE_DIGEST, Store
from tests.conftest import git

pytestmark = pytest.mark.fuse


def object_counts(repo: Path) -> tuple[int, int]:
    """(blob files, trees) in the store of `repo`."""
    from expfs.store.repo import store_for

    store = store_for(str(repo))
    blobs = sum(1 for _ in store.iter_blob_files())
    return blobs, sum(1 for _ in store.iter_trees())


def fsck_clean(repo: Path) -> None:
    proc = expfs(repo, "fsck", check=False)
    assert proc.returncode == 0, f"fsck after gc: {proc.stdout}{proc.stderr}"


@pytest.fixture
def project(repo: Path) -> Path:
    """The pipeline of test_gitio, e1 run and promoted to exp/e1, garbage freed."""
    import textwrap

    if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
        pytest.skip("needs /dev/fuse and fusermount3 (apt-get install fuse3)")
    (repo / "dvc.yaml").write_text(STAGES)
    (repo / "train.py").write_text(textwrap.dedent(TRAIN))
    (repo / "params.yaml").write_text("lr: 0.1\n")
    (repo / ".gitignore").write_text("/model.txt\n/tool.sh\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "pipeline")
    expfs(repo, "init")
    try:
        expfs(repo, "exp", "run", "-S", "lr=0.5", "-n", "e1")
    finally:
        unmount_all(repo)
    expfs(repo, "exp", "promote", "e1", "--branch", "exp/e1")
    # exp run leaves the snapshot it took before applying overrides.
    expfs(repo, "gc", "--grace", "0")
    return repo


def make_garbage(repo: Path, tmp_path: Path) -> None:
    """Store a snapshot of a folder that nothing references."""
    junk = tmp_path / "junk"
    (junk / "sub").mkdir(parents=True)
    (junk / "sub" / "a.bin").write_bytes(os.urandom(5000))
    (junk / "b.txt").write_text("garbage only\n")
    expfs(repo, "snapshot", str(junk))


def test_gc_dry_lists_and_keeps_all(project: Path, tmp_path: Path) -> None:
    make_garbage(project, tmp_path)
    before = object_counts(project)
    out = expfs(project, "gc", "--dry", "--grace", "0", "--list").stdout
    assert "would remove 2 blobs and 2 trees" in out
    assert out.count("\nblob ") + out.startswith("blob ") == 2
    assert object_counts(project) == before


def test_gc_frees_garbage_only(project: Path, tmp_path: Path) -> None:
    make_garbage(project, tmp_path)
    before = object_counts(project)
    out = expfs(project, "gc", "--grace", "0").stdout
    assert out.startswith("removed 2 blobs and 2 trees")
    assert object_counts(project) == (before[0] - 2, before[1] - 2)
    fsck_clean(project)
    again = expfs(project, "gc", "--grace", "0").stdout
    assert again.startswith("removed 0 blobs and 0 trees")


def test_gc_keeps_promoted_outputs(project: Path, tmp_path: Path) -> None:
    expfs(project, "exp", "remove", "e1")
    for key in run_keys(project):
        delete_run(project, key)
    out = expfs(project, "gc", "--grace", "0").stdout
    assert not out.startswith("removed 0 blobs")
    fsck_clean(project)
    worktree = tmp_path / "wt"
    git(project, "worktree", "add", "-q", str(worktree), "exp/e1")
    expfs(worktree, "checkout")
    assert (worktree / "model.txt").read_text() == "model 0.5\n"
    assert (worktree / "outdir" / "part.txt").read_text() == "part 0.5\n"


def test_gc_frees_outputs_of_deleted_branch(project: Path) -> None:
    digest = blob_of(project, "exp/e1", "model.txt")
    expfs(project, "exp", "remove", "e1")
    for key in run_keys(project):
        delete_run(project, key)
    git(project, "branch", "-D", "exp/e1")
    expfs(project, "gc", "--grace", "0")
    from expfs.store.repo import store_for

    store = store_for(str(project))
    assert not store.has_blob(digest)
    fsck_clean(project)


def run_keys(repo: Path) -> list[str]:
    from expfs.runcache import RunCache
    from expfs.store.repo import store_for

    store = store_for(str(repo))
    return [record.key for record in RunCache(store)]


def delete_run(repo: Path, key: str) -> None:
    from expfs.runcache import RunCache
    from expfs.store.repo import store_for

    RunCache(store_for(str(repo))).delete(key)


def test_gc_keeps_run_cache_outputs(project: Path) -> None:
    expfs(project, "exp", "remove", "e1")
    git(project, "branch", "-D", "exp/e1")
    expfs(project, "gc", "--grace", "0")
    fsck_clean(project)
    try:
        out = expfs(project, "exp", "run", "-S", "lr=0.5", "-n", "e2")
    finally:
        unmount_all(project)
    assert "restored" in out.stdout + out.stderr
    expfs(project, "exp", "apply", "e2")
    assert (project / "model.txt").read_text() == "model 0.5\n"


def test_gc_keeps_experiment_snapshots(project: Path) -> None:
    git(project, "branch", "-D", "exp/e1")
    for key in run_keys(project):
        delete_run(project, key)
    expfs(project, "gc", "--grace", "0")
    fsck_clean(project)
    out = expfs(project, "exp", "promote", "e1", "--branch", "again").stdout
    assert "promoted experiment e1" in out


def test_gc_grace_keeps_young_objects(project: Path, tmp_path: Path) -> None:
    from expfs.gc import read_trees_seen, write_trees_seen
    from expfs.store.repo import store_for

    make_garbage(project, tmp_path)
    before = object_counts(project)
    out = expfs(project, "gc").stdout
    assert out.startswith("removed 0 blobs and 0 trees")
    assert "2 unreachable blobs and 2 trees younger" in out
    assert object_counts(project) == before
    store = store_for(str(project))
    seen = read_trees_seen(store)
    assert len(seen) == before[1]
    write_trees_seen(store, {d: t - 7200 for d, t in seen.items()})
    time.sleep(1.5)
    out = expfs(project, "gc", "--grace", str(1 / 3600)).stdout
    assert out.startswith("removed 2 blobs and 2 trees")
    fsck_clean(project)


def test_gc_while_mounted_and_written(project: Path, tmp_path: Path) -> None:
    """gc beside a mount that is being written, and whose files were grafted."""
    expfs(project, "exp", "new", "e2")
    mountpoint = project / ".expfs" / "mnt" / "e2"
    stop = threading.Event()
    written: dict[str, bytes] = {}
    errors: list[BaseException] = []

    def write_files() -> None:
        try:
            for i in range(10_000):
                if stop.is_set():
                    return
                data = os.urandom(3000) + str(i).encode()
                (mountpoint / f"f{i % 40}.bin").write_bytes(data)
                written[f"f{i % 40}.bin"] = data
        except BaseException as exc:  # reported by the test below
            errors.append(exc)

    try:
        expfs(project, "mount", "e2")
        (mountpoint / "params.yaml").write_text("lr: 0.5\n")
        assert "restored" in expfs(mountpoint, "repro").stdout
        for key in run_keys(project):
            delete_run(project, key)
        expfs(project, "exp", "remove", "e1")
        git(project, "branch", "-D", "exp/e1")
        writer = threading.Thread(target=write_files)
        writer.start()
        try:
            # NOTE: no snapshot of the mount while the writer runs: the
            # daemon's syncfs then waits for writeback forever.
            for _ in range(3):
                expfs(project, "gc", "--grace", "0")
        finally:
            stop.set()
            writer.join()
        assert errors == []
        expfs(mountpoint, "repro")
        expfs(project, "gc", "--grace", "0")
        assert (mountpoint / "model.txt").read_text() == "model 0.5\n"
        assert (mountpoint / "outdir" / "part.txt").read_text() == "part 0.5\n"
        for name, data in written.items():
            assert (mountpoint / name).read_bytes() == data
        listing = expfs(project, "exp", "remove", "e2", check=False)
        assert listing.returncode == 1
        assert "e2 (mounted at" in listing.stderr
    finally:
        subprocess.run(
            [*EXPFS, "umount", "e2"], cwd=project, capture_output=True, check=False
        )
        unmount_all(project)
        if os.path.ismount(mountpoint):
            subprocess.run(["fusermount3", "-uz", str(mountpoint)], check=False)
    fsck_clean(project)
    snapshot = expfs(project, "snapshot", str(project)).stdout
    assert snapshot


def test_gc_reads_workspace_grafts(project: Path, tmp_path: Path) -> None:
    """Objects grafted into an unmounted workspace are kept by its inode table."""
    from expfs.store.repo import store_for
    from expfs.workspace import Workspace

    store: Store = store_for(str(project))
    blob = store.put_bytes(b"grafted only\n")
    workspace = Workspace.create(store, "loose", EMPTY_TREE_DIGEST)
    workspace.graft(b"g.txt", blob)
    workspace.close()
    expfs(project, "gc", "--grace", "0")
    assert store.has_blob(blob)
