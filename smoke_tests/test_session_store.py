"""Store mode (target.session_state.mode store): session state in the store, never on a server's disk, and written
only by the server its lease is bound to.

- no `session-state/` directory on any server of a local fleet (each CLI's is a dangling link its provider made);
- a resume on a server other than the one the session's lease is bound to is refused by the store (`fenced:`),
  before that server writes anything: the second-writer guarantee, seen from outside.

The walk-through itself (create on one server, resume with its history on another, list, delete) is check 1
(test_sessions.py), which looks in the store instead of on disk in this mode.
"""

from __future__ import annotations

from pathlib import Path

import pytest

ELSEWHERE = "verify-no-such-server"  # a server id no server has: the lease bound there lets no server write


@pytest.fixture(autouse=True)
def _store_mode_only(target) -> None:
    if not target.store_mode:
        pytest.skip("applies to store mode only (session_state.mode store); this target keeps sessions on volumes")


def test_no_session_state_on_any_server(fleet_state: Path | None) -> None:
    """store: no session-state/ directory on any server"""
    if fleet_state is None:
        pytest.skip("needs --fleet-state DIR (a local fleet's state directory)")
    homes = sorted(p for p in (fleet_state / "servers").glob("*") if p.is_dir())
    assert homes, f"no server homes under {fleet_state / 'servers'}"
    on_disk = [str(h / "session-state") for h in homes
               if (h / "session-state").is_dir() or not (h / "session-state").is_symlink()]
    assert not on_disk, f"store mode, yet servers keep a session-state/ directory: {on_disk}"
    assert not (fleet_state / "session-state").exists(), "store mode, yet the fleet has a shared session-state/"


def test_resume_where_the_lease_is_not_bound_is_fenced(target, fleet, user, unique) -> None:
    """store: a resume on a server the session's lease is not bound to is refused (fenced)"""
    from copilot_fleet.client.permissions import deny_all
    from copilot_fleet.client.store import SessionStoreAccess
    from copilot_fleet.nodelay import cli_client
    from copilot_fleet.sessionstore import admin
    from copilot_fleet.sessionstore.fencing import bind_lease

    owner = fleet.client(user)
    route = owner.router.route(user)
    address = route.addresses[-1] if target.isolation == "per-user" else target.replicas[-1]
    # Shared patterns: bound to the first replica, resumed on the last; per-user: bound to no server there is.
    bound_to = target.server_id(target.replicas[0]) if len(target.replicas) >= 2 else ELSEWHERE
    word = unique("w")

    async def flow() -> str:
        session = await owner.create_session("verify-fenced")
        fleet.delete_later(owner, session.session_id)
        await session.reply(f"remember: {word}", timeout=fleet.timeout)
        await session.close()
        sid = session.session_id
        store = SessionStoreAccess(target, owner.leases.redis)
        before = await admin.read_file(store.redis, store.keys(user), sid, "events.jsonl")
        lease = await owner.leases.acquire(sid, wait=fleet.timeout)
        try:
            await bind_lease(store.redis, store.keys(user), sid, lease.token, bound_to)
            raw = cli_client(address, route.token)
            try:
                await raw.start()
                kwargs = {"provider": target.provider.to_sdk()} if target.provider is not None else {}
                try:
                    resumed = await raw.resume_session(sid, on_permission_request=deny_all, **kwargs)
                    await resumed.send_and_wait("recall: which words?", timeout=fleet.timeout)
                except Exception as exc:  # noqa: BLE001 - what the server answered is the point
                    refusal = str(exc)
                else:
                    refusal = ""
            finally:
                await raw.force_stop()
        finally:
            await lease.release()
        after = await admin.read_file(store.redis, store.keys(user), sid, "events.jsonl")
        assert after == before, f"server {address} wrote to {sid} although its lease was bound to {bound_to}"
        return refusal

    refusal = fleet.run(flow())
    assert "fenced" in refusal, (f"a resume on {address} while the lease was bound to {bound_to} was not refused "
                                 f"by the store: {refusal or 'it succeeded'}")
