"""`expfs repro` in a plain checkout: skip, restore, run, and what is never recorded."""

from __future__ import annotations

import io
import os
import shlex
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from sample_pipeline import SCRIPTS, THREE_STAGES

from expfs.errors import ExpfsError
from expfs.repro.engine import Options, Outcome, Repro, StageFailed
from expfs.repro.place import CheckoutPlace
from expfs.runcache import RunCache
from expfs.store.fsck import fsck
from expfs.store.objects import Store


def write_pipeline(root: Path, n: int = 5, lr: float = 0.1) -> None:
    (root / "dvc.yaml").write_text(THREE_STAGES)
    for name, body in SCRIPTS.items():
        (root / name).write_text(textwrap.dedent(body))
    set_params(root, n, lr)
    (root / ".gitignore").write_text("runs.log\n")


def set_params(root: Path, n: int, lr: float) -> None:
    (root / "params.yaml").write_text(f"prepare:\n  n: {n}\ntrain:\n  lr: {lr}\n")


def repro(store: Store, root: Path, **options: bool) -> dict[str, Outcome]:
    engine = Repro(
        store,
        CheckoutPlace(store, str(root)),
        options=Options(**options),
        out=io.StringIO(),
    )
    return {o.stage: o for o in engine.run()}


def runs(root: Path) -> list[str]:
    return (root / "runs.log").read_text().split()


def actions(outcomes: dict[str, Outcome]) -> dict[str, str]:
    return {name: o.action for name, o in outcomes.items()}


def test_first_repro_runs_every_stage(store: Store, repo: Path) -> None:
    write_pipeline(repo)
    outcomes = repro(store, repo)
    assert actions(outcomes) == {"prepare": "ran", "train": "ran", "evaluate": "ran"}
    assert (repo / "expfs.lock").exists()
    assert len(os.listdir(repo / "data")) == 5


def test_second_repro_skips(store: Store, repo: Path) -> None:
    write_pipeline(repo)
    repro(store, repo)
    outcomes = repro(store, repo)
    assert actions(outcomes) == {
        "prepare": "skipped",
        "train": "skipped",
        "evaluate": "skipped",
    }
    assert runs(repo) == ["prepare", "train", "evaluate"]


def test_param_flip_back_restores(store: Store, repo: Path) -> None:
    write_pipeline(repo, lr=0.1)
    repro(store, repo)
    first_model = (repo / "model.txt").read_text()
    set_params(repo, 5, 0.2)
    assert actions(repro(store, repo))["train"] == "ran"
    set_params(repo, 5, 0.1)
    outcomes = repro(store, repo)
    assert outcomes["prepare"].action == "skipped"
    assert outcomes["train"].action == "restored"
    assert outcomes["evaluate"].action == "restored"
    assert runs(repo).count("train") == 2
    assert (repo / "model.txt").read_text() == first_model
    assert '"score": 0.5' in (repo / "metrics.json").read_text()


def test_restored_outputs_keep_modes(store: Store, repo: Path) -> None:
    write_pipeline(repo, lr=0.1)
    repro(store, repo)
    set_params(repo, 5, 0.3)
    repro(store, repo)
    set_params(repo, 5, 0.1)
    repro(store, repo)
    assert (repo / "bin" / "tool").stat().st_mode & 0o777 == 0o755
    assert (repo / "model.txt").stat().st_mode & 0o777 == 0o644


def test_deleted_output_restored_from_lock_or_cache(store: Store, repo: Path) -> None:
    write_pipeline(repo)
    repro(store, repo)
    (repo / "model.txt").unlink()
    outcomes = repro(store, repo)
    assert outcomes["train"].action == "restored"
    assert (repo / "model.txt").exists()
    assert runs(repo).count("train") == 1


def test_failing_stage_records_nothing(store: Store, repo: Path) -> None:
    (repo / "dvc.yaml").write_text(
        "stages:\n  bad:\n    cmd: echo partial > out.txt && exit 3\n    deps: [README]\n    outs: [out.txt]\n"
    )
    with pytest.raises(StageFailed) as caught:
        repro(store, repo)
    assert caught.value.exit_code == 3
    assert "bad" in caught.value.message
    assert list(RunCache(store)) == []
    assert (repo / "out.txt").read_text() == "partial\n"


def test_always_changed_runs_every_time(store: Store, repo: Path) -> None:
    (repo / "dvc.yaml").write_text(
        "stages:\n  foo:\n    cmd: date +%s%N > stamp.txt\n    always_changed: true\n    outs: [stamp.txt]\n"
    )
    first = repro(store, repo)["foo"].action
    stamp = (repo / "stamp.txt").read_text()
    second = repro(store, repo)["foo"].action
    assert (first, second) == ("ran", "ran")
    assert (repo / "stamp.txt").read_text() != stamp
    assert list(RunCache(store)) == []


def test_params_only_stage_uses_run_cache(store: Store, repo: Path) -> None:
    (repo / "dvc.yaml").write_text(
        "stages:\n  gen:\n    cmd: echo ${n} >> runs.log; echo ${n} > out.txt\n"
        "    params: [n]\n    outs: [out.txt]\n"
    )
    seen = []
    for n in (4, 3, 4):
        (repo / "params.yaml").write_text(f"n: {n}\n")
        seen.append(repro(store, repo)["gen"].action)
        assert (repo / "out.txt").read_text() == f"{n}\n"
    assert seen == ["ran", "ran", "restored"]
    assert runs(repo) == ["4", "3"]


def test_stage_without_deps_or_params_skips_run_cache(store: Store, repo: Path) -> None:
    (repo / "dvc.yaml").write_text(
        "stages:\n  gen:\n    cmd: echo made > out.txt\n    outs: [out.txt]\n"
    )
    repro(store, repo)
    assert list(RunCache(store)) == []


def test_output_append_never_changes_stored_object(store: Store, repo: Path) -> None:
    (repo / "dvc.yaml").write_text(
        "stages:\n  s:\n    cmd: echo 1 >> out\n    deps: [README]\n    outs: [out]\n"
    )
    repro(store, repo)
    (repo / "dvc.yaml").write_text(
        "stages:\n  s:\n    cmd: echo 2 >> out\n    deps: [README]\n    outs: [out]\n"
    )
    repro(store, repo)
    assert (repo / "out").read_text() == "2\n"
    report = fsck(store)
    assert report.problems == []


def test_missing_objects_make_a_miss(store: Store, repo: Path) -> None:
    write_pipeline(repo, lr=0.1)
    repro(store, repo)
    old_model = RunCache(store)
    records = {r.stage: r for r in old_model if r.stage == "train"}
    set_params(repo, 5, 0.2)
    repro(store, repo)
    for out in records["train"].outputs:
        store.remove_blob(out.digest)
    set_params(repo, 5, 0.1)
    outcomes = repro(store, repo)
    assert outcomes["train"].action == "ran"
    assert runs(repo).count("train") == 3
    assert fsck(store).problems == []


def test_dependency_changed_during_run_not_recorded(store: Store, repo: Path) -> None:
    (repo / "step.py").write_text(
        "import time\nVALUE = 1\ntime.sleep(1.5)\nopen('out.txt', 'w').write(str(VALUE))\n"
    )
    (repo / "dvc.yaml").write_text(
        "stages:\n  step:\n    cmd: python3 step.py\n    deps: [step.py]\n    outs: [out.txt]\n"
    )

    def edit() -> None:
        time.sleep(0.5)
        text = (repo / "step.py").read_text().replace("VALUE = 1", "VALUE = 2")
        (repo / "step.py").write_text(text)

    editor = threading.Thread(target=edit)
    editor.start()
    out = io.StringIO()
    engine = Repro(store, CheckoutPlace(store, str(repo)), out=out)
    engine.run()
    editor.join()
    assert "changed while it ran" in out.getvalue()
    assert list(RunCache(store)) == []
    assert repro(store, repo)["step"].action == "ran"


def test_output_outside_workspace_rejected(store: Store, repo: Path) -> None:
    (repo / "dvc.yaml").write_text(
        "stages:\n  bad:\n    cmd: echo\n    outs: [../escape]\n"
    )
    with pytest.raises(ExpfsError) as caught:
        repro(store, repo)
    assert "../escape" in caught.value.message
    assert not (repo.parent / "escape").exists()


def test_output_through_symlink_rejected(
    store: Store, repo: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, repo / "link")
    (repo / "dvc.yaml").write_text(
        "stages:\n  bad:\n    cmd: echo x > link/out\n    deps: [README]\n    outs: [link/out]\n"
    )
    with pytest.raises(ExpfsError) as caught:
        repro(store, repo)
    assert "outside the workspace" in caught.value.message
    assert not (outside / "out").exists()


def test_missing_dependency_names_it(store: Store, repo: Path) -> None:
    (repo / "dvc.yaml").write_text(
        "stages:\n  s:\n    cmd: echo\n    deps: [nowhere.csv]\n    outs: [o]\n"
    )
    with pytest.raises(ExpfsError) as caught:
        repro(store, repo)
    assert "nowhere.csv" in caught.value.message
    assert "'s'" in caught.value.message


def test_cli_repro_reports_restore(store: Store, repo: Path) -> None:
    write_pipeline(repo, lr=0.1)
    cli = [sys.executable, "-m", "expfs", "repro"]
    subprocess.run(cli, cwd=repo, check=True, capture_output=True)
    set_params(repo, 5, 0.2)
    subprocess.run(cli, cwd=repo, check=True, capture_output=True)
    set_params(repo, 5, 0.1)
    proc = subprocess.run(cli, cwd=repo, check=True, capture_output=True, text=True)
    assert "stage 'train': restored from the run-cache" in proc.stdout


def test_run_record_keeps_command_output(store: Store, repo: Path) -> None:
    (repo / "dvc.yaml").write_text(
        "stages:\n  s:\n    cmd: echo hello-from-stage && echo x > o\n"
        "    deps: [README]\n    outs: [o]\n"
    )
    out = io.StringIO()
    Repro(store, CheckoutPlace(store, str(repo)), out=out).run()
    assert "hello-from-stage" in out.getvalue()
    records = list(RunCache(store))
    assert len(records) == 1
    assert "hello-from-stage" in records[0].log


def test_no_remote_flag_pushes_nothing(
    store: Store, repo: Path, tmp_path: Path
) -> None:
    write_pipeline(repo)
    remote = tmp_path / "remote"
    cli = [sys.executable, "-m", "expfs"]
    add = [*cli, "remote", "add", "origin", f"file://{remote}", "--default"]
    subprocess.run(add, cwd=repo, check=True, capture_output=True)
    subprocess.run(
        [*cli, "repro", "--no-remote"], cwd=repo, check=True, capture_output=True
    )
    assert not remote.exists() or not any(remote.rglob("*"))
    set_params(repo, 5, 0.4)
    subprocess.run([*cli, "repro"], cwd=repo, check=True, capture_output=True)
    assert any(remote.rglob("*"))


def test_lock_marks_uncached_metrics(store: Store, repo: Path) -> None:
    write_pipeline(repo)
    repro(store, repo)
    import yaml

    lock = yaml.safe_load((repo / "expfs.lock").read_text())
    outs = {o["path"]: o for o in lock["stages"]["evaluate"]["outs"]}
    assert outs["metrics.json"]["cache"] is False
    model = {o["path"]: o for o in lock["stages"]["train"]["outs"]}["model.txt"]
    assert "cache" not in model
    set_params(repo, 5, 0.2)
    repro(store, repo)
    set_params(repo, 5, 0.1)
    outcomes = repro(store, repo)
    assert outcomes["evaluate"].action == "restored"
    assert '"score": 0.5' in (repo / "metrics.json").read_text()


STREAMS_STAGE = """\
stages:
  s:
    cmd: echo to-stdout && echo to-stderr >&2 && echo x > o
    deps: [README]
    outs: [o]
"""


@pytest.mark.parametrize("served", [False, True], ids=["own process", "served"])
def test_stage_streams_stay_apart(
    store: Store, repo: Path, tmp_path: Path, served: bool
) -> None:
    (repo / "dvc.yaml").write_text(STREAMS_STAGE)
    errors = tmp_path / "errors.txt"
    env = {**os.environ}
    if not served:
        env["EXPFS_NO_SERVER"] = "1"
    command = f"{shlex.join([sys.executable, '-m', 'expfs', 'repro'])} 2> {errors}"
    proc = subprocess.run(
        command, shell=True, cwd=repo, env=env, stdout=subprocess.PIPE, text=True
    )
    assert proc.returncode == 0, errors.read_text()
    assert "to-stdout" in proc.stdout
    assert "to-stderr" not in proc.stdout
    assert "to-stderr" in errors.read_text()
    assert "to-stdout" not in errors.read_text()
    records = list(RunCache(store))
    assert len(records) == 1
    assert "to-stdout" in records[0].log
    assert "to-stderr" in records[0].log
