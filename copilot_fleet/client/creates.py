"""Create requests that can be undone when their caller gives up.

A create that is cancelled or times out on our side still runs on the server, and the session it makes has an id
only the caller knew: nobody would ever attach or delete it before the janitor's TTL. So a create is sent as its
own task (our wait is shielded from it, its outcome stays known) and, if the caller never got the session, the
server's session is detached and deleted once the request has answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from copilot import CopilotClient, CopilotSession

from .errors import is_storage_error

logger = logging.getLogger(__name__)

UNDO_STEP_TIMEOUT = 5.0  # seconds for each step of an undo: the request's answer, the detach, the delete


class CreateRequests:
    """The create requests sent for one new session id (one per replica tried)."""

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        self._sent: list[tuple[CopilotClient, asyncio.Task[CopilotSession]]] = []
        self._delete: Callable[[CopilotClient], Awaitable[object]] = lambda client: client.delete_session(session_id)

    def delete_with(self, delete: Callable[[CopilotClient], Awaitable[object]]) -> None:
        """How `undo` deletes a session (store mode: in the store, under the lease; the CLI deletes none there)."""
        self._delete = delete

    def send(self, client: CopilotClient, **kwargs: Any) -> Awaitable[CopilotSession]:
        request = asyncio.ensure_future(client.create_session(session_id=self.session_id, **kwargs))
        self._sent.append((client, request))
        return asyncio.shield(request)  # a timeout or cancellation stops our wait, not the request

    def made(self, session: object) -> bool:
        """True when `session` is what one of these create requests returned (not, say, a resume's session)."""
        return any(request.done() and not request.cancelled() and request.exception() is None
                   and request.result() is session for _, request in self._sent)

    async def undo(self) -> None:
        """Detach and delete what the servers made for a caller that never got it. Never raises for the servers:
        the caller's own failure is what it must see."""
        for client, request in self._sent:
            try:
                session: CopilotSession | None = await asyncio.wait_for(asyncio.shield(request), UNDO_STEP_TIMEOUT)
            except TimeoutError:
                request.cancel()  # hung: the server may still make it, so the delete is tried anyway
                session = None
            except Exception as exc:  # noqa: BLE001 - the server refused the create
                if not is_storage_error(exc):
                    continue  # refused before it wrote anything
                session = None  # refused because a write failed: a partial directory may be left, delete it
            if session is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(session.disconnect(), UNDO_STEP_TIMEOUT)
            try:
                await asyncio.wait_for(self._delete(client), UNDO_STEP_TIMEOUT)
            except Exception as exc:
                if session is not None:
                    logger.warning("session %s was created after its caller gave up and could not be deleted "
                                   "(%s: %s); the janitor removes it after the session TTL", self.session_id,
                                   type(exc).__name__, exc)
