"""Listing, reading and deleting sessions in the store: what the CLI cannot do for provider-backed sessions.

Measured with CLI 1.0.102: with a session filesystem provider, `list_sessions` answers `[]` and `delete_session`
fails with "Session file not found". So the fleet client's list and delete, `copilot-fleet sessions`, the janitor
and `status` work on the store itself with these functions.

- `list_sessions`: every session of a scope with its owner (from the fleet id), created/modified times, size,
  the server that last wrote it, and whether a client holds its lease now (and on which server it is bound).
- `delete_session`: only under the session's lease (the caller holds it, e.g. `LeaseManager.hold`): the lease is
  first bound to no server, so no server may write while the keys go, and the deletion checks the lease token
  atomically. A server that still has the session loaded gets its next write refused.
- `cleanup`: deletes sessions not modified for `older_than` seconds, each under a freshly taken lease: a session
  whose lease is held (attached, or being attached) is skipped, and one modified since the listing is kept.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions

from copilot_fleet.client.errors import FleetClientError, SessionInUse
from copilot_fleet.client.ids import parse_session_id
from copilot_fleet.client.lease import LeaseManager
from copilot_fleet.errors import FleetError

from .fencing import NO_SERVER, BindRefused, bind_lease
from .keys import StoreKeys
from .redis_store import describe_redis
from .store import StoreUnavailable

# KEYS[1] lease, KEYS[2] tree, KEYS[3] meta, KEYS[4] bind, KEYS[5] index
# ARGV[1] lease token, ARGV[2] content prefix, ARGV[3] session id, ARGV[4] delete only if not modified after (ms) or ''
DELETE_SCRIPT = r"""
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {'NOLEASE'} end
if ARGV[4] ~= '' then
  local modified = tonumber(redis.call('HGET', KEYS[3], 'modified') or '0')
  if modified > tonumber(ARGV[4]) then return {'RECENT', modified} end
end
local files = 0
for _, rel in ipairs(redis.call('HKEYS', KEYS[2])) do
  files = files + redis.call('UNLINK', ARGV[2] .. rel)
end
local existed = redis.call('UNLINK', KEYS[2], KEYS[3])
redis.call('UNLINK', KEYS[4])
existed = existed + redis.call('ZREM', KEYS[5], ARGV[3])
return {'OK', files, existed}
"""


def _ms_time(value: bytes | str | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(int(value) / 1000, tz=UTC)


def _text(value: object) -> str | None:
    """A Redis reply as text (the admin's clients answer bytes)."""
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True)
class StoredSession:
    session_id: str
    scope: str
    owner: str | None  # the user in a fleet id `u-...`; None for shared (`s-...`) and foreign ids
    created: datetime | None
    modified: datetime | None
    bytes: int
    writer: str | None  # the server that wrote last
    leased: bool  # a client holds the session's lease now (attached, or about to be)
    bound_server: str | None  # the server the current lease is bound to ("*": the first to write claims it)


async def list_sessions(
    client: aioredis.Redis, keys: StoreKeys, *, owner: str | None = None, batch: int = 500
) -> list[StoredSession]:
    """The scope's sessions, most recently modified first; `owner` keeps one user's (`u-...` ids) only."""
    try:
        entries = await client.zrevrange(keys.index, 0, -1)
        out: list[StoredSession] = []
        for start in range(0, len(entries), batch):
            ids = [_text(e) or "" for e in entries[start : start + batch]]
            pipe = client.pipeline(transaction=False)
            for sid in ids:
                pipe.hgetall(keys.meta(sid))
                pipe.get(keys.lease(sid))
                pipe.get(keys.bind(sid))
            replies = await pipe.execute()
            for i, sid in enumerate(ids):
                meta, holder, bound = replies[3 * i : 3 * i + 3]
                session = _stored(keys, sid, meta, holder, bound)
                if owner is None or session.owner == owner:
                    out.append(session)
        return out
    except redis.exceptions.RedisError as exc:
        raise StoreUnavailable(
            f"listing sessions: the store (Redis at {describe_redis(client)}) failed: {exc}"
        ) from exc


def _stored(
    keys: StoreKeys, sid: str, meta: dict[Any, Any], holder: bytes | None, bound: bytes | None
) -> StoredSession:
    meta = {_text(k): _text(v) for k, v in meta.items()}
    try:
        parts = parse_session_id(sid)
        owner = parts.owner
    except FleetClientError:
        owner = None
    bound_server = None
    if holder is not None and bound is not None:
        token, _, server = (_text(bound) or "").partition(" ")
        if token == _text(holder):
            bound_server = server
    return StoredSession(
        session_id=sid,
        scope=keys.scope,
        owner=owner,
        created=_ms_time(meta.get("created")),
        modified=_ms_time(meta.get("modified")),
        bytes=int(meta.get("bytes") or 0),
        writer=meta.get("writer"),
        leased=holder is not None,
        bound_server=bound_server,
    )


async def read_file(client: aioredis.Redis, keys: StoreKeys, session_id: str, relative: str) -> bytes | None:
    """A session file's bytes as stored (None if absent): for status, tests and history checks."""
    value = await client.get(keys.content(session_id, relative))
    return value.encode() if isinstance(value, str) else value


class NotLeased(FleetError, RuntimeError):
    """The caller does not hold the session's lease (any more): nothing was deleted."""


async def delete_session(
    client: aioredis.Redis, keys: StoreKeys, session_id: str, token: str, *, modified_before_ms: int | None = None
) -> bool:
    """Delete a session's keys while holding its lease (`token`); True if anything existed.

    With `modified_before_ms`, a session modified after that moment is kept (False). NotLeased if the lease is
    not ours: then nothing was deleted.
    """
    try:
        await bind_lease(client, keys, session_id, token, NO_SERVER)
    except BindRefused as exc:
        raise NotLeased(str(exc)) from None
    result = await client.eval(
        DELETE_SCRIPT, 5, keys.lease(session_id), keys.tree(session_id), keys.meta(session_id),
        keys.bind(session_id), keys.index, token, keys.content_prefix(session_id), session_id,
        "" if modified_before_ms is None else str(modified_before_ms),
    )
    status = _text(result[0])
    if status == "NOLEASE":
        raise NotLeased(f"session {session_id!r}: the lease is no longer ours; nothing was deleted")
    if status == "RECENT":
        return False
    return int(result[1]) + int(result[2]) > 0


@dataclass
class CleanupReport:
    deleted: list[str] = field(default_factory=list)
    skipped_leased: list[str] = field(default_factory=list)
    skipped_recent: list[str] = field(default_factory=list)


async def cleanup(
    client: aioredis.Redis,
    keys: StoreKeys,
    leases: LeaseManager,
    *,
    older_than: float,
    now: float | None = None,
    limit: int = 1000,
) -> CleanupReport:
    """Delete up to `limit` sessions of the scope not modified for `older_than` seconds; never a leased one."""
    if not older_than > 0:
        raise ValueError(f"older_than must be > 0 seconds, got {older_than}")
    cutoff_ms = int(((time.time() if now is None else now) - older_than) * 1000)
    report = CleanupReport()
    candidates = await client.zrangebyscore(keys.index, "-inf", cutoff_ms, start=0, num=limit)
    for raw in candidates:
        sid = _text(raw) or ""
        try:
            lease = await leases.acquire(sid)
        except SessionInUse:
            report.skipped_leased.append(sid)
            continue
        except FleetClientError:
            # Not a valid session id for a lease (the CLI accepts no other kind), so no client can attach it.
            report.skipped_leased.append(sid)
            continue
        try:
            if await delete_session(client, keys, sid, lease.token, modified_before_ms=cutoff_ms):
                report.deleted.append(sid)
            else:
                report.skipped_recent.append(sid)
        finally:
            await lease.release()
    return report
