"""argparse value types shared by the commands: numbers within bounds, refused with a message that says what is
allowed. Only argparse is imported: the janitor (a CronJob) and the health probe use these too."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def seconds_between(low: float, high: float) -> Callable[[str], float]:
    """A number of seconds from `low` to `high`, both included."""

    def parse(value: str) -> float:
        try:
            seconds = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from None
        if not low <= seconds <= high:
            raise argparse.ArgumentTypeError(f"{value} is out of range: {low:g} to {high:g} seconds")
        return seconds

    return parse


def positive(kind: type[int] | type[float]) -> Callable[[str], int | float]:
    """A whole number (`int`) or a number (`float`) greater than 0."""
    what = "whole number" if kind is int else "number"

    def parse(value: str) -> int | float:
        try:
            number = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not a {what}") from None
        if number <= 0:
            raise argparse.ArgumentTypeError(f"{value} must be greater than 0")
        return number

    return parse
