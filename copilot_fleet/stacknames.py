"""Stack names: one validation for every command, before a name becomes part of any path.

A stack name ends up in `stacks/Pulumi.<stack>.yaml`, in the local fleet's `.fleet/<stack>/` (which `down --purge`
removes) and in `render`'s default output directory. So `.`, `..`, a `/` or a trailing newline must never get that
far: `down --stack .. --purge` once removed the whole project.
"""

from __future__ import annotations

import argparse
import re

from copilot_fleet.errors import FleetError

DEFAULT_STACK = "local"

# Pulumi's own rule (letters, digits, '-', '_', '.'; at most 100), minus a leading '.' or '-': no '.', '..' or
# hidden directory, and nothing that reads as a command-line option.
_STACK_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,99}")
RULE = "1 to 100 letters, digits, '_', '-' and '.', starting with a letter, a digit or '_'"


class InvalidStackName(FleetError, ValueError):
    """A name that cannot be a stack: the message says what is allowed."""


def check_stack_name(name: object) -> str:
    """`name` if it is a valid stack name, else InvalidStackName."""
    if not isinstance(name, str) or not _STACK_NAME.fullmatch(name):
        raise InvalidStackName(f"{name!r} is not a stack name: use {RULE} (the STACK of stacks/Pulumi.STACK.yaml)")
    return name


def stack_name_arg(value: str) -> str:
    """argparse `type=` for every --stack option."""
    try:
        return check_stack_name(value)
    except InvalidStackName as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_stack_argument(parser: argparse.ArgumentParser | argparse._MutuallyExclusiveGroup, *,
                       required: bool = False, default: str | None = DEFAULT_STACK, help: str | None = None) -> None:
    """The --stack option, validated, the same for every command."""
    if help is None:
        help = "stack name: stacks/Pulumi.STACK.yaml" + (f" (default {default})" if default else "")
    parser.add_argument("--stack", type=stack_name_arg, required=required, default=None if required else default,
                        metavar="STACK", help=help)
