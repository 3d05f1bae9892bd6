"""The store commands as a user runs them, through `main()` and subprocesses."""

from __future__ import annotations

import subprocess
import sys

import pytest
from expfs_cli.main import main


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
