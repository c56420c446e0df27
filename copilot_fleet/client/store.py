"""The fleet client's side of store mode (a target with `session_state.mode: store`).

In store mode a session's state lives in Redis, served to each CLI server by its session filesystem provider, and
a provider writes a session only for the server its lease is bound to (copilot_fleet.sessionstore.fencing). So the
client, which alone knows its lease's token:
- binds the lease to the server it is about to attach on, before every attempt (again before failing over): the
  server's id from the target, or `*` through the load-balanced endpoint;
- lists, checks and deletes sessions in the store (copilot_fleet.sessionstore.admin): CLI 1.0.102 lists nothing
  and deletes nothing for provider-backed sessions.

It uses the lease manager's Redis connection (the target's `redis_url`, the fleet's admin credential).
"""

from __future__ import annotations

from datetime import UTC, datetime

import redis.asyncio as aioredis
import redis.exceptions
from copilot import SessionMetadata

from copilot_fleet.sessionstore import admin
from copilot_fleet.sessionstore.fencing import BindRefused, bind_lease
from copilot_fleet.sessionstore.keys import StoreKeys
from copilot_fleet.sessionstore.store import StoreUnavailable
from copilot_fleet.target import Target

from .errors import LeaseLost, LeaseUnavailable, NoRoute
from .lease import Lease

_EPOCH = datetime.fromtimestamp(0, tz=UTC)


class SessionStoreAccess:
    """What one FleetClient (or FleetAdmin) does in the store for one target."""

    def __init__(self, target: Target, client: aioredis.Redis) -> None:
        self.target = target
        self.redis = client

    def keys(self, user: str | None) -> StoreKeys:
        """The keys of the scope `user`'s sessions live in (their own server's in per-user, else the shared one)."""
        try:
            scope = self.target.store_scope(user)
        except KeyError:
            raise NoRoute(f"this per-user fleet ({self.target.stack!r}) has no CLI server, and so no store scope, "
                          f"for user {user!r}; add the user to the stack config and redeploy") from None
        return StoreKeys(scope, self.target.session_state.key_prefix)

    def scopes(self) -> list[tuple[str | None, StoreKeys]]:
        """Every scope of the fleet, with the user it belongs to (None: the shared scope)."""
        if self.target.isolation == "per-user":
            return [(user, self.keys(user)) for user in sorted(self.target.users)]
        return [(None, self.keys(None))]

    async def bind(self, lease: Lease, keys: StoreKeys, address: str) -> None:
        """Bind `lease` to the server at `address` before attaching there: only that server may write the session
        from now on. LeaseLost if the lease is no longer ours (then the session must not be attached)."""
        try:
            await bind_lease(self.redis, keys, lease.session_id, lease.token, self.target.server_id(address))
        except BindRefused as exc:
            raise LeaseLost(str(exc)) from None
        except redis.exceptions.RedisError as exc:
            raise LeaseUnavailable(f"binding session {lease.session_id!r} to {address} in the store failed: "
                                   f"{exc}. Refusing to attach it") from exc

    async def exists(self, keys: StoreKeys, session_id: str) -> bool:
        try:
            return await self.redis.zscore(keys.index, session_id) is not None
        except redis.exceptions.RedisError as exc:
            raise LeaseUnavailable(f"looking up session {session_id!r} in the store failed: {exc}") from exc

    async def list(self, keys: StoreKeys, *, owner: str | None = None) -> list[admin.StoredSession]:
        try:
            return await admin.list_sessions(self.redis, keys, owner=owner)
        except StoreUnavailable as exc:
            raise LeaseUnavailable(str(exc)) from exc

    async def delete(self, keys: StoreKeys, session_id: str, token: str) -> bool:
        """Delete a session we hold the lease of (`token`); True if it existed."""
        try:
            return await admin.delete_session(self.redis, keys, session_id, token)
        except admin.NotLeased as exc:
            raise LeaseLost(str(exc)) from None
        except redis.exceptions.RedisError as exc:
            raise LeaseUnavailable(f"deleting session {session_id!r} from the store failed: {exc}") from exc


def as_metadata(row: admin.StoredSession) -> SessionMetadata:
    """A stored session as the SDK's SessionMetadata, the shape `FleetClient.list_sessions` returns in both modes."""
    return SessionMetadata(session_id=row.session_id, start_time=row.created or row.modified or _EPOCH,
                           modified_time=row.modified or row.created or _EPOCH, is_remote=False)
