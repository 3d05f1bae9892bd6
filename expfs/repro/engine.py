"""Run a pipeline stage by stage in one place, with the run-cache.

Each stage, in DAG order, has its dependencies and params fingerprinted
before anything runs, which gives its run key. The stage is skipped when the
lock file records its current outputs under that key, restored when the
run-cache has an entry whose objects are in the store or restorable
lazily from a remote (a mount fetches blobs when files are opened, a
checkout before it writes them), and run otherwise. Only successful runs
whose dependencies did not change while they ran are recorded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from expfs.busy import workspace_lock
from expfs.errors import ExpfsError, UsageError
from expfs.pipeline import Pipeline, Stage, build_dag, load_pipeline
from expfs.pipeline.params import read_stage_params
from expfs.pipeline.paths import check_inside, is_within
from expfs.pipeline.runkey import stage_run_key
from expfs.repro.lockfile import LOCK_NAME, LockedStage, LockFile
from expfs.repro.place import Place
from expfs.runcache import LOG_TAIL_CHARS, OutputRecord, RunCache, RunRecord
from expfs.store import layout
from expfs.store.objects import Store
from expfs.store.trees import Digest, Kind
from expfs.text import exit_description, plural, shell_exit_code

log = logging.getLogger(__name__)


class StageFailed(ExpfsError):
    """A stage's command exited with a non-zero status."""

    def __init__(self, stage: str, status: int) -> None:
        super().__init__(
            f"stage '{stage}' failed: its command {exit_description(status)}; "
            "its outputs are left in place for inspection and nothing was recorded"
        )
        self.stage = stage
        self.status = status
        # As a shell does: the command's status, or 128 + N for signal N.
        self.exit_code = shell_exit_code(status) if status else 1


class StageStopped(ExpfsError):
    """The run was cancelled while a stage ran: its process group was ended."""

    exit_code = 130

    def __init__(self, stage: str) -> None:
        super().__init__(
            f"stage '{stage}' was stopped: its processes were ended and nothing "
            "was recorded in the run-cache"
        )
        self.stage = stage


# The reason given for running a stage marked `always_changed: true`.
ALWAYS_CHANGED = "always changed"
CANCEL_POLL_S = 0.2
# How long a stopped command gets between SIGTERM and SIGKILL.
STOP_GRACE_S = 5.0
LOCKS_DIR = "locks"


def stop_process_group(proc: subprocess.Popen[str]) -> None:
    """End a command's whole process group: SIGTERM, then SIGKILL after a grace.

    Waits until no process of the group is left (or the grace runs out
    twice), so that the caller can unmount the folder they worked in.
    """
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + STOP_GRACE_S
        while _group_alive(proc) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not _group_alive(proc):
            break
    proc.wait()


def _group_alive(proc: subprocess.Popen[str]) -> bool:
    proc.poll()  # reap the group's leader, or it would count as alive
    try:
        os.killpg(proc.pid, 0)
    except ProcessLookupError:
        return False
    return True


@contextlib.contextmanager
def single_flight(store: Store, key: str) -> Iterator[None]:
    """Hold the lock of run key `key` across processes while it is computed."""
    folder = os.path.join(store.root, layout.RUN_DIR, LOCKS_DIR)
    os.makedirs(folder, mode=0o700, exist_ok=True)
    path = os.path.join(folder, f"{key}.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@dataclass
class Options:
    force: bool = False
    single_item: bool = False
    downstream: bool = False
    dry: bool = False
    no_run_cache: bool = False
    keep_going: bool = False
    # Neither look up nor push runs on the default remote.
    no_remote: bool = False
    # Print no line per stage; the lines are still logged at INFO.
    quiet: bool = False
    # Polled while a command runs and between stages; True stops the run.
    cancelled: Callable[[], bool] | None = None
    # Called with (stage, "running") before a stage and (stage, action) after it.
    on_stage: Callable[[str, str], None] | None = None
    # False skips the lock file's fsync, for a caller that stores the result
    # durably afterwards (an experiment snapshots its workspace).
    fsync_lock: bool = True


@dataclass
class Outcome:
    """The outcome of one stage: ran, restored, skipped, failed or would-*."""

    stage: str
    action: str
    duration_s: float = 0.0
    reason: str = ""
    run_key: str = ""
    log: str = ""


@dataclass
class _Inputs:
    deps: dict[str, Digest]
    params: dict[str, dict[str, Any]]
    key: Digest


@dataclass
class Repro:
    store: Store
    place: Place
    stage_file: str = "dvc.yaml"
    options: Options = field(default_factory=Options)
    out: TextIO = field(default_factory=lambda: sys.stdout)
    # Where the stages' stderr goes. Their stdout and repro's own lines go to `out`.
    err: TextIO = field(default_factory=lambda: sys.stderr)

    def __post_init__(self) -> None:
        # Run keys whose restore failed in this command (and was logged once).
        self._failed_restores: set[str] = set()
        # The workspace lock's descriptor while `run` holds it.
        self._lock_fd: int | None = None
        # In a dry run: the digests of outputs that a stage upstream would restore.
        self._planned: dict[str, Digest] = {}
        self.runs = RunCache(self.store)
        self.root = Path(self.place.root)
        stage_path = self.root / self.stage_file
        if not stage_path.exists():
            raise UsageError(
                f"no {self.stage_file} in {self.root}: write a stage file (DVC's "
                "format) or run from the folder that has one"
            )
        self.pipeline: Pipeline = load_pipeline(stage_path, self.root)
        self.dag = build_dag(self.pipeline.stages.values(), str(stage_path))
        self.lock = LockFile(str(stage_path.parent / LOCK_NAME))
        self._current: str | None = None

    @property
    def current_stage(self) -> str | None:
        """The name of the stage being run, restored or skipped, if any."""
        return self._current

    # -- selection -----------------------------------------------------------

    def select(self, targets: Sequence[str]) -> list[str]:
        """Return the stage names to consider, in DAG order."""
        if not targets:
            return list(self.dag.order)
        unknown = [t for t in targets if t not in self.dag.stages]
        if unknown:
            known = ", ".join(self.dag.order) or "none"
            raise UsageError(
                f"no stage named {', '.join(unknown)} in {self.stage_file} "
                f"(stages: {known})"
            )
        chosen: set[str] = set(targets)
        for target in targets:
            if self.options.downstream:
                chosen |= self.dag.descendants(target)
            elif not self.options.single_item:
                chosen |= self.dag.ancestors(target)
        return [name for name in self.dag.order if name in chosen]

    def run(self, targets: Sequence[str] = ()) -> list[Outcome]:
        """Run the selected stages, holding the workspace's lock unless `dry`."""
        if self.options.dry:
            return self._run_selected(targets)
        with workspace_lock(self.place.state_dir, self.place.root) as lock_fd:
            self._lock_fd = lock_fd
            try:
                return self._run_selected(targets)
            finally:
                self._lock_fd = None

    def plan(self, targets: Sequence[str] = ()) -> list[Outcome]:
        """Return what a repro of `targets` would do with each stage, in DAG order.

        Runs nothing and prints nothing: `expfs status` reads it.
        """
        changing: dict[str, str] = {}
        outcomes = []
        for name in self.select(targets):
            outcome = self._plan_stage(self.dag.stages[name], changing)
            outcomes.append(outcome)
        return outcomes

    def _plan_stage(self, stage: Stage, changing: dict[str, str]) -> Outcome:
        """Say what a repro would do with `stage`, given what it would do upstream.

        `changing` maps each stage already planned to run or be restored to
        its action; `stage` is added when it would run or be restored too.
        A stage that reads an output of such a stage may run: its inputs are
        known only once the upstream stage has run.
        """
        outcome = self._after_upstream(stage, changing)
        if outcome is None:
            outcome = self.run_stage(stage)
        if outcome.action not in ("skipped", "frozen"):
            changing[stage.name] = outcome.action
        return outcome

    def _after_upstream(self, stage: Stage, changing: dict[str, str]) -> Outcome | None:
        """Return "may run" when `stage` reads what a changing stage would write.

        The plan goes on when the upstream stage would be restored, because
        its run-cache entry gives the digests of its outputs. The outputs of
        a stage that would run are unknown until it runs.
        """
        if stage.frozen and not self.options.force:
            return None
        for up in self.dag.upstream[stage.name]:
            if up not in changing:
                continue
            if changing[up] == "would restore" and self._reads_planned(stage, up):
                continue
            if self.options.force or stage.always_changed:
                reason = "forced" if self.options.force else ALWAYS_CHANGED
                return Outcome(stage.name, "would run", reason=reason)
            action = {"would restore": "would be restored"}.get(
                changing[up], changing[up]
            )
            return Outcome(
                stage.name, "may run", reason=f"depends on '{up}', which {action}"
            )
        return None

    def _reads_planned(self, stage: Stage, up: str) -> bool:
        """Tell whether every path `stage` reads from `up` has a planned digest."""
        written = [out.workspace_path for out in self.dag.stages[up].outs]
        for path in [d.workspace_path for d in stage.deps] + [
            p.workspace_path for p in stage.params
        ]:
            if not any(is_within(path, o) or is_within(o, path) for o in written):
                continue
            is_dep = any(d.workspace_path == path for d in stage.deps)
            if not is_dep or path not in self._planned:
                return False
        return True

    def _run_selected(self, targets: Sequence[str]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        # With --keep-going: each failed stage, and each stage downstream of
        # one, mapped to the failed stage that stopped it.
        failed: dict[str, str] = {}
        first_failure: StageFailed | None = None
        changing: dict[str, str] = {}
        for name in self.select(targets):
            if self.options.cancelled is not None and self.options.cancelled():
                raise StageStopped(name)
            stage = self.dag.stages[name]
            ancestors = self.dag.ancestors(name)
            failed_upstream = [
                up for up in self.dag.order if up in failed.keys() & ancestors
            ]
            if failed_upstream:
                blocker = failed[failed_upstream[0]]
                failed[name] = blocker
                outcome = Outcome(name, "not run", reason=f"stage '{blocker}' failed")
                outcomes.append(outcome)
                self._report(outcome)
                continue
            self._current = name
            if self.options.on_stage is not None:
                self.options.on_stage(name, "running")
            started = time.monotonic()
            try:
                if self.options.dry:
                    outcome = self._plan_stage(stage, changing)
                else:
                    outcome = self.run_stage(stage)
            except StageFailed as exc:
                self._current = None
                reason = f"its command {exit_description(exc.status)}"
                elapsed = time.monotonic() - started
                self._report(Outcome(name, "failed", elapsed, reason=reason))
                if not self.options.keep_going:
                    raise
                failed[name] = name
                first_failure = first_failure or exc
                outcome = Outcome(name, "failed", elapsed, reason=reason)
            else:
                self._report(outcome)
            outcomes.append(outcome)
            self._current = None
            if self.options.on_stage is not None:
                self.options.on_stage(name, outcome.action)
        if first_failure is not None:
            # The exit status is the first failed command's, as without -k.
            raise first_failure
        return outcomes

    def _report(self, outcome: Outcome) -> None:
        why = f" ({outcome.reason})" if outcome.reason else ""
        words = {
            "ran": "ran",
            "restored": "restored from the run-cache",
            "skipped": "skipped, up to date",
            "frozen": "skipped, frozen",
        }
        verb = words.get(outcome.action, outcome.action)
        line = f"stage '{outcome.stage}': {verb} in {outcome.duration_s:.2f} s{why}"
        if outcome.action in ("would run", "would restore", "may run"):
            line = f"stage '{outcome.stage}': {verb}{why}"
        if outcome.action == "not run":
            line = f"stage '{outcome.stage}': skipped because {outcome.reason}"
        log.info("%s", line)
        if not self.options.quiet:
            print(line, file=self.out, flush=True)

    # -- one stage -----------------------------------------------------------

    def fingerprint(self, stage: Stage) -> _Inputs:
        deps: dict[str, Digest] = {}
        for dep in stage.deps:
            if dep.workspace_path in self._planned:
                deps[dep.workspace_path] = self._planned[dep.workspace_path]
                continue
            found = self.place.digest_of(dep.workspace_path)
            if found is None:
                where = dep.where or str(self.pipeline.path)
                raise UsageError(
                    f"{where}: dependency '{dep.path}' of stage '{stage.name}' is "
                    "missing: create it, add the stage that writes it as an "
                    "output, or remove it from the stage's deps"
                )
            deps[dep.workspace_path] = found[1]
        params = read_stage_params(stage, self.root)
        for file, used in stage.template_params.items():
            params.setdefault(file, {}).update(used)
        return _Inputs(deps, params, stage_run_key(stage, deps, params))

    def cacheable(self, stage: Stage) -> str:
        """Return why `stage` may not use the run-cache, or "" when it may."""
        if self.options.no_run_cache:
            return "--no-run-cache"
        if stage.always_changed:
            return "always_changed"
        if not stage.commands or not any(c.strip() for c in stage.commands):
            return "no command"
        # As in DVC, params count as dependencies: a stage that reads only
        # params is keyed by their values.
        if not stage.deps and not stage.params:
            return "no dependencies or params"
        if not stage.outs:
            return "no outputs"
        if any(o.persist for o in stage.outs):
            return "a persist output"
        if any(not o.cache and o.kind == "outs" for o in stage.outs):
            return "an output with cache: false"
        return ""

    def run_stage(self, stage: Stage) -> Outcome:
        started = time.monotonic()
        for out in stage.outs:
            check_inside(self.root, out.workspace_path)
        if stage.frozen and not self.options.force:
            return Outcome(stage.name, "frozen")
        inputs = self.fingerprint(stage)
        if self._up_to_date(stage, inputs):
            return Outcome(
                stage.name, "skipped", time.monotonic() - started, run_key=inputs.key
            )
        no_cache_reason = self.cacheable(stage)
        if no_cache_reason or self.options.force:
            return self._run_or_describe(stage, inputs, no_cache_reason, started)
        restored = self._try_restore(stage, inputs, started)
        if restored is not None:
            return restored
        if self.options.dry:
            return self._run_or_describe(stage, inputs, no_cache_reason, started)
        # Single flight: two runs reaching one run key at once compute it once.
        # The second waits for the first's lock, then restores what it recorded.
        with single_flight(self.store, inputs.key):
            restored = self._try_restore(stage, inputs, started)
            if restored is not None:
                return restored
            return self._execute_once(stage, inputs, no_cache_reason, started)

    def _try_restore(
        self, stage: Stage, inputs: _Inputs, started: float
    ) -> Outcome | None:
        if inputs.key in self._failed_restores:
            # The same damaged or unreachable objects would fail again.
            return None
        # Outputs restored lazily count: the place fetches what it reads.
        record = self.runs.lookup(inputs.key, stage.name, lazy_ok=True)
        if record is None and not self.options.dry:
            record = self._remote_lookup(stage, inputs)
        if record is None:
            return None
        if self.options.dry:
            self._planned.update((out.path, out.digest) for out in record.outputs)
            return Outcome(stage.name, "would restore", reason="run-cache hit")
        if not self._restore(stage, record):
            self._failed_restores.add(inputs.key)
            return None
        self._lock(stage, inputs, record.outputs)
        self.runs.count_restore(inputs.key)
        elapsed = time.monotonic() - started
        return Outcome(stage.name, "restored", elapsed, run_key=inputs.key)

    def _run_or_describe(
        self, stage: Stage, inputs: _Inputs, no_cache_reason: str, started: float
    ) -> Outcome:
        if self.options.dry:
            why = "forced" if self.options.force else self._why_run(stage, inputs)
            return Outcome(stage.name, "would run", reason=why)
        return self._execute(stage, inputs, no_cache_reason, started)

    def _why_run(self, stage: Stage, inputs: _Inputs) -> str:
        if stage.always_changed:
            return ALWAYS_CHANGED
        locked = self.lock.stages.get(stage.name)
        if locked is None:
            return "never ran"
        if locked.run_key != inputs.key:
            changed = [p for p, d in inputs.deps.items() if locked.deps.get(p) != d]
            if changed:
                return "changed deps: " + ", ".join(changed)
            if locked.params != inputs.params:
                return "changed params"
            return "changed command or outputs"
        return "outputs missing or modified"

    def _up_to_date(self, stage: Stage, inputs: _Inputs) -> bool:
        if self.options.force or stage.always_changed:
            return False
        locked = self.lock.stages.get(stage.name)
        if locked is None or locked.run_key != inputs.key:
            return False
        for out in locked.outs:
            found = self.place.digest_of(out.path)
            if found is None or found[1] != out.digest:
                return False
        return True

    def _restore(self, stage: Stage, record: RunRecord) -> bool:
        try:
            for out in record.outputs:
                self.place.put(out)
        except (ExpfsError, OSError) as exc:
            # Also a failed fetch of what a lazy restore left on a remote.
            log.warning(
                "restore of stage %s failed (%s): running it instead", stage.name, exc
            )
            return False
        return True

    def _execute(
        self, stage: Stage, inputs: _Inputs, no_cache_reason: str, started: float
    ) -> Outcome:
        removed = [out.workspace_path for out in stage.outs if not out.persist]
        self._reject_tracked_outputs(stage, removed)
        for path in removed:
            self.place.remove(path)
        wall_started = time.time()
        captured: list[str] = []
        cwd = self.root / stage.workspace_wdir
        for command in stage.commands:
            status = self._run_command(command, cwd, captured)
            if status != 0:
                raise StageFailed(stage.name, status)
        outputs = self._collect(stage)
        self.place.adopt(
            [
                o
                for o, out in zip(outputs, stage.outs, strict=True)
                if out.cache and not out.persist
            ]
        )
        after = self.fingerprint(stage)
        duration = time.monotonic() - started
        if after.key != inputs.key:
            changed = [p for p, d in after.deps.items() if inputs.deps.get(p) != d]
            print(
                f"stage '{stage.name}': dependencies changed while it ran "
                f"({', '.join(changed) or 'params'}); not recorded in the run-cache, "
                "and the next repro runs it again",
                file=self.out,
            )
        elif not no_cache_reason:
            metrics = self._metrics(stage)
            self.runs.record(
                RunRecord(
                    key=inputs.key,
                    stage=stage.name,
                    outputs=outputs,
                    metrics=metrics,
                    started=wall_started,
                    duration_s=duration,
                    log="".join(captured)[-LOG_TAIL_CHARS:],
                )
            )
            self._share_run(stage, inputs)
        self._lock(stage, inputs, outputs)
        return Outcome(
            stage.name, "ran", duration, run_key=inputs.key, log="".join(captured)
        )

    def _reject_tracked_outputs(self, stage: Stage, paths: list[str]) -> None:
        """Raise UsageError when Git tracks one of `paths`, which a run would delete.

        DVC refuses such outputs too. Outside a Git repository nothing is
        tracked, so nothing is refused.
        """
        if not paths:
            return
        proc = subprocess.run(
            # Literal pathspecs, so an output named `out*` matches only itself.
            [
                "git",
                "--literal-pathspecs",
                "-C",
                str(self.root),
                "ls-files",
                "-z",
                "--",
                *paths,
            ],
            capture_output=True,
        )
        tracked = sorted({os.fsdecode(p) for p in proc.stdout.split(b"\0") if p})
        if proc.returncode != 0 or not tracked:
            return
        output = next(
            (p for p in paths if any(t == p or t.startswith(p + "/") for t in tracked)),
            tracked[0],
        )
        raise UsageError(
            f"stage '{stage.name}': output '{output}' is tracked by Git "
            f"({plural(len(tracked), 'tracked file')}, such as '{tracked[0]}'), and a run "
            f"deletes its outputs first. Untrack it with `git rm -r --cached "
            f"{output}` and add it to .gitignore, or remove it from the stage's "
            "outs. Nothing was deleted"
        )

    def _run_command(self, command: str, cwd: Path, captured: list[str]) -> int:
        """Run `command`, copying its stdout to `out` and its stderr to `err`.

        `captured` gets the lines of both, in the order they were read.
        """
        proc = subprocess.Popen(
            command,
            shell=True,
            cwd=cwd,
            # The stage holds the workspace's lock too (see workspace_lock).
            pass_fds=() if self._lock_fd is None else (self._lock_fd,),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            text=True,
            errors="replace",
        )
        assert proc.stdout is not None and proc.stderr is not None
        # One lock for both readers, because `out` and `err` may be one stream.
        lock = threading.Lock()

        closed: list[TextIO] = []

        def pump(source: TextIO, sink: TextIO) -> None:
            # A reader that went away (`expfs repro | head`) stops the echo,
            # not the reading: a stage blocked on a full pipe would never end.
            for line in source:
                with lock:
                    captured.append(line)
                    if sink in closed:
                        continue
                    try:
                        sink.write(line)
                        sink.flush()
                    except (BrokenPipeError, ValueError):
                        closed.append(sink)

        readers = [
            threading.Thread(target=pump, args=(proc.stdout, self.out), daemon=True),
            threading.Thread(target=pump, args=(proc.stderr, self.err), daemon=True),
        ]
        for reader in readers:
            reader.start()
        try:
            status = self._wait(proc)
        except BaseException:
            stop_process_group(proc)
            raise
        for reader in readers:
            reader.join()
        proc.stdout.close()
        proc.stderr.close()
        return status

    def _wait(self, proc: subprocess.Popen[str]) -> int:
        """Wait for a command, ending its process group if the run is cancelled."""
        cancelled = self.options.cancelled
        if cancelled is None:
            return proc.wait()
        while True:
            try:
                return proc.wait(timeout=CANCEL_POLL_S)
            except subprocess.TimeoutExpired:
                if cancelled():
                    stop_process_group(proc)
                    raise StageStopped(self._current or "?") from None

    def _collect(self, stage: Stage) -> list[OutputRecord]:
        for out in stage.outs:
            check_inside(self.root, out.workspace_path)
        kept = [o.workspace_path for o in stage.outs if o.cache or o.kind != "outs"]
        records = self.place.snapshot(kept)
        outputs: list[OutputRecord] = []
        for out in stage.outs:
            record = records.get(out.workspace_path)
            if out.workspace_path not in kept:
                record = self._uncached(out.workspace_path)
            if record is None:
                raise UsageError(
                    f"stage '{stage.name}' did not create its output '{out.path}': "
                    "fix the command or the outs list"
                )
            # Metrics and plots with `cache: false` are stored so that a restore
            # brings them back, but the lock file still marks them uncached.
            outputs.append(dataclasses.replace(record, cache=out.cache))
        return outputs

    def _uncached(self, path: str) -> OutputRecord | None:
        found = self.place.digest_of(path)
        if found is None:
            return None
        st = os.lstat(self.root / path)
        mode = st.st_mode & 0o7777
        return OutputRecord(
            path, int(found[0]), found[1], mode, st.st_size, cache=False
        )

    def _metrics(self, stage: Stage) -> dict[str, Any]:
        import json

        import yaml

        found: dict[str, Any] = {}
        for out in stage.outs_of("metrics"):
            path = self.root / out.workspace_path
            try:
                text = path.read_text()
                found[out.workspace_path] = (
                    json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
                )
            except (OSError, ValueError, yaml.YAMLError) as exc:
                log.warning(
                    "metrics file %s of stage %s unreadable: %s", path, stage.name, exc
                )
        return found

    def _lock(self, stage: Stage, inputs: _Inputs, outputs: list[OutputRecord]) -> None:
        self.lock.stages[stage.name] = LockedStage(
            cmd=stage.cmd if isinstance(stage.cmd, str) else list(stage.cmd),
            run_key=inputs.key,
            deps=dict(inputs.deps),
            params=inputs.params,
            outs=list(outputs),
        )
        self.lock.save(fsync=self.options.fsync_lock)

    # -- remote run-cache ----------------------------------------------------

    def _remote(self) -> Any:
        """Return the default remote, opened on first use, or None."""
        if self.options.no_remote:
            return None
        if not hasattr(self, "_remote_handle"):
            from expfs.remote.runs import default_remote

            self._remote_handle = default_remote(self.store)
        return self._remote_handle

    def _remote_lookup(self, stage: Stage, inputs: _Inputs) -> RunRecord | None:
        """Look a stage up on the default remote after a local miss."""
        remote = self._remote()
        if remote is None:
            return None
        from expfs.remote.runs import remote_lookup

        lazy = self.place.lazy_restore
        return remote_lookup(
            self.store, remote, inputs.key, stage.name, fetch_blobs=not lazy
        )

    def _share_run(self, stage: Stage, inputs: _Inputs) -> None:
        """Keep a recorded run's key inputs and push the run to the remote."""
        from expfs.remote.inputs import save_inputs, stage_inputs

        record = self.runs.get(inputs.key)
        if record is None:
            return
        save_inputs(
            self.store, inputs.key, stage_inputs(stage, inputs.deps, inputs.params)
        )
        remote = self._remote()
        if remote is not None and not remote.read_only:
            from expfs.remote.runs import remote_record

            remote_record(self.store, remote, record)

    def _execute_once(
        self, stage: Stage, inputs: _Inputs, no_cache_reason: str, started: float
    ) -> Outcome:
        """Run a stage under the remote's lease of its run key.

        While another worker holds the lease, wait for it and restore its
        run instead.
        """
        remote = self._remote()
        if remote is None:
            return self._execute(stage, inputs, no_cache_reason, started)
        from expfs.remote.lease import LeaseWaitCancelled, take_turn

        try:
            turn = take_turn(
                remote,
                inputs.key,
                stage.name,
                restore=lambda: self._try_restore(stage, inputs, started),
                cancelled=self.options.cancelled,
                say=lambda line: print(line, file=self.out, flush=True),
            )
        except LeaseWaitCancelled:
            raise StageStopped(stage.name) from None
        if turn.restored is not None:
            return turn.restored
        with turn:
            return self._execute(stage, inputs, no_cache_reason, started)


def kind_name(kind: int) -> str:
    return Kind(kind).name.lower()
