"""A stand-in for `kubectl`, for tests on a machine without a Kubernetes API server.

It answers the calls `copilot-fleet verify` makes to reach a cluster's fleet from outside, with kubectl's own
output, so the real code path runs (spawning kubectl, parsing its lines, stopping it):

    kubectl config current-context
    kubectl --context=C --namespace=N port-forward --address 127.0.0.1 pod/NAME|svc/NAME [LOCAL]:REMOTE
    kubectl --context=C get pods -n N -l K=V[,K=V...] -o json                      (the pod checks' listing)
    kubectl --context=C -n N [-c CONTAINER] exec NAME -- COMMAND...                (pytest-testinfra's kubectl://)

Instead of a pod, a forward leads to a local address. The JSON file named by $KUBECTL_STANDIN says where:

    {"context": "standin",                                   # the current context (absent: none is set)
     "forwards": {"N/pod/copilot-cli-0:4321": "127.0.0.1:4401", "N/svc/copilot-cli:4321": "127.0.0.1:4321"},
     "die_after": {"N/svc/copilot-cli:4321": 1},             # exit as kubectl does when the stream to the pod
                                                             # breaks, once this many connections were handled
     "pids": "/tmp/.../pids",                                # a directory: each forward leaves its pid there
     "pods": {"N/copilot-cli-0": {"labels": {...}, "container": "cfrt-...-copilot-cli-0-copilot"}},
     "podman": ["podman", "--runtime", "runc"]}              # pods run by the runtime tier's kubelet emulation

`get pods` lists the configured pods of the namespace whose labels match the selector (equality terms, as the
checks use), with the phase and readiness of their podman container (a running container is reported ready: the
emulation hands pods over once their readiness probe passed). `exec` is `podman exec` into that container, as the
container's user, with its exit status and output.

The relay is a few lines of asyncio (stdlib): what the test needs is a forward that behaves like kubectl's, not a
general proxy.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

KINDS = {"pod": "pod", "pods": "pod", "po": "pod", "svc": "svc", "service": "svc", "services": "svc"}
PLURAL = {"pod": "pods", "svc": "services"}
_LONG = {"-n": "--namespace", "-c": "--container", "-l": "--selector", "-o": "--output"}


def fail(message: str, status: int = 1) -> None:
    print(message, file=sys.stderr, flush=True)
    sys.exit(status)


def parse(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """Global flags (--context, --namespace/-n, --request-timeout, --address) and the rest."""
    flags: dict[str, str] = {}
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, eq, value = arg.partition("=")
        if arg == "--":  # what follows is a command (exec), not kubectl's flags
            rest.extend(argv[i:])
            break
        if name in ("--context", "--namespace", "-n", "--request-timeout", "--address", "-c", "--container",
                    "-l", "--selector", "-o", "--output"):
            if not eq:
                i += 1
                value = argv[i]
            flags[_LONG.get(name, name)] = value
        else:
            rest.append(arg)
        i += 1
    return flags, rest


async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def forward(key: str, to: str, local_port: int, remote: str, die_after: int | None) -> None:
    host, _, port = to.rpartition(":")
    handled = 0
    done = asyncio.Event()

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal handled
        handled += 1
        if die_after is not None and handled > die_after:
            print("error: lost connection to pod", file=sys.stderr, flush=True)
            os._exit(1)  # as kubectl ends: at once, every connection with it
        print(f"Handling connection for {server_port}", flush=True)
        try:
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
        except OSError as exc:
            print(f"E0000 portforward.go] an error occurred forwarding {server_port} -> {remote}: {exc}",
                  file=sys.stderr, flush=True)
            writer.close()
            return
        await asyncio.gather(relay(reader, up_writer), relay(up_reader, writer))

    server = await asyncio.start_server(connection, "127.0.0.1", local_port)
    server_port = server.sockets[0].getsockname()[1]
    print(f"Forwarding from 127.0.0.1:{server_port} -> {remote}", flush=True)
    async with server:
        await done.wait()  # until killed, as kubectl port-forward runs


def _container_state(config: dict[str, Any], container: str) -> dict[str, Any]:
    proc = subprocess.run([*config["podman"], "inspect", "--format", "json", container], capture_output=True,
                          text=True, check=False)
    found = json.loads(proc.stdout or "[]") if proc.returncode == 0 else []
    return dict(found[0]["State"]) if found else {}


def get_pods(config: dict[str, Any], flags: dict[str, str], rest: list[str]) -> None:
    if rest or flags.get("--output") != "json":
        fail(f"kubectl stand-in: unsupported get pods arguments {rest} {flags}", 2)
    namespace = flags.get("--namespace", "default")
    wanted = dict(term.split("=", 1) for term in flags.get("--selector", "").split(",") if term)
    items = []
    for key, pod in sorted(config.get("pods", {}).items()):
        pod_namespace, _, name = key.partition("/")
        if pod_namespace != namespace or any(pod["labels"].get(k) != v for k, v in wanted.items()):
            continue
        running = bool(_container_state(config, pod["container"]).get("Running"))
        items.append({"metadata": {"name": name, "namespace": namespace, "labels": pod["labels"]},
                      "status": {"phase": "Running" if running else "Failed",
                                 "containerStatuses": [{"name": pod["container"], "ready": running}]}})
    print(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))


def exec_in_pod(config: dict[str, Any], flags: dict[str, str], rest: list[str]) -> None:
    if len(rest) < 3 or rest[1] != "--":
        fail(f"kubectl stand-in: unsupported exec arguments {rest}", 2)
    name, command = rest[0], rest[2:]
    namespace = flags.get("--namespace", "default")
    pod = config.get("pods", {}).get(f"{namespace}/{name}")
    if pod is None:
        fail(f'Error from server (NotFound): pods "{name}" not found')
    proc = subprocess.run([*config["podman"], "exec", pod["container"], *command], check=False)
    sys.exit(proc.returncode)


def install(bin_dir: Path) -> Path:
    """Make `bin_dir/kubectl` run this stand-in with this interpreter; put `bin_dir` first on PATH and point
    $KUBECTL_STANDIN at a config file to use it."""
    kubectl = bin_dir / "kubectl"
    kubectl.write_text(f"#!/bin/sh\nexec {sys.executable} {Path(__file__).resolve()} \"$@\"\n")
    kubectl.chmod(0o755)
    return kubectl


def main(argv: list[str]) -> None:
    config: dict[str, Any] = json.loads(Path(os.environ["KUBECTL_STANDIN"]).read_text())
    flags, rest = parse(argv)
    current = config.get("context")
    if rest[:2] == ["config", "current-context"]:
        if not current:
            fail("error: current-context is not set")
        print(current)
        return
    context = flags.get("--context", current)
    if not context:
        fail("error: current-context is not set")
    if context != current:
        fail(f'error: context "{context}" does not exist')
    if rest[:2] == ["get", "pods"]:
        get_pods(config, flags, rest[2:])
        return
    if rest[:1] == ["exec"]:
        exec_in_pod(config, flags, rest[1:])
        return
    if not rest or rest[0] != "port-forward" or len(rest) != 3:
        fail(f"kubectl stand-in: unsupported command {argv}", 2)
    kind, _, name = rest[1].partition("/")
    local, _, remote = rest[2].rpartition(":")
    kind = KINDS.get(kind, kind)
    key = f"{flags.get('--namespace', 'default')}/{kind}/{name}:{remote}"
    to = config.get("forwards", {}).get(key)
    if to is None:
        fail(f'Error from server (NotFound): {PLURAL.get(kind, kind)} "{name}" not found')
    if pids := config.get("pids"):
        (Path(pids) / str(os.getpid())).write_text(key)
    asyncio.run(forward(key, to, int(local or 0), remote, config.get("die_after", {}).get(key)))


if __name__ == "__main__":
    main(sys.argv[1:])
