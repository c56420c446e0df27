"""One `copilot.CopilotClient` per CLI server address (and token), shared by every FleetClient that uses the pool.

Each `CopilotClient.stop()` blocks the event loop for about a second (a thread join), and every client is one
more connection to the server, so a client per request or per user is slow: keep one pool per process (per event
loop), share it between FleetClients, and close it at shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from copilot import CopilotClient, CopilotSession

# Not re-exported by `copilot`; the SDK is pinned (copilot_fleet.SDK_VERSION), so importing them is safe.
from copilot._jsonrpc import JsonRpcError, ProcessExitedError

from copilot_fleet.nodelay import cli_client

from .errors import ReplicaUnavailable
from .liveness import client_connected

logger = logging.getLogger(__name__)

ClientFactory = Callable[[str, str | None], CopilotClient]


AUTH_FAILED_CODE = -32002
# A draining server (SIGTERM) refuses new requests with -32000 and this message: it did not act on the request.
SHUTTING_DOWN = "SERVER_SHUTTING_DOWN"
# With its OpenTelemetry exporter on (the local fleet's CLIs), a draining CLI 1.0.102 refuses a session.create or
# session.resume with -32603 and this text instead: 10 of 16 creates sent as SIGTERM arrived, none wrote anything.
OTEL_POLICY_GONE = "OpenTelemetry session policy is unavailable"
# RuntimeError texts of the SDK for a server it cannot reach: its own connect (when it auto-starts a client that
# was stopped, e.g. one the pool discarded while another call still held it), and a server that exited during start.
_SDK_GONE = ("failed to connect to cli server", "cli process exited", "not connected")


def split_address(address: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` → (host, port)."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def is_transport_failure(exc: BaseException) -> bool:
    """True when the server (or the connection to it) is gone, so the request can go to another replica."""
    if isinstance(exc, TimeoutError):
        return False  # a slow server may still act on the request: not safe to repeat elsewhere
    if isinstance(exc, ProcessExitedError | ConnectionError | EOFError):
        return True
    if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError | PermissionError):
        return True
    if isinstance(exc, JsonRpcError):
        return SHUTTING_DOWN in str(exc) or OTEL_POLICY_GONE in str(exc)
    return isinstance(exc, RuntimeError) and any(marker in str(exc).lower() for marker in _SDK_GONE)


# SDK 1.0.25 keeps every session object it ever created or resumed in `CopilotClient._sessions`, disconnected
# ones included, until stop(). Two helpers read and trim that private state; both degrade to the safe answer if
# a future SDK changes it.


def _has_attached_sessions(client: CopilotClient) -> bool:
    """Whether the SDK client still has sessions attached (unknown means yes)."""
    sessions = getattr(client, "_sessions", None)
    if not isinstance(sessions, dict):
        return True
    return any(not getattr(s, "_destroyed", False) for s in list(sessions.values()))


def forget_detached_session(client: CopilotClient, session: CopilotSession) -> None:
    """Drop a disconnected session from the SDK client's registry, so a long-lived pooled client does not grow."""
    sessions = getattr(client, "_sessions", None)
    lock = getattr(client, "_sessions_lock", None)
    if not isinstance(sessions, dict) or lock is None or not getattr(session, "_destroyed", False):
        return
    with lock:
        if sessions.get(session.session_id) is session:
            del sessions[session.session_id]


class ClientPool:
    """Connected SDK clients keyed by (address, token). Use from one event loop; `aclose()` stops them all.

    Clients come from `copilot_fleet.nodelay.cli_client` (TCP_NODELAY on every connection); a `client_factory`
    should build them with it too."""

    def __init__(self, *, connect_timeout: float = 5.0, client_factory: ClientFactory | None = None) -> None:
        if not connect_timeout > 0:
            raise ValueError(f"connect_timeout must be > 0 seconds, got {connect_timeout}")
        self.connect_timeout = connect_timeout
        self._factory = client_factory or cli_client
        self._clients: dict[tuple[str, str | None], CopilotClient] = {}
        self._locks: dict[tuple[str, str | None], asyncio.Lock] = {}
        self._closed = False

    def __len__(self) -> int:
        return len(self._clients)

    def addresses(self) -> list[str]:
        return [address for address, _ in self._clients]

    async def get(self, address: str, token: str | None) -> CopilotClient:
        """The connected client for `address`, connecting on first use and again after its connection ended;
        ReplicaUnavailable if the server does not answer."""
        if self._closed:
            raise RuntimeError("this ClientPool is closed")
        key = (address, token)
        client = self._clients.get(key)
        if client is not None and client_connected(client):
            return client
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            client = self._clients.get(key)
            if client is not None and not client_connected(client):
                # Its server went away (crash, restart, drain) since we connected. The SDK never reconnects a
                # client, so handing it out would fail the caller's call: with one address (per-user fleets) the
                # first call after every restart. Retire it and connect afresh.
                logger.info("connection to CLI server %s ended; reconnecting", address)
                del self._clients[key]
                await self._force_stop(client)
                client = None
            if client is None:
                client = await self._connect(address, token)
                self._clients[key] = client
            return client

    async def _connect(self, address: str, token: str | None) -> CopilotClient:
        host, port = split_address(address)
        # The SDK connects with a blocking socket call (10 s timeout) on the event loop thread; probe with a
        # cancellable connect first so a dead or black-holed replica costs at most connect_timeout.
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), self.connect_timeout)
        except (OSError, TimeoutError) as exc:
            reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
            raise ReplicaUnavailable(f"CLI server {address} did not accept a connection ({reason})") from exc
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        client = self._factory(address, token)
        try:
            await asyncio.wait_for(client.start(), self.connect_timeout)
        except JsonRpcError as exc:
            await self._force_stop(client)
            if getattr(exc, "code", None) == AUTH_FAILED_CODE:
                raise ReplicaUnavailable(
                    f"CLI server {address} rejected the connection token (AUTHENTICATION_FAILED); check the "
                    "target's connection_token / user_tokens"
                ) from exc
            raise ReplicaUnavailable(f"CLI server {address} failed the handshake: {exc}") from exc
        except (TimeoutError, RuntimeError, OSError, ProcessExitedError) as exc:
            await self._force_stop(client)
            raise ReplicaUnavailable(f"CLI server {address} did not complete the connection: {exc}") from exc
        return client

    @staticmethod
    async def _force_stop(client: CopilotClient) -> None:
        try:
            await client.force_stop()
        except Exception:  # already broken; nothing more to free
            logger.debug("force_stop of a failed client raised", exc_info=True)

    async def discard(self, address: str, token: str | None, client: CopilotClient | None = None) -> None:
        """Drop a client whose server went away, so the next `get` reconnects.

        With `client`, only if that is still the pooled one: a concurrent `get` may already have replaced it with a
        fresh connection that other calls are using."""
        key = (address, token)
        pooled = self._clients.get(key)
        if pooled is None or (client is not None and pooled is not client):
            return
        del self._clients[key]
        await self._force_stop(pooled)

    async def aclose(self) -> None:
        """Stop every client: detach what is still attached, then close the connections."""
        self._closed = True
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            if not _has_attached_sessions(client):
                # Nothing to detach: closing the socket first is instant, while stop() joins the SDK's reader
                # thread before closing the socket and so always waits its 1 s timeout.
                await self._force_stop(client)
                continue
            try:
                await client.stop()
            except Exception:  # keep stopping the others; a dead server cannot be stopped gracefully
                logger.debug("stopping a CopilotClient failed", exc_info=True)
                await self._force_stop(client)

    async def __aenter__(self) -> ClientPool:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
