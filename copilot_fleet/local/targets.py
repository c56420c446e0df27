"""Where a stack's target comes from: the local fleet's state file, or `pulumi stack output` for deployed stacks.

Either way the document goes through copilot_fleet.target.parse_target, so a target that verification would
reject is rejected here, with the field named.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from copilot_fleet.local.errors import LocalFleetError
from copilot_fleet.local.paths import StatePaths
from copilot_fleet.local.stack import stack_platform
from copilot_fleet.local.supervisor import read_record
from copilot_fleet.stackfile import stack_file
from copilot_fleet.target import Target, TargetError, load_target, parse_target, read_target_bytes

PULUMI_TIMEOUT = 120


def from_file(path: str) -> Target:
    """A target file ('-' reads standard input)."""
    try:
        if path == "-":
            return parse_target(read_target_bytes(sys.stdin.buffer, "standard input"), source="standard input")
        return load_target(path)
    except TargetError as exc:
        raise LocalFleetError(str(exc)) from exc


def _parse(text: str, source: str) -> Target:
    try:
        return parse_target(text, source=source)
    except TargetError as exc:
        raise LocalFleetError(str(exc)) from exc


def local_target(project_dir: Path, stack: str) -> tuple[Target, bool]:
    """The target of a local stack and whether its fleet is running now."""
    paths = StatePaths(project_dir, stack)
    if not paths.target_file.is_file():
        raise LocalFleetError(f"fleet {stack} has never been started here (no {paths.display(paths.target_file)}); "
                              f"start it with `copilot-fleet up --stack {stack}`")
    record = read_record(paths)
    try:
        target = load_target(paths.target_file)
    except TargetError as exc:
        raise LocalFleetError(str(exc)) from exc
    return target, record is not None and record.alive()


def pulumi_target(project_dir: Path, stack: str, file_option: str = "--from") -> Target:
    """`pulumi stack output --json --show-secrets` of a deployed stack, validated. `file_option`: the calling
    command's own option for a target file, named in the hint when Pulumi is missing."""
    pulumi = shutil.which("pulumi")
    if pulumi is None:
        raise LocalFleetError(
            f"stack {stack} is deployed with Pulumi, and its target is its stack outputs, but the Pulumi CLI is not "
            "on PATH: install it (https://www.pulumi.com/docs/install/) and log in to the stack's backend, or pass "
            f"the outputs with {file_option} FILE (pulumi stack output --json --show-secrets --stack {stack} > FILE)")
    try:
        proc = subprocess.run([pulumi, "stack", "output", "--json", "--show-secrets", "--stack", stack],
                              cwd=project_dir, capture_output=True, text=True, timeout=PULUMI_TIMEOUT, check=False)
    except subprocess.TimeoutExpired as exc:
        raise LocalFleetError(f"pulumi stack output --stack {stack} did not finish within {PULUMI_TIMEOUT} s") from exc
    if proc.returncode != 0:
        raise LocalFleetError(f"pulumi stack output --stack {stack} failed (exit {proc.returncode}): "
                              f"{proc.stderr.strip()[-800:]}")
    return _parse(proc.stdout, f"pulumi stack output --stack {stack}")


def read_target(project_dir: Path, stack: str, file_option: str = "--from") -> tuple[Target, str | None]:
    """The target of any stack, and a warning to print (a local fleet that is not running), if any.
    `file_option`: how the calling command takes a target file instead (`target --from`, `verify --target`)."""
    stack_file(project_dir, stack)  # a clear error for an unknown stack name
    platform = stack_platform(project_dir, stack)
    if platform == "local":
        target, running = local_target(project_dir, stack)
        warning = None if running else (f"fleet {stack} is not running; this is the target it had (start it with "
                                        f"`copilot-fleet up --stack {stack}`)")
        return target, warning
    if platform not in ("kubernetes", "azure"):
        raise LocalFleetError(f"stack {stack} sets fleet:platform to {platform!r}; allowed: local, kubernetes, azure")
    return pulumi_target(project_dir, stack, file_option), None
