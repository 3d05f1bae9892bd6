"""The digits example (examples/digits) run by `expfs repro` and `expfs exp run`.

The stages import scikit-learn and run `python3`, so the tests put the
directory of the running interpreter first on PATH.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import git

pytest.importorskip("sklearn", reason="needs scikit-learn (pip install -e '.[demo]')")

pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "digits"
STAGES = ("prepare", "featurize", "train", "evaluate")
# A forest of a few shallow trees on 8 principal components keeps each stage
# at about the time of importing scikit-learn.
TINY_PARAMS = {
    "featurize": {"pca": 8},
    "train": {"model": "forest", "n_estimators": 5, "max_depth": 4},
}


def expfs(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the expfs CLI in `cwd` and fail the test with its output on error."""
    path = os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]
    proc = subprocess.run(
        [sys.executable, "-m", "expfs", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": path},
    )
    assert proc.returncode == 0, f"expfs {' '.join(args)}: {proc.stdout}{proc.stderr}"
    return proc


def stage_outcomes(output: str) -> dict[str, str]:
    """Map each stage to its outcome word in `stage 'x': OUTCOME ...` lines."""
    outcomes = {}
    for line in output.splitlines():
        for stage in STAGES:
            marker = f"stage '{stage}': "
            if marker in line:
                outcomes[stage] = line.split(marker, 1)[1].split()[0].rstrip(",")
    return outcomes


def mounts_below(root: Path) -> list[str]:
    with open("/proc/self/mounts") as f:
        targets = [line.split()[1] for line in f]
    return [target for target in targets if target.startswith(f"{root}/")]


@pytest.fixture
def digits(repo: Path) -> Iterator[Path]:
    """`repo` with a copy of the example on tiny params, committed, with a store."""
    shutil.copytree(
        EXAMPLE,
        repo,
        dirs_exist_ok=True,
        ignore=shutil.ignore_patterns(".expfs", "data", "model", "metrics", "*.lock"),
    )
    params_path = repo / "params.yaml"
    params = yaml.safe_load(params_path.read_text())
    for section, values in TINY_PARAMS.items():
        params[section].update(values)
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "Add the digits example")
    expfs(repo, "init")
    try:
        yield repo
    finally:
        for target in mounts_below(repo):
            subprocess.run(["fusermount3", "-uz", target], check=False)


def test_repro_checkout_writes_outputs(digits: Path) -> None:
    first = expfs(digits, "repro")
    assert stage_outcomes(first.stdout) == dict.fromkeys(STAGES, "ran")

    for path in (
        "data/prepared/train.csv",
        "data/prepared/test.csv",
        "data/features/train.npy",
        "data/features/test.npy",
        "model/model.pkl",
        "expfs.lock",
    ):
        assert (digits / path).is_file(), path
    test_rows = (digits / "data/prepared/test.csv").read_text().splitlines()
    assert len(test_rows) == 1 + 450  # header, then 25 % of 1,797 images
    confusion = (digits / "metrics/confusion.csv").read_text().splitlines()
    assert confusion[0] == "actual,predicted"
    assert len(confusion) == len(test_rows)

    scores = json.loads((digits / "metrics/scores.json").read_text())
    assert set(scores) == {"accuracy", "f1"}
    # With ten classes, guessing scores about 0.1, and five shallow trees do far better.
    assert 0.5 < scores["accuracy"] <= 1
    assert 0.5 < scores["f1"] <= 1

    second = expfs(digits, "repro")
    assert stage_outcomes(second.stdout) == dict.fromkeys(STAGES, "skipped")


def test_repro_restores_after_param_returns(digits: Path) -> None:
    expfs(digits, "repro")
    params_path = digits / "params.yaml"
    original = params_path.read_text()
    params_path.write_text(original.replace("n_estimators: 5", "n_estimators: 6"))
    changed = expfs(digits, "repro")
    assert stage_outcomes(changed.stdout) == {
        "prepare": "skipped",
        "featurize": "skipped",
        "train": "ran",
        "evaluate": "ran",
    }

    params_path.write_text(original)
    back = expfs(digits, "repro")
    assert stage_outcomes(back.stdout)["train"] == "restored"
    assert stage_outcomes(back.stdout)["evaluate"] == "restored"


@pytest.mark.fuse
def test_exp_run_in_mount(digits: Path) -> None:
    if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
        pytest.skip("needs /dev/fuse and fusermount3 (apt-get install fuse3)")
    before = git(digits, "status", "--porcelain") + (digits / "params.yaml").read_text()

    run = expfs(digits, "exp", "run", "-S", "train.max_depth=3", "--name", "shallow")
    assert stage_outcomes(run.stdout + run.stderr) == dict.fromkeys(STAGES, "ran")

    rows = json.loads(expfs(digits, "exp", "show", "--json").stdout)
    shallow = next(row for row in rows if row["name"] == "shallow")
    assert shallow["status"] == "success"
    assert shallow["params"]["params.yaml"]["train.max_depth"] == 3
    scores = shallow["metrics"]["metrics/scores.json"]
    assert 0.5 < scores["accuracy"] <= 1
    assert 0.5 < scores["f1"] <= 1

    after = git(digits, "status", "--porcelain") + (digits / "params.yaml").read_text()
    assert after == before
    assert not (digits / "metrics").exists()
    assert mounts_below(digits) == []
