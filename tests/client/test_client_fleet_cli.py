"""FleetClient against the real Copilot CLI: two replicas sharing one session-state/, redis-server, test model."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import redis.asyncio as aioredis
from pydantic import SecretStr

from copilot_fleet.client import (
    AccessDenied,
    ClientPool,
    FleetClient,
    FleetSession,
    InvalidSessionId,
    LeaseLost,
    LeaseUnavailable,
    NoRoute,
    ProviderMissing,
    RedisMembership,
    ReplicaUnavailable,
    SessionDisconnected,
    SessionInUse,
    SessionNotFound,
    new_session_id,
    rank_replicas,
)
from copilot_fleet.pod.ports import free_port
from copilot_fleet.target import ProviderTarget, Target
from tests.helpers.processes import start_cli, stop_process

if TYPE_CHECKING:
    from tests.helpers.processes import CliFleet, SpareCli

pytestmark = [pytest.mark.anyio, pytest.mark.fleet]

# Small requests: no tools and a one-line system prompt instead of the CLI's 21 KB one.
OPTS: dict[str, Any] = {
    "available_tools": [],
    "system_message": {"mode": "replace", "content": "You are the copilot-fleet test assistant."},
}


def make_target(
    fleet: CliFleet,
    replicas: list[str],
    *,
    isolation: str = "shared-cli",
    provider: bool = True,
    redis_url: str | None = "default",
) -> Target:
    return Target.model_validate(
        {
            "stack": "client-it",
            "platform": "local",
            "isolation": isolation,
            "replicas": replicas,
            "connection_token": fleet.token,
            "redis_url": fleet.redis.url if redis_url == "default" else redis_url,
            "provider": (
                {"type": "openai", "base_url": fleet.model.base_url, "api_key": fleet.model.api_key}
                if provider
                else None
            ),
            "model": "copilot-fleet-test",
        }
    )


def dead_address() -> str:
    return f"127.0.0.1:{free_port()}"  # nothing listens there


async def lease_key_exists(fleet: CliFleet, session_id: str) -> bool:
    async with aioredis.Redis(port=fleet.redis.port, password=fleet.redis.password) as raw:
        return bool(await raw.exists(f"copilot-fleet:lease:{session_id}"))


async def test_created_on_replica_a_resumes_on_replica_b_with_history(cli_fleet: CliFleet) -> None:
    async with ClientPool() as pool:
        on_a = FleetClient(make_target(cli_fleet, [cli_fleet.a.address]), user="alice-smith", pool=pool)
        on_b = FleetClient(make_target(cli_fleet, [cli_fleet.b.address]), user="alice-smith", pool=pool)
        async with on_a, on_b:
            async with await on_a.create_session("history", **OPTS) as first:
                assert first.address == cli_fleet.a.address
                assert await lease_key_exists(cli_fleet, first.session_id)
                assert "remembered: apple" in (await first.reply("remember: apple") or "")
            sid = first.session_id
            assert not await lease_key_exists(cli_fleet, sid)  # released on close

            async with await on_b.resume_session(sid, **OPTS) as second:
                assert second.address == cli_fleet.b.address
                assert "recalled: apple" in (await second.reply("recall") or "")
                await second.reply("remember: banana")
            # And back on A: A must not serve a stale copy of the session it attached earlier.
            async with await on_a.resume_session(sid, **OPTS) as third:
                assert "recalled: apple, banana" in (await third.reply("recall") or "")
            assert len(pool) == 2  # one SDK client per server, shared by both FleetClients


async def test_concurrent_resume_from_two_clients_exactly_one_wins(cli_fleet: CliFleet) -> None:
    async with ClientPool() as pool:
        on_a = FleetClient(make_target(cli_fleet, [cli_fleet.a.address]), user="bob", pool=pool)
        on_b = FleetClient(make_target(cli_fleet, [cli_fleet.b.address]), user="bob", pool=pool)
        async with on_a, on_b:
            async with await on_a.create_session("race", **OPTS) as created:
                await created.reply("remember: cherry")
            sid = created.session_id

            results = await asyncio.gather(
                on_a.resume_session(sid, **OPTS), on_b.resume_session(sid, **OPTS), return_exceptions=True
            )
            winners = [r for r in results if isinstance(r, FleetSession)]
            losers = [r for r in results if isinstance(r, SessionInUse)]
            assert len(winners) == 1 and len(losers) == 1, results
            assert "in use by another client; try again later" in str(losers[0])
            loser_client = on_b if winners[0].address == cli_fleet.a.address else on_a

            await winners[0].reply("remember: damson")
            await winners[0].close()
            async with await loser_client.resume_session(sid, **OPTS) as later:
                assert "recalled: cherry, damson" in (await later.reply("recall") or "")


async def test_access_checks_happen_before_any_server_call(cli_fleet: CliFleet) -> None:
    # Replicas nobody listens on: any attempt to reach them would end in ReplicaUnavailable.
    target = make_target(cli_fleet, [dead_address(), dead_address()])
    alices = new_session_id("alice", "private")
    async with ClientPool() as pool, FleetClient(target, user="mallory", pool=pool) as mallory:
        with pytest.raises(AccessDenied, match="belongs to another user"):
            await mallory.resume_session(alices, **OPTS)
        with pytest.raises(AccessDenied):
            await mallory.delete_session(alices)
        for bad in ("alice/../bob", "u-7-mallory-x:y-1-0badcafe", "m" * 200, "", "alice-review-1706932800"):
            with pytest.raises(InvalidSessionId):
                await mallory.resume_session(bad, **OPTS)
        assert len(pool) == 0 and not await lease_key_exists(cli_fleet, alices)
        # Control: mallory's own, valid session passes the checks and only then finds no server.
        own = new_session_id("mallory", "mine")
        with pytest.raises(ReplicaUnavailable, match="did not accept a connection"):
            await mallory.resume_session(own, **OPTS)
        assert not await lease_key_exists(cli_fleet, own)  # the lease was released after the failure


async def test_failover_to_the_next_replica_when_the_first_is_down(cli_fleet: CliFleet) -> None:
    dead = dead_address()
    replicas = [dead, cli_fleet.a.address]
    user = next(u for u in (f"user{i}" for i in range(100)) if rank_replicas(u, replicas)[0] == dead)
    async with FleetClient(make_target(cli_fleet, replicas), user=user) as fleet, \
            await fleet.create_session("failover", **OPTS) as handle:
        assert handle.address == cli_fleet.a.address
        assert "remembered: elder" in (await handle.reply("remember: elder") or "")


# The local fleet's CLIs run with their OpenTelemetry file exporter on; a draining one then refuses with -32603.
OTEL_ON = {"COPILOT_OTEL_ENABLED": "true", "COPILOT_OTEL_EXPORTER_TYPE": "file"}


async def test_a_create_sent_as_the_replica_drains_goes_to_the_next_replica_and_leaves_nothing(
    cli_fleet: CliFleet, caplog: pytest.LogCaptureFixture
) -> None:
    """SIGTERM reaches the first replica as a create is sent to it. Whatever it answers (`SERVER_SHUTTING_DOWN`,
    `-32603 OpenTelemetry session policy is unavailable`, or its connection ends), it wrote nothing, so the
    session is created on the next replica: one new session directory per create, none half-made."""
    root = cli_fleet.shared_state.parent
    refusals: list[str] = []
    loop = asyncio.get_running_loop()
    runners_handler = loop.get_exception_handler()
    sdk_races = _tolerate_the_sdks_double_completion(loop)
    try:
        await _drain_rounds(cli_fleet, caplog, root, refusals)
    finally:
        loop.set_exception_handler(runners_handler)
    assert len(refusals) == 6, refusals  # each create met the draining replica first
    print("what the draining replica answered:", *refusals, sep="\n  ")
    print(f"the SDK completed a future twice {len(sdk_races)} time(s)")


async def _drain_rounds(cli_fleet: CliFleet, caplog: pytest.LogCaptureFixture, root: Path,
                        refusals: list[str]) -> None:
    for round_no in range(6):
        name = f"draining-{round_no}"
        server = start_cli(name, root, cli_fleet.shared_state, cli_fleet.token,
                           extra_env={**OTEL_ON, "COPILOT_OTEL_FILE_EXPORTER_PATH": str(root / f"{name}.jsonl")})
        try:
            replicas = [server.address, cli_fleet.a.address]
            user = next(u for u in (f"drain{round_no}u{i}" for i in range(200))
                        if rank_replicas(u, replicas)[0] == server.address)
            async with ClientPool() as pool, FleetClient(make_target(cli_fleet, replicas), user=user,
                                                         pool=pool) as fleet:
                async with await fleet.create_session("warm", **OPTS) as warm:  # connected: the next call is sent
                    assert warm.address == server.address                      # at once
                before = set(os.listdir(cli_fleet.shared_state))
                caplog.clear()
                with caplog.at_level(logging.WARNING, logger="copilot_fleet.client.fleet_client"):
                    asyncio.get_running_loop().call_soon(server.proc.send_signal, signal.SIGTERM)
                    async with await fleet.create_session("after-drain", **OPTS) as handle:
                        assert handle.address == cli_fleet.a.address
                        assert "remembered: fig" in (await handle.reply("remember: fig") or "")
                assert set(os.listdir(cli_fleet.shared_state)) - before == {handle.session_id}
                refusals += [r.getMessage() for r in caplog.records if "went away" in r.getMessage()]
        finally:
            stop_process(server.proc)


def _tolerate_the_sdks_double_completion(loop: asyncio.AbstractEventLoop) -> list[str]:
    """SDK 1.0.25's reader thread checks `future.done()` and then schedules `future.set_exception` (or
    `set_result`) on the loop; when a CLI answers a request and exits at once, both the answer and the exit sweep
    schedule one, and the second raises InvalidStateError in the loop (asyncio logs it; the caller got the first).
    The test runner would count it as the test's error: only that one is set aside (and counted); anything else
    goes to the runner's handler."""
    seen: list[str] = []
    previous = loop.get_exception_handler()

    def handler(this: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        callback = getattr(context.get("handle"), "_callback", None)
        if (isinstance(context.get("exception"), asyncio.InvalidStateError)
                and getattr(callback, "__name__", "") in ("set_exception", "set_result")
                and isinstance(getattr(callback, "__self__", None), asyncio.Future)):
            seen.append(str(context.get("message")))
            return
        if previous is not None:
            previous(this, context)
        else:
            this.default_exception_handler(context)

    loop.set_exception_handler(handler)
    return seen


async def test_a_crash_mid_turn_ends_the_reply_at_once_and_the_restarted_server_is_reconnected(
    cli_fleet: CliFleet, spare_cli: SpareCli
) -> None:
    """SDK 1.0.25 alone leaves the reply waiting for its whole timeout, and hands out the dead pooled connection
    after the restart; with one address (a per-user fleet) that failed the first call after every restart."""
    async with ClientPool() as pool, FleetClient(make_target(cli_fleet, [spare_cli.address]), user="kim",
                                                 pool=pool) as fleet:
        session = await fleet.create_session("crash", **OPTS)
        await session.reply("remember: before")
        turn = asyncio.ensure_future(session.reply("sleep: 8 remember: during", timeout=30))
        await asyncio.sleep(0.7)
        spare_cli.kill()
        killed = time.monotonic()
        with pytest.raises(SessionDisconnected, match=spare_cli.address):
            await turn
        assert time.monotonic() - killed < 3, "the reply waited on a dead server"
        assert session.disconnected
        await session.close()
        assert not await lease_key_exists(cli_fleet, session.session_id)

        dead_client = pool._clients[(spare_cli.address, cli_fleet.token)]
        spare_cli.start()  # same port, same home: a supervisor's restart
        async with await fleet.resume_session(session.session_id, **OPTS) as again:  # the first call succeeds
            assert "before" in (await again.reply("recall") or "")
        assert pool._clients[(spare_cli.address, cli_fleet.token)] is not dead_client


async def test_delete_then_resume_is_session_not_found(cli_fleet: CliFleet) -> None:
    async with FleetClient(make_target(cli_fleet, [cli_fleet.a.address, cli_fleet.b.address]), user="carol") as fl:
        async with await fl.create_session("doomed", **OPTS) as handle:
            await handle.reply("remember: fig")
            with pytest.raises(SessionInUse):
                await fl.delete_session(handle.session_id)  # attached: not deleted under the holder's feet
        sid = handle.session_id
        assert sid in {m.session_id for m in await fl.list_sessions()}
        await fl.delete_session(sid)
        assert sid not in {m.session_id for m in await fl.list_sessions()}
        with pytest.raises(SessionNotFound, match="not found"):
            await fl.resume_session(sid, **OPTS)
        with pytest.raises(SessionNotFound):
            await fl.delete_session(sid)
        assert not await lease_key_exists(cli_fleet, sid)


async def test_list_shows_only_the_users_own_sessions(cli_fleet: CliFleet) -> None:
    target = make_target(cli_fleet, [cli_fleet.a.address])
    async with ClientPool() as pool, FleetClient(target, user="dave", pool=pool) as dave, FleetClient(
        target, user="dave-smith", pool=pool
    ) as dave_smith:
        async with await dave.create_session("listed", **OPTS) as mine:
            pass
        async with await dave_smith.create_session("listed", **OPTS) as theirs:
            pass
        assert mine.session_id in {m.session_id for m in await dave.list_sessions()}
        assert theirs.session_id not in {m.session_id for m in await dave.list_sessions()}
        assert {m.session_id for m in await dave_smith.list_sessions()} >= {theirs.session_id}
        assert mine.session_id not in {m.session_id for m in await dave_smith.list_sessions()}


async def test_ephemeral_session_is_deleted_after_use(cli_fleet: CliFleet) -> None:
    async with FleetClient(make_target(cli_fleet, [cli_fleet.a.address]), user="erin") as fleet:
        async with await fleet.create_ephemeral_session(**OPTS) as scratch:
            assert "remembered: grape" in (await scratch.reply("remember: grape") or "")
            assert (cli_fleet.shared_state / scratch.session_id).is_dir()
        assert not (cli_fleet.shared_state / scratch.session_id).exists()


async def test_resume_without_provider_names_the_fix(cli_fleet: CliFleet) -> None:
    async with ClientPool() as pool:
        byok = FleetClient(make_target(cli_fleet, [cli_fleet.a.address]), user="frank", pool=pool)
        bare = FleetClient(make_target(cli_fleet, [cli_fleet.b.address], provider=False), user="frank", pool=pool)
        async with byok, bare:
            async with await byok.create_session("byok", **OPTS) as handle:
                await handle.reply("remember: hazel")
            async with await bare.resume_session(handle.session_id, **OPTS) as resumed:
                with pytest.raises(ProviderMissing, match="pass provider="):
                    await resumed.reply("recall")
            # Passing the provider per call is the fix the message names.
            provider = ProviderTarget(type="openai", base_url=cli_fleet.model.base_url,
                                      api_key=SecretStr(cli_fleet.model.api_key))
            async with await bare.resume_session(handle.session_id, provider=provider.to_sdk(), **OPTS) as fixed:
                assert "recalled: hazel" in (await fixed.reply("recall") or "")


async def test_lease_store_down_means_no_attach(cli_fleet: CliFleet) -> None:
    target = make_target(cli_fleet, [cli_fleet.a.address], redis_url=f"redis://:x@127.0.0.1:{free_port()}/0")
    async with ClientPool() as pool, FleetClient(target, user="gina", pool=pool) as fleet:
        with pytest.raises(LeaseUnavailable, match="Refusing to attach"):
            await fleet.create_session("nolease", **OPTS)
        with pytest.raises(LeaseUnavailable):
            await fleet.resume_session(new_session_id("gina", "old"), **OPTS)
        assert len(pool) == 0
    with pytest.raises(LeaseUnavailable, match="no redis_url"):
        FleetClient(make_target(cli_fleet, [cli_fleet.a.address], redis_url=None), user="gina")


async def test_losing_the_lease_mid_turn_raises_lease_lost(cli_fleet: CliFleet) -> None:
    target = make_target(cli_fleet, [cli_fleet.a.address])
    async with FleetClient(target, user="hank", lease_ttl=0.6) as fleet:
        handle = await fleet.create_session("long-turn", **OPTS)
        try:

            async def steal() -> None:
                await asyncio.sleep(0.3)
                async with aioredis.Redis(port=cli_fleet.redis.port, password=cli_fleet.redis.password) as raw:
                    await raw.set(f"copilot-fleet:lease:{handle.session_id}", "intruder", px=10_000)

            thief = asyncio.create_task(steal())
            with pytest.raises(LeaseLost):
                await handle.reply("sleep: 2", timeout=10)
            await thief
            assert handle.lost
            with pytest.raises(LeaseLost):
                await handle.reply("recall")  # refused before sending
        finally:
            await handle.close()
        assert await lease_key_exists(cli_fleet, handle.session_id)  # the intruder's lease was left alone


async def test_shared_session_members_take_turns(cli_fleet: CliFleet, caplog: pytest.LogCaptureFixture) -> None:
    target = make_target(cli_fleet, [cli_fleet.a.address, cli_fleet.b.address], isolation="shared-session")
    caplog.set_level(logging.WARNING)
    async with ClientPool() as pool:
        # Membership defaults to Redis sets in the lease store's Redis.
        ann = FleetClient(target, user="ann", pool=pool)
        ben = FleetClient(target, user="ben-jones", pool=pool)
        cat = FleetClient(target, user="cat", pool=pool)
        async with ann, ben, cat:
            assert isinstance(ann.members, RedisMembership)
            await ann.members.add_members("team-review", ["ann", "ben-jones"])
            first = await ann.join_shared_session("team-review", **OPTS)
            assert first.session_id == "s-team-review" and first.created
            # The first join creates the session: nothing went wrong, so nothing is logged (the SDK logged the
            # resume it tried first with two tracebacks).
            assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
            await first.reply("remember: iris")
            with pytest.raises(SessionInUse):
                await ben.join_shared_session("team-review", **OPTS)
            with pytest.raises(AccessDenied, match="not a member"):
                await cat.join_shared_session("team-review", **OPTS)

            async def close_soon() -> None:
                await asyncio.sleep(0.3)
                await first.close()

            closer = asyncio.create_task(close_soon())
            async with await ben.join_shared_session("team-review", wait=5, **OPTS) as second:
                assert "recalled: iris" in (await second.reply("recall") or "")
            await closer
            assert "s-team-review" in {m.session_id for m in await ben.list_sessions()}
            assert "s-team-review" not in {m.session_id for m in await cat.list_sessions()}
            await ann.delete_session("s-team-review")


async def test_per_user_target_routes_to_the_users_own_server(cli_fleet: CliFleet) -> None:
    target = Target.model_validate(
        {
            "stack": "client-it-pu",
            "platform": "local",
            "isolation": "per-user",
            "users": {"ivy": cli_fleet.b.address},
            "user_tokens": {"ivy": cli_fleet.token},
            "provider": {"type": "openai", "base_url": cli_fleet.model.base_url, "api_key": cli_fleet.model.api_key},
            "model": "copilot-fleet-test",
        }
    )
    async with FleetClient(target, user="ivy") as ivy:  # no redis_url: per-user needs no lease
        assert ivy.leases is None
        async with await ivy.create_session("own", **OPTS) as handle:
            assert handle.address == cli_fleet.b.address and handle.lease is None
            assert "remembered: juniper" in (await handle.reply("remember: juniper") or "")
    async with FleetClient(target, user="jack") as jack:
        with pytest.raises(NoRoute, match="no CLI server for user 'jack'"):
            await jack.create_session("none", **OPTS)


class _CreateSeen:
    """An SDK client factory whose clients signal when a create request has been handed to the real client, and
    keep that request so a test can wait for the server's own answer (the session exists on disk from then on)."""

    def __init__(self) -> None:
        self.sent = asyncio.Event()
        self.requests: list[asyncio.Future[Any]] = []

    def __call__(self, address: str, token: str | None) -> Any:
        from copilot_fleet.nodelay import cli_client

        real = cli_client(address, token)
        seen = self

        class Watched:
            def __getattr__(self, name: str) -> Any:
                return getattr(real, name)

            async def create_session(self, **kwargs: Any) -> Any:
                request = asyncio.ensure_future(real.create_session(**kwargs))
                seen.requests.append(request)
                await asyncio.sleep(0.05)  # the request is on the wire before the caller hears of it
                seen.sent.set()
                return await request

        return Watched()

    async def answered(self) -> None:
        """Until the server has answered every create it was sent (whatever the caller did meanwhile)."""
        await asyncio.wait_for(asyncio.gather(*self.requests, return_exceptions=True), 30)


def fleet_session_dirs(fleet: CliFleet, user: str) -> set[str]:
    return {p.name for p in fleet.shared_state.iterdir() if p.name.startswith(f"u-{len(user)}-{user}-")}


async def test_a_cancelled_create_leaves_no_session(cli_fleet: CliFleet) -> None:
    """The caller gave up after the request left: the server's session is deleted, not left for the janitor."""
    factory = _CreateSeen()
    async with ClientPool(client_factory=factory) as pool, \
            FleetClient(make_target(cli_fleet, [cli_fleet.a.address]), user="gail", pool=pool) as fleet:
        creating = asyncio.ensure_future(fleet.create_session("cancelled", **OPTS))
        await asyncio.wait_for(factory.sent.wait(), 30)
        creating.cancel()
        with pytest.raises(asyncio.CancelledError):
            await creating
        await factory.answered()
        assert not fleet_session_dirs(cli_fleet, "gail"), "the cancelled create left its session on disk"
        assert not [m for m in await fleet.list_sessions() if m.session_id.startswith("u-4-gail-cancelled-")]
        assert not fleet.open_sessions


async def test_a_timed_out_create_leaves_no_session(cli_fleet: CliFleet) -> None:
    """A create slower than call_timeout fails with ReplicaUnavailable, and the session it made late is removed."""
    factory = _CreateSeen()
    async with ClientPool(client_factory=factory) as pool:
        target = make_target(cli_fleet, [cli_fleet.a.address])
        async with FleetClient(target, user="hal", pool=pool, call_timeout=0.01) as fleet:
            await pool.get(cli_fleet.a.address, cli_fleet.token)  # connected: only the create is this slow
            with pytest.raises(ReplicaUnavailable, match="did not answer within"):
                await fleet.create_session("slow", **OPTS)
            await factory.answered()
            assert not fleet_session_dirs(cli_fleet, "hal"), "the timed-out create left its session on disk"


async def test_a_tool_call_is_denied_unless_the_application_allows_it(cli_fleet: CliFleet, tmp_path: Any) -> None:
    """The model (the test model's `run:`) asks the CLI's shell tool to run a command; the FleetClient's default
    policy refuses it, so nothing runs and the model is told why. An application's explicit policy decides."""
    from copilot_fleet.client import allow_kinds
    from copilot_fleet.client.permissions import DENIED_FEEDBACK
    from copilot_fleet.testmodel import MARKER

    marker = tmp_path / "ran"
    prompt = f"run: touch {marker}"
    target = make_target(cli_fleet, [cli_fleet.a.address])
    # The default: deny_all.
    async with FleetClient(target, user="carol") as fleet, \
            await fleet.create_session("tools") as session:
        reply = await session.reply(prompt)
    assert reply == f"{MARKER} ran: The user rejected this tool call. User feedback: {DENIED_FEEDBACK}"
    assert not marker.exists()

    async with FleetClient(target, user="carol", on_permission_request=allow_kinds("read")) as fleet, \
            await fleet.create_session("tools") as session:
        reply = await session.reply(prompt)
    assert reply is not None and "shell tool calls are not allowed" in reply and not marker.exists()

    async with FleetClient(target, user="carol", on_permission_request=allow_kinds("shell")) as fleet, \
            await fleet.create_session("tools") as session:
        reply = await session.reply(prompt)
    assert reply is not None and reply.startswith(f"{MARKER} ran: ") and marker.exists()
