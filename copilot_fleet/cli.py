"""`copilot-fleet`: the command-line entry point."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from copilot_fleet import __version__
from copilot_fleet.errors import CommandError, FleetError
from copilot_fleet.spec import ConfigError

# Subcommand modules under copilot_fleet.commands, in help order. A module that is missing is skipped so that a
# partial install still runs the commands it has.
COMMAND_MODULES = ("render", "local", "verify", "sessions", "operate")


__all__ = ["CommandError", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="copilot-fleet",
        description="Deploy and verify fleets of GitHub Copilot CLI servers.",
    )
    parser.add_argument("--version", action="version", version=f"copilot-fleet {__version__}")
    parser.add_argument("--project-dir", default=None,
                        help="the directory with Pulumi.yaml (default: the nearest one at or above the cwd)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"copilot_fleet.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"copilot_fleet.commands.{name}":
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"copilot-fleet: {exc}", file=sys.stderr)
        return 2
    except FleetError as exc:  # one of ours: the message says what to do; anything else is a bug (traceback)
        print(f"copilot-fleet {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("copilot-fleet: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
