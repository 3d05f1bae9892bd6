"""FUSE operations called directly, without a mount, under trio."""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyfuse3
import pytest
import trio

from expfs.fuse.ops import WorkspaceOperations
from expfs.store import Store
from expfs.store.fsck import fsck
from expfs.store.trees import Digest
from expfs.tree.snapshot import snapshot_path
from expfs.workspace import ROOT_INO, Workspace

CTX = SimpleNamespace(uid=os.getuid(), gid=os.getgid(), pid=os.getpid(), umask=0o022)
FIELD_NAMES = ("atime", "mtime", "ctime", "mode", "uid", "gid", "size")


def fields(*changed: str) -> Any:
    return SimpleNamespace(**{f"update_{n}": n in changed for n in FIELD_NAMES})


@pytest.fixture
def ops(store: Store, tmp_path: Path) -> Iterator[WorkspaceOperations]:
    root = tmp_path / "base"
    (root / "dir").mkdir(parents=True)
    (root / "dir" / "file.txt").write_text("base content\n")
    (root / "big.bin").write_bytes(os.urandom(3 << 20))
    base: Digest = snapshot_path(store, str(root))
    workspace = Workspace.create(store, "ops", base)
    yield WorkspaceOperations(workspace)
    workspace.close()
    report = fsck(store)
    assert report.ok, report.problems


def run(fn: Any, *args: Any) -> Any:
    async def call() -> Any:
        return await fn(*args)

    return trio.run(call)


def errno_of(fn: Any, *args: Any) -> int:
    with pytest.raises(pyfuse3.FUSEError) as info:
        run(fn, *args)
    return info.value.errno


def lookup(ops: WorkspaceOperations, parent: int, name: bytes) -> int:
    return int(run(ops.lookup, parent, name, CTX).st_ino)


def read_file(ops: WorkspaceOperations, ino: int) -> bytes:
    info = run(ops.open, ino, os.O_RDONLY, CTX)
    data = run(ops.read, info.fh, 0, 1 << 24)
    run(ops.release, info.fh)
    return bytes(data)


def list_names(
    ops: WorkspaceOperations, ino: int, monkeypatch: pytest.MonkeyPatch
) -> list[bytes]:
    seen: list[bytes] = []

    def reply(token: object, name: bytes, attrs: object, cookie: int) -> bool:
        seen.append(name)
        return True

    monkeypatch.setattr(pyfuse3, "readdir_reply", reply)
    fh = run(ops.opendir, ino, CTX)
    run(ops.readdir, fh, 0, None)
    run(ops.releasedir, fh)
    return seen


def test_lookup_missing_is_negative_entry(ops: WorkspaceOperations) -> None:
    attrs = run(ops.lookup, ROOT_INO, b"missing", CTX)
    assert attrs.st_ino == 0
    assert attrs.entry_timeout > 0


def test_getattr_of_base_file(ops: WorkspaceOperations) -> None:
    d = lookup(ops, ROOT_INO, b"dir")
    attrs = run(ops.getattr, lookup(ops, d, b"file.txt"), CTX)
    assert stat.S_ISREG(attrs.st_mode)
    assert attrs.st_size == 13
    assert attrs.st_nlink == 1
    assert run(ops.getattr, d, CTX).st_nlink == 2


def test_readdirplus_counts_lookups(
    ops: WorkspaceOperations, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert sorted(list_names(ops, ROOT_INO, monkeypatch)) == [b"big.bin", b"dir"]
    assert all(n.lookups == 1 for n in ops.workspace.nodes.values() if n.ino != 1)


def test_readdir_resumes_after_deletes(
    ops: WorkspaceOperations, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = run(ops.mkdir, ROOT_INO, b"d", 0o755, CTX).st_ino
    for i in range(300):
        info, _ = run(ops.create, d, f"f{i}".encode(), 0o644, os.O_WRONLY, CTX)
        run(ops.release, info.fh)
    seen: list[bytes] = []
    state = {"cookie": 0, "budget": 0}

    def reply(token: object, name: bytes, attrs: object, cookie: int) -> bool:
        if state["budget"] == 0:
            return False
        state["budget"] -= 1
        seen.append(name)
        state["cookie"] = cookie
        return True

    monkeypatch.setattr(pyfuse3, "readdir_reply", reply)
    fh = run(ops.opendir, d, CTX)
    while True:
        state["budget"] = 17
        before = len(seen)
        run(ops.readdir, fh, state["cookie"], None)
        for name in seen[before:]:
            run(ops.unlink, d, name, CTX)
        if len(seen) == before:
            break
    run(ops.releasedir, fh)
    assert len(seen) == 300
    assert len(set(seen)) == 300
    run(ops.rmdir, ROOT_INO, b"d", CTX)


def test_write_copies_up_large_file_in_thread(ops: WorkspaceOperations) -> None:
    ino = lookup(ops, ROOT_INO, b"big.bin")
    original = read_file(ops, ino)
    info = run(ops.open, ino, os.O_RDWR, CTX)
    assert info.keep_cache
    assert run(ops.write, info.fh, 10, b"XYZ") == 3
    run(ops.release, info.fh)
    assert read_file(ops, ino) == original[:10] + b"XYZ" + original[13:]


def test_create_exclusive_and_truncate(ops: WorkspaceOperations) -> None:
    d = lookup(ops, ROOT_INO, b"dir")
    code = errno_of(ops.create, d, b"file.txt", 0o644, os.O_WRONLY | os.O_EXCL, CTX)
    assert code == errno.EEXIST
    ino = lookup(ops, d, b"file.txt")
    info = run(ops.open, ino, os.O_WRONLY | os.O_TRUNC, CTX)
    run(ops.write, info.fh, 0, b"new")
    run(ops.release, info.fh)
    assert read_file(ops, ino) == b"new"


def test_setattr_times_survive_flush(ops: WorkspaceOperations) -> None:
    info, attrs = run(ops.create, ROOT_INO, b"x", 0o644, os.O_WRONLY, CTX)
    run(ops.write, info.fh, 0, b"a")
    new = pyfuse3.EntryAttributes()
    new.st_atime_ns = new.st_mtime_ns = 10**18
    run(ops.setattr, attrs.st_ino, new, fields("atime", "mtime"), info.fh, CTX)
    run(ops.write, info.fh, 1, b"b")
    run(ops.flush, info.fh)
    run(ops.release, info.fh)
    after = run(ops.getattr, attrs.st_ino, CTX)
    assert after.st_mtime_ns == 10**18
    assert after.st_size == 2


def test_setattr_mode_and_truncate(ops: WorkspaceOperations) -> None:
    d = lookup(ops, ROOT_INO, b"dir")
    ino = lookup(ops, d, b"file.txt")
    new = pyfuse3.EntryAttributes()
    new.st_mode = stat.S_IFREG | 0o600
    new.st_size = 4
    attrs = run(ops.setattr, ino, new, fields("mode", "size"), None, CTX)
    assert stat.S_IMODE(attrs.st_mode) == 0o600
    assert read_file(ops, ino) == b"base"


def test_errors_map_to_errno(ops: WorkspaceOperations) -> None:
    d = lookup(ops, ROOT_INO, b"dir")
    assert errno_of(ops.rmdir, ROOT_INO, b"dir", CTX) == errno.ENOTEMPTY
    assert errno_of(ops.mkdir, ROOT_INO, b"n" * 256, 0o755, CTX) == errno.ENAMETOOLONG
    assert errno_of(ops.unlink, ROOT_INO, b"nope", CTX) == errno.ENOENT
    assert errno_of(ops.mknod, d, b"dev", stat.S_IFCHR | 0o600, 1, CTX) == errno.EPERM
    assert errno_of(ops.getxattr, d, b"user.none", CTX) == pyfuse3.ENOATTR
    code = errno_of(
        ops.rename,
        ROOT_INO,
        b"big.bin",
        ROOT_INO,
        b"dir",
        pyfuse3.RENAME_NOREPLACE,
        CTX,
    )
    assert code == errno.EEXIST


def test_unexpected_error_is_eio(
    ops: WorkspaceOperations,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(ino: int) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(ops.workspace, "node", broken)
    with caplog.at_level(logging.ERROR, logger="expfs.fuse.ops"):
        assert errno_of(ops.getattr, 7, CTX) == errno.EIO
    assert "getattr on inode 7 failed" in caplog.text


def test_fifo_symlink_link_and_rename(ops: WorkspaceOperations) -> None:
    fifo = run(ops.mknod, ROOT_INO, b"pipe", stat.S_IFIFO | 0o644, 0, CTX)
    assert stat.S_ISFIFO(fifo.st_mode)
    link = run(ops.symlink, ROOT_INO, b"l", b"dir/file.txt", CTX)
    assert run(ops.readlink, link.st_ino, CTX) == b"dir/file.txt"
    d = lookup(ops, ROOT_INO, b"dir")
    f = lookup(ops, d, b"file.txt")
    assert run(ops.link, f, ROOT_INO, b"hard", CTX).st_nlink == 2
    run(ops.rename, ROOT_INO, b"hard", ROOT_INO, b"big.bin", 0, CTX)
    assert lookup(ops, ROOT_INO, b"big.bin") == f
    run(ops.rename, ROOT_INO, b"l", d, b"file.txt", pyfuse3.RENAME_EXCHANGE, CTX)
    assert lookup(ops, ROOT_INO, b"l") == f
    assert lookup(ops, d, b"file.txt") == link.st_ino


def test_xattrs_round_trip(ops: WorkspaceOperations) -> None:
    run(ops.setxattr, ROOT_INO, b"user.k", b"v", CTX)
    assert run(ops.getxattr, ROOT_INO, b"user.k", CTX) == b"v"
    assert list(run(ops.listxattr, ROOT_INO, CTX)) == [b"user.k"]
    run(ops.removexattr, ROOT_INO, b"user.k", CTX)
    assert errno_of(ops.getxattr, ROOT_INO, b"user.k", CTX) == pyfuse3.ENOATTR


def test_fsync_and_statfs(ops: WorkspaceOperations) -> None:
    info, _ = run(ops.create, ROOT_INO, b"s", 0o644, os.O_WRONLY, CTX)
    run(ops.write, info.fh, 0, b"durable")
    run(ops.fsync, info.fh, False)
    run(ops.release, info.fh)
    fh = run(ops.opendir, ROOT_INO, CTX)
    run(ops.fsyncdir, fh, False)
    run(ops.releasedir, fh)
    assert run(ops.statfs, CTX).f_namemax == 255


def test_unlinked_open_file_vanishes_after_forget(ops: WorkspaceOperations) -> None:
    info, attrs = run(ops.create, ROOT_INO, b"tmp", 0o600, os.O_RDWR, CTX)
    run(ops.unlink, ROOT_INO, b"tmp", CTX)
    run(ops.write, info.fh, 0, b"abc")
    assert run(ops.read, info.fh, 0, 3) == b"abc"
    assert run(ops.getattr, attrs.st_ino, CTX).st_nlink == 0
    run(ops.release, info.fh)
    run(ops.forget, [(attrs.st_ino, 1)])
    assert not os.listdir(ops.workspace.upper.folder)
    names = [e.name for e in ops.workspace.store.get_tree(ops.workspace.snapshot())]
    assert names == [b"big.bin", b"dir"]
