"""A checkout restore that meets a damaged blob: one warning, then a run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import blake3
import pytest

from expfs.errors import CorruptObject
from expfs.store.objects import Store
from tests.conftest import git

STAGE = """\
stages:
  gen:
    cmd: python3 gen.py
    deps: [gen.py]
    outs: [out.txt]
"""
SCRIPT = 'open("out.txt", "w").write("hello\\n" * 10)\n'


def expfs(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "expfs_cli.main", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    )


def test_corrupt_restore_warns_once(store: Store, repo: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip(
            "needs root, whom the read-only mode of a linked blob does not stop"
        )
    (repo / "dvc.yaml").write_text(STAGE)
    (repo / "gen.py").write_text(SCRIPT)
    (repo / ".gitignore").write_text("out.txt\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "pipeline")
    out = repo / "out.txt"
    expfs(repo, "repro", "--link", "hardlink")
    out.unlink()
    assert "restored" in expfs(repo, "repro", "--link", "hardlink").stdout
    assert os.stat(out).st_nlink == 2
    with open(out, "a") as f:
        f.write("damage")
    out.unlink()

    done = expfs(repo, "repro", "--link", "hardlink")
    assert "stage 'gen': ran" in done.stdout
    digest = blake3.blake3(("hello\n" * 10).encode()).hexdigest()
    blob = store.blob_path(digest)
    corrupt = CorruptObject(digest, blob).message
    assert done.stderr.splitlines() == [
        f"WARNING: restore of stage gen failed ({corrupt}): running it instead",
        f"WARNING: blob {digest} is corrupt: replacing it with a verified copy",
    ]
