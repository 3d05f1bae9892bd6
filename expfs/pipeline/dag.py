"""The stage graph: an edge from the stage that writes a path to each stage that reads it.

A stage reads a path when a dependency or params file of it is an output of
another stage, lies inside an output folder, or is a folder that contains an
output. Two stages writing one path, one output inside another, and cycles
are errors that name the stages.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from expfs.pipeline.errors import DagError
from expfs.pipeline.paths import is_within
from expfs.pipeline.stage import Stage


@dataclass(frozen=True)
class Dag:
    """Stages and their edges. `upstream[name]` lists the stages whose outputs `name` reads."""

    stages: Mapping[str, Stage]
    upstream: Mapping[str, tuple[str, ...]]
    order: tuple[str, ...]
    """Stage names in a topological order, ties kept in stage-file order."""

    def downstream(self, name: str) -> tuple[str, ...]:
        return tuple(other for other in self.order if name in self.upstream[other])

    def ancestors(self, name: str) -> set[str]:
        """Return every stage that `name` depends on, directly or through others."""
        return self._closure(name, lambda n: self.upstream[n])

    def descendants(self, name: str) -> set[str]:
        """Return every stage that depends on `name`, directly or through others."""
        return self._closure(name, self.downstream)

    def _closure(self, name: str, step: Callable[[str], Iterable[str]]) -> set[str]:
        seen: set[str] = set()
        pending = [name]
        while pending:
            for neighbour in step(pending.pop()):
                if neighbour not in seen:
                    seen.add(neighbour)
                    pending.append(neighbour)
        return seen


def build_dag(stages: Iterable[Stage], stage_file: str = "dvc.yaml") -> Dag:
    """Connect `stages` through their outputs, raising DagError when they conflict."""
    by_name = {stage.name: stage for stage in stages}
    writers = _output_writers(by_name.values(), stage_file)
    upstream = {name: _upstream_of(stage, writers) for name, stage in by_name.items()}
    order = _topological_order(list(by_name), upstream, stage_file)
    return Dag(by_name, upstream, order)


def _output_writers(stages: Iterable[Stage], stage_file: str) -> dict[str, str]:
    writers: dict[str, str] = {}
    for stage in stages:
        for out in stage.outs:
            other = writers.get(out.workspace_path)
            if other is not None:
                raise DagError(
                    f"{stage_file}: output '{out.workspace_path}' is written by "
                    f"both stage '{other}' and stage '{stage.name}'; give each "
                    "stage its own output path"
                )
            writers[out.workspace_path] = stage.name
    for path, name in writers.items():
        parent = posixpath.dirname(path)
        while parent:
            outer = writers.get(parent)
            if outer is not None:
                raise DagError(
                    f"{stage_file}: output '{path}' of stage '{name}' is inside "
                    f"output '{parent}' of stage '{outer}'; outputs cannot "
                    "overlap, so move one of them or declare only the folder"
                )
            parent = posixpath.dirname(parent)
    return writers


def _upstream_of(stage: Stage, writers: Mapping[str, str]) -> tuple[str, ...]:
    reads = [dep.workspace_path for dep in stage.deps]
    reads += [params.workspace_path for params in stage.params]
    found: list[str] = []
    for path in reads:
        for out_path, writer in writers.items():
            if is_within(path, out_path) or is_within(out_path, path):
                if writer not in found:
                    found.append(writer)
    return tuple(found)


def _topological_order(
    names: list[str], upstream: Mapping[str, tuple[str, ...]], stage_file: str
) -> tuple[str, ...]:
    position = {name: index for index, name in enumerate(names)}
    remaining = {name: len(set(upstream[name])) for name in names}
    downstream: dict[str, list[str]] = {name: [] for name in names}
    for name in names:
        for parent in set(upstream[name]):
            downstream[parent].append(name)
    # `names` is in stage-file order, so this list starts sorted by position.
    ready = [name for name in names if remaining[name] == 0]
    order: list[str] = []
    while ready:
        name = ready.pop(0)
        order.append(name)
        for child in downstream[name]:
            remaining[child] -= 1
            if remaining[child] == 0:
                ready.append(child)
                ready.sort(key=position.__getitem__)
    if len(order) < len(names):
        cycle = _find_cycle([n for n in names if n not in order], upstream)
        raise DagError(
            f"{stage_file}: stages form a cycle: {' -> '.join(cycle)}; remove a "
            "dependency on an output of a later stage in the cycle"
        )
    return tuple(order)


def _find_cycle(
    candidates: list[str], upstream: Mapping[str, tuple[str, ...]]
) -> list[str]:
    # Every candidate lies on or downstream of a cycle, and every candidate
    # has an upstream candidate, so walking upstream must revisit a stage.
    inside = set(candidates)
    path: list[str] = [candidates[0]]
    while True:
        parent = next(p for p in upstream[path[-1]] if p in inside)
        if parent in path:
            cycle = path[path.index(parent) :] + [parent]
            cycle.reverse()
            return cycle
        path.append(parent)
