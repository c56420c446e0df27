"""Ports for the quickstart: run a local stack beside whatever else already listens on this machine.

    python -m copilot_fleet.local.quickstart [--stack local] [--base-port N]

Leaves the stack as it is when its fleet runs here already, or when every port it needs is free. Otherwise (or
with `--base-port`) it writes a block of ports into the stack file's `fleet:local` (the CLI servers from the base
upwards, then the endpoint, Redis and the test model), a free block chosen here or the one asked for, which must
be free. Prints what it did on standard error and the stack to start on standard output (scripts/quickstart.sh).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from copilot_fleet.errors import CommandError
from copilot_fleet.local.paths import StatePaths
from copilot_fleet.local.stack import load_local_spec
from copilot_fleet.local.supervisor import read_record
from copilot_fleet.pod.ports import free_port_block, port_holder, port_is_free
from copilot_fleet.spec import FleetSpec
from copilot_fleet.stackfile import find_project_dir, stack_file


def _servers(spec: FleetSpec) -> int:
    return spec.replicas if spec.shares_session_state else len(spec.users)


def ports_of(spec: FleetSpec) -> dict[int, str]:
    """Every port the local fleet of `spec` listens on, with the key that sets it."""
    local = spec.local
    ports = {local.replica_base_port + i: "fleet:local.replicaBasePort" for i in range(_servers(spec))}
    if spec.shares_session_state:
        ports[local.endpoint_port] = "fleet:local.endpointPort"
    if spec.uses_lease_store:  # the shared patterns, and every pattern in store mode
        ports[local.redis_port] = "fleet:local.redisPort"
    if spec.provider is None:
        ports[local.model_port] = "fleet:local.modelPort"
    return ports


def block(spec: FleetSpec, base: int) -> dict[str, int]:
    """`fleet:local` for a block of `_servers(spec) + 3` ports from `base`: the servers first, then the endpoint,
    Redis and the model (whichever of those the pattern uses)."""
    servers = _servers(spec)
    return {"replicaBasePort": base, "endpointPort": base + servers, "redisPort": base + servers + 1,
            "modelPort": base + servers + 2}


def write_ports(path: Path, ports: dict[str, int]) -> None:
    """Set `fleet:local` in a stack file. The comment lines at its top are kept; the rest is YAML as dumped."""
    text = path.read_text()
    header = "".join(line for line in text.splitlines(keepends=True)[:_header_lines(text)])
    doc = yaml.safe_load(text) or {}
    config = doc.setdefault("config", {})
    config["fleet:local"] = {**(config.get("fleet:local") or {}), **ports}
    path.write_text(header + yaml.safe_dump(doc, sort_keys=False, default_flow_style=False))


def _header_lines(text: str) -> int:
    count = 0
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        count += 1
    return count


def choose(project_dir: Path, stack: str, base_port: int | None) -> list[str]:
    """Make the stack's ports usable now; return what was done, one line each (empty: nothing to do)."""
    spec = load_local_spec(project_dir, stack)
    record = read_record(StatePaths(project_dir, stack))
    if record is not None and record.alive():
        return [f"fleet {stack} is running here already: its ports stay as they are"]
    needed = ports_of(spec)
    busy = {port: key for port, key in needed.items() if not port_is_free(port)}
    if base_port is None and not busy:
        return []
    size = _servers(spec) + 3
    if base_port is not None:
        if base_port + size - 1 > 65535:
            raise CommandError(f"--base-port {base_port}: the stack needs {size} ports, past 65535")
        taken = [p for p in range(base_port, base_port + size) if not port_is_free(p)]
        if taken:
            raise CommandError(f"--base-port {base_port}: port {taken[0]} is in use"
                               + (f" by {holder}" if (holder := port_holder(taken[0])) else "")
                               + f"; choose another base (the stack needs {size} free ports from it)")
        base, why = base_port, f"--base-port {base_port}"
    else:
        base = free_port_block(size)
        first = min(busy)
        holder = port_holder(first)
        why = f"port {first} ({busy[first]}) is in use{f' by {holder}' if holder else ''}"
    path = stack_file(project_dir, stack)
    ports = block(spec, base)
    write_ports(path, ports)
    load_local_spec(project_dir, stack)  # the edited file must still be a valid stack
    return [f"{why}: {path.name} now uses 127.0.0.1:{base}-{base + size - 1} "
            f"({', '.join(f'{k} {v}' for k, v in ports.items())})"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m copilot_fleet.local.quickstart",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--project-dir", default=None)
    parser.add_argument("--stack", default="local")
    parser.add_argument("--base-port", type=int, default=None, metavar="N",
                        help="use ports N, N+1, ... (1024-65535) instead of the stack's or a free block")
    args = parser.parse_args(argv)
    if args.base_port is not None and not 1024 <= args.base_port <= 65535:
        parser.error(f"--base-port must be from 1024 to 65535, got {args.base_port}")
    try:
        project = find_project_dir(Path(args.project_dir) if args.project_dir else None)
        for line in choose(project, args.stack, args.base_port):
            print(f"quickstart: {line}", file=sys.stderr)
    except (CommandError, LookupError, FileNotFoundError, ValueError) as exc:
        print(f"quickstart: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ValueError) else 1
    print(args.stack)
    return 0


if __name__ == "__main__":
    sys.exit(main())
