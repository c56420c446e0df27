"""Listing, deleting and cleaning up sessions in the store (the CLI cannot for provider-backed sessions)."""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from copilot_fleet.client.lease import LeaseManager
from copilot_fleet.sessionstore.admin import NotLeased, cleanup, delete_session, list_sessions
from copilot_fleet.sessionstore.fencing import ServerIdentity, ServerRegistration, bind_lease
from copilot_fleet.sessionstore.keys import StoreKeys
from copilot_fleet.sessionstore.redis_store import RedisSessionStore
from copilot_fleet.sessionstore.store import FencedWrite
from tests.helpers.store_processes import RedisServer

pytestmark = pytest.mark.anyio


class Admin:
    def __init__(self, client: aioredis.Redis) -> None:
        self.redis = client
        self.keys = StoreKeys("a" + secrets.token_hex(4))
        self.leases = LeaseManager(client, ttl=30)
        self.server = ServerIdentity("s1")
        self.fs = RedisSessionStore(client, self.keys, writer=self.server)

    async def session(self, owner: str, purpose: str = "work") -> str:
        """A session written through the store by server s1, its lease released afterwards."""
        sid = f"u-{len(owner)}-{owner}-{purpose}-1700000000-{secrets.token_hex(4)}"
        async with self.leases.hold(sid) as lease:
            await bind_lease(self.redis, self.keys, sid, lease.token, "s1")
            await self.fs.append_file(sid, "events.jsonl", '{"type":"session.start"}\n')
            await self.fs.write_file(sid, "checkpoints/index.md", "# cp\n")
        return sid


@pytest.fixture
async def admin(redis_server: RedisServer) -> AsyncIterator[Admin]:
    client = aioredis.from_url(redis_server.url)
    a = Admin(client)
    registration = ServerRegistration(client, a.keys, a.server)
    await registration.take()
    try:
        yield a
    finally:
        await registration.release()
        await client.aclose()


async def test_list_shows_owner_times_size_writer_and_lease(admin: Admin) -> None:
    alice = await admin.session("alice")
    bob = await admin.session("bob-smith")
    listed = {s.session_id: s for s in await list_sessions(admin.redis, admin.keys)}
    assert set(listed) == {alice, bob}
    a = listed[alice]
    assert a.owner == "alice" and a.writer == "s1" and a.bytes == len('{"type":"session.start"}\n# cp\n')
    assert a.created is not None and a.modified is not None and a.created <= a.modified
    assert not a.leased and a.bound_server is None
    assert [s.session_id for s in await list_sessions(admin.redis, admin.keys, owner="bob-smith")] == [bob]
    lease = await admin.leases.acquire(alice)
    await bind_lease(admin.redis, admin.keys, alice, lease.token, "s1")
    now = {s.session_id: s for s in await list_sessions(admin.redis, admin.keys)}
    assert now[alice].leased and now[alice].bound_server == "s1" and not now[bob].leased


async def test_delete_needs_the_lease_and_fences_a_server_that_still_has_it(admin: Admin) -> None:
    sid = await admin.session("alice")
    with pytest.raises(NotLeased):
        await delete_session(admin.redis, admin.keys, sid, "not-the-token")
    async with admin.leases.hold(sid) as lease:
        assert await delete_session(admin.redis, admin.keys, sid, lease.token)
        # A server that still has the session loaded cannot bring it back while the deleter holds the lease.
        with pytest.raises(FencedWrite):
            await admin.fs.append_file(sid, "events.jsonl", "late\n")
        assert not await delete_session(admin.redis, admin.keys, sid, lease.token)  # already gone
    assert [k async for k in admin.redis.scan_iter(match=admin.keys.session(sid) + "*")] == []
    assert await admin.redis.zscore(admin.keys.index, sid) is None
    with pytest.raises(FencedWrite, match="no client holds its lease"):
        await admin.fs.append_file(sid, "events.jsonl", "later\n")


async def test_cleanup_never_touches_a_leased_or_recent_session(admin: Admin) -> None:
    old = await admin.session("alice", "old")
    leased = await admin.session("alice", "leased")
    recent = await admin.session("alice", "recent")
    holder = await admin.leases.acquire(leased)
    # Everything written so far counts as old when we look 60 s ahead, except what is written after `cutoff`.
    future = time.time() + 60
    async with admin.leases.hold(recent) as lease:
        await bind_lease(admin.redis, admin.keys, recent, lease.token, "s1")
        score = int((future - 30) * 1000)
        await admin.redis.zadd(admin.keys.index, {recent: 0})  # listed as old...
        await admin.redis.hset(admin.keys.meta(recent), "modified", score + 1)  # ...but modified after the cutoff
    report = await cleanup(admin.redis, admin.keys, admin.leases, older_than=30, now=future)
    assert report.deleted == [old]
    assert report.skipped_leased == [leased] and report.skipped_recent == [recent]
    remaining = {s.session_id for s in await list_sessions(admin.redis, admin.keys)}
    assert remaining == {leased, recent}
    assert await admin.redis.get(admin.keys.lease(leased)) == holder.token.encode()  # the holder keeps it
