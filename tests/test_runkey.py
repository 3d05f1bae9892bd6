"""Run keys: stable across processes and orderings, sensitive to every input."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from expfs.pipeline import Dep, Out, Stage
from expfs.pipeline.runkey import encode_value, run_key, stage_run_key
from expfs.store.trees import Digest

D1 = Digest("a" * 64)
D2 = Digest("b" * 64)

BASE: dict[str, Any] = {
    "cmd": "python train.py",
    "deps": {"train.py": D1, "data": D2},
    "params": {"params.yaml": {"train.lr": 0.1, "train.layers": [8, 16]}},
    "outs": ["model.pkl", "metrics.json"],
}


def key_of(inputs: dict[str, Any], wdir: str = ".") -> str:
    return run_key(
        inputs["cmd"], inputs["deps"], inputs["params"], inputs["outs"], wdir=wdir
    )


def test_key_is_hex_digest() -> None:
    key = key_of(BASE)
    assert len(key) == 64
    assert int(key, 16) >= 0


def test_stable_across_processes() -> None:
    script = (
        "import json, sys\n"
        "from expfs.pipeline.runkey import run_key\n"
        "i = json.loads(sys.argv[1])\n"
        "print(run_key(i['cmd'], i['deps'], i['params'], i['outs']))\n"
    )
    results = set()
    for seed in ("0", "1", "2"):
        proc = subprocess.run(
            [sys.executable, "-c", script, json.dumps(BASE)],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": seed},
        )
        results.add(proc.stdout.strip())
    assert results == {key_of(BASE)}


def test_independent_of_ordering() -> None:
    reordered = {
        "cmd": BASE["cmd"],
        "deps": dict(reversed(list(BASE["deps"].items()))),
        "params": {"params.yaml": {"train.layers": [8, 16], "train.lr": 0.1}},
        "outs": list(reversed(BASE["outs"])),
    }
    assert key_of(reordered) == key_of(BASE)


CHANGES: list[tuple[str, dict[str, Any]]] = [
    ("cmd", {**BASE, "cmd": "python train.py --fast"}),
    ("cmd as two commands", {**BASE, "cmd": ["python", "train.py"]}),
    ("dep digest", {**BASE, "deps": {"train.py": D2, "data": D2}}),
    ("dep removed", {**BASE, "deps": {"train.py": D1}}),
    ("dep renamed", {**BASE, "deps": {"train2.py": D1, "data": D2}}),
    (
        "param value",
        {**BASE, "params": {"params.yaml": {"train.lr": 0.2, "train.layers": [8, 16]}}},
    ),
    ("param removed", {**BASE, "params": {"params.yaml": {"train.lr": 0.1}}}),
    (
        "param int vs float",
        {**BASE, "params": {"params.yaml": {"train.lr": 1, "train.layers": [8, 16]}}},
    ),
    (
        "param moved file",
        {**BASE, "params": {"p.json": {"train.lr": 0.1, "train.layers": [8, 16]}}},
    ),
    (
        "list order",
        {**BASE, "params": {"params.yaml": {"train.lr": 0.1, "train.layers": [16, 8]}}},
    ),
    ("out removed", {**BASE, "outs": ["model.pkl"]}),
    ("out renamed", {**BASE, "outs": ["model2.pkl", "metrics.json"]}),
]


@pytest.mark.parametrize(("what", "changed"), CHANGES, ids=[c[0] for c in CHANGES])
def test_sensitive_to_each_input(what: str, changed: dict[str, Any]) -> None:
    assert key_of(changed) != key_of(BASE), what


def test_sensitive_to_wdir() -> None:
    assert key_of(BASE, wdir="sub") != key_of(BASE)


def test_string_cmd_equals_single_list() -> None:
    assert key_of({**BASE, "cmd": ["python train.py"]}) == key_of(BASE)


def test_value_encoding_distinguishes_types() -> None:
    values = [None, True, False, 1, 1.0, "1", [1], {"1": 1}, {1: 1}, {1}, 0.0, -0.0]
    encodings = [encode_value(v) for v in values]
    assert len(set(encodings)) == len(values)


def test_tuple_encodes_as_list() -> None:
    assert encode_value((1, 2)) == encode_value([1, 2])


def test_nan_encodes_canonically() -> None:
    assert encode_value(float("nan")) == encode_value(-float("nan"))


def test_unencodable_value_rejected() -> None:
    with pytest.raises(TypeError, match="cannot encode a object"):
        encode_value(object())


def test_stage_run_key_uses_workspace_paths() -> None:
    stage = Stage(
        name="train",
        cmd="python train.py",
        wdir="sub",
        workspace_wdir="sub",
        deps=(Dep("train.py", "sub/train.py"),),
        outs=(Out("model.pkl", "sub/model.pkl"),),
    )
    params = {"sub/params.yaml": {"lr": 0.1}}
    key = stage_run_key(stage, {"sub/train.py": D1}, params)
    expected = run_key(
        "python train.py", {"sub/train.py": D1}, params, ["sub/model.pkl"], wdir="sub"
    )
    assert key == expected
    with pytest.raises(KeyError, match="no digest for dependencies"):
        stage_run_key(stage, {}, params)
