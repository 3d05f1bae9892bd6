"""Argument types for numeric options, so argparse rejects a bad value at parse time.

Each type raises `argparse.ArgumentTypeError` with the value and the accepted
range; argparse prints it after the option's name and exits with status 2.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def _parse_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a whole number: give, for example, 4"
        ) from None


def _parse_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a finite number: give, for example, 1 or 0.5"
        )
    return value


def positive_int(text: str) -> int:
    """Parse a count of at least 1 (jobs, experiments)."""
    value = _parse_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is invalid: give 1 or more")
    return value


def int_in_range(low: int, high: int) -> Callable[[str], int]:
    """Return a type that parses a whole number from `low` to `high`."""

    def parse(text: str) -> int:
        value = _parse_int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"{text!r} is out of range: give {low} to {high}"
            )
        return value

    return parse


def non_negative_float(text: str) -> float:
    """Parse a finite number of 0 or more (hours, MiB)."""
    value = _parse_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative: give 0 or more")
    return value
