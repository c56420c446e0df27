"""A stand-in for `kubectl`, for tests on a machine without a Kubernetes API server.

It answers the calls `copilot-fleet verify` makes to reach a cluster's fleet from outside, with kubectl's own
output, so the real code path runs (spawning kubectl, parsing its lines, stopping it):

    kubectl config current-context
    kubectl --context=C --namespace=N port-forward --address 127.0.0.1 pod/NAME|svc/NAME [LOCAL]:REMOTE

Instead of a pod, a forward leads to a local address. The JSON file named by $KUBECTL_STANDIN says where:

    {"context": "standin",                                   # the current context (absent: none is set)
     "forwards": {"N/pod/copilot-cli-0:4321": "127.0.0.1:4401", "N/svc/copilot-cli:4321": "127.0.0.1:4321"},
     "die_after": {"N/svc/copilot-cli:4321": 1},             # exit as kubectl does when the stream to the pod
                                                             # breaks, once this many connections were handled
     "pids": "/tmp/.../pids"}                                # a directory: each forward leaves its pid there

The relay is a few lines of asyncio (stdlib): what the test needs is a forward that behaves like kubectl's, not a
general proxy.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

KINDS = {"pod": "pod", "pods": "pod", "po": "pod", "svc": "svc", "service": "svc", "services": "svc"}
PLURAL = {"pod": "pods", "svc": "services"}


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
        if name in ("--context", "--namespace", "-n", "--request-timeout", "--address"):
            if not eq:
                i += 1
                value = argv[i]
            flags["--namespace" if name == "-n" else name] = value
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
