"""The Redis lease against a real redis-server: exclusivity, owner-only release, renewal, loss, failing closed."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import pytest
import redis.asyncio as aioredis

from copilot_fleet.client import (
    Lease,
    LeaseLost,
    LeaseManager,
    LeaseUnavailable,
    MembershipUnavailable,
    RedisMembership,
    SessionInUse,
    new_session_id,
)

if TYPE_CHECKING:
    from tests.helpers.processes import RedisServer

pytestmark = [pytest.mark.anyio, pytest.mark.fleet]  # starts redis-server

SID = "u-5-alice-review-1706932800-0badcafe"


def manager(server: RedisServer, ttl: float = 5.0, password: str | None = None) -> LeaseManager:
    url = server.url if password is None else server.url_with_password(password)
    return LeaseManager.from_url(url, ttl=ttl, timeout=0.5)


async def raw_get(server: RedisServer, key: str) -> bytes | str | None:
    async with aioredis.Redis(port=server.port, password=server.password) as client:
        return await client.get(key)


async def test_exactly_one_of_many_concurrent_contenders_wins(redis_server: RedisServer) -> None:
    managers = [manager(redis_server) for _ in range(8)]
    try:
        for round_no in range(5):
            sid = new_session_id("alice", f"race{round_no}")
            attempts = [m.acquire(sid) for m in managers for _ in range(8)]  # 64 contenders, 8 connections
            results = await asyncio.gather(*attempts, return_exceptions=True)
            winners = [r for r in results if isinstance(r, Lease)]
            losers = [r for r in results if isinstance(r, SessionInUse)]
            assert len(winners) == 1 and len(losers) == 63, results
            assert "in use by another client; try again later" in str(losers[0])
            assert await raw_get(redis_server, managers[0].key(sid)) == winners[0].token.encode()
            assert await winners[0].release()
    finally:
        for m in managers:
            await m.aclose()


async def test_release_by_a_non_owner_does_nothing(redis_server: RedisServer) -> None:
    leases = manager(redis_server)
    try:
        held = await leases.acquire(SID)
        impostor = Lease(leases, SID, token="not-the-owner", acquired_at=time.monotonic())
        assert await impostor.release() is False
        assert await raw_get(redis_server, leases.key(SID)) == held.token.encode()
        with pytest.raises(SessionInUse):
            await leases.acquire(SID)
        assert await held.release() is True
        assert await raw_get(redis_server, leases.key(SID)) is None
    finally:
        await leases.aclose()


async def test_late_release_after_expiry_and_takeover_spares_the_new_owner(redis_server: RedisServer) -> None:
    first, second = manager(redis_server, ttl=0.3), manager(redis_server, ttl=5)
    try:
        old = await first.acquire(SID)  # not renewed: it will expire
        await asyncio.sleep(0.45)
        assert old.lost
        with pytest.raises(LeaseLost, match="another client may be writing"):
            old.check()
        new = await second.acquire(SID)
        assert await old.release() is False  # get-then-delete would have deleted `new` here
        assert await raw_get(redis_server, second.key(SID)) == new.token.encode()
        new.check()
        with pytest.raises(LeaseLost):
            await old.renew()
        await new.release()
    finally:
        await first.aclose()
        await second.aclose()


async def test_renewal_extends_the_lease(redis_server: RedisServer) -> None:
    leases, other = manager(redis_server, ttl=0.5), manager(redis_server)
    try:
        lease = await leases.acquire(SID)
        for _ in range(4):  # 4 x 0.3 s = 1.2 s, far past the 0.5 s ttl
            await asyncio.sleep(0.3)
            await lease.renew()
        assert not lease.lost
        with pytest.raises(SessionInUse):
            await other.acquire(SID)
        await asyncio.sleep(0.6)  # no more renewals: now it expires
        assert (await other.acquire(SID)).token != lease.token
    finally:
        await leases.aclose()
        await other.aclose()


async def test_background_renewer_keeps_a_long_turn_leased(redis_server: RedisServer) -> None:
    leases, other = manager(redis_server, ttl=0.45), manager(redis_server)
    try:
        async with leases.hold(SID) as lease:
            for _ in range(5):
                await asyncio.sleep(0.25)  # 1.25 s in total
                lease.check()
                with pytest.raises(SessionInUse):
                    await other.acquire(SID)
        assert await raw_get(redis_server, leases.key(SID)) is None
        assert lease.released and not lease.lost
    finally:
        await leases.aclose()
        await other.aclose()


async def test_a_cancelled_holder_still_releases_its_lease(redis_server: RedisServer) -> None:
    """Cleanup after a cancellation (a Ctrl-C, a caller's timeout) deletes the key: the next writer need not wait
    out the ttl."""
    leases = manager(redis_server, ttl=30.0)
    holding = asyncio.Event()

    async def holder() -> None:
        lease = await leases.acquire(SID)
        lease.start_renewing()
        try:
            holding.set()
            await asyncio.sleep(60)
        finally:
            await lease.release()  # runs while this task is being cancelled

    try:
        task = asyncio.ensure_future(holder())
        await asyncio.wait_for(holding.wait(), 5)
        assert await raw_get(redis_server, leases.key(SID)) is not None
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await raw_get(redis_server, leases.key(SID)) is None, "the cancelled holder kept its lease"
    finally:
        await leases.aclose()


@pytest.mark.parametrize("how", ["deleted", "taken over"])
async def test_renewer_detects_a_lost_lease(redis_server: RedisServer, how: str) -> None:
    leases = manager(redis_server, ttl=0.6)
    lost_calls: list[Lease] = []
    try:
        with pytest.raises(LeaseLost, match="expired or now belongs to another client"):
            async with leases.hold(SID) as lease:
                lease.add_lost_callback(lost_calls.append)
                async with aioredis.Redis(port=redis_server.port, password=redis_server.password) as raw:
                    if how == "deleted":
                        await raw.delete(leases.key(SID))
                    else:
                        await raw.set(leases.key(SID), "someone-else", px=5000)
                for _ in range(20):  # renewal every 0.2 s
                    if lease.lost:
                        break
                    await asyncio.sleep(0.05)
                assert lease.lost and lost_calls == [lease]
                with pytest.raises(LeaseLost):
                    lease.check()
        if how == "taken over":  # our exit did not delete the new holder's key
            assert await raw_get(redis_server, leases.key(SID)) == b"someone-else"
    finally:
        await leases.aclose()


async def test_wait_gets_the_lease_when_the_holder_lets_go(redis_server: RedisServer) -> None:
    a, b = manager(redis_server), manager(redis_server)
    try:
        held = await a.acquire(SID)

        async def let_go() -> None:
            await asyncio.sleep(0.3)
            await held.release()

        releaser = asyncio.create_task(let_go())
        started = time.monotonic()
        got = await b.acquire(SID, wait=3)
        assert 0.25 <= time.monotonic() - started < 2
        await releaser
        started = time.monotonic()
        with pytest.raises(SessionInUse):
            await a.acquire(SID, wait=0.4)  # b holds it and does not let go
        assert time.monotonic() - started >= 0.4
        await got.release()
    finally:
        await a.aclose()
        await b.aclose()


async def test_fails_closed_when_redis_dies_and_recovers_when_it_returns(redis_server: RedisServer) -> None:
    leases = manager(redis_server, ttl=0.9)
    try:
        lease = await leases.acquire(SID)
        lease.start_renewing()
        redis_server.kill()  # SIGKILL: a crash, not a shutdown

        started = time.monotonic()
        with pytest.raises(LeaseUnavailable, match="Refusing to attach without a lease") as err:
            await leases.acquire(new_session_id("bob", "other"))
        assert time.monotonic() - started < 3
        assert redis_server.password not in str(err.value)

        # The holder cannot renew; before its ttl runs out it must consider the lease lost.
        await asyncio.sleep(1.0)
        assert lease.lost and "unreachable" in (lease.lost_reason or "")
        with pytest.raises(LeaseLost):
            lease.check()
        assert await lease.release() is False  # cannot reach Redis: must not raise from a finally block

        redis_server.start()  # back, empty (no persistence)
        again = await leases.acquire(SID)
        again.check()
        assert await again.release() is True
    finally:
        await leases.aclose()


async def test_fails_closed_with_a_wrong_password(redis_server: RedisServer) -> None:
    leases = manager(redis_server, password="wrong-password")
    try:
        with pytest.raises(LeaseUnavailable) as err:
            await leases.acquire(SID)
        assert "wrong-password" not in str(err.value)
        with pytest.raises(LeaseUnavailable):
            await leases.ping()
    finally:
        await leases.aclose()


async def test_acquire_validates_the_session_id_first(redis_server: RedisServer) -> None:
    leases = manager(redis_server)
    try:
        with pytest.raises(ValueError, match="contains '/'"):
            await leases.acquire("u-5-alice-a/b-1-0badcafe")
    finally:
        await leases.aclose()


async def test_redis_membership_store_and_failing_closed(redis_server: RedisServer) -> None:
    leases = manager(redis_server)  # its Redis client fails fast; FleetClient shares it the same way
    members = RedisMembership(leases.redis)
    try:
        await members.add_members("team", ["alice", "bob-smith"])
        assert await members.is_member("team", "bob-smith")
        assert not await members.is_member("team", "bob")
        assert await members.members("team") == {"alice", "bob-smith"}
        await members.remove_members("team", ["alice"])
        assert not await members.is_member("team", "alice")
        redis_server.kill()
        started = time.monotonic()
        with pytest.raises(MembershipUnavailable, match="access is refused"):
            await members.is_member("team", "bob-smith")
        assert time.monotonic() - started < 3
    finally:
        await leases.aclose()
