"""The fleet client on a store-mode target, before any server or store is asked: what it refuses, and where it
binds a lease. (Against real store fleets: tests/local/test_local_fleet_store_*.py and tests/verify.)"""

from __future__ import annotations

import asyncio
import json

import pytest
from copilot import SessionListFilter

from copilot_fleet.client import FleetClient, LeaseUnavailable, NoRoute
from copilot_fleet.target import parse_target

PER_USER = {"stack": "p", "platform": "local", "isolation": "per-user", "users": {"alice": "127.0.0.1:4451"},
            "user_tokens": {"alice": "t" * 20}, "redis_url": "redis://:pw@127.0.0.1:1/0",
            "session_state": {"mode": "store"}}


def test_store_mode_needs_the_lease_store_in_every_pattern() -> None:
    target = parse_target(json.dumps({k: v for k, v in PER_USER.items() if k != "redis_url"}))
    with pytest.raises(LeaseUnavailable, match="keeps session state in the store"):
        FleetClient(target, user="alice")
    volume = parse_target(json.dumps({k: v for k, v in PER_USER.items() if k not in ("redis_url", "session_state")}))
    assert FleetClient(volume, user="alice").leases is None  # volume mode per-user: no lease store, as before


def test_a_listing_filter_and_an_unknown_user_are_refused_before_the_store_is_asked() -> None:
    target = parse_target(json.dumps(PER_USER))

    async def flow() -> None:
        async with FleetClient(target, user="alice") as alice:
            assert alice.store is not None and alice.leases is not None
            with pytest.raises(ValueError, match="store mode does not keep"):
                await alice.list_sessions(filter=SessionListFilter(repository="o/r"))
        async with FleetClient(target, user="mallory") as mallory:
            with pytest.raises(NoRoute, match="mallory"):
                await mallory.list_sessions()

    asyncio.run(flow())
