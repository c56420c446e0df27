"""Per-user isolation in the store: a scope's Redis user reaches that scope's keys and nothing else."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
import redis.exceptions

from copilot_fleet.client.lease import LeaseManager
from copilot_fleet.sessionstore.acl import acl_file_line, acl_user_name, ensure_scope_user
from copilot_fleet.sessionstore.fencing import ServerIdentity, ServerRegistration, bind_lease
from copilot_fleet.sessionstore.keys import StoreKeys
from copilot_fleet.sessionstore.redis_store import RedisSessionStore
from copilot_fleet.sessionstore.store import StoreUnavailable
from tests.helpers.store_processes import RedisServer

pytestmark = pytest.mark.anyio


class TwoUsers:
    def __init__(self, admin: aioredis.Redis, server: RedisServer) -> None:
        self.admin = admin
        self.server = server
        suffix = secrets.token_hex(3)
        self.alice, self.bob = f"alice{suffix}", f"bob{suffix}"
        self.passwords = {self.alice: secrets.token_hex(16), self.bob: secrets.token_hex(16)}

    def keys(self, user: str) -> StoreKeys:
        return StoreKeys(user)

    def sid(self, user: str) -> str:
        return f"u-{len(user)}-{user}-chat-1700000000-{secrets.token_hex(4)}"

    def client_as(self, user: str) -> aioredis.Redis:
        return aioredis.from_url(self.server.url_for(acl_user_name(user), self.passwords[user]))


@pytest.fixture
async def users(redis_server: RedisServer) -> AsyncIterator[TwoUsers]:
    admin = aioredis.from_url(redis_server.url)
    pair = TwoUsers(admin, redis_server)
    for user in (pair.alice, pair.bob):
        await ensure_scope_user(admin, pair.keys(user), pair.passwords[user])
    try:
        yield pair
    finally:
        for user in (pair.alice, pair.bob):
            await admin.execute_command("ACL", "DELUSER", acl_user_name(user))
        await admin.aclose()


async def write_session(users: TwoUsers, user: str, client: aioredis.Redis) -> str:
    """A session of `user`, leased and bound by the fleet (admin credentials), written by the user's server."""
    sid = users.sid(user)
    lease = await LeaseManager(users.admin, ttl=30).acquire(sid)
    await bind_lease(users.admin, users.keys(user), sid, lease.token, "cli-0")
    identity = ServerIdentity("cli-0")
    registration = ServerRegistration(client, users.keys(user), identity)
    await registration.take()
    try:
        fs = RedisSessionStore(client, users.keys(user), writer=identity)
        await fs.append_file(sid, "events.jsonl", f'{{"secret":"{user} history"}}\n')
        assert (await fs.read_file(sid, "events.jsonl")).startswith('{"secret"')
    finally:
        await registration.release()
    return sid


async def test_each_users_server_reaches_only_its_own_history(users: TwoUsers) -> None:
    alice, bob = users.client_as(users.alice), users.client_as(users.bob)
    try:
        await write_session(users, users.alice, alice)  # alice's server does everything a provider does
        bob_sid = await write_session(users, users.bob, bob)
        bob_keys = users.keys(users.bob)

        # With alice's credentials, bob's history is out of reach through the store and directly.
        with pytest.raises(StoreUnavailable, match="no permissions"):
            await RedisSessionStore(alice, bob_keys, writer=None).read_file(bob_sid, "events.jsonl")
        for command in (
            ("GET", bob_keys.content(bob_sid, "events.jsonl")),
            ("HGETALL", bob_keys.tree(bob_sid)),
            ("ZRANGE", bob_keys.index, "0", "-1"),
            ("GET", bob_keys.lease(bob_sid)),
            ("SET", bob_keys.bind(bob_sid), "forged cli-0"),
            ("DEL", bob_keys.content(bob_sid, "events.jsonl")),
            ("EVAL", "return redis.call('GET', KEYS[1])", "1", bob_keys.content(bob_sid, "events.jsonl")),
        ):
            with pytest.raises(redis.exceptions.NoPermissionError):
                await alice.execute_command(*command)

        # Nor can alice's credentials list key names, change the server, or listen in.
        for forbidden in (("KEYS", "*"), ("SCAN", "0"), ("RANDOMKEY",), ("CONFIG", "GET", "*"), ("FLUSHALL",),
                        ("ACL", "LIST"), ("MONITOR",), ("SUBSCRIBE", "x"), ("CLIENT", "LIST")):
            with pytest.raises(redis.exceptions.NoPermissionError):
                await alice.execute_command(*forbidden)

        # Alice's server reads its own sessions' leases, and may not write any lease.
        own = users.sid(users.alice)
        assert await alice.get(users.keys(users.alice).lease(own)) is None
        with pytest.raises(redis.exceptions.NoPermissionError):
            await alice.set(users.keys(users.alice).lease(own), "forged")

        # Bob's data is intact.
        stored = await users.admin.get(bob_keys.content(bob_sid, "events.jsonl"))
        assert isinstance(stored, bytes) and stored.startswith(b'{"secret"')
    finally:
        await alice.aclose()
        await bob.aclose()


async def test_the_acl_file_line_loads_and_means_the_same(tmp_path: Path) -> None:
    keys = StoreKeys("carol")
    password = secrets.token_hex(16)
    line = acl_file_line(keys, password)
    assert password not in line
    aclfile = tmp_path / "users.acl"
    server = RedisServer(tmp_path / "redis")
    aclfile.write_text(f"user default on >{server.password} ~* &* +@all\n{line}\n")
    server.aclfile = aclfile
    server.start()
    try:
        carol = aioredis.from_url(server.url_for(acl_user_name("carol"), password))
        try:
            sid = "u-5-carol-x-1700000000-0123abcd"
            await carol.set(keys.content(sid, "events.jsonl"), "ok")
            assert await carol.get(keys.lease(sid)) is None
            with pytest.raises(redis.exceptions.NoPermissionError):
                await carol.get(StoreKeys("dave").content(sid, "events.jsonl"))
            with pytest.raises(redis.exceptions.NoPermissionError):
                await carol.get(StoreKeys("shared").lease("u-4-dave-x-1700000000-0123abcd"))
        finally:
            await carol.aclose()
    finally:
        server.stop()
