"""The experiments table, its formats and `compare`, called as a library.

The helpers at the top write experiment records straight into the index,
as a sweep leaves them after a run; the CLI tests import them too.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any

import pytest

from expfs.experiments import Experiment, ExperimentNotFound
from expfs.report import (
    BASELINE_NAME,
    UnknownColumn,
    baseline_row,
    build_table,
    compare,
    find_column,
    load_rows,
)
from expfs.report.diff_output import (
    render_diff_json,
    render_diff_markdown,
    render_diff_text,
)
from expfs.report.render import (
    print_rich,
    render_csv,
    render_json,
    render_markdown,
    render_text,
)
from expfs.report.table import (
    Row,
    check_precision,
    flatten_by_file,
    format_value,
)
from expfs.store import EMPTY_TREE_DIGEST, Store, layout
from expfs.tree.snapshot import snapshot_path
from tests.conftest import git

BASE_COMMIT = "c0ffee" * 6 + "c0ff"

STAGE_FILE = """\
stages:
  train:
    cmd: python3 train.py
    params: [lr, depth]
    outs: [model.txt]
    metrics: [{score.json: {cache: false}}]
"""


def put_record(
    store: Store,
    name: str,
    *,
    created: float,
    status: str = "success",
    params: dict[str, dict[str, Any]] | None = None,
    metrics: dict[str, dict[str, Any]] | None = None,
    result: str | None = None,
    base: str = EMPTY_TREE_DIGEST,
    error: str = "",
) -> Experiment:
    """Store an experiment record as a sweep would leave it after a run."""
    experiment = Experiment(
        name,
        base,
        BASE_COMMIT,
        created,
        status,
        "/nonexistent/gitdir",
        params=params or {},
        metrics=metrics or {},
        result=result,
        error=error,
    )
    store.env.put(layout.DB_EXPERIMENTS, os.fsencode(name), experiment.to_json())
    return experiment


def write_pipeline(repo: Path, *, score: float | None = 0.2) -> None:
    """Commit a one-stage pipeline with params lr, depth and train.epochs."""
    (repo / "dvc.yaml").write_text(STAGE_FILE)
    (repo / "params.yaml").write_text("lr: 0.1\ndepth: 2\ntrain:\n  epochs: 10\n")
    if score is not None:
        (repo / "score.json").write_text(
            f'{{"score": {score}, "eval": {{"acc": 0.9}}}}'
        )
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "pipeline")


def sweep_records(store: Store) -> list[Experiment]:
    """Store four experiments of a 2 x 2 sweep over lr and depth; exp-2 failed."""
    records = []
    for index, (lr, depth) in enumerate([(0.1, 2), (0.2, 2), (0.1, 3), (0.2, 3)]):
        failed = index == 2
        metrics = {"score.json": {"score": lr * depth, "eval.acc": 0.9 + index / 100}}
        records.append(
            put_record(
                store,
                f"exp-{index}",
                created=1_800_000_000.0 + index,
                status="failed" if failed else "success",
                params={"params.yaml": {"lr": lr, "depth": depth, "train.epochs": 10}},
                metrics={} if failed else metrics,
                error="train failed with exit status 1" if failed else "",
            )
        )
    return records


@pytest.fixture
def swept(repo: Path, store: Store) -> Store:
    write_pipeline(repo)
    sweep_records(store)
    return store


def labels(table: Any) -> list[str]:
    return [column.label for column in table.columns]


# -- rows ------------------------------------------------------------------------


def test_rows_baseline_first(repo: Path, swept: Store) -> None:
    rows = load_rows(swept, str(repo))
    assert [row.name for row in rows] == [
        BASELINE_NAME,
        "exp-0",
        "exp-1",
        "exp-2",
        "exp-3",
    ]
    assert rows[0].status == "baseline"
    assert rows[0].created is None
    assert rows[0].base_commit == git(repo, "rev-parse", "HEAD").strip()


def test_rows_ordered_by_creation(repo: Path, store: Store) -> None:
    put_record(store, "a-late", created=30.0)
    put_record(store, "b-early", created=10.0)
    put_record(store, "c-middle", created=20.0)
    names = [row.name for row in load_rows(store, str(repo))]
    assert names == [BASELINE_NAME, "b-early", "c-middle", "a-late"]


def test_baseline_reads_working_tree(repo: Path, store: Store) -> None:
    write_pipeline(repo)
    (repo / "params.yaml").write_text("lr: 0.5\ndepth: 2\ntrain:\n  epochs: 10\n")
    row = baseline_row(str(repo))
    assert row.params == {"params.yaml": {"lr": 0.5, "depth": 2, "train.epochs": 10}}
    assert row.metrics == {"score.json": {"score": 0.2, "eval.acc": 0.9}}


def test_baseline_missing_metrics_empty(repo: Path, store: Store) -> None:
    write_pipeline(repo, score=None)
    row = baseline_row(str(repo))
    assert row.metrics == {}
    assert row.params["params.yaml"]["lr"] == 0.1


def test_baseline_without_pipeline(repo: Path, store: Store) -> None:
    row = baseline_row(str(repo))
    assert row.params == {}
    assert row.metrics == {}


def test_baseline_reads_other_params_files(repo: Path, store: Store) -> None:
    (repo / "dvc.yaml").write_text(
        "stages:\n  fit:\n    cmd: 'true'\n"
        "    params: [{conf/train.toml: [opt.lr]}]\n"
        "    metrics: [eval/metrics.yaml]\n"
    )
    (repo / "conf").mkdir()
    (repo / "conf" / "train.toml").write_text("[opt]\nlr = 0.3\nmomentum = 0.9\n")
    (repo / "eval").mkdir()
    (repo / "eval" / "metrics.yaml").write_text("loss: 1.5\n")
    row = baseline_row(str(repo))
    assert row.params == {"conf/train.toml": {"opt.lr": 0.3, "opt.momentum": 0.9}}
    assert row.metrics == {"eval/metrics.yaml": {"loss": 1.5}}


def test_baseline_bad_metrics_warns(
    repo: Path, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    write_pipeline(repo)
    (repo / "score.json").write_text("{not json")
    row = baseline_row(str(repo))
    assert row.metrics == {}
    assert "score.json skipped" in caplog.text


def test_baseline_bad_stage_file_warns(
    repo: Path, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    (repo / "params.yaml").write_text("lr: 0.1\n")
    (repo / "dvc.yaml").write_text("stages: [unclosed\n")
    row = baseline_row(str(repo))
    assert row.params == {"params.yaml": {"lr": 0.1}}
    assert "baseline params and metrics skipped" in caplog.text


def test_flatten_nested_metrics() -> None:
    nested = {"m.json": {"eval": {"acc": 0.9, "f1": {"macro": 0.8}}, "loss": [1, 2]}}
    assert flatten_by_file(nested) == {
        "m.json": {"eval.acc": 0.9, "eval.f1.macro": 0.8, "loss": [1, 2]}
    }
    assert flatten_by_file({"bare.json": 0.5}) == {"bare.json": {"": 0.5}}


# -- columns ---------------------------------------------------------------------


def test_columns_only_differing_params(repo: Path, swept: Store) -> None:
    table = build_table(load_rows(swept, str(repo)))
    assert labels(table) == ["lr", "depth", "score", "eval.acc"]


def test_columns_all_params(repo: Path, swept: Store) -> None:
    table = build_table(load_rows(swept, str(repo)), all_params=True)
    assert labels(table) == ["lr", "depth", "train.epochs", "score", "eval.acc"]


def test_param_missing_in_some_experiments(repo: Path, store: Store) -> None:
    put_record(store, "a", created=1, params={"p.yaml": {"x": 1, "extra": 5}})
    put_record(store, "b", created=2, params={"p.yaml": {"x": 1}})
    table = build_table(load_rows(store, str(repo)))
    assert labels(table) == ["extra"]


def test_baseline_only_param_hidden(repo: Path, store: Store) -> None:
    write_pipeline(repo)
    put_record(store, "a", created=1, params={"params.yaml": {"lr": 0.1}})
    put_record(store, "b", created=2, params={"params.yaml": {"lr": 0.1}})
    table = build_table(load_rows(store, str(repo)))
    assert [c for c in table.columns if c.kind == "params"] == []


def test_int_and_float_equal(repo: Path, store: Store) -> None:
    put_record(store, "a", created=1, params={"p.yaml": {"x": 1, "flag": True}})
    put_record(store, "b", created=2, params={"p.yaml": {"x": 1.0, "flag": 1}})
    table = build_table(load_rows(store, str(repo)))
    assert labels(table) == ["flag"]


def test_same_key_two_files(repo: Path, store: Store) -> None:
    put_record(
        store,
        "a",
        created=1,
        metrics={"train.json": {"loss": 1.0}, "test.json": {"loss": 2.0}},
    )
    table = build_table(load_rows(store, str(repo)))
    assert labels(table) == ["test.json:loss", "train.json:loss"]


# -- sorting and lookups ----------------------------------------------------------


def test_sort_by_metric_desc(repo: Path, swept: Store) -> None:
    table = build_table(load_rows(swept, str(repo)), sort_by="score", descending=True)
    assert [row.name for row in table.rows] == [
        BASELINE_NAME,
        "exp-3",
        "exp-1",
        "exp-0",
        "exp-2",
    ]


def test_sort_missing_values_last(repo: Path, swept: Store) -> None:
    table = build_table(load_rows(swept, str(repo)), sort_by="score")
    assert [row.name for row in table.rows][-1] == "exp-2"
    assert [row.name for row in table.rows][1] == "exp-0"


def test_sort_by_file_key(repo: Path, swept: Store) -> None:
    table = build_table(
        load_rows(swept, str(repo)), sort_by="score.json:eval.acc", descending=True
    )
    assert [row.name for row in table.rows][1] == "exp-3"


def test_sort_by_hidden_param_shows_it(repo: Path, swept: Store) -> None:
    table = build_table(load_rows(swept, str(repo)), sort_by="train.epochs")
    assert labels(table) == ["lr", "depth", "train.epochs", "score", "eval.acc"]


def test_sort_mixed_types(repo: Path, store: Store) -> None:
    put_record(store, "text", created=1, metrics={"m.json": {"v": "high"}})
    put_record(store, "nan", created=2, metrics={"m.json": {"v": math.nan}})
    put_record(store, "two", created=3, metrics={"m.json": {"v": 2}})
    put_record(store, "one", created=4, metrics={"m.json": {"v": 1.5}})
    table = build_table(load_rows(store, str(repo)), sort_by="v")
    assert [row.name for row in table.rows] == [
        BASELINE_NAME,
        "one",
        "two",
        "text",
        "nan",
    ]


def test_sort_by_unknown_lists_known(repo: Path, swept: Store) -> None:
    with pytest.raises(UnknownColumn) as exc:
        build_table(load_rows(swept, str(repo)), sort_by="accuracy")
    message = exc.value.message
    assert "'accuracy'" in message
    assert "Known metrics: score, eval.acc." in message
    assert "lr" in message
    assert exc.value.exit_code == 2


def test_ambiguous_name_lists_files(repo: Path, store: Store) -> None:
    put_record(
        store,
        "a",
        created=1,
        metrics={"train.json": {"loss": 1.0}, "test.json": {"loss": 2.0}},
    )
    table = build_table(load_rows(store, str(repo)))
    with pytest.raises(UnknownColumn, match="test.json:loss, train.json:loss"):
        find_column(table.all_columns, "loss")
    assert find_column(table.all_columns, "test.json:loss").file == "test.json"


def test_metric_wins_over_param(repo: Path, store: Store) -> None:
    put_record(
        store, "a", created=1, params={"p.yaml": {"n": 1}}, metrics={"m.json": {"n": 2}}
    )
    table = build_table(load_rows(store, str(repo)), all_params=True)
    assert find_column(table.all_columns, "n").kind == "metrics"
    assert find_column(table.all_columns, "n", kinds=("params",)).kind == "params"


# -- formats ---------------------------------------------------------------------


def test_format_values() -> None:
    assert format_value(0.123456789) == "0.12346"
    assert format_value(0.123456789, 2) == "0.12"
    assert format_value(123456789.0, 3) == "1.23e+08"
    assert format_value(10) == "10"
    assert format_value(True) == "true"
    assert format_value(None) == "null"
    assert format_value([64, 32]) == "[64,32]"
    assert format_value("adam") == "adam"


@pytest.mark.parametrize("precision", [0, -1, 18])
def test_bad_precision(precision: int) -> None:
    with pytest.raises(Exception, match="invalid precision") as exc:
        check_precision(precision)
    assert getattr(exc.value, "exit_code", None) == 2


def test_text_aligned(repo: Path, swept: Store) -> None:
    text = render_text(build_table(load_rows(swept, str(repo))))
    lines = text.splitlines()
    assert lines[0].split() == [
        "name",
        "status",
        "created",
        "lr",
        "depth",
        "score",
        "eval.acc",
    ]
    assert len(lines) == 6
    assert lines[4].split()[:2] == ["exp-2", "failed"]
    assert lines[4].split()[-2:] == ["-", "-"]
    # Numbers are right-aligned, so every line ends at the same column.
    assert len({len(line) for line in lines}) == 1


def test_json_shape(repo: Path, swept: Store) -> None:
    document = json.loads(render_json(build_table(load_rows(swept, str(repo)))))
    assert isinstance(document, list)
    assert [item["name"] for item in document] == [
        BASELINE_NAME,
        "exp-0",
        "exp-1",
        "exp-2",
        "exp-3",
    ]
    baseline, first = document[0], document[1]
    assert baseline["status"] == "baseline"
    assert baseline["created"] is None
    assert baseline["metrics"] == {"score.json": {"score": 0.2, "eval.acc": 0.9}}
    assert first["status"] == "success"
    assert first["base"] == BASE_COMMIT
    assert first["created"] == "2027-01-15T08:00:00.000+00:00"
    assert first["params"] == {
        "params.yaml": {"depth": 2, "lr": 0.1, "train.epochs": 10}
    }
    assert first["metrics"]["score.json"]["score"] == pytest.approx(0.2)
    assert document[3]["error"] == "train failed with exit status 1"


def test_json_non_finite(repo: Path, store: Store) -> None:
    put_record(
        store, "a", created=1, metrics={"m.json": {"loss": math.nan, "g": math.inf}}
    )
    text = render_json(build_table(load_rows(store, str(repo))))
    document = json.loads(text)
    assert document[1]["metrics"]["m.json"] == {"loss": "nan", "g": "inf"}
    assert "NaN" not in text


def test_csv_full_precision(repo: Path, swept: Store) -> None:
    text = render_csv(build_table(load_rows(swept, str(repo))))
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == [
        "name",
        "status",
        "created",
        "base",
        "lr",
        "depth",
        "score",
        "eval.acc",
    ]
    exp3 = rows[5]
    assert exp3[0] == "exp-3"
    assert exp3[6] == repr(0.2 * 3)
    assert rows[4][6] == ""


def test_markdown_headers(repo: Path, swept: Store) -> None:
    text = render_markdown(build_table(load_rows(swept, str(repo))), precision=3)
    lines = text.splitlines()
    assert lines[0] == "| name | status | created | lr | depth | score | eval.acc |"
    assert lines[1] == "| --- | --- | --- | ---: | ---: | ---: | ---: |"
    assert "| exp-3 | success |" in lines[6]
    assert lines[6].endswith("| 0.2 | 3 | 0.6 | 0.93 |")


def test_markdown_escapes_pipes(repo: Path, store: Store) -> None:
    put_record(store, "a", created=1, params={"p.yaml": {"sep": "a|b"}})
    put_record(store, "b", created=2, params={"p.yaml": {"sep": "c"}})
    text = render_markdown(build_table(load_rows(store, str(repo))))
    assert "a\\|b" in text


def test_rich_keeps_brackets(
    repo: Path, store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    put_record(
        store, "a", created=1, status="success", params={"p.yaml": {"tag": "[red]x"}}
    )
    put_record(store, "b", created=2, status="failed", params={"p.yaml": {"tag": "y"}})
    print_rich(build_table(load_rows(store, str(repo))))
    out = capsys.readouterr().out
    assert "[red]x" in out
    assert "failed" in out


# -- compare ---------------------------------------------------------------------


@pytest.fixture
def snapshots(repo: Path, store: Store) -> tuple[str, str]:
    folder = repo / "result"
    (folder / "data").mkdir(parents=True)
    for i in range(20):
        (folder / "data" / f"part{i}.txt").write_text(f"{i}\n")
    (folder / "model.txt").write_text("0.1 2\n")
    old = snapshot_path(store, str(folder))
    (folder / "model.txt").write_text("0.2 3\n")
    (folder / "data" / "part3.txt").unlink()
    (folder / "extra.txt").write_text("new\n")
    new = snapshot_path(store, str(folder))
    return old, new


def test_compare_deltas_and_files(
    repo: Path, swept: Store, snapshots: tuple[str, str]
) -> None:
    put_record(
        swept,
        "old",
        created=1,
        result=snapshots[0],
        params={"params.yaml": {"lr": 0.1, "opt": "sgd"}},
        metrics={"m.json": {"acc": 0.5, "steps": 10}},
    )
    put_record(
        swept,
        "new",
        created=2,
        result=snapshots[1],
        params={"params.yaml": {"lr": 0.2, "opt": "adam"}},
        metrics={"m.json": {"acc": 0.75, "steps": 7}},
    )
    comparison = compare(swept, str(repo), "old", "new")
    by_key = {change.column.key: change for change in comparison.values}
    assert by_key["lr"].delta == pytest.approx(0.1)
    assert by_key["opt"].delta is None
    assert by_key["opt"].changed
    assert by_key["acc"].delta == pytest.approx(0.25)
    assert by_key["steps"].delta == -3
    assert [(f.status, f.path) for f in comparison.files or []] == [
        ("D", "data/part3.txt"),
        ("A", "extra.txt"),
        ("M", "model.txt"),
    ]


def test_compare_without_result_uses_base(
    repo: Path, store: Store, snapshots: tuple[str, str]
) -> None:
    put_record(store, "queued", created=1, status="queued", base=snapshots[0])
    put_record(store, "done", created=2, result=snapshots[1], base=snapshots[0])
    comparison = compare(store, str(repo), "queued", "done")
    assert comparison.old_snapshot == snapshots[0]
    assert len(comparison.files or []) == 3


def test_compare_cost_follows_change(
    repo: Path, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = repo / "big"
    for i in range(50):
        sub = folder / f"dir{i}"
        sub.mkdir(parents=True)
        for j in range(20):
            (sub / f"f{j}").write_text(f"{i} {j}\n")
    old = snapshot_path(store, str(folder))
    (folder / "dir7" / "f3").write_text("changed\n")
    new = snapshot_path(store, str(folder))
    put_record(store, "a", created=1, result=old)
    put_record(store, "b", created=2, result=new)
    reads = []
    real_get_tree = Store.get_tree
    monkeypatch.setattr(
        Store, "get_tree", lambda self, d: reads.append(d) or real_get_tree(self, d)
    )
    comparison = compare(store, str(repo), "a", "b")
    assert [(f.status, f.path) for f in comparison.files or []] == [("M", "dir7/f3")]
    # The two roots and the two versions of dir7, not the 49 equal folders.
    assert len(reads) == 4


def test_compare_unchanged_hidden(repo: Path, swept: Store) -> None:
    comparison = compare(swept, str(repo), "exp-0", "exp-1")
    text = render_diff_text(comparison)
    assert "train.epochs" not in text
    assert "lr" in text
    full = render_diff_text(comparison, include_unchanged=True)
    assert "train.epochs" in full


def test_diff_text_table(repo: Path, swept: Store) -> None:
    text = render_diff_text(compare(swept, str(repo), "exp-0", "exp-3"))
    lines = text.splitlines()
    assert lines[0].split() == ["kind", "name", "exp-0", "exp-3", "change"]
    assert ["param", "depth", "2", "3", "+1"] in [line.split() for line in lines]
    assert ["metric", "score", "0.2", "0.6", "+0.4"] in [line.split() for line in lines]
    assert "files: 0 files differ" in text


def test_diff_markdown(repo: Path, swept: Store) -> None:
    text = render_diff_markdown(compare(swept, str(repo), "exp-0", "exp-3"))
    assert text.startswith("| kind | name | exp-0 | exp-3 | change |\n")
    assert "| metric | score | 0.2 | 0.6 | +0.4 |" in text


def test_diff_json(repo: Path, swept: Store) -> None:
    document = json.loads(render_diff_json(compare(swept, str(repo), "exp-0", "exp-2")))
    assert document["old"] == "exp-0"
    assert document["new"] == "exp-2"
    depth = next(item for item in document["params"] if item["key"] == "depth")
    assert depth == {
        "file": "params.yaml",
        "key": "depth",
        "old": 2,
        "new": 3,
        "old_present": True,
        "new_present": True,
        "delta": 1,
        "changed": True,
    }
    score = next(item for item in document["metrics"] if item["key"] == "score")
    assert score["new_present"] is False
    assert score["delta"] is None
    assert document["files"] == []


def test_diff_against_workspace(repo: Path, swept: Store) -> None:
    comparison = compare(swept, str(repo), BASELINE_NAME, "exp-3")
    assert comparison.files is None
    text = render_diff_text(comparison)
    assert "not compared" in text
    assert ["metric", "score", "0.2", "0.6", "+0.4"] in [
        line.split() for line in text.splitlines()
    ]


def test_diff_unknown_experiment(repo: Path, swept: Store) -> None:
    with pytest.raises(ExperimentNotFound, match="'nope'"):
        compare(swept, str(repo), "exp-0", "nope")


def test_row_get_missing() -> None:
    row = Row("a", "success", None, 1.0, params={"p.yaml": {"x": None}})
    table = build_table([row], all_params=True)
    assert row.get(table.columns[0]) == (True, None)
