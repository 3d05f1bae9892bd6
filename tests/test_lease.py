"""Leases on a remote: one owner at a time, renewals, expiry, waiting.

Each test runs against a `file://` folder and against the loopback S3
server. Two "workers" are two `Remote` objects on the same URL, each with
its own lease owner id.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from expfs.remote.config import RemoteConfig
from expfs.remote.gc import gc_remote
from expfs.remote.lease import (
    HELD,
    RELEASED,
    LeaseWaitCancelled,
    RemoteLease,
    generation_name,
    take_turn,
)
from expfs.remote.transfer import Remote
from expfs.store import Store
from tests.conftest import git
from tests.remote_servers import s3_options, seaweedfs, sftp_config, sshd

__all__ = ["seaweedfs", "sshd"]

RUN_KEY = "ab" * 32
MakeRemote = Callable[[], Remote]


@pytest.fixture(params=["file", "sftp", "s3"])
def make_remote(request: pytest.FixtureRequest, tmp_path: Path) -> MakeRemote:
    """Return a factory of `Remote` objects that all open one new location."""
    if request.param == "file":
        config = RemoteConfig("origin", f"file://{tmp_path}/remote")
    elif request.param == "sftp":
        config = sftp_config(request.getfixturevalue("sshd"), tmp_path / "remote")
    else:
        server = request.getfixturevalue("seaweedfs")
        config = RemoteConfig(
            "origin", server.url(f"/{uuid.uuid4().hex}"), options=s3_options(server)
        )
    return lambda: Remote(config)


def test_lease_excludes_second_owner(make_remote: MakeRemote) -> None:
    first = RemoteLease(make_remote(), RUN_KEY, "train")
    second = RemoteLease(make_remote(), RUN_KEY, "train")
    assert first.acquire() is None
    holder = second.acquire()
    assert holder is not None
    assert holder.owner == first.owner
    assert holder.pid == os.getpid()
    assert holder.stage == "train"
    assert holder.state == HELD
    first.release()
    assert second.acquire() is None
    assert first.newest() is not None
    assert first.newest().owner == second.owner  # type: ignore[union-attr]


def test_released_lease_stays_newest(make_remote: MakeRemote) -> None:
    lease = RemoteLease(make_remote(), RUN_KEY, "train")
    assert lease.acquire() is None
    lease.release()
    newest = lease.newest()
    assert newest is not None
    assert newest.state == RELEASED
    assert lease.generations() == [2]


def test_expired_lease_taken_over(make_remote: MakeRemote) -> None:
    dead = RemoteLease(make_remote(), RUN_KEY, "train", ttl_s=0.5)
    taker = RemoteLease(make_remote(), RUN_KEY, "train")
    assert dead.acquire() is None
    assert taker.acquire() is not None
    time.sleep(0.7)
    assert taker.acquire() is None
    # The first owner comes back: its renewal fails, it does not steal it back.
    assert dead.renew() is False
    newest = taker.newest()
    assert newest is not None
    assert newest.owner == taker.owner


def test_heartbeat_keeps_lease_live(make_remote: MakeRemote) -> None:
    holder = RemoteLease(make_remote(), RUN_KEY, "train", ttl_s=1.5)
    other = RemoteLease(make_remote(), RUN_KEY, "train")
    assert holder.acquire() is None
    holder.start_heartbeat()
    try:
        time.sleep(3.0)
        blocking = other.acquire()
    finally:
        holder.release()
    assert blocking is not None
    assert blocking.owner == holder.owner
    assert blocking.generation > 1
    # Renewals remove the generations they replace.
    assert len(holder.generations()) == 1
    assert other.acquire() is None


def test_racing_acquires_one_winner(make_remote: MakeRemote) -> None:
    leases = [RemoteLease(make_remote(), RUN_KEY, "train") for _ in range(6)]
    start = threading.Barrier(len(leases))
    results: dict[str, object] = {}

    def contend(lease: RemoteLease) -> None:
        start.wait()
        results[lease.owner] = lease.acquire()

    threads = [threading.Thread(target=contend, args=(x,)) for x in leases]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [owner for owner, holder in results.items() if holder is None]
    assert len(winners) == 1
    newest = leases[0].newest()
    assert newest is not None
    assert newest.owner == winners[0]


def test_take_turn_waits_then_restores(make_remote: MakeRemote) -> None:
    holder = RemoteLease(make_remote(), RUN_KEY, "train")
    assert holder.acquire() is None
    pushed = threading.Event()
    said: list[str] = []
    turns: list[object] = []

    def wait() -> None:
        turn = take_turn(
            make_remote(),
            RUN_KEY,
            "train",
            restore=lambda: "restored" if pushed.is_set() else None,
            say=said.append,
        )
        turns.append(turn)

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(1.5)
    assert waiter.is_alive()
    pushed.set()
    holder.release()
    waiter.join(timeout=30)
    (turn,) = turns
    assert turn.restored == "restored"  # type: ignore[attr-defined]
    assert turn.lease is None  # type: ignore[attr-defined]
    assert len(said) == 1
    assert "waiting for" in said[0]
    assert f"(pid {os.getpid()})" in said[0]


def test_take_turn_runs_after_failed_holder(make_remote: MakeRemote) -> None:
    holder = RemoteLease(make_remote(), RUN_KEY, "train")
    assert holder.acquire() is None
    # The holder's stage fails: it releases the lease and pushes no entry.
    threading.Timer(1.0, holder.release).start()
    said: list[str] = []
    turn = take_turn(
        make_remote(), RUN_KEY, "train", restore=lambda: None, say=said.append
    )
    assert turn.restored is None
    assert len(said) == 2
    assert "waiting for" in said[0]
    assert "without a result: running it here" in said[1]
    assert turn.lease is not None
    with turn:
        newest = holder.newest()
        assert newest is not None
        assert newest.owner == turn.lease.owner
        assert newest.state == HELD
    newest = holder.newest()
    assert newest is not None
    assert newest.state == RELEASED


def test_take_turn_rechecks_after_acquire(make_remote: MakeRemote) -> None:
    # The caller's lookup missed, then another worker pushed its entry and
    # released the lease before this acquire: restore it, run nothing.
    lookups: list[int] = []

    def restore() -> str:
        lookups.append(1)
        return "restored"

    turn = take_turn(make_remote(), RUN_KEY, "train", restore=restore)
    assert turn.restored == "restored"
    assert turn.lease is None
    assert len(lookups) == 1
    newest = RemoteLease(make_remote(), RUN_KEY, "train").newest()
    assert newest is not None
    assert newest.state == RELEASED


def test_take_turn_cancelled_while_waiting(make_remote: MakeRemote) -> None:
    holder = RemoteLease(make_remote(), RUN_KEY, "train")
    assert holder.acquire() is None
    stop_at = time.monotonic() + 1.0
    with pytest.raises(LeaseWaitCancelled):
        take_turn(
            make_remote(),
            RUN_KEY,
            "train",
            restore=lambda: None,
            cancelled=lambda: time.monotonic() > stop_at,
        )
    holder.release()


def test_read_only_remote_takes_no_lease(tmp_path: Path) -> None:
    config = RemoteConfig("origin", f"file://{tmp_path}/remote", read_only=True)
    turn = take_turn(Remote(config), RUN_KEY, "train", restore=lambda: None)
    assert turn.lease is None
    assert turn.restored is None
    assert not (tmp_path / "remote").exists()


def test_invalid_lease_counts_as_expired(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    remote = Remote(RemoteConfig("origin", f"file://{tmp_path}/remote"))
    lease = RemoteLease(remote, RUN_KEY, "train")
    broken = tmp_path / "remote" / lease.folder / generation_name(1)
    broken.parent.mkdir(parents=True)
    broken.write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="expfs.remote.lease"):
        assert lease.acquire() is None
    assert "invalid lease" in caplog.text
    assert lease.generations() == [2]


def test_gc_removes_ended_leases(store: Store, tmp_path: Path) -> None:
    remote = Remote(RemoteConfig("origin", f"file://{tmp_path}/remote"))
    ended = RemoteLease(remote, RUN_KEY, "train")
    assert ended.acquire() is None
    ended.release()
    live = RemoteLease(remote, "cd" * 32, "train")
    assert live.acquire() is None
    report = gc_remote(store, remote, grace_s=3600)
    assert report.lease_files_removed == 0
    old = time.time() - 7200
    for path in (tmp_path / "remote" / "leases").rglob("*"):
        if path.is_file():
            os.utime(path, (old, old))
    report = gc_remote(store, remote, grace_s=3600)
    assert report.lease_files_removed == 1
    assert ended.generations() == []
    # Written long ago, but its expiry is still ahead: a live lease stays.
    assert live.generations() == [1]


# -- two clones running one stage at once --------------------------------------------

SLOW_STAGE = """\
stages:
  prep:
    cmd: python3 prep.py {counter}
    deps: [prep.py]
    outs: [data.txt]
"""

SLOW_SCRIPT = """\
import sys, time
with open(sys.argv[1], "a") as f:
    f.write("prep\\n")
time.sleep(3)
open("data.txt", "w").write("prepared\\n")
"""


EXPFS = [sys.executable, "-m", "expfs"]


def expfs(cwd: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*EXPFS, *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_two_clones_run_stage_once(repo: Path, tmp_path: Path) -> None:
    counter = tmp_path / "commands.txt"
    (repo / "dvc.yaml").write_text(SLOW_STAGE.format(counter=counter))
    (repo / "prep.py").write_text(SLOW_SCRIPT)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "slow stage")
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(repo), str(clone))
    remote_url = f"file://{tmp_path}/remote"
    for root in (repo, clone):
        for args in (["init"], ["remote", "add", "origin", remote_url, "--default"]):
            subprocess.run([*EXPFS, *args], cwd=root, check=True, capture_output=True)
    runs = [expfs(root, "repro") for root in (repo, clone)]
    outputs = [proc.communicate(timeout=120)[0] for proc in runs]
    for proc, output in zip(runs, outputs, strict=True):
        assert proc.returncode == 0, output
    assert counter.read_text() == "prep\n"
    joined = "\n".join(outputs)
    assert "stage 'prep': ran" in joined
    assert "stage 'prep': waiting for" in joined
    assert "stage 'prep': restored from the run-cache" in joined
    for root in (repo, clone):
        assert (root / "data.txt").read_text() == "prepared\n"
