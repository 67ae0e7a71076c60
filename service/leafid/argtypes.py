"""argparse ``type=`` converters shared by every ``leafid`` subcommand, training's included.

The one place for such checkers: an option whose value has a range uses one of these
rather than a bare ``int`` or ``float``, so a bad value is a usage error naming the
range.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable


def _number(text: str, kind: type[int] | type[float]) -> int | float:
    try:
        return kind(text)
    except ValueError:
        word = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"not {word}: {text!r}") from None


def int_at_least(minimum: int) -> Callable[[str], int]:
    """A converter accepting integers >= ``minimum``."""

    def parse(text: str) -> int:
        value = int(_number(text, int))
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


def positive_float(text: str) -> float:
    """A number > 0."""
    value = float(_number(text, float))
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def non_negative_float(text: str) -> float:
    """A number >= 0."""
    value = float(_number(text, float))
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def fraction(text: str) -> float:
    """A number between 0 and 1."""
    value = float(_number(text, float))
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return value
