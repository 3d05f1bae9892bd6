"""Paths that an experiment brings along though Git ignores them."""

from __future__ import annotations

import subprocess
from pathlib import Path

from expfs.experiments import declared_paths


def test_dvc_tracked_files_declared(repo: Path) -> None:
    (repo / ".gitignore").write_text("/data/\n/raw.csv\n/.expfs/\n")
    (repo / "data").mkdir()
    (repo / "data" / "big.bin").write_bytes(b"x")
    (repo / "data.dvc").write_text("outs:\n- path: data\n")
    (repo / "raw.csv").write_text("a,b\n")
    (repo / "raw.csv.dvc").write_text("outs:\n- path: raw.csv\n")
    # DVC's own folder and the store hold no tracking files: their
    # contents must not be taken for tracked paths.
    (repo / ".dvc" / "cache").mkdir(parents=True)
    (repo / ".dvc" / "cache" / "x.dvc").write_text("")
    (repo / ".expfs" / "objects").mkdir(parents=True)
    (repo / ".expfs" / "objects" / "y.dvc").write_text("")
    subprocess.run(["git", "-C", str(repo), "add", "-A"], check=True)
    assert sorted(declared_paths(str(repo))) == [b"data", b"raw.csv"]


def test_untracked_dvc_target_skipped(repo: Path) -> None:
    (repo / "gone.dvc").write_text("outs:\n- path: gone\n")
    assert declared_paths(str(repo)) == []
