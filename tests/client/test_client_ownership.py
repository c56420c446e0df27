"""Ownership: a user resumes only their own sessions, or shared sessions they belong to."""

from __future__ import annotations

import pytest

from copilot_fleet.client import (
    AccessDenied,
    InMemoryMembership,
    InvalidSessionId,
    MembershipStore,
    check_access,
    check_owner,
    new_session_id,
    shared_session_id,
)

pytestmark = pytest.mark.anyio


async def test_owner_may_access_own_session() -> None:
    sid = new_session_id("alice-smith", "review")
    parts = await check_access(sid, "alice-smith")
    assert parts.owner == "alice-smith"


@pytest.mark.parametrize(
    ("owner", "intruder"),
    [("alice-smith", "alice"), ("alice", "alice-smith"), ("bob", "Bob"), ("a_b", "a-b"), ("x", "x-")],
)
async def test_prefix_and_lookalike_users_are_refused(owner: str, intruder: str) -> None:
    sid = new_session_id(owner, "review")
    with pytest.raises(AccessDenied) as err:
        await check_access(sid, intruder)
    assert "belongs to another user" in str(err.value)
    assert isinstance(err.value, PermissionError)
    with pytest.raises(AccessDenied):
        check_owner(sid, intruder)


async def test_malformed_ids_and_users_are_invalid_not_denied() -> None:
    with pytest.raises(InvalidSessionId):
        await check_access("alice-review-1706932800", "alice")  # {user}-{task}-{timestamp}: no reliable owner
    with pytest.raises(InvalidSessionId, match="user"):
        await check_access(new_session_id("alice", "x"), "alice@example.com")


async def test_shared_session_needs_membership() -> None:
    sid = shared_session_id("team-review")
    members = InMemoryMembership({"team-review": ["alice", "bob-smith"]})
    assert isinstance(members, MembershipStore)
    assert (await check_access(sid, "bob-smith", members)).name == "team-review"
    with pytest.raises(AccessDenied, match="not a member"):
        await check_access(sid, "bob", members)
    with pytest.raises(AccessDenied, match="no membership store"):
        await check_access(sid, "alice")
    await members.remove_members("team-review", ["alice"])
    with pytest.raises(AccessDenied):
        await check_access(sid, "alice", members)
    await members.add_members("team-review", ["carol"])
    assert await members.members("team-review") == {"bob-smith", "carol"}


async def test_membership_store_rejects_bad_names() -> None:
    members = InMemoryMembership()
    with pytest.raises(InvalidSessionId):
        await members.add_members("team review", ["alice"])
    with pytest.raises(InvalidSessionId):
        await members.add_members("team", ["alice@example.com"])
