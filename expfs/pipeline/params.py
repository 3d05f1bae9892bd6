"""Read params files (YAML, JSON, TOML, Python) and look up dotted keys.

A key is a dotted path into nested mappings, with list items named by an
index in brackets or as a path segment: `train.layers[1]` and
`train.layers.1` are the same item.

Python params files are read without running them, from the source text:
module-level constants, class attributes (a class becomes a mapping, nested
classes included) and `self.NAME = ...` assignments in a class's
`__init__`. Only values that `ast.literal_eval` accepts are read, so
`X = os.getcwd()` and unpacking assignments such as `A, B = 1, 2` are
skipped, as DVC 3.x skips them.
"""

from __future__ import annotations

import ast
import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from expfs.pipeline.errors import ParamsError
from expfs.pipeline.loader import safe_load
from expfs.pipeline.stage import Stage

DEFAULT_PARAMS_FILE = "params.yaml"
PARAMS_FORMATS = {
    ".yaml": "yaml",
    ".yml": "yaml",
    ".json": "json",
    ".toml": "toml",
    ".py": "python",
}

KeyPart = str | int
# The change an override makes to its key (see expfs.pipeline.overrides).
Action = Literal["set", "add", "force_add", "delete"]


@dataclass(frozen=True)
class Override:
    """One parsed `-S` argument. `values` has one item unless it is a sweep."""

    text: str
    file: str
    key: str
    parts: tuple[KeyPart, ...]
    """The key split into names and list indices."""
    action: Action
    values: tuple[Any, ...]

    @property
    def is_sweep(self) -> bool:
        return len(self.values) > 1

    @property
    def value(self) -> Any:
        """The single value of a non-sweep override (None for a deletion)."""
        if self.is_sweep:
            raise ValueError(f"override {self.text!r} is a sweep of several values")
        return self.values[0] if self.values else None


_SEGMENT = re.compile(r"^(?P<name>[^\[\]]*)(?P<indices>(\[-?\d+\])*)$")
_INDEX = re.compile(r"\[(-?\d+)\]")


def params_format(path: Path | str) -> str:
    """Return the format name of a params file from its suffix."""
    suffix = Path(path).suffix.lower()
    try:
        return PARAMS_FORMATS[suffix]
    except KeyError:
        supported = ", ".join(sorted(PARAMS_FORMATS))
        raise ParamsError(
            f"params file '{path}' has an unsupported suffix '{suffix}'; "
            f"use one of {supported}"
        ) from None


def read_params(path: Path) -> dict[str, Any]:
    """Read a params file into a mapping, raising ParamsError if it is missing or invalid."""
    fmt = params_format(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ParamsError(
            f"params file '{path}' not found; create it or fix the file name"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ParamsError(f"params file '{path}' cannot be read: {exc}") from exc
    data = parse_params_text(text, fmt, path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ParamsError(
            f"params file '{path}' contains a {type(data).__name__}, not a "
            "mapping of names to values; put the params under keys"
        )
    return data


def parse_params_text(text: str, fmt: str, path: Path) -> Any:
    """Parse the text of a params file in format `fmt` ("yaml", "json", ...)."""
    try:
        if fmt == "yaml":
            return safe_load(text)
        if fmt == "json":
            return json.loads(text)
        if fmt == "toml":
            return tomllib.loads(text)
        if fmt == "python":
            return python_params(ast.parse(text, filename=str(path)))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ParamsError(f"{path}{line}: malformed YAML: {exc.problem}") from exc
    except json.JSONDecodeError as exc:
        raise ParamsError(f"{path}:{exc.lineno}: malformed JSON: {exc.msg}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ParamsError(f"{path}: malformed TOML: {exc}") from exc
    except SyntaxError as exc:
        raise ParamsError(f"{path}:{exc.lineno}: invalid Python: {exc.msg}") from exc
    raise ValueError(f"unknown params format {fmt!r}")


def python_params(module: ast.Module) -> dict[str, Any]:
    """Collect the literal constants of a parsed Python module."""
    return _literal_assignments(module.body)


def _literal_assignments(body: list[ast.stmt]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for stmt in body:
        if isinstance(stmt, ast.ClassDef):
            values[stmt.name] = _class_params(stmt)
            continue
        target_value = assignment_target(stmt)
        if target_value is None:
            continue
        name, value_node = target_value
        try:
            values[name] = ast.literal_eval(value_node)
        except ValueError:
            continue
    return values


def _class_params(cls: ast.ClassDef) -> dict[str, Any]:
    values = _literal_assignments(cls.body)
    for stmt in cls.body:
        if isinstance(stmt, ast.FunctionDef) and stmt.name == "__init__":
            for name, value_node in init_assignments(stmt):
                try:
                    values[name] = ast.literal_eval(value_node)
                except ValueError:
                    continue
    return values


def assignment_target(stmt: ast.stmt) -> tuple[str, ast.expr] | None:
    """Return (name, value node) for `NAME = value` or `NAME: T = value`."""
    if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
        target = stmt.targets[0]
        if isinstance(target, ast.Name):
            return target.id, stmt.value
    if isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
        if isinstance(stmt.target, ast.Name):
            return stmt.target.id, stmt.value
    return None


def init_assignments(func: ast.FunctionDef) -> list[tuple[str, ast.expr]]:
    """Return the `self.NAME = value` assignments at the top level of `__init__`."""
    found: list[tuple[str, ast.expr]] = []
    for stmt in func.body:
        target: ast.expr | None = None
        value: ast.expr | None = None
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
            target, value = stmt.targets[0], stmt.value
        elif isinstance(stmt, ast.AnnAssign):
            target, value = stmt.target, stmt.value
        if (
            isinstance(target, ast.Attribute)
            and isinstance(target.value, ast.Name)
            and target.value.id == "self"
            and value is not None
        ):
            found.append((target.attr, value))
    return found


def parse_key(key: str) -> tuple[KeyPart, ...]:
    """Split `a.b[1].c` into ("a", "b", 1, "c"); raise ValueError if malformed."""
    if not key or key.strip() != key:
        raise ValueError(f"invalid key {key!r}")
    parts: list[KeyPart] = []
    for segment in key.split("."):
        match = _SEGMENT.match(segment)
        if match is None or (not match.group("name") and not match.group("indices")):
            raise ValueError(f"invalid key {key!r}")
        if match.group("name"):
            parts.append(match.group("name"))
        elif not parts:
            raise ValueError(f"invalid key {key!r}")
        parts.extend(int(i) for i in _INDEX.findall(match.group("indices")))
    return tuple(parts)


def format_key(parts: tuple[KeyPart, ...]) -> str:
    """Join key parts the way DVC prints a param key (`a.b.1`)."""
    return ".".join(str(part) for part in parts)


class MissingKey(LookupError):
    """A key path that does not exist. `found` is its longest prefix that does."""

    def __init__(self, found: tuple[KeyPart, ...]) -> None:
        super().__init__(format_key(found))
        self.found = found


def lookup(data: Any, parts: tuple[KeyPart, ...]) -> Any:
    """Return the value at `parts`, or raise MissingKey."""
    node = data
    for depth, part in enumerate(parts):
        node = _step(node, part, parts[:depth])
    return node


def _step(node: Any, part: KeyPart, found: tuple[KeyPart, ...]) -> Any:
    if isinstance(node, Mapping):
        if part in node:
            return node[part]
        # YAML reads `1: x` with an int key, while the key path has "1".
        if isinstance(part, str) and part.lstrip("-").isdigit() and int(part) in node:
            return node[int(part)]
        raise MissingKey(found)
    if isinstance(node, list | tuple):
        index = _as_index(part)
        if index is None or not -len(node) <= index < len(node):
            raise MissingKey(found)
        return node[index]
    raise MissingKey(found)


def _as_index(part: KeyPart) -> int | None:
    if isinstance(part, int):
        return part
    if part.lstrip("-").isdigit():
        return int(part)
    return None


def get_param(data: Any, key: str, path: Path | str) -> Any:
    """Return the value of `key` in the params `data` read from `path`."""
    try:
        parts = parse_key(key)
    except ValueError:
        raise ParamsError(
            f"invalid param key '{key}' for '{path}'; use dotted names such "
            "as train.lr or train.layers[1]"
        ) from None
    try:
        return lookup(data, parts)
    except MissingKey as exc:
        near = f" ('{format_key(exc.found)}' exists)" if exc.found else ""
        raise ParamsError(
            f"param '{key}' not found in '{path}'{near}; add it to the file or "
            "remove it from the stage"
        ) from None


def read_stage_params(stage: Stage, root: Path) -> dict[str, dict[str, Any]]:
    """Read the declared params of `stage` from the workspace at `root`.

    Returns the value of each declared key by params-file workspace path. A
    file declared with no keys contributes every top-level key. A missing
    file or key raises ParamsError naming the stage, the file and the key.
    """
    values: dict[str, dict[str, Any]] = {}
    for dep in stage.params:
        where = f"{dep.where}: " if dep.where else ""
        try:
            data = read_params(root / dep.workspace_path)
        except ParamsError as exc:
            raise ParamsError(f"{where}stage '{stage.name}': {exc.message}") from None
        if dep.keys is None:
            values[dep.workspace_path] = dict(data)
            continue
        found = values[dep.workspace_path] = {}
        for key in dep.keys:
            try:
                found[key] = get_param(data, key, dep.workspace_path)
            except ParamsError as exc:
                key_where = dep.key_where.get(key, dep.where)
                where = f"{key_where}: " if key_where else ""
                raise ParamsError(
                    f"{where}stage '{stage.name}': {exc.message}"
                ) from None
    return values
