"""The benchmark scripts' shared code: summaries, formats and results sections."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bench import common
from bench.common import (
    BenchError,
    Section,
    format_seconds,
    load_before_after,
    load_text,
    measure_in_scratch,
    pair_ratios,
    run_timed,
    summary,
    time_calls,
)
from bench.restore.measure import ToolPending

PROJECT = Path(__file__).resolve().parent.parent

PAGE = """# Benchmark results

Intro.

## Store

Store table.

## Experiments
<!-- bench_exp.py: begin -->

Old experiments.

## A heading inside the section

<!-- bench_exp.py: end -->

## Lazy restore
<!-- bench_lazy.py: begin -->
Old lazy.
<!-- bench_lazy.py: end -->
"""


def test_summary_odd_and_even() -> None:
    assert summary([3.0, 1.0, 2.0]) == {
        "median": 2.0,
        "min": 1.0,
        "max": 3.0,
        "count": 3,
    }
    assert summary([4.0, 1.0, 2.0, 3.0])["median"] == 2.5


def test_pair_ratios_rep_by_rep() -> None:
    assert pair_ratios([2.0, 9.0], [1.0, 3.0]) == [2.0, 3.0]


def test_pair_ratios_uneven_lengths() -> None:
    with pytest.raises(ValueError):
        pair_ratios([1.0, 2.0], [1.0])


def test_time_calls_runs_setup_first() -> None:
    calls: list[str] = []
    times = time_calls(lambda: calls.append("fn"), 3, setup=lambda: calls.append("set"))
    assert len(times) == 3
    assert all(t >= 0 for t in times)
    assert calls == ["set", "fn"] * 3


def test_format_seconds_units() -> None:
    assert format_seconds(0.0414) == "41 ms"
    assert format_seconds(0.9994) == "999 ms"
    assert format_seconds(1.0) == "1.00 s"
    assert format_seconds(12.345) == "12.35 s"


def test_load_texts() -> None:
    assert load_text((0.5, 1.25, 10.0)) == "0.5 1.2 10.0"
    assert load_text((0.5, 1.25, 10.0), 2) == "0.50 1.25 10.00"
    record = {"load_before": [1.0, 2.0, 3.0], "load_after": [4.0, 5.0, 6.0]}
    assert load_before_after(record) == "1.0 2.0 3.0 / 4.0 5.0 6.0"


def test_marked_section_replaced() -> None:
    section = Section("## Experiments", "bench_exp.py")
    text = f"## Experiments\n{section.begin}\n\nNew.\n\n{section.end}\n"
    page = section.replace_in(PAGE, text)
    assert "Old experiments" not in page
    assert "A heading inside the section" not in page
    assert page.count("## Experiments") == 1
    assert "\n\nNew.\n\n<!-- bench_exp.py: end -->\n\n## Lazy restore\n" in page
    assert page.startswith(PAGE[: PAGE.index("## Experiments")])
    assert page.endswith(PAGE[PAGE.index("## Lazy restore") :])


def test_marked_section_appended() -> None:
    section = Section("## Cluster", "bench_cluster.py")
    text = f"## Cluster\n{section.begin}\nNew.\n{section.end}\n"
    page = section.replace_in(PAGE, text)
    assert page == PAGE + "\n" + text


def test_heading_section_ends_at_next_heading() -> None:
    section = Section("## Store")
    page = section.replace_in(PAGE, "## Store\n\nNew store.\n")
    assert "Store table" not in page
    assert "Intro.\n\n## Store\n\nNew store.\n\n## Experiments\n" in page
    assert page.endswith(PAGE[PAGE.index("## Experiments") :])


def test_heading_section_last_on_page() -> None:
    section = Section("## Lazy restore")
    page = section.replace_in(PAGE, "## Lazy restore\n\nNew lazy.\n")
    assert page.endswith("<!-- bench_exp.py: end -->\n\n## Lazy restore\n\nNew lazy.\n")


def test_section_write_creates_page(tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"
    Section("## Store").write("## Store\n\nFigures.\n", results)
    assert results.read_text() == common.RESULTS_INTRO + "\n## Store\n\nFigures.\n"


def test_run_timed_returns_stdout(tmp_path: Path) -> None:
    script = "import sys; print('out'); print('err', file=sys.stderr)"
    seconds, output = run_timed([sys.executable, "-c", script], tmp_path)
    assert seconds > 0
    assert output == "out\n"


def test_run_timed_failure_names_command(tmp_path: Path) -> None:
    script = "import sys; print('why it failed', file=sys.stderr); sys.exit(3)"
    with pytest.raises(BenchError) as failure:
        run_timed([sys.executable, "-c", script], tmp_path)
    message = str(failure.value)
    assert "exited with status 3" in message
    assert str(tmp_path) in message
    assert "why it failed" in message


def test_measure_in_scratch_saves_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(common, "WORK_ROOT", tmp_path)
    seen: list[Path] = []

    def measure(work: Path) -> dict[str, int]:
        seen.append(work)
        (work / "data").write_text("x")
        return {"figure": 1}

    assert measure_in_scratch("bench_test", measure) == {"figure": 1}
    assert seen[0].parent == tmp_path
    assert seen[0].name.startswith("test-")
    assert not seen[0].exists()
    saved = json.loads((tmp_path / "bench_test-last.json").read_text())
    assert saved == {"figure": 1}


def failing_measure(error: Exception, seen: list[Path]) -> Callable[[Path], Any]:
    """Return a measure function that records its folder, then raises `error`."""

    def measure(work: Path) -> dict[str, int]:
        seen.append(work)
        raise error

    return measure


def test_measure_in_scratch_keeps_failed(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(common, "WORK_ROOT", tmp_path / "work")
    extra = tmp_path / "extra"
    extra.mkdir()
    seen: list[Path] = []
    error = BenchError("the tool printed the wrong digest")

    assert (
        measure_in_scratch("bench_test", failing_measure(error, seen), [extra]) is None
    )
    assert seen[0].is_dir()
    assert extra.is_dir()
    err = capsys.readouterr().err
    assert "bench_test: the tool printed the wrong digest" in err
    assert f"its files are kept in {seen[0]} and {extra}" in err
    assert not (tmp_path / "work" / "bench_test-last.json").exists()


def test_measure_in_scratch_removes_pending(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(common, "WORK_ROOT", tmp_path / "work")
    extra = tmp_path / "extra"
    extra.mkdir()
    seen: list[Path] = []
    error = ToolPending("DVC could not be installed")

    assert (
        measure_in_scratch("bench_test", failing_measure(error, seen), [extra]) is None
    )
    assert not seen[0].exists()
    assert not extra.exists()


@pytest.mark.slow
def test_bench_show_rewrites_only_its_section(tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"
    results.write_text(PAGE + "\n## exp show\n\nOld figures.\n")
    proc = subprocess.run(
        [
            sys.executable,
            str(PROJECT / "bench" / "bench_show.py"),
            "--experiments",
            "5",
            "--runs",
            "1",
            "--work",
            str(tmp_path),
            "--results",
            str(results),
        ],
        capture_output=True,
        text=True,
        cwd=PROJECT,
    )
    assert proc.returncode == 0, proc.stderr
    page = results.read_text()
    assert page.startswith(
        PAGE + "\n## exp show\n\n`bench/bench_show.py --experiments 5"
    )
    assert "Old figures" not in page
    assert "| `expfs exp show --json` |" in page
    assert f"updated the exp show section of {results}" in proc.stdout
