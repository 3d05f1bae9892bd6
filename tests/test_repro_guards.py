"""`expfs repro` keeps what it must not touch: Git, the store, the stage and lock files.

Outputs are deleted before their stage runs, so an output path that names
Git's folder, the store, the stage file or a file Git tracks is rejected
before anything is deleted. A malformed lock file is an error, not a crash,
and a reader that closes the pipe early does not leave the stage blocked.
"""

from __future__ import annotations

import io
import shlex
import subprocess
from pathlib import Path

import pytest
from waiting_stage import EXPFS, run_expfs

from expfs.errors import UsageError
from expfs.repro.engine import Repro
from expfs.repro.place import CheckoutPlace
from expfs.store.objects import Store
from tests.conftest import git


def write_stage(root: Path, out: str, cmd: str = "echo made > made.txt") -> None:
    (root / "dvc.yaml").write_text(
        f"stages:\n  s1:\n    cmd: {cmd}\n    outs:\n      - {out}\n"
    )


@pytest.fixture
def checkout(repo: Path) -> Path:
    assert run_expfs(repo, "init").returncode == 0
    return repo


def listing(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir())


@pytest.mark.parametrize(
    ("out", "reason"),
    [
        (".git", "'.git' or a path inside it"),
        (".git/objects", "'.git' or a path inside it"),
        (".expfs", "'.expfs' or a path inside it"),
        ("sub/.git", "'.git' or a path inside it"),
        ("dvc.yaml", "'dvc.yaml' or a folder that contains it"),
        ("expfs.lock", "'expfs.lock' or a folder that contains it"),
    ],
)
def test_reserved_output_rejected(checkout: Path, out: str, reason: str) -> None:
    write_stage(checkout, out)
    before = listing(checkout)
    proc = run_expfs(checkout, "repro")
    assert proc.returncode == 2
    assert f"dvc.yaml:5: stage 's1': output '{out}' is {reason}" in proc.stderr
    assert "A run deletes its outputs first" in proc.stderr
    assert listing(checkout) == before
    assert git(checkout, "log", "--oneline")


def test_git_tracked_output_rejected(checkout: Path) -> None:
    (checkout / "notes").mkdir()
    (checkout / "notes" / "a.txt").write_text("kept\n")
    git(checkout, "add", "notes")
    git(checkout, "commit", "-qm", "notes")
    write_stage(checkout, "notes", cmd="mkdir -p notes && echo new > notes/a.txt")
    proc = run_expfs(checkout, "repro")
    assert proc.returncode == 2
    assert "stage 's1': output 'notes' is tracked by Git" in proc.stderr
    assert "`git rm -r --cached notes`" in proc.stderr
    assert (checkout / "notes" / "a.txt").read_text() == "kept\n"


@pytest.mark.parametrize(
    "text", ["stages: 5\n", "[1, 2]\n", "stages: {s1: [1]}\n", "schema: expfs-9\n"]
)
def test_malformed_lock_file_is_an_error(checkout: Path, text: str) -> None:
    write_stage(checkout, "made.txt")
    (checkout / "expfs.lock").write_text(text)
    proc = run_expfs(checkout, "repro")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "expfs.lock" in proc.stderr
    assert "delete it and run `expfs repro`" in proc.stderr
    assert not (checkout / "made.txt").exists()


@pytest.mark.parametrize("server", ["served", "own process"])
def test_closed_reader_does_not_block_stage(checkout: Path, server: str) -> None:
    # 200,000 lines on each stream fill any pipe buffer many times over.
    write_stage(
        checkout,
        "made.txt",
        cmd="seq 200000; seq 200000 >&2; echo made > made.txt",
    )
    (checkout / ".gitignore").write_text("made.txt\n")
    env_prefix = "EXPFS_NO_SERVER=1 " if server == "own process" else ""
    command = " ".join(EXPFS)
    proc = subprocess.run(
        [
            "bash",
            "-c",
            f"{env_prefix}{command} repro 2>&1 | head -3; exit ${{PIPESTATUS[0]}}",
        ],
        cwd=checkout,
        capture_output=True,
        text=True,
        timeout=120,
    )
    # Both streams reach `head`, so their first lines may interleave.
    lines = proc.stdout.splitlines()
    assert len(lines) == 3
    assert all(line.isdigit() for line in lines)
    assert "Traceback" not in proc.stderr
    assert proc.returncode in (0, 141)
    assert (checkout / "made.txt").read_text() == "made\n"


def repro_in(store: Store, root: Path) -> list[str]:
    """Run `expfs repro` in checkout `root` through the engine; return the actions."""
    engine = Repro(store, CheckoutPlace(store, str(root)), out=io.StringIO())
    return [outcome.action for outcome in engine.run()]


# Output names that Git would read as patterns or magic without literal
# pathspecs, each beside a tracked file that such a reading matches.
PATTERN_OUTPUTS = [
    ("out*", "outer.txt"),
    ("part?", "part1"),
    ("[ab].txt", "a.txt"),
    (":notes", "notes"),
    (":!skip", "README"),
    (":/README", "README"),
]


@pytest.mark.parametrize(("out", "tracked"), PATTERN_OUTPUTS)
def test_output_name_is_no_pathspec(
    store: Store, repo: Path, out: str, tracked: str
) -> None:
    (repo / tracked).write_text("tracked\n")
    git(repo, "add", "--", tracked)
    git(repo, "commit", "-qm", "tracked sibling")
    quoted = shlex.quote(out)
    command = f'mkdir -p "$(dirname {quoted})" && echo made > {quoted}'
    write_stage(repo, f"'{out}'", cmd=command)
    assert repro_in(store, repo) == ["ran"]
    assert (repo / out).read_text() == "made\n"
    assert (repo / tracked).read_text() == "tracked\n"


def test_tracked_output_with_magic_name_rejected(store: Store, repo: Path) -> None:
    # Read as a pathspec, ':notes' names 'notes', so Git would not report
    # the tracked file ':notes' and the run would delete it.
    (repo / ":notes").write_text("kept\n")
    git(repo, "add", "--", ":(literal):notes")
    git(repo, "commit", "-qm", "notes")
    write_stage(repo, "':notes'", cmd="echo new > :notes")
    with pytest.raises(UsageError) as caught:
        repro_in(store, repo)
    assert "output ':notes' is tracked by Git" in str(caught.value)
    assert (repo / ":notes").read_text() == "kept\n"
