"""`copilot-fleet up | down | status | target`: the local fleet, and the target of any stack.

Cheap to import: everything heavier than argparse is imported when a command runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from copilot_fleet.argtypes import seconds_between
from copilot_fleet.stacknames import add_stack_argument


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("up", help="start a local fleet (platform: local) and wait until every server answers",
                       description="Start the CLI servers, Redis, HAProxy and the model endpoint of a local stack "
                                   "under supervisord, on 127.0.0.1, and wait until each answers. Running it on a "
                                   "fleet that is up changes nothing.")
    _stack_arg(p)
    p.add_argument("--timeout", type=_seconds, default=None,
                   help="seconds to wait for every server to answer (default 60, times the machine's time scale on "
                        "a busy machine: the load average per core, or COPILOT_FLEET_TIME_SCALE)")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("down", help="stop a local fleet; session data stays unless --purge",
                       description="Stop every process of a local fleet (by PID) and verify none is left.")
    _stack_arg(p)
    p.add_argument("--purge", action="store_true",
                   help="also remove the state directory: sessions, secrets, logs (.fleet/STACK)")
    p.set_defaults(func=cmd_down)

    p = sub.add_parser("status", help="each process of a local fleet: state, health, port, sessions",
                       description="Health is a real round trip (JSON-RPC to each CLI server, Redis PING, the "
                                   "model's /healthz). Exit status 1 if anything is not running or not healthy.")
    _stack_arg(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("target", help="print the target JSON of a stack (local state file or Pulumi outputs)",
                       description="Local stacks: the fleet's state file. Kubernetes and Azure stacks: `pulumi "
                                   "stack output --json --show-secrets`. Either way validated as a target. Secrets "
                                   "(connection tokens, the Redis password, the provider's API key) are shown as "
                                   "[secret] unless --show-secrets is given.")
    _stack_arg(p)
    p.add_argument("--from", dest="from_file", metavar="FILE",
                   help="validate and print this target file instead ('-' for standard input)")
    p.add_argument("--show-secrets", action="store_true",
                   help="print the secrets too: a target file for `verify --target`, pytest or the fleet client")
    p.set_defaults(func=cmd_target)


def _stack_arg(p: argparse.ArgumentParser) -> None:
    add_stack_argument(p)


_seconds = seconds_between(1, 3600)


def _project_dir(args: argparse.Namespace) -> Path:
    from copilot_fleet.stackfile import find_project_dir

    return find_project_dir(Path(args.project_dir) if args.project_dir else None)


def cmd_up(args: argparse.Namespace) -> int:
    from copilot_fleet.local import lifecycle

    lifecycle.up(_project_dir(args), args.stack, timeout=args.timeout)
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from copilot_fleet.local import lifecycle

    lifecycle.down(_project_dir(args), args.stack, purge=args.purge)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from copilot_fleet.local import status

    result = status.collect(_project_dir(args), args.stack)
    print(status.to_json_text(result) if args.json else status.format_table(result))
    return 0 if result.healthy else 1


def cmd_target(args: argparse.Namespace) -> int:
    from copilot_fleet.local import targets

    if args.from_file:
        target = targets.from_file(args.from_file)
    else:
        target, warning = targets.read_target(_project_dir(args), args.stack)
        if warning:
            print(f"copilot-fleet target: warning: {warning}", file=sys.stderr)
    print(json.dumps(target.to_json_dict() if args.show_secrets else target.redacted_json_dict(), indent=2))
    return 0
