"""argparse value types shared by the commands (numbers within bounds, refused with a message that says what is
allowed), and credentials given as a file option or an environment variable. Only the standard library is
imported: the janitor (a CronJob) and the health probe use these too."""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path

_DECIMAL = re.compile(r"[0-9]{1,9}(\.[0-9]{1,9})?", re.ASCII)
_WHOLE = re.compile(r"[0-9]{1,12}", re.ASCII)


def seconds_between(low: float, high: float) -> Callable[[str], float]:
    """A number of seconds from `low` to `high`, both included."""

    def parse(value: str) -> float:
        # ASCII only: float() also takes other scripts' digits, exponents, "nan" and "inf".
        if not _DECIMAL.fullmatch(value):
            raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds (ASCII digits, e.g. 30 or 2.5)")
        seconds = float(value)
        if not low <= seconds <= high:
            raise argparse.ArgumentTypeError(f"{value} is out of range: {low:g} to {high:g} seconds")
        return seconds

    return parse


def positive(kind: type[int] | type[float]) -> Callable[[str], int | float]:
    """A whole number (`int`) or a number (`float`) greater than 0."""
    what = "whole number" if kind is int else "number"

    def parse(value: str) -> int | float:
        pattern = _WHOLE if kind is int else _DECIMAL
        if not pattern.fullmatch(value):
            raise argparse.ArgumentTypeError(f"{value!r} is not a {what} (ASCII digits)")
        number = kind(value)
        if number <= 0:
            raise argparse.ArgumentTypeError(f"{value} must be greater than 0")
        return number

    return parse


def secret_from_file_or_env(path: str | None, option: str, variable: str,
                            environ: Mapping[str, str] | None = None) -> str | None:
    """A credential: the content of `path` (given as `option`, stripped) if set, else $`variable`, else None.
    Kept out of command lines, where `ps` would show it. ValueError names the option if the file is unreadable
    or empty."""
    env = os.environ if environ is None else environ
    if path is None:
        return env.get(variable, "").strip() or None
    try:
        value = Path(path).read_text().strip()
    except OSError as exc:
        raise ValueError(f"cannot read {option} {path}: {exc.strerror}") from None
    if not value:
        raise ValueError(f"{option} {path} is empty")
    return value
