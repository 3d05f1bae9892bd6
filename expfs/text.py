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


def exit_description(status: int) -> str:
    """Describe a `subprocess` return code: negative codes are signal numbers."""
    if status >= 0:
        return f"exited with status {status}"
    import signal

    number = -status
    try:
        name = signal.Signals(number).name
    except ValueError:
        return f"was killed by signal {number}"
    return f"was killed by signal {number} ({name})"


def shell_exit_code(status: int) -> int:
    """Return the exit status a shell gives for a `subprocess` return code.

    A process killed by signal N gives 128 + N, as in sh and bash.
    """
    return 128 - status if status < 0 else status
