"""Who may touch a session, decided from its id (and shared-session membership) before any server call.

A user session belongs to exactly the user named in its id (length-prefixed, so "alice" never matches
"alice-smith"). A named shared session (`s-<name>`) admits its members; membership lives in a `MembershipStore`:
a Redis set per shared session, or an in-memory map for applications that keep membership elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, runtime_checkable

import redis.asyncio as aioredis
import redis.exceptions

from .errors import AccessDenied, MembershipUnavailable
from .ids import SessionIdParts, parse_session_id, validate_id_part

MEMBERS_KEY_PREFIX = "copilot-fleet:members:"


@runtime_checkable
class MembershipStore(Protocol):
    """Members of named shared sessions, keyed by the shared session's name (not its id)."""

    async def is_member(self, name: str, user: str) -> bool: ...

    async def add_members(self, name: str, users: Iterable[str]) -> None: ...

    async def remove_members(self, name: str, users: Iterable[str]) -> None: ...

    async def members(self, name: str) -> set[str]: ...


class InMemoryMembership:
    """Membership held in this process: for tests and applications that load membership from elsewhere."""

    def __init__(self, initial: dict[str, Iterable[str]] | None = None) -> None:
        self._members: dict[str, set[str]] = {}
        for name, users in (initial or {}).items():
            self._members[validate_id_part(name, "shared session name")] = {validate_id_part(u, "user") for u in users}

    async def is_member(self, name: str, user: str) -> bool:
        return user in self._members.get(name, set())

    async def add_members(self, name: str, users: Iterable[str]) -> None:
        validate_id_part(name, "shared session name")
        self._members.setdefault(name, set()).update(validate_id_part(u, "user") for u in users)

    async def remove_members(self, name: str, users: Iterable[str]) -> None:
        self._members.get(name, set()).difference_update(users)

    async def members(self, name: str) -> set[str]:
        return set(self._members.get(name, set()))

    async def names(self) -> list[str]:
        return sorted(name for name, users in self._members.items() if users)


class RedisMembership:
    """One Redis set per shared session (`copilot-fleet:members:<name>`). Any Redis failure fails closed."""

    def __init__(self, client: aioredis.Redis, *, key_prefix: str = MEMBERS_KEY_PREFIX) -> None:
        self._redis = client
        self._prefix = key_prefix

    def key(self, name: str) -> str:
        return self._prefix + name

    async def is_member(self, name: str, user: str) -> bool:
        try:
            return bool(await self._redis.sismember(self.key(name), user))
        except redis.exceptions.RedisError as exc:
            raise MembershipUnavailable(
                f"cannot check membership of shared session {name!r}: the membership store (Redis) failed: {exc}; "
                "access is refused until it answers"
            ) from exc

    async def add_members(self, name: str, users: Iterable[str]) -> None:
        validate_id_part(name, "shared session name")
        checked = [validate_id_part(u, "user") for u in users]
        if not checked:
            return
        try:
            await self._redis.sadd(self.key(name), *checked)
        except redis.exceptions.RedisError as exc:
            raise MembershipUnavailable(f"cannot add members to {name!r}: Redis failed: {exc}") from exc

    async def remove_members(self, name: str, users: Iterable[str]) -> None:
        listed = list(users)
        if not listed:
            return
        try:
            await self._redis.srem(self.key(name), *listed)
        except redis.exceptions.RedisError as exc:
            raise MembershipUnavailable(f"cannot remove members from {name!r}: Redis failed: {exc}") from exc

    async def members(self, name: str) -> set[str]:
        try:
            raw = await self._redis.smembers(self.key(name))
        except redis.exceptions.RedisError as exc:
            raise MembershipUnavailable(f"cannot list members of {name!r}: Redis failed: {exc}") from exc
        return {m.decode() if isinstance(m, bytes) else str(m) for m in raw}

    async def names(self) -> list[str]:
        """Every shared session that has members (an empty set does not exist in Redis), sorted."""
        try:
            keys = [key async for key in self._redis.scan_iter(match=f"{self._prefix}*", count=500)]
        except redis.exceptions.RedisError as exc:
            raise MembershipUnavailable(f"cannot list shared sessions: Redis failed: {exc}") from exc
        return sorted((k.decode() if isinstance(k, bytes) else str(k))[len(self._prefix):] for k in keys)


def check_owner(session_id: str, user: str) -> SessionIdParts:
    """The synchronous part of the check: id well-formed, user well-formed, and a user session owned by `user`.

    Returns the parsed id; shared sessions still need `check_access` (membership).
    """
    validate_id_part(user, "user")
    parts = parse_session_id(session_id)
    if parts.kind == "user" and parts.owner != user:
        # Name the session but not its owner: the caller has no business learning who that is.
        raise AccessDenied(f"access denied: session {session_id!r} belongs to another user (you are {user!r})")
    return parts


async def check_access(session_id: str, user: str, members: MembershipStore | None = None) -> SessionIdParts:
    """Raise AccessDenied unless `user` may resume `session_id`: their own session, or a shared one they belong to.

    Also raises InvalidSessionId for malformed ids/users and MembershipUnavailable when membership cannot be read.
    """
    parts = check_owner(session_id, user)
    if parts.kind == "shared":
        assert parts.name is not None
        if members is None:
            raise AccessDenied(
                f"access denied: {session_id!r} is a shared session and no membership store was given "
                "(pass members=InMemoryMembership(...) or RedisMembership(...))"
            )
        if not await members.is_member(parts.name, user):
            raise AccessDenied(f"access denied: {user!r} is not a member of shared session {parts.name!r}")
    return parts
