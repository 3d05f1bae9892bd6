"""The code that runs inside a Dask worker: its start-up check and the task.

Dask imports it on the workers by reference, so each worker needs expfs
with the `cluster` extra installed, `/dev/fuse` and `fusermount3`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from typing import Any

from distributed import Event, get_worker
from distributed.diagnostics.plugin import WorkerPlugin

from expfs.cluster import PROGRESS_PREFIX, WorkerUnfit
from expfs.text import exit_description

log = logging.getLogger(__name__)

PLUGIN_NAME = "expfs-worker-check"
OUTPUT_TOPIC_PREFIX = "expfs-output-"
STOP_EVENT_PREFIX = "expfs-stop-"
# How often a task checks its stop event, in seconds.
STOP_POLL_S = 0.5
# How long the experiment process gets after SIGTERM to stop its stage,
# record and unmount, before its process group is killed.
STOP_GRACE_S = 60.0
# Prefix of the folder, in the temporary folder, of node-local repositories.
NODE_DIR = "expfs-node"


def output_topic(key: str) -> str:
    return f"{OUTPUT_TOPIC_PREFIX}{key}"


def stop_event_name(key: str) -> str:
    return f"{STOP_EVENT_PREFIX}{key}"


def worker_problems(remote: dict[str, Any], probe: str) -> list[str]:
    """Return what this machine lacks to run experiments: one phrase each."""
    from expfs.remote.backend import RemoteError
    from expfs.remote.config import RemoteConfig
    from expfs.remote.transfer import Remote

    problems = []
    if not os.path.exists("/dev/fuse"):
        problems.append(
            "/dev/fuse is missing (load the fuse module, or give the "
            "container the device and CAP_SYS_ADMIN)"
        )
    elif not os.access("/dev/fuse", os.R_OK | os.W_OK):
        problems.append("/dev/fuse is not readable and writable by this user")
    if shutil.which("fusermount3") is None:
        problems.append("fusermount3 is not on PATH (install fuse3)")
    config = RemoteConfig(
        remote["name"], remote["url"], bool(remote["read_only"]), remote["options"]
    )
    try:
        found = Remote(config).backend.exists(probe)
    except (RemoteError, OSError, ImportError) as exc:
        problems.append(f"remote {config.display_url} is unusable: {exc}")
    else:
        if not found:
            problems.append(
                f"remote {config.display_url} lacks {probe}, which the user's side "
                "has just pushed: give the workers a URL that reaches the same storage"
            )
    return problems


class WorkerCheck(WorkerPlugin):
    """Refuse a worker that lacks FUSE or cannot reach the sweep's remote."""

    def __init__(self, remote: dict[str, Any], probe: str) -> None:
        self.remote = remote
        self.probe = probe

    def setup(self, worker: Any) -> None:
        problems = worker_problems(self.remote, self.probe)
        if problems:
            raise WorkerUnfit(
                f"Dask worker {worker.address} cannot run expfs experiments: "
                f"{'; '.join(problems)}"
            )


def node_folder(remote: dict[str, Any]) -> str:
    """Return this machine's node-local repository for one remote.

    It sits in the temporary folder (`TMPDIR`), shared by every worker
    process of the machine. The path stays short because each mount's
    control socket lives below it, and AF_UNIX socket paths are limited
    to 107 bytes on Linux.
    """
    identity = json.dumps([remote["url"], remote["options"]], sort_keys=True)
    digest = hashlib.sha256(identity.encode()).hexdigest()[:12]
    return os.path.join(tempfile.gettempdir(), f"{NODE_DIR}-{os.getuid()}", digest)


class TaskCrashed(Exception):
    """The experiment process ended without a result: Dask may retry the task."""


def run_experiment_task(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one experiment on this worker in a subprocess; return its record fields.

    The subprocess's output goes to the user's side line by line as events
    of the task's topic. A failed stage is a result, not an exception, so
    Dask retries only a process that died (and the scheduler a lost worker).
    """
    worker = get_worker()
    stop = Event(stop_event_name(spec["key"]))
    if stop.is_set():
        return _stopped_before_start()
    node_dir = node_folder(spec["remote"])
    os.makedirs(os.path.dirname(node_dir), mode=0o700, exist_ok=True)
    result_path = os.path.join(worker.local_directory, f"{uuid.uuid4().hex}.json")
    command = [
        sys.executable,
        "-m",
        "expfs.cluster.node",
        node_dir,
        result_path,
        worker.address,
    ]
    proc = subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,
    )
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(spec))
    proc.stdin.close()
    lines: list[str] = []
    relay = threading.Thread(
        target=_relay, args=(proc, worker, output_topic(spec["key"]), lines)
    )
    relay.start()
    try:
        status = _wait(proc, stop)
    finally:
        relay.join()
    return _read_result(result_path, status, lines)


def _relay(
    proc: subprocess.Popen[str], worker: Any, topic: str, lines: list[str]
) -> None:
    """Send each output line as an event: text, or a dict for a progress line."""
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        worker.log_event(topic, _event(line.rstrip("\n")))
    proc.stdout.close()


def _event(line: str) -> str | dict[str, str]:
    if not line.startswith(PROGRESS_PREFIX):
        return line
    try:
        progress = json.loads(line.removeprefix(PROGRESS_PREFIX))
        return {"stage": str(progress["stage"]), "action": str(progress["action"])}
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("invalid progress line from an experiment %r: %s", line, exc)
        return line


def _wait(proc: subprocess.Popen[str], stop: Event) -> int:
    """Wait for the experiment process, passing on a stop request as SIGTERM."""
    killed_at: float | None = None
    while True:
        try:
            return proc.wait(timeout=STOP_POLL_S)
        except subprocess.TimeoutExpired:
            pass
        if killed_at is None and stop.is_set():
            log.info("stop requested: sending SIGTERM to process %d", proc.pid)
            _signal_group(proc, signal.SIGTERM)
            killed_at = time.monotonic()
        elif killed_at is not None and time.monotonic() - killed_at > STOP_GRACE_S:
            log.warning("process %d ignored SIGTERM: killing its group", proc.pid)
            _signal_group(proc, signal.SIGKILL)


def _signal_group(proc: subprocess.Popen[str], signum: int) -> None:
    try:
        os.killpg(proc.pid, signum)
    except ProcessLookupError:
        pass


def _read_result(path: str, status: int, lines: list[str]) -> dict[str, Any]:
    try:
        with open(path) as f:
            fields: dict[str, Any] = json.load(f)
    except FileNotFoundError:
        text = [line for line in lines if not line.startswith(PROGRESS_PREFIX)]
        tail = "".join(text[-5:]).strip() or "no output"
        raise TaskCrashed(
            f"the experiment process {exit_description(status)} without a "
            f"result; its last output: {tail}"
        ) from None
    os.unlink(path)
    fields["lines"] = len(lines)
    return fields


def _stopped_before_start() -> dict[str, Any]:
    now = time.time()
    return {
        "status": "stopped",
        "error": "stopped before it started",
        "params": {},
        "metrics": {},
        "result": None,
        "started": now,
        "finished": now,
        "log": "",
        "lines": 0,
    }
