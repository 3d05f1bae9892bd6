"""`-S [file:]key=value` overrides: parsing, sweeps, and writing every format."""

from __future__ import annotations

import difflib
import json
import logging
import tomllib
from pathlib import Path

import pytest
import yaml

from expfs.pipeline.errors import OverrideError
from expfs.pipeline.overrides import apply_overrides, expand_sweeps, parse_override
from expfs.pipeline.params import read_params


def apply(folder: Path, *texts: str) -> Path:
    out = folder / "out"
    apply_overrides([parse_override(t) for t in texts], folder, out)
    return out


def test_parse_forms() -> None:
    plain = parse_override("train.lr=0.1")
    assert (plain.file, plain.key, plain.action, plain.values) == (
        "params.yaml",
        "train.lr",
        "set",
        (0.1,),
    )
    with_file = parse_override("params.py:Model.depth=4")
    assert (with_file.file, with_file.parts, with_file.value) == (
        "params.py",
        ("Model", "depth"),
        4,
    )
    assert parse_override("+new=1").action == "add"
    assert parse_override("++new=1").action == "force_add"
    assert parse_override("~old").action == "delete"
    assert parse_override("p.json:~old").file == "p.json"
    assert parse_override("p.json:+a.b=1").action == "add"
    assert parse_override("layers[1]=64").parts == ("layers", 1)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("a=0.1", 0.1),
        ("a=true", True),
        ("a='0.1'", "0.1"),
        ("a=yes", "yes"),
        ("a=null", None),
        ("a=", ""),
        ("a=[1, 2]", [1, 2]),
        ("a={x: 1}", {"x": 1}),
        ("a=hello world", "hello world"),
    ],
)
def test_values_read_as_yaml(text: str, value: object) -> None:
    assert parse_override(text).value == value


def test_sweeps_expand_to_product() -> None:
    combos = expand_sweeps(
        [
            parse_override("lr=0.01,0.1"),
            parse_override("depth=4,8"),
            parse_override("x=1"),
        ]
    )
    values = [tuple(o.value for o in combo) for combo in combos]
    assert values == [(0.01, 4, 1), (0.01, 8, 1), (0.1, 4, 1), (0.1, 8, 1)]


def test_sweep_functions_and_brackets() -> None:
    assert parse_override("a=choice(x, [1, 2])").values == ("x", [1, 2])
    assert parse_override("a=range(3)").values == (0, 1, 2)
    assert parse_override("a=range(1, 7, 2)").values == (1, 3, 5)
    assert parse_override("a=[1,2],'b,c'").values == ([1, 2], "b,c")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("novalue", "expected [file:]key=value"),
        ("a..b=1", "'a..b' is not a key"),
        ("p.ini:a=1", "unsupported suffix '.ini'"),
        ("a={x", "is not a valid YAML value"),
        ("a=range(0, 3, 0)", "range takes 1 to 3 numbers"),
    ],
)
def test_malformed_overrides(text: str, fragment: str) -> None:
    with pytest.raises(
        OverrideError, match=fragment.replace("[", "\\[").replace("(", "\\(")
    ):
        parse_override(text)


def test_yaml_nested_and_list_item(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("train:\n  lr: 0.1\n  layers: [8, 16]\n")
    out = apply(tmp_path, "train.lr=0.01", "train.layers[1]=64", "+train.new=x")
    assert yaml.safe_load((out / "params.yaml").read_text()) == {
        "train": {"lr": 0.01, "layers": [8, 64], "new": "x"}
    }
    assert "lr: 0.1" in (tmp_path / "params.yaml").read_text()


def test_json_keeps_indent(tmp_path: Path) -> None:
    (tmp_path / "p.json").write_text('{\n    "a": {"b": 1}, "c": [1]\n}\n')
    out = apply(tmp_path, "p.json:a.b=2", "p.json:~c")
    text = (out / "p.json").read_text()
    assert json.loads(text) == {"a": {"b": 2}}
    assert '\n    "a"' in text


def test_toml_table(tmp_path: Path) -> None:
    (tmp_path / "p.toml").write_text("[train]\nlr = 0.1\n[train.opt]\nname = 'sgd'\n")
    out = apply(tmp_path, "p.toml:train.opt.name=adam", "p.toml:++train.depth=3")
    assert tomllib.loads((out / "p.toml").read_text()) == {
        "train": {"lr": 0.1, "opt": {"name": "adam"}, "depth": 3}
    }


def test_toml_rejects_null(tmp_path: Path) -> None:
    (tmp_path / "p.toml").write_text("a = 1\n")
    with pytest.raises(OverrideError, match="TOML has no null"):
        apply(tmp_path, "p.toml:a=null")


PYTHON = """\
# top comment
LR = 0.1  # learning rate
TRAIN = {"layers": [8, 16], "opt": {"name": "sgd"}}


class Model:
    depth = 3

    def __init__(self):
        self.width = 10
"""


def test_python_edits_keep_comments(tmp_path: Path) -> None:
    (tmp_path / "p.py").write_text(PYTHON)
    out = apply(
        tmp_path,
        "p.py:LR=0.5",
        "p.py:TRAIN.layers[1]=64",
        "p.py:Model.depth=4",
        "p.py:Model.width=7",
        "p.py:+Model.extra=x",
        "p.py:+NEW.a=1",
        "p.py:~TRAIN.opt.name",
    )
    text = (out / "p.py").read_text()
    assert "LR = 0.5  # learning rate" in text
    assert text.startswith("# top comment\n")
    assert read_params(out / "p.py") == {
        "LR": 0.5,
        "TRAIN": {"layers": [8, 64], "opt": {}},
        "Model": {"depth": 4, "width": 7, "extra": "x"},
        "NEW": {"a": 1},
    }


def test_python_delete_constant(tmp_path: Path) -> None:
    (tmp_path / "p.py").write_text(PYTHON)
    out = apply(tmp_path, "p.py:~LR")
    assert "LR" not in read_params(out / "p.py")
    assert "TRAIN" in read_params(out / "p.py")


@pytest.mark.parametrize("name", ["params.yaml", "p.json", "p.toml", "p.py"])
def test_unknown_key_names_key_and_file(tmp_path: Path, name: str) -> None:
    contents = {
        "params.yaml": "a: {b: 1}\n",
        "p.json": '{"a": {"b": 1}}',
        "p.toml": "[a]\nb = 1\n",
        "p.py": "a = {'b': 1}\n",
    }
    (tmp_path / name).write_text(contents[name])
    prefix = "" if name == "params.yaml" else f"{name}:"
    with pytest.raises(OverrideError) as info:
        apply(tmp_path, f"{prefix}a.c=2")
    assert f"param 'a.c' not found in '{name}'" in str(info.value)
    assert not (tmp_path / "out").exists()


def test_add_existing_key_rejected(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("a: 1\n")
    with pytest.raises(OverrideError, match="key 'a' already exists"):
        apply(tmp_path, "+a=2")


def test_missing_params_file_named(tmp_path: Path) -> None:
    with pytest.raises(OverrideError, match="params file 'p.json' not found"):
        apply(tmp_path, "p.json:a=1")


def test_sweep_must_be_expanded_first(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("a: 1\n")
    with pytest.raises(OverrideError, match="has several values"):
        apply(tmp_path, "a=1,2")


def test_applies_in_place(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("a: 1\n")
    apply_overrides([parse_override("a=2")], tmp_path, tmp_path)
    assert read_params(tmp_path / "params.yaml") == {"a": 2}


def test_python_delete_missing_parent(tmp_path: Path) -> None:
    (tmp_path / "p.py").write_text(PYTHON)
    with pytest.raises(OverrideError, match="param 'LR.x' not found in 'p.py'"):
        apply(tmp_path, "p.py:~LR.x")
    with pytest.raises(OverrideError, match="param 'NOPE.x' not found in 'p.py'"):
        apply(tmp_path, "p.py:~NOPE.x")


PARAMS_YAML = """\
# Training parameters
train:
  lr: 0.1  # learning rate
  name: 'resnet'
  layers: [8, 16]
  opt:
    kind: sgd
    momentum: 0.9

# Evaluation
eval:
  batch: 32
  splits:
    - val
    - test
"""


def diff_lines(before: str, after: str) -> tuple[list[str], list[str]]:
    """Return the lines removed from and added to `before`."""
    diff = list(difflib.ndiff(before.splitlines(), after.splitlines()))
    removed = [line[2:] for line in diff if line.startswith("- ")]
    added = [line[2:] for line in diff if line.startswith("+ ")]
    return removed, added


def edit_params_yaml(folder: Path, *texts: str) -> str:
    (folder / "params.yaml").write_text(PARAMS_YAML)
    return (apply(folder, *texts) / "params.yaml").read_text()


@pytest.mark.parametrize(
    ("override", "old_line", "new_line"),
    [
        ("train.lr=0.01", "  lr: 0.1  # learning rate", "  lr: 0.01  # learning rate"),
        ("train.opt.momentum=0.95", "    momentum: 0.9", "    momentum: 0.95"),
        ("train.layers[1]=64", "  layers: [8, 16]", "  layers: [8, 64]"),
        ("eval.splits[-1]=train", "    - test", "    - train"),
        ("train.name=vgg", "  name: 'resnet'", "  name: 'vgg'"),
        ("train.name=yes", "  name: 'resnet'", "  name: 'yes'"),
        ("eval.batch='64'", "  batch: 32", "  batch: '64'"),
        ("eval.batch=true", "  batch: 32", "  batch: true"),
        ("train.opt.kind=[a, b]", "    kind: sgd", "    kind: [a, b]"),
    ],
)
def test_yaml_set_changes_one_line(
    tmp_path: Path, override: str, old_line: str, new_line: str
) -> None:
    text = edit_params_yaml(tmp_path, override)
    assert diff_lines(PARAMS_YAML, text) == ([old_line], [new_line])


def test_yaml_set_keeps_types(tmp_path: Path) -> None:
    text = edit_params_yaml(
        tmp_path, "train.lr=1e-5", "train.name='0.1'", "eval.batch=0.5"
    )
    train = yaml.safe_load(text)["train"]
    assert train["lr"] == "1e-5"
    assert train["name"] == "0.1"
    assert yaml.safe_load(text)["eval"]["batch"] == 0.5


def test_yaml_add_key_after_last_entry(tmp_path: Path) -> None:
    text = edit_params_yaml(tmp_path, "+train.dropout=0.5")
    lines = text.splitlines()
    assert diff_lines(PARAMS_YAML, text) == ([], ["  dropout: 0.5"])
    # The new key goes after the last key of `train`, above the blank line
    # and the comment that belong to `eval`.
    assert lines[lines.index("  dropout: 0.5") - 1] == "    momentum: 0.9"


def test_yaml_add_nested_keys_and_item(tmp_path: Path) -> None:
    text = edit_params_yaml(
        tmp_path, "+train.sched.kind=cosine", "+eval.splits[2]=extra", "++top=1"
    )
    removed, added = diff_lines(PARAMS_YAML, text)
    assert removed == []
    assert added == ["  sched:", "    kind: cosine", "    - extra", "top: 1"]
    assert yaml.safe_load(text)["train"]["sched"] == {"kind": "cosine"}
    assert yaml.safe_load(text)["eval"]["splits"] == ["val", "test", "extra"]


def test_yaml_delete_removes_only_its_lines(tmp_path: Path) -> None:
    text = edit_params_yaml(tmp_path, "~train.opt", "~eval.splits[0]")
    removed, added = diff_lines(PARAMS_YAML, text)
    assert removed == ["  opt:", "    kind: sgd", "    momentum: 0.9", "    - val"]
    assert added == []
    assert "\n\n# Evaluation\n" in text


def test_yaml_delete_in_flow_list(tmp_path: Path) -> None:
    text = edit_params_yaml(tmp_path, "~train.layers[0]")
    assert diff_lines(PARAMS_YAML, text) == (
        ["  layers: [8, 16]"],
        ["  layers: [16]"],
    )


def test_yaml_delete_last_key_leaves_empty(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("# top\na:\n  b: 1\n")
    text = (apply(tmp_path, "~a.b") / "params.yaml").read_text()
    assert text == "# top\na: {}\n"
    assert yaml.safe_load(text) == {"a": {}}


def test_yaml_replace_block_with_value(tmp_path: Path) -> None:
    text = edit_params_yaml(tmp_path, "train.opt=adam")
    removed, added = diff_lines(PARAMS_YAML, text)
    assert removed == ["  opt:", "    kind: sgd", "    momentum: 0.9"]
    assert added == ["  opt: adam"]


def test_yaml_add_to_empty_file(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("# no params yet\n")
    text = (apply(tmp_path, "+train.lr=0.1") / "params.yaml").read_text()
    assert text == "# no params yet\ntrain:\n  lr: 0.1\n"


def test_yaml_aliases_fall_back_to_dump(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "params.yaml").write_text("# c\nbase: &b {x: 1}\nother: *b\n")
    with caplog.at_level(logging.WARNING, logger="expfs.pipeline.overrides"):
        text = (apply(tmp_path, "base.x=2") / "params.yaml").read_text()
    assert yaml.safe_load(text) == {"base": {"x": 2}, "other": {"x": 2}}
    assert "anchors and aliases" in caplog.text


TOML_PARAMS = """\
# Training parameters
title = "run"  # shown in reports

[train]
lr = 0.1  # learning rate
layers = [8, 16]

# Optimizer
[train.opt]
name = 'sgd'
"""


def test_toml_set_changes_one_line(tmp_path: Path) -> None:
    (tmp_path / "p.toml").write_text(TOML_PARAMS)
    out = apply(tmp_path, "p.toml:train.lr=0.01", "p.toml:train.layers[1]=64")
    text = (out / "p.toml").read_text()
    assert diff_lines(TOML_PARAMS, text) == (
        ["lr = 0.1  # learning rate", "layers = [8, 16]"],
        ["lr = 0.01  # learning rate", "layers = [8, 64]"],
    )


def test_toml_add_and_delete(tmp_path: Path) -> None:
    (tmp_path / "p.toml").write_text(TOML_PARAMS)
    out = apply(tmp_path, "p.toml:+new.a.b=1", "p.toml:~train.lr")
    text = (out / "p.toml").read_text()
    assert text.startswith("# Training parameters\n")
    assert "# Optimizer\n" in text
    assert tomllib.loads(text) == {
        "title": "run",
        "train": {"layers": [8, 16], "opt": {"name": "sgd"}},
        "new": {"a": {"b": 1}},
    }
