"""Pipelines in DVC's `dvc.yaml` format: stages, templating, params and the DAG.

`load_pipeline("dvc.yaml")` returns every stage after `${...}` templating
and `foreach`/`matrix` expansion, with typed deps, params and outputs, and
checks that the stages form a valid graph.
"""

from expfs.pipeline.dag import Dag, build_dag
from expfs.pipeline.stage import Dep, Out, ParamsDep, Stage
from expfs.pipeline.stagefile import Pipeline, load_pipeline

__all__ = [
    "Dag",
    "Dep",
    "Out",
    "ParamsDep",
    "Pipeline",
    "Stage",
    "build_dag",
    "load_pipeline",
]
