"""The Redis store against a real redis-server: filesystem semantics, bounds, and fencing of every write."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from copilot_fleet.client.lease import LeaseManager
from copilot_fleet.sessionstore.fencing import (
    ANY_SERVER,
    NO_SERVER,
    BindRefused,
    ServerIdentity,
    ServerRegistration,
    bind_lease,
)
from copilot_fleet.sessionstore.keys import StoreKeys
from copilot_fleet.sessionstore.redis_store import RedisSessionStore
from copilot_fleet.sessionstore.store import (
    AlreadyExists,
    DirectoryNotEmpty,
    FencedWrite,
    InvalidMove,
    IsADirectory,
    Limits,
    NotADirectory,
    NotFound,
    QuotaExceeded,
    StoreUnavailable,
)
from tests.helpers.store_processes import RedisServer

pytestmark = pytest.mark.anyio


def new_sid() -> str:
    return f"u-5-alice-test-1700000000-{secrets.token_hex(4)}"


class World:
    """One scope in the test Redis, two servers registered in it, and a lease manager for the clients."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.redis = client
        self.keys = StoreKeys("t" + secrets.token_hex(4))
        self.leases = LeaseManager(client, ttl=30)
        self.s1 = ServerIdentity("s1")
        self.s2 = ServerIdentity("s2")

    async def register(self, identity: ServerIdentity, ttl: float = 30) -> ServerRegistration:
        registration = ServerRegistration(self.redis, self.keys, identity, ttl=ttl)
        await registration.take()
        return registration

    def store(self, identity: ServerIdentity | None, **kwargs: object) -> RedisSessionStore:
        return RedisSessionStore(self.redis, self.keys, writer=identity, **kwargs)  # type: ignore[arg-type]

    async def lease_bound(self, sid: str, server: str) -> str:
        lease = await self.leases.acquire(sid)
        await bind_lease(self.redis, self.keys, sid, lease.token, server)
        return lease.token

    async def keys_of(self, sid: str) -> set[str]:
        return {k.decode() async for k in self.redis.scan_iter(match=self.keys.session(sid) + "*")}


@pytest.fixture
async def world(redis_server: RedisServer) -> AsyncIterator[World]:
    client = aioredis.from_url(redis_server.url)
    w = World(client)
    registrations = [await w.register(w.s1), await w.register(w.s2)]
    try:
        yield w
    finally:
        for r in registrations:
            await r.release()
        await client.aclose()


# -- the filesystem ---------------------------------------------------------------------------------------------


async def test_files_directories_and_sizes(world: World) -> None:
    sid = new_sid()
    await world.lease_bound(sid, "s1")
    fs = world.store(world.s1)
    await fs.write_file(sid, "checkpoints/index.md", "# index\n")
    await fs.append_file(sid, "events.jsonl", '{"a":"é"}\n')
    await fs.append_file(sid, "events.jsonl", '{"b":2}\n')
    assert await fs.read_file(sid, "events.jsonl") == '{"a":"é"}\n{"b":2}\n'
    info = await fs.stat(sid, "events.jsonl")
    assert info.is_file and not info.is_directory and info.size == len('{"a":"é"}\n{"b":2}\n'.encode())
    assert (await fs.stat(sid, "checkpoints")).is_directory
    assert (await fs.stat(sid, "")).is_directory  # the session's root came with its first file
    names = [(e.name, e.is_directory) for e in await fs.readdir(sid, "")]
    assert names == [("checkpoints", True), ("events.jsonl", False)]
    assert [e.name for e in await fs.readdir(sid, "checkpoints")] == ["index.md"]
    assert await fs.exists(sid, "checkpoints/index.md") and not await fs.exists(sid, "nope")
    meta = await world.redis.hgetall(world.keys.meta(sid))
    assert int(meta[b"bytes"]) == len("# index\n") + info.size and meta[b"writer"] == b"s1"
    assert await world.redis.zscore(world.keys.index, sid) == int(meta[b"modified"])


async def test_errors_name_the_path_and_change_nothing(world: World) -> None:
    sid = new_sid()
    await world.lease_bound(sid, "s1")
    fs = world.store(world.s1)
    await fs.write_file(sid, "a/file", "x")
    with pytest.raises(NotFound, match="nope"):
        await fs.read_file(sid, "nope", "/session-state/nope")
    with pytest.raises(IsADirectory):
        await fs.read_file(sid, "a")
    with pytest.raises(NotADirectory):
        await fs.readdir(sid, "a/file")
    with pytest.raises(NotADirectory):
        await fs.write_file(sid, "a/file/inner", "x")
    with pytest.raises(IsADirectory):
        await fs.write_file(sid, "a", "x")
    with pytest.raises(NotFound, match="parent directory"):
        await fs.mkdir(sid, "b/c", recursive=False)
    await fs.mkdir(sid, "b/c", recursive=True)
    await fs.mkdir(sid, "b/c", recursive=True)  # like mkdir -p: no error when it exists
    with pytest.raises(AlreadyExists):
        await fs.mkdir(sid, "b/c", recursive=False)
    with pytest.raises(AlreadyExists, match="as a file"):
        await fs.mkdir(sid, "a/file", recursive=True)
    with pytest.raises(DirectoryNotEmpty):
        await fs.rm(sid, "a", recursive=False, force=False)
    with pytest.raises(NotFound):
        await fs.rm(sid, "missing", recursive=False, force=False)
    await fs.rm(sid, "missing", recursive=False, force=True)
    assert await fs.read_file(sid, "a/file") == "x"


async def test_remove_and_rename_move_contents_and_bytes(world: World) -> None:
    sid = new_sid()
    await world.lease_bound(sid, "s1")
    fs = world.store(world.s1)
    await fs.write_file(sid, "workspace.yaml.tmp.1", "id: 1\n")
    await fs.write_file(sid, "workspace.yaml", "old\n")
    await fs.rename(sid, "workspace.yaml.tmp.1", "workspace.yaml")  # the CLI's atomic replace
    assert await fs.read_file(sid, "workspace.yaml") == "id: 1\n"
    assert not await fs.exists(sid, "workspace.yaml.tmp.1")
    await fs.write_file(sid, "dir/sub/f1", "11")
    await fs.write_file(sid, "dir/f2", "222")
    await fs.rename(sid, "dir", "moved")
    assert await fs.read_file(sid, "moved/sub/f1") == "11" and await fs.read_file(sid, "moved/f2") == "222"
    assert not await fs.exists(sid, "dir/sub/f1")
    with pytest.raises(InvalidMove):
        await fs.rename(sid, "moved", "moved/sub/inner")
    with pytest.raises(IsADirectory):
        await fs.rename(sid, "workspace.yaml", "moved")
    with pytest.raises(NotFound):
        await fs.rename(sid, "ghost", "x")
    meta = await world.redis.hgetall(world.keys.meta(sid))
    assert int(meta[b"bytes"]) == len("id: 1\n") + 2 + 3
    await fs.rm(sid, "moved", recursive=True, force=False)
    assert not await fs.exists(sid, "moved/sub")
    assert {k for k in await world.keys_of(sid) if ":f:" in k} == {world.keys.content(sid, "workspace.yaml")}
    assert int((await world.redis.hgetall(world.keys.meta(sid)))[b"bytes"]) == len("id: 1\n")


async def test_bounds_refuse_without_writing(world: World) -> None:
    sid = new_sid()
    await world.lease_bound(sid, "s1")
    fs = world.store(world.s1, limits=Limits(max_file_bytes=10, max_session_bytes=15, max_entries=4))
    await fs.append_file(sid, "events.jsonl", "12345678")
    with pytest.raises(QuotaExceeded, match="at most 10"):
        await fs.append_file(sid, "events.jsonl", "abc")
    assert await fs.read_file(sid, "events.jsonl") == "12345678"
    with pytest.raises(QuotaExceeded, match="more than 15 bytes"):
        await fs.write_file(sid, "other", "12345678")
    await fs.write_file(sid, "small", "1")
    with pytest.raises(QuotaExceeded, match="more than 4 files"):
        await fs.mkdir(sid, "d1/d2", recursive=True)
    assert not await fs.exists(sid, "d1")


# -- fencing ----------------------------------------------------------------------------------------------------


async def test_no_lease_no_write(world: World) -> None:
    sid = new_sid()
    with pytest.raises(FencedWrite, match=rf"fenced: session {sid}: no client holds its lease.*server s1 may not"):
        await world.store(world.s1).append_file(sid, "events.jsonl", "x\n")
    assert await world.keys_of(sid) == set()
    assert await world.redis.zscore(world.keys.index, sid) is None


async def test_an_unbound_lease_lets_no_server_write(world: World) -> None:
    sid = new_sid()
    await world.leases.acquire(sid)
    with pytest.raises(FencedWrite, match="has not bound the lease"):
        await world.store(world.s1).mkdir(sid, "", recursive=True)


async def test_only_the_bound_server_writes_and_reads_stay_open(world: World) -> None:
    sid = new_sid()
    await world.lease_bound(sid, "s1")
    await world.store(world.s1).append_file(sid, "events.jsonl", "one\n")
    with pytest.raises(FencedWrite, match="attached it on server s1, not on this one; server s2 may not"):
        await world.store(world.s2).append_file(sid, "events.jsonl", "two\n")
    assert await world.store(world.s2).read_file(sid, "events.jsonl") == "one\n"


async def test_a_new_holder_fences_the_old_server(world: World) -> None:
    sid = new_sid()
    first = await world.leases.acquire(sid)
    await bind_lease(world.redis, world.keys, sid, first.token, "s1")
    await world.store(world.s1).append_file(sid, "events.jsonl", "one\n")
    await world.redis.delete(world.keys.lease(sid))  # the holder's lease lapsed (paused past its TTL)
    with pytest.raises(FencedWrite, match="no client holds its lease"):
        await world.store(world.s1).append_file(sid, "events.jsonl", "late\n")
    await world.lease_bound(sid, "s2")  # another client takes over on another server
    await world.store(world.s2).append_file(sid, "events.jsonl", "two\n")
    with pytest.raises(FencedWrite, match="attached it on server s2"):
        await world.store(world.s1).append_file(sid, "events.jsonl", "late\n")
    with pytest.raises(BindRefused, match="no longer held"):
        await bind_lease(world.redis, world.keys, sid, first.token, "s1")  # the old holder cannot rebind
    assert await world.store(None).read_file(sid, "events.jsonl") == "one\ntwo\n"


async def test_any_server_binding_is_claimed_by_the_first_writer(world: World) -> None:
    sid = new_sid()
    token = await world.lease_bound(sid, ANY_SERVER)
    await world.store(world.s2).mkdir(sid, "", recursive=True)
    assert await world.redis.get(world.keys.bind(sid)) == f"{token} s2".encode()
    with pytest.raises(FencedWrite, match="attached it on server s2"):
        await world.store(world.s1).mkdir(sid, "", recursive=True)


async def test_an_administrative_lease_fences_every_server(world: World) -> None:
    sid = new_sid()
    await world.lease_bound(sid, NO_SERVER)
    with pytest.raises(FencedWrite, match="administrative task"):
        await world.store(world.s1).write_file(sid, "x", "y")


async def test_a_replaced_instance_of_a_server_cannot_write(world: World) -> None:
    sid = new_sid()
    await world.lease_bound(sid, "s1")
    newer = ServerIdentity("s1")
    registration = await world.register(newer)
    try:
        with pytest.raises(FencedWrite, match="replaced by a newer instance"):
            await world.store(world.s1).write_file(sid, "x", "old instance")
        await world.store(newer).write_file(sid, "x", "new instance")
    finally:
        await registration.release()
    with pytest.raises(FencedWrite, match="registration in the store expired"):
        await world.store(newer).write_file(sid, "x", "after release")


async def test_registration_lost_to_another_instance_is_reported(world: World) -> None:
    identity = ServerIdentity("s3")
    first = ServerRegistration(world.redis, world.keys, identity, ttl=0.3)
    await first.take()
    second = ServerRegistration(world.redis, world.keys, ServerIdentity("s3"), ttl=30)
    await second.take()
    try:
        await asyncio.wait_for(first.lost.wait(), 30)  # the renewal (every 0.1 s) finds the other instance
        assert "another instance registered server id s3" in (first.lost_reason or "")
    finally:
        await first.release()
        await second.release()
    assert await world.redis.get(world.keys.server("s3")) is None


async def test_unleased_writes_when_allowed_still_fence_leased_sessions(world: World) -> None:
    lax1 = world.store(world.s1, require_lease=False)
    free = new_sid()
    await lax1.write_file(free, "x", "nobody leased this")
    leased = new_sid()
    await world.lease_bound(leased, "s2")
    with pytest.raises(FencedWrite, match="attached it on server s2"):
        await lax1.write_file(leased, "x", "y")


async def test_a_read_only_store_writes_nothing(world: World) -> None:
    with pytest.raises(FencedWrite, match="read-only"):
        await world.store(None).write_file(new_sid(), "x", "y")


async def test_redis_down_is_store_unavailable() -> None:
    client = aioredis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    fs = RedisSessionStore(client, StoreKeys("down"), writer=ServerIdentity("s1"))
    try:
        with pytest.raises(StoreUnavailable, match=r"session .*Redis at 127\.0\.0\.1:1\) failed"):
            await fs.read_file(new_sid(), "events.jsonl")
    finally:
        await client.aclose()
