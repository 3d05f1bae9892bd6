"""Real tools inside a mounted experiment: git, pip, sqlite, tar, make, rsync."""

from __future__ import annotations

import fcntl
import mmap
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

pytestmark = pytest.mark.fuse


def run(cwd: Path, *args: str, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        args, cwd=cwd, capture_output=True, text=True, env={**os.environ, **(env or {})}
    )
    assert proc.returncode == 0, f"{' '.join(args)} failed: {proc.stdout}{proc.stderr}"
    return proc.stdout


def test_git_workflow_in_new_repo(ws: Path) -> None:
    repo = ws / "proj"
    repo.mkdir()
    run(repo, "git", "init", "-q")
    (repo / "a.txt").write_text("one\n")
    (repo / "run.sh").write_text("#!/bin/sh\n")
    (repo / "run.sh").chmod(0o755)
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-qm", "first")
    assert run(repo, "git", "status", "--porcelain") == ""
    run(repo, "git", "checkout", "-qb", "feature")
    (repo / "a.txt").write_text("two\n")
    assert run(repo, "git", "status", "--porcelain") == " M a.txt\n"
    run(repo, "git", "commit", "-qam", "second")
    run(repo, "git", "checkout", "-q", "main")
    assert (repo / "a.txt").read_text() == "one\n"
    run(repo, "git", "checkout", "-q", "feature")
    assert (repo / "a.txt").read_text() == "two\n"
    assert run(repo, "git", "fsck", "--strict").strip() == ""
    assert run(repo, "git", "log", "--format=%s").split() == ["second", "first"]


def test_git_at_root_sees_experiment(ws: Path, mounted: object) -> None:
    repo = mounted.repo  # type: ignore[attr-defined]
    head = run(repo, "git", "rev-parse", "HEAD")
    assert run(ws, "git", "rev-parse", "HEAD") == head
    assert run(ws, "git", "status", "--porcelain") == ""
    (ws / "README").write_text("changed in the experiment\n")
    (ws / "new.txt").write_text("new\n")
    assert run(ws, "git", "status", "--porcelain") == " M README\n?? new.txt\n"
    assert "changed in the experiment" in run(ws, "git", "diff")
    run(ws, "git", "checkout", "--", "README")
    assert (ws / "README").read_text() == "seed\n"
    assert run(repo, "git", "status", "--porcelain") == ""
    assert (repo / "README").read_text() == "seed\n"
    assert run(ws / "data", "git", "rev-parse", "--show-toplevel").strip() == str(ws)


def build_wheel(dest: Path) -> Path:
    """Build a tiny pure-Python wheel with the standard library only."""
    import base64
    import hashlib
    import zipfile

    files = {
        "tinypkg/__init__.py": b"VALUE = 42\n",
        "tinypkg-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: tinypkg\n"
        b"Version: 1.0\n",
        "tinypkg-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\n"
        b"Root-Is-Purelib: true\nTag: py3-none-any\n",
    }
    rows = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
        rows.append(f"{name},sha256={digest.decode()},{len(data)}")
    rows.append("tinypkg-1.0.dist-info/RECORD,,")
    wheel = dest / "tinypkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        zf.writestr("tinypkg-1.0.dist-info/RECORD", "\n".join(rows) + "\n")
    return wheel


def test_venv_and_pip_install(ws: Path, tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path)
    run(ws, sys.executable, "-m", "venv", "venv")
    python = ws / "venv" / "bin" / "python"
    run(ws, str(python), "-m", "pip", "install", "-q", "--no-index", str(wheel))
    out = run(ws, str(python), "-c", "import tinypkg; print(tinypkg.VALUE)")
    assert out.strip() == "42"


@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_sqlite_several_writers(ws: Path, journal: str) -> None:
    path = str(ws / "t.db")
    setup = sqlite3.connect(path)
    setup.execute(f"pragma journal_mode={journal}")
    setup.execute("create table t(writer, i)")
    setup.commit()
    setup.close()
    script = textwrap.dedent(
        """
        import sqlite3, sys
        c = sqlite3.connect(sys.argv[1], timeout=60)
        for i in range(200):
            with c:
                c.execute("insert into t values (?, ?)", (sys.argv[2], i))
        """
    )
    writers = [
        subprocess.Popen([sys.executable, "-c", script, path, str(n)]) for n in range(4)
    ]
    assert [w.wait() for w in writers] == [0, 0, 0, 0]
    check = sqlite3.connect(path)
    assert check.execute("select count(*) from t").fetchone()[0] == 800
    assert check.execute("pragma integrity_check").fetchone()[0] == "ok"
    check.close()


def test_tar_create_and_extract(ws: Path) -> None:
    src = ws / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "f.bin").write_bytes(os.urandom(200_000))
    (src / "x.txt").write_text("x\n")
    os.symlink("x.txt", src / "link")
    run(ws, "tar", "cf", "src.tar", "src")
    (ws / "out").mkdir()
    run(ws, "tar", "xf", "src.tar", "-C", "out")
    run(ws, "diff", "-r", "--no-dereference", "src", "out/src")
    assert os.readlink(ws / "out" / "src" / "link") == "x.txt"


def test_make_builds_c_program(ws: Path) -> None:
    if shutil.which("gcc") is None or shutil.which("make") is None:
        pytest.skip("gcc or make is not installed: apt-get install gcc make")
    proj = ws / "c"
    proj.mkdir()
    (proj / "hello.c").write_text(
        '#include <stdio.h>\nint main(void) { puts("hello"); return 0; }\n'
    )
    (proj / "Makefile").write_text("hello: hello.o\n\tgcc -o $@ $^\n")
    run(proj, "make", "-s")
    assert run(proj, "./hello") == "hello\n"
    assert "is up to date" in run(proj, "make", "hello")


def make_tree(root: Path) -> None:
    (root / "d").mkdir(parents=True)
    (root / "d" / "exec.sh").write_text("#!/bin/sh\n")
    (root / "d" / "exec.sh").chmod(0o750)
    (root / "ro.txt").write_text("read only\n")
    (root / "ro.txt").chmod(0o444)
    os.symlink("ro.txt", root / "link")
    for path in [root / "d" / "exec.sh", root / "ro.txt", root / "d"]:
        os.utime(path, ns=(1_500_000_000_123_456_789, 1_600_000_000_987_654_321))


@pytest.mark.parametrize("tool", ["cp", "rsync"])
def test_copy_preserves_times_modes(ws: Path, tmp_path: Path, tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed")
    src = tmp_path / "src"
    make_tree(src)
    dest = ws / "copy"
    if tool == "cp":
        run(ws, "cp", "-a", str(src), str(dest))
    else:
        run(ws, "rsync", "-a", f"{src}/", f"{dest}/")
    for rel in ["d/exec.sh", "ro.txt", "d"]:
        a, b = os.stat(src / rel), os.stat(dest / rel)
        assert b.st_mode == a.st_mode, rel
        assert b.st_mtime_ns == a.st_mtime_ns, rel
    assert os.readlink(dest / "link") == "ro.txt"
    back = tmp_path / "back"
    run(ws, "cp", "-a", str(dest), str(back))
    assert os.stat(back / "d" / "exec.sh").st_mtime_ns == 1_600_000_000_987_654_321


def test_editor_atomic_save(ws: Path) -> None:
    target = ws / "notes.txt"
    target.write_text("old\n")
    target.chmod(0o640)
    ino = target.stat().st_ino
    reader = open(target)
    tmp = ws / ".notes.txt.swp"
    with open(tmp, "w") as f:
        f.write("new\n")
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o640)
    os.rename(tmp, target)
    assert target.read_text() == "new\n"
    assert target.stat().st_ino != ino
    assert target.stat().st_mode & 0o777 == 0o640
    assert reader.read() == "old\n"
    reader.close()
    assert sorted(p.name for p in ws.iterdir() if p.name.startswith(".notes")) == []


def test_mmap_writes_reach_file(ws: Path) -> None:
    path = ws / "data" / "base.txt"
    size = path.stat().st_size
    with open(path, "r+b") as f:
        mapped = mmap.mmap(f.fileno(), size)
        mapped[:4] = b"ABCD"
        mapped[size - 2 : size] = b"Z\n"
        mapped.flush()
        mapped.close()
    data = path.read_bytes()
    assert data[:4] == b"ABCD"
    assert data[-2:] == b"Z\n"
    new = ws / "mapped.bin"
    with open(new, "w+b") as f:
        f.truncate(1 << 20)
        mapped = mmap.mmap(f.fileno(), 1 << 20)
        mapped[4096:4100] = b"page"
        mapped.close()
    assert new.read_bytes()[4096:4100] == b"page"


def test_delete_10000_while_listing(ws: Path) -> None:
    folder = ws / "many"
    folder.mkdir()
    for i in range(10_000):
        (folder / f"f{i:05d}").touch()
    assert len(os.listdir(folder)) == 10_000
    deleted = 0
    with os.scandir(folder) as entries:
        for entry in entries:
            os.unlink(entry.path)
            deleted += 1
    assert deleted == 10_000
    assert os.listdir(folder) == []
    folder.rmdir()
    assert not folder.exists()


def test_sparse_5gib_file(ws: Path) -> None:
    path = ws / "sparse.bin"
    size = 5 << 30
    with open(path, "wb") as f:
        f.seek(size - 5)
        f.write(b"tail!")
        f.seek(1 << 32)
        f.write(b"at4G")
    assert path.stat().st_size == size
    with open(path, "rb") as f:
        f.seek(size - 5)
        assert f.read() == b"tail!"
        f.seek(1 << 32)
        assert f.read(4) == b"at4G"
        f.seek(123_456_789)
        assert f.read(16) == b"\0" * 16


LOCKER = textwrap.dedent(
    """
    import fcntl, os, sys, time
    kind, path = sys.argv[1], sys.argv[2]
    fd = os.open(path, os.O_RDWR)
    if kind == "flock":
        fcntl.flock(fd, fcntl.LOCK_EX)
    elif kind == "posix":
        fcntl.lockf(fd, fcntl.LOCK_EX)
    else:
        import struct
        arg = struct.pack("hhqqi", fcntl.F_WRLCK, 0, 0, 0, 0)
        fcntl.fcntl(fd, 37, arg)  # F_OFD_SETLK
    print("locked", flush=True)
    sys.stdin.read()
    """
)


def try_lock(kind: str, path: Path) -> bool:
    fd = os.open(path, os.O_RDWR)
    try:
        if kind == "flock":
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        elif kind == "posix":
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:
            import struct

            arg = struct.pack("hhqqi", fcntl.F_WRLCK, 0, 0, 0, 0)
            fcntl.fcntl(fd, 37, arg)  # F_OFD_SETLK
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


@pytest.mark.parametrize("kind", ["posix", "ofd", "flock"])
def test_locks_exclude_other_process(ws: Path, kind: str) -> None:
    path = ws / "lockfile"
    path.write_text("lock\n")
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCKER, kind, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        assert not try_lock(kind, path)
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
    assert try_lock(kind, path)


def test_parallel_writers_distinct_files(ws: Path) -> None:
    errors: list[BaseException] = []

    def write(n: int) -> None:
        try:
            for i in range(50):
                (ws / f"w{n}-{i}").write_bytes(bytes([n]) * 10_000)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert (ws / "w3-49").read_bytes() == b"\3" * 10_000
