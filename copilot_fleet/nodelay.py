"""TCP_NODELAY on every connection this project opens to a Copilot CLI server: the one place it is done.

Why: the CLI's JSON-RPC messages are small and SDK 1.0.25 writes each as two writes, the `Content-Length` header
and then the body. With Nagle's algorithm on (the socket default), the body waits until the header is
acknowledged, and the server delays that acknowledgement (40 ms on Linux) because it cannot answer half a
message. Measured here with CLI 1.0.102, same server, interleaved (p50; docs/benchmarks.md): create 114 -> 40 ms,
resume 91 -> 48 ms, delete 95 -> 52 ms, a turn against the instant test model 97 -> 83 ms.

The SDK has no option for it: `RuntimeConnection.for_uri` takes an address and a token, and
`CopilotClient._connect_via_tcp` opens the socket with `socket.create_connection` and keeps it only in private
state (`CopilotClient._process._socket`). So `cli_client()` builds a `CopilotClient` whose `_connect_via_tcp`
sets the option right after the SDK connected and before it sends its first message (the handshake included),
whenever the client connects: an explicit `start()` or the SDK's own start on first use.

If a later SDK changes that private state (the method is gone, or the socket is not where it was), the client
keeps the SDK's own behaviour (it works, with Nagle on), a warning is logged once per reason, and
`nodelay_problem()` says what changed; `client_nodelay()` reads the option back from the live socket (None when it
cannot be read). The SDK is pinned (copilot_fleet.SDK_VERSION), so that is a signal to update this module.

Connections made by hand (the health probe) use `open_tcp()`. Nothing here imports the SDK until an SDK client is
asked for: the probe runs in images without it.
"""

from __future__ import annotations

import functools
import logging
import socket
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from copilot import CopilotClient

logger = logging.getLogger(__name__)

# The SDK's private method that opens the TCP connection (for RuntimeConnection.for_uri), and where it keeps the socket.
_CONNECT_METHOD = "_connect_via_tcp"
_problems: list[str] = []


def set_nodelay(sock: socket.socket) -> bool:
    """Turn Nagle's algorithm off on a TCP socket; True if it is now off (False for other kinds of socket)."""
    if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type != socket.SOCK_STREAM:
        return False
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


def open_tcp(host: str, port: int, timeout: float) -> socket.socket:
    """`socket.create_connection` with TCP_NODELAY set before anything is sent (same errors as it raises)."""
    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        set_nodelay(sock)
    except OSError:
        sock.close()
        raise
    return sock


def client_socket(client: object) -> socket.socket | None:
    """The TCP socket under a connected SDK client (private SDK state); None if not connected or not found."""
    sock = getattr(getattr(client, "_process", None), "_socket", None)
    return sock if isinstance(sock, socket.socket) else None


def client_nodelay(client: object) -> bool | None:
    """Whether the live connection of an SDK client has TCP_NODELAY, read back from its socket; None if unknown."""
    sock = client_socket(client)
    if sock is None:
        return None
    try:
        return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    except OSError:  # closed meanwhile
        return None


def nodelay_problem() -> str | None:
    """Why SDK clients made here may lack TCP_NODELAY (the SDK changed), or None if nothing went wrong so far."""
    return "; ".join(_problems) if _problems else None


def _flag(problem: str) -> None:
    if problem not in _problems:
        _problems.append(problem)
        logger.warning("TCP_NODELAY not set on a connection to a CLI server: %s; it keeps the SDK's own behaviour "
                       "(Nagle on: about 40 ms more per request)", problem)


@functools.cache
def _client_class() -> type[CopilotClient]:
    import inspect  # here, not at the top: the health probe imports this module and runs every few seconds

    from copilot import CopilotClient

    if not inspect.iscoroutinefunction(getattr(CopilotClient, _CONNECT_METHOD, None)):
        _flag(f"this SDK's CopilotClient has no coroutine {_CONNECT_METHOD}")
        return CopilotClient

    class NoDelayCopilotClient(CopilotClient):
        """The SDK's client, with TCP_NODELAY set on its connection before the first message."""

        async def _connect_via_tcp(self) -> None:
            await super()._connect_via_tcp()
            sock = client_socket(self)
            if sock is None:
                _flag("the SDK client keeps its socket elsewhere than _process._socket")
            elif not set_nodelay(sock):
                _flag(f"the SDK client's connection is not a TCP socket ({sock.family!r}, {sock.type!r})")

    return NoDelayCopilotClient


def cli_client(address: str, token: str | None, **options: Any) -> CopilotClient:
    """An SDK client for the CLI server at `host:port` (not started) whose connection has TCP_NODELAY.

    `options` go to `CopilotClient` as they are. The one way this project makes SDK clients."""
    from copilot import RuntimeConnection

    return _client_class()(connection=RuntimeConnection.for_uri(address, connection_token=token), **options)
