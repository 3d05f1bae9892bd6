"""Bad stage files: each error names the file and line, the stage and the value."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from expfs.errors import UsageError
from expfs.pipeline import load_pipeline
from expfs.pipeline.errors import (
    DagError,
    ParamsError,
    PathOutsideWorkspace,
    StageFileError,
    TemplateError,
)
from expfs.pipeline.params import read_stage_params
from expfs.pipeline.paths import check_inside


def load_text(folder: Path, text: str) -> None:
    path = folder / "dvc.yaml"
    path.write_text(textwrap.dedent(text))
    load_pipeline(path)


def error_of(folder: Path, text: str) -> UsageError:
    with pytest.raises(UsageError) as info:
        load_text(folder, text)
    return info.value


def test_malformed_yaml_names_file_and_line(tmp_path: Path) -> None:
    exc = error_of(tmp_path, "stages:\n  a:\n    cmd: echo\n    deps: [${x}/in]\n")
    assert isinstance(exc, StageFileError)
    assert f"{tmp_path / 'dvc.yaml'}:4: malformed YAML" in str(exc)


def test_duplicate_key_names_line(tmp_path: Path) -> None:
    exc = error_of(tmp_path, "stages:\n  a:\n    cmd: echo\n    cmd: again\n")
    assert "dvc.yaml:4: duplicate key 'cmd'" in str(exc)


def test_unknown_stage_field_lists_valid(tmp_path: Path) -> None:
    exc = error_of(tmp_path, "stages:\n  train:\n    cmd: echo\n    dep: [a]\n")
    message = str(exc)
    assert "dvc.yaml:4: stage 'train' has an unknown field 'dep'" in message
    assert "valid fields are cmd, wdir, deps, params, outs" in message


def test_unknown_field_in_foreach_body(tmp_path: Path) -> None:
    exc = error_of(
        tmp_path,
        """
        stages:
          a:
            foreach: [1]
            do:
              cmd: echo
              outz: [o]
        """,
    )
    assert "stage 'a@1' has an unknown field 'outz'" in str(exc)


def test_foreach_with_extra_field(tmp_path: Path) -> None:
    exc = error_of(
        tmp_path,
        "stages:\n  a:\n    foreach: [1]\n    do: {cmd: echo}\n    outs: [p]\n",
    )
    assert "stage 'a' has an unknown field 'outs'; valid fields are foreach, do" in str(
        exc
    )


def test_unknown_top_level_field(tmp_path: Path) -> None:
    exc = error_of(tmp_path, "stage:\n  a:\n    cmd: echo\n")
    assert "unknown top-level field 'stage'" in str(exc)


def test_missing_cmd(tmp_path: Path) -> None:
    exc = error_of(tmp_path, "stages:\n  a:\n    outs: [x]\n")
    assert "stage 'a' has no 'cmd'" in str(exc)


def test_unknown_output_flag(tmp_path: Path) -> None:
    exc = error_of(
        tmp_path,
        "stages:\n  a:\n    cmd: echo\n    outs:\n      - o: {cache: false, bogus: 1}\n",
    )
    assert "output 'o' has an unknown flag 'bogus'" in str(exc)


def test_flag_of_wrong_type(tmp_path: Path) -> None:
    exc = error_of(
        tmp_path, "stages:\n  a:\n    cmd: echo\n    outs:\n      - o: {cache: 'no'}\n"
    )
    assert "flag 'cache' of output 'o' must be a bool, not 'no'" in str(exc)


def test_deps_not_a_list(tmp_path: Path) -> None:
    exc = error_of(tmp_path, "stages:\n  a:\n    cmd: echo\n    deps: a.txt\n")
    assert "stage 'a': deps must be a list, not str 'a.txt'" in str(exc)


def test_undefined_variable_names_it_and_stage(tmp_path: Path) -> None:
    exc = error_of(tmp_path, "stages:\n  build:\n    cmd: echo ${nope.deep}\n")
    assert isinstance(exc, TemplateError)
    message = str(exc)
    assert "dvc.yaml:3: stage 'build': cmd" in message
    assert "template variable 'nope.deep' is not defined" in message


def test_undefined_nested_key_names_defined_prefix(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("train: {lr: 1}\n")
    exc = error_of(tmp_path, "stages:\n  b:\n    cmd: echo ${train.lrr}\n")
    assert "'train.lrr' is not defined ('train' is defined)" in str(exc)


def test_list_into_string_rejected(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("files: [a, b]\n")
    exc = error_of(tmp_path, "stages:\n  b:\n    cmd: echo ${files}\n")
    assert "'files' is a list, which cannot be interpolated" in str(exc)


def test_mapping_outside_cmd_rejected(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("d: {a: 1}\n")
    exc = error_of(tmp_path, "stages:\n  b:\n    cmd: echo\n    deps:\n      - ${d}\n")
    assert "'d' is a mapping, which can be interpolated only into cmd" in str(exc)


def test_vars_redefinition(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("lr: 1\n")
    exc = error_of(tmp_path, "vars:\n  - lr: 3\nstages:\n  a:\n    cmd: echo\n")
    assert (
        "cannot redefine 'lr' from 'vars[0]': it is already defined in 'params.yaml'"
        in str(exc)
    )


def test_missing_vars_file(tmp_path: Path) -> None:
    exc = error_of(tmp_path, "vars:\n  - nothere.json\nstages: {}\n")
    assert isinstance(exc, ParamsError)
    assert "dvc.yaml:2: vars: params file" in str(exc)
    assert "nothere.json' not found" in str(exc)


def test_missing_vars_key(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text("a: 1\n")
    exc = error_of(tmp_path, "vars:\n  - p.yaml:b\nstages: {}\n")
    assert "vars: key 'b' not found in 'p.yaml'" in str(exc)


@pytest.mark.parametrize(
    ("field", "path", "what"),
    [
        ("outs", "../escape", "output"),
        ("outs", "/abs/out", "output"),
        ("metrics", "sub/../../m.json", "output"),
        ("deps", "../../elsewhere", "dependency"),
    ],
)
def test_path_leaving_workspace(
    tmp_path: Path, field: str, path: str, what: str
) -> None:
    exc = error_of(
        tmp_path, f"stages:\n  bad:\n    cmd: echo\n    {field}: ['{path}']\n"
    )
    assert isinstance(exc, PathOutsideWorkspace)
    assert f"stage 'bad': {what} '{path}' is absolute or leaves the workspace" in str(
        exc
    )


def test_wdir_leaving_workspace(tmp_path: Path) -> None:
    exc = error_of(tmp_path, "stages:\n  bad:\n    cmd: echo\n    wdir: ..\n")
    assert "stage 'bad': wdir '..' is absolute or leaves the workspace" in str(exc)


def test_output_is_whole_workspace(tmp_path: Path) -> None:
    exc = error_of(tmp_path, "stages:\n  bad:\n    cmd: echo\n    outs: [sub/..]\n")
    assert "output 'sub/..' is the whole workspace" in str(exc)


def test_invalid_stage_name(tmp_path: Path) -> None:
    exc = error_of(tmp_path, "stages:\n  a@b:\n    cmd: echo\n")
    assert "invalid stage name 'a@b'" in str(exc)


def test_foreach_without_do(tmp_path: Path) -> None:
    exc = error_of(tmp_path, "stages:\n  a:\n    foreach: [1]\n")
    assert "stage 'a' has 'foreach' but no 'do' mapping" in str(exc)


def test_foreach_undefined_source(tmp_path: Path) -> None:
    exc = error_of(tmp_path, "stages:\n  a:\n    foreach: ${nope}\n    do: {cmd: x}\n")
    assert "stage 'a': foreach: template variable 'nope' is not defined" in str(exc)


def test_matrix_axis_not_a_list(tmp_path: Path) -> None:
    exc = error_of(tmp_path, "stages:\n  a:\n    matrix: {x: 1}\n    cmd: echo\n")
    assert "matrix axis 'x' must be a list" in str(exc)


def test_dag_errors_are_stage_file_errors(tmp_path: Path) -> None:
    exc = error_of(
        tmp_path,
        "stages:\n  a:\n    cmd: x\n    outs: [o]\n  b:\n    cmd: y\n    outs: [o]\n",
    )
    assert isinstance(exc, DagError)


def test_check_inside_follows_symlinks(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    outside = tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    os.symlink(outside, root / "link")
    (root / "real").mkdir()
    assert check_inside(root, "real/new.txt") == root.resolve() / "real/new.txt"
    with pytest.raises(PathOutsideWorkspace, match="path 'link/model.pkl' resolves"):
        check_inside(root, "link/model.pkl")
    with pytest.raises(PathOutsideWorkspace, match="outside the workspace"):
        check_inside(root, "../outside")


PARAMS_STAGE = """\
stages:
  train:
    cmd: echo
    params:
      - lr
      - other.yaml:
          - x
          - y
      - params.yaml: [depth, nope]
"""


def params_error(folder: Path) -> str:
    path = folder / "dvc.yaml"
    path.write_text(PARAMS_STAGE)
    stage = load_pipeline(path).stages["train"]
    with pytest.raises(ParamsError) as info:
        read_stage_params(stage, folder)
    return info.value.message


def test_unknown_param_names_its_line(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("lr: 1\ndepth: 2\n")
    (tmp_path / "other.yaml").write_text("x: 1\ny: 2\n")
    message = params_error(tmp_path)
    assert message.startswith(f"{tmp_path / 'dvc.yaml'}:9: stage 'train': ")
    assert "param 'nope' not found in 'params.yaml'" in message
    assert "add it to the file or remove it from the stage" in message

    (tmp_path / "params.yaml").write_text("lr: 1\ndepth: 2\nnope: 3\n")
    (tmp_path / "other.yaml").write_text("x: 1\n")
    message = params_error(tmp_path)
    assert message.startswith(f"{tmp_path / 'dvc.yaml'}:8: stage 'train': ")
    assert "param 'y' not found in 'other.yaml'" in message

    (tmp_path / "params.yaml").write_text("depth: 2\n")
    message = params_error(tmp_path)
    assert message.startswith(f"{tmp_path / 'dvc.yaml'}:5: stage 'train': ")
    assert "param 'lr' not found in 'params.yaml'" in message


def test_missing_params_file_names_its_line(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("lr: 1\ndepth: 2\nnope: 3\n")
    message = params_error(tmp_path)
    assert message.startswith(f"{tmp_path / 'dvc.yaml'}:6: stage 'train': ")
    assert "other.yaml' not found" in message


@pytest.mark.parametrize(
    ("field", "second_item", "name"),
    [
        ("deps", "${nope}.txt", "deps[1]"),
        ("outs", "${nope}.txt", "outs[1]"),
        ("metrics", "${nope}.json", "metrics[1]"),
        ("plots", "${nope}.csv", "plots[1]"),
        ("params", "${nope}", "params[1]"),
        ("cmd", "echo ${nope}", "cmd[1]"),
    ],
)
def test_template_error_in_second_item_line(
    tmp_path: Path, field: str, second_item: str, name: str
) -> None:
    (tmp_path / "params.yaml").write_text("lr: 1\n")
    cmd = "" if field == "cmd" else "    cmd: echo\n"
    text = f"stages:\n  a:\n{cmd}    {field}:\n      - first\n      - '{second_item}'\n"
    exc = error_of(tmp_path, text)
    line = text.splitlines().index(f"      - '{second_item}'") + 1
    assert f"dvc.yaml:{line}: stage 'a': {name}: template variable 'nope'" in str(exc)


def test_template_error_in_output_key_line(tmp_path: Path) -> None:
    text = (
        "stages:\n  a:\n    cmd: echo\n    metrics:\n      - m.json:\n"
        "          cache: false\n      - ${nope}.json:\n          cache: false\n"
    )
    exc = error_of(tmp_path, text)
    assert "dvc.yaml:7: stage 'a': metrics[1].${nope}.json: template" in str(exc)


def test_template_error_in_output_flag_line(tmp_path: Path) -> None:
    text = "stages:\n  a:\n    cmd: echo\n    plots:\n      - p.csv:\n          x: ${nope}\n"
    exc = error_of(tmp_path, text)
    assert "dvc.yaml:6: stage 'a': plots[0].p.csv.x: template" in str(exc)
