"""materialize: copy, hardlink and reflink modes, verification, destinations."""

from __future__ import annotations

import errno
import filecmp
import logging
import os
import stat
from pathlib import Path

import pytest

from expfs.errors import CorruptObject, DestinationNotEmpty, UsageError
from expfs.store import Store
from expfs.tree import materialize as materialize_module
from expfs.tree.materialize import materialize
from expfs.tree.snapshot import snapshot_path


@pytest.fixture
def source(repo: Path) -> Path:
    data = repo / "data"
    (data / "sub").mkdir(parents=True)
    (data / "empty").mkdir()
    (data / "a.txt").write_text("alpha\n")
    (data / "sub" / "b.txt").write_text("beta\n")
    script = data / "sub" / "run.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o755)
    frozen = data / "frozen.txt"
    frozen.write_text("read only\n")
    frozen.chmod(0o444)
    (data / "link").symlink_to("sub/b.txt")
    (data / "dangling").symlink_to("no/such/file")
    return data


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def assert_same_tree(left: Path, right: Path) -> None:
    compared = filecmp.dircmp(left, right)
    assert compared.left_only == []
    assert compared.right_only == []
    assert compared.diff_files == []
    for sub in compared.common_dirs:
        assert_same_tree(left / sub, right / sub)


def test_copy_restores_content_and_modes(
    store: Store, source: Path, tmp_path: Path
) -> None:
    digest = snapshot_path(store, str(source))
    out = tmp_path / "out"
    materialize(store, digest, str(out))
    assert_same_tree(source, out)
    assert mode(out / "sub" / "run.sh") == 0o755
    assert mode(out / "a.txt") == 0o644
    assert mode(out / "frozen.txt") == 0o444
    assert (out / "empty").is_dir()
    assert os.readlink(out / "link") == "sub/b.txt"
    assert os.readlink(out / "dangling") == "no/such/file"


def test_copy_does_not_share_blob_inode(
    store: Store, source: Path, tmp_path: Path
) -> None:
    digest = snapshot_path(store, str(source))
    materialize(store, digest, str(tmp_path / "out"))
    blob = store.blob_path(store.put_bytes(b"read only\n"))
    assert os.stat(tmp_path / "out" / "frozen.txt").st_ino != os.stat(blob).st_ino


def test_hardlink_where_modes_agree(store: Store, source: Path, tmp_path: Path) -> None:
    digest = snapshot_path(store, str(source))
    out = tmp_path / "out"
    materialize(store, digest, str(out), link="hardlink")
    frozen_blob = store.blob_path(store.put_bytes(b"read only\n"))
    alpha_blob = store.blob_path(store.put_bytes(b"alpha\n"))
    assert os.stat(out / "frozen.txt").st_ino == os.stat(frozen_blob).st_ino
    assert os.stat(out / "a.txt").st_ino != os.stat(alpha_blob).st_ino
    assert mode(out / "a.txt") == 0o644
    assert_same_tree(source, out)


def test_reflink_falls_back_with_one_warning(
    store: Store,
    source: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[int] = []

    def no_reflink(fd: int, request: int, arg: int) -> None:
        calls.append(request)
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))

    monkeypatch.setattr(materialize_module.fcntl, "ioctl", no_reflink)
    digest = snapshot_path(store, str(source))
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING):
        writer = materialize(store, digest, str(out), link="reflink")
    assert writer.reflink_failed
    assert calls == [materialize_module.FICLONE]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "copying instead" in warnings[0].getMessage()
    assert_same_tree(source, out)
    assert mode(out / "sub" / "run.sh") == 0o755


def test_reflink_on_this_filesystem(store: Store, source: Path, tmp_path: Path) -> None:
    digest = snapshot_path(store, str(source))
    out = tmp_path / "out"
    materialize(store, digest, str(out), link="reflink")
    assert_same_tree(source, out)


def test_corrupt_blob_fails_naming_it(
    store: Store, source: Path, tmp_path: Path
) -> None:
    digest = snapshot_path(store, str(source))
    blob = store.put_bytes(b"beta\n")
    os.chmod(store.blob_path(blob), 0o644)
    Path(store.blob_path(blob)).write_bytes(b"BETA\n")
    for link in ("copy", "hardlink", "reflink"):
        with pytest.raises(CorruptObject) as exc:
            materialize(store, digest, str(tmp_path / link), link=link)
        assert blob in str(exc.value)
        assert not (tmp_path / link / "sub" / "b.txt").exists()


def test_destination_not_empty(store: Store, source: Path, tmp_path: Path) -> None:
    digest = snapshot_path(store, str(source))
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine\n")
    with pytest.raises(DestinationNotEmpty, match="--force"):
        materialize(store, digest, str(out))
    assert sorted(os.listdir(out)) == ["keep.txt"]


def test_force_writes_over(store: Store, source: Path, tmp_path: Path) -> None:
    digest = snapshot_path(store, str(source))
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / "keep.txt").write_text("mine\n")
    (out / "a.txt").write_text("old alpha\n")
    (out / "empty").write_text("a file where the snapshot has a folder\n")
    materialize(store, digest, str(out), force=True)
    assert (out / "keep.txt").read_text() == "mine\n"
    assert (out / "a.txt").read_text() == "alpha\n"
    assert (out / "empty").is_dir()
    assert (out / "sub" / "b.txt").read_text() == "beta\n"


def test_destination_is_a_file(store: Store, source: Path, tmp_path: Path) -> None:
    digest = snapshot_path(store, str(source))
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(DestinationNotEmpty, match="not a folder"):
        materialize(store, digest, str(target))


def test_blob_digest_is_usage_error(store: Store, tmp_path: Path) -> None:
    blob = store.put_bytes(b"just a file\n")
    with pytest.raises(UsageError, match="not a snapshot of a folder"):
        materialize(store, blob, str(tmp_path / "out"))


def test_unknown_link_type(store: Store, source: Path, tmp_path: Path) -> None:
    digest = snapshot_path(store, str(source))
    with pytest.raises(UsageError, match="unknown link type"):
        materialize(store, digest, str(tmp_path / "out"), link="symlink")


def test_read_only_folder_restored(store: Store, repo: Path, tmp_path: Path) -> None:
    data = repo / "ro"
    (data / "locked").mkdir(parents=True)
    (data / "locked" / "f.txt").write_text("inside\n")
    (data / "locked").chmod(0o555)
    digest = snapshot_path(store, str(data))
    out = tmp_path / "out"
    materialize(store, digest, str(out))
    assert mode(out / "locked") == 0o555
    assert (out / "locked" / "f.txt").read_text() == "inside\n"
    (out / "locked").chmod(0o755)
    (data / "locked").chmod(0o755)


def test_non_utf8_names_materialize(store: Store, tmp_path: Path) -> None:
    root = os.fsencode(tmp_path) + b"/src"
    os.makedirs(root + b"/d\xe9")
    with open(root + b"/d\xe9/f\xff", "wb") as f:
        f.write(b"bytes\n")
    digest = snapshot_path(store, root)
    out = os.fsencode(tmp_path) + b"/out"
    materialize(store, digest, out)
    with open(out + b"/d\xe9/f\xff", "rb") as f:
        assert f.read() == b"bytes\n"
