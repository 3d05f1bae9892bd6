"""The store commands as a user runs them, through `main()` and subprocesses."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import blake3
import pytest

from expfs.store import Store
from expfs.store.lmdbenv import close_environment
from expfs_cli.main import main
from tests.conftest import git


def test_help_lists_store_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for command in ("init", "snapshot", "ls", "diff", "materialize", "fsck"):
        assert command in out


def test_python_m_expfs_help() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "expfs", "--help"], capture_output=True, text=True
    )
    assert proc.returncode == 0
    assert "materialize" in proc.stdout


def run_cli(
    cwd: Path, *args: str, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    """Run `expfs ARGS` in-process from `cwd`; return (status, stdout, stderr)."""
    code = main(["-C", str(cwd), *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(autouse=True)
def restore_cwd(monkeypatch: pytest.MonkeyPatch) -> None:
    # `-C DIR` changes the working directory; monkeypatch undoes it.
    monkeypatch.chdir(os.getcwd())


def test_init_outside_git(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(tmp_path, "init", capsys=capsys)
    assert code == 1
    assert "not inside a Git work tree" in err
    assert "git init" in err
    assert "Traceback" not in err
    assert not (tmp_path / ".expfs").exists()


def test_init_idempotent(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(repo, "init", capsys=capsys)
    assert code == 0
    assert "created" in out
    code, out, _ = run_cli(repo, "init", capsys=capsys)
    assert code == 0
    assert "already exists" in out
    exclude = (repo / ".git" / "info" / "exclude").read_text().splitlines()
    assert exclude.count("/.expfs/") == 1


def test_init_from_subfolder_uses_root(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (repo / "deep" / "er").mkdir(parents=True)
    code, _, _ = run_cli(repo / "deep" / "er", "init", capsys=capsys)
    assert code == 0
    assert (repo / ".expfs" / "FORMAT").is_file()
    assert git(repo, "status", "--porcelain") == ""
    assert git(repo, "check-ignore", ".expfs") == ".expfs\n"


def test_store_command_without_store(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(repo, "fsck", capsys=capsys)
    assert code == 1
    assert "run `expfs init`" in err


def test_format_version_mismatch(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_cli(repo, "init", capsys=capsys)
    (repo / ".expfs" / "FORMAT").write_text("99\n")
    code, _, err = run_cli(repo, "fsck", capsys=capsys)
    assert code == 1
    assert "format version '99'" in err
    assert "reads version 1" in err
    assert "install the expfs release that wrote it" in err


@pytest.fixture
def initialized(repo: Path, capsys: pytest.CaptureFixture[str]) -> Iterator[Path]:
    run_cli(repo, "init", capsys=capsys)
    (repo / "d" / "e").mkdir(parents=True)
    (repo / "d" / "a.txt").write_text("alpha\n")
    (repo / "d" / "e" / "b.txt").write_text("beta\n")
    yield repo
    close_environment(str(repo / ".expfs" / "index"))


def snapshot(repo: Path, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    code, out, err = run_cli(repo, "snapshot", *args, capsys=capsys)
    assert code == 0, err
    return out.strip().splitlines()[-1]


def test_snapshot_ls_diff(
    initialized: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = snapshot(initialized, capsys, "d")
    assert len(first) == 64
    code, out, _ = run_cli(initialized, "ls", first[:8], capsys=capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("file 0644            6 ")
    assert lines[0].endswith("  a.txt")
    assert lines[1].startswith("dir  0755            5 ")
    assert lines[1].endswith("  e/")
    (initialized / "d" / "a.txt").write_text("ALPHA\n")
    second = snapshot(initialized, capsys, "d")
    code, out, _ = run_cli(initialized, "diff", first, second, capsys=capsys)
    assert code == 0
    assert out == "M a.txt\n"


def test_ls_recursive_and_subpath(
    initialized: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    digest = snapshot(initialized, capsys, "d")
    _, out, _ = run_cli(initialized, "ls", "-r", digest, capsys=capsys)
    assert [line.split()[-1] for line in out.splitlines()] == [
        "a.txt",
        "e/",
        "e/b.txt",
    ]
    _, out, _ = run_cli(initialized, "ls", digest, "e", capsys=capsys)
    assert out.split()[-1] == "b.txt"


def test_snapshot_rev_and_worktree(
    initialized: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    committed = snapshot(initialized, capsys, "--rev", "HEAD")
    worktree = snapshot(initialized, capsys)
    code, out, _ = run_cli(initialized, "diff", committed, worktree, capsys=capsys)
    assert code == 0
    assert out == "A d/a.txt\nA d/e/b.txt\n"


def test_cat_file_in_snapshot(
    initialized: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    digest = snapshot(initialized, capsys, "d")
    code, out, _ = run_cli(initialized, "cat", digest, "e/b.txt", capsys=capsys)
    assert code == 0
    assert out == "beta\n"


def test_unknown_digest(initialized: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(initialized, "ls", "deadbeef", capsys=capsys)
    assert code == 1
    assert "no object starting with deadbeef" in err


def test_invalid_digest(initialized: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(initialized, "diff", "HEAD", "xyz", capsys=capsys)
    assert code == 1
    assert "is not a digest" in err


def test_materialize_not_empty_needs_force(
    initialized: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    digest = snapshot(initialized, capsys, "d")
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "mine.txt").write_text("keep\n")
    code, _, err = run_cli(initialized, "materialize", digest, str(dest), capsys=capsys)
    assert code == 1
    assert "is not empty" in err
    assert "--force" in err
    assert sorted(os.listdir(dest)) == ["mine.txt"]
    code, out, _ = run_cli(
        initialized, "materialize", "--force", digest, str(dest), capsys=capsys
    )
    assert code == 0
    assert out.startswith("wrote 2 files (11 bytes)")
    assert (dest / "e" / "b.txt").read_text() == "beta\n"


def test_vanished_file_mid_snapshot(
    initialized: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from expfs.store.objects import Store

    original = Store._copy_to_temp

    def vanish(self: Store, path: str | bytes) -> tuple[str, str, int]:
        os.unlink(path)
        return original(self, path)

    monkeypatch.setattr(Store, "_copy_to_temp", vanish)
    code, out, err = run_cli(initialized, "snapshot", "d", capsys=capsys)
    assert code == 1
    assert "vanished while it was being snapshotted" in err
    assert "run the snapshot again" in err
    assert out == ""


def test_fsck_exit_status(
    initialized: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    snapshot(initialized, capsys, "d")
    code, out, _ = run_cli(initialized, "fsck", capsys=capsys)
    assert code == 0
    assert out.endswith(": 0 problems\n")
    objects = initialized / ".expfs" / "objects"
    alpha = blake3.blake3(b"alpha\n").hexdigest()
    beta = blake3.blake3(b"beta\n").hexdigest()
    corrupt = objects / alpha[:2] / alpha
    corrupt.chmod(0o644)
    corrupt.write_text("rot\n")
    (objects / beta[:2] / beta).unlink()
    code, out, _ = run_cli(initialized, "fsck", capsys=capsys)
    assert code == 1
    assert f"corrupt {alpha} {corrupt}" in out
    assert f"missing {beta}" in out


def test_counts_of_one_are_singular(
    initialized: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    one = initialized / "one"
    one.mkdir()
    (one / "a.txt").write_text("x")
    digest = snapshot(initialized, capsys, "one")
    dest = tmp_path / "copy"
    code, out, _ = run_cli(initialized, "materialize", digest, str(dest), capsys=capsys)
    assert code == 0
    assert out == f"wrote 1 file (1 byte) to {dest}\n"

    code, out, _ = run_cli(initialized, "fsck", capsys=capsys)
    assert code == 0
    assert out == "checked 1 blob (1 byte) and 1 tree: 0 problems\n"

    # Nothing references the snapshot, so gc removes its blob and tree.
    code, out, _ = run_cli(initialized, "gc", "--grace", "0", capsys=capsys)
    assert code == 0
    # The bytes count the tree's encoding too.
    expected = (
        r"removed 1 blob and 1 tree, \d+ bytes; kept 0 reachable blobs, 0 trees, "
        r"and 0 unreachable blobs and 0 trees younger than the grace period\n"
    )
    assert re.fullmatch(expected, out), out


HEAVY_MODULES = "('trio', 'pyfuse3', 'yaml')"
IMPORT_CHECK = f"""
import sys
from expfs_cli.main import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
heavy = {HEAVY_MODULES}
print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))
"""


@pytest.mark.parametrize(
    "args", [["--help"], ["fsck"], ["snapshot", "--help"]], ids=" ".join
)
def test_cli_imports_no_heavy_modules(initialized: Path, args: list[str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", IMPORT_CHECK, *args],
        cwd=initialized,
        capture_output=True,
        text=True,
    )
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_ls_diff_reject_file_digest(repo: Path, store: Store) -> None:
    (repo / "note.txt").write_text("hello\n")
    blob = store.put_file(str(repo / "note.txt"))
    for args in (["ls", blob], ["diff", blob, blob]):
        proc = subprocess.run(
            [sys.executable, "-m", "expfs", *args],
            cwd=repo,
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 2
        assert "is a file, not a snapshot of a folder" in proc.stderr
        assert "expfs cat" in proc.stderr


@pytest.mark.parametrize("target", ["missing", "file"])
def test_bad_c_folder_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], target: str
) -> None:
    folder = tmp_path / "missing"
    if target == "file":
        folder = tmp_path / "file.txt"
        folder.write_text("not a folder")
    code, _, err = run_cli(folder, "status", capsys=capsys)
    assert code == 2
    assert f"-C {folder}" in err
    assert "give an existing folder" in err
    assert "Traceback" not in err
