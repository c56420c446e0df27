"""FleetClient's own logic with scripted SDK clients (real Redis for the leases): options, failover, cleanup."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import pytest
import redis.asyncio as aioredis
from copilot import PermissionHandler
from copilot._jsonrpc import JsonRpcError, ProcessExitedError

from copilot_fleet.client import ClientPool, FleetClient, ReplicaUnavailable, new_session_id, rank_replicas
from copilot_fleet.target import Target

if TYPE_CHECKING:
    from conftest import RedisServer

pytestmark = [pytest.mark.anyio, pytest.mark.fleet]  # starts redis-server

A, B = "10.0.0.1:4401", "10.0.0.2:4401"


class FakeSession:
    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        self.disconnected = False

    async def disconnect(self) -> None:
        self.disconnected = True


class FakeClient:
    """Records calls; `behaviour` decides what create/resume do."""

    def __init__(self, address: str, behaviour: str) -> None:
        self.address = address
        self.behaviour = behaviour
        self.calls: list[tuple[str, str | None, dict[str, Any]]] = []

    async def _act(self, op: str, session_id: str | None, kwargs: dict[str, Any]) -> FakeSession:
        self.calls.append((op, session_id, kwargs))
        if self.behaviour == "dies":
            raise ProcessExitedError("CLI process exited unexpectedly")
        if self.behaviour == "hangs":
            await asyncio.sleep(10)
        if self.behaviour == "rejects":
            raise JsonRpcError(-32603, "Request session.resume failed with message: invalid model")
        return FakeSession(session_id or "generated-uuid")

    async def create_session(self, *, session_id: str | None = None, **kwargs: Any) -> FakeSession:
        return await self._act("create", session_id, kwargs)

    async def resume_session(self, session_id: str, **kwargs: Any) -> FakeSession:
        return await self._act("resume", session_id, kwargs)


class FakePool(ClientPool):
    def __init__(self, behaviours: dict[str, str]) -> None:
        super().__init__()
        self.fakes = {address: FakeClient(address, b) for address, b in behaviours.items()}
        self.discarded: list[str] = []

    async def get(self, address: str, token: str | None) -> Any:
        return self.fakes[address]

    async def discard(self, address: str, token: str | None, client: Any = None) -> None:
        assert client is None or client is self.fakes[address]  # the client that failed, not a replacement
        self.discarded.append(address)


def target(server: RedisServer, replicas: list[str]) -> Target:
    return Target.model_validate(
        {
            "stack": "facade",
            "platform": "local",
            "isolation": "shared-cli",
            "replicas": replicas,
            "connection_token": "tok",
            "redis_url": server.url,
            "provider": {"type": "openai", "base_url": "http://127.0.0.1:1/v1", "api_key": "sk-test"},
            "model": "gpt-4.1",
        }
    )


async def lease_exists(server: RedisServer, session_id: str) -> bool:
    async with aioredis.Redis(port=server.port, password=server.password) as raw:
        return bool(await raw.exists(f"copilot-fleet:lease:{session_id}"))


def user_ranked_first_on(replica: str, replicas: list[str]) -> str:
    return next(u for u in (f"user{i}" for i in range(200)) if rank_replicas(u, replicas)[0] == replica)


async def test_resume_always_resupplies_provider_and_defaults(redis_server: RedisServer) -> None:
    pool = FakePool({A: "works"})
    async with FleetClient(target(redis_server, [A]), user="alice", pool=pool) as fleet:
        sid = new_session_id("alice", "x")
        handle = await fleet.resume_session(sid, provider=None, streaming=True, reasoning_effort="low")
        _, called_id, kwargs = pool.fakes[A].calls[-1]
        assert called_id == sid
        assert kwargs["provider"] == {"type": "openai", "base_url": "http://127.0.0.1:1/v1", "api_key": "sk-test"}
        assert kwargs["model"] == "gpt-4.1"
        assert kwargs["on_permission_request"] is PermissionHandler.approve_all
        assert (kwargs["streaming"], kwargs["reasoning_effort"]) == (True, "low")
        assert await lease_exists(redis_server, sid)
        await handle.close()
        assert handle.sdk.disconnected and not await lease_exists(redis_server, sid)

        def deny(*_: Any) -> None:
            return None

        mine = {"type": "azure", "base_url": "https://example.invalid/openai", "api_key": "other"}
        created = await fleet.create_session("y", provider=mine, model="o3", on_permission_request=deny)
        _, created_id, kwargs = pool.fakes[A].calls[-1]
        assert created_id == created.session_id and created_id.startswith("u-5-alice-y-")
        assert (kwargs["provider"], kwargs["model"], kwargs["on_permission_request"]) == (mine, "o3", deny)
        assert kwargs["name"] == "y"  # persisted before the first turn
        with pytest.raises(TypeError, match="session_id"):
            await fleet.create_session("z", session_id="u-5-alice-z-1-0badcafe")
    assert created.closed  # aclose closed what was still open


async def test_a_replica_that_dies_is_discarded_and_the_next_one_used(redis_server: RedisServer) -> None:
    user = user_ranked_first_on(A, [A, B])
    pool = FakePool({A: "dies", B: "works"})
    async with FleetClient(target(redis_server, [A, B]), user=user, pool=pool) as fleet:
        handle = await fleet.create_session("p")
        assert handle.address == B and pool.discarded == [A]
        assert [c[0] for c in pool.fakes[A].calls] == ["create"] and len(pool.fakes[B].calls) == 1


async def test_all_replicas_down_names_each_failure_and_frees_the_lease(redis_server: RedisServer) -> None:
    pool = FakePool({A: "dies", B: "dies"})
    async with FleetClient(target(redis_server, [A, B]), user="bob", pool=pool) as fleet:
        sid = new_session_id("bob", "q")
        with pytest.raises(ReplicaUnavailable) as err:
            await fleet.resume_session(sid)
        assert A in str(err.value) and B in str(err.value)
        assert not await lease_exists(redis_server, sid)


async def test_a_timeout_is_not_failed_over(redis_server: RedisServer) -> None:
    user = user_ranked_first_on(A, [A, B])
    pool = FakePool({A: "hangs", B: "works"})
    async with FleetClient(target(redis_server, [A, B]), user=user, pool=pool, call_timeout=0.2) as fleet:
        sid = new_session_id(user, "slow")
        with pytest.raises(ReplicaUnavailable, match="did not answer within 0.2 s"):
            await fleet.resume_session(sid)
        assert pool.fakes[B].calls == []  # A may still attach it: sending it to B too would double-attach
        assert not await lease_exists(redis_server, sid)


async def test_other_sdk_errors_propagate_and_free_the_lease(redis_server: RedisServer) -> None:
    pool = FakePool({A: "rejects", B: "works"})
    user = user_ranked_first_on(A, [A, B])
    async with FleetClient(target(redis_server, [A, B]), user=user, pool=pool) as fleet:
        sid = new_session_id(user, "r")
        with pytest.raises(JsonRpcError, match="invalid model"):
            await fleet.resume_session(sid)
        assert pool.fakes[B].calls == [] and pool.discarded == []
        assert not await lease_exists(redis_server, sid)
