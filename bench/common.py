"""Code shared by the benchmark scripts under bench/.

It covers running and timing commands, summarizing samples, describing the
machine and its load, and rewriting one script's section of bench/RESULTS.md.
Scripts run as files (`python bench/bench_show.py`, as `python -m bench`
does) put the project root on sys.path before they import this module.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
PROJECT = BENCH_DIR.parent
# Scratch folders, installed tools and the last record of each script.
WORK_ROOT = BENCH_DIR / "work"
RESULTS = BENCH_DIR / "RESULTS.md"
EXPFS = str(Path(sys.executable).with_name("expfs"))

RESULTS_INTRO = """# Benchmark results

Each section is written by one script under `bench/`, run from the project
root with the development environment (`make venv` sets it up), for example
`.venv/bin/python bench/bench_store.py`. A script rewrites only its own
section. Figures are medians of several runs on the machine named in each
section, measured side by side with the tools a user would otherwise use,
so compare the ratios rather than the absolute times.
"""


class BenchError(Exception):
    """A tool did not do what the benchmark measures, so its time does not count."""


# -- running and timing --------------------------------------------------------------


def run_timed(
    argv: Sequence[str | Path],
    cwd: Path,
    env: Mapping[str, str] | None = None,
) -> tuple[float, str]:
    """Run `argv` with no input and return its wall time in seconds and its stdout.

    Raises BenchError with the end of its stdout and stderr if it exits
    with a non-zero status. `env` replaces the whole environment, and None
    keeps this process's.
    """
    start = time.perf_counter()
    proc = subprocess.run(
        [str(arg) for arg in argv],
        cwd=cwd,
        env=dict(env) if env is not None else None,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        errors="replace",
    )
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        output = (proc.stdout + proc.stderr).strip()[-1500:]
        raise BenchError(
            f"{' '.join(map(str, argv))} exited with status {proc.returncode} "
            f"in {cwd}: {output}"
        )
    return seconds, proc.stdout


def time_calls(
    fn: Callable[[], object], runs: int, setup: Callable[[], object] | None = None
) -> list[float]:
    """Call `fn` `runs` times and return each call's wall time in seconds.

    `setup`, if given, runs untimed before each call.
    """
    times = []
    for _ in range(runs):
        if setup is not None:
            setup()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def median_time(
    fn: Callable[[], object], runs: int, setup: Callable[[], object] | None = None
) -> float:
    """Return the median wall time of `fn` in seconds over `runs` calls."""
    return statistics.median(time_calls(fn, runs, setup))


def summary(samples: Sequence[float]) -> dict[str, float]:
    """Return the median, min, max and count of `samples`, as stored in records."""
    return {
        "median": statistics.median(samples),
        "min": min(samples),
        "max": max(samples),
        "count": len(samples),
    }


def pair_ratios(
    numerators: Sequence[float], denominators: Sequence[float]
) -> list[float]:
    """Divide sample i of one tool by sample i of another, taken in the same rep."""
    return [n / d for n, d in zip(numerators, denominators, strict=True)]


def format_seconds(seconds: float) -> str:
    """Format a duration as whole milliseconds below 1 s, else seconds to 0.01 s."""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    return f"{seconds:.2f} s"


# -- the machine ----------------------------------------------------------------------


def load_text(load: Sequence[float], digits: int = 1) -> str:
    """Format load averages (1, 5 and 15 min, as os.getloadavg returns them)."""
    return " ".join(f"{value:.{digits}f}" for value in load)


def load_before_after(record: Mapping[str, Any]) -> str:
    """Format a record's `load_before` and `load_after` as "1 5 15 / 1 5 15"."""
    return f"{load_text(record['load_before'])} / {load_text(record['load_after'])}"


def cpu_model() -> str:
    """Return the CPU's model name from /proc/cpuinfo."""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown CPU"


def describe_machine(machine: Mapping[str, str], dvc: str) -> str:
    """Return the "Machine: …" sentence for a record made by bench.restore.env.machine.

    `dvc` follows the word DVC: its version, and any tool added beside it.
    """
    m = machine
    return (
        f"Machine: {m['cores']} cores ({m['cpu']}), {m['memory']}, "
        f"{m['filesystem']}, Linux {m['kernel']}, Python {m['python']}, DVC "
        f"{dvc}, expfs {m['expfs']}."
    )


# -- the results page -----------------------------------------------------------------


@dataclass(frozen=True)
class Section:
    """One script's section of the results page.

    A section with a `script` name is delimited by its heading and two HTML
    comments naming the script, so its body may hold headings of its own.
    A section without one runs from its heading to the next `## ` heading.
    """

    heading: str
    script: str | None = None

    @property
    def title(self) -> str:
        return self.heading.lstrip("#").strip()

    @property
    def begin(self) -> str:
        return f"<!-- {self.script}: begin -->"

    @property
    def end(self) -> str:
        return f"<!-- {self.script}: end -->"

    def replace_in(self, page: str, text: str) -> str:
        """Return `page` with this section replaced by `text`, or `text` appended.

        `text` is the whole section, its heading (and markers) included, and
        ends with a newline. The page keeps every other section as it was.
        """
        heading = re.escape(self.heading)
        if self.script is None:
            pattern = re.compile(rf"^{heading}\n.*?(?=^## |\Z)", re.S | re.M)
            # A blank line separates the section from the next heading.
            replacement = text + "\n"
        else:
            begin, end = re.escape(self.begin), re.escape(self.end)
            pattern = re.compile(rf"^{heading}\n{begin}\n.*?{end}\n", re.S | re.M)
            replacement = text
        if pattern.search(page):
            updated = pattern.sub(lambda _: replacement, page, count=1)
        else:
            updated = page.rstrip("\n") + "\n\n" + text
        return updated.rstrip("\n") + "\n"

    def write(self, text: str, results: Path) -> None:
        """Rewrite this section of the page at `results`, creating the page if missing."""
        page = results.read_text() if results.exists() else RESULTS_INTRO
        results.write_text(self.replace_in(page, text))
        print(f"updated the {self.title} section of {results}")


def add_results_option(parser: argparse.ArgumentParser) -> None:
    """Add `--results PATH`, the page whose section the script rewrites."""
    parser.add_argument(
        "--results",
        type=Path,
        default=RESULTS,
        help="results page to rewrite this script's section of "
        "(default bench/RESULTS.md)",
    )


def add_dvc_venv_option(parser: argparse.ArgumentParser) -> None:
    """Add `--dvc-venv PATH`, shared with the restore benchmark."""
    parser.add_argument(
        "--dvc-venv",
        type=Path,
        default=WORK_ROOT / "dvc-venv",
        help="virtual environment holding DVC, created if missing "
        "(default bench/work/dvc-venv)",
    )


# -- one measurement in a scratch folder ------------------------------------------------


def measure_in_scratch(
    script: str,
    measure: Callable[[Path], dict[str, Any]],
    extra_folders: Sequence[Path] = (),
) -> dict[str, Any] | None:
    """Call `measure` with a new folder under bench/work and return its record.

    The record is also saved as bench/work/SCRIPT-last.json. The folder and
    `extra_folders` are deleted afterwards, except after a BenchError, when
    they are kept for a look. Returns None after printing why DVC could not
    be installed or a tool failed.
    """
    from bench.restore.measure import ToolPending

    WORK_ROOT.mkdir(exist_ok=True)
    work = Path(
        tempfile.mkdtemp(prefix=f"{script.removeprefix('bench_')}-", dir=WORK_ROOT)
    )
    folders = [work, *extra_folders]
    try:
        record = measure(work)
    except ToolPending as exc:
        print(f"{script}: DVC cannot be measured: {exc}", file=sys.stderr)
        for folder in folders:
            shutil.rmtree(folder)
        return None
    except BenchError as exc:
        print(f"{script}: {exc}", file=sys.stderr)
        kept = " and ".join(map(str, folders))
        print(f"its files are kept in {kept}", file=sys.stderr)
        return None
    for folder in folders:
        shutil.rmtree(folder)
    (WORK_ROOT / f"{script}-last.json").write_text(json.dumps(record))
    return record
