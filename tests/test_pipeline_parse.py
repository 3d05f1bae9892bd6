"""Parsing dvc.yaml: every field, templating, foreach, matrix and vars.

Expected names and values were read from DVC 3.67 on the same files
(`Repo(".").index.stages`), so these tests pin DVC's reading.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from expfs.pipeline import Stage, load_pipeline


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def load(folder: Path, text: str, **files: str) -> dict[str, Stage]:
    for name, content in files.items():
        write(folder, name.replace("__", "."), content)
    path = write(folder, "dvc.yaml", text)
    return dict(load_pipeline(path).stages)


PARAMS = """\
train:
  lr: 0.1
  layers: [8, 16]
  opts: {a: 1, flag: true, off: false, name: x y, lst: [1, 2]}
models: [m1, m2]
"""


def test_plain_stage_all_fields(tmp_path: Path) -> None:
    stages = load(
        tmp_path,
        """
        stages:
          train:
            cmd: python train.py
            wdir: .
            deps: [train.py, data]
            params: [train.lr]
            outs:
              - model.pkl
              - cache_dir:
                  cache: false
                  persist: true
            metrics:
              - scores.json:
                  cache: false
            plots:
              - loss.csv:
                  x: step
                  y: loss
            frozen: true
            always_changed: true
            desc: Train the model
            meta: {owner: ml}
        """,
        params__yaml=PARAMS,
    )
    stage = stages["train"]
    assert stage.cmd == "python train.py"
    assert [dep.path for dep in stage.deps] == ["train.py", "data"]
    assert [(p.path, p.keys) for p in stage.params] == [("params.yaml", ("train.lr",))]
    assert [(o.path, o.kind, o.cache, o.persist) for o in stage.outs] == [
        ("model.pkl", "outs", True, False),
        ("cache_dir", "outs", False, True),
        ("scores.json", "metrics", False, False),
        ("loss.csv", "plots", True, False),
    ]
    assert stage.outs[3].options == {"x": "step", "y": "loss"}
    assert stage.frozen is True
    assert stage.always_changed is True
    assert stage.desc == "Train the model"
    assert stage.meta == {"owner": "ml"}


def test_cmd_list_kept_as_list(tmp_path: Path) -> None:
    stages = load(tmp_path, "stages:\n  s:\n    cmd: [echo a, echo b]\n")
    assert stages["s"].cmd == ("echo a", "echo b")
    assert stages["s"].commands == ("echo a", "echo b")


def test_file_without_stages(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "dvc.yaml",
        """
        params: [other.yaml]
        metrics: [top.json]
        plots:
          - top.csv
          - curve:
              x: a
              y: {top.csv: b}
        """,
    )
    pipeline = load_pipeline(path)
    assert dict(pipeline.stages) == {}
    assert pipeline.params_files == ("other.yaml",)
    assert pipeline.metrics == ("top.json",)
    assert pipeline.plots[0] == "top.csv"


def test_empty_file_has_no_stages(tmp_path: Path) -> None:
    assert load(tmp_path, "") == {}


def test_interpolation_from_params_and_vars(tmp_path: Path) -> None:
    stages = load(
        tmp_path,
        """
        vars:
          - base: data
          - p.json
        stages:
          s1:
            cmd: echo ${train.lr} ${train.layers[1]} ${train.layers.0} ${j.k} ${base}
            deps:
              - ${base}/in
            outs:
              - ${base}/out
        """,
        params__yaml=PARAMS,
        p__json='{"j": {"k": 3}}',
    )
    stage = stages["s1"]
    assert stage.cmd == "echo 0.1 16 8 3 data"
    assert stage.deps[0].path == "data/in"
    assert stage.outs[0].path == "data/out"
    assert stage.template_params == {
        "params.yaml": {"train.lr": 0.1, "train.layers.1": 16, "train.layers.0": 8},
        "p.json": {"j.k": 3},
    }


def test_dict_in_cmd_becomes_options(tmp_path: Path) -> None:
    stages = load(
        tmp_path,
        "stages:\n  s2:\n    cmd: train ${train.opts}\n",
        params__yaml=PARAMS,
    )
    assert stages["s2"].cmd == "train --a 1 --flag --name 'x y' --lst 1 2"


def test_scalar_formatting_and_escape(tmp_path: Path) -> None:
    stages = load(
        tmp_path,
        r"""
        stages:
          esc:
            cmd: echo \${lr} ${nothing} ${flag} $${lr} ${small}
        """,
        params__yaml="lr: 0.5\nnothing: null\nflag: false\nsmall: 0.00001\n",
    )
    assert stages["esc"].cmd == "echo ${lr} None false $0.5 1e-05"


def test_whole_expression_keeps_type(tmp_path: Path) -> None:
    stages = load(
        tmp_path,
        """
        stages:
          s:
            cmd: echo
            frozen: ${flags.frozen}
            outs:
              - o:
                  cache: ${flags.cache}
        """,
        params__yaml="flags: {frozen: true, cache: false}\n",
    )
    assert stages["s"].frozen is True
    assert stages["s"].outs[0].cache is False


def test_foreach_list_of_scalars(tmp_path: Path) -> None:
    stages = load(
        tmp_path,
        """
        stages:
          fl:
            foreach: [a, b, 3, true]
            do:
              cmd: echo ${item}
              outs:
                - out-${item}
        """,
    )
    assert list(stages) == ["fl@a", "fl@b", "fl@3", "fl@true"]
    assert stages["fl@true"].cmd == "echo true"
    assert stages["fl@3"].outs[0].path == "out-3"


def test_foreach_list_of_mappings_uses_index(tmp_path: Path) -> None:
    stages = load(
        tmp_path,
        """
        vars:
          - recs: [{a: 1}, {a: 2}]
        stages:
          fr:
            foreach: ${recs}
            do:
              cmd: echo ${item.a}
        """,
    )
    assert {name: s.cmd for name, s in stages.items()} == {
        "fr@0": "echo 1",
        "fr@1": "echo 2",
    }


def test_foreach_list_of_lists_uses_index(tmp_path: Path) -> None:
    stages = load(
        tmp_path,
        """
        stages:
          a:
            foreach: [[1, 2], [3]]
            do:
              cmd: echo ${item[0]}
        """,
    )
    assert {name: s.cmd for name, s in stages.items()} == {
        "a@0": "echo 1",
        "a@1": "echo 3",
    }


def test_foreach_dict_binds_key_and_item(tmp_path: Path) -> None:
    stages = load(
        tmp_path,
        """
        stages:
          fd:
            foreach:
              us: {n: 1}
              eu: {n: 2}
            do:
              cmd: echo ${key} ${item.n}
              outs:
                - d-${key}
        """,
    )
    assert list(stages) == ["fd@us", "fd@eu"]
    assert stages["fd@eu"].cmd == "echo eu 2"
    assert stages["fd@eu"].outs[0].path == "d-eu"


def test_foreach_from_params_variable(tmp_path: Path) -> None:
    stages = load(
        tmp_path,
        "stages:\n  fv:\n    foreach: ${models}\n    do:\n      cmd: echo ${item}\n",
        params__yaml=PARAMS,
    )
    assert list(stages) == ["fv@m1", "fv@m2"]


def test_foreach_empty_list_gives_no_stages(tmp_path: Path) -> None:
    stages = load(
        tmp_path, "stages:\n  a:\n    foreach: []\n    do:\n      cmd: echo\n"
    )
    assert stages == {}


def test_foreach_item_shadows_var(tmp_path: Path) -> None:
    stages = load(
        tmp_path,
        """
        vars:
          - item: 1
        stages:
          a:
            foreach: [5]
            do:
              cmd: echo ${item}
        """,
    )
    assert stages["a@5"].cmd == "echo 5"


def test_matrix_names_and_values(tmp_path: Path) -> None:
    stages = load(
        tmp_path,
        """
        stages:
          mx:
            matrix:
              m: [x, y]
              n: [1, 2.5]
              c: [{q: 1}, [1, 2]]
              b: [true]
            cmd: echo ${item.m} ${item.n} ${item.b}
        """,
    )
    assert list(stages) == [
        "mx@x-1-c0-true",
        "mx@x-1-c1-true",
        "mx@x-2.5-c0-true",
        "mx@x-2.5-c1-true",
        "mx@y-1-c0-true",
        "mx@y-1-c1-true",
        "mx@y-2.5-c0-true",
        "mx@y-2.5-c1-true",
    ]
    assert stages["mx@y-2.5-c0-true"].cmd == "echo y 2.5 true"


def test_matrix_axis_from_variable(tmp_path: Path) -> None:
    stages = load(
        tmp_path,
        """
        stages:
          t:
            matrix:
              model: ${models}
              lr: [1, 2]
            cmd: train ${item.model} ${item.lr}
        """,
        params__yaml=PARAMS,
    )
    assert list(stages) == ["t@m1-1", "t@m1-2", "t@m2-1", "t@m2-2"]


def test_vars_file_with_key_and_stage_vars(tmp_path: Path) -> None:
    stages = load(
        tmp_path,
        """
        vars:
          - other.yaml:x
          - mdir: m
        stages:
          sv:
            vars:
              - local: 7
            cmd: echo ${local} ${x.z}
        """,
        other__yaml="x:\n  y: 1\n  z: 2\nw: 9\n",
    )
    assert stages["sv"].cmd == "echo 7 2"


def test_vars_file_key_selects_only_that_key(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="template variable 'w' is not defined"):
        load(
            tmp_path,
            "vars:\n  - other.yaml:x\nstages:\n  s:\n    cmd: echo ${w}\n",
            other__yaml="x: 1\nw: 9\n",
        )


def test_vars_mappings_merge(tmp_path: Path) -> None:
    stages = load(
        tmp_path,
        """
        vars:
          - other.yaml
          - x: {q: 1}
        stages:
          a:
            cmd: echo ${x.q} ${x.y}
        """,
        other__yaml="x: {y: 5}\n",
    )
    assert stages["a"].cmd == "echo 1 5"


def test_templated_paths_params_and_keys(tmp_path: Path) -> None:
    stages = load(
        tmp_path,
        """
        vars:
          - mdir: m
        stages:
          esc:
            cmd: echo
            wdir: sub
            outs:
              - ${mdir}/m.json:
                  cache: false
                  persist: true
            params:
              - lr
              - other.yaml:
                 - x.y
              - pp.py: []
              - ${mdir}.yaml:
                 - ${mdir}
        """,
    )
    stage = stages["esc"]
    assert stage.wdir == "sub"
    assert stage.outs[0].path == "m/m.json"
    assert stage.outs[0].workspace_path == "sub/m/m.json"
    assert stage.to_json()["params"] == {
        "params.yaml": ["lr"],
        "other.yaml": ["x.y"],
        "pp.py": [],
        "m.yaml": ["m"],
    }
    assert stage.params[2].keys is None
    assert stage.params[1].workspace_path == "sub/other.yaml"


def test_whole_params_file_drops_its_keys(tmp_path: Path) -> None:
    stages = load(
        tmp_path,
        """
        stages:
          s:
            cmd: echo
            params:
              - lr
              - params.yaml: []
        """,
    )
    assert [(p.path, p.keys) for p in stages["s"].params] == [("params.yaml", None)]


def test_stage_in_subfolder_pipeline(tmp_path: Path) -> None:
    write(tmp_path, "sub/params.yaml", "n: 3\n")
    path = write(
        tmp_path,
        "sub/dvc.yaml",
        "stages:\n  s:\n    cmd: echo ${n}\n    wdir: ..\n    outs: [o]\n",
    )
    stage = load_pipeline(path, root=tmp_path).stages["s"]
    assert stage.cmd == "echo 3"
    assert stage.workspace_wdir == "."
    assert stage.outs[0].workspace_path == "o"


def test_to_json_round_trips(tmp_path: Path) -> None:
    stages = load(
        tmp_path,
        """
        stages:
          s:
            cmd: [a, b]
            deps: [d]
            outs: [{o: {cache: false, remote: r}}]
            metrics: [m.json]
            plots: [{p.csv: {x: a}}]
        """,
    )
    data: dict[str, Any] = json.loads(json.dumps(stages["s"].to_json()))
    assert data["cmd"] == ["a", "b"]
    assert data["outs"] == [
        {"path": "o", "cache": False, "persist": False, "push": True, "remote": "r"}
    ]
    assert data["metrics"][0]["path"] == "m.json"
    assert data["plots"][0]["x"] == "a"
