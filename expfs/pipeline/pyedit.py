"""Edit the literal values of a Python params file in its source text.

A params override on a `.py` file changes only the source of the literal it
names, so comments and code around it are kept. That literal is a module
constant, a class attribute, a `self.NAME` in `__init__`, or an item inside
a dict or list literal. The result is parsed again and checked to read back as intended.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from expfs.pipeline.errors import OverrideError
from expfs.pipeline.params import (
    KeyPart,
    MissingKey,
    Override,
    assignment_target,
    format_key,
    init_assignments,
    lookup,
    python_params,
)

ApplyFunction = Callable[[Any, Override, str], Any]


@dataclass
class _Target:
    """The deepest literal node reached for a key, and the key parts left below it."""

    node: ast.expr | None
    statement: ast.stmt | None
    scope: ast.Module | ast.ClassDef
    consumed: int


def apply_to_python_source(
    text: str, override: Override, file_name: str, apply: ApplyFunction
) -> str:
    """Apply `override` to the source `text`, using `apply` to change plain values."""
    module = _parse(text, file_name)
    parts = override.parts
    # A deletion rewrites the container that contains the key.
    reach = parts[:-1] if override.action == "delete" else parts
    target = _find(module, reach, override, file_name)
    if target.node is None:
        new_text = _edit_scope(text, target, parts, override, file_name, apply)
    else:
        try:
            old = ast.literal_eval(target.node)
        except ValueError:
            raise OverrideError(
                f"override '{override.text}': '{format_key(parts[: target.consumed])}' "
                f"in '{file_name}' is not a literal value, so it cannot be changed"
            ) from None
        remaining = parts[target.consumed :]
        new_value = _apply_below(old, remaining, override, file_name, apply)
        new_text = _replace_segment(text, target.node, repr(new_value))
    _check(new_text, override, file_name)
    return new_text


def _parse(text: str, file_name: str) -> ast.Module:
    try:
        return ast.parse(text, filename=file_name)
    except SyntaxError as exc:
        raise OverrideError(
            f"{file_name}:{exc.lineno}: invalid Python: {exc.msg}"
        ) from None


def _apply_below(
    old: Any,
    remaining: tuple[KeyPart, ...],
    override: Override,
    file_name: str,
    apply: ApplyFunction,
) -> Any:
    wrapper = {"": old}
    shifted = replace(override, parts=("", *remaining))
    return apply(wrapper, shifted, file_name)[""]


def _find(
    module: ast.Module, parts: tuple[KeyPart, ...], override: Override, file_name: str
) -> _Target:
    scope: ast.Module | ast.ClassDef = module
    statement: ast.stmt | None = None
    consumed = 0
    while consumed < len(parts):
        name = parts[consumed]
        binding = _binding(scope, str(name))
        if binding is None:
            return _Target(None, statement, scope, consumed)
        consumed += 1
        if isinstance(binding, ast.ClassDef):
            scope, statement = binding, binding
            continue
        statement, node = binding
        return _descend(node, statement, scope, parts, consumed)
    if override.action == "delete":
        # The key to delete is an attribute of this class or module.
        return _Target(None, statement, scope, consumed)
    raise OverrideError(
        f"override '{override.text}': '{override.key}' in '{file_name}' is a "
        "class, not a value; name one of its attributes"
    )


def _binding(
    scope: ast.Module | ast.ClassDef, name: str
) -> ast.ClassDef | tuple[ast.stmt, ast.expr] | None:
    found: ast.ClassDef | tuple[ast.stmt, ast.expr] | None = None
    for stmt in scope.body:
        if isinstance(stmt, ast.ClassDef) and stmt.name == name:
            found = stmt
            continue
        target = assignment_target(stmt)
        if target is not None and target[0] == name:
            found = (stmt, target[1])
    if isinstance(scope, ast.ClassDef):
        for stmt in scope.body:
            if isinstance(stmt, ast.FunctionDef) and stmt.name == "__init__":
                for attr, value in init_assignments(stmt):
                    if attr == name:
                        found = (stmt, value)
    return found


def _descend(
    node: ast.expr,
    statement: ast.stmt,
    scope: ast.Module | ast.ClassDef,
    parts: tuple[KeyPart, ...],
    consumed: int,
) -> _Target:
    while consumed < len(parts):
        child = _literal_child(node, parts[consumed])
        if child is None:
            break
        node = child
        consumed += 1
    return _Target(node, statement, scope, consumed)


def _literal_child(node: ast.expr, part: KeyPart) -> ast.expr | None:
    if isinstance(node, ast.Dict):
        for key, value in zip(node.keys, node.values, strict=True):
            if isinstance(key, ast.Constant) and (
                key.value == part or str(key.value) == str(part)
            ):
                return value
        return None
    if isinstance(node, ast.List | ast.Tuple):
        index = part if isinstance(part, int) else None
        if isinstance(part, str) and part.lstrip("-").isdigit():
            index = int(part)
        if index is not None and -len(node.elts) <= index < len(node.elts):
            return node.elts[index]
    return None


def _edit_scope(
    text: str,
    target: _Target,
    parts: tuple[KeyPart, ...],
    override: Override,
    file_name: str,
    apply: ApplyFunction,
) -> str:
    """Add or delete a whole module constant or class attribute."""
    remaining = parts[target.consumed :]
    name = str(remaining[0])
    if override.action == "delete":
        binding = _binding(target.scope, name)
        if len(remaining) != 1 or binding is None or isinstance(binding, ast.ClassDef):
            raise _not_found(override, file_name, parts)
        statement = binding[0]
        if isinstance(statement, ast.FunctionDef):
            raise OverrideError(
                f"override '{override.text}': '{override.key}' is set in "
                f"__init__ in '{file_name}'; delete it by editing the file"
            )
        return _delete_lines(text, statement)
    if override.action not in ("add", "force_add"):
        raise _not_found(override, file_name, parts)
    value = _apply_below({}, remaining, override, file_name, apply)
    return _insert_statement(text, target.scope, f"{name} = {value[name]!r}")


def _not_found(
    override: Override, file_name: str, parts: tuple[KeyPart, ...]
) -> OverrideError:
    return OverrideError(
        f"override '{override.text}': param '{override.key}' not found in "
        f"'{file_name}'; fix the key, or write '+{override.text.lstrip('+')}' "
        "to add it"
    )


def _line_starts(text: str) -> list[int]:
    """Return the byte offset of the start of each line (1-based by index + 1)."""
    starts = [0, 0]
    for line in text.encode("utf-8").splitlines(keepends=True):
        starts.append(starts[-1] + len(line))
    return starts


def _replace_segment(text: str, node: ast.expr, replacement: str) -> str:
    assert node.end_lineno is not None and node.end_col_offset is not None
    data = text.encode("utf-8")
    starts = _line_starts(text)
    # ast column offsets count UTF-8 bytes.
    begin = starts[node.lineno] + node.col_offset
    end = starts[node.end_lineno] + node.end_col_offset
    return (data[:begin] + replacement.encode("utf-8") + data[end:]).decode("utf-8")


def _delete_lines(text: str, statement: ast.stmt) -> str:
    assert statement.end_lineno is not None
    lines = text.splitlines(keepends=True)
    del lines[statement.lineno - 1 : statement.end_lineno]
    return "".join(lines)


def _insert_statement(text: str, scope: ast.Module | ast.ClassDef, line: str) -> str:
    lines = text.splitlines(keepends=True)
    if isinstance(scope, ast.Module):
        if lines and not lines[-1].endswith("\n"):
            lines[-1] += "\n"
        return "".join(lines) + line + "\n"
    last = scope.body[-1]
    assert last.end_lineno is not None
    indent = " " * scope.body[0].col_offset
    lines.insert(last.end_lineno, f"{indent}{line}\n")
    return "".join(lines)


def _check(text: str, override: Override, file_name: str) -> None:
    values = python_params(_parse(text, file_name))
    try:
        value = lookup(values, override.parts)
    except MissingKey:
        if override.action == "delete":
            return
        value = _ABSENT
    if override.action == "delete" or value != override.value:
        raise OverrideError(
            f"override '{override.text}' could not be written into '{file_name}' "
            "as a Python literal; edit the file by hand or set a plain value"
        )


_ABSENT = object()
