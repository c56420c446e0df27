"""`copilot-fleet render --stack NAME [--out DIR] [--k8s-version X.Y]`: the Kubernetes manifests of a stack,
rendered offline (mock engine, no Pulumi CLI, no cluster) and validated strictly against the Kubernetes schema.

Exit status: 0 all objects valid; 1 a schema error (each printed as `Kind/name: field: message`) or another
failure; 2 invalid stack config. Pulumi is imported only when the command runs (help stays fast).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from copilot_fleet.stacknames import add_stack_argument

DEFAULT_OUT = "render-out"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "render",
        help="render a stack's Kubernetes manifests offline and validate them",
        description="Run the Pulumi program under the SDK's mock engine, write every Kubernetes object as sorted "
                    "YAML (secret values masked) and validate each strictly against the Kubernetes OpenAPI schema.",
    )
    add_stack_argument(p, required=True, help="the stack, as in stacks/Pulumi.<stack>.yaml")
    p.add_argument("--out", default=None,
                   help=f"directory for the YAML files (default: <project>/{DEFAULT_OUT}/<stack>)")
    p.add_argument("--k8s-version", default=None, help="Kubernetes version of the schema (default: 1.33)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from copilot_fleet.render import DEFAULT_K8S_VERSION, fewer_collections, render_stack, write_manifests
    from copilot_fleet.stackfile import find_project_dir

    project_dir = find_project_dir(Path(args.project_dir) if args.project_dir else None)
    version = args.k8s_version or DEFAULT_K8S_VERSION
    _leave_garbage_at_exit()
    try:
        # The program's garbage (the SDK's outputs and tasks in reference cycles) is not freed object by object:
        # the process ends after this command (see _leave_garbage_at_exit).
        result = render_stack(project_dir, args.stack, k8s_version=version, collect=False)
    except ValueError as exc:
        from copilot_fleet.errors import StackFileError
        from copilot_fleet.spec import ConfigError

        if isinstance(exc, ConfigError | StackFileError):
            raise  # invalid config, its values or its YAML: cli.main's exit status 2
        print(f"copilot-fleet render: {exc}", file=sys.stderr)
        return 1
    out_dir = Path(args.out) if args.out else project_dir / DEFAULT_OUT / args.stack
    with fewer_collections(collect=False):  # a full collection here would walk the program's garbage
        written = write_manifests(result.objects, out_dir)

    print(f"stack {result.stack}: {len(result.objects)} Kubernetes objects -> {out_dir} ({len(written)} files)")
    for kind, count in result.counts().items():
        print(f"  {kind:<24} {count}")
    for key in ("endpoint", "replicas", "users", "redis_url", "connection_token"):
        if key in result.outputs:
            value = result.outputs[key]
            shown = value if not isinstance(value, dict | list) or len(value) <= 5 else f"({len(value)} entries)"
            print(f"  output {key}: {shown}")
    if result.errors:
        print(f"schema validation (Kubernetes {result.k8s_version}, strict): {len(result.errors)} error(s)",
              file=sys.stderr)
        for line in result.errors:
            print(f"  {line}", file=sys.stderr)
        return 1
    print(f"schema validation (Kubernetes {result.k8s_version}, strict): all {len(result.objects)} objects valid")
    return 0


_AT_EXIT: list[bool] = []


def _leave_garbage_at_exit() -> None:
    """At interpreter exit, freeze every object out of the exit-time garbage collection.

    A 1000-user render leaves about two million objects of the Pulumi SDK in reference cycles; freeing them one
    by one (in the run or in the collection the interpreter makes on exit) takes about 3 s of CPU, and the operating
    system takes the memory back at once anyway. Registered once; when the command runs inside a longer process
    (the tests call `cli.main`), the garbage is collected as usual until that process exits.
    """
    if not _AT_EXIT:
        import atexit
        import gc

        atexit.register(gc.freeze)
        _AT_EXIT.append(True)
