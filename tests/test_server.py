"""The expfs server that runs `exp run` with its imports done: its lifecycle.

Each test gives the server its own folder (EXPFS_SERVER_DIR) and stops the
server it started by the pid the server wrote there.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import stop_servers

pytestmark = pytest.mark.fuse

EXPFS = [sys.executable, "-m", "expfs"]

STAGE_FILE = """\
stages:
  train:
    cmd: sh train.sh
    deps: [train.sh]
    params: [x]
    metrics:
      - metrics.json:
          cache: false
"""
TRAIN_SCRIPT = """\
x=$(sed -n 's/^x: //p' params.yaml)
[ -n "$KILL_SERVER" ] && [ "$x" = 1 ] && kill -9 "$(cat "$KILL_SERVER")"
if [ -n "$STAGE_SLEEP" ]; then sleep "$STAGE_SLEEP" & echo $! >> "$STAGE_COUNTER"; wait; fi
echo "{\\"score\\": $((x * 2))}" > metrics.json
"""


@pytest.fixture
def server_dir(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "s"
    folder.mkdir(mode=0o700)
    try:
        yield folder
    finally:
        stop_servers(folder)


@pytest.fixture
def project(repo: Path, server_dir: Path) -> Iterator[Path]:
    if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
        pytest.skip("needs /dev/fuse and fusermount3 (apt-get install fuse3)")
    (repo / "dvc.yaml").write_text(STAGE_FILE)
    (repo / "train.sh").write_text(TRAIN_SCRIPT)
    (repo / "params.yaml").write_text("x: 0\n")
    (repo / ".gitignore").write_text("metrics.json\n")
    subprocess.run(["git", "-C", str(repo), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(repo), "commit", "-qm", "pipeline"], check=True)
    expfs(repo, server_dir, "init")
    try:
        yield repo
    finally:
        unmount_all(repo)


def expfs(
    cwd: Path, server_dir: Path, *args: str, check: bool = True, **env: str
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [*EXPFS, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "EXPFS_SERVER_DIR": str(server_dir), **env},
    )
    if check:
        assert proc.returncode == 0, f"expfs {' '.join(args)}: {proc.stderr}"
    return proc


def unmount_all(root: Path) -> None:
    for target in mounted_below(root):
        subprocess.run(["fusermount3", "-uz", target], check=False)


def mounted_below(root: Path) -> list[str]:
    with open("/proc/self/mounts") as f:
        return [line.split()[1] for line in f if line.split()[1].startswith(f"{root}/")]


def statuses(repo: Path) -> dict[str, str]:
    from expfs.experiments import list_experiments
    from expfs.store.repo import store_for

    return {e.name: e.status for e in list_experiments(store_for(str(repo)))}


def server_pid(server_dir: Path) -> int | None:
    pid_files = list(server_dir.glob("server-*.pid"))
    if not pid_files:
        return None
    assert len(pid_files) == 1, pid_files
    return int(pid_files[0].read_text())


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def server_log(server_dir: Path) -> str:
    return "".join(p.read_text() for p in server_dir.glob("server-*.log"))


def wait_until(condition: object, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def test_server_started_then_reused(project: Path, server_dir: Path) -> None:
    expfs(project, server_dir, "exp", "run", "-S", "x=2", "--name", "a")
    first = server_pid(server_dir)
    assert first is not None
    assert alive(first)
    expfs(project, server_dir, "exp", "run", "-S", "x=3", "--name", "b")
    assert server_pid(server_dir) == first
    assert statuses(project) == {"a": "success", "b": "success"}
    log = server_log(server_dir)
    assert log.count("listening on") == 1
    assert "expfs exp run -S x=2 --name a" in log
    assert "expfs exp run -S x=3 --name b" in log
    assert mounted_below(project) == []


def test_command_output_and_status_reach_client(
    project: Path, server_dir: Path
) -> None:
    proc = expfs(project, server_dir, "exp", "run", "-S", "x=4", "--name", "c")
    assert "c: success  score=8" in proc.stdout
    failed = expfs(project, server_dir, "exp", "run", "-S", "nosuch=1", check=False)
    assert failed.returncode == 2
    assert "param 'nosuch' not found" in failed.stderr
    assert server_pid(server_dir) is not None


@pytest.mark.parametrize("value", ["1", "yes", "TRUE", "on"])
def test_no_server_when_disabled(project: Path, server_dir: Path, value: str) -> None:
    expfs(
        project,
        server_dir,
        "exp",
        "run",
        "-S",
        "x=2",
        "--name",
        "a",
        EXPFS_NO_SERVER=value,
    )
    assert statuses(project) == {"a": "success"}
    assert server_pid(server_dir) is None
    assert not list(server_dir.glob("*.sock"))


@pytest.mark.parametrize("value", ["0", "no", "false", ""])
def test_server_used_when_not_disabled(
    project: Path, server_dir: Path, value: str
) -> None:
    expfs(project, server_dir, "repro", EXPFS_NO_SERVER=value)
    assert server_pid(server_dir) is not None


def test_idle_server_exits(project: Path, server_dir: Path) -> None:
    expfs(
        project,
        server_dir,
        "exp",
        "run",
        "-S",
        "x=2",
        "--name",
        "a",
        EXPFS_SERVER_IDLE_S="1",
    )
    pid = server_pid(server_dir)
    assert pid is not None
    assert wait_until(lambda: not alive(pid))
    assert not list(server_dir.glob("*.sock"))
    assert "stopped: idle" in server_log(server_dir)
    expfs(project, server_dir, "exp", "run", "-S", "x=3", "--name", "b")
    assert server_pid(server_dir) not in (None, pid)
    assert statuses(project) == {"a": "success", "b": "success"}


def test_stale_socket_replaced(project: Path, server_dir: Path) -> None:
    # A socket file without a listener, as a server killed with SIGKILL leaves.
    expfs(project, server_dir, "exp", "run", "-S", "x=2", "--name", "a")
    pid = server_pid(server_dir)
    assert pid is not None
    (path,) = server_dir.glob("*.sock")
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: not alive(pid))
    assert path.exists()
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as probe:
        with pytest.raises(ConnectionRefusedError):
            probe.connect(str(path))
    expfs(project, server_dir, "exp", "run", "-S", "x=3", "--name", "b")
    assert server_pid(server_dir) not in (None, pid)
    assert statuses(project) == {"a": "success", "b": "success"}
    assert mounted_below(project) == []


def test_server_killed_during_sweep(project: Path, server_dir: Path) -> None:
    # The first experiment's stage kills the server; the second must mount
    # through a launcher of its own.
    expfs(project, server_dir, "exp", "run", "-S", "x=5", "--name", "warm")
    pid = server_pid(server_dir)
    assert pid is not None
    pid_file = next(server_dir.glob("server-*.pid"))
    expfs(
        project,
        server_dir,
        "exp",
        "run",
        "-S",
        "x=1,2",
        "-j",
        "1",
        "--name",
        "k",
        KILL_SERVER=str(pid_file),
    )
    assert not alive(pid)
    assert statuses(project) == {"warm": "success", "k-1": "success", "k-2": "success"}
    assert mounted_below(project) == []


def test_concurrent_starts_share_one_server(project: Path, server_dir: Path) -> None:
    env = {**os.environ, "EXPFS_SERVER_DIR": str(server_dir)}
    procs = [
        subprocess.Popen(
            [*EXPFS, "exp", "run", "-S", f"x={i}", "--name", f"c{i}"],
            cwd=project,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    for proc in procs:
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
    assert server_log(server_dir).count("listening on") == 1
    assert statuses(project) == {f"c{i}": "success" for i in range(4)}
    assert mounted_below(project) == []


@pytest.mark.parametrize("changed", ["expfs", "library folder"])
def test_changed_source_restarts_server(
    project: Path, server_dir: Path, changed: str
) -> None:
    # An edit to expfs, or a pip install next to trio and pyfuse3.
    import trio

    import expfs as package

    expfs(project, server_dir, "exp", "run", "-S", "x=2", "--name", "a")
    pid = server_pid(server_dir)
    assert pid is not None
    if changed == "expfs":
        source = Path(package.__file__)
    else:
        source = Path(trio.__file__).parent.parent
    before = source.stat()
    try:
        os.utime(source, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))
        expfs(project, server_dir, "exp", "run", "-S", "x=3", "--name", "b")
    finally:
        os.utime(source, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert server_pid(server_dir) not in (None, pid)
    assert "stopped: its source files changed" in server_log(server_dir)
    assert statuses(project) == {"a": "success", "b": "success"}


def test_killed_client_stops_experiment(
    project: Path, server_dir: Path, tmp_path: Path
) -> None:
    counter = tmp_path / "counter.txt"
    env = {
        **os.environ,
        "EXPFS_SERVER_DIR": str(server_dir),
        "STAGE_SLEEP": "60",
        "STAGE_COUNTER": str(counter),
    }
    client = subprocess.Popen(
        [*EXPFS, "exp", "run", "-S", "x=7", "--name", "slow"],
        cwd=project,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_until(counter.exists), "the stage never started"
        client.kill()
        client.wait()
        assert wait_until(lambda: statuses(project)["slow"] == "stopped")
        assert wait_until(lambda: mounted_below(project) == [])
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    sleeper = int(counter.read_text().split()[0])
    assert wait_until(lambda: not alive(sleeper))


def test_interrupt_forwarded_to_command(
    project: Path, server_dir: Path, tmp_path: Path
) -> None:
    counter = tmp_path / "counter.txt"
    env = {
        **os.environ,
        "EXPFS_SERVER_DIR": str(server_dir),
        "STAGE_SLEEP": "60",
        "STAGE_COUNTER": str(counter),
    }
    client = subprocess.Popen(
        [*EXPFS, "exp", "run", "-S", "x=8", "--name", "slow"],
        cwd=project,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert wait_until(counter.exists), "the stage never started"
        client.send_signal(signal.SIGINT)
        _, stderr = client.communicate(timeout=60)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    assert client.returncode == 130
    assert "interrupted" in stderr
    assert statuses(project) == {"slow": "stopped"}
    assert mounted_below(project) == []


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("EXPFS_SERVER_IDLE_S", "soon", "EXPFS_SERVER_IDLE_S='soon' is not a positive"),
        ("EXPFS_SERVER_IDLE_S", "-5", "EXPFS_SERVER_IDLE_S='-5' is not a positive"),
        (
            "EXPFS_SERVER_DIR",
            "relative/dir",
            "EXPFS_SERVER_DIR='relative/dir' is a relative",
        ),
        ("EXPFS_NO_SERVER", "maybe", "EXPFS_NO_SERVER='maybe' is neither true"),
    ],
)
def test_bad_server_setting_is_an_error(
    project: Path, server_dir: Path, variable: str, value: str, expected: str
) -> None:
    before = statuses(project)
    proc = expfs(
        project, server_dir, "exp", "run", "-S", "x=2", check=False, **{variable: value}
    )
    assert proc.returncode == 2
    assert f"expfs: error: {expected}" in proc.stderr
    assert statuses(project) == before
    assert server_pid(server_dir) is None


def test_shared_server_dir_is_an_error(project: Path, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    proc = expfs(project, shared, "repro", check=False)
    assert proc.returncode == 2
    assert f"run `chmod 700 {shared}`" in proc.stderr
    assert not list(shared.iterdir())


def test_symlinked_server_dir_is_an_error(project: Path, tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(real)
    proc = expfs(project, link, "repro", check=False)
    assert proc.returncode == 2
    assert f"{link} is not a private folder" in proc.stderr
    assert f"it is a symbolic link to {real}" in proc.stderr
    assert f"set EXPFS_SERVER_DIR to {real} if that folder is yours" in proc.stderr
    assert "chmod" not in proc.stderr
    assert not list(real.iterdir())


def test_file_as_server_dir_is_an_error(project: Path, tmp_path: Path) -> None:
    file = tmp_path / "a-file"
    file.write_text("not a folder\n")
    proc = expfs(project, file, "repro", check=False)
    assert proc.returncode == 2
    assert f"{file} is not a private folder of user {os.getuid()}: it is not a " in (
        proc.stderr
    )
    assert f"set EXPFS_SERVER_DIR to another folder, or remove the file {file}" in (
        proc.stderr
    )
    assert "chmod" not in proc.stderr
    assert file.read_text() == "not a folder\n"


def test_other_users_server_dir_is_an_error(project: Path, tmp_path: Path) -> None:
    if os.getuid() != 0:
        pytest.skip("needs root to give a folder to another user (chown)")
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, 65534, -1)
    proc = expfs(project, theirs, "repro", check=False)
    assert proc.returncode == 2
    assert f"{theirs} is not a private folder of user 0: it belongs to user 65534" in (
        proc.stderr
    )
    assert "or ask user 65534 to remove it" in proc.stderr
    assert "chmod" not in proc.stderr
    assert not list(theirs.iterdir())


def test_unsafe_default_folder_warns_and_runs(project: Path, tmp_path: Path) -> None:
    # The default folder, TMPDIR/expfs-UID, made by someone else or left open.
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    (tmpdir / f"expfs-{os.getuid()}").mkdir(mode=0o777)
    (tmpdir / f"expfs-{os.getuid()}").chmod(0o777)
    env = {k: v for k, v in os.environ.items() if k != "EXPFS_SERVER_DIR"}
    proc = subprocess.run(
        [*EXPFS, "repro"],
        cwd=project,
        capture_output=True,
        text=True,
        env={**env, "TMPDIR": str(tmpdir)},
    )
    assert proc.returncode == 0, proc.stderr
    assert "expfs: warning: the expfs server is not available" in proc.stderr
    assert "is not a private folder" in proc.stderr
    assert "stage 'train': ran" in proc.stdout
    assert not list((tmpdir / f"expfs-{os.getuid()}").iterdir())


def test_client_imports_only_builtin_modules() -> None:
    # The client's start-up is most of a cache-hit restore's time: the
    # wrappers that build enums or load OpenSSL must stay out of it.
    check = (
        "import sys; before = set(sys.modules); import expfs_cli.client; "
        "print(' '.join(sorted(set(sys.modules) - before)))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, check=True
    )
    loaded = set(proc.stdout.split())
    assert loaded <= {"expfs_cli", "expfs_cli.client", "_socket", "_blake2"}, loaded


def test_python_and_python3_share_a_server() -> None:
    # The `expfs` script runs `python3`, a test or a benchmark `python`.
    show_key = (
        "from expfs_cli.client import installation_key; print(installation_key())"
    )
    keys = set()
    for name in ("python", "python3"):
        program = Path(sys.executable).with_name(name)
        proc = subprocess.run(
            [str(program), "-c", show_key], capture_output=True, text=True, check=True
        )
        keys.add(proc.stdout.strip())
    assert len(keys) == 1
