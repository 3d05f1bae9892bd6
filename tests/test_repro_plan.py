"""What `expfs status` and `expfs repro --dry` plan, and how `repro -k` reports failures.

Each test runs the real CLI in a real Git checkout with a real store.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from waiting_stage import run_expfs


def git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(root), *args], check=True)


PIPELINE = """\
stages:
  prepare:
    cmd: mkdir -p out && cat data.txt > out/prepared.txt
    deps: [data.txt]
    outs: [out/prepared.txt]
  train:
    cmd: mkdir -p model && cat out/prepared.txt > model/model.txt
    deps: [out/prepared.txt]
    outs: [model]
"""


@pytest.fixture
def project(repo: Path) -> Path:
    """A committed two-stage pipeline whose outputs are gitignored, run once."""
    (repo / "dvc.yaml").write_text(PIPELINE)
    (repo / "data.txt").write_text("one\n")
    (repo / ".gitignore").write_text("out/\nmodel/\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "pipeline")
    assert run_expfs(repo, "init").returncode == 0
    done = run_expfs(repo, "repro")
    assert done.returncode == 0, done.stderr
    return repo


def ok(root: Path, *args: str) -> str:
    done = run_expfs(root, *args)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_plan_fresh_clone(project: Path, tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    subprocess.run(
        ["git", "clone", "-q", str(project), str(clone)], check=True, text=True
    )
    assert run_expfs(clone, "init").returncode == 0
    status = ok(clone, "status").splitlines()
    assert status[0].startswith("prepare: would ")
    assert status[1].startswith("train: ")
    assert "depends on 'prepare'" in status[1]
    dry = ok(clone, "repro", "--dry")
    assert "stage 'prepare': would " in dry
    assert "stage 'train': may run" in dry
    assert "depends on 'prepare'" in dry
    assert not (clone / "out").exists()
    assert not (clone / "model").exists()
    # The real repro does what the dry run announced.
    real = ok(clone, "repro")
    assert "stage 'prepare': " in real
    assert "stage 'train': " in real
    assert (clone / "model" / "model.txt").read_text() == "one\n"


def test_plan_forced_fresh_clone(project: Path, tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(project), str(clone)], check=True)
    assert run_expfs(clone, "init").returncode == 0
    dry = ok(clone, "repro", "-f", "--dry").splitlines()
    assert dry == [
        "stage 'prepare': would run (forced)",
        "stage 'train': would run (forced)",
    ]


def test_plan_upstream_output_removed(project: Path) -> None:
    shutil.rmtree(project / "out")
    shutil.rmtree(project / "model")
    status = ok(project, "status")
    assert "prepare: would restore" in status
    # The restore brings back the same prepared.txt, so train's run key is known.
    assert "train: would restore" in status
    assert "stage 'train': restored" in ok(project, "repro")
    shutil.rmtree(project / "out")
    status = ok(project, "status").splitlines()
    assert status == ["prepare: would restore (run-cache hit)"]
    real = ok(project, "repro")
    assert "stage 'prepare': restored" in real
    assert "stage 'train': skipped, up to date" in real


def test_plan_downstream_of_changed_stage(project: Path) -> None:
    (project / "data.txt").write_text("two\n")
    dry = ok(project, "repro", "--dry")
    assert "stage 'prepare': would run" in dry
    assert "skipped" not in dry
    assert "stage 'train': may run" in dry
    assert "depends on 'prepare', which would run" in dry
    status = ok(project, "status")
    assert "train: may run (depends on 'prepare', which would run)" in status
    real = ok(project, "repro")
    assert "stage 'train': ran" in real
    assert (project / "model" / "model.txt").read_text() == "two\n"


def test_plan_after_upstream_restore(project: Path) -> None:
    (project / "data.txt").write_text("two\n")
    ok(project, "repro")
    (project / "data.txt").write_text("one\n")
    dry = ok(project, "repro", "--dry")
    assert "stage 'prepare': would restore" in dry
    # The run-cache entry of prepare gives train's new input, run before too.
    assert "stage 'train': would restore" in dry
    real = ok(project, "repro")
    assert "stage 'prepare': restored" in real
    assert "stage 'train': restored" in real
    assert (project / "model" / "model.txt").read_text() == "one\n"


FAILING = """\
stages:
  bad:
    cmd: echo failing >&2; exit 7
    deps: [data.txt]
    outs: [bad.txt]
  after:
    cmd: cat bad.txt > after.txt
    deps: [bad.txt]
    outs: [after.txt]
  last:
    cmd: cat after.txt > last.txt
    deps: [after.txt]
    outs: [last.txt]
  good:
    cmd: cat data.txt > good.txt
    deps: [data.txt]
    outs: [good.txt]
  worse:
    cmd: exit 3
    deps: [data.txt]
    outs: [worse.txt]
"""


@pytest.fixture
def failing(repo: Path) -> Path:
    (repo / "dvc.yaml").write_text(FAILING)
    (repo / "data.txt").write_text("one\n")
    assert run_expfs(repo, "init").returncode == 0
    return repo


def test_keep_going_failed_stage_status(failing: Path) -> None:
    plain = run_expfs(failing, "repro")
    assert plain.returncode == 7
    keep_going = run_expfs(failing, "repro", "-k")
    assert keep_going.returncode == 7, keep_going.stderr

    error = "expfs: error: stage 'bad' failed: its command exited with status 7"
    assert error in plain.stderr
    assert error in keep_going.stderr

    progress = "(its command exited with status 7)"
    bad_plain = [x for x in plain.stdout.splitlines() if x.startswith("stage 'bad'")]
    bad_keep_going = [
        x for x in keep_going.stdout.splitlines() if x.startswith("stage 'bad'")
    ]
    assert len(bad_plain) == 1
    assert len(bad_keep_going) == 1
    assert bad_plain[0].startswith("stage 'bad': failed in ")
    assert bad_plain[0].endswith(progress)
    assert bad_keep_going[0].startswith("stage 'bad': failed in ")
    assert bad_keep_going[0].endswith(progress)

    assert "stage 'after': skipped because stage 'bad' failed" in keep_going.stdout
    assert "stage 'last': skipped because stage 'bad' failed" in keep_going.stdout
    assert "stage 'good': ran" in keep_going.stdout
    # A later failure is reported too, but the exit status stays the first's.
    assert "(its command exited with status 3)" in keep_going.stdout
    assert not (failing / "after.txt").exists()

    # Without -k, no stage runs after the failure.
    assert "stage 'good'" not in plain.stdout
    assert "stage 'worse'" not in plain.stdout

    # With -s, a selected stage whose upstream failed is skipped all the same.
    single = run_expfs(failing, "repro", "-k", "-s", "bad", "last")
    assert single.returncode == 7, single.stderr
    assert "stage 'last': skipped because stage 'bad' failed" in single.stdout
    assert "failing" in plain.stderr
    assert "failing" in keep_going.stderr


def test_killed_stage_reports_signal(repo: Path) -> None:
    (repo / "dvc.yaml").write_text(
        "stages:\n  die:\n    cmd: kill -9 $$\n    outs: [never.txt]\n"
    )
    assert run_expfs(repo, "init").returncode == 0
    for argv in (["repro"], ["repro", "-k"]):
        done = run_expfs(repo, *argv)
        assert done.returncode == 128 + 9, done.stderr
        assert "its command was killed by signal 9 (SIGKILL)" in done.stderr
        assert "(its command was killed by signal 9 (SIGKILL))" in done.stdout
        assert "status -9" not in done.stderr + done.stdout


ALWAYS = """\
stages:
  stamp:
    cmd: date +%s%N > stamp.txt
    always_changed: true
    outs: [stamp.txt]
  use:
    cmd: cat stamp.txt > used.txt
    deps: [stamp.txt]
    outs: [used.txt]
"""


def test_status_always_changed_reason(repo: Path) -> None:
    (repo / "dvc.yaml").write_text(ALWAYS)
    assert run_expfs(repo, "init").returncode == 0
    ok(repo, "repro")
    status = ok(repo, "status").splitlines()
    assert "stamp: would run (always changed)" in status
    assert "use: may run (depends on 'stamp', which would run)" in status
    dry = ok(repo, "repro", "--dry")
    assert "(always changed)" in dry
    assert "outputs missing or modified" not in dry


def test_missing_dependency_names_its_line(repo: Path) -> None:
    (repo / "dvc.yaml").write_text(
        "stages:\n  a:\n    cmd: echo\n    deps:\n      - here.txt\n      - gone.txt\n"
    )
    (repo / "here.txt").write_text("x\n")
    assert run_expfs(repo, "init").returncode == 0
    for argv in (["repro"], ["status"], ["repro", "--dry"]):
        done = run_expfs(repo, *argv)
        assert done.returncode == 2, done.stdout
        assert f"{repo / 'dvc.yaml'}:6: dependency 'gone.txt' of stage 'a'" in (
            done.stderr
        )
        assert "or remove it from the stage's deps" in done.stderr


@pytest.mark.parametrize("text", ["", "stages:\n", "stages: {}\n", "vars: []\n"])
def test_empty_pipeline_says_so(repo: Path, text: str) -> None:
    (repo / "dvc.yaml").write_text(text)
    assert run_expfs(repo, "init").returncode == 0
    for argv in (["repro"], ["repro", "--dry"], ["status"]):
        done = run_expfs(repo, *argv)
        assert done.returncode == 0, done.stderr
        assert done.stdout == "there are no stages in dvc.yaml: nothing to do\n"
    assert not (repo / "expfs.lock").exists()


def test_runs_kind_and_mode_words(project: Path) -> None:
    import json

    runs = {r["stage"]: r for r in json.loads(ok(project, "runs", "--json"))}
    prepared = runs["prepare"]["outputs"][0]
    assert prepared["path"] == "out/prepared.txt"
    assert prepared["kind"] == "blob"
    assert prepared["mode"] == "644"
    model = runs["train"]["outputs"][0]
    assert model["kind"] == "tree"
    assert model["mode"] == "755"

    table = ok(project, "runs").splitlines()
    assert "    blob    644       4 bytes  out/prepared.txt" in table
    assert any(line.startswith("    tree    755 ") for line in table)


SUB_PIPELINE = """\
stages:
  a:
    cmd: echo a > a.txt
    outs: [a.txt]
  b:
    cmd: echo b > b.txt
    outs: [b.txt]
"""


@pytest.fixture
def two_files(repo: Path) -> Path:
    (repo / "dvc.yaml").write_text(
        "stages:\n  top:\n    cmd: echo top > top.txt\n    outs: [top.txt]\n"
    )
    (repo / "sub").mkdir()
    (repo / "sub" / "dvc.yaml").write_text(SUB_PIPELINE)
    assert run_expfs(repo, "init").returncode == 0
    return repo


@pytest.mark.parametrize(
    ("target", "ran"),
    [
        ("dvc.yaml:top", ["top.txt"]),
        ("top", ["top.txt"]),
        ("sub/dvc.yaml:a", ["sub/a.txt"]),
        ("sub:b", ["sub/b.txt"]),
        ("sub/dvc.yaml", ["sub/a.txt", "sub/b.txt"]),
    ],
)
def test_repro_file_and_stage_target(
    two_files: Path, target: str, ran: list[str]
) -> None:
    ok(two_files, "repro", target)
    written = sorted(
        str(p.relative_to(two_files)) for p in two_files.rglob("*.txt") if p.is_file()
    )
    assert written == ran


@pytest.mark.parametrize(
    ("targets", "message"),
    [
        (["sub:a", "dvc.yaml:top"], "targets name two stage files, sub/dvc.yaml and"),
        (["nope/dvc.yaml:x"], "stage file nope/dvc.yaml not found"),
        (["sub:zz"], "no stage named zz in sub/dvc.yaml"),
    ],
)
def test_repro_bad_target_rejected(
    two_files: Path, targets: list[str], message: str
) -> None:
    done = run_expfs(two_files, "repro", *targets)
    assert done.returncode == 2
    assert message in done.stderr
    assert not list(two_files.rglob("*.txt"))
    assert not (two_files / "sub" / "expfs.lock").exists()


def test_repro_verbose_and_quiet(repo: Path) -> None:
    (repo / "dvc.yaml").write_text(
        "stages:\n  hello:\n    cmd: echo hi > hi.txt && echo said hi\n"
        "    deps: [dvc.yaml]\n    outs: [hi.txt]\n"
    )
    assert run_expfs(repo, "init").returncode == 0
    plain = run_expfs(repo, "repro")
    assert plain.returncode == 0, plain.stderr
    assert "INFO:" not in plain.stderr

    verbose = run_expfs(repo, "repro", "-f", "--verbose")
    assert verbose.returncode == 0, verbose.stderr
    assert "INFO: stage 'hello': ran in" in verbose.stderr

    quiet = run_expfs(repo, "repro", "-q", "-f")
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout == "said hi\n"
    assert quiet.stderr == ""

    (repo / "dvc.yaml").write_text("stages:\n  bad:\n    cmd: exit 3\n")
    failed = run_expfs(repo, "repro", "--quiet")
    assert failed.returncode == 3
    assert "stage 'bad' failed" in failed.stderr

    both = run_expfs(repo, "repro", "-v", "-q")
    assert both.returncode == 2
    assert "not allowed with argument" in both.stderr
