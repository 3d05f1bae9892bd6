"""A mount made and used by an unprivileged user, through fusermount3.

The other tests run as root, which mounts without fusermount3 and passes
every permission check. Here user `nobody` owns the repository and the
store, runs the daemon, and root is kept out of the private mount.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from fusehelpers import fuse_missing_reason, is_mounted

import expfs

pytestmark = pytest.mark.fuse

USER = "nobody"

SCRIPT = textwrap.dedent(
    """
    import os, subprocess, sys
    from expfs.store.repo import init_store
    from expfs.experiments import create_experiment
    from expfs.fuse.mounts import start_mount, stop_mount

    repo, mountpoint, step = sys.argv[1], sys.argv[2], sys.argv[3]
    store, _ = init_store(repo)
    if step == "mount":
        create_experiment(store, repo, "e1")
        print(start_mount(store, "e1", mountpoint))
        with open(os.path.join(mountpoint, "mine.txt"), "w") as f:
            f.write("written by nobody\\n")
        print(open(os.path.join(mountpoint, "README")).read().strip())
        print(os.stat(os.path.join(mountpoint, "mine.txt")).st_uid)
    else:
        stop_mount(store, "e1")
        print("unmounted")
    """
)


def python_for(user: str) -> str | None:
    """Return a Python of this version that `user` can run, or None."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in [
        sys.executable,
        f"/usr/bin/{version}",
        f"/usr/local/bin/{version}",
    ]:
        proc = subprocess.run(
            ["runuser", "-u", user, "--", candidate, "-c", "import encodings"],
            capture_output=True,
        )
        if proc.returncode == 0:
            return candidate
    return None


@pytest.fixture
def nobody_folder() -> Iterator[Path]:
    """A folder owned by `nobody`, outside root's private temporary folders."""
    reason = fuse_missing_reason()
    if reason:
        pytest.skip(reason)
    if shutil.which("runuser") is None or os.geteuid() != 0:
        pytest.skip("needs root and runuser to switch to user nobody")
    probe = [
        "runuser",
        "-u",
        USER,
        "--",
        "test",
        "-r",
        "/dev/fuse",
        "-a",
        "-w",
        "/dev/fuse",
    ]
    # Debian's udev rule makes /dev/fuse 0666 so that fusermount3 works for
    # every user; some containers create it 0600. Open it up for this test
    # only, as a system with the usual rule has it, and put the mode back.
    original_mode = os.stat("/dev/fuse").st_mode & 0o777
    if subprocess.run(probe).returncode != 0:
        os.chmod("/dev/fuse", 0o666)
    folder = Path(tempfile.mkdtemp(prefix="expfs-nobody-"))
    user = pwd.getpwnam(USER)
    os.chown(folder, user.pw_uid, user.pw_gid)
    try:
        yield folder
    finally:
        mountpoint = folder / "mnt"
        if is_mounted(mountpoint):
            subprocess.run(["fusermount3", "-uz", str(mountpoint)], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)
        os.chmod("/dev/fuse", original_mode)


def as_nobody(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    project = os.path.dirname(os.path.dirname(expfs.__file__))
    site_packages = sysconfig.get_paths()["purelib"]
    env = [
        f"HOME={folder}",
        f"PYTHONPATH={project}:{site_packages}",
        "GIT_CONFIG_NOSYSTEM=1",
        "GIT_AUTHOR_NAME=nobody",
        "GIT_AUTHOR_EMAIL=nobody@example.invalid",
        "GIT_COMMITTER_NAME=nobody",
        "GIT_COMMITTER_EMAIL=nobody@example.invalid",
        f"PATH={os.environ.get('PATH', '/usr/bin:/bin')}",
    ]
    command = ["runuser", "-u", USER, "--", "env", "-i", *env, *args]
    return subprocess.run(command, cwd=folder, capture_output=True, text=True)


def test_unprivileged_mount(nobody_folder: Path) -> None:
    python = python_for(USER)
    if python is None:
        pytest.skip(
            f"no python{sys.version_info.major}.{sys.version_info.minor} that user "
            f"{USER} may run (this one is {sys.executable})"
        )
    repo = nobody_folder / "repo"
    mountpoint = nobody_folder / "mnt"
    setup = (
        f"git init -q {repo} && echo seed > {repo}/README && "
        f"git -C {repo} add README && git -C {repo} commit -qm seed"
    )
    proc = as_nobody(nobody_folder, "/bin/sh", "-c", setup)
    assert proc.returncode == 0, proc.stderr
    script = nobody_folder / "script.py"
    script.write_text(SCRIPT)
    proc = as_nobody(
        nobody_folder, python, str(script), str(repo), str(mountpoint), "mount"
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == str(mountpoint)
    assert lines[1] == "seed"
    assert lines[2] == str(pwd.getpwnam(USER).pw_uid)
    assert is_mounted(mountpoint)
    with pytest.raises(PermissionError):
        os.stat(mountpoint / "README")
    proc = as_nobody(
        nobody_folder, python, str(script), str(repo), str(mountpoint), "stop"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "unmounted"
    assert not is_mounted(mountpoint)
    assert not (repo / "mine.txt").exists()
