"""Experiments made in one clone, pushed, then pulled into another clone.

Each test runs real experiments on FUSE mounts in real Git clones that
share one remote: file:// or the SeaweedFS S3 server on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.remote_servers import s3_options, seaweedfs
from tests.test_sweep import TRAIN_SCRIPT, TRAIN_STAGE, run, show, unmount_all

__all__ = ["seaweedfs"]

pytestmark = pytest.mark.fuse

AddRemote = Callable[[Path], None]


@pytest.fixture(params=["file", "s3"])
def add_remote(request: pytest.FixtureRequest, tmp_path: Path) -> AddRemote:
    """Return a function that makes one shared remote the default of a clone."""
    if request.param == "file":
        url, options = f"file://{tmp_path / 'remote'}", {}
    else:
        server = request.getfixturevalue("seaweedfs")
        url, options = server.url(f"/{uuid.uuid4().hex}"), s3_options(server)
    flags = [arg for k, v in options.items() for arg in ("-o", f"{k}={v}")]

    def add(clone: Path) -> None:
        run(clone, "remote", "add", "origin", url, "--default", "--local", *flags)

    return add


@pytest.fixture
def clones(tmp_path: Path, add_remote: AddRemote) -> Iterator[Callable[[str], Path]]:
    """Return a function that makes a clone of one origin with the remote set."""
    if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
        pytest.skip("needs /dev/fuse and fusermount3 (apt-get install fuse3)")
    origin = tmp_path / "origin"
    origin.mkdir()
    git = ["git", "-C", str(origin)]
    subprocess.run([*git, "init", "-q"], check=True)
    (origin / "dvc.yaml").write_text(TRAIN_STAGE)
    (origin / "train.py").write_text(TRAIN_SCRIPT)
    (origin / "params.yaml").write_text("lr: 0.1\ndepth: 2\n")
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "pipeline"], check=True)
    made: list[Path] = []

    def clone(name: str) -> Path:
        target = tmp_path / name
        subprocess.run(["git", "clone", "-q", str(origin), str(target)], check=True)
        run(target, "init")
        add_remote(target)
        made.append(target)
        return target

    try:
        yield clone
    finally:
        for target in made:
            unmount_all(target)


def test_pulled_experiment_shows_diffs_promotes(clones: Callable[[str], Path]) -> None:
    first, second = clones("a"), clones("b")
    run(first, "exp", "run", "-S", "lr=0.5", "--name", "half")
    run(first, "exp", "run", "-S", "lr=0.25", "--name", "quarter")
    pushed = run(first, "push", "half", "quarter")
    assert pushed.stderr.rstrip().endswith("; pushed 2 experiment records")
    made = show(first)

    pulled = run(second, "pull", "half")
    assert pulled.stderr.rstrip().endswith("; pulled 1 experiment record")
    here = show(second)
    assert sorted(here) == ["half"]
    for field in ("params", "metrics", "result", "base", "base_commit", "overrides"):
        assert getattr(here["half"], field) == getattr(made["half"], field), field
    assert here["half"].status == "success"

    run(second, "pull", "--all-experiments")
    assert sorted(show(second)) == ["half", "quarter"]
    listing = json.loads(run(second, "exp", "show", "--json").stdout)
    assert "half" in json.dumps(listing)
    diff = run(second, "exp", "diff", "quarter", "half").stdout
    assert "lr" in diff
    assert "0.5" in diff
    run(second, "exp", "promote", "half", "--branch", "from-a")
    model = subprocess.run(
        ["git", "-C", str(second), "show", "from-a:model.txt"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert model == "0.5 2\n"


def test_pull_again_changes_nothing(clones: Callable[[str], Path]) -> None:
    first, second = clones("a"), clones("b")
    run(first, "exp", "run", "-S", "lr=0.5", "--name", "half")
    run(first, "push", "half")
    again = run(first, "push", "half")
    assert "experiment records" not in again.stderr
    run(second, "pull", "half")
    before = show(second)["half"]
    repeat = run(second, "pull", "half")
    assert "experiment records" not in repeat.stderr
    assert show(second)["half"] == before


def test_same_name_in_two_clones(clones: Callable[[str], Path]) -> None:
    first, second, third = clones("a"), clones("b"), clones("c")
    run(first, "exp", "run", "-S", "lr=0.5", "--name", "dup")
    run(second, "exp", "run", "-S", "lr=0.75", "--name", "dup")
    run(first, "push", "dup")
    run(second, "push", "dup")

    # Neither push replaced the other, so the third clone must choose.
    ambiguous = run(third, "pull", "dup", check=False)
    assert ambiguous.returncode != 0
    assert "2 experiments named 'dup'" in ambiguous.stderr
    assert "dup@" in ambiguous.stderr
    assert show(third) == {}

    # The second clone's own `dup` is on the remote, so it pulls nothing.
    run(second, "pull", "dup")
    assert show(second)["dup"].params["params.yaml"]["lr"] == 0.75

    from expfs.remote.records import uid_of

    firsts, seconds = uid_of(show(first)["dup"]), uid_of(show(second)["dup"])
    run(third, "pull", f"dup@{firsts[:8]}")
    assert show(third)["dup"].params["params.yaml"]["lr"] == 0.5

    # The third clone now has the first one's `dup`: the second's clashes.
    clash = run(third, "pull", f"dup@{seconds[:8]}", check=False)
    assert clash.returncode != 0
    assert "'dup' here is not the one on remote" in clash.stderr
    assert "expfs exp remove dup" in clash.stderr
    assert show(third)["dup"].params["params.yaml"]["lr"] == 0.5


def test_pull_needs_the_base_commit(clones: Callable[[str], Path]) -> None:
    first, second = clones("a"), clones("b")
    (first / "params.yaml").write_text("lr: 0.3\ndepth: 4\n")
    subprocess.run(["git", "-C", str(first), "commit", "-qam", "deeper"], check=True)
    run(first, "exp", "run", "--name", "deep")
    run(first, "push", "deep")
    missing = run(second, "pull", "deep", check=False)
    assert missing.returncode != 0
    assert "which this repository lacks" in missing.stderr
    assert "git fetch" in missing.stderr
    assert show(second) == {}
    subprocess.run(
        ["git", "-C", str(second), "fetch", "-q", str(first), "HEAD"], check=True
    )
    run(second, "pull", "deep")
    assert show(second)["deep"].params["params.yaml"] == {"lr": 0.3, "depth": 4}
