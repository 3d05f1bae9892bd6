"""Run experiments: one or a sweep, each in its own mounted workspace.

A sweep snapshots the user's working tree once, creates one experiment per
combination of `-S` values on that base (O(1) each, in a `Creator` thread
while the first ones run), and runs them `jobs` at a time. Each run mounts its workspace, applies its overrides there (the
user's files never change), runs the pipeline with the shared run-cache,
records params, metrics and the resulting snapshot, and unmounts.

A failed experiment is marked failed with its log, and the others go on.
Stopping one (Ctrl-C, `expfs exp kill`, `expfs queue stop`) ends its
stage's process group, and nothing is recorded for that stage.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import blake3

from expfs.errors import ExpfsError, UsageError
from expfs.experiments import (
    Experiment,
    create_experiment,
    get_experiment,
    list_experiments,
    repo_root,
    snapshot_base,
    update_experiment,
    update_experiment_if,
    validate_name,
)
from expfs.store import layout
from expfs.store.objects import Store

if TYPE_CHECKING:
    from expfs.fuse.launcher import AnyLauncher
from expfs.store.trees import Digest

log = logging.getLogger(__name__)

STATUS_QUEUED = "queued"
STATUS_RUNNING = "running"
STATUS_SUCCESS = "success"
STATUS_FAILED = "failed"
STATUS_STOPPED = "stopped"
# How often a running experiment checks for a stop request, in seconds.
STOP_POLL_S = 0.2
# How often the queue's runner looks for experiments queued while it runs.
MORE_POLL_S = 1.0
# A sweep larger than this is more likely a typo in a range than a plan.
MAX_EXPERIMENTS = 1000
# How long a sweep retries unmounting a workspace that is still busy.
UNMOUNT_RETRY_S = 10.0


@dataclass(frozen=True)
class Plan:
    """One experiment to create: its name and its single-valued overrides.

    `params` are the values the overrides give, flattened per file, known
    once `check_plans` has applied them.
    """

    name: str
    overrides: tuple[str, ...]
    params: dict[str, dict[str, Any]] = field(default_factory=dict, compare=False)


def override_text(override: Any) -> str:
    """Write a single-valued override back as `[file:]key=value`."""
    import yaml

    from expfs.pipeline.params import DEFAULT_PARAMS_FILE

    prefix = "" if override.file == DEFAULT_PARAMS_FILE else f"{override.file}:"
    marker = {"add": "+", "force": "++", "delete": "~"}.get(override.action, "")
    if override.action == "delete":
        return f"{prefix}{marker}{override.key}"
    value = yaml.safe_dump(override.value, default_flow_style=True).strip()
    value = value.removesuffix("\n...").strip()
    return f"{prefix}{marker}{override.key}={value}"


def plan_sweep(
    store: Store,
    texts: Sequence[str],
    name: str | None,
    base: Digest,
    max_experiments: int = MAX_EXPERIMENTS,
) -> list[Plan]:
    """Expand `-S` arguments into one plan per combination, with unique names."""
    from expfs.pipeline.overrides import expand_sweeps, parse_override

    parsed = [parse_override(t) for t in texts]
    for text in texts:
        _reject_empty_values(text)
    combinations = expand_sweeps(parsed)
    if len(combinations) > max_experiments:
        raise UsageError(
            f"the -S values make {len(combinations)} experiments, more than "
            f"--max-experiments {max_experiments}: narrow the lists or ranges, or "
            "raise --max-experiments"
        )
    if name is not None:
        validate_name(name)
    taken = {e.name for e in list_experiments(store)}
    plans: list[Plan] = []
    for index, combination in enumerate(combinations):
        overrides = tuple(override_text(o) for o in combination)
        if name is not None:
            chosen = name if len(combinations) == 1 else f"{name}-{index + 1}"
            validate_name(chosen)
            if chosen in taken:
                raise UsageError(
                    f"an experiment named {chosen!r} already exists: pick another "
                    f"--name or remove it with `expfs exp remove {chosen}`"
                )
        else:
            chosen = _generated_name(base, overrides, taken)
        taken.add(chosen)
        plans.append(Plan(chosen, overrides))
    return plans


def _reject_empty_values(text: str) -> None:
    """Reject `key=` and empty items of a comma list, which are likely typos."""
    key, has_value, raw = text.partition("=")
    if not has_value or key.lstrip().startswith("~"):
        return
    items = raw.split(",") if not raw.strip().startswith(("[", "{", "(")) else [raw]
    if any(not item.strip() for item in items):
        raise UsageError(
            f"override {text!r} has an empty value: give one, or write '' for an "
            "empty string"
        )


def check_stage_file(repo: str) -> None:
    """Raise the error of a malformed dvc.yaml before the working tree is stored."""
    from expfs.pipeline import load_pipeline

    stage_file = Path(repo, "dvc.yaml")
    if stage_file.exists():
        load_pipeline(stage_file, repo)


def check_plans(repo: str, plans: Sequence[Plan]) -> list[Plan]:
    """Check the stage file and every plan's overrides against the working tree.

    Runs before any experiment is created, so a malformed dvc.yaml or an
    unknown param key is one error, with nothing stored. Returns the plans
    with the params their overrides give, which `exp show` lists for queued
    experiments.
    """
    import tempfile

    from expfs.pipeline import load_pipeline
    from expfs.pipeline.overrides import apply_overrides, parse_override

    stage_file = Path(repo, "dvc.yaml")
    pipeline = load_pipeline(stage_file, repo) if stage_file.exists() else None
    baseline = collect_params(pipeline, Path(repo))
    seen: dict[tuple[str, ...], dict[str, dict[str, Any]]] = {}
    checked = []
    with tempfile.TemporaryDirectory(prefix="expfs-check-") as scratch:
        for number, plan in enumerate(plans):
            params = seen.get(plan.overrides)
            if params is None:
                folder = Path(scratch, str(number))
                written = apply_overrides(
                    [parse_override(t) for t in plan.overrides], repo, folder
                )
                params = dict(baseline)
                if written:
                    changed = collect_params(pipeline, folder)
                    params.update(
                        (name, values)
                        for name, values in changed.items()
                        if folder / name in written
                    )
                seen[plan.overrides] = params
            checked.append(replace(plan, params=params))
    return checked


def _generated_name(base: str, overrides: tuple[str, ...], taken: set[str]) -> str:
    seed = "\0".join([base, *overrides, str(time.time_ns())]).encode()
    digest = blake3.blake3(seed).hexdigest()
    for width in range(6, 64):
        candidate = f"exp-{digest[:width]}"
        if candidate not in taken:
            return candidate
    raise AssertionError("a 64-digit digest cannot collide with every name")


def create_planned(
    store: Store,
    plans: Iterable[Plan],
    base: Digest,
    status: str,
    commit: str | None = None,
) -> list[Experiment]:
    """Create one experiment per plan on `base` at `commit` (default HEAD)."""
    from expfs.tree.gitsnap import resolve_commit

    repo = repo_root(store)
    commit = commit or resolve_commit(repo, "HEAD")
    return [
        create_experiment(
            store,
            repo,
            p.name,
            base=base,
            status=status,
            overrides=p.overrides,
            commit=commit,
            params=p.params,
        )
        for p in plans
    ]


class Creator(threading.Thread):
    """Creates a sweep's experiments in order while the first ones run.

    Creating an experiment costs a workspace, a Git worktree and a record
    (tens of milliseconds), so a sweep that created all of them first would
    wait that long times its size before the first stage starts.
    """

    def __init__(
        self,
        store: Store,
        plans: Sequence[Plan],
        base: Digest,
        commit: str,
        stop_event: threading.Event,
    ) -> None:
        super().__init__(name="expfs-create-experiments", daemon=True)
        self.store, self.plans, self.base, self.commit = store, plans, base, commit
        self.stop_event = stop_event
        self.created = {plan.name: threading.Event() for plan in plans}
        self.done = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for plan in self.plans:
                if self.stop_event.is_set():
                    return
                create_planned(
                    self.store, [plan], self.base, STATUS_QUEUED, self.commit
                )
                self.created[plan.name].set()
        except BaseException as exc:
            log.error("creating the sweep's experiments failed: %s", exc)
            self.error = exc
        finally:
            self.done.set()

    def wait_for(self, name: str) -> bool:
        """Wait until experiment `name` is created; return False if it never will be."""
        event = self.created.get(name)
        if event is None:
            return True
        while not event.wait(STOP_POLL_S):
            if self.done.is_set():
                return event.is_set()
        return True


# -- stop requests ---------------------------------------------------------------


def stop_flag_path(store: Store, name: str) -> str:
    return os.path.join(store.root, layout.RUN_DIR, f"{name}.stop")


def request_stop(store: Store, name: str) -> None:
    """Ask the process running experiment `name` to stop it."""
    with open(stop_flag_path(store, name), "w") as f:
        f.write(f"{os.getpid()}\n")


def _clear_stop(store: Store, name: str) -> None:
    try:
        os.unlink(stop_flag_path(store, name))
    except FileNotFoundError:
        pass


def claim_experiment(store: Store, name: str) -> Experiment | None:
    """Mark queued experiment `name` running, in one transaction, and return it.

    Returns None, changing nothing, when it is not queued: another process
    (a second runner, `exp kill`) got to it first.
    """
    return update_experiment_if(
        store,
        name,
        STATUS_QUEUED,
        status=STATUS_RUNNING,
        started=time.time(),
        finished=None,
        error="",
    )


def run_log_path(store: Store, name: str) -> str:
    return os.path.join(store.root, layout.LOGS_DIR, f"{name}.run.log")


# -- running -----------------------------------------------------------------------


class _PrefixedOutput:
    """A text stream that writes each line to a log file and, prefixed, to a terminal."""

    def __init__(
        self, name: str, log_file: TextIO, echo: TextIO | None, lock: threading.Lock
    ):
        self.name = name
        self.log_file = log_file
        self.echo = echo
        self.lock = lock
        self.pending = ""

    def write(self, text: str) -> int:
        self.log_file.write(text)
        if self.echo is None:
            return len(text)
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        with self.lock:
            for line in lines:
                self.echo.write(f"[{self.name}] {line}\n")
            self.echo.flush()
        return len(text)

    def flush(self) -> None:
        self.log_file.flush()


@dataclass
class Row:
    """The live state of one experiment in a sweep's display."""

    status: str = STATUS_QUEUED
    stage: str = ""
    ran: int = 0
    restored: int = 0
    skipped: int = 0
    started: float | None = None
    finished: float | None = None

    def elapsed_s(self) -> float:
        if self.started is None:
            return 0.0
        return (self.finished or time.monotonic()) - self.started

    def count_stage(self, stage: str, action: str) -> None:
        """Show `stage` as current and count its outcome `action`."""
        self.stage = stage
        if action == "ran":
            self.ran += 1
        elif action == "restored":
            self.restored += 1
        elif action in ("skipped", "frozen"):
            self.skipped += 1


def render_rows(rows: dict[str, Row]) -> Any:
    """Build the live table of a sweep: one line per experiment."""
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for column in ("experiment", "status", "stage", "ran", "restored", "elapsed"):
        table.add_column(
            column,
            justify="right" if column in ("ran", "restored", "elapsed") else "left",
        )
    for name, row in rows.items():
        table.add_row(
            name,
            row.status,
            row.stage,
            str(row.ran),
            str(row.restored),
            f"{row.elapsed_s():.1f} s",
        )
    return table


@dataclass
class Runner:
    """Runs experiments of one store, `jobs` at a time.

    On a terminal it draws one live line per experiment: its stage, how many
    stages ran or were restored, and the elapsed time. Each run's output then
    goes to its log only. Off a terminal it prints plain lines prefixed by
    the experiment's name.
    """

    store: Store
    jobs: int = 1
    keep_mounted: bool = False
    echo: TextIO | None = sys.stdout
    stop_event: threading.Event | None = None
    no_remote: bool = False
    # Where the stages' stderr is echoed, prefixed, when `echo` gets their stdout.
    echo_errors: TextIO = field(default_factory=lambda: sys.stderr)
    # Polled like `stop_event`: true once `expfs queue stop` asked to stop.
    stop_requested: Callable[[], bool] | None = None
    # Whether an experiment that a stop keeps from starting stays queued
    # (the queue: a later `queue start` runs it) or is marked stopped.
    keep_unstarted_queued: bool = False
    # A function polled while experiments run, at most every MORE_POLL_S.
    # It returns the names of experiments queued since, which are run too.
    newly_queued: Callable[[], list[str]] | None = None

    def __post_init__(self) -> None:
        self.stop_event = self.stop_event or threading.Event()
        self.echo_lock = threading.Lock()
        self.rows: dict[str, Row] = {}
        self.launcher: AnyLauncher | None = None
        # Set while a sweep's later experiments are still being created.
        self.creator: Creator | None = None
        self.live = self.echo is not None and self.echo.isatty()

    def _on_stage(self, name: str) -> Callable[[str, str], None]:
        return self.rows[name].count_stage

    def render(self) -> Any:
        return render_rows(self.rows)

    def run_all(self, names: Sequence[str]) -> list[Experiment]:
        """Run experiments `names`; Ctrl-C stops every one that is running."""
        if not names:
            return []
        assert self.stop_event is not None
        for name in names:
            self.rows[name] = Row()
        from expfs.fuse.launcher import open_launcher

        if self.launcher is None:
            self.launcher = open_launcher(self.store.root)
        try:
            return self._run_all(names)
        finally:
            self.launcher.close()
            self.launcher = None

    def _run_all(self, first: Sequence[str]) -> list[Experiment]:
        assert self.stop_event is not None
        names = list(first)
        display = self._live_display()
        with display, ThreadPoolExecutor(max_workers=max(1, self.jobs)) as pool:
            futures = [pool.submit(self._run_when_created, name) for name in names]
            try:
                pending = set(futures)
                next_poll = time.monotonic() + MORE_POLL_S
                while pending:
                    _, pending = wait(pending, timeout=STOP_POLL_S)
                    # Polled at once when the last one ends, so none is missed.
                    if not pending or time.monotonic() >= next_poll:
                        next_poll = time.monotonic() + MORE_POLL_S
                        for name in self._newly_queued():
                            self.rows[name] = Row()
                            future = pool.submit(self._run_when_created, name)
                            names.append(name)
                            futures.append(future)
                            pending.add(future)
                    if self.live:
                        display.update(self.render())
            except KeyboardInterrupt:
                self.stop_event.set()
                if self.creator is not None:
                    self.creator.join()
                for name, future in zip(names, futures, strict=True):
                    if future.cancel() and self._created(name):
                        self._not_started(name)
                pool.shutdown(wait=True)
                raise
            finally:
                if self.live:
                    display.update(self.render())
        return [get_experiment(self.store, n) for n in names if self._created(n)]

    def _newly_queued(self) -> list[str]:
        """Return the experiments queued since the run began, or none once stopping."""
        if self.newly_queued is None or self._stopping():
            return []
        return self.newly_queued()

    def _created(self, name: str) -> bool:
        event = None if self.creator is None else self.creator.created.get(name)
        return event is None or event.is_set()

    def _live_display(self) -> Any:
        if not self.live:
            return contextlib.nullcontext()
        from rich.console import Console
        from rich.live import Live

        return Live(
            self.render(), console=Console(file=self.echo), refresh_per_second=4
        )

    def _run_when_created(self, name: str) -> Experiment | None:
        """Run experiment `name` once created; None if it never was (sweep stopped)."""
        if self.creator is not None and not self.creator.wait_for(name):
            return None
        return self.run_one(name)

    def _stopping(self) -> bool:
        assert self.stop_event is not None
        if self.stop_event.is_set():
            return True
        return self.stop_requested is not None and self.stop_requested()

    def _not_started(self, name: str) -> Experiment:
        """Record that a stop kept experiment `name` from starting."""
        if self.keep_unstarted_queued:
            return get_experiment(self.store, name)
        return update_experiment(
            self.store, name, status=STATUS_STOPPED, error="stopped before it started"
        )

    def run_one(self, name: str) -> Experiment:
        """Mount, apply overrides, repro, record, unmount: one experiment.

        The experiment must be queued. One that another process has
        started meanwhile is left alone and its record returned.
        """
        from expfs.fuse.mounts import start_mount, stop_mount
        from expfs.remote.lazy import BLOB_SOURCE
        from expfs.repro.engine import StageStopped

        if self._stopping():
            return self._not_started(name)
        _clear_stop(self.store, name)
        experiment = claim_experiment(self.store, name)
        if experiment is None:
            current = get_experiment(self.store, name)
            self._say(name, f"not started: it is {current.status} already")
            return current
        row = self.rows.setdefault(name, Row())
        row.status, row.started = STATUS_RUNNING, time.monotonic()
        self._say(
            name, f"started ({', '.join(experiment.overrides) or 'no overrides'})"
        )
        status, error = STATUS_FAILED, ""
        # Params are known once the overrides are applied, so a run that
        # fails or stops afterwards still records them.
        changes: dict[str, Any] = {}
        with open(run_log_path(self.store, name), "w") as log_file:
            echo = None if self.live else self.echo
            output = _PrefixedOutput(name, log_file, echo, self.echo_lock)
            echo_errors = None if echo is None else self.echo_errors
            errors = _PrefixedOutput(name, log_file, echo_errors, self.echo_lock)
            mountpoint = None
            try:
                mountpoint = start_mount(
                    self.store,
                    name,
                    launcher=self.launcher,
                    gitdir=experiment.gitdir or None,
                    blob_source=BLOB_SOURCE,
                )
                self._run_in_mount(experiment, mountpoint, output, errors, changes)
                status = STATUS_SUCCESS
            except StageStopped as exc:
                status, error = STATUS_STOPPED, exc.message
            except ExpfsError as exc:
                error = exc.message
                output.write(f"error: {exc.message}\n")
            except Exception as exc:
                log.exception("experiment %s failed unexpectedly", name)
                error = f"{type(exc).__name__}: {exc}"
                output.write(f"error: {error}\n")
            finally:
                if mountpoint is not None and not self.keep_mounted:
                    self._unmount(name, stop_mount)
        _clear_stop(self.store, name)
        finished = update_experiment(
            self.store,
            name,
            status=status,
            error=error,
            finished=time.time(),
            **changes,
        )
        row.status, row.finished = status, time.monotonic()
        elapsed = (finished.finished or 0) - (finished.started or 0)
        why = f": {error}" if error else ""
        self._say(name, f"{status} in {elapsed:.1f} s{why}")
        return finished

    def _unmount(self, name: str, stop_mount: Callable[[Store, str], Any]) -> None:
        """Unmount, retrying while processes that were just stopped let go of it."""
        deadline = time.monotonic() + UNMOUNT_RETRY_S
        while True:
            try:
                stop_mount(self.store, name)
                return
            except ExpfsError as exc:
                if "busy" not in exc.message or time.monotonic() > deadline:
                    log.warning("unmount of experiment %s failed: %s", name, exc)
                    return
            time.sleep(STOP_POLL_S)

    def _cancelled(self, name: str) -> Callable[[], bool]:
        flag = stop_flag_path(self.store, name)
        return lambda: self._stopping() or os.path.exists(flag)

    def _run_in_mount(
        self,
        experiment: Experiment,
        mountpoint: str,
        output: _PrefixedOutput,
        errors: _PrefixedOutput,
        changes: dict[str, Any],
    ) -> None:
        """Run the pipeline in the mount; put params, metrics and result in `changes`."""
        from expfs.fuse.control import ControlClient
        from expfs.pipeline.overrides import apply_overrides, parse_override
        from expfs.repro.engine import Options, Repro
        from expfs.repro.place import DaemonPlace

        if experiment.overrides:
            overrides = [parse_override(t) for t in experiment.overrides]
            apply_overrides(overrides, mountpoint, mountpoint)
        with ControlClient(self.store.root, experiment.name, timeout_s=None) as client:
            place = DaemonPlace(self.store, mountpoint, client)
            options = Options(
                cancelled=self._cancelled(experiment.name),
                on_stage=self._on_stage(experiment.name),
                no_remote=self.no_remote,
                # The result snapshot below stores the lock file durably.
                fsync_lock=False,
            )
            try:
                repro = Repro(
                    self.store,
                    place,
                    options=options,
                    out=output,  # type: ignore[arg-type]
                    err=errors,  # type: ignore[arg-type]
                )
            except BaseException:
                changes["params"] = collect_params(None, Path(mountpoint))
                raise
            changes["params"] = collect_params(repro.pipeline, Path(mountpoint))
            repro.run()
            changes["metrics"] = collect_metrics(repro.pipeline, Path(mountpoint))
            changes["result"] = client.snapshot()

    def _say(self, name: str, text: str) -> None:
        if self.echo is None or self.live:
            return
        with self.echo_lock:
            self.echo.write(f"[{name}] {text}\n")
            self.echo.flush()


# -- params and metrics ------------------------------------------------------------


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten nested mappings into {dotted.key: value}; lists stay values."""
    if not isinstance(data, dict):
        return {prefix: data} if prefix else {}
    flat: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            flat.update(flatten(value, path))
        else:
            flat[path] = value
    return flat


def collect_params(pipeline: Any, root: Path) -> dict[str, dict[str, Any]]:
    """Read every params file the pipeline uses, flattened per file.

    Without a `pipeline` (its stage file did not load) only `params.yaml`
    is read. An unreadable params file is logged and left out.
    """
    from expfs.pipeline.params import DEFAULT_PARAMS_FILE, read_params

    files = {DEFAULT_PARAMS_FILE}
    if pipeline is not None:
        files.update(pipeline.params_files)
        for stage in pipeline.stages.values():
            files.update(p.workspace_path for p in stage.params)
    found: dict[str, dict[str, Any]] = {}
    for name in sorted(files):
        if not (root / name).exists():
            continue
        try:
            found[name] = _jsonable(flatten(read_params(root / name)))
        except ExpfsError as exc:
            log.warning("params file %s is unreadable: %s", root / name, exc)
    return found


def collect_metrics(pipeline: Any, root: Path) -> dict[str, dict[str, Any]]:
    """Read every metrics file the pipeline declares, flattened per file."""
    import json

    import yaml

    files = set(pipeline.metrics)
    for stage in pipeline.stages.values():
        files.update(o.workspace_path for o in stage.outs_of("metrics"))
    found: dict[str, dict[str, Any]] = {}
    for name in sorted(files):
        path = root / name
        try:
            text = path.read_text()
            data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except FileNotFoundError:
            continue
        except (OSError, ValueError, yaml.YAMLError) as exc:
            log.warning("metrics file %s is unreadable: %s", path, exc)
            continue
        found[name] = _jsonable(flatten(data))
    return found


def record_base_params(store: Store, experiment: Experiment) -> Experiment:
    """Record the params that experiment's base snapshot gives, for `exp show`.

    An experiment made by `exp new` has run nothing yet; its params are
    read from the params files in its base, written to a temporary folder.
    """
    import tempfile

    from expfs.pipeline import load_pipeline
    from expfs.pipeline.params import DEFAULT_PARAMS_FILE

    base = Digest(experiment.base)
    with tempfile.TemporaryDirectory(prefix="expfs-params-") as scratch:
        folder = Path(scratch)
        pipeline = None
        if _copy_from_snapshot(store, base, "dvc.yaml", folder):
            for name in [DEFAULT_PARAMS_FILE, *_vars_files(folder / "dvc.yaml")]:
                _copy_from_snapshot(store, base, name, folder)
            try:
                pipeline = load_pipeline(folder / "dvc.yaml", folder, check_graph=False)
            except ExpfsError as exc:
                # Without the stage file only params.yaml is read, as for a
                # failed run, and `exp run` reports the error itself.
                log.debug("stage file of experiment %s: %s", experiment.name, exc)
        files = {DEFAULT_PARAMS_FILE}
        if pipeline is not None:
            files.update(pipeline.params_files)
            for stage in pipeline.stages.values():
                files.update(p.workspace_path for p in stage.params)
        for name in files:
            _copy_from_snapshot(store, base, name, folder)
        params = collect_params(pipeline, folder)
    return update_experiment(store, experiment.name, params=params)


def _vars_files(stage_file: Path) -> list[str]:
    """Return the files that the `vars` lists of `stage_file` name (`FILE[:KEYS]`)."""
    import yaml

    try:
        data = yaml.safe_load(stage_file.read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return []
    if not isinstance(data, dict):
        return []
    lists = [data.get("vars")]
    stages = data.get("stages")
    if isinstance(stages, dict):
        lists += [s.get("vars") for s in stages.values() if isinstance(s, dict)]
    return [
        item.split(":", 1)[0]
        for entries in lists
        if isinstance(entries, list)
        for item in entries
        if isinstance(item, str)
    ]


def _copy_from_snapshot(store: Store, root: Digest, path: str, folder: Path) -> bool:
    """Write file `path` of snapshot `root` below `folder`; return whether it exists."""
    from expfs.repro.place import entry_at
    from expfs.store.trees import Kind

    if os.path.isabs(path) or ".." in Path(path).parts:
        return False
    target = folder / path
    if target.exists():
        return True
    entry = entry_at(store, root, path)
    if entry is None or entry.kind is not Kind.FILE or not store.has_blob(entry.digest):
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(store.read_blob(entry.digest))
    return True


def record_workspace_run(
    store: Store,
    name: str,
    pipeline: Any,
    root: Path,
    outcome: str,
    *,
    started: float,
    error: str = "",
) -> None:
    """Record what a repro in experiment `name`'s mount at `root` gave.

    The params always, and on success the metrics and the workspace's
    snapshot, as a run by `exp run` records them.
    """
    changes: dict[str, Any] = {"params": collect_params(pipeline, root)}
    if outcome == STATUS_SUCCESS:
        from expfs.fuse.control import ControlClient

        changes["metrics"] = collect_metrics(pipeline, root)
        with ControlClient(store.root, name, timeout_s=None) as client:
            changes["result"] = client.snapshot()
    try:
        update_experiment(
            store,
            name,
            status=outcome,
            error=error,
            started=started,
            finished=time.time(),
            **changes,
        )
    except ExpfsError as exc:
        log.warning("the run in experiment %s was not recorded: %s", name, exc)


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    import json

    return {k: v if _is_json(v, json) else str(v) for k, v in values.items()}


def _is_json(value: Any, json: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


# -- entry points --------------------------------------------------------------------


def run_experiments(
    store: Store,
    overrides: Sequence[str],
    *,
    name: str | None = None,
    jobs: int = 1,
    queue: bool = False,
    keep_mounted: bool = False,
    no_remote: bool = False,
    max_experiments: int = 0,
    echo: TextIO | None = sys.stdout,
) -> list[Experiment]:
    """Create the experiments of a sweep and run them (or only queue them)."""
    max_experiments = max_experiments or MAX_EXPERIMENTS
    from expfs.fuse.launcher import open_launcher

    repo = repo_root(store)
    runner = Runner(
        store, jobs=jobs, keep_mounted=keep_mounted, echo=echo, no_remote=no_remote
    )
    if not queue:
        # The launcher imports the daemon while the base is snapshotted.
        runner.launcher = open_launcher(store.root)
    try:
        check_stage_file(repo)
        base = snapshot_base(store, repo)
        plans = plan_sweep(store, overrides, name, base, max_experiments)
        plans = check_plans(repo, plans)
        if queue:
            return create_planned(store, plans, base, STATUS_QUEUED)
        # The first experiment is created here, so an error that would hit
        # every one (a Git or store failure) stops the sweep before it runs.
        from expfs.tree.gitsnap import resolve_commit

        commit = resolve_commit(repo, "HEAD")
        create_planned(store, plans[:1], base, STATUS_QUEUED, commit)
    except BaseException:
        if runner.launcher is not None:
            runner.launcher.close()
        raise
    assert runner.stop_event is not None
    creator = Creator(store, plans[1:], base, commit, runner.stop_event)
    runner.creator = creator
    creator.start()
    try:
        finished = runner.run_all([plan.name for plan in plans])
    finally:
        runner.stop_event.set()
        creator.join()
    if creator.error is not None:
        raise creator.error
    return finished


def stop_experiments(
    store: Store, names: Sequence[str], wait_s: float = 30.0
) -> list[str]:
    """Ask running experiments to stop and wait until they are; return those stopped."""
    running = []
    for name in names:
        experiment = get_experiment(store, name)
        if experiment.status != STATUS_RUNNING:
            continue
        request_stop(store, name)
        running.append(name)
    deadline = time.monotonic() + wait_s
    pending = set(running)
    while pending and time.monotonic() < deadline:
        pending = {
            n for n in pending if get_experiment(store, n).status == STATUS_RUNNING
        }
        time.sleep(STOP_POLL_S)
    if pending:
        raise ExpfsError(
            f"experiments still running after {wait_s:.0f} s: {', '.join(sorted(pending))}; "
            "is the process that runs them alive? see `expfs queue status`"
        )
    return running
