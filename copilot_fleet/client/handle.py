"""`FleetSession`: an attached session plus the lease that makes it ours; closing it detaches, then releases.

It wraps the SDK's `CopilotSession` (available as `.sdk` for everything not wrapped here) and turns the CLI's
error strings into the fleet client's typed errors.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from copilot import CopilotSession
from copilot.session_events import SessionEvent

from .errors import ProviderMissing, SessionNotFound
from .lease import Lease
from .pool import forget_detached_session

if TYPE_CHECKING:
    from copilot import CopilotClient

logger = logging.getLogger(__name__)

# What the CLI says (facts/copilot-runtime.md); matched as substrings, case-insensitively.
_NO_AUTH = "no github oauth token or copilot hmac key provided"
_NOT_FOUND = ("session not found", "session file not found")

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
        on_close: Callable[[FleetSession], None] | None = None,
    ) -> None:
        self.sdk = sdk
        self.session_id: str = sdk.session_id
        self.address = address
        self.lease = lease
        self.ephemeral = ephemeral
        self._client = client
        self._on_close = on_close
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

    def check(self) -> None:
        """Raise LeaseLost if the lease is gone, RuntimeError if the session is closed."""
        if self._closed:
            raise RuntimeError(f"session {self.session_id!r} is closed; resume it again")
        if self.lease is not None:
            self.lease.check()

    def _on_lease_lost(self, lease: Lease) -> None:
        # Stop the turn in flight: its further writes would interleave with the new holder's.
        if not self._closed:
            self._abort_task = asyncio.get_running_loop().create_task(self._abort_quietly())

    async def _abort_quietly(self) -> None:
        try:
            await self.sdk.abort()
        except Exception:
            logger.debug("abort after lease loss failed for %s", self.session_id, exc_info=True)

    async def _guarded(self, call: Callable[[], Awaitable[Any]]) -> Any:
        self.check()
        try:
            result = await call()
        except Exception as exc:
            translated = translate_sdk_error(exc, self.session_id)
            if self.lease is not None and self.lease.lost:
                self.lease.check()  # losing the lease explains the failure better than the SDK's error
            if translated is exc:
                raise
            raise translated from exc
        if self.lease is not None:
            self.lease.check()  # a reply produced while someone else may have written is not a clean success
        return result

    async def send(self, prompt: str, **kwargs: Any) -> str:
        """Send without waiting (see CopilotSession.send); returns the message id."""
        return await self._guarded(lambda: self.sdk.send(prompt, **kwargs))

    async def send_and_wait(self, prompt: str, *, timeout: float = 60.0, **kwargs: Any) -> SessionEvent | None:
        """Send and wait for the session to go idle (see CopilotSession.send_and_wait)."""
        return await self._guarded(lambda: self.sdk.send_and_wait(prompt, timeout=timeout, **kwargs))

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
        """Detach (and for ephemeral sessions delete), then release the lease. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            try:
                await self.sdk.disconnect()
            except Exception:
                # The server may be gone; the session data on disk is intact either way.
                logger.warning("detaching session %s from %s failed", self.session_id, self.address, exc_info=True)
            forget_detached_session(self._client, self.sdk)
            if self.ephemeral:
                try:
                    await self._client.delete_session(self.session_id)
                except Exception as exc:
                    if not isinstance(translate_sdk_error(exc, self.session_id), SessionNotFound):
                        logger.warning("deleting ephemeral session %s failed: %s", self.session_id, exc)
        finally:
            if self._abort_task is not None and not self._abort_task.done():
                self._abort_task.cancel()
            if self.lease is not None:
                await self.lease.release()
            if self._on_close is not None:
                self._on_close(self)

    disconnect = close

    async def __aenter__(self) -> FleetSession:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("lost" if self.lost else "open")
        return f"FleetSession({self.session_id!r} on {self.address}, {state})"
