"""`FleetSession`: an attached session plus the lease that makes it ours; closing it detaches, then releases.

It wraps the SDK's `CopilotSession` (available as `.sdk` for everything not wrapped here), turns the CLI's
error strings into the fleet client's typed errors, and ends a call as soon as the connection to the session's
server ends (SessionDisconnected), which the SDK alone does not do for a turn in flight (liveness.py).

A session this handle created, on which no turn completed and whose CLI reported a full or read-only
session-state, is deleted on close (`stillborn`): CLI 1.0.102 would otherwise leave it listed but not resumable
(docs/reliability.md, finding 4). A turn that gets no answer because the server cannot write the session's state
ends at its timeout with SessionStateUnwritable, naming the cause, not a bare timeout (write_check.py, finding 5).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from copilot import CopilotSession
from copilot.session_events import SessionEvent

from .errors import (
    FleetClientError,
    ProviderMissing,
    SessionDisconnected,
    SessionNotFound,
    SessionStateUnwritable,
    is_storage_error,
)
from .lease import Lease
from .liveness import client_connected, closed_event, transport_closed
from .pool import forget_detached_session, is_transport_failure
from .write_check import storage_write_error

if TYPE_CHECKING:
    from copilot import CopilotClient

logger = logging.getLogger(__name__)
T = TypeVar("T")

# What the CLI says (CLI 1.0.102, as measured here); matched as substrings, case-insensitively.
_NO_AUTH = "no github oauth token or copilot hmac key provided"
_NOT_FOUND = ("session not found", "session file not found")

DELETE_ON_CLOSE_TIMEOUT = 5.0  # seconds for the delete close() makes (ephemeral and stillborn sessions)

PROVIDER_HINT = (
    "this fleet uses a BYOK provider; pass provider={'type': ..., 'base_url': ..., 'api_key': ...} "
    "(the CLI does not store it with the session, so every resume must supply it again), or put the provider "
    "in the target"
)


def translate_sdk_error(exc: BaseException, session_id: str | None) -> BaseException:
    """The typed error for an SDK/CLI failure, or `exc` itself when it is nothing we recognise."""
    text = str(exc).lower()
    if _NO_AUTH in text:
        return ProviderMissing(f"session {session_id!r}: the CLI has no model credentials: {PROVIDER_HINT}")
    if any(marker in text for marker in _NOT_FOUND):
        return SessionNotFound(
            f"session {session_id!r} not found on the fleet (never persisted - a session with no turn and no "
            "name is not saved - or deleted)"
        )
    return exc


def _consume(task: asyncio.Future[Any]) -> None:
    """Retrieve an abandoned call's outcome, so asyncio does not log it as never retrieved."""
    if not task.cancelled():
        task.exception()


class FleetSession:
    """A session attached through the fleet client. Use `async with` or call `close()`."""

    def __init__(
        self,
        *,
        sdk: CopilotSession,
        client: CopilotClient,
        address: str,
        lease: Lease | None,
        ephemeral: bool = False,
        created: bool = False,
        on_close: Callable[[FleetSession], None] | None = None,
        store_delete: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        self.sdk = sdk
        self.session_id: str = sdk.session_id
        self.address = address
        self.lease = lease
        self.ephemeral = ephemeral
        self.created = created  # this handle made the session (create, join's create path), not a resume
        self._turn_sent = False  # a send/send_and_wait returned normally: the session may have history now
        self._storage_error: str | None = None  # the first storage error the CLI reported on this handle
        self._client = client
        self._on_close = on_close
        # Store mode: how this handle deletes its session (in the store, under its lease); the CLI cannot.
        self._store_delete = store_delete
        self._closed = False
        self._abort_task: asyncio.Task[None] | None = None
        if lease is not None:
            lease.add_lost_callback(self._on_lease_lost)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def lost(self) -> bool:
        """True once the lease is lost: another client may be writing; do not send more."""
        return self.lease is not None and self.lease.lost

    @property
    def stillborn(self) -> bool:
        """True when this handle created the session, no turn has completed on it (no `send`/`send_and_wait`
        returned normally) and the CLI reported a full or read-only session-state: it has no history, and CLI
        1.0.102 would leave it listed but not resumable, so `close()` deletes it."""
        return self.created and not self.ephemeral and not self._turn_sent and self._storage_error is not None

    @property
    def disconnected(self) -> bool:
        """True once the connection to the session's CLI server has ended: close this handle and resume."""
        return transport_closed(self.sdk) or not client_connected(self._client)

    def check(self) -> None:
        """Raise RuntimeError if the session is closed, LeaseLost if the lease is gone, SessionDisconnected if the
        connection to its server has ended."""
        if self._closed:
            raise RuntimeError(f"session {self.session_id!r} is closed; resume it again")
        if self.lease is not None:
            self.lease.check()
        if self.disconnected:
            raise self._disconnected_error(None)

    def _disconnected_error(self, cause: BaseException | None) -> SessionDisconnected:
        detail = f" ({type(cause).__name__}: {cause})" if cause is not None else ""
        return SessionDisconnected(
            f"session {self.session_id!r} lost its connection to CLI server {self.address}: the server crashed, "
            f"restarted or is shutting down{detail}. The session is kept on disk: close this handle and resume it "
            "(resume_session); a turn that was in flight may or may not have been saved"
        )

    def _on_lease_lost(self, lease: Lease) -> None:
        # Stop the turn in flight: its further writes would interleave with the new holder's.
        if not self._closed:
            self._abort_task = asyncio.get_running_loop().create_task(self._abort_quietly())

    async def _abort_quietly(self) -> None:
        try:
            await self.sdk.abort()
        except Exception:
            logger.debug("abort after lease loss failed for %s", self.session_id, exc_info=True)

    async def _guarded(self, call: Callable[[], Awaitable[T]], *, turn: bool = False) -> T:
        self.check()
        try:
            result = await self._unless_disconnected(call)
        except Exception as exc:
            if self._storage_error is None and is_storage_error(exc):
                self._storage_error = str(exc)
            if self.lease is not None and self.lease.lost:
                self.lease.check()  # losing the lease explains the failure better than the SDK's error
            if isinstance(exc, FleetClientError):
                raise
            translated = translate_sdk_error(exc, self.session_id)
            if translated is exc and (is_transport_failure(exc) or self.disconnected):
                translated = self._disconnected_error(exc)
            if translated is exc:
                raise
            raise translated from exc
        if turn:
            self._turn_sent = True
        if self.lease is not None:
            self.lease.check()  # a reply produced while someone else may have written is not a clean success
        return result

    async def _unless_disconnected(self, call: Callable[[], Awaitable[T]]) -> T:
        """`call()`, ended with SessionDisconnected as soon as the session's connection ends: the SDK does not wake
        a waiting `send_and_wait` then, so a replica that dies mid-turn would cost the caller the whole timeout."""
        closed = closed_event(self.sdk)
        if closed is None:  # not an SDK session we can watch: the SDK's own behaviour
            return await call()
        work = asyncio.ensure_future(call())
        work.add_done_callback(_consume)
        ended = asyncio.ensure_future(closed.wait())
        try:
            await asyncio.wait((work, ended), return_when=asyncio.FIRST_COMPLETED)
        finally:  # also when our caller cancels us: nothing of the call outlives it
            ended.cancel()
            if not work.done():
                work.cancel()
        if work.done():  # it ended first (or with the connection): its result or its own error counts
            return work.result()
        raise self._disconnected_error(None)

    async def send(self, prompt: str, **kwargs: Any) -> str:
        """Send without waiting (see CopilotSession.send); returns the message id."""
        return await self._guarded(lambda: self.sdk.send(prompt, **kwargs), turn=True)

    async def send_and_wait(self, prompt: str, *, timeout: float = 60.0, **kwargs: Any) -> SessionEvent | None:
        """Send and wait for the session to go idle (see CopilotSession.send_and_wait). A turn with no answer within
        `timeout` raises SessionStateUnwritable if the server cannot write the session's state, else the SDK's
        TimeoutError."""
        try:
            return await self._guarded(lambda: self.sdk.send_and_wait(prompt, timeout=timeout, **kwargs), turn=True)
        except TimeoutError as exc:
            if isinstance(exc, FleetClientError) or self._closed or self.disconnected or self.lost:
                raise
            cause = await storage_write_error(self.sdk)
            if cause is None:
                raise
            if self._storage_error is None:
                self._storage_error = cause
            raise SessionStateUnwritable(
                f"session {self.session_id!r}: no answer within {timeout:g} s, and CLI server {self.address} cannot "
                f"write session-state ({cause}). Nothing of this turn could be saved. Make the session-state "
                "volume writable (free space, or remount it read-write), then send again"
            ) from exc

    async def reply(self, prompt: str, *, timeout: float = 60.0, **kwargs: Any) -> str | None:
        """`send_and_wait` and return the assistant's text (None when there was no message)."""
        event = await self.send_and_wait(prompt, timeout=timeout, **kwargs)
        if event is None:
            return None
        content = getattr(event.data, "content", None)
        return content if isinstance(content, str) else None

    def on(self, handler: Callable[[SessionEvent], None]) -> Callable[[], None]:
        return self.sdk.on(handler)

    async def get_events(self) -> list[SessionEvent]:
        return await self._guarded(self.sdk.get_events)

    async def abort(self) -> None:
        await self.sdk.abort()

    async def close(self) -> None:
        """Detach (and for ephemeral and stillborn sessions delete), then release the lease. Idempotent; never
        raises for the server (only cancellation propagates), so it cannot hide the caller's own error."""
        if self._closed:
            return
        self._closed = True
        try:
            if self.disconnected:
                # Nothing to detach from (the server let go of it when the connection ended), and a stopped SDK
                # client would reconnect by itself for the delete below: skip both; the data on disk is intact.
                logger.info("session %s: the connection to %s had ended; nothing to detach", self.session_id,
                            self.address)
                if self._store_delete is not None and (self.ephemeral or self.stillborn):
                    # Store mode: the session is in the store, not on the server: delete it there all the same.
                    await self._delete_quietly("ephemeral session" if self.ephemeral else "session")
                elif self.ephemeral:
                    logger.warning("ephemeral session %s was not deleted (its server went away); the janitor "
                                   "removes it after the session TTL", self.session_id)
                elif self.stillborn:
                    logger.warning("session %s has no completed turn and hit a storage error (%s), but was not "
                                   "deleted (its server went away): it may be listed yet not resumable until "
                                   "delete_session removes it or the janitor does after the session TTL",
                                   self.session_id, self._storage_error)
                return
            try:
                await self.sdk.disconnect()
            except Exception:
                # The server may be gone; the session data on disk is intact either way.
                logger.warning("detaching session %s from %s failed", self.session_id, self.address, exc_info=True)
            forget_detached_session(self._client, self.sdk)
            if self.ephemeral:
                await self._delete_quietly("ephemeral session")
            elif self.stillborn and self.lost:
                logger.warning("session %s has no completed turn and hit a storage error (%s), but its lease was "
                               "lost, so another client may have attached it since: not deleted", self.session_id,
                               self._storage_error)
            elif self.stillborn:
                # CLI 1.0.102: workspace.yaml was written at create, the first events could not be: the CLI lists
                # the session but cannot resume it (empty events.jsonl). It has no history to lose.
                logger.warning("deleting session %s: created by this handle, no turn completed, and the CLI "
                               "reported a storage error (%s)", self.session_id, self._storage_error)
                await self._delete_quietly("session (no completed turn, storage error)")
        finally:
            if self._abort_task is not None and not self._abort_task.done():
                self._abort_task.cancel()
            if self.lease is not None:
                await self.lease.release()
            if self._on_close is not None:
                self._on_close(self)

    async def _delete_quietly(self, what: str) -> None:
        """Delete the session on its server (still under our lease), bounded; failures are logged, never raised."""
        try:
            deleting = (self._store_delete() if self._store_delete is not None
                        else self._client.delete_session(self.session_id))
            await asyncio.wait_for(deleting, DELETE_ON_CLOSE_TIMEOUT)
        except Exception as exc:  # noqa: BLE001 - close() must not replace the caller's own error
            if not isinstance(translate_sdk_error(exc, self.session_id), SessionNotFound):
                logger.warning("deleting %s %s on %s failed (%s: %s); delete_session removes it later, or the "
                               "janitor after the session TTL", what, self.session_id, self.address,
                               type(exc).__name__, exc)

    disconnect = close

    async def __aenter__(self) -> FleetSession:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("lost" if self.lost else "open")
        return f"FleetSession({self.session_id!r} on {self.address}, {state})"
