"""Which fleet an operator command acts on (`--stack NAME` or `--target FILE`) and how this machine reaches it
(`--via`: straight to its addresses, or through kubectl port-forward for a cluster's fleet seen from outside).

Shared by `copilot-fleet sessions` and `copilot-fleet members`. Cheap to import: the rest is imported on use.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from copilot_fleet.errors import CommandError
from copilot_fleet.stacknames import DEFAULT_STACK, add_stack_argument

if TYPE_CHECKING:
    from copilot_fleet.target import Target

VIA_CHOICES = ("auto", "port-forward", "direct")


def add_fleet_arguments(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group()
    add_stack_argument(where, default=None, help=f"stack name; its target comes from the local fleet or Pulumi "
                                                 f"outputs (default {DEFAULT_STACK})")
    where.add_argument("--target", metavar="FILE", dest="target_file",
                       help="a target JSON file instead of a stack")
    p.add_argument("--via", choices=VIA_CHOICES, default="auto",
                   help="a Kubernetes/Azure fleet from outside its cluster: port-forward (kubectl port-forward "
                        "with your kubeconfig), direct, or auto (default: port-forward when the target's cluster "
                        "DNS names do not resolve here)")
    p.add_argument("--kube-context", metavar="NAME", help="kubectl context for port-forwards (default: current)")


def resolve_target(args: argparse.Namespace, command: str) -> Target:
    """The target from --target FILE, or of --stack (the local fleet's state, or Pulumi stack outputs)."""
    from copilot_fleet.target import TargetError, load_target

    if args.target_file:
        try:
            return load_target(args.target_file)
        except TargetError as exc:
            raise CommandError(str(exc)) from exc
    stack = args.stack or DEFAULT_STACK
    try:
        from copilot_fleet.local.targets import read_target
    except ImportError as exc:  # a partial install without the local fleet
        raise CommandError(f"cannot resolve stack {stack} here ({exc}); pass --target FILE") from exc
    from copilot_fleet.stackfile import find_project_dir

    project = find_project_dir(Path(args.project_dir) if getattr(args, "project_dir", None) else None)
    target, warning = read_target(project, stack, "--target")
    if warning:
        print(f"copilot-fleet {command}: warning: {warning}", file=sys.stderr)
    return target


@contextmanager
def reachable_target(args: argparse.Namespace, command: str, *, servers: bool = True,
                     redis: bool = True) -> Iterator[Target]:
    """The target, rewritten to port-forwards while the block runs when its cluster names cannot be reached from
    here (only the servers, or only Redis, when that is all the command needs)."""
    from copilot_fleet.portforward import reachable

    target = resolve_target(args, command)
    with reachable(target, args.via, args.kube_context, servers=servers, redis=redis) as usable:
        yield usable
