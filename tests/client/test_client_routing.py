"""Routing: stable replica per user by rendezvous hashing, minimal remapping, failover order."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from pydantic import SecretStr

from copilot_fleet.client import NoRoute, Router, rank_replicas
from copilot_fleet.target import Target

REPLICAS = ["10.0.0.1:4401", "10.0.0.2:4401", "10.0.0.3:4401"]
USERS = [f"user-{i}" for i in range(300)]


def pooled(replicas: list[str], endpoint: str | None = "10.0.0.9:4321") -> Target:
    return Target(
        stack="t", platform="local", isolation="shared-cli", endpoint=endpoint, replicas=replicas,
        connection_token=SecretStr("tok"),
    )


def test_route_is_stable_and_ranks_every_replica_then_the_endpoint() -> None:
    router = Router(pooled(REPLICAS))
    first = router.route("alice")
    assert first == router.route("alice")
    assert sorted(first.addresses[:3]) == sorted(REPLICAS)
    assert first.addresses[3] == "10.0.0.9:4321"
    assert first.primary == first.addresses[0] and first.failover == first.addresses[1:]
    assert first.token == "tok"


def test_route_is_the_same_in_another_process() -> None:
    # Python's hash() is salted per process; the route must not be.
    code = (
        "from copilot_fleet.client import rank_replicas;"
        f"print(','.join(rank_replicas('alice-smith', {REPLICAS!r})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env={"PYTHONHASHSEED": "123"},
        cwd=Path(__file__).resolve().parents[2],
    )
    assert out.stdout.strip() == ",".join(rank_replicas("alice-smith", REPLICAS))


def test_distribution_over_three_replicas_is_even_enough() -> None:
    counts = Counter(rank_replicas(user, REPLICAS)[0] for user in USERS)
    assert set(counts) == set(REPLICAS)
    # 100 expected each; a fair hash stays within about 3 standard deviations (~8.2).
    assert all(70 <= n <= 130 for n in counts.values()), counts


def test_removing_a_replica_moves_only_its_users_to_their_next_choice() -> None:
    before = {user: rank_replicas(user, REPLICAS) for user in USERS}
    removed = REPLICAS[1]
    remaining = [r for r in REPLICAS if r != removed]
    moved = 0
    for user in USERS:
        after = rank_replicas(user, remaining)
        if before[user][0] == removed:
            moved += 1
            assert after[0] == before[user][1], user  # failover order predicted the new home
        else:
            assert after[0] == before[user][0], user  # nobody else moves
    assert 70 <= moved <= 130


def test_adding_a_replica_only_takes_users_to_the_new_one() -> None:
    grown = [*REPLICAS, "10.0.0.4:4401"]
    for user in USERS:
        old, new = rank_replicas(user, REPLICAS)[0], rank_replicas(user, grown)[0]
        assert new in (old, "10.0.0.4:4401")


def test_failover_order_differs_between_users() -> None:
    orders = Counter(tuple(rank_replicas(user, REPLICAS)) for user in USERS)
    assert len(orders) == 6  # every permutation of 3 replicas occurs


def test_shared_session_key_routes_all_members_together() -> None:
    router = Router(pooled(REPLICAS))
    addresses = {router.route(user, key="s-team").primary for user in USERS[:50]}
    assert len(addresses) == 1


def test_endpoint_only_and_per_user_targets() -> None:
    assert Router(pooled([], endpoint="10.0.0.9:4321")).route("bob").addresses == ("10.0.0.9:4321",)
    per_user = Target(
        stack="pu", platform="local", isolation="per-user",
        users={"alice": "127.0.0.1:4501", "bob": "127.0.0.1:4502"},
        user_tokens={"alice": SecretStr("ta"), "bob": SecretStr("tb")},
    )
    route = Router(per_user).route("bob")
    assert (route.addresses, route.token) == (("127.0.0.1:4502",), "tb")
    with pytest.raises(NoRoute, match="no CLI server for user 'carol'"):
        Router(per_user).route("carol")
    with pytest.raises(NoRoute, match="neither replicas nor an endpoint"):
        Router(pooled([], endpoint=None)).route("bob")


def test_draining_replicas_go_last_and_the_rest_keep_their_order() -> None:
    route = Router(pooled(REPLICAS)).route("alice")
    first, second, third, endpoint = route.addresses
    moved = route.avoiding({first})
    assert moved.addresses == (second, third, endpoint, first)
    assert moved.token == route.token and moved.key == route.key
    assert route.avoiding({"10.9.9.9:1"}) is route  # not on this route: unchanged
    every = set(route.addresses)
    assert route.avoiding(every).addresses == route.addresses  # all draining: still somewhere to try
