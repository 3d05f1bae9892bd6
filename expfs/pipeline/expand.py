"""`foreach`/`do` and `matrix`: one stage definition that stands for many.

Generated stages are named as DVC 3.x names them (checked against DVC 3.67):

- `foreach` over a mapping: `stage@KEY`, with `${key}` and `${item}` bound.
- `foreach` over a list of scalars: `stage@VALUE` (`true`/`false` for
  booleans); over a list holding any list or mapping: `stage@INDEX`.
- `matrix`: one stage per combination, in the order of `itertools.product`
  over the axes as written, named `stage@V1-V2-...`, where an axis value
  that is a list or mapping is written as the axis name and its index
  (`stage@x-c0`). `${item.AXIS}` names the value of each axis.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from expfs.pipeline.errors import StageFileError
from expfs.pipeline.loader import DocPath
from expfs.pipeline.template import (
    BadValue,
    Context,
    Unresolved,
    render,
    select_any,
    template_error,
)

GENERATED_SEPARATOR = "@"


@dataclass
class Instance:
    """One stage that a definition stands for, before its fields are templated."""

    name: str
    body: dict[str, Any]
    doc_path: DocPath
    bindings: dict[str, Any] = field(default_factory=dict)
    """Names (`item`, `key`) bound in the context for this stage only."""


def key_text(value: Any) -> str:
    """Format a value as the part of a generated stage name after `@`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def is_composite(value: Any) -> bool:
    return isinstance(value, Mapping | list | tuple)


def foreach_items(source: Any) -> dict[str, Any]:
    """Map each generated name suffix to its `item`, for a resolved `foreach` source."""
    if isinstance(source, Mapping):
        return {key_text(key): value for key, value in source.items()}
    if any(is_composite(value) for value in source):
        return {str(index): value for index, value in enumerate(source)}
    return {key_text(value): value for value in source}


def matrix_items(axes: Mapping[str, list[Any]]) -> dict[str, dict[str, Any]]:
    """Map each generated name suffix to its `item` (one value per axis)."""
    names = list(axes)
    combos: dict[str, dict[str, Any]] = {}
    indexed = [list(enumerate(axes[name])) for name in names]
    for combination in itertools.product(*indexed):
        fragments = [
            f"{name}{index}" if is_composite(value) else key_text(value)
            for name, (index, value) in zip(names, combination, strict=True)
        ]
        combos["-".join(fragments)] = {
            name: value for name, (_, value) in zip(names, combination, strict=True)
        }
    return combos


def expand_foreach(
    name: str, definition: dict[str, Any], context: Context, where: str
) -> list[Instance]:
    """Expand a `foreach`/`do` definition found at `where` (`file:line`)."""
    body = definition.get("do")
    if not isinstance(body, dict):
        raise StageFileError(
            f"{where}: stage '{name}' has 'foreach' but no 'do' mapping; put "
            "the stage's fields under 'do:'"
        )
    source = _resolve_source(definition["foreach"], context, name, "foreach", where)
    if not isinstance(source, Mapping | list | tuple):
        raise StageFileError(
            f"{where}: stage '{name}': foreach must be a list, a mapping or a "
            f"${{...}} naming one, not {type(source).__name__} {source!r}"
        )
    instances = []
    for suffix, item in foreach_items(source).items():
        bindings: dict[str, Any] = {"item": item}
        if isinstance(source, Mapping):
            bindings["key"] = suffix
        instances.append(
            Instance(
                f"{name}{GENERATED_SEPARATOR}{suffix}",
                dict(body),
                ("stages", name, "do"),
                bindings,
            )
        )
    return instances


def expand_matrix(
    name: str, definition: dict[str, Any], context: Context, where: str
) -> list[Instance]:
    """Expand a stage with a `matrix` found at `where` (`file:line`)."""
    raw_axes = definition["matrix"]
    if not isinstance(raw_axes, Mapping) or not raw_axes:
        raise StageFileError(
            f"{where}: stage '{name}': matrix must map axis names to lists of "
            "values, such as 'matrix: {lr: [0.1, 0.01]}'"
        )
    axes: dict[str, list[Any]] = {}
    for axis, values in raw_axes.items():
        resolved = _resolve_source(values, context, name, f"matrix.{axis}", where)
        if not isinstance(resolved, list | tuple):
            raise StageFileError(
                f"{where}: stage '{name}': matrix axis '{axis}' must be a list "
                f"or a ${{...}} naming one, not {type(resolved).__name__} "
                f"{resolved!r}"
            )
        axes[str(axis)] = list(resolved)
    body = {key: value for key, value in definition.items() if key != "matrix"}
    return [
        Instance(
            f"{name}{GENERATED_SEPARATOR}{suffix}",
            dict(body),
            ("stages", name),
            {"item": item},
        )
        for suffix, item in matrix_items(axes).items()
    ]


def _resolve_source(
    value: Any, context: Context, name: str, field_name: str, where: str
) -> Any:
    try:
        if isinstance(value, str):
            return select_any(value, context)
        return render(value, context)
    except (Unresolved, BadValue) as exc:
        raise template_error(exc, where, name, field_name) from None
