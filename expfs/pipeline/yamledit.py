"""Edit a YAML params file in its source text, keeping comments and layout.

PyYAML's composer records where each node starts and ends in the text. An
override replaces only the text of the value it changes, inserts lines after
the last entry of the mapping or list it adds to, and removes the lines of a
key or list item it deletes. The rest of the file (comments, blank lines,
key order, quoting and indentation) stays byte for byte. New values are
written on one line, in flow style for lists and mappings.

Files with anchors, aliases or merge keys, and a few layouts (such as
deleting the first key of a mapping that starts on a `- ` line), raise
UnsupportedEdit. The caller then re-dumps the whole file, as it also does
when the edited text does not read back as the expected params.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from expfs.pipeline.params import KeyPart, Override

_DEFAULT_INDENT = 2


class UnsupportedEdit(Exception):
    """The override needs an edit that this module does not make in place."""


@dataclass(frozen=True)
class _Entry:
    """One item of a mapping or sequence node: its key node (None in a sequence) and value."""

    key: ScalarNode | None
    value: Node


def edit_yaml_source(text: str, override: Override) -> str:
    """Apply the single-valued `override` to the YAML source `text` and return the result.

    The override must already be known to apply cleanly to the parsed data,
    because this function does not repeat those checks. It raises
    UnsupportedEdit for structures it cannot edit in place.
    """
    editor = _Editor(text)
    return editor.apply(override)


class _Editor:
    def __init__(self, text: str) -> None:
        self.text = text
        try:
            self.root: Node | None = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError as exc:
            # Only an earlier override's edit can leave invalid YAML here.
            raise UnsupportedEdit(f"an edit produced invalid YAML: {exc}") from exc
        self.line_starts = [0]
        for index, char in enumerate(text):
            if char == "\n":
                self.line_starts.append(index + 1)
        self._constructor = yaml.SafeLoader("")
        self._reject_aliases()

    def _reject_aliases(self) -> None:
        # The composer returns an alias as the anchored node itself, whose
        # marks point at the anchor, so a position-based edit would land there.
        seen: set[int] = set()
        stack = [self.root] if self.root is not None else []
        while stack:
            node = stack.pop()
            if id(node) in seen:
                raise UnsupportedEdit("the file uses YAML anchors and aliases")
            seen.add(id(node))
            if isinstance(node, MappingNode):
                for key, value in node.value:
                    if key.tag == "tag:yaml.org,2002:merge":
                        raise UnsupportedEdit("the file uses YAML merge keys")
                    stack.extend((key, value))
            elif isinstance(node, SequenceNode):
                stack.extend(node.value)

    def apply(self, override: Override) -> str:
        parts = override.parts
        container = self.root
        for depth, part in enumerate(parts):
            if container is None:
                if override.action not in ("add", "force_add"):
                    raise UnsupportedEdit("the document is empty")
                return self._add_to_empty_document(parts, override.value)
            entry = self._find(container, part)
            if entry is None:
                if override.action not in ("add", "force_add"):
                    raise UnsupportedEdit(f"'{override.key}' was not found")
                return self._add(container, part, parts[depth + 1 :], override.value)
            if depth == len(parts) - 1:
                if override.action == "delete":
                    return self._delete(container, entry)
                return self._replace(entry, _flow_text(override.value, entry.value))
            container = entry.value
        raise UnsupportedEdit("the key has no parts")

    # Lookup

    def _find(self, container: Node, part: KeyPart) -> _Entry | None:
        if isinstance(container, MappingNode):
            found = None
            # PyYAML keeps the last of duplicate keys, so the last match wins.
            for key, value in container.value:
                if isinstance(key, ScalarNode) and _key_matches(
                    self._construct(key), part
                ):
                    found = _Entry(key, value)
            return found
        if isinstance(container, SequenceNode):
            index = _as_index(part)
            items = container.value
            if index is not None and -len(items) <= index < len(items):
                return _Entry(None, items[index])
            return None
        raise UnsupportedEdit("the parent of the key is not a mapping or a list")

    def _construct(self, node: Node) -> Any:
        return self._constructor.construct_object(node, deep=True)

    # Replacing a value

    def _replace(self, entry: _Entry, new_text: str) -> str:
        value = entry.value
        start = value.start_mark.index
        end = self._content_end(value)
        if _is_block_collection(value) and entry.key is not None:
            # A block collection starts on the line after `key:`, so the new
            # one-line value goes right after the colon.
            start = self._colon_after(entry.key) + 1
            new_text = " " + new_text
        elif _is_block_collection(value):
            if self._line_of(start) != self._line_of(self._dash_before(value)):
                raise UnsupportedEdit("a list item that starts below its dash")
        elif start == end:
            # An empty (null) value sits right after its `:` or `-`.
            new_text = " " + new_text
        return self.text[:start] + new_text + self.text[end:]

    # Deleting a key or a list item

    def _delete(self, container: Node, entry: _Entry) -> str:
        assert isinstance(container, MappingNode | SequenceNode)
        if len(container.value) == 1:
            # PyYAML reads a block with no entries as null, so write `{}` or `[]`.
            empty = "{}" if isinstance(container, MappingNode) else "[]"
            return self._replace_whole(container, empty)
        if container.flow_style:
            return self._delete_flow(container, entry)
        first = entry.key if entry.key is not None else entry.value
        first_line = self._line_of(first.start_mark.index)
        if entry.key is None:
            first_line = self._line_of(self._dash_before(entry.value))
        line_start = self.line_starts[first_line]
        prefix = self.text[line_start : first.start_mark.index]
        if entry.key is not None and prefix.strip():
            raise UnsupportedEdit("the key does not start its line")
        if entry.key is None and prefix.strip() != "-":
            raise UnsupportedEdit("the list item does not start its line")
        # NOTE: comment lines above the key stay, because nothing marks
        # whether they describe this key or the ones after it.
        end = self._line_end(self._last_line(entry.value))
        return self.text[:line_start] + self.text[end + 1 :]

    def _delete_flow(self, container: Node, entry: _Entry) -> str:
        entries = self._entries(container)
        position = next(i for i, e in enumerate(entries) if e.value is entry.value)
        if position + 1 < len(entries):
            start = _entry_start(entry)
            end = _entry_start(entries[position + 1])
        else:
            start = entries[position - 1].value.end_mark.index
            end = entry.value.end_mark.index
        return self.text[:start] + self.text[end:]

    def _replace_whole(self, node: Node, new_text: str) -> str:
        if node is self.root:
            start, end = node.start_mark.index, self._content_end(node)
            return self.text[:start] + new_text + self.text[end:]
        return self._replace(self._entry_of(node), new_text)

    def _entry_of(self, node: Node) -> _Entry:
        stack = [self.root]
        while stack:
            parent = stack.pop()
            for entry in self._entries(parent):
                if entry.value is node:
                    return entry
                stack.append(entry.value)
        raise UnsupportedEdit("the node has no parent")

    # Adding a key or a list item

    def _add(
        self,
        container: Node,
        part: KeyPart,
        below: tuple[KeyPart, ...],
        value: Any,
    ) -> str:
        if isinstance(container, MappingNode):
            key_text = _flow_text(part)
            if container.flow_style:
                nested = _nest(below, value)
                return self._add_flow(container, f"{key_text}: {_flow_text(nested)}")
            last = container.value[-1][1]
            column = container.value[0][0].start_mark.column
            lines = self._block_lines(key_text, below, value, column)
            return self._insert_lines(self._last_line(last), lines)
        if isinstance(container, SequenceNode):
            item_text = _flow_text(_nest(below, value))
            if container.flow_style:
                return self._add_flow(container, item_text)
            first_dash = self._dash_before(container.value[0])
            column = first_dash - self.line_starts[self._line_of(first_dash)]
            line = " " * column + "- " + item_text
            return self._insert_lines(self._last_line(container.value[-1]), [line])
        raise UnsupportedEdit("the parent of the key is not a mapping or a list")

    def _insert_lines(self, after_line: int, lines: list[str]) -> str:
        at = self._line_end(after_line)
        return self.text[:at] + "\n" + "\n".join(lines) + self.text[at:]

    def _add_flow(self, container: Node, item_text: str) -> str:
        entries = self._entries(container)
        if entries:
            at = entries[-1].value.end_mark.index
            item_text = ", " + item_text
        else:
            at = container.start_mark.index + 1
        return self.text[:at] + item_text + self.text[at:]

    def _add_to_empty_document(self, parts: tuple[KeyPart, ...], value: Any) -> str:
        lines = self._block_lines(_flow_text(parts[0]), parts[1:], value, 0)
        separator = "" if not self.text or self.text.endswith("\n") else "\n"
        return self.text + separator + "\n".join(lines) + "\n"

    def _block_lines(
        self, key_text: str, below: tuple[KeyPart, ...], value: Any, column: int
    ) -> list[str]:
        """Write `key: value` at `column`, as nested block mappings when `below` has keys."""
        lines = []
        step = self._indent_step()
        for part in below:
            lines.append(" " * column + key_text + ":")
            key_text = _flow_text(part)
            column += step
        lines.append(" " * column + key_text + ": " + _flow_text(value))
        return lines

    def _indent_step(self) -> int:
        """Return the indentation of the file's first nested block mapping, or 2."""
        stack = [self.root]
        while stack:
            node = stack.pop()
            if not isinstance(node, MappingNode) or node.flow_style:
                continue
            for key, value in node.value:
                if isinstance(value, MappingNode) and not value.flow_style:
                    step = value.start_mark.column - key.start_mark.column
                    if step > 0:
                        return int(step)
                stack.append(value)
        return _DEFAULT_INDENT

    # Positions

    def _entries(self, node: Node | None) -> list[_Entry]:
        if isinstance(node, MappingNode):
            return [_Entry(key, value) for key, value in node.value]
        if isinstance(node, SequenceNode):
            return [_Entry(None, value) for value in node.value]
        return []

    def _content_end(self, node: Node) -> int:
        """Return the index just past the node's last character.

        A block collection's end mark lies at the next token, after any
        trailing comments and blank lines, so its last entry's end is used.
        """
        if isinstance(node, ScalarNode) and node.style in ("|", ">"):
            return self._line_end(self._block_scalar_last_line(node))
        if _is_block_collection(node):
            entries = self._entries(node)
            if entries:
                return self._content_end(entries[-1].value)
        return int(node.end_mark.index)

    def _block_scalar_last_line(self, node: ScalarNode) -> int:
        # The end mark of a block scalar lies after its trailing blank lines.
        # Every other line up to it is content, even one starting with `#`.
        header = self._line_of(node.start_mark.index)
        last = header
        stop = min(node.end_mark.line + 1, len(self.line_starts))
        for line in range(header + 1, stop):
            start = self.line_starts[line]
            if start >= node.end_mark.index:
                break
            if self.text[start : self._line_end(line)].strip():
                last = line
        return last

    def _last_line(self, node: Node) -> int:
        end = self._content_end(node)
        return self._line_of(max(end - 1, node.start_mark.index))

    def _line_of(self, index: int) -> int:
        return bisect.bisect_right(self.line_starts, index) - 1

    def _line_end(self, line: int) -> int:
        """Return the index of the newline ending `line`, or the text's length."""
        end = self.text.find("\n", self.line_starts[line])
        return len(self.text) if end == -1 else end

    def _colon_after(self, key: ScalarNode) -> int:
        colon = self.text.find(":", key.end_mark.index)
        if colon == -1 or self.text[key.end_mark.index : colon].strip():
            raise UnsupportedEdit("no ':' follows the key on its line")
        return colon

    def _dash_before(self, item: Node) -> int:
        dash = self.text.rfind("-", 0, item.start_mark.index)
        if dash == -1 or self.text[dash + 1 : item.start_mark.index].strip():
            raise UnsupportedEdit("the list item does not follow a '-'")
        return dash


def _entry_start(entry: _Entry) -> int:
    node = entry.key if entry.key is not None else entry.value
    return int(node.start_mark.index)


def _is_block_collection(node: Node) -> bool:
    return isinstance(node, MappingNode | SequenceNode) and not node.flow_style


def _key_matches(key: Any, part: KeyPart) -> bool:
    if key == part:
        return True
    return isinstance(part, str) and part.lstrip("-").isdigit() and key == int(part)


def _as_index(part: KeyPart) -> int | None:
    if isinstance(part, int):
        return part
    return int(part) if part.lstrip("-").isdigit() else None


def _nest(parts: tuple[KeyPart, ...], value: Any) -> Any:
    for part in reversed(parts):
        value = {part: value}
    return value


def _flow_text(value: Any, old: Node | None = None) -> str:
    """Write `value` as one line of YAML, keeping the quote style of a replaced string."""
    representer = yaml.representer.SafeRepresenter(
        default_flow_style=True, sort_keys=False
    )
    node = representer.represent_data(value)
    if (
        isinstance(node, ScalarNode)
        and isinstance(old, ScalarNode)
        and isinstance(value, str)
        and old.style in ("'", '"')
    ):
        node.style = old.style
    # Wrapping the value in a one-item flow list makes PyYAML write it
    # inline without a document-end marker. The emitter still picks its own
    # quotes when the old style cannot represent the new string.
    wrapper = SequenceNode("tag:yaml.org,2002:seq", [node], flow_style=True)
    text = yaml.serialize(wrapper, width=2**31 - 1, allow_unicode=True)
    return str(text).strip()[1:-1]
