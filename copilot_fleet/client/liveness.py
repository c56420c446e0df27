"""Whether the connection under an SDK client or session still stands, and an event for its end.

SDK 1.0.25 notices a dropped connection in its reader thread: it fails the pending JSON-RPC requests and marks
the `CopilotClient` disconnected. It does not wake `send_and_wait`, which waits for the session's idle *event*
that a dead server never sends, so a turn on a server that died returns only at its timeout (60 s by default).
The SDK also never reconnects a client, so a pooled client whose server restarted fails every call.

The SDK has no public hook for either, so this module reads its private state: `CopilotClient._state`,
`._client` / `CopilotSession._client` (the `JsonRpcClient`), and that client's `_transport_closed`, `_loop` and
`on_close`. The SDK is pinned (copilot_fleet.SDK_VERSION); if a later one changes that state, everything here
answers "connected" / "cannot watch" and callers get the SDK's own behaviour back, never a false alarm.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from typing import Any

from copilot._jsonrpc import JsonRpcClient

# One event per connection, shared by every session on it; dropped with the connection.
_closed_events: weakref.WeakKeyDictionary[JsonRpcClient, asyncio.Event] = weakref.WeakKeyDictionary()


def client_connected(client: object) -> bool:
    """False once an SDK client's connection ended or it was stopped (unknown reads as connected)."""
    return getattr(client, "_state", "connected") == "connected"


def _transport(owner: object) -> JsonRpcClient | None:
    rpc = getattr(owner, "_client", None)
    return rpc if isinstance(rpc, JsonRpcClient) else None


def transport_closed(owner: object) -> bool:
    """True when the connection that `owner` (a CopilotClient or CopilotSession) talks over has ended."""
    rpc = _transport(owner)
    return rpc is not None and getattr(rpc, "_transport_closed", False) is True


def closed_event(owner: object) -> asyncio.Event | None:
    """An event that is set when the connection under `owner` ends; None when it cannot be watched."""
    rpc = _transport(owner)
    if rpc is None:
        return None
    event = _closed_events.get(rpc)
    if event is None:
        loop = getattr(rpc, "_loop", None)
        if not isinstance(loop, asyncio.AbstractEventLoop) or not hasattr(rpc, "on_close"):
            return None
        event = asyncio.Event()
        rpc.on_close = _chain(rpc.on_close, loop, event)
        _closed_events[rpc] = event
    # Checked after the hook is in place: the reader thread latches _transport_closed before it looks up on_close,
    # so an end that came before the hook is seen here and one that comes after goes through the hook.
    if getattr(rpc, "_transport_closed", False) is True:
        event.set()
    return event


def _chain(previous: Any, loop: asyncio.AbstractEventLoop, event: asyncio.Event) -> Any:
    """The reader thread's on_close callback: the SDK's own first, then our event (set on the event loop)."""

    def on_close() -> None:
        try:
            if previous is not None:
                previous()
        finally:
            if not loop.is_closed():
                with contextlib.suppress(RuntimeError):  # the loop closed in between: nobody is waiting any more
                    loop.call_soon_threadsafe(event.set)

    return on_close
