"""`expfs exp run --cluster` against a real Dask scheduler and two workers.

The scheduler and two `dask worker` commands run on 127.0.0.1 without
dashboards, started once for the module and stopped by process id. Each
worker gets its own short TMPDIR, which contains its node-local store and
mounts, so the two act as two machines that share only the remote. They
also get EXPFS_TEST_ON_WORKER=1, which the stage writes into its metrics
to prove where it ran.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("distributed", reason="needs the cluster extra (dask[distributed])")

from tests.remote_servers import s3_options, seaweedfs  # noqa: E402

__all__ = ["seaweedfs"]

pytestmark = [pytest.mark.fuse, pytest.mark.slow]

EXPFS = [sys.executable, "-m", "expfs"]
DASK = Path(sys.executable).with_name("dask")

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
with open(os.environ["WORKER_COUNTER"], "a") as f:
    f.write(f"{p['lr']} {p['depth']}\\n")
print("training", p["lr"], p["depth"], flush=True)
time.sleep(float(p.get("sleep", 0)))
if p["lr"] < 0:
    sys.exit("lr must be positive")
open("model.txt", "w").write(f"{p['lr']} {p['depth']}\\n")
on_worker = int(os.environ.get("EXPFS_TEST_ON_WORKER", "0"))
json.dump({"score": p["lr"] * p["depth"], "on_worker": on_worker}, open("score.json", "w"))
"""


@dataclass
class Cluster:
    address: str
    tmpdir: Path
    counter: Path

    def counted(self) -> list[str]:
        if not self.counter.exists():
            return []
        return self.counter.read_text().splitlines()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """TERM, then KILL after 20 s: the scheduler or worker started by a test."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def mounts_below(root: Path | str) -> list[str]:
    with open("/proc/self/mounts") as f:
        targets = [line.split()[1] for line in f]
    return [t for t in targets if t.startswith(str(root) + "/")]


def unmount_below(root: Path | str) -> None:
    for target in mounts_below(root):
        subprocess.run(["fusermount3", "-uz", target], check=False)


def wait_for_workers(log: Path, count: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = log.read_text() if log.exists() else ""
        if text.count("Registered to:") >= count:
            return
        assert proc.poll() is None, f"dask worker exited: {text[-2000:]}"
        time.sleep(0.2)
    raise AssertionError(f"{count} workers did not register in 60 s: {log.read_text()}")


def start_scheduler(folder: Path) -> tuple[str, subprocess.Popen[bytes]]:
    port = free_port()
    with open(folder / "scheduler.log", "wb") as log:
        scheduler = subprocess.Popen(
            [DASK, "scheduler", "--host", "127.0.0.1", "--port", str(port)]
            + ["--no-dashboard"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return f"tcp://127.0.0.1:{port}", scheduler


def start_workers(
    address: str, folder: Path, tmpdir: Path, nworkers: int, **env: str
) -> subprocess.Popen[bytes]:
    """Start `dask worker` with `nworkers` processes that share `tmpdir`."""
    worker_env = {**os.environ, "TMPDIR": str(tmpdir), **env}
    with open(folder / "workers.log", "wb") as log:
        return subprocess.Popen(
            [DASK, "worker", address, "--host", "127.0.0.1", "--nthreads", "1"]
            + ["--nworkers", str(nworkers), "--no-dashboard"]
            + ["--local-directory", str(folder / "workers")],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=worker_env,
        )


def start_cluster(
    folder: Path, tmpdir: Path, nworkers: int, **env: str
) -> tuple[str, subprocess.Popen[bytes], subprocess.Popen[bytes]]:
    """Start a scheduler and `nworkers` worker processes; return their handles."""
    address, scheduler = start_scheduler(folder)
    workers = start_workers(address, folder, tmpdir, nworkers, **env)
    return address, scheduler, workers


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
        pytest.skip("needs /dev/fuse and fusermount3 (apt-get install fuse3)")
    folder = tmp_path_factory.mktemp("dask")
    # A short folder: mount control sockets live below it (AF_UNIX limit).
    tmpdir = Path(tempfile.mkdtemp(prefix="exc", dir="/tmp"))
    counter = tmpdir / "commands.txt"
    address, scheduler = start_scheduler(folder)
    workers: list[subprocess.Popen[bytes]] = []
    try:
        for index in range(2):
            (folder / f"n{index}").mkdir()
            (tmpdir / f"n{index}").mkdir()
            workers.append(
                start_workers(
                    address,
                    folder / f"n{index}",
                    tmpdir / f"n{index}",
                    1,
                    EXPFS_TEST_ON_WORKER="1",
                    WORKER_COUNTER=str(counter),
                )
            )
        for index, proc in enumerate(workers):
            wait_for_workers(folder / f"n{index}" / "workers.log", 1, proc)
        yield Cluster(address, tmpdir, counter)
    finally:
        for proc in workers:
            stop_process(proc)
        stop_process(scheduler)
        unmount_below(tmpdir)
        shutil.rmtree(tmpdir, ignore_errors=True)


def run(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [*EXPFS, *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )
    if check:
        assert proc.returncode == 0, (
            f"expfs {' '.join(args)}: {proc.stdout}{proc.stderr}"
        )
    return proc


def records(repo: Path) -> dict[str, object]:
    from expfs.experiments import list_experiments
    from expfs.store.repo import store_for

    return {e.name: e for e in list_experiments(store_for(str(repo)))}


@pytest.fixture
def project(repo: Path, tmp_path: Path) -> Iterator[Path]:
    (repo / "dvc.yaml").write_text(TRAIN_STAGE)
    (repo / "train.py").write_text(TRAIN_SCRIPT)
    (repo / "params.yaml").write_text("lr: 0.1\ndepth: 2\n")
    subprocess.run(["git", "-C", str(repo), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(repo), "commit", "-qm", "pipeline"], check=True)
    run(repo, "init")
    run(repo, "remote", "add", "origin", f"file://{tmp_path}/remote", "--default")
    try:
        yield repo
    finally:
        unmount_below(repo)


def test_cluster_sweep_of_four(cluster: Cluster, project: Path) -> None:
    before = subprocess.run(
        ["git", "-C", str(project), "status", "--porcelain"], capture_output=True
    ).stdout
    proc = run(
        project, "exp", "run", "-S", "lr=0.1,0.2", "-S", "depth=2,3",
        "--cluster", cluster.address,
    )  # fmt: skip
    experiments = records(project)
    assert len(experiments) == 4
    for name, e in experiments.items():
        assert e.status == "success", e.error  # type: ignore[attr-defined]
        assert e.metrics["score.json"]["on_worker"] == 1  # type: ignore[attr-defined]
        assert f"[{name}] stage 'train': ran" in proc.stdout
        assert f"[{name}] running on Dask worker tcp://127.0.0.1:" in proc.stdout
        listing = run(project, "ls", e.result).stdout  # type: ignore[attr-defined]
        assert "model.txt" in listing
        log = run(project, "queue", "logs", name).stdout
        assert "training" in log
    scores = sorted(e.metrics["score.json"]["score"] for e in experiments.values())  # type: ignore[attr-defined]
    assert scores == pytest.approx([0.2, 0.3, 0.4, 0.6])
    after = subprocess.run(
        ["git", "-C", str(project), "status", "--porcelain"], capture_output=True
    ).stdout
    assert after == before
    assert (project / "params.yaml").read_text() == "lr: 0.1\ndepth: 2\n"
    assert mounts_below(cluster.tmpdir) == []

    shown = json.loads(run(project, "exp", "show", "--json").stdout)
    named = {row["name"]: row for row in shown if row.get("name") in experiments}
    assert len(named) == 4
    best = max(named, key=lambda n: named[n]["metrics"]["score.json"]["score"])
    run(project, "exp", "promote", best, "--branch", "exp/best")
    promoted = subprocess.run(
        ["git", "-C", str(project), "show", "exp/best:params.yaml"],
        capture_output=True,
        text=True,
    ).stdout
    assert "lr: 0.2" in promoted
    assert "depth: 3" in promoted


def test_cluster_failure_among_good(cluster: Cluster, project: Path) -> None:
    proc = run(
        project, "exp", "run", "-S", "lr=-1,0.5", "-S", "depth=7",
        "--cluster", cluster.address, check=False,
    )  # fmt: skip
    assert proc.returncode == 1
    by_lr = {
        e.params.get("params.yaml", {}).get("lr"): e for e in records(project).values()
    }  # type: ignore[attr-defined]
    statuses = sorted(e.status for e in records(project).values())  # type: ignore[attr-defined]
    assert statuses == ["failed", "success"]
    assert by_lr[0.5].metrics["score.json"]["score"] == pytest.approx(3.5)  # type: ignore[attr-defined]
    failed = next(e for e in records(project).values() if e.status == "failed")  # type: ignore[attr-defined]
    assert "stage 'train' failed" in failed.error  # type: ignore[attr-defined]
    assert "lr must be positive" in run(project, "queue", "logs", failed.name).stdout  # type: ignore[attr-defined]
    # A failed stage is reported, not retried on another worker.
    assert cluster.counted().count("-1 7") == 1
    assert mounts_below(cluster.tmpdir) == []


def test_cluster_duplicates_merge(cluster: Cluster, project: Path) -> None:
    proc = run(
        project, "exp", "run", "-S", "lr=0.25,0.25", "-S", "depth=11",
        "--cluster", cluster.address,
    )  # fmt: skip
    experiments = list(records(project).values())
    assert len(experiments) == 2
    first, second = experiments
    assert first.status == second.status == "success"  # type: ignore[attr-defined]
    assert first.result == second.result  # type: ignore[attr-defined]
    assert first.started == second.started  # type: ignore[attr-defined]
    assert cluster.counted().count("0.25 11") == 1
    assert proc.stdout.count("running on Dask worker") == 2  # one line, two names


def test_cluster_worker_fetches_only_what_it_opens(
    cluster: Cluster, project: Path
) -> None:
    import blake3

    unread = os.urandom(1 << 20)
    (project / "unread.bin").write_bytes(unread)
    subprocess.run(["git", "-C", str(project), "add", "unread.bin"], check=True)
    subprocess.run(["git", "-C", str(project), "commit", "-qm", "data"], check=True)
    run(
        project, "exp", "run", "-S", "lr=0.125", "-S", "depth=13",
        "--cluster", cluster.address,
    )  # fmt: skip
    (experiment,) = records(project).values()
    assert experiment.status == "success", experiment.error  # type: ignore[attr-defined]
    # The workers' node stores live under the cluster's TMPDIR: the script
    # the stage ran was fetched, the file nothing opened was not.
    script = blake3.blake3((project / "train.py").read_bytes()).hexdigest()
    skipped = blake3.blake3(unread).hexdigest()
    assert list(cluster.tmpdir.rglob(script)), "the stage's script was never fetched"
    assert not list(cluster.tmpdir.rglob(skipped))
    # The user's side still has the whole result, unread file included.
    listing = run(project, "ls", experiment.result).stdout  # type: ignore[attr-defined]
    assert "unread.bin" in listing


def test_cluster_kill_stops_on_worker(cluster: Cluster, project: Path) -> None:
    sweep = subprocess.Popen(
        [*EXPFS, "exp", "run", "-S", "+sleep=120", "-S", "depth=13", "-n", "slow"]
        + ["--cluster", cluster.address],
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for_command(cluster, "0.1 13")
        started = time.monotonic()
        run(project, "exp", "kill", "slow")
        output, _ = sweep.communicate(timeout=60)
    finally:
        if sweep.poll() is None:
            sweep.kill()
            sweep.wait()
    assert time.monotonic() - started < 60
    assert sweep.returncode == 1, output
    slow = records(project)["slow"]
    assert slow.status == "stopped"  # type: ignore[attr-defined]
    assert "stopped" in slow.error  # type: ignore[attr-defined]
    assert mounts_below(cluster.tmpdir) == []


@pytest.mark.parametrize(
    "signum", [signal.SIGINT, signal.SIGTERM], ids=lambda s: signal.Signals(s).name
)
def test_cluster_signal_stops_on_worker(
    cluster: Cluster, project: Path, signum: int
) -> None:
    # The cluster's command log is shared by the module, so each signal's
    # sweep gets its own depth.
    depth = 30 + signum
    sweep = subprocess.Popen(
        [*EXPFS, "exp", "run", "-S", "+sleep=120", "-S", f"depth={depth}"]
        + ["--cluster", cluster.address],
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for_command(cluster, f"0.1 {depth}")
        sweep.send_signal(signum)
        output, _ = sweep.communicate(timeout=60)
    finally:
        if sweep.poll() is None:
            sweep.kill()
            sweep.wait()
    assert sweep.returncode == 128 + signum, output
    (experiment,) = records(project).values()
    assert experiment.status == "stopped"  # type: ignore[attr-defined]
    assert mounts_below(cluster.tmpdir) == []


def node_processes(cluster: Cluster) -> dict[int, int]:
    """Return {pid: parent pid} of the experiment processes of `cluster`'s workers."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        if b"expfs.cluster.node" in argv and any(
            a.startswith(os.fsencode(cluster.tmpdir)) for a in argv
        ):
            ppid = next(
                line for line in status.splitlines() if line.startswith("PPid:")
            )
            found[int(entry)] = int(ppid.split()[1])
    return found


def test_cluster_lost_worker_retried(cluster: Cluster, project: Path) -> None:
    sweep = subprocess.Popen(
        [*EXPFS, "exp", "run", "-S", "+sleep=5", "-S", "depth=19", "-n", "lost"]
        + ["--cluster", cluster.address],
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for_command(cluster, "0.1 19")
        (worker_pid,) = set(node_processes(cluster).values())
        # The worker process that runs the task; the nanny we started restarts it.
        os.kill(worker_pid, signal.SIGKILL)
        output, _ = sweep.communicate(timeout=120)
    finally:
        if sweep.poll() is None:
            sweep.kill()
            sweep.wait()
    assert sweep.returncode == 0, output
    assert output.count("[lost] running on Dask worker") == 2
    assert cluster.counted().count("0.1 19") == 2
    lost = records(project)["lost"]
    assert lost.status == "success"  # type: ignore[attr-defined]
    assert lost.metrics["score.json"]["score"] == pytest.approx(1.9)  # type: ignore[attr-defined]
    deadline = time.monotonic() + 30
    while node_processes(cluster) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert node_processes(cluster) == {}
    assert mounts_below(cluster.tmpdir) == []


def wait_for_command(cluster: Cluster, line: str) -> None:
    deadline = time.monotonic() + 60
    while line not in cluster.counted():
        assert time.monotonic() < deadline, f"no command ran with {line!r}"
        time.sleep(0.1)


def test_cluster_needs_default_remote(cluster: Cluster, repo: Path) -> None:
    run(repo, "init")
    proc = run(repo, "exp", "run", "--cluster", cluster.address, check=False)
    assert proc.returncode == 2
    assert "expfs remote add NAME URL --default" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert records(repo) == {}


def test_cluster_without_dask(
    repo: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from expfs_cli.main import main

    run(repo, "init")
    monkeypatch.setitem(sys.modules, "distributed", None)
    code = main(["-C", str(repo), "exp", "run", "--cluster", "local"])
    assert code == 2
    assert "pip install 'expfs[cluster]'" in capsys.readouterr().err
    assert records(repo) == {}


def test_worker_without_fusermount_refused(project: Path, tmp_path: Path) -> None:
    folder = tmp_path / "bad-cluster"
    folder.mkdir()
    tmpdir = Path(tempfile.mkdtemp(prefix="exb", dir="/tmp"))
    # The worker's PATH holds only Python, so fusermount3 is missing.
    bin_dir = tmpdir / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(sys.executable)
    address, scheduler, workers = start_cluster(folder, tmpdir, 1, PATH=str(bin_dir))
    try:
        wait_for_workers(folder / "workers.log", 1, workers)
        proc = run(project, "exp", "run", "--cluster", address, check=False)
    finally:
        stop_process(workers)
        stop_process(scheduler)
        shutil.rmtree(tmpdir, ignore_errors=True)
    assert proc.returncode == 1
    assert "cannot run expfs experiments: fusermount3 is not on PATH" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert records(project) == {}


def test_cluster_local_runs_sweep(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from expfs.cluster.worker import node_folder

    # The local workers inherit this process's environment.
    monkeypatch.setenv("WORKER_COUNTER", str(tmp_path / "commands.txt"))

    remote = {"url": f"file://{tmp_path}/remote", "options": {}}
    try:
        proc = run(
            project, "exp", "run", "-S", "lr=0.3,0.4", "-j", "2", "--cluster", "local"
        )
    finally:
        unmount_below(node_folder(remote))
        shutil.rmtree(node_folder(remote), ignore_errors=True)
    experiments = records(project)
    assert len(experiments) == 2
    assert {e.status for e in experiments.values()} == {"success"}  # type: ignore[attr-defined]
    assert "INFO" not in proc.stdout + proc.stderr
    assert proc.stdout.count("running on Dask worker tcp://127.0.0.1:") == 2


# -- a shared remote run-cache and leases, on file:// and S3 ---------------------------

SLOW_PIPELINE = """\
stages:
  prep:
    cmd: python3 prep.py
    deps: [prep.py]
    outs: [data.txt]
  train:
    cmd: python3 train.py
    deps: [train.py, data.txt]
    params: [lr, depth]
    outs: [model.txt]
    metrics: [{score.json: {cache: false}}]
"""

SLOW_PREP = """\
import os, time
with open(os.environ["WORKER_COUNTER"], "a") as f:
    f.write("prep {token}\\n")
time.sleep(4)
open("data.txt", "w").write("prepared\\n")
"""


@pytest.fixture(params=["file", "s3"])
def remote_args(request: pytest.FixtureRequest, tmp_path: Path) -> list[str]:
    """Return the URL and options of a new, empty remote of each kind."""
    if request.param == "file":
        return [f"file://{tmp_path}/remote"]
    server = request.getfixturevalue("seaweedfs")
    options = [["-o", f"{k}={v}"] for k, v in s3_options(server).items()]
    return [server.url(f"/{uuid.uuid4().hex}"), *sum(options, [])]


def init_project(root: Path, remote_args: list[str]) -> None:
    run(root, "init")
    run(root, "remote", "add", "origin", *remote_args, "--default")


@pytest.fixture
def remote_project(repo: Path, remote_args: list[str]) -> Iterator[Path]:
    """The training project, with a default remote on file:// or S3."""
    (repo / "dvc.yaml").write_text(TRAIN_STAGE)
    (repo / "train.py").write_text(TRAIN_SCRIPT)
    (repo / "params.yaml").write_text("lr: 0.1\ndepth: 2\n")
    subprocess.run(["git", "-C", str(repo), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(repo), "commit", "-qm", "pipeline"], check=True)
    init_project(repo, remote_args)
    try:
        yield repo
    finally:
        unmount_below(repo)


def clone_project(project: Path, dest: Path, remote_args: list[str]) -> Path:
    subprocess.run(["git", "clone", "-q", str(project), str(dest)], check=True)
    init_project(dest, remote_args)
    return dest


def forget_node_stores(cluster: Cluster) -> None:
    """Remove the workers' node-local stores: only the remote remembers runs."""
    assert mounts_below(cluster.tmpdir) == []
    for folder in cluster.tmpdir.glob("n*/expfs-node-*"):
        shutil.rmtree(folder)


def scores(repo: Path) -> list[float]:
    found = [e.metrics["score.json"]["score"] for e in records(repo).values()]  # type: ignore[attr-defined]
    return sorted(found)


def test_cluster_sweep_again_restored(
    cluster: Cluster, remote_project: Path, remote_args: list[str], tmp_path: Path
) -> None:
    sweep = ["exp", "run", "-S", "lr=0.5,0.6", "-S", "depth=23"]
    sweep += ["--cluster", cluster.address]
    before = cluster.counted()
    first = run(remote_project, *sweep)
    after_first = cluster.counted()
    assert sorted(after_first[len(before) :]) == ["0.5 23", "0.6 23"]
    assert first.stdout.count("stage 'train': ran") == 2

    forget_node_stores(cluster)
    clone = clone_project(remote_project, tmp_path / "clone", remote_args)
    second = run(clone, *sweep)
    assert cluster.counted() == after_first
    assert second.stdout.count("stage 'train': restored from the run-cache") == 2
    assert "stage 'train': ran" not in second.stdout
    assert {e.status for e in records(clone).values()} == {"success"}  # type: ignore[attr-defined]
    assert scores(clone) == pytest.approx([11.5, 13.8])
    assert scores(clone) == scores(remote_project)
    assert mounts_below(cluster.tmpdir) == []


def test_cluster_shared_slow_stage_once(cluster: Cluster, remote_project: Path) -> None:
    token = uuid.uuid4().hex
    (remote_project / "dvc.yaml").write_text(SLOW_PIPELINE)
    (remote_project / "prep.py").write_text(SLOW_PREP.format(token=token))
    proc = run(
        remote_project, "exp", "run", "-S", "lr=0.7,0.8", "-S", "depth=29",
        "--cluster", cluster.address,
    )  # fmt: skip
    assert cluster.counted().count(f"prep {token}") == 1
    assert proc.stdout.count("stage 'prep': ran") == 1
    assert proc.stdout.count("stage 'prep': waiting for") == 1
    assert proc.stdout.count("stage 'prep': restored from the run-cache") == 1
    assert proc.stdout.count("stage 'train': ran") == 2
    workers = {
        line.rsplit(" ", 1)[-1]
        for line in proc.stdout.splitlines()
        if "running on Dask worker" in line
    }
    assert len(workers) == 2
    assert {e.status for e in records(remote_project).values()} == {"success"}  # type: ignore[attr-defined]
    assert scores(remote_project) == pytest.approx([20.3, 23.2])
    assert mounts_below(cluster.tmpdir) == []


def stage_run_key(project: Path, folder: Path, stage: str) -> str:
    """Run the pipeline in a clone without any remote; return `stage`'s run key."""
    from expfs.repro.lockfile import LOCK_NAME, LockFile

    subprocess.run(["git", "clone", "-q", str(project), str(folder)], check=True)
    run(folder, "init")
    env = {**os.environ, "WORKER_COUNTER": str(folder / "commands.txt")}
    subprocess.run(
        [*EXPFS, "repro", "--no-remote"], cwd=folder, env=env, check=True,
        capture_output=True,
    )  # fmt: skip
    return LockFile(str(folder / LOCK_NAME)).stages[stage].run_key


def test_cluster_takes_over_expired_lease(
    cluster: Cluster, remote_project: Path, tmp_path: Path
) -> None:
    from expfs.remote.lease import RELEASED, RemoteLease
    from expfs.remote.runs import open_remote
    from expfs.store.repo import store_for

    key = stage_run_key(remote_project, tmp_path / "probe", "train")
    remote = open_remote(store_for(str(remote_project)))
    # A holder that dies right after taking the lease: no renewal, no release.
    dead = RemoteLease(remote, key, "train", ttl_s=15, owner="dead-holder")
    assert dead.acquire() is None
    before = cluster.counted()
    proc = run(remote_project, "exp", "run", "--cluster", cluster.address)
    assert cluster.counted()[len(before) :] == ["0.1 2"]
    assert "stage 'train': waiting for" in proc.stdout
    assert "without a result: running it here" in proc.stdout
    assert "stage 'train': ran" in proc.stdout
    newest = dead.newest()
    assert newest is not None
    assert newest.owner != "dead-holder"
    assert newest.state == RELEASED
    (experiment,) = records(remote_project).values()
    assert experiment.status == "success"  # type: ignore[attr-defined]


class TerminalBuffer(io.StringIO):
    """A text buffer that claims to be a terminal, as a user's screen would."""

    def isatty(self) -> bool:
        return True


def test_cluster_live_table(cluster: Cluster, project: Path) -> None:
    from expfs.cluster.client import run_on_cluster
    from expfs.store.lmdbenv import close_environment
    from expfs.store.repo import store_for

    screen = TerminalBuffer()
    store = store_for(str(project))
    try:
        (experiment,) = run_on_cluster(
            store,
            ["lr=0.9", "depth=31"],
            address=cluster.address,
            name="live",
            echo=screen,
        )
    finally:
        close_environment(os.path.join(store.root, "index"))
    assert experiment.status == "success"
    text = screen.getvalue()
    for column in ("experiment", "status", "stage", "ran", "restored", "elapsed"):
        assert column in text
    # The last drawing: the experiment finished, with one stage run.
    assert re.search(r"live\s+success\s+train\s+1\s+0\s+\d+\.\d s", text), text
    # Output lines go to the experiment's log, not between the table's lines.
    assert "[live]" not in text
    assert "training 0.9 31" in run(project, "queue", "logs", "live").stdout
