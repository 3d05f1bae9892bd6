"""Params overrides: `-S [file:]key=value`, parsed and written into params files.

The syntax is DVC's, which follows Hydra's override grammar:

    key=value         set an existing key (error when it does not exist)
    +key=value        add a key that does not exist yet
    ++key=value       set the key, adding it when it does not exist
    ~key              delete a key
    file:key=value    act on `file` instead of params.yaml (`file:+key=value`
                      and `file:~key` combine both)

Keys are dotted paths with list indices (`train.layers[1]`). Each value is
read as a YAML scalar or flow collection: `0.1` is a float, `true` a bool,
`'0.1'` a string, `[1, 2]` a list. A comma outside brackets and quotes makes
a sweep (`lr=0.1,0.01` is two values), as do `choice(a, b)` and
`range(start, stop[, step])`. `expand_sweeps` turns sweeps into one list of
single-valued overrides per combination.

Applying overrides reads each params file from one folder and writes the
changed file into another (or the same) folder. YAML, TOML and Python files
are edited in their source text, so comments, blank lines, key order and
the formatting of untouched values stay as they were. YAML edits use the
node positions that PyYAML records (yamledit.py), TOML edits use tomlkit,
and Python edits use the syntax tree (pyedit.py). An edited YAML or TOML
file must read back as exactly the data that the overrides produce. When it
does not, or yamledit.py cannot edit the file's structure, the file is
rewritten whole without its comments, as JSON files always are.
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import tomli_w
import tomlkit
import tomlkit.exceptions
import yaml

from expfs.pipeline.errors import OverrideError, ParamsError
from expfs.pipeline.params import (
    DEFAULT_PARAMS_FILE,
    Action,
    KeyPart,
    Override,
    params_format,
    parse_key,
    parse_params_text,
)
from expfs.pipeline.pyedit import apply_to_python_source
from expfs.pipeline.yamledit import UnsupportedEdit, edit_yaml_source

log = logging.getLogger(__name__)

_PREFIXES: tuple[tuple[str, Action], ...] = (
    ("++", "force_add"),
    ("+", "add"),
    ("~", "delete"),
)
_FUNCTION = re.compile(r"^(choice|range)\((.*)\)$", re.DOTALL)


def parse_override(text: str) -> Override:
    """Parse one `-S` argument, raising OverrideError if it is malformed."""
    file_name = DEFAULT_PARAMS_FILE
    rest = text.strip()
    # As in DVC, a colon before the first `=` separates the file name.
    if ":" in rest.partition("=")[0]:
        file_name, _, rest = rest.partition(":")
    action, file_name = _take_prefix(file_name)
    if action == "set":
        action, rest = _take_prefix(rest)
    key, has_value, raw_value = rest.partition("=")
    if not has_value and action != "delete":
        raise OverrideError(
            f"invalid override '{text}': expected [file:]key=value, such as "
            "train.lr=0.01 or params.json:train.lr=0.01"
        )
    try:
        parts = parse_key(key)
    except ValueError:
        raise OverrideError(
            f"invalid override '{text}': '{key}' is not a key; use dotted "
            "names with list indices, such as train.layers[1]"
        ) from None
    try:
        params_format(file_name)
    except ParamsError as exc:
        raise OverrideError(f"invalid override '{text}': {exc.message}") from None
    values = _parse_values(raw_value, text) if has_value else ()
    return Override(text, file_name, key, parts, action, values)


def _take_prefix(text: str) -> tuple[Action, str]:
    for prefix, action in _PREFIXES:
        if text.startswith(prefix):
            return action, text[len(prefix) :]
    return "set", text


def _parse_values(raw: str, text: str) -> tuple[Any, ...]:
    stripped = raw.strip()
    function = _FUNCTION.match(stripped)
    if function is not None:
        items = [_parse_scalar(item, text) for item in _split_top_level(function[2])]
        if function[1] == "choice":
            return tuple(items)
        return _range_values(items, text)
    return tuple(_parse_scalar(item, text) for item in _split_top_level(raw))


def _range_values(args: list[Any], text: str) -> tuple[Any, ...]:
    numeric = all(isinstance(a, int | float) and not isinstance(a, bool) for a in args)
    if not numeric or not 1 <= len(args) <= 3 or (len(args) == 3 and args[2] == 0):
        raise OverrideError(
            f"invalid override '{text}': range takes 1 to 3 numbers "
            "(stop, or start, stop[, step]) and a step other than 0"
        )
    start, stop, step = (0, args[0], 1) if len(args) == 1 else (*args[:2], 1)
    if len(args) == 3:
        step = args[2]
    values: list[Any] = []
    current = start
    while (step > 0 and current < stop) or (step < 0 and current > stop):
        values.append(current)
        current = start + step * len(values)
    if not values:
        raise OverrideError(f"invalid override '{text}': the range is empty")
    return tuple(values)


def _split_top_level(raw: str) -> list[str]:
    """Split on commas that are outside brackets, braces and quotes."""
    items: list[str] = []
    depth = 0
    quote = ""
    current: list[str] = []
    for char in raw:
        if quote:
            if char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        elif char == "," and depth == 0:
            items.append("".join(current))
            current = []
            continue
        current.append(char)
    items.append("".join(current))
    return items


def _parse_scalar(text: str, override: str) -> Any:
    stripped = text.strip()
    if not stripped:
        return ""
    try:
        value = yaml.safe_load(stripped)
    except yaml.YAMLError:
        raise OverrideError(
            f"invalid override '{override}': value '{stripped}' is not a valid "
            "YAML value; quote it to pass a string"
        ) from None
    # PyYAML follows YAML 1.1, where yes/no/on/off are booleans, but YAML 1.2
    # and DVC read only true/false as booleans.
    if isinstance(value, bool) and stripped.lower() not in ("true", "false"):
        return stripped
    return value


def expand_sweeps(overrides: Sequence[Override]) -> list[list[Override]]:
    """Return one list of single-valued overrides per combination of sweep values."""
    choices = [
        [replace(o, values=(value,)) for value in o.values] if o.values else [o]
        for o in overrides
    ]
    return [list(combination) for combination in itertools.product(*choices)]


def apply_to_data(data: Any, override: Override, file_label: str) -> Any:
    """Return a copy of the params `data` with `override` applied."""
    if override.is_sweep:
        raise OverrideError(
            f"override '{override.text}' has several values; expand the sweep "
            "into single values before applying it"
        )
    result = copy.deepcopy(data) if data is not None else {}
    _apply(result, override, file_label)
    return result


def _apply(root: Any, override: Override, file_label: str) -> None:
    parts = override.parts
    creating = override.action in ("add", "force_add")
    node = root
    for depth, part in enumerate(parts[:-1]):
        child = _child(node, part)
        if child is _MISSING:
            if not creating:
                raise _missing(override, file_label, parts[: depth + 1])
            _assign(node, part, {}, override, file_label)
            # Read the child back, because a tomlkit container stores a copy
            # of the dict it is given.
            child = _child(node, part)
        node = child
    last = parts[-1]
    exists = _child(node, last) is not _MISSING
    if override.action == "delete":
        if not exists:
            raise _missing(override, file_label, parts)
        _delete(node, last)
        return
    if override.action == "set" and not exists:
        raise _missing(override, file_label, parts)
    if override.action == "add" and exists:
        raise OverrideError(
            f"override '{override.text}': key '{override.key}' already exists "
            f"in '{file_label}'; drop the '+' to change it, or use '++'"
        )
    _assign(node, last, override.value, override, file_label)


_MISSING = object()


def _child(node: Any, part: KeyPart) -> Any:
    if isinstance(node, dict):
        if part in node:
            return node[part]
        if isinstance(part, str) and part.lstrip("-").isdigit() and int(part) in node:
            return node[int(part)]
        return _MISSING
    if isinstance(node, list):
        index = _index(part)
        if index is not None and -len(node) <= index < len(node):
            return node[index]
    return _MISSING


def _index(part: KeyPart) -> int | None:
    if isinstance(part, int):
        return part
    return int(part) if part.lstrip("-").isdigit() else None


def _assign(
    node: Any, part: KeyPart, value: Any, override: Override, file_label: str
) -> None:
    if isinstance(node, dict):
        key: Any = part
        if isinstance(part, str) and part not in node and part.isdigit():
            key = int(part) if int(part) in node else part
        node[key] = value
        return
    if isinstance(node, list):
        index = _index(part)
        if index is not None and -len(node) <= index < len(node):
            node[index] = value
            return
        if index == len(node) and override.action != "set":
            node.append(value)
            return
    raise OverrideError(
        f"override '{override.text}': cannot set '{override.key}' in "
        f"'{file_label}' because its parent is a {type(node).__name__}, not a "
        "mapping or a list with that index"
    )


def _delete(node: Any, part: KeyPart) -> None:
    if isinstance(node, dict):
        if part in node:
            del node[part]
        else:
            del node[int(part)]
    else:
        index = _index(part)
        assert index is not None
        del node[index]


def _missing(
    override: Override, file_label: str, parts: tuple[KeyPart, ...]
) -> OverrideError:
    return OverrideError(
        f"override '{override.text}': param '{override.key}' not found in "
        f"'{file_label}'; fix the key, or write '+{override.text.lstrip('+')}' "
        "to add it"
    )


def apply_overrides(
    overrides: Iterable[Override], source_dir: Path | str, dest_dir: Path | str
) -> list[Path]:
    """Apply `overrides` to params files read from `source_dir`, writing into `dest_dir`.

    Files are named relative to both folders (`params.yaml`,
    `conf/train.json`); they may be the same folder. Every override is
    checked before any file is written. Returns the paths written.
    """
    outputs: dict[Path, str] = {}
    for file_name, group in overrides_by_file(overrides).items():
        source = Path(source_dir, file_name)
        outputs[Path(dest_dir, file_name)] = _apply_file(source, file_name, group)
    for path, text in outputs.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return list(outputs)


def _apply_file(source: Path, file_name: str, group: list[Override]) -> str:
    fmt = params_format(file_name)
    try:
        text = source.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise OverrideError(
            f"override '{group[0].text}': params file '{file_name}' not found "
            f"in '{source.parent}'; create it or name an existing file"
        ) from None
    if fmt == "python":
        for override in group:
            if override.is_sweep:
                raise OverrideError(
                    f"override '{override.text}' has several values; expand "
                    "the sweep into single values before applying it"
                )
            text = apply_to_python_source(text, override, file_name, apply_to_data)
        return text
    data = parse_params_text(text, fmt, source)
    for override in group:
        data = apply_to_data(data, override, file_name)
    if fmt not in ("yaml", "toml"):
        return _dump(data, fmt, text, file_name)
    try:
        edited = _edit_source(text, fmt, group, file_name)
        if not _reads_as(edited, fmt, source, data):
            raise UnsupportedEdit(
                "the edited text did not read back as the expected params"
            )
        return edited
    except UnsupportedEdit as exc:
        # _dump raises for data that the format cannot store, so warn only
        # once the whole rewrite has succeeded.
        rewritten = _dump(data, fmt, text, file_name)
        log.warning(
            "rewrote %s whole, dropping its comments, because %s could not be "
            "edited in place: %s",
            file_name,
            ", ".join(o.text for o in group),
            exc,
        )
        return rewritten


def _edit_source(text: str, fmt: str, group: list[Override], file_name: str) -> str:
    """Apply `group` to the YAML or TOML source `text`, raising UnsupportedEdit on failure."""
    if fmt == "yaml":
        for override in group:
            text = edit_yaml_source(text, override)
        return text
    try:
        document = tomlkit.parse(text)
        for override in group:
            _apply(document, override, file_name)
    # ConvertError (a TOMLKitError) is raised for a value TOML cannot store,
    # such as None, and OverrideError if tomlkit's tree differs from the data.
    except (tomlkit.exceptions.TOMLKitError, OverrideError) as exc:
        raise UnsupportedEdit(f"tomlkit failed: {exc}") from exc
    return tomlkit.dumps(document)


def _reads_as(text: str, fmt: str, source: Path, expected: Any) -> bool:
    try:
        data = parse_params_text(text, fmt, source)
    except ParamsError:
        return False
    return _same_data(data, expected)


def _same_data(left: Any, right: Any) -> bool:
    """Compare parsed params, telling apart values that == confuses (True and 1)."""
    if type(left) is not type(right):
        return False
    if isinstance(left, dict):
        return left.keys() == right.keys() and all(
            _same_data(value, right[key]) for key, value in left.items()
        )
    if isinstance(left, list):
        return len(left) == len(right) and all(
            _same_data(a, b) for a, b in zip(left, right, strict=True)
        )
    if isinstance(left, float) and math.isnan(left):
        return math.isnan(right)
    return bool(left == right)


def _dump(data: Any, fmt: str, original: str, file_name: str) -> str:
    if fmt == "yaml":
        return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    if fmt == "json":
        return (
            json.dumps(data, indent=_json_indent(original), ensure_ascii=False) + "\n"
        )
    try:
        return tomli_w.dumps(data)
    except TypeError as exc:
        raise OverrideError(
            f"cannot write '{file_name}' as TOML: {exc}; TOML has no null, so "
            "set a string or a number instead"
        ) from None


def _json_indent(text: str) -> int:
    match = re.search(r"\n( +)\S", text)
    return len(match.group(1)) if match else 2


def overrides_by_file(overrides: Iterable[Override]) -> Mapping[str, list[Override]]:
    """Group overrides by params file, keeping their order."""
    grouped: dict[str, list[Override]] = {}
    for override in overrides:
        grouped.setdefault(override.file, []).append(override)
    return grouped
