"""Timing samples, their summary and ratios taken run by run."""

from __future__ import annotations

import statistics
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


class ToolFailed(Exception):
    """A tool did something other than what the benchmark measures."""


class ToolPending(Exception):
    """A tool cannot be measured yet: the feature is missing or not working."""


@dataclass(frozen=True)
class Summary:
    median: float
    low: float
    high: float
    count: int


def summarize(samples: Sequence[float]) -> Summary | None:
    if not samples:
        return None
    return Summary(statistics.median(samples), min(samples), max(samples), len(samples))


def pair_ratios(
    numerator: Sequence[float], denominator: Sequence[float]
) -> list[float]:
    """Divide sample i of one tool by sample i of another, taken in the same run."""
    return [n / d for n, d in zip(numerator, denominator, strict=False) if d > 0]


@dataclass(frozen=True)
class Completed:
    seconds: float
    output: str


def timed_run(
    argv: Sequence[str],
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> Completed:
    """Run `argv`, returning its wall time and merged output; raise ToolFailed on error."""
    start = time.perf_counter()
    proc = subprocess.run(
        list(argv),
        cwd=cwd,
        env=dict(env) if env is not None else None,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        stdin=subprocess.DEVNULL,
    )
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise ToolFailed(
            f"{' '.join(argv)} exited with status {proc.returncode} in {cwd}: "
            f"{proc.stdout.strip()[-2000:]}"
        )
    return Completed(seconds, proc.stdout)


def run_quiet(
    argv: Sequence[str],
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> str:
    """Run an untimed set-up command; return its output or raise ToolFailed."""
    return timed_run(argv, cwd, env).output


def format_seconds(seconds: float) -> str:
    if seconds >= 10:
        return f"{seconds:.1f} s"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 0.01:
        return f"{seconds * 1000:.0f} ms"
    return f"{seconds * 1000:.2f} ms"
