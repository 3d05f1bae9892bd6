"""The lower layers of expfs import nothing from the layers above them.

Store, tree, workspace and FUSE are stacked in that order: each may import
itself and the layers below, and the shared `expfs.errors` and
`expfs.text`. Imports inside functions count too, because they are where
an upward dependency hides from a module-level scan.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import expfs

PACKAGE = Path(expfs.__file__).parent
SHARED = {"errors", "text"}
LAYERS = ["store", "tree", "workspace", "fuse"]


def expfs_imports(path: Path) -> list[tuple[int, str]]:
    """Return (line, top-level expfs module) of each import of expfs in a file."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "expfs" and len(parts) > 1:
                found.append((node.lineno, parts[1]))
    return found


@pytest.mark.parametrize("layer", LAYERS)
def test_layer_imports_only_lower_layers(layer: str) -> None:
    allowed = SHARED | set(LAYERS[: LAYERS.index(layer) + 1])
    upward = [
        f"{path.relative_to(PACKAGE.parent)}:{line} imports expfs.{module}"
        for path in sorted((PACKAGE / layer).rglob("*.py"))
        for line, module in expfs_imports(path)
        if module not in allowed
    ]
    assert upward == []
