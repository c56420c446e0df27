"""FleetClient's own logic with scripted SDK clients (real Redis for the leases): options, failover, cleanup."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

import pytest
import redis.asyncio as aioredis
from copilot._jsonrpc import JsonRpcError, ProcessExitedError

from copilot_fleet.client import (
    ClientPool,
    FleetClient,
    InMemoryMembership,
    ReplicaUnavailable,
    new_session_id,
    rank_replicas,
)
from copilot_fleet.client import handle as handle_module
from copilot_fleet.client.permissions import deny_all
from copilot_fleet.target import Target

if TYPE_CHECKING:
    from tests.helpers.processes import RedisServer

pytestmark = [pytest.mark.anyio, pytest.mark.fleet]  # starts redis-server

A, B = "10.0.0.1:4401", "10.0.0.2:4401"


class FakeWorkspaces:
    """`session.rpc.workspaces`: records the write checks; `error` is what createFile raises (None: it works)."""

    def __init__(self) -> None:
        self.writes: list[str] = []
        self.error: BaseException | None = None
        self.delay = 0.0

    async def create_file(self, request: Any, *, timeout: float | None = None) -> None:
        self.writes.append(request.path)
        await asyncio.sleep(self.delay)
        if self.error is not None:
            raise self.error


class FakeRpc:
    def __init__(self) -> None:
        self.workspaces = FakeWorkspaces()


class FakeSession:
    def __init__(self, session_id: str, client: FakeClient | None = None) -> None:
        self.session_id = session_id
        self.disconnected = False
        self.client = client
        self.turns: list[BaseException | None] = []  # what each send_and_wait does: raise it, or answer
        self.rpc = FakeRpc()

    async def disconnect(self) -> None:
        self.disconnected = True
        if self.client is not None:
            self.client.log.append(("detach", self.session_id))

    async def send_and_wait(self, prompt: str, **kwargs: Any) -> None:
        outcome = self.turns.pop(0) if self.turns else None
        if outcome is not None:
            raise outcome


class FakeClient:
    """Records calls; `behaviour` decides what create/resume do."""

    def __init__(self, address: str, behaviour: str) -> None:
        self.address = address
        self.behaviour = behaviour
        self.calls: list[tuple[str, str | None, dict[str, Any]]] = []
        self.log: list[tuple[str, str]] = []  # detach/delete, in order
        self.sessions: list[FakeSession] = []
        self.on_delete: Callable[[str], Awaitable[None]] | None = None

    async def _act(self, op: str, session_id: str | None, kwargs: dict[str, Any]) -> FakeSession:
        self.calls.append((op, session_id, kwargs))
        if self.behaviour == "dies":
            raise ProcessExitedError("CLI process exited unexpectedly")
        if self.behaviour == "hangs":
            await asyncio.sleep(10)
        if self.behaviour == "rejects":
            raise JsonRpcError(-32603, "Request session.resume failed with message: invalid model")
        if self.behaviour == "disk-full" and op == "create":
            raise JsonRpcError(-32603, "Request session.create failed with message: ENOSPC: no space left on "
                                       "device, write '/state/x/workspace.yaml'")
        if self.behaviour in ("not-found", "ghost") and op == "resume":
            raise JsonRpcError(-32603, "Request session.resume failed with message: Session not found")
        session = FakeSession(session_id or "generated-uuid", self)
        self.sessions.append(session)
        return session

    async def delete_session(self, session_id: str) -> None:
        self.log.append(("delete", session_id))
        if self.on_delete is not None:
            await self.on_delete(session_id)

    async def create_session(self, *, session_id: str | None = None, **kwargs: Any) -> FakeSession:
        return await self._act("create", session_id, kwargs)

    async def resume_session(self, session_id: str, **kwargs: Any) -> FakeSession:
        return await self._act("resume", session_id, kwargs)

    async def get_session_metadata(self, session_id: str) -> object | None:
        """"not-found": no such session yet (the CLI answers None, without an error); "ghost": listed, but its
        resume fails as not found."""
        self.calls.append(("metadata", session_id, {}))
        if self.behaviour == "dies":
            raise ProcessExitedError("CLI process exited unexpectedly")
        return None if self.behaviour == "not-found" else {"sessionId": session_id}


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


def target(server: RedisServer, replicas: list[str], isolation: str = "shared-cli") -> Target:
    return Target.model_validate(
        {
            "stack": "facade",
            "platform": "local",
            "isolation": isolation,
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
        assert kwargs["on_permission_request"] is deny_all  # the safe default: no tool call runs
        assert (kwargs["streaming"], kwargs["reasoning_effort"]) == (True, "low")
        assert await lease_exists(redis_server, sid)
        await handle.close()
        assert cast(Any, handle.sdk).disconnected and not await lease_exists(redis_server, sid)

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


# -- finding 4: a session whose first turn hit a full disk is not left listed but unresumable ----------------------

# What CLI 1.0.102 answers when session-state filled up between session.create and the first event.
FULL_DISK = Exception(
    "Session error: Failed to persist session events: GenericFailure, Failed to append to JSONL file "
    "/state/u-5-alice-x-1795290000-0badcafe/events.jsonl: I/O error: No space left on device (os error 28)"
)


async def test_a_created_session_whose_first_turn_hit_a_full_disk_is_deleted_on_close(
    redis_server: RedisServer,
) -> None:
    """CLI 1.0.102 lists such a session (workspace.yaml) but cannot resume it (empty events.jsonl): a ghost. It has
    no history, so close() deletes it: after the detach, while the lease is still held, and the caller still sees
    the storage error itself."""
    pool = FakePool({A: "works"})
    fake = pool.fakes[A]
    lease_held_at_delete: list[bool] = []

    async def check_lease(session_id: str) -> None:
        lease_held_at_delete.append(await lease_exists(redis_server, session_id))

    fake.on_delete = check_lease
    async with FleetClient(target(redis_server, [A]), user="alice", pool=pool) as fleet:
        with pytest.raises(Exception, match="No space left on device"):
            async with await fleet.create_session("x") as session:
                fake.sessions[-1].turns.append(FULL_DISK)
                await session.reply("remember: apple")
        assert session.closed and session.stillborn
        assert fake.log == [("detach", session.session_id), ("delete", session.session_id)]
        assert lease_held_at_delete == [True]  # nobody could attach it between the detach and the delete
        assert not await lease_exists(redis_server, session.session_id)


@pytest.mark.parametrize("case", ["resumed", "a turn completed first", "not a storage error",
                                  "no turn, no storage error"])
async def test_sessions_with_possible_history_are_never_deleted_on_close(redis_server: RedisServer, case: str) -> None:
    pool = FakePool({A: "works"})
    fake = pool.fakes[A]
    async with FleetClient(target(redis_server, [A]), user="alice", pool=pool) as fleet:
        if case == "resumed":  # not made by this handle: it may hold anyone's history
            session = await fleet.resume_session(new_session_id("alice", "old"))
            fake.sessions[-1].turns.append(FULL_DISK)
        elif case == "a turn completed first":
            session = await fleet.create_session("x")
            fake.sessions[-1].turns.extend([None, FULL_DISK])
            await session.reply("remember: apple")
        elif case == "not a storage error":
            session = await fleet.create_session("x")
            fake.sessions[-1].turns.append(TimeoutError("Timeout after 3s waiting for response completion"))
        else:  # created, storage fine, no turn: the CLI keeps a named session; it is the caller's to delete
            session = await fleet.create_session("x")
        if fake.sessions[-1].turns:
            with pytest.raises(Exception):  # noqa: B017
                await session.reply("remember: pear")
        await session.close()
        assert not session.stillborn
        assert fake.log == [("detach", session.session_id)]


async def test_join_deletes_only_what_its_create_path_made(redis_server: RedisServer) -> None:
    members = InMemoryMembership({"team": ["alice"]})
    for behaviour, deleted in (("not-found", True), ("ghost", True), ("works", False)):  # created / resumed
        pool = FakePool({A: behaviour})
        fake = pool.fakes[A]
        async with FleetClient(target(redis_server, [A], isolation="shared-session"), user="alice", pool=pool,
                               members=members) as fleet:
            session = await fleet.join_shared_session("team")
            assert session.created is deleted
            fake.sessions[-1].turns.append(FULL_DISK)
            with pytest.raises(Exception, match="os error 28"):
                await session.reply("hello")
            await session.close()
            assert (("delete", "s-team") in fake.log) is deleted, behaviour


@pytest.mark.parametrize("failure", ["raises", "hangs"])
async def test_a_failing_delete_on_close_is_bounded_and_never_raises(
    redis_server: RedisServer, failure: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(handle_module, "DELETE_ON_CLOSE_TIMEOUT", 0.2)
    pool = FakePool({A: "works"})
    fake = pool.fakes[A]

    async def broken(session_id: str) -> None:
        if failure == "hangs":
            await asyncio.sleep(30)
        raise RuntimeError(f"Failed to delete session {session_id}: Read-only file system (os error 30)")

    fake.on_delete = broken
    async with FleetClient(target(redis_server, [A]), user="alice", pool=pool) as fleet:
        session = await fleet.create_session("x")
        fake.sessions[-1].turns.append(FULL_DISK)
        with pytest.raises(Exception, match="os error 28"):
            await session.reply("remember: apple")
        loop = asyncio.get_running_loop()
        started = loop.time()
        await session.close()  # no error of its own
        assert loop.time() - started < 2
        assert fake.log[-1] == ("delete", session.session_id)
        assert not await lease_exists(redis_server, session.session_id)


async def test_a_create_refused_for_storage_deletes_what_it_may_have_left(redis_server: RedisServer) -> None:
    """A create that fails because a write failed can leave a partial directory: it is deleted at once, and the
    caller still gets the storage error. A create refused for any other reason sends no delete."""
    pool = FakePool({A: "disk-full"})
    async with FleetClient(target(redis_server, [A]), user="alice", pool=pool) as fleet:
        with pytest.raises(JsonRpcError, match="no space left"):
            await fleet.create_session("full")
        ((op, sid, _),) = pool.fakes[A].calls
        assert op == "create" and pool.fakes[A].log == [("delete", sid)]
        assert sid is not None and not await lease_exists(redis_server, sid)
    refused = FakePool({A: "rejects"})
    async with FleetClient(target(redis_server, [A]), user="alice", pool=refused) as fleet:
        with pytest.raises(JsonRpcError, match="invalid model"):
            await fleet.create_session("refused")
        assert refused.fakes[A].log == []


# What CLI 1.0.102 answers to session.workspaces.createFile when session-state is mounted read-only.
READ_ONLY = JsonRpcError(-32603, "Request session.workspaces.createFile failed with message: EROFS: Read-only file "
                                 "system (os error 30)")
NO_ANSWER = "Timeout after 3s waiting for response completion"


@pytest.mark.parametrize("check", ["read-only", "full", "writable", "other failure", "no answer"])
async def test_a_turn_without_answer_names_a_storage_problem_only_when_the_server_has_one(
    redis_server: RedisServer, check: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """CLI 1.0.102 never answers a turn whose events it cannot write (finding 5). After the timeout the handle asks
    the server to write a small file in the session's workspace: a storage error there becomes
    SessionStateUnwritable (still a TimeoutError) naming it; any other outcome leaves the SDK's TimeoutError."""
    from copilot_fleet.client import SessionStateUnwritable, write_check

    monkeypatch.setattr(write_check, "CHECK_TIMEOUT", 0.2)
    pool = FakePool({A: "works"})
    async with FleetClient(target(redis_server, [A]), user="alice", pool=pool) as fleet:
        session = await fleet.resume_session(new_session_id("alice", "old"))
        fake = pool.fakes[A].sessions[-1]
        workspaces = fake.rpc.workspaces
        workspaces.error = {"read-only": READ_ONLY, "full": FULL_DISK,
                            "other failure": JsonRpcError(-32603, "Session memory v2 is disabled")}.get(check)
        workspaces.delay = 5.0 if check == "no answer" else 0.0
        fake.turns.append(TimeoutError(NO_ANSWER))
        with pytest.raises(TimeoutError) as raised:
            await session.reply("remember: pear", timeout=3)
        assert workspaces.writes == [write_check.CHECK_FILE]
        if check in ("read-only", "full"):
            assert isinstance(raised.value, SessionStateUnwritable)
            assert isinstance(raised.value.__cause__, TimeoutError)
            text = str(raised.value)
            assert session.session_id in text and A in text and "no answer within 3 s" in text
            assert ("Read-only file system" if check == "read-only" else "No space left on device") in text
        else:
            assert not isinstance(raised.value, SessionStateUnwritable) and str(raised.value) == NO_ANSWER
        await session.close()
        assert not await lease_exists(redis_server, session.session_id)


async def test_only_a_turn_timeout_asks_the_server_to_write(redis_server: RedisServer) -> None:
    """Answers, errors that say what they are, and a lost lease never cause a write check."""
    from copilot_fleet.client import LeaseLost

    pool = FakePool({A: "works"})
    async with FleetClient(target(redis_server, [A]), user="alice", pool=pool) as fleet:
        session = await fleet.resume_session(new_session_id("alice", "old"))
        fake = pool.fakes[A].sessions[-1]
        fake.turns.extend([None, FULL_DISK])
        await session.reply("remember: apple")
        with pytest.raises(Exception, match="No space left"):
            await session.reply("remember: pear")
        assert session.lease is not None
        session.lease._mark_lost("taken over")  # as the renewer marks it when another client took the session over
        fake.turns.append(TimeoutError(NO_ANSWER))
        with pytest.raises(LeaseLost):
            await session.reply("remember: plum")
        assert fake.rpc.workspaces.writes == []
        await session.close()


def test_storage_errors_are_recognised() -> None:
    from copilot_fleet.client import is_storage_error

    assert is_storage_error(FULL_DISK)
    assert is_storage_error("session construction failed: EROFS: Read-only file system (os error 30)")
    assert is_storage_error("failed to register ownership for session 'x': No space left on device (os error 28)")
    assert not is_storage_error(TimeoutError("Timeout after 3s waiting for response completion"))
    assert not is_storage_error("Request session.resume failed with message: invalid model")


async def test_a_shared_session_on_a_fleet_without_them_is_refused_for_that_reason(redis_server: RedisServer) -> None:
    """The isolation is named, not the missing membership store, and no server is called."""
    from copilot_fleet.client import AccessDenied, shared_session_id

    pool = FakePool({A: "works"})
    async with FleetClient(target(redis_server, [A]), user="alice", pool=pool) as fleet:
        with pytest.raises(AccessDenied,
                           match="isolation 'shared-cli'; shared sessions need isolation 'shared-session'"):
            await fleet.resume_session(shared_session_id("team"))
    assert pool.fakes[A].calls == []
