"""Params files in every format, dotted keys and list indices."""

from __future__ import annotations

from pathlib import Path

import pytest

from expfs.pipeline.errors import ParamsError
from expfs.pipeline.params import get_param, parse_key, read_params

PYTHON_PARAMS = """\
import os
A = 1
B: float = 2.5
D = {"k": [1, 2], "n": {"m": True}}
T = (1, 2)
NEG = -3
E = os.getcwd()
X, Y = 1, 2
class M:
    d = 4
    class Inner:
        z = 5
    def __init__(self):
        self.lr = 0.1
    def f(self):
        self.q = 1
if True:
    HIDDEN = 1
"""


def test_python_params_match_dvc(tmp_path: Path) -> None:
    path = tmp_path / "pp.py"
    path.write_text(PYTHON_PARAMS)
    # The mapping DVC 3.67's load_py returns for the same file.
    assert read_params(path) == {
        "A": 1,
        "B": 2.5,
        "D": {"k": [1, 2], "n": {"m": True}},
        "M": {"Inner": {"z": 5}, "d": 4, "lr": 0.1},
        "NEG": -3,
        "T": (1, 2),
    }


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("p.yaml", "train:\n  lr: 0.1\n  layers: [8, 16]\n"),
        ("p.yml", "train:\n  lr: 0.1\n  layers: [8, 16]\n"),
        ("p.json", '{"train": {"lr": 0.1, "layers": [8, 16]}}'),
        ("p.toml", "[train]\nlr = 0.1\nlayers = [8, 16]\n"),
        ("p.py", "train = {'lr': 0.1, 'layers': [8, 16]}\n"),
        ("q.py", "class train:\n    lr = 0.1\n    layers = [8, 16]\n"),
    ],
)
def test_nested_keys_in_each_format(tmp_path: Path, name: str, text: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    data = read_params(path)
    assert get_param(data, "train.lr", path) == 0.1
    assert get_param(data, "train.layers[1]", path) == 16
    assert get_param(data, "train.layers.0", path) == 8


def test_parse_key_forms() -> None:
    assert parse_key("a.b[1].c") == ("a", "b", 1, "c")
    assert parse_key("m[0][2]") == ("m", 0, 2)
    assert parse_key("x") == ("x",)
    for bad in ["", "a..b", "a[x]", " a"]:
        with pytest.raises(ValueError):
            parse_key(bad)


def test_unknown_key_names_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("train: {lr: 1}\n")
    data = read_params(path)
    with pytest.raises(ParamsError) as info:
        get_param(data, "train.depth", path)
    message = str(info.value)
    assert f"param 'train.depth' not found in '{path}'" in message
    assert "('train' exists)" in message


def test_index_out_of_range(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("layers: [1]\n")
    with pytest.raises(ParamsError, match="param 'layers\\[3\\]' not found"):
        get_param(read_params(path), "layers[3]", path)


def test_missing_params_file(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match="params.json' not found"):
        read_params(tmp_path / "params.json")


def test_unsupported_suffix(tmp_path: Path) -> None:
    path = tmp_path / "params.ini"
    path.write_text("a=1")
    with pytest.raises(ParamsError, match="unsupported suffix '.ini'"):
        read_params(path)


@pytest.mark.parametrize(
    ("name", "text", "fragment"),
    [
        ("p.yaml", "a: [1\n", "p.yaml:2: malformed YAML"),
        ("p.json", '{"a": }', "p.json:1: malformed JSON"),
        ("p.toml", "a = \n", "malformed TOML"),
        ("p.py", "A = (\n", "invalid Python"),
    ],
)
def test_malformed_params_file(
    tmp_path: Path, name: str, text: str, fragment: str
) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ParamsError, match=fragment):
        read_params(path)


def test_params_file_not_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ParamsError, match="contains a list, not a mapping"):
        read_params(path)


def test_stage_params_by_file(tmp_path: Path) -> None:
    from expfs.pipeline import load_pipeline
    from expfs.pipeline.params import read_stage_params

    (tmp_path / "params.yaml").write_text("train: {lr: 0.1, depth: 3}\n")
    (tmp_path / "p.json").write_text('{"a": 1, "b": {"c": 2}}')
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  s:\n    cmd: x\n    params:\n      - train.lr\n      - p.json: []\n"
    )
    stage = load_pipeline(tmp_path / "dvc.yaml").stages["s"]
    assert read_stage_params(stage, tmp_path) == {
        "params.yaml": {"train.lr": 0.1},
        "p.json": {"a": 1, "b": {"c": 2}},
    }
    (tmp_path / "params.yaml").write_text("train: {depth: 3}\n")
    with pytest.raises(ParamsError, match="stage 's': param 'train.lr' not found"):
        read_stage_params(stage, tmp_path)
    (tmp_path / "params.yaml").unlink()
    with pytest.raises(ParamsError, match="stage 's': params file '.*params.yaml' not"):
        read_stage_params(stage, tmp_path)
