"""`${...}` interpolation over a context of vars and params, as in DVC 3.x.

The context is built from `params.yaml` (when it exists), the top-level
`vars`, a stage's own `vars` and the `item`/`key` of `foreach` and `matrix`.
Defining a value that an earlier source already defines is an error,
except that mappings from several sources merge key by key.

Rules that DVC 3.67 follows and this module repeats (checked by running it):

- A string that is exactly one `${expr}` becomes the value itself, so
  `frozen: ${flag}` is a bool. Anywhere else the value is formatted: booleans
  as `true`/`false`, None as `None`, numbers with Python's `str`.
- Lists cannot be interpolated into a stage field, and mappings only into
  `cmd`, where `${opts}` becomes command-line options: `--name value` for
  each leaf (nested keys joined by dots, strings shell-quoted), `--flag` for
  true, nothing for false, `--name a b` for a list.
- `\\${` is a literal `${`.

NOTE: DVC's `parsing.bool` and `parsing.list` settings in `.dvc/config`
(`boolean_optional`, `append`) are not read; the defaults above always apply.
"""

from __future__ import annotations

import copy
import re
import shlex
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from expfs.pipeline.errors import TemplateError
from expfs.pipeline.params import KeyPart, MissingKey, format_key, lookup, parse_key

_EXPR = re.compile(r"(?<!\\)\$\{(?P<inner>[^{}]*)\}")
PRIMITIVES = (str, int, float, bool, type(None))


class Unresolved(Exception):
    """An expression that names nothing in the context."""

    def __init__(self, expr: str, found: tuple[KeyPart, ...]) -> None:
        super().__init__(expr)
        self.expr = expr
        self.found = found


class BadValue(Exception):
    """An expression whose value cannot be placed where it is used."""

    def __init__(self, expr: str, detail: str) -> None:
        super().__init__(detail)
        self.expr = expr
        self.detail = detail


class Redefinition(Exception):
    """A source defines a key that an earlier source already defines."""

    def __init__(self, key: str, source: str, earlier: str) -> None:
        super().__init__(key)
        self.key = key
        self.source = source
        self.earlier = earlier


@dataclass
class Context:
    """Values that `${...}` expressions can name, with the source of each leaf.

    `files` maps a source label to the params file it came from, so that the
    keys a stage uses from a file can be reported (DVC's tracked vars).
    """

    data: dict[str, Any] = field(default_factory=dict)
    sources: dict[tuple[KeyPart, ...], str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    used: dict[str, dict[str, Any]] = field(default_factory=dict)

    def copy(self) -> Context:
        return Context(
            copy.deepcopy(self.data), dict(self.sources), dict(self.files), {}
        )

    def merge(self, values: Mapping[str, Any], source: str, file: str | None) -> None:
        """Add `values` from `source`, raising Redefinition on a clash."""
        if file is not None:
            self.files[source] = file
        self._merge_into(self.data, values, (), source)

    def _merge_into(
        self,
        target: dict[Any, Any],
        values: Mapping[Any, Any],
        prefix: tuple[KeyPart, ...],
        source: str,
    ) -> None:
        for key, value in values.items():
            path = (*prefix, key)
            if key not in target:
                target[key] = copy.deepcopy(value)
                for leaf in _leaf_paths(value, path):
                    self.sources[leaf] = source
            elif isinstance(target[key], dict) and isinstance(value, Mapping):
                self._merge_into(target[key], value, path, source)
            else:
                earlier = self._source_of(path) or "an earlier source"
                raise Redefinition(format_key(path), source, earlier)

    def set_local(self, name: str, value: Any, source: str) -> None:
        """Bind `name` (`item`, `key`), replacing what the context had under it."""
        self.data[name] = value
        for leaf in [p for p in self.sources if p and p[0] == name]:
            del self.sources[leaf]
        for leaf in _leaf_paths(value, (name,)):
            self.sources[leaf] = source

    def _source_of(self, path: tuple[KeyPart, ...]) -> str | None:
        for length in range(len(path), 0, -1):
            source = self.sources.get(path[:length])
            if source is not None:
                return source
        for leaf, source in self.sources.items():
            if leaf[: len(path)] == path:
                return source
        return None

    def select(self, expr: str) -> Any:
        """Return the value that `expr` (`a.b[0]`) names, recording file params used."""
        try:
            parts = parse_key(expr.strip())
        except ValueError:
            raise Unresolved(expr, ()) from None
        try:
            value = lookup(self.data, parts)
        except MissingKey as exc:
            raise Unresolved(expr.strip(), exc.found) from None
        self._track(parts, value)
        return value

    def _track(self, parts: tuple[KeyPart, ...], value: Any) -> None:
        for leaf in _leaf_paths(value, parts):
            source = self._source_of(leaf)
            file = self.files.get(source) if source else None
            if file is None:
                continue
            leaf_value = lookup(self.data, leaf)
            self.used.setdefault(file, {})[format_key(leaf)] = leaf_value


def _leaf_paths(value: Any, path: tuple[KeyPart, ...]) -> Iterator[tuple[KeyPart, ...]]:
    if isinstance(value, Mapping) and value:
        for key, child in value.items():
            yield from _leaf_paths(child, (*path, key))
    else:
        yield path


def has_expressions(text: str) -> bool:
    return _EXPR.search(text) is not None


def render(value: Any, context: Context, *, in_cmd: bool = False) -> Any:
    """Interpolate every string in `value` (keys of mappings included)."""
    if isinstance(value, str):
        return render_string(value, context, in_cmd=in_cmd)
    if isinstance(value, list):
        return [render(item, context, in_cmd=in_cmd) for item in value]
    if isinstance(value, dict):
        rendered: dict[Any, Any] = {}
        for key, item in value.items():
            new_key = render_string(key, context) if isinstance(key, str) else key
            rendered[new_key] = render(item, context, in_cmd=in_cmd)
        return rendered
    return value


def render_string(text: str, context: Context, *, in_cmd: bool = False) -> Any:
    """Interpolate one string. A string that is one whole `${expr}` keeps the value's type."""
    matches = list(_EXPR.finditer(text))
    if not matches:
        return _unescape(text)
    if len(matches) == 1 and matches[0].span() == (0, len(text)):
        expr = matches[0].group("inner")
        value = context.select(expr)
        _check_placeable(expr, value, in_cmd)
        if isinstance(value, dict):
            return options_from_mapping(value, expr)
        return value
    pieces: list[str] = []
    last = 0
    for match in matches:
        expr = match.group("inner")
        value = context.select(expr)
        _check_placeable(expr, value, in_cmd)
        pieces.append(_unescape(text[last : match.start()]))
        pieces.append(format_value(value, expr))
        last = match.end()
    pieces.append(_unescape(text[last:]))
    return "".join(pieces)


def select_any(text: str, context: Context) -> Any:
    """Resolve a `foreach` or `matrix` source: one whole `${expr}` of any type."""
    matches = list(_EXPR.finditer(text))
    if len(matches) == 1 and matches[0].span() == (0, len(text)):
        return context.select(matches[0].group("inner"))
    return render_string(text, context)


def _check_placeable(expr: str, value: Any, in_cmd: bool) -> None:
    if isinstance(value, PRIMITIVES):
        return
    if isinstance(value, dict):
        if in_cmd:
            return
        raise BadValue(
            expr,
            f"'{expr}' is a mapping, which can be interpolated only into cmd "
            "(as --key value options); name one of its keys instead",
        )
    raise BadValue(
        expr,
        f"'{expr}' is a {type(value).__name__}, which cannot be interpolated "
        f"into a stage field; name one item instead, such as '{expr}[0]'",
    )


def format_value(value: Any, expr: str) -> str:
    """Format a value for a place inside a longer string, as DVC does."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return options_from_mapping(value, expr)
    return str(value)


def options_from_mapping(value: Mapping[Any, Any], expr: str) -> str:
    """Turn a mapping into command-line options (`--lr 0.1 --deep`)."""
    words: list[str] = []
    for leaf in _leaf_paths(value, ()):
        name = format_key(leaf)
        item = lookup(value, leaf)
        if isinstance(item, bool):
            if item:
                words.append(f"--{name}")
        elif isinstance(item, str):
            words.append(f"--{name} {shlex.quote(item)}")
        elif isinstance(item, list | tuple):
            words.append(_list_option(name, item, expr))
        elif isinstance(item, dict):
            # An empty mapping has no leaves to turn into options.
            continue
        else:
            words.append(f"--{name} {item}")
    return " ".join(word for word in words if word)


def _list_option(name: str, items: list[Any] | tuple[Any, ...], expr: str) -> str:
    words: list[str] = []
    for item in items:
        if isinstance(item, list | tuple | dict):
            raise BadValue(
                expr,
                f"'{expr}' has a nested list or mapping under '{name}', which "
                "cannot be turned into command-line options",
            )
        words.append(shlex.quote(item) if isinstance(item, str) else str(item))
    if not words:
        return ""
    return f"--{name} " + " ".join(words)


def _unescape(text: str) -> str:
    return text.replace("\\${", "${")


def template_error(
    exc: Unresolved | BadValue, where: str, stage: str, field_name: str
) -> TemplateError:
    """Describe a failed expression in a stage field as a user-facing error."""
    prefix = f"{where}: stage '{stage}': {field_name}"
    if isinstance(exc, BadValue):
        return TemplateError(f"{prefix}: {exc.detail}")
    near = f" ('{format_key(exc.found)}' is defined)" if exc.found else ""
    return TemplateError(
        f"{prefix}: template variable '{exc.expr}' is not defined{near}; "
        "define it under vars or in params.yaml, or fix the name"
    )
