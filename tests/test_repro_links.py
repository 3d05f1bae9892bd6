"""Restores in a plain checkout by link type: content, modes, protection, fsck."""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from sample_pipeline import SCRIPTS, THREE_STAGES

from expfs.errors import UsageError
from expfs.repro.checkout import configured_link_types, parse_link_types
from expfs.repro.engine import Options, Outcome, Repro
from expfs.repro.lockfile import LOCK_NAME, LockFile
from expfs.repro.place import CheckoutPlace
from expfs.store.fsck import fsck
from expfs.store.lmdbenv import close_environment
from expfs.store.objects import Store, hash_file
from expfs.store.repo import init_store

LINK_CASES = ["copy", "hardlink", "symlink", "reflink,copy"]


def write_pipeline(root: Path, n: int = 5, lr: float = 0.1) -> None:
    (root / "dvc.yaml").write_text(THREE_STAGES)
    for name, body in SCRIPTS.items():
        (root / name).write_text(textwrap.dedent(body))
    set_params(root, n, lr)


def set_params(root: Path, n: int, lr: float) -> None:
    (root / "params.yaml").write_text(f"prepare:\n  n: {n}\ntrain:\n  lr: {lr}\n")


def repro(store: Store, root: Path, link: str | None = None) -> dict[str, str]:
    types = None if link is None else link.split(",")
    engine = Repro(
        store,
        CheckoutPlace(store, str(root), types),
        options=Options(),
        out=io.StringIO(),
    )
    outcomes: list[Outcome] = engine.run()
    return {o.stage: o.action for o in outcomes}


def runs(root: Path) -> list[str]:
    return (root / "runs.log").read_text().split()


def recorded_modes(root: Path) -> dict[str, int]:
    lock = LockFile(str(root / LOCK_NAME))
    return {o.path: o.mode for s in lock.stages.values() for o in s.outs}


def flip_back(store: Store, root: Path, link: str) -> dict[str, str]:
    """Run n=5 then n=6 with copies, then restore n=5 with `link`."""
    write_pipeline(root, n=5)
    repro(store, root)
    set_params(root, 6, 0.1)
    repro(store, root)
    set_params(root, 5, 0.1)
    return repro(store, root, link)


def is_blob_link(store: Store, path: Path) -> bool:
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        return os.readlink(path).startswith(store.objects_dir)
    digest = hash_file(str(path))
    blob = os.stat(store.blob_path(digest))
    return (st.st_ino, st.st_dev) == (blob.st_ino, blob.st_dev)


@pytest.mark.parametrize("link", LINK_CASES)
def test_flip_back_restores_by_link_type(store: Store, repo: Path, link: str) -> None:
    actions = flip_back(store, repo, link)
    assert actions["prepare"] == "restored"
    assert actions["train"] == "restored"
    assert actions["evaluate"] == "restored"
    assert runs(repo).count("prepare") == 2
    assert runs(repo).count("train") == 2
    parts = sorted(os.listdir(repo / "data"))
    assert parts == [f"part{i}.txt" for i in range(5)]
    assert (repo / "data" / "part3.txt").read_text() == "3" * 50
    assert fsck(store).ok


@pytest.mark.parametrize("link", ["hardlink", "symlink"])
def test_linked_files_point_at_blobs(store: Store, repo: Path, link: str) -> None:
    flip_back(store, repo, link)
    part = repo / "data" / "part1.txt"
    assert is_blob_link(store, part)
    assert stat.S_IMODE(os.stat(part).st_mode) == 0o444
    assert os.access(repo / "data", os.W_OK)


@pytest.mark.parametrize("link", ["copy", "reflink,copy"])
def test_copies_keep_recorded_modes(store: Store, repo: Path, link: str) -> None:
    flip_back(store, repo, link)
    modes = recorded_modes(repo)
    for path in ("data", "model.txt", "bin/tool"):
        assert stat.S_IMODE(os.lstat(repo / path).st_mode) == modes[path], path
    part = repo / "data" / "part0.txt"
    assert not is_blob_link(store, part)
    assert os.stat(part).st_nlink == 1


@pytest.mark.parametrize("link", ["hardlink", "symlink"])
def test_executable_output_is_copied(store: Store, repo: Path, link: str) -> None:
    write_pipeline(repo, lr=0.1)
    repro(store, repo)
    set_params(repo, 5, 0.2)
    repro(store, repo)
    set_params(repo, 5, 0.1)
    assert repro(store, repo, link)["train"] == "restored"
    tool = repo / "bin" / "tool"
    assert not os.path.islink(tool)
    assert stat.S_IMODE(os.stat(tool).st_mode) == 0o755
    assert is_blob_link(store, repo / "model.txt")


@pytest.mark.parametrize("link", ["hardlink", "symlink"])
def test_linked_outputs_skip_and_keep_keys(store: Store, repo: Path, link: str) -> None:
    flip_back(store, repo, link)
    # The folder `data` is a dependency of train: a link-aware fingerprint
    # gives it the recorded digest, so every stage is up to date.
    assert repro(store, repo, link) == {
        "prepare": "skipped",
        "train": "skipped",
        "evaluate": "skipped",
    }
    assert repro(store, repo, "copy")["train"] == "skipped"


def test_many_files_written_in_parallel(store: Store, repo: Path) -> None:
    write_pipeline(repo, n=700)
    repro(store, repo)
    expected = {p: (repo / "data" / p).read_bytes() for p in os.listdir(repo / "data")}
    set_params(repo, 3, 0.1)
    repro(store, repo)
    set_params(repo, 700, 0.1)
    assert repro(store, repo, "copy")["prepare"] == "restored"
    found = {p: (repo / "data" / p).read_bytes() for p in os.listdir(repo / "data")}
    assert found == expected
    assert fsck(store).ok


def test_root_write_through_hardlink_is_caught(store: Store, repo: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root, whom the read-only mode does not stop")
    flip_back(store, repo, "hardlink")
    part = repo / "data" / "part2.txt"
    with open(part, "a") as f:
        f.write("damage")
    assert [p.kind for p in fsck(store).problems] == ["corrupt"]
    set_params(repo, 6, 0.1)
    # The damaged blob fails its check, so the stage runs instead, and the
    # run's output, hashed as it is stored, replaces the damaged blob.
    assert repro(store, repo, "hardlink")["prepare"] == "ran"
    assert fsck(store).ok
    set_params(repo, 5, 0.1)
    assert repro(store, repo, "hardlink")["prepare"] == "restored"
    assert (repo / "data" / "part2.txt").read_text() == "2" * 50


def test_unprotect_makes_private_copies(store: Store, repo: Path) -> None:
    flip_back(store, repo, "hardlink")
    modes = recorded_modes(repo)
    done = subprocess.run(
        [sys.executable, "-m", "expfs_cli.main", "unprotect", "data", "model.txt"],
        cwd=repo,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "data: 5 linked file(s) replaced" in done.stdout
    part = repo / "data" / "part0.txt"
    assert os.stat(part).st_nlink == 1
    assert stat.S_IMODE(os.stat(repo / "model.txt").st_mode) == modes["model.txt"]
    part.write_text("edited")
    assert fsck(store).ok
    # The edited output no longer matches the lock file: restored again.
    assert repro(store, repo)["prepare"] == "restored"
    assert part.read_text() == "0" * 50


def test_link_type_from_config(store: Store, repo: Path) -> None:
    config = Path(store.root) / "config"
    config.write_text('[cache]\ntype = "symlink,copy"\n')
    assert configured_link_types(store) == ("symlink", "copy")
    flip_back(store, repo, "copy")
    set_params(repo, 6, 0.1)
    repro(store, repo)
    set_params(repo, 5, 0.1)
    assert repro(store, repo)["prepare"] == "restored"
    assert os.path.islink(repo / "data" / "part0.txt")


def test_default_link_types_are_dvcs(store: Store) -> None:
    assert configured_link_types(store) == ("reflink", "copy")


def test_bad_link_type_in_config_named(store: Store) -> None:
    config = Path(store.root) / "config"
    config.write_text('[cache]\ntype = "softlink"\n')
    with pytest.raises(UsageError) as caught:
        configured_link_types(store)
    assert "softlink" in str(caught.value)
    assert str(config) in str(caught.value)


def test_bad_link_option_rejected(store: Store, repo: Path) -> None:
    write_pipeline(repo)
    done = subprocess.run(
        [sys.executable, "-m", "expfs_cli.main", "repro", "--link", "hard"],
        cwd=repo,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert "invalid link type 'hard' in --link" in done.stderr
    assert not (repo / "runs.log").exists()


def test_parse_link_types_keeps_order() -> None:
    assert parse_link_types("hardlink, copy", "x") == ("hardlink", "copy")
    with pytest.raises(UsageError):
        parse_link_types("", "x")


@pytest.fixture
def shared_repo() -> Iterator[tuple[Store, Path]]:
    """A repository that user `nobody` can read, outside root's private folders."""
    if os.geteuid() != 0 or shutil.which("runuser") is None:
        pytest.skip("needs root and runuser to switch to user nobody")
    folder = Path(tempfile.mkdtemp(prefix="expfs-links-", dir="/tmp"))
    folder.chmod(0o755)
    root = folder / "repo"
    root.mkdir()
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    created, _ = init_store(str(root))
    try:
        yield created, root
    finally:
        close_environment(os.path.join(created.root, "index"))
        shutil.rmtree(folder)


def test_unprivileged_write_to_hardlink_denied(
    shared_repo: tuple[Store, Path],
) -> None:
    store, root = shared_repo
    flip_back(store, root, "hardlink")
    part = root / "data" / "part4.txt"
    blob = store.blob_path(hash_file(str(part)))
    before = Path(blob).read_bytes()
    done = subprocess.run(
        ["runuser", "-u", "nobody", "--", "sh", "-c", f"echo x >> '{part}'"],
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0
    assert "Permission denied" in done.stderr
    assert Path(blob).read_bytes() == before
    assert fsck(store).ok


def unprotect_cli(cwd: Path, *paths: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "expfs_cli.main", "unprotect", *paths],
        cwd=cwd,
        capture_output=True,
        text=True,
    )


def linked_state(root: Path) -> dict[str, tuple[int, int]]:
    """Return {path: (inode, link count)} of every file under `root` but .expfs/."""
    found = {}
    for path in sorted(root.rglob("*")):
        if ".expfs" in path.relative_to(root).parts or not path.is_file():
            continue
        st = os.lstat(path)
        found[str(path.relative_to(root))] = (st.st_ino, st.st_nlink)
    return found


@pytest.mark.parametrize(
    "given",
    ["params.yaml", "runs.log", "../outside.txt", "OUTSIDE", "data/../prepare.py"],
)
def test_unprotect_rejects_non_outputs(
    store: Store, repo: Path, tmp_path: Path, given: str
) -> None:
    flip_back(store, repo, "hardlink")
    outside = tmp_path / "outside.txt"
    outside.write_text("not in the project\n")
    path = str(outside) if given == "OUTSIDE" else given
    before = linked_state(repo)
    done = unprotect_cli(repo, "data", path)
    assert done.returncode == 2
    assert path in done.stderr
    assert "expfs stage list" in done.stderr
    assert done.stdout == ""
    assert linked_state(repo) == before
    assert outside.read_text() == "not in the project\n"


def test_unprotect_rejects_symlink_out(
    store: Store, repo: Path, tmp_path: Path
) -> None:
    flip_back(store, repo, "hardlink")
    (tmp_path / "elsewhere").mkdir()
    (repo / "data" / "escape").symlink_to(tmp_path / "elsewhere")
    done = unprotect_cli(repo, "data/escape")
    assert done.returncode == 2
    assert "data/escape" in done.stderr
    assert "outside" in done.stderr


def test_unprotect_accepts_file_inside_output(store: Store, repo: Path) -> None:
    flip_back(store, repo, "hardlink")
    done = unprotect_cli(repo / "data", "part1.txt")
    assert done.returncode == 0, done.stderr
    assert os.stat(repo / "data" / "part1.txt").st_nlink == 1
    assert os.stat(repo / "data" / "part2.txt").st_nlink > 1


@pytest.mark.parametrize("link", ["hardlink", "symlink", "reflink,hardlink,copy"])
def test_run_outputs_linked_as_restores_are(
    store: Store, repo: Path, link: str
) -> None:
    """After a run, outputs are links into the store, as DVC leaves them.

    A fresh output is then what a restore would write, and it is kept once,
    in the store.
    """
    write_pipeline(repo)
    assert repro(store, repo, link)["train"] == "ran"
    assert is_blob_link(store, repo / "data" / "part1.txt")
    assert is_blob_link(store, repo / "model.txt")
    tool = repo / "bin" / "tool"
    assert not is_blob_link(store, tool)
    assert stat.S_IMODE(os.stat(tool).st_mode) == 0o755
    # Uncached metrics stay the run's own file.
    assert not is_blob_link(store, repo / "metrics.json")
    assert repro(store, repo, link) == {
        "prepare": "skipped",
        "train": "skipped",
        "evaluate": "skipped",
    }
    assert fsck(store).ok


@pytest.mark.parametrize("link", ["copy", "reflink,copy"])
def test_run_outputs_stay_files_with_copies(
    store: Store, repo: Path, link: str
) -> None:
    write_pipeline(repo)
    repro(store, repo, link)
    part = repo / "data" / "part1.txt"
    assert not is_blob_link(store, part)
    assert os.access(part, os.W_OK)


def test_persist_output_stays_private(store: Store, repo: Path) -> None:
    (repo / "dvc.yaml").write_text(
        "stages:\n"
        "  grow:\n"
        "    cmd: echo line >> log.txt\n"
        "    outs: [{log.txt: {persist: true}}]\n"
    )
    repro(store, repo, "hardlink")
    log = repo / "log.txt"
    assert not os.path.islink(log)
    assert os.stat(log).st_nlink == 1
    assert os.access(log, os.W_OK)


def checkout_cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "expfs_cli.main", "checkout", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
    )


def remove_outputs(root: Path) -> None:
    shutil.rmtree(root / "data")
    (root / "model.txt").unlink()
    (root / "bin" / "tool").unlink()


@pytest.mark.parametrize("link", [*LINK_CASES, "symlink,hardlink,copy"])
def test_checkout_link_accepts_every_type(store: Store, repo: Path, link: str) -> None:
    write_pipeline(repo)
    repro(store, repo)
    remove_outputs(repo)
    done = checkout_cli(repo, "--link", link)
    assert done.returncode == 0, done.stderr
    assert "restored 3 outputs" in done.stdout
    assert repro(store, repo, link) == {
        "prepare": "skipped",
        "train": "skipped",
        "evaluate": "skipped",
    }
    again = checkout_cli(repo, "--link", link)
    assert again.returncode == 0, again.stderr
    assert "restored 0 outputs" in again.stdout
    assert runs(repo) == ["prepare", "train", "evaluate"]
    assert fsck(store).ok


def test_checkout_symlinks_then_unprotect(store: Store, repo: Path) -> None:
    write_pipeline(repo)
    repro(store, repo)
    modes = recorded_modes(repo)
    remove_outputs(repo)
    done = checkout_cli(repo, "--link", "symlink")
    assert done.returncode == 0, done.stderr

    part = repo / "data" / "part0.txt"
    assert os.path.islink(part)
    assert os.readlink(part).startswith(store.objects_dir)
    assert stat.S_IMODE(os.stat(part).st_mode) == 0o444
    assert os.path.islink(repo / "model.txt")
    # An executable is copied, so that it keeps its execute bits.
    assert not os.path.islink(repo / "bin" / "tool")
    assert stat.S_IMODE(os.stat(repo / "bin" / "tool").st_mode) == 0o755
    assert repro(store, repo)["train"] == "skipped"

    unprotected = unprotect_cli(repo, "data", "model.txt")
    assert unprotected.returncode == 0, unprotected.stderr
    assert "data: 5 linked file(s) replaced" in unprotected.stdout
    assert not os.path.islink(part)
    assert os.stat(part).st_nlink == 1
    assert stat.S_IMODE(os.stat(repo / "model.txt").st_mode) == modes["model.txt"]
    part.write_text("edited")
    assert fsck(store).ok
    assert repro(store, repo)["prepare"] == "restored"
    assert repro(store, repo) == {
        "prepare": "skipped",
        "train": "skipped",
        "evaluate": "skipped",
    }
    assert runs(repo) == ["prepare", "train", "evaluate"]


def test_checkout_link_type_from_config(store: Store, repo: Path) -> None:
    write_pipeline(repo)
    repro(store, repo)
    remove_outputs(repo)
    (Path(store.root) / "config").write_text('[cache]\ntype = "symlink,copy"\n')
    done = checkout_cli(repo)
    assert done.returncode == 0, done.stderr
    assert os.path.islink(repo / "data" / "part0.txt")
    assert os.path.islink(repo / "model.txt")


def test_bad_checkout_link_rejected(store: Store, repo: Path) -> None:
    write_pipeline(repo)
    repro(store, repo)
    remove_outputs(repo)
    done = checkout_cli(repo, "--link", "softlink")
    assert done.returncode == 2
    assert "invalid link type 'softlink' in --link" in done.stderr
    assert "reflink, hardlink, symlink, copy" in done.stderr
    assert not (repo / "data").exists()
    assert not (repo / "model.txt").exists()
