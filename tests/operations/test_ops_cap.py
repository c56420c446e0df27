"""The per-replica session cap against real CLIs: LRU eviction at the cap, evicted sessions resume with their whole
history, busy sessions are never evicted, counts are per replica, and the cost of an eviction is measured."""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import TYPE_CHECKING

import pytest
import redis.asyncio as aioredis

from copilot_fleet.client import (
    AccessDenied,
    ClientPool,
    FleetClient,
    SessionCap,
    SessionCapReached,
    rank_replicas,
)

if TYPE_CHECKING:
    from tests.helpers.ops_fleet import OpsFleet

pytestmark = [pytest.mark.anyio, pytest.mark.fleet]


async def lease_held(fleet: OpsFleet, session_id: str) -> bool:
    async with aioredis.Redis(port=fleet.redis.port, password=fleet.redis.password) as raw:
        return bool(await raw.exists(f"copilot-fleet:lease:{session_id}"))


def user_on(replica: str, replicas: list[str], prefix: str) -> str:
    """A user id whose first-choice replica is `replica`."""
    for i in range(200):
        user = f"{prefix}{i}"
        if rank_replicas(user, replicas)[0] == replica:
            return user
    raise AssertionError("no user found for the replica")


def test_cap_validates_its_size() -> None:
    for bad in (0, -1, 2.5, True, "50"):
        with pytest.raises(ValueError, match="max_per_replica"):
            SessionCap(bad)  # type: ignore[arg-type]
    assert SessionCap().max_per_replica == 50


async def test_least_recently_used_session_is_evicted_and_resumes_with_history(ops_fleet: OpsFleet) -> None:
    cap = SessionCap(max_per_replica=3)
    async with ClientPool() as pool, FleetClient(ops_fleet.target(), user="lru", pool=pool, session_cap=cap) as fleet:
        sessions = []
        for i in range(3):
            s = await fleet.create_session(f"lru{i}", **ops_fleet.small)
            assert "remembered: lruword" in (await s.reply(f"remember: lruword{i}") or "")
            sessions.append(s)
        home = sessions[0].address
        assert cap.counts() == {home: 3}

        await sessions[0].reply("count turns")  # used again: now sessions[1] is the least recently used
        fourth = await fleet.create_session("lru3", **ops_fleet.small)
        assert fourth.address == home
        assert sessions[1].closed, "the least recently used session must be evicted"
        assert not sessions[0].closed and not sessions[2].closed
        assert cap.counts() == {home: 3}
        assert cap.evictions[-1].session_id == sessions[1].session_id
        assert not await lease_held(ops_fleet, sessions[1].session_id), "eviction releases the lease"
        with pytest.raises(RuntimeError, match="closed"):
            await sessions[1].reply("recall")  # the evicted handle is dead; the session is not

        # State stays on disk: the session is still listed, and resumes (evicting the next LRU) with its history.
        assert sessions[1].session_id in {m.session_id for m in await fleet.list_sessions()}
        again = await cap.get(fleet, sessions[1].session_id, **ops_fleet.small)
        assert "recalled: lruword1" in (await again.reply("recall") or "")
        assert sessions[2].closed and cap.counts() == {home: 3}

        # get() hands back an attached session as is (no second attach, which its own lease would refuse).
        assert await cap.get(fleet, fourth.session_id) is fourth
        assert [s.session_id for s in cap.attached(home)][-1] == fourth.session_id  # touched: most recent now


async def test_busy_sessions_are_never_evicted(ops_fleet: OpsFleet) -> None:
    cap = SessionCap(max_per_replica=2)
    async with ClientPool() as pool, FleetClient(ops_fleet.target(), user="busy", pool=pool, session_cap=cap) as fleet:
        first = await fleet.create_session("busy1", **ops_fleet.small)
        second = await fleet.create_session("busy2", **ops_fleet.small)
        long_turn = asyncio.create_task(first.reply("sleep: 2"))
        await asyncio.sleep(0.5)  # the turn is in flight at the model
        await second.reply("count turns")  # `first` is now the least recently used, but busy

        third = await fleet.create_session("busy3", **ops_fleet.small)
        assert second.closed and not first.closed, "the idle session goes, the busy one stays"
        assert "slept 2 s" in (await long_turn or ""), "the busy session's turn completed undisturbed"

        # Every session on the full replica busy: the attach is refused, not squeezed in over the cap.
        turns = [asyncio.create_task(s.reply("sleep: 2")) for s in (first, third)]
        await asyncio.sleep(0.5)
        before = set(cap.counts().items())
        with pytest.raises(SessionCapReached, match="in the middle of a turn"):
            await fleet.create_session("busy4", **ops_fleet.small)
        assert set(cap.counts().items()) == before
        assert not [k for k in await _lease_keys(ops_fleet) if "-busy4-" in k], "the refused attach left no lease"
        assert all("slept 2 s" in (r or "") for r in await asyncio.gather(*turns))


async def _lease_keys(fleet: OpsFleet) -> list[str]:
    async with aioredis.Redis(port=fleet.redis.port, password=fleet.redis.password, decode_responses=True) as raw:
        return [k async for k in raw.scan_iter("copilot-fleet:lease:*")]


async def test_cap_counts_per_replica_and_guards_ownership(ops_fleet: OpsFleet) -> None:
    replicas = [ops_fleet.a.address, ops_fleet.b.address]
    target = ops_fleet.target(replicas)
    alice, bob = user_on(replicas[0], replicas, "alice"), user_on(replicas[1], replicas, "bob")
    cap = SessionCap(max_per_replica=1)
    async with ClientPool() as pool, FleetClient(target, user=alice, pool=pool, session_cap=cap) as fa, \
                FleetClient(target, user=bob, pool=pool, session_cap=cap) as fb:
        sa = await fa.create_session("own", **ops_fleet.small)
        sb = await fb.create_session("own", **ops_fleet.small)
        assert cap.counts() == {replicas[0]: 1, replicas[1]: 1}, "one each: no eviction across replicas"
        assert cap.evicted_total == 0

        with pytest.raises(AccessDenied):
            await cap.get(fb, sa.session_id)  # bob never gets alice's attached handle
        assert not sa.closed

        sa2 = await fa.create_session("own2", **ops_fleet.small)
        assert sa.closed and not sb.closed and cap.counts() == {replicas[0]: 1, replicas[1]: 1}
        assert sa2.address == replicas[0]

        # A session closed by its owner frees its place without an eviction.
        await sa2.close()
        assert cap.counts() == {replicas[1]: 1}
        await fa.create_session("own3", **ops_fleet.small)
        assert cap.evicted_total == 1


async def test_get_needs_the_fleet_client_that_uses_the_cap(ops_fleet: OpsFleet) -> None:
    async with FleetClient(ops_fleet.target(), user="nocap") as fleet:
        with pytest.raises(ValueError, match="session_cap"):
            await SessionCap(3).get(fleet, "u-5-nocap-x-1700000000-0123abcd")


async def test_at_the_default_cap_of_50_with_eviction_cost(ops_fleet: OpsFleet) -> None:
    """Fill one replica to the default cap, push 10 more sessions in, resume 10 evicted ones: figures for the docs."""
    cap = SessionCap()  # 50
    replicas = [ops_fleet.a.address]
    started = time.perf_counter()
    async with ClientPool() as pool, \
            FleetClient(ops_fleet.target(replicas), user="fifty", pool=pool, session_cap=cap) as fleet:
        first = []
        for batch in range(5):  # 10 at a time: one shared SDK client, as an application would
            made = await asyncio.gather(*(fleet.create_session(f"f{batch}x{i}", **ops_fleet.small) for i in range(10)))
            await asyncio.gather(*(s.reply(f"remember: word{s.session_id[-8:]}") for s in made))
            first.extend(made)
        fill_seconds = time.perf_counter() - started
        assert cap.counts() == {replicas[0]: 50} and cap.evicted_total == 0

        create_with_eviction = []
        for i in range(10):
            t = time.perf_counter()
            await fleet.create_session(f"over{i}", **ops_fleet.small)
            create_with_eviction.append(time.perf_counter() - t)
        assert cap.counts() == {replicas[0]: 50} and cap.evicted_total == 10
        evicted = [s for s in first if s.closed]
        assert evicted == first[:10], "evicted in least-recently-used order"

        resume = []
        for s in evicted:
            t = time.perf_counter()
            again = await cap.get(fleet, s.session_id, **ops_fleet.small)
            resume.append(time.perf_counter() - t)
            assert f"recalled: word{s.session_id[-8:]}" in (await again.reply("recall") or "")
        assert cap.counts() == {replicas[0]: 50} and cap.evicted_total == 20

        detach = [e.seconds for e in cap.evictions]
        print(f"\ncap 50: filled in {fill_seconds:.1f} s; eviction (detach + lease release) median "
              f"{statistics.median(detach) * 1000:.0f} ms, max {max(detach) * 1000:.0f} ms; create incl. eviction "
              f"median {statistics.median(create_with_eviction) * 1000:.0f} ms; resume of an evicted session "
              f"median {statistics.median(resume) * 1000:.0f} ms, max {max(resume) * 1000:.0f} ms")
