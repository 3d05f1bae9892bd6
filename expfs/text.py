"""Wording helpers shared by the CLI and the library's messages."""

from __future__ import annotations


def plural(count: int, noun: str, plural_noun: str | None = None) -> str:
    """Return `count` and `noun`, with the noun in plural unless the count is 1.

    `plural_noun` is the plural of an irregular noun; by default an "s" is
    added to the last word.
    """
    if count == 1:
        return f"{count} {noun}"
    return f"{count} {plural_noun or noun + 's'}"
