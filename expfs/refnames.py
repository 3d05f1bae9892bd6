"""The rules of `git check-ref-format`, to explain why Git rejects a name.

Branch and tag names go to Git, and experiment names follow the same rules
so that an experiment's name can also name its promoted branch. Each is
checked before anything is stored. The rules are those of
git-check-ref-format(1), Git 2.x.
"""

from __future__ import annotations

# Characters Git rejects anywhere in a ref name, besides control characters.
_FORBIDDEN = " ~^:?*[\\"


def ref_name_problem(name: str) -> str | None:
    """Return which rule of `git check-ref-format` `name` breaks, or None."""
    if not name:
        return "it is empty"
    for char in name:
        if ord(char) < 32 or ord(char) == 127:
            return f"it contains the control character {char!r}"
        if char in _FORBIDDEN:
            shown = "a space" if char == " " else repr(char)
            return f"it contains {shown}, which Git does not allow in a ref name"
    if name.startswith("/") or name.endswith("/"):
        return "it starts or ends with '/'"
    if "//" in name:
        return "it contains '//'"
    if ".." in name:
        return "it contains '..'"
    if "@{" in name:
        return "it contains '@{'"
    if name == "@":
        return "it is '@', which Git reads as HEAD"
    if name.endswith("."):
        return "it ends with '.'"
    for component in name.split("/"):
        if component.startswith("."):
            return f"its part {component!r} starts with '.'"
        if component.endswith(".lock"):
            return f"its part {component!r} ends with '.lock'"
    return None
