"""The user's side of a cluster sweep: submit, stream, stop, record.

`run_on_cluster` creates the sweep's experiments in the user's store as a
local sweep does, then sends each to Dask as one task. The task's key is
derived from the remote, the base snapshot and the overrides, so the same
experiment submitted twice, in one sweep or by two users of one
scheduler, is one task with one result. Each finished task's record fields are written into
the user's experiment and its result snapshot pulled from the remote, so
`exp show`, `diff` and `promote` see it as if it had run here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, TextIO

import blake3

from expfs.cluster import INSTALL_HINT, ClusterError, DaskMissing
from expfs.errors import ExpfsError, UsageError
from expfs.experiments import (
    Experiment,
    get_experiment,
    repo_root,
    snapshot_base,
    update_experiment,
)
from expfs.remote.transfer import Remote
from expfs.store.objects import Store
from expfs.store.trees import Digest, Kind
from expfs.sweep import STATUS_RUNNING, Row, render_rows

log = logging.getLogger(__name__)

LOCAL = "local"
CONNECT_TIMEOUT_S = 30
# Exceptions a task may raise before Dask gives up on it: only a crash of
# the experiment process raises. A lost worker is retried by the scheduler
# up to its `distributed.scheduler.allowed-failures` setting (3 by default).
TASK_RETRIES = 2
# After Ctrl-C, how long running experiments get to stop, record and unmount.
STOP_WAIT_S = 90.0
# How long to wait for the output events of a finished task to arrive.
OUTPUT_WAIT_S = 5.0
POLL_S = 0.2


def import_distributed() -> ModuleType:
    """Import Dask's `distributed`, or raise `DaskMissing` naming the extra."""
    try:
        import distributed
    except ImportError as exc:
        raise DaskMissing(
            f"--cluster needs Dask, which is not installed here ({exc}): run "
            f"`{INSTALL_HINT}`"
        ) from None
    return distributed


def cluster_remote(store: Store) -> Remote:
    """Open the default remote that the workers will share, or raise `UsageError`."""
    from expfs.remote.config import config_files
    from expfs.remote.runs import open_remote

    if config_files(store.root).default_name() is None:
        raise UsageError(
            "--cluster needs a default remote that every worker can reach, to "
            "share the base snapshot, results and run-cache, and this repository "
            "has none: add one with `expfs remote add NAME URL --default`"
        )
    remote = open_remote(store)
    if remote.read_only:
        raise UsageError(
            f"the default remote {remote.label} is read-only, but the workers "
            "push their results to it: make a writable remote the default"
        )
    return remote


def task_key(remote: Remote, base: str, overrides: Sequence[str]) -> str:
    """Return the Dask key of an experiment, derived from its inputs only."""
    identity = "\0".join([remote.config.url, base, *overrides])
    return f"expfs-experiment-{blake3.blake3(identity.encode()).hexdigest()[:32]}"


def _remote_spec(remote: Remote) -> dict[str, Any]:
    config = remote.config
    return {
        "name": config.name,
        "url": config.url,
        "read_only": config.read_only,
        "options": dict(config.options),
    }


def connect(distributed: ModuleType, address: str, jobs: int) -> tuple[Any, Any]:
    """Return (client, local cluster or None) for `--cluster ADDRESS`."""
    if address == LOCAL:
        # The scheduler runs in this process: keep its INFO lines off the terminal.
        logging.getLogger("distributed").setLevel(logging.ERROR)
        cluster = distributed.LocalCluster(
            n_workers=jobs,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            silence_logs=logging.ERROR,
        )
        return distributed.Client(cluster), cluster
    try:
        client = distributed.Client(address, timeout=CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError, ValueError) as exc:
        raise ClusterError(
            f"could not connect to the Dask scheduler at {address}: {exc}; start "
            "one with `dask scheduler` and workers with `dask worker ADDRESS`, or "
            "use --cluster local"
        ) from None
    return client, None


def check_workers(client: Any, remote: Remote, probe: str) -> None:
    """Register the start-up check on every worker, present and future."""
    from expfs.cluster.worker import PLUGIN_NAME, WorkerCheck

    client.register_plugin(WorkerCheck(_remote_spec(remote), probe), name=PLUGIN_NAME)


@dataclass
class _Task:
    key: str
    names: list[str]
    future: Any = None
    lines: int = 0
    stop_sent: bool = False
    done: bool = False


@dataclass
class ClusterSweep:
    """Sends experiments of one store to a Dask client and records their ends.

    On a terminal it draws the same live table as a local sweep, fed by the
    progress events of the workers, and each experiment's output goes to
    its log only. Off a terminal it prints each output line prefixed by
    the experiment's name.
    """

    store: Store
    client: Any
    distributed: ModuleType
    remote: Remote
    echo: TextIO | None = sys.stdout
    tasks: dict[str, _Task] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.echo_lock = threading.Lock()
        self.rows: dict[str, Row] = {}
        self.live = self.echo is not None and self.echo.isatty()

    def run(self, experiments: Sequence[Experiment]) -> list[Experiment]:
        """Run `experiments` on the cluster; Ctrl-C stops every one still running."""
        from expfs.cluster.worker import output_topic, run_experiment_task

        for experiment in experiments:
            key = task_key(self.remote, experiment.base, experiment.overrides)
            self.tasks.setdefault(key, _Task(key, [])).names.append(experiment.name)
            self.rows[experiment.name] = Row()
        specs = {e.name: e for e in experiments}
        for task in self.tasks.values():
            self.client.subscribe_topic(
                output_topic(task.key), lambda event, t=task: self._output(t, event)
            )
            first = specs[task.names[0]]
            spec = {
                "key": task.key,
                "base": first.base,
                "overrides": list(first.overrides),
                "remote": _remote_spec(self.remote),
            }
            task.future = self.client.submit(
                run_experiment_task, spec, key=task.key, retries=TASK_RETRIES
            )
            for name in task.names:
                overrides = ", ".join(first.overrides) or "no overrides"
                self._say(name, f"submitted as task {task.key} ({overrides})")
        display = self._live_display()
        try:
            with display:
                self._wait_all(display)
        except KeyboardInterrupt:
            self._stop_all()
            raise
        finally:
            self._unsubscribe()
        return [get_experiment(self.store, e.name) for e in experiments]

    def _live_display(self) -> Any:
        if not self.live:
            return contextlib.nullcontext()
        from rich.console import Console
        from rich.live import Live

        return Live(
            render_rows(self.rows),
            console=Console(file=self.echo),
            refresh_per_second=4,
        )

    def _wait_all(self, display: Any) -> None:
        while not all(t.done for t in self.tasks.values()):
            for task in self.tasks.values():
                if task.done:
                    continue
                if not task.stop_sent and self._stop_requested(task):
                    self._send_stop(task)
                if task.future.done():
                    self._record(task)
            if self.live:
                display.update(render_rows(self.rows))
            time.sleep(POLL_S)
        if self.live:
            display.update(render_rows(self.rows))

    def _stop_requested(self, task: _Task) -> bool:
        from expfs.sweep import stop_flag_path

        return any(os.path.exists(stop_flag_path(self.store, n)) for n in task.names)

    def _send_stop(self, task: _Task) -> None:
        from expfs.cluster.worker import stop_event_name

        self.distributed.Event(stop_event_name(task.key), client=self.client).set()
        task.stop_sent = True

    def _stop_all(self) -> None:
        """Stop every unfinished task, wait for the running ones, record all."""
        pending = [t for t in self.tasks.values() if not t.done]
        for task in pending:
            self._send_stop(task)
        deadline = time.monotonic() + STOP_WAIT_S
        while time.monotonic() < deadline and not all(t.future.done() for t in pending):
            time.sleep(POLL_S)
        for task in pending:
            if not task.future.done():
                task.future.cancel()
                self._write(task, _stopped("did not stop in time and was cancelled"))
            else:
                self._record(task)

    def _unsubscribe(self) -> None:
        from expfs.cluster.worker import output_topic, stop_event_name

        for task in self.tasks.values():
            try:
                self.client.unsubscribe_topic(output_topic(task.key))
                if task.stop_sent:
                    event = self.distributed.Event(
                        stop_event_name(task.key), client=self.client
                    )
                    event.clear()
            except (ValueError, OSError) as exc:
                log.debug("cleanup of task %s failed: %s", task.key, exc)

    # -- results -----------------------------------------------------------------

    def _record(self, task: _Task) -> None:
        """Write a finished task's record fields into each of its experiments."""
        try:
            fields: dict[str, Any] = task.future.result()
        except Exception as exc:
            # Raised on a worker or by the scheduler (a lost worker, a
            # crashed process, a cancelled task): the experiment failed.
            log.warning("task %s failed: %s: %s", task.key, type(exc).__name__, exc)
            fields = _failed(
                f"its task failed on the cluster: {type(exc).__name__}: {exc}"
            )
        self._await_output(task, int(fields.get("lines", 0)))
        if fields.get("result"):
            fields = self._pull_result(fields)
        self._write(task, fields)

    def _await_output(self, task: _Task, expected: int) -> None:
        deadline = time.monotonic() + OUTPUT_WAIT_S
        while task.lines < expected and time.monotonic() < deadline:
            time.sleep(0.05)

    def _pull_result(self, fields: dict[str, Any]) -> dict[str, Any]:
        from expfs.remote.transfer import Stats

        result = Digest(fields["result"])
        try:
            self.remote.fetch_objects(self.store, [(Kind.DIRECTORY, result)], Stats())
        except ExpfsError as exc:
            return {**fields, **_failed(f"pulling its result {result} failed: {exc}")}
        return fields

    def _write(self, task: _Task, fields: dict[str, Any]) -> None:
        from expfs.sweep import run_log_path, stop_flag_path

        task.done = True
        changes = {
            k: fields[k]
            for k in (
                "status",
                "error",
                "params",
                "metrics",
                "result",
                "started",
                "finished",
            )
            if k in fields
        }
        for name in task.names:
            with open(run_log_path(self.store, name), "w") as f:
                f.write(fields.get("log", ""))
            experiment = update_experiment(self.store, name, **changes)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(stop_flag_path(self.store, name))
            row = self.rows.setdefault(name, Row())
            row.status = experiment.status
            row.started = row.started or time.monotonic()
            row.finished = time.monotonic()
            elapsed = (experiment.finished or 0) - (experiment.started or 0)
            why = f": {experiment.error}" if experiment.error else ""
            self._say(name, f"recorded: {experiment.status} in {elapsed:.1f} s{why}")

    # -- output ----------------------------------------------------------------

    def _output(self, task: _Task, event: tuple[float, Any]) -> None:
        _, message = event
        task.lines += 1
        for name in task.names:
            row = self.rows.setdefault(name, Row())
            if row.started is None:
                row.status, row.started = STATUS_RUNNING, time.monotonic()
            if isinstance(message, dict):
                row.count_stage(str(message.get("stage")), str(message.get("action")))
            else:
                self._say(name, str(message))

    def _say(self, name: str, text: str) -> None:
        if self.echo is None or self.live:
            return
        with self.echo_lock:
            self.echo.write(f"[{name}] {text}\n")
            self.echo.flush()


def _failed(message: str) -> dict[str, Any]:
    now = time.time()
    return {
        "status": "failed",
        "error": message,
        "result": None,
        "started": now,
        "finished": now,
        "log": f"error: {message}\n",
    }


def _stopped(message: str) -> dict[str, Any]:
    return {**_failed(message), "status": "stopped"}


def run_on_cluster(
    store: Store,
    overrides: Sequence[str],
    *,
    address: str,
    name: str | None = None,
    jobs: int = 1,
    echo: TextIO | None = sys.stdout,
) -> list[Experiment]:
    """Create the experiments of a sweep and run each as a task on a Dask cluster."""
    from expfs.cluster.node import push_snapshot
    from expfs.sweep import check_stage_file, create_planned, plan_sweep

    distributed = import_distributed()
    remote = cluster_remote(store)
    check_stage_file(repo_root(store))
    base = snapshot_base(store, repo_root(store))
    plans = plan_sweep(store, overrides, name, base)
    push_snapshot(store, remote, base)
    client, cluster = connect(distributed, address, jobs)
    try:
        from expfs.remote.transfer import object_rel

        check_workers(client, remote, object_rel(base))
        created = create_planned(store, plans, base, STATUS_RUNNING)
        sweep = ClusterSweep(store, client, distributed, remote, echo)
        return sweep.run(created)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
