"""`copilot-fleet`: the command-line entry point."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from copilot_fleet import __version__
from copilot_fleet.errors import CommandError, FleetError, StackFileError
from copilot_fleet.spec import ConfigError

# Subcommand modules under copilot_fleet.commands, in help order. A module that is missing is skipped so that a
# partial install still runs the commands it has.
COMMAND_MODULES = ("render", "local", "verify", "sessions", "members", "operate")


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
    try:
        return _main(argv)
    except BrokenPipeError:
        # `copilot-fleet status | head`: the reader left. Say nothing more (stdout is gone; a traceback would only
        # reach the terminal as noise) and make the interpreter's final flush of stdout harmless too.
        _drop_stdout()
        return EXIT_BROKEN_PIPE


# What a shell reports for a process that SIGPIPE ended (128 + 13), as for `yes | head`.
EXIT_BROKEN_PIPE = 141


def _drop_stdout() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is not a real file (replaced in-process): nothing to flush later
        pass
    finally:
        os.close(devnull)


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ConfigError, StackFileError) as exc:
        # Config that cannot be used, whether its values or its YAML: the usage error status, as documented.
        where = f"copilot-fleet {args.command}: " if isinstance(exc, StackFileError) else "copilot-fleet: "
        print(f"{where}{exc}", file=sys.stderr)
        return 2
    except FleetError as exc:  # one of ours: the message says what to do; anything else is a bug (traceback)
        print(f"copilot-fleet {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("copilot-fleet: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
