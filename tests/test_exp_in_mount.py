"""Commands run inside a mounted experiment, and experiments made with `exp new`.

`exp show` and `exp diff` list the params and metrics of an experiment made
with `exp new` and reproduced inside its mount, as they do for `exp run`
ones. Commands that would work on the user's checkout or make a new store
exit with an error inside a mount that names what to run instead.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_sweep import TRAIN_SCRIPT, TRAIN_STAGE, run, show

pytestmark = pytest.mark.fuse


@pytest.fixture
def project(repo: Path) -> Iterator[Path]:
    """The train pipeline, committed, with experiment e1 made by `exp new`."""
    if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
        pytest.skip("needs /dev/fuse and fusermount3 (apt-get install fuse3)")
    (repo / "dvc.yaml").write_text(TRAIN_STAGE)
    (repo / "train.py").write_text(TRAIN_SCRIPT)
    (repo / "params.yaml").write_text("lr: 0.1\ndepth: 2\n")
    (repo / ".gitignore").write_text("model.txt\nscore.json\n")
    subprocess.run(["git", "-C", str(repo), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(repo), "commit", "-qm", "pipeline"], check=True)
    run(repo, "init")
    run(repo, "exp", "new", "e1")
    try:
        yield repo
    finally:
        subprocess.run(
            ["python", "-m", "expfs", "umount", "e1"], cwd=repo, capture_output=True
        )
        with open("/proc/self/mounts") as f:
            targets = [line.split()[1] for line in f]
        for target in targets:
            if target.startswith(str(repo.parent) + "/"):
                subprocess.run(["fusermount3", "-uz", target], check=False)


def mount(project: Path, path: Path | None = None) -> Path:
    run(project, "mount", "e1", *([str(path)] if path else []))
    return path or project / ".expfs" / "mnt" / "e1"


def shown(project: Path) -> dict[str, dict]:
    rows = json.loads(run(project, "exp", "show", "--json").stdout)
    return {row["name"]: row for row in rows}


def test_exp_new_shows_base_params(project: Path) -> None:
    row = shown(project)["e1"]
    assert row["params"]["params.yaml"] == {"lr": 0.1, "depth": 2}


def test_exp_new_reads_params_of_its_base(project: Path) -> None:
    (project / "params.yaml").write_text("lr: 0.7\ndepth: 2\n")
    run(project, "exp", "new", "uncommitted")
    run(project, "exp", "new", "committed", "--from", "HEAD")
    rows = shown(project)
    assert rows["uncommitted"]["params"]["params.yaml"]["lr"] == 0.7
    assert rows["committed"]["params"]["params.yaml"]["lr"] == 0.1


VARS_STAGE = """\
vars:
  - config.yaml
stages:
  train:
    cmd: python3 train.py ${epochs}
    deps: [train.py]
    params: [lr, depth, {config.yaml: [epochs]}]
    outs: [model.txt]
"""


def test_exp_new_reads_params_with_vars_file(project: Path) -> None:
    (project / "dvc.yaml").write_text(VARS_STAGE)
    (project / "config.yaml").write_text("epochs: 3\n")
    run(project, "exp", "new", "e2")
    params = shown(project)["e2"]["params"]
    assert params["config.yaml"] == {"epochs": 3}
    assert params["params.yaml"] == {"lr": 0.1, "depth": 2}


def test_repro_in_mount_records_params_metrics(project: Path) -> None:
    mountpoint = mount(project)
    (mountpoint / "params.yaml").write_text("lr: 0.5\ndepth: 2\n")
    run(mountpoint, "repro")
    row = shown(project)["e1"]
    assert row["params"]["params.yaml"] == {"lr": 0.5, "depth": 2}
    assert row["metrics"]["score.json"] == {"score": 1.0}
    assert row["status"] == "success"
    diff = json.loads(run(project, "exp", "diff", "workspace", "e1", "--json").stdout)
    params = {c["key"]: (c["old"], c["new"]) for c in diff["params"]}
    metrics = {c["key"]: c["new"] for c in diff["metrics"]}
    assert params["lr"] == (0.1, 0.5)
    assert metrics["score"] == 1.0
    # The experiment's record is what `exp show` reads, also once unmounted.
    run(project, "umount", "e1")
    assert show(project)["e1"].metrics == {"score.json": {"score": 1.0}}  # type: ignore[attr-defined]


def test_failed_repro_in_mount_records_params(project: Path) -> None:
    mountpoint = mount(project)
    (mountpoint / "params.yaml").write_text("lr: -1\ndepth: 3\n")
    failed = run(mountpoint, "repro", check=False)
    assert failed.returncode != 0
    row = shown(project)["e1"]
    assert row["params"]["params.yaml"] == {"lr": -1, "depth": 3}
    assert row["status"] == "failed"


@pytest.mark.parametrize(
    "command",
    [
        ["exp", "run", "-S", "lr=0.2"],
        ["exp", "run", "--queue"],
        ["exp", "new", "e2"],
        ["exp", "apply", "e1"],
    ],
    ids=" ".join,
)
def test_checkout_commands_rejected_in_mount(project: Path, command: list[str]) -> None:
    mountpoint = mount(project)
    done = run(mountpoint, *command, check=False)
    assert done.returncode == 2
    assert "experiment e1" in done.stderr
    assert "expfs repro" in done.stderr
    assert str(project) in done.stderr
    assert done.stdout == ""
    assert sorted(show(project)) == ["e1"]


def test_exp_new_from_commit_allowed_in_mount(project: Path) -> None:
    mountpoint = mount(project)
    run(mountpoint, "exp", "new", "e2", "--from", "HEAD")
    assert sorted(show(project)) == ["e1", "e2"]


@pytest.mark.parametrize("where", ["default", "outside"])
def test_init_rejected_in_mount(project: Path, tmp_path: Path, where: str) -> None:
    path = tmp_path / "elsewhere" if where == "outside" else None
    mountpoint = mount(project, path)
    done = run(mountpoint, "init", check=False)
    assert done.returncode == 2
    assert "experiment e1" in done.stderr
    assert str(project / ".expfs") in done.stderr
    assert f"project {project}" in done.stderr
    assert not (mountpoint / ".expfs").exists()
    # Other commands there find the project's store.
    listed = run(mountpoint, "exp", "list")
    assert "e1" in listed.stdout
