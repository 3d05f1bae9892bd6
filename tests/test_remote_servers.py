"""Remotes against real servers on 127.0.0.1: OpenSSH's sftp and SeaweedFS's S3."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from expfs.remote.backend import RemoteError
from expfs.remote.config import RemoteConfig
from expfs.remote.entries import read_entry
from expfs.remote.runs import (
    default_remote,
    output_roots,
    remote_lookup,
    remote_record,
)
from expfs.remote.transfer import CorruptRemoteObject, Remote, Stats, object_rel
from expfs.store import Store, init_store
from expfs.store.fsck import fsck
from expfs.store.lmdbenv import close_environment
from expfs.store.trees import Kind
from tests.remote_servers import (
    S3Server,
    SshServer,
    free_port,
    s3_options,
    seaweedfs,
    sftp_config,
    sshd,
    start_seaweedfs,
    start_sshd,
    stop,
)
from tests.test_remote import PUSHER, make_run

__all__ = ["seaweedfs", "sshd"]

MakeConfig = Callable[[], RemoteConfig]


@pytest.fixture
def clone_store(tmp_path: Path) -> Iterator[Store]:
    """A second, empty store: another clone of the team's repository."""
    root = tmp_path / "clone"
    root.mkdir()
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    created, _ = init_store(str(root))
    yield created
    close_environment(os.path.join(created.root, "index"))


def s3_config(server: S3Server) -> RemoteConfig:
    return RemoteConfig(
        "origin", server.url(f"/{uuid.uuid4().hex}"), options=s3_options(server)
    )


@pytest.fixture(params=["sftp", "s3"])
def make_config(request: pytest.FixtureRequest, tmp_path: Path) -> MakeConfig:
    if request.param == "sftp":
        server = request.getfixturevalue("sshd")
        return lambda: sftp_config(server, tmp_path / f"remote-{uuid.uuid4().hex[:8]}")
    server = request.getfixturevalue("seaweedfs")
    return lambda: s3_config(server)


def test_record_then_lookup_elsewhere(
    store: Store,
    clone_store: Store,
    tmp_path: Path,
    make_config: MakeConfig,
) -> None:
    record, inputs = make_run(store, tmp_path / "w", {"a": "1" * 1000, "b": "2"})
    remote = Remote(make_config())
    assert remote.backend.enforces_create_only()
    assert remote_record(store, remote, record, inputs)
    found = remote_lookup(clone_store, remote, record.key, "gen")
    assert found is not None
    assert found.outputs == record.outputs
    for entry in clone_store.get_tree(record.outputs[0].digest):
        assert clone_store.verify_blob(entry.digest)


def test_corrupt_object_is_named(
    store: Store,
    clone_store: Store,
    tmp_path: Path,
    make_config: MakeConfig,
) -> None:
    record, _ = make_run(store, tmp_path / "w", {"a": "1" * 1000})
    remote = Remote(make_config())
    tree = record.outputs[0].digest
    remote.push_objects(store, [(Kind.DIRECTORY, tree)], Stats())
    blob = store.get_tree(tree)[0].digest
    fs = remote.backend.fs
    path = remote.backend.path(object_rel(blob))
    if remote.backend.scheme == "sftp":
        fs.ftp.chmod(path, 0o644)
    fs.pipe_file(path, b"corrupt")
    with pytest.raises(CorruptRemoteObject) as info:
        remote.fetch_objects(clone_store, [(Kind.DIRECTORY, tree)], Stats())
    assert blob in info.value.message
    assert not clone_store.has_blob(blob)


def test_concurrent_pushers_one_entry(tmp_path: Path, make_config: MakeConfig) -> None:
    config = make_config()
    script = tmp_path / "push.py"
    script.write_text(PUSHER)
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(script),
                str(tmp_path / f"repo{i}"),
                config.url,
                str(i),
                json.dumps(config.options),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    written = sorted(out.strip() for out, _ in results)
    assert written == ["False", "True"]
    remote = Remote(config)
    runs = [rel for rel, _ in remote.backend.walk_files("runs")]
    assert len(runs) == 1


def test_down_remote_warns_and_misses(
    store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    record, inputs = make_run(store, tmp_path / "w", {"a": "1"})
    config = RemoteConfig(
        "down",
        f"s3://expfs/{uuid.uuid4().hex}",
        options={"endpoint_url": f"http://127.0.0.1:{free_port()}"},
    )
    remote = Remote(config)
    with caplog.at_level(logging.WARNING):
        assert not remote_record(store, remote, record, inputs)
        assert remote_lookup(store, remote, "cd" * 32, "gen") is None
    assert "push of stage gen" in caplog.text
    assert "lookup of stage gen" in caplog.text


def test_password_never_printed(
    store: Store, sshd: SshServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "s3cr3t-Pa55"
    url = f"sftp://{sshd.user}:{secret}@127.0.0.1:{sshd.port}{tmp_path}/remote"
    config = RemoteConfig(
        "origin", url, options={"look_for_keys": "false", "allow_agent": "false"}
    )
    with caplog.at_level(logging.DEBUG), pytest.raises(RemoteError) as info:
        Remote(config)
    assert secret not in info.value.message
    assert ":***@" in info.value.message
    assert secret not in caplog.text
    root = os.path.dirname(store.root)
    env = dict(os.environ)
    add = [
        sys.executable,
        "-m",
        "expfs",
        "remote",
        "add",
        "origin",
        url,
        "--local",
        "--default",
    ]
    subprocess.run(add, cwd=root, check=True, capture_output=True, env=env)
    push = subprocess.run(
        [sys.executable, "-m", "expfs", "-vv", "push"],
        cwd=root,
        capture_output=True,
        text=True,
        env=env,
    )
    assert push.returncode == 1
    assert "cannot connect to remote origin" in push.stderr
    assert secret not in push.stderr + push.stdout
    listed = subprocess.run(
        [sys.executable, "-m", "expfs", "remote", "list"],
        cwd=root,
        capture_output=True,
        text=True,
    )
    assert secret not in listed.stdout
    with caplog.at_level(logging.DEBUG):
        assert default_remote(store) is None
    assert secret not in caplog.text


@dataclass
class StoppableServer:
    """A server of this test's own, with the remote config that reaches it."""

    config: RemoteConfig
    stop: Callable[[], None]
    restart: Callable[[], None]


@pytest.fixture(params=["s3", "sftp"])
def stoppable(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[StoppableServer]:
    if request.param == "s3":
        s3 = start_seaweedfs(tmp_path / "weed")
        try:
            yield StoppableServer(s3_config(s3), lambda: stop(s3.proc), s3.restart)
        finally:
            stop(s3.proc)
        return
    ssh = start_sshd(tmp_path / "sshd")
    try:
        config = sftp_config(ssh, tmp_path / "remote")
        yield StoppableServer(config, ssh.stop_with_sessions, ssh.restart)
    finally:
        ssh.stop_with_sessions()


# Enough objects that a transfer at two at a time is still running when
# the server is stopped after the first STOP_AFTER of them.
MANY_FILES = {f"f{i:04d}": f"{i}-" * 400 for i in range(1500)}
STOP_AFTER = 40


def stop_midway(
    work: Callable[[], object], stats: Stats, server: StoppableServer
) -> BaseException | None:
    """Run `work` in a thread, stop the server once it has moved STOP_AFTER
    objects, and return what `work` raised (None if it returned)."""
    raised: list[BaseException] = []

    def target() -> None:
        try:
            work()
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    deadline = time.monotonic() + 120
    while stats.objects < STOP_AFTER and thread.is_alive():
        assert time.monotonic() < deadline, "the transfer made no progress"
        time.sleep(0.005)
    assert thread.is_alive(), "the transfer ended before the server was stopped"
    server.stop()
    thread.join(timeout=180)
    assert not thread.is_alive()
    return raised[0] if raised else None


def test_server_stopped_mid_push(
    store: Store, tmp_path: Path, stoppable: StoppableServer
) -> None:
    record, inputs = make_run(store, tmp_path / "w", MANY_FILES)
    remote = Remote(stoppable.config)
    remote.jobs = 2
    stats = Stats()
    logging.disable(logging.WARNING)
    try:
        error = stop_midway(
            lambda: remote.push_objects(store, output_roots(record), stats),
            stats,
            stoppable,
        )
        assert isinstance(error, RemoteError)
        assert remote.label in error.message
        assert stats.objects < len(MANY_FILES)
        # A push through repro's hook warns instead of raising.
        assert not remote_record(store, remote, record, inputs)
    finally:
        logging.disable(logging.NOTSET)
    stoppable.restart()
    assert read_entry(remote, record.key) is None
    assert remote_record(store, remote, record, inputs)
    entry = read_entry(remote, record.key)
    assert entry is not None
    tree = record.outputs[0].digest
    wanted = [tree, *(e.digest for e in store.get_tree(tree))]
    assert remote.has_objects(wanted) == set(wanted)


def test_server_stopped_mid_pull(
    store: Store,
    clone_store: Store,
    tmp_path: Path,
    stoppable: StoppableServer,
) -> None:
    record, _ = make_run(store, tmp_path / "w", MANY_FILES)
    remote = Remote(stoppable.config)
    remote.push_objects(store, output_roots(record), Stats())
    remote.jobs = 2
    stats = Stats()
    logging.disable(logging.WARNING)
    try:
        error = stop_midway(
            lambda: remote.fetch_objects(clone_store, output_roots(record), stats),
            stats,
            stoppable,
        )
    finally:
        logging.disable(logging.NOTSET)
    assert isinstance(error, RemoteError)
    tree = record.outputs[0].digest
    assert not clone_store.has_tree(tree)
    assert os.listdir(clone_store.tmp_dir) == []
    stored = [name for name, _ in clone_store.iter_blob_files()]
    assert 0 < len(stored) < len(MANY_FILES)
    report = fsck(clone_store)
    assert report.ok, report.problems
    assert report.reindexed == 0
    stoppable.restart()
    again = Stats()
    remote.fetch_objects(clone_store, output_roots(record), again)
    assert again.objects == len(MANY_FILES) - len(stored) + 1
    assert clone_store.has_tree(tree)
    for entry in clone_store.get_tree(tree):
        assert clone_store.verify_blob(entry.digest)
    assert fsck(clone_store).ok


PIPELINE = """stages:
  gen:
    cmd: python3 gen.py
    deps: [gen.py]
    params: [n]
    outs: [out]
"""

GEN = """import os, yaml
n = yaml.safe_load(open("params.yaml"))["n"]
os.makedirs("out", exist_ok=True)
for i in range(n):
    with open(f"out/f{i}", "w") as f:
        f.write(str(i) * 100)
with open("ran.log", "a") as f:
    f.write("ran\\n")
"""


def expfs(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "expfs", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    )


def test_second_clone_restores_from_remote(
    tmp_path: Path, make_config: MakeConfig
) -> None:
    config = make_config()
    options = [
        arg for key, value in config.options.items() for arg in ("-o", f"{key}={value}")
    ]
    first = tmp_path / "a"
    first.mkdir()
    subprocess.run(["git", "init", "-q", str(first)], check=True)
    (first / "dvc.yaml").write_text(PIPELINE)
    (first / "gen.py").write_text(GEN)
    (first / "params.yaml").write_text("n: 5\n")
    subprocess.run(["git", "-C", str(first), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(first), "commit", "-qm", "pipeline"], check=True)
    expfs(first, "init")
    expfs(
        first, "remote", "add", "origin", config.url, "--default", "--local", *options
    )
    expfs(first, "repro")
    pushed = expfs(first, "push", "--run-cache")
    # repro pushed the run as it recorded it, so push finds it there.
    assert "1 object and 1 entry were already there" in pushed.stderr
    second = tmp_path / "b"
    subprocess.run(["git", "clone", "-q", str(first), str(second)], check=True)
    expfs(second, "init")
    expfs(
        second, "remote", "add", "origin", config.url, "--default", "--local", *options
    )
    restored = expfs(second, "repro")
    assert "restored" in restored.stdout
    assert not (second / "ran.log").exists()
    for i in range(5):
        assert (second / "out" / f"f{i}").read_text() == str(i) * 100
