"""The restore benchmark in --quick mode: every tool restores, and is checked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parent.parent
# Shared with full runs, so DVC is installed once per checkout (about 40 s).
DVC_VENV = PROJECT / "bench" / "work" / "dvc-venv"
RESTORE_TOOLS = (
    "expfs-checkout",
    "expfs-copy",
    "expfs-hardlink",
    "expfs-symlink",
    "dvc-default",
    "dvc-copy",
    "dvc-hardlink",
    "dvc-symlink",
    "cp-a",
    "cp-al",
)
# Tools that promise to restore permission bits exactly.
MODE_KEEPING = ("expfs-mount", "expfs-checkout", "expfs-copy", "cp-a", "cp-al")
WORKSPACE_TOOLS = ("expfs-exp-new", "expfs-create-in-process", "git-worktree", "cp-r")

pytestmark = [pytest.mark.slow, pytest.mark.fuse]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("bench")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.restore",
            "--quick",
            "--work",
            str(out / "work"),
            "--results",
            str(out / "RESULTS.md"),
            "--plots",
            str(out / "plots"),
            "--dvc-venv",
            str(DVC_VENV),
        ],
        cwd=PROJECT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    record = json.loads((out / "plots" / "restore.json").read_text())
    if record["machine"]["dvc"].startswith("installing"):
        pytest.skip(f"DVC could not be installed: {record['machine']['dvc']}")
    record["out"] = str(out)
    return record


def test_quick_restores_with_every_tool(quick_run: dict) -> None:
    cases = quick_run["restore"]
    assert [c["case"] for c in cases] == ["file-1KiB", "file-1MiB", "folder-100"]
    for case in cases:
        for name in RESTORE_TOOLS:
            result = case["tools"][name]
            assert result["status"] == "ok", (case["case"], name, result["reason"])
            assert len(result["command_s"]) == 1, (case["case"], name)
            assert result["verified"] >= 1, (case["case"], name)


def test_quick_mount_restores_or_says_why(quick_run: dict) -> None:
    for case in quick_run["restore"]:
        mount = case["tools"]["expfs-mount"]
        if mount["status"] == "pending":
            assert mount["reason"], case["case"]
            continue
        assert mount["status"] == "ok", (case["case"], mount["reason"])
        assert mount["verified"] >= 1, case["case"]


def test_quick_modes_kept(quick_run: dict) -> None:
    for case in quick_run["restore"]:
        for name in MODE_KEEPING:
            result = case["tools"][name]
            if result["status"] == "ok":
                assert result["modes_kept"], (
                    case["case"],
                    name,
                    result["mode_problem"],
                )


def test_quick_in_process_time(quick_run: dict) -> None:
    for case in quick_run["restore"]:
        checkout = case["tools"]["expfs-checkout"]
        assert len(checkout["in_process_s"]) == 1, case["case"]
        assert checkout["in_process_s"][0] < checkout["command_s"][0], case["case"]


def test_quick_noop_and_workspace(quick_run: dict) -> None:
    noop = quick_run["restore"][0]["noop_s"]
    assert len(noop["expfs"]) == 1
    assert len(noop["dvc"]) == 1
    [base] = quick_run["workspace"]
    for name in (*WORKSPACE_TOOLS, "dvc-exp-temp"):
        result = base["tools"][name]
        assert result["status"] == "ok", (name, result["reason"])
        assert len(result["seconds"]) == 1, name


def test_quick_readback(quick_run: dict) -> None:
    readback = quick_run["readback"]
    assert len(readback["seconds"]["native-cold"]) == 1
    assert len(readback["seconds"]["native-warm"]) == 1
    if readback["mount_status"] == "ok":
        assert len(readback["seconds"]["mount-cold"]) == 1


def test_quick_writes_page_and_plots(quick_run: dict) -> None:
    out = Path(quick_run["out"])
    page = (out / "RESULTS.md").read_text()
    assert "## Restore" in page
    assert "DVC copy" in page
    pytest.importorskip("matplotlib", reason="plots need the bench extra")
    assert (out / "plots" / "restore_size.png").stat().st_size > 0
    assert (out / "plots" / "restore_files.png").stat().st_size > 0
    assert not (out / "work" / "restore").exists() or not any(
        (out / "work" / "restore").iterdir()
    )
