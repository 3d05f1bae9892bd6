"""Run one experiment of a cluster sweep on a worker's machine.

`python -m expfs.cluster.node NODE_DIR RESULT_FILE WORKER` reads the task's
spec as JSON on stdin, writes the experiment's output on stdout and, at the
end, its record fields as JSON to RESULT_FILE. The Dask task that starts
it relays the output and stop requests (SIGTERM here).

NODE_DIR is a node-local repository: a Git repository with one empty
commit and an expfs store whose default remote is the sweep's. Every
worker process of the machine shares it, so objects fetched or made by
one experiment serve the next, and the store's run-key locks make two
experiments reaching one stage on this machine compute it once. Across
machines the remote's leases (`expfs.remote.lease`) do the same. Git and
experiment creation and removal are serialized by the file lock
NODE_DIR.lock beside it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TextIO

from expfs.cluster import PROGRESS_PREFIX
from expfs.errors import ExpfsError
from expfs.store.objects import Store
from expfs.store.trees import Digest, Kind
from expfs.sweep import Runner

if TYPE_CHECKING:
    from expfs.remote.transfer import Remote

log = logging.getLogger(__name__)

# How often the process checks that the worker that started it is alive.
PARENT_POLL_S = 1.0
# Identity of the node-local repository's one commit.
_GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "expfs",
    "GIT_AUTHOR_EMAIL": "expfs@localhost",
    "GIT_COMMITTER_NAME": "expfs",
    "GIT_COMMITTER_EMAIL": "expfs@localhost",
}


@contextlib.contextmanager
def node_lock(node_dir: str) -> Iterator[None]:
    """Hold the lock that serializes changes to the node-local repository."""
    fd = os.open(f"{node_dir}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _git(repo: str, *args: str) -> None:
    proc = subprocess.run(
        ["git", "-C", repo, "-c", "commit.gpgsign=false", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **_GIT_IDENTITY},
    )
    if proc.returncode != 0:
        raise ExpfsError(
            f"git {' '.join(args)} failed in the node-local repository {repo}: "
            f"{proc.stderr.strip()}"
        )


def open_node_store(node_dir: str, remote: dict[str, Any]) -> Store:
    """Create or open the node-local repository and store; set its default remote."""
    from expfs.remote.config import RemoteConfig, config_files
    from expfs.store.repo import init_store

    repo = node_dir
    with node_lock(node_dir):
        if not os.path.isdir(os.path.join(repo, ".git")):
            os.makedirs(repo, exist_ok=True)
            _git(repo, "init", "-q")
            _git(repo, "commit", "-q", "--allow-empty", "-m", "expfs node-local base")
        store, _ = init_store(repo)
        config = RemoteConfig(
            remote["name"],
            remote["url"],
            bool(remote["read_only"]),
            dict(remote["options"]),
            local=True,
        )
        # Each task of a sweep sets the sweep's remote again, so it replaces the last.
        config_files(store.root).add(config, default=True, force=True)
    return store


def prepare_experiment(
    store: Store, node_dir: str, name: str, base: Digest, overrides: tuple[str, ...]
) -> None:
    """Create experiment `name` on `base` in the node-local store."""
    from expfs.experiments import create_experiment, repo_root
    from expfs.sweep import STATUS_QUEUED

    with node_lock(node_dir):
        # Queued: the runner marks it running when it starts it.
        create_experiment(
            store,
            repo_root(store),
            name,
            base=base,
            status=STATUS_QUEUED,
            overrides=overrides,
        )


class _Unprefixed:
    """A text stream for `Runner`'s echo that drops its `[name] ` prefixes.

    The user's side prefixes each line with the user's experiment name,
    which may differ from the name used here.
    """

    def __init__(self, name: str, out: TextIO) -> None:
        self.prefix = f"[{name}] "
        self.out = out

    def write(self, text: str) -> int:
        lines = text.split("\n")
        cleaned = [line.removeprefix(self.prefix) for line in lines]
        self.out.write("\n".join(cleaned))
        return len(text)

    def flush(self) -> None:
        self.out.flush()

    def isatty(self) -> bool:
        # Plain lines: the user's side cannot redraw a live display from events.
        return False


class _ReportingRunner(Runner):
    """A `Runner` that also prints each stage's progress as a marked line.

    The Dask task turns those lines into progress events, from which the
    user's side draws its live table.
    """

    def _on_stage(self, name: str) -> Callable[[str, str], None]:
        count = super()._on_stage(name)

        def report(stage: str, action: str) -> None:
            count(stage, action)
            event = json.dumps({"stage": stage, "action": action})
            sys.stdout.write(f"{PROGRESS_PREFIX}{event}\n")
            sys.stdout.flush()

        return report


def _watch_stops(stop: threading.Event) -> None:
    """Set `stop` on SIGTERM or when the worker that started us is gone."""
    parent = os.getppid()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())

    def watch() -> None:
        while not stop.is_set():
            if os.getppid() != parent:
                log.warning("the Dask worker process %d is gone: stopping", parent)
                stop.set()
            time.sleep(PARENT_POLL_S)

    threading.Thread(target=watch, daemon=True).start()


def push_snapshot(store: Store, remote: Remote, digest: str) -> None:
    """Push a snapshot's objects and mark it as a root, so remote gc keeps it."""
    from expfs.remote.backend import RemoteFileExists
    from expfs.remote.runs import ROOTS_DIR
    from expfs.remote.transfer import Stats

    remote.push_objects(store, [(Kind.DIRECTORY, Digest(digest))], Stats())
    try:
        remote.retry(
            "marking a root",
            lambda: remote.backend.put_bytes(f"{ROOTS_DIR}/{digest}", b""),
        )
    except RemoteFileExists:
        pass


def node_name(key: str) -> str:
    """Return a new short name for an attempt of a task in the node-local store.

    Each attempt gets its own name, because the attempt on a lost worker
    may still be stopping when Dask starts the next one on this machine.
    """
    return f"c-{key.rsplit('-', 1)[-1][:16]}-{uuid.uuid4().hex[:6]}"


def run_node_experiment(
    spec: dict[str, Any], node_dir: str, worker: str, stop: threading.Event
) -> dict[str, Any]:
    """Run the experiment of `spec` in the node-local store; return its record fields."""
    from expfs.experiments import remove_experiment
    from expfs.remote.runs import open_remote
    from expfs.remote.transfer import Stats
    from expfs.sweep import run_log_path

    name = node_name(spec["key"])
    base = Digest(spec["base"])
    print(f"running on Dask worker {worker}", flush=True)
    store = open_node_store(node_dir, spec["remote"])
    remote = open_remote(store)
    # Trees only: the mount's daemon fetches each file's blob when it is
    # first opened, so files the pipeline never reads are never downloaded.
    remote.fetch_objects(store, [(Kind.DIRECTORY, base)], Stats(), blobs=False)
    prepare_experiment(store, node_dir, name, base, tuple(spec["overrides"]))

    echo = _Unprefixed(name, sys.stdout)
    runner = _ReportingRunner(store, echo=echo, stop_event=stop)  # type: ignore[arg-type]
    experiment = runner.run_one(name)
    fields = {
        "status": experiment.status,
        "error": experiment.error,
        "params": experiment.params,
        "metrics": experiment.metrics,
        "result": experiment.result,
        "started": experiment.started,
        "finished": experiment.finished,
    }
    if experiment.result is not None:
        push_snapshot(store, remote, experiment.result)
    with open(run_log_path(store, name)) as f:
        fields["log"] = f"running on Dask worker {worker}\n" + f.read()
    try:
        with node_lock(node_dir):
            remove_experiment(store, name)
    except ExpfsError as exc:
        log.warning("could not remove experiment %s from the node store: %s", name, exc)
    return fields


def _failed(message: str) -> dict[str, Any]:
    now = time.time()
    return {
        "status": "failed",
        "error": message,
        "params": {},
        "metrics": {},
        "result": None,
        "started": now,
        "finished": now,
        "log": f"error: {message}\n",
    }


def _write_result(path: str, fields: dict[str, Any]) -> None:
    temp = f"{path}.tmp"
    with open(temp, "w") as f:
        json.dump(fields, f)
    os.rename(temp, path)


def main(argv: list[str] | None = None) -> int:
    node_dir, result_path, worker = argv if argv is not None else sys.argv[1:]
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    spec = json.load(sys.stdin)
    stop = threading.Event()
    _watch_stops(stop)
    os.makedirs(node_dir, exist_ok=True)
    try:
        fields = run_node_experiment(spec, node_dir, worker, stop)
    except ExpfsError as exc:
        # Setting up the node failed before the experiment ran: a failure
        # to report, since the same worker would fail the same way again.
        print(f"error: {exc.message}", flush=True)
        fields = _failed(exc.message)
    except Exception as exc:
        log.exception("experiment task %s failed unexpectedly", spec.get("key"))
        fields = _failed(f"{type(exc).__name__}: {exc}")
    _write_result(result_path, fields)
    return 0


if __name__ == "__main__":
    sys.exit(main())
