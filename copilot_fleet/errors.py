"""Errors the command line prints as a message (no traceback), in a module of their own so that they are the same
classes whether the CLI runs as the `copilot-fleet` console script or as `python -m copilot_fleet.cli`."""

from __future__ import annotations


class CommandError(RuntimeError):
    """A failure the user can act on: printed without a traceback, exit status 1."""


class StackFileError(ValueError):
    """A stack file that cannot be read as stack config (not YAML, `config` not a mapping)."""
