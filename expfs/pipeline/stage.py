"""Typed stages: what one entry of `stages` in a stage file means after templating.

Paths keep two forms: `path` as written in the stage file (relative to the
stage's `wdir`, as DVC prints it) and `workspace_path`, normalised and
relative to the workspace root, which is what the DAG and the run key use.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

OutKind = Literal["outs", "metrics", "plots"]
OUT_KINDS: tuple[OutKind, ...] = ("outs", "metrics", "plots")

STAGE_FIELDS = (
    "cmd",
    "wdir",
    "deps",
    "params",
    "outs",
    "metrics",
    "plots",
    "frozen",
    "always_changed",
    "desc",
    "meta",
    "vars",
)
FOREACH_FIELDS = ("foreach", "do")
MATRIX_FIELD = "matrix"

# Flags an output may carry in DVC 3.x, and the type of each.
OUT_FLAGS: dict[str, type | tuple[type, ...]] = {
    "cache": bool,
    "persist": bool,
    "push": bool,
    "remote": str,
    "desc": str,
    "type": str,
    "labels": list,
    "meta": object,
    "checkpoint": bool,
}
PLOT_FLAGS: dict[str, type | tuple[type, ...]] = {
    "template": str,
    "x": str,
    "y": str,
    "x_label": str,
    "y_label": str,
    "title": str,
    "header": bool,
}


@dataclass(frozen=True)
class Dep:
    """A file or folder that a stage reads."""

    path: str
    workspace_path: str
    where: str = field(default="", compare=False)
    """The `file:line` of its entry in the stage file, for messages."""


@dataclass(frozen=True)
class ParamsDep:
    """Params that a stage reads from one file (`keys` is None for every param in it)."""

    path: str
    workspace_path: str
    keys: tuple[str, ...] | None
    where: str = field(default="", compare=False)
    """The `file:line` of the file's first entry in the stage file, for messages."""
    key_where: Mapping[str, str] = field(
        default_factory=dict, compare=False, hash=False
    )
    """The `file:line` of each key's entry in the stage file, for messages."""


@dataclass(frozen=True)
class Out:
    """A file or folder that a stage writes, with its flags."""

    path: str
    workspace_path: str
    kind: OutKind = "outs"
    cache: bool = True
    persist: bool = False
    push: bool = True
    options: Mapping[str, Any] = field(default_factory=dict, hash=False)
    """The other flags as written: remote, desc, type, labels, meta, plot props."""


@dataclass(frozen=True)
class Stage:
    """One stage after templating and `foreach`/`matrix` expansion."""

    name: str
    cmd: str | tuple[str, ...]
    wdir: str = "."
    workspace_wdir: str = "."
    deps: tuple[Dep, ...] = ()
    params: tuple[ParamsDep, ...] = ()
    outs: tuple[Out, ...] = ()
    frozen: bool = False
    always_changed: bool = False
    desc: str | None = None
    meta: Any = field(default=None, hash=False)
    template_params: Mapping[str, Mapping[str, Any]] = field(
        default_factory=dict, hash=False
    )
    """Params-file keys that `${...}` expressions in the stage used, by file."""

    @property
    def commands(self) -> tuple[str, ...]:
        """The commands to run in order (a string `cmd` is one command)."""
        return (self.cmd,) if isinstance(self.cmd, str) else self.cmd

    def outs_of(self, kind: OutKind) -> tuple[Out, ...]:
        return tuple(out for out in self.outs if out.kind == kind)

    def to_json(self) -> dict[str, Any]:
        """Describe the stage as plain JSON values, in the shape `stage list --json` prints."""
        params: dict[str, list[str]] = {}
        for dep in self.params:
            params.setdefault(dep.path, [])
            if dep.keys:
                params[dep.path].extend(dep.keys)
        result: dict[str, Any] = {
            "name": self.name,
            "cmd": self.cmd if isinstance(self.cmd, str) else list(self.cmd),
            "wdir": self.wdir,
            "deps": [dep.path for dep in self.deps],
            "params": params,
        }
        for kind in OUT_KINDS:
            result[kind] = [_out_json(out) for out in self.outs_of(kind)]
        result.update(
            frozen=self.frozen,
            always_changed=self.always_changed,
            desc=self.desc,
            meta=self.meta,
        )
        return result


def _out_json(out: Out) -> dict[str, Any]:
    return {
        "path": out.path,
        "cache": out.cache,
        "persist": out.persist,
        "push": out.push,
        **dict(out.options),
    }
