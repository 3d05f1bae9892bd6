"""Lazy restore from a remote in a real mount, over file:// and SeaweedFS's S3.

A first clone runs a stage whose output is a 1 GiB file (sparse, with
real data in three places) and pushes it. A second clone runs `repro` in
a mounted workspace: the stage is restored without running and nothing
of the big blob is downloaded until the file is opened. For S3, the
server's own traffic counter checks that; for both, the local store and
the daemon's log do.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import blake3
import pytest
import yaml
from mounting import mounted_experiment

from expfs.remote.config import RemoteConfig
from expfs.remote.transfer import Remote, object_rel
from expfs.store.objects import hash_file
from tests.remote_servers import S3Server, s3_options, seaweedfs

__all__ = ["seaweedfs"]

pytestmark = pytest.mark.fuse

EXPFS = [sys.executable, "-m", "expfs"]
MIB = 1 << 20
BIG_MIB = 1024
# Offsets (in MiB) of the 1 MiB chunks of real data in big.bin.
DATA_AT_MIB = (0, BIG_MIB // 2, BIG_MIB - 1)

PIPELINE = """\
stages:
  gen:
    cmd: python3 gen.py
    deps: [gen.py]
    params: [size_mib]
    outs: [big.bin, parts]
"""

GEN = """\
import os, random, yaml
size_mib = yaml.safe_load(open("params.yaml"))["size_mib"]
with open("big.bin", "wb") as f:
    f.truncate(size_mib << 20)
    for at in sorted({0, size_mib // 2, size_mib - 1}):
        f.seek(at << 20)
        f.write(random.Random(at).randbytes(1 << 20))
os.makedirs("parts", exist_ok=True)
for i in range(3):
    with open(f"parts/p{i}", "w") as f:
        f.write(str(i) * 1000)
with open("ran.log", "a") as f:
    f.write("ran\\n")
"""


def needs_fuse() -> None:
    if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
        pytest.skip("needs /dev/fuse and fusermount3 (apt-get install fuse3)")


def expfs(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*EXPFS, *args], cwd=cwd, capture_output=True, text=True)
    assert proc.returncode == 0, f"expfs {' '.join(args)} failed: {proc.stderr}"
    return proc


def expected_chunk(at_mib: int) -> bytes:
    return random.Random(at_mib).randbytes(MIB)


@dataclass
class Origin:
    """A first clone that ran the stage and pushed it to a remote."""

    repo: Path
    url: str
    options: dict[str, str]
    big: str  # digest of big.bin
    size_mib: int
    server: S3Server | None

    def add_remote(self, repo: Path) -> None:
        flags = [a for k, v in self.options.items() for a in ("-o", f"{k}={v}")]
        expfs(repo, "remote", "add", "origin", self.url, "--default", "--local", *flags)

    def clone(self, folder: Path) -> Path:
        subprocess.run(["git", "clone", "-q", str(self.repo), str(folder)], check=True)
        expfs(folder, "init")
        self.add_remote(folder)
        return folder

    def corrupt(self, digest: str) -> None:
        """Overwrite an object on the remote with other bytes."""
        backend = Remote(RemoteConfig("origin", self.url, options=self.options)).backend
        path = backend.path(object_rel(digest))
        if self.server is None:
            os.chmod(path, 0o644)
            with open(path, "wb") as f:
                f.write(b"corrupt")
        else:
            backend.fs.pipe_file(path, b"corrupt")

    def sent_bytes(self) -> int | None:
        return None if self.server is None else self.server.sent_bytes()


def make_origin(
    folder: Path,
    url: str,
    options: dict[str, str],
    size_mib: int,
    server: S3Server | None,
) -> Origin:
    repo = folder / "origin"
    repo.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "dvc.yaml").write_text(PIPELINE)
    (repo / "gen.py").write_text(GEN)
    (repo / "params.yaml").write_text(f"size_mib: {size_mib}\n")
    (repo / ".gitignore").write_text("ran.log\n")
    subprocess.run(["git", "-C", str(repo), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(repo), "commit", "-qm", "pipeline"], check=True)
    expfs(repo, "init")
    origin = Origin(repo, url, options, "", size_mib, server)
    origin.add_remote(repo)
    # repro pushes what it records to the default remote.
    assert "stage 'gen': ran" in expfs(repo, "repro").stdout
    lock = yaml.safe_load((repo / "expfs.lock").read_text())
    outs = {o["path"]: o for o in lock["stages"]["gen"]["outs"]}
    origin.big = outs["big.bin"]["blake3"]
    return origin


@pytest.fixture(scope="module")
def file_origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Origin]:
    folder = tmp_path_factory.mktemp("lazy-file")
    yield make_origin(folder, f"file://{folder / 'remote'}", {}, BIG_MIB, None)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module", params=["file", "s3"])
def origin(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Origin]:
    if request.param == "file":
        yield request.getfixturevalue("file_origin")
        return
    server: S3Server = request.getfixturevalue("seaweedfs")
    folder = tmp_path_factory.mktemp("lazy-s3")
    url = server.url(f"/{uuid.uuid4().hex}")
    yield make_origin(folder, url, s3_options(server), BIG_MIB, server)
    shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def mount_clone(origin: Origin, folder: Path) -> Iterator[Path]:
    """Clone `origin` into `folder` and mount experiment e1; yield the mount point."""
    needs_fuse()
    clone = origin.clone(folder)
    try:
        with mounted_experiment(clone) as mountpoint:
            yield mountpoint
    finally:
        shutil.rmtree(clone, ignore_errors=True)


@pytest.fixture
def mounted_clone(origin: Origin, tmp_path: Path) -> Iterator[Path]:
    with mount_clone(origin, tmp_path / "clone") as mountpoint:
        yield mountpoint


def store_of(mountpoint: Path) -> Path:
    return mountpoint.parent.parent


def daemon_log(mountpoint: Path) -> str:
    return (store_of(mountpoint) / "logs" / "e1.log").read_text()


def blob_path(mountpoint: Path, digest: str) -> Path:
    return store_of(mountpoint) / "objects" / digest[:2] / digest


def read_through_mount(path: Path) -> tuple[str, dict[int, bytes]]:
    """Return the BLAKE3 digest of a file read in full, and its data chunks."""
    hasher = blake3.blake3()
    chunks: dict[int, bytes] = {}
    with open(path, "rb") as f:
        index = 0
        while block := f.read(MIB):
            hasher.update(block)
            if index in DATA_AT_MIB:
                chunks[index] = block
            index += 1
    return hasher.hexdigest(), chunks


def test_lazy_restore_fetches_on_open(origin: Origin, mounted_clone: Path) -> None:
    before = origin.sent_bytes()
    out = expfs(mounted_clone, "repro").stdout
    assert "stage 'gen': restored" in out
    assert not (mounted_clone / "ran.log").exists()
    big = mounted_clone / "big.bin"
    size = origin.size_mib * MIB

    # stat, ls -l and listing take sizes from the trees: nothing is fetched.
    assert big.stat().st_size == size
    listing = subprocess.run(
        ["ls", "-l", str(mounted_clone)], capture_output=True, text=True, check=True
    ).stdout
    assert f" {size} " in listing
    assert sorted(os.listdir(mounted_clone / "parts")) == ["p0", "p1", "p2"]
    assert not blob_path(mounted_clone, origin.big).exists()
    assert os.listdir(store_of(mounted_clone) / "tmp") == []
    assert f"fetching blob {origin.big}" not in daemon_log(mounted_clone)
    if before is not None:
        after_restore = origin.sent_bytes()
        assert after_restore is not None
        assert after_restore - before < MIB, "the restore downloaded file content"

    digest, chunks = read_through_mount(big)
    assert digest == origin.big
    for at in DATA_AT_MIB:
        assert chunks[at] == expected_chunk(at)
    assert hash_file(str(blob_path(mounted_clone, origin.big))) == origin.big
    assert (mounted_clone / "parts" / "p1").read_text() == "1" * 1000
    if before is not None:
        after_read = origin.sent_bytes()
        assert after_read is not None
        assert after_read - before >= size
    log = daemon_log(mounted_clone)
    assert log.count(f"fetched blob {origin.big}") == 1


def test_concurrent_opens_fetch_once(file_origin: Origin, tmp_path: Path) -> None:
    # The remote does not matter here, so only file:// runs it.
    with mount_clone(file_origin, tmp_path / "clone") as mountpoint:
        check_one_fetch(file_origin, mountpoint)


def check_one_fetch(origin: Origin, mounted_clone: Path) -> None:
    expfs(mounted_clone, "repro")
    big = mounted_clone / "big.bin"
    barrier = threading.Barrier(3)
    heads: list[bytes] = []
    errors: list[BaseException] = []

    def read_head() -> None:
        try:
            barrier.wait()
            with open(big, "rb") as f:
                heads.append(f.read(4096))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=read_head) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert heads == [expected_chunk(0)[:4096]] * 3
    assert daemon_log(mounted_clone).count(f"fetched blob {origin.big}") == 1


def test_corrupt_remote_object_is_eio(origin: Origin, tmp_path: Path) -> None:
    # A run of its own (3 MiB) on a fresh remote, so the shared origin stays intact.
    folder = tmp_path / "corrupt"
    if origin.server is None:
        url = f"file://{folder / 'remote'}"
    else:
        url = origin.server.url(f"/{uuid.uuid4().hex}")
    other = make_origin(folder, url, origin.options, 3, origin.server)
    other.corrupt(other.big)
    with mount_clone(other, tmp_path / "clone") as mountpoint:
        assert "stage 'gen': restored" in expfs(mountpoint, "repro").stdout
        assert (mountpoint / "big.bin").stat().st_size == 3 * MIB
        with pytest.raises(OSError) as info:
            (mountpoint / "big.bin").read_bytes()
        assert info.value.errno == 5  # EIO
        errors = [
            line
            for line in daemon_log(mountpoint).splitlines()
            if " ERROR " in line and other.big in line
        ]
        assert errors, daemon_log(mountpoint)
        assert "origin" in errors[0]
        assert not blob_path(mountpoint, other.big).exists()
        assert os.listdir(store_of(mountpoint) / "tmp") == []
        # The other files of the same restore still read.
        assert (mountpoint / "parts" / "p2").read_text() == "2" * 1000
        clone = store_of(mountpoint).parent
        fsck = subprocess.run(
            [*EXPFS, "fsck"], cwd=clone, capture_output=True, text=True
        )
        assert fsck.returncode == 0, fsck.stdout


def test_checkout_restore_fetches_then_materializes(
    origin: Origin, tmp_path: Path
) -> None:
    clone = origin.clone(tmp_path / "checkout")
    try:
        out = expfs(clone, "repro").stdout
        assert "stage 'gen': restored" in out
        assert not (clone / "ran.log").exists()
        blob = clone / ".expfs" / "objects" / origin.big[:2] / origin.big
        assert hash_file(str(blob)) == origin.big
        assert hash_file(str(clone / "big.bin")) == origin.big
        with open(clone / "big.bin", "rb") as f:
            f.seek(DATA_AT_MIB[1] * MIB)
            assert f.read(MIB) == expected_chunk(DATA_AT_MIB[1])
        assert (clone / "parts" / "p0").read_text() == "0" * 1000
    finally:
        shutil.rmtree(clone, ignore_errors=True)
