"""Which local stack a command is about: its platform (read without validating the rest, so that a Kubernetes
stack is told to use `pulumi up` rather than about the keys only Kubernetes needs) and its validated spec.

Used by `up`/`down` (lifecycle), `status`, `target` and `recycle`.
"""

from __future__ import annotations

from pathlib import Path

from copilot_fleet.local.errors import LocalFleetError
from copilot_fleet.spec import FleetSpec
from copilot_fleet.stackfile import StackNotFound, load_stack_spec, read_stack_config


def not_local_message(stack: str, platform: str) -> str:
    return (f"stack {stack!r} is a {platform} stack; copilot-fleet up/down/status run platform: local stacks only. "
            f"Deploy it with `pulumi up --stack {stack}` and read its target with "
            f"`copilot-fleet target --stack {stack}`")


def load_local_spec(project_dir: Path, stack: str) -> FleetSpec:
    # The platform first: a Kubernetes stack gets "use pulumi up", not the keys that only Kubernetes needs.
    platform = stack_platform(project_dir, stack)
    if platform is not None and platform != "local":
        raise LocalFleetError(not_local_message(stack, platform))
    spec = load_stack_spec(project_dir, stack)
    if spec.platform != "local":
        raise LocalFleetError(not_local_message(stack, spec.platform))
    return spec


def stack_platform(project_dir: Path, stack: str) -> str | None:
    """`fleet:platform` of a stack file without validating the rest; None if there is no such stack file."""
    try:
        values, _ = read_stack_config(project_dir, stack)
    except StackNotFound:
        return None
    platform = values.get("fleet:platform")
    return str(platform) if platform is not None else None
