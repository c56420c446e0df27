"""Fenced writes: a session's files change only through the server its lease holder attached it on.

The lease (copilot_fleet.client.lease) is taken by the fleet client, an application process, with a random token
only that client knows; the CLI server and its provider never see it. So the client says which server it attaches
the session on, and the store checks that, atomically with every write:

1. The client takes the session's lease (token T), then binds it: `bind_lease(..., server_id)` writes
   `<T> <server id>` to the session's bind key, in a script that does so only while the lease still holds T.
   It binds again before it attaches on another server (failover). `server_id="*"` lets the first server that
   writes under T claim it (for a client that reaches servers through a load balancer and cannot know which one);
   administrative tasks bind `-` (no server may write while they hold the lease).
2. Each provider registers its server id in the store with a random instance nonce and a TTL, renewed while it
   runs (`ServerRegistration`). A new instance of the same server id takes the registration over.
3. Every write is one script that accepts it only if: the server id's registration holds this instance's nonce;
   the lease key exists (else refused: "no client holds its lease"); the bind key names the current lease token;
   and it names this server (or `*`, which this server then claims). Otherwise the write is refused and the
   CLI's turn fails with the reason, naming the session.

Why this is safe against the cases that break a shared volume:
- A paused server (SIGSTOP past the lease TTL): its client's lease lapses or is given up; the next client takes a
  new token and binds it to another server. When the paused server resumes, its writes meet a lease token that
  is not bound to it: refused. Nothing depends on its own clock or on what it believed before the pause; the
  check runs inside Redis against the state at that moment.
- A second server attaching while the first still holds it: the binding names the first; the second's writes,
  including the ones resume itself makes, are refused.
- A stale instance of a restarted server id (same name, same binding): its nonce no longer matches.
- A lease that is not bound (a client that attached without binding): refused, so an old client cannot write
  beside a new one unnoticed.
Reads are not fenced: they change nothing, and a server whose writes are refused cannot spread what it read.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

import redis.asyncio as aioredis
import redis.exceptions

from copilot_fleet.errors import FleetError

from .keys import StoreKeys
from .lua import BIND_SCRIPT, RENEW_REGISTRATION_SCRIPT, UNREGISTER_SCRIPT

logger = logging.getLogger(__name__)

ANY_SERVER = "*"
NO_SERVER = "-"
DEFAULT_BIND_TTL_SECONDS = 24 * 3600.0  # only garbage collection: a binding counts only while its token holds
DEFAULT_REGISTRATION_TTL_SECONDS = 15.0
_SERVER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:\[\]-]{0,199}")


def validate_server_id(server_id: object) -> str:
    """A server id: what clients call the server (its address as the target lists it, or a pod name)."""
    if not isinstance(server_id, str) or not _SERVER_ID.fullmatch(server_id):
        raise ValueError(
            f"server id {server_id!r} must be 1 to 200 characters: a letter or digit, then letters, digits, "
            "'.', '_', ':', '-', '[' or ']' (for example the server's address as the target lists it)"
        )
    return server_id


@dataclass(frozen=True)
class ServerIdentity:
    """One running instance of a server: its stable id and a nonce new at every start."""

    server_id: str
    instance: str = field(default_factory=lambda: secrets.token_hex(12))

    def __post_init__(self) -> None:
        validate_server_id(self.server_id)


class BindRefused(FleetError, RuntimeError):
    """The lease token given is not (or no longer) the session's lease: nothing was bound."""


async def bind_lease(
    client: aioredis.Redis,
    keys: StoreKeys,
    session_id: str,
    token: str,
    server_id: str,
    *,
    ttl: float = DEFAULT_BIND_TTL_SECONDS,
) -> None:
    """Bind the lease with `token` on `session_id` to `server_id` (or `ANY_SERVER` / `NO_SERVER`).

    Call it after taking the lease and before attaching the session on that server; BindRefused if the lease is
    no longer ours (then nothing was written and the session must not be attached).
    """
    if server_id not in (ANY_SERVER, NO_SERVER):
        validate_server_id(server_id)
    bound = await client.eval(
        BIND_SCRIPT, 2, keys.lease(session_id), keys.bind(session_id), token, server_id, max(1, int(ttl * 1000))
    )
    if int(bound) != 1:
        raise BindRefused(
            f"cannot bind session {session_id!r} to server {server_id}: the lease is no longer held with this token "
            "(it expired or another client took it); do not attach the session"
        )


class RegistrationLost(FleetError, RuntimeError):
    """Another instance registered this server id: this instance must stop serving."""


class ServerRegistration:
    """This instance's registration under its server id: taken over at start, renewed every ttl/3.

    Renewal takes the registration again if it merely expired (a long pause): writes are refused while it is
    absent, and taking it back is safe because bindings, not the registration, decide which sessions we may
    write. If another instance holds it, `lost` is set with the reason and renewal stops: the provider exits.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        keys: StoreKeys,
        identity: ServerIdentity,
        *,
        ttl: float = DEFAULT_REGISTRATION_TTL_SECONDS,
        on_lost: Callable[[str], None] | None = None,
    ) -> None:
        if not ttl > 0:
            raise ValueError(f"registration ttl must be > 0 seconds, got {ttl}")
        self.redis = client
        self.key = keys.server(identity.server_id)
        self.identity = identity
        self.ttl = ttl
        self._on_lost = on_lost
        self.lost = asyncio.Event()
        self.lost_reason: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._renew = client.register_script(RENEW_REGISTRATION_SCRIPT)
        self._unregister = client.register_script(UNREGISTER_SCRIPT)

    async def take(self) -> None:
        """Register as the running instance of the server id, replacing any earlier instance."""
        previous = await self.redis.set(self.key, self.identity.instance, px=int(self.ttl * 1000), get=True)
        if previous is not None:
            logger.warning(
                "server id %s was registered by another instance; this one replaces it (an earlier instance "
                "that still runs will have its writes refused)", self.identity.server_id
            )
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="store-registration")

    async def _loop(self) -> None:
        every = self.ttl / 3
        while True:
            await asyncio.sleep(every)
            try:
                ours = await self._renew(keys=[self.key], args=[self.identity.instance, int(self.ttl * 1000)])
            except redis.exceptions.RedisError as exc:
                logger.warning("could not renew the registration of server %s: %s", self.identity.server_id, exc)
                continue  # writes are refused once it lapses; they pass again when Redis is back
            if int(ours) != 1:
                self._mark_lost(
                    f"another instance registered server id {self.identity.server_id}; this instance stops"
                )
                return

    def _mark_lost(self, reason: str) -> None:
        self.lost_reason = reason
        self.lost.set()
        logger.error("%s", reason)
        if self._on_lost is not None:
            self._on_lost(reason)

    async def release(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        try:
            await self._unregister(keys=[self.key], args=[self.identity.instance])
        except redis.exceptions.RedisError as exc:
            logger.warning("could not remove the registration of %s (%s); it expires by itself",
                           self.identity.server_id, exc)
