"""The root of copilot-fleet's errors, and the ones the command line shares, in a module of their own so that they
are the same classes whether the CLI runs as the `copilot-fleet` console script or as `python -m copilot_fleet.cli`.

Every error copilot-fleet raises on purpose derives from `FleetError` (tests/structure/test_errors.py checks every
exception class of the package) and from the builtin that best describes it, so callers may catch either
(`except ValueError` still catches ConfigError). `copilot-fleet` prints a FleetError as one line (exit status 1;
invalid stack config, ConfigError, exit status 2); anything else is a bug and shows its traceback.
"""

from __future__ import annotations


class FleetError(Exception):
    """A failure the user can act on; the message says what was wrong and what is allowed or what to do."""


class CommandError(FleetError, RuntimeError):
    """A command could not do its job: printed without a traceback, exit status 1."""


class StackFileError(FleetError, ValueError):
    """A stack file that cannot be read as stack config (not YAML, `config` not a mapping)."""


class ProjectNotFound(FleetError, FileNotFoundError):
    """No Pulumi.yaml in the directory given or any directory above it."""
