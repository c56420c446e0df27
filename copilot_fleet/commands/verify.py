"""`copilot-fleet verify`: run the post-deploy smoke tests against a stack (or a target file) and report.

Cheap to import: pytest, the SDK and the local fleet are imported when the command runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from copilot_fleet.argtypes import seconds_between
from copilot_fleet.errors import CommandError
from copilot_fleet.stacknames import DEFAULT_STACK, add_stack_argument


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "verify", help="run the smoke tests against a deployed fleet and report each check",
        description="Create, resume, list and delete real sessions against a stack's fleet (the target of "
                    "`copilot-fleet target`), check tokens, isolation and leases, and for local fleets the host "
                    "(processes, ports, file modes, logs). Exit status 0 only if no check failed.")
    where = p.add_mutually_exclusive_group()
    add_stack_argument(where, default=None, help=f"stack name: its target comes from the local fleet's state or "
                                                 f"from Pulumi stack outputs (default {DEFAULT_STACK})")
    where.add_argument("--target", metavar="FILE", dest="target_file",
                       help="a target JSON file instead of a stack (e.g. pulumi stack output --json --show-secrets)")
    p.add_argument("--fleet-state", metavar="DIR",
                   help="a local fleet's state directory for host checks (set automatically for local stacks)")
    p.add_argument("--kube-context", metavar="NAME", help="kubectl context for the pod checks (default: current)")
    p.add_argument("--kube-namespace", metavar="NS", help="namespace of the CLI pods (default copilot-fleet)")
    p.add_argument("--kube-selector", metavar="LABELS",
                   help="label selector of the CLI pods (default app.kubernetes.io/name=copilot-cli,"
                        "app.kubernetes.io/instance=STACK)")
    p.add_argument("-k", dest="select", metavar="EXPR", help="run only the checks matching EXPR (pytest -k)")
    p.add_argument("--timeout", type=_seconds, default=120.0,
                   help="stop the whole run after this many seconds (default 120)")
    p.add_argument("--json", dest="json_file", metavar="FILE", help="also write the report as JSON to FILE")
    p.add_argument("-v", "--verbose", action="store_true", help="show pytest's own output as it runs")
    p.set_defaults(func=cmd_verify)


_seconds = seconds_between(5, 3600)


@dataclass(frozen=True)
class ResolvedTarget:
    """What to verify: a target file (the user's, or `/dev/fd/N` of an anonymous one of ours), a label, and a local
    state dir if any."""

    path: Path
    label: str
    fleet_state: Path | None
    fd: int | None = None  # ours: the memory file behind `path`, passed on to the smoke tests, closed at the end


def _project_dir(args: argparse.Namespace) -> Path:
    from copilot_fleet.stackfile import find_project_dir

    return find_project_dir(Path(args.project_dir) if args.project_dir else None)


def write_private_target(document: dict[str, object]) -> int:
    """The target (with its secrets) in an anonymous memory file: a file descriptor, no name on any file system.
    Whatever way `verify` ends (SIGKILL included) nothing is left behind: the memory is freed once the last
    process holding the descriptor (`verify`, the smoke tests it passed it to) is gone. The smoke tests read it
    as `/dev/fd/N`."""
    fd = os.memfd_create("copilot-fleet-target", os.MFD_CLOEXEC)
    try:
        os.write(fd, json.dumps(document).encode())
    except BaseException:
        os.close(fd)
        raise
    return fd


def resolve(args: argparse.Namespace, project_dir: Path) -> ResolvedTarget:
    """The target to verify, validated before anything runs; errors name the problem."""
    from copilot_fleet.target import TargetError, load_target

    state = Path(args.fleet_state).resolve() if args.fleet_state else None
    if state is not None and not state.is_dir():
        raise CommandError(f"--fleet-state {args.fleet_state}: not a directory (expected <project>/.fleet/<stack>)")
    if args.target_file:
        try:
            target = load_target(args.target_file)
        except TargetError as exc:
            raise CommandError(f"the target file cannot be used: {exc}") from exc
        return ResolvedTarget(Path(args.target_file).resolve(), _label(target, args.target_file), state)

    from copilot_fleet.local import targets
    from copilot_fleet.local.paths import StatePaths

    stack = args.stack or DEFAULT_STACK
    target, warning = targets.read_target(project_dir, stack)  # the same resolution as `copilot-fleet target`
    if warning:
        raise CommandError(f"{warning}; nothing was verified")
    if target.platform == "local" and state is None:
        state = StatePaths(project_dir, stack).root
    fd = write_private_target(target.to_json_dict())
    return ResolvedTarget(Path(f"/dev/fd/{fd}"), _label(target, f"stack {stack}"), state, fd)


def _label(target: object, source: str) -> str:
    stack, isolation, platform = (getattr(target, k) for k in ("stack", "isolation", "platform"))
    return f"{source} ({stack}: {isolation} on {platform})"


@contextmanager
def _resolved(args: argparse.Namespace, project_dir: Path) -> Iterator[ResolvedTarget]:
    resolved = resolve(args, project_dir)
    try:
        yield resolved
    finally:
        if resolved.fd is not None:
            os.close(resolved.fd)


def cmd_verify(args: argparse.Namespace) -> int:
    from copilot_fleet.verify import CheckResult, VerifyError, run_smoke_tests

    project_dir = _project_dir(args)
    with _resolved(args, project_dir) as resolved:
        print(f"copilot-fleet verify: {resolved.label}", flush=True)

        def progress(result: CheckResult) -> None:
            print(result.line(), flush=True)

        passed_on = [f"--{name.replace('_', '-')}={value}" for name in ("kube_context", "kube_namespace",
                                                                         "kube_selector")
                     if (value := getattr(args, name)) is not None]
        try:
            report = run_smoke_tests(resolved.path, project_dir=project_dir, target_label=resolved.label,
                                     fleet_state=resolved.fleet_state, timeout=args.timeout, select=args.select,
                                     stream_output=args.verbose, extra_args=passed_on,
                                     pass_fds=() if resolved.fd is None else (resolved.fd,),
                                     on_result=None if args.verbose else progress)
        except VerifyError as exc:
            raise CommandError(str(exc)) from exc
    if args.verbose:
        print("\n".join(c.line() for c in report.checks))
    if report.problem and not report.timed_out and report.output and not args.verbose:
        print(report.output.rstrip()[-3000:], file=sys.stderr)
    print(report.footer(), flush=True)
    if args.json_file:
        Path(args.json_file).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    return 0 if report.ok else 1
