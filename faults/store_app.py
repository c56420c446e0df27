"""An application on the store fault fleet: what the fleet client does in store mode, spelled out step by step.

Per attach: take the session's lease (a random token, renewed in the background), in store mode bind it to the
server about to be used (`sessionstore.fencing.bind_lease`), open an SDK client to that server (TCP_NODELAY, one per
attach, so that a dead server's client is never reused), create or resume the session. A turn races the reply
against the end of the connection (`client.liveness`: SDK 1.0.25 does not wake `send_and_wait` when its server
dies), so a killed server is seen within milliseconds as `ServerGone`; a turn the CLI ends with an error raises
`TurnFailed` with the CLI's own words. Detach disconnects, stops the SDK client and releases the lease.

The volume mode is driven the same way without the binding: its CLIs share one session-state/ directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from copilot import CopilotClient, PermissionHandler

from copilot_fleet.client.lease import Lease, LeaseManager
from copilot_fleet.client.liveness import closed_event
from copilot_fleet.errors import FleetError
from copilot_fleet.nodelay import cli_client
from copilot_fleet.sessionstore.fencing import bind_lease
from copilot_fleet.sessionstore.keys import SHARED_SCOPE, StoreKeys
from faults.sessions import SMALL
from faults.store_fleet import Server, StoreFleet

KEYS = StoreKeys(SHARED_SCOPE)
TURN_BOUND = 60.0  # how long a broken turn may take to fail; a turn returns on its reply or its server's end


class ServerGone(FleetError, ConnectionError):
    """The connection to the session's server ended during the call."""


class TurnFailed(FleetError, RuntimeError):
    """The CLI ended the turn with an error (its text is the message)."""


@dataclass
class Attached:
    app: StoreApp
    session_id: str
    server: Server
    lease: Lease
    sdk: CopilotClient
    session: Any
    turn_started: asyncio.Event = field(default_factory=asyncio.Event)

    async def _race(self, call: Any, timeout: float) -> Any:
        closed = closed_event(self.session)
        task = asyncio.ensure_future(call)
        waiters: set[asyncio.Future[Any]] = {task}
        gone: asyncio.Future[Any] | None = None
        if closed is not None:
            gone = asyncio.ensure_future(closed.wait())
            waiters.add(gone)
        try:
            done, _ = await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if gone is not None:
                gone.cancel()
        if task in done:
            return task.result()
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        if gone is not None and gone in done:
            raise ServerGone(f"session {self.session_id}: the connection to {self.server.name} "
                             f"({self.server.address}) ended during the turn")
        raise TimeoutError(f"session {self.session_id}: no reply from {self.server.name} within {timeout:g} s")

    async def turn(self, prompt: str, timeout: float = TURN_BOUND) -> str:
        """Send and wait for the reply; ServerGone, TurnFailed (the CLI's error) or the lease's LeaseLost."""
        self.lease.check()
        self.turn_started.clear()
        try:
            reply = await self._race(self.session.send_and_wait(prompt, timeout=timeout), timeout + 5)
        except (ServerGone, TimeoutError):
            raise
        except Exception as exc:  # the SDK raises a plain Exception carrying the CLI's session error
            raise TurnFailed(str(exc)) from exc
        return str(getattr(reply.data, "content", "")) if reply is not None else ""

    async def detach(self) -> None:
        with contextlib.suppress(Exception):  # the server may be gone: nothing to disconnect from
            await asyncio.wait_for(self.session.disconnect(), 10)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.sdk.force_stop(), 10)
        await self.lease.release()


class StoreApp:
    """One application process's view of the fleet (either mode). Use `async with`."""

    def __init__(self, fleet: StoreFleet, *, lease_ttl: float = 30.0) -> None:
        self.fleet = fleet
        self.redis = aioredis.from_url(fleet.redis.url, socket_timeout=5, socket_connect_timeout=5)
        self.leases = LeaseManager(self.redis, ttl=lease_ttl)

    def options(self) -> dict[str, Any]:
        return {"provider": self.fleet.model.provider(), "model": "copilot-fleet-test",
                "on_permission_request": PermissionHandler.approve_all, **SMALL}

    async def attach(self, session_id: str, server: Server, *, create: bool = False,
                     lease_wait: float = 40.0) -> Attached:
        """Lease (bound to `server` in store mode), connect, create or resume. On failure nothing stays held."""
        lease = await self.leases.acquire(session_id, wait=lease_wait)
        lease.start_renewing()
        sdk: CopilotClient | None = None
        try:
            if server.mode == "store":
                await bind_lease(self.redis, KEYS, session_id, lease.token, server.name)
            sdk = cli_client(server.address, self.fleet.token)
            await asyncio.wait_for(sdk.start(), 20)
            if create:
                call = sdk.create_session(session_id=session_id, name="faults", **self.options())
            else:
                call = sdk.resume_session(session_id, **self.options())
            session = await asyncio.wait_for(call, 30)
        except BaseException:
            if sdk is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(sdk.force_stop(), 10)
            await lease.release()
            raise
        attached = Attached(self, session_id, server, lease, sdk, session)

        def on_event(event: object) -> None:
            kind = getattr(event, "type", None)
            if getattr(kind, "value", kind) == "assistant.turn_start":
                attached.turn_started.set()

        session.on(on_event)
        return attached

    async def events(self, session_id: str, mode: str) -> bytes:
        """The session's events.jsonl as the mode keeps it (b"" if there is none)."""
        if mode == "store":
            value = await self.redis.get(KEYS.content(session_id, "events.jsonl"))
            return value.encode() if isinstance(value, str) else (value or b"")
        path = self.fleet.shared_state / session_id / "events.jsonl"
        return path.read_bytes() if path.exists() else b""

    async def aclose(self) -> None:
        await self.redis.aclose()

    async def __aenter__(self) -> StoreApp:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def since(start: float) -> float:
    return time.monotonic() - start
