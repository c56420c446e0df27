"""Checks 4 and 5, and the lease every shared-storage fleet needs: who may touch a session.

- per-user: separate servers; user B's server does not know user A's sessions at all (raw SDK, B's own token);
- shared-cli / shared-session: one pool of servers; the fleet client refuses another user's session before any
  server call, and a session attached once cannot be attached a second time while its lease is held.
"""

from __future__ import annotations

import pytest

from copilot_fleet.client import AccessDenied, ClientPool, SessionInUse


@pytest.mark.applies(isolation=("per-user",))
def test_per_user_sessions_invisible_to_others(target, fleet, users, raw_sdk) -> None:
    """per-user isolation: A's sessions invisible on B's server and to B's client"""
    alice, bob = users
    owner = fleet.client(alice)

    async def flow() -> None:
        session = await owner.create_session("verify-isolation")
        fleet.delete_later(owner, session.session_id)
        await session.reply("echo: alice's turn", timeout=fleet.timeout)
        await session.close()
        sid = session.session_id

        own = [m.session_id for m in await owner.list_sessions()]
        assert sid in own, f"{alice!r} cannot see her own session {sid}"

        # B's server, with B's token: the server itself must not have A's session.
        bob_server = await raw_sdk.connect(target.users[bob], target.token_for(bob))
        on_bob = [m.session_id for m in await bob_server.list_sessions()]
        assert sid not in on_bob, f"{alice}'s session {sid} is listed on {bob}'s server {target.users[bob]}"
        with pytest.raises(Exception) as raised:
            await bob_server.resume_session(sid, on_permission_request=lambda *a: None)
        assert "not found" in str(raised.value).lower(), (
            f"{bob}'s server answered a resume of {alice}'s session with something other than 'not found': "
            f"{raised.value}"
        )

        # And B's fleet client refuses before asking anyone.
        with pytest.raises(AccessDenied):
            await fleet.client(bob).resume_session(sid)

    fleet.run(flow())


class _CountingFactory:
    """A ClientPool factory that records every connection attempt (and so every server call)."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, address: str, token: str | None):  # noqa: ANN204 - returns the SDK's client type
        from copilot_fleet.nodelay import cli_client

        self.calls.append(address)
        return cli_client(address, token)


@pytest.mark.applies(isolation=("shared-cli", "shared-session"))
def test_other_users_session_refused_before_server_call(target, fleet, users) -> None:
    """ownership: another user's session refused before any server call"""
    alice, bob = users
    owner = fleet.client(alice)
    counting = _CountingFactory()
    intruder_pool = ClientPool(connect_timeout=fleet.timeout, client_factory=counting)
    fleet.pools.append((intruder_pool, None))
    intruder = fleet.client(bob, pool=intruder_pool)

    async def flow() -> None:
        session = await owner.create_session("verify-ownership")
        fleet.delete_later(owner, session.session_id)
        await session.reply("echo: alice's turn", timeout=fleet.timeout)
        await session.close()
        sid = session.session_id

        with pytest.raises(AccessDenied) as denied:
            await intruder.resume_session(sid)
        assert sid in str(denied.value)
        with pytest.raises(AccessDenied):
            await intruder.delete_session(sid)
        assert counting.calls == [], f"{bob}'s client contacted {counting.calls} before refusing"
        if intruder.leases is not None:
            held = await intruder.leases.redis.exists(intruder.leases.key(sid))
            assert not held, f"{bob}'s refused resume left a lease on {sid}"

        # The refusal did not disturb the owner.
        again = await owner.resume_session(sid)
        answer = await again.reply("count turns", timeout=fleet.timeout)
        await again.close()
        assert answer, "the owner's session did not answer after the refused intrusion"
        listed_for_bob = [m.session_id for m in await intruder.list_sessions()]
        assert sid not in listed_for_bob, f"{bob}'s list shows {alice}'s session {sid}"

    fleet.run(flow())


@pytest.mark.applies(isolation=("shared-cli", "shared-session"))
def test_attached_session_is_leased(target, fleet, users) -> None:
    """session lease: a second attach of an attached session is refused"""
    if len(target.replicas) < 2:
        pytest.skip(f"needs two replicas to attach from two servers; {target.stack!r} lists {len(target.replicas)}")
    user = users[0]
    first = fleet.on_replica(user, target.replicas[0])
    second = fleet.on_replica(user, target.replicas[1])

    async def flow() -> None:
        session = await first.create_session("verify-lease")
        fleet.delete_later(first, session.session_id)
        await session.reply("echo: holding", timeout=fleet.timeout)
        with pytest.raises(SessionInUse):
            await second.resume_session(session.session_id, wait=0)
        await session.close()
        again = await second.resume_session(session.session_id, wait=fleet.timeout)
        assert again.address == target.replicas[1]
        await again.close()

    fleet.run(flow())
