"""A folder output round-trips exactly through the run-cache.

The stage writes a folder with an empty subfolder, folders whose modes no
umask gives (0700, 0777, 0750, sticky and setgid), a private file, an
executable and a symlink. A restore gives back that folder as the stage
made it, and the next repro neither runs nor restores: by repro or by
`expfs checkout` with any link type in a checkout, and by a graft in a
mount. An experiment made from the checkout starts
with the same output, so it skips the stage too.
"""

from __future__ import annotations

import io
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest
from mounting import unmount

from expfs.experiments import snapshot_base
from expfs.repro.engine import Options, Repro
from expfs.repro.lockfile import LOCK_NAME, LockFile
from expfs.repro.place import CheckoutPlace, entry_at
from expfs.store.fsck import fsck
from expfs.store.links import LinkRecords
from expfs.store.objects import Store
from expfs.store.trees import Kind
from tests.conftest import git

EXPFS = [sys.executable, "-m", "expfs"]

STAGE_FILE = """\
stages:
  make:
    cmd: python3 make.py
    deps: [make.py]
    params: [n]
    outs: [out]
"""

MAKE_SCRIPT = """\
import os, yaml
n = yaml.safe_load(open("params.yaml"))["n"]
os.makedirs("out/empty")
os.makedirs("out/private/deeper/void")
os.chmod("out/private", 0o700)
os.makedirs("out/shared")
os.chmod("out/shared", 0o777)
os.makedirs("out/sticky")
os.chmod("out/sticky", 0o1777)
os.makedirs("out/setgid")
os.chmod("out/setgid", 0o2750)
with open("out/private/secret.txt", "w") as f:
    f.write(f"secret {n}\\n")
os.chmod("out/private/secret.txt", 0o600)
with open("out/run.sh", "w") as f:
    f.write("#!/bin/sh\\necho run\\n")
os.chmod("out/run.sh", 0o755)
with open("out/data.txt", "w") as f:
    f.write("x" * n)
os.symlink("data.txt", "out/latest")
os.chmod("out", 0o750)
with open("runs.log", "a") as f:
    f.write("make\\n")
"""

LINK_CASES = ["copy", "reflink,copy", "hardlink", "symlink"]

Shape = dict[str, tuple[str, int, bytes]]


def write_project(root: Path, n: int = 1, ignore_out: bool = False) -> None:
    (root / "dvc.yaml").write_text(STAGE_FILE)
    (root / "make.py").write_text(MAKE_SCRIPT)
    set_n(root, n)
    ignored = "runs.log\n/out/\n" if ignore_out else "runs.log\n"
    (root / ".gitignore").write_text(ignored)


def set_n(root: Path, n: int) -> None:
    (root / "params.yaml").write_text(f"n: {n}\n")


def shape(store: Store, folder: Path) -> Shape:
    """Return {relative path: (kind, mode, content)} of `folder` and all below it.

    A file that a checkout linked to a blob is described as the file the
    run recorded: its recorded mode and its bytes, as a fingerprint reports it.
    """
    found: Shape = {}
    paths = [folder, *sorted(folder.rglob("*"))]
    stats = {os.fsencode(p): os.lstat(p) for p in paths}
    linked = LinkRecords(store).lookup_many(stats)
    for path in paths:
        st = stats[os.fsencode(path)]
        rel = str(path.relative_to(folder))
        if os.fsencode(path) in linked:
            _, mode = linked[os.fsencode(path)]
            found[rel] = ("file", mode, path.read_bytes())
        elif stat.S_ISDIR(st.st_mode):
            found[rel] = ("dir", stat.S_IMODE(st.st_mode), b"")
        elif stat.S_ISLNK(st.st_mode):
            found[rel] = ("symlink", 0o777, os.fsencode(os.readlink(path)))
        else:
            found[rel] = ("file", stat.S_IMODE(st.st_mode), path.read_bytes())
    return found


def repro(store: Store, root: Path, link: str = "copy") -> str:
    engine = Repro(
        store,
        CheckoutPlace(store, str(root), link.split(",")),
        options=Options(),
        out=io.StringIO(),
    )
    [outcome] = engine.run()
    return outcome.action


def runs(root: Path) -> list[str]:
    return (root / "runs.log").read_text().split()


def locked_output(root: Path) -> tuple[str, int]:
    """Return the digest and mode that the lock file records for `out`."""
    [out] = LockFile(str(root / LOCK_NAME)).stages["make"].outs
    return out.digest, out.mode


def test_fresh_output_has_every_case(store: Store, repo: Path) -> None:
    write_project(repo)
    assert repro(store, repo) == "ran"
    found = shape(store, repo / "out")
    assert found["."] == ("dir", 0o750, b"")
    assert found["empty"] == ("dir", 0o755, b"")
    assert found["private"] == ("dir", 0o700, b"")
    assert found["private/deeper/void"] == ("dir", 0o755, b"")
    assert found["shared"] == ("dir", 0o777, b"")
    assert found["sticky"] == ("dir", 0o1777, b"")
    assert found["setgid"] == ("dir", 0o2750, b"")
    assert found["private/secret.txt"] == ("file", 0o600, b"secret 1\n")
    assert found["run.sh"][:2] == ("file", 0o755)
    assert found["latest"] == ("symlink", 0o777, b"data.txt")


@pytest.mark.parametrize("link", LINK_CASES)
def test_restore_matches_fresh_output(store: Store, repo: Path, link: str) -> None:
    write_project(repo)
    assert repro(store, repo) == "ran"
    fresh = shape(store, repo / "out")
    set_n(repo, 2)
    assert repro(store, repo) == "ran"
    set_n(repo, 1)
    assert repro(store, repo, link) == "restored"
    assert shape(store, repo / "out") == fresh
    # The executable and the user's symlink are never links into the store.
    assert not os.path.islink(repo / "out" / "run.sh")
    assert os.readlink(repo / "out" / "latest") == "data.txt"
    assert fsck(store).ok


@pytest.mark.parametrize("link", LINK_CASES)
def test_repro_after_restore_does_nothing(store: Store, repo: Path, link: str) -> None:
    write_project(repo)
    repro(store, repo)
    set_n(repo, 2)
    repro(store, repo)
    set_n(repo, 1)
    assert repro(store, repo, link) == "restored"
    assert repro(store, repo, link) == "skipped"
    assert repro(store, repo, "copy") == "skipped"
    assert runs(repo) == ["make", "make"]


@pytest.mark.parametrize("link", LINK_CASES)
def test_checkout_matches_fresh_output(store: Store, repo: Path, link: str) -> None:
    write_project(repo)
    repro(store, repo)
    fresh = shape(store, repo / "out")
    shutil.rmtree(repo / "out")
    command = [*EXPFS, "checkout", "--link", link]
    done = subprocess.run(command, cwd=repo, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "restored 1 output" in done.stdout
    assert shape(store, repo / "out") == fresh
    assert repro(store, repo, link) == "skipped"
    again = subprocess.run(command, cwd=repo, capture_output=True, text=True)
    assert "restored 0 outputs, 1 already up to date" in again.stdout
    assert runs(repo) == ["make"]


@pytest.mark.parametrize("ignore_out", [False, True], ids=["untracked", "ignored"])
def test_experiment_base_keeps_output(
    store: Store, repo: Path, ignore_out: bool
) -> None:
    write_project(repo, ignore_out=ignore_out)
    git(repo, "add", "dvc.yaml", "make.py", "params.yaml", ".gitignore")
    git(repo, "commit", "-qm", "pipeline")
    repro(store, repo)
    digest, mode = locked_output(repo)
    base = snapshot_base(store, str(repo))
    entry = entry_at(store, base, "out")
    assert entry is not None
    assert entry.kind is Kind.DIRECTORY
    assert entry.digest == digest
    assert entry.mode == mode
    empty = entry_at(store, base, "out/private/deeper/void")
    assert empty is not None
    assert empty.kind is Kind.DIRECTORY


# -- in mounts -----------------------------------------------------------------


def expfs(cwd: Path, *args: str) -> str:
    proc = subprocess.run([*EXPFS, *args], cwd=cwd, capture_output=True, text=True)
    assert proc.returncode == 0, f"expfs {' '.join(args)}: {proc.stdout}{proc.stderr}"
    return proc.stdout


def unmount_below(root: Path) -> None:
    """Unmount what the test mounted under `root`, if anything is left."""
    with open("/proc/self/mounts") as f:
        targets = [line.split()[1] for line in f]
    for target in targets:
        if target.startswith(str(root) + "/"):
            subprocess.run(["fusermount3", "-uz", target], check=False)


@pytest.fixture
def project(repo: Path) -> Iterator[Path]:
    """The project committed (its output not ignored), with a store."""
    if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
        pytest.skip("needs /dev/fuse and fusermount3 (apt-get install fuse3)")
    write_project(repo)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "pipeline")
    expfs(repo, "init")
    try:
        yield repo
    finally:
        unmount_below(repo)


def mount_shape(folder: Path) -> Shape:
    found: Shape = {}
    for path in [folder, *sorted(folder.rglob("*"))]:
        st = os.lstat(path)
        rel = str(path.relative_to(folder))
        if stat.S_ISDIR(st.st_mode):
            found[rel] = ("dir", stat.S_IMODE(st.st_mode), b"")
        elif stat.S_ISLNK(st.st_mode):
            found[rel] = ("symlink", 0o777, os.fsencode(os.readlink(path)))
        else:
            found[rel] = ("file", stat.S_IMODE(st.st_mode), path.read_bytes())
    return found


@pytest.mark.fuse
def test_mount_restore_matches_fresh_output(project: Path) -> None:
    expfs(project, "exp", "new", "e1")
    mountpoint = project / ".expfs" / "mnt" / "e1"
    expfs(project, "mount", "e1")
    try:
        assert "stage 'make': ran" in expfs(mountpoint, "repro")
        fresh = mount_shape(mountpoint / "out")
        set_n(mountpoint, 2)
        assert "stage 'make': ran" in expfs(mountpoint, "repro")
        set_n(mountpoint, 1)
        assert "stage 'make': restored" in expfs(mountpoint, "repro")
        assert mount_shape(mountpoint / "out") == fresh
        assert "stage 'make': skipped" in expfs(mountpoint, "repro")
        assert (mountpoint / "runs.log").read_text().split() == ["make", "make"]
    finally:
        unmount(project, "e1", mountpoint)


def restore_in_checkout(project: Path) -> None:
    """Run n=1 and n=2 in the checkout, then restore n=1."""
    assert "stage 'make': ran" in expfs(project, "repro")
    set_n(project, 2)
    expfs(project, "repro")
    set_n(project, 1)
    assert "stage 'make': restored" in expfs(project, "repro")


@pytest.mark.fuse
def test_experiment_from_checkout_skips(project: Path) -> None:
    restore_in_checkout(project)
    same = expfs(project, "exp", "run", "-n", "same")
    assert "stage 'make': skipped" in same
    other = expfs(project, "exp", "run", "-n", "other", "-S", "n=2")
    assert "stage 'make': restored" in other
    assert (project / "runs.log").read_text().split() == ["make", "make"]


@pytest.mark.fuse
def test_experiment_runs_untracked_output(project: Path) -> None:
    restore_in_checkout(project)
    fresh = mount_shape(project / "out")
    # A new value runs the stage, which deletes the output first. Git does
    # not track the output in the checkout, so nor in the experiment.
    new = expfs(project, "exp", "run", "-n", "new", "-S", "n=3", "--keep-mounted")
    assert "stage 'make': ran" in new
    assert "new: success" in new
    mountpoint = project / ".expfs" / "mnt" / "new"
    try:
        assert git(mountpoint, "ls-files", "out") == ""
        assert "?? out/" in git(mountpoint, "status", "--porcelain")
        set_n(mountpoint, 1)
        assert "stage 'make': restored" in expfs(mountpoint, "repro")
        assert mount_shape(mountpoint / "out") == fresh
        assert "stage 'make': skipped" in expfs(mountpoint, "repro")
    finally:
        unmount(project, "new", mountpoint)


# -- read-only folders -----------------------------------------------------------


def remove_as_owner(place: CheckoutPlace, path: str) -> int:
    """Call `place.remove(path)` as the owner of the files; return 0 on success.

    Root ignores folder modes, so as root the call runs in a child process
    that switches to user nobody, who owns the files.
    """
    if os.geteuid() != 0:
        place.remove(path)
        return 0
    nobody = pwd.getpwnam("nobody")
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            place.remove(path)
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_read_only_folders_removed(store: Store) -> None:
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("nobody")
        except KeyError:
            pytest.skip(
                "needs user nobody to own the files, because root ignores modes"
            )
    folder = Path(tempfile.mkdtemp(prefix="expfs-readonly-", dir="/tmp"))
    try:
        folder.chmod(0o755)
        out = folder / "out"
        (out / "ro" / "deeper").mkdir(parents=True)
        (out / "ro" / "deeper" / "f.txt").write_text("kept read-only\n")
        (out / "closed").mkdir()
        (out / "closed" / "g.txt").write_text("unreadable folder\n")
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            for path in [folder, out, *out.rglob("*")]:
                os.chown(path, nobody.pw_uid, nobody.pw_gid)
        (out / "ro" / "deeper").chmod(0o500)
        (out / "ro").chmod(0o555)
        (out / "closed").chmod(0o000)
        place = CheckoutPlace(store, str(folder))
        assert remove_as_owner(place, "out") == 0
        assert not out.exists()
    finally:
        for path in folder.rglob("*"):
            if path.is_dir() and not path.is_symlink():
                path.chmod(0o700)
        shutil.rmtree(folder)


@pytest.mark.parametrize("pattern", ["out", "/out/", "out/"])
def test_experiment_from_checkout_with_ignored_output(repo: Path, pattern: str) -> None:
    """DVC's own layout: the outputs exist in the checkout and Git ignores them."""
    write_project(repo)
    (repo / ".gitignore").write_text(f"runs.log\n{pattern}\n")
    git(repo, "add", "dvc.yaml", "make.py", "params.yaml", ".gitignore")
    git(repo, "commit", "-qm", "pipeline")
    expfs(repo, "init")
    expfs(repo, "repro")
    assert (repo / "out").is_dir()
    expfs(repo, "exp", "new", "e1")
    listed = expfs(repo, "exp", "list")
    assert "e1" in listed
