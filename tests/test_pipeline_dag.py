"""The stage graph: edges, order, and conflicts between stages."""

from __future__ import annotations

import pytest

from expfs.pipeline import Dep, Out, Stage, build_dag
from expfs.pipeline.errors import DagError
from expfs.pipeline.stage import ParamsDep


def stage(name: str, deps: list[str] = [], outs: list[str] = []) -> Stage:  # noqa: B006
    return Stage(
        name=name,
        cmd=f"run {name}",
        deps=tuple(Dep(path, path) for path in deps),
        outs=tuple(Out(path, path) for path in outs),
    )


def test_order_follows_outputs_to_deps() -> None:
    dag = build_dag(
        [
            stage("evaluate", deps=["model"], outs=["scores"]),
            stage("train", deps=["data/clean"], outs=["model"]),
            stage("prepare", deps=["raw"], outs=["data/clean"]),
        ]
    )
    assert dag.order == ("prepare", "train", "evaluate")
    assert dag.upstream["evaluate"] == ("train",)
    assert dag.downstream("prepare") == ("train",)
    assert dag.ancestors("evaluate") == {"train", "prepare"}
    assert dag.descendants("prepare") == {"train", "evaluate"}


def test_dep_inside_output_folder_is_an_edge() -> None:
    dag = build_dag([stage("a", outs=["data"]), stage("b", deps=["data/x.csv"])])
    assert dag.upstream["b"] == ("a",)


def test_dep_folder_holding_output_is_an_edge() -> None:
    dag = build_dag([stage("a", outs=["data/x.csv"]), stage("b", deps=["data"])])
    assert dag.upstream["b"] == ("a",)


def test_params_file_produced_by_stage_is_an_edge() -> None:
    writer = stage("gen", outs=["gen.yaml"])
    reader = Stage("use", "x", params=(ParamsDep("gen.yaml", "gen.yaml", None),))
    assert build_dag([reader, writer]).order == ("gen", "use")


def test_independent_stages_keep_file_order() -> None:
    dag = build_dag([stage("c"), stage("a"), stage("b")])
    assert dag.order == ("c", "a", "b")


def test_cycle_names_stages() -> None:
    with pytest.raises(DagError) as info:
        build_dag(
            [
                stage("a", deps=["c.out"], outs=["a.out"]),
                stage("b", deps=["a.out"], outs=["b.out"]),
                stage("c", deps=["b.out"], outs=["c.out"]),
                stage("d", deps=["c.out"], outs=["d.out"]),
            ]
        )
    message = str(info.value)
    assert "stages form a cycle: " in message
    cycle = message.split("cycle: ")[1].split(";")[0].split(" -> ")
    assert set(cycle) == {"a", "b", "c"}
    assert cycle[0] == cycle[-1]


def test_stage_reading_own_output_is_cycle() -> None:
    with pytest.raises(DagError, match="stages form a cycle: a -> a"):
        build_dag([stage("a", deps=["o"], outs=["o"])])


def test_two_stages_one_output() -> None:
    with pytest.raises(
        DagError,
        match="output 'model.pkl' is written by both stage 'a' and stage 'b'",
    ):
        build_dag([stage("a", outs=["model.pkl"]), stage("b", outs=["model.pkl"])])


def test_overlapping_outputs_name_both() -> None:
    with pytest.raises(
        DagError,
        match="output 'data/sub' of stage 'b' is inside output 'data' of stage 'a'",
    ):
        build_dag([stage("a", outs=["data"]), stage("b", outs=["data/sub"])])


def test_sibling_prefix_is_not_overlap() -> None:
    dag = build_dag([stage("a", outs=["data"]), stage("b", outs=["data2/x"])])
    assert dag.order == ("a", "b")
