"""The mount daemon, its control socket and the mount commands, for real."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest
from fusehelpers import Mount, expfs, force_unmount, is_mounted

from expfs.fuse.control import ControlClient, ControlError, socket_path
from expfs.store.repo import open_store

pytestmark = pytest.mark.fuse


def git(cwd: Path, *args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    assert proc.returncode == 0, f"git {' '.join(args)} failed: {proc.stderr}"
    return proc.stdout


def client(mount: Mount) -> ControlClient:
    return ControlClient(str(mount.store_root), mount.name)


def wait_gone(pid: int, timeout_s: float = 10) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.02)
    return False


def test_mount_shows_base_files(mounted: Mount) -> None:
    assert is_mounted(mounted.path)
    base = (mounted.repo / "data" / "base.txt").read_bytes()
    assert (mounted.path / "data" / "base.txt").read_bytes() == base
    assert (mounted.path / "bin" / "tool").stat().st_mode & 0o777 == 0o755


def test_write_stays_in_experiment(mounted: Mount) -> None:
    with open(mounted.path / "data" / "base.txt", "a") as f:
        f.write("more\n")
    assert (mounted.repo / "data" / "base.txt").read_text().count("\n") == 1000
    assert (mounted.path / "data" / "base.txt").read_text().endswith("more\n")


def test_mounts_lists_daemon(mounted: Mount) -> None:
    out = expfs(mounted.repo, "mounts").stdout
    line = [row for row in out.splitlines() if row.startswith("e1 ")]
    assert line, out
    assert "mounted" in line[0]
    assert str(mounted.daemon_pid()) in line[0]
    assert str(mounted.path) in line[0]


def test_mount_twice_rejected(mounted: Mount) -> None:
    proc = expfs(mounted.repo, "mount", "e1", check=False)
    assert proc.returncode != 0
    assert "already served" in proc.stderr


def test_umount_then_remount_keeps_changes(mounted: Mount) -> None:
    (mounted.path / "new.txt").write_text("kept\n")
    pid = mounted.daemon_pid()
    assert pid is not None
    mounted.umount()
    assert not is_mounted(mounted.path)
    assert wait_gone(pid)
    assert not os.path.exists(socket_path(str(mounted.store_root), "e1"))
    mounted.mount()
    assert (mounted.path / "new.txt").read_text() == "kept\n"


def test_umount_busy_mount_fails(mounted: Mount) -> None:
    holder = subprocess.Popen(["sleep", "60"], cwd=mounted.path)
    try:
        proc = expfs(mounted.repo, "umount", "e1", check=False)
        assert proc.returncode != 0
        assert "busy" in proc.stderr
        assert is_mounted(mounted.path)
        assert (mounted.path / "README").read_text() == "seed\n"
    finally:
        holder.kill()
        holder.wait()


def test_sigterm_flushes_and_unmounts(mounted: Mount) -> None:
    (mounted.path / "late.txt").write_text("written before SIGTERM\n")
    pid = mounted.daemon_pid()
    assert pid is not None
    os.kill(pid, signal.SIGTERM)
    assert wait_gone(pid)
    assert not is_mounted(mounted.path)
    mounted.mount()
    assert (mounted.path / "late.txt").read_text() == "written before SIGTERM\n"


def test_mount_error_reported(mounted: Mount, tmp_path: Path) -> None:
    target = tmp_path / "a-file"
    target.write_text("not a folder")
    expfs(mounted.repo, "exp", "new", "e2")
    proc = expfs(mounted.repo, "mount", "e2", str(target), check=False)
    assert proc.returncode != 0
    assert "it is not a folder" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_daemon_error_reaches_cli(mounted: Mount, tmp_path: Path) -> None:
    import shutil

    expfs(mounted.repo, "exp", "new", "e2")
    # A workspace whose LMDB file is garbage: only the daemon finds out.
    lmdb_dir = mounted.store_root / "workspaces" / "e2" / "lmdb"
    shutil.rmtree(lmdb_dir)
    lmdb_dir.mkdir()
    (lmdb_dir / "data.mdb").write_bytes(b"not an LMDB file" * 512)
    target = tmp_path / "mnt2"
    proc = expfs(mounted.repo, "mount", "e2", str(target), check=False)
    assert proc.returncode != 0
    assert "mounting experiment 'e2'" in proc.stderr
    assert "e2" in proc.stderr.split("failed:", 1)[1]
    assert not is_mounted(target)
    log = (mounted.store_root / "logs" / "e2.log").read_text()
    assert "mounting experiment e2 failed" in log


def test_invalid_blob_source_reaches_caller(mounted: Mount, tmp_path: Path) -> None:
    from expfs.fuse.mounts import MountError, start_mount

    expfs(mounted.repo, "exp", "new", "e2")
    store = open_store(str(mounted.store_root))
    target = tmp_path / "mnt2"
    for spec, reason in (
        ("RemoteBlobSource", "give MODULE:NAME"),
        ("no_such_module:Source", "No module named 'no_such_module'"),
        ("os.path:no_such_name", "module os.path has no callable no_such_name"),
    ):
        with pytest.raises(MountError) as info:
            start_mount(store, "e2", str(target), blob_source=spec)
        assert f"invalid --blob-source {spec!r}" in info.value.message
        assert reason in info.value.message
        assert not is_mounted(target)


def test_mount_unknown_experiment(mounted: Mount) -> None:
    proc = expfs(mounted.repo, "mount", "nope", check=False)
    assert proc.returncode != 0
    assert "no experiment named 'nope'" in proc.stderr


def test_default_mountpoint_inside_repo(mounted: Mount) -> None:
    expfs(mounted.repo, "exp", "new", "e2")
    path = Path(expfs(mounted.repo, "mount", "e2").stdout.strip())
    try:
        assert path == mounted.store_root / "mnt" / "e2"
        (path / "inside.txt").write_text("x\n")
        status = git(path, "status", "--porcelain")
        assert status == "?? inside.txt\n"
        assert git(mounted.repo, "status", "--porcelain") == ""
    finally:
        expfs(mounted.repo, "umount", "e2")
    assert not is_mounted(path)


def test_control_socket_private(mounted: Mount) -> None:
    mode = os.stat(socket_path(str(mounted.store_root), "e1")).st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600


def test_control_ping_and_errors(mounted: Mount) -> None:
    with client(mounted) as c:
        reply = c.ping()
        assert reply["pid"] == mounted.daemon_pid()
        with pytest.raises(ControlError, match="invalid path"):
            c.digest_of(b"../escape")
        with pytest.raises(ControlError):
            c.call("no-such-op")
        assert c.ping()["pid"] == mounted.daemon_pid()


def test_snapshot_sees_unflushed_writes(mounted: Mount) -> None:
    import mmap

    import blake3

    path = mounted.path / "data" / "base.txt"
    expected = b"MMAP!" + path.read_bytes()[5:] + b"appended\n"
    with open(path, "r+b") as f:
        mapped = mmap.mmap(f.fileno(), 0)
        mapped[0:5] = b"MMAP!"
        with open(path, "ab") as appender:
            appender.write(b"appended\n")
        with client(mounted) as c:
            root = c.snapshot()
            file_digest = c.digest_of(b"data/base.txt")
        mapped.close()
    assert file_digest == blake3.blake3(expected).hexdigest()
    store = open_store(str(mounted.store_root))
    data = [e for e in store.get_tree(root) if e.name == b"data"][0]
    base = [e for e in store.get_tree(data.digest) if e.name == b"base.txt"][0]
    assert base.digest == file_digest
    assert store.read_blob(base.digest) == expected


def test_graft_visible_at_once(mounted: Mount) -> None:
    store = open_store(str(mounted.store_root))
    versions = [store.put_bytes(f"version {i}\n".encode() * (i + 1)) for i in range(20)]
    target = mounted.path / "grafted.txt"
    assert not target.exists()  # leaves a negative entry in the kernel's cache
    open_file = open(mounted.path / "data" / "base.txt", "rb")
    try:
        with client(mounted) as c:
            for i, digest in enumerate(versions):
                c.graft(b"grafted.txt", digest)
                assert target.read_bytes() == f"version {i}\n".encode() * (i + 1)
                assert target.stat().st_size == len(f"version {i}\n") * (i + 1)
                assert c.digest_of(b"grafted.txt") == digest
            c.remove_path(b"grafted.txt")
            assert not target.exists()
    finally:
        open_file.close()
    assert open_file.closed


def test_graft_directory_replaces_open_file(mounted: Mount) -> None:
    store = open_store(str(mounted.store_root))
    from expfs.tree.snapshot import snapshot_path

    other = mounted.repo.parent / "other"
    (other / "sub").mkdir(parents=True)
    (other / "sub" / "x.txt").write_text("grafted x\n")
    tree = snapshot_path(store, str(other))
    reader = open(mounted.path / "data" / "base.txt", "rb")
    try:
        listing_before = os.listdir(mounted.path / "data")
        with client(mounted) as c:
            c.graft(b"data", tree)
        assert os.listdir(mounted.path / "data") == ["sub"]
        assert (mounted.path / "data" / "sub" / "x.txt").read_text() == "grafted x\n"
        assert reader.read(2) == b"0\n"
        assert "base.txt" in listing_before
    finally:
        reader.close()


def test_kill9_keeps_fsynced_data(mounted: Mount) -> None:
    path = mounted.path / "durable.bin"
    payload = os.urandom(3 << 20)
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o644)
    os.write(fd, payload)
    os.fsync(fd)
    os.close(fd)
    (mounted.path / "d1" / "d2").mkdir(parents=True)
    with open(mounted.path / "d1" / "d2" / "f", "wb") as f:
        f.write(b"deep")
        f.flush()
        os.fsync(f.fileno())
    (mounted.path / "not-synced.txt").write_text("may be lost")
    pid = mounted.daemon_pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert wait_gone(pid)
    out = expfs(mounted.repo, "mounts").stdout
    assert "stale" in out or "dead" in out, out
    mounted.mount()
    assert (mounted.path / "durable.bin").read_bytes() == payload
    assert (mounted.path / "d1" / "d2" / "f").read_bytes() == b"deep"
    fsck = expfs(mounted.repo, "fsck", check=False)
    assert fsck.returncode == 0, fsck.stdout


def test_exp_remove_rejected_while_mounted(mounted: Mount) -> None:
    proc = expfs(mounted.repo, "exp", "remove", "e1", check=False)
    assert proc.returncode != 0
    assert "umount" in proc.stderr
    assert "e1" in expfs(mounted.repo, "exp", "list").stdout


def test_exp_remove_after_umount(mounted: Mount) -> None:
    mounted.umount()
    expfs(mounted.repo, "exp", "remove", "e1")
    assert "e1" not in expfs(mounted.repo, "exp", "list").stdout
    assert "e1" not in git(mounted.repo, "worktree", "list")


@pytest.mark.parametrize(
    "name",
    ["-x", ".hidden", "a/b", "x" * 101, ""],
    ids=["dash", "dot", "slash", "long", "empty"],
)
def test_exp_new_invalid_name(mounted: Mount, name: str) -> None:
    proc = expfs(mounted.repo, "exp", "new", "--", name, check=False)
    assert proc.returncode == 2
    assert "invalid experiment name" in proc.stderr


def test_exp_new_from_commit(mounted: Mount) -> None:
    first = git(mounted.repo, "rev-parse", "HEAD").strip()
    (mounted.repo / "README").write_text("changed\n")
    git(mounted.repo, "commit", "-qam", "second")
    (mounted.repo / "dirty.txt").write_text("untracked\n")
    expfs(mounted.repo, "exp", "new", "old", "--from", first)
    expfs(mounted.repo, "exp", "new", "now")
    old = mounted.repo.parent / "old"
    now = mounted.repo.parent / "now"
    expfs(mounted.repo, "mount", "old", str(old))
    try:
        expfs(mounted.repo, "mount", "now", str(now))
        try:
            assert (old / "README").read_text() == "seed\n"
            assert not (old / "dirty.txt").exists()
            assert (now / "README").read_text() == "changed\n"
            assert (now / "dirty.txt").read_text() == "untracked\n"
            assert git(old, "rev-parse", "HEAD").strip() == first
            assert git(old, "status", "--porcelain") == ""
            assert git(now, "status", "--porcelain") == "A  dirty.txt\n"
        finally:
            expfs(mounted.repo, "umount", "now")
    finally:
        expfs(mounted.repo, "umount", "old")


def test_git_link_hidden_from_snapshot(mounted: Mount) -> None:
    assert (mounted.path / ".git").read_text().startswith("gitdir: ")
    assert ".git" not in os.listdir(mounted.path)
    with pytest.raises(PermissionError):
        (mounted.path / ".git").unlink()
    with client(mounted) as c:
        digest = c.snapshot()
    store = open_store(str(mounted.store_root))
    names = [e.name for e in store.get_tree(digest)]
    assert b".git" not in names
    assert b"README" in names


def test_concurrent_control_clients(mounted: Mount) -> None:
    errors: list[BaseException] = []

    def ping_many() -> None:
        try:
            with client(mounted) as c:
                for _ in range(50):
                    c.ping()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=ping_many) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_mount_on_nonempty_folder_rejected(mounted: Mount, tmp_path: Path) -> None:
    expfs(mounted.repo, "exp", "new", "e2")
    target = tmp_path / "full"
    target.mkdir()
    (target / "mine.txt").write_text("keep me visible\n")
    second = Mount(mounted.repo, "e2", target)
    try:
        proc = expfs(mounted.repo, "mount", "e2", str(target), check=False)
        assert proc.returncode == 2
        assert f"mount point {target} is not empty (1 entry)" in proc.stderr
        assert "pass --nonempty" in proc.stderr
        assert not is_mounted(target)
        assert (target / "mine.txt").read_text() == "keep me visible\n"

        expfs(mounted.repo, "mount", "e2", str(target), "--nonempty")
        assert is_mounted(target)
        assert (target / "README").read_text() == "seed\n"
        assert not (target / "mine.txt").exists()
    finally:
        force_unmount(second, second.daemon_pid())
    assert not is_mounted(target)
    assert (target / "mine.txt").read_text() == "keep me visible\n"
