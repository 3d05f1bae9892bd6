"""`expfs exp run` on real mounts: sweeps, failures, single flight, queue and kill."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.fuse

EXPFS = [sys.executable, "-m", "expfs"]

TRAIN_STAGE = """\
stages:
  train:
    cmd: python3 train.py
    deps: [train.py]
    params: [lr, depth]
    outs: [model.txt]
    metrics: [{score.json: {cache: false}}]
"""

TRAIN_SCRIPT = """\
import json, os, sys, time, yaml
p = yaml.safe_load(open("params.yaml"))
# The pid first, so that it is on record once the counter shows the stage ran.
pids = os.environ.get("SWEEP_PIDS")
if pids:
    with open(pids, "a") as f:
        f.write(f"{os.getpid()}\\n")
counter = os.environ.get("SWEEP_COUNTER")
if counter:
    with open(counter, "a") as f:
        f.write(f"{p['lr']} {p['depth']}\\n")
time.sleep(float(os.environ.get("SWEEP_SLEEP", "0")))
if p["lr"] < 0:
    sys.exit("lr must be positive")
open("model.txt", "w").write(f"{p['lr']} {p['depth']}\\n")
json.dump({"score": p["lr"] * p["depth"]}, open("score.json", "w"))
"""


def run(
    cwd: Path, *args: str, check: bool = True, **env: str
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [*EXPFS, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
    )
    if check:
        assert proc.returncode == 0, (
            f"expfs {' '.join(args)}: {proc.stdout}{proc.stderr}"
        )
    return proc


def show(repo: Path) -> dict[str, dict]:
    from expfs.experiments import list_experiments
    from expfs.store.repo import store_for

    return {e.name: e for e in list_experiments(store_for(str(repo)))}  # type: ignore[misc]


def tree_state(repo: Path) -> str:
    status = subprocess.run(
        ["git", "-C", str(repo), "status", "--porcelain"],
        capture_output=True,
        text=True,
    ).stdout
    return status + (repo / "params.yaml").read_text()


def unmount_all(root: Path) -> None:
    with open("/proc/self/mounts") as f:
        targets = [line.split()[1] for line in f]
    for target in targets:
        if target.startswith(str(root) + "/"):
            subprocess.run(["fusermount3", "-uz", target], check=False)


@pytest.fixture
def project(repo: Path) -> Iterator[Path]:
    if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
        pytest.skip("needs /dev/fuse and fusermount3 (apt-get install fuse3)")
    (repo / "dvc.yaml").write_text(TRAIN_STAGE)
    (repo / "train.py").write_text(TRAIN_SCRIPT)
    (repo / "params.yaml").write_text("lr: 0.1\ndepth: 2\n")
    subprocess.run(["git", "-C", str(repo), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(repo), "commit", "-qm", "pipeline"], check=True)
    run(repo, "init")
    try:
        yield repo
    finally:
        unmount_all(repo)


def mounted_below(root: Path) -> list[str]:
    with open("/proc/self/mounts") as f:
        return [line.split()[1] for line in f if line.split()[1].startswith(str(root))]


def test_sweep_runs_every_combination(project: Path) -> None:
    before = tree_state(project)
    run(project, "exp", "run", "-S", "lr=0.1,0.2", "-S", "depth=2,3", "-j", "2")
    experiments = show(project)
    assert len(experiments) == 4
    scores = sorted(e.metrics["score.json"]["score"] for e in experiments.values())
    assert scores == pytest.approx([0.2, 0.3, 0.4, 0.6])
    assert {e.status for e in experiments.values()} == {"success"}
    assert tree_state(project) == before
    assert mounted_below(project) == []


def test_sweep_records_params_and_result(project: Path) -> None:
    run(project, "exp", "run", "-S", "lr=0.5", "--name", "half")
    experiment = show(project)["half"]
    assert experiment.params["params.yaml"] == {"lr": 0.5, "depth": 2}
    assert experiment.overrides == ("lr=0.5",)
    assert experiment.result is not None
    listing = run(project, "ls", experiment.result).stdout
    assert "model.txt" in listing


def test_second_sweep_restores(project: Path) -> None:
    run(project, "exp", "run", "-S", "lr=0.1,0.2", "-j", "2")
    run(project, "exp", "run", "-S", "lr=0.1,0.2", "-j", "2")
    logs = [
        run(project, "queue", "logs", name).stdout
        for name, e in show(project).items()
        if e.created == max(x.created for x in show(project).values())
    ]
    assert any("restored from the run-cache" in text for text in logs)


@pytest.mark.parametrize("queue", [[], ["--queue"]])
def test_bad_stage_file_reported_once(project: Path, queue: list[str]) -> None:
    (project / "dvc.yaml").write_text("stages:\n  a:\n    cmd: echo\n    deps: [x\n")
    proc = run(project, "exp", "run", *queue, check=False)
    assert proc.returncode == 2
    assert proc.stderr.count("malformed YAML") == 1, proc.stderr
    assert f"{project / 'dvc.yaml'}:5: malformed YAML" in proc.stderr
    assert show(project) == {}
    # Nothing was stored: gc finds no snapshot of the working tree to remove.
    dry = run(project, "gc", "--dry", "--grace", "0").stdout
    assert dry.startswith("would remove 0 blobs and 0 trees"), dry


def test_killed_stage_reported(project: Path) -> None:
    (project / "dvc.yaml").write_text("stages:\n  die:\n    cmd: kill -9 $$\n")
    proc = run(project, "exp", "run", "-n", "ran", check=False)
    assert proc.returncode == 1
    run(project, "exp", "run", "--queue", "-n", "queued")
    proc = run(project, "queue", "start", check=False)
    assert proc.returncode == 1
    experiments = show(project)
    signal_text = "its command was killed by signal 9 (SIGKILL)"
    for name in ("ran", "queued"):
        assert experiments[name].status == "failed"
        assert signal_text in experiments[name].error
        assert signal_text in run(project, "queue", "logs", name).stdout
    assert signal_text in run(project, "queue", "status").stdout


def test_failed_experiment_among_good_ones(project: Path) -> None:
    proc = run(project, "exp", "run", "-S", "lr=0.1,-1,0.3", "-j", "2", check=False)
    assert proc.returncode == 1
    experiments = show(project)
    statuses = sorted(e.status for e in experiments.values())
    assert statuses == ["failed", "success", "success"]
    failed = next(name for name, e in experiments.items() if e.status == "failed")
    assert "lr must be positive" in run(project, "queue", "logs", failed).stdout
    # The stage's stderr reaches expfs's stderr, prefixed by the experiment.
    assert f"[{failed}] lr must be positive" in proc.stderr
    assert "lr must be positive" not in proc.stdout
    assert "status 1" in experiments[failed].error
    assert experiments[failed].params == {"params.yaml": {"lr": -1, "depth": 2}}
    assert mounted_below(project) == []
    shown = json.loads(run(project, "exp", "show", "--json").stdout)
    row = next(r for r in shown if r["name"] == failed)
    assert row["params"] == {"params.yaml": {"lr": -1, "depth": 2}}


def test_same_run_key_computed_once(project: Path, tmp_path: Path) -> None:
    counter = tmp_path / "counter.txt"
    run(
        project,
        "exp",
        "run",
        "-S",
        "lr=0.7,0.7",
        "-j",
        "2",
        SWEEP_COUNTER=str(counter),
        SWEEP_SLEEP="1",
    )
    assert counter.read_text().splitlines() == ["0.7 2"]
    experiments = show(project)
    assert [e.metrics["score.json"]["score"] for e in experiments.values()] == [
        1.4,
        1.4,
    ]


def test_queue_then_start(project: Path) -> None:
    run(project, "exp", "run", "-S", "depth=4,5", "--queue")
    queued = show(project).values()
    assert {e.status for e in queued} == {"queued"}
    # Params are known before the run: the overrides set them.
    assert sorted(e.params["params.yaml"]["depth"] for e in queued) == [4, 5]
    assert {e.params["params.yaml"]["lr"] for e in queued} == {0.1}
    rows = json.loads(run(project, "exp", "show", "--json").stdout)
    shown = sorted(r["params"]["params.yaml"]["depth"] for r in rows[1:])
    assert shown == [4, 5]
    assert "queued" in run(project, "queue", "status").stdout
    run(project, "queue", "start", "-j", "2")
    assert {e.status for e in show(project).values()} == {"success"}


def test_kill_stops_running_experiment(project: Path, tmp_path: Path) -> None:
    counter = tmp_path / "counter.txt"
    env = {**os.environ, "SWEEP_SLEEP": "60", "SWEEP_COUNTER": str(counter)}
    runner = subprocess.Popen(
        [*EXPFS, "exp", "run", "--name", "slow"],
        cwd=project,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not counter.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert counter.exists(), "the stage never started"
        run(project, "exp", "kill", "slow")
        assert runner.wait(timeout=30) == 1
    finally:
        if runner.poll() is None:
            os.killpg(runner.pid, signal.SIGKILL)
            runner.wait()
    assert show(project)["slow"].status == "stopped"
    assert json.loads(run(project, "runs", "--json").stdout) == []
    assert mounted_below(project) == []


def test_untracked_and_modified_files_reach_experiment(repo: Path) -> None:
    if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
        pytest.skip("needs /dev/fuse and fusermount3 (apt-get install fuse3)")
    (repo / "params.yaml").write_text("lr: 0.1\ndepth: 2\n")
    subprocess.run(["git", "-C", str(repo), "add", "params.yaml"], check=True)
    subprocess.run(["git", "-C", str(repo), "commit", "-qm", "params"], check=True)
    (repo / "dvc.yaml").write_text(TRAIN_STAGE)
    (repo / "train.py").write_text(TRAIN_SCRIPT)
    (repo / "params.yaml").write_text("lr: 0.1\ndepth: 7\n")
    (repo / ".gitignore").write_text("secret.txt\n")
    (repo / "secret.txt").write_text("not for experiments\n")
    run(repo, "init")
    try:
        run(repo, "exp", "run", "-S", "lr=0.2", "--name", "seen")
    finally:
        unmount_all(repo)
    experiment = show(repo)["seen"]
    assert experiment.status == "success"
    assert experiment.params["params.yaml"] == {"lr": 0.2, "depth": 7}
    listing = run(repo, "ls", experiment.result).stdout
    assert "train.py" in listing
    assert "secret.txt" not in listing


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--name", "a/b"], "invalid experiment name 'a/b': it contains '/'"),
        (["--name", "a b"], "invalid experiment name 'a b': it contains a space"),
        (["--queue", "-n", "x..y"], "'x..y': it contains '..'"),
        (["-n", "v@2", "-S", "lr=0.1,0.2"], "'v@2': it contains '@'"),
        (["--queue", "-n", ""], "invalid experiment name '': it is empty"),
    ],
)
def test_invalid_name_rejected(project: Path, argv: list[str], message: str) -> None:
    proc = run(project, "exp", "run", *argv, check=False)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert show(project) == {}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("nosuch=1", "param 'nosuch' not found in 'params.yaml'"),
        ("nofile.yaml:lr=1", "params file 'nofile.yaml' not found"),
        ("lr=", "has an empty value"),
        ("lr=0.1,,0.2", "has an empty value"),
        ("lr=range(0,5000)", "more than --max-experiments 1000"),
    ],
)
def test_bad_override_creates_nothing(
    project: Path, override: str, message: str
) -> None:
    proc = run(project, "exp", "run", "-S", override, check=False)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "started" not in proc.stdout
    assert show(project) == {}


def test_malformed_stage_file_creates_nothing(project: Path) -> None:
    (project / "dvc.yaml").write_text("stages:\n  train:\n    cmd: x\n   deps: [y]\n")
    proc = run(project, "exp", "run", "-S", "lr=0.3", check=False)
    assert proc.returncode == 2
    assert "dvc.yaml" in proc.stderr
    assert show(project) == {}


def interrupt_sweep(
    project: Path,
    counter: Path,
    args: list[str],
    env: dict[str, str],
    signum: int = signal.SIGINT,
) -> None:
    """Start `exp run ARGS`, wait until two stages log to `counter`, then send `signum`."""
    runner = subprocess.Popen(
        [*EXPFS, "exp", "run", *args],
        cwd=project,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if counter.exists() and len(counter.read_text().splitlines()) == 2:
                break
            time.sleep(0.1)
        assert len(counter.read_text().splitlines()) == 2, "two stages never started"
        runner.send_signal(signum)
        assert runner.wait(timeout=60) == 128 + signum
    finally:
        if runner.poll() is None:
            os.killpg(runner.pid, signal.SIGKILL)
            runner.wait()


@pytest.mark.parametrize(
    "signum",
    [signal.SIGINT, signal.SIGTERM, signal.SIGHUP],
    ids=lambda s: signal.Signals(s).name,
)
def test_interrupt_stops_whole_sweep(
    project: Path, tmp_path: Path, signum: int
) -> None:
    counter = tmp_path / "counter.txt"
    pids = tmp_path / "pids.txt"
    env = {
        **os.environ,
        "SWEEP_SLEEP": "60",
        "SWEEP_COUNTER": str(counter),
        "SWEEP_PIDS": str(pids),
    }
    args = ["-S", "depth=11,12,13", "-j", "2"]
    interrupt_sweep(project, counter, args, env, signum)
    statuses = sorted(e.status for e in show(project).values())
    assert statuses == ["stopped", "stopped", "stopped"]
    assert json.loads(run(project, "runs", "--json").stdout) == []
    assert mounted_below(project) == []
    started = pids.read_text().split()
    assert len(started) == 2
    assert [pid for pid in started if running(int(pid))] == []


def running(pid: int) -> bool:
    """Return whether process `pid` exists and has not exited (zombies have)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


SLOW_CHILD_STAGE = """\
stages:
  train:
    cmd: sh -c 'trap "sleep 1; exit 0" TERM; echo started >> "$SWEEP_COUNTER"; while :; do sleep 0.1; done'
    deps: [train.py]
    params: [lr]
    outs: [model.txt]
"""


def test_interrupt_waits_for_slow_children(project: Path, tmp_path: Path) -> None:
    (project / "dvc.yaml").write_text(SLOW_CHILD_STAGE)
    counter = tmp_path / "counter.txt"
    env = {**os.environ, "SWEEP_COUNTER": str(counter)}
    interrupt_sweep(project, counter, ["-S", "lr=0.1,0.2", "-j", "2"], env)
    assert {e.status for e in show(project).values()} == {"stopped"}
    assert mounted_below(project) == []
    daemons = subprocess.run(
        ["pgrep", "-f", f"expfs.fuse.(daemon|launcher) --store {project}"],
        capture_output=True,
        text=True,
    ).stdout.split()
    assert daemons == []
    # Daemons forked by the expfs server are its children.
    deadline = time.monotonic() + 10
    while server_children() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server_children() == []


def server_children() -> list[int]:
    """Return the live child processes of this session's expfs servers."""
    folder = Path(os.environ["EXPFS_SERVER_DIR"])
    servers = {int(p.read_text()) for p in folder.glob("server-*.pid")}
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if fields[0] != "Z" and int(fields[1]) in servers:
            children.append(int(entry))
    return children


def test_interrupted_creation_leaves_no_worktree(project: Path) -> None:
    from expfs.experiments import create_experiment, repo_root
    from expfs.store.repo import store_for

    store = store_for(str(project))

    def fail_put(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    import expfs.experiments as experiments

    original = experiments._put
    experiments._put = fail_put  # type: ignore[assignment]
    try:
        with pytest.raises(KeyboardInterrupt):
            create_experiment(store, repo_root(store), "half")
    finally:
        experiments._put = original
    worktrees = subprocess.run(
        ["git", "-C", str(project), "worktree", "list"], capture_output=True, text=True
    ).stdout
    assert "half" not in worktrees
    assert not (project / ".expfs" / "workspaces" / "half").exists()


def test_creator_stops_between_experiments(project: Path) -> None:
    import threading

    from expfs.experiments import repo_root, snapshot_base
    from expfs.store.repo import store_for
    from expfs.sweep import Creator, Plan
    from expfs.tree.gitsnap import resolve_commit

    store = store_for(str(project))
    repo = repo_root(store)
    base = snapshot_base(store, repo)
    plans = [Plan("c1", ("lr=0.3",)), Plan("c2", ("lr=0.4",))]
    stop = threading.Event()
    creator = Creator(store, plans, base, resolve_commit(repo, "HEAD"), stop)
    creator.start()
    assert creator.wait_for("c1")
    creator.join()
    assert creator.error is None
    assert sorted(show(project)) == ["c1", "c2"]

    stop.set()
    later = Creator(store, [Plan("c3", ())], base, resolve_commit(repo, "HEAD"), stop)
    later.start()
    later.join()
    assert not later.wait_for("c3")
    assert sorted(show(project)) == ["c1", "c2"]
    assert show(project)["c1"].status == "queued"
