"""`copilot-fleet verify`: run the post-deploy smoke tests against a stack (or a target file) and report.

Cheap to import: pytest, the SDK and the local fleet are imported when the command runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from copilot_fleet.argtypes import seconds_between
from copilot_fleet.commands.access import VIA_CHOICES
from copilot_fleet.errors import CommandError
from copilot_fleet.stacknames import DEFAULT_STACK, add_stack_argument

if TYPE_CHECKING:
    from copilot_fleet.portforward import PortForwards
    from copilot_fleet.target import Target


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
    p.add_argument("--via", choices=VIA_CHOICES, default="auto",
                   help="how to reach a Kubernetes/Azure fleet: port-forward (kubectl port-forward to each server "
                        "and Redis, through the API server with your kubeconfig: from a laptop or CI runner), "
                        "direct (the target's addresses as they are: inside the cluster), or auto (default: "
                        "port-forward when the target's cluster DNS names do not resolve here)")
    p.add_argument("--kube-context", metavar="NAME",
                   help="kubectl context for port-forwards and pod checks (default: the current context)")
    p.add_argument("--kube-namespace", metavar="NS",
                   help="namespace of the CLI pods (default: the target's namespace, else the stack's "
                        "fleet:namespace, else the one in the target's cluster DNS names)")
    p.add_argument("--kube-selector", metavar="LABELS",
                   help="label selector of the CLI pods (default app.kubernetes.io/name=copilot-cli,"
                        "app.kubernetes.io/instance=STACK)")
    p.add_argument("-k", dest="select", metavar="EXPR", help="run only the checks matching EXPR (pytest -k)")
    p.add_argument("--timeout", type=_seconds, default=None,
                   help="stop the whole run after this many seconds (default 120, times the machine's time scale "
                        "on a busy machine: the load average per core, or COPILOT_FLEET_TIME_SCALE)")
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
    kube_namespace: str | None = None  # where the pods are, for the pod checks (Kubernetes and Azure)
    forwards: PortForwards | None = None  # when the fleet is reached through kubectl port-forward


def _project_dir(args: argparse.Namespace) -> Path | None:
    """The stack project; None for `--target FILE` run outside any project (the installed smoke tests run then)."""
    from copilot_fleet.errors import ProjectNotFound
    from copilot_fleet.stackfile import find_project_dir

    if args.target_file and not args.project_dir:
        try:
            return find_project_dir()
        except ProjectNotFound:
            return None
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


def _in_memory(resolved: ResolvedTarget, document: dict[str, object], **changes: object) -> ResolvedTarget:
    fd = write_private_target(document)
    return dataclasses.replace(resolved, path=Path(f"/dev/fd/{fd}"), fd=fd, **changes)  # type: ignore[arg-type]


def resolve(args: argparse.Namespace, project_dir: Path | None) -> ResolvedTarget:
    """The target to verify, validated before anything runs; errors name the problem. For a cluster's fleet seen
    from outside it, the forwards are started here and the target handed on is a copy with local addresses."""
    from copilot_fleet.portforward import choose_route
    from copilot_fleet.target import TargetError, load_target

    state = Path(args.fleet_state).resolve() if args.fleet_state else None
    if state is not None and not state.is_dir():
        raise CommandError(f"--fleet-state {args.fleet_state}: not a directory (expected <project>/.fleet/<stack>)")
    if args.target_file:
        try:
            target = load_target(args.target_file)
        except TargetError as exc:
            raise CommandError(f"the target file cannot be used: {exc}") from exc
        resolved = ResolvedTarget(Path(args.target_file).resolve(), _label(target, args.target_file), state,
                                  kube_namespace=kube_namespace(args, target, None))
    else:
        from copilot_fleet.local import targets
        from copilot_fleet.local.paths import StatePaths

        stack = args.stack or DEFAULT_STACK
        assert project_dir is not None  # only --target FILE runs without a project
        target, warning = targets.read_target(project_dir, stack, "--target")  # as `copilot-fleet target` does
        if warning:
            raise CommandError(f"{warning}; nothing was verified")
        if target.platform == "local" and state is None:
            state = StatePaths(project_dir, stack).root
        resolved = ResolvedTarget(Path(), _label(target, f"stack {stack}"), state,
                                  kube_namespace=kube_namespace(args, target, _stack_namespace(project_dir, stack)))
    if choose_route(target, args.via) == "port-forward":
        return _forwarded(args, target, resolved)
    if args.target_file:
        return resolved
    return _in_memory(resolved, target.to_json_dict())


def kube_namespace(args: argparse.Namespace, target: Target, stack_namespace: str | None) -> str | None:
    """Where the CLI pods are: --kube-namespace, the target's `namespace`, the stack's fleet:namespace, or the one
    namespace the target's cluster DNS names share. None for local fleets (no pods)."""
    from copilot_fleet.clusterdns import DEFAULT_NAMESPACE, namespaces
    from copilot_fleet.portforward import cluster_addresses

    if args.kube_namespace:
        return str(args.kube_namespace)
    if target.platform == "local":
        return None
    if target.namespace:
        return target.namespace
    if stack_namespace:
        return stack_namespace
    found = namespaces(cluster_addresses(target))
    return found[0] if len(found) == 1 else DEFAULT_NAMESPACE


def _stack_namespace(project_dir: Path, stack: str) -> str | None:
    from copilot_fleet.stackfile import read_stack_config

    value = read_stack_config(project_dir, stack)[0].get("fleet:namespace")
    return str(value) if value else None


def _forwarded(args: argparse.Namespace, target: Target, resolved: ResolvedTarget) -> ResolvedTarget:
    """Forwards to every cluster address of the target, and a private copy of it that points at them."""
    from copilot_fleet.portforward import PortForwards, cluster_addresses, current_context, find_kubectl, localize

    kubectl = find_kubectl()
    forwards = PortForwards(kubectl, current_context(kubectl, args.kube_context),
                            ready_timeout=min(args.timeout, 120.0))
    local = forwards.start(cluster_addresses(target))
    try:
        label = f"{resolved.label}, through kubectl port-forward (context {forwards.context})"
        return _in_memory(resolved, localize(target, local).to_json_dict(), label=label, forwards=forwards)
    except BaseException:
        forwards.close()
        raise


def _label(target: object, source: str) -> str:
    stack, isolation, platform = (getattr(target, k) for k in ("stack", "isolation", "platform"))
    return f"{source} ({stack}: {isolation} on {platform})"


@contextmanager
def _resolved(args: argparse.Namespace, project_dir: Path | None) -> Iterator[ResolvedTarget]:
    resolved = resolve(args, project_dir)
    try:
        yield resolved
    finally:
        try:
            if resolved.forwards is not None:
                resolved.forwards.close()  # after the checks' own cleanup, which went through them
        finally:
            if resolved.fd is not None:
                os.close(resolved.fd)


def cmd_verify(args: argparse.Namespace) -> int:
    from copilot_fleet import timescale
    from copilot_fleet.verify import (
        DEFAULT_SMOKE_TIMEOUT_SECONDS,
        DEFAULT_TIMEOUT_SECONDS,
        CheckResult,
        VerifyError,
        run_smoke_tests,
    )

    # One factor for the run (the load average now, or COPILOT_FLEET_TIME_SCALE): the whole run and every single
    # wait of its checks get longer together on a busy machine. A --timeout given is taken as it is.
    scale, why = timescale.measure()
    smoke_timeout = DEFAULT_SMOKE_TIMEOUT_SECONDS * scale
    if args.timeout is None:
        args.timeout = DEFAULT_TIMEOUT_SECONDS * scale
    project_dir = _project_dir(args)
    with _resolved(args, project_dir) as resolved:
        print(f"copilot-fleet verify: {resolved.label}", flush=True)
        if scale > 1:
            print(f"  bounds   {args.timeout:.0f} s for the run, {smoke_timeout:.0f} s for any single wait: "
                  f"x{scale:g} for a busy machine ({why})", flush=True)
        if resolved.forwards is not None:
            print("\n".join(f"  forward  {line}" for line in resolved.forwards.describe()), flush=True)

        def progress(result: CheckResult) -> None:
            print(result.line(), flush=True)

        options = {"kube_context": args.kube_context, "kube_namespace": resolved.kube_namespace,
                   "kube_selector": args.kube_selector}
        if resolved.forwards is not None:
            options["kube_context"] = resolved.forwards.context  # the pod checks use the cluster forwarded to
        passed_on = [f"--{name.replace('_', '-')}={value}" for name, value in options.items() if value is not None]
        try:
            report = run_smoke_tests(resolved.path, project_dir=project_dir, target_label=resolved.label,
                                     fleet_state=resolved.fleet_state, timeout=args.timeout,
                                     smoke_timeout=smoke_timeout, select=args.select,
                                     stream_output=args.verbose, extra_args=passed_on,
                                     pass_fds=() if resolved.fd is None else (resolved.fd,),
                                     on_result=None if args.verbose else progress)
        except VerifyError as exc:
            raise CommandError(str(exc)) from exc
        if resolved.forwards is not None and (ended := resolved.forwards.ended()):
            # Checks that failed after this failed for that reason: say so, and never pass such a run.
            lost = "; ".join(ended)
            report.problem = f"{report.problem}; {lost}" if report.problem else lost
    if args.verbose:
        print("\n".join(c.line() for c in report.checks))
    if report.problem and not report.timed_out and report.output and not args.verbose:
        print(report.output.rstrip()[-3000:], file=sys.stderr)
    print(report.footer(), flush=True)
    if args.json_file:
        Path(args.json_file).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    return 0 if report.ok else 1
