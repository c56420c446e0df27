"""Hold 127.0.0.1:9229, Node's inspector port, so that a CLI sent SIGUSR1 cannot open its debugger.

The Copilot CLI is a Node single-executable application. On SIGUSR1 Node opens its inspector on 127.0.0.1:9229: an
unauthenticated debugger that runs any JavaScript inside the process. This binary ignores
`NODE_OPTIONS=--disable-sigusr1`. A session's tool run has the CLI's Unix user, so it may send the signal, attach
and read the connection token and every other secret in the CLI's memory, past the non-dumpable protection
(measured with CLI 1.0.102 in a network namespace of its own: `Debugger listening on ws://127.0.0.1:9229/...`).
With the port taken, the CLI logs "Starting inspector on 127.0.0.1:9229 failed: address already in use" and serves
on. This program takes it: it listens there (SO_REUSEPORT, so the guards of several fleets on one machine, all run
by one user, share it), closes whatever connects, and must run as a user the tool runs cannot signal (root, in a
local fleet started as root). If another program holds the port, it says so and tries again every second.

    python3 -m copilot_fleet.pod.inspector_guard [--port 9229]
"""

from __future__ import annotations

import argparse
import contextlib
import selectors
import signal
import socket
import sys
import threading
from collections.abc import Sequence

INSPECTOR_PORT = 9229
RETRY_SECONDS = 1.0


def hold(host: str, port: int) -> socket.socket:
    """A listening socket on host:port that other holders of the same user may share; OSError if it is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(16)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m copilot_fleet.pod.inspector_guard",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=INSPECTOR_PORT, help="the inspector port (default 9229)")
    args = parser.parse_args(argv)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    sock = None
    while sock is None and not stopping.is_set():
        try:
            sock = hold("127.0.0.1", args.port)
        except OSError as exc:
            print(f"inspector guard: cannot hold 127.0.0.1:{args.port} ({exc}); trying again", flush=True)
            stopping.wait(RETRY_SECONDS)
    if sock is None:
        return 0
    print(f"inspector guard: holding 127.0.0.1:{args.port}", flush=True)
    with sock, selectors.DefaultSelector() as selector:
        selector.register(sock, selectors.EVENT_READ)
        while not stopping.is_set():
            for _ in selector.select(timeout=RETRY_SECONDS):
                with contextlib.suppress(OSError):
                    conn, _ = sock.accept()
                    conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
