"""The experiment queue: one runner at a time, and stopping it.

`expfs queue start` holds an flock on `.expfs/run/queue.lock` while it
runs, so a second one fails at once, naming the first, before it reads
or changes any experiment. `expfs queue stop` requests the runner
to stop by writing `.expfs/run/queue.stop`: the runner stops the
experiments it is running (they are recorded as stopped), starts no more,
leaves the rest queued and exits. The kernel releases the lock when the
runner exits, even by SIGKILL, so a lock is never left stale.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TextIO

from expfs.busy import exclusive_lock, read_holder
from expfs.errors import ExpfsError
from expfs.experiments import Experiment, list_experiments
from expfs.store import layout
from expfs.store.objects import Store
from expfs.sweep import (
    STATUS_QUEUED,
    STATUS_RUNNING,
    STATUS_STOPPED,
    STOP_POLL_S,
    Runner,
)

LOCK_FILE = "queue.lock"
STOP_FILE = "queue.stop"
# How long `queue stop` waits for the runner to stop its experiments and exit.
STOP_WAIT_S = 60.0


class QueueBusy(ExpfsError):
    """Another process is running the queue."""


def lock_path(store: Store) -> str:
    return os.path.join(store.root, layout.RUN_DIR, LOCK_FILE)


def stop_path(store: Store) -> str:
    return os.path.join(store.root, layout.RUN_DIR, STOP_FILE)


def _busy(fd: int) -> QueueBusy:
    holder = read_holder(fd)
    if holder is None:
        runner = "another process"
    else:
        age_s = max(0.0, time.time() - float(holder.get("started", time.time())))
        command = holder.get("command", "expfs queue start")
        runner = f"pid {holder['pid']} (`{command}`, started {age_s:.0f} s ago)"
    return QueueBusy(
        f"the queue is already running: {runner} runs it. Wait for it to finish, "
        "or stop it with `expfs queue stop`. Nothing was changed"
    )


@contextlib.contextmanager
def queue_lock(store: Store) -> Iterator[int]:
    """Hold the queue's lock; raise QueueBusy at once when another runner has it."""
    with exclusive_lock(lock_path(store), _busy) as fd:
        yield fd


def _clear_stop_request(store: Store) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(stop_path(store))


def start_queue(
    store: Store, jobs: int, echo: TextIO | None = sys.stdout
) -> list[Experiment]:
    """Run every queued experiment, oldest first, as the queue's only runner.

    Experiments queued while it runs are run too, until none is left.
    Returns the experiments that were started. Those that `queue stop` or a
    signal kept from starting stay queued.
    """
    with queue_lock(store):
        # A request left by a `queue stop` that came after the last runner ended.
        _clear_stop_request(store)
        try:
            scheduled: set[str] = set()
            flag = stop_path(store)
            runner = Runner(
                store,
                jobs=jobs,
                echo=echo,
                stop_requested=lambda: os.path.exists(flag),
                keep_unstarted_queued=True,
                newly_queued=lambda: _newly_queued(store, scheduled),
            )
            finished = runner.run_all(_newly_queued(store, scheduled))
        finally:
            _clear_stop_request(store)
    return [e for e in finished if e.status != STATUS_QUEUED]


def _newly_queued(store: Store, scheduled: set[str]) -> list[str]:
    """Return queued experiments not in `scheduled`, oldest first, and add them to it."""
    queued = sorted(
        (
            e
            for e in list_experiments(store)
            if e.status == STATUS_QUEUED and e.name not in scheduled
        ),
        key=lambda e: e.created,
    )
    scheduled.update(e.name for e in queued)
    return [e.name for e in queued]


@dataclass
class StopResult:
    """The outcome of `queue stop`."""

    # The runner's pid: None when no runner was running, -1 when its
    # holder record was unreadable.
    runner_pid: int | None = None
    stopped: list[str] = field(default_factory=list)
    still_queued: int = 0
    # Experiments still running that the queue does not run (`exp run`).
    others_running: list[str] = field(default_factory=list)


def stop_queue(store: Store, wait_s: float = STOP_WAIT_S) -> StopResult:
    """Stop the queue's runner and the experiments it runs; wait until it exits."""
    result = StopResult()
    before = {e.name for e in list_experiments(store) if e.status == STATUS_RUNNING}
    path = lock_path(store)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        fd = None
    if fd is not None:
        try:
            result.runner_pid = _runner_pid(fd)
            if result.runner_pid is not None:
                with open(stop_path(store), "w") as f:
                    f.write(f"{os.getpid()}\n")
                _wait_for_unlock(fd, result.runner_pid, wait_s)
        finally:
            os.close(fd)
    after = {e.name: e.status for e in list_experiments(store)}
    result.stopped = sorted(n for n in before if after.get(n) == STATUS_STOPPED)
    result.still_queued = sum(1 for s in after.values() if s == STATUS_QUEUED)
    result.others_running = sorted(n for n, s in after.items() if s == STATUS_RUNNING)
    return result


def _runner_pid(fd: int) -> int | None:
    """Return the pid of the runner holding the lock open as `fd`, or None if none does."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = read_holder(fd)
        return int(holder["pid"]) if holder is not None else -1
    fcntl.flock(fd, fcntl.LOCK_UN)
    return None


def _wait_for_unlock(fd: int, pid: int, wait_s: float) -> None:
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise ExpfsError(
                    f"the queue runner (pid {pid}) is still running {wait_s:.0f} s "
                    f"after it was asked to stop: see `expfs queue status`, or end "
                    f"it with `kill {pid}`"
                ) from None
            time.sleep(STOP_POLL_S)
            continue
        fcntl.flock(fd, fcntl.LOCK_UN)
        return
