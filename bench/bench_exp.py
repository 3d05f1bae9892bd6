"""Benchmark `expfs exp run` and a sweep beside DVC 3.x's `exp run` and queue.

Run from the project root with the development environment:

    .venv/bin/python -m bench.bench_exp [--reps N] [--sweep-reps N] [--quick]

In one run, alternating the two tools rep by rep, it times:

- one `expfs exp run -S x=V --name N` of a trivial stage beside one
  `dvc exp run -S x=V -n N` (wall time of the command);
- a sweep of 10 trivial experiments with `expfs exp run -S x=... -j 2`
  beside `dvc exp run --queue` ten times and `dvc queue start -j 2`, waiting
  until DVC has saved all ten;
- the first `expfs exp run`, which starts the expfs server (`expfs_cli.server`),
  and one `exp run` with EXPFS_NO_SERVER=1, in its own process as before
  the server existed;
- where the time of one `expfs exp run` goes, from extra runs of the same
  command served by a server of this script's own, whose forked command
  records when each step starts and ends, and from the mount daemon's log
  lines;
- Python start-up and `import trio, pyfuse3` alone.

expfs runs with a server folder (EXPFS_SERVER_DIR) under the benchmark's
work folder, and the servers started there are stopped at the end.

Every param value is new, so no run-cache serves a stage and every stage
runs. A run counts only after its experiments are listed with status
success and the expected metric. DVC installs into bench/work/dvc-venv
(shared with the restore benchmark) and runs with a private HOME and
config folders. The script prints a summary and, unless `--quick`, rewrites
the "Experiments" section of bench/RESULTS.md between its markers.

`python -m bench.bench_exp --trace-server DIR` is the traced expfs server
that the benchmark starts itself: each command it forks writes its step
timestamps as JSON to the file named by BENCH_TRACE_OUT in the client's
environment.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # Run as a file (`python bench/bench_exp.py`, as `python -m bench` does),
    # the project root is not on sys.path, and the bench package is in it.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    EXPFS,
    PROJECT,
    BenchError,
    Section,
    add_dvc_venv_option,
    add_results_option,
    describe_machine,
    format_seconds,
    load_before_after,
    measure_in_scratch,
    pair_ratios,
    run_timed,
    summary,
    time_calls,
)
from expfs_cli.argtypes import positive_int  # noqa: E402

SECTION = Section("## Experiments", "bench_exp.py")

# Targets for a trivial stage, start-up included.
TARGET_RUN_S = 0.3
TARGET_SWEEP_S = 3.0
# `python -c pass` on this machine when idle (bench/RESULTS.md, earlier runs).
IDLE_PASS_S = 0.030
SWEEP_SIZE = 10
SWEEP_JOBS = 2
# Maximum wait for DVC's queue to save a sweep, and for its idle workers to
# exit by themselves afterwards (DVC 3.67.1's workers exit after 10 s idle).
DVC_SWEEP_TIMEOUT_S = 600.0
DVC_WORKER_EXIT_S = 60.0

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
# The stage doubles the param, so each experiment's metric proves it ran
# with its own override.
TRAIN_SCRIPT = """\
x=$(sed -n 's/^x: //p' params.yaml)
echo "{\\"score\\": $((x * 2))}" > metrics.json
"""

# Steps of one `expfs exp run`, in the order they happen, as named on the
# results page; the keys are what the traced CLI process records.
STEPS = {
    "startup": "start-up: client interpreter, request to the server, fork, "
    "argument parsing, store",
    "base": "base snapshot of the working tree",
    "create": "experiment creation (plan and record)",
    "mount": "daemon start until the mount answers",
    "repro": "repro in the mount (overrides applied, stage run)",
    "collect": "params and metrics read from the mount",
    "snapshot": "snapshot of the result",
    "unmount": "unmount and daemon exit",
    "records": "experiment record updates",
    "exit": "CLI exit",
}
DAEMON_STEPS = {
    "spawn": "daemon forked by the server, store opened",
    "init": "workspace opened, FUSE session started",
    "answer": "first `stat` through the mount, runtime record, ready message read",
}
DAEMON_LOG_LINE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \d+ INFO \S+: "
    r"(starting daemon|mounted experiment|serving experiment)"
)


# -- the traced server -----------------------------------------------------------


def trace_server(folder: str) -> int:
    """Run an expfs server in `folder` whose commands record when each step runs."""
    import functools
    import threading

    import expfs.fuse.control
    import expfs.fuse.mounts
    import expfs.pipeline.overrides
    import expfs.repro.engine
    import expfs.sweep
    import expfs_cli.client
    import expfs_cli.main
    import expfs_cli.server

    events: list[dict[str, Any]] = []
    state = threading.local()
    started = {"loaded": 0.0}

    def wrap(owner: Any, attr: str, step: str, inside_repro: bool = False) -> None:
        original = getattr(owner, attr)

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            # The snapshots that repro itself takes belong to the repro step.
            if getattr(state, "in_repro", False):
                return original(*args, **kwargs)
            state.in_repro = inside_repro
            start = time.time()
            try:
                return original(*args, **kwargs)
            finally:
                state.in_repro = False
                events.append(
                    {
                        "step": step,
                        "thread": threading.get_ident(),
                        "start": start,
                        "end": time.time(),
                        "args": [a for a in args if isinstance(a, str)],
                    }
                )

        setattr(owner, attr, timed)

    wrap(expfs.sweep, "snapshot_base", "base")
    wrap(expfs.sweep, "plan_sweep", "create")
    wrap(expfs.sweep, "check_plans", "create")
    wrap(expfs.sweep, "create_planned", "create")
    wrap(expfs.sweep, "update_experiment", "records")
    wrap(expfs.sweep, "collect_params", "collect")
    wrap(expfs.sweep, "collect_metrics", "collect")
    wrap(expfs.fuse.mounts, "start_mount", "mount")
    wrap(expfs.fuse.mounts, "stop_mount", "unmount")
    wrap(expfs.pipeline.overrides, "apply_overrides", "repro")
    wrap(expfs.repro.engine.Repro, "run", "repro", inside_repro=True)
    wrap(expfs.fuse.control.ControlClient, "snapshot", "snapshot")

    run_command = expfs_cli.server.run_command
    cli_main = expfs_cli.main.main

    def forked(*args: Any, **kwargs: Any) -> Any:
        started["loaded"] = time.time()
        return run_command(*args, **kwargs)

    def main(*args: Any, **kwargs: Any) -> int:
        code: int = cli_main(*args, **kwargs)
        record = {"loaded": started["loaded"], "returned": time.time()}
        Path(os.environ["BENCH_TRACE_OUT"]).write_text(
            json.dumps({**record, "events": events})
        )
        return code

    expfs_cli.server.run_command = forked
    expfs_cli.main.main = main
    path = expfs_cli.client.socket_path(folder)
    server = expfs_cli.server.Server(path, idle_s=3600)
    Path(path.removesuffix(".sock") + ".pid").write_text(f"{os.getpid()}\n")
    print("ready", flush=True)
    server.serve()
    return 0


def stop_servers(folder: Path) -> None:
    """Stop the expfs servers this benchmark started in `folder`, by their pid files."""
    for pid_file in folder.glob("server-*.pid"):
        pid = int(pid_file.read_text())
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        if b"expfs_cli.server" not in cmdline and b"--trace-server" not in cmdline:
            continue
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)


# -- helpers ------------------------------------------------------------------------


def make_repo(root: Path, env: Mapping[str, str], init: list[str], ignore: str) -> None:
    """Create a Git repository holding the trivial pipeline, with `x: 0` committed."""
    root.mkdir(parents=True)
    run_timed(["git", "init", "-q"], root, env)
    run_timed(init, root, env)
    (root / "dvc.yaml").write_text(STAGE_FILE)
    (root / "train.sh").write_text(TRAIN_SCRIPT)
    (root / "params.yaml").write_text("x: 0\n")
    (root / ".gitignore").write_text(ignore)
    run_timed(["git", "add", "-A"], root, env)
    run_timed(["git", "commit", "-qm", "trivial pipeline"], root, env)


def fmt(seconds: float) -> str:
    """Format a duration like format_seconds, but to 0.1 s from 10 s up."""
    if seconds >= 10:
        return f"{seconds:.1f} s"
    return format_seconds(seconds)


def spread(stats: Mapping[str, float]) -> str:
    return f"{fmt(stats['median'])} ({fmt(stats['min'])}–{fmt(stats['max'])})"


# -- expfs ----------------------------------------------------------------------------


class Expfs:
    """A repository with an expfs store, in which every run gets new param values."""

    def __init__(self, root: Path, env: Mapping[str, str], work: Path) -> None:
        self.root = root
        self.server_dir = work / "server"
        self.traced_server_dir = work / "traced-server"
        for folder in (self.server_dir, self.traced_server_dir):
            folder.mkdir(mode=0o700)
        self.env = {**env, "EXPFS_SERVER_DIR": str(self.server_dir)}
        self.traced_server: subprocess.Popen[str] | None = None
        # Wall clock around the last command, for the traced breakdown.
        self.spawned = self.exited = 0.0
        make_repo(root, env, [EXPFS, "init"], ".expfs/\nmetrics.json\n")

    def start_traced_server(self) -> None:
        """Start this script's traced server and wait until it listens."""
        self.traced_server = subprocess.Popen(
            [sys.executable, "-m", "bench.bench_exp", "--trace-server"]
            + [str(self.traced_server_dir)],
            cwd=PROJECT,
            env={**self.env, "PYTHONPATH": str(PROJECT)},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        assert self.traced_server.stdout is not None
        if self.traced_server.stdout.readline().strip() != "ready":
            raise BenchError("the traced expfs server did not start")

    def stop_servers(self) -> None:
        for folder in (self.server_dir, self.traced_server_dir):
            stop_servers(folder)
        if self.traced_server is not None:
            self.traced_server.wait(timeout=30)

    def run(
        self,
        values: list[int],
        name: str,
        traced: Path | None = None,
        **extra_env: str,
    ) -> float:
        """Run one experiment (one value) or a sweep; return the command's wall time."""
        argv = ["exp", "run", "-S", "x=" + ",".join(map(str, values)), "--name", name]
        if len(values) > 1:
            argv += ["-j", str(SWEEP_JOBS)]
        env = {**self.env, **extra_env}
        if traced is not None:
            env["EXPFS_SERVER_DIR"] = str(self.traced_server_dir)
            env["BENCH_TRACE_OUT"] = str(traced)
        command = [EXPFS, *argv]
        self.spawned = time.time()
        seconds, _ = run_timed(command, self.root, env)
        self.exited = time.time()
        self.verify(values, name)
        self.check_unmounted()
        return seconds

    def names(self, values: list[int], name: str) -> dict[str, int]:
        if len(values) == 1:
            return {name: values[0]}
        return {f"{name}-{i + 1}": v for i, v in enumerate(values)}

    def verify(self, values: list[int], name: str) -> None:
        """Raise unless each experiment succeeded with score = 2 × its x."""
        _, output = run_timed([EXPFS, "exp", "show", "--json"], self.root, self.env)
        rows = {row["name"]: row for row in json.loads(output)}
        for expected, x in self.names(values, name).items():
            row = rows.get(expected)
            if row is None:
                raise BenchError(f"expfs: experiment {expected} is not listed")
            metrics = row["metrics"].get("metrics.json", {})
            if row["status"] != "success" or metrics.get("score") != 2 * x:
                raise BenchError(
                    f"expfs: experiment {expected} has status {row['status']} and "
                    f"metrics {row['metrics']}, expected success and score {2 * x}"
                )

    def check_unmounted(self) -> None:
        with open("/proc/self/mountinfo") as f:
            left = [line for line in f if str(self.root) in line]
        if left:
            raise BenchError(f"expfs left mounts under {self.root}: {left}")

    def daemon_times(self, name: str) -> dict[str, float]:
        """Return the daemon's log times (seconds since the epoch) of one experiment."""
        from expfs.fuse import control

        found: dict[str, float] = {}
        log_file = Path(control.log_path(str(self.root / ".expfs"), name))
        for line in log_file.read_text().splitlines():
            match = DAEMON_LOG_LINE.match(line)
            if match:
                stamp = datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S,%f")
                found.setdefault(match[2].split()[0], stamp.timestamp())
        return found


def breakdown(trace: dict[str, Any], spawned: float, exited: float) -> dict[str, float]:
    """Split one traced single-experiment run into STEPS and DAEMON_STEPS, in seconds."""
    events = trace["events"]
    steps = {key: 0.0 for key in STEPS}
    for event in events:
        steps[event["step"]] += event["end"] - event["start"]
    first = min(event["start"] for event in events)
    steps["startup"] = first - spawned
    steps["exit"] = exited - trace["returned"]
    steps["total"] = exited - spawned
    steps["other"] = steps["total"] - sum(steps[key] for key in STEPS)
    steps["interpreter"] = trace["loaded"] - spawned
    return steps


def daemon_breakdown(
    mount_event: dict[str, Any], logged: dict[str, float]
) -> dict[str, float]:
    return {
        "spawn": logged["starting"] - mount_event["start"],
        "init": logged["mounted"] - logged["starting"],
        "answer": mount_event["end"] - logged["mounted"],
    }


def sweep_steps(trace: dict[str, Any]) -> dict[str, float]:
    """Return each step's time summed over a traced sweep's experiments, in seconds."""
    totals = {key: 0.0 for key in STEPS if key not in ("startup", "exit")}
    for event in trace["events"]:
        totals[event["step"]] += event["end"] - event["start"]
    return totals


# -- DVC ------------------------------------------------------------------------------


class Dvc:
    """A DVC 3.x repository run with a private HOME and config, off the network."""

    def __init__(self, root: Path, program: Path, env: Mapping[str, str]) -> None:
        self.root = root
        self.program = str(program)
        # Queue workers start `dvc` by name, so its venv goes first on PATH.
        path = f"{program.parent}{os.pathsep}{env.get('PATH', '')}"
        self.env = {**env, "PATH": path}
        make_repo(root, self.env, [self.program, "init", "-q"], "")

    def run(self, value: int, name: str) -> float:
        argv = [self.program, "exp", "run", "-S", f"x={value}", "-n", name]
        seconds, _ = run_timed(argv, self.root, self.env)
        self.verify({name: value}, queued=False)
        return seconds

    def sweep(self, values: list[int], name: str, log_dir: Path) -> float:
        """Queue one experiment per value, start 2 workers, wait until all are saved."""
        names = {f"{name}-{i + 1}": v for i, v in enumerate(values)}
        start = time.perf_counter()
        for experiment, value in names.items():
            argv = [self.program, "exp", "run", "--queue", "-S", f"x={value}"]
            run_timed([*argv, "-n", experiment], self.root, self.env)
        # The workers inherit the output of `dvc queue start`: a file, not a
        # pipe, or reading it would wait for their idle exit.
        with open(log_dir / f"{name}.queue-start.log", "w") as log_file:
            code = subprocess.call(
                [self.program, "queue", "start", "-j", str(SWEEP_JOBS)],
                cwd=self.root,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        if code != 0:
            raise BenchError(f"dvc queue start exited with status {code}")
        self.wait_saved(set(names), start)
        seconds = time.perf_counter() - start
        self.wait_workers_gone()
        self.verify(names, queued=True)
        return seconds

    def saved(self) -> set[str]:
        refs = subprocess.run(
            ["git", "for-each-ref", "--format=%(refname)", "refs/exps"],
            cwd=self.root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        return {ref.rsplit("/", 1)[-1] for ref in refs}

    def wait_saved(self, names: set[str], start: float) -> None:
        # A Git ref per experiment is written when DVC saves its result;
        # polling refs costs a few ms, where `dvc queue status` costs a second.
        while not names <= self.saved():
            if time.perf_counter() - start > DVC_SWEEP_TIMEOUT_S:
                missing = ", ".join(sorted(names - self.saved()))
                raise BenchError(
                    f"DVC's queue did not save {missing} within "
                    f"{DVC_SWEEP_TIMEOUT_S:.0f} s: see `dvc queue status` in {self.root}"
                )
            time.sleep(0.1)

    def worker_pids(self) -> list[int]:
        """Return the DVC processes started in this repository (queue workers)."""
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                cwd = os.readlink(f"/proc/{entry}/cwd")
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            in_repo = cwd == str(self.root) or cwd.startswith(f"{self.root}/")
            if in_repo and any(arg.endswith(b"/dvc") for arg in argv):
                pids.append(int(entry))
        return pids

    def wait_workers_gone(self) -> None:
        """Wait for the queue's workers to exit when idle; end them by pid after that."""
        deadline = time.monotonic() + DVC_WORKER_EXIT_S
        while self.worker_pids() and time.monotonic() < deadline:
            time.sleep(0.5)
        for pid in self.worker_pids():
            print(f"ending DVC queue worker {pid}, still running", flush=True)
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def verify(self, names: Mapping[str, int], queued: bool) -> None:
        """Raise unless each experiment is saved with score = 2 × its x."""
        _, output = run_timed(
            [self.program, "exp", "show", "--json"], self.root, self.env
        )
        found = {}
        for commit in json.loads(output):
            for experiment in commit.get("experiments") or []:
                found[experiment["name"]] = experiment
        for name, x in names.items():
            experiment = found.get(name)
            if experiment is None:
                raise BenchError(f"DVC: experiment {name} is not listed")
            data = experiment["revs"][0]["data"]
            score = data["metrics"].get("metrics.json", {}).get("data", {}).get("score")
            state = (experiment.get("executor") or {}).get("state", "success")
            if score != 2 * x or (queued and state != "success"):
                raise BenchError(
                    f"DVC: experiment {name} has state {state} and score {score}, "
                    f"expected success and {2 * x}"
                )


# -- measuring ------------------------------------------------------------------------


def time_command(argv: list[str], reps: int) -> dict[str, float]:
    def run() -> None:
        subprocess.run(argv, check=True, cwd=PROJECT, stdout=subprocess.DEVNULL)

    return summary(time_calls(run, reps))


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from bench.restore.env import base_env, install_dvc

    dvc_program = install_dvc(args.dvc_venv)
    env = base_env()
    expfs = Expfs(work / "expfs", env, work)
    try:
        return measure_tools(args, work, expfs, dvc_program)
    finally:
        expfs.stop_servers()


def measure_tools(
    args: argparse.Namespace,
    work: Path,
    expfs: Expfs,
    dvc_program: Path,
) -> dict[str, Any]:
    from bench.restore.env import dvc_env, machine, version_of

    dvc = Dvc(work / "dvc", dvc_program, dvc_env(work / "dvc-home"))
    record: dict[str, Any] = {
        "machine": machine(work, version_of([str(dvc_program), "--version"]), PROJECT),
        "load_before": os.getloadavg(),
    }
    values = iter(range(1, 1_000_000))

    print("warm-up: one run of each tool; expfs's starts its server", flush=True)
    first_run = expfs.run([next(values)], "warm-up")
    dvc.run(next(values), "warm-up")

    single = time_single_runs(args, expfs, dvc, values)
    steps, daemon = trace_single_runs(args, work, expfs, values)
    sweeps = time_sweeps(args, work, expfs, dvc, values)

    batch = [next(values) for _ in range(args.sweep_size)]
    trace_file = work / "traced-sweep.json"
    expfs.run(batch, "traced-sweep", traced=trace_file)
    sweep_trace = sweep_steps(json.loads(trace_file.read_text()))

    record.update(
        {
            "single": {tool: summary(s) for tool, s in single.items()},
            "first_run": first_run,
            "single_ratio": summary(pair_ratios(single["dvc"], single["expfs"])),
            "sweep": {tool: summary(s) for tool, s in sweeps.items()},
            "sweep_ratio": summary(pair_ratios(sweeps["dvc"], sweeps["expfs"])),
            "steps": {key: summary([s[key] for s in steps]) for key in steps[0]},
            "daemon": {key: summary([d[key] for d in daemon]) for key in daemon[0]},
            "sweep_steps": {k: v / args.sweep_size for k, v in sweep_trace.items()},
            "imports": time_imports(args.reps),
            "load_after": os.getloadavg(),
        }
    )
    return record


def time_single_runs(
    args: argparse.Namespace, expfs: Expfs, dvc: Dvc, values: Iterator[int]
) -> dict[str, list[float]]:
    """Time one-experiment runs: expfs, DVC, and expfs without its server, in turn."""
    single: dict[str, list[float]] = {"expfs": [], "dvc": [], "no_server": []}
    for rep in range(args.reps):
        single["expfs"].append(expfs.run([next(values)], f"single-{rep}"))
        single["dvc"].append(dvc.run(next(values), f"single-{rep}"))
        single["no_server"].append(
            expfs.run([next(values)], f"no-server-{rep}", EXPFS_NO_SERVER="1")
        )
        print(
            f"one exp run {rep + 1}/{args.reps}: expfs {fmt(single['expfs'][-1])}, "
            f"DVC {fmt(single['dvc'][-1])}, expfs without its server "
            f"{fmt(single['no_server'][-1])}",
            flush=True,
        )
    return single


def trace_single_runs(
    args: argparse.Namespace, work: Path, expfs: Expfs, values: Iterator[int]
) -> tuple[list[dict[str, float]], list[dict[str, float]]]:
    """Run single experiments on the traced server and return their steps and daemon parts."""
    expfs.start_traced_server()
    expfs.run([next(values)], "traced-warm-up", traced=work / "traced-warm-up.json")

    steps: list[dict[str, float]] = []
    daemon: list[dict[str, float]] = []
    for rep in range(args.reps):
        name = f"traced-{rep}"
        trace_file = work / f"{name}.json"
        expfs.run([next(values)], name, traced=trace_file)
        trace = json.loads(trace_file.read_text())
        steps.append(breakdown(trace, expfs.spawned, expfs.exited))
        mount = next(e for e in trace["events"] if e["step"] == "mount")
        daemon.append(daemon_breakdown(mount, expfs.daemon_times(name)))
    return steps, daemon


def time_sweeps(
    args: argparse.Namespace,
    work: Path,
    expfs: Expfs,
    dvc: Dvc,
    values: Iterator[int],
) -> dict[str, list[float]]:
    """Time sweeps of `args.sweep_size` experiments with expfs and DVC, in turn."""
    sweeps: dict[str, list[float]] = {"expfs": [], "dvc": []}
    for rep in range(args.sweep_reps):
        batch = [next(values) for _ in range(args.sweep_size)]
        sweeps["expfs"].append(expfs.run(batch, f"sweep-{rep}"))
        batch = [next(values) for _ in range(args.sweep_size)]
        sweeps["dvc"].append(dvc.sweep(batch, f"sweep-{rep}", work))
        print(
            f"sweep {rep + 1}/{args.sweep_reps}: expfs {fmt(sweeps['expfs'][-1])}, "
            f"DVC {fmt(sweeps['dvc'][-1])}",
            flush=True,
        )
    return sweeps


def time_imports(reps: int) -> dict[str, dict[str, float]]:
    """Time Python start-up alone, with trio and pyfuse3, and with the daemon module."""
    python = sys.executable
    return {
        "pass": time_command([python, "-c", "pass"], reps),
        "trio_pyfuse3": time_command([python, "-c", "import trio, pyfuse3"], reps),
        "daemon_module": time_command([python, "-c", "import expfs.fuse.daemon"], reps),
    }


# -- report ---------------------------------------------------------------------------


def verdict(value: float, target: float) -> str:
    return "met" if value < target else "missed"


def render(record: dict[str, Any], argv: str, args: argparse.Namespace) -> str:
    m = record["machine"]
    single, sweep = record["single"], record["sweep"]
    load = load_before_after(record)
    ratio = record["single_ratio"]
    sweep_ratio = record["sweep_ratio"]
    lines = [
        SECTION.heading,
        SECTION.begin,
        "",
        f"`{f'python -m bench.bench_exp {argv}'.strip()}`, {m['date']}: medians of {args.reps} runs "
        f"for one experiment and {args.sweep_reps} for the sweep, (min–max) beside "
        f"them. {describe_machine(m, m['dvc'])} Load average {load} (1, 5 and 15 min, "
        "before / after): other work on the machine inflates every figure, so "
        "compare ratios, taken run by run from tools run alternately.",
        "",
        "The stage is `sh train.sh`, which writes `metrics.json` = 2 × the param "
        "`x`; every run sets new values, so the stage always runs. A run counts "
        "only after each of its experiments is listed with status success and "
        "that metric (for DVC, saved by `exp show --json` with the queue's state "
        "success).",
        "",
        "| what | expfs | DVC 3.x | DVC ÷ expfs | target (expfs) | |",
        "| --- | ---: | ---: | ---: | --- | --- |",
        f"| one `exp run` of a trivial stage, expfs server running | "
        f"{spread(single['expfs'])} | "
        f"{spread(single['dvc'])} | {ratio['median']:.1f} "
        f"({ratio['min']:.1f}–{ratio['max']:.1f}) | < {TARGET_RUN_S} s | "
        f"{verdict(single['expfs']['median'], TARGET_RUN_S)} |",
        f"| sweep of {args.sweep_size} trivial experiments, `-j {SWEEP_JOBS}` | "
        f"{spread(sweep['expfs'])} | {spread(sweep['dvc'])} | "
        f"{sweep_ratio['median']:.1f} ({sweep_ratio['min']:.1f}–"
        f"{sweep_ratio['max']:.1f}) | < {TARGET_SWEEP_S:.0f} s | "
        f"{verdict(sweep['expfs']['median'], TARGET_SWEEP_S)} |",
        show_row(args.results),
        "",
        f"The first `exp run` of the benchmark, which starts the expfs server, "
        f"took {fmt(record['first_run'])}; one `exp run` with EXPFS_NO_SERVER=1, "
        f"in its own process with its own imports, takes "
        f"{spread(single['no_server'])}. The server stays running between "
        "commands and exits after 10 minutes without one.",
        "",
        f"DVC's sweep is `dvc exp run --queue` {args.sweep_size} times, then "
        f"`dvc queue start -j {SWEEP_JOBS}`, timed until Git holds a ref for every "
        "experiment. DVC's one `exp run` runs in the workspace, while expfs mounts "
        "a new workspace for each experiment. DVC's `exp show` is not measured, "
        "because making 500 DVC experiments at its pace would take over 12 minutes.",
        "",
    ]
    lines += breakdown_lines(record, args)
    lines += ["", *sweep_lines(record, args), ""]
    for paragraph in findings(record):
        lines += [paragraph, ""]
    lines += [SECTION.end, ""]
    return "\n".join(lines)


def show_row(results: Path) -> str:
    """Return the `exp show` row, with the figure bench_show.py wrote on the page."""
    found = re.search(
        r"^\| `expfs exp show` \| ([\d.]+) (ms|s) \|",
        results.read_text() if results.exists() else "",
        re.M,
    )
    if found is None:
        return "| `exp show` with 500 experiments | not measured yet | | | < 0.5 s | |"
    seconds = float(found[1]) / (1000 if found[2] == "ms" else 1)
    return (
        f"| `exp show` with 500 experiments (from bench_show.py, its own run) | "
        f"{fmt(seconds)} | not measured | | < 0.5 s | {verdict(seconds, 0.5)} |"
    )


def breakdown_lines(record: dict[str, Any], args: argparse.Namespace) -> list[str]:
    steps, daemon, imports = record["steps"], record["daemon"], record["imports"]
    lines = [
        f"Where the time of one `expfs exp run` goes ({args.reps} more runs of the "
        "same command, served by a server whose forked command records when each "
        "step starts and ends; the daemon's part comes from its log, with "
        "millisecond stamps):",
        "",
        "| step | median | min–max | share |",
        "| --- | ---: | ---: | ---: |",
    ]
    total = steps["total"]["median"]
    for key, label in [*STEPS.items(), ("other", "the rest (threads, waits)")]:
        stats = steps[key]
        lines.append(
            f"| {label} | {fmt(stats['median'])} | {fmt(stats['min'])}–"
            f"{fmt(stats['max'])} | {100 * stats['median'] / total:.0f} % |"
        )
        if key == "mount":
            for part, part_label in DAEMON_STEPS.items():
                d = daemon[part]
                lines.append(
                    f"| &nbsp;&nbsp;of which: {part_label} | {fmt(d['median'])} | "
                    f"{fmt(d['min'])}–{fmt(d['max'])} | "
                    f"{100 * d['median'] / total:.0f} % |"
                )
    lines += [
        f"| total, traced | {fmt(total)} | "
        f"{fmt(steps['total']['min'])}–{fmt(steps['total']['max'])} | 100 % |",
        "",
        "The same interpreter, alone:",
        "",
        "| what | median | min–max |",
        "| --- | ---: | ---: |",
    ]
    for key, label in (
        ("pass", "`python -c pass`"),
        ("trio_pyfuse3", '`python -c "import trio, pyfuse3"`'),
        ("daemon_module", '`python -c "import expfs.fuse.daemon"`'),
    ):
        stats = imports[key]
        lines.append(
            f"| {label} | {fmt(stats['median'])} | {fmt(stats['min'])}–"
            f"{fmt(stats['max'])} |"
        )
    return lines


def sweep_lines(record: dict[str, Any], args: argparse.Namespace) -> list[str]:
    per = record["sweep_steps"]
    labels = {k: v for k, v in STEPS.items() if k in per}
    lines = [
        f"In one traced sweep of {args.sweep_size} with `-j {SWEEP_JOBS}`, each "
        "experiment's steps took on average (two run at once, so they overlap):",
        "",
        "| step | mean per experiment |",
        "| --- | ---: |",
    ]
    lines += [f"| {label} | {fmt(per[key])} |" for key, label in labels.items()]
    return lines


def findings(record: dict[str, Any]) -> list[str]:
    steps, daemon = record["steps"], record["daemon"]
    single = record["single"]["expfs"]["median"]
    sweep = record["sweep"]["expfs"]["median"]
    no_server = record["single"]["no_server"]["median"]
    largest = max(
        (key for key in STEPS if key not in ("startup", "exit")),
        key=lambda key: steps[key]["median"],
    )
    lines = [
        f"One `exp run` takes {fmt(single)} with the server running and "
        f"{fmt(no_server)} without it: the client imports only the socket code, "
        "and the command and its mount daemon are forks of a process that "
        "imported everything once. The daemon's part of the mount is now "
        f"{fmt(daemon['spawn']['median'])} from the fork request to its first "
        f"log line. The largest step left is the {STEPS[largest]}, at "
        f"{fmt(steps[largest]['median'])}.",
    ]
    if single >= TARGET_RUN_S:
        lines.append(
            f"One `exp run` misses its {TARGET_RUN_S} s target: its fastest run "
            f"took {fmt(record['single']['expfs']['min'])}, and the traced runs "
            f"{fmt(steps['total']['median'])}. Other work on the machine makes "
            "single runs vary several-fold, so the median rests on few quiet "
            "moments."
        )
    if sweep >= TARGET_SWEEP_S:
        per = record["sweep_steps"]
        lines.append(
            f"The sweep misses its {TARGET_SWEEP_S:.0f} s target. Per experiment, "
            f"creation takes {fmt(per['create'])} (in a thread beside the runs), "
            f"the mount {fmt(per['mount'])} until it answers and repro "
            f"{fmt(per['repro'])}."
        )
    pass_s = record["imports"]["pass"]["median"]
    if pass_s > 2 * IDLE_PASS_S:
        lines.append(
            f"During this run `python -c pass` took {fmt(pass_s)}, "
            f"{pass_s / IDLE_PASS_S:.1f} times its time on an idle machine, so "
            "every absolute figure above is inflated by about as much, while "
            "the ratios stay comparable."
        )
    return lines


def print_summary(record: dict[str, Any]) -> None:
    for what in ("single", "sweep"):
        ratio = record[f"{what}_ratio"]["median"]
        print(
            f"{what}: expfs {spread(record[what]['expfs'])}, "
            f"DVC {spread(record[what]['dvc'])}, DVC/expfs {ratio:.1f}"
        )
    for key, stats in record["steps"].items():
        print(f"  {key:12} {fmt(stats['median'])}")
    for key, stats in record["daemon"].items():
        print(f"  daemon {key:8} {fmt(stats['median'])}")
    for key, stats in record["imports"].items():
        print(f"  {key:14} {fmt(stats['median'])}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_exp",
        description="Time `expfs exp run` (one experiment and a sweep of 10 with "
        "-j 2) beside DVC 3.x's `exp run` and queue, with the breakdown of one "
        "expfs run; rewrite the Experiments section of bench/RESULTS.md.",
    )
    parser.add_argument(
        "--reps",
        type=positive_int,
        default=5,
        help="timed runs of one experiment (default 5)",
    )
    parser.add_argument(
        "--sweep-reps",
        type=positive_int,
        default=3,
        help="timed sweeps per tool (default 3)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="one run of each, a sweep of 4; print only, RESULTS.md unchanged",
    )
    add_dvc_venv_option(parser)
    add_results_option(parser)
    return parser


def main(argv: list[str]) -> int:
    if argv[:1] == ["--trace-server"]:
        return trace_server(argv[1])
    args = build_parser().parse_args(argv)
    args.sweep_size = 4 if args.quick else SWEEP_SIZE
    if args.quick:
        args.reps = args.sweep_reps = 1
    if args.reps < 1 or args.sweep_reps < 1:
        print("invalid --reps or --sweep-reps: give at least 1", file=sys.stderr)
        return 2
    record = measure_in_scratch("bench_exp", lambda work: measure(args, work))
    if record is None:
        return 1
    print_summary(record)
    if not args.quick:
        SECTION.write(render(record, " ".join(argv), args), args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
