"""TCP_NODELAY for connections this process opened to a CLI server, without reaching into the SDK.

SDK 1.0.25 connects with `socket.create_connection` and never sets TCP_NODELAY, so each small JSON-RPC message can
wait for a delayed ACK (measured here: a provider-backed create+turn+resume+turn cycle took 3.3 times as long as on
a shared directory with Nagle on, 1.23 times with it off). The SDK keeps the socket only in private state (a
`SocketWrapper._socket` behind `CopilotClient._client`), so instead of that this module finds the process's own TCP
sockets connected to the server's address through /proc/self/fd and sets the option on them: no SDK attribute is
touched, so an SDK that changes its internals still gets the option (or sets it itself; setting it twice is
harmless). Where /proc is missing the count is 0 and the connection keeps the SDK's behaviour.

The provider's own connection needs none of this: it owns its socket (jsonrpc.set_nodelay).
"""

from __future__ import annotations

import os
import socket

from .jsonrpc import set_nodelay

_FD_DIR = "/proc/self/fd"


def _resolve(host: str, port: int) -> set[tuple[str, int]]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return set()
    return {(str(info[4][0]), int(info[4][1])) for info in infos}


def nodelay_connections_to(address: str) -> int:
    """Set TCP_NODELAY on every TCP socket of this process connected to `host:port`; how many now have it."""
    host, _, port_text = address.rpartition(":")
    peers = _resolve(host.strip("[]"), int(port_text))
    try:
        fds = [int(name) for name in os.listdir(_FD_DIR)]
    except OSError:
        return 0
    done = 0
    for fd in fds:
        try:
            if not os.readlink(f"{_FD_DIR}/{fd}").startswith("socket:"):
                continue
            sock = socket.socket(fileno=os.dup(fd))
        except OSError:
            continue  # closed meanwhile, or not ours to inspect
        try:
            if sock.type != socket.SOCK_STREAM or sock.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            try:
                peer = sock.getpeername()
            except OSError:
                continue  # listening or not connected
            if (str(peer[0]), int(peer[1])) in peers and set_nodelay(sock):
                done += 1
        finally:
            sock.close()  # closes our duplicate only; the SDK's descriptor stays open
    return done
