"""`expfs stage list`, compared with DVC 3.67's reading of the same file."""

from __future__ import annotations

import json
import os
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from expfs_cli.main import main

STAGE_FILE = """\
vars:
  - mdir: m
stages:
  prep:
    cmd: python prep.py ${train.lr}
    deps: [prep.py]
    params: [train.lr]
    outs:
      - ${mdir}/data
  train:
    cmd: [python train.py, echo done]
    wdir: sub
    deps: [../m/data]
    params:
      - other.yaml: [x.y]
      - pp.py: []
    outs:
      - model.pkl:
          cache: false
          persist: true
    metrics: [{scores.json: {cache: false}}]
    plots: [{loss.csv: {x: step, y: loss}}]
    frozen: true
    always_changed: true
    desc: Train it
    meta: {owner: ml}
  fan:
    foreach: [a, b]
    do:
      cmd: echo ${item}
"""


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Path]:
    (tmp_path / "dvc.yaml").write_text(STAGE_FILE)
    (tmp_path / "params.yaml").write_text("train: {lr: 0.1}\n")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    yield tmp_path
    os.chdir(cwd)


def test_list_json_matches_dvc(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["stage", "list", "--json"]) == 0
    stages = json.loads(capsys.readouterr().out)
    assert [s["name"] for s in stages] == ["prep", "train", "fan@a", "fan@b"]
    prep, train, fan_a = stages[0], stages[1], stages[2]
    assert prep["cmd"] == "python prep.py 0.1"
    assert prep["params"] == {"params.yaml": ["train.lr"]}
    assert prep["outs"][0]["path"] == "m/data"
    assert train["cmd"] == ["python train.py", "echo done"]
    assert train["wdir"] == "sub"
    assert train["deps"] == ["../m/data"]
    assert train["params"] == {"other.yaml": ["x.y"], "pp.py": []}
    assert train["outs"] == [
        {"path": "model.pkl", "cache": False, "persist": True, "push": True}
    ]
    assert train["metrics"][0]["cache"] is False
    assert train["plots"][0] == {
        "path": "loss.csv",
        "cache": True,
        "persist": False,
        "push": True,
        "x": "step",
        "y": "loss",
    }
    assert train["frozen"] is True
    assert train["always_changed"] is True
    assert train["desc"] == "Train it"
    assert train["meta"] == {"owner": "ml"}
    assert fan_a["cmd"] == "echo a"


def test_list_text(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stage", "list"]) == 0
    out = capsys.readouterr().out
    assert "train (frozen)" in out
    assert "  outs: model.pkl (cache: false, persist: true)" in out
    assert "  params pp.py: (all)" in out


def test_list_reports_bad_input(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (project / "dvc.yaml").write_text(
        textwrap.dedent(
            """\
            stages:
              bad:
                cmd: echo
                outs: [../escape]
            """
        )
    )
    assert main(["stage", "list"]) == 2
    err = capsys.readouterr().err
    assert "stage 'bad': output '../escape' is absolute or leaves the workspace" in err
    assert "Traceback" not in err


def test_list_named_file(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (project / "other.yaml").write_text("stages:\n  only:\n    cmd: echo\n")
    assert main(["stage", "list", "--file", "other.yaml", "--json"]) == 0
    assert [s["name"] for s in json.loads(capsys.readouterr().out)] == ["only"]
